"""Helpers shared by the tests (import them: ``from helpers import tiny_embedder``): where the real
data is, small embedders that train in a second, and small images with smooth structure and
non-trivial geometry (``smooth_images``, ``random_rotation``: samlearn.datasets.synthetic, which
the benchmarks use too). Fixtures live in conftest.py."""
import os
from pathlib import Path

from samlearn import SAMEmbedder
from samlearn.datasets.synthetic import make_smooth_images as smooth_images  # noqa: F401 (re-exported)
from samlearn.datasets.synthetic import random_direction as random_rotation  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMLEARN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT_DIR = SHARED_DATA / "ct"
CEPH_DIR = SHARED_DATA / "cephalograms"

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
