"""Bounded-memory network passes: the engine behind ``SAMEmbedder.transform``.

* **Tiled network passes** (:func:`run_network`): a large volume is embedded tile by tile. Tile
  cores start and end on multiples of the network's global stride and every tile carries a halo of
  input at least as wide as the network's receptive reach (:func:`samlearn.nn.receptive_reach`),
  so with BatchNorm in eval mode each core's maps are exactly those of one pass over the whole
  volume (up to float rounding: convolution algorithms may sum in another order). Padding to a
  multiple of the global stride is done once, on the whole volume, with each image's own fill
  value (:func:`pad_batch`), so one-pass, tiled and batched passes all see the same input.
  ``SAMEmbedder(tile_shape=...)`` gives the cores in working-grid voxels (numpy order), rounded
  down to multiples of the global stride.
* **Memory model** (:func:`estimate_pass_bytes`, :func:`auto_tile_shape`): the bytes of the live
  activations of one pass, from the architecture; ``tile_shape="auto"`` tiles only when one pass
  would exceed the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._utils.docs import fill_doc
from ..nn.network import NetworkConfig, receptive_reach

__all__ = ["estimate_pass_bytes", "auto_tile_shape", "plan_tiles", "run_network", "Tile", "pad_batch",
           "halo", "check_tile_shape"]


# Overhead factor on the estimated activation bytes (allocator rounding, convolution workspaces).
_OVERHEAD = 1.25


def _padded(spatial, stride):
    return tuple(int(math.ceil(n / s)) * s for n, s in zip(spatial, stride))


@fill_doc
def estimate_pass_bytes(config: NetworkConfig, spatial: Sequence[int], batch: int = 1,
                        element_bytes: int = 4) -> int:
    """Estimated peak bytes of the activations of one no-grad pass of :class:`SAMNet`.

    The model follows the forward pass: the stem (input, pooled input, convolution and BatchNorm
    outputs), each residual block (its input, two convolution outputs, the shortcut, the sum, and
    every earlier stage output, which the FPN keeps), then the FPN and heads at the local level
    (every stage output, lateral, upsampled and summed maps, head output and its normalised copy).
    Times 1.25 for allocator rounding and convolution workspaces.

    Parameters
    ----------
    %(config)s
    spatial : sequence of int
        Input shape (numpy order), padded to a multiple of the global stride here.
    batch : int, default 1
        Inputs per pass.
    element_bytes : int, default 4
        Bytes per activation value (4: float32).

    Returns
    -------
    int
        Bytes, outputs included, weights excluded.
    """
    cfg = config
    S = _padded(spatial, cfg.global_stride)
    V = float(np.prod(S))

    def vox(jump):
        return V / float(np.prod(jump))

    ch = cfg.channels
    strides = cfg.level_strides()
    stem = float(np.prod(cfg.stem_stride))
    phases = [V + (V / stem if stem > 1 else 0.0) + 2.0 * ch[0] * V / stem]
    kept = 0.0
    prev = ch[0] * V / stem
    for i in range(cfg.n_stages):
        a = ch[i] * vox(strides[i])
        phases.append(kept + prev + 5.0 * a)
        kept += a
        prev = a
    nloc = vox(cfg.local_stride)
    phases.append(kept + 3.0 * cfg.fpn_channels * nloc + 2.0 * cfg.embed_dim * nloc
                  + cfg.embed_dim * vox(cfg.global_stride))
    return int(_OVERHEAD * max(phases) * batch * element_bytes)


@fill_doc
def halo(config: NetworkConfig) -> Tuple[int, ...]:
    """Input voxels of context each tile needs on every side.

    Parameters
    ----------
    %(config)s

    Returns
    -------
    tuple of int
        Per axis (numpy order): the larger receptive reach of the two maps, rounded up to a
        multiple of the global stride.
    """
    g, loc = receptive_reach(config)
    return tuple(int(math.ceil(max(a, b) / s)) * s for a, b, s in zip(g, loc, config.global_stride))


def check_tile_shape(tile_shape, ndim: int):
    """Validate the ``tile_shape`` parameter.

    Parameters
    ----------
    tile_shape : None, "auto" or sequence of int
        ``ndim`` positive integers (working-grid voxels, numpy order) when a sequence.
    ndim : int
        The model's dimensionality.

    Returns
    -------
    None, "auto" or tuple of int
        The value, a sequence as a tuple of ints.

    Raises
    ------
    ValueError
        For anything else.
    """
    if tile_shape is None or (isinstance(tile_shape, str) and tile_shape == "auto"):
        return tile_shape
    if isinstance(tile_shape, (list, tuple)) and len(tile_shape) == ndim and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 1 for t in tile_shape):
        return tuple(int(t) for t in tile_shape)
    raise ValueError(f"tile_shape must be None, 'auto' or {ndim} positive integers (working-grid "
                     f"voxels, numpy order), got {tile_shape!r}")


def _axis_tiles(n, g, hh, core):
    """Summed and largest input length of the tiles along one axis (cores of ``core`` global
    voxels, halo ``hh``, padded length ``n``)."""
    ng = n // g
    lengths = [min(n, min(ng, k0 + core) * g + hh) - max(0, k0 * g - hh) for k0 in range(0, ng, core)]
    return sum(lengths), max(lengths)


@fill_doc
def auto_tile_shape(config: NetworkConfig, spatial: Sequence[int], budget_bytes: float,
                    element_bytes: int = 4, max_overhead: float = 2.0) -> Optional[Tuple[int, ...]]:
    """The tile core for embedding a volume within a memory budget per pass.

    Every tiling (number of tiles per axis) is considered: among those whose largest tile fits the
    budget, the one with the least computation (halos are computed twice) wins. When none fits
    (the halo alone is too large), the tiling with the smallest tiles among those that at most
    ``max_overhead`` times the computation of one pass is used.

    Parameters
    ----------
    %(config)s
    spatial : sequence of int
        The volume's shape (numpy order, working-grid voxels).
    budget_bytes : float
        Bytes one pass may use (:func:`estimate_pass_bytes`).
    element_bytes : int, default 4
        Bytes per activation value.
    max_overhead : float, default 2.0
        Largest computation, relative to one pass, of a tiling that does not fit the budget.

    Returns
    -------
    tuple of int or None
        The core (numpy order, input voxels, multiples of the global stride), or None when one
        pass fits or tiling cannot help.
    """
    G = config.global_stride
    if estimate_pass_bytes(config, spatial, element_bytes=element_bytes) <= budget_bytes:
        return None
    h = halo(config)
    S = _padded(spatial, G)
    ng = [n // g for n, g in zip(S, G)]
    options = [sorted({int(math.ceil(m / k)) for k in range(1, m + 1)}, reverse=True) for m in ng]
    axes = [{c: _axis_tiles(n, g, hh, c) for c in opts} for n, g, hh, opts in zip(S, G, h, options)]
    volume = float(np.prod(S))
    best_fit = best_small = None
    for core in _product(options):
        tile = [ax[c][1] for ax, c in zip(axes, core)]
        cost = estimate_pass_bytes(config, tile, element_bytes=element_bytes)
        work = float(np.prod([ax[c][0] for ax, c in zip(axes, core)]))
        if cost <= budget_bytes and (best_fit is None or (work, -cost) < best_fit[:2]):
            best_fit = (work, -cost, core)
        if work <= max_overhead * volume and (best_small is None or (cost, work) < best_small[:2]):
            best_small = (cost, work, core)
    chosen = best_fit[2] if best_fit is not None else (best_small[2] if best_small is not None else None)
    if chosen is None or list(chosen) == ng:
        return None
    return tuple(c * g for c, g in zip(chosen, G))


@dataclass(frozen=True)
class Tile:
    """One tile of a tiled network pass.

    Parameters
    ----------
    input : tuple of slice
        The input slice of the padded volume (core and halo).
    global_out, local_out : tuple of slice
        Where the tile's core goes in the whole global / local map.
    global_src, local_src : tuple of slice
        Where that core lies in the tile's own global / local map.
    """

    input: Tuple[slice, ...]
    global_out: Tuple[slice, ...]
    global_src: Tuple[slice, ...]
    local_out: Tuple[slice, ...]
    local_src: Tuple[slice, ...]


@fill_doc
def plan_tiles(config: NetworkConfig, spatial: Sequence[int], core_shape: Sequence[int]) -> List[Tile]:
    """Tiles covering a volume, with the halo of :func:`halo`.

    Parameters
    ----------
    %(config)s
    spatial : sequence of int
        The volume's shape (numpy order; padded to a multiple of the global stride by the
        caller).
    core_shape : sequence of int
        Tile cores in input voxels (rounded down to a multiple of the global stride, at least one
        global voxel).

    Returns
    -------
    list of Tile
        The tiles, in C order of their position.
    """
    G, L = config.global_stride, config.local_stride
    h = halo(config)
    S = _padded(spatial, G)
    per_axis = []
    for n, g, l, hh, c in zip(S, G, L, h, core_shape):
        ng, cg = n // g, max(1, int(c) // g)
        nl = int(math.ceil(n / l))
        items = []
        for k0 in range(0, ng, cg):
            k1 = min(ng, k0 + cg)
            i0, i1 = max(0, k0 * g - hh), min(n, k1 * g + hh)
            lo0, lo1 = k0 * g // l, min(nl, k1 * g // l)
            items.append((slice(i0, i1), slice(k0, k1), slice(k0 - i0 // g, k1 - i0 // g),
                          slice(lo0, lo1), slice(lo0 - i0 // l, lo1 - i0 // l)))
        per_axis.append(items)
    tiles = []
    for combo in _product(per_axis):
        tiles.append(Tile(*(tuple(ax[j] for ax in combo) for j in range(5))))
    return tiles


def _product(lists):
    if not lists:
        yield ()
        return
    for head in lists[0]:
        for rest in _product(lists[1:]):
            yield (head,) + rest


def pad_batch(arrays: Sequence[np.ndarray], pad_values: Sequence[float], stride) -> np.ndarray:
    """Stack same-shape arrays into one padded batch.

    Each array is padded at the far end to a multiple of ``stride`` with its own fill value (what
    :meth:`SAMNet.forward` does for one image).

    Parameters
    ----------
    arrays : sequence of ndarray
        Same-shape arrays (numpy order).
    pad_values : sequence of float
        One fill value per array.
    stride : sequence of int
        The network's global stride (numpy order).

    Returns
    -------
    ndarray of float32, shape ``(B, 1, *S')``
        The batch, ``S'`` the padded shape.
    """
    shape = arrays[0].shape
    S = _padded(shape, stride)
    out = np.empty((len(arrays), 1) + S, dtype=np.float32)
    for b, (a, v) in enumerate(zip(arrays, pad_values)):
        out[b, 0] = v
        out[(b, 0) + tuple(slice(0, n) for n in shape)] = a
    return out


def run_network(net, x: torch.Tensor, spatial: Sequence[int], *, amp_dtype=None,
                tile_core: Optional[Sequence[int]] = None, channels_last: bool = False):
    """Global and local maps of a padded batch, by one pass or by tiles.

    Parameters
    ----------
    net : SAMNet
        The network, in eval mode.
    x : torch.Tensor, shape ``(B, 1, *S')``
        The padded batch (:func:`pad_batch`), on the network's device.
    spatial : sequence of int
        The unpadded shape (numpy order).
    amp_dtype : torch.dtype or None, default None
        Autocast precision (None: float32).
    tile_core : sequence of int, optional
        Tile the pass with these cores (:func:`plan_tiles`); the maps are the same as one pass up
        to float rounding. None: one pass.
    channels_last : bool, default False
        Feed the input in the channels-last memory format.

    Returns
    -------
    global_map, local_map : torch.Tensor
        float32 maps (B, C, ...) on ``x``'s device, cropped to those of the unpadded shape:
        ``ceil(spatial / stride)``.
    """
    cfg = net.config
    device = x.device
    ndim = cfg.ndim
    mf = (torch.channels_last_3d if ndim == 3 else torch.channels_last) if channels_last else None

    def forward(inp):
        if mf is not None:
            inp = inp.contiguous(memory_format=mf)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            g, loc = net(inp)
        return g.float(), loc.float()

    gs = tuple(int(math.ceil(n / s)) for n, s in zip(spatial, cfg.global_stride))
    ls = tuple(int(math.ceil(n / s)) for n, s in zip(spatial, cfg.local_stride))
    crop_g = (slice(None), slice(None)) + tuple(slice(0, n) for n in gs)
    crop_l = (slice(None), slice(None)) + tuple(slice(0, n) for n in ls)
    with torch.no_grad():  # not inference_mode: callers may modify the maps in place
        if tile_core is None:
            g, loc = forward(x)
            return g[crop_g], loc[crop_l]
        S = tuple(x.shape[2:])
        B = x.shape[0]
        ng = tuple(n // s for n, s in zip(S, cfg.global_stride))
        nl = tuple(int(math.ceil(n / s)) for n, s in zip(S, cfg.local_stride))
        g_out = torch.empty((B, cfg.embed_dim) + ng, dtype=torch.float32, device=device)
        l_out = torch.empty((B, cfg.embed_dim) + nl, dtype=torch.float32, device=device)
        lead = (slice(None), slice(None))
        for t in plan_tiles(cfg, S, tile_core):
            g, loc = forward(x[lead + t.input])
            g_out[lead + t.global_out] = g[lead + t.global_src]
            l_out[lead + t.local_out] = loc[lead + t.local_src]
            del g, loc
        return g_out[crop_g], l_out[crop_l]
