"""Intensity (NCC) refinement: world-axis patch sampling and the shift search, on analytic textures
sampled on grids with anisotropic spacing, non-zero origins and non-identity directions."""
import numpy as np
import pytest

from samlearn import Image, ImageGeometry
from samlearn import OneShotLandmarkDetector
from samlearn.matching.ncc import ncc_refine, ncc_step_mm, sample_patches
from helpers import random_rotation
from fake_embedder import AnalyticEmbedder


class Texture:
    """A smooth random intensity pattern of world (anatomical) position: a sum of Gaussian blobs."""

    def __init__(self, ndim, extent, seed=0, n_blobs=None):
        rng = np.random.default_rng(seed)
        n = n_blobs or (60 if ndim == 2 else 150)
        self.centres = rng.uniform(-extent, extent, size=(n, ndim))
        self.sigmas = rng.uniform(1.5, 3.5, size=n)
        self.amps = rng.uniform(0.5, 2.0, size=n) * rng.choice([-1, 1], size=n)

    def __call__(self, anat):
        d2 = ((anat[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return (self.amps * np.exp(-d2 / (2 * self.sigmas ** 2))).sum(-1)


def image_of(texture, geometry, shift=None, source=None):
    """The texture seen through ``geometry``; the anatomy at world w is texture(w + shift)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geometry.shape], indexing="ij"), -1)
    world = geometry.array_index_to_world(idx.reshape(-1, geometry.ndim))
    if shift is not None:
        world = world + shift
    return Image(texture(world).reshape(geometry.shape).astype(np.float32), geometry, source=source)


def centred_geometry(size, spacing, seed, centre):
    """A grid with a random direction (reflections included) whose centre lies at world ``centre``."""
    d = random_rotation(np.random.default_rng(seed), len(size))
    half = np.asarray(spacing) * (np.asarray(size) - 1) / 2.0
    return ImageGeometry(size, spacing, np.asarray(centre) - d @ half, d)


GEOMS = {
    2: (centred_geometry((56, 48), (1.1, 0.8), 3, (4.0, -3.0)),
        centred_geometry((60, 50), (0.9, 1.05), 4, (5.0, -1.0))),
    3: (centred_geometry((30, 28, 22), (1.2, 1.0, 1.6), 5, (2.0, 3.0, -1.0)),
        centred_geometry((32, 30, 20), (1.0, 1.3, 1.5), 6, (3.0, 2.0, 0.0))),
}


def centre_points(geometry, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.35, 0.65, size=(n, geometry.ndim)) * (np.asarray(geometry.size) - 1)
    return geometry.index_to_world(idx)


def test_patch_axes_follow_world_axes_both_ways():
    # intensity linear in world (x, y, z): the patch's last array axis must run along world x,
    # the one before along world y, ... whatever the image's direction, spacing and origin
    for ndim in (2, 3):
        geom = GEOMS[ndim][0]
        coef = np.array([2.0, -3.0, 5.0][:ndim])
        img = image_of(lambda w: w @ coef + 7.0, geom)
        p = centre_points(geom, 2, seed=ndim)
        step, half = 0.7, 3
        patches = sample_patches(img, p, half, step)
        assert patches.shape == (2,) + (2 * half + 1,) * ndim
        centre = (half,) * ndim
        np.testing.assert_allclose(patches[(slice(None),) + centre], p @ coef + 7.0, rtol=1e-5, atol=1e-3)
        for k in range(ndim):  # one step along array axis ndim - 1 - k is one step along world axis k
            ax = ndim - 1 - k
            nxt = list(centre)
            nxt[ax] += 1
            diff = patches[(slice(None),) + tuple(nxt)] - patches[(slice(None),) + centre]
            np.testing.assert_allclose(diff, coef[k] * step, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_axis_aligned_sampling_equals_map_coordinates(ndim, monkeypatch):
    """Images whose axes lie along the world axes (identity, flipped, permuted directions) take the
    separable corner-gather path: the same samples as map_coordinates (border values beyond the
    image, points near and outside the borders included), with the patch axes along world axes."""
    import samlearn.matching.ncc as ncc
    rng = np.random.default_rng(ndim)
    shape = (23, 19) if ndim == 2 else (13, 11, 9)
    arr = rng.normal(size=shape).astype(np.float32)
    flips = np.diag([1.0, -1.0, 1.0][:ndim])
    perm = np.eye(ndim)[::-1] * np.array([1.0, -1.0, -1.0][:ndim])
    taken = []
    real = ncc._sample_separable
    monkeypatch.setattr(ncc, "_sample_separable", lambda *a: taken.append(1) or real(*a))
    for d in (np.eye(ndim), flips, perm):
        im = Image.from_array(arr, spacing=(0.7, 1.3, 2.1)[:ndim], origin=(5.0, -20.0, 13.0)[:ndim],
                              direction=d)
        idx = rng.uniform(-3, np.asarray(im.size) + 2, size=(9, ndim))  # inside, at and beyond borders
        pts = im.geometry.index_to_world(idx)
        n_taken = len(taken)
        fast = sample_patches(im, pts, 3, 0.9)
        assert len(taken) > n_taken
        monkeypatch.setattr(ncc, "_grid_axes", lambda lin: None)
        slow = sample_patches(im, pts, 3, 0.9)
        monkeypatch.undo()
        monkeypatch.setattr(ncc, "_sample_separable", lambda *a: taken.append(1) or real(*a))
        np.testing.assert_allclose(fast, slow, atol=1e-5, rtol=0)
        # a linear ramp in world x, y(, z): patch array axis ndim - 1 - k steps along world axis k
        coef = np.array([2.0, -3.0, 5.0][:ndim])
        ramp = image_of(lambda w: w @ coef + 7.0, im.geometry)
        inner = im.geometry.index_to_world(np.asarray(im.size)[None] / 2.0)
        patch = sample_patches(ramp, inner, 1, 0.5)[0]
        for k in range(ndim):
            ax = ndim - 1 - k
            lo, hi = [1] * ndim, [1] * ndim
            hi[ax] = 2
            assert patch[tuple(hi)] - patch[tuple(lo)] == pytest.approx(coef[k] * 0.5, abs=1e-3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_refinement_recovers_a_known_shift(ndim):
    tex = Texture(ndim, extent=30.0, seed=ndim)
    g_t, g_q = GEOMS[ndim]
    shift = np.array([2.3, -1.7, 1.1][:ndim])       # anatomy at template w is at query w + shift
    template = image_of(tex, g_t)
    query = image_of(tex, g_q, shift=-shift)         # query(w) = texture(w - shift)
    pts = centre_points(g_t, 5, seed=10 + ndim)
    truth = pts + shift
    rng = np.random.default_rng(ndim)
    start = truth + rng.uniform(-2.0, 2.0, size=truth.shape)    # a SAM match within 2 mm
    radius = 8.0 if ndim == 2 else 6.0
    step = ncc_step_mm(radius, np.minimum(g_t.spacing.min(), 0.5), ndim)
    half = int(round(radius / step))
    patches = sample_patches(template, pts, half, step)[None]
    out, peak = ncc_refine(patches, query, start, step=step, search_mm=3.0, penalty=0.0)
    err0 = np.linalg.norm(start - truth, axis=1)
    err = np.linalg.norm(out - truth, axis=1)
    assert err0.mean() > 1.0
    assert err.max() < 0.25, (err0, err)
    assert np.all(peak > 0.95)


def test_flat_patches_and_shift_limits():
    g_t, g_q = GEOMS[2]
    flat = Image(np.full(g_t.shape, 3.0, np.float32), g_t)
    tex = Texture(2, 30.0, seed=1)
    query = image_of(tex, g_q)
    pts = centre_points(g_t, 3, seed=1)
    patches = sample_patches(flat, pts, 5, 1.0)[None]
    out, peak = ncc_refine(patches, query, pts, step=1.0, search_mm=2.0)
    np.testing.assert_array_equal(out, pts)          # no contrast in the template: unchanged
    assert np.isnan(peak).all()
    # a real patch moves a point by at most the search radius per axis (plus half a step)
    patches = sample_patches(image_of(tex, g_t), pts, 5, 1.0)[None]
    far = pts + 15.0
    out, _ = ncc_refine(patches, query, far, step=1.0, search_mm=2.0)
    assert np.abs(out - far).max() <= 2.5 + 1e-9


@pytest.mark.parametrize("ndim", [2, 3])
def test_flat_background_next_to_tissue_never_wins(ndim):
    # CT-like: texture for world x < 0, exact air (-1024) beyond; rounding in the window sums of
    # the flat part must not turn into spurious correlations (a regression: they reached NCC 6)
    tex = Texture(ndim, 30.0, seed=3)
    geom = ImageGeometry((60,) * ndim if ndim == 2 else (40, 40, 30), 1.0, (-30.0,) * ndim)
    textured = image_of(lambda w: 300.0 * tex(w) - 1024.0 + 40.0, geom)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geom.shape], indexing="ij"), -1)
    world_x = geom.array_index_to_world(idx.reshape(-1, ndim))[:, 0].reshape(geom.shape)
    img = Image(np.where(world_x < 0, textured.array, -1024.0).astype(np.float32), geom)
    truth = np.array([[-4.0] + [0.0] * (ndim - 1)])
    patches = sample_patches(img, truth, 8, 1.0)[None]
    out, peak = ncc_refine(patches, img, truth + [[3.0] + [0.0] * (ndim - 1)], step=1.0, search_mm=8.0)
    np.testing.assert_allclose(out, truth, atol=0.2)
    assert 0.95 < peak[0] <= 1.0
    # a start deep in the air: every window flat, the point stays
    deep = np.array([[14.0] + [0.0] * (ndim - 1)])
    out, peak = ncc_refine(patches, img, deep, step=1.0, search_mm=4.0)
    np.testing.assert_array_equal(out, deep)
    assert np.isnan(peak).all()


def _shifted_scene(ndim, offset):
    """Template and query images of one texture (query anatomy = template anatomy moved by
    ``shift``), and an analytic embedder whose query frame is off by ``offset``: SAM's matches
    land ``offset`` away from the truth, the intensities know better."""
    tex = Texture(ndim, 30.0, seed=7 + ndim)
    g_t, g_q = GEOMS[ndim]
    shift = np.array([1.5, -2.0, 1.0][:ndim])
    template = image_of(tex, g_t, source="template")
    query = image_of(tex, g_q, shift=-shift, source="query")
    # embedder anatomy a = w - shift - offset in the query: it matches template p at p + shift + offset
    emb = AnalyticEmbedder(frames={"query": (np.eye(ndim), -shift - offset)}, n_channels=64).fit([template])
    pts = centre_points(g_t, 4, seed=20 + ndim)
    return emb, template, query, pts, pts + shift


@pytest.mark.parametrize("ndim", [2, 3])
def test_detector_ncc_option_corrects_an_imprecise_match(ndim):
    offset = np.array([1.4, -1.0, 0.8][:ndim])
    emb, template, query, pts, truth = _shifted_scene(ndim, offset)
    base = OneShotLandmarkDetector(embedder=emb).fit(template, pts)
    err_base = np.linalg.norm(base.predict(query)[0] - truth, axis=1)
    assert err_base.min() > 0.5 * np.linalg.norm(offset)   # SAM alone lands off by about the offset
    det = OneShotLandmarkDetector(embedder=emb, ncc_radius_mm=6.0, ncc_search_mm=3.0).fit(template, pts)
    assert det.ncc_patches_.shape[:2] == (1, len(pts))
    err = np.linalg.norm(det.predict(query)[0] - truth, axis=1)
    # a fraction of a voxel (1-1.6 mm voxels, linear interpolation of the texture)
    assert err.max() < (0.3 if ndim == 2 else 0.5), (err_base, err)
    # refitting without the option drops the patches; predictions are SAM's again
    det.set_params(ncc_radius_mm=None).fit(template, pts)
    assert not hasattr(det, "ncc_patches_")
    np.testing.assert_allclose(det.predict(query), base.predict(query))


def test_detector_ncc_with_several_templates():
    # two templates of the same anatomy on different grids: patches of both are kept and their
    # NCC maps averaged; the result still lands on the truth
    ndim = 2
    offset = np.array([1.2, 1.0])
    emb, template, query, pts, truth = _shifted_scene(ndim, offset)
    tex = Texture(ndim, 30.0, seed=7 + ndim)
    g2 = centred_geometry((50, 52), (0.95, 1.15), 11, (3.0, -2.0))
    template2 = image_of(tex, g2, source="template2")
    det = OneShotLandmarkDetector(embedder=emb, ncc_radius_mm=6.0, ncc_search_mm=3.0)
    det.fit([template, template2], [pts, pts])
    assert det.ncc_patches_.shape[:2] == (2, len(pts))
    np.testing.assert_allclose(det.ncc_patches_[0], det.ncc_patches_[1], atol=0.05 * np.abs(det.ncc_patches_).max())
    err = np.linalg.norm(det.predict(query)[0] - truth, axis=1)
    assert err.max() < 0.5, err    # half a voxel (0.95-1.15 mm voxels); SAM alone is 1.6 mm off


@pytest.mark.parametrize("params, match", [
    (dict(ncc_radius_mm=0.0), "ncc_radius_mm"),
    (dict(ncc_radius_mm="auto"), "ncc_radius_mm"),
    (dict(ncc_radius_mm=5.0, ncc_search_mm=-1.0), "ncc_search_mm"),
    (dict(ncc_radius_mm=5.0, ncc_penalty=-0.1), "ncc_penalty"),
    (dict(ncc_radius_mm=5.0, ncc_penalty="low"), "ncc_penalty"),
])
def test_ncc_parameters_are_named(params, match):
    emb, template, _, pts, _ = _shifted_scene(2, np.zeros(2))
    with pytest.raises(ValueError, match=match):
        OneShotLandmarkDetector(embedder=emb, **params).fit(template, pts)
