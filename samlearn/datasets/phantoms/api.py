"""The public functions of the torso phantoms, :func:`make_phantoms` and
:func:`make_phantom_pair`: their argument checks, their ``Bunch`` results and the ``DESCR``
text."""

from __future__ import annotations

import textwrap
from numbers import Integral, Real

import numpy as np
from sklearn.utils import Bunch

from ..._utils.validation import Interval, Options, check_param
from .generate import generate, seed_sequence
from .tables import LANDMARK_DOC, LANDMARK_NAMES, ORGAN_NAMES, PHASES, TISSUE_HU

__all__ = ["make_phantoms", "make_phantom_pair"]


def make_phantoms(
    n_subjects=4,
    *,
    ndim=3,
    contrast_phase=None,
    n_lesions=0,
    spacing=None,
    direction=None,
    field_of_view="random",
    noise=1.0,
    variation=1.0,
    random_state=None,
):
    """Generate synthetic torso CT volumes (or AP radiographs) with exact ground truth.

    Each subject is an analytic torso (body wall with fat and muscle, lungs with vessels and
    airways, heart with four chambers, aorta from the root through the arch to the iliac
    bifurcation, venae cavae, pulmonary and portal veins, liver, spleen, stomach, pancreas,
    kidneys, bowel, bladder, spine with vertebrae and discs, ribs, sternum, clavicles, scapulae,
    pelvis and femora), with real inter-subject variation: body size and fat, organ shape and
    position, breathing (diaphragm height, lung size), pose (small rotations), field of view,
    voxel spacing, origin and direction. See ``DESCR`` of the result for the full description.

    Parameters
    ----------
    n_subjects : int, default=4
        Number of subjects (positive).
    ndim : {3, 2}, default=3
        3: CT volumes in Hounsfield units. 2: AP radiographs, the line integrals of attenuation
        through each subject's phantom (the ``-log`` of the transmitted intensity, bone bright),
        with world axes (x, z) of the patient frame.
    contrast_phase : None, 'random', str or list of str, default=None
        Contrast phase per subject among ``PHASES`` = ('non-contrast', 'arterial', 'venous').
        None means non-contrast for all; 'random' draws one per subject; a list gives one each.
    n_lesions : int, default=0
        Number of lesions per subject: hypodense liver lesions and lung nodules (3D), lung nodules
        only (2D). Fewer are placed when the organs are outside the field of view.
    spacing : None, float or sequence, default=None
        Voxel spacing in mm (x, y[, z]). None draws it per subject: 3D in-plane 2.0-2.5 mm and
        slice spacing 3.5-5 mm (about 3 million voxels); 2D square pixels of 1.6-2.4 mm. Grids
        above 64 million voxels (e.g. 0.6 mm isotropic) are refused (ValueError).
    direction : None, 'identity' or array, default=None
        Image direction matrix. None draws it per subject: 3D identity (50 %), diag(-1, -1, 1)
        (35 %) or diag(1, -1, -1) (15 %); 2D diag(1, -1) (head up, 75 %) or diag(-1, -1).
    field_of_view : {'random', 'full'}, default='random'
        'random': per subject, a trunk scan from near the lung apices to near the femoral heads
        (70 %, each end cropped at random), or a 400-520 mm scan starting near the apices (15 %)
        or ending near the femoral heads (15 %); landmarks outside the field of view are NaN
        (the lung apices in about a quarter of the subjects, the femoral heads in about a
        third, mid-trunk landmarks almost never). The in-plane extent is jittered too. 'full'
        always covers from above the lung apices to below the femoral heads (600-700 mm).
    noise : float, default=1.0
        Noise level relative to the default (3D: about 20 HU standard deviation of correlated
        Gaussian noise; 2D: quantum noise of 4e4 photons per pixel). 0 disables noise.
    variation : float, default=1.0
        Scale of the anatomical variation and of the pose rotations between subjects, in
        [0, 1.5] (1: the default, realistic spread; 0: every subject has the same anatomy and
        orientation, while the position in the scanner, the scan geometry and the intensities
        still vary).
    random_state : None, int, numpy SeedSequence, Generator or RandomState, default=None
        Seed. The same seed gives identical subjects, and subject ``i`` does not depend on
        ``n_subjects``; with the same seed, the 2D subject ``i`` is a radiograph of the 3D
        subject ``i`` in the same pose (its landmarks are the (x, z) of the 3D ones).

    Returns
    -------
    data : sklearn.utils.Bunch
        With these attributes:

        images : list of Image
            CT volumes in HU (3D) or radiographs (2D), with exact world geometry.
        labels : list of Image
            Organ label maps on the same grids (values are keys of ``organ_names``). In 2D, each
            pixel gets the structure with the largest attenuation along its ray, bones weighted
            x5 and the body wall (fat, muscle) x0.02, i.e. what a reader would outline.
        organ_names : dict int -> str
            Label value -> organ name.
        landmarks : ndarray of shape (n_subjects, n_landmarks, ndim)
            World coordinates in mm, (x, y[, z]) order; NaN where a landmark is outside the
            subject's field of view (outside the hull of the voxel centres, so every finite
            landmark can be interpolated). In 2D the world point is (x, z) of the 3D point.
        landmark_names : list of str
            The landmarks' names, in the order of ``landmarks``.
        phase : list of str
            Contrast phase of each subject.
        lesions : list of ndarray of shape (n_lesions_i, 2 * ndim)
            Axis-aligned lesion boxes in world mm: (min corner, max corner), possibly empty.
        DESCR : str
            A description of the data set.
    """
    n_subjects = _check_int(n_subjects, "n_subjects", 1)
    opts = _check_options(
        n_subjects,
        ndim,
        contrast_phase,
        n_lesions,
        spacing,
        direction,
        field_of_view,
        noise,
        variation,
    )
    (visit,), _ = generate(seed_sequence(random_state), n_subjects, 1, opts)
    return Bunch(
        **visit,
        organ_names=dict(ORGAN_NAMES),
        landmark_names=list(LANDMARK_NAMES),
        DESCR=_descr(opts["ndim"]),
    )


def make_phantom_pair(
    n_pairs=1,
    *,
    ndim=3,
    contrast_phase=None,
    n_lesions=0,
    spacing=None,
    direction=None,
    field_of_view="random",
    noise=1.0,
    variation=1.0,
    random_state=None,
):
    """Two scans of the same subjects (baseline ``fixed`` and follow-up ``moving``), with the
    exact correspondence between them.

    Both scans of a pair share the anatomy (breath-hold included) and the lesions; each has its
    own pose (position and small rotation in the scanner), scan geometry (field of view, spacing,
    origin, direction), contrast phase draw and noise. The scene moves rigidly between the two
    scans, so ``transforms`` is the ground truth for registration, and landmarks and lesion boxes
    correspond row by row (for lesion matching). Parameters are those of :func:`make_phantoms`
    (``n_pairs`` instead of ``n_subjects``; with ``contrast_phase='random'`` each scan draws its
    own phase). Lesions are placed inside both fields of view. The ``fixed`` scans are identical
    to ``make_phantoms(n_pairs, ...)`` with the same arguments when ``n_lesions=0``.

    Parameters
    ----------
    n_pairs : int, default=1
        Number of subjects, each scanned twice (positive).
    ndim, contrast_phase, n_lesions, spacing, direction, field_of_view, noise, variation
        As in :func:`make_phantoms`.
    random_state : None, int, numpy SeedSequence, Generator or RandomState, default=None
        Seed, as in :func:`make_phantoms`.

    Returns
    -------
    data : sklearn.utils.Bunch
        fixed, moving : Bunch
            Each with ``images``, ``labels``, ``landmarks``, ``phase`` and ``lesions`` as returned
            by :func:`make_phantoms`.
        transforms : ndarray of shape (n_pairs, 4, 4)
            Homogeneous rigid transforms mapping 3D world points (mm) of the fixed scan to the
            same anatomical points in the moving scan: ``p_moving = T[:3, :3] @ p_fixed +
            T[:3, 3]``. For ``ndim=2`` they relate the 3D scenes the radiographs project.
        organ_names, landmark_names, DESCR
            As in :func:`make_phantoms`.
    """
    n_pairs = _check_int(n_pairs, "n_pairs", 1)
    opts = _check_options(
        n_pairs,
        ndim,
        contrast_phase,
        n_lesions,
        spacing,
        direction,
        field_of_view,
        noise,
        variation,
    )
    (fixed, moving), transforms = generate(seed_sequence(random_state), n_pairs, 2, opts)
    return Bunch(
        fixed=Bunch(**fixed),
        moving=Bunch(**moving),
        transforms=np.stack(transforms),
        organ_names=dict(ORGAN_NAMES),
        landmark_names=list(LANDMARK_NAMES),
        DESCR=_descr(opts["ndim"]),
    )


# ============================================================================= argument checks
def _check_options(
    n, ndim, contrast_phase, n_lesions, spacing, direction, field_of_view, noise, variation
):
    """Check every option (in this order) and return them as a dict for the generator."""
    ndim = int(check_param(ndim, [Interval(Integral, 2, 3)], "ndim"))  # radiographs or CT volumes
    phases, random_phase = _check_phases(contrast_phase, n)
    check_param(field_of_view, [Options("random", "full")], "field_of_view")
    return dict(
        ndim=ndim,
        phases=phases,
        random_phase=random_phase,
        n_lesions=_check_int(n_lesions, "n_lesions", 0),
        spacing=_check_spacing(spacing, ndim),
        direction=_check_direction(direction, ndim),
        fov=field_of_view,
        noise=_check_float(noise, "noise", 0.0, 10.0),
        variation=_check_float(variation, "variation", 0.0, 1.5),
    )


def _check_int(value, name, minimum):
    """An integer (not a bool) of at least ``minimum``."""
    return int(check_param(value, [Interval(Integral, minimum, None)], name))


def _check_float(value, name, lo, hi):
    """A finite real number (not a bool) in [lo, hi]."""
    return float(check_param(value, [Interval(Real, lo, hi)], name))


def _check_phases(contrast_phase, n):
    """Per-subject phases (None when drawn at random) and whether they are drawn at random."""
    if contrast_phase is None:
        return ["non-contrast"] * n, False
    if isinstance(contrast_phase, str):
        if contrast_phase == "random":
            return None, True
        if contrast_phase not in PHASES:
            raise ValueError(
                f"contrast_phase must be None, 'random', one of {PHASES} or a list of "
                f"these (one per subject), got {contrast_phase!r}"
            )
        return [contrast_phase] * n, False
    if isinstance(contrast_phase, (list, tuple, np.ndarray)):
        phases = list(contrast_phase)
        if len(phases) != n:
            raise ValueError(
                f"contrast_phase has {len(phases)} entries but n_subjects is {n}: give one "
                "phase per subject"
            )
        bad = [p for p in phases if p not in PHASES]
        if bad:
            raise ValueError(f"contrast_phase entries must be in {PHASES}, got {bad[0]!r}")
        return [str(p) for p in phases], False
    raise ValueError(
        f"contrast_phase must be None, 'random', one of {PHASES} or a list of these, "
        f"got {type(contrast_phase).__name__}"
    )


def _check_spacing(spacing, ndim):
    """None, or the spacing as an array (a scalar or ``ndim`` values) between 0.3 and 20 mm."""
    if spacing is None:
        return None
    try:
        sp = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"spacing must be None, a positive number or {ndim} positive numbers "
            f"(x, y[, z] mm), got {spacing!r}"
        ) from None
    if (
        sp.ndim > 1
        or (sp.ndim == 1 and sp.size != ndim)
        or not np.all(np.isfinite(sp))
        or np.any(sp <= 0)
    ):
        raise ValueError(
            f"spacing must be None, a positive number or {ndim} positive numbers "
            f"(x, y[, z] mm), got {spacing!r}"
        )
    if np.any(sp < 0.3) or np.any(sp > 20):
        raise ValueError(
            f"spacing must be between 0.3 and 20 mm (a phantom of ~400 mm), got {sp.tolist()}"
        )
    return sp


def _check_direction(direction, ndim):
    """None, or an orthonormal ``ndim`` x ``ndim`` direction matrix ('identity' allowed)."""
    if direction is None:
        return None
    if isinstance(direction, str):
        if direction == "identity":
            return np.eye(ndim)
        raise ValueError(
            f"direction must be None (random), 'identity' or a {ndim}x{ndim} matrix, "
            f"got {direction!r}"
        )
    D = np.asarray(direction, dtype=np.float64)
    if D.shape == (ndim * ndim,):
        D = D.reshape(ndim, ndim)
    if (
        D.shape != (ndim, ndim)
        or not np.all(np.isfinite(D))
        or np.abs(D.T @ D - np.eye(ndim)).max() > 1e-4
    ):
        raise ValueError(
            f"direction must be None, 'identity' or an orthonormal {ndim}x{ndim} "
            f"matrix, got shape {D.shape}"
        )
    return D


# ============================================================================= description
def _descr(ndim):
    """The ``DESCR`` text of the results."""
    kind = (
        "CT-like torso volumes in Hounsfield units (air -1000, fat -100, soft tissue 30-60, "
        "lung -850, bone 250-1000), with correlated noise of ~20 HU and a partial-volume blur."
        if ndim == 3
        else "AP radiographs: line integrals of linear attenuation (mu = 0.02/mm x (1 + HU/1000)) "
        "through a 3D phantom along the antero-posterior axis, i.e. -log of the transmitted "
        "intensity, with quantum noise; world axes are (x, z) of the patient frame (head up for "
        "direction diag(1, -1)), bone is bright."
    )
    lines = [
        "Synthetic torso phantoms (samlearn.datasets.make_phantoms)",
        "==========================================================",
        "",
        *textwrap.wrap(kind, 96),
        "",
        *textwrap.wrap(
            "Anatomy: body outline with subcutaneous fat and a muscle wall; lungs (with a "
            "dependent density gradient, branching pulmonary vessels and lobar bronchi) over two "
            "diaphragm domes; trachea and main bronchi; heart with four chambers; aorta (root, "
            "ascending, arch with three branches, descending, abdominal, iliac arteries); SVC, "
            "IVC, pulmonary arteries and veins; liver with portal and hepatic veins; gallbladder; "
            "spleen; stomach with an air-fluid level; pancreas; kidneys (cortex, medulla, sinus); "
            "colon, small bowel, duodenum; bladder; cervical to lumbar vertebrae with discs, "
            "neural arches and processes; ribs with costal cartilages; sternum; clavicles; "
            "scapulae; sacrum, ilia, acetabula, pubic and ischial rami; femora.",
            96,
        ),
        "",
        *textwrap.wrap(
            "Inter-subject variation: body size and fat, spine curvature, organ size, position "
            "and orientation, breathing (diaphragm +-16 mm), pose (yaw ~3 deg, tilts ~1.5 deg, "
            "position in the scanner), field of view, spacing, origin and direction, tissue "
            "intensities, bolus strength and timing inside the contrast phase.",
            96,
        ),
        "",
        *textwrap.wrap(
            "Coordinates: world millimetres in (x, y[, z]) order (LPS, as SimpleITK); the patient "
            "frame (x to the patient's left, y posterior, z superior) is rotated and translated "
            "by the pose. Landmarks are computed from each subject's own shapes; poles, tips and "
            "domes are located on the painted organ itself. A landmark outside the hull of an "
            "image's voxel centres is NaN.",
            96,
        ),
        "",
        "Landmarks:",
        *(f"  {n}: {d}" for n, d in LANDMARK_DOC.items()),
        "",
        "Mean tissue HU (non-contrast / arterial / venous), jittered per subject; enhancement",
        "scaled by a bolus factor (0.88-1.12) and by the timing inside the phase (early/late):",
        *(f"  {n}: {v[0]} / {v[1]} / {v[2]}" for n, v in TISSUE_HU.items() if n != "air"),
        "",
        "Labels (organ_names):",
        *textwrap.wrap(
            ", ".join(f"{k}={v}" for k, v in ORGAN_NAMES.items()),
            94,
            initial_indent="  ",
            subsequent_indent="  ",
        ),
    ]
    return "\n".join(lines) + "\n"
