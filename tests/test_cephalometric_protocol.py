"""The cephalometric benchmark protocol (benchmarks/cephalometric.py): landmark normalisation,
template rule, full-resolution scoring and the table. Peers are not needed."""
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils import Bunch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cephalometric as ceph  # noqa: E402


def test_normalise_landmarks_removes_translation_and_scale_only():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(19, 2))
    moved = 3.7 * pts + [120.0, -40.0]
    np.testing.assert_allclose(ceph.normalise_landmarks(moved), ceph.normalise_landmarks(pts), atol=1e-12)
    n = ceph.normalise_landmarks(pts)
    np.testing.assert_allclose(n.mean(0), 0, atol=1e-12)
    assert np.sqrt(np.mean(np.sum(n ** 2, 1))) == pytest.approx(1.0)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert not np.allclose(ceph.normalise_landmarks(pts @ rot.T), n)  # rotation is kept
    with pytest.raises(ValueError, match="all points at one place"):
        ceph.normalise_landmarks(np.ones((19, 2)))


def test_choose_template_picks_the_set_nearest_the_mean_shape():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(19, 2))
    ids = [f"{i:03d}" for i in range(1, 11)]
    lms = np.stack([base + rng.normal(scale=0.3, size=base.shape) for _ in ids])
    lms[6] = base.copy()                       # the mean shape itself...
    lms[6] = 5.0 * lms[6] + 40.0               # ...at another position and scale
    data = Bunch(ids=ids, landmarks=lms)
    tid, d = ceph.choose_template(data, train_ids=ids[:8])
    assert tid == "007" and d.shape == (8,) and np.argmin(d) == 6
    # an image outside the training ids is never chosen
    tid, _ = ceph.choose_template(data, train_ids=ids[:6])
    assert tid != "007"


def test_score_is_in_full_resolution_pixels_and_table_prints():
    truth = np.zeros((2, 19, 2))
    pred = truth.copy()
    pred[0, :, 0] = 5.0  # 5 world px = 10 full-resolution px
    err, s = ceph.score(pred, truth)
    np.testing.assert_allclose(err[0], 10.0)
    assert s["mre"] == pytest.approx(5.0) and s["sdr"][20.0] == 1.0
    row = ceph._row("x", err, s, 0.5, 1, "", ["071", "072"])
    table = ceph.markdown_table([row])
    assert "| x | 5.0 |" in table and "100.0%" in table and "| 0.50 | 1 |" in table


@pytest.mark.realdata
def test_protocol_on_real_data(ceph_dir):
    from samlearn.datasets import load_cephalograms
    data = load_cephalograms(ceph_dir)
    tid, _ = ceph.choose_template(data)
    assert tid in ceph.TRAIN_IDS and tid == "048"
    assert set(ceph.TRAIN_IDS).isdisjoint(ceph.EVAL_IDS) and len(ceph.EVAL_IDS) == 30
    row = ceph.row_inter_annotator(data)
    assert row["n_errors"] == 30 * 19 - 1 and 9 < row["mre"] < 14
    ident = ceph.evaluate_predictor("identity", ceph.identity_predictor, data, tid, ceph.EVAL_IDS[:3],
                                    verbose=False)
    t = data.ids.index(tid)
    expect = np.linalg.norm(data.landmarks[70:73] - data.landmarks[t], axis=-1).mean() * 2
    assert ident["mre"] == pytest.approx(expect)
    with pytest.raises(ValueError, match="returned shape"):
        ceph.evaluate_predictor("bad", lambda t, p, q: np.zeros((1, 19, 2)), data, tid,
                                ceph.EVAL_IDS[:2], verbose=False)


def test_retime_rows_round_robin_median(monkeypatch):
    """--repeats: every method is timed again pass after pass (one of each per round, never back
    to back) and the median pass is reported, all passes kept."""
    calls = []
    times = {"a": iter([5.0, 1.0]), "b": iter([2.0, 9.0])}

    def fake_call(predict, data, template_id, eval_ids):
        calls.append(predict)
        return None, next(times[predict])

    monkeypatch.setattr(ceph, "_timed_call", fake_call)
    rows = [{"seconds_per_query": 3.0}, {"seconds_per_query": 4.0}]
    ceph.retime_rows([(rows[0], "a"), (rows[1], "b")], None, "001", ["002"], repeats=3)
    assert calls == ["a", "b", "a", "b"]
    assert rows[0]["seconds_per_query_passes"] == [3.0, 5.0, 1.0] and rows[0]["seconds_per_query"] == 3.0
    assert rows[1]["seconds_per_query_passes"] == [4.0, 2.0, 9.0] and rows[1]["seconds_per_query"] == 4.0
    ceph.retime_rows([(rows[0], "a")], None, "001", ["002"], repeats=1)  # one pass: untouched
    assert len(calls) == 4
