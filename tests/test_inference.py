"""Bounded-memory inference: receptive reach, tiles that reproduce one pass, the memory model,
the embedding cache and parallel / batched transform."""

import numpy as np
import pytest
import torch

from samlearn import Image
from samlearn.embedding.cache import image_key, model_fingerprint
from samlearn.embedding.engine import auto_tile_shape, estimate_pass_bytes, halo, pad_batch, plan_tiles, run_network
from samlearn.nn.network import NetworkConfig, SAMNet, receptive_reach
from helpers import smooth_images, tiny_embedder

CONFIGS = {
    "2d": NetworkConfig(ndim=2, depth="resnet10", width=0.125, stem_stride=(2, 2), stem_kernel=3,
                        stage_strides=((2, 2), (2, 2), (2, 2)), n_stages=3, local_level=0,
                        fpn_channels=8, embed_dim=8),
    "3d": NetworkConfig(ndim=3, depth="resnet10", width=0.125, stem_stride=(1, 2, 2), stem_kernel=3,
                        stage_strides=((2, 2, 2), (1, 2, 2), (2, 2, 2)), n_stages=3, local_level=0,
                        fpn_channels=8, embed_dim=8, head="separable"),
    "2d-deep-local": NetworkConfig(ndim=2, depth="resnet10", width=0.125, stem_stride=1, stem_kernel=7,
                                   stage_strides=((2, 2), (2, 2), (2, 2), (2, 2)), n_stages=4,
                                   local_level=1, fpn_channels=8, embed_dim=8),
    # one block in the first two stages, two in the others: the reach counts blocks per stage
    "2d-resnet14": NetworkConfig(ndim=2, depth="resnet14", width=0.125, stem_stride=(2, 2), stem_kernel=3,
                                 stage_strides=((2, 2), (2, 2), (2, 2), (2, 2)), n_stages=4, local_level=0,
                                 fpn_channels=8, embed_dim=8, head="separable"),
}


def random_net(cfg, seed=0):
    """A network whose every branch is active: random BatchNorm scales and running statistics (the
    fresh network zero-initialises the last BN of each block, which would hide the residual
    branches from a receptive-field probe)."""
    torch.manual_seed(seed)
    net = SAMNet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_receptive_reach_bounds_the_gradient_support(name):
    """Input beyond the reach never influences a map voxel; the bound is not loose by more than 2x."""
    cfg = CONFIGS[name]
    net = random_net(cfg)
    G = np.array(cfg.global_stride)
    shape = tuple(int(s) for s in (G * 12 if cfg.ndim == 2 else G * np.array([10, 6, 6])))
    x = torch.randn((1, 1) + shape, requires_grad=True)
    g, loc = net(x)
    for out, stride, reach in ((g, cfg.global_stride, receptive_reach(cfg)[0]),
                               (loc, cfg.local_stride, receptive_reach(cfg)[1])):
        centre = tuple(n // 2 for n in out.shape[2:])
        x.grad = None
        out[(0, slice(None)) + centre].sum().backward(retain_graph=True)
        support = np.nonzero(x.grad[0, 0].abs().numpy() > 0)
        for d in range(cfg.ndim):
            lo, hi = stride[d] * centre[d], stride[d] * centre[d] + stride[d] - 1
            seen = max(lo - support[d].min(), support[d].max() - hi)
            assert seen <= reach[d], (name, d, seen, reach[d])
            assert seen >= reach[d] / 2, (name, d, seen, reach[d])


@pytest.mark.parametrize("name, shape, core", [
    ("2d", (70, 93), (16, 32)),
    ("3d", (21, 45, 62), (8, 16, 16)),
    ("2d-deep-local", (77, 64), (16, 16)),
])
def test_tiled_pass_equals_one_pass(name, shape, core):
    cfg = CONFIGS[name]
    net = random_net(cfg, seed=1)
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32) - 3]
    x = torch.from_numpy(pad_batch(arrays, [float(a.min()) for a in arrays], cfg.global_stride))
    tiles = plan_tiles(cfg, shape, core)
    assert len(tiles) > 2
    g1, l1 = run_network(net, x, shape)
    g2, l2 = run_network(net, x, shape, tile_core=core)
    assert g1.shape == g2.shape and l1.shape == l2.shape
    torch.testing.assert_close(g2, g1, atol=2e-5, rtol=0)
    torch.testing.assert_close(l2, l1, atol=2e-5, rtol=0)
    # and each image of the batch equals the network's own one-image pass (its own pad value)
    for b, a in enumerate(arrays):
        with torch.no_grad():
            g, loc = net(torch.from_numpy(a)[None, None], pad_value=float(a.min()))
        torch.testing.assert_close(g2[b], g[0], atol=2e-5, rtol=0)
        torch.testing.assert_close(l2[b], loc[0], atol=2e-5, rtol=0)


def test_tiles_cover_each_map_voxel_exactly_once():
    cfg = CONFIGS["3d"]
    shape = (21, 45, 62)
    G, L = cfg.global_stride, cfg.local_stride
    gs = [-(-n // s) * s // s for n, s in zip(shape, G)]
    ls = [-(-(-(-n // g) * g) // s) for n, g, s in zip(shape, G, L)]
    gcount, lcount = np.zeros(gs, int), np.zeros(ls, int)
    for t in plan_tiles(cfg, shape, (8, 16, 16)):
        gcount[t.global_out] += 1
        lcount[t.local_out] += 1
        for sl, n, s in zip(t.input, shape, G):  # tiles start on the global grid
            assert sl.start % s == 0
    assert (gcount == 1).all() and (lcount == 1).all()
    assert all(h % s == 0 for h, s in zip(halo(cfg), G))


def test_memory_model_and_auto_tiles():
    cfg = CONFIGS["3d"]
    small, big = (32, 64, 64), (128, 256, 256)
    assert estimate_pass_bytes(cfg, big) > 20 * estimate_pass_bytes(cfg, small)
    assert estimate_pass_bytes(cfg, small, batch=3) == pytest.approx(3 * estimate_pass_bytes(cfg, small), rel=1e-6)
    assert auto_tile_shape(cfg, small, 1e12) is None
    budget = estimate_pass_bytes(cfg, big) / 3
    core = auto_tile_shape(cfg, big, budget)
    assert core is not None and all(c % s == 0 for c, s in zip(core, cfg.global_stride))

    def largest_tile_and_work(core):
        tiles = plan_tiles(cfg, big, core)
        shapes = np.array([[sl.stop - sl.start for sl in t.input] for t in tiles])
        return shapes.max(0), shapes.prod(1).sum()

    tile, work = largest_tile_and_work(core)
    assert estimate_pass_bytes(cfg, tile) <= budget
    # an unattainable budget: the smallest tiles that at most double the computation
    core = auto_tile_shape(cfg, big, 1.0)
    tile, work = largest_tile_and_work(core)
    assert work <= 2 * np.prod(big)
    assert estimate_pass_bytes(cfg, tile) < 0.75 * estimate_pass_bytes(cfg, big)


@pytest.fixture(scope="module")
def fitted3d():
    return tiny_embedder(ndim=3, random_state=0, max_iter=3).fit(smooth_images(2, ndim=3, seed=5))


def test_embedder_tiles_match_one_pass(fitted3d):
    img = smooth_images(1, ndim=3, seed=9, shape=(40, 52, 60))[0]
    one = fitted3d.set_params(tile_shape=None).transform(img)[0]
    tiled = fitted3d.set_params(tile_shape=(8, 16, 16)).transform(img)[0]
    auto = fitted3d.set_params(tile_shape="auto", max_memory_gb=1e-4).transform(img)[0]
    fitted3d.set_params(tile_shape="auto", max_memory_gb=None)
    for e in (tiled, auto):
        assert e.global_map.geometry == one.global_map.geometry
        assert e.local_map.geometry == one.local_map.geometry
        torch.testing.assert_close(e.global_map.data, one.global_map.data, atol=2e-5, rtol=0)
        torch.testing.assert_close(e.local_map.data, one.local_map.data, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="tile_shape must be"):
        fitted3d.set_params(tile_shape=(8, 16)).transform(img)
    fitted3d.set_params(tile_shape="auto")
    with pytest.raises(ValueError, match="max_memory_gb"):
        fitted3d.set_params(max_memory_gb=-1).transform(img)
    fitted3d.set_params(max_memory_gb=None)


def test_embedding_cache_round_trip(fitted3d, tmp_path, monkeypatch):
    imgs = smooth_images(2, ndim=3, seed=11)
    plain = fitted3d.transform(imgs)
    est = fitted3d.set_params(memory=str(tmp_path))
    try:
        first = est.transform(imgs)
        files = sorted(tmp_path.rglob("*.pt"))
        assert len(files) == 2
        for a, b in zip(first, plain):  # computed now: exact
            torch.testing.assert_close(a.local_map.data, b.local_map.data)
        # a second call reads the cache and never runs the network
        import samlearn.embedding.inference as emb_mod
        monkeypatch.setattr(emb_mod, "run_network", lambda *a, **k: pytest.fail("cache miss"))
        again = est.transform(imgs)
        for a, b in zip(again, plain):
            assert a.local_map.data.dtype == torch.float32
            assert a.local_map.geometry == b.local_map.geometry and a.source_geometry == b.source_geometry
            torch.testing.assert_close(a.local_map.data, b.local_map.data, atol=1e-3, rtol=0)
            torch.testing.assert_close(a.global_map.data, b.global_map.data, atol=1e-3, rtol=0)
        monkeypatch.undo()
        # another image content or another model: another key / folder
        shifted = Image(imgs[0].array + 1, imgs[0].geometry)
        assert image_key(shifted) != image_key(imgs[0])
        other = tiny_embedder(ndim=3, random_state=1, max_iter=1).fit(imgs)
        assert model_fingerprint(other.network_, other.config_) != model_fingerprint(est.network_, est.config_)
        # a damaged file is recomputed with a warning
        files[0].write_bytes(b"not a torch file")
        with pytest.warns(UserWarning, match="unreadable embedding cache"):
            est.transform(imgs)
        # a joblib.Memory names the same folder; a saved model keeps the folder as a path
        from joblib import Memory
        est.set_params(memory=Memory(str(tmp_path), verbose=0))
        assert len(est.transform(imgs)) == 2 and len(sorted(tmp_path.rglob("*.pt"))) == 2
        import samlearn
        est.save(tmp_path / "model.samlearn")
        assert samlearn.load(tmp_path / "model.samlearn").memory == str(tmp_path)
    finally:
        est.set_params(memory=None)


def test_parallel_transform_equals_serial():
    est = tiny_embedder(ndim=2, random_state=0, max_iter=1)
    imgs = smooth_images(3, ndim=2, seed=2)
    est.fit(imgs)
    serial = est.transform(imgs)
    par = est.set_params(n_jobs=2, verbose=1).transform(imgs)
    assert len(par) == 3
    for a, b in zip(par, serial):
        assert a.source_geometry == b.source_geometry
        torch.testing.assert_close(a.local_map.data, b.local_map.data, atol=1e-6, rtol=0)
    # the detector: n_jobs threads embed and match one image each, same points as serially
    from samlearn import OneShotLandmarkDetector
    est.set_params(n_jobs=None, verbose=0)
    pts = imgs[0].geometry.index_to_world(np.array([[20.0, 30.0], [40.0, 25.0], [33.0, 50.0]]))
    det = OneShotLandmarkDetector(embedder=est).fit(imgs[0], pts)
    ref, ref_scores = det.predict(imgs, return_scores=True)
    import threading
    seen = []
    inner = det._predict_items
    det._predict_items = lambda *a, **k: seen.append(threading.get_ident()) or inner(*a, **k)
    n_threads = torch.get_num_threads()
    got, got_scores = det.set_params(n_jobs=2, verbose=1).predict(imgs, return_scores=True)
    del det._predict_items
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-6)
    # one task per image, in worker threads; torch's thread count restored afterwards
    assert len(seen) == 3 and threading.get_ident() not in seen
    assert torch.get_num_threads() == n_threads
    with pytest.raises(ValueError, match="n_jobs"):
        est.set_params(n_jobs=0).transform(imgs)
    with pytest.raises(ValueError, match="n_jobs"):
        det.set_params(n_jobs=1.5).predict(imgs)


@pytest.mark.parametrize("name", ["2d", "3d"])
def test_cpu_inference_copy_gives_the_network_maps(name):
    """BatchNorm folded, channels-last, 1x1 convolutions as matrix products, the stem as a 2D
    convolution over slices: the same maps as the trained network."""
    from samlearn.nn.fusion import fold_small_conv3d, fuse_conv_bn, pointwise_as_matmul
    cfg = CONFIGS[name]
    net = random_net(cfg, seed=3)
    mf = torch.channels_last_3d if cfg.ndim == 3 else torch.channels_last
    fast = fold_small_conv3d(pointwise_as_matmul(fuse_conv_bn(net).to(memory_format=mf)))
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in fast.modules())
    shape = (2, 1) + ((24, 64, 48) if cfg.ndim == 3 else (64, 80))
    x = torch.randn(shape)
    with torch.no_grad():
        ref = net(x, pad_value=0.0)
        got = fast(x.contiguous(memory_format=mf), pad_value=0.0)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    assert all(p.requires_grad for p in net.parameters())  # the trained network is untouched


def test_depth_folded_conv3d_matches_conv3d():
    from samlearn.nn.fusion import _DepthFoldedConv3d
    torch.manual_seed(0)
    for cin, k, pad in ((1, 3, 1), (2, 3, 1), (1, 5, 2), (1, 7, 3)):
        conv = torch.nn.Conv3d(cin, 6, k, padding=pad, bias=cin == 2).eval()
        x = torch.randn(2, cin, 9, 11, 13)
        with torch.no_grad():
            torch.testing.assert_close(_DepthFoldedConv3d(conv)(x), conv(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sparse", [True, False], ids=["scipy-sparse", "torch"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_canonical_equals_the_simpleitk_path(ndim, sparse, monkeypatch):
    """The separable resampler (scipy.sparse on the CPU, torch taps on CUDA devices; both forced
    here) against Image.resample_to_geometry: anti-aliasing Gaussian, edge clamping and the
    outside-the-image test, with flipped and permuted axes, anisotropic spacing and an offset
    origin, shrinking and enlarging."""
    import samlearn.embedding.preprocessing as inference
    from samlearn.embedding.preprocessing import resample_canonical
    monkeypatch.setattr(inference, "_sparse_on", lambda device: sparse)
    rng = np.random.default_rng(ndim)
    shape = (23, 31, 37)[:ndim] if ndim == 3 else (41, 29)
    arr = (rng.normal(size=shape) * 100).astype(np.float32)
    perms = [np.eye(ndim), np.diag([1, -1, 1][:ndim]), np.eye(ndim)[::-1] * np.array([1, -1, 1][:ndim])]
    for D in perms:
        im = Image.from_array(arr, spacing=(0.7, 1.3, 2.1)[:ndim], origin=(5.0, -20.0, 13.0)[:ndim], direction=D)
        for sp in (2.0, 0.9):
            target = im.geometry.canonical(spacing=sp)
            ref = im.resample_to_geometry(target, interpolator="linear")
            got = resample_canonical(im, target)
            assert got.geometry == target
            np.testing.assert_allclose(got.array, ref.array, atol=1e-3, rtol=1e-5)
    from helpers import random_rotation
    rotated = Image.from_array(arr, direction=random_rotation(rng, ndim))
    assert resample_canonical(rotated, rotated.geometry.canonical(spacing=1.0)) is None


def test_limit_threads_sets_torch_and_blas_and_restores():
    from threadpoolctl import threadpool_info
    from samlearn._utils.parallel import limit_threads
    before = torch.get_num_threads()
    blas_before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    with limit_threads(1):
        assert torch.get_num_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
    assert torch.get_num_threads() == before
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == blas_before
    with limit_threads(None):
        assert torch.get_num_threads() == before


def test_detector_matches_with_the_embedders_thread_setting(monkeypatch):
    """predict runs its matching (not only the network) with the embedder's n_threads, and leaves
    torch's setting as it was."""
    import samlearn.apps.landmarks as landmarks
    from samlearn import OneShotLandmarkDetector
    imgs = smooth_images(2, ndim=2, seed=4)
    est = tiny_embedder(ndim=2, random_state=0, max_iter=1).fit(imgs)
    pts = imgs[0].geometry.index_to_world(np.array([[20.0, 30.0], [40.0, 25.0], [33.0, 50.0]]))
    det = OneShotLandmarkDetector(embedder=est).fit(imgs[0], pts)
    seen = []
    real = landmarks.match_points
    monkeypatch.setattr(landmarks, "match_points", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that the embedder's 1 is visible, whatever the machine's default
    try:
        est.set_params(n_threads=1)
        det.predict(imgs)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
