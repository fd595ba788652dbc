"""SAMEmbedder: training loop, transform geometry, determinism, persistence, interruption."""
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import samlearn
from samlearn import SAMEmbedder
from helpers import smooth_images, tiny_embedder


@pytest.fixture(scope="module")
def images2d():
    return smooth_images(3, ndim=2, seed=0)


@pytest.fixture(scope="module")
def fitted2d(images2d):
    return tiny_embedder(random_state=0).fit(images2d)


def _weights(est):
    return {k: v.clone() for k, v in est.network_.state_dict().items()}


def test_fit_records_history_and_transform_geometry(fitted2d, images2d):
    est = fitted2d
    assert est.n_iter_ == 3 and len(est.history_) == 3
    assert est.preset_ == "xray-lite" and est.ndim_ == 2 and str(est.device_) == "cpu"
    assert all(np.isfinite(h["loss"]) for h in est.history_)
    assert {"loss_global", "loss_local", "lr", "time"} <= set(est.history_[0])
    assert est.interrupted_ is False
    emb = est.transform(images2d[0])
    assert len(emb) == 1
    e = emb[0]
    assert e.global_map.n_channels == 16 and e.local_map.n_channels == 16
    # the working grid is the canonical (identity-direction) grid over the image's bounding box, at
    # the preset's transform_scale (xray-lite: 0.75) of the 64 x 64 training size
    assert est.config_["transform_scale"] == 0.75
    assert e.image_geometry.size == (48, 48)
    np.testing.assert_allclose(e.image_geometry.direction, np.eye(2))
    assert e.source_geometry == images2d[0].geometry
    cs = np.sort(images2d[0].geometry.corners_world(), 0)
    wc = e.image_geometry.corners_world()
    np.testing.assert_allclose(wc.min(0), cs.min(0), atol=1e-6)
    np.testing.assert_allclose(wc.max(0), cs.max(0), atol=1e-6)
    gs, ls = est.network_.config.global_stride, est.network_.config.local_stride
    assert e.global_map.geometry.size == tuple(int(np.ceil(48 / s)) for s in gs[::-1])
    np.testing.assert_allclose(e.local_map.geometry.spacing, e.image_geometry.spacing * np.array(ls[::-1]))
    torch.testing.assert_close(e.local_map.data.norm(dim=0), torch.ones(e.local_map.data.shape[1:]), atol=1e-4, rtol=0)


def test_transform_scale_sets_the_working_grid_of_transform(fitted2d, images2d, tmp_path):
    """transform_scale is read at transform time: the working grid is image_size x scale over the
    image's bounding box (world extent unchanged), None falls back to the fitted value, a model
    without the key (saved before it existed) embeds at the training size, bad values are named."""
    est = fitted2d
    im = images2d[0]
    corners = np.sort(im.geometry.corners_world(), 0)
    try:
        for scale, size in ((1.0, 64), (0.5, 32), (0.75, 48), (1.25, 80)):
            e = est.set_params(transform_scale=scale).embed(im)
            assert e.image_geometry.size == (size, size), scale
            assert est.preprocess(im).array.shape == (size, size)
            wc = e.image_geometry.corners_world()   # same field of view, finer or coarser pixels
            np.testing.assert_allclose(wc.min(0), corners.min(0), atol=1e-6)
            np.testing.assert_allclose(wc.max(0), corners.max(0), atol=1e-6)
            gs = est.network_.config.global_stride
            assert e.global_map.geometry.size == tuple(int(np.ceil(size / s)) for s in gs[::-1])
        est.set_params(transform_scale=None)
        assert est.embed(im).image_geometry.size == (48, 48)   # config_["transform_scale"]
        for bad in (0, -1.0, float("nan"), float("inf"), "0.5", True):
            with pytest.raises(ValueError, match="transform_scale"):
                est.set_params(transform_scale=bad).embed(im)
        with pytest.raises(ValueError, match="transform_scale.*below 8 pixels"):
            est.set_params(transform_scale=0.1).embed(im)
        # a model saved before transform_scale existed (no config key, no param): 1.0, and it
        # still continues training (warm_start validates its configuration)
        est.set_params(transform_scale=None)
        old = pickle.loads(pickle.dumps(est))
        old.config_.pop("transform_scale")
        assert old.embed(im).image_geometry.size == (64, 64)
        old.save(tmp_path / "m.samlearn")
        loaded = samlearn.load(tmp_path / "m.samlearn")
        assert loaded.config_["transform_scale"] == 1.0
        assert loaded.embed(im).image_geometry.size == (64, 64)
        old.set_params(warm_start=True, max_iter=old.n_iter_ + 1).fit(images2d)
        assert old.config_["transform_scale"] == 1.0 and old.n_iter_ == est.n_iter_ + 1
    finally:
        est.set_params(transform_scale=None)


def test_transform_scale_3d_divides_the_spacing_and_keys_the_cache(tmp_path):
    imgs = smooth_images(2, ndim=3, seed=4)
    est = tiny_embedder(ndim=3, random_state=0, max_iter=1).fit(imgs)
    assert est.config_["transform_scale"] == 1.0          # ct-lite: the training resolution
    sp = est.config_["spacing_mm"]
    base = est.embed(imgs[0])
    np.testing.assert_allclose(base.image_geometry.spacing, sp)
    est.set_params(transform_scale=0.5, memory=str(tmp_path))
    coarse = est.embed(imgs[0])
    np.testing.assert_allclose(coarse.image_geometry.spacing, 2 * sp)
    # the cache keys the working grid: the 1.0 embedding is not served for 0.5 and vice versa
    est.set_params(transform_scale=1.0)
    again = est.embed(imgs[0])
    np.testing.assert_allclose(again.image_geometry.spacing, sp)
    assert len({p.parent for p in tmp_path.rglob("*.pt")}) == 2
    torch.testing.assert_close(again.local_map.data, base.local_map.data, atol=1e-3, rtol=0)


def test_same_seed_same_weights_different_seed_differs(images2d):
    a = tiny_embedder(random_state=7, max_iter=20).fit(images2d)
    b = tiny_embedder(random_state=7, max_iter=20).fit(images2d)
    c = tiny_embedder(random_state=8, max_iter=20).fit(images2d)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].dtype.is_floating_point)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]


def test_fit_does_not_touch_global_rngs_or_params(images2d):
    torch.manual_seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(123)
    np.random.seed(123)
    est = tiny_embedder(random_state=1)
    before = est.get_params()
    est.fit(images2d)
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert est.get_params() == before


def test_warm_start_and_partial_fit_continue(images2d):
    est = tiny_embedder(random_state=0, max_iter=2).fit(images2d)
    w0 = [p.detach().clone() for p in est.network_.parameters()]
    # warm start: the budget set now is the new total (sklearn's warm_start), training continues
    est.set_params(warm_start=True, max_iter=4)
    est.fit(images2d)
    assert est.n_iter_ == 4 and len(est.history_) == 4 and est.config_["max_iter"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(w0, est.network_.parameters()))
    est.fit(images2d)  # budget reached: nothing more
    assert est.n_iter_ == 4
    est.set_params(max_iter=None, max_time=1e9)  # unset max_iter: the fitted total (4) still holds
    est.fit(images2d)
    assert est.n_iter_ == 4
    # partial_fit adds iterations on top
    est.partial_fit(images2d, n_iter=3)
    assert est.n_iter_ == 7 and len(est.history_) == 7
    fresh = tiny_embedder(random_state=0).partial_fit(images2d, n_iter=2)
    assert fresh.n_iter_ == 2


def test_clone_is_unfitted(fitted2d):
    c = clone(fitted2d)
    assert not hasattr(c, "network_")
    with pytest.raises(NotFittedError):
        c.transform(smooth_images(1))


def test_save_load_round_trip(fitted2d, images2d, tmp_path):
    path = tmp_path / "model.samlearn"
    fitted2d.save(path)
    back = samlearn.load(path)
    assert isinstance(back, SAMEmbedder) and back.n_iter_ == fitted2d.n_iter_
    e1, e2 = fitted2d.embed(images2d[1]), back.embed(images2d[1])
    torch.testing.assert_close(e1.local_map.data, e2.local_map.data)
    assert back.get_params()["patch_shape"] == (32, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pickle_round_trip(fitted2d, images2d):
    back = pickle.loads(pickle.dumps(fitted2d))
    torch.testing.assert_close(fitted2d.embed(images2d[2]).global_map.data, back.embed(images2d[2]).global_map.data)


def test_3d_fit_and_transform():
    imgs = smooth_images(2, ndim=3, seed=3)
    est = tiny_embedder(ndim=3, random_state=0).fit(imgs)
    e = est.embed(imgs[0])
    assert e.ndim == 3 and e.global_map.data.dim() == 4
    np.testing.assert_allclose(e.image_geometry.spacing, 4.0)
    with pytest.raises(ValueError, match="trained on 3D"):
        est.transform(smooth_images(1, ndim=2))


def test_interrupt_gives_a_usable_partial_model(images2d, monkeypatch, tmp_path):
    from samlearn import training
    calls = {"n": 0}
    orig = training.PairStream.sample

    def flaky(self, rng):
        calls["n"] += 1
        if calls["n"] > 2 * 2:  # two batches of two pairs, then Ctrl-C
            raise KeyboardInterrupt
        return orig(self, rng)

    monkeypatch.setattr(training.PairStream, "sample", flaky)
    ckpt = tmp_path / "ckpt.samlearn"
    est = tiny_embedder(random_state=0, max_iter=50, checkpoint_path=str(ckpt))
    with pytest.warns(UserWarning, match="interrupted after 2 iterations"):
        est.fit(images2d)
    assert est.interrupted_ and est.n_iter_ == 2
    assert est.transform(images2d[0])[0].local_map.data.isfinite().all()
    # the checkpoint holds the partial run and can be resumed to the full budget
    monkeypatch.setattr(training.PairStream, "sample", orig)
    res = tiny_embedder(random_state=0, max_iter=5, checkpoint_path=str(ckpt), resume=True).fit(images2d)
    assert res.n_iter_ == 5 and not res.interrupted_


@pytest.mark.parametrize("params, match", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(lr=-1.0), "lr must be a positive number"),
    (dict(patch_shape=(33, 32)), "multiple of the global stride"),
    (dict(patch_shape=(32, 32, 32)), "patch_shape must be 2"),
    (dict(max_time=-5.0), "max_time must be a positive number"),
    (dict(preset="mri"), "preset must be"),
    (dict(preset="ct"), "preset 'ct' is for 3D"),
    (dict(overlap=(0.5, 1.5)), "overlap"),
    (dict(amp="fp8"), "amp must be"),
    (dict(device="tpu"), "device"),
    (dict(random_state="x"), "random_state"),
])
def test_bad_parameters_are_named(params, match, images2d):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_embedder(**params).fit(images2d)


@pytest.mark.parametrize("which,value", [("local", float("nan")), ("global", float("inf")),
                                         ("local", -float("inf"))])
def test_transform_refuses_non_finite_maps(monkeypatch, which, value):
    """A NaN or infinity anywhere in a map (fp16 overflow, damaged weights) is an error, never an
    embedding handed on to matching."""
    import samlearn.embedding.inference as embedder_module
    ims = smooth_images(2)
    emb = tiny_embedder().fit(ims)
    real = embedder_module.run_network

    def spoiled(*args, **kwargs):
        g, l = real(*args, **kwargs)
        g, l = g.clone(), l.clone()
        target = l if which == "local" else g
        target[0, 1, target.shape[2] // 2, target.shape[3] - 1] = value
        return g, l

    monkeypatch.setattr(embedder_module, "run_network", spoiled)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        emb.transform(ims[:1])
    monkeypatch.setattr(embedder_module, "run_network", real)
    assert np.isfinite(emb.transform(ims[:1])[0].local_map.data.numpy()).all()
