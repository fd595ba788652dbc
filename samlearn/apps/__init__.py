"""The application estimators: thin consumers of a fitted embedder (scikit-learn estimators).

* :class:`OneShotLandmarkDetector` -- landmarks marked on one template, found in any image.
* :class:`SelfTrainedLandmarkDetector` -- a landmark regressor trained on the one-shot detector's
  pseudo-labels of unlabelled images (self-training).
* :func:`suggest_templates` -- which image to annotate as the template, without labels.
* :class:`LesionMatcher` -- lesions from a baseline scan found in follow-ups, or reported absent.
* :class:`SAMAffineRegistrar`, :class:`SAMDeformableRegistrar` -- registration from SAM matches.
* :class:`LandmarkIntensityFeatures` -- intensity features at detected landmarks for scikit-learn
  pipelines.

Each treats its embedder (or detector) as a frozen, pre-trained component
(:mod:`samlearn.apps._base`) and declares its parameter constraints.
"""
from .deformable import SAMDeformableRegistrar
from .features import LandmarkIntensityFeatures
from .landmarks import OneShotLandmarkDetector
from .lesions import LesionMatcher
from .registration import Matches, SAMAffineRegistrar
from .selftraining import SelfTrainedLandmarkDetector
from .template_choice import TemplateSuggestion, suggest_templates

__all__ = ["OneShotLandmarkDetector", "LesionMatcher", "SAMAffineRegistrar", "SAMDeformableRegistrar",
           "Matches", "LandmarkIntensityFeatures", "SelfTrainedLandmarkDetector", "suggest_templates",
           "TemplateSuggestion"]
