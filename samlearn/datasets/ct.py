"""Loader for a folder of CT volumes kept on the local disk (never downloaded), with their label
masks where present, and the centroid, world bounding box and voxel count of every labelled
structure.

Every point is in **world coordinates** of the image as samlearn reads it (``(x, y, z)`` order,
see :mod:`samlearn.image`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.utils import Bunch

from ..image import Image, read_image
from ._folders import check_folder

__all__ = ["CT_CASES", "TOTALSEG_V2_CLASSES", "load_ct_folder", "structure_geometry"]

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
    """Load the CT volumes (and their label masks, where present) of a folder.

    The folder is laid out as ``shared/data/ct`` (file names in :data:`CT_CASES`). Nothing is
    ever downloaded.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    names : list of str, optional
        Which cases to load (keys of :data:`CT_CASES`); default every case whose CT file is present.
        A requested case whose CT file is absent raises ``FileNotFoundError``.

    Returns
    -------
    data : sklearn.utils.Bunch
        With, each a dict keyed by case name:

        * ``images``: CT :class:`~samlearn.Image` (Hounsfield units);
        * ``labels``: label :class:`~samlearn.Image` on the same grid (only cases that have one);
        * ``label_names``: ``{label value: structure name}`` (tumour, aorta, TotalSegmentator v2
          names);
        * ``centroids``: ``{structure name: (3,) world mm}``, the mean world position of the
          structure's voxel centres, for every structure present in the mask;
        * ``bboxes``: ``{structure name: (2, 3) array [min, max] world mm}``, the axis-aligned
          world box enclosing the structure's voxels, voxel borders included (correct for any
          direction matrix);
        * ``voxel_counts``: ``{structure name: int}``;

        and ``names`` (the loaded cases, in :data:`CT_CASES` order) and ``paths`` (name -> CT
        path).
    """
    root = check_folder(path, "CT")
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
    """Centroid, world bounding box and voxel count of every labelled structure of an image.

    Parameters
    ----------
    label : Image
        Label image holding non-negative integer labels (0: background).
    classes : dict
        Label value -> structure name; a value present in the mask but not in ``classes`` is
        named ``"label_<value>"``.

    Returns
    -------
    centroids : dict
        Name -> (ndim,) mean world position of the structure's voxel centres.
    bboxes : dict
        Name -> (2, ndim) world box [min, max] enclosing the structure's voxels, voxel borders
        included.
    voxel_counts : dict
        Name -> number of voxels.
    """
    arr = np.rint(label.array).astype(np.int64)
    if np.any(arr < 0):
        raise ValueError("label image must hold non-negative integer labels")
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
