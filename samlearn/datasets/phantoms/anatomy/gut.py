"""The digestive tube of the torso phantom: esophagus, stomach (with an air-fluid level), colon
with mottled content, small bowel loops and the duodenum."""

from __future__ import annotations

import numpy as np

from ..shapes import ellipsoid_mask, paint_tube, rotation, spline, unit
from ..tables import LABEL, label_lut

__all__ = ["GutMixin"]


class GutMixin:
    """Digestive tube of :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets ``stomach`` (three ellipsoids: fundus, body, antrum) and ``stomach_air`` (the air
    fraction), ``esophagus``, ``colon`` / ``colon_r`` / ``colon_gas``, ``small_bowel`` (loops:
    centre line, radius, gas-filled?) and ``duodenum``.
    """

    def _build_stomach(self, N, U):
        """Fundus, body and antrum under the left dome, and the fraction filled with air
        (anterior: the patient is supine)."""
        s_w, s_d = self.s_w, self.s_d
        gs = 1.0 + N(0.12)
        zL = self.z_dL
        self.stomach = [
            (
                np.array([55.0 * s_w, -5.0, zL - 42.0]),
                np.array([40.0, 35.0, 42.0]) * gs,
                rotation(2, 0),
            ),
            (
                np.array([42.0 * s_w, -35.0 * s_d, zL - 88.0]),
                np.array([38.0, 28.0, 46.0]) * gs,
                rotation(2, 30) @ rotation(0, 20),
            ),
            (
                np.array([8.0, -58.0 * s_d, zL - 118.0]),
                np.array([30.0, 22.0, 26.0]) * gs,
                rotation(2, -20),
            ),
        ]
        self.stomach_air = U(0.15, 0.45)

    def _build_esophagus(self):
        """The esophagus in front of the spine, down to the gastro-esophageal junction."""
        zc = self.z_car
        y_front = self.y_front_of_spine
        gej = self.stomach[0][0] + np.array([-30.0, -4.0, 16.0])
        self.esophagus = spline(
            np.array(
                [
                    [3.0, y_front(self.z_top, 5.0), self.z_top + 40.0],
                    [5.0, y_front(zc, 4.0), zc],
                    [6.0, y_front(self.zmid("T8"), 12.0) + 2.0, self.zmid("T8")],
                    [14.0, y_front(self.zmid("T10"), 22.0), self.zmid("T10")],
                    gej,
                ]
            ),
            6.0,
        )[0]

    def _build_colon(self, N, U):
        """The colon from the caecum to the rectum (in front of the sacrum), and its gas
        fraction."""
        s_w, s_d = self.s_w, self.s_d
        lc, lsemi = self.liver_rl
        liver_bottom = lc[2] - 0.8 * lsemi[2]
        zS1 = self.z_S1

        def rect(s):  # a point of the rectum, in front of the sacrum
            return self.sac_y(s) - self.sac_t(s) - 18.0, self.z_S1 - s * self.sac_len

        yr1, zr1 = rect(0.55)
        yr2, zr2 = rect(0.95)
        ctrl = [
            [-70.0 * s_w, -28.0 * s_d, zS1 - 10.0],
            [-82.0 * s_w, 0.0, self.zmid("L3")],
            [-78.0 * s_w, -12.0, liver_bottom + 12.0],
            [-30.0, -62.0 * s_d, self.zmid("L2") - 5.0 + N(10)],
            [20.0, -70.0 * s_d, self.zmid("L3") + N(15)],
            [84.0 * s_w, 0.0, self.spleen[0][2] - 70.0],
            [88.0 * s_w, 22.0, self.zmid("L4")],
            [80.0 * s_w, 10.0, zS1 - 15.0],
            [45.0, -30.0 * s_d, zS1 - 30.0 + N(8)],
            [12.0, -10.0, zS1 - 42.0],
            [0.0, yr1, zr1],
            [0.0, yr2, zr2],
            [0.0, 55.0 * s_d, self.z_fh - 62.0],
        ]
        self.colon, pos = spline(np.array(ctrl), 6.0)
        self.colon_r = np.interp(pos, [0, 1, 3, 6, 9, 10, 11, 12], [28, 24, 23, 22, 17, 18, 19, 8])
        self.colon_gas = U(0.15, 0.5)

    def _build_small_bowel(self, rng):
        """Six small bowel loops: random walks in the mid and lower abdomen."""
        s_w, s_d = self.s_w, self.s_d
        zS1 = self.z_S1
        lo = np.array([-70.0 * s_w, -88.0 * s_d, zS1 - 35.0])
        hi = np.array([70.0 * s_w, 5.0, self.zmid("L2")])
        self.small_bowel = []
        for _ in range(6):
            p = lo + rng.uniform(0.15, 0.85, 3) * (hi - lo)
            d = unit(rng.normal(size=3))
            pts = [p]
            for _ in range(12):
                d = unit(d + 0.8 * rng.normal(size=3))
                q = pts[-1] + 22.0 * d
                out = (q < lo) | (q > hi)
                d[out] = -d[out]
                q = np.clip(pts[-1] + 22.0 * d, lo, hi)
                pts.append(q)
            gas = bool(rng.uniform() < 0.12)
            self.small_bowel.append(
                (spline(np.array(pts), 6.0)[0], float(rng.uniform(10.0, 13.0)), gas)
            )

    def _build_duodenum(self):
        """The duodenal C-loop around the pancreatic head."""
        a_end = self.stomach[2][0] + np.array([-24.0, 4.0, -4.0])
        cf = self.confluence
        self.duodenum = spline(
            np.array(
                [
                    a_end,
                    [-38.0, cf[1] + 4.0, cf[2] - 5.0],
                    [-40.0, cf[1] + 12.0, cf[2] - 50.0],
                    [0.0, cf[1] + 8.0, cf[2] - 68.0],
                    [26.0, cf[1] + 4.0, cf[2] - 48.0],
                ]
            ),
            6.0,
        )[0]

    # ------------------------------------------------------------------ painting
    def _paint_stomach(self, cv, hu):
        """Stomach walls below the diaphragm, then the contents (air anterior, fluid
        posterior)."""
        lo = np.min([c - s.max() for c, s, _ in self.stomach], axis=0)
        hi = np.max([c + s.max() for c, s, _ in self.stomach], axis=0)
        reg = cv.region(lo, hi)
        if reg is not None:
            key, X, Y, Z = reg
            outer = np.zeros(X.shape, bool)
            inner = np.zeros(X.shape, bool)
            for c, s, R in self.stomach:
                outer |= ellipsoid_mask(cv, c, s, R, region=reg)[1]
                inner |= ellipsoid_mask(cv, c, s, R, margin=-4.0, region=reg)[1]
            bd = self.below_diaphragm(cv, reg)
            cv.paint(key, outer & bd, hu["gut_wall"], LABEL["stomach"], label_lut("visceral_fat"))
            level = np.float32(lo[1] + self.stomach_air * (hi[1] - lo[1]))
            val = np.where(Y < level, np.float32(hu["air"]), np.float32(hu["bowel_fluid"] + 10.0))
            cv.paint(key, inner & bd, val, LABEL["stomach"], label_lut("stomach"))

    def _paint_bowel(self, cv, hu):
        """Colon (wall, then gas pockets in stool), small bowel loops and duodenum (wall, then
        fluid or gas). Bowel only replaces visceral fat."""
        wall_ok = label_lut("visceral_fat")
        thr = np.float32(1.6 - 3.2 * self.colon_gas)
        gas, stool = np.float32(hu["air"]), np.float32(hu["stool"])

        def content(X, Y, Z):  # irregular gas pockets in stool (quasi-periodic field)
            f = np.sin(X * np.float32(0.21) + Y * np.float32(0.13) + np.float32(0.3))
            f += np.sin(X * np.float32(-0.11) + Z * np.float32(0.19) + np.float32(1.1))
            f += np.sin(
                Y * np.float32(0.17) - Z * np.float32(0.15) + X * np.float32(0.07) + np.float32(2.0)
            )
            return np.where(f > thr, gas, stool)

        paint_tube(
            cv,
            self.colon,
            self.colon_r,
            [(2.5, hu["gut_wall"], LABEL["bowel"]), (0.0, content, LABEL["bowel"])],
            wall_ok | label_lut("bowel"),
        )
        # small bowel loops and duodenum
        for pts, r, has_gas in self.small_bowel + [(self.duodenum, 11.0, False)]:
            fill = hu["air"] if has_gas else hu["bowel_fluid"]
            paint_tube(
                cv,
                pts,
                r,
                [
                    (2.0, hu["gut_wall"], LABEL["bowel"], wall_ok),
                    (0.0, fill, LABEL["bowel"], label_lut("bowel")),
                ],
            )

    def _paint_esophagus(self, cv, hu):
        """The esophagus."""
        inside = ~label_lut("background", "subcutaneous_fat")
        paint_tube(cv, self.esophagus, 8.0, [(0.0, hu["esophagus"], LABEL["esophagus"])], inside)
