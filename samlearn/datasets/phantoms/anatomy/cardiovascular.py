"""Heart and great vessels of the torso phantom: the heart with four chambers, the aorta from the
root through the arch to the iliac bifurcation with its supra-aortic branches, the iliac
arteries and veins, the venae cavae, and the pulmonary arteries and veins."""

from __future__ import annotations

import numpy as np

from ..shapes import orthonormal_frame, paint_ellipsoid, paint_tube, spline, unit
from ..tables import LABEL, label_lut

__all__ = ["CardiovascularMixin"]


class CardiovascularMixin:
    """Heart and great vessels of :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets the heart ellipsoid (``heart_c``, ``heart_R``, ``heart_semi``, scale ``hs``) and the
    vessel centre lines: ``aorta`` (points, radii), ``branches``, ``iliac_a`` / ``iliac_v``,
    ``svc``, ``bcv``, ``ivc``, ``pa_trunk``, ``lpa``, ``rpa``, ``hilum`` and ``pulm_veins``,
    with the points ``aortic_root``, ``arch_top`` (a landmark) and ``aortic_bif`` (a landmark)
    and the height ``z_arch`` of the top of the arch.
    """

    def _build_heart(self, N):
        """The heart: an ellipsoid resting on the central diaphragm, its long axis towards the
        apex (left, anterior, down)."""
        s_w, s_d = self.s_w, self.s_d
        hs = 1.0 + N(0.08)
        xh, yh = 16.0 * s_w + N(4.0), -20.0 * s_d + N(4.0)
        z_dc = float(self.dia(np.array([xh]), np.array([yh]))[0])
        self.heart_c = np.array([xh, yh, z_dc + 47.0 * hs])
        u = unit([0.62 + N(0.08), -0.52 + N(0.08), -0.58 + N(0.08)])
        self.heart_R = orthonormal_frame(u, hint=(0.0, 0.0, 1.0))
        self.heart_semi = np.array([60.0, 47.0, 42.0]) * hs
        self.hs = hs

    def chamber(self, name):
        """Ellipsoid of a heart cavity.

        Parameters
        ----------
        name : {"LV", "RV", "LA", "RA"}

        Returns
        -------
        centre : ndarray of shape (3,)
        semi : ndarray of shape (3,)
            Semi-axes (mm).
        frame : ndarray of shape (3, 3)
            Axes as columns. The atria grown by a margin also give the atrial walls.
        """
        hc, R, s = self.heart_c, self.heart_R, self.heart_semi
        u = R[:, 0]
        left_post = unit(np.array([1.0, 1.0, 0.0]) - np.dot([1.0, 1.0, 0.0], u) * u)
        right_ant = unit(np.array([-1.0, -1.0, 0.0]) - np.dot([-1.0, -1.0, 0.0], u) * u)
        hs = self.hs
        if name == "LV":
            return (
                hc + 0.08 * s[0] * u + 12.0 * hs * left_post,
                np.array([40.0, 17.0, 17.0]) * hs,
                R,
            )
        if name == "RV":
            return (
                hc + 0.0 * s[0] * u + 20.0 * hs * right_ant,
                np.array([36.0, 10.0, 24.0]) * hs,
                orthonormal_frame(u, hint=left_post),
            )
        if name == "LA":
            return (
                hc - 0.72 * s[0] * u + np.array([0.0, 14.0, 4.0]) * hs,
                np.array([22.0, 26.0, 17.0]) * hs,
                orthonormal_frame([1.0, 0.0, 0.0], hint=(0.0, 0.0, 1.0)),
            )
        if name == "RA":
            return (
                hc - 0.55 * s[0] * u + np.array([-26.0, 4.0, -2.0]) * hs,
                np.array([24.0, 22.0, 25.0]) * hs,
                np.eye(3),
            )
        raise KeyError(name)

    def _build_aorta(self, N):
        """Aorta: root (heart base) -> ascending -> arch -> descending -> abdominal ->
        bifurcation, then its supra-aortic branches."""
        s_d = self.s_d
        zc = self.z_car
        car = self.carina
        y_tr = car[1]
        ao_s = 1.0 + N(0.1)
        self.ao_s = ao_s
        y_front = self.y_front_of_spine
        hc, hR, hsemi = self.heart_c, self.heart_R, self.heart_semi
        root = hc - 0.55 * hsemi[0] * hR[:, 0] + np.array([-4.0, 0.0, 4.0])
        self.aortic_root = root
        z_top = zc + 30.0 * self.s_h + N(6.0)
        self.z_bif = self.zmid("L4") + N(8.0)
        desc_x = 22.0 + N(3.0)
        ctrl = [
            root,
            root + np.array([-8.0, -12.0, 22.0]),
            np.array([-17.0 + N(3), -20.0 * s_d + N(3), zc + 5.0]),
            np.array([-8.0, -6.0, z_top - 8.0]),
            np.array([8.0 + N(3), y_tr - 24.0, z_top]),
            np.array([desc_x - 2.0, y_front(z_top, 12.0) - 4.0, z_top - 10.0]),
            np.array([desc_x, y_front(zc - 5, 9.0), zc - 8.0]),
        ]
        for z in np.linspace(zc - 50.0, self.zmid("T12"), 5):
            t = (zc - 50.0 - z) / max(zc - 50.0 - self.zmid("T12"), 1.0)
            ctrl.append(np.array([desc_x - t * (desc_x - 8.0), y_front(z, 10.0 + 2 * t), z]))
        for z in np.linspace(self.zmid("L1"), self.z_bif, 3):
            ctrl.append(np.array([6.0 + N(1.0), y_front(z, 13.0), z]))
        pts, pos = spline(np.array(ctrl), step=5.0)
        rad = (
            np.interp(
                pos, [0, 1, 2, 4, 6, 8, len(ctrl) - 1], [14.5, 16.0, 16.0, 14.0, 12.5, 11.5, 9.0]
            )
            * ao_s
        )
        self.aorta = (pts, rad)
        arch = (pos >= 2) & (pos <= 6)
        self.arch_top = pts[arch][np.argmax(pts[arch, 2])]
        self.aortic_bif = pts[-1]
        self.z_arch = z_top
        self._build_aortic_branches(pts, pos)

    def _build_aortic_branches(self, pts, pos):
        """Brachiocephalic trunk, left common carotid and left subclavian arteries, from the
        arch (``pts``, ``pos``: the aorta's dense points and their control-polygon position)."""
        s_w = self.s_w
        y_tr, z_top = self.carina[1], self.z_arch
        i_bt = np.argmin(np.abs(pos - 3.8))
        i_lcc = np.argmin(np.abs(pos - 4.1))
        i_ls = np.argmin(np.abs(pos - 4.5))
        ztop = self.z_top + 40
        self.branches = [
            (np.array([pts[i_bt], [-14.0, y_tr - 16, z_top + 35], [-22.0, y_tr - 8, ztop]]), 6.0),
            (np.array([pts[i_lcc], [14.0, y_tr - 14, z_top + 40], [22.0, y_tr - 6, ztop]]), 4.5),
            (
                np.array(
                    [
                        pts[i_ls],
                        [26.0, y_tr - 2, z_top + 35],
                        [40.0 * s_w, y_tr + 4, self.apex["L"][2] + 12],
                        [90.0 * s_w, y_tr + 4, self.apex["L"][2] + 20],
                    ]
                ),
                5.0,
            ),
        ]

    def _build_iliac_vessels(self):
        """Iliac arteries from the aortic bifurcation down to the thighs, and the veins behind
        them."""
        s_w, s_d = self.s_w, self.s_d
        b = self.aortic_bif
        self.iliac_a, self.iliac_v = [], []
        for sx in (-1.0, 1.0):
            s0 = self.sac_y(0.0) - self.sac_t(0.0)
            p = np.array(
                [
                    b,
                    [sx * 38.0 * s_w, s0 - 14.0, self.z_S1 + 5.0],
                    [sx * 62.0 * s_w, -30.0 * s_d, self.z_fh + 32.0],
                    [sx * 78.0 * s_w, -62.0 * s_d, self.z_fh - 5.0],
                    [sx * 82.0 * s_w, -60.0 * s_d, self.z_fh - 120.0],
                ]
            )
            self.iliac_a.append(spline(p, 5.0)[0])
            self.iliac_v.append(spline(p + np.array([-sx * 4.0, 10.0, -6.0]), 5.0)[0])

    def _build_venae_cavae(self):
        """Superior vena cava with the left brachiocephalic vein, and the inferior vena cava."""
        s_w = self.s_w
        zc, y_tr, z_top = self.z_car, self.carina[1], self.z_arch
        ztop = self.z_top + 40
        y_front = self.y_front_of_spine
        ra_c = self.chamber("RA")[0]
        self.svc = spline(
            np.array(
                [
                    [-17.0, y_tr - 34.0, ztop],
                    [-26.0 * s_w, y_tr - 38.0, z_top + 15.0],
                    [-32.0 * s_w, -18.0, zc - 5.0],
                    ra_c + np.array([0.0, 0.0, 18.0]),
                ]
            ),
            5.0,
        )[0]
        self.bcv = spline(
            np.array(
                [
                    [30.0 * s_w, y_tr - 30.0, z_top + 38.0],
                    [8.0, y_tr - 42.0, z_top + 24.0],
                    [-26.0 * s_w, y_tr - 38.0, z_top + 15.0],
                ]
            ),
            5.0,
        )[0]
        zs = np.linspace(ra_c[2] - 10.0, self.zmid("L5"), 10)
        ivc = [ra_c + np.array([-2.0, 6.0, -12.0])]
        for z in zs:
            ivc.append(np.array([-24.0 * s_w, y_front(z, 6.0 if z > self.zmid("T12") else 9.0), z]))
        self.ivc = spline(np.array(ivc), 5.0)[0]

    def _build_pulmonary_vessels(self):
        """Pulmonary trunk and arteries to the hila, and the four pulmonary veins."""
        s_w = self.s_w
        zc, car = self.z_car, self.carina
        y_tr = car[1]
        root = self.aortic_root
        hc, hR, hsemi = self.heart_c, self.heart_R, self.heart_semi
        pv = root + np.array([18.0, -16.0, 14.0])
        bif = np.array([car[0] + 10.0, y_tr - 14.0, zc - 14.0])
        self.pa_trunk = spline(
            np.array([hc - 0.15 * hsemi[0] * hR[:, 0] + np.array([-6.0, -22.0, 6.0]), pv, bif]), 5.0
        )[0]
        self.hilum = {
            "L": np.array([58.0 * s_w, y_tr + 8.0, zc - 12.0]),
            "R": np.array([-56.0 * s_w, y_tr + 2.0, zc - 24.0]),
        }
        self.lpa = spline(np.array([bif, [30.0, y_tr + 2.0, zc - 2.0], self.hilum["L"]]), 5.0)[0]
        self.rpa = spline(np.array([bif, [-20.0, y_tr - 6.0, zc - 16.0], self.hilum["R"]]), 5.0)[0]
        la_c = self.chamber("LA")[0]
        self.pulm_veins = []
        for side, sx in (("L", 1.0), ("R", -1.0)):
            for dz in (12.0, -22.0):
                tip = np.array([sx * 62.0 * s_w, la_c[1] + 6.0, la_c[2] + dz])
                self.pulm_veins.append(
                    np.array([la_c, la_c + np.array([sx * 25.0, 4.0, dz * 0.6]), tip])
                )

    # ------------------------------------------------------------------ painting
    def _paint_heart(self, cv, hu):
        """Myocardium (heart and atrial walls, above the diaphragm), then the blood pools of the
        four chambers."""
        ok = label_lut("visceral_fat", "lung_left", "lung_right")

        def above_dia(key):
            return cv.cavity[key] & (cv.Z[key] > self.dia(cv.X[key], cv.Y[key]))

        paint_ellipsoid(
            cv,
            self.heart_c,
            self.heart_semi,
            self.heart_R,
            hu["myocardium"],
            LABEL["heart"],
            ok,
            extra=above_dia,
        )
        for name in ("LA", "RA"):
            c, s, R = self.chamber(name)
            paint_ellipsoid(
                cv, c, s, R, hu["myocardium"], LABEL["heart"], ok, margin=2.5, extra=above_dia
            )
        heart = label_lut("heart")
        for name, tissue in (
            ("LV", "blood_left"),
            ("RV", "blood_right"),
            ("LA", "blood_left"),
            ("RA", "blood_right"),
        ):
            c, s, R = self.chamber(name)
            paint_ellipsoid(cv, c, s, R, hu[tissue], LABEL["heart"], heart)

    def _paint_systemic_vessels(self, cv, hu):
        """Supra-aortic branches, iliac arteries, aorta, iliac veins and venae cavae."""
        inside = ~label_lut("background", "subcutaneous_fat")
        ao_pts, ao_r = self.aorta
        for pts, r in self.branches:
            p = spline(pts, 5.0)[0]
            paint_tube(cv, p, r, [(0.0, hu["blood_left"], LABEL["other_vessel"])], inside)
        for p in self.iliac_a:
            paint_tube(
                cv, p, 5.5 * self.ao_s, [(0.0, hu["blood_left"], LABEL["other_vessel"])], inside
            )
        paint_tube(cv, ao_pts, ao_r, [(0.0, hu["blood_left"], LABEL["aorta"])], inside)
        for p in self.iliac_v:
            paint_tube(cv, p, 6.5, [(0.0, hu["ivc"], LABEL["other_vessel"])], inside)
        paint_tube(cv, self.svc, 9.5, [(0.0, hu["svc"], LABEL["vena_cava"])], inside)
        paint_tube(cv, self.bcv, 6.0, [(0.0, hu["svc"], LABEL["vena_cava"])], inside)
        paint_tube(cv, self.ivc, 11.5, [(0.0, hu["ivc"], LABEL["vena_cava"])], inside)

    def _paint_renal_vessels(self, cv, hu):
        """Renal arteries and veins, from the aorta and the inferior vena cava to each hilum."""
        inside = ~label_lut("background", "subcutaneous_fat")
        ao_pts = self.aorta[0]
        for side, sx in (("L", 1.0), ("R", -1.0)):
            c, s, R = self.kidneys[side]
            hil = c + np.array([-sx * 20.0, -8.0, 0.0])
            ia = np.argmin(np.abs(ao_pts[:, 2] - c[2]))
            iv = np.argmin(np.abs(self.ivc[:, 2] - c[2]))
            paint_tube(
                cv,
                np.array([ao_pts[ia], hil]),
                3.5,
                [(0.0, hu["blood_left"], LABEL["other_vessel"])],
                inside,
            )
            paint_tube(
                cv,
                np.array([self.ivc[iv], hil + [0.0, -6.0, -4.0]]),
                4.5,
                [(0.0, hu["ivc"], LABEL["other_vessel"])],
                inside,
            )

    def _paint_pulmonary_vessels(self, cv, hu):
        """Pulmonary trunk and arteries, and the pulmonary veins."""
        inside = ~label_lut("background", "subcutaneous_fat")
        for p, r in ((self.pa_trunk, 13.0), (self.lpa, 10.0), (self.rpa, 10.0)):
            paint_tube(cv, p, r, [(0.0, hu["blood_right"], LABEL["pulmonary_artery"])], inside)
        for pts in self.pulm_veins:
            paint_tube(
                cv,
                spline(pts, 5.0)[0],
                6.0,
                [(0.0, hu["pulm_vein"], LABEL["other_vessel"])],
                label_lut("visceral_fat", "lung_left", "lung_right"),
            )
