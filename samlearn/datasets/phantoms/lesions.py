"""Lesions of the torso phantoms: hypodense liver lesions and lung nodules, placed fully inside
their organ, away from every landmark and inside the field of view of every scan of the
subject; painted into each scan and reported as world bounding boxes."""

from __future__ import annotations

import numpy as np

from .shapes import orthonormal_frame, paint_ellipsoid
from .tables import LABEL, label_lut

__all__ = ["place_lesions", "paint_lesions", "lesion_boxes"]

#: The 8 corners of the box [-1, 1]^3.
BOX_CORNERS = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
#: Labels a lesion of each organ must lie in.
ORGAN_LABELS = {"liver": (LABEL["liver"],), "lung": (LABEL["lung_left"], LABEL["lung_right"])}


def place_lesions(rng, torso, n, organs, scans, n_try=48):
    """Draw lesion ellipsoids inside organs and inside every scan's field of view.

    For each lesion, ``n_try`` candidate centres are drawn in the organ's box; the first one
    whose centre and six extreme points (grown by 2 mm) lie in the organ, that overlaps no
    other lesion, covers no landmark and fits in every scan is kept (none may fit).

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's lesion stream.
    torso : Torso
    n : int
        Number of lesions to try.
    organs : tuple of str
        Organs ("liver", "lung") to draw each lesion's organ from, uniformly.
    scans : list of ((R, t), ImageGeometry)
        Pose and 3D grid of every scan of the subject.
    n_try : int, default=48
        Candidate centres per lesion.

    Returns
    -------
    lesions : list of (centre, semi-axes, frame, organ)
        In the patient frame (mm).
    """
    if n == 0:
        return []
    specs = _draw_candidates(rng, torso, n, organs, n_try)
    labs = _candidate_labels(torso, specs)
    landmarks = torso.landmarks()
    out = []
    for k, (organ, semi, frame, cand) in enumerate(specs):
        ok = np.isin(labs[k], ORGAN_LABELS[organ]).all(1)
        for j in np.flatnonzero(ok):
            c = cand[j]
            if _fits(c, semi, frame, out, landmarks, scans):
                out.append((c, semi, frame, organ))
                break
    return out


def _draw_candidates(rng, torso, n, organs, n_try):
    """Per lesion: its organ, semi-axes, frame and ``n_try`` candidate centres in the organ's
    box."""
    boxes = {
        "liver": (torso.liver_rl[0] - torso.liver_rl[1], torso.liver_rl[0] + torso.liver_rl[1]),
        "lung": (
            np.array([-150.0, -120.0, torso.dia_floor]),
            np.array([150.0, 120.0, max(torso.apex["L"][2], torso.apex["R"][2])]),
        ),
    }
    specs = []
    for _ in range(n):
        organ = organs[int(rng.integers(len(organs)))]
        r = rng.uniform(5.0, 14.0) if organ == "liver" else rng.uniform(3.5, 9.0)
        semi = r * rng.uniform(0.8, 1.2, 3)
        frame = orthonormal_frame(rng.normal(size=3), hint=rng.normal(size=3))
        lo, hi = boxes[organ]
        cand = lo + rng.uniform(0.0, 1.0, (n_try, 3)) * (hi - lo)
        specs.append((organ, semi, frame, cand))
    return specs


def _candidate_labels(torso, specs):
    """Labels at every candidate's centre and six extreme points: (n, n_try, 7)."""
    probes = []
    for organ, semi, frame, cand in specs:
        ext = frame * (semi + 2.0)[None, :]
        offs = np.vstack([np.zeros(3), ext.T, -ext.T])  # (7, 3)
        probes.append(cand[:, None, :] + offs[None, :, :])
    n, n_try = len(specs), len(specs[0][3])
    labs = torso.labels_at(np.concatenate([p.reshape(-1, 3) for p in probes]))
    return labs.reshape(n, n_try, 7)


def _fits(c, semi, frame, placed, landmarks, scans):
    """Whether a lesion centred at ``c`` overlaps no placed lesion, covers no landmark and lies
    inside every scan."""
    if any(np.linalg.norm(c - o[0]) < (semi.max() + o[1].max() + 4.0) for o in placed):
        return False
    if (((landmarks - c) @ frame / (semi + 5.0)) ** 2).sum(1).min() <= 1.0:
        return False  # never cover a landmark
    for pose, geometry3 in scans:
        centre, half = _world_extent(c, semi, frame, pose)
        if not geometry3.contains(centre + half * BOX_CORNERS, margin=0.0).all():
            return False
    return True


def _world_extent(c, semi, frame, pose):
    """World centre and half-extent of the axis-aligned box of a lesion in a pose."""
    R, t = pose
    half = np.sqrt(((R @ frame * semi[None, :]) ** 2).sum(1))
    return R @ c + t, half


def paint_lesions(cv, lesions, hu):
    """Paint lesions into a canvas, over liver, lung and their vessels.

    Parameters
    ----------
    cv : Canvas
    lesions : list
        From :func:`place_lesions`.
    hu : dict
        The scan's tissue intensities.
    """
    allowed = label_lut("liver", "lung_left", "lung_right", "portal_vein", "other_vessel")
    for c, semi, frame, organ in lesions:
        paint_ellipsoid(
            cv,
            c,
            semi,
            frame,
            hu["lesion_liver" if organ == "liver" else "lesion_lung"],
            LABEL["lesion"],
            allowed,
        )


def lesion_boxes(lesions, pose, ndim):
    """Axis-aligned world boxes of the lesions in one scan.

    Parameters
    ----------
    lesions : list
        From :func:`place_lesions`.
    pose : tuple (R, t)
    ndim : {2, 3}
        2 keeps the (x, z) coordinates (the radiograph's axes).

    Returns
    -------
    boxes : ndarray of shape (n_lesions, 2 * ndim)
        (min corner, max corner) in world mm.
    """
    boxes = np.zeros((len(lesions), 2 * ndim))
    for i, (c, semi, frame, _) in enumerate(lesions):
        cw, half = _world_extent(c, semi, frame, pose)
        lo, hi = cw - half, cw + half
        boxes[i] = (
            np.concatenate([lo, hi]) if ndim == 3 else np.concatenate([lo[[0, 2]], hi[[0, 2]]])
        )
    return boxes
