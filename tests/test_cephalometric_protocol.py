"""The cephalometric one-shot protocol (samlearn.datasets.cephalometric): landmark normalisation,
the template rule and the train / evaluation split, on synthetic and on the real landmarks."""
import numpy as np
import pytest
from sklearn.utils import Bunch

from samlearn.datasets import (
    CEPH_EVAL_IDS,
    CEPH_TRAIN_IDS,
    FULL_RESOLUTION_FACTOR,
    choose_template,
    load_cephalograms,
    normalise_landmarks,
)
from samlearn.metrics import landmark_summary, radial_errors


def test_normalise_landmarks_removes_translation_and_scale_only():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(19, 2))
    moved = 3.7 * pts + [120.0, -40.0]
    np.testing.assert_allclose(normalise_landmarks(moved), normalise_landmarks(pts), atol=1e-12)
    n = normalise_landmarks(pts)
    np.testing.assert_allclose(n.mean(0), 0, atol=1e-12)
    assert np.sqrt(np.mean(np.sum(n ** 2, 1))) == pytest.approx(1.0)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])
    assert not np.allclose(normalise_landmarks(pts @ rot.T), n)  # rotation is kept
    np.testing.assert_allclose(normalise_landmarks(np.stack([moved, pts]))[0], n, atol=1e-12)
    with pytest.raises(ValueError, match="all points at one place"):
        normalise_landmarks(np.ones((19, 2)))
    with pytest.raises(ValueError, match="finite with shape"):
        normalise_landmarks(np.ones((19, 3)))


def test_choose_template_picks_the_set_nearest_the_mean_shape():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(19, 2))
    ids = [f"{i:03d}" for i in range(1, 11)]
    lms = np.stack([base + rng.normal(scale=0.3, size=base.shape) for _ in ids])
    lms[6] = base.copy()                       # the mean shape itself...
    lms[6] = 5.0 * lms[6] + 40.0               # ...at another position and scale
    data = Bunch(ids=ids, landmarks=lms)
    tid, d = choose_template(data, train_ids=ids[:8])
    assert tid == "007" and d.shape == (8,) and np.argmin(d) == 6
    # an image outside the training ids is never chosen
    tid, _ = choose_template(data, train_ids=ids[:6])
    assert tid != "007"


def test_split_is_disjoint_and_covers_the_set():
    assert len(CEPH_TRAIN_IDS) == 70 and len(CEPH_EVAL_IDS) == 30
    assert set(CEPH_TRAIN_IDS).isdisjoint(CEPH_EVAL_IDS)
    assert sorted(CEPH_TRAIN_IDS + CEPH_EVAL_IDS) == [f"{i:03d}" for i in range(1, 101)]


@pytest.mark.realdata
def test_protocol_on_real_data(ceph_dir):
    data = load_cephalograms(ceph_dir)
    tid, _ = choose_template(data)
    assert tid in CEPH_TRAIN_IDS and tid == "048"
    # the two annotators on the evaluation images, in full-resolution pixels (one pair is missing)
    idx = [data.ids.index(i) for i in CEPH_EVAL_IDS]
    a1, a2 = data.annotators[0][idx], data.annotators[1][idx].copy()
    a2[np.isnan(a1).any(-1)] = np.nan
    s = landmark_summary(radial_errors(a1, a2, scale=FULL_RESOLUTION_FACTOR), radii=(20.0, 40.0))
    assert s["n_errors"] == 30 * 19 - 1 and 9 < s["mre"] < 14
