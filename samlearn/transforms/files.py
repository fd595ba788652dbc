"""Transform files: write a samlearn transform to, and read it back from, the files SimpleITK, ITK
and ANTs use, with the same fixed -> moving meaning (see :mod:`samlearn.transforms`).

* ``.h5`` / ``.hdf5`` -- ITK HDF5 transform file: any transform, a chain as one ITK
  ``CompositeTransform`` (what ``SAMDeformableRegistrar.transform_`` needs).
* ``.tfm`` / ``.txt`` (ITK text), ``.mat`` (ITK MATLAB, ANTs' affine format) -- affines.
* ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` -- a displacement field as a vector image (ITK and
  ANTs warp-field convention: LPS mm displacements on the fixed grid, fixed -> moving).

``SimpleITK.ReadTransform`` reads every transform file back as the transform ``sitk.Resample``
expects (output / fixed points to input / moving points), exactly what
:meth:`~samlearn.transforms.Transform.transform_points` computes.
"""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..exceptions import InvalidParameterError
from .affine import AffineTransform
from .base import HDF5_SUFFIXES, Transform
from .composite import CompositeTransform
from .field import FIELD_IMAGE_SUFFIXES, DisplacementField

__all__ = ["TRANSFORM_SUFFIXES", "write_transform", "read_transform"]

#: every suffix :func:`read_transform` accepts (what :func:`write_transform` writes depends on
#: the transform: see its ``file_suffixes``)
TRANSFORM_SUFFIXES = HDF5_SUFFIXES + (".tfm", ".txt", ".mat") + FIELD_IMAGE_SUFFIXES


def write_transform(transform: Transform, path) -> Path:
    """Write a samlearn transform to a file SimpleITK, ITK and ANTs read, same meaning.

    The same as ``transform.save(path)``: ``.h5`` / ``.hdf5`` for any transform (a
    :class:`CompositeTransform` becomes one ITK composite, nested chains flattened), ``.tfm`` /
    ``.txt`` / ``.mat`` for an :class:`AffineTransform`, and ``.nii.gz`` / ``.nii`` / ``.nrrd`` /
    ``.mha`` (a vector image) for a :class:`DisplacementField`.

    Parameters
    ----------
    transform : Transform
        An AffineTransform, DisplacementField or CompositeTransform (fixed -> moving).
    path : str or path
        The file; its suffix picks the format; its folder must exist.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        For anything but a samlearn transform.
    InvalidParameterError
        For a suffix this transform cannot be written to.
    """
    if not isinstance(transform, Transform):
        raise TypeError(f"transform must be a samlearn transform (AffineTransform, DisplacementField, "
                        f"CompositeTransform), got {type(transform).__name__}")
    return transform.save(path)


def _from_sitk(tx: sitk.Transform, reference):
    tx = tx.Downcast()
    if isinstance(tx, sitk.CompositeTransform):
        parts = [_from_sitk(tx.GetNthTransform(i), None) for i in range(tx.GetNumberOfTransforms())]
        if not parts:
            raise ValueError("the file holds an empty composite transform")
        return CompositeTransform(parts[::-1], reference=reference)  # ITK applies the last first
    if isinstance(tx, sitk.DisplacementFieldTransform):
        return DisplacementField.from_sitk(tx, reference=reference)
    if isinstance(tx, sitk.TranslationTransform):
        ndim = tx.GetDimension()
        return AffineTransform.from_linear(_eye(ndim), tx.GetOffset(), reference=reference)
    try:
        return AffineTransform.from_sitk(tx, reference=reference)
    except TypeError:
        raise ValueError(f"samlearn reads affine-like transforms, displacement fields and chains of "
                         f"them, not a {tx.GetName()}") from None


def _eye(n):
    return [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]


def read_transform(path, *, reference=None) -> Transform:
    """Read a transform file (or a displacement-field image) as a samlearn transform.

    Parameters
    ----------
    path : str or path
        An ITK transform file (``.h5``, ``.hdf5``, ``.tfm``, ``.txt``, ``.mat``) holding an
        affine-like transform, a displacement field or a composite of them, or a displacement
        field image (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``: LPS mm vectors, fixed -> moving).
    reference : ImageGeometry, Image or None, default None
        The fixed grid: the default target of ``resample``.

    Returns
    -------
    Transform
        An AffineTransform, a DisplacementField or a CompositeTransform (for a composite file,
        entries in the order they apply to points), fixed -> moving as the file.

    Raises
    ------
    FileNotFoundError
        For a missing file.
    InvalidParameterError
        For an unknown suffix.
    ValueError
        For a file SimpleITK cannot read, or a transform type samlearn has no counterpart of
        (B-splines, ...).
    """
    p = Path(path)
    low = p.name.lower()
    if not low.endswith(TRANSFORM_SUFFIXES):
        raise InvalidParameterError(f"path '{path}' is not a transform file: its name must end with "
                                    f"one of {', '.join(TRANSFORM_SUFFIXES)}")
    if not p.is_file():
        raise FileNotFoundError(f"transform file does not exist: '{path}'")
    try:
        if low.endswith(FIELD_IMAGE_SUFFIXES):
            return DisplacementField.from_sitk(sitk.ReadImage(str(p)), reference=reference)
        tx = sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[-300:]
        raise ValueError(f"transform file '{path}' cannot be read by SimpleITK ({msg})") from None
    return _from_sitk(tx, reference)
