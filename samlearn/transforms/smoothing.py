"""Smooth displacement fields from scattered residuals (SAM-coarse, paper §III-E).

Residuals of point matches are smoothed onto a grid by normalised Gaussian convolution
(:func:`smooth_field`); :func:`field_from_matches` adds the confidence and outlier rules that
turn a set of matches into a :class:`~samlearn.transforms.DisplacementField`.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from .._utils.kernels import gaussian_kernel
from ..image import ImageGeometry
from .field import DisplacementField

__all__ = ["field_geometry", "smooth_field", "field_from_matches"]


def field_geometry(fixed: ImageGeometry, spacing_mm: float, smoothing_mm: float) -> ImageGeometry:
    """Identity-direction grid over ``fixed``'s bounding box, grown for a smoothed field to decay.

    Parameters
    ----------
    fixed : ImageGeometry
        The fixed image's grid.
    spacing_mm : float
        The field's spacing (mm).
    smoothing_mm : float
        The smoothing width; the box is grown by two of them on every side.

    Returns
    -------
    ImageGeometry
        The field's grid, at least 2 nodes per axis.
    """
    sp = float(spacing_mm)
    margin = 2.0 * float(smoothing_mm)
    corners = fixed.corners_world()
    lo, hi = corners.min(0) - margin, corners.max(0) + margin
    n = np.maximum(2, np.ceil((hi - lo) / sp).astype(int) + 1)
    origin = (lo + hi) / 2 - (n - 1) * sp / 2
    return ImageGeometry(tuple(int(v) for v in n), sp, origin, np.eye(fixed.ndim))


@functools.lru_cache(maxsize=16)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of ``ndimage.gaussian_filter1d(mode="constant")`` along an axis of length n:
    row i holds the kernel centred on i, cut at the borders (zeros beyond, not renormalised)."""
    g = gaussian_kernel(sigma) if sigma > 0 else np.ones(1)
    r = len(g) // 2
    off = np.arange(n)[None, :] - np.arange(n)[:, None] + r
    m = np.where((off >= 0) & (off < len(g)), g[np.clip(off, 0, len(g) - 1)], 0.0)
    m.setflags(write=False)
    return m


#: axes up to this long are blurred by a dense matrix product (BLAS beats a 1D filter there)
_GAUSSIAN_MATRIX_MAX = 512


def _blur_planes(planes: np.ndarray, sigma) -> np.ndarray:
    """``ndimage.gaussian_filter(plane, sigma, mode="constant")`` of each plane of ``planes``
    ``(P, *shape)``: per axis one matrix product over all planes (:func:`_gaussian_matrix`), or the 1D
    filter along axes longer than ``_GAUSSIAN_MATRIX_MAX``."""
    for ax, n in enumerate(planes.shape[1:]):
        if n <= _GAUSSIAN_MATRIX_MAX:
            planes = np.moveaxis(np.tensordot(_gaussian_matrix(int(n), float(sigma[ax])), planes,
                                              axes=(1, ax + 1)), 0, ax + 1)
        else:
            planes = ndimage.gaussian_filter1d(planes, float(sigma[ax]), axis=ax + 1, mode="constant")
    return planes


def smooth_field(x, u, geom: ImageGeometry, smoothing_mm: float) -> np.ndarray:
    """Normalised Gaussian convolution of scattered residuals onto a grid.

    Splat each residual (multilinear weights), blur values and weights with sigma =
    ``smoothing_mm``, divide. A prior weight (10% of the typical weight where matches are) pulls
    the field to zero where there are none.

    Parameters
    ----------
    x : ndarray of shape (n, ndim)
        World points (mm).
    u : ndarray of shape (n, ndim)
        The residuals at ``x`` (mm).
    geom : ImageGeometry
        The field's grid.
    smoothing_mm : float
        The Gaussian's sigma (mm).

    Returns
    -------
    ndarray of shape ``(*geom.shape, ndim)``
        The field, numpy spatial order, ``(x, y[, z])`` components.
    """
    d = geom.ndim
    shape = geom.shape
    idx = geom.world_to_array_index(x)
    base = np.floor(idx).astype(int)
    frac = idx - base
    size = int(np.prod(shape))
    num = np.zeros((d, size))
    den = np.zeros(size)
    for corner in np.ndindex(*([2] * d)):  # splat: bincount sums repeated voxels (np.add.at, faster)
        c = np.asarray(corner)
        pos = base + c
        w = np.prod(np.where(c == 1, frac, 1 - frac), axis=1)
        ok = np.all((pos >= 0) & (pos < np.asarray(shape)), axis=1)
        flat = np.ravel_multi_index(tuple(pos[ok].T), shape)
        den += np.bincount(flat, w[ok], minlength=size)
        for k in range(d):
            num[k] += np.bincount(flat, w[ok] * u[ok, k], minlength=size)
    sigma = float(smoothing_mm) / geom.spacing[::-1]
    # ndimage.gaussian_filter(mode="constant") of the weights and of each component, as one
    # banded matrix product per axis over all d + 1 planes (one small GEMM each instead of 3 d + 3
    # filter passes)
    planes = _blur_planes(np.concatenate([den[None], num]).reshape((d + 1,) + shape), sigma)
    den_s = planes[0]
    num_s = np.moveaxis(planes[1:], 0, -1)
    occupied = den_s[den_s > 1e-6 * den_s.max()] if den_s.max() > 0 else np.ones(1)
    prior = 0.1 * float(np.median(occupied))
    return num_s / (den_s + prior)[..., None]


def field_from_matches(pts, u, scores, geom: ImageGeometry, *, smoothing_mm: float,
                       score_threshold: float, max_displacement_mm: float, outlier_factor: float,
                       floor_mm: float):
    """The smooth field (SAM-coarse) of the residuals of point matches.

    Matches with a score of at least ``score_threshold`` and a residual of at most
    ``max_displacement_mm`` are smoothed (:func:`smooth_field`); those that disagree with the
    result by more than ``outlier_factor`` robust standard deviations (at least ``floor_mm``) are
    dropped and the field is estimated again.

    Parameters
    ----------
    pts : ndarray of shape (n, ndim)
        World points of the matches (mm).
    u : ndarray of shape (n, ndim)
        Their residuals (mm).
    scores : ndarray of shape (n,)
        Their match scores.
    geom : ImageGeometry
        The field's grid (:func:`field_geometry`).
    smoothing_mm : float
        The Gaussian's sigma (mm).
    score_threshold : float
        Lowest score used.
    max_displacement_mm : float
        Largest residual used (mm).
    outlier_factor : float
        Deviation from the first field, in robust standard deviations, beyond which a match is
        dropped.
    floor_mm : float
        Smallest robust standard deviation (mm).

    Returns
    -------
    field : DisplacementField
        The field; zero when fewer than 3 * (ndim + 1) matches are usable.
    used : ndarray of int
        Indices of the matches used (empty with a zero field).
    """
    d = pts.shape[1]
    keep = (scores >= score_threshold) & (np.linalg.norm(u, axis=1) <= max_displacement_mm)
    x, uu = pts[keep], u[keep]
    if len(x) < 3 * (d + 1):
        return DisplacementField(np.zeros(geom.shape + (d,)), geom), np.zeros(0, int)
    field_u = smooth_field(x, uu, geom, smoothing_mm)
    dev = np.linalg.norm(uu - DisplacementField(field_u, geom).displacement_at(x), axis=1)
    scale = 1.4826 * float(np.median(dev))
    sel = dev <= outlier_factor * max(scale, floor_mm)
    if sel.sum() >= 3 * (d + 1):
        field_u = smooth_field(x[sel], uu[sel], geom, smoothing_mm)
    else:
        sel = np.ones(len(x), bool)
    return DisplacementField(field_u, geom), np.flatnonzero(keep)[sel]
