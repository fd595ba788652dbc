"""One image type for 2D and 3D medical images, with exact world geometry, and its readers.

An :class:`Image` is a float32 numpy array in numpy order ``(z, y, x)`` (3D) or ``(y, x)`` (2D),
as ``SimpleITK.GetArrayFromImage`` returns it, plus an
:class:`~samlearn.image.geometry.ImageGeometry` (spacing, origin, direction and size; see there
for the coordinate conventions).

Images are read through SimpleITK (:func:`read_image`): NIfTI, NRRD, MHA/MHD, a DICOM series
folder, and PNG / JPEG / TIFF / BMP for X-rays; damage that SimpleITK would read silently wrong is
refused first (:mod:`samlearn.image.integrity`). Resampling (to a spacing, to a size, onto another
grid) keeps the geometry exact, so a world point lands on the same anatomy before and after.
Intensity presets: :func:`normalize_intensity`.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, map_coordinates

from .._utils.docs import fill_doc
from .geometry import ImageGeometry
from .integrity import check_slice_positions, verify_image_file
from .resampling import check_interpolator, resample_sitk

__all__ = ["Image", "read_image", "normalize_intensity", "INTENSITY_PRESETS", "RASTER_SUFFIXES"]


_COLOUR_PIXEL_IDS = (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16)

#: file suffixes read as 2D raster pictures (X-rays), written as 8-bit by :meth:`Image.save`
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: the presets of :func:`normalize_intensity`
INTENSITY_PRESETS = ("ct", "xray", "none")


PathLike = Union[str, os.PathLike]


def _geometry_method(name: str):
    """An :class:`Image` method that calls ``ImageGeometry.<name>`` on the image's geometry (same
    signature and docstring)."""
    method = getattr(ImageGeometry, name)

    @functools.wraps(method)
    def forward(self, *args, **kwargs):
        return method(self.geometry, *args, **kwargs)
    return forward


class Image:
    """A 2D or 3D scalar image: ``array`` in numpy order (z, y, x) plus its :class:`ImageGeometry`.

    Build one with :meth:`from_file`, :meth:`from_sitk` or :meth:`from_array`; export with
    :meth:`to_sitk` or :meth:`save`. Pixel values are stored as float32 and must be finite.

    Parameters
    ----------
    array : array-like of shape (z, y, x) or (y, x)
        Real, finite pixel values (cast to float32).
    geometry : ImageGeometry
        The grid; its ``shape`` must equal the array's.
    source : str or None, default None
        Where the image came from (a path), for messages.

    Attributes
    ----------
    array, geometry, source
        The parameters, validated (``array`` as a float32 ndarray).
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
        """From a numpy array in numpy order, geometry vectors in (x, y[, z]) order (SimpleITK's).

        Parameters
        ----------
        array : array-like of shape (z, y, x) or (y, x)
            Real, finite pixel values.
        spacing, origin, direction
            As in :class:`ImageGeometry` (mm, ``(x, y[, z])`` order; None: identity direction).
        source : str or None, default None
            Where the image came from.

        Returns
        -------
        Image
            The image.
        """
        arr = _check_pixel_array(array, "array")
        geom = ImageGeometry(tuple(reversed(arr.shape)), spacing, origin, direction)
        return cls(arr, geom, source)

    @classmethod
    def from_sitk(cls, image: sitk.Image, *, source=None) -> "Image":
        """From a ``SimpleITK.Image`` (a single-slice 3D one with that axis kept apart: 2D).

        Parameters
        ----------
        image : SimpleITK.Image
            A scalar image, or a 2D 8/16-bit colour picture (RGB, RGBA, grey + alpha).
        source : str or None, default None
            As in :meth:`from_array`.

        Returns
        -------
        Image
            The image.
        """
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
        """Read an image file or a DICOM series folder (:func:`read_image`).

        Parameters
        ----------
        path : str or path
            The file or DICOM folder.
        series_id : str or None, default None
            The DICOM series to read from a folder holding several (see :func:`read_image`).

        Returns
        -------
        Image
            The image.
        """
        return read_image(path, series_id=series_id)

    # ------------------------------------------------------------------ properties
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions, 2 or 3."""
        return self.geometry.ndim

    @property
    def shape(self) -> tuple:
        """Array shape in numpy order (z, y, x)."""
        return self.array.shape

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing (mm), ``(x, y[, z])`` order."""
        return self.geometry.spacing

    @property
    def origin(self) -> np.ndarray:
        """World position (mm) of the first voxel's centre, ``(x, y[, z])``."""
        return self.geometry.origin

    @property
    def direction(self) -> np.ndarray:
        """Direction matrix: its columns are the world directions of the index axes."""
        return self.geometry.direction

    @property
    def size(self) -> tuple:
        """Voxels per axis, ``(x, y[, z])`` order."""
        return self.geometry.size

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Image({self.ndim}D, shape(z,y,x)={self.shape}, {self.geometry!r}{src})"

    # coordinate helpers: the geometry's methods, on the image's grid
    world_to_index = _geometry_method("world_to_index")
    index_to_world = _geometry_method("index_to_world")
    world_to_array_index = _geometry_method("world_to_array_index")
    array_index_to_world = _geometry_method("array_index_to_world")
    contains = _geometry_method("contains")

    def with_array(self, array) -> "Image":
        """Same geometry, new pixels (same shape).

        Parameters
        ----------
        array : array-like
            The new pixels, of this image's shape.

        Returns
        -------
        Image
            The new image (same geometry and source).
        """
        return Image(array, self.geometry, self.source)

    def copy(self) -> "Image":
        """A copy with its own pixel array (the immutable geometry is shared).

        Returns
        -------
        Image
            The copy.
        """
        return Image(self.array.copy(), self.geometry, self.source)

    # ------------------------------------------------------------------ export
    def to_sitk(self) -> sitk.Image:
        """Export as a float32 ``SimpleITK.Image`` with this geometry.

        Returns
        -------
        SimpleITK.Image
            The image.
        """
        img = sitk.GetImageFromArray(self.array, isVector=False)
        return self.geometry.apply_to_sitk(img)

    def save(self, path: PathLike) -> None:
        """Write with SimpleITK (format from the suffix), atomically: a temporary file then rename.

        Parameters
        ----------
        path : str or path
            The output file; raster formats (PNG, JPEG, TIFF, BMP) get values rescaled to 0-255.
        """
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
        """Resample onto another grid (world positions preserved).

        Parameters
        ----------
        geometry : ImageGeometry
            The target grid, of the same dimension.
        interpolator : {"linear", "nearest", "bspline"}, default "linear"
        default_value : float or None, default None
            The value outside the field of view; None is the image minimum (air for CT).
        antialias : bool, default True
            A Gaussian pre-filter suppresses aliasing along axes where the target spacing is
            coarser (not with ``"nearest"``).

        Returns
        -------
        Image
            The resampled image.
        """
        if not isinstance(geometry, ImageGeometry):
            raise TypeError(f"geometry must be an ImageGeometry, got {type(geometry).__name__}")
        if geometry.ndim != self.ndim:
            raise ValueError(f"geometry is {geometry.ndim}D but the image is {self.ndim}D")
        check_interpolator(interpolator)
        src = self
        if antialias and interpolator != "nearest":
            src = self._antialiased(geometry)
        if default_value is None:
            default_value = float(self.array.min())
        out = resample_sitk(src.to_sitk(), geometry, interpolator, default_value)
        return Image(sitk.GetArrayFromImage(out), geometry, self.source)

    def _antialiased(self, target: ImageGeometry) -> "Image":
        # Effective target spacing along each of this image's index axes (handles rotated targets).
        proj = np.abs(self.direction.T @ target.direction)  # (self axis, target axis)
        tgt_sp = proj @ target.spacing / np.maximum(proj.sum(1), 1e-12)
        factor = tgt_sp / self.spacing
        sigma_vox = np.where(factor > 1.0, np.sqrt(np.maximum(factor ** 2 - 1.0, 0.0)) / 2.0, 0.0)
        if not np.any(sigma_vox > 0.2):
            return self
        return self.with_array(gaussian_filter(self.array, sigma=sigma_vox[::-1], mode="nearest"))

    def resample_to_spacing(self, spacing, **kwargs) -> "Image":
        """Resample to a new spacing over the same physical extent (e.g. 2.0 for the CT presets).

        Parameters
        ----------
        spacing : float or sequence of float
            The new spacing (mm), scalar or per axis x, y, z.
        **kwargs
            Passed to :meth:`resample_to_geometry`.

        Returns
        -------
        Image
            The resampled image.
        """
        return self.resample_to_geometry(self.geometry.with_spacing(spacing), **kwargs)

    def resize(self, size, **kwargs) -> "Image":
        """Resample to a fixed number of voxels covering exactly the same physical extent.

        E.g. ``image.resize((512, 512))`` for X-rays; spacing changes, world points do not.

        Parameters
        ----------
        size : int or sequence of int
            The new size ``(x, y[, z])`` (an int for every axis).
        **kwargs
            Passed to :meth:`resample_to_geometry`.

        Returns
        -------
        Image
            The resampled image.
        """
        size = np.broadcast_to(np.asarray(size), (self.ndim,))
        return self.resample_to_geometry(self.geometry.with_size(size), **kwargs)

    @fill_doc
    def sample(self, points, order: int = 1, cval: float | None = None) -> np.ndarray:
        """Pixel values at world points, interpolated.

        Parameters
        ----------
        %(world_points)s
        order : int, default 1
            Spline order: 0 nearest, 1 linear, 3 cubic.
        cval : float or None, default None
            The value outside the image; None is the image minimum.

        Returns
        -------
        ndarray of shape (n_points,)
            The values.
        """
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
    """Read an image file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, TIFF, BMP...) or a DICOM series folder.

    Damage that SimpleITK would read silently wrong (truncation, NaN, missing DICOM slices, ...)
    is refused first (:mod:`samlearn.image.integrity`).

    Parameters
    ----------
    path : str or path
        The image file, or a folder of DICOM slices.
    series_id : str or None, default None
        The DICOM series to read from a folder; None reads the only one, or the largest (with a
        warning) when the folder holds several.

    Returns
    -------
    Image
        The image, its ``source`` the path.

    Raises
    ------
    FileNotFoundError
        When the path does not exist.
    ValueError
        For an unreadable, damaged or unsupported file or series.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image path does not exist: '{p}'")
    if p.is_dir():
        return _read_dicom_series(p, series_id)
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
    try:
        pos = [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)]
        iop = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    except (RuntimeError, ValueError, IndexError):
        return  # no position tags (e.g. a secondary capture): nothing to compare
    if len(iop) != 6 or any(len(p) != 3 for p in pos):
        return
    check_slice_positions(folder, pos, np.cross(iop[:3], iop[3:]))


def normalize_intensity(image: Image, preset: str = "ct") -> Image:
    """Map raw intensities to a network-friendly range with a documented preset.

    Parameters
    ----------
    image : Image
        The image.
    preset : {"ct", "xray", "none"}, default "ct"
        ``"ct"``: Hounsfield units clipped to ``[-1024, 2048]`` and divided by 1024, so air is -1,
        water 0, dense bone 1 and metal saturates at 2; linear inside the window, so relative
        contrast is kept. ``"xray"``: percentile based, for images with no physical unit: the 1st
        and 99th percentiles map to -1 and 1, values beyond are clipped to ``[-1.5, 1.5]``.
        ``"none"``: values unchanged (cast to float32).

    Returns
    -------
    Image
        The normalised image (same geometry); ``"xray"`` refuses a constant image.
    """
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
