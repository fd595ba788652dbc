"""The cephalometric X-ray set kept on the local disk (never downloaded): its loader, the
conversions between its two coordinate frames, and the one-shot landmark protocol on it.

The set holds 100 images with 19 landmarks marked by 2 annotators. :func:`load_cephalograms`
returns a :class:`sklearn.utils.Bunch`; every point is in **world coordinates** of the image as
samlearn reads it (``(x, y)`` order, see :mod:`samlearn.image`).

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

The one-shot protocol
---------------------
Images 001-070 (:data:`CEPH_TRAIN_IDS`) may be used for training and for choosing the template;
images 071-100 (:data:`CEPH_EVAL_IDS`) are the evaluation queries: they are never trained on,
labelled or used for any choice. The template is the training image whose normalised landmarks
(:func:`normalise_landmarks`: translation and scale removed, rotation kept) are closest to the
mean normalised landmarks of the training images (:func:`choose_template`). Few-label training
uses the landmarks of the template and of ``n`` other training images drawn by
:func:`choose_labelled_ids`, passed to ``SAMEmbedder.fit`` as :func:`training_labels`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from sklearn.utils import Bunch

from .._utils.docs import fill_doc_with
from ..image import ImageGeometry, read_image
from ._folders import check_folder

__all__ = [
    "load_cephalograms",
    "to_full_resolution",
    "from_full_resolution",
    "FULL_RESOLUTION_FACTOR",
    "PIXEL_SIZE_MM",
    "CEPH_ANNOTATORS",
    "CEPH_TRAIN_IDS",
    "CEPH_EVAL_IDS",
    "normalise_landmarks",
    "choose_template",
    "choose_labelled_ids",
    "training_labels",
]

#: Full-resolution pixels per world unit of the half-resolution cephalogram PNGs.
FULL_RESOLUTION_FACTOR = 2.0
#: Pixel size of the original full-resolution cephalograms (mm).
PIXEL_SIZE_MM = 0.1
#: Annotator order of ``annotators`` (annotator 1, annotator 2).
CEPH_ANNOTATORS = ("mollabashi", "farhadifar")
_N_CEPH_LANDMARKS = 19
_CSV_COLUMNS = ("image", "annotator", "label", "x", "y", "width", "height")
#: Images that training and the choice of the template may use (001-070).
CEPH_TRAIN_IDS = tuple(f"{i:03d}" for i in range(1, 71))
#: Evaluation images (071-100): never trained on, labelled or used for a choice.
CEPH_EVAL_IDS = tuple(f"{i:03d}" for i in range(71, 101))

#: the sections that the two conversions between frames share
_fill_doc = fill_doc_with({"full_resolution_points": """
Parameters
----------
points : array-like of shape (..., 2)
    Any shape ending in 2 (x, y).

Returns
-------
ndarray of float64, same shape
    The converted points."""})


@_fill_doc
def to_full_resolution(points) -> np.ndarray:
    """Cephalogram world points (half-resolution PNG frame) to full-resolution pixel coordinates
    (the CSV's frame): ``points * FULL_RESOLUTION_FACTOR``.

    %(full_resolution_points)s
    """
    return _xy_points(points) * FULL_RESOLUTION_FACTOR


@_fill_doc
def from_full_resolution(points) -> np.ndarray:
    """Full-resolution pixel coordinates (the CSV's frame) to cephalogram world points:
    ``points / FULL_RESOLUTION_FACTOR``; inverse of :func:`to_full_resolution`.

    %(full_resolution_points)s
    """
    return _xy_points(points) / FULL_RESOLUTION_FACTOR


def _xy_points(points) -> np.ndarray:
    """``points`` as float64, checked to end in an axis of 2 (x, y)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 0 or pts.shape[-1] != 2:
        raise ValueError(f"points must have a last axis of 2 (x, y), got shape {pts.shape}")
    return pts


def _label_key(label: str) -> int:
    """Landmark index (0-18) of a CSV label "l1" .. "l19"."""
    if not (label.startswith("l") and label[1:].isdigit()):
        raise ValueError(f"landmarks.csv: label must look like 'l1'..'l{_N_CEPH_LANDMARKS}', got {label!r}")
    k = int(label[1:])
    if not 1 <= k <= _N_CEPH_LANDMARKS:
        raise ValueError(f"landmarks.csv: label {label!r} outside l1..l{_N_CEPH_LANDMARKS}")
    return k - 1


def load_cephalograms(path, *, load_images: bool = False) -> Bunch:
    """Load the cephalometric X-ray set from a folder.

    The folder holds ``images/NNN.png`` and ``landmarks.csv`` (the layout of
    ``shared/data/cephalograms``); see the module docstring for the coordinate frames and the
    CSV quirks.

    Parameters
    ----------
    path : str or os.PathLike
        The folder. Nothing is downloaded: a missing folder raises ``FileNotFoundError``.
    load_images : bool, default=False
        Also read every PNG as a samlearn :class:`~samlearn.Image` (about 2 MB each as float32).

    Returns
    -------
    data : sklearn.utils.Bunch
        With

        * ``ids``: list of image ids (``"001"`` ...), sorted; ``image_paths``: list of str;
        * ``images``: list of :class:`~samlearn.Image` (``load_images=True``) or None;
        * ``geometries``: list of :class:`~samlearn.ImageGeometry` of each PNG (read from its
          header);
        * ``landmarks``: (n_images, 19, 2) ground truth = mean of the two annotators, world frame
          of the PNG (half-resolution pixels);
        * ``annotators``: (2, n_images, 19, 2), same frame, NaN where an annotation is missing;
        * ``annotator_names``: ``CEPH_ANNOTATORS``; ``landmark_names``: ``["l1", ..., "l19"]``;
        * ``full_resolution_factor`` (2.0) and ``pixel_size_mm`` (0.1, at full resolution):
          errors in the world frame times 2 are full-resolution pixels, times 0.2 are mm;
        * ``quirks``: ``{"duplicates": [...], "missing": [...]}`` describing how each CSV quirk
          was resolved (dicts with image, annotator, label, and kept / dropped points for
          duplicates, in full-resolution pixels as in the CSV).
    """
    root = check_folder(path, "cephalogram")
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

    groups, sizes = _group_rows(rows)
    full, quirks = _resolve_annotations(groups, ids)
    geometries = _png_geometries(ids, image_paths, sizes)

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


def _group_rows(rows):
    """The CSV rows grouped as (image, annotator, landmark index) -> list of full-resolution
    points, and image -> set of full-resolution sizes (which must be one)."""
    groups: dict = {}
    sizes: dict = {}
    for r in rows:
        key = (r["image"], r["annotator"], _label_key(r["label"]))
        groups.setdefault(key, []).append((r["x"], r["y"]))
        sizes.setdefault(r["image"], set()).add((r["width"], r["height"]))
    for i, s in sizes.items():
        if len(s) != 1:
            raise ValueError(f"landmarks.csv: image {i} has several full-resolution sizes {sorted(s)}")
    return groups, sizes


def _resolve_annotations(groups, ids):
    """Full-resolution points (annotator, image, landmark, 2), NaN where missing, and the quirks:
    a duplicated triple keeps the copy nearest the other annotator's point."""
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
    return full, quirks


def _png_geometries(ids, image_paths, sizes):
    """Geometry of every PNG from its header, checked against the CSV's full-resolution size
    (``FULL_RESOLUTION_FACTOR`` times it) and the expected unit spacing, zero origin and identity
    direction."""
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
    return geometries


def _read_landmark_csv(csv_path: Path) -> list:
    """The rows of ``landmarks.csv`` as dicts (image, annotator, label, x, y, width, height)."""
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
    """Geometry of a PNG read from its header (a 3D header with one slice gives 2D)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if len(size) == 3 and size[2] == 1:
        return ImageGeometry(size[:2], reader.GetSpacing()[:2], reader.GetOrigin()[:2],
                             np.asarray(reader.GetDirection()).reshape(3, 3)[:2, :2])
    return ImageGeometry(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


# ------------------------------------------------------------------------------------ protocol
def normalise_landmarks(points) -> np.ndarray:
    """Remove translation and scale from landmark sets (rotation is kept).

    Parameters
    ----------
    points : array-like of shape (n, k, 2) or (k, 2)
        Finite landmark sets.

    Returns
    -------
    normalised : ndarray of float64, same shape
        Each set centred on its centroid and divided by its RMS distance to the centroid.

    Raises
    ------
    ValueError
        On a wrong shape, a non-finite point, or a set with all points at one place.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim not in (2, 3) or pts.shape[-1] != 2 or not np.all(np.isfinite(pts)):
        raise ValueError(f"points must be finite with shape (n, k, 2) or (k, 2), got {pts.shape}")
    centred = pts - pts.mean(axis=-2, keepdims=True)
    rms = np.sqrt(np.mean(np.sum(centred ** 2, axis=-1), axis=-1))[..., None, None]
    if np.any(rms <= 0):
        raise ValueError("a landmark set has all points at one place: cannot normalise its scale")
    return centred / rms


def choose_template(data, train_ids: Sequence[str] = CEPH_TRAIN_IDS) -> tuple:
    """The template of the one-shot protocol: the training image whose normalised landmarks are
    closest (sum of squared distances) to the mean normalised landmarks of the training images.

    Parameters
    ----------
    data : Bunch
        With ``ids`` (list of str) and ``landmarks`` (n_images, k, 2), as returned by
        :func:`load_cephalograms`.
    train_ids : sequence of str, default=CEPH_TRAIN_IDS
        The images to choose from (and to average).

    Returns
    -------
    template_id : str
        One of ``train_ids``.
    distances : ndarray of shape (len(train_ids),)
        Sum of squared distances of each training image's normalised landmarks to the mean.
    """
    idx = [data.ids.index(i) for i in train_ids]
    norm = normalise_landmarks(data.landmarks[idx])
    mean = norm.mean(axis=0)
    d = np.sum((norm - mean) ** 2, axis=(1, 2))
    return train_ids[int(np.argmin(d))], d


def choose_labelled_ids(template_id: str, n: int, seed: int = 0,
                        train_ids: Sequence[str] = CEPH_TRAIN_IDS) -> list:
    """The images whose landmarks few-label training may use.

    Parameters
    ----------
    template_id : str
        The template (one of ``train_ids``).
    n : int
        Number of other labelled images, in ``[0, len(train_ids) - 1]``.
    seed : int, default=0
        Seed of ``numpy.random.default_rng`` for the draw.
    train_ids : sequence of str, default=CEPH_TRAIN_IDS
        The training ids to draw from.

    Returns
    -------
    ids : list of str
        The template, then ``n`` other training ids drawn without replacement from the sorted
        training ids other than the template (in sorted order). Deterministic; never outside
        ``train_ids``.
    """
    if template_id not in train_ids:
        raise ValueError(f"template {template_id!r} is not a training id")
    others = sorted(i for i in train_ids if i != template_id)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 <= n <= len(others):
        raise ValueError(f"the number of extra labelled images must be an integer in "
                         f"[0, {len(others)}], got {n!r}")
    if n == 0:
        return [template_id]
    pick = np.random.default_rng(seed).choice(len(others), size=n, replace=False)
    return [template_id] + [others[i] for i in sorted(pick)]


def training_labels(data, labelled_ids: Sequence[str],
                    train_ids: Sequence[str] = CEPH_TRAIN_IDS) -> list:
    """``y`` for ``SAMEmbedder.fit`` over the training images.

    Parameters
    ----------
    data : Bunch
        With ``ids`` and ``landmarks``, as returned by :func:`load_cephalograms`.
    labelled_ids : sequence of str
        Training ids whose landmarks training may use (e.g. from :func:`choose_labelled_ids`).
    train_ids : sequence of str, default=CEPH_TRAIN_IDS
        The training images, in the order of the images given to ``fit``.

    Returns
    -------
    y : list
        Per training id, a copy of its ground-truth landmarks (world) if labelled, else None.

    Raises
    ------
    ValueError
        When a labelled id is not a training id: evaluation images are never labelled.
    """
    bad = sorted(set(labelled_ids) - set(train_ids))
    if bad:
        raise ValueError(f"labelled ids {bad} are not training ids: never label evaluation images")
    wanted = set(labelled_ids)
    return [data.landmarks[data.ids.index(i)].copy() if i in wanted else None for i in train_ids]
