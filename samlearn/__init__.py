"""samlearn: self-supervised anatomical embeddings (SAM, Yan et al., IEEE TMI 2022) for CT and
X-ray, with a scikit-learn API. Click a point on one image; find the same anatomy in every other."""
from ._version import __version__
from .image import Image, ImageGeometry, check_images, check_points, normalize_intensity, read_image
from .embedder import SAMEmbedder
from .landmarks import OneShotLandmarkDetector
from .lesions import LesionMatcher
from .registration import (AffineTransform, CompositeTransform, DisplacementField, SAMAffineRegistrar,
                           SAMDeformableRegistrar)
from .features import LandmarkIntensityFeatures
from .persistence import load

__all__ = [
    "__version__",
    "Image",
    "ImageGeometry",
    "check_images",
    "check_points",
    "normalize_intensity",
    "read_image",
    "SAMEmbedder",
    "OneShotLandmarkDetector",
    "LesionMatcher",
    "SAMAffineRegistrar",
    "SAMDeformableRegistrar",
    "AffineTransform",
    "DisplacementField",
    "CompositeTransform",
    "LandmarkIntensityFeatures",
    "load",
]
