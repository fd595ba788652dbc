"""Real-data loaders: the CSV quirk handling and the geometry arithmetic on small synthetic folders
(always run), then the real ../shared/data folders (skipped when absent)."""
import csv

import numpy as np
import pytest
import SimpleITK as sitk

from samlearn import Image, read_image
from samlearn.datasets import (
    CEPH_ANNOTATORS,
    FULL_RESOLUTION_FACTOR,
    from_full_resolution,
    load_cephalograms,
    load_ct_folder,
    structure_geometry,
    to_full_resolution,
)
from samlearn.metrics import radial_errors
from helpers import random_rotation


# ------------------------------------------------------------------ synthetic cephalogram folder
def _write_ceph_folder(root, rows, n_images=2, size=(40, 30)):
    (root / "images").mkdir(parents=True)
    for i in range(1, n_images + 1):
        arr = np.zeros(size[::-1], dtype=np.uint8)
        arr[10, 20] = 255  # a bright dot at half-resolution pixel (x=20, y=10)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(root / "images" / f"{i:03d}.png"))
    with open(root / "landmarks.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "annotator", "label", "x", "y", "width", "height"])
        for r in rows:
            w.writerow(list(r) + [2 * size[0], 2 * size[1]])


def _full_rows(n_images=2):
    rows = []
    for i in range(1, n_images + 1):
        for a, ann in enumerate(CEPH_ANNOTATORS):
            for k in range(1, 20):
                rows.append([f"{i:03d}", ann, f"l{k}", 2 * k + 2 * a, 30 + i])
    return rows


def test_cephalogram_conversion_duplicates_and_missing(tmp_path):
    rows = _full_rows()
    # annotator 0, image 001, l1 is (2, 31); add a wrong duplicate far away and put it FIRST
    rows.insert(0, ["001", CEPH_ANNOTATORS[0], "l1", 70.0, 55.0])
    # drop annotator 1's l5 on image 002
    rows = [r for r in rows if not (r[0] == "002" and r[1] == CEPH_ANNOTATORS[1] and r[2] == "l5")]
    # the dot: both annotators put l19 of image 001 exactly on it (full-res (40, 20))
    for r in rows:
        if r[0] == "001" and r[2] == "l19":
            r[3], r[4] = 40.0, 20.0
    _write_ceph_folder(tmp_path, rows)
    b = load_cephalograms(tmp_path, load_images=True)
    assert b.ids == ["001", "002"] and b.landmarks.shape == (2, 19, 2)
    assert b.annotators.shape == (2, 2, 19, 2) and b.landmark_names[0] == "l1"
    # full-resolution -> PNG world: divided by 2, and the inverse brings the CSV values back
    np.testing.assert_allclose(b.annotators[0, 0, 1], [4 / 2, 31 / 2])
    np.testing.assert_allclose(to_full_resolution(b.annotators[1, 1, 2]), [2 * 3 + 2, 32])
    # duplicate resolved toward the other annotator's point, reported
    np.testing.assert_allclose(b.annotators[0, 0, 0], [1.0, 15.5])
    (dup,) = b.quirks["duplicates"]
    assert dup["image"] == "001" and dup["label"] == "l1" and dup["dropped"] == [[70.0, 55.0]]
    # missing annotation: NaN for that annotator, ground truth = the other one alone
    assert np.all(np.isnan(b.annotators[1, 1, 4]))
    np.testing.assert_allclose(b.landmarks[1, 4], b.annotators[0, 1, 4])
    assert b.quirks["missing"] == [{"image": "002", "annotator": CEPH_ANNOTATORS[1], "label": "l5"}]
    # elsewhere ground truth is the mean
    np.testing.assert_allclose(b.landmarks[0, 3], b.annotators[:, 0, 3].mean(0))
    # the world point lands on the pixel drawn at that place in the PNG
    img = b.images[0]
    assert isinstance(img, Image) and img.size == (40, 30)
    assert img.sample(b.landmarks[0, 18:19], order=0)[0] == 255


def test_cephalogram_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_cephalograms(tmp_path / "nope")
    rows = _full_rows()
    # a duplicate whose other annotator is missing cannot be resolved
    rows.append(["001", CEPH_ANNOTATORS[0], "l2", 9.0, 9.0])
    rows = [r for r in rows if not (r[0] == "001" and r[1] == CEPH_ANNOTATORS[1] and r[2] == "l2")]
    _write_ceph_folder(tmp_path / "a", rows)
    with pytest.raises(ValueError, match="cannot tell which copy"):
        load_cephalograms(tmp_path / "a")
    rows = _full_rows()
    rows[0][1] = "someone"
    _write_ceph_folder(tmp_path / "b", rows)
    with pytest.raises(ValueError, match="unexpected annotators"):
        load_cephalograms(tmp_path / "b")
    rows = _full_rows(n_images=3)
    _write_ceph_folder(tmp_path / "c", rows, n_images=2)
    with pytest.raises(FileNotFoundError, match="not in"):
        load_cephalograms(tmp_path / "c")
    with pytest.raises(ValueError, match="last axis of 2"):
        to_full_resolution(np.zeros((3, 3)))
    np.testing.assert_allclose(from_full_resolution(to_full_resolution([[1.5, 2.0]])), [[1.5, 2.0]])


# ------------------------------------------------------------------ synthetic CT folder
def test_structure_geometry_with_rotated_anisotropic_grid():
    rng = np.random.default_rng(3)
    arr = np.zeros((6, 9, 11), dtype=np.float32)  # (z, y, x)
    arr[1:3, 2:6, 4:5] = 1
    arr[4, 7, 9] = 7
    lab = Image.from_array(arr, spacing=(0.7, 1.3, 2.5), origin=(10, -20, 5),
                           direction=random_rotation(rng, 3))
    cents, boxes, counts = structure_geometry(lab, {1: "a"})
    assert counts == {"a": 8, "label_7": 1}
    idx = np.argwhere(arr == 1).astype(float)
    np.testing.assert_allclose(cents["a"], lab.array_index_to_world(idx).mean(0), atol=1e-9)
    np.testing.assert_allclose(cents["label_7"], lab.array_index_to_world([4.0, 7.0, 9.0]), atol=1e-9)
    # the box holds every voxel corner of the structure (brute force) and no more
    offs = np.stack(np.meshgrid(*[[-0.5, 0.5]] * 3, indexing="ij"), -1).reshape(-1, 3)
    corners = lab.array_index_to_world((idx[:, None, :] + offs[None]).reshape(-1, 3))
    np.testing.assert_allclose(boxes["a"][0], corners.min(0), atol=1e-9)
    np.testing.assert_allclose(boxes["a"][1], corners.max(0), atol=1e-9)


def test_load_ct_folder_synthetic(tmp_path):
    ct = Image.from_array(np.full((4, 5, 6), -1000.0), spacing=(1, 2, 3), origin=(5, 6, 7))
    ct.save(tmp_path / "lung1_image.nii.gz")
    lab_arr = np.zeros((4, 5, 6), dtype=np.float32)
    lab_arr[2, 3, 1] = 1
    Image(lab_arr, ct.geometry).save(tmp_path / "lung1_label.nii.gz")
    ct.save(tmp_path / "chest_ct_popi00.nii.gz")
    b = load_ct_folder(tmp_path)
    assert b.names == ["chest_popi00", "lung1"] and set(b.labels) == {"lung1"}
    np.testing.assert_allclose(b.centroids["lung1"]["tumour"], [5 + 1, 6 + 2 * 3, 7 + 3 * 2])
    np.testing.assert_allclose(b.bboxes["lung1"]["tumour"], [[5.5, 11, 11.5], [6.5, 13, 14.5]])
    assert load_ct_folder(tmp_path, names=["lung1"]).names == ["lung1"]
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_ct_folder(tmp_path, names=["lung2"])
    with pytest.raises(ValueError, match="names must be among"):
        load_ct_folder(tmp_path, names=["liver"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none"):
        load_ct_folder(tmp_path / "empty")
    # a label on another grid is refused
    Image.from_array(lab_arr, spacing=(1, 2, 2.9), origin=(5, 6, 7)).save(tmp_path / "lung1_label.nii.gz")
    with pytest.raises(ValueError, match="differs from the CT grid"):
        load_ct_folder(tmp_path, names=["lung1"])


# ------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_real_cephalograms(ceph_dir):
    b = load_cephalograms(ceph_dir)
    assert len(b.ids) == 100 and b.ids[0] == "001" and b.ids[-1] == "100"
    assert b.landmarks.shape == (100, 19, 2) and b.annotators.shape == (2, 100, 19, 2)
    assert np.all(np.isfinite(b.landmarks))
    # the README's quirks: 6 duplicates, 2 missing, exactly those
    assert len(b.quirks["duplicates"]) == 6
    assert sorted((m["image"], m["annotator"], m["label"]) for m in b.quirks["missing"]) == [
        ("002", "farhadifar", "l18"), ("086", "mollabashi", "l16")]
    assert np.isnan(b.annotators).sum() == 2 * 2
    for d in b.quirks["duplicates"]:  # the kept copy is the one near the other annotator
        kept_d = np.linalg.norm(np.subtract(d["kept"], d["reference"]))
        assert all(kept_d < np.linalg.norm(np.subtract(x, d["reference"])) for x in d["dropped"])
    # every landmark inside its PNG
    for g, pts in zip(b.geometries, b.landmarks):
        assert g.size == (670, 835) and np.all(g.contains(pts))
    # inter-annotator radial error at full resolution: median about 9 px, 90th pct about 24 px
    a1, a2 = b.annotators[0], b.annotators[1].copy()
    a2[np.isnan(a1).any(-1)] = np.nan  # compare only where both annotated
    err = radial_errors(a1, a2, scale=FULL_RESOLUTION_FACTOR)
    assert np.isnan(err).sum() == 2
    assert 7.5 < np.nanmedian(err) < 10.5
    assert 19 < np.nanpercentile(err, 90) < 29


@pytest.mark.realdata
def test_real_cephalogram_images_load(ceph_dir, tmp_path):
    # a two-image copy of the folder keeps the test fast (images only, never committed)
    import shutil
    (tmp_path / "images").mkdir()
    for i in ("001", "071"):
        shutil.copy(ceph_dir / "images" / f"{i}.png", tmp_path / "images")
    with open(ceph_dir / "landmarks.csv") as src, open(tmp_path / "landmarks.csv", "w") as dst:
        for n, line in enumerate(src):
            if n == 0 or line.startswith(("001,", "071,")):
                dst.write(line)
    b = load_cephalograms(tmp_path, load_images=True)
    assert [im.size for im in b.images] == [(670, 835)] * 2
    assert b.images[0].geometry == b.geometries[0]


@pytest.mark.realdata
def test_real_ct_folder(ct_dir):
    b = load_ct_folder(ct_dir, names=["lung1", "totalseg_abdomen", "totalseg_chest"])
    assert b.names == ["lung1", "totalseg_abdomen", "totalseg_chest"]
    assert len(b.centroids["totalseg_abdomen"]) == 41
    for name in b.names:
        img = b.images[name]
        for s, c in b.centroids[name].items():
            lo, hi = b.bboxes[name][s]
            assert np.all(lo <= c + 1e-6) and np.all(c <= hi + 1e-6), (name, s)
            assert img.contains(c[None])[0]
    # anatomy in LPS world coordinates (x grows to the patient's left): right kidney at smaller x
    # than the left one, liver to the right of the spleen -- although this volume's direction
    # flips x and y, so array order would say the opposite
    c = b.centroids["totalseg_abdomen"]
    assert c["kidney_right"][0] < c["kidney_left"][0]
    assert c["liver"][0] < c["spleen"][0]
    assert b.voxel_counts["lung1"]["tumour"] == 837
    ref = read_image(ct_dir / "lung1_label.nii.gz")
    idx = np.argwhere(ref.array > 0).astype(float).mean(0)
    np.testing.assert_allclose(b.centroids["lung1"]["tumour"], ref.array_index_to_world(idx), atol=1e-6)
