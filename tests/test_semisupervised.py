"""Semi-supervised positives (paper §IV-H): labelled pairs between the same landmark of two different
labelled images, the label validation of ``SAMEmbedder.fit(images, y)``, the generalised loss, and
that ``y=None`` leaves the self-supervised run untouched."""
import numpy as np
import pytest
import torch

from helpers import smooth_images, tiny_embedder
from samlearn import Image, load
from samlearn.training import PatchPairSampler
from samlearn.nn.loss import LossConfig, far_mask, sam_loss
from samlearn.training import PairStream

N_LM = 4


def _bilinear(arr, u):
    """Value of ``arr`` (2D or 3D) at continuous index ``u`` (linear interpolation)."""
    from scipy import ndimage
    return float(ndimage.map_coordinates(arr, np.asarray(u, float).reshape(-1, 1), order=1)[0])


def _dot_arrays(n_images, ndim=2, seed=0, nan=()):
    """Arrays with one Gaussian dot per landmark (brightness 10 * 2**j for landmark j, so the value
    at a point says which landmark it is) at random, well separated positions (array indices).
    ``nan``: (image, landmark) pairs left unlabelled -- and not painted, so a pair using them
    would show no dot."""
    rng = np.random.default_rng(seed)
    shape = (70, 80) if ndim == 2 else (30, 48, 52)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    arrays, labels = [], []
    for i in range(n_images):
        while True:  # landmarks at least 14 voxels apart and 8 from the border
            pts = np.stack([rng.uniform(8, s - 9, size=N_LM) for s in shape], -1)
            d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + 100 * np.eye(N_LM)
            if d.min() > 14:
                break
        arr = np.zeros(shape)
        for j, p in enumerate(pts):
            if (i, j) in nan:
                pts[j] = np.nan
                continue
            arr += 10.0 * 2 ** j * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, p)) / (2 * 3.0 ** 2))
        arrays.append(arr.astype(np.float32))
        labels.append(pts)
    return arrays, labels


def _stream(arrays, labels, prob=0.5, ndim=2, n_pos=8, seed=0):
    shape = (32, 32) if ndim == 2 else (16, 32, 32)
    sampler = PatchPairSampler(shape, scale=(0.8, 1.25), rotation_deg=15.0, elastic=True,
                               intensity_jitter=0.1, cval=0.0)
    strides = ((8,) * ndim, (2,) * ndim)
    spacings = [np.full(ndim, 1.5)] * len(arrays)
    return PairStream(arrays, spacings, sampler, n_pos, *strides, np.random.SeedSequence(seed),
                      labels=labels, label_positive_prob=prob)


# ------------------------------------------------------------------------------------ pair choice
def test_labelled_pairs_use_one_landmark_of_two_different_labelled_images():
    # image 3 unlabelled; landmark 1 unlabelled on image 0; landmark 3 only on image 2 (no partner)
    nan = {(0, 1), (0, 3), (1, 3)}
    arrays, labels = _dot_arrays(4, nan=nan)
    labels[3] = None
    stream = _stream(arrays, labels, prob=0.7)
    rng = np.random.default_rng(1)
    seen, n_lab = set(), 0
    for _ in range(300):
        s = stream.sample(rng)
        a, b, k = s["label_pair"].tolist()
        if a < 0:
            assert (s["pos_landmark"] == -1).all() and s["pair_ids"].tolist() == [s["image_id"]] * 2
            np.testing.assert_array_equal(s["pos_mm2"], s["pos_mm"])
            continue
        n_lab += 1
        seen.add((a, b, k))
        assert a != b, "a labelled pair must join two different images"
        assert labels[a] is not None and labels[b] is not None
        assert s["pair_ids"].tolist() == [a, b] and s["image_id"] == a
        assert s["pos_landmark"][0] == k
        for j in set(s["pos_landmark"].tolist()):   # every positive: a landmark labelled on both
            assert np.isfinite(labels[a][j]).all() and np.isfinite(labels[b][j]).all()
            assert (a, j) not in nan and (b, j) not in nan
        rows = s["pos_landmark"]
        np.testing.assert_allclose(s["pos_mm"], labels[a][rows] * 1.5, rtol=1e-6)
        np.testing.assert_allclose(s["pos_mm2"], labels[b][rows] * 1.5, rtol=1e-6)
    assert 100 < n_lab < 300
    # every admissible (a, b, k) shows up, nothing else: 0<->1 share 0, 2; 0<->2 share 0, 2;
    # 1<->2 share 0, 1, 2
    want = {(0, 1, 0), (0, 1, 2), (0, 2, 0), (0, 2, 2), (1, 0, 0), (1, 0, 2), (1, 2, 0), (1, 2, 1),
            (1, 2, 2), (2, 0, 0), (2, 0, 2), (2, 1, 0), (2, 1, 1), (2, 1, 2)}
    assert seen == want


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_label_positive_prob_zero_never_one_always(prob):
    arrays, labels = _dot_arrays(3)
    labels[2] = None                      # unlabelled: always the usual pair
    stream = _stream(arrays, labels, prob=prob)
    rng = np.random.default_rng(2)
    counts = {0: 0, 1: 0, 2: 0}
    for _ in range(40):
        s = stream.sample(rng)
        src = int(s["image_id"])
        counts[src] += 1
        labelled = s["label_pair"][0] >= 0
        assert labelled == (prob == 1.0 and src != 2)
    assert min(counts.values()) > 0


def test_labelled_stream_is_deterministic_and_unlabelled_images_train_as_before():
    arrays, labels = _dot_arrays(3)
    a = [_stream(arrays, labels).sample(np.random.default_rng(5)) for _ in range(2)]
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], a[1][k])
    # labels=None: exactly the unsupervised stream (same keys, same values)
    plain = _stream(arrays, None).sample(np.random.default_rng(5))
    assert set(plain) == {"patches", "pos", "pos_mm", "cg", "cl", "image_id"}


# ------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("ndim", [2, 3])
def test_positive_points_land_on_the_landmark_dot_in_both_patches(ndim):
    arrays, labels = _dot_arrays(3, ndim=ndim, seed=ndim)
    stream = _stream(arrays, labels, prob=1.0, ndim=ndim)
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(12):
        s = stream.sample(rng)
        for slot in range(s["pos"].shape[1]):
            j = int(s["pos_landmark"][slot])
            bright = 10.0 * 2 ** j
            for p in (0, 1):
                v = _bilinear(s["patches"][p, 0], s["pos"][p, slot])
                # intensity jitter: gain 0.9-1.1, bias +-0.1; interpolation of a sigma-3 dot
                assert 0.75 * bright < v < 1.15 * bright, (j, p, v)
            checked += 1
        a, b, _ = s["label_pair"].tolist()
        assert a != b
    assert checked >= 12 * 8


def test_sample_across_anchor_maps_exactly_onto_the_points():
    arrays, labels = _dot_arrays(2)
    sampler = PatchPairSampler((32, 32), rotation_deg=15.0, elastic=True, cval=0.0)
    for seed in range(5):
        pair = sampler.sample_across(arrays[0], labels[0][1], arrays[1], labels[1][1], seed,
                                     spacing_a=[1.0, 2.0], spacing_b=[3.0, 1.0])
        for k, pt in ((0, labels[0][1]), (1, labels[1][1])):
            np.testing.assert_allclose(pair.transforms[k].to_source(pair.anchor[k]), pt, atol=1e-8)
            assert np.all((pair.anchor[k] >= 0) & (pair.anchor[k] <= 31))
            u, inside = pair.points_to_patch(k, [pt, [np.nan, np.nan]])
            np.testing.assert_allclose(u[0], pair.anchor[k], atol=1e-6)
            assert inside.tolist() == [True, False]
        assert pair.source_mm(1, 8).shape == (2, 4, 4)
        np.testing.assert_allclose(pair.source_mm(0, 1) / np.array([1.0, 2.0])[:, None, None],
                                   pair.source_index(0, 1), rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="point in source_b"):
        sampler.sample_across(arrays[0], labels[0][0], arrays[1], [np.nan, 3.0], 0)


# ------------------------------------------------------------------------------------ loss
def _loss_inputs(B=3, C=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    Sg, Sl = (4, 4), (8, 8)
    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=1)
    g1, g2, l1, l2 = unit(B, C, *Sg), unit(B, C, *Sg), unit(B, C, *Sl), unit(B, C, *Sl)
    pos1 = torch.rand(B, 6, 2, generator=g) * 31
    pos2 = torch.rand(B, 6, 2, generator=g) * 31
    pos_mm = torch.rand(B, 6, 2, generator=g) * 40
    def coords(S, s):
        ax = [torch.arange(n) * s + (s - 1) / 2 for n in S]
        return torch.stack(torch.meshgrid(*ax, indexing="ij")).float()[None].repeat(B, 1, 1, 1)
    cg1, cg2 = coords(Sg, 8), coords(Sg, 8) + 5
    cl1, cl2 = coords(Sl, 4), coords(Sl, 4) + 5
    ids = torch.tensor([0, 1, 0])
    return g1, g2, l1, l2, pos1, pos2, pos_mm, cg1, cg2, cl1, cl2, ids


def test_loss_with_per_patch_positions_equals_the_single_image_loss_when_they_coincide():
    args = _loss_inputs()
    cfg = LossConfig(n_hard=10, n_random=12, n_candidates=40, n_local=10, delta_mm=6.0)
    ref, ref_stats = sam_loss(*args, (8, 8), (4, 4), cfg, torch.Generator().manual_seed(0))
    ids2 = torch.stack([args[-1], args[-1]], 1)
    new, new_stats = sam_loss(*args[:-1], ids2, (8, 8), (4, 4), cfg, torch.Generator().manual_seed(0),
                              pos_mm2=args[6].clone())
    torch.testing.assert_close(new, ref)
    for k in ref_stats:
        torch.testing.assert_close(new_stats[k], ref_stats[k])
    # moving patch 2's positive changes which of its voxels are excluded, hence the loss
    other, _ = sam_loss(*args[:-1], ids2, (8, 8), (4, 4), cfg, torch.Generator().manual_seed(0),
                        pos_mm2=args[6] + 20.0)
    assert not torch.equal(other, ref)


def test_far_mask_measures_each_patch_from_its_own_positive():
    pos1 = torch.tensor([[[0.0, 0.0]]])
    pos2 = torch.tensor([[[100.0, 100.0]]])
    cand = torch.tensor([[[0.0, 1.0], [50.0, 50.0], [0.0, 1.0], [100.0, 101.0], [0.0, 0.0]]])
    far = far_mask(pos1, cand, 3.0, pos2, n_first=2)
    assert far[0, 0].tolist() == [False, True, True, False, True]
    assert far_mask(pos1, cand, 3.0)[0, 0].tolist() == [False, True, False, True, False]


# ------------------------------------------------------------------------------------ estimator
def _world_labels(images, n_labelled, seed=0):
    """Landmarks at fixed fractions of each image's extent (world mm), for the first n images."""
    rng = np.random.default_rng(seed)
    frac = rng.uniform(0.2, 0.8, size=(N_LM, 2))
    out = []
    for i, im in enumerate(images):
        if i >= n_labelled:
            out.append(None)
            continue
        idx = frac * (np.asarray(im.size) - 1)
        out.append(im.geometry.index_to_world(idx))
    return out


def _weights(est):
    return {k: v.clone() for k, v in est.network_.state_dict().items()}


def test_y_none_and_all_none_reproduce_the_unsupervised_run_exactly():
    imgs = smooth_images(3, 2, seed=4)
    base = _weights(tiny_embedder(random_state=0).fit(imgs))
    for y in (None, [None, None, None]):
        w = _weights(tiny_embedder(random_state=0).fit(imgs, y))
        assert all(torch.equal(base[k], w[k]) for k in base)
    # and labels do change training (the comparison above can fail)
    lab = tiny_embedder(random_state=0, label_positive_prob=1.0).fit(imgs, _world_labels(imgs, 2))
    assert "labelled_pairs" in lab.history_[0]
    assert not all(torch.equal(base[k], v) for k, v in _weights(lab).items())


def test_fit_with_labels_saves_loads_and_partial_fit_accepts_y(tmp_path):
    imgs = smooth_images(4, 2, seed=5)
    y = _world_labels(imgs, 3)
    y[1][2] = np.nan                      # one landmark not labelled on image 1
    est = tiny_embedder(random_state=1, label_positive_prob=0.8).fit(imgs, np.array(y, dtype=object))
    assert est.n_iter_ == 3 and np.isfinite([h["loss"] for h in est.history_]).all()
    path = tmp_path / "semi.samlearn"
    est.save(path)
    back = load(path)
    assert back.label_positive_prob == 0.8
    a, b = est.embed(imgs[3]), back.embed(imgs[3])
    torch.testing.assert_close(a.local_map.data, b.local_map.data)
    back.partial_fit(imgs, y, n_iter=2)
    assert back.n_iter_ == 5
    with pytest.raises(ValueError, match="len"):
        back.partial_fit(imgs, y[:2], n_iter=1)
    # a (n_images, n_landmarks, ndim) array is accepted as y too
    dense = np.stack([v if v is not None else np.full((N_LM, 2), np.nan) for v in y])
    tiny_embedder(random_state=1, max_iter=1).fit(imgs, dense)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda y, imgs: y[:3], ValueError, r"one entry per image: len\(images\) = 4 but len\(y\) = 3"),
    (lambda y, imgs: "labels", TypeError, "y must be None or a sequence"),
    (lambda y, imgs: [y[0][:, :1]] + y[1:], ValueError, r"y\[0\] must have shape \(n_landmarks, 2\)"),
    (lambda y, imgs: [y[0], y[1][:2]] + y[2:], ValueError, "same landmarks: y\\[0\\] has 4 rows but y\\[1\\] has 2"),
    (lambda y, imgs: [y[0] + 1e4] + y[1:], ValueError, r"y\[0\] rows \[0, 1, 2, 3\].*outside images\[0\]"),
    (lambda y, imgs: [y[0], None, None, None], ValueError, "at least 2 labelled images"),
    (lambda y, imgs: [y[0], np.full((N_LM, 2), np.nan), None, None], ValueError, "at least 2 labelled"),
    (lambda y, imgs: [np.where(np.arange(N_LM)[:, None] < 2, y[0], np.nan),
                      np.where(np.arange(N_LM)[:, None] >= 2, y[1], np.nan), None, None],
     ValueError, "no landmark labelled on two or more images"),
    (lambda y, imgs: [np.where([[True, False]] * N_LM, y[0], np.nan)] + y[1:], ValueError,
     "all finite coordinates or all NaN"),
    (lambda y, imgs: [np.where([[True, False]] * N_LM, y[0], np.inf)] + y[1:], ValueError,
     "all finite coordinates or all NaN"),
    (lambda y, imgs: [object()] + y[1:], TypeError, r"y\[0\] must be None or a numeric"),
    (lambda y, imgs: np.zeros((4, 2)), ValueError, r"shape \(n_images, n_landmarks, 2\)"),
])
def test_bad_y_raises_named_errors(mutate, exc, match):
    imgs = smooth_images(4, 2, seed=6)
    y = _world_labels(imgs, 3)
    with pytest.raises(exc, match=match):
        tiny_embedder(random_state=0).fit(imgs, mutate(y, imgs))


@pytest.mark.parametrize("prob", [-0.1, 1.5, True, "half", None])
def test_bad_label_positive_prob(prob):
    imgs = smooth_images(2, 2, seed=7)
    with pytest.raises(ValueError, match="label_positive_prob must be a number in"):
        tiny_embedder(label_positive_prob=prob).fit(imgs)


def test_labels_follow_world_geometry_of_each_image(monkeypatch):
    """Landmarks in world mm reach the stream as indices of the working array that land on the
    painted dot, for images with anisotropic spacing, an origin and a non-identity direction."""
    from helpers import random_rotation
    import samlearn.training as training
    rng = np.random.default_rng(8)
    arrays, labels = _dot_arrays(2, seed=8)
    imgs, ys = [], []
    for arr, lab in zip(arrays, labels):
        im = Image.from_array(arr, spacing=[1.3, 0.7], origin=rng.uniform(-40, 40, 2),
                              direction=random_rotation(rng, 2))
        imgs.append(im)
        ys.append(im.geometry.array_index_to_world(lab))
    seen = {}
    original = training.PairStream.__init__

    def spy(self, *args, **kwargs):
        seen["labels"] = kwargs.get("labels")
        original(self, *args, **kwargs)

    monkeypatch.setattr(training.PairStream, "__init__", spy)
    # transform_scale=1: preprocess then shows the training grid the labels were mapped onto
    est = tiny_embedder(random_state=0, image_size=(96, 96), intensity="none", max_iter=1,
                        transform_scale=1.0).fit(imgs, ys)
    for im, idx in zip(imgs, seen["labels"]):
        work = est.preprocess(im).array
        for j, u in enumerate(idx):
            v = _bilinear(work, u)
            assert 0.6 * 10.0 * 2 ** j < v < 1.05 * 10.0 * 2 ** j, (j, v)


# ------------------------------------------------------------------------------------ benchmark
def test_cephalometric_label_choice_is_deterministic_and_never_uses_evaluation_images():
    from sklearn.utils import Bunch
    from samlearn.datasets import CEPH_TRAIN_IDS, choose_labelled_ids, training_labels
    ids = choose_labelled_ids("048", 5, seed=0)
    assert ids[0] == "048" and len(set(ids)) == 6 and set(ids) <= set(CEPH_TRAIN_IDS)
    assert ids == choose_labelled_ids("048", 5, seed=0)
    assert ids != choose_labelled_ids("048", 5, seed=1)
    assert choose_labelled_ids("048", 0) == ["048"]
    assert len(choose_labelled_ids("048", 69)) == 70
    with pytest.raises(ValueError, match=r"in \[0, 69\]"):
        choose_labelled_ids("048", 70)
    with pytest.raises(ValueError, match="not a training id"):
        choose_labelled_ids("080", 2)
    all_ids = [f"{i:03d}" for i in range(1, 101)]
    data = Bunch(ids=all_ids, landmarks=np.arange(100 * 19 * 2, dtype=float).reshape(100, 19, 2))
    y = training_labels(data, ids)
    assert len(y) == 70 and sum(v is not None for v in y) == 6
    np.testing.assert_array_equal(y[47], data.landmarks[47])
    with pytest.raises(ValueError, match="never label evaluation images"):
        training_labels(data, ["048", "075"])
