"""Data-parallel training under ``torchrun``.

Under ``torchrun`` (environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; ``samlearn
train --nproc-per-node N`` launches it) the process group is initialised (NCCL on CUDA, Gloo on
the CPU; this rank's GPU is ``cuda:LOCAL_RANK``, :func:`rank_device`) and the network wrapped in
``torch.nn.parallel.DistributedDataParallel``, which averages the gradients of all ranks. With at
least two images per rank (and no landmark labels) the images are sharded between the ranks. Each
rank draws its own patch pairs and negatives (streams spawned from the run's ``SeedSequence`` by
rank) and computes the loss on its own batch: random negatives come from the other images *of
that rank's batch* (the effective batch is ``world_size * batch_size`` pairs; negatives are not
exchanged between ranks). Stopping is decided identically on every rank (iterations; elapsed time
is agreed on at every flush of :func:`samlearn.training.train`), logged statistics are averaged
over the ranks, BatchNorm running statistics are taken from rank 0 at the end
(:func:`sync_buffers`), so every rank ends with the same weights; only rank 0 writes checkpoints.
"""
from __future__ import annotations

import atexit
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "setup_distributed", "torchrun_env", "rank_device", "sync_buffers"]

logger = logging.getLogger(__name__)


_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_env() -> dict | None:
    """Read the ranks that ``torchrun`` puts in the environment.

    Any launcher that sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` works.

    Returns
    -------
    dict or None
        ``{"rank", "world_size", "local_rank"}`` (ints), or None when the variables are absent.

    Raises
    ------
    ValueError
        If they are not integers or are inconsistent.
    """
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


def rank_device(device: torch.device, distributed="auto", env: dict | None = None) -> torch.device:
    """This rank's device: under ``torchrun`` with ``WORLD_SIZE > 1``, GPU ``cuda:LOCAL_RANK``.

    The rule torchrun users expect (one GPU per rank, ranks numbered per machine): any CUDA device
    -- ``"cuda"``, ``"auto"`` resolved to CUDA, or an explicit ``"cuda:N"`` -- becomes
    ``cuda:LOCAL_RANK``; an explicit index other than ``LOCAL_RANK`` is remapped with a warning
    (``"cuda:0"`` in a script written for one GPU would otherwise put every rank on GPU 0). A
    CPU device, a single process (``WORLD_SIZE`` unset or 1) or ``distributed=False`` leave
    ``device`` as it is.

    Parameters
    ----------
    device : torch.device
        The device asked for, already resolved (``"auto"`` is CUDA when there is a GPU).
    distributed : {"auto", True, False} or None, default "auto"
        The estimator's ``distributed`` setting; False (or None) never remaps.
    env : dict, optional
        The torchrun ranks (:func:`torchrun_env`); read from the environment when not given.

    Returns
    -------
    torch.device
        ``cuda:LOCAL_RANK`` for a CUDA device in a multi-process run, else ``device``.

    Raises
    ------
    ValueError
        When ``LOCAL_RANK`` is not below the number of GPUs this process sees (more ranks per
        machine than GPUs, or ``CUDA_VISIBLE_DEVICES`` hiding them).
    """
    device = torch.device(device)
    if distributed is False or distributed is None or device.type != "cuda":
        return device
    env = env if env is not None else torchrun_env()
    if env is None or env["world_size"] <= 1:
        return device
    local, n_gpus = env["local_rank"], torch.cuda.device_count()
    if local >= n_gpus:
        raise ValueError(f"data-parallel rank {env['rank']} has LOCAL_RANK={local} but this process "
                         f"sees {n_gpus} GPU(s) (cuda:0 .. cuda:{n_gpus - 1}): each rank uses GPU "
                         f"cuda:LOCAL_RANK, so launch at most {n_gpus} processes per machine "
                         f"(--nproc-per-node) and do not restrict CUDA_VISIBLE_DEVICES per rank")
    out = torch.device("cuda", local)
    if device.index is not None and device.index != local:
        warnings.warn(f"device='{device}' is remapped to '{out}' on data-parallel rank {env['rank']}: "
                      f"under torchrun each rank uses its own GPU, cuda:LOCAL_RANK", UserWarning,
                      stacklevel=2)
    elif device != out:
        logger.debug("rank %d trains on %s (cuda:LOCAL_RANK)", env["rank"], out)
    return out


@dataclass
class DistributedContext:
    """The data-parallel group of a training run (``world_size == 1``: a single process).

    Parameters
    ----------
    rank : int, default 0
        This process's rank in the group.
    world_size : int, default 1
        Number of processes.
    local_rank : int, default 0
        Rank on this machine (the CUDA device index).
    backend : str or None, default None
        ``"nccl"`` or ``"gloo"``; None for a single process.
    owns_group : bool, default False
        True when :func:`setup_distributed` created the process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False   # True when setup_distributed created the process group

    @property
    def enabled(self) -> bool:
        """Whether training is data-parallel (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs and writes checkpoints)."""
        return self.rank == 0

    def close(self) -> None:
        """Release this context. A process group it created stays up for the next ``fit`` of the
        process (re-creating a default group over torchrun's store can deadlock when the ranks
        race through the second rendezvous); it is destroyed when the process exits."""
        self.owns_group = False


def _destroy_group_at_exit() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


def setup_distributed(mode, device: torch.device) -> DistributedContext:
    """Join (or create) the process group of a training run.

    Parameters
    ----------
    mode : {"auto", True, False} or None
        ``"auto"``: data-parallel when launched by ``torchrun`` with ``WORLD_SIZE > 1``, or when a
        process group is already initialised; ``True``: the same, but an error when neither is
        the case; ``False`` (or None): a single process.
    device : torch.device
        This rank's device, already chosen (``cuda:LOCAL_RANK`` on GPUs). The backend is NCCL on
        CUDA, Gloo on the CPU.

    Returns
    -------
    DistributedContext
        The group joined (``world_size == 1`` for a single process).

    Raises
    ------
    ValueError
        For an unknown ``mode``, or ``mode=True`` outside ``torchrun`` and any process group.
    RuntimeError
        If this torch build has no ``torch.distributed``.
    """
    if mode is False or mode is None:
        return DistributedContext()
    if mode not in ("auto", True):
        raise ValueError(f"distributed must be 'auto', True or False, got {mode!r}")
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
    atexit.register(_destroy_group_at_exit)
    return DistributedContext(env["rank"], env["world_size"], env["local_rank"], backend, owns_group=True)


def sync_buffers(net, ctx: DistributedContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them before each forward pass, so after the last step each rank holds its own
    update: broadcast once more. Does nothing for a single process.

    Parameters
    ----------
    net : torch.nn.Module
        The (unwrapped) network, its buffers updated in place.
    ctx : DistributedContext
        The run's group.
    """
    if not ctx.enabled:
        return
    with torch.no_grad():
        for buf in net.buffers():
            dist.broadcast(buf, src=0)
