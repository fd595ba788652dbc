"""Similarity search: find where template embedding vectors match best in a query embedding.

This is SAM's inference rule (Yan et al. 2022, §III-D) as a batched, memory-bounded engine:

1. **Template vectors** (:func:`template_vectors`): the global and local embedding vectors of the
   template image read at the template points (world mm), interpolated at sub-voxel positions.
2. **Similarity maps**: ``S^g`` = global vectors against the query's global map and ``S^l`` = local
   vectors against the query's local map, each a matrix product for all K points at once.
3. **Combination** (``mode="sum"``): ``S^g`` is upsampled onto the local grid *exactly through the
   two grids' world geometries* (every local voxel centre is mapped to a continuous index of the
   global grid and ``S^g`` is interpolated linearly there; no integer stride ratio is assumed), and
   the match is the peak of ``(S^g + S^l) / 2``. When the two grids share their axes (always, for
   the maps of one image) the interpolation is done separably, which is cheaper and identical.
4. **Coarse-to-fine window** (``search_radius_mm``): the ``S^g`` peak is found on the coarse grid
   first, and the combined map is evaluated only at local voxels within ``search_radius_mm`` of it
   (a ball in world mm). This removes far-away false peaks of the local map and is faster; windows
   larger than 1/16 of the local grid are searched as a slab scan with a distance mask instead
   (same result, cheaper at that size). The window is samlearn's addition: the paper searches the
   whole image.
5. **Sub-voxel refinement**: a parabola per axis through the peak and its two neighbours on the
   searched map; the offset is clamped to +-0.5 voxel.

Scores (the peak value, at the discrete peak voxel) are on a documented scale: ``(S^g + S^l) / 2``
for ``mode="sum"``, the single cosine similarity for ``"global"`` / ``"local"``; all lie in
[-1, 1], 1 meaning identical embeddings.

Memory stays bounded: points are processed in chunks and the local grid in slabs, so no
intermediate holds more than ``chunk_size`` floats (similarity values of a slab, the features of a
window copied for its product), apart from the coarse global similarity map of a chunk of points
and one grid row per point. Everything runs on the device of the query's maps; results come back
as small numpy arrays.

Several templates: the similarity is linear in the template vector, so averaging the (unit)
vectors of several templates and matching once gives exactly the average of the templates'
similarity maps (:func:`combine_templates`).
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional

import numpy as np
import torch

from .._utils.validation import Interval, Options, check_param
from ..embedding import Embedding
from ..image import ImageGeometry, check_points
from .grids import GridIndex, ball_mask, clip_to_image, max_filter, nearest_voxel
from .results import MatchResult
from .scorer import Scorer

__all__ = ["MODES", "DEFAULT_CHUNK_SIZE", "AUTO_RADIUS_GLOBAL_VOXELS", "SEARCH_RADIUS_CONSTRAINT",
           "match_points", "check_search_radius", "resolve_search_radius", "check_embedding"]


MODES = ("sum", "global", "local")


#: Default bound on the floats any intermediate of the search may hold (2**24 floats = 64 MiB).
DEFAULT_CHUNK_SIZE = 2 ** 24


#: ``search_radius_mm="auto"`` means this many voxels of the query's global grid (largest spacing).
AUTO_RADIUS_GLOBAL_VOXELS = 2.0


# Per voxel and point, evaluating a window costs far more than a voxel of the dense slab scan (a
# slice copy and a matrix-vector product instead of one large matrix product), so windows holding
# more than this fraction of the local grid are searched by a slab scan with a distance mask
# instead (both give identical results).
_WINDOW_MAX_FRACTION = 1.0 / 16


def check_embedding(embedding, name: str) -> Embedding:
    """Check that an argument is an :class:`~samlearn.embedding.Embedding`.

    Parameters
    ----------
    embedding : object
        The argument.
    name : str
        Its name, for the error message.

    Returns
    -------
    Embedding
        ``embedding`` itself.

    Raises
    ------
    TypeError
        When it is not an ``Embedding``.
    """
    if not isinstance(embedding, Embedding):
        raise TypeError(f"{name} must be a samlearn.embedding.Embedding (what SAMEmbedder.transform "
                        f"returns per image), got {type(embedding).__name__}")
    return embedding


#: the declared constraint of every ``search_radius_mm`` parameter
SEARCH_RADIUS_CONSTRAINT = [Options("auto"), Interval(Real, 0, None, closed="neither", unit="mm"), None]


def check_search_radius(search_radius_mm):
    """Check a ``search_radius_mm`` value.

    Parameters
    ----------
    search_radius_mm : "auto", float or None
        The value to check: "auto", a positive number of mm, or None.

    Returns
    -------
    "auto", float or None
        The value, numbers as float (mm).
    """
    check_param(search_radius_mm, SEARCH_RADIUS_CONSTRAINT, "search_radius_mm")
    if search_radius_mm is None or isinstance(search_radius_mm, str):
        return search_radius_mm
    return float(search_radius_mm)


def resolve_search_radius(search_radius_mm, query: Embedding) -> Optional[float]:
    """The search radius (mm) that a ``search_radius_mm`` value means for a query.

    Parameters
    ----------
    search_radius_mm : "auto", float or None
        None (whole-grid search), a positive radius in mm, or ``"auto"``:
        :data:`AUTO_RADIUS_GLOBAL_VOXELS` times the largest spacing of ``query``'s global grid.
    query : Embedding
        The query image's embedding.

    Returns
    -------
    float or None
        The radius in mm, or None for a whole-grid search.
    """
    r = check_search_radius(search_radius_mm)
    if r == "auto":
        return float(AUTO_RADIUS_GLOBAL_VOXELS * np.max(query.global_map.geometry.spacing))
    return r


def _merge_topk(best_v, best_i, v, i, top_k):
    if best_v is None:
        return v, i
    v = torch.cat([best_v, v], 1)
    i = torch.cat([best_i, i], 1)
    v, order = torch.topk(v, min(top_k, v.shape[1]), dim=1)
    return v, torch.gather(i, 1, order)


def _pad_topk(v, i, top_k):
    if v.shape[1] < top_k:
        extra = top_k - v.shape[1]
        v = torch.cat([v, v.new_full((v.shape[0], extra), -math.inf)], 1)
        i = torch.cat([i, i.new_zeros((i.shape[0], extra))], 1)
    return v, i


def _full_search(sc: Scorer, top_k: int, nms_half, centres=None, radius=None):
    """Scan the grid in slabs of rows (only the rows that some window reaches, when ``centres``
    and ``radius`` restrict the search). Returns (values (k, top_k), flat indices (k, top_k))."""
    g = sc.grid
    k = sc.k
    halo = int(nms_half[0]) if top_k > 1 else 0
    rows_per = max(1, sc.chunk_size // max(1, k * g.row_size) - 2 * halo)
    lo, hi = 0, g.shape[0]
    if centres is not None:
        spacing = sc.geometry.spacing[::-1]
        nearest = nearest_voxel(centres, g)
        reach = int(np.floor(radius / spacing[0] + 0.5))
        lo = max(0, int(nearest[:, 0].min().item()) - reach)
        hi = min(g.shape[0], int(nearest[:, 0].max().item()) + reach + 1)
        other_axes = [torch.arange(n, device=sc.device, dtype=torch.float32)[None] for n in g.shape[1:]]
    best_v = best_i = None
    for r0 in range(lo, hi, rows_per):
        r1 = min(hi, r0 + rows_per)
        e0, e1 = max(0, r0 - halo), min(g.shape[0], r1 + halo)
        vals = sc.rows(e0, e1)
        if centres is not None:
            rows = torch.arange(e0, e1, device=sc.device, dtype=torch.float32)[None]
            mask = ball_mask([rows] + other_axes, centres, spacing, radius, nearest)
            vals = vals.masked_fill(~mask.reshape(k, -1), -math.inf)
        if top_k == 1:
            v, i = vals.max(dim=1, keepdim=True)
            i = i + e0 * g.row_size
            if best_v is None:
                best_v, best_i = v, i
            else:
                better = v > best_v
                best_v = torch.where(better, v, best_v)
                best_i = torch.where(better, i, best_i)
            continue
        vol = vals.reshape(k, e1 - e0, *g.shape[1:])
        peak = vol == max_filter(vol, nms_half)  # masked (-inf) voxels stay -inf below
        core = slice(r0 - e0, r1 - e0)
        cand = torch.where(peak, vol, vol.new_full((), -math.inf))[:, core].reshape(k, -1)
        v, i = torch.topk(cand, min(top_k, cand.shape[1]), dim=1)
        best_v, best_i = _merge_topk(best_v, best_i, v, i + r0 * g.row_size, top_k)
    return _pad_topk(best_v, best_i, top_k)


def _window_box(radius: float, geometry: ImageGeometry) -> np.ndarray:
    """Shape (array order) of the box, centred on the voxel nearest to a ball's centre, that holds
    every voxel of the ball of ``radius`` mm (the centre is up to half a voxel off that voxel)."""
    half = np.floor(radius / geometry.spacing[::-1] + 0.5).astype(int)
    return np.minimum(2 * half + 1, np.asarray(geometry.shape))


def _window_search(sc: Scorer, centres: torch.Tensor, radius: float, top_k: int, nms_half):
    """Evaluate only the voxels within ``radius`` mm of each centre (k, ndim array indices): each
    point's box around its centre (shifted inside the grid at borders), masked to the ball."""
    g = sc.grid
    k = sc.k
    spacing = sc.geometry.spacing[::-1]
    box = [int(b) for b in _window_box(radius, sc.geometry)]
    half = torch.as_tensor((np.asarray(box) - 1) // 2, dtype=torch.long, device=sc.device)
    nearest = nearest_voxel(centres, g)
    box_t = torch.as_tensor(box, device=sc.device)
    start = torch.minimum((nearest.long() - half).clamp(min=0), g.sizes - box_t)
    nb = int(np.prod(box))
    # points per pass: positions (ndim floats) and values of their boxes within chunk_size
    step = max(1, sc.chunk_size // max(1, nb * (g.ndim + 2)))
    best_v, best_j = [], []
    for p0 in range(0, k, step):
        p1 = min(k, p0 + step)
        vals = sc.box(start[p0:p1], box, p0)
        axes = [(start[p0:p1, i:i + 1] + torch.arange(b, device=sc.device)).float()
                for i, b in enumerate(box)]
        mask = ball_mask(axes, centres[p0:p1], spacing, radius, nearest[p0:p1])
        vals = vals.masked_fill(~mask.reshape(p1 - p0, -1), -math.inf)
        if top_k == 1:
            v, j = vals.max(dim=1, keepdim=True)
        else:
            vol = vals.reshape(p1 - p0, *box)
            peak = vol == max_filter(vol, nms_half)  # masked (-inf) voxels stay -inf below
            cand = torch.where(peak, vol, vol.new_full((), -math.inf)).reshape(p1 - p0, -1)
            v, j = _pad_topk(*torch.topk(cand, min(top_k, nb), dim=1), top_k)
        best_v.append(v)
        best_j.append(j)
    v, j = torch.cat(best_v), torch.cat(best_j)
    pos = GridIndex(tuple(box), sc.device).unravel(j) + start[:, None, :]
    return v, g.ravel(pos)


def _refine(sc: Scorer, values: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Sub-voxel peak positions (k, h, ndim array indices) by a per-axis parabola through each
    discrete peak ``flat`` (k, h) and its two neighbours; offsets clamped to +-0.5 voxel; no offset
    along an axis where a neighbour falls outside the grid or the values are not concave."""
    g = sc.grid
    k, h = flat.shape
    idx = g.unravel(flat)  # (k, h, ndim)
    nd = g.ndim
    eye = torch.eye(nd, dtype=torch.long, device=sc.device)
    nb = torch.cat([idx[:, :, None, :] - eye, idx[:, :, None, :] + eye], 2)  # (k, h, 2nd, ndim)
    valid = ((nb >= 0) & (nb < g.sizes)).all(-1)
    nb = torch.where(valid[..., None], nb, idx[:, :, None, :])
    f = sc.at(g.ravel(nb).reshape(k, -1)).reshape(k, h, 2 * nd)
    fm, fp = f[..., :nd], f[..., nd:]
    ok = valid[..., :nd] & valid[..., nd:] & torch.isfinite(values)[..., None] \
        & torch.isfinite(fm) & torch.isfinite(fp)
    f0 = values[..., None]
    denom = fm - 2 * f0 + fp
    ok = ok & (denom < 0)
    off = torch.where(ok, (fm - fp) / (2 * torch.where(ok, denom, torch.ones_like(denom))),
                      torch.zeros_like(denom))
    return idx.to(torch.float64) + off.clamp(-0.5, 0.5).to(torch.float64)


def _as_vectors(v, name: str, n_channels: int, device) -> torch.Tensor:
    if v is None:
        raise ValueError(f"{name} are needed for this mode / search window, got None")
    t = torch.as_tensor(v).detach()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] != n_channels:
        raise ValueError(f"{name} must have shape (n_points, {n_channels}) to match the query map's "
                         f"{n_channels} channels, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t.to(device=device, dtype=torch.float32)


def match_points(global_vectors, local_vectors, query: Embedding, *, mode: str = "sum",
                 search_radius_mm=None, refine: bool = True, top_k: int = 1,
                 min_distance_mm: Optional[float] = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, centers_world=None, prior_points=None,
                 prior_radius_mm: Optional[float] = None) -> MatchResult:
    """Find the K template points in ``query``: the peak of the similarity map per point.

    Parameters
    ----------
    global_vectors, local_vectors : (K, C) tensors or arrays, or None
        Template vectors (:func:`template_vectors`, or :func:`combine_templates`). ``global_vectors``
        may be None for ``mode="local"`` without a window; ``local_vectors`` may be None for
        ``mode="global"``.
    query : Embedding
        The query image's embedding.
    mode : {"sum", "global", "local"}, default "sum"
        ``"sum"``: peak of ``(S^g + S^l) / 2`` on the local grid (SAM's rule); ``"global"``: peak of
        ``S^g`` on the global grid; ``"local"``: peak of ``S^l`` on the local grid.
    search_radius_mm : None, float or "auto", default None
        None: search the whole grid. A radius (mm): coarse-to-fine, search only local voxels within
        this distance of the ``S^g`` peak (modes "sum" and "local"; ignored for "global").
        ``"auto"``: :data:`AUTO_RADIUS_GLOBAL_VOXELS` voxels of the query's global grid.
    refine : bool, default True
        Sub-voxel parabola refinement of every peak.
    top_k : int, default 1
        Number of distinct peaks to report per point (``hypotheses``). A peak is a voxel that is the
        maximum of the box of +-``min_distance_mm`` around it, so reported peaks are more than
        ``min_distance_mm`` apart along at least one axis.
    min_distance_mm : float, optional
        Separation of the ``top_k`` hypotheses; default the largest spacing of the global grid
        (at least one voxel of the searched grid is always used).
    chunk_size : int, default 2**24
        Upper bound on the floats of any intermediate (similarity values of a slab of the grid,
        the features of a window copied for its product, window positions); the coarse ``S^g``
        map of a chunk of points is held whole.
    centers_world : (K, ndim) array, optional
        Centre the search windows on these world points (one per template point) instead of on
        the ``S^g`` peaks: for a caller that already has a better prior than the coarse global
        map, e.g. a registration's affine prediction. Needs a ``search_radius_mm`` and mode
        ``"sum"`` or ``"local"``; ``global_points`` then reports these centres.
    prior_points, prior_radius_mm : (K, ndim) world mm and a radius (mm), optional
        Restrict the coarse (``S^g``) peak of point k to within ``prior_radius_mm`` of
        ``prior_points[k]`` (e.g. where a robust fit of all points says it must be). Applies to the
        coarse stage of a windowed search and to mode ``"global"``.

    Returns
    -------
    MatchResult
        The matched points (world mm of ``query``, never outside its image), their scores (in
        [-1, 1]), the ``top_k`` hypotheses and the searched grid.

    Raises
    ------
    ValueError
        For an unknown ``mode``, vectors that do not fit the query's maps or each other, or a
        ``centers_world`` / ``prior_points`` that the mode and window cannot use.

    See Also
    --------
    samlearn.matching.template_vectors : The vectors of template points.
    samlearn.matching.combine_templates : One search for several templates.
    """
    query = check_embedding(query, "query")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    top_k = int(check_param(top_k, [Interval(Integral, 1, None)], "top_k"))
    chunk_size = int(check_param(chunk_size, [Interval(Integral, 1, None)], "chunk_size"))
    radius = resolve_search_radius(search_radius_mm, query) if mode != "global" else None
    gmap, lmap = query.global_map, query.local_map
    given_centres = None
    if centers_world is not None:
        if mode == "global" or radius is None:
            raise ValueError(f"centers_world needs a search window: mode 'sum' or 'local' and a "
                             f"search_radius_mm, got mode={mode!r}, search_radius_mm={search_radius_mm!r}")
        given_centres = check_points(centers_world, query.ndim, name="centers_world")
    need_g = mode in ("sum", "global") or (radius is not None and given_centres is None)
    need_l = mode in ("sum", "local")
    gv = _as_vectors(global_vectors, "global_vectors", gmap.n_channels, gmap.data.device) if need_g else None
    lv = _as_vectors(local_vectors, "local_vectors", lmap.n_channels, lmap.data.device) if need_l else None
    if gv is not None and lv is not None and gv.shape[0] != lv.shape[0]:
        raise ValueError(f"global_vectors has {gv.shape[0]} points but local_vectors has {lv.shape[0]}")
    n_points = (gv if gv is not None else lv).shape[0]
    prior = None
    if prior_points is not None:
        prior = check_points(prior_points, query.ndim, name="prior_points")
        if len(prior) != n_points:
            raise ValueError(f"prior_points has {len(prior)} points, expected {n_points}")
        try:
            ok = np.isfinite(float(prior_radius_mm)) and float(prior_radius_mm) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"prior_radius_mm must be a positive number of mm with prior_points, "
                             f"got {prior_radius_mm!r}")
        if radius is None and mode != "global":
            raise ValueError("prior_points needs a coarse-to-fine search: set search_radius_mm, "
                             "or use mode='global'")
    if given_centres is not None and prior is not None:
        raise ValueError("give centers_world (fixed window centres) or prior_points (a region for the "
                         "coarse peak), not both")
    if given_centres is not None and len(given_centres) != n_points:
        raise ValueError(f"centers_world has {len(given_centres)} points but {n_points} template "
                         f"vectors were given; give one centre per point")

    search_geom = gmap.geometry if mode == "global" else lmap.geometry
    if min_distance_mm is None:
        min_distance_mm = float(np.max(gmap.geometry.spacing))
    else:
        try:
            ok = np.isfinite(float(min_distance_mm)) and float(min_distance_mm) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"min_distance_mm must be a positive number of mm, got {min_distance_mm!r}")
    nms_half = np.maximum(1, np.floor(float(min_distance_mm) / search_geom.spacing[::-1])).astype(int)

    n_global = int(np.prod(gmap.geometry.shape))
    n_search = int(np.prod(search_geom.shape))
    # a slab of the search grid holds at least one row plus the non-maximum-suppression halo
    slab = int(np.prod(search_geom.shape[1:])) * (1 + (2 * int(nms_half[0]) if top_k > 1 else 0))
    point_step = max(1, min(n_points, chunk_size // max(1 if gv is None else n_global, slab)))

    out_v, out_i, out_pts, out_gpts = [], [], [], []
    for p0 in range(0, n_points, point_step):
        sl = slice(p0, p0 + point_step)
        g_chunk = gv[sl] if gv is not None else None
        l_chunk = lv[sl] if lv is not None else None
        centres = gpts = gsc = None
        pc = None
        if prior is not None:
            pc = torch.as_tensor(gmap.geometry.world_to_array_index(prior[sl]), dtype=torch.float32,
                                 device=gmap.data.device)
        if given_centres is not None:
            gpts = given_centres[sl]
            centres = torch.as_tensor(lmap.geometry.world_to_array_index(gpts), dtype=torch.float32,
                                      device=lmap.data.device)
        elif radius is not None:
            gsc = Scorer("global", g_chunk, None, query, chunk_size)
            if pc is not None:
                gval, gflat = _full_search(gsc, 1, np.ones(gmap.ndim, int), pc, float(prior_radius_mm))
            else:
                gval, gflat = _full_search(gsc, 1, np.ones(gmap.ndim, int))
            gidx = _refine(gsc, gval, gflat)[:, 0]
            gpts = gmap.geometry.array_index_to_world(gidx.cpu().numpy())
            centres = torch.as_tensor(lmap.geometry.world_to_array_index(gpts), dtype=torch.float32,
                                      device=lmap.data.device)
        sc = Scorer(mode, g_chunk, l_chunk, query, chunk_size, sg=None if gsc is None else gsc.sg)
        if radius is not None:
            nb = int(np.prod(_window_box(radius, search_geom)))
            if nb <= _WINDOW_MAX_FRACTION * n_search:
                vals, flat = _window_search(sc, centres, radius, top_k, nms_half)
            else:
                vals, flat = _full_search(sc, top_k, nms_half, centres, radius)
        elif pc is not None:  # mode "global" with a prior
            vals, flat = _full_search(sc, top_k, nms_half, pc, float(prior_radius_mm))
        else:
            vals, flat = _full_search(sc, top_k, nms_half)
        if refine:
            idx = _refine(sc, vals, flat)
        else:
            idx = sc.grid.unravel(flat).to(torch.float64)
        out_v.append(vals)
        out_i.append(flat)
        out_pts.append(idx)
        out_gpts.append(gpts)

    vals = torch.cat(out_v).double().cpu().numpy()
    flat = torch.cat(out_i)
    idx = torch.cat(out_pts).cpu().numpy()
    d = search_geom.ndim
    hyp = search_geom.array_index_to_world(idx.reshape(-1, d)).reshape(n_points, top_k, d)
    missing = ~np.isfinite(vals)
    hyp[missing] = np.nan
    hyp[~missing] = clip_to_image(hyp[~missing], query.source_geometry)
    best_index = GridIndex(search_geom.shape, flat.device).unravel(flat[:, 0]).cpu().numpy()
    return MatchResult(
        points=hyp[:, 0].copy(), scores=vals[:, 0].copy(), index=best_index.astype(np.int64),
        grid=search_geom, hypotheses=hyp, hypothesis_scores=vals,
        global_points=None if radius is None else np.concatenate(out_gpts, 0),
        search_radius_mm=radius)
