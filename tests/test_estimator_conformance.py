"""Conformance of every public samlearn estimator: sklearn's data-free checks and their image-based
equivalents (tests/estimator_checks.py). Add an estimator by appending its EstimatorCase to CASES."""
from functools import lru_cache

import numpy as np
import pytest

from sklearn.pipeline import Pipeline

from samlearn import (Image, ImageGeometry, LandmarkIntensityFeatures, LesionMatcher, OneShotLandmarkDetector,
                      SAMAffineRegistrar, SAMDeformableRegistrar)
from helpers import random_rotation, smooth_images, tiny_embedder
from estimator_checks import EstimatorCase, samlearn_checks
from fake_embedder import AnalyticEmbedder


# ------------------------------------------------------------------------------------ data


@lru_cache(maxsize=None)
def train_images_2d():
    return tuple(smooth_images(3, ndim=2, seed=0))


@lru_cache(maxsize=None)
def fitted_tiny_embedder():
    return tiny_embedder(random_state=0).fit(list(train_images_2d()))


def _translated(image, shift):
    g = image.geometry
    return Image(image.array, ImageGeometry(g.size, g.spacing, g.origin + shift, g.direction),
                 source=f"{image.source or 'image'}+{np.round(shift, 2).tolist()}")


@lru_cache(maxsize=None)
def sam_scene():
    """A template, translated copies with exactly known landmark positions (the network sees the
    same pixels on a shifted grid), and 4 world points inside the template."""
    template = train_images_2d()[0]
    idx = np.array([[15.0, 20.0], [40.0, 30.0], [30.0, 45.0], [50.0, 12.0]])
    points = template.geometry.array_index_to_world(idx)
    shifts = [np.array([3.0, -2.0]), np.array([-5.5, 4.25]), np.array([0.0, 7.0])]
    queries = [_translated(template, s) for s in shifts]
    truth = np.stack([points + s for s in shifts])
    return template, points, queries, truth


@lru_cache(maxsize=None)
def analytic_scene():
    """Images on different grids (rotated, anisotropic) over one world region; the analytic
    embedder's vectors depend on world position only, so every landmark stays where it is."""
    rng = np.random.default_rng(5)
    size, sp = np.array([48, 40]), np.array([1.2, 0.9])
    images = []
    for k in range(4):
        d = random_rotation(rng, 2)
        centre = np.array([10.0, -5.0])
        origin = centre - d @ (sp * (size - 1) / 2) + rng.uniform(-2, 2, 2)
        # content for the estimators that read intensities (features, registration's body mask);
        # the analytic embedder itself looks at world positions only
        content = rng.normal(100.0, 20.0, size[::-1]).astype(np.float32)
        images.append(Image(content, ImageGeometry(size, sp * rng.uniform(0.9, 1.1), origin, d), source=f"a{k}"))
    points = np.array([[10.0, -5.0], [4.0, 0.0], [15.0, -9.0]])
    embedder = AnalyticEmbedder(n_channels=32).fit(images[:1])
    return embedder, images, points


# ------------------------------------------------------------------------------------ cases


def embedder_case():
    def output(est):
        embs = est.transform(list(train_images_2d()[:2]))
        return np.concatenate([np.concatenate([e.global_map.data.numpy().ravel(), e.local_map.data.numpy().ravel()])
                               for e in embs])

    return EstimatorCase(
        name="SAMEmbedder",
        make=lambda: tiny_embedder(random_state=0),
        fit_args=lambda: (list(train_images_2d()),),
        output=output,
        methods={"transform": lambda: (list(train_images_2d()[:1]),), "embed": lambda: (train_images_2d()[0],)},
    )


def detector_analytic_case():
    # everything is built lazily (at the first check, not at collection), then cached
    scene = analytic_scene
    return EstimatorCase(
        name="OneShotLandmarkDetector[analytic]",
        make=lambda: OneShotLandmarkDetector(embedder=scene()[0]),
        fit_args=lambda: (scene()[1][0], scene()[2]),
        output=lambda est: est.predict(scene()[1][1:]),
        methods={"predict": lambda: (scene()[1][1:],),
                 "score": lambda: (scene()[1][1:], np.stack([scene()[2]] * 3))},
        shared_params=("embedder",),
        grid={"search_radius_mm": ["auto", None, 6.0], "mode": ["sum", "local"]},
        cv_data=lambda: (scene()[1], np.stack([scene()[2]] * 4)),
    )


def detector_sam_case():
    scene = sam_scene  # (template, points, queries, truth)
    return EstimatorCase(
        name="OneShotLandmarkDetector[SAMEmbedder]",
        make=lambda: OneShotLandmarkDetector(embedder=fitted_tiny_embedder()),
        fit_args=lambda: (scene()[0], scene()[1]),
        output=lambda est: est.predict(scene()[2]),
        methods={"predict": lambda: (scene()[2],), "score": lambda: (scene()[2], scene()[3])},
        shared_params=("embedder",),
        grid={"search_radius_mm": ["auto", None]},
        cv_data=lambda: ([scene()[0]] + scene()[2], np.concatenate([scene()[1][None], scene()[3]])),
    )


def _last(est):
    """The estimator itself, or the last step of a Pipeline ending in it."""
    return est[-1] if isinstance(est, Pipeline) else est


def lesion_case():
    scene = analytic_scene
    boxes = lambda: np.stack([np.concatenate([scene()[2] - 3.0, scene()[2] + 3.0], axis=1)] * 3)  # noqa: E731
    return EstimatorCase(
        name="LesionMatcher[analytic]",
        make=lambda: LesionMatcher(embedder=scene()[0]),
        fit_args=lambda: (scene()[1][0], scene()[2]),
        output=lambda est: est.predict(scene()[1][1:]),
        methods={"predict": lambda: (scene()[1][1:],), "match": lambda: (scene()[1][1:],),
                 "score": lambda: (scene()[1][1:], boxes())},
        shared_params=("embedder",),
        skip={"check_grid_search": "fit takes one template image: GridSearchCV cannot split it into folds"},
    )


def registrar_case(cls, **params):
    scene = analytic_scene
    probe = lambda: scene()[2]  # noqa: E731
    return EstimatorCase(
        name=f"{cls.__name__}[analytic]",
        make=lambda: cls(embedder=scene()[0], grid_spacing_mm=6.0, body_threshold=None, random_state=0, **params),
        fit_args=lambda: (scene()[1][0], scene()[1][1]),
        output=lambda est: _last(est).transform_points(probe()),
        methods={"transform_points": lambda: (probe(),), "resample": lambda: (scene()[1][1],)},
        shared_params=("embedder",),
        skip={"check_grid_search": "fit registers one image pair: there is nothing to split into folds"},
    )


def features_case():
    scene = analytic_scene

    def detector():
        return OneShotLandmarkDetector(embedder=scene()[0]).fit(scene()[1][0], scene()[2])

    return EstimatorCase(
        name="LandmarkIntensityFeatures[analytic]",
        make=lambda: LandmarkIntensityFeatures(detector=_cached_detector(detector), radius_mm=2.0),
        fit_args=lambda: (scene()[1],),
        output=lambda est: est.transform(scene()[1]),
        methods={"transform": lambda: (scene()[1],), "get_feature_names_out": lambda: ()},
        shared_params=("detector",),
        skip={"check_grid_search": "a transformer with no score; tests/test_features.py cross-validates it in a "
                                   "classification pipeline"},
    )


_DETECTORS = {}


def _cached_detector(make):
    """One fitted detector shared by every features estimator (a frozen component)."""
    if "d" not in _DETECTORS:
        _DETECTORS["d"] = make()
    return _DETECTORS["d"]


CASES = [embedder_case(), detector_analytic_case(), detector_sam_case(), lesion_case(),
         registrar_case(SAMAffineRegistrar), registrar_case(SAMDeformableRegistrar, dense_grid_spacing_mm=6.0),
         features_case()]


@pytest.mark.parametrize("case, check", list(samlearn_checks(CASES)))
def test_conformance(case, check):
    check(case)


def test_translated_copies_are_found_exactly():
    """The SAM scene's truth is exact: the detector finds translated copies' landmarks to float
    precision (the same pixels on a shifted grid give the same embedding, shifted)."""
    template, points, queries, truth = sam_scene()
    det = OneShotLandmarkDetector(embedder=fitted_tiny_embedder()).fit(template, points)
    own = det.predict(template)[0]
    np.testing.assert_allclose(det.predict(queries), own[None] + (truth - points[None]), atol=1e-6)


# ------------------------------------------------------------------------------------ the checks can fail


from sklearn.base import BaseEstimator  # noqa: E402
from sklearn.utils.validation import check_is_fitted  # noqa: E402

import estimator_checks as ec  # noqa: E402
from samlearn import check_images  # noqa: E402


class GoodEstimator(BaseEstimator):
    """A minimal image estimator (mean intensity plus seeded noise); each subclass below breaks
    one rule, and the check for that rule must catch it."""

    def __init__(self, *, scale=1.0, random_state=0):
        self.scale = scale
        self.random_state = random_state

    def fit(self, images, y=None):
        ims = check_images(images)
        rng = np.random.default_rng(self.random_state)
        self.level_ = self.scale * float(np.mean([im.array.mean() for im in ims])) + rng.normal()
        return self

    def predict(self, images):
        check_is_fitted(self)
        return np.array([self.level_ + im.array.mean() for im in check_images(images)])

    def score(self, images, y=None):
        return -float(np.abs(self.predict(images)).mean())


class MutatesParameter(GoodEstimator):
    def fit(self, images, y=None):
        self.scale = self.scale * 2
        return super().fit(images)


class UsesGlobalRNG(GoodEstimator):
    def fit(self, images, y=None):
        super().fit(images)
        self.level_ += np.random.normal()
        return self


class Unseeded(GoodEstimator):
    def fit(self, images, y=None):
        super().fit(images)
        self.level_ += np.random.default_rng().normal()
        return self


class WritesIntoInput(GoodEstimator):
    def fit(self, images, y=None):
        for im in check_images(images):
            im.array -= im.array.mean()
        return super().fit(images)


class PredictsUnfitted(GoodEstimator):
    def predict(self, images):
        return np.array([getattr(self, "level_", 0.0) for _ in check_images(images)])


class FitReturnsNone(GoodEstimator):
    def fit(self, images, y=None):
        super().fit(images)


class ForgetsWhenPickled(GoodEstimator):
    def __getstate__(self):
        state = dict(self.__dict__)
        if "level_" in state:
            state["level_"] = round(state["level_"], 2)
        return state


class CloneKeepsState(GoodEstimator):
    def __sklearn_clone__(self):
        import copy
        return copy.deepcopy(self)


def _case_for(cls):
    images = [im.copy() for im in train_images_2d()]
    return EstimatorCase(name=cls.__name__, make=lambda: cls(), fit_args=lambda: (images,),
                         output=lambda est: est.predict(images), methods={"predict": lambda: (images,)},
                         grid={"scale": [1.0, 2.0]}, cv_data=lambda: (images + images, None))


@pytest.mark.parametrize("cls, check", [
    (MutatesParameter, ec.check_params_not_mutated_by_fit),
    (UsesGlobalRNG, ec.check_global_rng_untouched),
    (Unseeded, ec.check_fit_idempotent),
    (WritesIntoInput, ec.check_inputs_not_mutated),
    (PredictsUnfitted, ec.check_unfitted_raises_not_fitted),
    (FitReturnsNone, ec.check_fit_returns_self),
    (ForgetsWhenPickled, ec.check_pickle_round_trip),
    (CloneKeepsState, ec.check_clone_of_fitted_is_unfitted),
])
def test_checks_catch_their_violation(cls, check):
    good = _case_for(GoodEstimator)
    check(good)  # the well-behaved estimator passes ...
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(_case_for(cls))  # ... the broken one does not
