"""The generation loop of the torso phantoms: random streams, subjects, their scans, and the
images, labels, landmarks and lesion boxes of every scan.

Random streams: subject ``i`` draws its anatomy, pose, scan geometry, intensities, lesions,
contrast phase and noise from separate children of the seed's ``SeedSequence`` (spawn keys
``(i, stream)`` for the first scan, ``(i, stream, visit)`` for a second one), so the same seed
always gives identical images and subject ``i`` does not depend on the number of subjects.
"""

from __future__ import annotations

import numbers

import numpy as np

from ...image import Image
from .anatomy import Torso
from .lesions import lesion_boxes, paint_lesions, place_lesions
from .scan import ct_image, draw_pose, project, scan_geometry, subject_hu
from .tables import PHASES

__all__ = ["MAX_VOXELS", "seed_sequence", "generate"]

#: Largest painted grid (memory guard, about 40 bytes a voxel while painting).
MAX_VOXELS = 64_000_000

# spawn-key streams of a subject
_ANATOMY, _POSE, _GEOMETRY, _INTENSITY, _LESIONS, _PHASE, _NOISE = range(7)


def seed_sequence(random_state) -> np.random.SeedSequence:
    """The root ``SeedSequence`` of a ``random_state`` argument.

    Parameters
    ----------
    random_state : None, int, numpy SeedSequence, Generator or RandomState
        None: fresh entropy; a Generator or RandomState: one integer drawn from it.

    Returns
    -------
    ss : numpy.random.SeedSequence
    """
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.SeedSequence):
        return np.random.SeedSequence(random_state.entropy, spawn_key=random_state.spawn_key)
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(0, 2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(0, 2**31 - 1)))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state}")
        return np.random.SeedSequence(int(random_state))
    raise TypeError(
        "random_state must be None, an int, a numpy SeedSequence, Generator or "
        f"RandomState, got {type(random_state).__name__}"
    )


def _child(ss, *key):
    """Generator of the child of ``ss`` with the spawn key ``key``."""
    return np.random.default_rng(
        np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + key)
    )


def _visit_rng(ss, i, stream, visit):
    """Random stream ``stream`` of subject ``i`` for scan ``visit`` (visit 0 = make_phantoms)."""
    return _child(ss, i, stream) if visit == 0 else _child(ss, i, stream, visit)


def generate(ss, n, n_visits, o):
    """Subjects ``0 .. n-1``, each scanned ``n_visits`` times.

    Parameters
    ----------
    ss : numpy.random.SeedSequence
        Root of the random streams.
    n : int
        Number of subjects.
    n_visits : {1, 2}
        Scans per subject.
    o : dict
        Checked options (see ``api._check_options``).

    Returns
    -------
    visits : list of dict
        Per visit, lists over subjects: ``images``, ``labels``, ``landmarks`` (stacked into an
        array), ``phase`` and ``lesions``.
    transforms : list of ndarray of shape (4, 4)
        Per subject, the rigid world transform from the first scan to the second (empty when
        ``n_visits`` is 1).
    """
    ndim = o["ndim"]
    out = [dict(images=[], labels=[], landmarks=[], phase=[], lesions=[]) for _ in range(n_visits)]
    transforms = []
    for i in range(n):
        torso = Torso(_child(ss, i, _ANATOMY), o["variation"])
        scans = [_plan_scan(ss, i, v, torso, o) for v in range(n_visits)]
        organs = ("liver", "lung", "lung") if ndim == 3 else ("lung",)
        lesions = place_lesions(
            _child(ss, i, _LESIONS), torso, o["n_lesions"], organs, [(sc[0], sc[1]) for sc in scans]
        )
        for v, scan in enumerate(scans):
            img, lab, lm = _render_scan(ss, i, v, torso, scan, lesions, ndim, o["noise"])
            out[v]["images"].append(img)
            out[v]["labels"].append(lab)
            out[v]["landmarks"].append(lm)
            out[v]["phase"].append(scan[3])
            out[v]["lesions"].append(lesion_boxes(lesions, scan[0], ndim))
        if n_visits == 2:
            transforms.append(_rigid_transform(scans[0][0], scans[1][0]))
    for visit in out:
        visit["landmarks"] = np.stack(visit["landmarks"])
    return out, transforms


def _plan_scan(ss, i, v, torso, o):
    """Pose, 3D grid, radiograph grid (2D) and contrast phase of scan ``v`` of subject ``i``."""
    ndim = o["ndim"]
    pose = draw_pose(_visit_rng(ss, i, _POSE, v), o["variation"])
    g3, g2 = scan_geometry(
        _visit_rng(ss, i, _GEOMETRY, v), torso, pose, ndim, o["spacing"], o["direction"], o["fov"]
    )
    if o["random_phase"]:
        ph = PHASES[int(_visit_rng(ss, i, _PHASE, v).integers(3))]
    else:
        ph = o["phases"][i]
    n_vox = int(np.prod(g3.size))
    if n_vox > MAX_VOXELS:
        what = "grid" if ndim == 3 else "3D grid projected into the radiograph"
        raise ValueError(
            f"spacing {np.round(g3.spacing, 3).tolist()} gives a {what} of "
            f"{n_vox / 1e6:.0f} million voxels for subject {i} (more than "
            f"{MAX_VOXELS / 1e6:.0f} million, about 40 bytes each while painting): use a "
            "coarser spacing"
        )
    return pose, g3, g2, ph


def _render_scan(ss, i, v, torso, scan, lesions, ndim, noise):
    """Image, label image and world landmarks (NaN outside the grid) of one planned scan."""
    pose, g3, g2, ph = scan
    hu = subject_hu(_visit_rng(ss, i, _INTENSITY, v), ph)
    cv = torso.grid_canvas(g3, pose)
    torso.paint(cv, hu)
    paint_lesions(cv, lesions, hu)
    lm = torso.landmarks() @ pose[0].T + pose[1]
    rng_noise = _visit_rng(ss, i, _NOISE, v)
    if ndim == 3:
        arr = ct_image(cv, rng_noise, noise)
        img, lab, geom = Image(arr, g3), Image(cv.lab.astype(np.float32), g3), g3
    else:
        P, lab2 = project(cv, g3, rng_noise, noise)
        img, lab, geom = Image(P, g2), Image(lab2, g2), g2
        lm = lm[:, [0, 2]]
    lm[~geom.contains(lm, margin=0.0)] = np.nan
    return img, lab, lm


def _rigid_transform(pose_fixed, pose_moving):
    """Homogeneous world transform taking points of the fixed scan to the moving scan."""
    (Rf, tf), (Rm, tm) = pose_fixed, pose_moving
    T = np.eye(4)
    T[:3, :3] = Rm @ Rf.T
    T[:3, 3] = tm - Rm @ Rf.T @ tf
    return T
