"""Pure-torch building blocks of SAM: the coarse-to-fine network, the InfoNCE loss with hard and
diverse negatives, and I3D inflation of 2D ImageNet weights. No sklearn, no I/O besides reading a
local weights file on request."""
from .loss import LossConfig, sam_loss
from .network import RESNET_LAYERS, NetworkConfig, SAMBackbone, SAMNet

__all__ = ["LossConfig", "NetworkConfig", "SAMNet", "SAMBackbone", "RESNET_LAYERS", "sam_loss"]
