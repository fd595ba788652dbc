"""Training a landmark heatmap network on (pseudo-)labelled working images.

The optimisation of :class:`samlearn.SelfTrainedLandmarkDetector` (samlearn's second stage): whole
working images in batches, each under a random affine (rotation, isotropic scale, translation)
and an intensity jitter drawn per sample, the landmark positions moved by the same affine exactly;
AdamW with the cosine schedule of SAM's own training (:func:`~samlearn.training.loop.lr_at`) over
whichever budget runs out first (iterations or seconds).

Works on preprocessed arrays (numpy order) and a :class:`~samlearn.nn.HeatmapNet`; knows nothing
of estimators.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..nn.heatmap import heatmap_loss
from .loop import lr_at

__all__ = ["HeatmapTraining", "random_affines", "warp_batch", "train_heatmap_net", "input_to_heatmap_index"]

#: iterations of linear learning-rate warm-up
_WARMUP = 20


@dataclass(frozen=True)
class HeatmapTraining:
    """Settings of :func:`train_heatmap_net`.

    Parameters
    ----------
    max_iter : int
        Iteration budget.
    max_time : float or None
        Time budget (seconds of this loop); None: iterations only.
    batch_size : int
        Images per iteration.
    lr : float
        Peak learning rate (AdamW, weight decay 1e-4).
    sigma : float
        Width of the Gaussian targets (heatmap voxels).
    rotation_deg, scale, shift : float
        Augmentation: rotations up to ``rotation_deg`` (about every axis in 3D), isotropic scales
        in ``[1 / (1 + scale), 1 + scale]``, shifts up to ``shift`` times the extent per axis;
        all 0 switches the geometric augmentation off.
    intensity : float
        Intensity jitter: gain in ``1 +- intensity``, offset ``+- intensity`` standard deviations.
    invert : float
        Probability of inverting a sample's contrast (``max + min - x``).
    gamma : float
        Gamma curve ``exp(U(-gamma, gamma))`` on each sample's intensities rescaled to [0, 1]
        (0: off).
    """

    max_iter: int = 2000
    max_time: float | None = None
    batch_size: int = 4
    lr: float = 1e-3
    sigma: float = 1.5
    rotation_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.05
    intensity: float = 0.1
    invert: float = 0.0
    gamma: float = 0.0


def input_to_heatmap_index(index, stride):
    """Continuous input (array) indices -> heatmap indices, for a map of ``stride``.

    Parameters
    ----------
    index : ndarray or torch.Tensor of shape (..., ndim)
        Input array indices (numpy axis order).
    stride : sequence of int
        The heatmap's stride per axis (numpy order).

    Returns
    -------
    ndarray or torch.Tensor
        ``(index - (s - 1) / 2) / s``, the inverse of ``s * i + (s - 1) / 2``.
    """
    s = np.asarray(stride, dtype=np.float64)
    if isinstance(index, torch.Tensor):
        s = torch.as_tensor(s, dtype=index.dtype, device=index.device)
    return (index - (s - 1) / 2) / s


def _rotation(rng: np.random.Generator, ndim: int, max_deg: float) -> np.ndarray:
    if ndim == 2:
        a = math.radians(rng.uniform(-max_deg, max_deg))
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    r = np.eye(3)
    for axes in ((0, 1), (0, 2), (1, 2)):
        a = math.radians(rng.uniform(-max_deg, max_deg))
        m = np.eye(3)
        i, j = axes
        m[i, i] = m[j, j] = math.cos(a)
        m[i, j], m[j, i] = -math.sin(a), math.sin(a)
        r = m @ r
    return r


def random_affines(rng: np.random.Generator, n: int, shape, settings: HeatmapTraining):
    """Random output -> input index maps ``p = M (o - c) + c + t`` about the array centre ``c``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The draws.
    n : int
        Samples.
    shape : sequence of int
        The arrays' spatial shape (numpy order).
    settings : HeatmapTraining
        The augmentation ranges.

    Returns
    -------
    matrices : ndarray of shape (n, ndim, ndim)
        ``M``, in index units (numpy axis order).
    shifts : ndarray of shape (n, ndim)
        ``t`` (voxels).
    """
    nd = len(shape)
    mats, shifts = np.empty((n, nd, nd)), np.empty((n, nd))
    for b in range(n):
        s = math.exp(rng.uniform(-math.log1p(settings.scale), math.log1p(settings.scale)))
        mats[b] = s * _rotation(rng, nd, settings.rotation_deg)
        shifts[b] = rng.uniform(-settings.shift, settings.shift, nd) * np.asarray(shape)
    return mats, shifts


def warp_batch(x: torch.Tensor, points: torch.Tensor, matrices, shifts) -> tuple:
    """Resample a batch by index maps ``p = M (o - c) + c + t`` and move its points with it.

    Parameters
    ----------
    x : torch.Tensor of shape ``(n, 1, *spatial)``
        Images.
    points : torch.Tensor of shape ``(n, K, ndim)``
        Input array indices of the landmarks.
    matrices, shifts : ndarray
        As :func:`random_affines` returns them.

    Returns
    -------
    x : torch.Tensor
        The warped images (border values outside).
    points : torch.Tensor
        The landmarks' indices in the warped images: ``o = M^-1 (p - c - t) + c``.
    """
    shape = np.asarray(x.shape[2:], dtype=np.float64)
    c = (shape - 1) / 2
    d = shape / 2  # index = d * normalised + c (align_corners=False)
    theta = np.empty((len(matrices), len(shape), len(shape) + 1))
    for b, (m, t) in enumerate(zip(matrices, shifts)):
        lin = (m * d[None, :]) / d[:, None]   # D^-1 M D, numpy order
        off = t / d
        rev = slice(None, None, -1)           # affine_grid wants (x, y[, z])
        theta[b, :, :-1] = lin[rev, rev]
        theta[b, :, -1] = off[rev]
    th = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(th, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inv = torch.as_tensor(np.linalg.inv(matrices), dtype=points.dtype, device=points.device)
    cc = torch.as_tensor(c, dtype=points.dtype, device=points.device)
    tt = torch.as_tensor(shifts, dtype=points.dtype, device=points.device)
    moved = torch.einsum("bij,bkj->bki", inv, points - cc - tt[:, None]) + cc
    return out, moved


def _jitter(x: torch.Tensor, rng: np.random.Generator, amount: float) -> torch.Tensor:
    n = x.shape[0]
    dims = tuple(range(1, x.dim()))
    sd = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    view = (-1,) + (1,) * (x.dim() - 1)
    gain = torch.as_tensor(1 + rng.uniform(-amount, amount, n), dtype=x.dtype, device=x.device).view(view)
    off = torch.as_tensor(rng.uniform(-amount, amount, n), dtype=x.dtype, device=x.device).view(view)
    return x * gain + off * sd


def _contrast(x: torch.Tensor, rng: np.random.Generator, invert: float, gamma: float) -> torch.Tensor:
    """Per-sample gamma curve and contrast inversion, the intensity range of each sample kept."""
    n = x.shape[0]
    dims = tuple(range(1, x.dim()))
    view = (-1,) + (1,) * (x.dim() - 1)
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    u = (x - lo) / (hi - lo).clamp_min(1e-6)
    if gamma > 0:
        g = torch.as_tensor(np.exp(rng.uniform(-gamma, gamma, n)), dtype=x.dtype, device=x.device).view(view)
        u = u.clamp_min(0) ** g
    if invert > 0:
        flip = torch.as_tensor(rng.random(n) < invert, device=x.device).view(view)
        u = torch.where(flip, 1 - u, u)
    return lo + u * (hi - lo)


def train_heatmap_net(net, arrays, points, weights, settings: HeatmapTraining, *, rng, device="cpu",
                      progress=None, stop_time: float | None = None) -> dict:
    """Fit ``net`` to landmark positions on working images.

    Parameters
    ----------
    net : HeatmapNet
        The network (trained in place, on ``device``).
    arrays : ndarray of shape ``(n_images, *spatial)``, float32
        Working images of one shape, each a multiple of the network's total stride.
    points : ndarray of shape (n_images, K, ndim)
        Landmark positions, input array indices.
    weights : ndarray of shape (n_images, K)
        Weight of each label (0: not used).
    settings : HeatmapTraining
        Budgets, learning rate and augmentation.
    rng : numpy.random.Generator
        Batches and augmentations.
    device : str or torch.device, default "cpu"
        Where the network is; the images stay on the CPU and go there one batch at a time.
    progress : callable, optional
        Called with ``(iteration, loss)`` after every iteration.
    stop_time : float, optional
        A ``time.perf_counter()`` deadline that overrides ``settings.max_time`` when sooner.

    Returns
    -------
    dict
        ``n_iter``, ``train_time`` (seconds) and ``history`` (loss per iteration).
    """
    stride = net.config.local_stride
    x_all = torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))[:, None]
    p_all = torch.as_tensor(points, dtype=torch.float32)
    w_all = torch.as_tensor(weights, dtype=torch.float32)
    heat_shape = net.output_sizes(arrays.shape[1:])[1]
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=settings.lr, weight_decay=1e-4)
    geometric = settings.rotation_deg > 0 or settings.scale > 0 or settings.shift > 0
    t0 = time.perf_counter()
    deadline = t0 + settings.max_time if settings.max_time is not None else math.inf
    if stop_time is not None:
        deadline = min(deadline, stop_time)
    history, it = [], 0
    net.train()
    while it < settings.max_iter and time.perf_counter() < deadline:
        idx = rng.choice(len(arrays), size=min(settings.batch_size, len(arrays)), replace=False)
        x, p, w = (t[idx].to(device) for t in (x_all, p_all, w_all))
        if geometric:
            x, p = warp_batch(x, p, *random_affines(rng, len(idx), arrays.shape[1:], settings))
        if settings.invert > 0 or settings.gamma > 0:
            x = _contrast(x, rng, settings.invert, settings.gamma)
        if settings.intensity > 0:
            x = _jitter(x, rng, settings.intensity)
        hp = input_to_heatmap_index(p, stride)
        inside = torch.ones_like(w, dtype=torch.bool)
        for a, n in enumerate(heat_shape):
            inside &= (hp[..., a] >= -0.5) & (hp[..., a] <= n - 0.5)
        progress_frac = max(it / settings.max_iter, (time.perf_counter() - t0) / max(deadline - t0, 1e-9))
        for group in opt.param_groups:
            group["lr"] = lr_at(it, progress_frac, settings.lr, _WARMUP, "cosine")
        loss = heatmap_loss(net(x), hp, w * inside, settings.sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        it += 1
        if progress is not None:
            progress(it, history[-1])
    net.eval()
    return {"n_iter": it, "train_time": time.perf_counter() - t0, "history": history}
