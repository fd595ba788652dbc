"""Loaders for real images kept on the local disk (never downloaded): the cephalometric X-ray set
(100 images, 19 landmarks, 2 annotators) and a folder of CT volumes with label masks.

Both return a :class:`sklearn.utils.Bunch`. Every point is in **world coordinates** of the image
as samlearn reads it (``(x, y[, z])`` order, see :mod:`samlearn.image`).

Cephalograms and their coordinate frames
----------------------------------------
The PNGs are the original 1340 x 1671 images reduced by 2 (670 x 835). samlearn (through SimpleITK)
reads a PNG with spacing 1, origin 0 and identity direction, so for these images
``world = pixel index`` of the **half-resolution** PNG. The CSV gives ``x, y`` in pixels of the
**full-resolution** original. The loader converts with

    world = full_resolution_pixel / FULL_RESOLUTION_FACTOR        (FULL_RESOLUTION_FACTOR = 2)

(the rule the data README gives) and :func:`to_full_resolution` is its exact inverse
(``points * 2``). Errors between two points in the world frame, multiplied by 2, are errors in
full-resolution pixels; at the original 0.1 mm pixel size (``PIXEL_SIZE_MM``), 10 full-resolution
pixels are 1 mm. (Whether the CSV counts pixel centres or corners is not documented; the two
readings differ by a constant quarter-pixel offset of the half-resolution grid, which cancels in
every error between points of the same frame.)

Ground truth is the mean of the two annotators. Two documented CSV quirks are handled explicitly and
reported in ``bunch.quirks``:

* a duplicated (image, annotator, label) triple keeps the copy nearest the other annotator's point
  for the same image and label (the other copy is evidently another label's point);
* a missing triple leaves that annotator's point NaN in ``annotators``, and the ground truth is the
  other annotator's point alone.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ..image import Image, ImageGeometry, read_image

__all__ = [
    "load_cephalograms",
    "load_ct_folder",
    "structure_geometry",
    "to_full_resolution",
    "from_full_resolution",
    "FULL_RESOLUTION_FACTOR",
    "PIXEL_SIZE_MM",
    "CEPH_ANNOTATORS",
    "CT_CASES",
    "TOTALSEG_V2_CLASSES",
]

#: Full-resolution pixels per world unit of the half-resolution cephalogram PNGs.
FULL_RESOLUTION_FACTOR = 2.0
#: Pixel size of the original full-resolution cephalograms (mm).
PIXEL_SIZE_MM = 0.1
#: Annotator order of ``annotators`` (annotator 1, annotator 2).
CEPH_ANNOTATORS = ("mollabashi", "farhadifar")
_N_CEPH_LANDMARKS = 19
_CSV_COLUMNS = ("image", "annotator", "label", "x", "y", "width", "height")


def to_full_resolution(points) -> np.ndarray:
    """Cephalogram world points (half-resolution PNG frame) -> full-resolution pixel coordinates
    (the CSV's frame): ``points * FULL_RESOLUTION_FACTOR``. Any shape ending in 2 is accepted."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 0 or pts.shape[-1] != 2:
        raise ValueError(f"points must have a last axis of 2 (x, y), got shape {pts.shape}")
    return pts * FULL_RESOLUTION_FACTOR


def from_full_resolution(points) -> np.ndarray:
    """Full-resolution pixel coordinates (the CSV's frame) -> cephalogram world points:
    ``points / FULL_RESOLUTION_FACTOR``; inverse of :func:`to_full_resolution`."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 0 or pts.shape[-1] != 2:
        raise ValueError(f"points must have a last axis of 2 (x, y), got shape {pts.shape}")
    return pts / FULL_RESOLUTION_FACTOR


def _check_folder(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} folder does not exist: '{p}' (samlearn never downloads it)")
    return p


def _label_key(label: str) -> int:
    if not (label.startswith("l") and label[1:].isdigit()):
        raise ValueError(f"landmarks.csv: label must look like 'l1'..'l{_N_CEPH_LANDMARKS}', got {label!r}")
    k = int(label[1:])
    if not 1 <= k <= _N_CEPH_LANDMARKS:
        raise ValueError(f"landmarks.csv: label {label!r} outside l1..l{_N_CEPH_LANDMARKS}")
    return k - 1


def load_cephalograms(path, *, load_images: bool = False) -> Bunch:
    """Load the cephalometric X-ray set from a folder holding ``images/NNN.png`` and
    ``landmarks.csv`` (layout of ``shared/data/cephalograms``; see the module docstring for the
    coordinate frames and the CSV quirks).

    Parameters
    ----------
    path : str or os.PathLike
        The folder. Nothing is downloaded: a missing folder raises ``FileNotFoundError``.
    load_images : bool
        Also read every PNG as a samlearn :class:`~samlearn.Image` (about 2 MB each as float32).

    Returns
    -------
    Bunch with

    * ``ids``: list of image ids (``"001"`` ...), sorted; ``image_paths``: list of str;
    * ``images``: list of :class:`~samlearn.Image` (``load_images=True``) or None;
    * ``geometries``: list of :class:`~samlearn.ImageGeometry` of each PNG (read from its header);
    * ``landmarks``: (n_images, 19, 2) ground truth = mean of the two annotators, world frame of the
      PNG (half-resolution pixels);
    * ``annotators``: (2, n_images, 19, 2), same frame, NaN where an annotation is missing;
    * ``annotator_names``: ``CEPH_ANNOTATORS``; ``landmark_names``: ``["l1", ..., "l19"]``;
    * ``full_resolution_factor`` (2.0) and ``pixel_size_mm`` (0.1, at full resolution): errors in
      the world frame times 2 are full-resolution pixels, times 0.2 are mm;
    * ``quirks``: ``{"duplicates": [...], "missing": [...]}`` describing how each CSV quirk was
      resolved (dicts with image, annotator, label, and kept / dropped points for duplicates, in
      full-resolution pixels as in the CSV).
    """
    root = _check_folder(path, "cephalogram")
    csv_path = root / "landmarks.csv"
    img_dir = root / "images"
    if not csv_path.is_file():
        raise FileNotFoundError(f"cephalogram folder '{root}' has no landmarks.csv")
    if not img_dir.is_dir():
        raise FileNotFoundError(f"cephalogram folder '{root}' has no images/ folder")

    rows = _read_landmark_csv(csv_path)
    ids = sorted({r["image"] for r in rows})
    image_paths = [img_dir / f"{i}.png" for i in ids]
    absent = [str(p) for p in image_paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"landmarks.csv names images that are not in '{img_dir}': {absent[:5]}")
    unknown = sorted({r["annotator"] for r in rows} - set(CEPH_ANNOTATORS))
    if unknown:
        raise ValueError(f"landmarks.csv: unexpected annotators {unknown}; expected {list(CEPH_ANNOTATORS)}")

    # Group the rows: (image, annotator, landmark index) -> list of full-resolution points.
    groups: dict = {}
    sizes: dict = {}
    for r in rows:
        key = (r["image"], r["annotator"], _label_key(r["label"]))
        groups.setdefault(key, []).append((r["x"], r["y"]))
        sizes.setdefault(r["image"], set()).add((r["width"], r["height"]))
    for i, s in sizes.items():
        if len(s) != 1:
            raise ValueError(f"landmarks.csv: image {i} has several full-resolution sizes {sorted(s)}")

    n = len(ids)
    full = np.full((len(CEPH_ANNOTATORS), n, _N_CEPH_LANDMARKS, 2), np.nan)
    quirks = {"duplicates": [], "missing": []}
    for a, ann in enumerate(CEPH_ANNOTATORS):
        other = CEPH_ANNOTATORS[1 - a]
        for m, img_id in enumerate(ids):
            for k in range(_N_CEPH_LANDMARKS):
                pts = groups.get((img_id, ann, k))
                if not pts:
                    quirks["missing"].append({"image": img_id, "annotator": ann, "label": f"l{k + 1}"})
                    continue
                if len(pts) == 1:
                    full[a, m, k] = pts[0]
                    continue
                ref = groups.get((img_id, other, k))
                if not ref or len(ref) != 1:
                    raise ValueError(
                        f"landmarks.csv: ({img_id}, {ann}, l{k + 1}) appears {len(pts)} times and the "
                        f"other annotator's point for it is {'missing' if not ref else 'duplicated too'}: "
                        f"cannot tell which copy is right")
                cand = np.asarray(pts, dtype=np.float64)
                d = np.linalg.norm(cand - np.asarray(ref[0]), axis=1)
                best = int(np.argmin(d))
                full[a, m, k] = cand[best]
                quirks["duplicates"].append({
                    "image": img_id, "annotator": ann, "label": f"l{k + 1}",
                    "kept": cand[best].tolist(),
                    "dropped": [c.tolist() for j, c in enumerate(cand) if j != best],
                    "reference": list(ref[0]),
                })
    both_missing = np.all(np.isnan(full[..., 0]), axis=0)
    if np.any(both_missing):
        m, k = np.argwhere(both_missing)[0]
        raise ValueError(f"landmarks.csv: image {ids[m]} label l{k + 1} has no annotation from either annotator")

    # Image geometry from each PNG header; the CSV size must be FULL_RESOLUTION_FACTOR times it.
    geometries = [_png_geometry(p) for p in image_paths]
    for img_id, geom in zip(ids, geometries):
        (w, h), = sizes[img_id]
        ratio = np.array([w, h]) / np.asarray(geom.size)
        if np.any(np.abs(ratio - FULL_RESOLUTION_FACTOR) > 0.01):
            raise ValueError(
                f"image {img_id}: landmarks.csv says the full-resolution image is {w} x {h} but the PNG "
                f"is {geom.size[0]} x {geom.size[1]}; expected a factor of {FULL_RESOLUTION_FACTOR:g}")
        if not (np.allclose(geom.spacing, 1.0) and np.allclose(geom.origin, 0.0)
                and np.allclose(geom.direction, np.eye(2))):
            raise ValueError(f"image {img_id}: expected a PNG read with spacing 1, origin 0, identity "
                             f"direction, got {geom!r}")

    annotators = from_full_resolution(full)
    with np.errstate(invalid="ignore"):
        landmarks = np.nanmean(annotators, axis=0)

    images = None
    if load_images:
        images = [read_image(p) for p in image_paths]
    return Bunch(
        ids=ids,
        image_paths=[str(p) for p in image_paths],
        images=images,
        geometries=geometries,
        landmarks=landmarks,
        annotators=annotators,
        annotator_names=list(CEPH_ANNOTATORS),
        landmark_names=[f"l{k + 1}" for k in range(_N_CEPH_LANDMARKS)],
        full_resolution_factor=FULL_RESOLUTION_FACTOR,
        pixel_size_mm=PIXEL_SIZE_MM,
        quirks=quirks,
    )


def _read_landmark_csv(csv_path: Path) -> list:
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing columns {missing}; expected {list(_CSV_COLUMNS)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append({"image": r["image"].strip(), "annotator": r["annotator"].strip(),
                             "label": r["label"].strip(), "x": float(r["x"]), "y": float(r["y"]),
                             "width": int(float(r["width"])), "height": int(float(r["height"]))})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{csv_path}, line {line}: cannot parse {dict(r)} ({exc})") from None
    if not rows:
        raise ValueError(f"{csv_path} holds no landmark rows")
    return rows


def _png_geometry(path: Path) -> ImageGeometry:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) == 3 and size[2] == 1:
        return ImageGeometry(size[:2], reader.GetSpacing()[:2], reader.GetOrigin()[:2],
                             np.asarray(reader.GetDirection()).reshape(3, 3)[:2, :2])
    return ImageGeometry(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


# ---------------------------------------------------------------------------------------- CT

#: TotalSegmentator v2 "total" task class ids (the abdomen segmentation uses these).
TOTALSEG_V2_CLASSES = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach",
    7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right", 13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right", 15: "esophagus", 16: "trachea", 17: "thyroid_gland",
    18: "small_bowel", 19: "duodenum", 20: "colon", 21: "urinary_bladder", 22: "prostate",
    23: "kidney_cyst_left", 24: "kidney_cyst_right", 25: "sacrum", 26: "vertebrae_S1",
    **{27 + i: f"vertebrae_L{5 - i}" for i in range(5)},
    **{32 + i: f"vertebrae_T{12 - i}" for i in range(12)},
    **{44 + i: f"vertebrae_C{7 - i}" for i in range(7)},
    51: "heart", 52: "aorta", 53: "pulmonary_vein", 54: "brachiocephalic_trunk",
    55: "subclavian_artery_right", 56: "subclavian_artery_left", 57: "common_carotid_artery_right",
    58: "common_carotid_artery_left", 59: "brachiocephalic_vein_left", 60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left", 62: "superior_vena_cava", 63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein", 65: "iliac_artery_left", 66: "iliac_artery_right",
    67: "iliac_vena_left", 68: "iliac_vena_right", 69: "humerus_left", 70: "humerus_right",
    71: "scapula_left", 72: "scapula_right", 73: "clavicula_left", 74: "clavicula_right",
    75: "femur_left", 76: "femur_right", 77: "hip_left", 78: "hip_right", 79: "spinal_cord",
    80: "gluteus_maximus_left", 81: "gluteus_maximus_right", 82: "gluteus_medius_left",
    83: "gluteus_medius_right", 84: "gluteus_minimus_left", 85: "gluteus_minimus_right",
    86: "autochthon_left", 87: "autochthon_right", 88: "iliopsoas_left", 89: "iliopsoas_right",
    90: "brain", 91: "skull",
    **{92 + i: f"rib_left_{i + 1}" for i in range(12)},
    **{104 + i: f"rib_right_{i + 1}" for i in range(12)},
    116: "sternum", 117: "costal_cartilages",
}

#: name -> (CT file, label file or None, {label value: structure name}) in the CT folder.
CT_CASES = {
    "chest_popi00": ("chest_ct_popi00.nii.gz", None, {}),
    "lung1": ("lung1_image.nii.gz", "lung1_label.nii.gz", {1: "tumour"}),
    "lung2": ("lung2_image.nii.gz", "lung2_label.nii.gz", {1: "tumour"}),
    "totalseg_abdomen": ("totalseg_abdomen_ct.nii.gz", "totalseg_abdomen_seg.nii.gz", TOTALSEG_V2_CLASSES),
    "totalseg_chest": ("totalseg_chest_ct.nii.gz", "totalseg_chest_aorta.nii.gz", {1: "aorta"}),
}


def load_ct_folder(path, *, names=None) -> Bunch:
    """Load the CT volumes (and their label masks, where present) of a folder laid out as
    ``shared/data/ct`` (file names in :data:`CT_CASES`). Never downloads anything.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    names : list of str, optional
        Which cases to load (keys of :data:`CT_CASES`); default every case whose CT file is present.
        A requested case whose CT file is absent raises ``FileNotFoundError``.

    Returns
    -------
    Bunch with, each a dict keyed by case name:

    * ``images``: CT :class:`~samlearn.Image` (Hounsfield units);
    * ``labels``: label :class:`~samlearn.Image` on the same grid (only cases that have one);
    * ``label_names``: ``{label value: structure name}`` (tumour, aorta, TotalSegmentator v2 names);
    * ``centroids``: ``{structure name: (3,) world mm}``, the mean world position of the
      structure's voxel centres, for every structure present in the mask;
    * ``bboxes``: ``{structure name: (2, 3) array [min, max] world mm}``, the axis-aligned world box
      enclosing the structure's voxels, voxel borders included (correct for any direction matrix);
    * ``voxel_counts``: ``{structure name: int}``;

    and ``names`` (the loaded cases, in :data:`CT_CASES` order) and ``paths`` (name -> CT path).
    """
    root = _check_folder(path, "CT")
    if names is None:
        chosen = [n for n, (ct, _, _) in CT_CASES.items() if (root / ct).is_file()]
        if not chosen:
            raise FileNotFoundError(f"CT folder '{root}' holds none of the expected files "
                                    f"{[c[0] for c in CT_CASES.values()]}")
    else:
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in CT_CASES]
        if unknown:
            raise ValueError(f"names must be among {list(CT_CASES)}, got unknown {unknown}")
        chosen = [n for n in CT_CASES if n in set(names)]
        absent = [CT_CASES[n][0] for n in chosen if not (root / CT_CASES[n][0]).is_file()]
        if absent:
            raise FileNotFoundError(f"CT folder '{root}' lacks {absent}")

    out = Bunch(names=chosen, paths={}, images={}, labels={}, label_names={}, centroids={},
                bboxes={}, voxel_counts={})
    for name in chosen:
        ct_file, label_file, classes = CT_CASES[name]
        img = read_image(root / ct_file)
        if img.ndim != 3:
            raise ValueError(f"{root / ct_file}: expected a 3D CT, got {img.ndim}D")
        out.images[name] = img
        out.paths[name] = str(root / ct_file)
        if label_file is None or not (root / label_file).is_file():
            continue
        lab = read_image(root / label_file)
        if not lab.geometry.allclose(img.geometry, atol=1e-3):
            raise ValueError(f"{label_file}: label grid {lab.geometry!r} differs from the CT grid "
                             f"{img.geometry!r}")
        out.labels[name] = lab
        out.label_names[name] = dict(classes)
        cents, boxes, counts = structure_geometry(lab, classes)
        out.centroids[name], out.bboxes[name], out.voxel_counts[name] = cents, boxes, counts
    return out


def structure_geometry(label: Image, classes: dict):
    """Centroid, world bounding box and voxel count of every labelled structure of ``label``.

    ``classes`` maps label values to names; a value present in the mask but not in ``classes`` is
    named ``"label_<value>"``. Returns three dicts keyed by name (see :func:`load_ct_folder`)."""
    arr = np.rint(label.array).astype(np.int64)
    if np.any(arr < 0):
        raise ValueError("label image must hold non-negative integer labels")
    from scipy import ndimage

    values = np.unique(arr)
    values = values[values > 0]
    cents, boxes, counts = {}, {}, {}
    if values.size == 0:
        return cents, boxes, counts
    com = ndimage.center_of_mass(np.ones_like(arr, dtype=np.float32), arr, values)
    slices = ndimage.find_objects(arr)
    n_vox = ndimage.sum_labels(np.ones_like(arr, dtype=np.int64), arr, values)
    for v, c, cnt in zip(values.tolist(), com, n_vox):
        nm = classes.get(v, f"label_{v}")
        cents[nm] = label.array_index_to_world(np.asarray(c))
        sl = slices[v - 1]
        lo = np.array([s.start for s in sl], dtype=np.float64) - 0.5
        hi = np.array([s.stop - 1 for s in sl], dtype=np.float64) + 0.5
        corners = np.stack(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, arr.ndim)
        world = label.array_index_to_world(corners)
        boxes[nm] = np.stack([world.min(0), world.max(0)])
        counts[nm] = int(cnt)
    return cents, boxes, counts
