"""World geometry of a voxel grid, and world points.

An :class:`ImageGeometry` holds ``size`` (voxels), ``spacing`` and ``origin`` (mm) and
``direction`` (an orthonormal matrix whose columns are the world directions of the index axes),
all in ``(x, y[, z])`` order as SimpleITK gives them. Conventions, identical to SimpleITK's:

* **World points** are millimetres in the image's physical (LPS) space, in ``(x, y[, z])`` order.
  Every public point input and output of samlearn uses them (:func:`check_points` validates them).
* **Continuous indices** (``world_to_index`` / ``index_to_world``) are voxel coordinates in
  ``(i, j[, k])`` = ``(x, y[, z])`` order, integer values at voxel centres, as
  ``SimpleITK.Image.TransformPhysicalPointToContinuousIndex`` returns them.
* **Array indices** (``world_to_array_index``) are in numpy order ``(z, y, x)`` / ``(y, x)``, as
  ``SimpleITK.GetArrayFromImage`` lays out the voxels.

The mapping is ``world = origin + direction @ (spacing * index)``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["ImageGeometry", "check_points"]


_ORTHO_TOL = 1e-4


def _as_vector(value, ndim: int, name: str) -> np.ndarray:
    if value is None:
        raise TypeError(f"{name} must be a number or {ndim} numbers (x, y[, z] order), got None")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or {ndim} numbers (x, y[, z] order), "
                        f"got {value!r}") from None
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.shape != (ndim,):
        raise ValueError(f"{name} must have {ndim} values (x, y[, z] order), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


class ImageGeometry:
    """Voxel grid in world space: ``size`` (x, y[, z] voxels), ``spacing`` (mm), ``origin`` (mm,
    centre of the first voxel) and ``direction`` (orthonormal matrix whose columns are the world
    directions of the index axes). All vectors in ``(x, y[, z])`` order, as in SimpleITK."""

    __slots__ = ("size", "spacing", "origin", "direction")

    def __init__(self, size, spacing=1.0, origin=0.0, direction=None):
        size_arr = np.asarray(size)
        if size_arr.ndim != 1 or size_arr.size not in (2, 3):
            raise ValueError(f"size must have 2 or 3 values (x, y[, z]), got {size!r}")
        if not np.all(np.equal(np.mod(size_arr, 1), 0)) or np.any(size_arr < 1):
            raise ValueError(f"size must be positive integers, got {size!r}")
        ndim = size_arr.size
        spacing = _as_vector(spacing, ndim, "spacing")
        if np.any(spacing <= 0):
            raise ValueError(f"spacing must be positive, got {spacing.tolist()}")
        origin = _as_vector(origin, ndim, "origin")
        # the grid must map to finite world coordinates, and world back to finite indices
        with np.errstate(over="ignore", divide="ignore"):
            reach = np.abs(origin) + np.asarray(size_arr, dtype=np.float64) * spacing
            finite = np.all(np.isfinite(reach)) and np.all(np.isfinite(1.0 / spacing)) \
                and np.all(reach < 1e15)
        if not finite:
            raise ValueError(f"spacing {spacing.tolist()} and origin {origin.tolist()} put the grid "
                             f"of size {tuple(int(v) for v in size_arr)} beyond representable world "
                             f"coordinates (|origin| + size * spacing must stay below 1e15 mm)")
        if direction is None:
            direction = np.eye(ndim)
        direction = np.asarray(direction, dtype=np.float64)
        if direction.shape == (ndim * ndim,):
            direction = direction.reshape(ndim, ndim)
        if direction.shape != (ndim, ndim):
            raise ValueError(
                f"direction must be a {ndim}x{ndim} matrix (or {ndim * ndim} values, row-major as "
                f"SimpleITK gives it), got shape {direction.shape}")
        if not np.all(np.isfinite(direction)):
            raise ValueError("direction must be finite")
        err = np.abs(direction.T @ direction - np.eye(ndim)).max()
        if err > _ORTHO_TOL:
            raise ValueError(
                f"direction must be orthonormal (columns of unit length, mutually orthogonal); "
                f"|D^T D - I| = {err:.3g}")
        for name, val in (("size", tuple(int(s) for s in size_arr)), ("spacing", spacing),
                          ("origin", origin), ("direction", direction)):
            if isinstance(val, np.ndarray):
                val.setflags(write=False)
            object.__setattr__(self, name, val)

    def __setattr__(self, name, value):
        raise AttributeError("ImageGeometry is immutable; build a new one")

    def __reduce__(self):
        return (ImageGeometry, (self.size, self.spacing, self.origin, self.direction))

    __hash__ = None

    # ------------------------------------------------------------------ basic properties
    @property
    def ndim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple:
        """Array shape in numpy order (z, y, x)."""
        return tuple(reversed(self.size))

    @property
    def extent_mm(self) -> np.ndarray:
        """Physical side lengths (mm) along each index axis, voxel borders included."""
        return np.asarray(self.size) * self.spacing

    def __repr__(self) -> str:
        fmt = lambda a: "(" + ", ".join(f"{v:.4g}" for v in a) + ")"  # noqa: E731
        ident = np.allclose(self.direction, np.eye(self.ndim))
        return (f"ImageGeometry(size={self.size}, spacing={fmt(self.spacing)}, "
                f"origin={fmt(self.origin)}, direction={'identity' if ident else self.direction.round(4).tolist()})")

    def __eq__(self, other) -> bool:
        return isinstance(other, ImageGeometry) and self.allclose(other, atol=0)

    def allclose(self, other: "ImageGeometry", atol: float = 1e-6) -> bool:
        return (self.size == other.size and np.allclose(self.spacing, other.spacing, atol=atol)
                and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))

    # ------------------------------------------------------------------ coordinates
    def _points(self, points, name: str):
        pts = np.asarray(points, dtype=np.float64)
        single = pts.ndim == 1
        pts = np.atleast_2d(pts)
        if pts.ndim != 2 or pts.shape[1] != self.ndim:
            raise ValueError(
                f"{name} must have shape (n_points, {self.ndim}) for a {self.ndim}D image, "
                f"got shape {np.shape(points)}")
        return pts, single

    def world_to_index(self, points) -> np.ndarray:
        """World mm ``(x, y[, z])`` -> continuous index ``(i, j[, k])`` (x, y, z order)."""
        pts, single = self._points(points, "points")
        idx = ((pts - self.origin) @ self.direction) / self.spacing
        return idx[0] if single else idx

    def index_to_world(self, indices) -> np.ndarray:
        """Continuous index ``(i, j[, k])`` (x, y, z order) -> world mm ``(x, y[, z])``."""
        idx, single = self._points(indices, "indices")
        pts = (idx * self.spacing) @ self.direction.T + self.origin
        return pts[0] if single else pts

    def world_to_array_index(self, points) -> np.ndarray:
        """World mm -> continuous index in numpy array order ``(z, y, x)``."""
        return self.world_to_index(points)[..., ::-1].copy()

    def array_index_to_world(self, indices) -> np.ndarray:
        """Continuous index in numpy array order ``(z, y, x)`` -> world mm ``(x, y[, z])``."""
        return self.index_to_world(np.asarray(indices, dtype=np.float64)[..., ::-1])

    def contains(self, points, margin: float = 0.5) -> np.ndarray:
        """Boolean mask: which world points fall inside the grid (voxel borders included when
        ``margin=0.5``; pass a larger margin in voxels to accept points slightly outside)."""
        idx = np.atleast_2d(self.world_to_index(points))
        hi = np.asarray(self.size) - 1 + margin
        return np.all((idx >= -margin) & (idx <= hi), axis=1)

    def corners_world(self) -> np.ndarray:
        """World positions of the outer corners of the grid (voxel borders), (2**ndim, ndim)."""
        lo, hi = -0.5, np.asarray(self.size) - 0.5
        grids = np.stack(np.meshgrid(*[[lo, h] for h in hi], indexing="ij"), -1).reshape(-1, self.ndim)
        return self.index_to_world(grids)

    # ------------------------------------------------------------------ derived grids
    def with_spacing(self, spacing) -> "ImageGeometry":
        """Grid of the same physical extent and origin-corner at a new spacing. The first voxel's
        border is kept: the new grid starts at the same outer corner as this one."""
        spacing = _as_vector(spacing, self.ndim, "spacing")
        if np.any(spacing <= 0):
            raise ValueError(f"spacing must be positive, got {spacing.tolist()}")
        size = np.maximum(1, np.round(self.extent_mm / spacing).astype(int))
        return self._same_corner(size, spacing)

    def with_size(self, size) -> "ImageGeometry":
        """Grid covering exactly the same physical extent with ``size`` voxels (x, y[, z])."""
        size = np.asarray(size)
        if size.shape != (self.ndim,) or np.any(size < 1):
            raise ValueError(f"size must be {self.ndim} positive integers (x, y[, z]), got {size.tolist()}")
        spacing = self.extent_mm / size
        return self._same_corner(size.astype(int), spacing)

    def _same_corner(self, size, spacing) -> "ImageGeometry":
        corner = self.origin - self.direction @ (self.spacing / 2)
        origin = corner + self.direction @ (spacing / 2)
        return ImageGeometry(tuple(int(s) for s in size), spacing, origin, self.direction)

    def canonical(self, spacing=None, size=None) -> "ImageGeometry":
        """Identity-direction grid covering this grid's axis-aligned world bounding box, at
        ``spacing`` (mm) or with ``size`` voxels (x, y[, z]); exactly one of them. This is how
        samlearn puts every image in one orientation before the network sees it, so anatomy is never
        mirrored or permuted between images stored with different directions."""
        if (spacing is None) == (size is None):
            raise ValueError("give exactly one of spacing and size")
        corners = self.corners_world()
        lo, hi = corners.min(0), corners.max(0)
        extent = hi - lo
        if spacing is not None:
            spacing = _as_vector(spacing, self.ndim, "spacing")
            if np.any(spacing <= 0):
                raise ValueError(f"spacing must be positive, got {spacing.tolist()}")
            n = np.maximum(1, np.round(extent / spacing - 1e-9)).astype(int)
            # centre the grid on the bounding box
            origin = (lo + hi) / 2 - (n - 1) * spacing / 2
        else:
            n = np.asarray(size)
            if n.shape != (self.ndim,) or np.any(n < 1):
                raise ValueError(f"size must be {self.ndim} positive integers (x, y[, z]), got {n.tolist()}")
            spacing = extent / n
            origin = lo + spacing / 2
        return ImageGeometry(tuple(int(v) for v in n), spacing, origin, np.eye(self.ndim))

    def strided(self, stride, size=None) -> "ImageGeometry":
        """Grid of a feature map computed with ``stride`` (int or per axis, x, y, z order): feature
        voxel ``i`` sits at the centre of input voxels ``[s*i, s*i + s - 1]``, i.e. at input index
        ``s*i + (s-1)/2``, the same convention as ``torch.nn.functional.interpolate`` with
        ``align_corners=False``."""
        stride = _as_vector(stride, self.ndim, "stride")
        if size is None:
            size = np.maximum(1, np.ceil(np.asarray(self.size) / stride)).astype(int)
        origin = self.origin + self.direction @ (self.spacing * (stride - 1) / 2)
        return ImageGeometry(tuple(int(s) for s in size), self.spacing * stride, origin, self.direction)

    # ------------------------------------------------------------------ SimpleITK interop
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "ImageGeometry":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply_to_sitk(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": self.spacing.tolist(),
                "origin": self.origin.tolist(), "direction": self.direction.ravel().tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageGeometry":
        return cls(d["size"], d["spacing"], d["origin"], d["direction"])


def check_points(points, ndim: int, *, name: str = "points", allow_nan: bool = False) -> np.ndarray:
    """Validate world points: an (n_points, ndim) float array in (x, y[, z]) mm order."""
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of shape (n_points, {ndim}), got {type(points).__name__}") from exc
    if pts.ndim == 1 and pts.shape[0] == ndim:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != ndim or pts.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n_points, {ndim}) in world mm (x, y[, z] order), "
                         f"got shape {pts.shape}")
    bad = ~np.isfinite(pts) if not allow_nan else np.isinf(pts)
    if np.any(bad):
        rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
        raise ValueError(f"{name} contains non-finite coordinates (rows {rows})")
    return pts
