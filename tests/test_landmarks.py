"""OneShotLandmarkDetector on an analytic embedder whose correspondences are known exactly."""
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as checks

import samlearn
from samlearn import Image, ImageGeometry, check_images, normalize_intensity
from samlearn import OneShotLandmarkDetector
from samlearn.matching import match_points, template_vectors
from helpers import random_rotation
from fake_embedder import AnalyticEmbedder

SIZES = {2: (64, 56), 3: (36, 32, 22)}
SPACING = {2: (1.3, 0.9), 3: (1.5, 1.2, 2.5)}


def rotation_2d_in(ndim, theta):
    r = np.eye(ndim)
    r[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return r


class Scene:
    """A template image and query images whose anatomy moves by known affines (a = A w + t)."""

    def __init__(self, ndim, n_queries=3, seed=0, n_points=6):
        rng = np.random.default_rng(seed)
        size, sp = np.array(SIZES[ndim]), np.array(SPACING[ndim])
        d = random_rotation(rng, ndim)
        self.ndim = ndim
        self.template = Image(np.zeros(size[::-1], np.float32),
                              ImageGeometry(size, sp, rng.uniform(-50, 50, ndim), d), source="template")
        idx = rng.uniform(0.3, 0.7, size=(n_points, ndim)) * (size - 1)
        self.points = self.template.geometry.index_to_world(idx)
        self.frames, self.queries, self.truth = {}, [], []
        for q in range(n_queries):
            scale = rng.uniform(0.96, 1.05)
            rot = rotation_2d_in(ndim, rng.uniform(-0.12, 0.12))
            a, t = rot * scale, rng.uniform(-5, 5, ndim)
            sp_q = sp / scale * rng.uniform(0.95, 1.1)
            d_q = rot.T @ d
            origin = np.linalg.solve(a, self.template.geometry.origin - t) - d_q @ (sp_q * 2.5)
            name = f"query{q}"
            img = Image(np.zeros(size[::-1], np.float32), ImageGeometry(size, sp_q, origin, d_q), source=name)
            self.frames[name] = (a, t)
            self.queries.append(img)
            self.truth.append(np.linalg.solve(a, (self.points - t).T).T)
        self.truth = np.stack(self.truth)
        self.embedder = AnalyticEmbedder(frames=self.frames, n_channels=64).fit([self.template])

    def local_voxel(self):
        return max(q.geometry.strided(self.embedder.local_stride).spacing.max() for q in self.queries)


@pytest.fixture(scope="module")
def scene2d():
    return Scene(2, seed=1)


@pytest.fixture(scope="module")
def scene3d():
    return Scene(3, seed=2)


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius", ["auto", None])
def test_detector_recovers_affinely_moved_points(ndim, radius, scene2d, scene3d):
    s = scene2d if ndim == 2 else scene3d
    det = OneShotLandmarkDetector(embedder=s.embedder, search_radius_mm=radius)
    assert det.fit(s.template, s.points) is det
    pred, scores = det.predict(s.queries, return_scores=True)
    assert pred.shape == (len(s.queries), len(s.points), ndim)
    assert scores.shape == (len(s.queries), len(s.points))
    err = np.linalg.norm(pred - s.truth, axis=-1)
    assert err.max() < 0.35 * s.local_voxel(), (err.max(), s.local_voxel())
    assert np.all((scores > 0.8) & (scores <= 1.0 + 1e-6))
    assert det.n_points_ == len(s.points) and det.ndim_ == ndim and det.n_templates_ == 1
    assert det.template_global_.shape == det.template_local_.shape == (len(s.points), 64)
    # a single query image gives a batch of one
    assert det.predict(s.queries[0]).shape == (1, len(s.points), ndim)
    assert det.score(s.queries, s.truth) == pytest.approx(-err.mean())


def test_modes_and_batches_are_consistent(scene2d):
    s = scene2d
    base = OneShotLandmarkDetector(embedder=s.embedder).fit(s.template, s.points).predict(s.queries)
    batched = OneShotLandmarkDetector(embedder=s.embedder, batch_size=2, chunk_size=500)
    np.testing.assert_allclose(batched.fit(s.template, s.points).predict(s.queries), base, atol=1e-6)
    for mode, tol in (("global", 0.4), ("local", 0.35)):
        det = OneShotLandmarkDetector(embedder=s.embedder, mode=mode).fit(s.template, s.points)
        err = np.linalg.norm(det.predict(s.queries) - s.truth, axis=-1)
        vox = s.queries[0].geometry.strided(s.embedder.global_stride if mode == "global"
                                            else s.embedder.local_stride).spacing.max()
        assert err.max() < tol * vox * 1.1


def test_detector_output_equals_match_points(scene3d):
    s = scene3d
    det = OneShotLandmarkDetector(embedder=s.embedder, search_radius_mm=9.0).fit(s.template, s.points)
    et, eq = s.embedder.transform([s.template, s.queries[1]])
    gv, lv = template_vectors(et, s.points)
    res = match_points(gv, lv, eq, search_radius_mm=9.0)
    pred, scores = det.predict(s.queries[1], return_scores=True)
    np.testing.assert_allclose(pred[0], res.points, atol=1e-9)
    np.testing.assert_allclose(scores[0], res.scores, atol=1e-9)


@pytest.mark.parametrize("ndim", [2, 3])
def test_several_templates(ndim, scene2d, scene3d):
    s = scene2d if ndim == 2 else scene3d
    # queries 0 and 1 become templates (their truth points mark the same anatomy), query 2 is new
    templates = [s.template, s.queries[0], s.queries[1]]
    points = [s.points, s.truth[0], s.truth[1]]
    det = OneShotLandmarkDetector(embedder=s.embedder).fit(templates, points)
    assert det.n_templates_ == 3 and det.template_points_.shape == (3, len(s.points), ndim)
    err = np.linalg.norm(det.predict(s.queries[2]) - s.truth[2], axis=-1)
    assert err.max() < 0.35 * s.local_voxel()
    # the stored vectors are the average of the single-template vectors
    singles = [OneShotLandmarkDetector(embedder=s.embedder).fit(t, p) for t, p in zip(templates, points)]
    mean_local = np.mean([d.template_local_ for d in singles], 0)
    np.testing.assert_allclose(det.template_local_, mean_local, atol=1e-6)
    # an array (n_templates, n_points, ndim) works as well as a list
    det2 = OneShotLandmarkDetector(embedder=s.embedder).fit(templates, np.stack(points))
    np.testing.assert_allclose(det2.template_global_, det.template_global_)
    # a list holding one template and its (n_points, ndim) array
    det3 = OneShotLandmarkDetector(embedder=s.embedder).fit([s.template], s.points)
    assert det3.n_templates_ == 1


def test_cycle_check_returns_distances(scene2d):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder, cycle_check=True)
    det.fit([s.template, s.queries[0]], [s.points, s.truth[0]])
    assert len(det.template_embeddings_) == 2
    pts, scores, cycle = det.predict(s.queries[1:], return_scores=True)
    assert cycle.shape == scores.shape == (2, len(s.points))
    assert np.all(cycle < s.local_voxel())
    assert det.predict(s.queries[1]).shape == (1, len(s.points), 2)
    det.set_params(cycle_check=False).fit(s.template, s.points)
    assert not hasattr(det, "template_embeddings_")
    assert len(det.predict(s.queries[1], return_scores=True)) == 2


# ----------------------------------------------------------------------------- sklearn behaviour


def test_clone_shares_the_frozen_embedder(scene2d):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder, mode="local", search_radius_mm=7.5, batch_size=2)
    det.fit(s.template, s.points)
    c = clone(det)
    assert c.embedder is s.embedder
    assert c.get_params() == det.get_params()
    assert not hasattr(c, "template_local_")
    with pytest.raises(NotFittedError):
        c.predict(s.queries)
    # deep params do not reach into the frozen embedder
    assert not any(k.startswith("embedder__") for k in det.get_params(deep=True))
    with pytest.raises(ValueError, match="Invalid parameter"):
        det.set_params(embedder__n_channels=8)
    # fitting the detector never refits the embedder
    feats = s.embedder.local_features_
    c.fit(s.template, s.points)
    assert s.embedder.local_features_ is feats


def test_pipeline_clone_and_cross_validation(scene2d):
    s = scene2d
    prep = FunctionTransformer(lambda ims: [normalize_intensity(im, "none") for im in check_images(ims)])
    pipe = Pipeline([("prep", prep), ("detect", OneShotLandmarkDetector(embedder=s.embedder))])
    pipe.fit(s.template, s.points)
    bare = OneShotLandmarkDetector(embedder=s.embedder).fit(s.template, s.points)
    np.testing.assert_allclose(pipe.predict(s.queries), bare.predict(s.queries), atol=1e-9)
    cloned = clone(pipe)
    assert cloned.named_steps["detect"].embedder is s.embedder
    np.testing.assert_allclose(cloned.fit(s.template, s.points).predict(s.queries), bare.predict(s.queries))
    # cross-validation clones the detector, fits on the training images as several templates
    images = [s.template] + s.queries
    points = np.concatenate([s.points[None], s.truth])
    scores = cross_val_score(pipe, images, points, cv=KFold(2))
    assert scores.shape == (2,)
    assert np.all(scores < 0) and np.all(scores > -0.35 * s.local_voxel())


def test_data_free_estimator_checks():
    name = OneShotLandmarkDetector.__name__
    est = OneShotLandmarkDetector()
    checks.check_no_attributes_set_in_init(name, est)
    checks.check_parameters_default_constructible(name, est)
    checks.check_get_params_invariance(name, est)
    checks.check_set_params(name, est)
    checks.check_estimator_repr(name, est)
    checks.check_estimator_cloneable(name, est)


def test_pickle_round_trip(scene3d):
    s = scene3d
    det = OneShotLandmarkDetector(embedder=s.embedder).fit(s.template, s.points)
    back = pickle.loads(pickle.dumps(det))
    np.testing.assert_allclose(back.predict(s.queries[0]), det.predict(s.queries[0]))


def test_fit_does_not_mutate_parameters(scene2d):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder)
    before = det.get_params()
    det.fit(s.template, s.points)
    assert det.get_params() == before and det.search_radius_mm == "auto"


def test_embedder_given_as_a_path(scene2d, monkeypatch, tmp_path):
    s = scene2d
    path = tmp_path / "model.samlearn"
    loaded = []

    def fake_load(p):
        loaded.append(p)
        return s.embedder

    monkeypatch.setattr(samlearn.apps._base, "load", fake_load)
    det = OneShotLandmarkDetector(embedder=path).fit(s.template, s.points)
    assert loaded == [path] and det.embedder_ is s.embedder and det.embedder == path
    err = np.linalg.norm(det.predict(s.queries) - s.truth, axis=-1)
    assert err.max() < 0.35 * s.local_voxel()


# ----------------------------------------------------------------------------- bad input


def test_points_outside_the_template_are_named(scene2d):
    s = scene2d
    bad = s.points.copy()
    bad[[1, 4]] += 500.0
    with pytest.raises(ValueError, match=r"template_points rows \[1, 4\] lie outside the template image"):
        OneShotLandmarkDetector(embedder=s.embedder).fit(s.template, bad)
    second = s.points.copy()
    second[4] -= 300.0
    with pytest.raises(ValueError, match=r"template_points\[1\] rows \[4\] lie outside"):
        OneShotLandmarkDetector(embedder=s.embedder).fit([s.template, s.template], [s.points, second])


def test_bad_shapes_and_dimensions(scene2d, scene3d):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder)
    with pytest.raises(ValueError, match=r"template_points must have shape \(n_points, 2\)"):
        det.fit(s.template, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        det.fit(s.template, np.r_[s.points[:2], [[np.nan, 1.0]]])
    with pytest.raises(ValueError, match="template_image is 3D but the embedder was fitted on 2D"):
        det.fit(scene3d.template, scene3d.points)
    det.fit(s.template, s.points)
    with pytest.raises(ValueError, match="images are 3D but the detector was fitted on 2D"):
        det.predict(scene3d.queries)
    with pytest.raises(TypeError, match="numpy array"):
        det.predict(np.zeros((10, 10)))
    with pytest.raises(ValueError, match=r"points must have shape \(n_images, n_points, ndim\)"):
        det.score(s.queries, s.truth[:, :2])


def test_mismatched_template_lists(scene2d):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder)
    with pytest.raises(ValueError, match="holds 2 point arrays but 3 template images"):
        det.fit([s.template] + s.queries[:2], [s.points, s.truth[0]])
    with pytest.raises(ValueError, match="same points"):
        det.fit([s.template, s.queries[0]], [s.points, s.truth[0][:3]])
    with pytest.raises(ValueError, match="template_points must be a list of 2 point arrays"):
        det.fit([s.template, s.queries[0]], s.points)


def test_unfitted_or_missing_embedder(scene2d):
    s = scene2d
    with pytest.raises(NotFittedError, match="embedder .*AnalyticEmbedder.* is not fitted"):
        OneShotLandmarkDetector(embedder=AnalyticEmbedder()).fit(s.template, s.points)
    with pytest.raises(ValueError, match="embedder is required"):
        OneShotLandmarkDetector().fit(s.template, s.points)
    with pytest.raises(TypeError, match="embedder must be a fitted SAMEmbedder-like"):
        OneShotLandmarkDetector(embedder=object()).fit(s.template, s.points)
    with pytest.raises(NotFittedError):
        OneShotLandmarkDetector(embedder=s.embedder).predict(s.queries)


@pytest.mark.parametrize("param, value, err, msg", [
    ("mode", "max", ValueError, "mode must be one of"),
    ("search_radius_mm", -3.0, ValueError, "search_radius_mm"),
    ("search_radius_mm", "big", ValueError, "search_radius_mm"),
    ("search_radius_mm", [3.0], TypeError, "search_radius_mm"),
    ("refine", "yes", TypeError, "refine must be True or False"),
    ("cycle_check", 1, TypeError, "cycle_check must be True or False"),
    ("batch_size", 0, ValueError, "batch_size must be a positive integer"),
    ("chunk_size", 2.5, ValueError, "chunk_size must be a positive integer"),
])
def test_bad_parameters_are_named_in_fit(scene2d, param, value, err, msg):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder, **{param: value})  # no validation in __init__
    assert getattr(det, param) == value
    with pytest.raises(err, match=msg):
        det.fit(s.template, s.points)


def test_score_ignores_missing_landmarks(scene2d):
    s = scene2d
    det = OneShotLandmarkDetector(embedder=s.embedder).fit(s.template, s.points)
    truth = s.truth.copy()
    truth[0, 2] = np.nan
    pred = det.predict(s.queries)
    err = np.linalg.norm(pred - truth, axis=-1)
    assert det.score(s.queries, truth) == pytest.approx(-np.nanmean(err))


# ----------------------------------------------------------------------------- joint consistency


def test_affine_consistency_repairs_a_global_mismatch(scene2d):
    s = scene2d
    i = 0
    emb_t = s.embedder.transform(s.template)[0]
    tol = float(np.max(emb_t.global_map.geometry.spacing))
    # plant a global mismatch: point i's coarse vector is that of far-away anatomy (similar-looking
    # anatomy elsewhere) while its fine vector stays right
    size = np.array(s.template.size)
    corners = np.stack(np.meshgrid(*[[0.1, 0.9]] * 2, indexing="ij"), -1).reshape(-1, 2) * (size - 1)
    cw = s.template.geometry.index_to_world(corners)
    far = cw[np.argmax(np.linalg.norm(cw - s.points[i], axis=1))]
    assert np.linalg.norm(far - s.points[i]) > 4 * tol  # beyond the default coarse-to-fine window
    g_far, _ = template_vectors(emb_t, far[None])
    preds = {}
    for mode in (None, "affine"):
        det = OneShotLandmarkDetector(embedder=s.embedder, consistency=mode).fit(s.template, s.points)
        det.template_global_[i] = g_far[0].numpy()
        preds[mode] = det.predict(s.queries)
    err_plain = np.linalg.norm(preds[None][:, i] - s.truth[:, i], axis=-1)
    err_fixed = np.linalg.norm(preds["affine"][:, i] - s.truth[:, i], axis=-1)
    assert np.all(err_plain > 2 * tol), err_plain
    assert np.all(err_fixed < 0.5 * s.local_voxel()), err_fixed
    # the other points are untouched by the check
    others = np.arange(len(s.points)) != i
    np.testing.assert_allclose(preds["affine"][:, others], preds[None][:, others])


def test_consistency_parameters_are_checked(scene2d):
    with pytest.raises(ValueError, match="consistency must be"):
        OneShotLandmarkDetector(embedder=scene2d.embedder, consistency="rigid").fit(scene2d.template, scene2d.points)
    with pytest.raises(ValueError, match="consistency_tol_mm"):
        OneShotLandmarkDetector(embedder=scene2d.embedder, consistency="affine",
                                consistency_tol_mm=-1).fit(scene2d.template, scene2d.points)


def _coarse_scene():
    """A 2D pair under an affine plus a smooth 4 mm deformation (analytic embedder: exact matches),
    and 10 landmarks inside the anatomy."""
    from samlearn.matching import body_mask
    from test_registration import Pair
    p = Pair(2, seed=8, deform_mm=4.0)
    _, inside = body_mask(p.fixed, float(np.percentile(p.fixed.array, 50)))
    pts = p.probe(400, seed=5)
    return p, pts[inside(pts)][:10]


def test_coarse_consistency_prior_follows_a_smooth_deformation():
    """consistency='coarse' searches each landmark only within consistency_tol_mm of where the grid
    matches' affine + smooth field put it: with a tight window the result is only right if that
    prior is (the field applied, in the right direction, on the right side of the affine)."""
    p, pts = _coarse_scene()
    truth = p.truth(pts)
    common = dict(embedder=p.embedder, consistency="coarse", coarse_grid_mm=4.0, coarse_max_points=3000,
                  consistency_tol_mm=1.0)
    det = OneShotLandmarkDetector(**common, coarse_smoothing_mm=6.0).fit(p.fixed, pts)
    assert det.coarse_points_.shape[1] == 2 and len(det.coarse_points_) > 100
    assert det.coarse_global_.shape == (len(det.coarse_points_), 64) and det.coarse_grid_mm_ == 4.0
    err = np.linalg.norm(det.predict([p.moving])[0] - truth, axis=1)
    # the same with a field so smooth it is a constant: the prior is then (nearly) affine
    flat = OneShotLandmarkDetector(**common, coarse_smoothing_mm=600.0).fit(p.fixed, pts)
    err_flat = np.linalg.norm(flat.predict([p.moving])[0] - truth, axis=1)
    assert err.max() < 0.25 * p.local_voxel(), err
    assert err.mean() < 0.7 * err_flat.mean(), (err.mean(), err_flat.mean())
    # refitting without it drops the grid; clone keeps the parameters
    det2 = clone(det).set_params(consistency=None).fit(p.fixed, pts)
    assert not hasattr(det2, "coarse_points_") and det2.get_params()["coarse_smoothing_mm"] == 6.0


def test_coarse_consistency_repairs_a_global_mismatch():
    p, pts = _coarse_scene()
    truth = p.truth(pts)
    i = 0
    emb_t = p.embedder.transform(p.fixed)[0]
    tol = float(np.max(emb_t.global_map.geometry.spacing))
    corners = p.fixed.geometry.index_to_world(
        np.stack(np.meshgrid(*[[0.05, 0.95]] * 2, indexing="ij"), -1).reshape(-1, 2) * (np.array(p.fixed.size) - 1))
    far = corners[np.argmax(np.linalg.norm(corners - pts[i], axis=1))]
    assert np.linalg.norm(far - pts[i]) > 3 * tol
    g_far, l_far = template_vectors(emb_t, far[None])
    preds = {}
    for mode in (None, "coarse"):
        det = OneShotLandmarkDetector(embedder=p.embedder, consistency=mode, coarse_grid_mm=4.0,
                                      coarse_smoothing_mm=6.0).fit(p.fixed, pts)
        det.template_global_[i] = g_far[0].numpy()  # similar-looking anatomy far away
        preds[mode] = det.predict([p.moving])[0]
    assert np.linalg.norm(preds[None][i] - truth[i]) > 2 * tol
    assert np.linalg.norm(preds["coarse"][i] - truth[i]) < 0.5 * p.local_voxel()


@pytest.mark.parametrize("params, match", [
    (dict(coarse_grid_mm=-1.0), "coarse_grid_mm"),
    (dict(coarse_grid_mm="fine"), "coarse_grid_mm"),
    (dict(coarse_smoothing_mm=0), "coarse_smoothing_mm"),
    (dict(coarse_max_points=0), "coarse_max_points"),
])
def test_coarse_consistency_parameters_are_checked(params, match):
    p, pts = _coarse_scene()
    with pytest.raises(ValueError, match=match):
        OneShotLandmarkDetector(embedder=p.embedder, consistency="coarse", **params).fit(p.fixed, pts)


def test_coarse_consistency_falls_back_to_the_affine_check_without_a_grid():
    """A grid too coarse for the template's body (fewer than 3 (ndim + 1) points) leaves no field
    to fit: predictions are then exactly those of consistency='affine'."""
    p, pts = _coarse_scene()
    det = OneShotLandmarkDetector(embedder=p.embedder, consistency="coarse", coarse_grid_mm=1e4).fit(p.fixed, pts)
    assert det.coarse_points_.shape == (0, 2)
    aff = OneShotLandmarkDetector(embedder=p.embedder, consistency="affine").fit(p.fixed, pts)
    np.testing.assert_array_equal(det.predict([p.moving]), aff.predict([p.moving]))
    # mode="global" has no fine search to restrict: the affine check as well
    glob = dict(embedder=p.embedder, mode="global")
    np.testing.assert_array_equal(
        OneShotLandmarkDetector(**glob).fit(p.fixed, pts).predict([p.moving]),
        OneShotLandmarkDetector(**glob, consistency="affine").fit(p.fixed, pts).predict([p.moving]))
