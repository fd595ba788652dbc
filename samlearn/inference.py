"""Bounded-memory and cached inference for :class:`~samlearn.embedder.SAMEmbedder`.

* **Tiled network passes** (:func:`run_network`): a large volume is embedded tile by tile. Tile
  cores start and end on multiples of the network's global stride and every tile carries a halo of
  input at least as wide as the network's receptive reach (:func:`samlearn.nn.network.receptive_reach`),
  so with BatchNorm in eval mode each core's maps are exactly those of one pass over the whole
  volume (up to float rounding: convolution algorithms may sum in another order). Padding to a
  multiple of the global stride is done once, on the whole volume, with each image's own fill
  value, so one-pass, tiled and batched passes all see the same input.
* **Memory model** (:func:`estimate_pass_bytes`, :func:`auto_tile_shape`): the bytes of the live
  activations of one pass, from the architecture; ``tile_shape="auto"`` tiles only when one pass
  would exceed the budget.
* **Embedding cache** (:class:`EmbeddingCache`): embeddings stored on disk in float16, keyed by
  the image's content and geometry and by a fingerprint of the model (weights, architecture,
  preprocessing, precision); read back as float32, with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .image import Image, ImageGeometry, image_items, read_item
from .nn.network import NetworkConfig, receptive_reach

__all__ = ["estimate_pass_bytes", "auto_tile_shape", "plan_tiles", "run_network", "Tile", "pad_batch",
           "EmbeddingCache", "model_fingerprint", "image_key", "check_tile_shape", "halo",
           "image_items", "load_item", "progress_bar", "thread_map", "limit_threads", "effective_n_jobs", "cache_folder",
           "fuse_conv_bn", "check_channels_last", "pointwise_as_matmul", "fold_small_conv3d",
           "resample_canonical"]


# ============================================================================ inputs


def load_item(item, ndim: Optional[int], name: str, index: int, why: Optional[str] = None) -> Image:
    """Read one item of :func:`image_items` into an :class:`Image`; ``ndim`` (when given) is the
    dimensionality it must have, ``why`` the reason, for the error message."""
    im = read_item(item, f"{name}[{index}]")
    if ndim is not None and im.ndim != ndim:
        why = why or f"{name} mixes 2D and 3D images ({name}[0] is {ndim}D)"
        raise ValueError(f"{why}; got {im.ndim}D images ({name}[{index}] is {im.ndim}D)")
    return im


def effective_n_jobs(n_jobs) -> int:
    """``n_jobs`` as joblib reads it (None -> 1, -1 -> all cores), validated."""
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"n_jobs must be None or a non-zero integer (-1: all cores), got {n_jobs!r}")
    import joblib
    return int(joblib.effective_n_jobs(int(n_jobs)))


_THREADPOOLS = None


def _threadpool_controller():
    """threadpoolctl's view of the loaded BLAS libraries (numpy's and scipy's OpenBLAS / MKL), made
    once: building one scans the process (about 4 ms), limiting through it costs about 0.04 ms."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        try:
            from threadpoolctl import ThreadpoolController  # a scikit-learn dependency
            _THREADPOOLS = ThreadpoolController()
        except ImportError:  # pragma: no cover
            _THREADPOOLS = False
    return _THREADPOOLS or None


@contextlib.contextmanager
def limit_threads(n: Optional[int]):
    """During the block, torch's CPU threads and the BLAS threads of numpy / scipy are ``n``
    (None: left alone); torch's count is restored afterwards. Per-image work (embedding one image,
    matching, RANSAC, small GEMMs) measured faster on one thread than on two competing pools of
    two (benchmarks/RESULTS.md), so a thread setting applies to all of it, not to the network only."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    ctl = _threadpool_controller()
    try:
        with (ctl.limit(limits=int(n), user_api="blas") if ctl is not None else contextlib.nullcontext()):
            yield
    finally:
        torch.set_num_threads(old)


def thread_map(fn, n: int, n_jobs: int, *, torch_threads: Optional[int] = None):
    """``fn(0), ..., fn(n - 1)`` in order, computed ahead by ``n_jobs`` threads (at most
    ``2 * n_jobs`` results waiting, so memory stays bounded); serial when ``n_jobs <= 0`` or
    ``n == 1``. torch and numpy release the GIL in their kernels, so images embedded and matched
    in threads run in parallel without copying a model or an image into other processes.

    ``torch_threads``: each task runs with that many torch (and BLAS) threads, the process's
    torch thread count restored afterwards; None leaves the thread settings alone (for light work
    such as reading images)."""
    if n_jobs <= 0 or n == 1:
        for i in range(n):
            yield fn(i)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    task = fn
    if torch_threads is not None:
        def task(i):
            torch.set_num_threads(int(torch_threads))  # per thread: its OpenMP team size
            return fn(i)
    with limit_threads(torch_threads), ThreadPoolExecutor(max_workers=n_jobs) as pool:
        pending = deque()
        nxt = 0
        try:
            while nxt < n or pending:
                while nxt < n and len(pending) < 2 * n_jobs:
                    pending.append(pool.submit(task, nxt))
                    nxt += 1
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def progress_bar(verbose, total: int, desc: str, unit: str = "image"):
    """A tqdm progress bar when ``verbose`` (None otherwise)."""
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def cache_folder(memory):
    """The folder of a ``memory`` parameter: None (no cache), a path, or an object with a
    ``location`` (``joblib.Memory``)."""
    if memory is None:
        return None
    if isinstance(memory, (str, os.PathLike)):
        return Path(memory)
    loc = getattr(memory, "location", _MISSING)
    if loc is not _MISSING:
        return None if loc is None else Path(loc)
    raise TypeError(f"memory must be None, a folder path or a joblib.Memory, got {type(memory).__name__}")


_MISSING = object()

# Overhead factor on the estimated activation bytes (allocator rounding, convolution workspaces).
_OVERHEAD = 1.25


def _padded(spatial, stride):
    return tuple(int(math.ceil(n / s)) * s for n, s in zip(spatial, stride))


def estimate_pass_bytes(config: NetworkConfig, spatial: Sequence[int], batch: int = 1,
                        element_bytes: int = 4) -> int:
    """Estimated peak bytes of the activations of one no-grad pass of :class:`SAMNet` over ``batch``
    inputs of shape ``spatial`` (numpy order), outputs included; weights excluded.

    The model follows the forward pass: the stem (input, pooled input, convolution and BatchNorm
    outputs), each residual block (its input, two convolution outputs, the shortcut, the sum, and
    every earlier stage output, which the FPN keeps), then the FPN and heads at the local level
    (every stage output, lateral, upsampled and summed maps, head output and its normalised copy).
    Times 1.25 for allocator rounding and convolution workspaces."""
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


def halo(config: NetworkConfig) -> Tuple[int, ...]:
    """Input voxels of context each tile needs on every side (numpy order): the larger receptive
    reach of the two maps, rounded up to a multiple of the global stride."""
    g, loc = receptive_reach(config)
    return tuple(int(math.ceil(max(a, b) / s)) * s for a, b, s in zip(g, loc, config.global_stride))


def check_tile_shape(tile_shape, ndim: int):
    """Validate the ``tile_shape`` parameter: None, "auto" or ``ndim`` positive integers."""
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


def auto_tile_shape(config: NetworkConfig, spatial: Sequence[int], budget_bytes: float,
                    element_bytes: int = 4, max_overhead: float = 2.0) -> Optional[Tuple[int, ...]]:
    """The tile core (numpy order, input voxels, multiples of the global stride) for embedding
    ``spatial`` within ``budget_bytes`` per pass, or None when one pass fits.

    Every tiling (number of tiles per axis) is considered: among those whose largest tile fits the
    budget, the one with the least computation (halos are computed twice) wins. When none fits
    (the halo alone is too large), the tiling with the smallest tiles among those that at most
    ``max_overhead`` times the computation of one pass is used (None if tiling cannot help)."""
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
    """One tile: the input slice (of the padded volume) and, per map, where its core goes in the
    whole map (``*_out``) and where that core lies in the tile's own map (``*_src``)."""

    input: Tuple[slice, ...]
    global_out: Tuple[slice, ...]
    global_src: Tuple[slice, ...]
    local_out: Tuple[slice, ...]
    local_src: Tuple[slice, ...]


def plan_tiles(config: NetworkConfig, spatial: Sequence[int], core_shape: Sequence[int]) -> List[Tile]:
    """Tiles covering a volume of shape ``spatial`` (numpy order; padded to a multiple of the global
    stride by the caller) with cores of ``core_shape`` input voxels (rounded down to a multiple of
    the global stride, at least one global voxel) and the halo of :func:`halo`."""
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
    """Stack same-shape arrays into (B, 1, *S'), each padded at the far end to a multiple of
    ``stride`` with its own fill value (what :meth:`SAMNet.forward` does for one image)."""
    shape = arrays[0].shape
    S = _padded(shape, stride)
    out = np.empty((len(arrays), 1) + S, dtype=np.float32)
    for b, (a, v) in enumerate(zip(arrays, pad_values)):
        out[b, 0] = v
        out[(b, 0) + tuple(slice(0, n) for n in shape)] = a
    return out


def run_network(net, x: torch.Tensor, spatial: Sequence[int], *, amp_dtype=None,
                tile_core: Optional[Sequence[int]] = None, channels_last: bool = False):
    """Global and local maps (float32, on ``x``'s device) of a padded batch ``x`` (B, 1, *S'),
    cropped to the maps of the unpadded ``spatial`` shape: ``ceil(spatial / stride)``.

    With ``tile_core`` the pass is tiled (see :func:`plan_tiles`); the maps are the same as one
    pass up to float rounding. ``net`` must be in eval mode."""
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


def _axis_map(source: ImageGeometry, target: ImageGeometry):
    """For an identity-direction ``target`` and a ``source`` whose direction is a signed
    permutation: per source array axis, the target array axis it runs along and the affine map
    ``c = a * i + b`` from that target index to the source's continuous index. None otherwise."""
    D = np.asarray(source.direction)
    if not np.allclose(np.asarray(target.direction), np.eye(target.ndim), atol=1e-9):
        return None
    R = np.round(D)
    if not np.allclose(D, R, atol=1e-9) or not np.allclose(np.abs(R).sum(0), 1) or not np.allclose(np.abs(R).sum(1), 1):
        return None
    n = source.ndim
    out = []
    # source index axis p (x, y[, z] order) points along world axis w with sign sgn: c_p =
    # sgn * (x_w - o_w) / sp_p with x_w = o_t[w] + i * sp_t[w] (target index axis w)
    for p in range(n):
        w = int(np.argmax(np.abs(R[:, p])))
        sgn = float(R[w, p])
        a = sgn * target.spacing[w] / source.spacing[p]
        b = sgn * (target.origin[w] - source.origin[w]) / source.spacing[p]
        out.append((w, a, b))
    # numpy order: source array axis k <-> index axis n-1-k; target array axis likewise
    return [(n - 1 - out[n - 1 - k][0], out[n - 1 - k][1], out[n - 1 - k][2]) for k in range(n)]


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's kernel (same radius, same normalisation)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _axis_sampling(n_in: int, n_out: int, a: float, b: float, sigma: float):
    """Along one axis: output voxel i samples source index ``c = a * i + b``. Returns the inside
    mask (ITK's ``[-0.5, n - 0.5)``), ``floor(c)``, the linear weight ``c - floor(c)`` and the
    anti-aliasing Gaussian kernel (one tap when ``sigma`` is 0)."""
    c = a * np.arange(n_out, dtype=np.float64) + b
    inside = (c >= -0.5) & (c < n_in - 0.5)
    base = np.floor(c)
    g = _gaussian_kernel(sigma) if sigma > 0 else np.ones(1)
    return inside, base.astype(np.int64), c - base, g


def _axis_taps(n_in: int, n_out: int, a: float, b: float, sigma: float):
    """Per output voxel along one axis, ``K`` source indices and weights (``(n_out, K)`` each):
    the Gaussian pre-filter (edge-extended, as scipy ``mode="nearest"``) followed by linear
    interpolation at source index ``a * i + b`` with neighbours clamped to the edge (as ITK's linear
    interpolator); and the mask of outputs inside the source, ``[-0.5, n - 0.5)`` (ITK's test)."""
    inside, base, d, g = _axis_sampling(n_in, n_out, a, b, sigma)
    r = len(g) // 2
    K = len(g) + 1
    idx = np.clip(base[:, None] - r + np.arange(K)[None, :], 0, n_in - 1)
    w = np.zeros((n_out, K), dtype=np.float64)
    for shift, wj in ((0, 1.0 - d), (1, d)):
        # neighbour j = clamp(base + shift); its Gaussian taps j + k - r, clamped (edge extension)
        j = np.clip(base + shift, 0, n_in - 1)
        for k, gk in enumerate(g):
            src = np.clip(j + k - r, 0, n_in - 1)
            col = src - idx[:, 0]
            ok = (col >= 0) & (col < K) & (idx[np.arange(n_out), np.clip(col, 0, K - 1)] == src)
            # clamped windows: find the column holding index src (always present: the window is
            # the clamped range base - r .. base + r + 1)
            if not ok.all():
                col = np.argmax(idx == src[:, None], axis=1)
            w[np.arange(n_out), col] += wj * gk
    return idx, w, inside


@functools.lru_cache(maxsize=32)
def _axis_matrix(n_in: int, n_out: int, a: float, b: float, sigma: float):
    """:func:`_axis_taps` as a sparse (n_out, n_in) float32 CSR matrix (taps that hit the same
    clamped source index summed) and the inside mask; cached, as a batch of same-sized images
    (X-rays from one device, a series of CT volumes) needs the same matrices again."""
    import scipy.sparse
    inside, base, d, g = _axis_sampling(n_in, n_out, a, b, sigma)
    r = len(g) // 2
    # neighbour j = clamp(base + shift) with weight (1 - d, d); its Gaussian taps clamp(j + k - r)
    j = np.clip(base[:, None] + np.arange(2)[None, :], 0, n_in - 1)                  # (n_out, 2)
    cols = np.clip(j[:, :, None] + np.arange(len(g))[None, None, :] - r, 0, n_in - 1)  # (n_out, 2, G)
    vals = np.stack([1.0 - d, d], 1)[:, :, None] * g[None, None, :]
    rows = np.broadcast_to(np.arange(n_out)[:, None, None], cols.shape)
    m = scipy.sparse.csr_matrix((vals.ravel(), (rows.ravel(), cols.ravel())), shape=(n_out, n_in))
    m.sum_duplicates()
    m = m.astype(np.float32)
    inside.setflags(write=False)
    return m, inside


def _resample_axes_sparse(arr: np.ndarray, maps, sigma, out_shape, order):
    """The CPU path of :func:`resample_canonical`: per source axis, one sparse-dense product
    (about ``2 * taps`` multiply-adds per output value, no full-resolution filtered copy)."""
    x = np.asarray(arr, dtype=np.float32)
    masks = [None] * len(maps)
    for k in order:
        t_k, a, b = maps[k]
        m, inside = _axis_matrix(int(x.shape[k]), int(out_shape[t_k]), float(a), float(b), float(sigma[k]))
        xk = np.moveaxis(x, k, 0)
        y = m @ np.ascontiguousarray(xk).reshape(xk.shape[0], -1)
        x = np.moveaxis(y.reshape((m.shape[0],) + xk.shape[1:]), 0, k)
        masks[t_k] = inside
    return x, masks


def _resample_axes_torch(arr: np.ndarray, maps, sigma, out_shape, order, dev):
    """The torch path of :func:`resample_canonical` (CUDA): per source axis, each tap a slab
    gather and a scaled accumulate on ``dev``."""
    n = arr.ndim
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(dev)
    masks = [None] * n
    for k in order:
        t_k, a, b = maps[k]
        sig = float(sigma[k]) if sigma[k] > 1e-15 else 0.0
        if sig == 0.0 and abs(a - 1.0) < 1e-9 and abs(b) < 1e-6 and out_shape[t_k] == arr.shape[k]:
            masks[t_k] = np.ones(out_shape[t_k], dtype=bool)   # the same grid along this axis
            continue
        idx, w, inside = _axis_taps(arr.shape[k], out_shape[t_k], a, b, sig)
        idx_t = torch.from_numpy(idx).to(dev)
        w_t = torch.from_numpy(w.astype(np.float32)).to(dev)
        # the axis first (contiguous slabs): each tap is a slab gather and a scaled accumulate
        xk = torch.movedim(x, k, 0).contiguous()
        wshape = [-1] + [1] * (n - 1)
        acc = torch.zeros((idx.shape[0],) + tuple(xk.shape[1:]), dtype=xk.dtype, device=dev)
        for m in range(idx.shape[1]):
            acc.addcmul_(xk.index_select(0, idx_t[:, m]), w_t[:, m].reshape(wshape))
        x = torch.movedim(acc, 0, k)
        masks[t_k] = inside
    return x, masks


def _sparse_on(device: torch.device) -> bool:
    """Whether :func:`resample_canonical` takes the scipy.sparse path (CPU) rather than torch."""
    return device.type == "cpu"


def resample_canonical(image, target: ImageGeometry, device=None, default_value=None):
    """``image.resample_to_geometry(target, interpolator="linear")`` (anti-aliasing Gaussian
    included) for the common case of a canonical target and a source whose direction is a signed
    permutation (axes aligned with the world: identity or flipped / permuted axes): one small
    matrix product per axis instead of a full-resolution Gaussian filter and a point-by-point
    resampling: on the CPU a scipy.sparse product (the embedders' CPU preprocessing: 1.5-2x faster
    than the SimpleITK path for an X-ray, benchmarks/RESULTS.md), elsewhere torch on ``device``.
    Returns None when the geometry is not of that kind.

    Agrees with the SimpleITK path to float32 rounding (tests/test_inference.py)."""
    src = image.geometry
    maps = _axis_map(src, target)
    if maps is None:
        return None
    from .image import Image as _Image
    n = src.ndim
    # anti-aliasing sigmas per source index axis, exactly as Image._antialiased computes them
    proj = np.abs(src.direction.T @ target.direction)
    tgt_sp = proj @ target.spacing / np.maximum(proj.sum(1), 1e-12)
    factor = tgt_sp / src.spacing
    sigma = np.where(factor > 1.0, np.sqrt(np.maximum(factor ** 2 - 1.0, 0.0)) / 2.0, 0.0)
    if not np.any(sigma > 0.2):
        sigma = np.zeros_like(sigma)
    sigma = sigma[::-1]                                          # numpy axis order
    arr = image.array
    if default_value is None:
        default_value = float(arr.min())
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out_shape = target.shape                                     # numpy order
    # source array axis k runs along target array axis t_k; apply the axes' matrices one by one,
    # then move the axes into the target's order
    # the axis that shrinks most first: later passes have less to read
    order = sorted(range(n), key=lambda k: out_shape[maps[k][0]] / arr.shape[k])
    if _sparse_on(dev):
        x, masks = _resample_axes_sparse(arr, maps, sigma, out_shape, order)
        x = torch.from_numpy(np.ascontiguousarray(x))
    else:
        x, masks = _resample_axes_torch(arr, maps, sigma, out_shape, order, dev)
    perm = [0] * n
    for k in range(n):
        perm[maps[k][0]] = k
    x = x.permute(perm)
    outside = np.zeros(out_shape, dtype=bool)
    for t in range(n):
        shape = [1] * n
        shape[t] = out_shape[t]
        outside |= ~masks[t].reshape(shape)
    if outside.any():
        x = torch.where(torch.from_numpy(outside).to(dev), torch.tensor(float(default_value), device=dev), x)
    return _Image(np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32), target, image.source)


def fuse_conv_bn(net):
    """A copy of ``net`` for inference with every BatchNorm folded into the convolution before it
    (eval-mode BatchNorm is an affine map per channel): the same maps up to float rounding, one
    pass over memory less per convolution."""
    import copy

    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .nn.network import BasicBlock

    conv_types = (nn.Conv2d, nn.Conv3d)
    bn_types = (nn.BatchNorm2d, nn.BatchNorm3d)
    out = copy.deepcopy(net).eval()
    for m in list(out.modules()):
        if isinstance(m, BasicBlock):
            m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()
            m.conv2, m.bn2 = fuse_conv_bn_eval(m.conv2, m.bn2), nn.Identity()
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], conv_types) and isinstance(m[i + 1], bn_types):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
    return out


class _PointwiseLinear(torch.nn.Module):
    """A 1x1(x1) convolution as one matrix product over the channel axis of a channels-last tensor
    (on the CPU several times faster than the convolution kernels for this shape)."""

    def __init__(self, conv):
        super().__init__()
        self.weight = torch.nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(),
                                                                      requires_grad=False)

    def forward(self, x):
        nd = x.dim()
        perm = (0,) + tuple(range(2, nd)) + (1,)
        inv = (0, nd - 1) + tuple(range(1, nd - 1))
        return F.linear(x.permute(perm), self.weight, self.bias).permute(inv)


class _DepthFoldedConv3d(torch.nn.Module):
    """A stride-1 3D convolution with few input channels computed as a 2D convolution over the
    slices, the kernel's z taps folded into the input channels (``C * kz``), in channels-last
    layout: the result has exactly the ``channels_last_3d`` layout. On the CPU a 2D convolution
    with 3 input channels is far better optimised than a 3D one with 1 (2.3x measured)."""

    def __init__(self, conv):
        super().__init__()
        O, C, kz, kh, kw = conv.weight.shape
        w = conv.weight.detach().permute(0, 2, 1, 3, 4).reshape(O, kz * C, kh, kw)
        self.weight = torch.nn.Parameter(w.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(),
                                                                      requires_grad=False)
        self.kz, self.pad_z, self.padding_hw = kz, conv.padding[0], tuple(conv.padding[1:])

    def forward(self, x):
        N, C, D, H, W = x.shape
        xp = F.pad(x, (0, 0, 0, 0, self.pad_z, self.pad_z))
        Dout = xp.shape[2] - self.kz + 1
        taps = torch.stack([xp[:, :, k:k + Dout] for k in range(self.kz)], 2)    # (N, C, kz, D, H, W)
        taps = taps.permute(0, 3, 2, 1, 4, 5).reshape(N * Dout, self.kz * C, H, W)
        y = F.conv2d(taps.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                     padding=self.padding_hw)                                      # (N*D, O, H', W')
        O = y.shape[1]
        return y.reshape(N, Dout, O, *y.shape[2:]).permute(0, 2, 1, 3, 4)


def fold_small_conv3d(net, max_folded_channels: int = 8):
    """Replace (in place) every stride-1, ungrouped, undilated 3D convolution whose input channels
    times kernel depth is at most ``max_folded_channels`` (the stem) by :class:`_DepthFoldedConv3d`."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Conv3d) and child.groups == 1 \
                    and all(s == 1 for s in child.stride) and all(d == 1 for d in child.dilation) \
                    and isinstance(child.padding, tuple) and child.padding_mode == "zeros" \
                    and child.in_channels * child.kernel_size[0] <= max_folded_channels \
                    and child.kernel_size[0] > 1:
                setattr(parent, name, _DepthFoldedConv3d(child))
    return net


def pointwise_as_matmul(net):
    """Replace (in place) every 1x1(x1), stride-1, ungrouped convolution by :class:`_PointwiseLinear`
    (for channels-last inference copies)."""
    conv_types = (torch.nn.Conv2d, torch.nn.Conv3d)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, conv_types) and all(k == 1 for k in child.kernel_size) \
                    and all(s == 1 for s in child.stride) and child.groups == 1:
                setattr(parent, name, _PointwiseLinear(child))
    return net


def check_channels_last(value):
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, str) and value == "auto"):
        return value
    raise ValueError(f"channels_last must be 'auto', True or False, got {value!r}")


# ============================================================================ caching


def _update_array(h, arr):
    a = np.ascontiguousarray(arr)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(memoryview(a).cast("B"))


def image_key(image) -> str:
    """Hex digest of an image's voxel values (dtype and shape included) and its geometry."""
    h = hashlib.blake2b(digest_size=20)
    _update_array(h, image.array)
    g = image.geometry
    for v in (np.asarray(g.size, np.int64), np.asarray(g.spacing, np.float64),
              np.asarray(g.origin, np.float64), np.asarray(g.direction, np.float64)):
        _update_array(h, v)
    return h.hexdigest()


def model_fingerprint(net, config: dict, amp_dtype=None) -> str:
    """Hex digest of what determines an embedding besides the image: every weight and buffer of
    ``net`` (a state dict, by name), the resolved configuration (architecture and preprocessing)
    and the inference precision."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(amp_dtype).encode())
    for name, t in net.state_dict().items():
        h.update(name.encode())
        _update_array(h, t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      if t.numel() else np.zeros(0, np.uint8))
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings on disk under ``folder/<model fingerprint>/<image key>.pt``: maps in float16
    (half the memory of float32; unit vectors lose about 5e-4 per component), geometry as JSON.
    Files are written atomically and read with ``torch.load(weights_only=True)``; an unreadable
    file is treated as missing (and rewritten)."""

    FORMAT = 1

    def __init__(self, folder, fingerprint: str):
        self.folder = Path(folder) / fingerprint[:32]
        self.fingerprint = fingerprint

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str, device):
        from .maps import Embedding, EmbeddingMap
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("format") != self.FORMAT or blob.get("fingerprint") != self.fingerprint:
                return None
            geo = json.loads(blob["geometry"])
            g = blob["global"].to(device=device, dtype=torch.float32)
            loc = blob["local"].to(device=device, dtype=torch.float32)
            geom = {k: ImageGeometry.from_dict(v) for k, v in geo.items()}
            return Embedding(EmbeddingMap(g, geom["global"]), EmbeddingMap(loc, geom["local"]),
                             geom["image"], geom["source"])
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            warnings.warn(f"ignoring unreadable embedding cache file '{path}' "
                          f"({type(exc).__name__}: {str(exc)[:120]}); recomputing it", UserWarning, stacklevel=3)
            return None

    def save(self, key: str, embedding) -> Path:
        path = self._path(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        geo = {"global": embedding.global_map.geometry.to_dict(), "local": embedding.local_map.geometry.to_dict(),
               "image": embedding.image_geometry.to_dict(), "source": embedding.source_geometry.to_dict()}
        blob = {"format": self.FORMAT, "fingerprint": self.fingerprint, "geometry": json.dumps(geo),
                "global": embedding.global_map.data.detach().to("cpu", torch.float16).contiguous(),
                "local": embedding.local_map.data.detach().to("cpu", torch.float16).contiguous()}
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=str(self.folder))
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(blob, fh)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path
