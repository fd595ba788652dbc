"""Registration: transform objects (direction conventions!), robust affine fitting, SAM-affine and
SAM-coarse on an analytic embedder whose correspondences are known exactly."""
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from samlearn import Image, ImageGeometry
from samlearn import SAMAffineRegistrar, SAMDeformableRegistrar
from samlearn.exceptions import RegistrationError
from samlearn.matching import body_mask
from samlearn.transforms import AffineTransform, CompositeTransform, DisplacementField, fit_affine
from helpers import random_rotation
from fake_embedder import AnalyticEmbedder, PatchEmbedder


# ----------------------------------------------------------------------------- helpers

def blob_content(centres, widths, amps):
    """A smooth intensity function of world position (sum of Gaussian blobs)."""
    centres, widths, amps = map(np.asarray, (centres, widths, amps))

    def f(world):
        d2 = ((world[:, None, :] - centres[None]) ** 2).sum(-1)
        return (amps[None] * np.exp(-d2 / (2 * widths[None] ** 2))).sum(1)
    return f


def render(geometry: ImageGeometry, content, source=None) -> Image:
    """Image whose voxel at world position w holds content(w)."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geometry.shape], indexing="ij"), -1)
    world = geometry.array_index_to_world(idx.reshape(-1, geometry.ndim))
    return Image(content(world).reshape(geometry.shape).astype(np.float32), geometry, source=source)


def make_geometry(ndim, seed, size=None, spacing=None):
    rng = np.random.default_rng(seed)
    size = size or ((48, 40) if ndim == 2 else (30, 26, 20))
    spacing = spacing or ((1.3, 0.8) if ndim == 2 else (1.6, 1.2, 2.5))
    return ImageGeometry(size, spacing, rng.uniform(-40, 40, ndim), random_rotation(rng, ndim))


def rot(ndim, theta):
    r = np.eye(ndim)
    r[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return r


def centre_of(geometry):
    return geometry.index_to_world((np.asarray(geometry.size) - 1) / 2.0)


# ----------------------------------------------------------------------------- transforms

@pytest.mark.parametrize("ndim", [2, 3])
def test_known_shift_points_and_images_move_opposite_ways(ndim):
    fixed_geom = make_geometry(ndim, seed=ndim)
    c = centre_of(fixed_geom)
    content = blob_content([c, c + 8.0], [6.0, 4.0], [1000.0, -500.0])
    shift = np.array([6.0, -4.0, 3.0][:ndim])
    # the moving image shows the same anatomy displaced by +shift, on its own (rotated) grid
    moving_geom = make_geometry(ndim, seed=10 + ndim)
    moving_geom = ImageGeometry(moving_geom.size, moving_geom.spacing,
                                c + shift - moving_geom.direction @ ((np.asarray(moving_geom.size) - 1)
                                                                     / 2 * moving_geom.spacing),
                                moving_geom.direction)
    fixed = render(fixed_geom, content)
    moving = render(moving_geom, lambda w: content(w - shift))
    tx = AffineTransform.from_linear(np.eye(ndim), shift, reference=fixed)
    # points: fixed -> moving goes +shift
    p = np.array([c, c + 1.0])
    np.testing.assert_allclose(tx.transform_points(p), p + shift)
    np.testing.assert_allclose(tx.transform_points(c), c + shift)  # a single point stays 1D
    # image: resampling the moving image onto the fixed grid moves its content by -shift,
    # i.e. brings it back over the fixed image
    warped = tx.resample(moving)
    assert warped.geometry == fixed.geometry
    inner = np.abs(fixed.array) > 50
    err_right = np.abs(warped.array - fixed.array)[inner].mean()
    err_wrong = np.abs(tx.inverse().resample(moving, reference=fixed).array - fixed.array)[inner].mean()
    assert err_right < 0.03 * np.abs(fixed.array[inner]).mean()
    assert err_wrong > 10 * err_right
    # the sampled content at fixed points equals the moving content at transformed points
    np.testing.assert_allclose(moving.sample(tx.transform_points(p)), fixed.sample(p), rtol=0.05, atol=5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_inverse_sitk_and_resample_agree(ndim):
    rng = np.random.default_rng(ndim)
    a = rot(ndim, 0.2) * 1.05 + rng.normal(0, 0.02, (ndim, ndim))
    t = rng.uniform(-10, 10, ndim)
    fixed_geom = make_geometry(ndim, seed=3)
    tx = AffineTransform.from_linear(a, t, reference=fixed_geom)
    assert tx.matrix.shape == (ndim + 1, ndim + 1)
    np.testing.assert_allclose(tx.matrix[:ndim, :ndim], a)
    np.testing.assert_allclose(tx.matrix[:ndim, ndim], t)
    pts = rng.uniform(-50, 50, (20, ndim))
    np.testing.assert_allclose(tx.inverse().transform_points(tx.transform_points(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(tx.inverse().matrix @ tx.matrix, np.eye(ndim + 1), atol=1e-12)
    s = tx.to_sitk()
    np.testing.assert_allclose([s.TransformPoint(tuple(p)) for p in pts], tx.transform_points(pts),
                               atol=1e-9)
    back = AffineTransform.from_sitk(s)
    np.testing.assert_allclose(back.matrix, tx.matrix, atol=1e-12)
    # an Euler transform with a centre converts too
    e = sitk.Euler2DTransform() if ndim == 2 else sitk.Euler3DTransform()
    e.SetCenter([3.0] * ndim)
    e.SetTranslation([1.0] * ndim)
    e.SetAngle(0.3) if ndim == 2 else e.SetRotation(0.1, 0.2, 0.3)
    np.testing.assert_allclose(AffineTransform.from_sitk(e).transform_points(pts),
                               [e.TransformPoint(tuple(p)) for p in pts], atol=1e-9)
    # resample == sample the moving image at transformed fixed voxel centres
    c = centre_of(fixed_geom)
    content = blob_content([tx.transform_points(c)], [9.0], [100.0])
    moving = render(make_geometry(ndim, seed=4, size=(70, 60) if ndim == 2 else (40, 36, 30)), content)
    warped = tx.resample(moving)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_geom.shape], indexing="ij"), -1)
    world = fixed_geom.array_index_to_world(idx.reshape(-1, ndim))
    expected = moving.sample(tx.transform_points(world)).reshape(fixed_geom.shape)
    np.testing.assert_allclose(warped.array, expected, atol=1e-3)
    assert pickle.loads(pickle.dumps(tx)).matrix.tolist() == tx.matrix.tolist()


def _smooth_field(geom, amp=3.0, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in geom.shape], indexing="ij"), -1)
    w = geom.array_index_to_world(idx.reshape(-1, geom.ndim))
    k = rng.normal(0, 1 / 30.0, (geom.ndim, geom.ndim))
    u = amp * np.sin(w @ k.T + rng.uniform(0, 6, geom.ndim))
    return u.reshape(geom.shape + (geom.ndim,))


@pytest.mark.parametrize("ndim", [2, 3])
def test_displacement_field_matches_sitk_and_inverts(ndim):
    rng = np.random.default_rng(7)
    geom = make_geometry(ndim, seed=5, size=(20, 18) if ndim == 2 else (12, 11, 10),
                         spacing=(4.0, 5.0) if ndim == 2 else (4.0, 5.0, 6.0))
    fld = DisplacementField(_smooth_field(geom), geom)
    corners = geom.corners_world()
    lo, hi = corners.min(0), corners.max(0)
    pts = rng.uniform(lo - 10, hi + 10, (300, ndim))  # inside, near the border, outside
    s = fld.to_sitk()
    np.testing.assert_allclose(fld.transform_points(pts), [s.TransformPoint(tuple(p)) for p in pts],
                               atol=1e-6)
    # far outside the grid the field is zero
    far = hi + 100
    np.testing.assert_allclose(fld.transform_points(far[None]), far[None])
    inner = geom.index_to_world(rng.uniform(2, np.asarray(geom.size) - 3, (50, ndim)))
    inv = fld.inverse()
    # exact at the grid nodes; between them, up to the linear interpolation of the two fields
    np.testing.assert_allclose(inv.transform_points(fld.transform_points(inner)), inner, atol=0.1)
    nodes = geom.index_to_world(np.array([[3, 4, 5][:ndim], [5, 6, 7][:ndim]], float))
    np.testing.assert_allclose(fld.transform_points(inv.transform_points(nodes)), nodes, atol=1e-3)
    # composite (field, then affine) == sitk composite
    aff = AffineTransform.from_linear(rot(ndim, 0.1), rng.uniform(-5, 5, ndim))
    comp = CompositeTransform([fld, aff])
    np.testing.assert_allclose(comp.transform_points(pts), aff.transform_points(fld.transform_points(pts)))
    cs = comp.to_sitk()
    np.testing.assert_allclose(comp.transform_points(pts), [cs.TransformPoint(tuple(p)) for p in pts],
                               atol=1e-6)
    np.testing.assert_allclose(comp.inverse().transform_points(comp.transform_points(inner)), inner,
                               atol=0.1)
    # resample through the composite == sampling at the transformed points
    mapped_corners = comp.transform_points(geom.corners_world())
    lo_m, hi_m = mapped_corners.min(0) - 5, mapped_corners.max(0) + 5
    mgeom = ImageGeometry(tuple(int(v) for v in np.ceil((hi_m - lo_m) / 2.5)), 2.5, lo_m,
                          np.eye(ndim))
    moving = render(mgeom, blob_content([comp.transform_points(centre_of(geom))], [15.0], [100.0]))
    warped = comp.resample(moving, reference=geom)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geom.shape], indexing="ij"), -1)
    world = geom.array_index_to_world(idx.reshape(-1, ndim))
    mapped = comp.transform_points(world)
    ok = moving.geometry.contains(mapped, margin=-1.0)  # away from the moving image's border
    assert ok.mean() > 0.8
    np.testing.assert_allclose(warped.array.ravel()[ok], moving.sample(mapped[ok]), atol=1e-3)


def test_transform_bad_inputs():
    with pytest.raises(ValueError, match="matrix"):
        AffineTransform(np.eye(5))
    with pytest.raises(ValueError, match="singular"):
        AffineTransform(np.diag([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="last row"):
        AffineTransform(np.ones((3, 3)))
    tx = AffineTransform.identity(3)
    with pytest.raises(ValueError, match=r"points must have shape \(n_points, 3\)"):
        tx.transform_points(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="reference is needed"):
        tx.resample(Image.from_array(np.zeros((4, 5, 6))))
    with pytest.raises(ValueError, match="moving_image is 2D"):
        tx.resample(Image.from_array(np.zeros((4, 5))), reference=Image.from_array(np.zeros((4, 5, 6))))
    with pytest.raises(TypeError, match="reference must be"):
        tx.resample(Image.from_array(np.zeros((4, 5, 6))), reference="nope")
    geom = ImageGeometry((4, 5), 1.0)
    with pytest.raises(ValueError, match="displacements must have shape"):
        DisplacementField(np.zeros((4, 5, 2)), geom)
    with pytest.raises(ValueError, match="mix dimensions"):
        CompositeTransform([AffineTransform.identity(2), AffineTransform.identity(3)])


# ----------------------------------------------------------------------------- robust fitting

@pytest.mark.parametrize("ndim", [2, 3])
def test_robust_fits_survive_30_percent_outliers(ndim):
    rng = np.random.default_rng(ndim)
    a = rot(ndim, 0.15) * 1.04
    t = rng.uniform(-10, 10, ndim)
    x = rng.uniform(-80, 80, (400, ndim))
    y = x @ a.T + t + rng.normal(0, 0.5, x.shape)
    bad = rng.choice(len(x), size=120, replace=False)  # 30% wrong matches, anywhere
    y[bad] = rng.uniform(-100, 100, (len(bad), ndim))
    probe = rng.uniform(-80, 80, (50, ndim))
    truth = probe @ a.T + t

    def err(m):
        return np.linalg.norm(AffineTransform(m).transform_points(probe) - truth, axis=1).max()
    m_ls, inl_ls = fit_affine(x, y)
    assert inl_ls.all() and err(m_ls) > 5.0  # plain least squares fails
    m_r, inl_r = fit_affine(x, y, robust="ransac", residual_threshold_mm=3.0, rng=0)
    assert err(m_r) < 0.5
    assert not inl_r[bad].any() and inl_r.sum() >= 0.95 * (len(x) - len(bad))
    m_h, inl_h = fit_affine(x, y, robust="huber")
    assert err(m_h) < 1.0
    assert inl_h[bad].sum() < 5
    # deterministic for a seed
    np.testing.assert_array_equal(fit_affine(x, y, robust="ransac", residual_threshold_mm=3.0, rng=0)[0], m_r)
    with pytest.raises(RegistrationError, match="at least"):
        fit_affine(x[:2], y[:2])
    with pytest.raises(ValueError, match="robust must be"):
        fit_affine(x, y, robust="lmeds")
    with pytest.raises(ValueError, match="n_trials"):
        fit_affine(x, y, robust="ransac", residual_threshold_mm=3.0, n_trials=0)


@pytest.mark.parametrize("n,k", [(3, 3), (4, 3), (5, 4), (1000, 3)])
def test_ransac_samples_are_distinct_index_sets(n, k):
    """RANSAC's minimal samples: k distinct indices each, in range, all index sets reachable (even
    when n is barely above k), reproducible for a seed."""
    from samlearn.transforms.fitting import _ransac_samples
    s = _ransac_samples(np.random.default_rng(0), n, k, 500)
    assert s.shape == (500, k) and s.min() >= 0 and s.max() < n
    assert (np.diff(s, axis=1) > 0).all()
    if n <= 5:
        from math import comb
        assert len({tuple(r) for r in s}) == comb(n, k)
    np.testing.assert_array_equal(s, _ransac_samples(np.random.default_rng(0), n, k, 500))


def test_body_mask_keeps_lungs_and_drops_table():
    arr = np.full((20, 40, 40), -1000.0, np.float32)
    zz, yy, xx = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    arr[((yy - 18) ** 2 + (xx - 20) ** 2) < 15 ** 2] = 40.0         # body
    arr[((yy - 18) ** 2 + (xx - 14) ** 2) < 4 ** 2] = -850.0         # a lung inside it
    arr[:, 36:38, 5:35] = 200.0                                      # the table, apart from it
    img = Image.from_array(arr, spacing=(2.0, 2.0, 3.0), origin=(10, -5, 3))
    mask, inside = body_mask(img, -500.0)
    w = img.array_index_to_world
    assert inside(w([[10, 18, 20]]))[0]          # body
    assert inside(w([[10, 18, 14]]))[0]          # lung, filled
    assert not inside(w([[10, 37, 20]]))[0]      # table
    assert not inside(w([[10, 2, 2]]))[0]        # air


# ----------------------------------------------------------------------------- SAM-affine

class Pair:
    """A fixed image (identity anatomy) and a moving image whose anatomy is displaced by a known
    map fixed -> moving (affine, optionally plus a smooth deformation)."""

    def __init__(self, ndim, seed=0, deform_mm=0.0, spacing=None):
        rng = np.random.default_rng(seed)
        size = (64, 56) if ndim == 2 else (36, 32, 24)
        spacing = spacing or ((1.5, 1.2) if ndim == 2 else (2.0, 2.2, 3.0))
        self.fixed_geom = ImageGeometry(size, spacing, rng.uniform(-30, 30, ndim), random_rotation(rng, ndim))
        c = centre_of(self.fixed_geom)
        self.a = rot(ndim, rng.uniform(0.08, 0.15)) * rng.uniform(0.95, 1.05)
        self.t = c - self.a @ c + rng.uniform(-6, 6, ndim)
        self.k = rng.normal(0, 1 / 40.0, (ndim, ndim))
        self.phase = rng.uniform(0, 6, ndim)
        self.deform_mm = deform_mm
        # the moving grid covers the mapped fixed field of view with a margin
        mcorners = self.truth(self.fixed_geom.corners_world())
        lo, hi = mcorners.min(0) - 10, mcorners.max(0) + 10
        msp = np.asarray(spacing) * 1.1
        msize = np.ceil((hi - lo) / msp).astype(int)
        self.moving_geom = ImageGeometry(tuple(int(v) for v in msize), msp, lo, np.eye(ndim))
        content = blob_content([c], [20.0], [500.0])
        self.fixed = render(self.fixed_geom, content, source="fixed")
        self.moving = render(self.moving_geom, lambda w: content(self.inverse_truth(w)), source="moving")
        frames = {"moving": self.inverse_truth}  # anatomy of a moving point = its fixed position
        self.embedder = AnalyticEmbedder(frames=frames, n_channels=64).fit([self.fixed])

    def smooth(self, x):
        return self.deform_mm * np.sin(x @ self.k.T + self.phase)

    def truth(self, x):
        """fixed world -> moving world."""
        x = np.asarray(x, float)
        return (x + self.smooth(x)) @ self.a.T + self.t

    def inverse_truth(self, y):
        z = np.linalg.solve(self.a, (np.asarray(y, float) - self.t).T).T
        x = z.copy()
        for _ in range(60):
            x = z - self.smooth(x)
        return x

    def probe(self, n=200, seed=1):
        rng = np.random.default_rng(seed)
        idx = rng.uniform(0.15, 0.85, (n, self.fixed_geom.ndim)) * (np.asarray(self.fixed_geom.size) - 1)
        return self.fixed_geom.index_to_world(idx)

    def local_voxel(self):
        return self.moving_geom.strided(self.embedder.local_stride).spacing.max()


@pytest.fixture(scope="module")
def pair2d():
    return Pair(2, seed=3)


@pytest.fixture(scope="module")
def pair3d():
    return Pair(3, seed=4)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("robust", ["ransac", "huber", None])
def test_registrar_recovers_known_affine(ndim, robust, pair2d, pair3d):
    p = pair2d if ndim == 2 else pair3d
    reg = SAMAffineRegistrar(embedder=p.embedder, grid_spacing_mm=8.0, robust=robust,
                             body_threshold=None, n_refinements=0, random_state=0)
    assert reg.fit(p.fixed, p.moving) is reg
    probe = p.probe()
    err = np.linalg.norm(reg.transform_.transform_points(probe) - p.truth(probe), axis=1)
    assert err.max() < 0.25 * p.local_voxel(), (err.max(), p.local_voxel())
    assert isinstance(reg.transform_, AffineTransform)
    np.testing.assert_allclose(reg.transform_points(probe), reg.transform_.transform_points(probe))
    m = reg.matches_
    assert len(m) == len(m.moving_points) == len(m.scores) == reg.inlier_mask_.shape[0] > 10
    assert np.all(m.scores >= reg.score_threshold)
    assert reg.n_matched_ <= reg.n_body_points_ <= reg.n_grid_points_
    assert set(reg.timings_) >= {"embed", "match", "fit", "total"}
    # the registration brings the moving image over the fixed one
    warped = reg.resample(p.moving)
    assert warped.geometry == p.fixed.geometry
    inner = p.fixed.array > 50
    assert np.abs(warped.array - p.fixed.array)[inner].mean() < 0.05 * p.fixed.array[inner].mean()


def test_registrar_cycle_check_max_points_and_determinism(pair2d):
    p = pair2d
    kw = dict(embedder=p.embedder, grid_spacing_mm=6.0, max_points=40, body_threshold=None,
              cycle_threshold_mm=3.0, n_refinements=0, random_state=1)
    a = SAMAffineRegistrar(**kw).fit(p.fixed, p.moving)
    b = SAMAffineRegistrar(**kw).fit(p.fixed, p.moving)
    assert a.n_matched_ == 40 < a.n_body_points_
    assert a.matches_.cycle_distances_mm is not None and np.all(a.matches_.cycle_distances_mm <= 3.0)
    np.testing.assert_array_equal(a.transform_.matrix, b.transform_.matrix)
    np.testing.assert_array_equal(a.matches_.fixed_points, b.matches_.fixed_points)


def test_registrar_body_threshold_auto_2d_drops_background():
    p = Pair(2, seed=5)
    reg = SAMAffineRegistrar(embedder=p.embedder, grid_spacing_mm=6.0, n_refinements=0,
                             random_state=0).fit(p.fixed, p.moving)
    assert reg.n_body_points_ < reg.n_grid_points_
    probe = p.probe()
    err = np.linalg.norm(reg.transform_points(probe) - p.truth(probe), axis=1)
    assert err.max() < 0.3 * p.local_voxel()


# ----------------------------------------------------------------------------- SAM-coarse

@pytest.mark.parametrize("ndim", [2, 3])
def test_sam_coarse_lowers_error_on_smooth_deformation(ndim):
    p = Pair(ndim, seed=6 + ndim, deform_mm=4.0)
    # the analytic embedder knows the anatomy of the given images only, not of resampled copies:
    # no refinement pass, dense matches in the moving image's own embedding
    common = dict(embedder=p.embedder, grid_spacing_mm=8.0, body_threshold=None, n_refinements=0,
                  random_state=0)
    aff = SAMAffineRegistrar(**common).fit(p.fixed, p.moving)
    dfm = SAMDeformableRegistrar(**common, rematch="original", dense_grid_spacing_mm=4.0,
                                 field_spacing_mm=4.0, smoothing_mm=6.0,
                                 outlier_factor=3.0).fit(p.fixed, p.moving)
    probe = p.probe()
    e_aff = np.linalg.norm(aff.transform_points(probe) - p.truth(probe), axis=1)
    e_dfm = np.linalg.norm(dfm.transform_points(probe) - p.truth(probe), axis=1)
    assert e_dfm.mean() < 0.5 * e_aff.mean(), (e_dfm.mean(), e_aff.mean())
    np.testing.assert_allclose(dfm.affine_transform_.matrix, aff.transform_.matrix)
    assert isinstance(dfm.transform_, CompositeTransform)
    assert isinstance(dfm.field_, DisplacementField) and len(dfm.dense_matches_) > 20
    # the SimpleITK version means the same thing, and resampling uses it
    s = dfm.transform_.to_sitk()
    np.testing.assert_allclose(dfm.transform_points(probe[:20]),
                               [s.TransformPoint(tuple(q)) for q in probe[:20]], atol=1e-6)
    inv = dfm.transform_.inverse()
    np.testing.assert_allclose(inv.transform_points(dfm.transform_points(probe)), probe, atol=0.1)
    back = pickle.loads(pickle.dumps(dfm))
    np.testing.assert_array_equal(back.transform_points(probe), dfm.transform_points(probe))
    warped = dfm.resample(p.moving)
    inner = p.fixed.array > 50
    r_dfm = np.abs(warped.array - p.fixed.array)[inner].mean()
    r_aff = np.abs(aff.resample(p.moving).array - p.fixed.array)[inner].mean()
    assert r_dfm < r_aff


class TexturedPair(Pair):
    """Like Pair, with a random blob texture over the whole field of view and a content-based
    embedder (PatchEmbedder), so resampled (warped) copies of the moving image embed correctly."""

    def __init__(self, ndim, seed=0, deform_mm=0.0):
        super().__init__(ndim, seed=seed, deform_mm=deform_mm)
        rng = np.random.default_rng(100 + seed)
        g = self.fixed_geom
        n = 60 if ndim == 2 else 700
        centres = g.index_to_world(rng.uniform(-0.1, 1.1, (n, ndim)) * (np.asarray(g.size) - 1))
        content = blob_content(centres, rng.uniform(3.0, 6.0, n), rng.uniform(-400, 400, n))
        self.fixed = render(self.fixed_geom, content, source="fixed")
        self.moving = render(self.moving_geom, lambda w: content(self.inverse_truth(w)), source="moving")
        self.embedder = PatchEmbedder().fit([self.fixed])


def test_refinement_pass_and_warped_rematch_on_content_embeddings(ndim=2):
    """Refinement passes and rematch='warped' embed the affinely resampled moving image: with a
    content-based embedder they must keep (or improve) the accuracy, and SAM-coarse on the warped
    embedding must lower the error on a smooth deformation. 2D only: patch descriptors of smooth
    3D textures are too ambiguous for the first (global) matching pass; the code paths do not
    depend on the dimension and the 3D registration paths are checked with the analytic
    embedder above."""
    p = TexturedPair(ndim, seed=20 + ndim, deform_mm=3.0)
    common = dict(embedder=p.embedder, grid_spacing_mm=6.0, body_threshold=None, random_state=0)
    probe = p.probe()

    def tre(reg):
        return np.linalg.norm(reg.transform_points(probe) - p.truth(probe), axis=1).mean()
    one = SAMAffineRegistrar(**common, n_refinements=0).fit(p.fixed, p.moving)
    n0 = p.embedder.n_transforms_
    ref = SAMAffineRegistrar(**common, n_refinements=1).fit(p.fixed, p.moving)
    assert p.embedder.n_transforms_ - n0 == 3  # fixed, moving, and the warped moving image
    assert ref.n_refinements_done_ == 1 and "refine" in ref.timings_
    assert tre(ref) < 1.1 * tre(one) + 0.05
    assert np.all(np.isfinite(ref.matches_.moving_points))
    dfm = SAMDeformableRegistrar(**common, n_refinements=1, rematch="warped", dense_grid_spacing_mm=3.0,
                                 field_spacing_mm=4.0, smoothing_mm=6.0).fit(p.fixed, p.moving)
    assert tre(dfm) < 0.7 * tre(ref), (tre(dfm), tre(ref), tre(one))
    # a second SAM-coarse pass: one more warped embedding, a correction field in front of the chain
    n2 = p.embedder.n_transforms_
    dfm2 = SAMDeformableRegistrar(**common, n_refinements=1, rematch="warped", dense_grid_spacing_mm=3.0,
                                  field_spacing_mm=4.0, smoothing_mm=6.0,
                                  n_coarse_passes=2).fit(p.fixed, p.moving)
    assert p.embedder.n_transforms_ - n2 == 4
    assert dfm2.n_coarse_passes_done_ == 2 and dfm.n_coarse_passes_done_ == 1
    assert [type(t) for t in dfm2.transform_.transforms] == [DisplacementField, DisplacementField,
                                                             AffineTransform]
    assert tre(dfm2) < 1.1 * tre(dfm) + 0.05, (tre(dfm2), tre(dfm))
    np.testing.assert_allclose(dfm2.transform_points(probe[:10]),
                               [dfm2.transform_.to_sitk().TransformPoint(tuple(q)) for q in probe[:10]],
                               atol=1e-6)
    # the dense matches reported are those of the last pass, mapped into the moving image's world
    # coordinates (not the warped copy's): they sit where the true warp puts their fixed points
    dm = dfm2.dense_matches_
    assert np.median(np.linalg.norm(p.truth(dm.fixed_points) - dm.moving_points, axis=1)) < 1.5
    with pytest.raises(ValueError, match="n_coarse_passes"):
        SAMDeformableRegistrar(**common, n_coarse_passes=0).fit(p.fixed, p.moving)
    n1 = p.embedder.n_transforms_
    SAMDeformableRegistrar(**common, n_refinements=0).fit(p.fixed, p.moving)  # no refinement
    assert p.embedder.n_transforms_ - n1 == 3  # the dense stage warps and embeds once itself


# ambiguous synthetic textures make the first-pass matches noisy: the registration is right, but
# its first-pass agreement is low, so it warns (a false alarm the real-CT calibration does not see)
@pytest.mark.filterwarnings("ignore::samlearn.exceptions.RegistrationQualityWarning")
def test_ncc_refinement_sharpens_coarse_matches(ndim=2):
    """With a coarse local map (stride 4: its matches carry voxel-sized errors), the intensity
    refinement of the matches made on the affinely resampled moving image brings the affine close
    to the best affine, and SAM-coarse's error down to about that floor (measured: 0.39 -> 0.16 mm)."""
    p = TexturedPair(ndim, seed=30 + ndim, deform_mm=4.0)
    p.embedder = PatchEmbedder(local_stride=4).fit([p.fixed])
    common = dict(embedder=p.embedder, grid_spacing_mm=6.0, body_threshold=None, random_state=0)
    probe = p.probe()
    # the floor of any affine: the least-squares affine of the true map on the probe points
    design = np.c_[probe, np.ones(len(probe))]
    coef = np.linalg.lstsq(design, p.truth(probe), rcond=None)[0]
    floor = np.linalg.norm(design @ coef - p.truth(probe), axis=1).mean()

    def tre(reg):
        return np.linalg.norm(reg.transform_points(probe) - p.truth(probe), axis=1).mean()
    plain = SAMAffineRegistrar(**common).fit(p.fixed, p.moving)
    ncc = SAMAffineRegistrar(**common, ncc_radius_mm=8.0).fit(p.fixed, p.moving)
    assert tre(ncc) < tre(plain) and tre(ncc) < floor + 0.25, (tre(ncc), tre(plain), floor)
    dense = dict(dense_grid_spacing_mm=3.0, field_spacing_mm=4.0, smoothing_mm=6.0)
    coarse = SAMDeformableRegistrar(**common, **dense).fit(p.fixed, p.moving)
    coarse_ncc = SAMDeformableRegistrar(**common, **dense, ncc_radius_mm=8.0).fit(p.fixed, p.moving)
    assert tre(coarse_ncc) < 0.6 * tre(coarse) and tre(coarse_ncc) < floor + 0.1, (tre(coarse_ncc), tre(coarse), floor)
    with pytest.raises(ValueError, match="ncc_radius_mm needs a match on the moving image resampled"):
        SAMAffineRegistrar(**common, ncc_radius_mm=8.0, n_refinements=0).fit(p.fixed, p.moving)
    with pytest.raises(ValueError, match="ncc_radius_mm needs"):
        SAMDeformableRegistrar(**common, ncc_radius_mm=8.0, n_refinements=0, rematch="original").fit(
            p.fixed, p.moving)
    # the dense stage's own warped pass is enough for SAM-coarse (the paper's one-pass affine)
    one_pass = SAMDeformableRegistrar(**common, **dense, ncc_radius_mm=8.0, n_refinements=0).fit(p.fixed, p.moving)
    assert tre(one_pass) < tre(coarse), (tre(one_pass), tre(coarse))
    with pytest.raises(ValueError, match="ncc_search_mm"):
        SAMAffineRegistrar(**common, ncc_radius_mm=8.0, ncc_search_mm=0).fit(p.fixed, p.moving)


# ----------------------------------------------------------------------------- sklearn plumbing / errors

def test_clone_shares_embedder_and_unfitted_errors(pair2d, tmp_path):
    p = pair2d
    assert SAMAffineRegistrar().n_refinements == 1 and SAMDeformableRegistrar().rematch == "warped"
    reg = SAMDeformableRegistrar(embedder=p.embedder, grid_spacing_mm=9.0)
    c = clone(reg)
    assert c.embedder is p.embedder and c.get_params()["grid_spacing_mm"] == 9.0
    assert "embedder__n_channels" not in reg.get_params(deep=True)
    with pytest.raises(ValueError, match="frozen"):
        reg.set_params(embedder__n_channels=3)
    with pytest.raises(NotFittedError, match="embedder"):
        SAMAffineRegistrar(embedder=AnalyticEmbedder()).fit(p.fixed, p.moving)
    with pytest.raises(NotFittedError):
        SAMAffineRegistrar(embedder=p.embedder).transform_points(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="embedder is required"):
        SAMAffineRegistrar().fit(p.fixed, p.moving)


@pytest.mark.parametrize("params, exc, match", [
    (dict(grid_spacing_mm=0), ValueError, "grid_spacing_mm"),
    (dict(grid_spacing_mm="5"), TypeError, "grid_spacing_mm"),
    (dict(score_threshold=2.0), ValueError, "score_threshold"),
    (dict(robust="lmeds"), ValueError, "robust"),
    (dict(residual_threshold_mm=-1), ValueError, "residual_threshold_mm"),
    (dict(body_threshold="otsu"), ValueError, "body_threshold"),
    (dict(max_points=0), ValueError, "max_points"),
    (dict(search_radius_mm=-3), ValueError, "search_radius_mm"),
    (dict(random_state=-1), ValueError, "random_state"),
    (dict(cycle_threshold_mm=0), ValueError, "cycle_threshold_mm"),
])
def test_bad_parameters_are_named(pair2d, params, exc, match):
    with pytest.raises(exc, match=match):
        SAMAffineRegistrar(embedder=pair2d.embedder, **params).fit(pair2d.fixed, pair2d.moving)


def test_bad_images_and_no_confident_matches(pair2d, pair3d):
    p = pair2d
    with pytest.raises(ValueError, match="moving is 3D"):
        SAMAffineRegistrar(embedder=p.embedder).fit(p.fixed, pair3d.moving)
    with pytest.raises(TypeError, match="fixed must be one image"):
        SAMAffineRegistrar(embedder=p.embedder).fit([p.fixed, p.fixed], p.moving)
    with pytest.raises(TypeError, match="numpy array"):
        SAMAffineRegistrar(embedder=p.embedder).fit(p.fixed.array, p.moving)
    with pytest.raises(RegistrationError, match="score_threshold"):
        SAMAffineRegistrar(embedder=p.embedder, score_threshold=1.0, body_threshold=None).fit(p.fixed, p.moving)
    with pytest.raises(ValueError, match="rematch"):
        SAMDeformableRegistrar(embedder=p.embedder, rematch="both").fit(p.fixed, p.moving)


@pytest.mark.parametrize("shape,sigma", [((40, 33), (4.0, 2.5)), ((9, 14, 11), (1.3, 2.0, 0.7)),
                                         ((5, 7), (6.0, 0.3)), ((600, 5), (3.0, 1.0))])
def test_field_blur_equals_ndimage_gaussian_filter(shape, sigma):
    """smooth_field's blur (banded matrix products; the 1D filter along long axes) is scipy's
    gaussian_filter with zero padding, plane by plane, kernels wider than the grid included."""
    from scipy import ndimage
    from samlearn.transforms.smoothing import _blur_planes
    planes = np.random.default_rng(len(shape)).normal(size=(3,) + shape)
    got = _blur_planes(planes, sigma)
    for p, g in zip(planes, got):
        np.testing.assert_allclose(g, ndimage.gaussian_filter(p, sigma, mode="constant"), atol=1e-12)


# ------------------------------------------------------------------------------- never silently wrong
def test_quality_of_a_right_registration(pair3d):
    import warnings as _w

    from samlearn.exceptions import RegistrationQualityWarning
    with _w.catch_warnings():
        _w.simplefilter("error", RegistrationQualityWarning)
        reg = SAMAffineRegistrar(embedder=pair3d.embedder, random_state=0).fit(pair3d.fixed, pair3d.moving)
    q = reg.quality_
    assert q.ok and not q.reasons
    assert q.agreement > 0.8 and q.n_overlap <= q.n_matched
    assert q.expected_error_mm < 1.0
    assert set(q.as_dict()) >= {"agreement", "expected_error_mm", "ok", "reasons"}


def test_a_registration_its_matches_do_not_support_is_flagged(pair2d):
    """Anatomy scrambled in the moving image: whatever consensus RANSAC finds is a coincidence; the
    result must warn and say why, not pass as good. (One pass: the analytic embedder knows the
    moving image's anatomy by name, not by its pixels, so it cannot embed a resampled copy.)"""
    from samlearn.exceptions import RegistrationQualityWarning

    def scrambled(w):  # 8 mm cells of the moving image, each showing anatomy from a random place
        w = np.asarray(w, float)
        cell = np.floor(w / 8.0)
        seed = cell @ np.array([12.9898, 78.233][: w.shape[1]])
        place = np.stack([(np.sin(seed * (k + 1)) * 43758.5453) % 1.0 for k in range(w.shape[1])], 1)
        return (place - 0.5) * 80.0 + (w - 8.0 * cell)

    emb = AnalyticEmbedder(frames={"moving": scrambled}, n_channels=64).fit([pair2d.fixed])
    with pytest.warns(RegistrationQualityWarning, match="likely wrong"):
        reg = SAMAffineRegistrar(embedder=emb, random_state=0, score_threshold=0.0, grid_spacing_mm=6.0,
                                 n_refinements=0).fit(pair2d.fixed, pair2d.moving)
    assert not reg.quality_.ok and reg.quality_.reasons
    assert reg.quality_.agreement < 0.5


def test_partial_view_points_without_counterpart_do_not_drive_the_fit(pair3d):
    """The moving image cropped to its lower half: the grid points mapped outside it are neither
    inliers nor counted as evidence against the transform."""
    g = pair3d.moving_geom
    arr = pair3d.moving.array
    half = arr.shape[0] // 2
    cropped = Image.from_array(arr[:half].copy(), spacing=g.spacing, origin=g.origin, direction=g.direction)
    cropped.source = "moving"
    reg = SAMAffineRegistrar(embedder=pair3d.embedder, random_state=0, n_refinements=0).fit(pair3d.fixed, cropped)
    probe = pair3d.probe()
    inside = cropped.geometry.contains(pair3d.truth(probe))
    err = np.linalg.norm(reg.transform_points(probe[inside]) - pair3d.truth(probe[inside]), axis=1)
    assert err.mean() < pair3d.local_voxel()
    q = reg.quality_
    assert q.ok and q.n_overlap < 0.7 * q.n_matched and q.agreement > 0.8
