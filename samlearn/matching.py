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
   (a ball in world mm). This removes far-away false peaks of the local map (measured on real
   cephalograms: MRE 34.8 -> 21.5 px, see METHOD.md "Measured here") and is faster; windows
   larger than 1/16 of the local grid are searched as a slab scan with a distance mask instead
   (same result, cheaper at that size).
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
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .image import ImageGeometry, check_points
from .maps import Embedding, EmbeddingMap

__all__ = [
    "MODES",
    "DEFAULT_CHUNK_SIZE",
    "AUTO_RADIUS_GLOBAL_VOXELS",
    "MatchResult",
    "CycleResult",
    "template_vectors",
    "combine_templates",
    "match_points",
    "cycle_consistency",
    "check_search_radius",
    "resolve_search_radius",
    "upsample_to_grid",
]

MODES = ("sum", "global", "local")
#: Default bound on the floats any intermediate of the search may hold (2**24 floats = 64 MiB).
DEFAULT_CHUNK_SIZE = 2 ** 24
#: ``search_radius_mm="auto"`` means this many voxels of the query's global grid (largest spacing).
AUTO_RADIUS_GLOBAL_VOXELS = 2.0
# Per voxel and point, evaluating a window costs about 25x a voxel of the dense slab scan (a slice
# copy and a matrix-vector product instead of one large matrix product; measured on a 2-core CPU),
# so windows holding more than this fraction of the local grid are searched by a slab scan with a
# distance mask instead (both give identical results).
_WINDOW_MAX_FRACTION = 1.0 / 16
#: boxes of at most this many voxels are read by one vectorised gather instead of a loop over points
_GATHER_MAX_BOX = 512
# Many overlapping boxes (e.g. a grid of points searched near an affine prior) are scored on the
# CPU tile by tile: the points whose box corners fall in one tile (_TILE_FACTOR boxes wide) get one
# matrix product over the union of their boxes. That computes more voxels than the boxes hold (up
# to _TILED_MAX_WORK times), but a GEMM costs about 1/100 of copying a voxel's feature vector, the
# price of the gather (one core of a 2-core EPYC, 128 channels: 961 points with 9 x 9 boxes on a
# 96 x 96 map, 20-22 ms tiled against 62-70 ms gathered; 2,025 points with 5 x 5 x 5 boxes on a
# 64 x 64 x 40 map, 230-270 ms against 400-430 ms; tiles 1, 1.5, 2, 4 and 6 boxes wide were slower).
_TILED_MIN_POINTS = 32
_TILED_MIN_POINTS_PER_TILE = 2
_TILED_MAX_WORK = 80.0
_TILE_FACTOR = 3.0


# ============================================================================ results


@dataclass
class MatchResult:
    """Where each of K template points matched in a query embedding.

    Attributes
    ----------
    points : (K, ndim) float64
        Matched positions, world mm (x, y[, z]); refined to sub-voxel when ``refine`` was set.
    scores : (K,) float64
        Peak value of the searched map at the discrete peak voxel: ``(S^g + S^l) / 2`` for mode
        ``"sum"``, ``S^g`` or ``S^l`` for ``"global"`` / ``"local"``; in [-1, 1].
    index : (K, ndim) int64
        Array index (numpy order, (z, y, x)) of the best voxel on ``grid``.
    grid : ImageGeometry
        The grid searched: the local map's grid, or the global map's for mode ``"global"``.
    hypotheses : (K, top_k, ndim) float64
        The ``top_k`` best distinct peaks per point, best first (``hypotheses[:, 0] == points``);
        rows are NaN where fewer than ``top_k`` distinct peaks exist.
    hypothesis_scores : (K, top_k) float64
        Their scores, descending; ``-inf`` for missing hypotheses.
    global_points : (K, ndim) float64 or None
        The (refined) peak of ``S^g`` on the coarse grid that centred the search window, when a
        window was used.
    search_radius_mm : float or None
        The window radius actually used (``None``: whole-grid search).
    """

    points: np.ndarray
    scores: np.ndarray
    index: np.ndarray
    grid: ImageGeometry
    hypotheses: np.ndarray
    hypothesis_scores: np.ndarray
    global_points: Optional[np.ndarray] = None
    search_radius_mm: Optional[float] = None

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class CycleResult:
    """Forward-backward consistency: ``distances_mm`` (K,) between each template point and the
    point it maps back to after matching template -> query -> template; ``forward`` and
    ``backward`` are the two :class:`MatchResult`."""

    distances_mm: np.ndarray
    forward: MatchResult
    backward: MatchResult = field(repr=False)


# ============================================================================ template vectors


def _check_embedding(embedding, name: str) -> Embedding:
    if not isinstance(embedding, Embedding):
        raise TypeError(f"{name} must be a samlearn.maps.Embedding (what SAMEmbedder.transform "
                        f"returns per image), got {type(embedding).__name__}")
    return embedding


def template_vectors(embedding: Embedding, points_world) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global and local embedding vectors, each (K, C), at template points (K, ndim) in world mm.

    Vectors are interpolated linearly at the sub-voxel positions of the points on each map's grid
    and L2-normalised again (:meth:`EmbeddingMap.vectors_at`); they stay on the maps' device.
    """
    embedding = _check_embedding(embedding, "embedding")
    pts = check_points(points_world, embedding.ndim, name="points_world")
    return embedding.global_map.vectors_at(pts), embedding.local_map.vectors_at(pts)


def combine_templates(vector_sets: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """Combine the ``(global, local)`` vectors of several templates (same K points each) by
    averaging them *without* renormalising.

    Because cosine similarity with a map is linear in the vector, the similarity map of the mean
    vector is exactly the mean of the templates' similarity maps, and scores keep their scale
    (the mean of cosine similarities, in [-1, 1]). One search then serves all templates.
    Returns ``(global (K, C), local (K, C))``.
    """
    sets = list(vector_sets)
    if not sets:
        raise ValueError("vector_sets is empty: give at least one (global, local) pair")
    out = []
    for part, name in ((0, "global"), (1, "local")):
        vs = [torch.as_tensor(s[part]) for s in sets]
        shapes = {tuple(v.shape) for v in vs}
        if len(shapes) != 1:
            raise ValueError(f"the {name} vectors of the templates differ in shape: {sorted(shapes)}; "
                             f"every template must give the same points and channels")
        out.append(torch.stack([v.to(vs[0].device, torch.float32) for v in vs]).mean(0))
    return out[0], out[1]


# ============================================================================ geometry helpers


def _index_affine(src: ImageGeometry, dst: ImageGeometry) -> Tuple[np.ndarray, np.ndarray]:
    """(M, t) with ``src_array_index = M @ dst_array_index + t`` (numpy order, continuous)."""
    a = (src.direction.T @ dst.direction) * dst.spacing[None, :] / src.spacing[:, None]
    b = (src.direction.T @ (dst.origin - src.origin)) / src.spacing
    return a[::-1, ::-1].copy(), b[::-1].copy()


def _interp(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Multilinear interpolation of ``values`` (B, Cv, *S) at continuous array indices ``idx``
    (B, n, ndim) (clamped to the grid, i.e. constant beyond the outer voxel centres).
    Returns (B, Cv, n)."""
    b, n, ndim = idx.shape
    sizes = torch.tensor(values.shape[2:], dtype=idx.dtype, device=idx.device)
    idx = torch.minimum(idx.clamp(min=0), sizes - 1)
    grid = (idx / (sizes - 1).clamp(min=1) * 2 - 1).flip(-1)
    grid = grid.reshape(b, *([1] * (ndim - 1)), n, ndim)
    out = F.grid_sample(values, grid.to(values.dtype), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.reshape(b, values.shape[1], n)


def _taps(n_out: int, scale: float, offset: float, n_in: int, device):
    """Linear interpolation taps along one axis: output voxel i sits at input index
    ``scale * i + offset`` (clamped to the input); returns (i0, i1, w) with value
    ``(1 - w) * x[i0] + w * x[i1]``."""
    pos = (torch.arange(n_out, dtype=torch.float64, device=device) * scale + offset).clamp(0, n_in - 1)
    i0 = pos.floor().long().clamp(max=max(n_in - 2, 0))
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (pos - i0).float()


def _lerp_axis(x: torch.Tensor, dim: int, i0, i1, w) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[dim] = -1
    a, b = x.index_select(dim, i0), x.index_select(dim, i1)
    return torch.lerp(a, b, w.reshape(shape))


def upsample_to_grid(values, src_geometry: ImageGeometry, dst_geometry: ImageGeometry) -> torch.Tensor:
    """Resample maps ``values`` (K, *src_geometry.shape) onto ``dst_geometry`` (K, *dst.shape).

    Each destination voxel centre is mapped through world space to a continuous index of the
    source grid and the maps are interpolated linearly there (exact for maps that are linear in
    world coordinates, whatever the strides, offsets and directions); beyond the outermost source
    voxel centres the border value is kept. This is how ``S^g`` reaches the local grid.
    """
    values = torch.as_tensor(values)
    if tuple(values.shape[1:]) != src_geometry.shape:
        raise ValueError(f"values must have shape (K, *{src_geometry.shape}), got {tuple(values.shape)}")
    if src_geometry.ndim != dst_geometry.ndim:
        raise ValueError(f"src_geometry is {src_geometry.ndim}D but dst_geometry is {dst_geometry.ndim}D")
    m, t = _index_affine(src_geometry, dst_geometry)
    grid = _GridIndex(dst_geometry.shape, values.device)
    pos = grid.rows(0, dst_geometry.shape[0])
    pos = pos @ torch.as_tensor(m.T, dtype=torch.float32, device=values.device) \
        + torch.as_tensor(t, dtype=torch.float32, device=values.device)
    out = _interp(values.float().unsqueeze(0), pos.unsqueeze(0))
    return out.reshape(values.shape[0], *dst_geometry.shape)


class _GridIndex:
    """Array indices of a grid, by slab of leading rows or from flat indices."""

    def __init__(self, shape, device):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        self.device = device
        self.row_size = int(np.prod(self.shape[1:]))
        self.n = int(np.prod(self.shape))
        strides = np.cumprod((1,) + self.shape[::-1][:-1])[::-1].copy()
        self.strides = torch.as_tensor(strides, dtype=torch.long, device=device)
        self.sizes = torch.as_tensor(self.shape, dtype=torch.long, device=device)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """(n, ndim) float32 array indices of rows ``r0:r1`` along axis 0, in flat order."""
        axes = [torch.arange(r0, r1, device=self.device, dtype=torch.float32)]
        axes += [torch.arange(s, device=self.device, dtype=torch.float32) for s in self.shape[1:]]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)

    def unravel(self, flat: torch.Tensor) -> torch.Tensor:
        return (flat.unsqueeze(-1) // self.strides) % self.sizes

    def ravel(self, idx: torch.Tensor) -> torch.Tensor:
        return (idx * self.strides).sum(-1)


def check_search_radius(search_radius_mm):
    """Validate a ``search_radius_mm`` value: returns None, ``"auto"`` or a positive float (mm)."""
    msg = "search_radius_mm must be None, 'auto' or a positive number of mm, got "
    if search_radius_mm is None:
        return None
    if isinstance(search_radius_mm, str):
        if search_radius_mm != "auto":
            raise ValueError(msg + repr(search_radius_mm))
        return "auto"
    if isinstance(search_radius_mm, bool):
        raise TypeError(msg + repr(search_radius_mm))
    try:
        r = float(search_radius_mm)
    except (TypeError, ValueError):
        raise TypeError(msg + type(search_radius_mm).__name__) from None
    if not (np.isfinite(r) and r > 0):
        raise ValueError(msg + repr(search_radius_mm))
    return r


def resolve_search_radius(search_radius_mm, query: Embedding) -> Optional[float]:
    """``None`` (whole-grid search), a positive radius in mm, or ``"auto"``:
    :data:`AUTO_RADIUS_GLOBAL_VOXELS` times the largest spacing of ``query``'s global grid."""
    r = check_search_radius(search_radius_mm)
    if r == "auto":
        return float(AUTO_RADIUS_GLOBAL_VOXELS * np.max(query.global_map.geometry.spacing))
    return r


# ============================================================================ the search


class _Scorer:
    """Values of the searched map for a chunk of k points: by slabs of rows, or at given voxels."""

    def __init__(self, mode, gv, lv, query: Embedding, chunk_size: int, sg=None):
        self.mode = mode
        self.chunk_size = chunk_size
        gmap: EmbeddingMap = query.global_map
        lmap: EmbeddingMap = query.local_map
        self.geometry = gmap.geometry if mode == "global" else lmap.geometry
        self.device = (gmap if mode == "global" else lmap).data.device
        self.grid = _GridIndex(self.geometry.shape, self.device)
        # voxels that do not overlap the query image (padding of the working grid): never a match
        self.outside = _outside_fov(self.geometry, query.source_geometry, self.device)
        self.k = (gv if gv is not None else lv).shape[0]
        self.sg = sg if mode in ("sum", "global") else None
        if self.sg is None and gv is not None and mode in ("sum", "global"):
            gdata = gmap.data
            self.sg = (gv.to(gdata.device, gdata.dtype) @ gdata.reshape(gdata.shape[0], -1)).float()
            self.sg = self.sg.to(self.device).reshape(self.k, *gmap.geometry.shape)
        if mode in ("sum", "local"):
            ldata = lmap.data
            self.n_channels = ldata.shape[0]
            self.fl = ldata.reshape(ldata.shape[0], -1)
            self.lv = lv.to(ldata.device, ldata.dtype)
        else:
            self.n_channels = 1
        self.sg_planes = None
        self._rows_cache = None  # channel-last copy of the local map, made on first need
        if mode == "sum":
            m, t = _index_affine(gmap.geometry, lmap.geometry)
            self.m = torch.as_tensor(m.T, dtype=torch.float32, device=self.device)
            self.t = torch.as_tensor(t, dtype=torch.float32, device=self.device)
            # Grids of one image share their axes (the usual case): the upsampling is separable.
            # Interpolate S^g once along all axes but the first onto the local grid, so a slab
            # only needs a 2-tap blend of two such planes per row (instead of grid_sample).
            lshape = lmap.geometry.shape
            planes = self.k * gmap.geometry.shape[0] * int(np.prod(lshape[1:]))
            off_diag = np.abs(m - np.diag(np.diag(m))).max()
            if off_diag < 1e-9 and planes <= chunk_size:
                p = self.sg
                for ax in range(1, len(lshape)):
                    p = _lerp_axis(p, ax + 1, *_taps(lshape[ax], m[ax, ax], t[ax], p.shape[ax + 1],
                                                     self.device))
                self.sg_planes = p
                self.row_taps = _taps(lshape[0], m[0, 0], t[0], p.shape[1], self.device)

    # --- whole slabs: shared positions for the k points
    def rows(self, r0: int, r1: int) -> torch.Tensor:
        vals = self._rows(r0, r1)
        if self.outside is not None:
            a, b = r0 * self.grid.row_size, r1 * self.grid.row_size
            vals = vals.masked_fill(self.outside[a:b], -math.inf)
        return vals

    def _rows(self, r0: int, r1: int) -> torch.Tensor:
        a, b = r0 * self.grid.row_size, r1 * self.grid.row_size
        if self.mode == "global":
            return self.sg.reshape(self.k, -1)[:, a:b]
        sl = (self.lv @ self.fl[:, a:b]).float()
        if self.mode == "local":
            return sl
        if self.sg_planes is not None:
            i0, i1, w = (x[r0:r1] for x in self.row_taps)
            sg = _lerp_axis(self.sg_planes, 1, i0, i1, w).reshape(self.k, -1)
        else:
            pos = self.grid.rows(r0, r1) @ self.m + self.t
            sg = _interp(self.sg.unsqueeze(0), pos.unsqueeze(0))[0]
        return (sg + sl) * 0.5

    # --- per-point boxes (coarse-to-fine windows)
    def box(self, start: torch.Tensor, box: Sequence[int], p0: int = 0) -> torch.Tensor:
        """Values on each point's own box of voxels, for points ``p0:p0 + len(start)``: ``start``
        (k, ndim) array indices of the box corners, ``box`` its shape; returns (k, prod(box)) in
        the box's flat order.

        The local similarities are one matrix-vector product per point over a slice of the map:
        on a channel-first map this reads contiguous runs and measured 1.5-4x faster on CPU than
        one vectorised gather of all the windows' voxels (which reads every channel plane
        voxel by voxel); the loop is over points only, each iteration a large vectorised product,
        so the interpreter overhead stays negligible next to the arithmetic."""
        k = start.shape[0]
        nb = int(np.prod(box))
        off = _GridIndex(tuple(box), self.device).rows(0, box[0])
        out = self._box_tiled(start, box, p0)
        if out is None and nb <= _GATHER_MAX_BOX and nb * self.n_channels <= self.chunk_size:
            # small boxes (e.g. many points searched near a prior): one vectorised gather of all
            # the boxes' voxels beats a Python-level loop over the points
            return self.at(self.grid.ravel(start[:, None, :] + off[None].long()), p0)
        if out is None and self.mode in ("sum", "local"):
            out = torch.empty((k, nb), dtype=torch.float32, device=self.device)
            data = self.fl.reshape(self.n_channels, *self.grid.shape)
            row = int(np.prod(box[1:]))
            # split a box along its first axis if one point's features would exceed chunk_size
            rows_per = max(1, self.chunk_size // max(1, self.n_channels * row))
            for i, corner in enumerate(start.tolist()):
                for r in range(0, box[0], rows_per):
                    r1 = min(box[0], r + rows_per)
                    sl = (slice(None), slice(corner[0] + r, corner[0] + r1)) + tuple(
                        slice(c, c + b) for c, b in zip(corner[1:], box[1:]))
                    feats = data[sl].reshape(self.n_channels, -1)
                    out[i, r * row:r1 * row] = (self.lv[p0 + i] @ feats).float()
        if self.mode != "local":
            pos = (start.float()[:, None, :] + off[None]) @ self.m + self.t
            sg = _interp(self.sg[p0:p0 + k].unsqueeze(1), pos)[:, 0]
            out = sg if self.mode == "global" else (sg + out) * 0.5
        if self.outside is not None:
            flat = self.grid.ravel(start[:, None, :] + off[None].long())
            out = out.masked_fill(self.outside[flat], -math.inf)
        return out

    def _box_tiled(self, start: torch.Tensor, box: Sequence[int], p0: int) -> Optional[torch.Tensor]:
        """Local similarities (k, prod(box)) of the boxes at ``start`` computed tile by tile (see
        ``_TILED_MAX_WORK``), or None where that does not pay: on a GPU (the gather is fast
        there), for the global mode, for few points, or for boxes that hardly overlap."""
        k = start.shape[0]
        if self.device.type != "cpu" or self.mode == "global" or k < _TILED_MIN_POINTS:
            return None
        st = start.numpy()
        b = np.asarray(box, dtype=np.int64)
        nb = int(np.prod(b))
        key = st // np.maximum(1, np.round(b * _TILE_FACTOR).astype(np.int64))
        order = np.lexsort(key.T[::-1])
        cuts = np.flatnonzero(np.any(np.diff(key[order], axis=0) != 0, axis=1)) + 1
        if (len(cuts) + 1) * _TILED_MIN_POINTS_PER_TILE > k:
            return None
        # points in tile order: each tile's points are one contiguous run [first, last)
        first = np.r_[0, cuts]
        last = np.r_[cuts, k]
        ss = st[order]
        lo = np.minimum.reduceat(ss, first, axis=0)
        hi = np.maximum.reduceat(ss, first, axis=0) + b
        ext = hi - lo
        sizes = last - first
        if int((sizes * np.prod(ext, axis=1)).sum()) > _TILED_MAX_WORK * k * nb:
            return None
        data = self.fl.reshape(self.n_channels, *self.grid.shape)
        # a channels-last map (the CPU network's output) is sliced as (*tile, C): each tile row is
        # one contiguous run; slicing it channel-first would copy it voxel by voxel
        channels_last = data.stride(0) == 1 and self.n_channels > 1
        if channels_last:
            data = data.movedim(0, -1)
        # every point's box voxels as flat (C-order) indices into its tile, all points at once
        tile_of = np.repeat(np.arange(len(first)), sizes)
        strides = np.cumprod(np.concatenate([np.ones((len(ext), 1), np.int64), ext[:, :0:-1]], 1),
                             axis=1)[:, ::-1]
        off = np.stack(np.meshgrid(*[np.arange(n) for n in box], indexing="ij"), -1).reshape(-1, len(box))
        pst = strides[tile_of]  # (k, ndim)
        flat = torch.from_numpy(((ss - lo[tile_of]) * pst).sum(1)[:, None] + pst @ off.T)  # (k, nb)
        lv = self.lv[p0 + torch.from_numpy(order)]  # (k, C) in tile order
        out = torch.empty((k, nb), dtype=torch.float32)
        for a, z, l, h in zip(first, last, lo, hi):
            tile = tuple(slice(i, j) for i, j in zip(l, h))
            if channels_last:
                vals = (data[tile].reshape(-1, self.n_channels) @ lv[a:z].T).float().T
            else:
                vals = (lv[a:z] @ data[(slice(None),) + tile].reshape(self.n_channels, -1)).float()
            torch.gather(vals, 1, flat[a:z], out=out[a:z])
        result = torch.empty_like(out)
        result[torch.from_numpy(order)] = out
        return result

    def _voxel_rows(self):
        """The local map as (voxels, channels), made once, for gathers of many voxels; None when
        the copy would exceed chunk_size floats (whole-body CT maps: gather channel-first)."""
        if self.fl.numel() > self.chunk_size:
            return None
        if self._rows_cache is None:
            self._rows_cache = self.fl.t().contiguous()
        return self._rows_cache

    # --- per-point voxel sets
    def at(self, flat: torch.Tensor, p0: int = 0) -> torch.Tensor:
        """Values at flat voxel indices ``flat`` (k, n) of each point's own map, for points
        ``p0:p0 + k``: (k, n)."""
        vals = self._at(flat, p0)
        if self.outside is not None:
            vals = vals.masked_fill(self.outside[flat], -math.inf)
        return vals

    def _at(self, flat: torch.Tensor, p0: int = 0) -> torch.Tensor:
        k, n = flat.shape
        if self.mode == "global":
            return torch.gather(self.sg[p0:p0 + k].reshape(k, -1), 1, flat)
        # gather in sub-chunks of points so at most chunk_size feature floats are copied at once
        step = max(1, self.chunk_size // max(1, n * self.n_channels))
        rows = self._voxel_rows() if k * n * self.n_channels > self.fl.numel() // 8 else None
        parts = []
        for i in range(0, k, step):
            f = flat[i:i + step]
            lv = self.lv[p0 + i:p0 + i + f.shape[0]]
            if rows is not None:  # channel-last copy: each voxel's vector is one contiguous read
                parts.append(torch.bmm(rows[f], lv.unsqueeze(-1)).squeeze(-1).float())
            else:
                feats = self.fl[:, f.reshape(-1)].reshape(self.n_channels, f.shape[0], n)
                parts.append(torch.einsum("kc,ckn->kn", lv, feats).float())
        sl = torch.cat(parts, 0)
        if self.mode == "local":
            return sl
        pos = self.grid.unravel(flat).float() @ self.m + self.t
        sg = _interp(self.sg[p0:p0 + k].unsqueeze(1), pos)[:, 0]
        return (sg + sl) * 0.5


def _outside_fov(grid: ImageGeometry, source: ImageGeometry, device) -> Optional[torch.Tensor]:
    """Flat boolean mask of the voxels of ``grid`` (a map of the working grid) that do not overlap
    the query image ``source``, or None when every voxel does (always for axis-aligned images).

    The working grid is the axis-aligned bounding box of the image, so for an image stored with a
    rotated direction its corners are padding; a peak there would put a landmark outside the image.
    A voxel counts as overlapping when its centre lies within the image's extent widened by the
    voxel's diagonal (generous on purpose: a voxel's box reaches half a diagonal from its centre, and
    the working grid may fall short of the image's box by half a working voxel; so some voxel is
    always valid, whatever the image's size and orientation)."""
    if grid.allclose(source, atol=1e-9):
        return None
    pad = float(np.linalg.norm(grid.spacing)) / np.asarray(source.spacing)  # in source voxels, per axis
    lo, hi = -0.5 - pad - 1e-6, np.asarray(source.size) - 0.5 + pad + 1e-6

    def inside(array_idx):
        idx = source.world_to_index(grid.array_index_to_world(array_idx))
        return np.all((idx >= lo) & (idx <= hi), axis=-1)

    shape = np.asarray(grid.shape)
    corners = np.stack(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"), -1).reshape(-1, grid.ndim)
    if inside(corners.astype(np.float64)).all():
        return None  # affine grid, convex box: all voxel centres are inside too
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    rows = []
    for r in range(shape[0]):  # row by row: memory bounded by one row of world positions
        idx = np.stack(np.meshgrid(*([axes[0][r:r + 1]] + axes[1:]), indexing="ij"), -1).reshape(-1, grid.ndim)
        rows.append(~inside(idx))
    return torch.as_tensor(np.concatenate(rows), device=device)


def _clip_to_image(points: np.ndarray, source: ImageGeometry) -> np.ndarray:
    """Move points lying just outside the image (a peak voxel overlapping its border, or the
    sub-voxel refinement) onto its border: a landmark is never reported outside the image."""
    if len(points) == 0:
        return points
    idx = source.world_to_index(points)
    clipped = np.clip(idx, -0.5, np.asarray(source.size) - 0.5)
    if np.array_equal(clipped, idx):
        return points
    return source.index_to_world(clipped)


def _max_filter(x: torch.Tensor, half: Sequence[int]) -> torch.Tensor:
    """Box maximum over +-half[i] voxels along each spatial axis of ``x`` (k, *spatial); beyond
    the borders counts as -inf. Separable, and per axis by doubling (max of shifted views of
    widths 1, 2, 4, ...), so the cost grows with log(width): measured 3x faster than max_pool."""
    for ax, h in enumerate(half):
        h, dim = int(h), ax + 1
        if h <= 0:
            continue
        w, n = 2 * h + 1, x.shape[dim]
        pad_shape = list(x.shape)
        pad_shape[dim] = h
        pad = x.new_full(pad_shape, -math.inf)
        m = torch.cat([pad, x, pad], dim)
        width = 1
        while 2 * width <= w:  # m[i] = max of the padded line over [i, i + width)
            length = m.shape[dim] - width
            m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, width, length))
            width *= 2
        if width < w:
            r = w - width
            length = m.shape[dim] - r
            m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, r, length))
        x = m.narrow(dim, 0, n)
    return x


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


def _nearest_voxel(centres: torch.Tensor, g: _GridIndex) -> torch.Tensor:
    return torch.minimum(torch.round(centres).clamp(min=0), (g.sizes - 1).to(centres.dtype))


def _ball_mask(axes, centres: torch.Tensor, spacing: Sequence[float], radius: float,
               nearest: torch.Tensor) -> torch.Tensor:
    """(k, n_0, ..., n_{d-1}) mask of voxels within ``radius`` mm of ``centres`` (k, ndim array
    indices), on the grid spanned by per-axis array coordinates ``axes[i]`` ((k, n_i) or (1, n_i)).
    The voxel ``nearest`` (k, ndim) to each centre always counts. Separable: the squared distance
    is a broadcast sum of per-axis terms (directions are orthonormal, so index offsets times
    spacings give world distances)."""
    nd = len(axes)
    d2 = 0.0
    at_nearest = True
    for i, coord in enumerate(axes):
        shape = [-1] + [1] * nd
        shape[1 + i] = coord.shape[1]
        d2 = d2 + (((coord - centres[:, i:i + 1]) * float(spacing[i])) ** 2).reshape(shape)
        at_nearest = at_nearest & (coord == nearest[:, i:i + 1]).reshape(shape)
    return (d2 <= radius * radius) | at_nearest


def _full_search(sc: _Scorer, top_k: int, nms_half, centres=None, radius=None):
    """Scan the grid in slabs of rows (only the rows that some window reaches, when ``centres``
    and ``radius`` restrict the search). Returns (values (k, top_k), flat indices (k, top_k))."""
    g = sc.grid
    k = sc.k
    halo = int(nms_half[0]) if top_k > 1 else 0
    rows_per = max(1, sc.chunk_size // max(1, k * g.row_size) - 2 * halo)
    lo, hi = 0, g.shape[0]
    if centres is not None:
        spacing = sc.geometry.spacing[::-1]
        nearest = _nearest_voxel(centres, g)
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
            mask = _ball_mask([rows] + other_axes, centres, spacing, radius, nearest)
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
        peak = vol == _max_filter(vol, nms_half)  # masked (-inf) voxels stay -inf below
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


def _window_search(sc: _Scorer, centres: torch.Tensor, radius: float, top_k: int, nms_half):
    """Evaluate only the voxels within ``radius`` mm of each centre (k, ndim array indices): each
    point's box around its centre (shifted inside the grid at borders), masked to the ball."""
    g = sc.grid
    k = sc.k
    spacing = sc.geometry.spacing[::-1]
    box = [int(b) for b in _window_box(radius, sc.geometry)]
    half = torch.as_tensor((np.asarray(box) - 1) // 2, dtype=torch.long, device=sc.device)
    nearest = _nearest_voxel(centres, g)
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
        mask = _ball_mask(axes, centres[p0:p1], spacing, radius, nearest[p0:p1])
        vals = vals.masked_fill(~mask.reshape(p1 - p0, -1), -math.inf)
        if top_k == 1:
            v, j = vals.max(dim=1, keepdim=True)
        else:
            vol = vals.reshape(p1 - p0, *box)
            peak = vol == _max_filter(vol, nms_half)  # masked (-inf) voxels stay -inf below
            cand = torch.where(peak, vol, vol.new_full((), -math.inf)).reshape(p1 - p0, -1)
            v, j = _pad_topk(*torch.topk(cand, min(top_k, nb), dim=1), top_k)
        best_v.append(v)
        best_j.append(j)
    v, j = torch.cat(best_v), torch.cat(best_j)
    pos = _GridIndex(tuple(box), sc.device).unravel(j) + start[:, None, :]
    return v, g.ravel(pos)


def _refine(sc: _Scorer, values: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
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


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def match_points(global_vectors, local_vectors, query: Embedding, *, mode: str = "sum",
                 search_radius_mm=None, refine: bool = True, top_k: int = 1,
                 min_distance_mm: Optional[float] = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, centers_world=None, prior_points=None,
                 prior_radius_mm: Optional[float] = None) -> MatchResult:
    """Find the K template points in ``query``: the peak of the similarity map per point.

    Parameters
    ----------
    global_vectors, local_vectors : (K, C) tensors or arrays
        Template vectors (:func:`template_vectors`, or :func:`combine_templates`). ``global_vectors``
        may be None for ``mode="local"`` without a window; ``local_vectors`` may be None for
        ``mode="global"``.
    query : Embedding
        The query image's embedding.
    mode : {"sum", "global", "local"}
        ``"sum"``: peak of ``(S^g + S^l) / 2`` on the local grid (SAM's rule); ``"global"``: peak of
        ``S^g`` on the global grid; ``"local"``: peak of ``S^l`` on the local grid.
    search_radius_mm : None, float or "auto"
        None: search the whole grid. A radius (mm): coarse-to-fine, search only local voxels within
        this distance of the ``S^g`` peak (modes "sum" and "local"; ignored for "global").
        ``"auto"``: :data:`AUTO_RADIUS_GLOBAL_VOXELS` voxels of the query's global grid.
    refine : bool
        Sub-voxel parabola refinement of every peak.
    top_k : int
        Number of distinct peaks to report per point (``hypotheses``). A peak is a voxel that is the
        maximum of the box of +-``min_distance_mm`` around it, so reported peaks are more than
        ``min_distance_mm`` apart along at least one axis.
    min_distance_mm : float, optional
        Separation of the ``top_k`` hypotheses; default the largest spacing of the global grid
        (at least one voxel of the searched grid is always used).
    chunk_size : int
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
    """
    query = _check_embedding(query, "query")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    top_k = _check_int(top_k, "top_k", 1)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
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
            gsc = _Scorer("global", g_chunk, None, query, chunk_size)
            if pc is not None:
                gval, gflat = _full_search(gsc, 1, np.ones(gmap.ndim, int), pc, float(prior_radius_mm))
            else:
                gval, gflat = _full_search(gsc, 1, np.ones(gmap.ndim, int))
            gidx = _refine(gsc, gval, gflat)[:, 0]
            gpts = gmap.geometry.array_index_to_world(gidx.cpu().numpy())
            centres = torch.as_tensor(lmap.geometry.world_to_array_index(gpts), dtype=torch.float32,
                                      device=lmap.data.device)
        sc = _Scorer(mode, g_chunk, l_chunk, query, chunk_size, sg=None if gsc is None else gsc.sg)
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
    hyp[~missing] = _clip_to_image(hyp[~missing], query.source_geometry)
    best_index = _GridIndex(search_geom.shape, flat.device).unravel(flat[:, 0]).cpu().numpy()
    return MatchResult(
        points=hyp[:, 0].copy(), scores=vals[:, 0].copy(), index=best_index.astype(np.int64),
        grid=search_geom, hypotheses=hyp, hypothesis_scores=vals,
        global_points=None if radius is None else np.concatenate(out_gpts, 0),
        search_radius_mm=radius)


# ============================================================================ cycle consistency


def cycle_consistency(template: Embedding, template_points, query: Embedding, *,
                      global_vectors=None, local_vectors=None, forward: Optional[MatchResult] = None,
                      **match_kwargs) -> CycleResult:
    """Forward-backward check of matches, a second confidence signal besides the score.

    Match the template points into ``query`` (or take the given ``forward`` result), read the query's
    vectors at the found points, match those back into ``template``, and measure how far (mm) each
    lands from its original template point. Correct matches come back close (within about a voxel
    of the local grid); matches of anatomy that is missing from the query usually do not.

    ``global_vectors`` / ``local_vectors`` default to the template's vectors at ``template_points``
    (pass combined vectors of several templates to check against one of them). ``match_kwargs``
    (mode, search_radius_mm, refine, chunk_size, ...) apply to both directions.
    """
    template = _check_embedding(template, "template")
    query = _check_embedding(query, "query")
    if template.ndim != query.ndim:
        raise ValueError(f"template is {template.ndim}D but query is {query.ndim}D")
    pts = check_points(template_points, template.ndim, name="template_points")
    if forward is None:
        if global_vectors is None or local_vectors is None:
            tg, tl = template_vectors(template, pts)
            global_vectors = tg if global_vectors is None else global_vectors
            local_vectors = tl if local_vectors is None else local_vectors
        forward = match_points(global_vectors, local_vectors, query, **match_kwargs)
    if len(forward.points) != len(pts):
        raise ValueError(f"forward has {len(forward.points)} points but template_points has {len(pts)}")
    kwargs = dict(match_kwargs)
    kwargs.pop("top_k", None)
    bg, bl = template_vectors(query, forward.points)
    backward = match_points(bg, bl, template, **kwargs)
    dist = np.linalg.norm(backward.points - pts, axis=1)
    return CycleResult(distances_mm=dist, forward=forward, backward=backward)
