"""Solid abdominal organs of the torso phantom: liver, gallbladder, spleen, pancreas, kidneys and
bladder, and the portal venous system with the hepatic veins."""

from __future__ import annotations

import numpy as np

from ..shapes import (
    ellipsoid_mask,
    orthonormal_frame,
    paint_ellipsoid,
    paint_tube,
    rotation,
    spline,
    unit,
)
from ..tables import LABEL, ORGAN_NAMES, label_lut

__all__ = ["AbdomenMixin"]


class AbdomenMixin:
    """Solid abdominal organs of :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets ``liver_rl`` / ``liver_ll`` (right and left lobes), ``spleen``, ``kidneys``,
    ``gallbladder`` and ``bladder`` (ellipsoids: centre, semi-axes[, frame]), ``porta`` (the
    portal vein bifurcation), ``confluence`` (the portal confluence), ``pancreas`` and the
    portal and hepatic veins (``portal``, ``splenic_v``, ``smv``, ``portal_branches``,
    ``hepatic_veins``).
    """

    def _build_liver(self, N):
        """Right and left lobe ellipsoids under the right diaphragm dome."""
        s_w, s_d = self.s_w, self.s_d
        ls = 1.0 + N(0.08)
        self.liver_ls = ls
        self.liver_rl = (
            np.array([-55.0 * s_w + N(5), 8.0 * s_d + N(5), self.z_dR - 58.0 * ls]),
            np.array([92.0, 98.0, 100.0]) * ls,
        )
        self.liver_ll = (
            np.array([28.0 * s_w + N(6), -48.0 * s_d + N(4), self.z_dR - 42.0 + N(5)]),
            np.array([50.0, 34.0, 44.0]) * (1 + N(0.12)),
            rotation(1, -15 + N(6)),
        )

    def _build_spleen(self, N):
        """The spleen: posterolateral, inside the cavity under the left dome."""
        u = unit([0.2 + N(0.1), -0.75 + N(0.1), -0.63])
        zs = (
            self.z_dL - 48.0 + N(6)
        )  # spleen centre: posterolateral, inside the cavity at its level
        a_c, bp_c = float(self.tab(self.t_a_cav, zs)), float(self.tab(self.t_bp_cav, zs))
        self.spleen = (
            np.array([0.66 * a_c + N(4), 0.5 * bp_c + N(4), zs]),
            np.array([58.0, 44.0, 23.0]) * (1 + N(0.12)),
            orthonormal_frame(u, hint=(1.0, 0.0, 0.0)),
        )

    def _build_kidneys(self, N):
        """Tilted ellipsoids (upper pole medial and posterior), at least 12 mm below the
        diaphragm."""
        s_w, s_d = self.s_w, self.s_d
        br = self.breath
        ks = 1.0 + N(0.07)
        zk = self.levels["L2"][0] + 8.0 + 0.5 * br
        self.kidneys = {}
        for side, sx, dz in (("L", 1.0, 8.0 + N(6)), ("R", -1.0, -4.0 + N(6))):
            c = np.array([sx * (68.0 * s_w + N(4)), 40.0 * s_d + N(4), zk + dz])
            u = unit([-sx * (0.25 + N(0.08)), 0.3 + N(0.08), 1.0])
            R = orthonormal_frame(u, hint=(sx, -1.0, 0.0))
            semi = np.array([52.0, 27.0, 22.0]) * ks * (1 + N(0.05))
            # keep the whole kidney at least 12 mm below the diaphragm (posterior recess)
            top = c[2] + np.sqrt(((R * semi[None, :]) ** 2).sum(1))[2]
            z_dia = float(self.dia(np.array([c[0]]), np.array([c[1]]))[0])
            c[2] -= max(0.0, top - (z_dia - 12.0))
            self.kidneys[side] = (c, semi, R)

    def _build_portal_confluence(self, N):
        """The portal vein bifurcation at the liver hilum and the portal confluence in front of
        the aorta."""
        br = self.breath
        lc = self.liver_rl[0]
        self.porta = lc + np.array([22.0 + N(4), -12.0 + N(4), -14.0 + N(5)])
        zc = self.zmid("L1") - 4.0 + 0.4 * br
        y_ao = self.y_front_of_spine(zc, 13.0)  # the front of the aorta
        self.confluence = np.array([4.0 + N(3), y_ao - 26.0 + N(3), zc + N(4)])

    def _build_gallbladder(self, N):
        """The gallbladder under the liver."""
        s_d = self.s_d
        lc, ls = self.liver_rl[0], self.liver_ls
        self.gallbladder = (
            lc + np.array([10.0 + N(5), -60.0 * s_d + N(5), -58.0 * ls + N(6)]),
            np.array([32.0, 15.0, 14.0]) * (1 + N(0.15)),
            orthonormal_frame([0.2, -0.5, -0.85], hint=(1.0, 0.0, 0.0)),
        )

    def _build_bladder(self, N, U):
        """The bladder above the pubic symphysis, its size drawn by its filling."""
        s_d = self.s_d
        fill = U(0.45, 1.6)
        bs = fill ** (1 / 3)
        self.bladder = (
            np.array([N(4), -50.0 * s_d + N(4), self.z_fh - 8.0 + 26.0 * bs]),
            np.array([42.0, 33.0, 30.0]) * bs,
        )

    def _build_pancreas(self):
        """The pancreas from its head at the confluence to its tail at the spleen: (centre
        line, control-polygon position)."""
        cf = self.confluence
        self.pancreas = spline(
            np.array(
                [
                    cf + [-26.0, 0.0, -26.0],
                    cf + [0.0, -14.0, 0.0],
                    cf + [38.0, -4.0, 10.0],
                    self.spleen[0] + np.array([-30.0, -12.0, 4.0]),
                ]
            ),
            6.0,
        )

    def _build_portal_system(self):
        """Splenic and superior mesenteric veins, the portal vein to the hilum, its branches in
        the liver, and the hepatic veins into the inferior vena cava."""
        cf = self.confluence
        self.splenic_v = spline(
            np.array([cf, cf + [38.0, 8.0, 10.0], self.spleen[0] + np.array([-24.0, -4.0, 4.0])]),
            6.0,
        )[0]
        self.smv = spline(np.array([cf, cf + [6.0, -10.0, -40.0], cf + [8.0, -16.0, -90.0]]), 6.0)[
            0
        ]
        ph = self.porta
        self.portal = spline(np.array([cf, 0.5 * (cf + ph) + np.array([-4.0, 4.0, 0.0]), ph]), 5.0)[
            0
        ]
        self.portal_branches = [
            np.array([ph, ph + [-36.0, 6.0, 8.0], ph + [-66.0, 10.0, 14.0]]),
            np.array([ph, ph + [26.0, -26.0, 8.0], ph + [52.0, -46.0, 12.0]]),
            np.array([ph + [-36.0, 6.0, 8.0], ph + [-50.0, -36.0, -10.0]]),
            np.array([ph + [-36.0, 6.0, 8.0], ph + [-58.0, 36.0, 26.0]]),
        ]
        ivc_hep = self.ivc[np.argmin(np.abs(self.ivc[:, 2] - (self.z_dR - 18.0)))]
        self.hepatic_veins = [
            np.array([ivc_hep, ivc_hep + [-40.0, -10.0, -10.0], ivc_hep + [-85.0, -20.0, -30.0]]),
            np.array([ivc_hep, ivc_hep + [-10.0, -40.0, -14.0], ivc_hep + [-22.0, -80.0, -40.0]]),
            np.array([ivc_hep, ivc_hep + [22.0, -40.0, -6.0], ivc_hep + [50.0, -64.0, -18.0]]),
        ]

    # ------------------------------------------------------------------ painting
    def _paint_liver(self, cv, hu):
        """Both lobes below the diaphragm (the right lobe cut by an oblique plane)."""
        fat_only = label_lut("visceral_fat")
        (c1, s1), (c2, s2, R2) = self.liver_rl, self.liver_ll
        lo = np.minimum(c1 - s1, c2 - s2.max())
        hi = np.maximum(c1 + s1, c2 + s2.max())
        reg = cv.region(lo, hi)
        if reg is not None:
            key, X, Y, Z = reg
            m1 = ellipsoid_mask(cv, c1, s1, region=reg)[1] & (X < 6.0 - 0.3 * Y)
            m2 = ellipsoid_mask(cv, c2, s2, R2, region=reg)[1]
            m = (m1 | m2) & self.below_diaphragm(cv, reg)
            cv.paint(key, m, hu["liver"], LABEL["liver"], fat_only)

    def _paint_gallbladder(self, cv, hu):
        """The gallbladder: fluid, over fat or liver."""
        c, s, R = self.gallbladder
        paint_ellipsoid(
            cv, c, s, R, hu["fluid"], LABEL["gallbladder"], label_lut("visceral_fat", "liver")
        )

    def _paint_pancreas(self, cv, hu):
        """The pancreas: a tube thinning from head to tail."""
        fat_only = label_lut("visceral_fat")
        p, pos = self.pancreas
        r = np.interp(pos, [0, 1, 2, 3], [15.0, 11.0, 10.0, 8.5])
        paint_tube(cv, p, r, [(0.0, hu["pancreas"], LABEL["pancreas"])], fat_only)

    def _paint_kidneys(self, cv, hu):
        """Both kidneys (see :meth:`_paint_kidney`)."""
        for side, sx in (("L", 1.0), ("R", -1.0)):
            self._paint_kidney(cv, hu, side, sx)

    def _paint_kidney(self, cv, hu, side, sx):
        """Perirenal fat, cortex, medulla, then the sinus fat and the renal pelvis at the
        hilum."""
        c, s, R = self.kidneys[side]
        lab = LABEL["kidney_left" if side == "L" else "kidney_right"]
        paint_ellipsoid(
            cv,
            c,
            s,
            R,
            hu["fat"],
            LABEL["visceral_fat"],
            label_lut("visceral_fat", "muscle", "liver", "spleen", "bowel"),
            margin=9.0,
        )
        paint_ellipsoid(cv, c, s, R, hu["kidney_cortex"], lab, label_lut("visceral_fat"))
        paint_ellipsoid(
            cv,
            c,
            s * np.array([0.72, 0.62, 0.62]),
            R,
            hu["kidney_medulla"],
            lab,
            label_lut(ORGAN_NAMES[lab]),
        )
        u = R[:, 0]
        hil = np.array([-sx, -0.8, 0.0])
        hil = unit(hil - np.dot(hil, u) * u)
        cs = c + 0.55 * s[1] * hil
        paint_ellipsoid(
            cv,
            cs,
            np.array([0.45 * s[0], 11.0, 9.0]),
            R,
            hu["fat"],
            lab,
            label_lut(ORGAN_NAMES[lab], "visceral_fat"),
        )
        paint_ellipsoid(
            cv,
            cs,
            np.array([0.3 * s[0], 6.0, 5.0]),
            R,
            hu["fluid"],
            lab,
            label_lut(ORGAN_NAMES[lab]),
        )

    def _paint_spleen(self, cv, hu):
        """The spleen, below the diaphragm."""
        fat_only = label_lut("visceral_fat")
        c, s, R = self.spleen
        r = ellipsoid_mask(cv, c, s, R)
        if r is not None:
            key = r[0]
            reg = (key,) + tuple(a[key] for a in (cv.X, cv.Y, cv.Z))
            cv.paint(
                key, r[1] & self.below_diaphragm(cv, reg), hu["spleen"], LABEL["spleen"], fat_only
            )

    def _paint_bladder(self, cv, hu):
        """The bladder: wall, then fluid."""
        c, s = self.bladder
        paint_ellipsoid(
            cv, c, s, None, hu["gut_wall"], LABEL["bladder"], label_lut("visceral_fat"), margin=3.0
        )
        paint_ellipsoid(cv, c, s, None, hu["fluid"], LABEL["bladder"], label_lut("bladder"))

    def _paint_portal_system(self, cv, hu):
        """Portal, splenic and superior mesenteric veins; portal branches and hepatic veins
        inside the liver."""
        inside = ~label_lut("background", "subcutaneous_fat")
        for p, r in ((self.portal, 8.0), (self.splenic_v, 5.0), (self.smv, 6.0)):
            paint_tube(cv, p, r, [(0.0, hu["portal"], LABEL["portal_vein"])], inside)
        liver = label_lut("liver")
        for pts in self.portal_branches:
            paint_tube(
                cv,
                pts,
                np.array([6.5, 5.0, 3.5])[: len(pts)],
                [(0.0, hu["portal"], LABEL["portal_vein"])],
                liver,
            )
        for pts in self.hepatic_veins:
            paint_tube(
                cv,
                pts,
                np.array([7.0, 5.5, 3.5]),
                [(0.0, hu["hepatic_vein"], LABEL["other_vessel"])],
                liver,
            )
