"""Values of the searched similarity map for a chunk of template points: by slabs of grid rows,
on each point's own box of voxels (coarse-to-fine windows), or at given voxels, with memory
bounded by ``chunk_size`` floats. See :mod:`samlearn.matching.search` for the rule."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..embedding import Embedding, EmbeddingMap
from .grids import GridIndex, index_affine, interp, lerp_axis, outside_fov, taps

__all__ = ["Scorer"]


#: boxes of at most this many voxels are read by one vectorised gather instead of a loop over points
_GATHER_MAX_BOX = 512


# Many overlapping boxes (e.g. a grid of points searched near an affine prior) are scored on the
# CPU tile by tile: the points whose box corners fall in one tile (_TILE_FACTOR boxes wide) get one
# matrix product over the union of their boxes. That computes more voxels than the boxes hold (up
# to _TILED_MAX_WORK times), but a GEMM costs a small fraction of copying a voxel's feature vector,
# the price of the gather (benchmarks/speed/matching_speed.py measures both; narrower and wider
# tiles were slower).
_TILED_MIN_POINTS = 32
_TILED_MIN_POINTS_PER_TILE = 2
_TILED_MAX_WORK = 80.0
_TILE_FACTOR = 3.0


class Scorer:
    """Values of the searched map for a chunk of k points: by slabs of rows, or at given voxels.

    Voxels of the working grid that do not overlap the query image score -inf (never a match).

    Parameters
    ----------
    mode : {"sum", "global", "local"}
        The searched map: ``(S^g + S^l) / 2`` on the local grid, ``S^g`` on the global grid, or
        ``S^l`` on the local grid.
    gv, lv : torch.Tensor of shape (k, C) or None
        The points' global and local template vectors (float32, on the maps' devices); ``gv`` may
        be None for mode "local", ``lv`` for mode "global".
    query : Embedding
        The query image's embedding.
    chunk_size : int
        Upper bound on the floats of an intermediate.
    sg : torch.Tensor of shape ``(k, *global_shape)``, optional
        The coarse similarity map ``S^g`` when already computed (by the coarse stage).

    Attributes
    ----------
    geometry : ImageGeometry
        The searched grid.
    grid : GridIndex
        Its indices.
    k : int
        Number of points.
    sg : torch.Tensor of shape ``(k, *global_shape)`` or None
        ``S^g`` (modes "sum" and "global").
    """

    def __init__(self, mode, gv, lv, query: Embedding, chunk_size: int, sg=None):
        self.mode = mode
        self.chunk_size = chunk_size
        gmap: EmbeddingMap = query.global_map
        lmap: EmbeddingMap = query.local_map
        self.geometry = gmap.geometry if mode == "global" else lmap.geometry
        self.device = (gmap if mode == "global" else lmap).data.device
        self.grid = GridIndex(self.geometry.shape, self.device)
        # voxels that do not overlap the query image (padding of the working grid): never a match
        self.outside = outside_fov(self.geometry, query.source_geometry, self.device)
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
            m, t = index_affine(gmap.geometry, lmap.geometry)
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
                    p = lerp_axis(p, ax + 1, *taps(lshape[ax], m[ax, ax], t[ax], p.shape[ax + 1],
                                                     self.device))
                self.sg_planes = p
                self.row_taps = taps(lshape[0], m[0, 0], t[0], p.shape[1], self.device)

    # --- whole slabs: shared positions for the k points
    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Values on the slab of rows ``r0:r1`` (along axis 0) of the searched grid.

        Parameters
        ----------
        r0, r1 : int
            First and one-past-last row.

        Returns
        -------
        torch.Tensor of shape (k, (r1 - r0) * row_size), float32
            The k points' values, in flat order.
        """
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
            sg = lerp_axis(self.sg_planes, 1, i0, i1, w).reshape(self.k, -1)
        else:
            pos = self.grid.rows(r0, r1) @ self.m + self.t
            sg = interp(self.sg.unsqueeze(0), pos.unsqueeze(0))[0]
        return (sg + sl) * 0.5

    # --- per-point boxes (coarse-to-fine windows)
    def box(self, start: torch.Tensor, box: Sequence[int], p0: int = 0) -> torch.Tensor:
        """Values on each point's own box of voxels (coarse-to-fine windows).

        The local similarities are one matrix-vector product per point over a slice of the map:
        on a channel-first map this reads contiguous runs and is faster on the CPU than
        one vectorised gather of all the windows' voxels (which reads every channel plane
        voxel by voxel); the loop is over points only, each iteration a large vectorised product,
        so the interpreter overhead stays negligible next to the arithmetic.

        Parameters
        ----------
        start : torch.Tensor of shape (k, ndim), int64
            Array indices of the boxes' first corners (boxes lie inside the grid).
        box : sequence of int
            The box shape (numpy order), the same for every point.
        p0 : int, default 0
            The boxes belong to points ``p0:p0 + k`` of the chunk.

        Returns
        -------
        torch.Tensor of shape (k, prod(box)), float32
            Values in the box's flat order.
        """
        k = start.shape[0]
        nb = int(np.prod(box))
        off = GridIndex(tuple(box), self.device).rows(0, box[0])
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
            sg = interp(self.sg[p0:p0 + k].unsqueeze(1), pos)[:, 0]
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
        """Values of each point's map at given voxels.

        Parameters
        ----------
        flat : torch.Tensor of shape (k, n), int64
            Flat voxel indices of the searched grid, per point.
        p0 : int, default 0
            The rows of ``flat`` belong to points ``p0:p0 + k`` of the chunk.

        Returns
        -------
        torch.Tensor of shape (k, n), float32
            The values.
        """
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
        sg = interp(self.sg[p0:p0 + k].unsqueeze(1), pos)[:, 0]
        return (sg + sl) * 0.5
