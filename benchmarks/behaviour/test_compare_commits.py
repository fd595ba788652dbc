"""Checks of the comparison half of the behaviour tool (no checkout, no model, no samlearn import).

Run from the repository root (not collected by the main test suite)::

    python -m pytest -q benchmarks/behaviour/test_compare_commits.py
"""
import json

import numpy as np
import pytest

from benchmarks.behaviour import compare_commits as cc
from benchmarks.behaviour import probe


def test_max_abs_diff_numbers():
    a = np.array([[1.0, np.nan, np.inf], [2.0, -np.inf, 0.0]])
    assert cc.max_abs_diff(a, a.copy()) == 0.0
    b = a.copy()
    b[1, 2] = 3e-6
    assert cc.max_abs_diff(a, b) == pytest.approx(3e-6)
    b = a.copy()
    b[0, 1] = 0.0  # NaN on one side only
    assert cc.max_abs_diff(a, b) == np.inf
    b = a.copy()
    b[0, 2] = -np.inf
    assert cc.max_abs_diff(a, b) == np.inf
    assert cc.max_abs_diff(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert cc.max_abs_diff(np.arange(4), np.arange(4.0)) == 0.0


def test_max_abs_diff_strings():
    error = np.array("RegistrationError: x")
    assert cc.max_abs_diff(error, np.array("RegistrationError: x")) == 0.0
    assert cc.max_abs_diff(error, np.array("ValueError: y")) == np.inf


def test_compare_arrays_rows():
    base = {"same": np.ones(3), "close": np.zeros(2), "far": np.zeros(2), "gone": np.ones(1),
            "shape": np.ones((2, 2))}
    head = {"same": np.ones(3), "close": np.array([0.0, 1e-7]), "far": np.array([0.0, 1e-3]),
            "new": np.ones(1), "shape": np.ones((2, 3))}
    rows = {r["array"]: r for r in cc.compare_arrays(base, head, atol=1e-6)}
    assert sorted(rows) == ["close", "far", "gone", "new", "same", "shape"]
    assert rows["same"]["passed"] and rows["same"]["max_abs_diff"] == 0.0
    assert rows["close"]["passed"] and rows["close"]["max_abs_diff"] == pytest.approx(1e-7)
    assert not rows["far"]["passed"] and rows["far"]["max_abs_diff"] == pytest.approx(1e-3)
    assert not rows["gone"]["passed"] and rows["gone"]["note"] == "missing in head"
    assert not rows["new"]["passed"] and rows["new"]["note"] == "missing in base"
    assert not rows["shape"]["passed"] and rows["shape"]["head_shape"] == [2, 3]
    text = "\n".join(cc.table_lines(list(rows.values())))
    assert "FAIL (missing in head)" in text and "2x2 / 2x3" in text
    assert cc.table_lines(list(rows.values()), markdown=True)[0].startswith("| array |")


def _write_probe(path, arrays):
    np.savez(path, **arrays)
    meta = {"revision": {"rev": path.stem, "commit": "0" * 40}}
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_compare_npz_exit_codes(tmp_path, capsys):
    arrays = {"ceph/default/points": np.random.default_rng(0).normal(size=(20, 19, 2)),
              "ct/case/affine/error": np.array("RegistrationError: too few matches")}
    _write_probe(tmp_path / "base.npz", arrays)
    _write_probe(tmp_path / "head.npz", dict(arrays))
    assert cc.main(["--compare-npz", str(tmp_path / "base.npz"), str(tmp_path / "head.npz")]) == 0
    report = json.loads((tmp_path / "compare_npz_report.json").read_text())
    assert report["identical"] and len(report["arrays"]) == 2
    assert "IDENTICAL" in (tmp_path / "compare_npz_report.md").read_text()

    changed = dict(arrays)
    changed["ceph/default/points"] = arrays["ceph/default/points"] + 1e-5
    _write_probe(tmp_path / "head.npz", changed)
    assert cc.main(["--compare-npz", str(tmp_path / "base.npz"), str(tmp_path / "head.npz")]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT (1 arrays)" in out and "FAIL" in out
    # a recorded error that changes is a difference too; the JSON stays strict (no Infinity)
    changed["ct/case/affine/error"] = np.array("ValueError: something else")
    _write_probe(tmp_path / "head.npz", changed)
    assert cc.main(["--compare-npz", str(tmp_path / "base.npz"), str(tmp_path / "head.npz")]) == 1
    text = (tmp_path / "compare_npz_report.json").read_text()
    rows = json.loads(text, parse_constant=pytest.fail)["arrays"]
    assert {r["array"]: r["max_abs_diff"] for r in rows}["ct/case/affine/error"] == "inf"
    changed["ct/case/affine/error"] = arrays["ct/case/affine/error"]
    _write_probe(tmp_path / "head.npz", changed)
    # a looser tolerance accepts the 1e-5 shift
    assert cc.main(["--compare-npz", str(tmp_path / "base.npz"), str(tmp_path / "head.npz"),
                    "--atol", "1e-4"]) == 0


def test_homogeneous_matches_simpleitk():
    sitk = pytest.importorskip("SimpleITK")
    t = sitk.AffineTransform(3)
    t.SetCenter((10.0, -5.0, 30.0))
    t.SetMatrix((1.01, 0.02, 0.0, -0.03, 0.99, 0.01, 0.0, 0.02, 1.0))
    t.SetTranslation((2.0, -3.0, 4.0))
    m = probe.homogeneous(t)
    p = np.array([12.0, 40.0, -7.0])
    assert np.allclose(m[:3, :3] @ p + m[:3, 3], t.TransformPoint(tuple(p)))
