"""Tables of the torso phantoms: contrast phases, organ labels, landmark names and definitions,
and the mean Hounsfield units of every tissue in every contrast phase.

Everything here is plain data, plus :func:`label_lut`: a boolean lookup table over label values
with which a painter says which current labels a structure may overwrite.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PHASES",
    "ORGAN_NAMES",
    "LABEL",
    "N_LABELS",
    "LANDMARK_NAMES",
    "LANDMARK_DOC",
    "TISSUE_HU",
    "BASE_JITTER",
    "TIMING",
    "BODY_ANY",
    "label_lut",
]

#: Contrast phases, in the order of the columns of :data:`TISSUE_HU`.
PHASES = ("non-contrast", "arterial", "venous")

# ----------------------------------------------------------------------------- labels
#: Label value -> organ name, for the label maps.
ORGAN_NAMES = {
    0: "background",
    1: "subcutaneous_fat",
    2: "visceral_fat",
    3: "muscle",
    4: "lung_left",
    5: "lung_right",
    6: "airway",
    7: "esophagus",
    8: "heart",
    9: "aorta",
    10: "pulmonary_artery",
    11: "vena_cava",
    12: "portal_vein",
    13: "other_vessel",
    14: "liver",
    15: "gallbladder",
    16: "spleen",
    17: "stomach",
    18: "pancreas",
    19: "kidney_left",
    20: "kidney_right",
    21: "bowel",
    22: "bladder",
    23: "spinal_canal",
    24: "vertebra",
    25: "intervertebral_disc",
    26: "rib",
    27: "sternum",
    28: "clavicle",
    29: "scapula",
    30: "pelvis",
    31: "femur_left",
    32: "femur_right",
    33: "lesion",
}
#: Organ name -> label value.
LABEL = {name: k for k, name in ORGAN_NAMES.items()}
#: Length of the label lookup tables (every label value is below it).
N_LABELS = 64

#: Landmark names, in the order of the rows of the ``landmarks`` arrays.
LANDMARK_NAMES = (
    "lung_apex_left",
    "lung_apex_right",
    "sternal_notch",
    "aortic_arch_top",
    "carina",
    "vertebra_T1",
    "vertebra_T6",
    "heart_apex",
    "xiphoid_tip",
    "liver_dome",
    "vertebra_T12",
    "spleen_tip",
    "kidney_left_upper_pole",
    "kidney_right_upper_pole",
    "portal_vein_bifurcation",
    "vertebra_L3",
    "aortic_bifurcation",
    "bladder_centre",
    "femoral_head_left",
    "femoral_head_right",
)

#: Landmark name -> its anatomical definition (printed in ``DESCR``).
LANDMARK_DOC = {
    "lung_apex_left": "highest point of the left lung, 3 mm below its top",
    "lung_apex_right": "highest point of the right lung, 3 mm below its top",
    "sternal_notch": "top of the manubrium in the midline, 3 mm inside the bone",
    "aortic_arch_top": "centre of the aortic lumen at the highest point of the arch",
    "carina": "tracheal bifurcation: centre of the airway lumen where the main bronchi split",
    "vertebra_T1": "centre of the T1 vertebral body",
    "vertebra_T6": "centre of the T6 vertebral body",
    "heart_apex": "tip of the heart (left ventricle), 3 mm inside the myocardium",
    "xiphoid_tip": "lower tip of the sternum (xiphoid), 3 mm inside the bone",
    "liver_dome": "top of the right hepatic dome, 4 mm below the diaphragm",
    "vertebra_T12": "centre of the T12 vertebral body",
    "spleen_tip": "lowest point (inferior tip) of the spleen, 5 mm inside it",
    "kidney_left_upper_pole": "upper pole of the left kidney, 3 mm inside it",
    "kidney_right_upper_pole": "upper pole of the right kidney, 3 mm inside it",
    "portal_vein_bifurcation": "centre of the portal vein lumen where it splits at the liver hilum",
    "vertebra_L3": "centre of the L3 vertebral body",
    "aortic_bifurcation": "centre of the aortic lumen where it divides into the iliac arteries",
    "bladder_centre": "centre of the urinary bladder",
    "femoral_head_left": "centre of the left femoral head",
    "femoral_head_right": "centre of the right femoral head",
}

# ----------------------------------------------------------------------------- intensities
# Mean Hounsfield units per tissue: (non-contrast, arterial, venous). Each subject jitters the
# baseline and scales the enhancement (bolus strength, timing inside the phase).
TISSUE_HU = {
    "fat": (-100, -98, -95),
    "muscle": (48, 55, 62),
    "airway_wall": (30, 45, 50),
    "blood_left": (42, 300, 155),  # aorta, left heart, systemic arteries
    "blood_right": (42, 215, 150),  # right heart, pulmonary arteries
    "pulm_vein": (42, 285, 150),
    "svc": (42, 340, 150),
    "ivc": (42, 85, 140),
    "portal": (42, 120, 175),
    "hepatic_vein": (42, 52, 165),
    "liver": (58, 74, 112),
    "spleen": (48, 125, 120),
    "kidney_cortex": (32, 210, 172),
    "kidney_medulla": (32, 85, 168),
    "pancreas": (42, 118, 95),
    "myocardium": (45, 110, 100),
    "gut_wall": (42, 95, 88),
    "esophagus": (42, 80, 75),
    "fluid": (8, 8, 10),
    "bowel_fluid": (15, 15, 18),
    "stool": (25, 25, 25),
    "csf": (28, 28, 30),
    "disc": (85, 85, 88),
    "cartilage": (125, 125, 128),
    "bone_cortex": (820, 820, 820),
    "bone_cancellous": (330, 335, 340),
    "marrow": (10, 12, 15),
    "lesion_liver": (38, 52, 60),
    "lesion_lung": (32, 60, 70),
    "lung": (-850, -848, -846),
    "air": (-990, -990, -990),
}
BASE_JITTER = {
    "fat": 8,
    "lung": 18,
    "bone_cortex": 70,
    "bone_cancellous": 30,
    "air": 5,
    "stool": 15,
    "fluid": 4,
    "bowel_fluid": 6,
}
# Tissues whose enhancement grows (+) or shrinks (-) with timing inside a phase.
TIMING = {
    "arterial": {
        "blood_left": -0.15,
        "pulm_vein": -0.15,
        "blood_right": -0.35,
        "svc": -0.40,
        "portal": 0.3,
        "liver": 0.45,
        "spleen": 0.15,
        "kidney_medulla": 0.5,
        "hepatic_vein": 0.6,
        "ivc": 0.5,
        "pancreas": -0.1,
    },
    "venous": {
        "blood_left": -0.15,
        "pulm_vein": -0.15,
        "blood_right": -0.25,
        "svc": -0.25,
        "liver": 0.25,
        "portal": -0.15,
        "hepatic_vein": 0.1,
        "kidney_cortex": -0.1,
    },
}


def label_lut(*names):
    """Boolean lookup table over label values, True for the named organs.

    Parameters
    ----------
    *names : str
        Organ names (values of :data:`ORGAN_NAMES`).

    Returns
    -------
    lut : ndarray of shape (N_LABELS,), dtype bool
        True at the label values of ``names``. Indexing it with a label array gives the mask of
        the voxels that hold one of these organs.
    """
    lut = np.zeros(N_LABELS, dtype=bool)
    for n in names:
        lut[LABEL[n]] = True
    return lut


#: Every label but the background (anything inside the body).
BODY_ANY = ~label_lut("background")
