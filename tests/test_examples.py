"""The examples run end to end (tiny budgets) and print what their docstrings promise. Each runs a
script in a subprocess for up to a minute: marked slow (``python -m pytest -m slow``)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import CEPH_DIR

ROOT = Path(__file__).resolve().parents[1]
CEPH = CEPH_DIR
pytestmark = pytest.mark.slow


def run_example(name, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_quickstart():
    out = run_example("quickstart.py", "--minutes", "0.05", "--train", "2", "--test", "1")
    m = re.search(r"mean radial error ([0-9.]+) mm, median ([0-9.]+) mm.*\((\d+) landmarks\)", out)
    assert m and int(m.group(3)) == 20, out  # 20 phantom landmarks in the one held-out CT
    assert len(re.findall(r"found \[.*\] mm, true \[.*\] mm, error [0-9.]+ mm", out)) == 5, out


def test_contrast_phase_svm():
    """The printed accuracy is that of the printed confusion matrix, and the features at the true
    landmarks classify the phases (so features, labels and folds line up)."""
    out = run_example("contrast_phase_svm.py", "--minutes", "0.05", "--subjects", "6", "--folds", "2")
    acc = re.search(r"cross-validated accuracy (\d+) %", out)
    matrix = re.search(r"confusion matrix[^\n]*\n((?:\s*\[[\d\s\[\]]+\]?\n?)+)", out)
    bound = re.search(r"true landmarks instead \(upper bound\): accuracy (\d+) %", out)
    assert acc and matrix and bound, out
    counts = np.array([[int(v) for v in re.findall(r"\d+", row)] for row in matrix.group(1).strip().splitlines()])
    assert counts.shape == (3, 3) and counts.sum() == 6, out
    assert int(acc.group(1)) == round(100 * np.trace(counts) / counts.sum()), out
    assert int(bound.group(1)) >= 80, out


def test_ct_affine_registration(tmp_path):
    fig = tmp_path / "board.png"
    out = run_example("ct_affine_registration.py", "--minutes", "0.05", "--pairs", "1", "--figure", fig)
    m = re.search(r"TRE at \d+ landmarks: mean ([0-9.]+) mm.*unregistered: mean ([0-9.]+) mm", out)
    assert m, out
    assert float(m.group(1)) < float(m.group(2))  # registered beats unregistered, even barely trained
    assert fig.stat().st_size > 10_000


@pytest.mark.skipif(not CEPH.is_dir(), reason="../shared/data/cephalograms is absent")
def test_cephalometric_example():
    """Even a model trained for seconds finds the landmarks better than copying the template's
    points (wrong world units, axes or scale would not)."""
    out = run_example("cephalometric_landmarks.py", CEPH, "--minutes", "0.05", "--train", "3",
                      "--queries", "2")
    mre = re.search(r"^MRE ([0-9.]+) px \(([0-9.]+) mm\)", out, re.M)
    copied = re.search(r"copying the template's points instead: MRE ([0-9.]+) px", out)
    assert mre and copied, out
    assert float(mre.group(2)) == pytest.approx(float(mre.group(1)) / 10, abs=0.01)  # 0.1 mm pixels
    assert float(mre.group(1)) < 0.8 * float(copied.group(1)), out
