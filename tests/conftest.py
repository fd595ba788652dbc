"""Shared fixtures. Real data lives in ../shared/data beside the project and is never committed:
tests that need it skip cleanly when it is absent (a user's fresh clone has no ../shared).
Helpers that tests import live in helpers.py."""
from pathlib import Path

import pytest

from helpers import CEPH_DIR, CT_DIR


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
