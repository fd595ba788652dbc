"""The SAM training loop: data stream, device, mixed precision, optimiser, schedule, history,
checkpoints and clean interruption. Used by :class:`~samlearn.embedder.SAMEmbedder`; no sklearn here.

* :class:`PairStream` is an ``IterableDataset`` that turns preprocessed source arrays into an endless
  stream of patch pairs (via :mod:`samlearn.augment`), each with its positive pairs and the source
  position in mm of every voxel of the global and local maps. Every DataLoader worker draws from its
  own ``numpy`` generator spawned from one ``SeedSequence``: same seed, same stream. With landmark
  labels for some images it also forms the paper's semi-supervised positives (§IV-H).
* :func:`train` runs optimisation steps until ``max_iter`` or ``max_time`` is reached. The step keeps
  sampling and loss on the device; diagnostics are converted to Python floats only every
  ``log_every`` iterations (one host-device synchronisation per flush, not per step).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .nn.loss import LossConfig, sam_loss

__all__ = ["PairStream", "make_loader", "train", "TrainState", "lr_at"]


class PairStream(IterableDataset):
    """Endless stream of SAM training samples from in-memory source arrays.

    ``arrays``: list of preprocessed float32 arrays (numpy order); ``spacings``: their voxel sizes in
    mm (numpy order); ``sampler``: a :class:`samlearn.augment.PatchPairSampler`; ``seed``: a
    ``numpy.random.SeedSequence`` from which each worker spawns its own stream.

    Semi-supervised positives (paper §IV-H): ``labels`` is None (purely self-supervised: the stream
    is exactly the unsupervised one) or one entry per array, ``None`` for an unlabelled image or an
    ``(n_landmarks, ndim)`` array of landmark positions in that array's indices (numpy order), NaN
    rows for landmarks not labelled on it. For each drawn image that shares at least one landmark
    with another labelled image, with probability ``label_positive_prob`` the sample is a labelled
    pair: a landmark ``k`` drawn uniformly among the image's landmarks that another image also has,
    a partner image drawn uniformly among those, and :meth:`PatchPairSampler.sample_across` crops
    patch 1 around landmark ``k`` of the image and patch 2 around landmark ``k`` of the partner.
    The positives are landmark ``k`` and every other landmark labelled on both images that both
    patches show, cycled to ``n_pos`` slots (landmark ``k`` first). Otherwise (and for unlabelled
    images) the sample is the usual augmented-copy pair.

    With ``labels`` every sample carries four more entries: ``pos_mm2`` (the positives in patch 2's
    source frame; equal to ``pos_mm`` for a single-image pair), ``pair_ids`` (source image of each
    patch), ``label_pair`` ``(image_a, image_b, k)`` (``-1``s for an unsupervised pair) and
    ``pos_landmark`` (the landmark of each positive slot, ``-1`` for an unsupervised pair).
    """

    def __init__(self, arrays, spacings, sampler, n_pos, global_stride, local_stride, seed,
                 labels=None, label_positive_prob=0.5):
        super().__init__()
        self.arrays = arrays
        self.spacings = [np.asarray(s, dtype=np.float64) for s in spacings]
        self.sampler = sampler
        self.n_pos = int(n_pos)
        self.global_stride = tuple(global_stride)
        self.local_stride = tuple(local_stride)
        self.seed = seed
        self.label_positive_prob = float(label_positive_prob)
        self.labels = None if labels is None else [None if y is None else np.asarray(y, np.float64)
                                                    for y in labels]
        # partners[a] = {landmark k: [images b != a that also have landmark k]}, only keys with partners
        self.partners = None
        if self.labels is not None:
            if len(self.labels) != len(arrays):
                raise ValueError(f"labels must have one entry per array ({len(arrays)}), got {len(self.labels)}")
            have = [None if y is None else np.all(np.isfinite(y), axis=1) for y in self.labels]
            self.partners = []
            for a, ha in enumerate(have):
                d = {}
                if ha is not None:
                    for k in np.flatnonzero(ha):
                        bs = [b for b, hb in enumerate(have) if b != a and hb is not None and hb[k]]
                        if bs:
                            d[int(k)] = bs
                self.partners.append(d)

    def sample(self, rng: np.random.Generator) -> dict:
        k = int(rng.integers(len(self.arrays)))
        if self.labels is None:
            return self._sample_same(k, rng)
        if self.partners[k] and rng.random() < self.label_positive_prob:
            return self._sample_labelled(k, rng)
        out = self._sample_same(k, rng)
        out["pos_mm2"] = out["pos_mm"].copy()
        out["pair_ids"] = np.array([k, k], dtype=np.int64)
        out["label_pair"] = np.full(3, -1, dtype=np.int64)
        out["pos_landmark"] = np.full(self.n_pos, -1, dtype=np.int64)
        return out

    def _sample_same(self, k: int, rng: np.random.Generator) -> dict:
        """The self-supervised sample: two augmented crops of image ``k``."""
        spacing = self.spacings[k]
        pair = self.sampler.sample(self.arrays[k], rng, spacing=spacing)
        pos = pair.positives(self.n_pos, rng).astype(np.float32)              # (2, n, ndim)
        pos_mm = (pair.transforms[0].to_source(pos[0].astype(np.float64)) * spacing).astype(np.float32)
        return {
            "patches": pair.patches[:, None].astype(np.float32, copy=False),  # (2, 1, *P)
            "pos": pos,
            "pos_mm": pos_mm,
            "cg": np.stack([pair.source_mm(i, self.global_stride) for i in (0, 1)]).astype(np.float32),
            "cl": np.stack([pair.source_mm(i, self.local_stride) for i in (0, 1)]).astype(np.float32),
            "image_id": np.int64(k),
        }

    def _sample_labelled(self, a: int, rng: np.random.Generator) -> dict:
        """A labelled pair: landmark ``k`` of image ``a`` and of a random partner image ``b``."""
        choices = sorted(self.partners[a])
        k = choices[int(rng.integers(len(choices)))]
        partners = self.partners[a][k]
        b = partners[int(rng.integers(len(partners)))]
        ya, yb = self.labels[a], self.labels[b]
        pair = self.sampler.sample_across(self.arrays[a], ya[k], self.arrays[b], yb[k], rng,
                                          spacing_a=self.spacings[a], spacing_b=self.spacings[b])
        # landmark k sits exactly at the drawn anchors; other shared landmarks count when both
        # patches show them
        ua, ina = pair.points_to_patch(0, ya)
        ub, inb = pair.points_to_patch(1, yb)
        both = ina & inb
        both[k] = False
        lms = np.concatenate([[k], np.flatnonzero(both)]).astype(np.int64)
        u1 = np.concatenate([pair.anchor[:1], ua[lms[1:]]])
        u2 = np.concatenate([pair.anchor[1:], ub[lms[1:]]])
        slots = np.resize(np.arange(lms.size), self.n_pos)
        pos = np.stack([u1[slots], u2[slots]]).astype(np.float32)           # (2, n, ndim)
        return {
            "patches": pair.patches[:, None].astype(np.float32, copy=False),
            "pos": pos,
            "pos_mm": (ya[lms[slots]] * self.spacings[a]).astype(np.float32),
            "cg": np.stack([pair.source_mm(i, self.global_stride) for i in (0, 1)]).astype(np.float32),
            "cl": np.stack([pair.source_mm(i, self.local_stride) for i in (0, 1)]).astype(np.float32),
            "image_id": np.int64(a),
            "pos_mm2": (yb[lms[slots]] * self.spacings[b]).astype(np.float32),
            "pair_ids": np.array([a, b], dtype=np.int64),
            "label_pair": np.array([a, b, k], dtype=np.int64),
            "pos_landmark": lms[slots],
        }

    def __iter__(self):
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        wid = info.id if info is not None else 0
        rng = np.random.default_rng(self.seed.spawn(n_workers)[wid])
        while True:
            yield self.sample(rng)


def make_loader(stream: PairStream, batch_size: int, num_workers: int, pin_memory: bool,
                seed: int = 0) -> DataLoader:
    # an explicit generator: the DataLoader would otherwise draw its base seed from torch's global RNG
    kwargs = {"generator": torch.Generator().manual_seed(int(seed))}
    if num_workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=False)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers,
                      pin_memory=pin_memory, **kwargs)


def lr_at(it: int, progress: float, base_lr: float, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` iterations, then constant or cosine decay to 5% of ``base_lr``
    over the budget (``progress`` in [0, 1], from iterations or time, whichever runs out first)."""
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    if schedule == "constant":
        return base_lr
    p = min(max(progress, 0.0), 1.0)
    return base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * p)))


@dataclass
class TrainState:
    """Everything needed to continue a run: iteration count, time spent, history."""

    iteration: int = 0
    train_time: float = 0.0
    history: list = field(default_factory=list)
    interrupted: bool = False


def _to_device(batch: dict, device, non_blocking: bool) -> dict:
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def train(net, optimizer, loader, state: TrainState, *, loss_config: LossConfig, device,
          amp_dtype, max_iter: int | None, max_time: float | None, lr: float, warmup: int,
          schedule: str, generator: torch.Generator, checkpoint=None, checkpoint_every: int | None = None,
          progress=None, log_every: int = 10, channels_last: bool = False) -> TrainState:
    """Optimise ``net`` on batches from ``loader`` until the budget is spent (``max_iter`` total
    iterations, ``max_time`` total seconds of training, counted across resumed runs).

    ``checkpoint(state)`` is called every ``checkpoint_every`` iterations, at the end and on
    interruption. Ctrl-C (``KeyboardInterrupt``) stops the loop cleanly: ``state.interrupted`` is set
    and the model stays usable. Returns the updated state.
    """
    net.train()
    cfg = net.config
    gstride, lstride = cfg.global_stride, cfg.local_stride
    is_cuda = torch.device(device).type == "cuda"
    pending = []  # (iteration, lr, elapsed, stats tensors) awaiting conversion to floats
    budget_iter = max_iter if max_iter is not None else float("inf")
    budget_time = max_time if max_time is not None else float("inf")
    memory_format = torch.channels_last_3d if cfg.ndim == 3 else torch.channels_last

    def flush():
        for it, lr_now, elapsed, stats, step_time in pending:
            rec = {"iteration": it, "lr": lr_now, "time": elapsed, "step_time": step_time}
            rec.update({k: float(v) for k, v in stats.items()})
            rec["loss"] = rec["loss_global"] * loss_config.global_weight + rec["loss_local"] * loss_config.local_weight
            state.history.append(rec)
        pending.clear()
        if progress is not None and state.history:
            last = state.history[-1]
            progress.set_postfix(loss=f"{last['loss']:.3f}", it_s=f"{1.0 / max(last['step_time'], 1e-9):.2f}",
                                 refresh=False)

    t_start = time.perf_counter() - state.train_time
    data_iter = iter(loader)
    try:
        while state.iteration < budget_iter and state.train_time < budget_time:
            t0 = time.perf_counter()
            batch = _to_device(next(data_iter), device, non_blocking=is_cuda)
            progress_frac = max(state.iteration / budget_iter if budget_iter != float("inf") else 0.0,
                                state.train_time / budget_time if budget_time != float("inf") else 0.0)
            lr_now = lr_at(state.iteration, progress_frac, lr, warmup, schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            p = batch["patches"]                                    # (B, 2, 1, *P)
            B = p.shape[0]
            x = torch.cat([p[:, 0], p[:, 1]], 0)
            if channels_last:
                x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                g, l = net(x)
            g, l = g.float(), l.float()
            cg, cl = batch["cg"], batch["cl"]
            if "pos_mm2" in batch:  # semi-supervised stream: pairs may span two images
                loss, stats = sam_loss(g[:B], g[B:], l[:B], l[B:], batch["pos"][:, 0], batch["pos"][:, 1],
                                       batch["pos_mm"], cg[:, 0], cg[:, 1], cl[:, 0], cl[:, 1],
                                       batch["pair_ids"], gstride, lstride, loss_config, generator,
                                       pos_mm2=batch["pos_mm2"])
                stats["labelled_pairs"] = (batch["label_pair"][:, 0] >= 0).float().mean()
            else:
                loss, stats = sam_loss(g[:B], g[B:], l[:B], l[B:], batch["pos"][:, 0], batch["pos"][:, 1],
                                       batch["pos_mm"], cg[:, 0], cg[:, 1], cl[:, 0], cl[:, 1],
                                       batch["image_id"], gstride, lstride, loss_config, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.iteration += 1
            state.train_time = time.perf_counter() - t_start
            pending.append((state.iteration, lr_now, state.train_time, stats, time.perf_counter() - t0))
            if progress is not None:
                progress.update(1)
            if len(pending) >= log_every:
                flush()
            if checkpoint is not None and checkpoint_every and state.iteration % checkpoint_every == 0:
                flush()
                checkpoint(state)
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        flush()
        state.train_time = time.perf_counter() - t_start
        net.eval()
    if checkpoint is not None:
        checkpoint(state)
    return state
