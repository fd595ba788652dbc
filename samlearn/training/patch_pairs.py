"""Patch pairs: the two patches of one training pair, their transforms and their positives.

* :class:`PatchPair` -- two crops of one image, uniformly sampled positive pairs anywhere in their
  overlap, and the source position (mm) of every voxel of a strided feature grid.
* :class:`CrossPatchPair` -- the semi-supervised variant (paper §IV-H): one patch from each of two
  images, each showing a given point (the same labelled landmark).
* :func:`estimate_overlap` -- the fraction of one patch that the other shows.
"""
from __future__ import annotations

import math

import numpy as np

from .._utils.validation import is_int
from ._checks import as_generator, check_grid_points, check_index_points
from .patch_transform import PatchTransform

__all__ = ["BasePatchPair", "PatchPair", "CrossPatchPair", "estimate_overlap"]


_OVERLAP_GRID = 9            # points per axis of the overlap check grid


_POSITIVE_BUDGET = 100_000   # candidate points per positives() call before reusing points found


def _inside(u, shape) -> np.ndarray:
    hi = np.asarray(shape, dtype=np.float64) - 1
    return np.all((u >= 0) & (u <= hi), axis=1)


def estimate_overlap(t1: PatchTransform, t2: PatchTransform, n_per_axis: int = _OVERLAP_GRID):
    """Estimate the fraction of patch 1 that patch 2 also shows.

    Parameters
    ----------
    t1, t2 : PatchTransform
        The transforms of patch 1 and patch 2 (same ndim, same source).
    n_per_axis : int, default 9
        Points per axis of a regular grid over patch 1's box (borders included).

    Returns
    -------
    float
        Fraction of the ``n_per_axis ** ndim`` grid points whose source points fall inside patch
        2's box; 0 means no overlap was found.
    """
    if not isinstance(t1, PatchTransform) or not isinstance(t2, PatchTransform):
        raise TypeError("t1 and t2 must be PatchTransform objects")
    if t1.ndim != t2.ndim:
        raise ValueError(f"t1 and t2 must have the same ndim, got {t1.ndim} and {t2.ndim}")
    pts = check_grid_points(t1.patch_shape, int(n_per_axis))
    u2 = t2.from_source(t1.to_source(pts))
    return float(_inside(u2, t2.patch_shape).mean())


def apply_jitter(patch: np.ndarray, jitter: dict, k: int) -> np.ndarray:
    out = patch * np.float32(jitter["gain"][k]) + np.float32(jitter["bias"][k])
    if jitter.get("noise_std", 0.0) > 0:
        noise_rng = np.random.default_rng(jitter["noise_seed"][k])
        out += np.float32(jitter["noise_std"]) * noise_rng.standard_normal(out.shape, np.float32)
    return out.astype(np.float32, copy=False)


class BasePatchPair:
    """What :class:`PatchPair` and :class:`CrossPatchPair` share: two patches, the transforms from
    their indices to the indices of their source (the one source image of a :class:`PatchPair`,
    source ``k`` for patch ``k`` of a :class:`CrossPatchPair`) and the source positions of their
    voxels.

    Parameters
    ----------
    patches, clean_patches : ndarray of float32, shape ``(2, *patch_shape)``
        The patches with / without intensity jitter.
    transforms : pair of PatchTransform
        Patch ``k`` indices -> indices of the source of patch ``k``.
    jitter : dict
        The intensity jitter (``gain``, ``bias``, ``noise_std``, ``noise_seed``).

    Attributes
    ----------
    patches, clean_patches, transforms, jitter
        The parameters (``transforms`` a tuple).
    """

    def __init__(self, patches, clean_patches, transforms, jitter):
        self.patches = patches
        self.clean_patches = clean_patches
        self.transforms = tuple(transforms)
        self.jitter = jitter

    @property
    def ndim(self) -> int:
        """Number of axes (2 or 3)."""
        return self.transforms[0].ndim

    @property
    def patch_shape(self) -> tuple:
        """Patch shape (numpy order)."""
        return self.transforms[0].patch_shape

    def source_index(self, k: int, stride=1) -> np.ndarray:
        """Array indices, in the source of patch ``k``, of the voxel centres of patch ``k``'s
        stride-``s`` grid.

        Parameters
        ----------
        k : {0, 1}
            Which patch.
        stride : int or sequence of int, default 1
            Stride of the grid (1: the patch voxels).

        Returns
        -------
        ndarray of float32, shape ``(ndim, *grid)``
            Source indices (numpy order).
        """
        return self._transform(k).source_coords(stride)

    def source_mm(self, k: int, stride=1) -> np.ndarray:
        """Positions in mm, in the source of patch ``k``, of the voxel centres of the same grid.

        Parameters
        ----------
        k, stride
            As in :meth:`source_index`.

        Returns
        -------
        ndarray of float32, shape ``(ndim, *grid)``
            Array index times the spacing of that source (numpy order): ``spacing`` for a
            :class:`PatchPair`, ``spacings[k]`` for a :class:`CrossPatchPair`.
        """
        t = self._transform(k)
        return t.source_mm(self._source_spacing(k), stride)

    def _source_spacing(self, k: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, k) -> PatchTransform:
        if not is_int(k) or k not in (0, 1):
            raise ValueError(f"k must be 0 or 1 (which patch), got {k!r}")
        return self.transforms[k]


class PatchPair(BasePatchPair):
    """Two patches of one source image with exact correspondences.

    Parameters
    ----------
    patches : ndarray of float32, shape ``(2, *patch_shape)``
        Intensity-jittered patches (what the network sees).
    clean_patches : ndarray of float32, shape ``(2, *patch_shape)``
        The same before intensity jitter.
    transforms : pair of PatchTransform
        Patch indices -> source indices of each patch.
    jitter : dict
        The intensity jitter (``gain``, ``bias``, ``noise_std``, ``noise_seed``).
    spacing : array-like, shape (ndim,)
        Source spacing, mm per voxel in numpy order (ones when not given).
    cval : float
        Value used outside the source.

    Attributes
    ----------
    patches, clean_patches, transforms, jitter, spacing, cval
        The parameters (``transforms`` a tuple, ``spacing`` float64, ``cval`` a float).
    """

    def __init__(self, patches, clean_patches, transforms, jitter, spacing, cval):
        super().__init__(patches, clean_patches, transforms, jitter)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.cval = float(cval)
        self._overlap = None

    @property
    def overlap_fraction(self) -> float:
        """Estimated fraction of patch 1's box that patch 2 also shows (> 0 by construction)."""
        if self._overlap is None:
            self._overlap = estimate_overlap(*self.transforms)
        return self._overlap

    def __repr__(self) -> str:
        return (f"PatchPair(patch_shape={self.patch_shape}, overlap_fraction~"
                f"{self.overlap_fraction:.3f}, transforms={self.transforms})")

    def positives(self, n: int, rng) -> np.ndarray:
        """Draw positive pairs uniformly in the overlap of the two patches.

        Uniform over patch 1's box restricted to the overlap, borders included, by rejection
        sampling; when the overlap is so small that ``n`` distinct points are not found quickly,
        the points found are reused (drawn with replacement).

        Parameters
        ----------
        n : int
            Number of pairs (>= 1).
        rng : numpy.random.Generator, int or None
            Random generator (or seed).

        Returns
        -------
        ndarray of float32, shape (2, n, ndim)
            Continuous patch indices ``u1`` (patch 1) and ``u2`` (patch 2) showing the same
            source point.

        Raises
        ------
        RuntimeError
            If the two patches do not overlap.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        rng = as_generator(rng)
        t1, t2 = self.transforms
        hi = np.asarray(t1.patch_shape, dtype=np.float64) - 1
        frac = max(self.overlap_fraction, 1e-3)
        got1, got2, have, drawn = [], [], 0, 0
        while drawn < _POSITIVE_BUDGET:
            m = int(min(max(math.ceil(1.3 * (n - have) / frac) + 16, 64),
                        _POSITIVE_BUDGET - drawn))
            u1 = rng.uniform(0.0, 1.0, size=(m, self.ndim)) * hi
            u2 = t2.from_source(t1.to_source(u1))
            ok = _inside(u2, t2.patch_shape)
            got1.append(u1[ok])
            got2.append(u2[ok])
            have += int(ok.sum())
            drawn += m
            if have >= n:
                break
            frac = max(have / drawn, 1e-4)  # the grid estimate was optimistic: use the rate seen
        u1 = np.concatenate(got1)
        u2 = np.concatenate(got2)
        if have == 0:  # tiny overlap: fall back to the overlap check grid (non-empty)
            u1 = check_grid_points(t1.patch_shape, _OVERLAP_GRID)
            u2 = t2.from_source(t1.to_source(u1))
            ok = _inside(u2, t2.patch_shape)
            u1, u2 = u1[ok], u2[ok]
            if u1.shape[0] == 0:
                raise RuntimeError("the two patches do not overlap; cannot draw positive pairs")
        if u1.shape[0] >= n:
            sel = slice(0, n)
        else:
            sel = rng.integers(0, u1.shape[0], size=n)
        return np.stack([u1[sel], u2[sel]]).astype(np.float32)

    def _source_spacing(self, k: int) -> np.ndarray:
        return self.spacing


class CrossPatchPair(BasePatchPair):
    """Two patches of two *different* source images, each showing one given point.

    The given point (a labelled landmark) sits at a random patch position: the positive pair of
    the semi-supervised variant (paper §IV-H). There is no voxel-wise overlap between the patches;
    the correspondences are the labelled points (see :meth:`points_to_patch`).

    Parameters
    ----------
    patches, clean_patches : ndarray of float32, shape ``(2, *patch_shape)``
        The patches with / without intensity jitter.
    transforms : pair of PatchTransform
        Patch ``k`` indices -> source ``k`` indices.
    jitter : dict
        The intensity jitter (as :class:`PatchPair`).
    spacings : array-like, shape (2, ndim)
        mm per voxel of each source (numpy order).
    cvals : pair of float
        Value used outside each source.
    anchor : array-like, shape (2, ndim)
        Patch index of the given point in patch 1 and in patch 2 (drawn uniformly in the patch
        box ``[0, P - 1]``; exact: ``transforms[k].to_source(anchor[k])`` is the given point to
        rounding).

    Attributes
    ----------
    patches, clean_patches, transforms, jitter, spacings, cvals, anchor
        The parameters (tuples, and float64 arrays for ``spacings`` and ``anchor``).
    """

    def __init__(self, patches, clean_patches, transforms, jitter, spacings, cvals, anchor):
        super().__init__(patches, clean_patches, transforms, jitter)
        self.spacings = np.asarray(spacings, dtype=np.float64)
        self.cvals = tuple(float(c) for c in cvals)
        self.anchor = np.asarray(anchor, dtype=np.float64)

    def __repr__(self) -> str:
        return (f"CrossPatchPair(patch_shape={self.patch_shape}, anchor={self.anchor.round(2).tolist()}, "
                f"transforms={self.transforms})")

    def points_to_patch(self, k: int, points) -> tuple:
        """Map source-``k`` array indices to patch ``k`` indices.

        Parameters
        ----------
        k : {0, 1}
            Which patch (and source).
        points : array-like, shape (n, ndim)
            Source-``k`` array indices (numpy order); NaN rows allowed.

        Returns
        -------
        u : ndarray, shape (n, ndim)
            Patch ``k`` indices (NaN for NaN rows).
        inside : ndarray of bool, shape (n,)
            Which points lie inside the patch box ``[0, P - 1]``.
        """
        t = self._transform(k)
        pts, _ = check_index_points(points, self.ndim, "points")
        u = np.full(pts.shape, np.nan)
        finite = np.all(np.isfinite(pts), axis=1)
        if finite.any():
            u[finite] = t.from_source(pts[finite])
        inside = np.all(np.isfinite(u), axis=1)
        inside[inside] = _inside(u[inside], t.patch_shape)
        return u, inside

    def _source_spacing(self, k: int) -> np.ndarray:
        return self.spacings[k]
