"""Data sets: synthetic phantoms with exact ground truth (landmarks, organ labels, lesion boxes,
contrast phase) for tests, demos and benchmarks, and loaders for real images on the local disk
(cephalometric X-rays with their one-shot landmark protocol, CT volumes). Nothing is ever
downloaded.

Modules: :mod:`.phantoms` (``make_phantoms``, ``make_phantom_pair``), :mod:`.cephalometric`
(``load_cephalograms``, the full-resolution conversions and the protocol: ``CEPH_TRAIN_IDS``,
``CEPH_EVAL_IDS``, ``normalise_landmarks``, ``choose_template``, ``choose_labelled_ids``,
``training_labels``), :mod:`.ct` (``load_ct_folder``, ``structure_geometry``) and
:mod:`.synthetic` (``make_smooth_images``, ``random_direction``: small random images for quick
checks).
"""
from .cephalometric import (
    CEPH_ANNOTATORS,
    CEPH_EVAL_IDS,
    CEPH_TRAIN_IDS,
    FULL_RESOLUTION_FACTOR,
    PIXEL_SIZE_MM,
    choose_labelled_ids,
    choose_template,
    from_full_resolution,
    load_cephalograms,
    normalise_landmarks,
    to_full_resolution,
    training_labels,
)
from .ct import CT_CASES, TOTALSEG_V2_CLASSES, load_ct_folder, structure_geometry
from .phantoms import LANDMARK_NAMES, ORGAN_NAMES, PHASES, make_phantom_pair, make_phantoms
from .synthetic import make_smooth_images, random_direction

__all__ = [
    "make_phantoms",
    "make_phantom_pair",
    "LANDMARK_NAMES",
    "ORGAN_NAMES",
    "PHASES",
    "CEPH_ANNOTATORS",
    "CT_CASES",
    "FULL_RESOLUTION_FACTOR",
    "PIXEL_SIZE_MM",
    "TOTALSEG_V2_CLASSES",
    "from_full_resolution",
    "load_cephalograms",
    "load_ct_folder",
    "structure_geometry",
    "to_full_resolution",
    # the cephalometric one-shot protocol
    "CEPH_TRAIN_IDS",
    "CEPH_EVAL_IDS",
    "normalise_landmarks",
    "choose_template",
    "choose_labelled_ids",
    "training_labels",
    # small random images
    "make_smooth_images",
    "random_direction",
]
