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
* :mod:`samlearn.jobs` -- batch jobs over many images that lose nothing, on Dask or torchrun;
* :mod:`samlearn.datasets`, :mod:`samlearn.metrics`, :mod:`samlearn.plot`, :mod:`samlearn.cli`.

The names below are imported on first use (PEP 562), so that ``import samlearn`` -- and the
command line's ``--help`` -- do not pay for torch until it is needed.
"""
import importlib

from ._version import __version__

#: public name -> the sub-package that defines it
_EXPORTS = {
    "Image": "image", "ImageGeometry": "image", "check_images": "image", "check_points": "image",
    "normalize_intensity": "image", "read_image": "image", "read_points": "image", "write_points": "image",
    "SAMEmbedder": "embedding", "load": "embedding",
    "OneShotLandmarkDetector": "apps", "LesionMatcher": "apps", "SAMAffineRegistrar": "apps",
    "SAMDeformableRegistrar": "apps", "LandmarkIntensityFeatures": "apps",
    "SelfTrainedLandmarkDetector": "apps", "suggest_templates": "apps",
    "AffineTransform": "transforms", "DisplacementField": "transforms", "CompositeTransform": "transforms",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samlearn' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
