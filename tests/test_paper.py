"""The paper's configurations (samlearn.paper): every listed difference is a real default of the
estimator, and ``paper_params`` gives each estimator the paper's rule, checked against an
independent implementation of that rule."""
import inspect

import numpy as np
import pytest
import torch

import samlearn
from fake_embedder import AnalyticEmbedder
from helpers import smooth_images, tiny_embedder
from samlearn import (Image, ImageGeometry, LesionMatcher, OneShotLandmarkDetector, SAMAffineRegistrar,
                      SAMDeformableRegistrar, SAMEmbedder)
from samlearn.matching import upsample_to_grid
from samlearn.paper import DIFFERENCES, paper_params
from samlearn.presets import PRESETS

ESTIMATORS = {c.__name__: c for c in (SAMEmbedder, OneShotLandmarkDetector, LesionMatcher, SAMAffineRegistrar,
                                      SAMDeformableRegistrar)}


@pytest.mark.parametrize("diff", [d for d in DIFFERENCES if d.parameter is not None],
                         ids=lambda d: f"{d.estimator}.{d.parameter}")
def test_every_difference_is_a_real_default(diff):
    cls = ESTIMATORS[diff.estimator]
    default = inspect.signature(cls).parameters[diff.parameter].default
    if diff.estimator == "SAMEmbedder" and default is None:  # a preset key: check every preset
        values = {p[diff.parameter] for p in PRESETS.values()}
        if diff.parameter == "warmup_iter":
            assert values == {100, 500} and 0 not in values
        elif diff.parameter == "transform_scale":
            assert values == {0.75, 1.0}
        else:
            assert values == {diff.default}, values
    else:
        assert default == diff.default, f"{diff.estimator}.{diff.parameter} defaults to {default!r}"
    assert diff.paper != default


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_paper_params_are_valid_parameters(name):
    params = paper_params(name)
    est = ESTIMATORS[name](**params)
    assert est.get_params()[next(iter(params))] == params[next(iter(params))]
    samlearn._utils.validation.validate_params(est.get_params(deep=False), est._parameter_constraints)
    with pytest.raises(ValueError, match="estimator must be one of"):
        paper_params("Nope")


# ------------------------------------------------------------------------------------ the rules


def _scene(shift=(4.0, -3.0)):
    """Axis-aligned template and query (no padding of the working grid), the query's anatomy
    shifted by a known vector, and an analytic embedder that knows it."""
    shift = np.asarray(shift)
    geom = ImageGeometry((56, 48), (1.1, 0.9), (5.0, -7.0))
    rng = np.random.default_rng(0)
    template = Image(rng.normal(100, 20, geom.shape).astype(np.float32), geom, source="template")
    query = Image(rng.normal(100, 20, geom.shape).astype(np.float32), geom, source="query")
    embedder = AnalyticEmbedder(frames={"query": (np.eye(2), -shift)}, n_channels=48).fit([template])
    points = geom.array_index_to_world(np.array([[14.0, 12.0], [30.0, 25.0], [40.0, 36.0], [20.0, 40.0]]))
    return embedder, template, query, points, shift


def test_detector_paper_rule_is_the_whole_image_peak_of_the_summed_maps():
    """The paper (§III-D): the match is the voxel where (S^g + S^l) / 2 peaks over the whole image,
    S^g upsampled to the local grid, each point on its own, no sub-voxel step."""
    embedder, template, query, points, _ = _scene()
    det = OneShotLandmarkDetector(embedder=embedder, **paper_params(OneShotLandmarkDetector)).fit(template, points)
    pred, scores = det.predict(query, return_scores=True)
    t_emb, q_emb = embedder.transform([template, query])
    gv, lv = t_emb.global_map.vectors_at(points), t_emb.local_map.vectors_at(points)
    sg = torch.einsum("kc,c...->k...", gv, q_emb.global_map.data)
    sl = torch.einsum("kc,c...->k...", lv, q_emb.local_map.data)
    s = ((upsample_to_grid(sg, q_emb.global_map.geometry, q_emb.local_map.geometry) + sl) / 2).numpy()
    grid = q_emb.local_map.geometry
    for k in range(len(points)):
        best = np.unravel_index(np.argmax(s[k]), s[k].shape)
        idx = grid.world_to_array_index(pred[0, k])
        assert np.allclose(idx, np.round(idx), atol=1e-9), "the paper reports voxel centres"
        assert s[k][tuple(np.round(idx).astype(int))] == pytest.approx(s[k][best], abs=1e-5)
        assert scores[0, k] == pytest.approx(s[k][best], abs=1e-5)


def test_affine_registrar_paper_rule_is_least_squares_of_the_confident_matches():
    """The paper (§III-E): a grid of fixed points, their matches above the score threshold, an
    affine by plain least squares, in one pass."""
    embedder, template, query, _, shift = _scene()
    reg = SAMAffineRegistrar(embedder=embedder, grid_spacing_mm=5.0, body_threshold=None, random_state=0,
                             **paper_params(SAMAffineRegistrar)).fit(template, query)
    m = reg.matches_
    assert reg.n_refinements_done_ == 0 and reg.inlier_mask_.all() and len(m) >= 20
    assert np.all(m.scores >= reg.score_threshold)
    xh = np.hstack([m.fixed_points, np.ones((len(m), 1))])
    lstsq = np.linalg.lstsq(xh, m.moving_points, rcond=None)[0].T
    np.testing.assert_allclose(reg.transform_.matrix[:2], lstsq, atol=1e-8)
    np.testing.assert_allclose(reg.transform_.translation, shift, atol=0.5)


def test_deformable_registrar_paper_params_skip_the_refinement_pass():
    embedder, template, query, _, _ = _scene()
    reg = SAMDeformableRegistrar(embedder=embedder, grid_spacing_mm=5.0, dense_grid_spacing_mm=4.0,
                                 body_threshold=None, random_state=0,
                                 **paper_params(SAMDeformableRegistrar)).fit(template, query)
    assert reg.n_refinements_done_ == 0 and reg.inlier_mask_.all()


def test_lesion_paper_rule_is_the_score_threshold_alone():
    """The paper (§IV-A): the best match, filtered by a score threshold only."""
    embedder, template, query, points, _ = _scene()
    lm = LesionMatcher(embedder=embedder, score_threshold=0.9, **paper_params(LesionMatcher)).fit(template, points)
    out = lm.match(query)
    assert np.isnan(out["cycle_mm"]).all() and out["in_fov"].all()
    np.testing.assert_array_equal(out["found"], out["scores"] >= 0.9)


def test_embedder_paper_schedule_is_a_constant_rate():
    emb = tiny_embedder(max_iter=4, random_state=0, **paper_params(SAMEmbedder)).fit(smooth_images(2))
    assert [h["lr"] for h in emb.history_] == [emb.config_["lr"]] * 4
    default = tiny_embedder(max_iter=4, random_state=0).fit(smooth_images(2))
    assert len({h["lr"] for h in default.history_}) > 1  # samlearn's warm-up and decay
