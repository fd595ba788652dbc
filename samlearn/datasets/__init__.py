"""Data sets: loaders for real images on the local disk (cephalometric X-rays, CT volumes).
Nothing is ever downloaded."""
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
