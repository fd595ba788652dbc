"""The image as the network sees it: the canonical working grid and intensity normalisation.

Every image is resampled onto an identity-direction grid covering its world bounding box (so images
stored with mirrored or permuted axes look alike to the network), at ``spacing_mm`` (3D) or with
``image_size`` voxels (2D), then normalised with the ``intensity`` preset
(:func:`samlearn.image.normalize_intensity`). World coordinates are untouched: results stay in the
input image's world mm.

:func:`resample_canonical` is a fast path of ``Image.resample_to_geometry`` for the common case of
a source whose axes lie along the world axes: one small matrix product per axis (a scipy.sparse
product on the CPU, torch elsewhere) instead of a full-resolution Gaussian filter and a
point-by-point resampling, with the same values up to float32 rounding.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.sparse
import torch

from .._utils.kernels import gaussian_kernel
from ..image import Image, ImageGeometry, normalize_intensity
from .config import network_config

__all__ = ["preprocess", "resample_canonical", "MAX_WORK_VOXELS"]


# largest working grid (voxels) an image may be resampled to: 4 GiB of float32. Beyond it an
# image's geometry is almost surely wrong (e.g. spacing in micrometres read as mm).
MAX_WORK_VOXELS = 2 ** 30

#: fewest voxels an image may have on an axis: fewer hold no structure to embed (a 3 x 3 image,
#: a 1 x 96 line), whatever the working grid they would be interpolated to
MIN_IMAGE_VOXELS = 4


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


def _axis_sampling(n_in: int, n_out: int, a: float, b: float, sigma: float):
    """Along one axis: output voxel i samples source index ``c = a * i + b``. Returns the inside
    mask (ITK's ``[-0.5, n - 0.5)``), ``floor(c)``, the linear weight ``c - floor(c)`` and the
    anti-aliasing Gaussian kernel (one tap when ``sigma`` is 0)."""
    c = a * np.arange(n_out, dtype=np.float64) + b
    inside = (c >= -0.5) & (c < n_in - 0.5)
    base = np.floor(c)
    g = gaussian_kernel(sigma) if sigma > 0 else np.ones(1)
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
    """Fast ``image.resample_to_geometry(target, interpolator="linear")`` for axis-aligned images.

    Anti-aliasing Gaussian included. For the common case of a canonical target and a source whose
    direction is a signed permutation (axes aligned with the world: identity or flipped /
    permuted axes): one small matrix product per axis instead of a full-resolution Gaussian
    filter and a point-by-point resampling; on the CPU a scipy.sparse product (faster than the
    SimpleITK path, benchmarks/RESULTS.md), elsewhere torch on ``device``. Agrees with the
    SimpleITK path to float32 rounding (tests/test_inference.py).

    Parameters
    ----------
    image : Image
        The source image.
    target : ImageGeometry
        The canonical (identity-direction) target grid.
    device : str or torch.device, optional
        Where to resample: the CPU (scipy.sparse) when None or "cpu", else torch on it.
    default_value : float, optional
        Value outside the source (default: the image's minimum).

    Returns
    -------
    Image or None
        The resampled float32 image, or None when the geometry is not of that kind.
    """
    src = image.geometry
    maps = _axis_map(src, target)
    if maps is None:
        return None
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
    return Image(np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32), target, image.source)


def preprocess(image: Image, cfg: dict, device=None, where: str = "image") -> Image:
    """``image`` on the canonical working grid of ``cfg``, intensities normalised.

    Axis-aligned images are resampled by :func:`resample_canonical` (on a CUDA ``device`` there,
    else its scipy.sparse form), rotated ones through SimpleITK; both give the same values.

    Parameters
    ----------
    image : Image
        The image as given.
    cfg : dict
        The configuration whose working grid (``spacing_mm`` or ``image_size``) and ``intensity``
        preset apply (``SAMEmbedder``'s inference configuration for ``transform``).
    device : str or torch.device, optional
        Where to resample axis-aligned images (a CUDA device, or the CPU when None).
    where : str, default "image"
        Names the image in error messages, e.g. ``"images[3]"``.

    Returns
    -------
    Image
        The working image; its geometry maps the working grid to the input's world mm.

    Raises
    ------
    ValueError
        For a constant image (no anatomy to embed), one with fewer than :data:`MIN_IMAGE_VOXELS`
        voxels on an axis or whose working grid spans fewer than two local embedding voxels on an
        axis (too small to locate anything in), or one whose working
        grid would exceed :data:`MAX_WORK_VOXELS` (a wrong spacing, e.g. micrometres read as mm).
    """
    geom = image.geometry
    src = f" ('{image.source}')" if image.source else ""
    if min(geom.size) < MIN_IMAGE_VOXELS:
        raise ValueError(f"{where}{src} is too small to embed: {geom.size} voxels (x, y[, z]); every "
                         f"axis needs at least {MIN_IMAGE_VOXELS}")
    lo, hi = float(image.array.min()), float(image.array.max())
    if lo == hi:
        # a blank image holds no anatomy: its embedding would be the same vector everywhere and
        # any match in it an arbitrary voxel, so refuse it instead of answering silently wrong
        raise ValueError(f"{where}{src} is constant (every voxel is {lo:g}): it holds no anatomy "
                         f"to embed; remove blank images")
    if cfg.get("spacing_mm") is not None:
        target = geom.canonical(spacing=cfg["spacing_mm"])
    else:
        size = tuple(int(v) for v in cfg["image_size"])
        target = geom.canonical(size=size[::-1])  # image_size is (rows, cols) numpy order
    stride = network_config(cfg).local_stride[::-1]  # (x, y[, z]) like the sizes
    if any(n < 2 * s for n, s in zip(target.size, stride)):
        raise ValueError(f"{where}{src} is too small for the network: its working grid is {target.size} "
                         f"voxels (x, y[, z]) for a {np.round(geom.extent_mm, 1).tolist()} mm extent, "
                         f"less than two local embedding voxels (stride {tuple(stride)}) on some axis")
    n_vox = float(np.prod(np.asarray(target.size, dtype=np.float64)))
    if n_vox > MAX_WORK_VOXELS:
        raise ValueError(
            f"{where}{src} would need a working grid of {target.size} voxels (x, y, z) at "
            f"spacing_mm={cfg.get('spacing_mm')} for its {np.round(geom.extent_mm, 1).tolist()} mm "
            f"extent, over the limit of {MAX_WORK_VOXELS:.3g} voxels; check the image's spacing, "
            f"crop it, or use a larger spacing_mm")
    if target.allclose(geom, atol=1e-6):
        work = image
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        work = resample_canonical(image, target, device=dev if dev.type == "cuda" else "cpu")
        if work is None:
            work = image.resample_to_geometry(target, interpolator="linear")
    try:
        return normalize_intensity(work, cfg["intensity"])
    except ValueError as exc:
        raise ValueError(f"{where}{src}: {exc}") from None
