"""One subject of the torso phantoms: :class:`Torso`, its analytic anatomy in the patient frame,
assembled from one mixin per organ system."""

from __future__ import annotations

import numpy as np

from ..canvas import Canvas
from ..tables import TISSUE_HU
from .abdomen import AbdomenMixin
from .body import Z_STEP, BodyMixin
from .cardiovascular import CardiovascularMixin
from .gut import GutMixin
from .landmarks import LandmarksMixin
from .lungs import LungsMixin
from .skeleton import SkeletonMixin
from .spine import SpineMixin

__all__ = ["Torso"]


class Torso(
    SpineMixin,
    BodyMixin,
    LungsMixin,
    CardiovascularMixin,
    AbdomenMixin,
    GutMixin,
    SkeletonMixin,
    LandmarksMixin,
):
    """Analytic anatomy of one subject in the patient frame.

    The patient frame has x to the patient's left, y posterior and z superior (mm), with
    z = 0 at the top of the T1 vertebral body. Organs are ellipsoids, tubes, cylinders and
    curved plates (:mod:`~samlearn.datasets.phantoms.shapes`) whose sizes, positions and
    orientations are drawn per subject. Each organ system lives in its own mixin (spine, body
    wall, lungs and airways, heart and vessels, solid abdominal organs, digestive tube, rest of
    the skeleton, landmarks); this class draws them in a fixed order and paints them in a fixed
    order.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's anatomy stream.
    variation : float, default=1.0
        Scales every deviation from the average subject (0: all subjects identical).
    """

    def __init__(self, rng: np.random.Generator, variation: float = 1.0):
        v = float(variation)

        def N(s=1.0):  # a normal deviation of scale s, clipped at 2.5 s
            return v * s * float(np.clip(rng.standard_normal(), -2.5, 2.5))

        def U(lo, hi):  # symmetric variation around the midpoint, scaled by ``variation``
            mid = 0.5 * (lo + hi)
            return mid + v * (float(rng.uniform(lo, hi)) - mid)

        self._landmarks = None
        self.s_h = 1.0 + N(0.045)  # length (height) scale
        self.s_w = 1.0 + N(0.05)  # width scale
        self.s_d = 1.0 + N(0.06)  # depth scale
        s_bone = 1.0 + N(0.05)
        self.fat0 = float(np.clip(14.0 + N(7.0), 3.0, 40.0))
        self.breath = U(-16.0, 16.0)  # diaphragm shift, mm (+ = expiration, higher)
        # The order of these calls is the order of the random draws: changing it changes every
        # phantom of every seed.
        self._build_spine(N, s_bone)  # spine.py
        self._build_body(N)  # body.py
        self._build_diaphragm(N)  # lungs.py
        self._build_lungs(N)
        self._build_carina(N)
        self._build_mediastinum(N)
        self._build_heart(N)  # cardiovascular.py
        self._build_sternum(N)  # skeleton.py
        self._build_liver(N)  # abdomen.py
        self._build_spleen(N)
        self._build_stomach(N, U)  # gut.py
        self._build_kidneys(N)  # abdomen.py
        self._build_portal_confluence(N)
        self._build_gallbladder(N)
        self._build_bladder(N, U)
        self._build_aorta(N)  # cardiovascular.py
        self._build_iliac_vessels()
        self._build_venae_cavae()
        self._build_pulmonary_vessels()
        self._build_airways(N)  # lungs.py
        self._build_esophagus()  # gut.py
        self._build_pelvis(N, s_bone)  # skeleton.py
        self._build_colon(N, U)  # gut.py
        self._build_small_bowel(rng)
        self._build_duodenum()
        self._build_pancreas()  # abdomen.py
        self._build_portal_system()
        self._build_lung_trees(rng)  # lungs.py

    def paint(self, cv: Canvas, hu: dict):
        """Paint the whole subject onto a canvas.

        The order matters: a later structure wins where the labels it may overwrite allow.

        Parameters
        ----------
        cv : Canvas
        hu : dict
            Tissue name -> intensity (HU) of this scan.
        """
        self._paint_body(cv, hu)  # body.py
        self._paint_lungs(cv, hu)  # lungs.py
        self._paint_muscles(cv, hu)  # body.py
        self._paint_liver(cv, hu)  # abdomen.py
        self._paint_gallbladder(cv, hu)
        self._paint_stomach(cv, hu)  # gut.py
        self._paint_pancreas(cv, hu)  # abdomen.py
        self._paint_kidneys(cv, hu)
        self._paint_spleen(cv, hu)
        self._paint_bladder(cv, hu)
        if cv.grid:  # bowel only replaces visceral fat: irrelevant to exact organ-label queries
            self._paint_bowel(cv, hu)  # gut.py
        self._paint_heart(cv, hu)  # cardiovascular.py
        self._paint_systemic_vessels(cv, hu)
        self._paint_renal_vessels(cv, hu)
        self._paint_pulmonary_vessels(cv, hu)
        self._paint_lung_vessels(cv, hu)  # lungs.py
        self._paint_portal_system(cv, hu)  # abdomen.py
        self._paint_esophagus(cv, hu)  # gut.py
        self._paint_airways(cv, hu)  # lungs.py
        self._paint_spine(cv, hu)  # spine.py
        self._paint_ribs(cv, hu)  # skeleton.py
        self._paint_sternum(cv, hu)
        self._paint_clavicles(cv, hu)
        self._paint_scapulae(cv, hu)
        self._paint_pelvis(cv, hu)

    def grid_canvas(self, geometry, pose):
        """A canvas on an image grid, for this subject in a pose.

        Parameters
        ----------
        geometry : ImageGeometry
            The 3D grid.
        pose : tuple (R, t)
            ``world = R @ patient + t``.

        Returns
        -------
        canvas : Canvas
        """
        return Canvas.for_grid(geometry, pose[0], pose[1], self.zt[0], 1.0 / Z_STEP, len(self.zt))

    def labels_at(self, pts):
        """Exact labels of the subject at patient-frame points, with no grid involved.

        The bowel is not painted on points, so it reads as visceral fat.

        Parameters
        ----------
        pts : array-like of shape (n, 3)
            Patient-frame points (mm).

        Returns
        -------
        labels : ndarray of shape (n,), dtype uint8
        """
        cv = Canvas.for_points(pts, self.zt[0], 1.0 / Z_STEP, len(self.zt))
        self.paint(cv, {k: v[0] for k, v in TISSUE_HU.items()})
        return cv.lab

    def z_range(self):
        """Heights that anchor the field of view.

        Returns
        -------
        z_apex : float
            Top of the higher lung apex.
        z_fh : float
            Height of the femoral heads.
        """
        return max(self.apex["L"][2], self.apex["R"][2]), self.z_fh
