"""Data sets: synthetic phantoms with exact ground truth (landmarks, organ labels, lesion boxes,
contrast phase) for tests, demos and benchmarks, and loaders for real images on the local disk
(cephalometric X-rays, CT volumes). Nothing is ever downloaded."""
from ._phantoms import LANDMARK_NAMES, ORGAN_NAMES, PHASES, make_phantom_pair, make_phantoms
from ._real import (
    CEPH_ANNOTATORS,
    CT_CASES,
    FULL_RESOLUTION_FACTOR,
    PIXEL_SIZE_MM,
    TOTALSEG_V2_CLASSES,
    from_full_resolution,
    load_cephalograms,
    load_ct_folder,
    structure_geometry,
    to_full_resolution,
)

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
]
