"""Resampling onto a grid through SimpleITK: the interpolators samlearn names, and the one
``ResampleImageFilter`` set-up that :meth:`samlearn.Image.resample_to_geometry` and the
transforms' ``resample`` share."""
from __future__ import annotations

import SimpleITK as sitk

from .geometry import ImageGeometry

__all__ = ["INTERPOLATORS", "check_interpolator", "resample_sitk"]

#: interpolator name -> SimpleITK interpolator
INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
                 "bspline": sitk.sitkBSpline}


def check_interpolator(interpolator) -> int:
    """The SimpleITK interpolator of a name of :data:`INTERPOLATORS`.

    Parameters
    ----------
    interpolator : {"linear", "nearest", "bspline"}
        The name.

    Returns
    -------
    int
        The SimpleITK interpolator (``sitk.sitkLinear``, ...).

    Raises
    ------
    ValueError
        For any other name.
    """
    try:
        return INTERPOLATORS[interpolator]
    except KeyError:
        raise ValueError(f"interpolator must be one of {sorted(INTERPOLATORS)}, got {interpolator!r}") from None


def resample_sitk(image: sitk.Image, geometry: ImageGeometry, interpolator: str, default_value: float,
                  transform: sitk.Transform | None = None) -> sitk.Image:
    """Resample a SimpleITK image onto a grid, as float32.

    Parameters
    ----------
    image : SimpleITK.Image
        The image to resample.
    geometry : ImageGeometry
        The output grid.
    interpolator : {"linear", "nearest", "bspline"}
        The interpolation (:func:`check_interpolator`).
    default_value : float
        The value outside ``image``.
    transform : SimpleITK.Transform or None, default None
        Maps output world points to ``image``'s world points (None: the identity).

    Returns
    -------
    SimpleITK.Image
        The float32 image on ``geometry``.
    """
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in geometry.size])
    f.SetOutputSpacing([float(v) for v in geometry.spacing])
    f.SetOutputOrigin([float(v) for v in geometry.origin])
    f.SetOutputDirection([float(v) for v in geometry.direction.ravel()])
    f.SetInterpolator(check_interpolator(interpolator))
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(sitk.sitkFloat32)
    if transform is not None:
        f.SetTransform(transform)
    return f.Execute(image)
