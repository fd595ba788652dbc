"""The coarse-to-fine SAM network: a 2D/3D ResNet backbone, an FPN, and global / local heads.

Paper §III-A and Fig. 4. The backbone is a ResNet (BasicBlocks; ResNet-18 for CT, ResNet-34 for
X-ray) with the paper's resolution choices: a stem convolution of stride 1, max-pool downsampling in
Conv2_x and strided downsampling elsewhere, and z-stride 1 in Conv3_x / Conv4_x for 3D. An FPN fuses
the stages; the **global** embedding comes from the coarsest FPN level and the **local** one from
the finest, each through its own 3x3(x3) convolution and L2 normalisation. The top-down connection
from the coarsest level into the next one is cut, so global and local stay more independent.

Geometry: downsampling is done by 2x2(x2) max / average pooling before the convolutions (a
"ResNet-D" style down-block), so feature voxel ``i`` of a map with stride ``s`` is centred exactly on
input voxel ``s*i + (s-1)/2``, the convention of :meth:`samlearn.image.ImageGeometry.strided` and of
``F.interpolate(align_corners=False)``. Inputs are padded to a multiple of the total stride and the
maps cropped back to ``ceil(size / stride)``.

Pure torch: no sklearn, no I/O.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._utils.docs import fill_doc

__all__ = ["NetworkConfig", "FeaturePyramid", "SAMNet", "SAMBackbone", "RESNET_LAYERS", "receptive_reach"]

# blocks per stage; "resnet14" halves the two high-resolution stages of ResNet-18 (each stage costs
# about the same), keeping most of its receptive field
RESNET_LAYERS = {"resnet10": (1, 1, 1, 1), "resnet14": (1, 1, 2, 2), "resnet18": (2, 2, 2, 2),
                 "resnet34": (3, 4, 6, 3)}


def _tuple(v, ndim):
    if isinstance(v, int):
        return (v,) * ndim
    v = tuple(int(x) for x in v)
    if len(v) != ndim:
        raise ValueError(f"expected {ndim} values, got {v}")
    return v


@dataclass
class NetworkConfig:
    """Architecture of :class:`SAMNet`. Strides are per axis in numpy order ((z, y, x) for 3D).

    Parameters
    ----------
    ndim : {2, 3}, default 3
        Spatial dimension of the images.
    depth : {"resnet10", "resnet14", "resnet18", "resnet34"}, default "resnet18"
        Blocks per stage (:data:`RESNET_LAYERS`); "resnet14" halves the two high-resolution
        stages of ResNet-18, keeping most of its receptive field.
    width : float, default 1.0
        Channel multiplier of the ResNet, in (0, 4] (1.0 = 64-128-256-512).
    stem_stride : int or sequence of int, default 1
        Stride of the stem (an average pool before its convolution); the paper's is 1.
    stem_kernel : int, default 7
        Kernel size of the stem convolution.
    stage_strides : sequence, default ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
        Strides of Conv2_x (max pool) .. Conv5_x, each an int or one per axis; the paper's for 3D.
    n_stages : int, default 4
        Use the first ``n_stages`` (1 to 4) of Conv2_x .. Conv5_x.
    local_level : int, default 0
        Index of the stage whose FPN level gives the local embedding F^l (0 = Conv2_x).
    fpn_channels : int, default 128
        Channels of the FPN levels.
    embed_dim : int, default 128
        Channels of the global and local embeddings.
    in_channels : int, default 1
        Channels of the input images.
    head : {"conv", "separable"}, default "conv"
        "conv": a dense 3x3(x3) head (the paper's); "separable": depthwise 3x3(x3) + pointwise,
        the same receptive field, far cheaper.
    """

    ndim: int = 3
    depth: str = "resnet18"
    width: float = 1.0                  # channel multiplier of the ResNet (1.0 = 64-128-256-512)
    stem_stride: Sequence[int] | int = 1
    stem_kernel: int = 7
    # strides of Conv2_x (max pool) .. Conv5_x; the paper: 2, (1,2,2), (1,2,2), 2 for 3D
    stage_strides: Sequence = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    n_stages: int = 4                   # use the first n_stages of Conv2_x .. Conv5_x
    local_level: int = 0                # index of the stage whose FPN level gives F^l (0 = Conv2_x)
    fpn_channels: int = 128
    embed_dim: int = 128
    in_channels: int = 1
    head: str = "conv"                  # "conv": dense 3x3(x3) head (paper); "separable": depthwise
                                        # 3x3(x3) + pointwise, same receptive field, far cheaper

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.depth not in RESNET_LAYERS:
            raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {self.depth!r}")
        if not (0 < self.width <= 4):
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if not (1 <= self.n_stages <= 4):
            raise ValueError(f"n_stages must be 1..4, got {self.n_stages}")
        if not (0 <= self.local_level < self.n_stages):
            raise ValueError(f"local_level must be in [0, n_stages), got {self.local_level}")
        if self.head not in ("conv", "separable"):
            raise ValueError(f"head must be 'conv' or 'separable', got {self.head!r}")
        self.stem_stride = _tuple(self.stem_stride, self.ndim)
        self.stage_strides = tuple(_tuple(s, self.ndim) for s in self.stage_strides)[: self.n_stages]
        if len(self.stage_strides) != self.n_stages:
            raise ValueError("stage_strides must give a stride for each stage")

    @property
    def channels(self):
        """Output channels of each used stage (``width`` times 64-128-256-512, at least 8)."""
        return [max(8, int(round(c * self.width))) for c in (64, 128, 256, 512)][: self.n_stages]

    def level_strides(self):
        """Total stride (numpy axis order) of each stage's output.

        Returns
        -------
        list of tuple of int
            One stride tuple per stage, stem stride included.
        """
        out, cur = [], list(self.stem_stride)
        for s in self.stage_strides:
            cur = [a * b for a, b in zip(cur, s)]
            out.append(tuple(cur))
        return out

    @property
    def global_stride(self):
        """Total stride of the global map (the coarsest stage), numpy axis order."""
        return self.level_strides()[-1]

    @property
    def local_stride(self):
        """Total stride of the local map (stage ``local_level``), numpy axis order."""
        return self.level_strides()[self.local_level]

    def to_dict(self):
        """The configuration as a JSON-serialisable dict (strides as lists).

        Returns
        -------
        dict
            Field name -> value; ``NetworkConfig(**d)`` rebuilds it.
        """
        d = asdict(self)
        d["stem_stride"] = list(self.stem_stride)
        d["stage_strides"] = [list(s) for s in self.stage_strides]
        return d


def _conv(ndim):
    return nn.Conv3d if ndim == 3 else nn.Conv2d


def _bn(ndim):
    return nn.BatchNorm3d if ndim == 3 else nn.BatchNorm2d


def _pool(ndim, kind, stride):
    if all(s == 1 for s in stride):
        return nn.Identity()
    if kind == "max":
        return (nn.MaxPool3d if ndim == 3 else nn.MaxPool2d)(kernel_size=stride, stride=stride)
    return (nn.AvgPool3d if ndim == 3 else nn.AvgPool2d)(kernel_size=stride, stride=stride)


class BasicBlock(nn.Module):
    """ResNet basic block. A strided block first pools (2x2 average), then convolves at the lower
    resolution; its shortcut is average-pool + 1x1 conv (ResNet-D), keeping voxel centres aligned."""

    def __init__(self, ndim, cin, cout, stride):
        super().__init__()
        conv, bn = _conv(ndim), _bn(ndim)
        self.pool = _pool(ndim, "avg", stride)
        self.conv1 = conv(cin, cout, 3, padding=1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.bn2 = bn(cout)
        self.relu = nn.ReLU(inplace=True)
        if cin != cout or any(s != 1 for s in stride):
            self.downsample = nn.Sequential(_pool(ndim, "avg", stride), conv(cin, cout, 1, bias=False), bn(cout))
        else:
            self.downsample = None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.pool(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _build_encoder(cfg: NetworkConfig):
    """The ResNet encoder of :class:`SAMNet` (and :class:`SAMBackbone`): ``(stem, stages)``."""
    nd = cfg.ndim
    conv, bn = _conv(nd), _bn(nd)
    ch = cfg.channels
    layers = RESNET_LAYERS[cfg.depth]
    stem_pool = _pool(nd, "avg", cfg.stem_stride)
    stem = nn.Sequential(stem_pool, conv(cfg.in_channels, ch[0], cfg.stem_kernel,
                                         padding=cfg.stem_kernel // 2, bias=False),
                         bn(ch[0]), nn.ReLU(inplace=True))
    stages = []
    cin = ch[0]
    for i in range(cfg.n_stages):
        stride = cfg.stage_strides[i]
        blocks = []
        if i == 0:  # Conv2_x downsamples by max pooling (paper, Fig. 4)
            blocks.append(_pool(nd, "max", stride))
            stride = (1,) * nd
        for j in range(layers[i]):
            blocks.append(BasicBlock(nd, cin, ch[i], stride if j == 0 else (1,) * nd))
            cin = ch[i]
        stages.append(nn.Sequential(*blocks))
    return stem, nn.ModuleList(stages)


def _init_resnet(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit BatchNorms, and the last BN of every residual branch
    zeroed (blocks start as identities)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


@fill_doc
class SAMBackbone(nn.Module):
    """The encoder of :class:`SAMNet` alone: the same ``stem`` and ``stages`` modules (so the same
    state-dict keys, ``stem.*`` and ``stages.<i>.*``), for initialising other networks, e.g. a
    U-Net's encoder for segmentation (paper §IV-G). Load trained weights with
    ``SAMBackbone(config).load_state_dict(embedder.backbone_state_dict())``.

    ``forward(x)`` returns the list of stage outputs (Conv2_x, Conv3_x, ...), stage ``i`` with
    ``config.channels[i]`` channels at total stride ``config.level_strides()[i]``. The input must be
    a multiple of the total stride along every axis (no padding here, unlike :class:`SAMNet`).

    State-dict keys:

    * ``stem.1.weight`` (stem convolution; ``stem.0`` is the stem's pooling, without weights),
      ``stem.2.*`` (its BatchNorm: ``weight``, ``bias``, ``running_mean``, ``running_var``,
      ``num_batches_tracked``);
    * ``stages.<i>.<j>.*`` for stage ``i`` = 0 .. n_stages - 1 (Conv2_x, Conv3_x, ...), block
      ``j`` (in stage 0, ``j = 0`` is the max pool, so its blocks start at 1): ``conv1.weight``,
      ``bn1.*``, ``conv2.weight``, ``bn2.*`` and, for blocks that change resolution or width,
      ``downsample.1.weight`` (1x1 conv) and ``downsample.2.*`` (BN).

    Parameters
    ----------
    config : NetworkConfig
        The architecture of the :class:`SAMNet` whose encoder this is.

    Attributes
    ----------
    %(config)s
    stem, stages : torch.nn.Module
        The stem and the ``ModuleList`` of stages, as in :class:`SAMNet`.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.stem, self.stages = _build_encoder(config)
        _init_resnet(self)

    @property
    def channels(self):
        """Output channels of each stage."""
        return list(self.config.channels)

    def forward(self, x: torch.Tensor):
        """The stage outputs of a batch.

        Parameters
        ----------
        x : torch.Tensor of shape ``(n, in_channels, *spatial)``
            The input; each spatial size a multiple of the total stride (no padding here).

        Returns
        -------
        list of torch.Tensor
            The outputs of Conv2_x, Conv3_x, ..., stage ``i`` with ``config.channels[i]`` channels
            at total stride ``config.level_strides()[i]``.
        """
        tot = self.config.global_stride
        if any(n % s for n, s in zip(x.shape[2:], tot)):
            raise ValueError(f"input spatial shape {tuple(x.shape[2:])} must be a multiple of the "
                             f"total stride {tuple(tot)} on every axis")
        feats = []
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats


@fill_doc
class FeaturePyramid(nn.Module):
    """The ResNet encoder and FPN of :class:`SAMNet`, without heads: the trunk that heads share.

    :class:`SAMNet` adds the global and local embedding heads; other networks initialised from a
    trained SAM (e.g. :class:`samlearn.nn.HeatmapNet`) add their own. The module names (``stem``,
    ``stages``, ``lateral``) are :class:`SAMNet`'s, so a SAM state dict loads into any subclass.

    Parameters
    ----------
    %(config)s

    Attributes
    ----------
    %(config)s
    stem, stages : torch.nn.Module
        The ResNet encoder: the stem, and the ``ModuleList`` of stages (Conv2_x, ...).
    lateral : torch.nn.ModuleList
        The FPN's 1x1(x1) lateral convolutions, from stage ``local_level`` to the coarsest.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = cfg = config
        conv = _conv(cfg.ndim)
        ch = cfg.channels
        self.stem, self.stages = _build_encoder(cfg)
        self.lateral = nn.ModuleList([conv(ch[i], cfg.fpn_channels, 1) for i in range(cfg.local_level, cfg.n_stages)])

    @property
    def total_stride(self):
        """Total stride of the network (the global map's), numpy axis order."""
        return self.config.global_stride

    def output_sizes(self, spatial):
        """Sizes (numpy order) of the global and local maps for an input of shape ``spatial``.

        Parameters
        ----------
        spatial : sequence of int
            The input's spatial shape, numpy order.

        Returns
        -------
        global_size, local_size : tuple of int
            ``ceil(spatial / stride)`` for the global and the local stride.
        """
        g = tuple(math.ceil(n / s) for n, s in zip(spatial, self.config.global_stride))
        loc = tuple(math.ceil(n / s) for n, s in zip(spatial, self.config.local_stride))
        return g, loc

    def pyramid(self, x: torch.Tensor, pad_value: float | None = None):
        """The FPN's coarsest and finest levels of a batch, before any head.

        Parameters
        ----------
        x : torch.Tensor of shape ``(n, in_channels, *spatial)``
            The input, padded here to a multiple of the total stride.
        pad_value : float or None, default None
            The padding value; None is the batch minimum.

        Returns
        -------
        p_global, p_local : torch.Tensor
            ``(n, fpn_channels, *size)`` at the global and the local stride, for the padded input
            (not cropped).
        """
        cfg = self.config
        pad = [(-n) % s for n, s in zip(x.shape[2:], cfg.global_stride)]
        if any(pad):
            fill = float(x.amin()) if pad_value is None else pad_value
            padding = []
            for p in reversed(pad):  # F.pad wants the last axis first
                padding += [0, p]
            x = F.pad(x, padding, value=fill)
        feats = []
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        lat = [conv(feats[cfg.local_level + i]) for i, conv in enumerate(self.lateral)]
        # top-down pathway below the coarsest level; the coarsest -> next connection is cut
        p = lat[-2] if len(lat) > 1 else lat[-1]
        for lvl in range(len(lat) - 3, -1, -1):
            p = lat[lvl] + F.interpolate(p, size=lat[lvl].shape[2:], mode="bilinear" if cfg.ndim == 2 else "trilinear",
                                         align_corners=False)
        return lat[-1], p


@fill_doc
class SAMNet(FeaturePyramid):
    """ResNet + FPN with a global head on the coarsest level and a local head on ``local_level``.

    See the module docstring for the architecture and its geometry.

    Parameters
    ----------
    %(config)s

    Attributes
    ----------
    %(config)s
    stem, stages : torch.nn.Module
        The ResNet encoder: the stem, and the ``ModuleList`` of stages (Conv2_x, ...).
    lateral : torch.nn.ModuleList
        The FPN's 1x1(x1) lateral convolutions, from stage ``local_level`` to the coarsest.
    global_head, local_head : torch.nn.Module
        The heads of the global and local embeddings.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__(config)
        self.global_head = self._head(config)
        self.local_head = self._head(config)
        self._init_weights()

    @staticmethod
    def _head(cfg):
        conv = _conv(cfg.ndim)
        if cfg.head == "conv":
            return conv(cfg.fpn_channels, cfg.embed_dim, 3, padding=1)
        return nn.Sequential(conv(cfg.fpn_channels, cfg.fpn_channels, 3, padding=1, groups=cfg.fpn_channels),
                             conv(cfg.fpn_channels, cfg.embed_dim, 1))

    def _init_weights(self):
        _init_resnet(self)

    def forward(self, x: torch.Tensor, pad_value: float | None = None):
        """The global and local embedding maps of a batch.

        Parameters
        ----------
        x : torch.Tensor of shape ``(n, in_channels, *spatial)``
            The input, padded here to a multiple of the total stride.
        pad_value : float or None, default None
            The padding value; None is the batch minimum.

        Returns
        -------
        F_global, F_local : torch.Tensor
            The maps, ``(n, embed_dim, *size)``, L2-normalised along the channel axis and cropped
            to ``ceil(spatial / stride)`` (:meth:`output_sizes`).
        """
        p_global, p = self.pyramid(x, pad_value)
        g = F.normalize(self.global_head(p_global), dim=1)
        loc = F.normalize(self.local_head(p), dim=1)
        gs, ls = self.output_sizes(x.shape[2:])
        g = g[(slice(None), slice(None)) + tuple(slice(0, n) for n in gs)]
        loc = loc[(slice(None), slice(None)) + tuple(slice(0, n) for n in ls)]
        return g, loc


@fill_doc
def receptive_reach(config: NetworkConfig):
    """How far (input voxels) a map voxel's value can depend on input beyond its stride cell.

    Feature voxel ``i`` of a map with stride ``s`` covers the input cell ``[s*i, s*i + s - 1]``; its
    value depends only on input voxels within ``reach`` of that cell on each side. An upper bound,
    derived from the architecture (3x3(x3) convolutions, pooling with kernel = stride, the FPN's
    two-tap linear upsampling, the 3x3(x3) heads); used to choose the halo of tiled inference, which
    then reproduces a one-pass embedding exactly (up to float rounding) when BatchNorm is in eval
    mode. ``tests/test_inference.py`` checks the bound against gradients of a random network.

    Parameters
    ----------
    %(config)s

    Returns
    -------
    global_reach, local_reach : tuple of int
        The reach of the global and of the local map, per axis in numpy order.
    """
    cfg = config
    nd = cfg.ndim
    layers = RESNET_LAYERS[cfg.depth]
    glob, loc = [], []
    for d in range(nd):
        jump = cfg.stem_stride[d]
        reach = (cfg.stem_kernel // 2) * jump
        stage_reach, stage_jump = [], []
        for i in range(cfg.n_stages):
            jump *= cfg.stage_strides[i][d]          # max pool (stage 0) or the first block's pool
            reach += 2 * jump * layers[i]            # two 3x3(x3) convolutions per block
            stage_reach.append(reach)
            stage_jump.append(jump)
        top = cfg.n_stages - 1
        glob.append(stage_reach[top] + stage_jump[top])  # + global head (3x3(x3))
        lvl = top - 1 if top > cfg.local_level else top
        r = stage_reach[lvl]
        for f in range(lvl - 1, cfg.local_level - 1, -1):  # top-down: upsample level f+1 onto f
            jc, jf = stage_jump[f + 1], stage_jump[f]
            r = max(stage_reach[f], r + jc + math.ceil((jc - jf) / 2))
        loc.append(r + stage_jump[cfg.local_level])       # + local head (3x3(x3))
    return tuple(glob), tuple(loc)
