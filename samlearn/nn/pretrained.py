"""Initialise a :class:`SAMNet` backbone from a local torchvision-format ResNet state dict.

For 3D networks the 2D kernels are inflated (I3D: repeat an s x s kernel d times along z and divide
by d, so a volume of identical slices gives the 2D response). The RGB stem is summed over its input
channels for the single-channel medical input. Nothing is downloaded: the caller passes a file
(e.g. ``resnet18-f37072fd.pth`` saved by torchvision); without one the network keeps its random
initialisation. The FPN and heads are always randomly initialised.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .network import SAMNet

__all__ = ["load_torchvision_resnet", "torchvision_key_map"]


def torchvision_key_map(net: SAMNet) -> dict:
    """Our backbone parameter / buffer names -> torchvision ResNet names.

    Parameters
    ----------
    net : SAMNet
        The network.

    Returns
    -------
    dict
        Module prefix of ours (e.g. ``"stages.0.1.conv1"``) -> torchvision's (``"layer1.0.conv1"``);
        the tensor suffixes (``weight``, ``running_mean``, ...) are the same on both sides.
    """
    mapping = {}
    for ours, theirs in (("stem.1", "conv1"), ("stem.2", "bn1")):
        mapping[ours] = theirs
    for i, stage in enumerate(net.stages):
        j_block = 0
        for j, mod in enumerate(stage):
            if mod.__class__.__name__ != "BasicBlock":
                continue
            pre, tv = f"stages.{i}.{j}", f"layer{i + 1}.{j_block}"
            for name in ("conv1", "bn1", "conv2", "bn2"):
                mapping[f"{pre}.{name}"] = f"{tv}.{name}"
            if mod.downsample is not None:
                mapping[f"{pre}.downsample.1"] = f"{tv}.downsample.0"
                mapping[f"{pre}.downsample.2"] = f"{tv}.downsample.1"
            j_block += 1
    return mapping


def _inflate(w2d: torch.Tensor, target_shape) -> torch.Tensor:
    if w2d.dim() == len(target_shape):
        return w2d
    depth = target_shape[2]
    return w2d.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth


def load_torchvision_resnet(net: SAMNet, path) -> SAMNet:
    """Copy a torchvision ResNet state dict from the local file ``path`` into ``net``'s backbone.

    2D kernels are inflated for 3D networks and the RGB stem summed over its input channels (see
    the module docstring); the FPN and heads keep their initialisation.

    Parameters
    ----------
    net : SAMNet
        The network, modified in place.
    path : str or path
        A local state-dict file (optionally under a ``"state_dict"`` key); nothing is downloaded.

    Returns
    -------
    SAMNet
        ``net`` itself.

    Raises
    ------
    FileNotFoundError
        For a missing file.
    ValueError
        When the file cannot be read or does not fit the architecture (use ``width=1.0``, the
        matching ``depth`` and ``stem_kernel=7``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained must be a path to a local state-dict file, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file does not exist: '{path}' (samlearn never downloads weights)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read pretrained weights '{path}': {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"pretrained weights '{path}' is not a state dict")
    own = net.state_dict()
    new = {}
    missing = []
    for ours, theirs in torchvision_key_map(net).items():
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            key = f"{ours}.{suffix}"
            if key not in own:
                continue
            src = sd.get(f"{theirs}.{suffix}")
            if src is None:
                missing.append(f"{theirs}.{suffix}")
                continue
            if ours == "stem.1" and suffix == "weight" and src.shape[1] != own[key].shape[1]:
                src = src.sum(1, keepdim=True)
            if suffix == "weight" and src.dim() == 4 and own[key].dim() == 5:
                src = _inflate(src, own[key].shape)
            if src.shape != own[key].shape:
                raise ValueError(
                    f"pretrained weights '{path}' do not fit this network: {theirs}.{suffix} has shape "
                    f"{tuple(src.shape)}, the network needs {tuple(own[key].shape)} (use width=1.0, the "
                    f"matching depth, stem_kernel=7)")
            new[key] = src.to(own[key].dtype)
    if missing:
        raise ValueError(f"pretrained weights '{path}' lack {len(missing)} backbone tensors, e.g. {missing[:3]}")
    own.update(new)
    net.load_state_dict(own)
    return net
