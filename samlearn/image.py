"""One image type for 2D and 3D medical images, with exact world geometry.

An :class:`Image` is a numpy array plus an :class:`ImageGeometry` (spacing, origin, direction and
size). Conventions, identical to SimpleITK's:

* **World points** are millimetres in the image's physical (LPS) space, in ``(x, y[, z])`` order.
  Every public point input and output of samlearn uses them.
* **Continuous indices** (``world_to_index`` / ``index_to_world``) are voxel coordinates in
  ``(i, j[, k])`` = ``(x, y[, z])`` order, integer values at voxel centres, as
  ``SimpleITK.Image.TransformPhysicalPointToContinuousIndex`` returns them.
* **Arrays** are stored in numpy order ``(z, y, x)`` (3D) or ``(y, x)`` (2D), as
  ``SimpleITK.GetArrayFromImage`` returns them; ``world_to_array_index`` gives indices in that order.

The mapping is ``world = origin + direction @ (spacing * index)``.

Images are read through SimpleITK: NIfTI, NRRD, MHA/MHD, a DICOM series folder, and PNG / JPEG /
TIFF / BMP for X-rays. Resampling (to a spacing, to a size, onto another grid) keeps the geometry
exact, so a world point lands on the same anatomy before and after.

Intensity presets (:func:`normalize_intensity`):

* ``"ct"``: Hounsfield units clipped to ``[-1024, 2048]`` and divided by 1024, so air is -1, water 0,
  dense bone 1 and metal saturates at 2. Linear inside the window, so relative contrast is kept.
* ``"xray"``: percentile based, for images with no physical unit: the 1st and 99th percentiles map to
  -1 and 1, values beyond are clipped to ``[-1.5, 1.5]``.
* ``"none"``: values unchanged (cast to float32).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import SimpleITK as sitk

__all__ = [
    "ImageGeometry",
    "Image",
    "check_images",
    "check_points",
    "normalize_intensity",
    "read_image",
    "INTENSITY_PRESETS",
]

_ORTHO_TOL = 1e-4
_COLOUR_PIXEL_IDS = (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16)
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
INTENSITY_PRESETS = ("ct", "xray", "none")


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


PathLike = Union[str, os.PathLike]


class Image:
    """A 2D or 3D scalar image: ``array`` in numpy order (z, y, x) plus its :class:`ImageGeometry`.

    Build one with :meth:`from_file`, :meth:`from_sitk` or :meth:`from_array`; export with
    :meth:`to_sitk` or :meth:`save`. Pixel values are stored as float32 and must be finite.
    """

    __slots__ = ("array", "geometry", "source")

    def __init__(self, array: np.ndarray, geometry: ImageGeometry, source: str | None = None):
        arr = _check_pixel_array(array, "array")
        if not isinstance(geometry, ImageGeometry):
            raise TypeError(f"geometry must be an ImageGeometry, got {type(geometry).__name__}")
        if arr.shape != geometry.shape:
            raise ValueError(
                f"array shape {arr.shape} (z, y, x order) does not match geometry size "
                f"{geometry.size} (x, y, z order)")
        self.array = arr
        self.geometry = geometry
        self.source = source

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_array(cls, array, spacing=1.0, origin=0.0, direction=None, *, source=None) -> "Image":
        """From a numpy array in numpy order ((z, y, x) or (y, x)) and geometry vectors in
        (x, y[, z]) order (SimpleITK's conventions)."""
        arr = _check_pixel_array(array, "array")
        geom = ImageGeometry(tuple(reversed(arr.shape)), spacing, origin, direction)
        return cls(arr, geom, source)

    @classmethod
    def from_sitk(cls, image: sitk.Image, *, source=None) -> "Image":
        """From a ``SimpleITK.Image`` (scalar, or RGB/RGBA which is converted to luminance).
        A 3D image with a single slice whose direction keeps that axis apart becomes 2D."""
        if not isinstance(image, sitk.Image):
            raise TypeError(f"image must be a SimpleITK.Image, got {type(image).__name__}")
        ncomp = image.GetNumberOfComponentsPerPixel()
        if ncomp > 1 and not (image.GetDimension() == 2 and ncomp in (2, 3, 4)
                              and image.GetPixelID() in _COLOUR_PIXEL_IDS):
            # a 4D volume (read as a vector image), a vector field or a colour volume: converting it
            # to luminance would be silently wrong
            raise ValueError(
                f"image has {ncomp} components per pixel ({image.GetPixelIDTypeAsString()}, "
                f"{image.GetDimension()}D): samlearn needs one scalar per voxel, and converts only 2D "
                f"8/16-bit colour pictures (RGB, RGBA, grey+alpha) to luminance. For a 4D or vector "
                f"image, select one component first (SimpleITK.VectorIndexSelectionCast)")
        arr = sitk.GetArrayFromImage(image)
        if ncomp > 1:
            arr = _to_luminance(arr, ncomp)
        geom = ImageGeometry.from_sitk(image)
        if geom.ndim == 3 and geom.size[2] == 1 and np.allclose(geom.direction[2], [0, 0, 1]) \
                and np.allclose(geom.direction[:, 2], [0, 0, 1]):
            geom = ImageGeometry(geom.size[:2], geom.spacing[:2], geom.origin[:2], geom.direction[:2, :2])
            arr = arr[0]
        if arr.ndim not in (2, 3):
            raise ValueError(f"image must be 2D or 3D, got a {image.GetDimension()}D SimpleITK image")
        return cls(arr, geom, source)

    @classmethod
    def from_file(cls, path: PathLike, *, series_id: str | None = None) -> "Image":
        """Read NIfTI, NRRD, MHA/MHD, PNG / JPEG / TIFF / BMP, or a folder holding a DICOM series."""
        return read_image(path, series_id=series_id)

    # ------------------------------------------------------------------ properties
    @property
    def ndim(self) -> int:
        return self.geometry.ndim

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def spacing(self) -> np.ndarray:
        return self.geometry.spacing

    @property
    def origin(self) -> np.ndarray:
        return self.geometry.origin

    @property
    def direction(self) -> np.ndarray:
        return self.geometry.direction

    @property
    def size(self) -> tuple:
        return self.geometry.size

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Image({self.ndim}D, shape(z,y,x)={self.shape}, {self.geometry!r}{src})"

    # coordinate helpers forwarded to the geometry
    def world_to_index(self, points):
        return self.geometry.world_to_index(points)

    def index_to_world(self, indices):
        return self.geometry.index_to_world(indices)

    def world_to_array_index(self, points):
        return self.geometry.world_to_array_index(points)

    def array_index_to_world(self, indices):
        return self.geometry.array_index_to_world(indices)

    def contains(self, points, margin: float = 0.5):
        return self.geometry.contains(points, margin)

    def with_array(self, array) -> "Image":
        """Same geometry, new pixels (same shape)."""
        return Image(array, self.geometry, self.source)

    def copy(self) -> "Image":
        return Image(self.array.copy(), self.geometry, self.source)

    # ------------------------------------------------------------------ export
    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array, isVector=False)
        return self.geometry.apply_to_sitk(img)

    def save(self, path: PathLike) -> None:
        """Write with SimpleITK (format from the suffix), atomically: a temporary file then rename."""
        path = Path(path)
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
        img = self.to_sitk()
        if suffix.lower() in RASTER_SUFFIXES:
            img = sitk.Cast(sitk.RescaleIntensity(img, 0, 255), sitk.sitkUInt8)
        try:
            sitk.WriteImage(img, str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    # ------------------------------------------------------------------ resampling
    def resample_to_geometry(self, geometry: ImageGeometry, *, interpolator: str = "linear",
                             default_value: float | None = None, antialias: bool = True) -> "Image":
        """Resample onto another grid (world positions preserved). ``interpolator`` is ``"linear"``,
        ``"nearest"`` or ``"bspline"``. With ``antialias`` a Gaussian pre-filter suppresses aliasing
        along axes where the target spacing is coarser. Outside the field of view the image gets
        ``default_value`` (default: the image minimum, i.e. air for CT)."""
        if not isinstance(geometry, ImageGeometry):
            raise TypeError(f"geometry must be an ImageGeometry, got {type(geometry).__name__}")
        if geometry.ndim != self.ndim:
            raise ValueError(f"geometry is {geometry.ndim}D but the image is {self.ndim}D")
        interps = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
                   "bspline": sitk.sitkBSpline}
        if interpolator not in interps:
            raise ValueError(f"interpolator must be one of {sorted(interps)}, got {interpolator!r}")
        src = self
        if antialias and interpolator != "nearest":
            src = self._antialiased(geometry)
        if default_value is None:
            default_value = float(self.array.min())
        f = sitk.ResampleImageFilter()
        f.SetSize([int(s) for s in geometry.size])
        f.SetOutputSpacing([float(v) for v in geometry.spacing])
        f.SetOutputOrigin([float(v) for v in geometry.origin])
        f.SetOutputDirection([float(v) for v in geometry.direction.ravel()])
        f.SetInterpolator(interps[interpolator])
        f.SetDefaultPixelValue(float(default_value))
        f.SetOutputPixelType(sitk.sitkFloat32)
        out = f.Execute(src.to_sitk())
        return Image(sitk.GetArrayFromImage(out), geometry, self.source)

    def _antialiased(self, target: ImageGeometry) -> "Image":
        # Effective target spacing along each of this image's index axes (handles rotated targets).
        proj = np.abs(self.direction.T @ target.direction)  # (self axis, target axis)
        tgt_sp = proj @ target.spacing / np.maximum(proj.sum(1), 1e-12)
        factor = tgt_sp / self.spacing
        sigma_vox = np.where(factor > 1.0, np.sqrt(np.maximum(factor ** 2 - 1.0, 0.0)) / 2.0, 0.0)
        if not np.any(sigma_vox > 0.2):
            return self
        from scipy.ndimage import gaussian_filter
        return self.with_array(gaussian_filter(self.array, sigma=sigma_vox[::-1], mode="nearest"))

    def resample_to_spacing(self, spacing, **kwargs) -> "Image":
        """Resample to a new spacing (mm, scalar or per axis x, y, z) over the same physical
        extent, e.g. ``image.resample_to_spacing(2.0)`` for the CT presets."""
        return self.resample_to_geometry(self.geometry.with_spacing(spacing), **kwargs)

    def resize(self, size, **kwargs) -> "Image":
        """Resample to a fixed number of voxels (x, y[, z]) covering exactly the same physical
        extent, e.g. ``image.resize((512, 512))`` for X-rays. Spacing changes accordingly, so
        world points are unchanged."""
        size = np.broadcast_to(np.asarray(size), (self.ndim,))
        return self.resample_to_geometry(self.geometry.with_size(size), **kwargs)

    def sample(self, points, order: int = 1, cval: float | None = None) -> np.ndarray:
        """Pixel values at world points (interpolated; ``order`` 0 nearest, 1 linear, 3 cubic)."""
        from scipy.ndimage import map_coordinates
        idx = np.atleast_2d(self.world_to_array_index(points))
        if cval is None:
            cval = float(self.array.min())
        return map_coordinates(self.array, idx.T, order=order, mode="constant", cval=cval)


def _to_luminance(arr: np.ndarray, ncomp: int) -> np.ndarray:
    arr = arr.astype(np.float32)
    if ncomp in (3, 4):
        return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    if ncomp == 2:  # grey + alpha
        return arr[..., 0]
    raise ValueError(f"cannot convert a {ncomp}-component image to a scalar image")


def _check_pixel_array(array, name: str) -> np.ndarray:
    if isinstance(array, (sitk.Image, Image)):
        raise TypeError(f"{name} must be a numpy array; use Image.from_sitk or pass the Image itself")
    try:
        arr = np.asarray(array)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be array-like, got {type(array).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D (y, x) or 3D (z, y, x), got {arr.ndim}D with shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite pixel values")
    return arr


def read_image(path: PathLike, *, series_id: str | None = None) -> Image:
    """Read an image file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, TIFF, BMP...) or a DICOM series folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image path does not exist: '{p}'")
    if p.is_dir():
        return _read_dicom_series(p, series_id)
    from ._integrity import verify_image_file
    verify_image_file(p)  # damage that SimpleITK would read silently wrong (truncation, NaN, ...)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "exception" in ln.lower()), first[-1] if first else "")
        raise ValueError(f"could not read image file '{p}': not a readable or supported image "
                         f"({detail.strip()[:200]})") from None
    return _from_sitk_named(img, str(p), f"image file '{p}'")


def _from_sitk_named(img: sitk.Image, source: str, what: str) -> Image:
    """``Image.from_sitk`` whose validation errors name the file they came from."""
    try:
        return Image.from_sitk(img, source=source)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _read_dicom_series(folder: Path, series_id: str | None) -> Image:
    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)) or ())
    if not ids:
        raise ValueError(f"folder '{folder}' holds no DICOM series (give a file, or a folder of DICOM slices)")
    if series_id is None:
        if len(ids) > 1:
            counts = [len(reader.GetGDCMSeriesFileNames(str(folder), s)) for s in ids]
            series_id = ids[int(np.argmax(counts))]
            warnings.warn(f"folder '{folder}' holds {len(ids)} DICOM series; reading the largest "
                          f"({series_id}). Pass series_id= to choose.", stacklevel=3)
        else:
            series_id = ids[0]
    elif series_id not in ids:
        raise ValueError(f"series_id {series_id!r} is not in folder '{folder}' (found {ids})")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"could not read the DICOM series in '{folder}': {str(exc).strip()[-200:]}") from None
    _check_dicom_slices(reader, folder, len(files))
    return _from_sitk_named(img, str(folder), f"DICOM series in '{folder}'")


def _check_dicom_slices(reader, folder: Path, n: int) -> None:
    """Missing or unreadable slices (GDCM silently leaves them out of the series) show as uneven
    gaps between ImagePositionPatient values: refuse them."""
    from ._integrity import check_slice_positions
    try:
        pos = [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)]
        iop = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    except (RuntimeError, ValueError, IndexError):
        return  # no position tags (e.g. a secondary capture): nothing to compare
    if len(iop) != 6 or any(len(p) != 3 for p in pos):
        return
    check_slice_positions(folder, pos, np.cross(iop[:3], iop[3:]))


def read_item(item, what: str) -> Image:
    """One item of :func:`image_items` as an :class:`Image` (read from disk when a path);
    ``what`` names it in error messages (e.g. ``"images[3]"``)."""
    if isinstance(item, Image):
        return item
    if isinstance(item, sitk.Image):
        return _from_sitk_named(item, None, what)
    return read_image(item)


def image_items(images, name: str = "images") -> list:
    """The items of one image or a list of images (``Image``, ``SimpleITK.Image`` or path), types
    checked, without reading any file: :func:`check_images` reads them all at once, the lazy paths
    (:func:`samlearn.inference.load_item`) one at a time."""
    if isinstance(images, np.ndarray):
        raise TypeError(
            f"{name} must be an Image, a SimpleITK.Image, a path or a list of these; got a numpy "
            f"array, whose spacing and origin are unknown. Wrap it with "
            f"samlearn.Image.from_array(array, spacing=..., origin=...)")
    if isinstance(images, (Image, sitk.Image, str, os.PathLike)):
        items = [images]
    elif isinstance(images, (list, tuple)) or _is_sequence(images):
        items = list(images)
    else:
        raise TypeError(f"{name} must be an Image, a SimpleITK.Image, a path or a list of these, "
                        f"got {type(images).__name__}")
    if not items:
        raise ValueError(f"{name} is empty: give at least one image")
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            raise TypeError(f"{name}[{i}] is a numpy array, whose geometry is unknown; wrap it with "
                            f"samlearn.Image.from_array(array, spacing=..., origin=...)")
        if not isinstance(item, (Image, sitk.Image, str, os.PathLike)):
            raise TypeError(f"{name}[{i}] must be an Image, a SimpleITK.Image or a path, "
                            f"got {type(item).__name__}")
    return items


def check_images(images, *, ndim: int | None = None, name: str = "images") -> list:
    """Turn one image or a list of images into a list of :class:`Image`.

    Accepts an :class:`Image`, a ``SimpleITK.Image``, a path (file or DICOM folder), or a list /
    tuple of these. Idempotent (Images pass through unchanged). Rejects raw numpy arrays (their
    geometry would be guessed: use ``Image.from_array``), empty lists, and lists that mix 2D and 3D.
    ``ndim`` (2 or 3), when given, is the dimensionality every image must have.
    """
    out = [read_item(item, f"{name}[{i}]") for i, item in enumerate(image_items(images, name=name))]
    dims = [im.ndim for im in out]
    if len(set(dims)) > 1:
        first3 = dims.index(3)
        first2 = dims.index(2)
        raise ValueError(f"{name} mixes 2D and 3D images ({name}[{first2}] is 2D, {name}[{first3}] is 3D); "
                         f"give images of one dimensionality")
    if ndim is not None and dims[0] != ndim:
        raise ValueError(f"{name} must be {ndim}D images, got {dims[0]}D")
    return out


def _is_sequence(obj) -> bool:
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, (bytes, dict))


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


def normalize_intensity(image: Image, preset: str = "ct") -> Image:
    """Map raw intensities to a network-friendly range with a documented preset (see module doc)."""
    if not isinstance(image, Image):
        raise TypeError(f"image must be a samlearn Image, got {type(image).__name__}")
    if preset not in INTENSITY_PRESETS:
        raise ValueError(f"preset must be one of {INTENSITY_PRESETS}, got {preset!r}")
    arr = image.array
    if preset == "ct":
        out = np.clip(arr, -1024.0, 2048.0) / 1024.0
    elif preset == "xray":
        sample = arr if arr.size <= 4_000_000 else arr.ravel()[:: max(1, arr.size // 4_000_000)]
        lo, hi = np.percentile(sample, [1.0, 99.0])
        if hi - lo <= 1e-6 * max(1.0, abs(hi)):
            lo, hi = float(arr.min()), float(arr.max())
            if hi - lo <= 0:
                raise ValueError("image is constant: X-ray normalisation needs some contrast")
        out = np.clip((arr - lo) / (hi - lo) * 2.0 - 1.0, -1.5, 1.5)
    else:
        out = arr
    return image.with_array(out.astype(np.float32, copy=False))
