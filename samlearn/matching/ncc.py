"""Intensity refinement of matched points by normalised cross-correlation (NCC).

SAM's local map has one vector per few pixels (xray-lite: one per 5-6 half-resolution pixels of a
cephalogram), and its peak, even refined to sub-voxel precision, carries that coarseness. Around a
match that is already right to about a voxel, the images themselves are more precise: the template's
intensity patch around the landmark is compared, by NCC, with the query's intensities at every shift
within a small search radius of the match, and the point moves to the best shift (with a parabola fit
for sub-step precision). It never searches farther than the radius, so it cannot undo SAM's choice of
the anatomical structure, only its precision.

Patches are sampled on grids aligned with the **world** axes (x, y[, z]) around world points, by
linear interpolation, whatever each image's spacing, origin and direction: the same anatomy is
compared in the same physical frame.
"""
from __future__ import annotations

from numbers import Real
from typing import Tuple

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from .._utils.validation import Interval, Options
from ..image import Image

__all__ = ["NCC_PARAMETER_CONSTRAINTS", "ncc_step_mm", "sample_patches", "template_patches", "resolve_search_mm",
           "ncc_refine", "NCCRefiner"]

#: samples per block of points in the sampling and the search (bounds memory)
_BLOCK_SAMPLES = 2 ** 22
#: most samples along one axis of a patch (2 * half + 1), 2D and 3D: bounds the cost
_MAX_HALF = {2: 32, 3: 12}


#: the declared constraints of the estimators' ``ncc_*`` parameters
NCC_PARAMETER_CONSTRAINTS = {
    "ncc_radius_mm": [Interval(Real, 0, None, closed="neither", unit="mm"), None],
    "ncc_search_mm": [Options("auto"), Interval(Real, 0, None, closed="neither", unit="mm")],
    "ncc_penalty": [Interval(Real, 0, None)],
}


def ncc_step_mm(radius_mm: float, spacing, ndim: int) -> float:
    """Sampling step (mm) of a patch of half-width ``radius_mm``.

    Parameters
    ----------
    radius_mm : float
        Half-width of the patch (mm).
    spacing : array-like of float
        Voxel spacing of the image (mm).
    ndim : {2, 3}
        Image dimension.

    Returns
    -------
    float
        The finest voxel spacing of the image, coarsened when the patch would need more than
        ``_MAX_HALF[ndim]`` steps per half-axis (32 in 2D, 12 in 3D: bounds the cost).
    """
    return float(max(float(np.min(spacing)), float(radius_mm) / _MAX_HALF[ndim]))


def _offsets(half: int, step: float, ndim: int) -> Tuple[np.ndarray, tuple]:
    """World offsets (n, ndim), (x, y[, z]) order, of a (2 half + 1)^ndim grid whose array axes are
    in numpy order (z, y, x): array axis j runs along world axis ndim - 1 - j."""
    r = np.arange(-half, half + 1) * step
    mesh = np.meshgrid(*([r] * ndim), indexing="ij")
    offsets = np.stack([mesh[ndim - 1 - k] for k in range(ndim)], axis=-1)
    return offsets.reshape(-1, ndim), mesh[0].shape


def sample_patches(image: Image, points_world, half: int, step: float) -> np.ndarray:
    """Intensities of an image on world-axis-aligned grids of samples around points.

    Linear interpolation; samples beyond the image take the nearest border value.

    Parameters
    ----------
    image : Image
        The image.
    points_world : array-like of shape (n_points, ndim)
        Grid centres, world mm (x, y[, z]).
    half : int
        Each grid has ``2 * half + 1`` samples per axis.
    step : float
        Distance between samples (mm).

    Returns
    -------
    ndarray of shape ``(n_points, *grid)``, float32
        The samples; grid axes in (z, y, x) order (array axis j runs along world axis
        ``ndim - 1 - j``).
    """
    pts = np.asarray(points_world, dtype=np.float64)
    ndim = image.ndim
    offsets, shape = _offsets(int(half), float(step), ndim)
    geom = image.geometry
    # world -> array index is affine: index(p + o) = index(p) + L o, with L the linear part
    lin = geom.world_to_array_index(np.eye(ndim)) - geom.world_to_array_index(np.zeros((1, ndim)))
    step_idx = offsets @ lin
    base = geom.world_to_array_index(pts).reshape(-1, ndim)
    arr = np.asarray(image.array, np.float32)
    out = np.empty((len(pts), len(offsets)), np.float32)
    block = max(1, _BLOCK_SAMPLES // len(offsets))   # bounded index arrays for many points
    axes = _grid_axes(lin)
    for b0 in range(0, len(pts), block):
        if axes is not None:
            out[b0:b0 + block] = _sample_separable(arr, base[b0:b0 + block], axes, int(half),
                                                   float(step)).reshape(-1, len(offsets))
            continue
        idx = (base[b0:b0 + block, None, :] + step_idx[None]).reshape(-1, ndim)
        out[b0:b0 + block] = ndimage.map_coordinates(arr, idx.T, order=1, mode="nearest").reshape(-1, len(offsets))
    return out.reshape((len(pts),) + shape)


def _grid_axes(lin: np.ndarray):
    """For an image whose axes lie along the world axes (direction a signed permutation, the usual
    case): per patch axis k (numpy order, along world axis ndim - 1 - k) the array axis it runs
    along and the index step per mm, ``[(j, scale), ...]``; None for oblique directions."""
    ndim = lin.shape[0]
    nz = np.abs(lin) > 1e-9 * np.abs(lin).max()
    if not ((nz.sum(0) == 1).all() and (nz.sum(1) == 1).all()):
        return None
    out = []
    for k in range(ndim):
        w = ndim - 1 - k
        j = int(np.argmax(nz[w]))
        out.append((j, float(lin[w, j])))
    return out


def _sample_separable(arr: np.ndarray, base: np.ndarray, axes, half: int, step: float) -> np.ndarray:
    """:func:`sample_patches`' linear interpolation (border values beyond the image, as
    ``map_coordinates(mode="nearest")``) for grids along the array axes: per axis, two neighbours
    and weights, then one gather per corner of the cell (4 in 2D, 8 in 3D) instead of
    ``map_coordinates``' point-by-point path. ``base`` (n, ndim) array indices of the centres."""
    ndim = arr.ndim
    n = len(base)
    r = np.arange(-half, half + 1, dtype=np.float64) * step
    flat = arr.reshape(-1)
    strides = np.cumprod((arr.shape[1:] + (1,))[::-1])[::-1]      # element strides per array axis
    ends, frac = [], []                                            # per patch axis
    for k, (j, scale) in enumerate(axes):
        shape = [n] + [1] * ndim
        shape[k + 1] = len(r)
        c = base[:, j:j + 1] + scale * r[None, :]
        f = np.floor(c)
        size = arr.shape[j]
        ends.append([(np.clip(f + e, 0, size - 1).astype(np.intp) * strides[j]).reshape(shape) for e in (0, 1)])
        frac.append((c - f).astype(np.float32).reshape(shape))
    # the 2^ndim corner values, then linear blends along the patch axes, last axis first
    vals = {}
    for corner in np.ndindex(*([2] * ndim)):
        idx = ends[0][corner[0]]
        for k in range(1, ndim):
            idx = idx + ends[k][corner[k]]
        vals[corner] = np.take(flat, idx)
    for k in range(ndim - 1, -1, -1):
        vals = {c[:k]: v0 + frac[k] * (vals[c[:k] + (1,)] - v0)
                for c, v0 in vals.items() if len(c) == k + 1 and c[k] == 0}
    return vals[()]


def template_patches(images, point_sets, radius_mm: float):
    """The intensity patches of templates around their points.

    Parameters
    ----------
    images : sequence of Image
        The template images.
    point_sets : sequence of array-like of shape (n_points, ndim)
        Each template's points, world mm (the same points in the same order).
    radius_mm : float
        Half-width of the patches (mm).

    Returns
    -------
    patches : ndarray of shape ``(n_templates, n_points, *grid)``, float32
        The patches (:func:`sample_patches`).
    step : float
        Their sampling step (mm): :func:`ncc_step_mm` of the first template, used for all.
    """
    step = ncc_step_mm(radius_mm, images[0].spacing, images[0].ndim)
    half = max(1, int(round(float(radius_mm) / step)))
    patches = np.stack([sample_patches(im, p, half, step) for im, p in zip(images, point_sets)])
    return patches.astype(np.float32), step


def resolve_search_mm(search_mm, embedding) -> float:
    """The intensity refinement's search distance (mm) for a query.

    Parameters
    ----------
    search_mm : "auto" or float
        The ``ncc_search_mm`` parameter; "auto" is one voxel (the largest spacing) of the
        embedding's local grid.
    embedding : Embedding
        The query image's embedding.

    Returns
    -------
    float
        The distance in mm.
    """
    if isinstance(search_mm, str) and search_mm == "auto":
        return float(np.max(embedding.local_map.geometry.spacing))
    return float(search_mm)


def _box_sums(x: np.ndarray, win) -> np.ndarray:
    """Sums of ``x`` ``(B, *R)`` over every window of shape ``win`` that fits inside R ('valid')."""
    out = x
    for ax, w in enumerate(win, start=1):
        pad = [(0, 0)] * out.ndim
        pad[ax] = (1, 0)
        c = np.pad(np.cumsum(out, axis=ax), pad)
        hi = [slice(None)] * out.ndim
        lo = [slice(None)] * out.ndim
        hi[ax] = slice(w, None)
        lo[ax] = slice(0, c.shape[ax] - w)
        out = c[tuple(hi)] - c[tuple(lo)]
    return out


def _ncc_block(region: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """NCC of each point's template patches ``(T, B, *P)`` at every shift within its region ``(B, *R)``:
    ``(B, *S)`` with S = R - P + 1, averaged over the templates whose patch has contrast; -1 where no
    patch has contrast or where the region's window is flat (relative to the region's own
    variation, so exact background next to tissue never correlates)."""
    ndim = region.ndim - 1
    rshape, pshape = region.shape[1:], patches.shape[2:]
    axes = tuple(range(1, ndim + 1))
    n = float(np.prod(pshape))
    per_point = (-1,) + (1,) * ndim
    # the region's mean removed first: the sums lose less to rounding, and the patches are
    # zero-mean, so the correlation is unchanged
    region = region - region.reshape(region.shape[0], -1).mean(axis=1).reshape(per_point)
    s1 = _box_sums(region, pshape)
    s2 = _box_sums(region * region, pshape)
    var = np.maximum(s2 - s1 * s1 / n, 0.0)
    # a window is flat when its variance is a tiny fraction of the region's mean square
    scale = (region * region).reshape(region.shape[0], -1).mean(axis=1).reshape(per_point) * n
    textured = var > 1e-6 * scale
    sd = np.sqrt(var)
    flat_t = patches.reshape(patches.shape[0], patches.shape[1], -1)
    centred = (flat_t - flat_t.mean(axis=-1, keepdims=True)).reshape(patches.shape)
    norms = np.sqrt((flat_t.var(axis=-1)) * n)
    scale_t = np.sqrt((flat_t * flat_t).mean(axis=-1) * n)
    fshape = [sp_fft.next_fast_len(int(r), real=True) for r in rshape]   # no wrap-around: >= R
    # single precision for the correlations (only their peak is used), double for the sums
    fr = sp_fft.rfftn(region.astype(np.float32), s=fshape, axes=axes)
    total = np.zeros(sd.shape)
    count = np.zeros(sd.shape[:1])
    crop = (slice(None),) + tuple(slice(0, r - p + 1) for r, p in zip(rshape, pshape))
    for t in range(patches.shape[0]):
        ok = norms[t] > 1e-3 * scale_t[t]
        if not ok.any():
            continue
        fp = sp_fft.rfftn(centred[t].astype(np.float32), s=fshape, axes=axes)
        num = sp_fft.irfftn(fr * np.conj(fp), s=fshape, axes=axes)[crop]
        with np.errstate(invalid="ignore", divide="ignore"):
            ncc = np.where(textured, num / (sd * norms[t].reshape(per_point)), -1.0)
        ncc = np.clip(ncc, -1.0, 1.0)
        total[ok] += ncc[ok]
        count[ok] += 1
    out = np.full(sd.shape, -1.0)
    has = count > 0
    out[has] = total[has] / count[has].reshape(per_point)
    return out


def ncc_refine(template_patches, image: Image, points_world, *, step: float, search_mm: float,
               penalty: float = 0.05):
    """Move each point to the shift of best NCC between its template patch(es) and an image.

    Parameters
    ----------
    template_patches : ndarray of shape ``(n_templates, n_points, *grid)``
        From :func:`sample_patches` on each template (same ``step``; grid axes of equal, odd
        sizes); with several templates the NCC maps are averaged.
    image : Image
        The query image.
    points_world : array-like of shape (n_points, ndim)
        The matched points (world mm) around which to search.
    step : float
        Sampling step (mm) of the patches, also the step of the searched shifts.
    search_mm : float
        Shifts up to this far along each world axis (a box of (2 m + 1)^ndim shifts, m = search_mm /
        step rounded, at least 1).
    penalty : float, default 0.05
        Subtracted from the NCC in proportion to the squared shift: ``penalty * (|shift| / search)^2``
        (NCC units at the edge of the search); ties and flat NCC surfaces stay near the match.

    Returns
    -------
    points : ndarray of shape (n_points, ndim)
        Refined world points (a parabola fit gives sub-step shifts); a point whose patches are flat
        (no contrast: their standard deviation below 0.1% of their RMS) or whose best NCC is not
        positive is returned unchanged.
    peak_ncc : ndarray of shape (n_points,)
        The NCC at the chosen shift (NaN where the point was left unchanged).

    Raises
    ------
    ValueError
        When ``template_patches`` does not fit the points and the image's dimension.

    Notes
    -----
    The correlations of all points are computed together by FFT, in blocks of bounded memory.
    """
    tp = np.asarray(template_patches, dtype=np.float32)
    pts = np.asarray(points_world, dtype=np.float64)
    ndim = image.ndim
    if tp.ndim != ndim + 2 or tp.shape[1] != len(pts) or len(set(tp.shape[2:])) != 1 or tp.shape[2] % 2 == 0:
        raise ValueError(f"template_patches must have shape (n_templates, {len(pts)}, *({ndim} equal odd "
                         f"sizes)), got {tp.shape}")
    n_t, n_p = tp.shape[:2]
    half = (tp.shape[2] - 1) // 2
    m = max(1, int(round(float(search_mm) / float(step))))
    grid = np.meshgrid(*([np.arange(-m, m + 1)] * ndim), indexing="ij")
    shifts = np.stack([g.ravel() for g in grid], axis=1).astype(np.float64)   # array order
    cost = float(penalty) * (shifts ** 2).sum(axis=1) / float(m * m)
    out = pts.copy()
    peak = np.full(n_p, np.nan)
    block = max(1, _BLOCK_SAMPLES // (2 * (half + m) + 1) ** ndim)
    side = 2 * m + 1
    for b0 in range(0, n_p, block):
        sl = slice(b0, min(n_p, b0 + block))
        region = sample_patches(image, pts[sl], half + m, step).astype(np.float64)
        ncc = _ncc_block(region, tp[:, sl].astype(np.float64)).reshape(region.shape[0], -1)
        score = ncc - cost
        best = np.argmax(score, axis=1)
        rows = np.arange(len(best))
        best_ncc = ncc[rows, best]
        shift = shifts[best].copy()
        pos = np.stack(np.unravel_index(best, (side,) * ndim), axis=1)
        sc = score.reshape((len(best),) + (side,) * ndim)
        bmid = score[rows, best]
        for ax in range(ndim):   # parabola through the neighbours along each axis, inside the box
            inner = (pos[:, ax] > 0) & (pos[:, ax] < side - 1)
            lo, hi = pos.copy(), pos.copy()
            lo[:, ax] = np.clip(lo[:, ax] - 1, 0, side - 1)
            hi[:, ax] = np.clip(hi[:, ax] + 1, 0, side - 1)
            a = sc[(rows, *lo.T)]
            c = sc[(rows, *hi.T)]
            den = a - 2.0 * bmid + c
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.where(inner & (den < 0), np.clip(0.5 * (a - c) / den, -0.5, 0.5), 0.0)
            shift[:, ax] += d
        ok = best_ncc > 0
        idx = np.arange(sl.start, sl.stop)[ok]
        out[idx] = pts[idx] + shift[ok][:, ::-1] * float(step)
        peak[idx] = best_ncc[ok]
    return out, peak


class NCCRefiner:
    """Template patches of fixed points, kept to refine their matches in one or more images.

    ``NCCRefiner(template_image, points, radius_mm)(image, matched_points, search_mm)`` returns
    what :func:`ncc_refine` does: ``(points, peak_ncc)``.

    Parameters
    ----------
    template_image : Image
        The template (fixed) image.
    points_world : array-like of shape (n_points, ndim)
        Its points, world mm.
    radius_mm : float
        Half-width of the patches (mm).
    penalty : float, default 0.05
        Shift penalty of :func:`ncc_refine`.

    Attributes
    ----------
    patches : ndarray of shape ``(1, n_points, *grid)``, float32
        The template patches.
    step : float
        Their sampling step (mm).
    penalty : float
        As given.
    """

    def __init__(self, template_image: Image, points_world, radius_mm: float, penalty: float = 0.05):
        self.patches, self.step = template_patches([template_image], [points_world], radius_mm)
        self.penalty = float(penalty)

    def __call__(self, image: Image, points_world, search_mm: float):
        return ncc_refine(self.patches, image, points_world, step=self.step, search_mm=search_mm,
                          penalty=self.penalty)
