"""Chains of transforms, applied to points in the listed order."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .._utils.docs import fill_doc
from .base import HDF5_SUFFIXES, Transform, reference_geometry

__all__ = ["CompositeTransform"]


class CompositeTransform(Transform):
    """A chain of transforms applied to points **in the listed order**: ``transforms[0]`` first.

    For SAM-coarse the chain is ``[DisplacementField, AffineTransform]``: a fixed point ``x`` goes
    to ``A (x + u(x)) + t`` in the moving image. (SimpleITK's ``CompositeTransform`` applies its
    *last* entry first; :meth:`to_sitk` adds the entries in reverse so the meaning is the same.)
    :meth:`save` writes it to an ITK HDF5 file (``.h5``) that SimpleITK, ITK and ANTs
    read as one composite transform with the same meaning.

    Parameters
    ----------
    transforms : sequence of Transform
        The chain, of one dimension.
    reference : ImageGeometry, Image or None, default None
        The fixed grid: the default target of :meth:`resample`.

    Attributes
    ----------
    transforms : tuple of Transform
        The chain.
    ndim : int
        The dimension, 2 or 3.
    reference : ImageGeometry or None
        The fixed grid.
    """

    #: :meth:`save` writes ITK HDF5 only (the format that holds a chain)
    file_suffixes = HDF5_SUFFIXES

    def __init__(self, transforms: Sequence[Transform], *, reference=None):
        ts = list(transforms)
        if not ts:
            raise ValueError("transforms is empty: give at least one transform")
        for i, t in enumerate(ts):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}] must be a samlearn transform (AffineTransform, "
                                f"DisplacementField, CompositeTransform), got {type(t).__name__}")
        dims = {t.ndim for t in ts}
        if len(dims) != 1:
            raise ValueError(f"transforms mix dimensions {sorted(dims)}")
        self.transforms = tuple(ts)
        self.ndim = ts[0].ndim
        self.reference = None if reference is None else reference_geometry(reference)

    def _leaves(self):
        """The non-composite entries, nested chains flattened, in the order they apply."""
        for t in self.transforms:
            if isinstance(t, CompositeTransform):
                yield from t._leaves()
            else:
                yield t

    @fill_doc
    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points to MOVING world points through the whole chain.

        %(fixed_to_moving)s
        """
        pts, single = self._check(points)
        for t in self.transforms:
            pts = t.transform_points(pts)
        return pts[0] if single else pts

    def inverse(self) -> "CompositeTransform":
        """Inverse chain: each entry inverted, in reverse order (moving -> fixed).

        Returns
        -------
        CompositeTransform
            The inverse, without a reference grid.
        """
        return CompositeTransform([t.inverse() for t in reversed(self.transforms)])

    def to_sitk(self) -> sitk.CompositeTransform:
        """SimpleITK ``CompositeTransform`` with the same meaning (entries added in reverse).

        Nested chains are flattened (ITK's transform files hold one level of composite only).

        Returns
        -------
        SimpleITK.CompositeTransform
            The transform.
        """
        comp = sitk.CompositeTransform(self.ndim)
        for t in reversed(list(self._leaves())):
            comp.AddTransform(t.to_sitk())
        return comp

    def __repr__(self) -> str:
        return f"CompositeTransform({', '.join(type(t).__name__ for t in self.transforms)})"
