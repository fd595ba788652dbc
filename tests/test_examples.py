"""The examples run end to end (tiny budgets) and print what their docstrings promise."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CEPH = Path(os.environ.get("SAMLEARN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cephalograms"


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
    out = run_example("contrast_phase_svm.py", "--minutes", "0.05", "--subjects", "6", "--folds", "2")
    acc = re.search(r"cross-validated accuracy (\d+) %", out)
    assert acc and 0 <= int(acc.group(1)) <= 100, out
    assert "confusion matrix" in out


def test_ct_affine_registration(tmp_path):
    fig = tmp_path / "board.png"
    out = run_example("ct_affine_registration.py", "--minutes", "0.05", "--pairs", "1", "--figure", fig)
    m = re.search(r"TRE at \d+ landmarks: mean ([0-9.]+) mm.*unregistered: mean ([0-9.]+) mm", out)
    assert m, out
    assert float(m.group(1)) < float(m.group(2))  # registered beats unregistered, even barely trained
    assert fig.stat().st_size > 10_000


@pytest.mark.skipif(not CEPH.is_dir(), reason="../shared/data/cephalograms is absent")
def test_cephalometric_example():
    out = run_example("cephalometric_landmarks.py", CEPH, "--minutes", "0.05", "--train", "3",
                      "--queries", "2")
    assert re.search(r"MRE", out), out
