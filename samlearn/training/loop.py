"""The SAM training loop: device, mixed precision, optimiser steps, learning-rate schedule,
history, checkpoints and clean interruption. No sklearn here.

:func:`train` runs optimisation steps until ``max_iter`` or ``max_time`` is reached. The step keeps
sampling and loss on the device and never synchronises the host with the device (no ``.item()``,
no ``float(tensor)``, no host-to-device copy from pageable memory, no Python branch on a tensor):
diagnostics are converted to Python floats only every ``log_every`` iterations (one
synchronisation per flush), batches arrive from pinned memory with ``non_blocking`` copies while
DataLoader workers prepare the next ones. With fp16 autocast the loss is scaled by a
``torch.amp.GradScaler`` (:func:`make_grad_scaler`): the gradients are unscaled before the
optimiser step, steps with infinite or NaN gradients are skipped and the scale adapts; its step
reads that inf/NaN flag on the host, the one synchronisation per step of fp16 training (bf16 and
float32 need no scaler). The schedule (:func:`lr_at`: linear warm-up, then
cosine decay to 5%) is samlearn's: the paper trains at a constant rate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..nn.loss import LossConfig, sam_loss
from .distributed import DistributedContext

__all__ = ["train", "TrainState", "lr_at", "make_grad_scaler"]


def lr_at(it: int, progress: float, base_lr: float, warmup: int, schedule: str) -> float:
    """Learning rate at one iteration: linear warm-up, then constant or cosine decay to 5%.

    Parameters
    ----------
    it : int
        Iteration (0-based).
    progress : float
        Fraction of the budget spent, in [0, 1] (from iterations or time, whichever runs out
        first).
    base_lr : float
        The peak learning rate.
    warmup : int
        Iterations of linear warm-up.
    schedule : {"cosine", "constant"}
        After warm-up: cosine decay to 5% of ``base_lr`` over the budget, or constant.

    Returns
    -------
    float
        The learning rate.
    """
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    if schedule == "constant":
        return base_lr
    p = min(max(progress, 0.0), 1.0)
    return base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * p)))


@dataclass
class TrainState:
    """Everything needed to continue a run: iteration count, time spent, history.

    Parameters
    ----------
    iteration : int, default 0
        Optimisation steps done.
    train_time : float, default 0.0
        Seconds of training so far, across resumed runs.
    history : list of dict, optional
        One record per iteration (see :func:`train`); empty by default.
    interrupted : bool, default False
        Whether the last run was stopped by Ctrl-C or SIGTERM.
    scaler_state : dict or None, default None
        The ``state_dict`` of the gradient scaler of fp16 training (plain numbers: the scale and
        its growth tracker), set at every checkpoint and at the end of :func:`train`; restored
        into the scaler of the next run. None without a scaler.
    """

    iteration: int = 0
    train_time: float = 0.0
    history: list = field(default_factory=list)
    interrupted: bool = False
    scaler_state: dict | None = None


def make_grad_scaler(amp_dtype, device, state: dict | None = None):
    """The gradient scaler that training at ``amp_dtype`` on ``device`` needs, or None.

    fp16 has too few exponent bits for small gradients: without scaling they underflow to zero.
    Only fp16 autocast on CUDA gets a scaler; bf16 (float32's exponent range) and float32 need
    none, and samlearn refuses fp16 on the CPU.

    Parameters
    ----------
    amp_dtype : torch.dtype or None
        The autocast precision of training (None: float32).
    device : torch.device or str
        Where training runs.
    state : dict, optional
        A scaler ``state_dict`` to restore (:attr:`TrainState.scaler_state`); an empty or
        missing one starts a new scaler.

    Returns
    -------
    torch.amp.GradScaler or None
        A scaler for fp16 on CUDA, else None.
    """
    dev = torch.device(device)
    if amp_dtype != torch.float16 or dev.type != "cuda":
        return None
    scaler = torch.amp.GradScaler(dev.type)
    if state:
        scaler.load_state_dict(state)
    return scaler


def _save_scaler(scaler, state: TrainState) -> None:
    """Record the scaler's state in ``state`` (reads the scale: a host-device synchronisation)."""
    if scaler is not None and scaler.is_enabled():
        state.scaler_state = {k: (float(v) if isinstance(v, float) else int(v))
                              for k, v in scaler.state_dict().items()}


def _to_device(batch: dict, device, non_blocking: bool) -> dict:
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def train(net, optimizer, loader, state: TrainState, *, loss_config: LossConfig, device,
          amp_dtype, max_iter: int | None, max_time: float | None, lr: float, warmup: int,
          schedule: str, generator: torch.Generator, checkpoint=None, checkpoint_every: int | None = None,
          progress=None, log_every: int = 10, channels_last: bool = False, config=None,
          dist_ctx: DistributedContext | None = None, grad_scaler="auto") -> TrainState:
    """Optimise ``net`` on batches from ``loader`` until the budget is spent.

    Ctrl-C (``KeyboardInterrupt``) stops the loop cleanly: ``state.interrupted`` is set and the
    model stays usable. ``state.history`` records per iteration: the loss terms and diagnostics,
    ``lr``, ``time`` (seconds of training so far) and ``step_time`` (host seconds of the step; on
    CUDA the device runs behind the host between flushes, so rates over a window of steps are the
    accurate measure).

    Parameters
    ----------
    net : torch.nn.Module
        The network; may be a ``DistributedDataParallel`` and/or ``torch.compile`` wrapper. Left
        in eval mode.
    optimizer : torch.optim.Optimizer
        Its optimiser; the learning rate of its groups is set at every step.
    loader : iterable of dict
        Batches of :class:`~samlearn.training.PairStream` samples.
    state : TrainState
        Updated in place.
    loss_config : LossConfig
        The loss and its negatives.
    device : torch.device or str
        Where training runs.
    amp_dtype : torch.dtype or None
        Autocast precision (None: float32); fp16 on CUDA trains with a gradient scaler.
    max_iter : int or None
        Total iterations, counted across resumed runs (None: no limit).
    max_time : float or None
        Total seconds of training, counted across resumed runs (None: no limit).
    lr, warmup, schedule : float, int, str
        Learning rate and its schedule (:func:`lr_at`).
    generator : torch.Generator
        Draws the loss's random negatives (on ``device``).
    checkpoint : callable, optional
        ``checkpoint(state)``, called every ``checkpoint_every`` iterations, at the end and on
        interruption.
    checkpoint_every : int, optional
        Checkpoint period in iterations (None: only at the end and on interruption).
    progress : tqdm or None, optional
        A progress bar, updated every step.
    log_every : int, default 10
        Iterations between flushes (the only host-device synchronisations).
    channels_last : bool, default False
        Feed inputs in the channels-last memory format.
    config : NetworkConfig, optional
        The network's :class:`~samlearn.nn.NetworkConfig` (default ``net.config``).
    dist_ctx : DistributedContext, optional
        The data-parallel group (default: one process). Every rank must call this with the same
        budget: the stop decision and the logged statistics are agreed on at each flush.
    grad_scaler : "auto", torch.amp.GradScaler or None, default "auto"
        Scales the loss for the backward pass (unscaled gradients reach the optimiser; steps with
        infinite gradients are skipped). "auto": :func:`make_grad_scaler` for ``amp_dtype`` and
        ``device``, restored from ``state.scaler_state``; a scaler: used as given; None: none.
        ``state.scaler_state`` records its state at every checkpoint and at the end.

    Returns
    -------
    TrainState
        ``state``, updated.
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
    if isinstance(grad_scaler, str):
        if grad_scaler != "auto":
            raise ValueError(f"grad_scaler must be 'auto', a GradScaler or None, got {grad_scaler!r}")
        scaler = make_grad_scaler(amp_dtype, dev, state.scaler_state)
    else:
        scaler = grad_scaler
    if scaler is not None and not scaler.is_enabled():
        scaler = None
    if scaler is None:
        state.scaler_state = None   # a state from an earlier fp16 run does not describe this one

    def flush(collective=True):
        nonlocal synced_time, stop
        elapsed = time.perf_counter() - t_start
        if ctx.enabled and collective:
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
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                # gradient clipping, if ever added, goes after scaler.unscale_(optimizer) here
                scaler.step(optimizer)   # unscales; skips the step when a gradient is inf / NaN
                scaler.update()
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
                    _save_scaler(scaler, state)
                    checkpoint(state)
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        # after an interruption the other ranks may not reach a collective: flush locally
        flush(collective=not state.interrupted)
        state.train_time = synced_time if ctx.enabled and not state.interrupted else \
            time.perf_counter() - t_start
        _save_scaler(scaler, state)
        net.eval()
    if checkpoint is not None:
        checkpoint(state)
    return state
