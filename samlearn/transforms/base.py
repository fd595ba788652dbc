"""What every samlearn transform shares: point checks, the fixed reference grid, resampling
a moving image onto it through SimpleITK, and writing it to an ITK transform file (see
:mod:`samlearn.transforms` for the direction convention)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .._utils.files import write_atomically
from .._utils.docs import fill_doc
from ..exceptions import InvalidParameterError
from ..image import Image, ImageGeometry, check_images, check_points
from ..image.resampling import check_interpolator, resample_sitk

__all__ = ["Transform", "reference_geometry"]

#: ITK transform files every samlearn transform can be written to (HDF5: SimpleITK, ITK and ANTs
#: read it, composites included)
HDF5_SUFFIXES = (".h5", ".hdf5")


def file_suffix(path, accepted, what: str) -> str:
    """The suffix of ``path`` among ``accepted`` (case-insensitive, longest match), or raise.

    Parameters
    ----------
    path : str or path
        The file.
    accepted : sequence of str
        The suffixes, with their dot (``".nii.gz"``).
    what : str
        What is written, for the message.

    Returns
    -------
    str
        The matching suffix, lower case.

    Raises
    ------
    InvalidParameterError
        Naming the file and the accepted suffixes.
    """
    low = Path(path).name.lower()
    for suf in sorted(accepted, key=len, reverse=True):
        if low.endswith(suf) and len(low) > len(suf):
            return suf
    raise InvalidParameterError(f"cannot write {what} to '{path}': the file name must end with "
                                f"one of {', '.join(accepted)}")


def reference_geometry(reference, name="reference") -> ImageGeometry:
    """The grid of a fixed reference: an Image's, a SimpleITK image's, or an ImageGeometry itself.

    Parameters
    ----------
    reference : Image, SimpleITK.Image or ImageGeometry
        The fixed image or grid to resample onto.
    name : str, default "reference"
        The argument's name in error messages.

    Returns
    -------
    ImageGeometry
        The grid.

    Raises
    ------
    TypeError
        For any other type.
    """
    if isinstance(reference, ImageGeometry):
        return reference
    if isinstance(reference, Image):
        return reference.geometry
    if isinstance(reference, sitk.Image):
        return ImageGeometry.from_sitk(reference)
    raise TypeError(f"{name} must be an Image, a SimpleITK.Image or an ImageGeometry (the fixed "
                    f"grid to resample onto), got {type(reference).__name__}")


class Transform:
    """Shared behaviour: point checks, resampling through SimpleITK.

    Calling a transform is :meth:`transform_points`.

    Attributes
    ----------
    ndim : int
        The dimension, 2 or 3.
    reference : ImageGeometry or None
        The fixed grid, the default target of :meth:`resample`.
    """

    ndim: int
    reference: Optional[ImageGeometry]
    #: the file suffixes :meth:`save` accepts
    file_suffixes = HDF5_SUFFIXES

    def _check(self, points, name="points"):
        single = np.ndim(points) == 1
        return check_points(points, self.ndim, name=name), single

    @fill_doc
    def transform_points(self, points) -> np.ndarray:  # pragma: no cover - abstract
        """Map FIXED world points to MOVING world points (mm).

        %(fixed_to_moving)s
        """
        raise NotImplementedError

    def to_sitk(self) -> sitk.Transform:  # pragma: no cover - abstract
        """The SimpleITK transform with the same fixed -> moving meaning.

        Returns
        -------
        SimpleITK.Transform
            As ``sitk.Resample`` expects it.
        """
        raise NotImplementedError

    def save(self, path) -> Path:
        """Write to an ITK transform file, with the same fixed -> moving meaning.

        ``SimpleITK.ReadTransform`` (and ITK, ANTs) reads it back as the transform
        that ``sitk.Resample`` expects: it maps points of the fixed / output image to the moving
        / input image, as :meth:`transform_points` does. The file appears complete or not at all.

        Parameters
        ----------
        path : str or path
            The file; the suffix picks the format (``file_suffixes``): ``.h5`` / ``.hdf5`` (ITK
            HDF5, any transform, composites included), and for an affine also ``.tfm`` /
            ``.txt`` (ITK text) or ``.mat`` (ITK MATLAB, ANTs' affine format).

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        InvalidParameterError
            For a suffix this transform cannot be written to (the message lists the accepted).
        FileNotFoundError
            When the folder does not exist.
        """
        suffix = file_suffix(path, self.file_suffixes, type(self).__name__)
        tx = self.to_sitk()
        return write_atomically(path, lambda tmp: sitk.WriteTransform(tx, tmp), suffix=suffix)

    def __call__(self, points) -> np.ndarray:
        return self.transform_points(points)

    def resample(self, moving_image, reference=None, *, interpolator: str = "linear",
                 default_value: Optional[float] = None) -> Image:
        """Resample ``moving_image`` onto the fixed grid.

        The output voxel at fixed world position ``x`` takes the moving image's value at
        ``transform_points(x)``.

        Parameters
        ----------
        moving_image : Image, SimpleITK.Image or path
            One image of the transform's dimension.
        reference : Image, SimpleITK.Image, ImageGeometry or None, default None
            The fixed grid; None is the fixed image the transform was estimated on
            (``self.reference``).
        interpolator : {"linear", "nearest", "bspline"}, default "linear"
            The interpolation.
        default_value : float or None, default None
            The value outside the moving image; None is its minimum (air for CT).

        Returns
        -------
        Image
            The moving image on the fixed grid.
        """
        moving = check_images(moving_image, name="moving_image")
        if len(moving) != 1:
            raise ValueError(f"moving_image must be one image, got {len(moving)}")
        moving = moving[0]
        if moving.ndim != self.ndim:
            raise ValueError(f"moving_image is {moving.ndim}D but the transform is {self.ndim}D")
        if reference is None:
            if self.reference is None:
                raise ValueError("reference is needed: this transform does not know the fixed grid; "
                                 "pass reference=fixed_image (or its ImageGeometry)")
            geom = self.reference
        else:
            geom = reference_geometry(reference)
        if geom.ndim != self.ndim:
            raise ValueError(f"reference is {geom.ndim}D but the transform is {self.ndim}D")
        check_interpolator(interpolator)
        if default_value is None:
            default_value = float(moving.array.min())
        out = resample_sitk(moving.to_sitk(), geom, interpolator, default_value, self.to_sitk())
        return Image(sitk.GetArrayFromImage(out), geom, moving.source)
