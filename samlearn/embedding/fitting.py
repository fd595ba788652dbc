"""What one ``SAMEmbedder.fit`` starts from: the training arrays and the network to train.

* :func:`training_arrays` -- the training images read and preprocessed (in threads), each rank of
  a data-parallel run keeping its share, with semi-supervised labels moved to array indices.
* :func:`new_network`, :func:`resumed_network`, :func:`continued_network`,
  :func:`make_optimizer` -- a seeded new network (optionally initialised from local torchvision
  weights), the network, state and optimiser state of a checkpoint or of a fitted estimator, and
  the RAdam optimiser over it.
* :func:`checkpoint_tensors` -- what a checkpoint stores besides its metadata: the weights, the
  optimiser state and, for fp16 training, the gradient scaler's state.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from joblib import Parallel, delayed

from ..exceptions import ModelFileError
from ..image import load_item
from ..nn.network import NetworkConfig, SAMNet
from ..nn.pretrained import load_torchvision_resnet
from ..training import DistributedContext, TrainState
from .config import network_config
from .labels import check_labels_inside
from .model_file import network_from_state, to_cpu
from .preprocessing import preprocess

__all__ = ["training_arrays", "new_network", "resumed_network", "continued_network", "make_optimizer",
           "checkpoint_tensors"]


def training_arrays(items, first, cfg: dict, device, labels, ctx: DistributedContext, n_jobs: int):
    """The working arrays of the training images (what the training stream samples from).

    Parameters
    ----------
    items : list
        Items of :func:`samlearn.image.image_items`.
    first : Image
        ``items[0]``, already read (its dimensionality chose the configuration).
    cfg : dict
        The resolved configuration (working grid and intensity preset).
    device : torch.device
        Where axis-aligned images are resampled on a GPU.
    labels : list or None
        Checked landmark labels per image (world mm), or None.
    ctx : DistributedContext
        With a data-parallel group each rank reads and keeps only its share of the images (when
        every rank gets at least two, so that random negatives from other images exist on every
        rank; with labels every rank keeps every image: labelled pairs span images).
    n_jobs : int
        Threads reading and preprocessing images.

    Returns
    -------
    arrays : list of numpy.ndarray
        Preprocessed arrays (numpy order).
    spacings : list of numpy.ndarray
        Their voxel sizes in mm (numpy order).
    labels : list or None
        Labels in each array's indices (numpy order), or None.
    """
    ndim = first.ndim
    index = list(range(len(items)))
    if ctx.enabled and labels is None and len(items) >= 2 * ctx.world_size:
        index = index[ctx.rank::ctx.world_size]

    def prepare(i):
        im = first if i == 0 else load_item(items[i], ndim, "images", i)
        pre = preprocess(im, cfg, device, where=f"images[{i}]")
        lab = None
        if labels is not None and labels[i] is not None:
            check_labels_inside(labels[i], im, i)
            lab = pre.geometry.world_to_array_index(labels[i])  # world mm -> array indices
        return pre.array, pre.spacing[::-1].copy(), lab

    if n_jobs > 1 and len(index) > 1:
        prepared = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(prepare)(i) for i in index)
    else:
        prepared = [prepare(i) for i in index]
    arrays = [a for a, _, _ in prepared]
    spacings = [sp for _, sp, _ in prepared]
    return arrays, spacings, None if labels is None else [lab for _, _, lab in prepared]


def new_network(net_cfg: NetworkConfig, seed: np.random.SeedSequence, pretrained=None) -> SAMNet:
    """A new network with seeded weights.

    Parameters
    ----------
    net_cfg : NetworkConfig
        The architecture.
    seed : numpy.random.SeedSequence
        The weights are drawn from it (torch's global generator is left as it was).
    pretrained : str, path or None, default None
        A local torchvision ResNet state dict to initialise the backbone from.

    Returns
    -------
    SAMNet
        The network, on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed.generate_state(1)[0]))
        net = SAMNet(net_cfg)
    if pretrained is not None:
        load_torchvision_resnet(net, pretrained)
    return net


def resumed_network(net_cfg: NetworkConfig, checkpoint, path) -> tuple:
    """The network, training state and optimiser state of a checkpoint.

    Parameters
    ----------
    net_cfg : NetworkConfig
        The architecture the estimator's parameters ask for; the checkpoint must have it.
    checkpoint : tuple
        ``(meta, tensors)`` of :func:`~samlearn.embedding.model_file.read_checkpoint`.
    path : str or path
        The checkpoint, for messages.

    Returns
    -------
    net : SAMNet
        The network, on the CPU.
    state : TrainState
        Iterations, time and history of the checkpoint (and its gradient scaler's state).
    optimizer_state : dict or None
        The optimiser state, when the checkpoint holds one.

    Raises
    ------
    ValueError
        If the checkpoint was written by a different architecture.
    """
    meta, tensors = checkpoint
    try:
        same = network_config(meta["config"]).to_dict() == net_cfg.to_dict()
    except (KeyError, TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"checkpoint '{path}' was written by a different network "
                         f"architecture; resume with the parameters that produced it")
    net = network_from_state(net_cfg, tensors, f"checkpoint '{path}'")
    state = TrainState(meta["n_iter"], meta["train_time"], meta["history"],
                       scaler_state=_scaler_state(tensors.get("grad_scaler")))
    return net, state, tensors.get("optimizer")


def continued_network(est) -> tuple:
    """The network, training state and optimiser state of a fitted estimator, to train further.

    Parameters
    ----------
    est : SAMEmbedder
        A fitted estimator (``warm_start`` or ``partial_fit``).

    Returns
    -------
    net : SAMNet
        ``est.network_`` itself.
    state : TrainState
        Its iterations, time, history (a copy) and gradient scaler state.
    optimizer_state : dict or None
        The optimiser state of its last fit (None for a model loaded without one).
    """
    state = TrainState(est.n_iter_, est.train_time_, list(est.history_),
                       scaler_state=_scaler_state(getattr(est, "_scaler_state", None)))
    return est.network_, state, getattr(est, "_optimizer_state", None)


def _scaler_state(obj):
    """A gradient scaler state dict to restore, or None when absent or damaged (a new scaler
    calibrates its scale again within a few steps)."""
    if not isinstance(obj, dict) or not obj:
        return None
    try:
        out = {str(k): float(v) if isinstance(v, float) else int(v) for k, v in obj.items()}
    except (TypeError, ValueError):
        return None
    scale = out.get("scale")
    return out if isinstance(scale, float) and math.isfinite(scale) and scale > 0 else None


def checkpoint_tensors(net, optimizer, state: TrainState) -> dict:
    """The tensors of a training checkpoint: CPU copies of the weights and the optimiser state,
    and the gradient scaler's state (plain numbers) when training runs in fp16.

    Parameters
    ----------
    net : torch.nn.Module
        The network (unwrapped).
    optimizer : torch.optim.Optimizer
        Its optimiser.
    state : TrainState
        The training state; its ``scaler_state`` is stored when set.

    Returns
    -------
    dict
        ``{"network", "optimizer"[, "grad_scaler"]}``, for
        :func:`~samlearn.embedding.model_file.save_payload`.
    """
    tensors = {"network": {k: v.detach().cpu() for k, v in net.state_dict().items()},
               "optimizer": to_cpu(optimizer.state_dict())}
    if state.scaler_state:
        tensors["grad_scaler"] = dict(state.scaler_state)
    return tensors


def make_optimizer(net, cfg: dict, state=None, source: str = "this model") -> torch.optim.RAdam:
    """The RAdam optimiser over ``net``, its state restored when given.

    Parameters
    ----------
    net : torch.nn.Module
        The network.
    cfg : dict
        The configuration; its ``lr`` and ``weight_decay`` are used.
    state : dict, optional
        An optimiser state dict to restore.
    source : str, default "this model"
        Where ``state`` came from, for errors.

    Returns
    -------
    torch.optim.RAdam
        The optimiser.

    Raises
    ------
    ModelFileError
        When ``state`` does not fit the network.
    """
    optimizer = torch.optim.RAdam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if state is not None:
        try:
            optimizer.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"the optimiser state of {source} does not fit the network: "
                                 f"{str(exc)[:200]}") from None
    return optimizer
