"""A landmark heatmap network on SAM's trunk, its loss and its sub-voxel decoding.

The self-trained landmark detector (:class:`samlearn.SelfTrainedLandmarkDetector`, samlearn's
second stage after the paper's one-shot matching, in the spirit of CC2D's stage 2, Yao et al.,
MICCAI 2021) regresses one heatmap per landmark on the finest FPN level of a
:class:`~samlearn.nn.network.FeaturePyramid`, whose weights can come from a trained SAM.

* Targets: a Gaussian of width ``sigma`` (heatmap voxels) centred on the continuous position of
  each landmark, normalised to sum 1; loss: the cross-entropy of the spatial softmax of the
  logits against it (:func:`heatmap_loss`), weighted per landmark.
* Decoding (:func:`decode_heatmaps`): the peak of the softmax, then the probability-weighted mean
  position in a window around it (sub-voxel); the mass in that window is the score.

Positions are continuous heatmap indices in numpy axis order; voxel ``i`` of a map with stride
``s`` sits on input voxel ``s*i + (s-1)/2`` (:meth:`samlearn.image.ImageGeometry.strided`).

Pure torch: no sklearn, no I/O.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .network import FeaturePyramid, NetworkConfig, _conv, _init_resnet

__all__ = ["HeatmapNet", "heatmap_loss", "decode_heatmaps", "TRUNK_PREFIXES"]

#: state-dict prefixes of the trunk that a trained SAMNet shares with a HeatmapNet
TRUNK_PREFIXES = ("stem.", "stages.", "lateral.")


class HeatmapNet(FeaturePyramid):
    """SAM's encoder and FPN with a heatmap head: one logit map per landmark, at the local stride.

    Parameters
    ----------
    config : NetworkConfig
        The trunk's architecture (that of the SAM model whose weights may initialise it).
    n_points : int
        Landmarks, one output channel each.

    Attributes
    ----------
    config : NetworkConfig
        The trunk's architecture.
    n_points : int
        Landmarks.
    head : torch.nn.Sequential
        3x3(x3) convolution, ReLU, 1x1(x1) convolution to ``n_points`` channels.
    """

    def __init__(self, config: NetworkConfig, n_points: int):
        super().__init__(config)
        conv = _conv(config.ndim)
        c = config.fpn_channels
        self.n_points = int(n_points)
        self.head = nn.Sequential(conv(c, c, 3, padding=1), nn.ReLU(inplace=True), conv(c, self.n_points, 1))
        _init_resnet(self)
        nn.init.normal_(self.head[-1].weight, std=1e-3)
        nn.init.zeros_(self.head[-1].bias)

    def load_trunk(self, state: dict) -> None:
        """Copy a trained SAM's encoder and FPN weights into the trunk.

        Parameters
        ----------
        state : dict of str to torch.Tensor
            A :class:`~samlearn.nn.SAMNet` state dict (its heads are ignored).

        Raises
        ------
        ValueError
            When a trunk weight is missing from ``state`` or has another shape.
        """
        own = self.state_dict()
        trunk = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
        missing = sorted(k for k in own if k.startswith(TRUNK_PREFIXES) and k not in trunk)
        if missing:
            raise ValueError(f"the SAM state lacks trunk weights {missing[:3]}...: another architecture")
        bad = sorted(k for k, v in trunk.items() if k not in own or own[k].shape != v.shape)
        if bad:
            raise ValueError(f"the SAM state's trunk weights {bad[:3]} do not fit this network's")
        self.load_state_dict(trunk, strict=False)

    def freeze_trunk(self) -> None:
        """Train the head alone: the trunk's weights stop learning and its BatchNorm statistics
        stay as they are (the trunk stays in eval mode when :meth:`train` is called)."""
        for name, p in self.named_parameters():
            if name.startswith(TRUNK_PREFIXES):
                p.requires_grad_(False)
        self.trunk_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        """Set train / eval mode; a frozen trunk stays in eval mode.

        Parameters
        ----------
        mode : bool, default True
            Train mode when True.

        Returns
        -------
        HeatmapNet
            This network.
        """
        super().train(mode)
        if getattr(self, "trunk_frozen", False):
            for module in (self.stem, self.stages, self.lateral):
                module.eval()
        return self

    def forward(self, x: torch.Tensor, pad_value: float | None = None) -> torch.Tensor:
        """Heatmap logits of a batch.

        Parameters
        ----------
        x : torch.Tensor of shape ``(n, in_channels, *spatial)``
            The input, padded here to a multiple of the total stride.
        pad_value : float or None, default None
            The padding value; None is the batch minimum.

        Returns
        -------
        torch.Tensor of shape ``(n, n_points, *size)``
            Logits at the local stride, cropped to ``ceil(spatial / stride)``.
        """
        _, p = self.pyramid(x, pad_value)
        out = self.head(p)
        size = self.output_sizes(x.shape[2:])[1]
        return out[(slice(None), slice(None)) + tuple(slice(0, n) for n in size)]


def _grid(shape, device) -> list:
    """Index coordinates of every voxel, one broadcastable tensor per axis."""
    ndim = len(shape)
    out = []
    for a, n in enumerate(shape):
        view = [1] * ndim
        view[a] = n
        out.append(torch.arange(n, device=device, dtype=torch.float32).view(view))
    return out


def _squared_distance(grid, centers: torch.Tensor) -> torch.Tensor:
    """``(n, K, *size)`` squared distances (voxels) of every voxel to ``centers`` ``(n, K, ndim)``."""
    n, k, nd = centers.shape
    d2 = 0.0
    for a, g in enumerate(grid):
        d2 = d2 + (g[None, None] - centers[..., a].reshape(n, k, *([1] * nd))) ** 2
    return d2


def heatmap_loss(logits: torch.Tensor, points: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """Weighted cross-entropy of the spatial softmax against Gaussian targets.

    Parameters
    ----------
    logits : torch.Tensor of shape ``(n, K, *size)``
        The network's output.
    points : torch.Tensor of shape ``(n, K, ndim)``
        Target positions, continuous heatmap indices (numpy axis order).
    weights : torch.Tensor of shape ``(n, K)``
        Non-negative weight of each target (0: not used, e.g. outside the map).
    sigma : float
        Width of the Gaussian target (heatmap voxels).

    Returns
    -------
    torch.Tensor
        A scalar: the weighted mean cross-entropy (0 when every weight is 0).
    """
    n, k = logits.shape[:2]
    spatial = logits.shape[2:]
    d2 = _squared_distance(_grid(spatial, logits.device), points)
    target = torch.softmax((-0.5 * d2 / sigma ** 2).reshape(n, k, -1), dim=-1)
    logp = torch.log_softmax(logits.float().reshape(n, k, -1), dim=-1)
    ce = -(target * logp).sum(-1)
    total = weights.sum()
    return (ce * weights).sum() / total.clamp_min(1e-12)


def decode_heatmaps(logits: torch.Tensor, *, radius: int = 2, centers: torch.Tensor | None = None,
                    max_distance: torch.Tensor | None = None) -> tuple:
    """Sub-voxel landmark positions and scores from heatmap logits.

    Parameters
    ----------
    logits : torch.Tensor of shape ``(n, K, *size)``
        Heatmap logits.
    radius : int, default 2
        Half-width (voxels) of the window around the peak whose probability-weighted mean is the
        position.
    centers : torch.Tensor of shape ``(n, K, ndim)``, optional
        Restrict each peak to within ``max_distance`` voxels of these positions (heatmap indices).
    max_distance : torch.Tensor of shape ``(n, K)``, optional
        The radii of that restriction (voxels); required with ``centers``.

    Returns
    -------
    points : torch.Tensor of shape ``(n, K, ndim)``
        Positions, continuous heatmap indices (numpy axis order).
    scores : torch.Tensor of shape ``(n, K)``
        Probability mass of the window (in [0, 1]): the softmax's confidence.
    """
    n, k = logits.shape[:2]
    spatial = tuple(logits.shape[2:])
    nd = len(spatial)
    prob = torch.softmax(logits.float().reshape(n, k, -1), dim=-1).reshape(n, k, *spatial)
    grid = _grid(spatial, logits.device)
    search = prob
    if centers is not None:
        allowed = _squared_distance(grid, centers) <= (max_distance.reshape(n, k, *([1] * nd)) ** 2)
        search = torch.where(allowed, prob, torch.full_like(prob, -1.0))
    flat = search.reshape(n, k, -1).argmax(-1)
    peak = torch.stack(torch.unravel_index(flat, spatial), dim=-1).float()  # (n, K, nd)
    window = torch.ones_like(prob, dtype=torch.bool)
    for a, g in enumerate(grid):
        window &= (g[None, None] - peak[..., a].reshape(n, k, *([1] * nd))).abs() <= radius
    w = prob * window
    mass = w.reshape(n, k, -1).sum(-1)
    pos = torch.stack([(w * g[None, None]).reshape(n, k, -1).sum(-1) for g in grid], dim=-1)
    pos = pos / mass.clamp_min(1e-12)[..., None]
    return pos, mass
