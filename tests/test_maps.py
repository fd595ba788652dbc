import numpy as np
import pytest
import torch

from samlearn import ImageGeometry
from samlearn.embedding import Embedding, EmbeddingMap, sample_map
from helpers import random_rotation


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 8)])
def test_sample_map_is_exact_on_linear_fields(shape):
    ndim = len(shape)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    coef = torch.arange(1, ndim + 1, dtype=torch.float32)
    data = torch.stack([sum(c * g for c, g in zip(coef, grids)), torch.ones(shape)])
    rng = np.random.default_rng(0)
    idx = rng.uniform(0, np.array(shape) - 1, size=(50, ndim))
    got = sample_map(data, idx, normalize=False)
    np.testing.assert_allclose(got[:, 0].numpy(), idx @ coef.numpy(), atol=1e-4)
    # outside the grid: clamped to the border
    got = sample_map(data, np.array([[-3.0] * ndim]), normalize=False)
    assert got[0, 0].item() == pytest.approx(0.0)


def test_vectors_at_world_points_with_geometry():
    rng = np.random.default_rng(1)
    geom = ImageGeometry((6, 5, 4), spacing=(1.5, 0.7, 3.0), origin=(10, -3, 7),
                         direction=random_rotation(rng, 3))
    data = torch.nn.functional.normalize(torch.randn(16, 4, 5, 6), dim=0)
    m = EmbeddingMap(data, geom)
    idx = np.array([2, 3, 1])  # x, y, z
    w = geom.index_to_world(idx)
    v = m.vectors_at(w)
    torch.testing.assert_close(v[0], data[:, 1, 3, 2], atol=1e-5, rtol=0)
    sim = m.similarity(v)
    assert sim.shape == (1, 4, 5, 6)
    assert sim[0, 1, 3, 2].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        EmbeddingMap(data[:, :3], geom)
    e = Embedding(m, m, geom)
    assert e.ndim == 3
