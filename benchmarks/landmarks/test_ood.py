"""The out-of-domain check's own code (benchmarks/landmarks/ood.py): scoring in original
full-resolution pixels, the table, and on the real cephalograms that every variant's ground truth
follows its image. Peers and models are not needed. Run from the repository root::

    python -m pytest -q benchmarks/landmarks/test_ood.py
"""
import numpy as np
import pytest

from benchmarks._common import CEPH_DIR
from benchmarks.landmarks import ood


def test_score_divides_by_the_magnification_and_skips_nan_truth():
    truth = np.zeros((1, 19, 2))
    truth[0, 0] = np.nan  # a landmark cropped away
    pred = np.full((1, 19, 2), [6.5, 0.0])  # 6.5 world units = 5 original half-res px in 'rescaled'
    err, s = ood.score_variant(pred, truth, "rescaled")
    assert np.isnan(err[0, 0]) and s["n_missing"] == 1 and s["n_errors"] == 18
    assert s["mre"] == pytest.approx(10.0) and s["p95"] == pytest.approx(10.0)
    err, s = ood.score_variant(pred, truth, "cropped")
    assert s["mre"] == pytest.approx(13.0)
    cell = dict(ood._row("cropped", err, s, 0.5, None, "", ["071"]), p95=s["p95"])
    row = {"name": "x", "variants": {"cropped": cell}, "all_variants": ood.pooled({"cropped": cell})}
    assert row["all_variants"]["mre"] == pytest.approx(13.0)
    table = ood.markdown_table([row], ["cropped"])
    assert "cropped MRE" in table and "all variants MRE" in table and "| x | 13.0 | 13.0 | 13.0 | 13 |" in table


@pytest.mark.realdata
@pytest.mark.skipif(not (CEPH_DIR / "landmarks.csv").is_file(), reason=f"no cephalograms at {CEPH_DIR}")
def test_variants_carry_the_ground_truth():
    from samlearn.datasets import load_cephalograms
    from samlearn.image import read_image
    data = load_cephalograms(CEPH_DIR)
    k = data.ids.index("071")
    image, points = read_image(data.image_paths[k]), data.landmarks[k]
    orig = image.sample(points)

    v, pm = ood.rescaled(image)  # intensity at the mapped landmark = original's at the landmark
    mapped = pm(points)
    np.testing.assert_allclose(mapped, 1.3 * points)
    np.testing.assert_allclose(v.geometry.corners_world(), 1.3 * image.geometry.corners_world())
    np.testing.assert_allclose(v.sample(mapped), image.resize(v.size).sample(points), atol=1e-3)
    assert np.median(np.abs(v.sample(mapped) - orig)) < 5 < np.median(np.abs(v.sample(points) - orig))

    v, pm = ood.cropped(image)  # landmarks outside become NaN, the others stay where they were
    mapped = pm(points)
    outside = (points[:, 0] > v.size[0] - 0.5) | (points[:, 1] > v.size[1] - 0.5)
    assert outside.any() and np.isnan(mapped[outside]).all()
    np.testing.assert_array_equal(mapped[~outside], points[~outside])
    np.testing.assert_array_equal(v.sample(mapped[~outside]), orig[~outside])
    assert v.size == (570, 626) and v.geometry.origin.tolist() == image.geometry.origin.tolist()

    v, pm = ood.inverted(image)
    np.testing.assert_array_equal(v.array, 255 - image.array)
    np.testing.assert_array_equal(pm(points), points)

    v, _ = ood.rewindowed(image)  # monotone, window stretched to 0-255
    order = np.argsort(image.array.ravel(), kind="stable")
    assert np.all(np.diff(v.array.ravel()[order]) >= -1e-3) and (v.array.min(), v.array.max()) == (0, 255)

    v, pm = ood.noisy(image)  # same grid, reproducible
    assert v.geometry == image.geometry and np.array_equal(v.array, ood.noisy(image)[0].array)
    assert 10 < np.std(v.array - image.array) < 80


@pytest.mark.realdata
@pytest.mark.skipif(not (CEPH_DIR / "landmarks.csv").is_file(), reason=f"no cephalograms at {CEPH_DIR}")
def test_main_smoke_identity_only(tmp_path):
    from benchmarks.landmarks import cephalometric as ceph
    from samlearn.datasets import load_cephalograms
    res = ood.main(["--methods", "none", "--split", "eval", "--limit", "1", "--out", str(tmp_path / "o.json")])
    (row,) = res["rows"]
    assert row["name"] == "identity (template coordinates)" and set(row["variants"]) == set(ood.VARIANTS)
    assert row["variants"]["cropped"]["n_errors"] < 19 and row["all_variants"]["n_errors"] > 4 * 19
    data = load_cephalograms(CEPH_DIR)
    ref = ceph.evaluate_predictor("identity", ceph.identity_predictor, data, res["protocol"]["template"],
                                  ["071"], verbose=False)
    assert row["variants"]["original"]["mre"] == pytest.approx(ref["mre"])
    assert (tmp_path / "o.json").is_file()
