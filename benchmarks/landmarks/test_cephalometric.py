"""The cephalometric benchmark's own code (benchmarks/landmarks/cephalometric.py): full-resolution
scoring, rows and the table, the predictor harness, the inter-annotator row and the round-robin
re-timing. The protocol itself (split, template rule) is samlearn.datasets' and tested in tests/.
Peers are not needed. Run from the repository root::

    python -m pytest -q benchmarks/landmarks/test_cephalometric.py
"""
import numpy as np
import pytest
from sklearn.utils import Bunch

from benchmarks._common import CEPH_DIR
from benchmarks.landmarks import cephalometric as ceph
from samlearn import Image


def _synthetic_data(tmp_path, n=4, seed=0):
    """A cephalogram-like Bunch: ``n`` small images on disk, two annotators, their mean as truth."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:03d}" for i in range(1, n + 1)]
    paths = []
    for i in ids:
        paths.append(str(tmp_path / f"{i}.mha"))
        Image.from_array(rng.uniform(0, 255, size=(40, 50)).astype(np.float32)).save(paths[-1])
    a1 = rng.uniform(5, 35, size=(n, 19, 2))
    a2 = a1 + rng.normal(scale=2.0, size=a1.shape)
    return Bunch(ids=ids, image_paths=paths, annotators=np.stack([a1, a2]), annotator_names=["a", "b"],
                 landmarks=(a1 + a2) / 2)


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


def test_row_inter_annotator_leaves_out_missing_pairs(tmp_path):
    data = _synthetic_data(tmp_path)
    data.annotators[0][1, 3] = np.nan  # annotator 1 missed one landmark on image 002
    row = ceph.row_inter_annotator(data, eval_ids=["002", "003"])
    assert row["name"] == "inter-annotator" and row["notes"] == "a vs b" and row["ids"] == ["002", "003"]
    assert row["n_errors"] == 2 * 19 - 1 and row["errors_px"][0][3] is None
    a1, a2 = data.annotators[:, 1:3]
    expect = np.nanmean(np.linalg.norm(a1 - a2, axis=-1)) * 2  # full-resolution px
    assert row["mre"] == pytest.approx(expect)
    assert row["seconds_per_query"] is None and row["threads"] is None


def test_evaluate_predictor_scores_the_identity_and_checks_the_shape(tmp_path):
    data = _synthetic_data(tmp_path)
    row = ceph.evaluate_predictor("identity", ceph.identity_predictor, data, "001", ["003", "004"],
                                  threads=2, notes="n", verbose=False)
    expect = np.linalg.norm(data.landmarks[2:4] - data.landmarks[0], axis=-1).mean() * 2
    assert row["mre"] == pytest.approx(expect) and row["n_errors"] == 2 * 19
    assert row["seconds_per_query"] >= 0 and row["threads"] == 2 and row["notes"] == "n"
    with pytest.raises(ValueError, match="returned shape"):
        ceph.evaluate_predictor("bad", lambda t, p, q: np.zeros((1, 19, 2)), data, "001",
                                ["003", "004"], verbose=False)


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


@pytest.mark.realdata
@pytest.mark.skipif(not (CEPH_DIR / "landmarks.csv").is_file(), reason=f"no cephalograms at {CEPH_DIR}")
def test_rows_on_real_data():
    from samlearn.datasets import choose_template, load_cephalograms
    data = load_cephalograms(CEPH_DIR)
    tid, _ = choose_template(data)
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
