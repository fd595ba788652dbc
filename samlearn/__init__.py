"""samlearn: self-supervised anatomical embeddings (SAM, Yan et al., IEEE TMI 2022) for CT and
X-ray, with a scikit-learn API. Click a point on one image; find the same anatomy in every other.

The packages follow the data flow, image -> embedding -> matches -> result:

* :mod:`samlearn.image` -- images with exact world geometry, readers, input and integrity checks;
* :mod:`samlearn.nn` -- the network and the loss (pure torch);
* :mod:`samlearn.training` -- patch pairs with exact correspondences, the training loop, DDP;
* :mod:`samlearn.embedding` -- :class:`SAMEmbedder`, embedding maps, the inference engine, model
  files;
* :mod:`samlearn.matching` -- the similarity search, intensity refinement, point grids;
* :mod:`samlearn.transforms` -- affine and deformable transforms and their fitting;
* :mod:`samlearn.apps` -- the application estimators (landmarks, lesions, registration,
  features);
* :mod:`samlearn.datasets`, :mod:`samlearn.metrics`, :mod:`samlearn.plot`, :mod:`samlearn.cli`.
"""
from ._version import __version__
from .apps import (LandmarkIntensityFeatures, LesionMatcher, OneShotLandmarkDetector, SAMAffineRegistrar,
                   SAMDeformableRegistrar)
from .embedding import SAMEmbedder, load
from .image import Image, ImageGeometry, check_images, check_points, normalize_intensity, read_image
from .transforms import AffineTransform, CompositeTransform, DisplacementField

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
