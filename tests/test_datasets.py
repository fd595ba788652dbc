"""Synthetic phantoms (samlearn.datasets.make_phantoms): determinism, geometry, landmarks on the
named anatomy, contrast phases, 2D projections and inter-subject variation."""

import numpy as np
import pytest

from samlearn import Image
from samlearn.datasets import (
    LANDMARK_NAMES,
    ORGAN_NAMES,
    PHASES,
    make_phantom_pair,
    make_phantoms,
)

ORGAN_ID = {v: k for k, v in ORGAN_NAMES.items()}
EXPECTED_ORGAN = {
    "lung_apex_left": "lung_left",
    "lung_apex_right": "lung_right",
    "sternal_notch": "sternum",
    "aortic_arch_top": "aorta",
    "carina": "airway",
    "vertebra_T1": "vertebra",
    "vertebra_T6": "vertebra",
    "heart_apex": "heart",
    "xiphoid_tip": "sternum",
    "liver_dome": "liver",
    "vertebra_T12": "vertebra",
    "spleen_tip": "spleen",
    "kidney_left_upper_pole": "kidney_left",
    "kidney_right_upper_pole": "kidney_right",
    "portal_vein_bifurcation": "portal_vein",
    "vertebra_L3": "vertebra",
    "aortic_bifurcation": "aorta",
    "bladder_centre": "bladder",
    "femoral_head_left": "femur_left",
    "femoral_head_right": "femur_right",
}


def _idx(name):
    return LANDMARK_NAMES.index(name)


def _labels_near(label_img: Image, point, radius_vox=1):
    """Organ labels in the (2r+1)^3 voxel block around the nearest voxel of a world point."""
    c = np.rint(label_img.world_to_array_index(point[None])[0]).astype(int)
    sl = tuple(slice(max(ci - radius_vox, 0), ci + radius_vox + 1) for ci in c)
    return set(np.unique(label_img.array[sl]).astype(int).tolist())


def _label_at(label_img: Image, point):
    return int(label_img.sample(point[None], order=0)[0])


def _mean_hu(img: Image, point, radius_mm=2.5):
    """Mean HU over a few points within ``radius_mm`` (robust to noise)."""
    offs = (
        np.array(
            [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float
        )
        * radius_mm
    )
    return float(img.sample(point[None] + offs[:, : img.ndim]).mean())


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def phases3():
    """The same two subjects (same anatomy, pose, geometry and noise) in the three phases."""
    return {
        ph: make_phantoms(
            2, contrast_phase=ph, field_of_view="full", spacing=(2.8, 2.8, 4.5), random_state=11
        )
        for ph in PHASES
    }


@pytest.fixture(scope="module")
def random_geo():
    return make_phantoms(2, contrast_phase="random", n_lesions=2, random_state=0)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0, -2, 2.5, "3", None, True])
def test_n_subjects_validated(bad):
    with pytest.raises(ValueError, match="n_subjects"):
        make_phantoms(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ndim=4), "ndim"),
        (dict(ndim=True), "ndim"),
        (dict(contrast_phase="portal"), "contrast_phase"),
        (dict(contrast_phase=["arterial"]), "contrast_phase"),
        (dict(contrast_phase=["arterial", "late"]), "contrast_phase"),
        (dict(n_lesions=-1), "n_lesions"),
        (dict(spacing=-1.0), "spacing"),
        (dict(spacing=(1.0, 1.0)), "spacing"),
        (dict(direction=np.ones((3, 3))), "direction"),
        (dict(direction="flipped"), "direction"),
        (dict(field_of_view="chest"), "field_of_view"),
        (dict(noise=-1.0), "noise"),
        (dict(variation=2.0), "variation"),
        (dict(spacing=0.5), "spacing"),
        (dict(variation=float("nan")), "variation"),
    ],
)
def test_bad_arguments_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantoms(2, **kwargs)


def test_bad_random_state():
    with pytest.raises(TypeError, match="random_state"):
        make_phantoms(1, random_state="seed")
    with pytest.raises(ValueError, match="random_state"):
        make_phantoms(1, random_state=-3)


# ----------------------------------------------------------------------------- structure
def test_bunch_contents_and_geometry(random_geo):
    d = random_geo
    n = 2
    assert len(d.images) == len(d.labels) == len(d.phase) == len(d.lesions) == n
    assert d.landmarks.shape == (n, len(LANDMARK_NAMES), 3) and d.landmarks.dtype == np.float64
    assert d.landmark_names == list(LANDMARK_NAMES) and len(set(d.landmark_names)) >= 15
    assert set(d.phase) <= set(PHASES)
    assert d.organ_names[0] == "background" and "liver" in d.organ_names.values()
    for name in LANDMARK_NAMES:
        assert name in d.DESCR
    for img, lab, boxes in zip(d.images, d.labels, d.lesions):
        assert isinstance(img, Image) and img.ndim == 3 and img.array.dtype == np.float32
        assert np.isfinite(img.array).all()
        assert -1024.0 <= img.array.min() and img.array.max() <= 3071.0
        assert lab.geometry == img.geometry
        assert set(np.unique(lab.array).astype(int)) <= set(ORGAN_NAMES)
        assert np.any(img.origin != 0.0)
        sp = img.spacing
        assert 2.0 <= sp[0] == sp[1] <= 2.5 and 3.5 <= sp[2] <= 5.0
        ext = img.geometry.extent_mm
        assert 250 < ext[0] < 480 and 180 < ext[1] < 380 and 380 < ext[2] < 720
        # body is mostly soft tissue; air outside; lungs and bone present
        a = img.array
        assert (a < -900).mean() > 0.05 and (a > 300).mean() > 0.002
        assert boxes.ndim == 2 and boxes.shape[1] == 6
        assert np.all(boxes[:, :3] < boxes[:, 3:])


def test_directions_and_origins_vary():
    d = make_phantoms(5, spacing=(8.0, 8.0, 10.0), random_state=3)
    dirs = {tuple(np.diag(im.direction)) for im in d.images}
    assert len(dirs) >= 2
    for im in d.images:
        assert np.allclose(np.abs(im.direction), np.eye(3))
    assert len({tuple(np.round(im.origin, 3)) for im in d.images}) == 5


def test_landmarks_inside_field_of_view_or_nan():
    kw = dict(spacing=(6.0, 6.0, 8.0), noise=0.0, random_state=4)
    rand = make_phantoms(3, **kw)
    full = make_phantoms(3, field_of_view="full", **kw)
    assert np.isfinite(full.landmarks).all()
    assert np.isnan(rand.landmarks).any()  # some subjects are cropped
    for i, (img, lm) in enumerate(zip(rand.images, rand.landmarks)):
        finite = np.isfinite(lm).all(1)
        assert np.array_equal(finite, np.isfinite(lm).any(1))  # NaN rows are all-NaN
        assert img.geometry.contains(lm[finite], margin=0.0).all()
        # same subject and pose with a full field of view: same world points, and the NaN ones
        # are exactly those outside this image
        np.testing.assert_allclose(lm[finite], full.landmarks[i][finite], atol=1e-9)
        assert not img.geometry.contains(full.landmarks[i][~finite], margin=0.0).any()


# ----------------------------------------------------------------------------- determinism
def test_deterministic_and_seed_dependent():
    kw = dict(spacing=(5.0, 5.0, 8.0), n_lesions=1, contrast_phase="random")
    a = make_phantoms(2, random_state=42, **kw)
    b = make_phantoms(2, random_state=42, **kw)
    c = make_phantoms(1, random_state=43, **kw)
    for x, y in zip(a.images + a.labels, b.images + b.labels):
        assert x.geometry == y.geometry and np.array_equal(x.array, y.array)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert a.phase == b.phase
    for x, y in zip(a.lesions, b.lesions):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(np.nan_to_num(a.landmarks[:1]), np.nan_to_num(c.landmarks))
    assert a.images[0].geometry != c.images[0].geometry
    assert not np.array_equal(a.images[0].array, a.images[1].array)


def test_subject_does_not_depend_on_n_subjects_and_global_rng_untouched():
    state = np.random.get_state()
    one = make_phantoms(1, spacing=(6.0, 6.0, 8.0), random_state=np.random.SeedSequence(9))
    two = make_phantoms(2, spacing=(6.0, 6.0, 8.0), random_state=9)
    assert np.array_equal(one.images[0].array, two.images[0].array)
    np.testing.assert_array_equal(one.landmarks[0], two.landmarks[0])
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    # a Generator is accepted (and consumed), so two calls with the same generator differ
    g = np.random.default_rng(0)
    x = make_phantoms(1, spacing=(6.0, 6.0, 8.0), random_state=g)
    y = make_phantoms(1, spacing=(6.0, 6.0, 8.0), random_state=g)
    assert x.images[0].geometry != y.images[0].geometry


# ----------------------------------------------------------------------------- anatomy
def test_landmarks_sit_on_named_anatomy(phases3):
    d = phases3["arterial"]
    for img, lab, lm in zip(d.images, d.labels, d.landmarks):
        for name, organ in EXPECTED_ORGAN.items():
            p = lm[_idx(name)]
            assert np.isfinite(p).all()
            assert ORGAN_ID[organ] in _labels_near(lab, p), name
        hu = {name: _mean_hu(img, lm[_idx(name)]) for name in LANDMARK_NAMES}
        assert hu["aortic_arch_top"] > 200 and hu["aortic_bifurcation"] > 200  # blood pool
        for v in ("vertebra_T1", "vertebra_T6", "vertebra_T12", "vertebra_L3"):
            assert hu[v] > 200, v  # bone
            assert _label_at(lab, lm[_idx(v)]) == ORGAN_ID["vertebra"]
        assert hu["femoral_head_left"] > 150 and hu["femoral_head_right"] > 150
        assert -60 < hu["bladder_centre"] < 60  # urine
        # carina: air, with soft tissue (airway wall, carinal spur, mediastinum) within 15 mm
        car = lm[_idx("carina")]
        assert img.sample(car[None])[0] < -600
        rng = np.random.default_rng(0)
        ring = car + rng.normal(size=(200, 3)) * 6.0
        ring = ring[np.linalg.norm(ring - car, axis=1) < 15]
        assert (img.sample(ring) > -300).any()
        # lung apices at the top of their lung: lung below, no lung 8 mm above
        for side in ("left", "right"):
            p = lm[_idx(f"lung_apex_{side}")]
            lung = ORGAN_ID[f"lung_{side}"]
            assert _label_at(lab, p - [0, 0, 3.0]) == lung
            assert lung not in _labels_near(lab, p + [0, 0, 8.0 + img.spacing[2]], radius_vox=0)
        # kidney upper poles: kidney just below, not 10 mm above
        for side in ("left", "right"):
            p = lm[_idx(f"kidney_{side}_upper_pole")]
            kid = ORGAN_ID[f"kidney_{side}"]
            assert kid in _labels_near(lab, p)
            assert _label_at(lab, p + [0, 0, 10.0 + img.spacing[2]]) != kid
        # liver dome: liver below, no liver above (lung base, or the heart next to it)
        p = lm[_idx("liver_dome")]
        assert _label_at(lab, p - [0, 0, 10.0]) == ORGAN_ID["liver"]
        above = {_label_at(lab, p + [0, 0, 15.0]), _label_at(lab, p + [0, 0, 25.0])}
        assert ORGAN_ID["liver"] not in above
        assert above & {ORGAN_ID["lung_right"], ORGAN_ID["heart"], ORGAN_ID["vena_cava"]}


def test_contrast_phases_change_hu_in_documented_directions(phases3):
    nc, art, ven = (phases3[p] for p in PHASES)
    for i in range(2):
        lm = art.landmarks[i]
        np.testing.assert_array_equal(lm, nc.landmarks[i])  # same anatomy, geometry
        assert art.phase[i] == "arterial" and ven.phase[i] == "venous"

        def hu(d, name, offset=(0.0, 0.0, 0.0)):
            return _mean_hu(d.images[i], lm[_idx(name)] + np.asarray(offset))

        aorta = [hu(d, "aortic_arch_top") for d in (nc, art, ven)]
        assert aorta[0] < 80 and aorta[1] > 200 and aorta[1] > aorta[2] > aorta[0] + 60
        liver = [hu(d, "liver_dome", (0, 0, -15.0)) for d in (nc, art, ven)]
        assert liver[2] > liver[1] > liver[0] and liver[2] > liver[0] + 25
        portal = [hu(d, "portal_vein_bifurcation") for d in (nc, art, ven)]
        assert portal[2] > portal[1] > portal[0] + 40
        for side in ("left", "right"):
            kid = [hu(d, f"kidney_{side}_upper_pole", (0, 0, -6.0)) for d in (nc, art, ven)]
            assert kid[1] > kid[0] + 60 and kid[2] > kid[0] + 60  # enhancing kidney
            pole = [hu(d, f"kidney_{side}_upper_pole") for d in (nc, art, ven)]
            assert pole[1] > pole[2] > pole[0]  # cortex brightest early
        # unenhanced tissues do not change
        assert abs(hu(art, "vertebra_L3") - hu(nc, "vertebra_L3")) < 20


def test_random_phase_draws_per_subject_and_lists_are_kept():
    # phases come from their own stream: with this seed the three subjects draw three phases
    kw = dict(spacing=(8.0, 8.0, 10.0), random_state=0)
    d = make_phantoms(3, contrast_phase="random", **kw)
    assert sorted(d.phase) == sorted(PHASES)
    given = [d.phase[2], d.phase[0], d.phase[1]]
    d2 = make_phantoms(3, contrast_phase=given, **kw)
    assert d2.phase == given
    np.testing.assert_array_equal(d.landmarks, d2.landmarks)  # the phase does not move anatomy


def test_non_identity_direction_and_anisotropic_spacing_hit_the_same_anatomy():
    a, b = np.deg2rad(15.0), np.deg2rad(-8.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    oblique = rz @ rx @ np.diag([1.0, -1.0, -1.0])
    kw = dict(noise=0.0, field_of_view="full", random_state=21)
    ident = make_phantoms(1, direction="identity", spacing=3.5, **kw)
    flip = make_phantoms(1, direction=np.diag([-1.0, -1.0, 1.0]), spacing=3.5, **kw)
    aniso = make_phantoms(1, direction=oblique, spacing=(2.6, 3.2, 4.6), **kw)
    # same subject, same world landmarks whatever the grid (NaN only where outside each grid)
    for other in (flip, aniso):
        both = np.isfinite(ident.landmarks[0, :, 0]) & np.isfinite(other.landmarks[0, :, 0])
        assert both.all()
        np.testing.assert_allclose(ident.landmarks[0, both], other.landmarks[0, both], atol=1e-9)
    # the flipped grid covers the same box: its array is the identity array flipped in x and y
    a, b = ident.labels[0].array, flip.labels[0].array
    assert a.shape == b.shape
    assert (a == b[:, ::-1, ::-1]).mean() > 0.999
    assert not np.allclose(flip.images[0].direction, np.eye(3))
    for d in (flip, aniso):
        img, lab, lm = d.images[0], d.labels[0], d.landmarks[0]
        n_checked = 0
        for name, organ in EXPECTED_ORGAN.items():
            p = lm[_idx(name)]
            if np.isfinite(p).all():
                assert ORGAN_ID[organ] in _labels_near(lab, p), name
                n_checked += 1
        assert n_checked == len(EXPECTED_ORGAN)
        # intensities at landmarks agree with the identity grid (partial volume aside)
        for name, offset in (
            ("vertebra_L3", 0.0),
            ("vertebra_T12", 0.0),
            ("portal_vein_bifurcation", 0.0),
            ("liver_dome", -15.0),
        ):
            p = lm[_idx(name)] + [0.0, 0.0, offset]
            assert abs(_mean_hu(img, p) - _mean_hu(ident.images[0], p)) < 80, name


# ----------------------------------------------------------------------------- variation
def test_inter_subject_variation_is_real():
    d = make_phantoms(4, field_of_view="full", spacing=(6.0, 6.0, 8.0), noise=0.0, random_state=4)
    rel = d.landmarks - d.landmarks[:, [_idx("carina")]]
    sd = np.linalg.norm(rel.std(axis=0), axis=1)  # mm, per landmark
    sd = np.delete(sd, _idx("carina"))
    assert np.median(sd) > 6.0 and sd.max() > 15.0 and sd.min() > 2.0
    # body size varies
    widths = [im.geometry.extent_mm[0] for im in d.images]
    assert np.ptp(widths) > 15.0
    # variation=0: identical anatomy and orientation (only the position in the scanner moves)
    z = make_phantoms(
        3, field_of_view="full", spacing=(6.0, 6.0, 8.0), noise=0.0, variation=0.0, random_state=4
    )
    relz = z.landmarks - z.landmarks[:, [_idx("carina")]]
    assert np.abs(relz - relz[0]).max() < 1e-6
    assert np.ptp(z.landmarks[:, _idx("carina")], axis=0).max() > 1.0


# ----------------------------------------------------------------------------- lesions
def test_lesions_are_boxes_around_lesion_voxels():
    d = make_phantoms(
        1,
        n_lesions=4,
        contrast_phase="venous",
        random_state=8,
        field_of_view="full",
        spacing=(2.5, 2.5, 4.0),
    )
    lesion = ORGAN_ID["lesion"]
    n_total = 0
    for img, lab, boxes in zip(d.images, d.labels, d.lesions):
        n_total += len(boxes)
        assert img.geometry.contains(boxes[:, :3], margin=0.0).all()
        assert img.geometry.contains(boxes[:, 3:], margin=0.0).all()
        for b in boxes:
            centre = 0.5 * (b[:3] + b[3:])
            assert 4.0 < (b[3:] - b[:3]).min() and (b[3:] - b[:3]).max() < 45.0
            assert _label_at(lab, centre) == lesion
            # the lesion label lies inside its box (up to a voxel)
            idx = np.argwhere(lab.array == lesion)
            pts = lab.array_index_to_world(idx.astype(float))
            near = np.linalg.norm(pts - centre, axis=1) < 0.5 * np.linalg.norm(b[3:] - b[:3]) + 3
            inside = np.all((pts[near] >= b[:3] - 3.0) & (pts[near] <= b[3:] + 3.0), axis=1)
            assert inside.all()
        assert np.any(lab.array == lesion) == (len(boxes) > 0)
    assert n_total >= 3
    none = make_phantoms(1, spacing=(6.0, 6.0, 8.0), random_state=8)
    assert none.lesions[0].shape == (0, 6) and not np.any(none.labels[0].array == lesion)


# ----------------------------------------------------------------------------- 2D
@pytest.fixture(scope="module")
def xray():
    return make_phantoms(2, ndim=2, n_lesions=1, field_of_view="full", spacing=2.5, random_state=11)


def test_2d_projection_geometry_and_values(xray, phases3):
    d = xray
    assert d.landmarks.shape == (2, len(LANDMARK_NAMES), 2)
    for img, lab, lm, boxes in zip(d.images, d.labels, d.landmarks, d.lesions):
        assert img.ndim == 2 and np.isfinite(img.array).all()
        assert lab.geometry == img.geometry
        assert np.allclose(np.abs(img.direction), np.eye(2)) and img.direction[1, 1] == -1.0
        assert img.array.max() > 3.0 and img.array.min() > -1.0  # -log transmission
        assert boxes.shape[1] == 4 and np.all(boxes[:, :2] < boxes[:, 2:])
        # spine landmarks sit on the bright spine column: brighter than 60 mm to either side
        # (means over a 20 mm vertical strip, clear of the lumbar transverse processes)
        dz = np.linspace(-10.0, 10.0, 9)
        for name in ("vertebra_T6", "vertebra_T12", "vertebra_L3"):
            p = lm[_idx(name)]
            strip = [
                img.sample(p + np.stack([np.full(9, dx), dz], 1)).mean() for dx in (-60, 0, 60)
            ]
            assert strip[1] > max(strip[0], strip[2]) + 0.05, name
        assert _label_at(lab, lm[_idx("vertebra_L3")]) == ORGAN_ID["vertebra"]
        assert _label_at(lab, lm[_idx("femoral_head_left")]) == ORGAN_ID["femur_left"]
        # lungs are dark, the heart and liver bright in between
        apex = lm[_idx("lung_apex_left")] - [0.0, 60.0]
        assert img.sample(apex[None])[0] < img.sample(lm[_idx("liver_dome")][None] - [0.0, 40.0])[0]
    # 2D subject i is the radiograph of 3D subject i (same seed: same anatomy and pose)
    ct = phases3["arterial"]
    np.testing.assert_allclose(d.landmarks, ct.landmarks[..., [0, 2]], atol=1e-9)


def test_2d_deterministic(xray):
    again = make_phantoms(
        1, ndim=2, n_lesions=1, field_of_view="full", spacing=2.5, random_state=11
    )
    a, b = xray.images[0], again.images[0]
    assert a.geometry == b.geometry and np.array_equal(a.array, b.array)
    assert np.array_equal(xray.labels[0].array, again.labels[0].array)
    np.testing.assert_array_equal(xray.landmarks[:1], again.landmarks)
    np.testing.assert_array_equal(xray.lesions[0], again.lesions[0])


# ----------------------------------------------------------------------------- pairs
def test_phantom_pair_ground_truth_correspondence():
    pair = make_phantom_pair(
        1, n_lesions=2, contrast_phase="random", spacing=(2.5, 2.5, 4.0), random_state=6
    )
    assert pair.transforms.shape == (1, 4, 4)
    T = pair.transforms[0]
    R, t = T[:3, :3], T[:3, 3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.allclose(T[3], [0, 0, 0, 1])
    fixed, moving = pair.fixed, pair.moving
    assert fixed.images[0].geometry != moving.images[0].geometry
    lf, lm = fixed.landmarks[0], moving.landmarks[0]
    both = np.isfinite(lf[:, 0]) & np.isfinite(lm[:, 0])
    assert both.sum() >= 10
    np.testing.assert_allclose(lf[both] @ R.T + t, lm[both], atol=1e-9)
    # the same anatomy under both scans: the organ at each landmark agrees
    for j in np.flatnonzero(both):
        organ = ORGAN_ID[EXPECTED_ORGAN[LANDMARK_NAMES[j]]]
        assert organ in _labels_near(fixed.labels[0], lf[j])
        assert organ in _labels_near(moving.labels[0], lm[j])
    # lesions correspond row by row, inside both fields of view
    bf, bm = fixed.lesions[0], moving.lesions[0]
    assert len(bf) == len(bm) == 2
    cf, cm = 0.5 * (bf[:, :3] + bf[:, 3:]), 0.5 * (bm[:, :3] + bm[:, 3:])
    np.testing.assert_allclose(cf @ R.T + t, cm, atol=1e-9)
    for c in cm:
        assert _label_at(moving.labels[0], c) == ORGAN_ID["lesion"]


def test_phantom_pair_fixed_equals_make_phantoms_and_validates():
    kw = dict(spacing=(6.0, 6.0, 8.0), contrast_phase="arterial", random_state=4)
    pair = make_phantom_pair(1, **kw)
    single = make_phantoms(1, **kw)
    for a, b in zip(pair.fixed.images, single.images):
        assert a.geometry == b.geometry and np.array_equal(a.array, b.array)
    np.testing.assert_array_equal(pair.fixed.landmarks, single.landmarks)
    assert pair.fixed.phase == pair.moving.phase == ["arterial"]
    with pytest.raises(ValueError, match="n_pairs"):
        make_phantom_pair(0)
    with pytest.raises(ValueError, match="contrast_phase"):
        make_phantom_pair(2, contrast_phase=["arterial"])
