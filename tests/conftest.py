"""Shared fixtures. Real data lives in ../shared/data beside the project and is never committed:
tests that need it skip cleanly when it is absent (a user's fresh clone has no ../shared)."""
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMLEARN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT_DIR = SHARED_DATA / "ct"
CEPH_DIR = SHARED_DATA / "cephalograms"


def _need(path: Path):
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture(scope="session")
def ct_dir():
    return _need(CT_DIR)


@pytest.fixture(scope="session")
def ceph_dir():
    return _need(CEPH_DIR)


def random_rotation(rng: np.random.Generator, ndim: int, allow_reflection: bool = True) -> np.ndarray:
    """A random orthonormal matrix (QR of a Gaussian matrix), optionally with a reflection."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if not allow_reflection and np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
