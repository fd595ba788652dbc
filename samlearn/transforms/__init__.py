"""Spatial transforms between two images, and how they are fitted to point matches.

**Direction convention (read this once).** Registering ``fixed`` and ``moving`` gives a transform
``T`` that maps **FIXED world points to MOVING world points**: ``T.transform_points(p)`` takes
points of the fixed image (mm) and returns where the same anatomy lies in the moving image. That is
exactly the transform image resampling wants: ``T.resample(moving)`` pulls the moving image onto
the fixed grid (output voxel at fixed position ``x`` gets the moving image's value at ``T(x)``).
So points and image content move in *opposite* directions through the same transform: if the
anatomy of the moving image sits 10 mm further along +x, ``transform_points`` adds 10 mm to x,
and ``resample`` shifts the moving image's content by -10 mm so it lies over the fixed image.
``T.inverse()`` maps moving points back to fixed points. ``to_sitk()`` gives the SimpleITK
transform with the same meaning (fixed -> moving physical points, as ``sitk.Resample`` expects).

* :class:`AffineTransform` -- ``y = A x + t``, homogeneous ``matrix``.
* :class:`DisplacementField` -- ``y = x + u(x)``, ``u`` on a grid, linear interpolation, zero
  outside the grid, as ITK's ``DisplacementFieldTransform``.
* :class:`CompositeTransform` -- a chain, applied to points in the listed order.
* :func:`write_transform` / ``transform.save(path)`` and :func:`read_transform` -- ITK transform
  files (``.h5`` for any transform and chain, ``.tfm`` / ``.mat`` for affines) and displacement
  field images (``.nii.gz``, ...), which SimpleITK, ITK and ANTs read with the same meaning
  (:mod:`~samlearn.transforms.files`).
* :func:`fit_affine` -- least squares, RANSAC or Huber IRLS from point pairs
  (:mod:`~samlearn.transforms.fitting`); :func:`field_from_matches` -- a smooth field from
  residuals (:mod:`~samlearn.transforms.smoothing`).
"""
from .affine import AffineTransform
from .base import Transform
from .composite import CompositeTransform
from .field import FIELD_IMAGE_SUFFIXES, DisplacementField
from .files import TRANSFORM_SUFFIXES, read_transform, write_transform
from .fitting import ROBUST_FITS, fit_affine
from .smoothing import field_from_matches, field_geometry, smooth_field

__all__ = ["Transform", "AffineTransform", "DisplacementField", "CompositeTransform", "fit_affine",
           "ROBUST_FITS", "field_from_matches", "field_geometry", "smooth_field", "write_transform",
           "read_transform", "TRANSFORM_SUFFIXES", "FIELD_IMAGE_SUFFIXES"]
