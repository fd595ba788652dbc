import json

import numpy as np
import pytest

from samlearn.metrics import landmark_summary, radial_errors, target_registration_error


def test_radial_errors_known_values_and_shape():
    true = np.zeros((2, 3, 2))
    pred = true.copy()
    pred[0, 0] = [3, 4]      # 5
    pred[1, 2] = [-6, 8]     # 10
    err = radial_errors(pred, true)
    assert err.shape == (2, 3)
    np.testing.assert_allclose(err, [[5, 0, 0], [0, 0, 10]])
    # scale multiplies differences (scalar and per axis)
    np.testing.assert_allclose(radial_errors(pred, true, scale=2.0), 2 * err)
    np.testing.assert_allclose(radial_errors(pred, true, scale=[1.0, 0.5])[0, 0], np.hypot(3, 2))
    # single image (n_points, ndim) and 3D points
    np.testing.assert_allclose(radial_errors([[1, 2, 2]], [[0, 0, 0]]), [3.0])


def test_radial_errors_nan_truth_gives_nan_and_summary_counts_it():
    true = np.array([[[0, 0], [np.nan, np.nan], [1, 1]]], dtype=float)
    pred = np.array([[[0, 1], [np.nan, np.nan], [1, 3]]], dtype=float)
    err = radial_errors(pred, true)
    assert np.isnan(err[0, 1]) and err[0, 0] == 1 and err[0, 2] == 2
    s = landmark_summary(err, radii=(1.0, 1.5))
    assert s["n_errors"] == 2 and s["n_missing"] == 1 and s["n_images"] == 1
    assert s["mre"] == pytest.approx(1.5)
    assert s["sdr"] == {1.0: 0.5, 1.5: 0.5}
    assert np.isnan(s["per_landmark_mre"][1])
    # a prediction for a missing truth is fine (ignored); a finite truth needs a finite prediction
    pred2 = pred.copy()
    pred2[0, 1] = [5, 5]
    np.testing.assert_array_equal(np.isnan(radial_errors(pred2, true)), np.isnan(err))


def test_radial_errors_rejects_bad_input():
    good = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="true must have the same shape"):
        radial_errors(good, np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="pred must have shape"):
        radial_errors(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="pred must have shape"):
        radial_errors(np.zeros(3), np.zeros(3))
    bad = good.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="pred has non-finite"):
        radial_errors(bad, good)
    with pytest.raises(ValueError, match="only some coordinates NaN"):
        radial_errors(good, bad)
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        radial_errors(good, good, scale=-1)
    with pytest.raises(ValueError, match="scale must be a number or 2 values"):
        radial_errors(good, good, scale=[1, 2, 3])
    with pytest.raises(TypeError, match="pred must be a numeric array"):
        radial_errors("abc", good)


def test_landmark_summary_statistics_match_numpy():
    rng = np.random.default_rng(0)
    e = rng.gamma(2.0, 1.0, size=(10, 19))
    s = landmark_summary(e, radii=(2.0, 4.0))
    assert s["mre"] == pytest.approx(e.mean())
    assert s["sd"] == pytest.approx(e.std())
    assert s["median"] == pytest.approx(np.median(e))
    assert s["p90"] == pytest.approx(np.percentile(e, 90))
    assert s["max"] == pytest.approx(e.max())
    assert s["sdr"][2.0] == pytest.approx(np.mean(e <= 2.0))
    assert s["sdr"][4.0] == pytest.approx(np.mean(e <= 4.0))
    assert s["sdr"][2.0] < s["sdr"][4.0]
    np.testing.assert_allclose(s["per_landmark_mre"], e.mean(0))
    assert s["n_errors"] == 190 and s["n_images"] == 10
    json.dumps(s)  # JSON-friendly
    # 1-D errors: no per-image keys
    s1 = landmark_summary(e.ravel())
    assert "per_landmark_mre" not in s1 and s1["mre"] == pytest.approx(s["mre"])
    assert set(s1["sdr"]) == {2.0, 2.5, 3.0, 4.0}


def test_landmark_summary_rejects_bad_input():
    with pytest.raises(ValueError, match="no finite value"):
        landmark_summary([np.nan, np.nan])
    with pytest.raises(ValueError, match="non-negative"):
        landmark_summary([1.0, -0.5])
    with pytest.raises(ValueError, match="infinite"):
        landmark_summary([1.0, np.inf])
    with pytest.raises(ValueError, match="radii must be"):
        landmark_summary([1.0], radii=(0.0, 1.0))
    with pytest.raises(ValueError, match="errors must have shape"):
        landmark_summary(np.ones((2, 2, 2)))


def test_target_registration_error():
    mapped = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    true = np.array([[0.0, 0.0, 1.0], [1.0, 2.0, 2.0]])
    np.testing.assert_allclose(target_registration_error(mapped, true), [1.0, 0.0])
    with pytest.raises(ValueError, match="true must have the same shape"):
        target_registration_error(mapped, true[:1])
    with pytest.raises(ValueError, match="mapped must have shape"):
        target_registration_error(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="true contains non-finite"):
        target_registration_error(mapped, [[0, 0, np.nan], [0, 0, 0]])
