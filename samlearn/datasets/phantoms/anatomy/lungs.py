"""Lungs, diaphragm and airways of the torso phantom: two diaphragm domes, the lungs between the
body cavity, the domes, the apices and the mediastinum, the trachea and bronchi, and the
intrapulmonary vessel trees grown inside the lungs."""

from __future__ import annotations

import numpy as np

from ..shapes import capsule_mask, paint_tubes, spline
from ..tables import LABEL, label_lut
from .body import SQUARENESS

__all__ = ["LungsMixin"]


class LungsMixin:
    """Lungs, diaphragm and airways of :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets ``domes`` (the two diaphragm domes: x, y, top z) and the diaphragm's curvatures
    (``dia_*``), ``apex`` (the lung apices), ``carina``, the mediastinum tables ``t_med_x`` /
    ``t_med_w``, ``trachea`` / ``bronchi`` (centre lines and radii) and ``lung_trees`` (vessel
    segments per kind, ``"art"`` and ``"vein"``).
    """

    def _build_diaphragm(self, N):
        """Two domes (right higher) whose heights follow the breathing, and a floor."""
        s_w, s_h = self.s_w, self.s_h
        self.z_dR = self.zmid("T9") - 8.0 * s_h + self.breath + N(6.0)
        self.z_dL = self.z_dR - 14.0 + N(5.0)
        self.domes = [
            (-62.0 * s_w + N(5.0), -8.0 + N(5.0), self.z_dR),
            (68.0 * s_w + N(5.0), 5.0 + N(5.0), self.z_dL),
        ]
        self.dia_kx = 1.0 / (2 * 80.0 * (1 + N(0.1)))
        self.dia_ka = 1.0 / (2 * 110.0)
        self.dia_kp = 1.0 / (2 * 52.0)
        self.dia_floor = self.zmid("L1") + N(5.0)
        self.dia_t = 4.0

    def _build_lungs(self, N):
        """Lung apices, the curvature of the apical caps and the dependent density gradient."""
        s_w, s_d, s_h = self.s_w, self.s_d, self.s_h
        za = 10.0 * s_h + N(5.0)
        self.apex = {
            "R": (-40.0 * s_w + N(3.0), 8.0 * s_d + N(3.0), za),
            "L": (40.0 * s_w + N(3.0), 8.0 * s_d + N(3.0), za - 2.0 + N(4.0)),
        }
        self.apex_k = 1.0 / (2 * 90.0 * (1 + N(0.1)))
        self.lung_grad = 60.0 + N(15.0)

    def _build_carina(self, N):
        """The tracheal bifurcation, in front of T5 (higher in expiration)."""
        s_d = self.s_d
        self.z_car = self.zmid("T5") - 4.0 + N(6.0) + 0.3 * self.breath
        x_car = -2.0 + N(2.0)
        y_car = self.y_front_of_spine(self.z_car, 19.0 * s_d) + N(2.0)
        self.carina = np.array([x_car, y_car, self.z_car])

    def _build_mediastinum(self, N):
        """Per-z centre and half-width of the mediastinum, the gap between the lungs."""
        mz = [self.z_lo, self.z_dR - 30, self.z_car - 40, self.z_car, self.z_car + 40, self.z_hi]
        mx = [6, 6, 4, 0, 0, 0]
        mw = [13, 13, 16, 20, 24, 17]
        self.t_med_x = np.interp(self.zt, mz, mx).astype(np.float32)
        self.t_med_w = (np.interp(self.zt, mz, mw) * (1 + N(0.1))).astype(np.float32)

    def _build_airways(self, N):
        """Trachea, main and lobar bronchi: centre lines and lumen radii."""
        zc, car = self.z_car, self.carina
        y_front = self.y_front_of_spine
        tr_top = np.array([0.0, y_front(self.z_top, 20.0), self.z_top + 40.0])
        self.trachea = spline(
            np.array(
                [
                    tr_top,
                    [0.0, y_front(zc + 60.0, 18.0), zc + 60.0],
                    car + np.array([0.0, 0.0, 0.0]),
                ]
            ),
            6.0,
        )[0]
        self.trachea_r = 8.5 * (1 + N(0.08))
        R_main = car + np.array([-22.0, 6.0, -20.0])
        L_main = car + np.array([40.0, 12.0, -28.0])
        self.bronchi = [  # (points, radius)
            (np.array([car, R_main]), 7.0),
            (np.array([car, L_main]), 6.5),
            (np.array([R_main, R_main + [-28.0, 2.0, 10.0]]), 4.5),
            (np.array([R_main, R_main + [-10.0, 8.0, -26.0]]), 5.5),
            (np.array([R_main + [-10.0, 8.0, -26.0], R_main + [-34.0, -24.0, -50.0]]), 4.0),
            (np.array([R_main + [-10.0, 8.0, -26.0], R_main + [-34.0, 28.0, -70.0]]), 4.5),
            (np.array([L_main, L_main + [22.0, -12.0, 16.0]]), 4.5),
            (np.array([L_main, L_main + [20.0, 26.0, -58.0]]), 4.5),
        ]

    def dia(self, X, Y):
        """Height of the diaphragm surface above points of the axial plane.

        Parameters
        ----------
        X, Y : ndarray of float32
            Patient-frame coordinates (mm).

        Returns
        -------
        z : ndarray of float32
            The higher of the two domes, never below the floor.
        """
        out = None
        for xc, yc, zt in self.domes:
            dx = X - np.float32(xc)
            dy = Y - np.float32(yc)
            k = np.where(dy > 0, np.float32(self.dia_kp), np.float32(self.dia_ka))
            z = np.float32(zt) - dx * dx * np.float32(self.dia_kx) - dy * dy * k
            out = z if out is None else np.maximum(out, z)
        return np.maximum(out, np.float32(self.dia_floor))

    def below_diaphragm(self, cv, reg):
        """Mask of a region's voxels inside the body cavity and below the diaphragm muscle.

        Parameters
        ----------
        cv : Canvas
        reg : tuple (key, X, Y, Z)
            A region of ``cv``.

        Returns
        -------
        mask : ndarray of bool shaped like the region
        """
        key, X, Y, Z = reg
        return cv.cavity[key] & (Z < self.dia(X, Y) - np.float32(self.dia_t))

    def in_lung(self, pts, side):
        """Whether points lie inside a lung, at least about 3 mm from its border.

        An analytic test (cavity, diaphragm, apex, mediastinum); the heart and the vessels are
        ignored.

        Parameters
        ----------
        pts : array-like of shape (n, 3)
            Patient-frame points (mm).
        side : {"L", "R"}

        Returns
        -------
        inside : ndarray of shape (n,), dtype bool
        """
        x, y, z = np.asarray(pts, dtype=np.float64).T
        a = self.tab(self.t_a_cav, z) - 3.0
        b = np.where(y > 0, self.tab(self.t_bp_cav, z), self.tab(self.t_ba_cav, z)) - 3.0
        u2, v2 = (x / a) ** 2, (y / b) ** 2
        ok = (
            u2
            + v2
            - np.where(y > 0, SQUARENESS[1], SQUARENESS[0]) * np.minimum(u2, 1) * np.minimum(v2, 1)
            < 1.0
        )
        ok &= z > self.dia(x, y) + 3.0
        rel = x - self.tab(self.t_med_x, z)
        w = self.tab(self.t_med_w, z) * np.clip(0.3 + (y + 50.0) / 70.0, 0.3, 1.0) + 3.0
        ok &= (rel > w) if side == "L" else (rel < -w)
        xa, ya, za = self.apex[side]
        ok &= z < za - 3.0 - ((x - xa) ** 2 + (y - ya) ** 2) * self.apex_k
        return ok

    def _build_lung_trees(self, rng):
        """Branching vessel trees from the hila and the pulmonary veins, grown inside the lungs,
        plus short peripheral vessels pointing away from the hila. Stored per kind as arrays
        (p0 (n, 3), p1 (n, 3), r0 (n,), r1 (n,))."""
        out = {"art": [], "vein": []}
        for side, sx in (("L", 1.0), ("R", -1.0)):
            h = self.hilum[side]
            art_dirs = np.array(
                [
                    [sx * 0.5, -0.2, 0.85],
                    [sx * 0.9, -0.5, -0.1],
                    [sx * 0.4, 0.7, -0.6],
                    [sx * 0.6, 0.3, -0.3],
                    [sx * 0.3, -0.6, -0.6],
                    [sx * 0.5, 0.4, 0.6],
                ]
            )
            vein_dirs = np.array(
                [[sx * 0.7, -0.3, 0.4], [sx * 0.6, 0.5, -0.7], [sx * 0.5, -0.4, -0.6]]
            )
            vroots = [self.pulm_veins[(0 if sx > 0 else 2) + min(k, 1)][-1] for k in range(3)]
            roots = np.vstack([np.repeat(h[None], len(art_dirs), 0), vroots])
            dirs = np.vstack([art_dirs, vein_dirs])
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            L0 = np.r_[np.full(len(art_dirs), 38.0), np.full(3, 32.0)]
            R0 = np.r_[np.full(len(art_dirs), 5.5), np.full(3, 4.5)]
            kind = np.r_[np.zeros(len(art_dirs), int), np.ones(3, int)]
            p0, p1, r0, kk = self._grow(rng, roots, dirs, L0, R0, kind, 7, side)
            for k, name in ((0, "art"), (1, "vein")):
                m = kk == k
                out[name].append((p0[m], p1[m], r0[m], 0.85 * r0[m]))
            # peripheral vessels
            lo = np.array([sx * 20.0 if sx > 0 else -170.0, -130.0, self.dia_floor])
            hi = np.array([170.0 if sx > 0 else sx * 20.0, 130.0, self.apex[side][2]])
            p = lo + rng.uniform(0, 1, (3000, 3)) * (hi - lo)
            p = p[self.in_lung(p, side)]
            d = p - h
            d = d / np.linalg.norm(d, axis=1, keepdims=True) + 0.4 * rng.normal(size=p.shape)
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            q = p + rng.uniform(8.0, 18.0, (len(p), 1)) * d
            out["art"].append((p, q, np.full(len(p), 1.2), np.full(len(p), 1.0)))
        self.lung_trees = {
            k: tuple(np.concatenate([t[i] for t in v]) for i in range(4)) for k, v in out.items()
        }

    def _grow(self, rng, P, D, L, R, K, depth, side):
        """Grow binary vessel trees level by level, all at once; from the third level on, a
        branch whose tip would leave the lung is shortened, then dropped."""
        segs = []
        for level in range(depth):
            if len(P) == 0:
                break
            if level > 1:
                full = self.in_lung(P + L[:, None] * D, side)
                half = self.in_lung(P + 0.5 * L[:, None] * D, side)
                keep = full | half
                L = np.where(full, L, 0.5 * L)
                P, D, L, R, K = P[keep], D[keep], L[keep], R[keep], K[keep]
            tips = P + L[:, None] * D
            segs.append((P, tips, R, K))
            n = len(P)
            Dc = np.repeat(D, 2, axis=0)
            axis = np.cross(Dc, rng.normal(size=(2 * n, 3)))
            axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
            ang = np.deg2rad(rng.uniform(20.0, 42.0, 2 * n)) * np.tile([-1.0, 1.0], n)
            nd = Dc * np.cos(ang)[:, None] + np.cross(axis, Dc) * np.sin(ang)[:, None]
            D = nd / np.linalg.norm(nd, axis=1, keepdims=True)
            P = np.repeat(tips, 2, axis=0)
            L = np.repeat(L, 2) * rng.uniform(0.68, 0.85, 2 * n)
            R = np.repeat(R, 2) * 0.72
            K = np.repeat(K, 2)
        return tuple(np.concatenate([sg[i] for sg in segs]) for i in range(4))

    # ------------------------------------------------------------------ painting
    def _paint_lungs(self, cv, hu):
        """The diaphragm (a muscle band under the domes) and both lungs, below and above the
        top of the domes."""
        z0 = self.dia_floor - self.dia_t - 2.0
        z_split = max(d[2] for d in self.domes) + 1.0
        z1 = max(self.apex["L"][2], self.apex["R"][2]) + 2.0
        for lo_z, hi_z, lower in ((z0, z_split, True), (z_split, z1, False)):
            for key, X, Y, Z in cv.chunks(cv.region((-400, -400, lo_z), (400, 400, hi_z))):
                self._paint_lung_slab(cv, hu, key, X, Y, Z, lower, z_split)

    def _paint_lung_slab(self, cv, hu, key, X, Y, Z, lower, z_split):
        """One slab of :meth:`_paint_lungs`: the cavity above the diaphragm, beside the
        mediastinum and below the apical caps, with the dependent density gradient."""
        cav = cv.cavity[key]
        if lower:
            cav = cav & (Z <= z_split)
            d = self.dia(X, Y)
            band = cav & (Z <= d) & (Z > d - np.float32(self.dia_t))
            cv.paint(key, band, hu["muscle"], LABEL["muscle"])
            above = cav & (Z > d)
        else:
            above = cav & (Z > z_split)
        rel = X - cv.ztab(self.t_med_x, key)
        # the mediastinum narrows anteriorly (the lungs nearly meet behind the sternum)
        medw = cv.ztab(self.t_med_w, key) * np.clip(
            np.float32(0.3) + (Y + np.float32(50.0)) * np.float32(1 / 70),
            np.float32(0.3),
            np.float32(1.0),
        )
        value = np.float32(hu["lung"]) + np.float32(self.lung_grad / 200.0) * Y
        for side, m in (("R", above & (rel < -medw)), ("L", above & (rel > medw))):
            xa, ya, za = self.apex[side]
            dx, dy = X - np.float32(xa), Y - np.float32(ya)
            cap = np.float32(za) - (dx * dx + dy * dy) * np.float32(self.apex_k)
            cv.paint(key, m & (Z < cap), value, LABEL["lung_left" if side == "L" else "lung_right"])

    def _paint_lung_vessels(self, cv, hu):
        """The intrapulmonary vessel trees: thick segments as capsules, thin ones splatted along
        their centre lines. Grids only (on point canvases the lungs keep their label)."""
        if not cv.grid:
            return
        lungs = label_lut("lung_left", "lung_right")
        for kind, tissue in (("art", "blood_right"), ("vein", "pulm_vein")):
            p0, p1, r0, r1 = self.lung_trees[kind]
            for i in np.flatnonzero(r0 >= 2.8):
                res = capsule_mask(cv, p0[i], p1[i], r0[i], r1[i])
                if res is not None:
                    cv.paint(res[0], res[1], hu[tissue], None, lungs)
            # a voxel or two wide: splat points along the centre lines
            val = hu["lung"] + 0.85 * (hu[tissue] - hu["lung"])
            for thick in (False, True):
                sel = (r0 < 2.8) & ((r0 >= 1.8) == thick)
                if not sel.any():
                    continue
                a, b = p0[sel], p1[sel]
                n = (np.linalg.norm(b - a, axis=1) / 0.7).astype(int) + 2
                seg = np.repeat(np.arange(len(a)), n)
                t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n - 1, n)
                cv.splat(a[seg] + t[:, None] * (b - a)[seg], val, lungs, thick)

    def _paint_airways(self, cv, hu):
        """Trachea and bronchi: wall, then air lumen."""
        inside = ~label_lut("background", "subcutaneous_fat")
        tubes = [(self.trachea, self.trachea_r)] + [(spline(p, 4.0)[0], r) for p, r in self.bronchi]
        paint_tubes(
            cv,
            tubes,
            [(2.0, hu["airway_wall"], LABEL["airway"]), (0.0, hu["air"], LABEL["airway"])],
            inside,
        )
