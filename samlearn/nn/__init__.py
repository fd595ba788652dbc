"""Pure-torch building blocks of SAM: the coarse-to-fine network, the InfoNCE loss with hard and
diverse negatives, I3D inflation of 2D ImageNet weights, and a landmark heatmap network on SAM's
trunk. No sklearn, no I/O besides reading a
local weights file on request."""
from .heatmap import HeatmapNet
from .loss import LossConfig, sam_loss
from .network import RESNET_LAYERS, FeaturePyramid, NetworkConfig, SAMBackbone, SAMNet

__all__ = ["LossConfig", "NetworkConfig", "FeaturePyramid", "SAMNet", "SAMBackbone", "HeatmapNet", "RESNET_LAYERS",
           "sam_loss"]
