"""The body wall of the torso phantom: per-z tables of the body outline (skin, subcutaneous fat,
muscle wall, body cavity), the legs below the perineum, and the back and psoas muscles.

Cross-sections are ``q = u^2 + v^2 - c min(u^2, 1) min(v^2, 1) <= 1`` with ``u = x / a`` and
``v = y / b``: ellipses in front (``c = 0``), squarer behind (``c > 0``), like the flat back and
the deep posterolateral gutters. Each of the three nested shapes (outer skin, lean body, cavity)
has a half-width ``a`` and an anterior and a posterior depth ``b`` tabulated every ``Z_STEP`` mm.
"""

from __future__ import annotations

import numpy as np

from ..shapes import paint_tube, spline
from ..tables import BODY_ANY, LABEL, label_lut

__all__ = ["Z_STEP", "SQUARENESS", "BodyMixin"]

#: Resolution of the per-z tables (mm).
Z_STEP = 1.0
#: Squareness ``c`` of the cross-sections: (anterior, posterior).
SQUARENESS = np.array([0.0, 0.55], dtype=np.float32)


class BodyMixin:
    """Body outline and wall of :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets the z range of the subject (``z_top``, ``z_lo``, ``z_hi``, the table abscissae ``zt``),
    the femoral head height ``z_fh``, the sacrum length ``sac_len`` and the per-z tables ``t_*``:
    ``t_a_*`` half-widths, ``t_ba_*`` anterior and ``t_bp_*`` posterior depths of the outer
    surface (``_out``), the lean body (``_lean``) and the cavity (``_cav``); ``t_gap`` (the gap
    between the legs) and ``t_spine_x`` / ``t_spine_y`` (the spine's position).
    """

    def _build_body(self, N):
        """The z range and the outline tables. ``N(s)`` draws a clipped normal deviation."""
        s_h = self.s_h
        # pelvis landmarks needed by the outline
        self.sac_len = 108.0 * s_h
        self.z_fh = self.z_S1 - 92.0 * s_h + N(4.0)
        self.z_top = self.zmid("C4") + 25.0
        self.z_lo = self.z_fh - 420.0
        self.z_hi = self.z_top + 300.0
        zt = np.arange(self.z_lo, self.z_hi + Z_STEP, Z_STEP)
        self.zt = zt
        a_lean, ba_lean, bp_lean = self._lean_outline(N)
        f_lat, ant_fac = self._subcutaneous_fat()
        w_lat, w_ant = self._muscle_wall()
        bp_cav = self._posterior_cavity(bp_lean)
        zf = self.z_fh
        self.t_a_out = (a_lean + f_lat).astype(np.float32)
        self.t_ba_out = (ba_lean + f_lat * ant_fac).astype(np.float32)
        self.t_bp_out = (bp_lean + 0.8 * f_lat).astype(np.float32)
        self.t_a_lean, self.t_ba_lean, self.t_bp_lean = (
            a_lean.astype(np.float32),
            ba_lean.astype(np.float32),
            bp_lean.astype(np.float32),
        )
        self.t_a_cav = np.maximum(a_lean - w_lat, 4.0).astype(np.float32)
        self.t_ba_cav = np.maximum(ba_lean - w_ant, 4.0).astype(np.float32)
        self.t_bp_cav = np.maximum(bp_cav, 4.0).astype(np.float32)
        # legs separate below the perineum: a midline gap growing downwards
        self.z_split = zf - 48.0 * s_h
        self.t_gap = np.clip((self.z_split - zt) * 0.9, 0, 60).astype(np.float32)
        self.t_spine_y = self.spine_y(zt).astype(np.float32)
        self.t_spine_x = self.spine_x(zt).astype(np.float32)

    def _lean_outline(self, N):
        """Half-width, anterior and posterior depth of the lean body (without subcutaneous fat)
        per z, interpolated between levels of the spine and the pelvis."""
        s_w, s_d = self.s_w, self.s_d
        zt = self.zt
        zf = self.z_fh
        # (z, a_lean, b_ant_lean, b_post_lean)
        rows = [
            (self.z_top, 52, 50, 56),
            (self.zmid("C5"), 56, 54, 58),
            (self.zmid("C6"), 70, 57, 64),
            (self.zmid("C7"), 112, 63, 76),
            (self.zmid("T1"), 142, 80, 92),
            (self.zmid("T3"), 151, 95, 101),
            (self.zmid("T6"), 154, 104, 105),
            (self.zmid("T9"), 151, 106, 104),
            (self.zmid("T12"), 143, 104, 100),
            (self.zmid("L2"), 137, 102, 98),
            (self.zmid("L4"), 141, 100, 99),
            (self.z_S1 - 20, 148, 96, 100),
            (zf + 10, 153, 95, 102),
            (zf - 40, 150, 92, 98),
            (zf - 250, 150, 85, 90),
        ]
        rows = sorted(rows)
        z_n = np.array([r[0] for r in rows])
        a_n = np.array([r[1] for r in rows]) * s_w * (1 + np.array([N(0.02) for _ in rows]))
        ba_n = np.array([r[2] for r in rows]) * s_d * (1 + np.array([N(0.02) for _ in rows]))
        bp_n = np.array([r[3] for r in rows]) * s_d
        a_lean = np.interp(zt, z_n, a_n)
        ba_lean = np.interp(zt, z_n, ba_n)
        bp_lean = np.interp(zt, z_n, bp_n)
        return a_lean, ba_lean, bp_lean

    def _subcutaneous_fat(self):
        """Lateral thickness of the subcutaneous fat per z, and its anterior factor (more fat
        over the belly)."""
        zt, zf = self.zt, self.z_fh
        fz = [
            self.z_top,
            self.zmid("C7"),
            self.zmid("T1"),
            self.zmid("T6"),
            self.zmid("T12"),
            self.zmid("L3"),
            self.z_S1,
            zf,
            zf - 250,
        ]
        ff = [0.5, 0.6, 0.7, 0.75, 1.0, 1.4, 1.3, 1.3, 1.2]
        o = np.argsort(fz)
        f_lat = self.fat0 * np.interp(zt, np.asarray(fz)[o], np.asarray(ff)[o])
        ant_fac = np.interp(
            zt, [self.z_S1 - 30, self.zmid("T12"), self.zmid("T10")], [1.0, 1.35, 1.0]
        )
        self.f_lat = f_lat
        return f_lat, ant_fac

    def _muscle_wall(self):
        """Lateral and anterior thickness of the muscle wall per z (the cavity lies inside it)."""
        zt, zf = self.zt, self.z_fh
        wz = [
            self.z_top,
            self.zmid("C6"),
            self.zmid("C7"),
            self.zmid("T1"),
            self.zmid("T6"),
            self.zmid("T12"),
            self.zmid("L3"),
            self.z_S1 - 20,
            zf + 40,
            zf,
            zf - 40,
            zf - 250,
        ]
        wl = [22, 32, 45, 30, 21, 19, 20, 34, 70, 100, 118, 150]
        wa = [14, 16, 18, 20, 17, 13, 12, 12, 13, 16, 30, 80]
        o = np.argsort(wz)
        w_lat = np.interp(zt, np.asarray(wz)[o], np.asarray(wl)[o])
        w_ant = np.interp(zt, np.asarray(wz)[o], np.asarray(wa)[o])
        return w_lat, w_ant

    def _posterior_cavity(self, bp_lean):
        """Posterior depth of the body cavity per z: in front of the spine (the lungs reach
        beside it) and of the sacrum."""
        zt = self.zt
        pz = [
            self.z_top,
            self.zmid("C7"),
            self.zmid("T1"),
            self.zmid("T4"),
            self.zmid("T10"),
            self.zmid("T12"),
            self.zmid("L2"),
            self.zmid("L5"),
        ]
        pp = [-8, 8, 22, 32, 32, 28, 22, 14]
        o = np.argsort(pz)
        bp_cav = self.spine_y(zt) + np.interp(zt, np.asarray(pz)[o], np.asarray(pp)[o])
        sac = zt < self.z_S1
        s = np.clip((self.z_S1 - zt) / self.sac_len, 0, 1.2)
        y_sac_front = self.sac_y(s) - self.sac_t(s)
        bp_cav[sac] = y_sac_front[sac] + 3.0
        bp_cav = np.minimum(bp_cav, bp_lean - 12.0)
        return bp_cav

    def tab(self, arr, z):
        """Evaluate a per-z table at heights ``z`` (for building, not per voxel).

        Parameters
        ----------
        arr : ndarray of shape (len(zt),)
            A per-z table.
        z : float or ndarray

        Returns
        -------
        values : float or ndarray
        """
        return np.interp(z, self.zt, arr)

    def extent_xy(self, z0, z1):
        """Largest half-width, anterior and posterior depth of the body between two heights.

        Parameters
        ----------
        z0, z1 : float
            Heights, ``z0 < z1``.

        Returns
        -------
        a, ba, bp : float
            Half-width, anterior depth and posterior depth (mm).
        """
        m = (self.zt >= z0) & (self.zt <= z1)
        return (
            float(self.t_a_out[m].max()),
            float(self.t_ba_out[m].max()),
            float(self.t_bp_out[m].max()),
        )

    # ------------------------------------------------------------------ painting
    @staticmethod
    def _inv_tables(ta, tba, tbp):
        """1/a per z and 1/b interleaved per (z, posterior?) for lookups with 2*zi + (Y > 0)."""
        ib = np.empty(2 * len(ta), np.float32)
        ib[0::2] = 1.0 / tba
        ib[1::2] = 1.0 / tbp
        return (1.0 / ta).astype(np.float32), ib

    def _paint_body(self, cv, hu):
        """Skin with subcutaneous fat, muscle wall and cavity (visceral fat) of every slice; the
        cavity mask and its normalised radius are kept on the canvas for the later painters."""
        hu_lut = np.array([-1000.0, hu["fat"], hu["muscle"], hu["fat"]], np.float32)
        lab_lut = np.array(
            [0, LABEL["subcutaneous_fat"], LABEL["muscle"], LABEL["visceral_fat"]], np.uint8
        )
        tables = [
            self._inv_tables(*tabs)
            for tabs in (
                (self.t_a_out, self.t_ba_out, self.t_bp_out),
                (self.t_a_lean, self.t_ba_lean, self.t_bp_lean),
                (self.t_a_cav, self.t_ba_cav, self.t_bp_cav),
            )
        ]
        tables = [((ia * ia), (ib * ib)) for ia, ib in tables]
        cv.cavity = np.empty(cv.X.shape, bool)
        cv.qcav = np.empty(cv.X.shape, np.float32)
        # slabs of a few slices keep the ~30 passes below in cache (grids); points in one go
        n0 = cv.X.shape[0]
        step = max(1, 600_000 // max(1, cv.X[:1].size)) if cv.grid else n0
        for k0 in range(0, n0, step):
            key = slice(k0, min(k0 + step, n0))
            X, Y, zi = cv.X[key], cv.Y[key], cv.ZI[key]
            post = Y > 0
            zi2 = zi * 2
            zi2 += post
            X2, Y2 = X * X, Y * Y
            c_sq = SQUARENESS[post.view(np.uint8)]
            shells = None
            for ia2, ib2 in tables:
                u2 = X2 * ia2[zi]
                v2 = Y2 * ib2[zi2]
                q = u2 + v2
                np.minimum(u2, 1.0, out=u2)  # the square term only acts inside the unit box
                np.minimum(v2, 1.0, out=v2)
                u2 *= v2
                u2 *= c_sq
                q -= u2
                m = q <= 1.0
                shells = m.view(np.uint8).copy() if shells is None else shells + m.view(np.uint8)
            # the three shapes are nested: 0 outside, 1 fat, 2 muscle, 3 cavity
            cv.hu[key] = hu_lut[shells]
            cv.lab[key] = lab_lut[shells]
            cv.cavity[key] = m
            cv.qcav[key] = q  # normalised radius^2 of the cavity (ribs sit just outside it)
        self._paint_leg_gap(cv, hu)

    def _paint_leg_gap(self, cv, hu):
        """The legs: a midline gap (with its own skin fat) below the perineum."""
        reg = cv.region((-400, -400, self.z_lo - 500), (400, 400, self.z_split))
        if reg is not None:
            k2, X2, Y2, Z2 = reg
            gap = cv.ztab(self.t_gap, k2)
            ax = np.abs(X2)
            below = Z2 < np.float32(self.z_split)
            cv.paint(
                k2,
                below & (ax < gap + np.float32(self.fat0 * 0.8)),
                hu["fat"],
                LABEL["subcutaneous_fat"],
                BODY_ANY,
            )
            cv.paint(k2, below & (ax < gap), np.float32(-1000.0), LABEL["background"])

    def _paint_muscles(self, cv, hu):
        """The back muscles beside the spine and the psoas muscles."""
        allowed = label_lut("visceral_fat", "lung_left", "lung_right", "muscle")
        reg = cv.region((-90, -60, self.z_S1 - 10), (90, 250, self.zmid("C7")))
        if reg is not None:
            key, X, Y, Z = reg
            ys = cv.ztab(self.t_spine_y, key)
            xs = cv.ztab(self.t_spine_x, key)
            rel = Y - ys
            m = (rel > -2.0) & (np.abs(X - xs) < 24.0 + 0.35 * rel)
            m &= (Z > np.float32(self.z_S1 - 10)) & (Z < np.float32(self.zmid("C7")))
            cv.paint(key, m, hu["muscle"], LABEL["muscle"], allowed)
        # psoas
        for sx in (-1.0, 1.0):
            pts = [
                [sx * (self.vrx["T12"] + 6), self.spine_y(self.zmid("T12")), self.zmid("T12")],
                [sx * (self.vrx["L2"] + 12), self.spine_y(self.zmid("L2")) - 2, self.zmid("L2")],
                [sx * (self.vrx["L4"] + 18), self.spine_y(self.zmid("L4")) - 6, self.zmid("L4")],
                [sx * 56 * self.s_w, self.sac_y(0.1) - self.sac_t(0.1) - 22, self.z_S1 - 20],
                [sx * 70 * self.s_w, -42 * self.s_d, self.z_fh + 12],
                [sx * 84 * self.s_w, -46 * self.s_d, self.z_fh - 34],
            ]
            p, pos = spline(np.array(pts, dtype=float), 6.0)
            r = np.interp(pos, [0, 1, 2, 3, 4, 5], [7, 13, 19, 19, 16, 13])
            paint_tube(
                cv,
                p,
                r,
                [(0.0, hu["muscle"], LABEL["muscle"])],
                label_lut("visceral_fat", "muscle"),
            )
