"""Helpers shared by the tests (import them: ``from helpers import tiny_embedder``): where the real
data is, small embedders that train in a second, and small images with smooth structure and
non-trivial geometry. Fixtures live in conftest.py."""
import os
from pathlib import Path

import numpy as np

from samlearn import Image, SAMEmbedder

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMLEARN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT_DIR = SHARED_DATA / "ct"
CEPH_DIR = SHARED_DATA / "cephalograms"


def random_rotation(rng: np.random.Generator, ndim: int, allow_reflection: bool = True) -> np.ndarray:
    """A random orthonormal matrix (QR of a Gaussian matrix), optionally with a reflection."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if not allow_reflection and np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


TINY_2D = dict(preset="xray-lite", image_size=(64, 64), patch_shape=(32, 32), batch_size=2, depth="resnet10",
               width=0.125, stem_kernel=3, n_stages=3, fpn_channels=16, embed_dim=16, n_pos=16, n_hard=20,
               n_random=20, n_candidates=50, n_local=20, max_iter=3, warmup_iter=1, num_workers=0,
               n_threads=1, device="cpu")
TINY_3D = dict(preset="ct-lite", spacing_mm=4.0, patch_shape=(16, 32, 32), batch_size=2, depth="resnet10",
               width=0.125, stem_kernel=3, n_stages=3, stage_strides=((2, 2, 2), (1, 2, 2), (1, 2, 2)),
               fpn_channels=16, embed_dim=16, n_pos=16, n_hard=20, n_random=20, n_candidates=50,
               n_local=20, max_iter=2, warmup_iter=1, num_workers=0, n_threads=1, device="cpu")


def tiny_embedder(ndim=2, **overrides):
    """A SAMEmbedder small enough to train a few iterations in a second on the CPU."""
    params = dict(TINY_2D if ndim == 2 else TINY_3D)
    params.update(overrides)
    return SAMEmbedder(**params)


def smooth_images(n, ndim=2, seed=0, shape=None):
    """Small images with smooth random structure (sums of Gaussian blobs) and non-trivial geometry."""
    rng = np.random.default_rng(seed)
    shape = shape or ((60, 70) if ndim == 2 else (24, 40, 44))
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    out = []
    for _ in range(n):
        arr = np.zeros(shape, np.float32)
        for _ in range(12):
            c = [rng.uniform(0, s) for s in shape]
            w = rng.uniform(2, 8)
            arr += rng.uniform(-1, 1) * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * w * w))
        arr = arr * 400 + rng.normal(0, 5, size=shape)
        spacing = rng.uniform(0.8, 1.6, size=ndim) if ndim == 2 else rng.uniform(1.5, 3.0, size=ndim)
        out.append(Image.from_array(arr, spacing=spacing, origin=rng.uniform(-50, 50, size=ndim),
                                    direction=random_rotation(rng, ndim, allow_reflection=True)))
    return out
