"""Affine transforms ``y = A x + t`` from FIXED to MOVING world points (mm)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .._utils.docs import fill_doc
from .base import HDF5_SUFFIXES, Transform, reference_geometry

__all__ = ["AffineTransform"]


class AffineTransform(Transform):
    """``y = A x + t``: FIXED world points ``x`` (mm) to MOVING world points ``y`` (mm).

    Parameters
    ----------
    matrix : (ndim + 1, ndim + 1) array
        Homogeneous matrix ``[[A, t], [0, 1]]`` (a (ndim, ndim + 1) ``[A | t]`` is accepted too).
    reference : ImageGeometry, Image or None, default None
        The fixed grid: the default target of :meth:`resample`.

    Attributes
    ----------
    ndim : int
        The dimension, 2 or 3.
    reference : ImageGeometry or None
        The fixed grid.
    """

    #: :meth:`save` writes ITK HDF5, ITK text (``.tfm`` / ``.txt``) or ITK MATLAB (``.mat``, ANTs')
    file_suffixes = HDF5_SUFFIXES + (".tfm", ".txt", ".mat")

    def __init__(self, matrix, *, reference=None):
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] not in (2, 3, 4) or m.shape[1] not in (3, 4):
            raise ValueError(f"matrix must be a (ndim+1, ndim+1) homogeneous matrix with ndim 2 or 3, "
                             f"got shape {m.shape}")
        ndim = m.shape[1] - 1
        if m.shape == (ndim, ndim + 1):
            m = np.vstack([m, np.r_[np.zeros(ndim), 1.0]])
        if m.shape != (ndim + 1, ndim + 1):
            raise ValueError(f"matrix must be (ndim+1, ndim+1) or (ndim, ndim+1), got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("matrix contains non-finite values")
        if not np.allclose(m[ndim], np.r_[np.zeros(ndim), 1.0]):
            raise ValueError(f"the last row of a homogeneous matrix must be [0, ..., 0, 1], got {m[ndim].tolist()}")
        if abs(np.linalg.det(m[:ndim, :ndim])) < 1e-12:
            raise ValueError("matrix is singular: its linear part has determinant 0")
        m.setflags(write=False)
        self._matrix = m
        self.ndim = ndim
        self.reference = None if reference is None else reference_geometry(reference)

    @classmethod
    def identity(cls, ndim: int, *, reference=None) -> "AffineTransform":
        """The identity transform.

        Parameters
        ----------
        ndim : int
            The dimension, 2 or 3.
        reference : ImageGeometry, Image or None, default None
            The fixed grid: the default target of :meth:`resample`.

        Returns
        -------
        AffineTransform
            The identity.
        """
        return cls(np.eye(ndim + 1), reference=reference)

    @classmethod
    def from_linear(cls, linear, translation, *, reference=None) -> "AffineTransform":
        """From the linear part ``A`` and the translation ``t``.

        Parameters
        ----------
        linear : array-like of shape (ndim, ndim)
            The linear part ``A``.
        translation : array-like of shape (ndim,)
            The translation ``t`` (mm).
        reference : ImageGeometry, Image or None, default None
            The fixed grid: the default target of :meth:`resample`.

        Returns
        -------
        AffineTransform
            ``y = A x + t``.
        """
        a = np.asarray(linear, dtype=np.float64)
        t = np.asarray(translation, dtype=np.float64).reshape(-1)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or t.shape != (a.shape[0],):
            raise ValueError(f"linear must be (ndim, ndim) and translation (ndim,), got {a.shape} and {t.shape}")
        return cls(np.hstack([a, t[:, None]]), reference=reference)

    @classmethod
    def from_sitk(cls, transform: sitk.Transform, *, reference=None) -> "AffineTransform":
        """From a SimpleITK affine-like transform (its matrix, centre and translation).

        Parameters
        ----------
        transform : SimpleITK.Transform
            An Affine, Euler, Similarity, ... transform, fixed -> moving as SimpleITK's.
        reference : ImageGeometry, Image or None, default None
            The fixed grid: the default target of :meth:`resample`.

        Returns
        -------
        AffineTransform
            The same mapping.
        """
        if not isinstance(transform, sitk.Transform):
            raise TypeError(f"transform must be a SimpleITK transform, got {type(transform).__name__}")
        ndim = transform.GetDimension()
        tx = transform.Downcast()
        if not all(hasattr(tx, m) for m in ("GetMatrix", "GetCenter", "GetTranslation")):
            raise TypeError(f"transform must be a SimpleITK affine-like transform (Affine, Euler, "
                            f"Similarity, ...), got {transform.GetName()}")
        a = np.asarray(tx.GetMatrix()).reshape(ndim, ndim)
        c = np.asarray(tx.GetCenter())
        t = np.asarray(tx.GetTranslation()) + c - a @ c
        return cls.from_linear(a, t, reference=reference)

    @property
    def matrix(self) -> np.ndarray:
        """(ndim + 1, ndim + 1) homogeneous matrix, fixed -> moving (read-only)."""
        return self._matrix

    @property
    def linear(self) -> np.ndarray:
        """The linear part ``A``, (ndim, ndim)."""
        return self._matrix[: self.ndim, : self.ndim]

    @property
    def translation(self) -> np.ndarray:
        """The translation ``t`` (mm), (ndim,)."""
        return self._matrix[: self.ndim, self.ndim]

    @fill_doc
    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points to MOVING world points (mm): ``A x + t``.

        %(fixed_to_moving)s
        """
        pts, single = self._check(points)
        out = pts @ self.linear.T + self.translation
        return out[0] if single else out

    def inverse(self) -> "AffineTransform":
        """The transform mapping MOVING world points back to FIXED world points.

        Returns
        -------
        AffineTransform
            The inverse; its reference grid is unknown (pass one to ``resample``).
        """
        return AffineTransform(np.linalg.inv(self._matrix))

    def to_sitk(self) -> sitk.AffineTransform:
        """SimpleITK ``AffineTransform`` with the same fixed -> moving meaning.

        Returns
        -------
        SimpleITK.AffineTransform
            Matrix ``A``, translation ``t`` and centre 0.
        """
        tx = sitk.AffineTransform(self.ndim)
        tx.SetMatrix([float(v) for v in self.linear.ravel()])
        tx.SetTranslation([float(v) for v in self.translation])
        tx.SetCenter([0.0] * self.ndim)
        return tx

    def __repr__(self) -> str:
        return f"AffineTransform(ndim={self.ndim}, matrix={np.round(self._matrix, 4).tolist()})"
