"""Inference copies of a network: the same maps up to float rounding, computed faster.

* :func:`fuse_conv_bn`: every eval-mode BatchNorm folded into the convolution before it.
* :func:`pointwise_as_matmul`: 1x1(x1) convolutions as one matrix product over the channels of a
  channels-last tensor (CPU kernels do this shape far better as a GEMM).
* :func:`fold_small_conv3d`: a stride-1 3D convolution with few input channels (the stem) as a 2D
  convolution over the slices, the kernel's z taps folded into the input channels.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .network import BasicBlock

__all__ = ["fuse_conv_bn", "pointwise_as_matmul", "fold_small_conv3d"]


def fuse_conv_bn(net):
    """A copy of ``net`` for inference with every BatchNorm folded into the convolution before it.

    Eval-mode BatchNorm is an affine map per channel: the copy gives the same maps up to float
    rounding, with one pass over memory less per convolution.

    Parameters
    ----------
    net : torch.nn.Module
        The network (a :class:`~samlearn.nn.SAMNet`); left unchanged.

    Returns
    -------
    torch.nn.Module
        The fused copy, in eval mode.
    """
    conv_types = (nn.Conv2d, nn.Conv3d)
    bn_types = (nn.BatchNorm2d, nn.BatchNorm3d)
    out = copy.deepcopy(net).eval()
    for m in list(out.modules()):
        if isinstance(m, BasicBlock):
            m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()
            m.conv2, m.bn2 = fuse_conv_bn_eval(m.conv2, m.bn2), nn.Identity()
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], conv_types) and isinstance(m[i + 1], bn_types):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
    return out


class _PointwiseLinear(torch.nn.Module):
    """A 1x1(x1) convolution as one matrix product over the channel axis of a channels-last tensor
    (on the CPU several times faster than the convolution kernels for this shape)."""

    def __init__(self, conv):
        super().__init__()
        self.weight = torch.nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(),
                                                                      requires_grad=False)

    def forward(self, x):
        nd = x.dim()
        perm = (0,) + tuple(range(2, nd)) + (1,)
        inv = (0, nd - 1) + tuple(range(1, nd - 1))
        return F.linear(x.permute(perm), self.weight, self.bias).permute(inv)


class _DepthFoldedConv3d(torch.nn.Module):
    """A stride-1 3D convolution with few input channels computed as a 2D convolution over the
    slices, the kernel's z taps folded into the input channels (``C * kz``), in channels-last
    layout: the result has exactly the ``channels_last_3d`` layout. On the CPU a 2D convolution
    with 3 input channels is far better optimised than a 3D one with 1."""

    def __init__(self, conv):
        super().__init__()
        O, C, kz, kh, kw = conv.weight.shape
        w = conv.weight.detach().permute(0, 2, 1, 3, 4).reshape(O, kz * C, kh, kw)
        self.weight = torch.nn.Parameter(w.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(),
                                                                      requires_grad=False)
        self.kz, self.pad_z, self.padding_hw = kz, conv.padding[0], tuple(conv.padding[1:])

    def forward(self, x):
        N, C, D, H, W = x.shape
        xp = F.pad(x, (0, 0, 0, 0, self.pad_z, self.pad_z))
        Dout = xp.shape[2] - self.kz + 1
        taps = torch.stack([xp[:, :, k:k + Dout] for k in range(self.kz)], 2)    # (N, C, kz, D, H, W)
        taps = taps.permute(0, 3, 2, 1, 4, 5).reshape(N * Dout, self.kz * C, H, W)
        y = F.conv2d(taps.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                     padding=self.padding_hw)                                      # (N*D, O, H', W')
        O = y.shape[1]
        return y.reshape(N, Dout, O, *y.shape[2:]).permute(0, 2, 1, 3, 4)


def fold_small_conv3d(net, max_folded_channels: int = 8):
    """Compute small 3D convolutions (the stem) as 2D convolutions over the slices, in place.

    Every stride-1, ungrouped, undilated, zero-padded 3D convolution of kernel depth above 1 whose
    input channels times kernel depth is at most ``max_folded_channels`` is replaced by a module
    that folds the kernel's z taps into the input channels (``C * kz``) and runs one channels-last
    2D convolution; the result has exactly the ``channels_last_3d`` layout. On the CPU a 2D
    convolution with a few input channels is far better optimised than a 3D one with 1.

    Parameters
    ----------
    net : torch.nn.Module
        The network, modified in place.
    max_folded_channels : int, default 8
        Largest ``in_channels * kernel depth`` folded.

    Returns
    -------
    torch.nn.Module
        ``net`` itself.
    """
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Conv3d) and child.groups == 1 \
                    and all(s == 1 for s in child.stride) and all(d == 1 for d in child.dilation) \
                    and isinstance(child.padding, tuple) and child.padding_mode == "zeros" \
                    and child.in_channels * child.kernel_size[0] <= max_folded_channels \
                    and child.kernel_size[0] > 1:
                setattr(parent, name, _DepthFoldedConv3d(child))
    return net


def pointwise_as_matmul(net):
    """Compute 1x1(x1) convolutions as matrix products over the channels, in place.

    Every 1x1(x1), stride-1, ungrouped convolution is replaced by one ``F.linear`` over the channel
    axis of a channels-last tensor (CPU kernels do this shape far better as a GEMM), for
    channels-last inference copies.

    Parameters
    ----------
    net : torch.nn.Module
        The network, modified in place.

    Returns
    -------
    torch.nn.Module
        ``net`` itself.
    """
    conv_types = (torch.nn.Conv2d, torch.nn.Conv3d)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, conv_types) and all(k == 1 for k in child.kernel_size) \
                    and all(s == 1 for s in child.stride) and child.groups == 1:
                setattr(parent, name, _PointwiseLinear(child))
    return net
