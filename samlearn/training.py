"""The SAM training loop: data stream, device, mixed precision, optimiser, schedule, history,
checkpoints and clean interruption. Used by :class:`~samlearn.embedder.SAMEmbedder`; no sklearn here.

* :class:`PairStream` is an ``IterableDataset`` that turns preprocessed source arrays into an endless
  stream of patch pairs (via :mod:`samlearn.augment`), each with its positive pairs and the source
  position in mm of every voxel of the global and local maps. Every DataLoader worker draws from its
  own ``numpy`` generator spawned from one ``SeedSequence``: same seed, same stream. With landmark
  labels for some images it also forms the paper's semi-supervised positives (§IV-H).
* :func:`train` runs optimisation steps until ``max_iter`` or ``max_time`` is reached. The step keeps
  sampling and loss on the device and never synchronises the host with the device (no ``.item()``,
  no ``float(tensor)``, no host-to-device copy from pageable memory, no Python branch on a tensor):
  diagnostics are converted to Python floats only every ``log_every`` iterations (one
  synchronisation per flush), batches arrive from pinned memory with ``non_blocking`` copies while
  DataLoader workers prepare the next ones (``prefetch_factor`` batches each).
* Data-parallel training (:class:`DistributedContext`, :func:`setup_distributed`): under ``torchrun``
  (environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the process group is initialised
  (NCCL on CUDA, Gloo on the CPU) and the network wrapped in
  ``torch.nn.parallel.DistributedDataParallel``, which averages the gradients of all ranks. Each
  rank draws its own patch pairs and negatives (streams spawned from the run's ``SeedSequence`` by
  rank) and computes the loss on its own batch: random negatives come from the other images *of
  that rank's batch* (the effective batch is ``world_size * batch_size`` pairs; negatives are not
  exchanged between ranks). Stopping is decided identically on every rank (iterations; elapsed time
  is agreed on at every flush), logged statistics are averaged over the ranks, BatchNorm running
  statistics are taken from rank 0 at the end, and only rank 0 writes checkpoints.
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

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_env() -> dict | None:
    """``{"rank", "world_size", "local_rank"}`` from the environment set by ``torchrun`` (or any
    launcher that sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), or None when they are absent."""
    if not all(v in os.environ for v in _TORCHRUN_VARS):
        return None
    try:
        out = {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"]),
               "local_rank": int(os.environ["LOCAL_RANK"])}
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         + ", ".join(f"{v}={os.environ[v]!r}" for v in _TORCHRUN_VARS)) from None
    if out["world_size"] < 1 or not (0 <= out["rank"] < out["world_size"]) or out["local_rank"] < 0:
        raise ValueError(f"inconsistent torchrun environment: {out}")
    return out


@dataclass
class DistributedContext:
    """The data-parallel group of a training run (``world_size == 1``: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False   # True when setup_distributed created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Release this context. A process group it created stays up for the next ``fit`` of the
        process (re-creating a default group over torchrun's store can deadlock when the ranks
        race through the second rendezvous); it is destroyed when the process exits."""
        self.owns_group = False


def _destroy_group_at_exit() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def setup_distributed(mode, device: torch.device) -> DistributedContext:
    """Join (or create) the process group for ``mode``: ``"auto"`` (data-parallel when launched
    by ``torchrun`` with ``WORLD_SIZE > 1``, or when a process group is already initialised),
    ``True`` (the same, but an error when neither is the case) or ``False`` (single process).
    ``device`` must already be this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    if mode is False or mode is None:
        return DistributedContext()
    if mode not in ("auto", True):
        raise ValueError(f"distributed must be 'auto', True or False, got {mode!r}")
    import torch.distributed as dist
    env = torchrun_env()
    if dist.is_available() and dist.is_initialized():
        ws, rank = dist.get_world_size(), dist.get_rank()
        local = env["local_rank"] if env else 0
        if ws == 1:
            return DistributedContext()
        return DistributedContext(rank, ws, local, dist.get_backend(), owns_group=False)
    if env is None or env["world_size"] == 1:
        if mode is True:
            raise ValueError("distributed=True but this process was not launched by torchrun "
                             "(RANK, WORLD_SIZE, LOCAL_RANK unset or WORLD_SIZE=1) and no process "
                             "group is initialised; launch with `torchrun --nproc-per-node N ...` "
                             "or `samlearn train --nproc-per-node N ...`")
        return DistributedContext()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; cannot train data-parallel")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    import atexit
    atexit.register(_destroy_group_at_exit)
    return DistributedContext(env["rank"], env["world_size"], env["local_rank"], backend, owns_group=True)

__all__ = ["PairStream", "make_loader", "train", "TrainState", "lr_at", "DistributedContext",
           "setup_distributed", "torchrun_env"]


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
    """Batches of ``stream``; with workers, each keeps 4 batches prepared ahead (augmentation runs
    while the device trains); ``pin_memory`` (on CUDA) lets the step copy batches asynchronously."""
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
          progress=None, log_every: int = 10, channels_last: bool = False, config=None,
          dist_ctx: DistributedContext | None = None) -> TrainState:
    """Optimise ``net`` on batches from ``loader`` until the budget is spent (``max_iter`` total
    iterations, ``max_time`` total seconds of training, counted across resumed runs).

    ``net`` may be a ``DistributedDataParallel`` and/or ``torch.compile`` wrapper; ``config`` is
    the :class:`~samlearn.nn.NetworkConfig` (default ``net.config``). With a data-parallel
    ``dist_ctx`` every rank must call this with the same budget: the stop decision and the logged
    statistics are agreed on at each flush (every ``log_every`` iterations).

    ``checkpoint(state)`` is called every ``checkpoint_every`` iterations, at the end and on
    interruption. Ctrl-C (``KeyboardInterrupt``) stops the loop cleanly: ``state.interrupted`` is set
    and the model stays usable. Returns the updated state.

    ``history`` records per iteration: the loss terms and diagnostics, ``lr``, ``time`` (seconds of
    training so far) and ``step_time`` (host seconds of the step; on CUDA the device runs behind the
    host between flushes, so rates over a window of steps are the accurate measure).
    """
    net.train()
    cfg = config if config is not None else net.config
    ctx = dist_ctx if dist_ctx is not None else DistributedContext()
    gstride, lstride = cfg.global_stride, cfg.local_stride
    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    pending = []  # (iteration, lr, elapsed, stats tensors, step time) awaiting conversion to floats
    budget_iter = max_iter if max_iter is not None else float("inf")
    budget_time = max_time if max_time is not None else float("inf")
    memory_format = torch.channels_last_3d if cfg.ndim == 3 else torch.channels_last
    log_every = max(1, int(log_every))
    synced_time = state.train_time   # elapsed time all ranks agree on (== train_time on one process)
    stop = synced_time >= budget_time

    def flush(collective=True):
        nonlocal synced_time, stop
        elapsed = time.perf_counter() - t_start
        if ctx.enabled and collective:
            import torch.distributed as dist
            stats_list = []
            if pending:  # every rank has the same number of pending steps
                keys = sorted(pending[0][3])
                vals = torch.stack([torch.stack([rec[3][k] for k in keys]) for rec in pending]).float()
                dist.all_reduce(vals, op=dist.ReduceOp.SUM)
                stats_list = [dict(zip(keys, row)) for row in (vals / ctx.world_size).cpu().tolist()]
            t = torch.tensor([elapsed], dtype=torch.float64, device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            synced_time = float(t.item())
        else:
            synced_time = elapsed
            stats_list = [{k: float(v) for k, v in rec[3].items()} for rec in pending]
        for (it, lr_now, el, _, step_time), stats in zip(pending, stats_list):
            rec = {"iteration": it, "lr": lr_now, "time": el, "step_time": step_time}
            rec.update(stats)
            rec["loss"] = rec["loss_global"] * loss_config.global_weight + rec["loss_local"] * loss_config.local_weight
            state.history.append(rec)
        pending.clear()
        if synced_time >= budget_time:
            stop = True
        if progress is not None and state.history:
            last = state.history[-1]
            post = dict(loss=f"{last['loss']:.3f}", it_s=f"{1.0 / max(last['step_time'], 1e-9):.2f}")
            if budget_time != float("inf"):  # a time budget: say how much of it is left
                post["time_left"] = f"{max(0.0, budget_time - synced_time) / 60:.1f}min"
            progress.set_postfix(refresh=False, **post)

    t_start = time.perf_counter() - state.train_time
    data_iter = iter(loader)
    try:
        while state.iteration < budget_iter and not stop:
            t0 = time.perf_counter()
            batch = _to_device(next(data_iter), dev, non_blocking=is_cuda)
            # the time-based schedule reads the time all ranks agree on, so their lr is identical
            t_now = synced_time if ctx.enabled else state.train_time
            progress_frac = max(state.iteration / budget_iter if budget_iter != float("inf") else 0.0,
                                t_now / budget_time if budget_time != float("inf") else 0.0)
            lr_now = lr_at(state.iteration, progress_frac, lr, warmup, schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            p = batch["patches"]                                    # (B, 2, 1, *P)
            B = p.shape[0]
            x = torch.cat([p[:, 0], p[:, 1]], 0)
            if channels_last:
                x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32,
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
            elif not ctx.enabled and state.train_time >= budget_time:
                stop = True  # one process: stop on time at once; ranks stop together at a flush
            if checkpoint_every and state.iteration % checkpoint_every == 0 \
                    and (checkpoint is not None or ctx.enabled):
                if pending:  # on every rank (a collective), also those that write no checkpoint
                    flush()
                if checkpoint is not None:
                    checkpoint(state)
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        # after an interruption the other ranks may not reach a collective: flush locally
        flush(collective=not state.interrupted)
        state.train_time = synced_time if ctx.enabled and not state.interrupted else \
            time.perf_counter() - t_start
        net.eval()
    if checkpoint is not None:
        checkpoint(state)
    return state


def sync_buffers(net, ctx: DistributedContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them before
    each forward pass, so after the last step each rank holds its own update: broadcast once more."""
    if not ctx.enabled:
        return
    import torch.distributed as dist
    with torch.no_grad():
        for buf in net.buffers():
            dist.broadcast(buf, src=0)
