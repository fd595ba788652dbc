"""The similarity-search engine (samlearn.matching) on analytic embedding maps with known peaks."""
import numpy as np
import pytest
import torch

import samlearn.matching as matching
import samlearn.matching.grids as grids
import samlearn.matching.scorer as scorer
import samlearn.matching.search as search
from samlearn import Image, ImageGeometry
from samlearn.embedding import Embedding, EmbeddingMap
from samlearn.matching import (MatchResult, combine_templates, cycle_consistency, match_points,
                               resolve_search_radius, template_vectors, upsample_to_grid)
from helpers import random_rotation
from fake_embedder import (AnalyticEmbedder, draw_features, feature_map, fourier_features,
                           identity_frame)


def make_geometry(rng, ndim, size=None):
    size = size or ((48, 40) if ndim == 2 else (24, 20, 14))
    spacing = (1.3, 0.8) if ndim == 2 else (1.4, 1.1, 2.3)
    return ImageGeometry(size, spacing, rng.uniform(-80, 80, ndim), random_rotation(rng, ndim))


def analytic_embedding(image_geom, rng, *, c=96, g_stride=4, l_stride=1, g_scale=None, l_scale=None):
    """Embedding whose maps are Fourier features of world position (identity anatomical frame)."""
    ndim = image_geom.ndim
    g_geom, l_geom = image_geom.strided(g_stride), image_geom.strided(l_stride)
    g_feat = draw_features(rng, c, ndim, g_scale or 2.5 * g_geom.spacing.max())
    l_feat = draw_features(rng, c, ndim, l_scale or 2.5 * l_geom.spacing.max())
    frame = identity_frame(ndim)
    emb = Embedding(feature_map(g_geom, frame, *g_feat), feature_map(l_geom, frame, *l_feat), image_geom)
    return emb, g_feat, l_feat


def noise_embedding(image_geom, channels, seed, g_stride=4):
    """Unit-norm Gaussian noise maps (global stride ``g_stride``, local stride 1): every voxel of a
    window can decide its maximum."""
    gen = torch.Generator().manual_seed(seed)
    maps = [EmbeddingMap(torch.nn.functional.normalize(torch.randn(channels, *g.shape, generator=gen), dim=0), g)
            for g in (image_geom.strided(g_stride), image_geom)]
    return Embedding(maps[0], maps[1], image_geom)


def with_layout(emb, layout):
    """``emb`` with both maps stored channel-first ("first", contiguous) or channels-last ("last",
    the layout of the CPU network's output: channel stride 1), values unchanged."""
    def convert(m):
        data = m.data.contiguous()
        if layout == "last":
            data = data.movedim(0, -1).contiguous().movedim(-1, 0)
            assert data.stride(0) == 1
        return EmbeddingMap(data, m.geometry)
    return Embedding(convert(emb.global_map), convert(emb.local_map), emb.image_geometry, emb.source_geometry)


def inner_points(geom, rng, n, lo=0.3, hi=0.7):
    idx = rng.uniform(lo, hi, size=(n, geom.ndim)) * (np.asarray(geom.size) - 1)
    return geom.index_to_world(idx)


def index_error(geom, found, truth):
    """Per-axis error in voxels of ``geom`` (continuous index difference)."""
    return np.abs(geom.world_to_index(found) - geom.world_to_index(truth))


# ----------------------------------------------------------------------------- sub-voxel peaks


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("mode", ["local", "sum"])
def test_refinement_recovers_subvoxel_peak(ndim, mode):
    rng = np.random.default_rng(ndim)
    geom = make_geometry(rng, ndim)
    emb, g_feat, l_feat = analytic_embedding(geom, rng, c=256, g_stride=4, l_stride=1)
    truth = inner_points(geom, rng, 12)
    frame = identity_frame(ndim)
    gv = torch.as_tensor(fourier_features(truth, frame, *g_feat), dtype=torch.float32)
    lv = torch.as_tensor(fourier_features(truth, frame, *l_feat), dtype=torch.float32)
    refined = match_points(gv, lv, emb, mode=mode, refine=True)
    coarse = match_points(gv, lv, emb, mode=mode, refine=False)
    err_r = index_error(emb.local_map.geometry, refined.points, truth)
    err_c = index_error(emb.local_map.geometry, coarse.points, truth)
    assert err_c.max() < 0.55  # the discrete peak is the nearest voxel (up to near-ties)
    assert err_r.max() < 0.2, err_r.max()
    assert err_r.mean() < 0.06
    assert err_r.mean() < 0.35 * err_c.mean()
    # the reported index is the discrete peak voxel, in numpy order, on the local grid
    cont = emb.local_map.geometry.world_to_array_index(truth)
    assert np.abs(refined.index - cont).max() < 0.55
    if mode == "local":
        flat = emb.local_map.similarity(lv).reshape(len(truth), -1).argmax(1).numpy()
        np.testing.assert_array_equal(refined.index, np.stack(np.unravel_index(flat, refined.grid.shape), 1))
    assert refined.grid == emb.local_map.geometry
    assert np.all(refined.scores > 0.95) and np.all(refined.scores <= 1 + 1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_global_mode_searches_the_coarse_grid(ndim):
    rng = np.random.default_rng(10 + ndim)
    geom = make_geometry(rng, ndim)
    emb, g_feat, _ = analytic_embedding(geom, rng, c=256, g_stride=2)
    truth = inner_points(geom, rng, 6)
    gv = torch.as_tensor(fourier_features(truth, identity_frame(ndim), *g_feat), dtype=torch.float32)
    res = match_points(gv, None, emb, mode="global")
    assert res.grid == emb.global_map.geometry
    assert index_error(res.grid, res.points, truth).max() < 0.1
    s_g = emb.global_map.similarity(gv).reshape(len(truth), -1)
    np.testing.assert_allclose(res.scores, s_g.max(1).values.numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- S^g upsampling


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("rotated", [False, True])
def test_upsample_to_grid_is_exact_on_linear_maps(ndim, rotated):
    rng = np.random.default_rng(20 + ndim + 2 * rotated)
    d = random_rotation(rng, ndim)
    src = ImageGeometry((7, 6, 5)[:ndim], (3.7, 2.9, 5.3)[:ndim], rng.uniform(-30, 30, ndim), d)
    d_dst = d @ random_rotation(rng, ndim, allow_reflection=False) if rotated else d
    # non-integer stride ratios and offsets; the destination reaches past the source's centres
    dst_size, dst_spacing = np.array((23, 31, 19)[:ndim]), np.array((1.3, 0.7, 1.1)[:ndim])
    centre = src.index_to_world((np.asarray(src.size) - 1) / 2) + d @ np.array([-1.93, -0.41, 0.77][:ndim])
    dst = ImageGeometry(dst_size, dst_spacing, centre - d_dst @ (dst_spacing * (dst_size - 1) / 2), d_dst)
    coef = rng.normal(size=(3, ndim))
    bias = rng.normal(size=3)
    src_idx = np.stack(np.meshgrid(*[np.arange(s) for s in src.shape], indexing="ij"), -1).reshape(-1, ndim)
    values = (src.array_index_to_world(src_idx) @ coef.T + bias).T.reshape(3, *src.shape)
    got = upsample_to_grid(torch.as_tensor(values, dtype=torch.float32), src, dst).numpy()
    dst_idx = np.stack(np.meshgrid(*[np.arange(s) for s in dst.shape], indexing="ij"), -1).reshape(-1, ndim)
    # expected: the linear function at the destination centre, clamped into the source grid's hull
    cont = np.clip(src.world_to_index(dst.array_index_to_world(dst_idx)), 0, np.asarray(src.size) - 1)
    expected = (src.index_to_world(cont) @ coef.T + bias).T.reshape(3, *dst.shape)
    np.testing.assert_allclose(got, expected, atol=2e-4 * np.abs(expected).max())
    inside = src.contains(dst.array_index_to_world(dst_idx), margin=0.0)
    assert 0 < inside.sum() < len(inside)  # both the exact interior and the clamped border are tested


@pytest.mark.parametrize("rotated", [False, True])
def test_sum_mode_uses_the_exactly_upsampled_global_map(rotated):
    rng = np.random.default_rng(30)
    geom = make_geometry(rng, 3, size=(26, 22, 15))
    # strides 5 and 2: the two grids' centres are not nested
    emb, g_feat, _ = analytic_embedding(geom, rng, c=32, g_stride=5, l_stride=2)
    if rotated:  # a global grid whose axes are not the local grid's: the general interpolation path
        g = emb.global_map.geometry
        turn = random_rotation(rng, 3, allow_reflection=False)
        g = ImageGeometry(g.size, g.spacing, g.origin, turn @ g.direction)
        emb = Embedding(feature_map(g, identity_frame(3), *g_feat), emb.local_map, geom)
    pts = inner_points(geom, rng, 5)
    gv, lv = template_vectors(emb, pts)
    res = match_points(gv, lv, emb, mode="sum", refine=False, search_radius_mm=None)
    s_g = upsample_to_grid(emb.global_map.similarity(gv), emb.global_map.geometry, emb.local_map.geometry)
    s = ((s_g + emb.local_map.similarity(lv)) / 2).reshape(len(pts), -1)
    best = s.max(1)
    np.testing.assert_allclose(res.scores, best.values.numpy(), atol=1e-6)
    flat = np.ravel_multi_index(tuple(res.index.T), emb.local_map.geometry.shape)
    np.testing.assert_array_equal(flat, best.indices.numpy())


# ----------------------------------------------------------------------------- windows


def _fake_query(ndim, seed, pts_index=None):
    """A template and a moved query (known affine anatomical frame), embedded by AnalyticEmbedder;
    template points (random inner ones, or at template continuous indices ``pts_index``) and the
    true query points."""
    rng = np.random.default_rng(seed)
    size = (64, 56) if ndim == 2 else (36, 32, 22)
    sp = np.array((1.3, 0.9) if ndim == 2 else (1.5, 1.2, 2.5))
    d = random_rotation(rng, ndim)
    tmpl = Image(np.zeros(size[::-1], np.float32), ImageGeometry(size, sp, rng.uniform(-50, 50, ndim), d),
                 source="template")
    th, scale = 0.1, 1.04
    rot = np.eye(ndim)
    rot[:2, :2] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    a = rot * scale
    t = rng.uniform(-4, 4, ndim)
    sp_q = sp / scale * 1.07
    d_q = rot.T @ d
    origin_q = np.linalg.solve(a, tmpl.geometry.origin - t) - d_q @ (sp_q * 2.5)
    query = Image(np.zeros(size[::-1], np.float32), ImageGeometry(size, sp_q, origin_q, d_q), source="query")
    emb = AnalyticEmbedder(frames={"query": (a, t)}, n_channels=64).fit([tmpl])
    if pts_index is None:
        pts = inner_points(tmpl.geometry, rng, 8)
    else:
        pts = tmpl.geometry.index_to_world(pts_index)
    truth = np.linalg.solve(a, (pts - t).T).T
    return emb, tmpl, query, pts, truth


@pytest.mark.parametrize("ndim", [2, 3])
def test_window_search_equals_full_search_when_it_covers_the_peak(ndim):
    emb, tmpl, query, pts, truth = _fake_query(ndim, 40 + ndim)
    et, eq = emb.transform([tmpl, query])
    gv, lv = template_vectors(et, pts)
    full = match_points(gv, lv, eq, search_radius_mm=None)
    assert np.abs(full.points - truth).max() < 0.3 * eq.local_map.geometry.spacing.max()
    for radius in ("auto", 12.0):
        win = match_points(gv, lv, eq, search_radius_mm=radius)
        np.testing.assert_allclose(win.points, full.points, atol=1e-9)
        np.testing.assert_allclose(win.scores, full.scores, atol=1e-6)
        np.testing.assert_array_equal(win.index, full.index)
        assert win.global_points is not None and full.global_points is None
    assert win.search_radius_mm == 12.0
    auto = resolve_search_radius("auto", eq)
    assert auto == pytest.approx(matching.AUTO_RADIUS_GLOBAL_VOXELS * eq.global_map.geometry.spacing.max())


def _box_strategy(monkeypatch, strategy):
    """Force one way of reading the windows' boxes: point by point ("loop"), one vectorised
    gather ("gather") or tile by tile ("tiled", one matrix product per tile of box corners)."""
    monkeypatch.setattr(scorer, "_GATHER_MAX_BOX", 10**9 if strategy == "gather" else 0)
    tiled = strategy == "tiled"
    monkeypatch.setattr(scorer, "_TILED_MIN_POINTS", 1 if tiled else 10**9)
    monkeypatch.setattr(scorer, "_TILED_MIN_POINTS_PER_TILE", 0)
    monkeypatch.setattr(scorer, "_TILED_MAX_WORK", 1e9)


BOX_STRATEGIES = ["loop", "gather", "tiled"]


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("strategy", BOX_STRATEGIES)
@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("mode", ["sum", "local"])
def test_window_boxes_equal_masked_slab_scan(monkeypatch, top_k, mode, strategy, layout):
    _box_strategy(monkeypatch, strategy)
    tiled = []
    orig_tiled = scorer.Scorer._box_tiled
    monkeypatch.setattr(scorer.Scorer, "_box_tiled",
                        lambda self, *a: tiled.append(orig_tiled(self, *a)) or tiled[-1])
    emb, tmpl, query, pts, truth = _fake_query(3, 50)
    et, eq = emb.transform([tmpl, query])
    eq = with_layout(eq, layout)
    gv, lv = template_vectors(et, pts)
    kw = dict(mode=mode, search_radius_mm=9.0, top_k=top_k, min_distance_mm=4.0)
    calls = []
    box = scorer.Scorer.box
    monkeypatch.setattr(scorer.Scorer, "box", lambda self, *a: calls.append(1) or box(self, *a))
    monkeypatch.setattr(search, "_WINDOW_MAX_FRACTION", 1e9)
    gathered = match_points(gv, lv, eq, **kw)
    assert calls
    assert any(t is not None for t in tiled) == (strategy == "tiled")
    calls.clear()
    monkeypatch.setattr(search, "_WINDOW_MAX_FRACTION", 0.0)
    masked = match_points(gv, lv, eq, **kw)
    assert not calls
    np.testing.assert_allclose(gathered.hypothesis_scores, masked.hypothesis_scores, atol=1e-6)
    np.testing.assert_allclose(gathered.hypotheses, masked.hypotheses, atol=1e-4)
    # every hypothesis lies inside the window around the global peak
    d = np.linalg.norm(gathered.hypotheses - gathered.global_points[:, None], axis=-1)
    ok = np.isfinite(d)
    assert np.all(d[ok] <= 9.0 + 0.5 * eq.local_map.geometry.spacing.max() * np.sqrt(3))


@pytest.mark.parametrize("layout", ["first", "last"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_grid_of_windows_is_scored_tile_by_tile(monkeypatch, ndim, layout):
    """A dense grid of points searched near a prior (SAM-coarse) takes the tiled path with the
    default thresholds and finds exactly what one gather of every box finds, on channel-first and
    channels-last maps; a handful of points does not take it."""
    rng = np.random.default_rng(70 + ndim)
    geom = make_geometry(rng, ndim, size=(60, 52) if ndim == 2 else (24, 22, 16))
    emb = with_layout(noise_embedding(geom, 32, seed=ndim), layout)
    axes = [np.arange(1.0, n - 1, 2.0 if ndim == 2 else 3.0) for n in geom.size]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, ndim)
    pts = geom.index_to_world(idx + rng.uniform(-0.4, 0.4, idx.shape))
    gv, lv = template_vectors(emb, pts)
    centres = pts + rng.normal(0, 1.0, pts.shape)
    kw = dict(mode="local", search_radius_mm=4.0, centers_world=centres, top_k=2, min_distance_mm=1.0)
    used = []
    orig = scorer.Scorer._box_tiled
    monkeypatch.setattr(scorer.Scorer, "_box_tiled", lambda self, *a: used.append(orig(self, *a)) or used[-1])
    tiled = match_points(gv, lv, emb, **kw)
    assert len(pts) >= scorer._TILED_MIN_POINTS and used and all(u is not None for u in used)
    monkeypatch.setattr(scorer, "_TILED_MIN_POINTS", 10**9)
    monkeypatch.setattr(scorer, "_GATHER_MAX_BOX", 10**9)
    gathered = match_points(gv, lv, emb, **kw)
    np.testing.assert_array_equal(tiled.index, gathered.index)
    np.testing.assert_allclose(tiled.hypothesis_scores, gathered.hypothesis_scores, atol=1e-5)
    np.testing.assert_allclose(tiled.points, gathered.points, atol=1e-6)
    monkeypatch.undo()
    used.clear()
    monkeypatch.setattr(scorer.Scorer, "_box_tiled", lambda self, *a: used.append(orig(self, *a)) or used[-1])
    few = match_points(gv[:8], lv[:8], emb, **dict(kw, centers_world=centres[:8]))
    assert used and all(u is None for u in used)
    np.testing.assert_allclose(few.points, tiled.points[:8], atol=1e-6)


@pytest.mark.parametrize("strategy", BOX_STRATEGIES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_window_boxes_hold_the_whole_ball_on_noise(monkeypatch, ndim, strategy):
    """On noise maps the maximum over a window is decided by every single voxel of the ball, so
    both window strategies (and every way of reading the boxes) must evaluate exactly the same
    voxels (including the ball's rim)."""
    _box_strategy(monkeypatch, strategy)
    rng = np.random.default_rng(55 + ndim)
    geom = make_geometry(rng, ndim, size=(40, 36) if ndim == 2 else (20, 18, 12))
    emb = noise_embedding(geom, 16, seed=ndim)
    pts = inner_points(geom, rng, 30, lo=0.0, hi=1.0)  # borders included
    gv, lv = template_vectors(emb, pts)
    for radius in (2.9, 3.7, 5.05):
        kw = dict(mode="local", search_radius_mm=radius, refine=False, top_k=2, min_distance_mm=1.0)
        monkeypatch.setattr(search, "_WINDOW_MAX_FRACTION", 1e9)
        boxes = match_points(gv, lv, emb, **kw)
        monkeypatch.setattr(search, "_WINDOW_MAX_FRACTION", 0.0)
        masked = match_points(gv, lv, emb, **kw)
        np.testing.assert_array_equal(boxes.index, masked.index)
        np.testing.assert_allclose(boxes.hypothesis_scores, masked.hypothesis_scores, atol=1e-6)
        d = np.linalg.norm(boxes.points - boxes.global_points, axis=1)
        assert np.all(d <= max(radius, 0.5 * np.linalg.norm(geom.spacing)) + 1e-6)


def test_window_removes_a_far_away_false_local_peak():
    """The paper's plain sum fails when the local map has a perfect match far away and the global
    map is flat there; the coarse-to-fine window keeps the right answer."""
    rng = np.random.default_rng(60)
    geom = ImageGeometry((80, 64), (1.1, 0.9), (12.0, -30.0), random_rotation(rng, 2))
    emb, g_feat, l_feat = analytic_embedding(geom, rng, c=128, g_stride=8, l_stride=2,
                                             g_scale=60.0, l_scale=4.0)
    truth = geom.index_to_world(np.array([[25.3, 30.6]]))
    frame = identity_frame(2)
    gv = torch.as_tensor(fourier_features(truth, frame, *g_feat), dtype=torch.float32)
    lv_true = fourier_features(truth, frame, *l_feat)[0]
    noise = rng.normal(size=lv_true.shape)
    noise -= noise @ lv_true * lv_true
    lv = lv_true + 0.45 * noise / np.linalg.norm(noise)
    lv = torch.as_tensor(lv / np.linalg.norm(lv), dtype=torch.float32)  # S^l at the truth ~ 0.9
    # plant the exact template vector 22 mm away, where S^g is still high (flat global map)
    far = geom.index_to_world(np.array([[25.3 + 20.0, 30.6]]))
    lgeom = emb.local_map.geometry
    far_idx = tuple(np.rint(lgeom.world_to_array_index(far)[0]).astype(int))
    data = emb.local_map.data.clone()
    data[(slice(None),) + far_idx] = lv
    emb = Embedding(emb.global_map, EmbeddingMap(data, lgeom), geom)
    full = match_points(gv, lv[None], emb, search_radius_mm=None)
    win = match_points(gv, lv[None], emb, search_radius_mm=8.0)
    assert np.linalg.norm(full.points - far) < 1.0  # the false peak wins without a window
    assert np.linalg.norm(win.points - truth) < 0.5 * lgeom.spacing.max()
    assert win.scores[0] < full.scores[0]


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("radius", [None, 10.0])
@pytest.mark.parametrize("top_k", [1, 3])
def test_chunked_equals_unchunked(monkeypatch, radius, top_k):
    emb, tmpl, query, pts, truth = _fake_query(3, 70)
    et, eq = emb.transform([tmpl, query])
    gv, lv = template_vectors(et, pts)
    kw = dict(search_radius_mm=radius, top_k=top_k, min_distance_mm=5.0)
    whole = match_points(gv, lv, eq, chunk_size=2 ** 30, **kw)
    # record the size of every similarity block and feature gather while chunking
    sizes = []
    rows = scorer.Scorer.rows
    monkeypatch.setattr(scorer.Scorer, "rows",
                        lambda self, r0, r1: sizes.append(self.k * (r1 - r0) * self.grid.row_size)
                        or rows(self, r0, r1))
    small = 2000
    chunked = match_points(gv, lv, eq, chunk_size=small, **kw)
    np.testing.assert_allclose(chunked.hypotheses, whole.hypotheses, atol=1e-4)
    np.testing.assert_allclose(chunked.hypothesis_scores, whole.hypothesis_scores, atol=1e-6)
    np.testing.assert_array_equal(chunked.index, whole.index)
    n_local = int(np.prod(eq.local_map.geometry.shape))
    assert sizes and max(sizes) < len(pts) * n_local
    row = int(np.prod(eq.local_map.geometry.shape[1:]))
    halo_rows = 2 * max(1, int(np.floor(5.0 / eq.local_map.geometry.spacing[-1]))) if top_k > 1 else 0
    assert max(sizes) <= max(small, (1 + halo_rows) * row)


def test_window_evaluation_stays_within_chunk_size(monkeypatch):
    emb, tmpl, query, pts, truth = _fake_query(3, 71)
    et, eq = emb.transform([tmpl, query])
    gv, lv = template_vectors(et, pts)
    c = eq.local_map.n_channels
    monkeypatch.setattr(search, "_WINDOW_MAX_FRACTION", 1e9)
    ref = match_points(gv, lv, eq, search_radius_mm=6.0)
    box = search._window_box(6.0, eq.local_map.geometry)
    nb, row = int(np.prod(box)), int(np.prod(box[1:]))
    assert box[0] > 2
    # room for one row of one point's window features: each box is evaluated row by row
    budget = c * row
    seen = []
    orig = scorer.Scorer.box
    monkeypatch.setattr(scorer.Scorer, "box", lambda self, start, b, p0=0: seen.append(len(start))
                        or orig(self, start, b, p0))
    res = match_points(gv, lv, eq, search_radius_mm=6.0, chunk_size=budget)
    np.testing.assert_allclose(res.points, ref.points, atol=1e-5)
    np.testing.assert_allclose(res.scores, ref.scores, atol=1e-6)
    assert len(seen) > 1 and max(seen) <= max(1, budget // (nb * (3 + 2)))


# ----------------------------------------------------------------------------- top-k


def test_top_k_returns_distinct_hypotheses_in_descending_order():
    rng = np.random.default_rng(80)
    geom = ImageGeometry((60, 50), (0.9, 1.2), (-5.0, 8.0), random_rotation(rng, 2))
    emb, _, _ = analytic_embedding(geom, rng, c=64, g_stride=8, l_stride=2)
    lgeom = emb.local_map.geometry
    lv = torch.nn.functional.normalize(torch.randn(1, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    data = emb.local_map.data.clone()
    plants = [(5, 6), (18, 20), (8, 24)]
    for noise, (i, j) in zip([0.0, 0.3, 0.6], plants):
        v = torch.nn.functional.normalize(lv[0] + noise * torch.nn.functional.normalize(
            torch.randn(64, generator=torch.Generator().manual_seed(i)), dim=0), dim=0)
        data[:, i, j] = v
    emb = Embedding(emb.global_map, EmbeddingMap(data, lgeom), geom)
    res = match_points(None, lv, emb, mode="local", top_k=5, refine=False, min_distance_mm=6.0)
    assert isinstance(res, MatchResult) and res.hypotheses.shape == (1, 5, 2)
    s = res.hypothesis_scores[0]
    assert np.all(np.diff(s) < 0)
    np.testing.assert_allclose(res.hypotheses[0, :3], lgeom.array_index_to_world(np.array(plants)), atol=1e-9)
    np.testing.assert_allclose(res.points[0], res.hypotheses[0, 0])
    # pairwise: more than min_distance apart along at least one grid axis
    idx = lgeom.world_to_array_index(res.hypotheses[0]) * lgeom.spacing[::-1]
    for a in range(5):
        for b in range(a + 1, 5):
            assert np.abs(idx[a] - idx[b]).max() > 6.0


def test_top_k_pads_when_fewer_peaks_exist():
    rng = np.random.default_rng(81)
    geom = ImageGeometry((12, 10), (1.0, 1.0))
    emb, _, l_feat = analytic_embedding(geom, rng, c=64, g_stride=4, l_stride=1, l_scale=30.0)
    lv = torch.as_tensor(fourier_features(geom.index_to_world(np.array([[6.0, 5.0]])),
                                          identity_frame(2), *l_feat), dtype=torch.float32)
    res = match_points(None, lv, emb, mode="local", top_k=4, min_distance_mm=50.0)
    assert res.hypothesis_scores[0, 0] > 0.99
    assert np.all(np.isneginf(res.hypothesis_scores[0, 1:]))
    assert np.all(np.isnan(res.hypotheses[0, 1:]))


# ----------------------------------------------------------------------------- templates, cycles


def test_combined_templates_average_the_similarity_maps():
    rng = np.random.default_rng(90)
    geom = make_geometry(rng, 2)
    emb, _, _ = analytic_embedding(geom, rng, c=32, g_stride=4, l_stride=2)
    sets = [template_vectors(emb, inner_points(geom, rng, 4)) for _ in range(3)]
    _, vl = combine_templates(sets)
    mean_maps = torch.stack([emb.local_map.similarity(s[1]) for s in sets]).mean(0)
    torch.testing.assert_close(emb.local_map.similarity(vl), mean_maps, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="differ in shape"):
        combine_templates([sets[0], (sets[1][0][:3], sets[1][1][:3])])
    with pytest.raises(ValueError, match="empty"):
        combine_templates([])


@pytest.mark.parametrize("ndim", [2, 3])
def test_cycle_consistency_flags_anatomy_missing_from_the_query(ndim):
    size = np.array((64, 56) if ndim == 2 else (36, 32, 22))
    rng = np.random.default_rng(100 + ndim)
    idx = rng.uniform(0.35, 0.65, size=(5, ndim)) * (size - 1)
    idx[0, 0], idx[1:, 0] = 4.0, rng.uniform(0.75, 0.85, 4) * (size[0] - 1)
    emb, tmpl, query, pts, truth = _fake_query(ndim, 100 + ndim, pts_index=idx)
    # crop the query 10 voxels beyond its first point, so that this anatomy is missing
    qg = query.geometry
    q_idx = qg.world_to_index(truth)[:, 0]
    cut = int(np.floor(q_idx[0])) + 10
    assert np.all(q_idx[1:] > cut + 3)
    arr = query.array[..., cut:]
    origin = qg.index_to_world(np.r_[cut, np.zeros(ndim - 1)])
    cropped = Image(arr, ImageGeometry((qg.size[0] - cut,) + qg.size[1:], qg.spacing, origin, qg.direction),
                    source="query")
    assert not cropped.geometry.contains(truth[:1])[0] and cropped.geometry.contains(truth[1:]).all()
    et, eq = emb.transform([tmpl, cropped])
    cyc = cycle_consistency(et, pts, eq, search_radius_mm="auto")
    vox = eq.local_map.geometry.spacing.max()
    assert np.all(cyc.distances_mm[1:] < vox)
    assert cyc.distances_mm[0] > 2 * vox
    assert cyc.forward.scores[0] < cyc.forward.scores[1:].min()
    assert cyc.backward.points.shape == pts.shape


# ----------------------------------------------------------------------------- validation


def test_match_points_rejects_bad_input():
    rng = np.random.default_rng(110)
    geom = make_geometry(rng, 2)
    emb, _, _ = analytic_embedding(geom, rng, c=16, g_stride=4, l_stride=2)
    gv, lv = template_vectors(emb, inner_points(geom, rng, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        match_points(gv, lv, emb, mode="max")
    with pytest.raises(ValueError, match="top_k"):
        match_points(gv, lv, emb, top_k=0)
    with pytest.raises(ValueError, match="chunk_size"):
        match_points(gv, lv, emb, chunk_size=0)
    with pytest.raises(ValueError, match="local_vectors must have shape .* 16 channels"):
        match_points(gv, lv[:, :8], emb)
    with pytest.raises(ValueError, match="3 points but local_vectors has 2"):
        match_points(gv, lv[:2], emb)
    with pytest.raises(ValueError, match="global_vectors are needed"):
        match_points(None, lv, emb, mode="local", search_radius_mm=5.0)
    with pytest.raises(ValueError, match="search_radius_mm"):
        match_points(gv, lv, emb, search_radius_mm=-1.0)
    with pytest.raises(ValueError, match="search_radius_mm"):
        match_points(gv, lv, emb, search_radius_mm="wide")
    with pytest.raises(ValueError, match="non-finite"):
        match_points(gv * float("nan"), lv, emb)
    with pytest.raises(TypeError, match="query must be a samlearn.embedding.Embedding"):
        match_points(gv, lv, emb.local_map)
    with pytest.raises(ValueError, match="points_world must have shape"):
        template_vectors(emb, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="min_distance_mm"):
        match_points(gv, lv, emb, min_distance_mm=0.0)
    # global mode needs no local vectors and ignores the window
    assert match_points(gv, None, emb, mode="global", search_radius_mm=3.0).search_radius_mm is None


@pytest.mark.parametrize("shape, half", [((3, 9, 11), (2, 3)), ((2, 4, 5, 13), (1, 0, 6)),
                                         ((1, 3, 2, 4), (5, 5, 5))])
def test_max_filter_equals_a_brute_force_box_maximum(shape, half):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = grids.max_filter(x, half)
    expected = torch.empty_like(x)
    for idx in np.ndindex(*shape[1:]):
        box = tuple(slice(max(0, i - h), i + h + 1) for i, h in zip(idx, half))
        expected[(slice(None),) + idx] = x[(slice(None),) + box].reshape(shape[0], -1).max(1).values
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["sum", "local"])
def test_given_window_centres_replace_the_global_peak(mode):
    """centers_world: windows centred on a caller's prior (e.g. a registration's affine
    prediction) instead of the S^g peaks. A good prior finds the truth; a prior moved away from
    it keeps the search inside its own window."""
    emb, tmpl, query, pts, truth = _fake_query(3, 70)
    et, eq = emb.transform([tmpl, query])
    gv, lv = template_vectors(et, pts)
    rng = np.random.default_rng(0)
    prior = truth + rng.normal(0, 1.5, truth.shape)
    res = match_points(gv if mode == "sum" else None, lv, eq, mode=mode, search_radius_mm=8.0,
                       centers_world=prior)
    assert np.abs(res.points - truth).max() < 0.35 * eq.local_map.geometry.spacing.max()
    np.testing.assert_allclose(res.global_points, prior)
    far = truth + np.array([12.0, 0.0, 0.0])
    assert eq.local_map.geometry.contains(far).all()
    res_far = match_points(gv, lv, eq, mode=mode, search_radius_mm=8.0, centers_world=far)
    d = np.linalg.norm(res_far.points - far, axis=1)
    assert np.all(d <= 8.0 + 0.5 * np.linalg.norm(eq.local_map.geometry.spacing) + 1e-6)
    with pytest.raises(ValueError, match="centers_world needs a search window"):
        match_points(gv, lv, eq, search_radius_mm=None, centers_world=prior)
    with pytest.raises(ValueError, match="centers_world needs a search window"):
        match_points(gv, lv, eq, mode="global", search_radius_mm=8.0, centers_world=prior)
    with pytest.raises(ValueError, match="one centre per point"):
        match_points(gv, lv, eq, search_radius_mm=8.0, centers_world=prior[:2])
