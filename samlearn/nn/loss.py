"""Pixel-level InfoNCE with hard and diverse negatives (paper §III-B, §III-C, Algorithm 1).

Everything is batched tensor code on the training device: no per-query Python loops.

Inputs per batch of ``B`` patch pairs:

* ``g1, g2`` ``(B, C, *Sg)`` and ``l1, l2`` ``(B, C, *Sl)``: the L2-normalised global / local maps of the
  two patches of each pair;
* ``pos1, pos2`` (B, n_pos, ndim): the positive pairs as continuous patch array indices (numpy
  order); pixel ``pos1[b, i]`` of patch 1 and ``pos2[b, i]`` of patch 2 show the same source point;
* ``pos_mm`` (B, n_pos, ndim): that source point in millimetres;
* ``cg1, cg2`` ``(B, ndim, *Sg)`` and ``cl1, cl2`` ``(B, ndim, *Sl)``: the source position in mm of every
  voxel of each map (so negatives closer than ``delta_mm`` to a positive can be excluded);
* ``image_ids`` (B,): which source image each pair came from (random negatives come only from
  *other* images).

Pairs across two images (semi-supervised training, paper §IV-H): patch 1 of a pair may come from
image A and patch 2 from image B, the positives being the same labelled landmark in both. Then the
two patches have different source frames, so the loss takes the positive's position per patch:
``pos_mm`` in patch 1's source frame and ``pos_mm2`` in patch 2's, and ``image_ids`` of shape
(B, 2) (the source image of each patch). Candidates of patch 1 are excluded within ``delta_mm`` of
``pos_mm``, candidates of patch 2 within ``delta_mm`` of ``pos_mm2``; random negatives come only from
images that are neither of the pair's two. Without ``pos_mm2`` (and with 1-D ``image_ids``) the
computation is exactly the single-image one.

Global loss: for each anchor, the ``n_hard`` most similar voxels of both patches' global maps that
are farther than ``delta_mm`` from the positive (hard negatives) plus ``n_random`` random global
voxels of other images in the batch. Local loss: candidates ranked by the combined similarity
S^g (upsampled to the local grid) + S^l, the top ``n_candidates`` kept, ``n_local`` of them drawn at
random (diverse negatives). Excluded candidates are masked with ``-inf`` (never 0). Symmetric
InfoNCE (each patch serves as anchor), temperature ``tau``; total loss L = L^g + L^l.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._utils.docs import fill_doc_with

__all__ = ["LossConfig", "sam_loss", "sample_vectors", "info_nce_from_logits", "far_mask",
           "hard_negative_indices", "random_negative_indices", "diverse_local_negative_indices"]

NEG_INF = float("-inf")

#: the parameters and results that the negative samplers share
_fill_doc = fill_doc_with({
    "pos_mm": """
pos_mm : torch.Tensor of shape (B, n, ndim)
    The positives (mm).""",
    "cand_mm": """
cand_mm : torch.Tensor of shape (B, N, ndim)
    The candidates' source positions (mm).""",
    "delta_mm": """
delta_mm : float
    The exclusion distance (mm).""",
    "far": """
far : torch.Tensor of shape (B, n, N) or None, default None
    When given, replaces the distance test (see :func:`far_mask`).""",
    "negative_indices": """
Returns
-------
indices : torch.Tensor of shape (B, n, k)
    Indices into N.
valid : torch.Tensor of bool, shape (B, n, k)
    False where fewer than k candidates qualify.""",
})


@dataclass
class LossConfig:
    """Hyper-parameters of :func:`sam_loss`.

    Parameters
    ----------
    tau : float, default 0.5
        InfoNCE temperature.
    delta_mm : float, default 3.0
        Candidates closer than this (mm) to the positive are never negatives.
    n_hard : int, default 500
        Global hard negatives per anchor.
    n_random : int, default 1000
        Global random negatives per pair, from other images of the batch.
    n_candidates : int, default 20000
        Local: the top candidates by S^g + S^l kept (the presets: 2e4 for CT, 5e3 for X-ray).
    n_local : int, default 500
        Local: negatives drawn at random among the candidates.
    global_weight, local_weight : float, default 1.0
        Weights of L^g and L^l in the total loss.
    """

    tau: float = 0.5
    delta_mm: float = 3.0
    n_hard: int = 500          # global hard negatives
    n_random: int = 1000       # global random negatives from other images
    n_candidates: int = 20000  # local: top candidates by S^g + S^l (2e4 CT, 5e3 X-ray)
    n_local: int = 500         # local: drawn at random among the candidates
    global_weight: float = 1.0
    local_weight: float = 1.0


def sample_vectors(maps: torch.Tensor, u: torch.Tensor, stride) -> torch.Tensor:
    """Vectors of a map at continuous patch array indices, linearly interpolated and renormalised.

    Patch index ``u`` is feature index ``f = (u + 0.5) / s - 0.5`` of a map with stride ``s``.

    Parameters
    ----------
    maps : torch.Tensor of shape ``(B, C, *S)``
        The maps.
    u : torch.Tensor of shape (B, n, ndim)
        Continuous patch array indices (numpy order).
    stride : sequence of int
        The map's stride per axis.

    Returns
    -------
    torch.Tensor of shape (B, n, C)
        The L2-normalised vectors.
    """
    B, C = maps.shape[:2]
    S = maps.shape[2:]
    ndim = len(S)
    # align_corners=False normalisation 2 (u + 0.5) / (s n) - 1, per axis with Python scalars: a
    # tensor built from the stride would be a host-to-device copy, which synchronises on CUDA.
    # Reversed axis order: grid_sample wants (x, y[, z]).
    cols = [(u[..., d] + 0.5) * (2.0 / (float(stride[d]) * S[d])) - 1.0 for d in reversed(range(ndim))]
    grid = torch.stack(cols, -1).view(B, *([1] * (ndim - 1)), u.shape[1], ndim)
    out = F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(B, C, -1).transpose(1, 2)
    return F.normalize(out, dim=-1)


def info_nce_from_logits(pos_logit: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """-log(exp(pos) / (exp(pos) + sum exp(neg))) per anchor.

    Parameters
    ----------
    pos_logit : torch.Tensor of shape (...)
        The positive's logit of each anchor.
    neg_logits : torch.Tensor of shape (..., k)
        The negatives' logits; excluded ones hold -inf.

    Returns
    -------
    torch.Tensor of shape (...)
        The loss of each anchor.
    """
    logits = torch.cat([pos_logit.unsqueeze(-1), neg_logits], dim=-1)
    return torch.logsumexp(logits, dim=-1) - pos_logit


def _flat(maps):
    return maps.flatten(2).transpose(1, 2)  # (B, N, C)


def _flat_coords(coords):
    return coords.flatten(2).transpose(1, 2)  # (B, N, ndim)


@_fill_doc
def far_mask(pos_mm, cand_mm, delta_mm: float, pos_mm2=None, n_first=None) -> torch.Tensor:
    """Mask of the candidates farther than ``delta_mm`` from the positive.

    Parameters
    ----------
    %(pos_mm)s
    %(cand_mm)s
    %(delta_mm)s
    pos_mm2 : torch.Tensor of shape (B, n, ndim) or None, default None
        For pairs across two images: the positives in patch 2's frame. The first ``n_first``
        candidates (patch 1) are then measured from ``pos_mm``, the rest (patch 2) from
        ``pos_mm2``.
    n_first : int or None, default None
        Number of patch 1's candidates (with ``pos_mm2``).

    Returns
    -------
    torch.Tensor of bool, shape (B, n, N)
        True where a candidate may be a negative.
    """
    if pos_mm2 is None:
        return torch.cdist(pos_mm, cand_mm) > delta_mm
    return torch.cat([torch.cdist(pos_mm, cand_mm[:, :n_first]),
                      torch.cdist(pos_mm2, cand_mm[:, n_first:])], -1) > delta_mm


def _mask_near(scores, cand_mm, pos_mm, delta_mm, far):
    """``scores`` (detached) with the candidates within ``delta_mm`` of the positive at -inf, and
    the mask of the others (``far`` when given, else :func:`far_mask`)."""
    if far is None:
        far = far_mask(pos_mm, cand_mm, delta_mm)
    return scores.detach().masked_fill(~far, NEG_INF), far


@_fill_doc
def hard_negative_indices(sim: torch.Tensor, cand_mm: torch.Tensor, pos_mm: torch.Tensor,
                          k: int, delta_mm: float, far=None):
    """Top-``k`` most similar candidates farther than ``delta_mm`` from the positive.

    Parameters
    ----------
    sim : torch.Tensor of shape (B, n, N)
        Similarity of each anchor to each candidate.
    %(cand_mm)s
    %(pos_mm)s
    k : int
        Negatives per anchor (at most N).
    %(delta_mm)s
    %(far)s

    %(negative_indices)s
    """
    masked, _ = _mask_near(sim, cand_mm, pos_mm, delta_mm, far)
    k = min(k, sim.shape[-1])
    vals, idx = masked.topk(k, dim=-1)
    return idx, torch.isfinite(vals)


def random_negative_indices(image_ids: torch.Tensor, n_per_map: int, k: int, generator=None):
    """For each pair b, ``k`` random voxels of the pooled global voxels of other images.

    The pool holds the global voxels of all 2B patches (layout: pair-major, patch 1 then patch 2,
    each ``n_per_map`` voxels); a voxel is allowed when its image is neither of pair b's.

    Parameters
    ----------
    image_ids : torch.Tensor of shape (B,) or (B, 2)
        The source image of each pair (both patches from one image), or of each patch.
    n_per_map : int
        Voxels per global map.
    k : int
        Negatives per pair.
    generator : torch.Generator or None, default None
        Drives the draw (on ``image_ids``' device).

    Returns
    -------
    indices : torch.Tensor of shape (B, k)
        Indices into the pool.
    valid : torch.Tensor of bool, shape (B, k)
        False where too few voxels are allowed.
    """
    if image_ids.dim() == 1:
        B = image_ids.shape[0]
        owner = image_ids[:, None].expand(B, 2 * n_per_map).reshape(-1)  # image id of every pooled voxel
        allowed = owner.unsqueeze(0) != image_ids.unsqueeze(1)  # (B, 2B*N)
    else:
        owner = image_ids.repeat_interleave(n_per_map, dim=1).reshape(-1)
        allowed = (owner.unsqueeze(0) != image_ids[:, :1]) & (owner.unsqueeze(0) != image_ids[:, 1:2])
    keys = torch.rand(allowed.shape, generator=generator, device=image_ids.device)
    keys = keys.masked_fill(~allowed, NEG_INF)
    k = min(k, keys.shape[1])
    vals, idx = keys.topk(k, dim=1)
    return idx, torch.isfinite(vals)


@_fill_doc
def diverse_local_negative_indices(rank: torch.Tensor, cand_mm: torch.Tensor, pos_mm: torch.Tensor,
                                   n_candidates: int, k: int, delta_mm: float, generator=None,
                                   threshold_sample: int = 2048, far=None):
    """Draw ``k`` diverse local negatives among the top ``n_candidates`` by S^g + S^l.

    Candidates within ``delta_mm`` of the positive are excluded; the draw is at random without
    replacement.

    Cost matters here (this runs twice per training step over every local voxel), so neither step
    sorts: the top set is every candidate at or above the ``n_candidates``-th largest value, a
    selection (``kthvalue``) computed on ``threshold_sample`` random columns when N is larger
    (the quantile estimate is within about 1% of N); the random draw walks one shared random
    permutation of the columns and keeps, per row, the first ``k`` qualifying candidates, which
    is a uniform draw without replacement from that row's top set.

    Parameters
    ----------
    rank : torch.Tensor of shape (B, n, N)
        The ranking score S^g (upsampled to the local grid) + S^l.
    %(cand_mm)s
    %(pos_mm)s
    n_candidates : int
        Size of the top set.
    k : int
        Negatives per anchor.
    %(delta_mm)s
    generator : torch.Generator or None, default None
        Drives the random draws (on ``rank``'s device).
    threshold_sample : int, default 2048
        Columns sampled to estimate the top set's threshold when N is larger.
    %(far)s

    %(negative_indices)s
    """
    masked, far = _mask_near(rank, cand_mm, pos_mm, delta_mm, far)
    N = rank.shape[-1]
    nc = min(n_candidates, N)
    device = rank.device
    if nc < N:
        if N > threshold_sample:
            cols = torch.randperm(N, generator=generator, device=device)[:threshold_sample]
            sub = masked.index_select(-1, cols)
            kth = max(1, min(threshold_sample, int(round(threshold_sample * (1.0 - nc / N))) + 1))
            thr = sub.kthvalue(kth, dim=-1, keepdim=True).values
        else:
            thr = masked.kthvalue(N - nc + 1, dim=-1, keepdim=True).values
        eligible = (masked >= thr) & far
    else:
        eligible = far
    # walk a random permutation: far enough to find k eligible columns with a wide margin
    frac = nc / N
    m = min(N, int(math.ceil(1.5 * k / max(frac, 1e-6))) + 64)
    perm = torch.randperm(N, generator=generator, device=device)[:m]
    elig = eligible.index_select(-1, perm)
    order = torch.arange(m, 0, -1, device=device, dtype=torch.float32)
    key = elig.float() * order  # earlier eligible columns get larger keys
    kv, pos = key.topk(min(k, m), dim=-1)
    return perm[pos], kv > 0


def sam_loss(g1, g2, l1, l2, pos1, pos2, pos_mm, cg1, cg2, cl1, cl2, image_ids,
             global_stride, local_stride, config: LossConfig = LossConfig(), generator=None,
             pos_mm2=None):
    """The SAM training loss L = L^g + L^l (the inputs are described in the module docstring).

    Parameters
    ----------
    g1, g2 : torch.Tensor of shape ``(B, C, *Sg)``
        The L2-normalised global maps of the two patches of each pair.
    l1, l2 : torch.Tensor of shape ``(B, C, *Sl)``
        The L2-normalised local maps.
    pos1, pos2 : torch.Tensor of shape (B, n_pos, ndim)
        The positives as continuous patch array indices (numpy order) in patch 1 and patch 2.
    pos_mm : torch.Tensor of shape (B, n_pos, ndim)
        The positives' source points (mm; in patch 1's source frame with ``pos_mm2``).
    cg1, cg2 : torch.Tensor of shape ``(B, ndim, *Sg)``
        The source position (mm) of every voxel of the global maps.
    cl1, cl2 : torch.Tensor of shape ``(B, ndim, *Sl)``
        The same for the local maps.
    image_ids : torch.Tensor of shape (B,) or (B, 2)
        The source image of each pair, or of each patch (pairs across two images).
    global_stride, local_stride : sequence of int
        The maps' strides per axis (numpy order).
    config : LossConfig, default LossConfig()
        The hyper-parameters.
    generator : torch.Generator or None, default None
        On the maps' device, drives the random draws.
    pos_mm2 : torch.Tensor of shape (B, n_pos, ndim) or None, default None
        Pairs across two images: the positives in patch 2's source frame.

    Returns
    -------
    loss : torch.Tensor
        The weighted total loss, 0-d.
    stats : dict of str to torch.Tensor
        Detached 0-d tensors ``loss_global``, ``loss_local``, ``pos_sim_global``,
        ``pos_sim_local``, ``top1_global`` and ``top1_local`` (no host-device synchronisation:
        convert them only when logging).
    """
    cfg = config
    B = g1.shape[0]
    inv_tau = 1.0 / cfg.tau
    # vectors at the positives
    fg1, fg2 = sample_vectors(g1, pos1, global_stride), sample_vectors(g2, pos2, global_stride)
    fl1, fl2 = sample_vectors(l1, pos1, local_stride), sample_vectors(l2, pos2, local_stride)

    gcand = torch.cat([_flat(g1), _flat(g2)], 1)                  # (B, 2Ng, C)
    gcand_mm = torch.cat([_flat_coords(cg1), _flat_coords(cg2)], 1).to(pos_mm.dtype)
    lcand = torch.cat([_flat(l1), _flat(l2)], 1)                  # (B, 2Nl, C)
    lcand_mm = torch.cat([_flat_coords(cl1), _flat_coords(cl2)], 1).to(pos_mm.dtype)
    Ng = g1[0, 0].numel()
    Sg, Sl = g1.shape[2:], l1.shape[2:]

    # random global negatives from other images (shared by all anchors of a pair)
    pool = gcand.reshape(-1, gcand.shape[-1])                     # pair-major, as the ids expect
    ridx, rvalid = random_negative_indices(image_ids, Ng, cfg.n_random, generator)
    rneg = pool[ridx]                                             # (B, k, C)

    # distance exclusion (no gradient): the same for both anchor directions
    if pos_mm2 is None:
        gfar = lfar = None
    else:
        pos_mm2 = pos_mm2.to(pos_mm.dtype)
        gfar = far_mask(pos_mm, gcand_mm, cfg.delta_mm, pos_mm2, Ng)
        lfar = far_mask(pos_mm, lcand_mm, cfg.delta_mm, pos_mm2, l1[0, 0].numel())

    losses_g, losses_l = [], []
    stats = {}
    for anchor_g, pos_g, anchor_l, pos_l in ((fg1, fg2, fl1, fl2), (fg2, fg1, fl2, fl1)):
        # ---- global: hard + random negatives
        sim_g = torch.bmm(anchor_g, gcand.transpose(1, 2))       # (B, n, 2Ng)
        hidx, hvalid = hard_negative_indices(sim_g, gcand_mm, pos_mm, cfg.n_hard, cfg.delta_mm,
                                              far=gfar)
        hard = sim_g.gather(-1, hidx).masked_fill(~hvalid, NEG_INF)
        rand = torch.bmm(anchor_g, rneg.transpose(1, 2)).masked_fill(~rvalid.unsqueeze(1), NEG_INF)
        pos_logit_g = (anchor_g * pos_g).sum(-1) * inv_tau
        neg_g = torch.cat([hard, rand], -1) * inv_tau
        losses_g.append(info_nce_from_logits(pos_logit_g, neg_g))

        # ---- local: diverse negatives ranked by upsampled S^g + S^l (ranking needs no gradient).
        # A dense product for all candidates measured faster than gathering the drawn vectors:
        # the gathered copy and its scatter-add cost more memory traffic than the matrix product.
        sim_l = torch.bmm(anchor_l, lcand.transpose(1, 2))       # (B, n, 2Nl)
        with torch.no_grad():
            n = sim_g.shape[1]
            sg = sim_g.reshape(B * n * 2, 1, *Sg)
            sg_up = F.interpolate(sg, size=Sl, mode="bilinear" if len(Sl) == 2 else "trilinear",
                                  align_corners=False).reshape(B, n, -1)
            rank = sg_up + sim_l
        lidx, lvalid = diverse_local_negative_indices(rank, lcand_mm, pos_mm, cfg.n_candidates,
                                                      cfg.n_local, cfg.delta_mm, generator, far=lfar)
        neg_l = sim_l.gather(-1, lidx).masked_fill(~lvalid, NEG_INF) * inv_tau
        pos_logit_l = (anchor_l * pos_l).sum(-1) * inv_tau
        losses_l.append(info_nce_from_logits(pos_logit_l, neg_l))
        with torch.no_grad():
            stats.setdefault("pos_sim_global", []).append((anchor_g * pos_g).sum(-1).mean())
            stats.setdefault("pos_sim_local", []).append((anchor_l * pos_l).sum(-1).mean())
            stats.setdefault("top1_global", []).append((pos_logit_g > neg_g.amax(-1)).float().mean())
            stats.setdefault("top1_local", []).append((pos_logit_l > neg_l.amax(-1)).float().mean())

    loss_g = torch.stack(losses_g).mean()
    loss_l = torch.stack(losses_l).mean()
    loss = cfg.global_weight * loss_g + cfg.local_weight * loss_l
    out = {k: torch.stack(v).mean() for k, v in stats.items()}
    out.update(loss_global=loss_g.detach(), loss_local=loss_l.detach())
    return loss, out
