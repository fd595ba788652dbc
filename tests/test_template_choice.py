"""suggest_templates on an analytic embedder whose images show known parts of one anatomy."""
import dataclasses

import numpy as np
import pytest
from fake_embedder import AnalyticEmbedder
from sklearn.exceptions import NotFittedError

from samlearn import Image, ImageGeometry
from samlearn.apps import template_choice
from samlearn.apps.template_choice import TemplateSuggestion, suggest_templates

SIZES = {2: (48, 40), 3: (48, 16, 16)}


def image(name, ndim=2):
    size = SIZES[ndim]
    return Image(np.zeros(size[::-1], np.float32), ImageGeometry(size, 1.0, 0.0), source=name)


def shift(*t):
    return (np.eye(len(t)), np.asarray(t, dtype=float))


def pool(frames, names, ndim=2):
    """Images named ``names`` and an embedder that knows their anatomical frames."""
    ims = [image(n, ndim) for n in names]
    return AnalyticEmbedder(frames=frames).fit(ims[:1]), ims


@pytest.fixture(scope="module")
def outlier_pool():
    """Five images of one anatomy (small shifts) and two whose anatomy is nowhere in the others:
    one moved far away, one scaled x2 and moved."""
    shifts = [(0, 0), (3, -2), (-2, 3), (1, 1), (-3, -1)]
    frames = {f"in{k}": shift(*t) for k, t in enumerate(shifts)}
    frames["far"] = shift(500.0, -300.0)
    frames["scaled"] = (2 * np.eye(2), np.array([200.0, 150.0]))
    names = ["far", "in0", "in1", "in2", "scaled", "in3", "in4"]
    emb, ims = pool(frames, names)
    return emb, ims, [names.index("far"), names.index("scaled")]


def test_outliers_are_never_suggested_and_score_lowest(outlier_pool):
    emb, ims, outliers = outlier_pool
    res = suggest_templates(emb, ims)
    assert isinstance(res, TemplateSuggestion)
    assert res.indices.shape == (1,) and res.indices[0] not in outliers
    inliers = [i for i in range(len(ims)) if i not in outliers]
    assert res.scores[outliers].max() < res.scores[inliers].min() - 0.2
    assert res.indices[0] == inliers[int(np.argmax(res.scores[inliers]))]


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_central_image_is_chosen(ndim):
    s = 16.0  # a third of the 48 mm field along x
    frames = {f"s{k}": shift(k * s, *([0.0] * (ndim - 1))) for k in range(-2, 3)}
    order = [1, -2, 0, 2, -1]
    emb, ims = pool(frames, [f"s{k}" for k in order], ndim)
    res = suggest_templates(emb, ims)
    assert res.indices.tolist() == [order.index(0)]
    # the score falls off with the distance from the centre
    by_shift = {k: res.scores[i] for i, k in enumerate(order)}
    assert by_shift[0] > max(by_shift[-1], by_shift[1]) > max(by_shift[-2], by_shift[2])


def test_two_templates_cover_two_clusters():
    frames = {f"a{k}": shift(*t) for k, t in enumerate([(0, 0), (2, -1), (-1, 2), (1, 1)])}
    frames.update({f"b{k}": (2 * np.eye(2), np.array([800.0 + t[0], -600.0 + t[1]]))
                   for k, t in enumerate([(0, 0), (3, 1), (-2, -2)])})
    names = ["a0", "b0", "a1", "b1", "a2", "a3", "b2"]
    emb, ims = pool(frames, names)
    res = suggest_templates(emb, ims, n_templates=2)
    clusters = [names[i][0] for i in res.indices]
    assert sorted(clusters) == ["a", "b"]
    assert len(set(res.indices.tolist())) == 2
    # the bigger cluster's template comes first: it serves more images
    assert clusters[0] == "a"


def test_result_shapes_symmetry_and_immutability(outlier_pool):
    emb, ims, _ = outlier_pool
    n = len(ims)
    res = suggest_templates(emb, ims, n_templates=3, batch_size=3)
    assert res.scores.shape == (n,) and res.similarity.shape == (n, n)
    assert res.indices.shape == (3,) and np.issubdtype(res.indices.dtype, np.integer)
    assert len(set(res.indices.tolist())) == 3
    np.testing.assert_array_equal(res.similarity, res.similarity.T)
    np.testing.assert_array_equal(np.diag(res.similarity), 1.0)
    assert np.all(res.similarity <= 1.0) and np.all(res.similarity >= -1.0)
    off = res.similarity[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    np.testing.assert_allclose(res.scores, off.mean(axis=1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.indices = np.array([0])
    with pytest.raises(ValueError):
        res.scores[0] = 2.0


def test_chunking_and_order_do_not_change_the_result(outlier_pool, monkeypatch):
    emb, ims, _ = outlier_pool
    ref = suggest_templates(emb, ims, n_templates=2)
    monkeypatch.setattr(template_choice, "_CHUNK", 7)  # global maps hold 30 vectors
    chunked = suggest_templates(emb, ims, n_templates=2)
    np.testing.assert_allclose(chunked.similarity, ref.similarity, atol=1e-6)
    np.testing.assert_array_equal(chunked.indices, ref.indices)
    perm = np.random.default_rng(0).permutation(len(ims))
    permuted = suggest_templates(emb, [ims[p] for p in perm], n_templates=2)
    np.testing.assert_allclose(permuted.similarity, ref.similarity[np.ix_(perm, perm)], atol=1e-6)
    np.testing.assert_array_equal(perm[permuted.indices], ref.indices)


def test_errors(outlier_pool):
    emb, ims, _ = outlier_pool
    n = len(ims)
    for bad in (0, -1, n + 1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="n_templates"):
            suggest_templates(emb, ims, n_templates=bad)
    with pytest.raises(ValueError, match="batch_size"):
        suggest_templates(emb, ims, batch_size=0)
    with pytest.raises(ValueError, match="images"):
        suggest_templates(emb, ims[:1])
    with pytest.raises(ValueError, match="images"):
        suggest_templates(emb, [ims[0], image("in1", ndim=3)])
    with pytest.raises(ValueError, match="images"):
        suggest_templates(emb, [image("a", ndim=3), image("b", ndim=3)])
    with pytest.raises(NotFittedError, match="embedder"):
        suggest_templates(AnalyticEmbedder(), ims)
    with pytest.raises(ValueError, match="embedder"):
        suggest_templates(None, ims)
    with pytest.raises(TypeError, match="embedder"):
        suggest_templates(object(), ims)
    assert suggest_templates(emb, ims[:2], n_templates=2).indices.shape == (2,)
