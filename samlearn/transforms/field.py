"""Dense displacement fields ``y = x + u(x)`` on a grid in the FIXED space."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .._utils.docs import fill_doc
from ..image import ImageGeometry
from .._utils.files import write_atomically
from .base import HDF5_SUFFIXES, Transform, file_suffix, reference_geometry

__all__ = ["DisplacementField", "FIELD_IMAGE_SUFFIXES"]

#: image files a field can be written to as a vector image (single-file formats only)
FIELD_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class DisplacementField(Transform):
    """``y = x + u(x)``: a dense displacement field ``u`` (mm) on a grid in the FIXED space.

    ``u`` is linearly interpolated and zero outside the grid (ITK's ``DisplacementFieldTransform``
    rule: inside means continuous index in ``[-0.5, n - 0.5)``, interpolation clamps at the outer
    voxel centres).

    Parameters
    ----------
    displacements : array ``(*geometry.shape, ndim)``
        Displacement vectors, numpy spatial order (z, y, x), components in (x, y[, z]) world mm.
    geometry : ImageGeometry
        The grid of the field.
    reference : ImageGeometry, Image or None, default None
        The fixed grid: the default target of :meth:`resample`.

    Attributes
    ----------
    displacements : ndarray
        The displacement vectors (read-only).
    geometry : ImageGeometry
        The grid of the field.
    ndim : int
        The dimension, 2 or 3.
    reference : ImageGeometry or None
        The fixed grid.
    """

    #: :meth:`save` writes an ITK HDF5 transform or a vector image
    file_suffixes = HDF5_SUFFIXES + FIELD_IMAGE_SUFFIXES

    def __init__(self, displacements, geometry: ImageGeometry, *, reference=None):
        if not isinstance(geometry, ImageGeometry):
            raise TypeError(f"geometry must be an ImageGeometry, got {type(geometry).__name__}")
        u = np.asarray(displacements, dtype=np.float64)
        if u.shape != geometry.shape + (geometry.ndim,):
            raise ValueError(f"displacements must have shape {geometry.shape + (geometry.ndim,)} "
                             f"(grid shape in numpy order, then one (x, y[, z]) vector), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise ValueError("displacements contains non-finite values")
        u.setflags(write=False)
        self.displacements = u
        self.geometry = geometry
        self.ndim = geometry.ndim
        self.reference = None if reference is None else reference_geometry(reference)

    @fill_doc
    def displacement_at(self, points) -> np.ndarray:
        """``u`` at world points.

        Linear interpolation of the grid's vectors (the nearest one between the outer voxel centres
        and the grid's borders); zero outside the borders.

        Parameters
        ----------
        %(world_points)s

        Returns
        -------
        ndarray of shape (n_points, ndim)
            The displacements (mm).
        """
        pts, _ = self._check(points)
        idx = self.geometry.world_to_array_index(pts)
        shape = np.asarray(self.geometry.shape)
        inside = np.all((idx >= -0.5) & (idx < shape - 0.5), axis=1)
        out = np.zeros_like(pts)
        if np.any(inside):
            coords = idx[inside].T
            for c in range(self.ndim):
                out[inside, c] = ndimage.map_coordinates(self.displacements[..., c], coords, order=1,
                                                         mode="nearest")
        return out

    @fill_doc
    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points to MOVING world points: ``x + u(x)``.

        %(fixed_to_moving)s
        """
        pts, single = self._check(points)
        out = pts + self.displacement_at(pts)
        return out[0] if single else out

    def inverse(self, n_iter: int = 50, tol_mm: float = 1e-4) -> "DisplacementField":
        """The inverse field ``v`` on the same grid: ``y + v(y)`` undoes ``x + u(x)``.

        Computed by the fixed-point iteration ``v(g) = -u(g + v(g))`` at every grid node: exact
        (to ``tol_mm``) at the nodes for fields without folding; between nodes the linear
        interpolation of ``v`` adds a small error, which grows with the field's curvature
        relative to the grid spacing (tests/test_registration.py bounds it).
        ``transform_points`` and ``to_sitk`` of the result agree exactly.

        Parameters
        ----------
        n_iter : int, default 50
            Most iterations.
        tol_mm : float, default 1e-4
            Stop when no node moves more than this (mm).

        Returns
        -------
        DisplacementField
            The inverse (moving -> fixed), without a reference grid.
        """
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in self.geometry.shape], indexing="ij"), -1)
        nodes = self.geometry.array_index_to_world(idx.reshape(-1, self.ndim))
        v = -self.displacement_at(nodes)
        for _ in range(int(n_iter)):
            v_new = -self.displacement_at(nodes + v)
            step = np.abs(v_new - v).max() if len(v) else 0.0
            v = v_new
            if step < tol_mm:
                break
        return DisplacementField(v.reshape(self.displacements.shape), self.geometry)

    @classmethod
    def from_sitk(cls, field, *, reference=None) -> "DisplacementField":
        """From a SimpleITK ``DisplacementFieldTransform`` or a displacement-field vector image.

        Parameters
        ----------
        field : SimpleITK.DisplacementFieldTransform or SimpleITK.Image
            The transform (fixed -> moving, as SimpleITK's), or its field: a vector image of
            ``ndim`` components, displacements in world mm (LPS) on the fixed grid, as ITK and
            ANTs write them.
        reference : ImageGeometry, Image or None, default None
            The fixed grid: the default target of :meth:`resample`.

        Returns
        -------
        DisplacementField
            The same mapping.
        """
        if isinstance(field, sitk.Transform):
            tx = field.Downcast()
            if not isinstance(tx, sitk.DisplacementFieldTransform):
                raise TypeError(f"field must be a SimpleITK DisplacementFieldTransform or a vector "
                                f"image, got a {field.GetName()}")
            field = tx.GetDisplacementField()
        if not isinstance(field, sitk.Image):
            raise TypeError(f"field must be a SimpleITK DisplacementFieldTransform or a vector image, "
                            f"got {type(field).__name__}")
        if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
            raise ValueError(f"a displacement field of a {field.GetDimension()}D image needs "
                             f"{field.GetDimension()} components per voxel, got "
                             f"{field.GetNumberOfComponentsPerPixel()}")
        u = sitk.GetArrayFromImage(field).astype(np.float64)
        return cls(u, ImageGeometry.from_sitk(field), reference=reference)

    def to_sitk_image(self) -> sitk.Image:
        """The field as a SimpleITK vector image (float64, ``ndim`` components, this grid).

        Returns
        -------
        SimpleITK.Image
            Displacements in world mm (LPS), fixed -> moving, the image
            ``sitk.DisplacementFieldTransform`` takes and ITK / ANTs write as a warp field.
        """
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.displacements), isVector=True)
        img = self.geometry.apply_to_sitk(img)
        return sitk.Cast(img, sitk.sitkVectorFloat64)

    def to_sitk(self) -> sitk.DisplacementFieldTransform:
        """SimpleITK ``DisplacementFieldTransform`` with the same fixed -> moving meaning.

        Returns
        -------
        SimpleITK.DisplacementFieldTransform
            The transform (float64 field).
        """
        return sitk.DisplacementFieldTransform(self.to_sitk_image())  # takes the image over

    def save(self, path) -> Path:
        """Write as an ITK HDF5 transform or as a displacement-field image.

        ``.h5`` / ``.hdf5``: an ITK ``DisplacementFieldTransform`` that ``SimpleITK.ReadTransform``
        (and ITK, ANTs) reads back. ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``: the field as a
        vector image on this grid, float64, displacements in world mm in LPS components, fixed ->
        moving, the convention of ITK's and ANTs' warp fields (``*Warp.nii.gz``): read it with
        ``sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path),
        sitk.sitkVectorFloat64))`` or pass it to ``antsApplyTransforms -t``. (NIfTI stores the
        grid in RAS as usual, but ITK keeps the vector components in LPS; tools that assume RAS
        vectors must negate x and y.) Either way the file maps points as :meth:`transform_points`
        does and appears complete or not at all.

        Parameters
        ----------
        path : str or path
            The file; its suffix picks the format.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        InvalidParameterError
            For another suffix (the message lists the accepted ones).
        FileNotFoundError
            When the folder does not exist.
        """
        suffix = file_suffix(path, self.file_suffixes, "a DisplacementField")
        if suffix in HDF5_SUFFIXES:
            return super().save(path)
        img = self.to_sitk_image()
        return write_atomically(path, lambda tmp: sitk.WriteImage(img, tmp), suffix=suffix)

    def __repr__(self) -> str:
        mag = np.linalg.norm(self.displacements, axis=-1)
        return f"DisplacementField({self.geometry!r}, max |u| = {mag.max():.3g} mm)"
