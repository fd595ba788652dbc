"""One training run: a network trained on in-memory arrays until its budget is spent.

:func:`run_training` puts the pieces of this package together (the seeded stream of patch pairs,
its DataLoader, the loss's generator, the data-parallel wrapper, a progress bar, clean stops on
Ctrl-C and SIGTERM) around :func:`~samlearn.training.train`. ``SAMEmbedder.fit`` prepares the
arrays, builds or restores the network and optimiser, and calls it.
"""
from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..nn.loss import LossConfig
from .distributed import DistributedContext, sync_buffers
from .loop import TrainState, train
from .sampler import PatchPairSampler
from .stream import PairStream, make_loader

__all__ = ["run_training", "sigterm_as_interrupt"]


def run_training(net, optimizer, state: TrainState, arrays, spacings, *, sampler: PatchPairSampler,
                 loss_config: LossConfig, n_pos: int, batch_size: int, lr: float, warmup: int,
                 schedule: str, device: torch.device, amp_dtype, max_iter, max_time,
                 data_seed: np.random.SeedSequence, loss_seed: np.random.SeedSequence, labels=None,
                 label_positive_prob: float = 0.5, ctx: DistributedContext | None = None,
                 num_workers=None, compile: bool = False, progress_desc=None, checkpoint=None,
                 checkpoint_every=None, channels_last: bool = False) -> TrainState:
    """Train ``net`` on patch pairs drawn from ``arrays`` until ``max_iter`` / ``max_time``.

    Parameters
    ----------
    net : SAMNet
        The network, on ``device`` (in the memory format given by ``channels_last``).
    optimizer : torch.optim.Optimizer
        Its optimiser (state restored by the caller when continuing).
    state : TrainState
        Iterations, time and history so far (a new ``TrainState()`` for a new run).
    arrays, spacings : list
        Preprocessed source arrays (numpy order) and their voxel sizes in mm (numpy order).
    sampler : PatchPairSampler
        Draws the patch pairs.
    loss_config : LossConfig
        The loss and its negatives.
    n_pos, batch_size : int
        Positive pairs per patch pair; patch pairs per step.
    lr, warmup, schedule : float, int, str
        Learning rate and its schedule (:func:`~samlearn.training.lr_at`).
    device : torch.device
        Where training runs.
    amp_dtype : torch.dtype or None
        Autocast precision (None: float32); fp16 on CUDA trains with a gradient scaler, its state
        kept in ``state.scaler_state`` (:func:`~samlearn.training.loop.make_grad_scaler`).
    max_iter, max_time : int or None, float or None
        Total iterations and seconds of training, counted across resumed runs.
    data_seed, loss_seed : numpy.random.SeedSequence
        Seeds of the patch-pair stream and of the loss's random negatives; with data-parallel
        ``ctx`` each rank spawns its own streams from them, by rank.
    labels : list, optional
        Semi-supervised landmark labels per array (array indices, numpy order; see
        :class:`~samlearn.training.PairStream`).
    label_positive_prob : float, default 0.5
        Probability of a labelled pair for images with labels.
    ctx : DistributedContext, optional
        The data-parallel group (default: one process).
    num_workers : int or None
        DataLoader workers (None: 1 on the CPU, 4 on a GPU).
    compile : bool, default False
        Wrap the network in ``torch.compile``.
    progress_desc : str or None
        Show a progress bar with this label (on rank 0 only); None: no bar.
    checkpoint : callable, optional
        ``checkpoint(state)``, called every ``checkpoint_every`` iterations, at the end and on
        interruption.
    checkpoint_every : int, optional
        Checkpoint period in iterations (None: only at the end and on interruption).
    channels_last : bool, default False
        Feed inputs in the channels-last memory format.

    Returns
    -------
    TrainState
        The state at the end; ``interrupted`` is True when Ctrl-C or SIGTERM stopped the run.
    """
    ctx = ctx if ctx is not None else DistributedContext()
    if ctx.enabled:
        data_seed = data_seed.spawn(ctx.world_size)[ctx.rank]
        loss_seed = loss_seed.spawn(ctx.world_size)[ctx.rank]
    net_cfg = net.config
    stream = PairStream(arrays, spacings, sampler, n_pos, net_cfg.global_stride, net_cfg.local_stride,
                        data_seed, labels=labels, label_positive_prob=label_positive_prob)
    n_workers = num_workers if num_workers is not None else (4 if device.type == "cuda" else 1)
    loader = make_loader(stream, batch_size, n_workers, pin_memory=device.type == "cuda",
                         seed=int(data_seed.generate_state(1)[0]))
    gen = torch.Generator(device=device)
    gen.manual_seed(int(loss_seed.generate_state(1)[0]))

    train_net = net
    if ctx.enabled:
        # the constructor broadcasts rank 0's weights and buffers: every rank starts identical
        train_net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        train_net = torch.compile(train_net)
    progress = None
    if progress_desc is not None and ctx.is_main:
        progress = _progress(progress_desc, state, max_iter, max_time)
    try:
        with sigterm_as_interrupt():
            state = train(train_net, optimizer, loader, state, loss_config=loss_config, device=device,
                          amp_dtype=amp_dtype, max_iter=max_iter, max_time=max_time, lr=lr,
                          warmup=warmup, schedule=schedule, generator=gen, checkpoint=checkpoint,
                          checkpoint_every=checkpoint_every, progress=progress,
                          channels_last=channels_last, config=net_cfg, dist_ctx=ctx)
    finally:
        if progress is not None:
            progress.close()
    if not state.interrupted:
        sync_buffers(net, ctx)
    net.eval()
    return state


def _progress(desc, state, max_iter, max_time):
    """A tqdm bar over the iterations (None without tqdm)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    # with a time budget the iteration count it ends at is unknown: no misleading ETA
    total = max_iter if max_iter is not None and max_iter < 10**7 and max_time is None else None
    return tqdm(total=total, initial=state.iteration, desc=desc, unit="it", dynamic_ncols=True)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """During the block, turn SIGTERM into the same clean stop as Ctrl-C.

    Batch schedulers and ``kill`` send SIGTERM before SIGKILL: the training loop then ends after
    the current step, writes a final checkpoint and returns a usable, partially trained model.
    Only possible in the main thread; elsewhere (and on platforms without SIGTERM) nothing changes.

    Yields
    ------
    None
        Control, with the handler installed; the previous handler is restored on exit.
    """
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - e.g. embedded interpreters
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
