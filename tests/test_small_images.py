"""Images too small to embed are refused with an error that names them, not answered silently."""
import numpy as np
import pytest

from helpers import smooth_images, tiny_embedder

from samlearn import Image, OneShotLandmarkDetector


@pytest.fixture(scope="module")
def model2d():
    return tiny_embedder(2, random_state=0).fit(smooth_images(2, seed=1))


@pytest.mark.parametrize("shape", [(3, 3), (1, 96), (96, 2)])
def test_too_few_voxels_refused(model2d, shape):
    im = Image.from_array(np.random.default_rng(0).random(shape).astype(np.float32))
    with pytest.raises(ValueError, match=r"images\[1\] is too small to embed"):
        model2d.transform([smooth_images(1, seed=2)[0], im])


def test_smaller_than_two_local_voxels_refused():
    model = tiny_embedder(3, random_state=0).fit(smooth_images(2, ndim=3, seed=1))
    im = Image.from_array(np.random.default_rng(0).random((4, 4, 4)).astype(np.float32), spacing=(2, 2, 2))
    with pytest.raises(ValueError, match="too small for the network.*two local embedding voxels"):
        model.transform([im])


def test_detector_refuses_a_tiny_query(model2d):
    tpl = smooth_images(1, seed=2)[0]
    det = OneShotLandmarkDetector(embedder=model2d).fit(tpl, tpl.geometry.index_to_world(np.array([[30.0, 30.0]])))
    tiny = Image.from_array(np.ones((3, 3), np.float32) + np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="too small"):
        det.predict([tiny])


def test_small_but_sufficient_images_still_embed(model2d):
    im = Image.from_array(np.random.default_rng(0).random((10, 12)).astype(np.float32))
    emb = model2d.transform([im])[0]
    assert np.isfinite(emb.local_map.numpy()).all()
