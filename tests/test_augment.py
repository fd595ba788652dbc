"""Patch-pair sampling (samlearn.augment): exact correspondences, invertibility, no flips, the
overlap-ratio distribution, replayability and parameter validation."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage, stats

from samlearn.training import (
    PatchPair,
    PatchPairSampler,
    PatchTransform,
    estimate_overlap,
    feature_grid_positions,
    patch_to_feature_index,
    sampler_for_preset,
)

FAST = settings(max_examples=25, deadline=None, derandomize=True)


# ------------------------------------------------------------------------------------ helpers
def smooth_image(shape, seed=0, wavelength=24.0):
    """A smooth random image (sum of a few low-frequency cosines): linear interpolation of it is
    accurate to ~(2 pi / wavelength)^2 / 8 of its amplitude."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    return smooth_at(grids, rng, len(shape), wavelength).astype(np.float32), (rng, wavelength)


def smooth_at(coords, rng, ndim, wavelength):
    r = np.random.default_rng(1234 + ndim)
    out = 0.0
    for _ in range(3):
        k = r.normal(size=ndim)
        k = 2 * np.pi / wavelength * k / np.linalg.norm(k)
        phase = r.uniform(0, 2 * np.pi)
        out = out + np.cos(sum(k[a] * coords[a] for a in range(ndim)) + phase)
    return out


def sampler_strategy(ndim):
    patch = (st.tuples(st.integers(6, 12), st.integers(8, 20), st.integers(8, 20)) if ndim == 3
             else st.tuples(st.integers(8, 40), st.integers(8, 40)))
    return st.builds(
        dict,
        patch_shape=patch,
        overlap=st.tuples(st.floats(0.05, 0.6), st.floats(0.6, 1.0)),
        scale=st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 3.0)),
        scale_anisotropy=st.floats(0.0, 0.5),
        rotation_deg=st.floats(0.0, 45.0),
        rotation_axes=st.sampled_from(["axial", "any"]),
        elastic=st.booleans(),
        elastic_magnitude=st.floats(0.0, 0.1),
        elastic_grid=st.integers(1, 5),
        intensity_jitter=st.floats(0.0, 0.3),
        noise_std=st.sampled_from([0.0, 0.05]),
    )


def fd_jacobian_det(coords):
    """Determinant of the forward-difference Jacobian of a coordinate grid (ndim, *grid)."""
    c = coords.astype(np.float64)
    ndim = c.shape[0]
    sl = tuple(slice(0, -1) for _ in range(ndim))
    cols = []
    for b in range(ndim):
        d = np.diff(c, axis=b + 1)
        cut = list(sl)
        cut[b] = slice(None)
        cols.append(d[(slice(None),) + tuple(cut)])
    J = np.stack(cols, axis=-1)  # (ndim_out, *grid, ndim_in)
    J = np.moveaxis(J, 0, -2)   # (*grid, ndim_out, ndim_in)
    return np.linalg.det(J)


# ------------------------------------------------------------------------------------ known maps
def test_known_shift_direction_2d():
    src = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    t = PatchTransform((5, 7), np.eye(2), offset=(3, 5))
    np.testing.assert_array_equal(t.apply(src), src[3:8, 5:12])
    np.testing.assert_allclose(t.to_source([0, 0]), [3, 5])
    np.testing.assert_allclose(t.from_source([[3, 5], [7, 11]]), [[0, 0], [4, 6]])
    # patch voxel (4, 6) shows source voxel (7, 11): points and images move the same way
    assert t.apply(src)[4, 6] == src[7, 11]


def test_known_scale_and_rotation_3d():
    rng = np.random.default_rng(0)
    src = rng.random((30, 40, 50)).astype(np.float32)
    t = PatchTransform((4, 5, 6), np.diag([2.0, 3.0, 1.0]), offset=(1, 2, 3))
    expect = src[1:9:2, 2:17:3, 3:9]
    np.testing.assert_array_equal(t.apply(src), expect)
    # a 90-degree in-plane rotation: patch (i, j, k) -> source (i, -k + c, j + c)
    R = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float)
    t = PatchTransform((4, 5, 6), R, offset=(2, 20, 10))
    patch = t.apply(src)
    for (i, j, k) in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        assert patch[i, j, k] == pytest.approx(src[2 + i, 20 - k, 10 + j], abs=1e-6)


def test_outside_is_cval_and_border_rule_matches_scipy():
    src = np.ones((6, 7), np.float32)
    t = PatchTransform((4, 4), np.eye(2), offset=(4, 5))  # rows 4..7 of a 6-row image
    p = t.apply(src, cval=-3.0)
    np.testing.assert_array_equal(p[:2, :2], 1.0)
    np.testing.assert_array_equal(p[2:], -3.0)
    np.testing.assert_array_equal(p[:, 2:], -3.0)


# ------------------------------------------------------------------------------------ properties
@FAST
@given(params=sampler_strategy(2), seed=st.integers(0, 2**31))
def test_patch_reproduced_from_carried_coords_2d(params, seed):
    _check_patch_reproduced(params, seed, source_shape=(60, 70))


@FAST
@given(params=sampler_strategy(3), seed=st.integers(0, 2**31))
def test_patch_reproduced_from_carried_coords_3d(params, seed):
    _check_patch_reproduced(params, seed, source_shape=(25, 40, 36))


def _check_patch_reproduced(params, seed, source_shape):
    sampler = PatchPairSampler(**params)
    src, (_, wl) = smooth_image(source_shape, seed=seed % 7)
    pair = sampler.sample(src, np.random.default_rng(seed))
    ndim = len(source_shape)
    for k in range(2):
        coords = pair.transforms[k].source_coords()
        # (1) identical to map_coordinates on the same coordinates, borders included
        ref = ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=pair.cval,
                                      prefilter=False)
        np.testing.assert_allclose(pair.clean_patches[k], ref, atol=1e-5)
        # (2) the patch shows the analytic image at the carried coordinates (inside the source)
        inside = np.all([(coords[a] >= 0) & (coords[a] <= source_shape[a] - 1)
                         for a in range(ndim)], axis=0)
        truth = smooth_at(coords.astype(np.float64), None, ndim, wl)
        interp_tol = 3 * (2 * np.pi / wl) ** 2 / 8 * 3 + 1e-4
        assert np.abs(pair.clean_patches[k][inside] - truth[inside]).max() < interp_tol
        assert np.all(pair.clean_patches[k][~inside] == pair.cval)
        # (3) the pointwise map agrees with the grid map
        grid = np.stack(np.meshgrid(*[np.arange(p, dtype=float) for p in sampler.patch_shape],
                                    indexing="ij"), -1).reshape(-1, ndim)
        np.testing.assert_allclose(pair.transforms[k].to_source(grid),
                                   coords.reshape(ndim, -1).T, atol=1e-3)


@FAST
@given(params=sampler_strategy(2) | sampler_strategy(3), seed=st.integers(0, 2**31))
def test_positives_map_to_the_same_source_point(params, seed):
    sampler = PatchPairSampler(**params)
    ndim = sampler.ndim
    shape = (50, 60) if ndim == 2 else (20, 30, 30)
    rng = np.random.default_rng(seed)
    t1, t2, _ = sampler.draw(shape, rng)
    pair = PatchPair(None, None, (t1, t2), None, np.ones(ndim), 0.0)
    pos = pair.positives(100, rng)
    assert pos.shape == (2, 100, ndim) and pos.dtype == np.float32
    hi = np.asarray(sampler.patch_shape) - 1
    for k in range(2):
        assert np.all(pos[k] >= 0) and np.all(pos[k] <= hi + 1e-4)
    x1 = t1.to_source(pos[0].astype(np.float64))
    x2 = t2.to_source(pos[1].astype(np.float64))
    assert np.abs(x1 - x2).max() < 1e-3  # far better than the 0.5 voxel required
    # the inverse is exact
    u = rng.uniform(-5, np.asarray(sampler.patch_shape) + 5, size=(200, ndim))
    for t in (t1, t2):
        np.testing.assert_allclose(t.from_source(t.to_source(u)), u, atol=1e-6)
        x = rng.uniform(-5, 60, size=(200, ndim))
        np.testing.assert_allclose(t.to_source(t.from_source(x)), x, atol=1e-6)


def test_positives_show_the_same_content_in_both_patches():
    """End to end, independent of the coordinate formulas: the two patches, interpolated at a
    positive pair, show the same image value (smooth source, interpolation tolerance)."""
    for preset, shape in (("xray-lite", (512, 512)), ("ct-lite", (80, 120, 120))):
        sampler = sampler_for_preset(preset, intensity_jitter=0.0,
                                     rotation_deg=20.0, elastic=True)
        src, _ = smooth_image(shape, seed=3, wavelength=40.0)
        rng = np.random.default_rng(5)
        pair = sampler.sample(src, rng)
        pos = pair.positives(500, rng)
        v1 = ndimage.map_coordinates(pair.patches[0], pos[0].T, order=1)
        v2 = ndimage.map_coordinates(pair.patches[1], pos[1].T, order=1)
        x = pair.transforms[0].to_source(pos[0].astype(float))
        both_inside = np.all((x >= 3) & (x <= np.asarray(shape) - 4), axis=1)
        assert both_inside.sum() > 100
        assert np.abs(v1 - v2)[both_inside].max() < 0.05


def test_positives_cover_the_overlap_uniformly():
    sampler = PatchPairSampler((40, 50), overlap=(0.5, 0.5), scale=1.0, rotation_deg=0.0)
    t1, t2, _ = sampler.draw((200, 200), np.random.default_rng(1))
    pair = PatchPair(None, None, (t1, t2), None, np.ones(2), 0.0)
    pos = pair.positives(4000, np.random.default_rng(2))
    # overlap box in patch-1 coordinates: exact for an axis-aligned pair
    lo = np.maximum(0, t1.from_source(t2.to_source([0, 0])))
    hi = np.minimum(np.array([39, 49]), t1.from_source(t2.to_source([39, 49])))
    np.testing.assert_allclose(hi - lo, [0.5 * 39, 0.5 * 49], atol=1e-9)
    for a in range(2):
        assert pos[0][:, a].min() >= lo[a] - 1e-4 and pos[0][:, a].max() <= hi[a] + 1e-4
        u = (pos[0][:, a] - lo[a]) / (hi[a] - lo[a])
        assert stats.kstest(u, "uniform").pvalue > 0.001


def test_tiny_overlap_still_gives_n_positives():
    sampler = PatchPairSampler((16, 16), overlap=(0.01, 0.01), scale=1.0)
    rng = np.random.default_rng(3)
    t1, t2, _ = sampler.draw((100, 100), rng)
    pair = PatchPair(None, None, (t1, t2), None, np.ones(2), 0.0)
    pos = pair.positives(200, rng)
    assert pos.shape == (2, 200, 2)
    np.testing.assert_allclose(t1.to_source(pos[0].astype(float)),
                               t2.to_source(pos[1].astype(float)), atol=1e-4)


# ------------------------------------------------------------------------------------ no flips
EXTREME = [
    dict(patch_shape=(24, 24), scale=(0.1, 10.0), scale_anisotropy=1.0, rotation_deg=180.0,
         elastic=True, elastic_magnitude=0.25, elastic_grid=1, overlap=(0.05, 1.0)),
    dict(patch_shape=(24, 24), scale=(0.5, 2.0), rotation_deg=180.0, elastic=True,
         elastic_magnitude=0.25, elastic_grid=8),
    dict(patch_shape=(8, 20, 20), scale=(0.1, 10.0), scale_anisotropy=1.0, rotation_deg=180.0,
         rotation_axes="any", elastic=True, elastic_magnitude=0.25, elastic_grid=(1, 3, 6)),
    dict(patch_shape=(8, 20, 20), rotation_deg=180.0, rotation_axes="axial", elastic=True,
         elastic_magnitude=(0.01, 0.25, 0.25), elastic_grid=4),
]


@pytest.mark.parametrize("params", EXTREME)
def test_no_flip_ever(params):
    sampler = PatchPairSampler(**params)
    ndim = sampler.ndim
    rng = np.random.default_rng(11)
    shape = (64, 64) if ndim == 2 else (30, 50, 50)
    for _ in range(25):
        for t in sampler.draw(shape, rng)[:2]:
            det_m = np.linalg.det(t.matrix)
            assert det_m > 0
            assert t.elastic_lipschitz <= 0.5 + 1e-9
            det = fd_jacobian_det(t._coords64(feature_grid_positions(t.patch_shape)))
            # the deformation keeps det(J) >= det(M) (1 - L)^ndim > 0 everywhere
            assert det.min() > 0
            assert det.min() >= 0.999 * det_m * (1 - t.elastic_lipschitz) ** ndim
            # also on the strided grid the loss uses, from the public float32 coordinates
            assert fd_jacobian_det(t.source_coords(stride=2)).min() > 0


def test_reflections_and_folds_are_refused():
    with pytest.raises(ValueError, match="det"):
        PatchTransform((8, 8), np.diag([1.0, -1.0]), (0, 0))
    steep = np.zeros((2, 5, 5))
    steep[0, 2, 2] = 10.0  # a 10-voxel bump over a 3.5-voxel control spacing
    with pytest.raises(ValueError, match="elastic"):
        PatchTransform((8, 8), np.eye(2), (0, 0), elastic=steep)


# ------------------------------------------------------------------------------------ overlap
@pytest.mark.parametrize("ndim", [2, 3])
def test_overlap_ratio_is_uniform_in_the_requested_range(ndim):
    lo_r, hi_r = 0.3, 0.8
    patch = (20, 30) if ndim == 2 else (8, 20, 24)
    sampler = PatchPairSampler(patch, overlap=(lo_r, hi_r), scale=(0.7, 1.4), scale_anisotropy=0.3)
    rng = np.random.default_rng(7)
    source = (120, 150) if ndim == 2 else (40, 90, 100)
    ratios = []
    for _ in range(300):
        t1, t2, _ = sampler.draw(source, rng)
        P1 = np.asarray(patch) - 1.0
        iv = []
        for t in (t1, t2):
            a = t.to_source(np.zeros(ndim))
            b = t.to_source(P1)
            iv.append((np.minimum(a, b), np.maximum(a, b)))
        ov = np.minimum(iv[0][1], iv[1][1]) - np.maximum(iv[0][0], iv[1][0])
        side = np.minimum(iv[0][1] - iv[0][0], iv[1][1] - iv[1][0])
        ratios.append(ov / side)
        # crop centres inside the image
        for t in (t1, t2):
            c = t.to_source(P1 / 2)
            assert np.all(c >= -1e-9) and np.all(c <= np.asarray(source) - 1 + 1e-9)
    ratios = np.array(ratios)
    assert ratios.min() >= lo_r - 1e-9 and ratios.max() <= hi_r + 1e-9
    for a in range(ndim):
        assert stats.kstest((ratios[:, a] - lo_r) / (hi_r - lo_r), "uniform").pvalue > 0.001


def test_overlap_is_never_empty_even_with_large_rotations():
    sampler = PatchPairSampler((32, 32), overlap=(0.05, 0.2), rotation_deg=90.0, elastic=True,
                               elastic_magnitude=0.1)
    rng = np.random.default_rng(0)
    for _ in range(30):
        t1, t2, _ = sampler.draw((128, 128), rng)
        assert estimate_overlap(t1, t2) > 0


def test_patches_bigger_than_the_image_still_overlap():
    sampler = PatchPairSampler((64, 64), overlap=(0.2, 1.0))
    pair = sampler.sample(np.zeros((10, 12), np.float32), np.random.default_rng(0))
    assert pair.overlap_fraction > 0
    assert pair.positives(10, np.random.default_rng(1)).shape == (2, 10, 2)


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("preset", ["xray-lite", "ct-lite"])
def test_same_seed_same_pair_and_exact_replay(preset):
    sampler = sampler_for_preset(preset, noise_std=0.05, rotation_deg=10.0, elastic=True)
    shape = (300, 300) if sampler.ndim == 2 else (60, 100, 100)
    src, _ = smooth_image(shape, seed=1)
    a = sampler.sample(src, np.random.default_rng(42), spacing=[2.0] * sampler.ndim)
    b = sampler.sample(src, np.random.default_rng(42), spacing=[2.0] * sampler.ndim)
    np.testing.assert_array_equal(a.patches, b.patches)
    assert a.transforms == b.transforms and a.jitter == b.jitter
    np.testing.assert_array_equal(a.positives(50, np.random.default_rng(3)),
                                  b.positives(50, np.random.default_rng(3)))
    c = sampler.sample(src, np.random.default_rng(43))
    assert not np.array_equal(a.patches, c.patches)
    for k in range(2):
        t = a.transforms[k]
        replay = PatchTransform.from_dict(json.loads(json.dumps(t.to_dict())))
        assert replay == t
        np.testing.assert_array_equal(replay.apply(src, a.cval), a.clean_patches[k])
        np.testing.assert_array_equal(replay.source_coords(4), t.source_coords(4))


def test_intensity_jitter_is_applied_after_resampling_and_can_be_off():
    src, _ = smooth_image((100, 100), seed=2)
    pair = PatchPairSampler((32, 32), intensity_jitter=0.2).sample(src, np.random.default_rng(0))
    for k in range(2):
        g, b = pair.jitter["gain"][k], pair.jitter["bias"][k]
        assert 0.8 <= g <= 1.2 and -0.2 <= b <= 0.2
        np.testing.assert_allclose(pair.patches[k], pair.clean_patches[k] * g + b, atol=1e-5)
        np.testing.assert_array_equal(pair.clean_patches[k],
                                      pair.transforms[k].apply(src, pair.cval))
    off = PatchPairSampler((32, 32), intensity_jitter=0.0).sample(src, np.random.default_rng(0))
    np.testing.assert_array_equal(off.patches, off.clean_patches)
    assert off.cval == pytest.approx(float(src.min()))


# ------------------------------------------------------------------------------------ grids, mm
def test_strided_grid_and_source_mm():
    sampler = PatchPairSampler((8, 20, 22), rotation_deg=30.0, rotation_axes="any", elastic=True)
    spacing = (2.0, 0.7, 1.3)
    pair = sampler.sample(np.zeros((30, 60, 60), np.float32), np.random.default_rng(0),
                          spacing=spacing)
    for stride in (1, 4, (1, 4, 4), (2, 3, 5)):
        s = np.broadcast_to(stride, (3,))
        grid_shape = tuple(math.ceil(p / si) for p, si in zip((8, 20, 22), s))
        idx = pair.source_index(1, stride)
        mm = pair.source_mm(1, stride)
        assert idx.shape == (3,) + grid_shape and mm.dtype == np.float32
        np.testing.assert_allclose(mm, idx * np.reshape(spacing, (3, 1, 1, 1)), rtol=1e-6)
        pos = feature_grid_positions((8, 20, 22), stride)
        u = np.stack(np.meshgrid(*pos, indexing="ij"), -1).reshape(-1, 3)
        np.testing.assert_allclose(pair.transforms[1].to_source(u), idx.reshape(3, -1).T, atol=1e-3)
        # the feature index of a patch index is the inverse rule
        np.testing.assert_allclose(patch_to_feature_index(u, stride).reshape(*grid_shape, 3),
                                   np.stack(np.meshgrid(*[np.arange(g) for g in grid_shape],
                                                        indexing="ij"), -1), atol=1e-12)


def test_fast_paths_equal_map_coordinates_on_rough_images():
    rng = np.random.default_rng(4)
    for sampler, shape in ((sampler_for_preset("ct-lite", rotation_deg=30.0), (40, 70, 70)),
                           (sampler_for_preset("ct-lite"), (20, 50, 50)),
                           (sampler_for_preset("xray-lite"), (300, 300)),
                           (PatchPairSampler((6, 10, 10), rotation_axes="any", rotation_deg=40,
                                             elastic=True), (8, 12, 9))):
        src = rng.random(shape).astype(np.float32)
        for _ in range(4):
            pair = sampler.sample(src, rng)
            for k in range(2):
                ref = ndimage.map_coordinates(src, pair.transforms[k].source_coords(), order=1,
                                              mode="constant", cval=pair.cval, prefilter=False)
                np.testing.assert_allclose(pair.clean_patches[k], ref, atol=2e-6)


def test_from_source_reports_nan_for_non_finite_points():
    t = PatchTransform.from_parameters((16, 16), (20, 20), elastic=np.full((2, 5, 5), 0.5))
    out = t.from_source([[np.nan, 3.0], [20.0, 20.0]])
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))


# ------------------------------------------------------------------------------------ presets
def test_presets():
    assert sampler_for_preset("ct").patch_shape == (32, 96, 96)
    assert sampler_for_preset("xray").patch_shape == (400, 400)
    assert sampler_for_preset("ct-lite").patch_shape == (32, 64, 64)
    assert sampler_for_preset("xray-lite").patch_shape == (256, 256)
    assert sampler_for_preset("xray").elastic and not sampler_for_preset("ct").elastic
    s = sampler_for_preset("xray-lite", rotation_deg=30.0)
    assert s.rotation_deg == 30.0
    assert PatchPairSampler(**s.get_config()).get_config() == s.get_config()
    from samlearn.presets import PRESETS
    assert set(PRESETS) == {"ct", "ct-lite", "xray", "xray-lite"}
    with pytest.raises(ValueError, match="preset"):
        sampler_for_preset("mri")


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs, name", [
    (dict(patch_shape=(32, 96, 96, 4)), "patch_shape"),
    (dict(patch_shape=(32,)), "patch_shape"),
    (dict(patch_shape=(32, 1)), "patch_shape"),
    (dict(patch_shape=(32, 9.5)), "patch_shape"),
    (dict(scale=(-1.0, 1.2)), "scale"),
    (dict(scale=(1.2, 0.8)), "scale"),
    (dict(scale=0.0), "scale"),
    (dict(overlap=(0.0, 0.5)), "overlap"),
    (dict(overlap=(0.5, 1.2)), "overlap"),
    (dict(overlap=(0.8, 0.2)), "overlap"),
    (dict(overlap=0.5), "overlap"),
    (dict(scale_anisotropy=-0.1), "scale_anisotropy"),
    (dict(rotation_deg=-5.0), "rotation_deg"),
    (dict(rotation_deg=200.0), "rotation_deg"),
    (dict(rotation_axes="xyz"), "rotation_axes"),
    (dict(elastic="yes"), "elastic"),
    (dict(elastic_magnitude=-0.1), "elastic_magnitude"),
    (dict(elastic_magnitude=0.5), "elastic_magnitude"),
    (dict(elastic_magnitude=(0.1, 0.1, 0.1)), "elastic_magnitude"),
    (dict(elastic_grid=0), "elastic_grid"),
    (dict(elastic_grid=2.5), "elastic_grid"),
    (dict(intensity_jitter=1.5), "intensity_jitter"),
    (dict(noise_std=-1.0), "noise_std"),
    (dict(cval=float("nan")), "cval"),
])
def test_bad_parameters_name_the_parameter(kwargs, name):
    params = dict(patch_shape=(16, 16))
    params.update(kwargs)
    with pytest.raises(ValueError, match=name):
        PatchPairSampler(**params)


def test_bad_call_arguments():
    sampler = PatchPairSampler((16, 16))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="source_shape"):
        sampler.draw((40, 40, 40), rng)
    with pytest.raises(ValueError, match="source_array"):
        sampler.sample(np.zeros((4, 40, 40), np.float32), rng)
    with pytest.raises(ValueError, match="spacing"):
        sampler.sample(np.zeros((40, 40), np.float32), rng, spacing=(1.0, -2.0))
    with pytest.raises(ValueError, match="source_array"):
        sampler.sample(np.full((40, 40), np.nan, np.float32), rng)
    with pytest.raises(TypeError, match="rng"):
        sampler.draw((40, 40), "seed")
    pair = sampler.sample(np.zeros((40, 40), np.float32), rng)
    with pytest.raises(ValueError, match="n"):
        pair.positives(0, rng)
    with pytest.raises(ValueError, match="k"):
        pair.source_mm(2)
    with pytest.raises(ValueError, match="stride"):
        pair.source_mm(0, stride=0)
    t = pair.transforms[0]
    with pytest.raises(ValueError, match="u"):
        t.to_source(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="source_array"):
        t.apply(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="matrix"):
        PatchTransform((8, 8), np.eye(3), (0, 0))
    with pytest.raises(ValueError, match="offset"):
        PatchTransform((8, 8), np.eye(2), (0, 0, 0))
    with pytest.raises(ValueError, match="elastic"):
        PatchTransform((8, 8), np.eye(2), (0, 0), elastic=np.zeros((2, 3, 5)))


# ------------------------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_real_cephalogram_pair(ceph_dir):
    from samlearn import normalize_intensity, read_image
    img = read_image(ceph_dir / "images" / "001.png").resize((512, 512))
    img = normalize_intensity(img, "xray")
    sampler = sampler_for_preset("xray-lite", intensity_jitter=0.0)
    rng = np.random.default_rng(0)
    pair = sampler.sample(img.array, rng, spacing=img.spacing[::-1])
    assert pair.patches.shape == (2, 256, 256) and np.isfinite(pair.patches).all()
    pos = pair.positives(300, rng)
    v1 = ndimage.map_coordinates(pair.patches[0], pos[0].T, order=1)
    v2 = ndimage.map_coordinates(pair.patches[1], pos[1].T, order=1)
    x = pair.transforms[0].to_source(pos[0].astype(float))
    inside = np.all((x >= 3) & (x <= 508), axis=1)
    # the same anatomy in both patches: resampled values agree closely at positive pairs
    assert np.corrcoef(v1[inside], v2[inside])[0, 1] > 0.9
