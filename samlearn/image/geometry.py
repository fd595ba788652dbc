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

from .._utils.docs import fill_doc

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
    """Voxel grid in world space, immutable.

    All vectors are in ``(x, y[, z])`` order, as in SimpleITK; the mapping is
    ``world = origin + direction @ (spacing * index)``.

    Parameters
    ----------
    size : sequence of int
        Voxels per axis, 2 or 3 positive integers ``(x, y[, z])``.
    spacing : float or sequence of float, default 1.0
        Voxel spacing (mm), positive; a scalar applies to every axis.
    origin : float or sequence of float, default 0.0
        World position (mm) of the centre of the first voxel.
    direction : array-like or None, default None
        Orthonormal ``(ndim, ndim)`` matrix whose columns are the world directions of the index
        axes (or its ``ndim * ndim`` values row-major, as SimpleITK gives it); None is the
        identity.

    Attributes
    ----------
    size : tuple of int
        Voxels per axis ``(x, y[, z])``.
    spacing, origin : ndarray of shape (ndim,)
        Spacing and first-voxel centre (mm), read-only.
    direction : ndarray of shape (ndim, ndim)
        The direction matrix, read-only.

    Raises
    ------
    ValueError
        For a size, spacing, origin or direction out of range, or a grid whose world coordinates
        would not be representable (``|origin| + size * spacing`` must stay below 1e15 mm).
    TypeError
        For a missing or non-numeric spacing or origin.
    """

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
        """Number of spatial dimensions, 2 or 3."""
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
        """Whether two grids are equal: same size, spacing, origin and direction within ``atol``.

        Parameters
        ----------
        other : ImageGeometry
            The grid to compare with.
        atol : float, default 1e-6
            Absolute tolerance on spacing, origin (mm) and direction.

        Returns
        -------
        bool
            True when the grids match.
        """
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

    @fill_doc
    def world_to_index(self, points) -> np.ndarray:
        """World mm ``(x, y[, z])`` -> continuous index ``(i, j[, k])`` (x, y, z order).

        Parameters
        ----------
        %(world_points)s

        Returns
        -------
        ndarray of shape (n_points, ndim) or (ndim,)
            Continuous indices, integer values at voxel centres (the input's shape).
        """
        pts, single = self._points(points, "points")
        idx = ((pts - self.origin) @ self.direction) / self.spacing
        return idx[0] if single else idx

    def index_to_world(self, indices) -> np.ndarray:
        """Continuous index ``(i, j[, k])`` (x, y, z order) -> world mm ``(x, y[, z])``.

        Parameters
        ----------
        indices : array-like of shape (n_points, ndim) or (ndim,)
            Continuous indices in ``(i, j[, k])`` order.

        Returns
        -------
        ndarray of shape (n_points, ndim) or (ndim,)
            World points (mm), the input's shape.
        """
        idx, single = self._points(indices, "indices")
        pts = (idx * self.spacing) @ self.direction.T + self.origin
        return pts[0] if single else pts

    def world_to_array_index(self, points) -> np.ndarray:
        """World mm -> continuous index in numpy array order ``(z, y, x)``.

        Parameters
        ----------
        points : array-like of shape (n_points, ndim) or (ndim,)
            World points, as in :meth:`world_to_index`.

        Returns
        -------
        ndarray of shape (n_points, ndim) or (ndim,)
            Continuous array indices ``(z, y, x)`` / ``(y, x)``.
        """
        return self.world_to_index(points)[..., ::-1].copy()

    def array_index_to_world(self, indices) -> np.ndarray:
        """Continuous index in numpy array order ``(z, y, x)`` -> world mm ``(x, y[, z])``.

        Parameters
        ----------
        indices : array-like of shape (n_points, ndim) or (ndim,)
            Continuous array indices ``(z, y, x)`` / ``(y, x)``.

        Returns
        -------
        ndarray of shape (n_points, ndim) or (ndim,)
            World points (mm).
        """
        return self.index_to_world(np.asarray(indices, dtype=np.float64)[..., ::-1])

    @fill_doc
    def contains(self, points, margin: float = 0.5) -> np.ndarray:
        """Which world points fall inside the grid.

        Parameters
        ----------
        %(world_points)s
        margin : float, default 0.5
            Tolerance in voxels beyond the outer voxel centres: 0.5 accepts points up to the
            voxel borders; a larger margin accepts points slightly outside.

        Returns
        -------
        ndarray of bool, shape (n_points,)
            The mask.
        """
        idx = np.atleast_2d(self.world_to_index(points))
        hi = np.asarray(self.size) - 1 + margin
        return np.all((idx >= -margin) & (idx <= hi), axis=1)

    def corners_world(self) -> np.ndarray:
        """World positions of the outer corners of the grid (voxel borders).

        Returns
        -------
        ndarray of shape ``(2**ndim, ndim)``
            The corners (mm).
        """
        lo, hi = -0.5, np.asarray(self.size) - 0.5
        grids = np.stack(np.meshgrid(*[[lo, h] for h in hi], indexing="ij"), -1).reshape(-1, self.ndim)
        return self.index_to_world(grids)

    # ------------------------------------------------------------------ derived grids
    def with_spacing(self, spacing) -> "ImageGeometry":
        """Grid of the same physical extent and origin-corner at a new spacing.

        The first voxel's border is kept: the new grid starts at the same outer corner as this
        one; the size is the extent divided by the spacing, rounded (at least 1).

        Parameters
        ----------
        spacing : float or sequence of float
            The new spacing (mm), ``(x, y[, z])``.

        Returns
        -------
        ImageGeometry
            The new grid.
        """
        spacing = _as_vector(spacing, self.ndim, "spacing")
        if np.any(spacing <= 0):
            raise ValueError(f"spacing must be positive, got {spacing.tolist()}")
        size = np.maximum(1, np.round(self.extent_mm / spacing).astype(int))
        return self._same_corner(size, spacing)

    def with_size(self, size) -> "ImageGeometry":
        """Grid covering exactly the same physical extent with ``size`` voxels.

        Parameters
        ----------
        size : sequence of int
            The new size ``(x, y[, z])``.

        Returns
        -------
        ImageGeometry
            The new grid, starting at the same outer corner.
        """
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
        """Identity-direction grid covering this grid's axis-aligned world bounding box.

        This is how samlearn puts every image in one orientation before the network sees it, so
        anatomy is never mirrored or permuted between images stored with different directions.

        Parameters
        ----------
        spacing : float or sequence of float, optional
            Spacing (mm) of the new grid, which is centred on the bounding box.
        size : sequence of int, optional
            Voxels ``(x, y[, z])`` of the new grid, which then covers the box exactly. Give
            exactly one of ``spacing`` and ``size``.

        Returns
        -------
        ImageGeometry
            The canonical grid.
        """
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
        """Grid of a feature map computed with ``stride``.

        Feature voxel ``i`` sits at the centre of input voxels ``[s*i, s*i + s - 1]``, i.e. at
        input index ``s*i + (s-1)/2``, the same convention as ``torch.nn.functional.interpolate``
        with ``align_corners=False``.

        Parameters
        ----------
        stride : int or sequence of int
            Stride, one value or one per axis (x, y[, z] order).
        size : sequence of int, optional
            Size of the feature map; by default ``ceil(size / stride)``.

        Returns
        -------
        ImageGeometry
            The feature map's grid.
        """
        stride = _as_vector(stride, self.ndim, "stride")
        if size is None:
            size = np.maximum(1, np.ceil(np.asarray(self.size) / stride)).astype(int)
        origin = self.origin + self.direction @ (self.spacing * (stride - 1) / 2)
        return ImageGeometry(tuple(int(s) for s in size), self.spacing * stride, origin, self.direction)

    # ------------------------------------------------------------------ SimpleITK interop
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "ImageGeometry":
        """The grid of a SimpleITK image.

        Parameters
        ----------
        image : SimpleITK.Image
            The image.

        Returns
        -------
        ImageGeometry
            Its size, spacing, origin and direction.
        """
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def apply_to_sitk(self, image: sitk.Image) -> sitk.Image:
        """Set this grid's spacing, origin and direction on a SimpleITK image, in place.

        Parameters
        ----------
        image : SimpleITK.Image
            An image of this grid's size.

        Returns
        -------
        SimpleITK.Image
            ``image`` itself.
        """
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def to_dict(self) -> dict:
        """A JSON-serialisable description of the grid.

        Returns
        -------
        dict
            ``size``, ``spacing``, ``origin`` and ``direction`` (row-major) as lists.
        """
        return {"size": list(self.size), "spacing": self.spacing.tolist(),
                "origin": self.origin.tolist(), "direction": self.direction.ravel().tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageGeometry":
        """The inverse of :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            With keys ``size``, ``spacing``, ``origin`` and ``direction``.

        Returns
        -------
        ImageGeometry
            The grid.
        """
        return cls(d["size"], d["spacing"], d["origin"], d["direction"])


def check_points(points, ndim: int, *, name: str = "points", allow_nan: bool = False) -> np.ndarray:
    """Validate world points: an (n_points, ndim) float array in (x, y[, z]) mm order.

    Parameters
    ----------
    points : array-like of shape (n_points, ndim) or (ndim,)
        World points (mm); a single point becomes one row.
    ndim : int
        The image dimension, 2 or 3.
    name : str, default "points"
        The name used in error messages.
    allow_nan : bool, default False
        Accept NaN coordinates (placeholders for missing points); infinities are always rejected.

    Returns
    -------
    ndarray of shape (n_points, ndim)
        The points as float64.

    Raises
    ------
    TypeError
        For non-numeric input.
    ValueError
        For a wrong shape, no points, or non-finite coordinates.
    """
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
