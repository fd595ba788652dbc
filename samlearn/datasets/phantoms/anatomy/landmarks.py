"""The named landmarks of the torso phantom, computed from each subject's own shapes (never from
a template). Poles, tips and domes are found on the painted organ itself."""

from __future__ import annotations

import numpy as np

from ..shapes import unit
from ..tables import LABEL, LANDMARK_NAMES

__all__ = ["LandmarksMixin"]

#: Distance between the probes along a pole's inward line, and the line's length (mm).
_PROBE_STEP, _PROBE_LENGTH = 0.5, 90.0


class LandmarksMixin:
    """Landmarks of :class:`~samlearn.datasets.phantoms.anatomy.Torso`."""

    def landmarks(self) -> np.ndarray:
        """The landmarks of the subject, in the patient frame.

        Centres (vertebrae, femoral heads, bladder), the carina, the aortic arch top and
        bifurcation, the portal vein bifurcation and the sternal notch and xiphoid come from the
        analytic shapes. Poles, tips and domes are found on the painted organ itself: from just
        outside the analytic extreme point, step inwards until the organ's exact label is met,
        then go ``inset`` mm deeper. Computed once, then cached.

        Returns
        -------
        landmarks : ndarray of shape (n_landmarks, 3)
            Patient-frame points (mm), in the order of ``LANDMARK_NAMES``.
        """
        if self._landmarks is None:
            pts = self._point_landmarks()
            pts.update(self._pole_landmarks())
            self._landmarks = np.array([pts[n] for n in LANDMARK_NAMES], dtype=np.float64)
        return self._landmarks.copy()

    def _point_landmarks(self):
        """Landmarks given by a point of the analytic anatomy: name -> (3,) point."""

        def vert(n):
            zm = self.zmid(n)
            return np.array([float(self.spine_x(zm)), float(self.spine_y(zm)), zm])

        zn, zx = self.z_notch, self.z_xiph
        return {
            "sternal_notch": np.array([0.0, float(self.sternum_y(zn - 3.0)), zn - 3.0]),
            "aortic_arch_top": self.arch_top,
            "carina": self.carina,
            "vertebra_T1": vert("T1"),
            "vertebra_T6": vert("T6"),
            "xiphoid_tip": np.array([0.0, float(self.sternum_y(zx + 3.0)), zx + 3.0]),
            "vertebra_T12": vert("T12"),
            "portal_vein_bifurcation": self.porta,
            "vertebra_L3": vert("L3"),
            "aortic_bifurcation": self.aortic_bif,
            "bladder_centre": self.bladder[0],
            "femoral_head_left": self.fh["L"],
            "femoral_head_right": self.fh["R"],
        }

    def _poles(self):
        """Pole landmarks to search for: (name, start outside the organ, inward direction,
        organ labels, inset mm)."""

        def extreme(c, semi, R, direction):
            M = R @ np.diag(np.asarray(semi) ** 2) @ R.T
            e = np.asarray(direction, float)
            return c + M @ e / np.sqrt(e @ M @ e)

        hc, hR, hsemi = self.heart_c, self.heart_R, self.heart_semi
        xr, yr, zr = self.domes[0]
        down = np.array([0.0, 0.0, -1.0])
        poles = []  # (name, start, inward direction, labels, inset)
        for side in ("L", "R"):
            xa, ya, za = self.apex[side]
            lung = (LABEL["lung_left" if side == "L" else "lung_right"],)
            poles.append(
                (
                    f"lung_apex_{'left' if side == 'L' else 'right'}",
                    np.array([xa, ya, za + 2.0]),
                    down,
                    lung,
                    3.0,
                )
            )
        poles.append(
            ("heart_apex", hc + (hsemi[0] + 2.0) * hR[:, 0], -hR[:, 0], (LABEL["heart"],), 3.0)
        )
        poles.append(("liver_dome", np.array([xr, yr, zr + 2.0]), down, (LABEL["liver"],), 4.0))
        c, semi, R = self.spleen
        p = extreme(c, semi, R, (0.0, 0.0, -1.0))
        poles.append(("spleen_tip", p + 2.0 * unit(p - c), unit(c - p), (LABEL["spleen"],), 5.0))
        for side, name in (("L", "kidney_left"), ("R", "kidney_right")):
            c, semi, R = self.kidneys[side]
            p = extreme(c, semi, R, (0.0, 0.0, 1.0))
            poles.append(
                (f"{name}_upper_pole", p + 2.0 * unit(p - c), unit(c - p), (LABEL[name],), 3.0)
            )
        return poles

    def _pole_landmarks(self):
        """Step along each pole's inward line until its organ's exact label is met, then go
        ``inset`` mm deeper (at most to the middle of the organ along the line): name -> (3,)
        point."""
        poles = self._poles()
        step = _PROBE_STEP
        s = np.arange(0.0, _PROBE_LENGTH + step, step)
        probe = np.concatenate([p0 + s[:, None] * d for _, p0, d, _, _ in poles])
        labs = self.labels_at(probe).reshape(len(poles), len(s))
        pts = {}
        for (name, p0, d, organ, inset), lab in zip(poles, labs):
            inside = np.isin(lab, organ)
            idx = np.flatnonzero(inside)
            if idx.size == 0:  # organ not met along the line (should not happen): keep the
                k = int(round((2.0 + inset) / step))  # analytic pole, inset
            else:
                first = idx[0]
                run = np.flatnonzero(~inside[first:])
                end = first + (run[0] if run.size else len(s) - first) - 1
                k = min(first + int(round(inset / step)), (first + end) // 2)
            pts[name] = p0 + s[k] * d
        return pts
