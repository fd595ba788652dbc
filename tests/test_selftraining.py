"""SelfTrainedLandmarkDetector: a heatmap regressor trained on a one-shot detector's pseudo-labels.

The scene: images of smooth blobs whose anatomy moves by known small affines; the analytic
embedder gives (near) exact pseudo-labels, so the regressor must learn the points from the pixels
to below one heatmap voxel. Unit tests cover the pieces: the warp that moves points with the image,
the heatmap decoding, the shape prior and the pseudo-label weights.
"""
import numpy as np
import pytest
import torch
from fake_embedder import AnalyticEmbedder
from helpers import tiny_embedder
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

import samlearn
from samlearn import Image, ImageGeometry, OneShotLandmarkDetector, SelfTrainedLandmarkDetector
from samlearn.apps.shape_prior import pseudo_label_weights, shape_outliers
from samlearn.exceptions import ModelFileError
from samlearn.nn import HeatmapNet, SAMNet
from samlearn.nn.heatmap import decode_heatmaps, heatmap_loss
from samlearn.training.heatmaps import HeatmapTraining, input_to_heatmap_index, random_affines, warp_batch

SIZE = 64
BLOBS = np.array([[20, 20], [44, 22], [30, 44], [48, 46], [16, 40], [32, 14], [50, 34], [24, 52]], float)  # mm
AMPS = np.array([1.0, 0.7, 0.9, 0.5, 0.8, 0.6, 0.9, 0.7])
SIGMAS = np.array([3.0, 4.0, 3.0, 5.0, 2.5, 3.5, 2.5, 3.0])
#: a tiny architecture on a 64 x 64 working grid: local stride 4, so heatmap voxels of 4 mm
NET = dict(image_size=(SIZE, SIZE), width=0.125, depth="resnet10", n_stages=3, fpn_channels=16, stem_kernel=3,
           intensity="none")
HEAT_VOXEL_MM = 4.0


def blob_image(rng, name, frames, spacing=(1.1, 0.9), origin=(-7.0, 12.0)):
    """An image whose anatomy a = A world + t holds the blobs; its landmarks = the blob centres."""
    th, s = rng.uniform(-0.15, 0.15), rng.uniform(0.95, 1.05)
    a = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    geom = ImageGeometry((SIZE, SIZE), spacing, origin)
    t = rng.uniform(-6, 6, 2) - a @ geom.index_to_world(np.array([SIZE / 2, SIZE / 2])) + SIZE / 2
    idx = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij"), -1).reshape(-1, 2)
    anat = geom.array_index_to_world(idx) @ a.T + t
    img = 0.05 * rng.normal(size=len(anat))
    for b, amp, sg in zip(BLOBS, AMPS, SIGMAS):
        img += amp * np.exp(-0.5 * np.sum((anat - b) ** 2, 1) / sg ** 2)
    frames[name] = (a, t)
    return Image(img.reshape(SIZE, SIZE).astype(np.float32), geom, source=name), np.linalg.solve(a, (BLOBS - t).T).T


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    frames = {}
    train = [blob_image(rng, f"train{i}", frames) for i in range(24)]
    test = [blob_image(rng, f"test{i}", frames) for i in range(6)]
    emb = AnalyticEmbedder(frames=frames, n_channels=64).fit([train[0][0]])
    det = OneShotLandmarkDetector(embedder=emb, consistency=None).fit(*train[0])
    return dict(train=[im for im, _ in train], train_truth=np.stack([p for _, p in train]),
                test=[im for im, _ in test], test_truth=np.stack([p for _, p in test]), detector=det)


def regressor(det, **kw):
    params = dict(detector=det, init="random", network_params=NET, max_iter=300, max_time=None, batch_size=8,
                  lr=3e-3, random_state=0, n_threads=1)
    params.update(kw)
    return SelfTrainedLandmarkDetector(**params)


@pytest.fixture(scope="module")
def fitted(scene):
    return regressor(scene["detector"]).fit(scene["train"])


# ----------------------------------------------------------------------------- accuracy
def test_exact_pseudo_labels_give_sub_voxel_points(scene, fitted):
    err = np.linalg.norm(fitted.predict(scene["test"]) - scene["test_truth"], axis=-1)
    assert err.mean() < 0.5 * HEAT_VOXEL_MM
    assert err.max() < HEAT_VOXEL_MM
    assert fitted.n_iter_ == 300 and len(fitted.history_) == 300
    assert np.mean(fitted.history_[-20:]) < np.mean(fitted.history_[:20])


def test_scores_and_shapes(scene, fitted):
    pts, scores = fitted.predict(scene["test"][:2], return_scores=True)
    assert pts.shape == (2, 8, 2) and scores.shape == (2, 8)
    assert np.all((scores > 0) & (scores <= 1))
    assert fitted.predict(scene["test"][0]).shape == (1, 8, 2)


def test_bad_pseudo_labels_are_dropped(scene):
    class Corrupting(BaseEstimator):
        """The scene's detector, with landmark 2 of every third image moved 20 mm."""

        def __init__(self, det):
            self.det = det
            self.template_points_, self.embedder_, self.ndim_ = det.template_points_, det.embedder_, det.ndim_

        def predict(self, images, return_scores=False):
            pts, sc = self.det.predict(images, return_scores=True)
            pts[::3, 2] += 20.0
            return pts, sc

        def fit(self, *args):
            return self

        def __sklearn_is_fitted__(self):
            return True

    st = regressor(Corrupting(scene["detector"]), max_iter=2).fit(scene["train"])
    assert np.all(st.pseudo_weights_[::3, 2] == 0)
    assert st.pseudo_weights_.mean() > 0.75  # the rest mostly kept (10% lowest scores dropped)
    kept_off = regressor(Corrupting(scene["detector"]), max_iter=2, pseudo_label_filter=False).fit(scene["train"])
    assert np.all(kept_off.pseudo_weights_ == 1)


# ----------------------------------------------------------------------------- budgets, reproducibility, files
def test_reproducible_and_budgeted(scene):
    a = regressor(scene["detector"], max_iter=5).fit(scene["train"])
    b = regressor(scene["detector"], max_iter=5).fit(scene["train"])
    c = regressor(scene["detector"], max_iter=5, random_state=1).fit(scene["train"])
    assert a.n_iter_ == 5
    np.testing.assert_array_equal(a.predict(scene["test"][:2]), b.predict(scene["test"][:2]))
    assert not np.array_equal(a.history_, c.history_)
    quick = regressor(scene["detector"], max_iter=10 ** 6, max_time=1.0).fit(scene["train"])
    assert 0 < quick.n_iter_ < 10 ** 6 and quick.fit_time_ < 30
    with pytest.warns(UserWarning, match="raise max_time"):
        starved = regressor(scene["detector"], max_time=1e-6).fit(scene["train"])
    assert starved.n_iter_ == 0


def test_save_load_round_trip(scene, fitted, tmp_path):
    path = fitted.save(tmp_path / "st.samlearn")
    back = SelfTrainedLandmarkDetector.load(path)
    np.testing.assert_allclose(back.predict(scene["test"][:2]), fitted.predict(scene["test"][:2]), atol=1e-9)
    np.testing.assert_array_equal(back.prior_tolerance_mm_, fitted.prior_tolerance_mm_)
    assert back.detector is None and back.n_iter_ == fitted.n_iter_
    with pytest.raises(ModelFileError, match="SelfTrainedLandmarkDetector.load"):
        samlearn.load(path)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "bad.samlearn").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError):
        SelfTrainedLandmarkDetector.load(tmp_path / "bad.samlearn")


def test_sam_initialisation_copies_the_trunk(scene):
    emb = tiny_embedder(2, image_size=(SIZE, SIZE), max_iter=1).fit(scene["train"][:2])
    det = OneShotLandmarkDetector(embedder=emb, consistency=None).fit(scene["train"][0], scene["train_truth"][0])
    st = SelfTrainedLandmarkDetector(detector=det, max_iter=1, lr=1e-12, random_state=0, augment=False)
    st.fit(scene["train"][:3])
    sam = emb.network_.state_dict()
    for k, v in st.network_.state_dict().items():
        if k.startswith("stem.1") or k.startswith("lateral."):
            torch.testing.assert_close(v, sam[k], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="network_params"):
        SelfTrainedLandmarkDetector(detector=det, network_params={"width": 0.25}).fit(scene["train"][:3])
    with pytest.raises(ValueError, match="init='random'"):
        SelfTrainedLandmarkDetector(detector=scene["detector"]).fit(scene["train"][:3])


def test_load_trunk_refuses_another_architecture():
    from samlearn.embedding.config import network_config
    from samlearn.presets import get_preset
    cfg = dict(get_preset("xray-lite"), **NET)
    net = HeatmapNet(network_config(cfg), 3)
    other = SAMNet(network_config(dict(cfg, fpn_channels=8)))
    with pytest.raises(ValueError, match="do not fit"):
        net.load_trunk(other.state_dict())
    with pytest.raises(ValueError, match="lacks"):
        net.load_trunk({})


# ----------------------------------------------------------------------------- errors, sklearn
def test_errors_name_the_argument(scene):
    with pytest.raises(ValueError, match="detector is required"):
        SelfTrainedLandmarkDetector().fit(scene["train"])
    with pytest.raises(NotFittedError, match="detector"):
        SelfTrainedLandmarkDetector(detector=OneShotLandmarkDetector()).fit(scene["train"])
    with pytest.raises(ValueError, match="at least two"):
        regressor(scene["detector"]).fit(scene["train"][:1])
    vol = Image(np.zeros((8, 8, 8), np.float32), ImageGeometry((8, 8, 8)))
    with pytest.raises(ValueError, match="images"):
        regressor(scene["detector"]).fit([vol, vol])
    with pytest.raises(ValueError, match="max_iter"):
        regressor(scene["detector"], max_iter=0).fit(scene["train"])
    with pytest.raises(ValueError, match="init"):
        regressor(scene["detector"], init="imagenet").fit(scene["train"])
    with pytest.raises(NotFittedError):
        regressor(scene["detector"]).predict(scene["test"])


def test_clone_shares_the_frozen_detector(scene):
    st = regressor(scene["detector"])
    c = clone(st)
    assert c.detector is st.detector and c.get_params()["max_iter"] == 300


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_moves_points_with_the_image(ndim):
    rng = np.random.default_rng(ndim)
    shape = (24,) * ndim
    p = rng.uniform(8, 16, size=(1, 1, ndim))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    img = np.exp(-0.5 * np.sum((grid - p[0, 0]) ** 2, -1) / 1.5 ** 2)
    x = torch.as_tensor(img, dtype=torch.float32)[None, None]
    m, t = random_affines(rng, 1, shape, HeatmapTraining(rotation_deg=25, scale=0.2, shift=0.1))
    out, moved = warp_batch(x, torch.as_tensor(p, dtype=torch.float32), m, t)
    w = out[0, 0].numpy()
    centre = np.array([(w * g).sum() for g in np.moveaxis(grid, -1, 0)]) / w.sum()
    np.testing.assert_allclose(centre, moved[0, 0].numpy(), atol=0.15)


def test_decoding_is_sub_voxel_and_restricted():
    shape = (20, 24)
    truth = torch.tensor([[[7.3, 11.6], [12.8, 4.2]]])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    logits = torch.stack([torch.as_tensor(-0.5 * np.sum((grid - truth[0, k].numpy()) ** 2, -1) / 1.5 ** 2)
                          for k in range(2)])[None].float()
    pos, mass = decode_heatmaps(logits)
    torch.testing.assert_close(pos, truth, atol=0.2, rtol=0)
    assert torch.all(mass > 0.5)
    # restricted far from the peak: the answer stays within the allowed radius
    centers = torch.tensor([[[2.0, 2.0], [2.0, 2.0]]])
    pos2, mass2 = decode_heatmaps(logits, centers=centers, max_distance=torch.tensor([[3.0, 3.0]]))
    assert torch.all(torch.linalg.norm(pos2 - centers, dim=-1) <= 3.0 + 2 * np.sqrt(2))
    assert torch.all(mass2 < mass)
    # the loss is lowest at the target
    w = torch.ones(1, 2)
    at = heatmap_loss(logits * 3, truth, w, 1.0)
    off = heatmap_loss(logits * 3, truth + 3.0, w, 1.0)
    assert at < off


def test_heatmap_index_convention_matches_strided_geometry():
    geom = ImageGeometry((40, 32), (0.7, 1.3), (5.0, -3.0))
    heat = geom.strided((4, 4))
    world = np.array([[12.0, 9.0], [20.5, 14.0]])
    np.testing.assert_allclose(input_to_heatmap_index(geom.world_to_array_index(world), (4, 4)),
                               heat.world_to_array_index(world), atol=1e-9)


def test_shape_prior_flags_a_displaced_landmark():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 100, size=(8, 2))
    a = np.array([[1.05, 0.1], [-0.08, 0.97]])
    pts = ref @ a.T + [4.0, -3.0] + rng.normal(0, 0.5, size=ref.shape)
    pts[3] += [30.0, 0.0]
    out, expected = shape_outliers(ref, pts, np.full(8, 5.0))
    assert out.tolist() == [k == 3 for k in range(8)]
    assert np.linalg.norm(expected[3] - (pts[3] - [30.0, 0.0])) < 3.0
    # the same displacement in the pseudo-labels of one image is dropped
    many = np.stack([ref @ a.T + rng.normal(0, 0.5, size=ref.shape) for _ in range(20)])
    many[5, 3] += 30.0
    w, res = pseudo_label_weights(ref, many, np.ones((20, 8)))
    assert w[5, 3] == 0 and w.sum() >= 20 * 8 - 8


def test_frozen_trunk_keeps_its_weights_and_statistics(scene):
    st = regressor(scene["detector"], max_iter=3, freeze_trunk=True)
    before = {}

    def spy(cfg, det, n, rng):  # record the trunk right after it is built
        net = SelfTrainedLandmarkDetector._new_network(st, cfg, det, n, rng)
        before.update({k: v.clone() for k, v in net.state_dict().items()})
        return net

    st._new_network = spy
    st.fit(scene["train"])
    after = st.network_.state_dict()
    trunk = [k for k in after if k.startswith(("stem.", "stages.", "lateral."))]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("head."))


def test_three_d_runs_end_to_end(tmp_path):
    from helpers import smooth_images
    ims = smooth_images(4, ndim=3, seed=3)
    emb = tiny_embedder(3, max_iter=1).fit(ims)
    pts = ims[0].geometry.index_to_world(np.array([[8.0, 9.0, 6.0], [14.0, 12.0, 9.0], [10.0, 15.0, 7.0],
                                                   [16.0, 8.0, 10.0], [7.0, 14.0, 11.0]]))
    det = OneShotLandmarkDetector(embedder=emb, consistency=None).fit(ims[0], pts)
    st = SelfTrainedLandmarkDetector(detector=det, max_iter=2, batch_size=2, random_state=0).fit(ims)
    out, scores = st.predict(ims[:2], return_scores=True)
    assert out.shape == (2, 5, 3) and np.isfinite(out).all() and np.isfinite(scores).all()
    back = SelfTrainedLandmarkDetector.load(st.save(tmp_path / "st3d.samlearn"))
    np.testing.assert_allclose(back.predict(ims[:2]), out, atol=1e-9)


def test_contrast_augmentation_inverts_and_keeps_the_range():
    from samlearn.training.heatmaps import _contrast
    x = torch.linspace(-1, 3, 50).view(1, 1, 50).repeat(3, 1, 1)
    inv = _contrast(x, np.random.default_rng(0), 1.0, 0.0)
    torch.testing.assert_close(inv, 2.0 - x)
    curved = _contrast(x, np.random.default_rng(0), 0.0, np.log(2.0))
    torch.testing.assert_close(curved.amin(dim=-1), x.amin(dim=-1))
    torch.testing.assert_close(curved.amax(dim=-1), x.amax(dim=-1))
    assert not torch.allclose(curved, x)
