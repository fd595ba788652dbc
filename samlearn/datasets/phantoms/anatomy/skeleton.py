"""The skeleton of the torso phantom besides the spine: ribs with costal cartilages, sternum,
clavicles, scapulae, sacrum, hip bones (ilium, acetabulum, pubic and ischial rami) and femora."""

from __future__ import annotations

import numpy as np

from ..shapes import paint_ellipsoid, paint_tube, plate_mask, spline, unit
from ..tables import BODY_ANY, LABEL, ORGAN_NAMES, label_lut
from .spine import THORACIC

__all__ = ["SkeletonMixin"]


class SkeletonMixin:
    """Ribs, shoulder girdle, sternum and pelvis of
    :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets the sternum heights (``z_notch``, ``z_angle``, ``z_xiph``), the femoral heads ``fh``
    (side -> centre) and their radius ``r_fh``, and the pubic ``symphysis``.
    """

    def _build_sternum(self, N):
        """Heights of the sternal notch, the sternal angle and the xiphoid tip."""
        s_h = self.s_h
        self.z_notch = self.levels["T2"][0] - 4.0 + N(5.0)
        self.z_xiph = self.levels["T10"][0] + N(8.0)
        self.z_angle = self.z_notch - 48.0 * s_h

    def _build_pelvis(self, N, s_bone):
        """Femoral heads and the pubic symphysis (the sacrum follows the spine)."""
        s_w, s_d = self.s_w, self.s_d
        self.r_fh = 23.0 * s_bone
        self.fh = {}
        for side, sx in (("L", 1.0), ("R", -1.0)):
            self.fh[side] = np.array(
                [sx * (86.0 * s_w + N(2.0)), -6.0 * s_d + N(3.0), self.z_fh + N(1.5)]
            )
        self.symphysis = np.array([0.0, -74.0 * s_d, self.z_fh - 22.0])

    def sternum_y(self, z):
        """Antero-posterior position of the sternum's centre at height ``z``.

        Parameters
        ----------
        z : float or ndarray

        Returns
        -------
        y : float or ndarray
        """
        return -(self.tab(self.t_ba_cav, z) + 6.0)

    # ------------------------------------------------------------------ painting
    def _rib_table(self):
        """Per rib (T1 to T12): height of the head, drop of the arc towards the front, angle
        where the bone ends and angle where the costal cartilage ends (None: floating rib)."""
        heads, drops, ends, cart = [], [], [], []
        for k, n in enumerate(THORACIC):
            zt, zb = self.levels[n]
            heads.append(zt - 0.3 * (zt - zb))
            drops.append([50, 68, 80, 88, 92, 95, 96, 96, 94, 90, 72, 55][k] * self.s_h)
            ends.append([40, 38, 40, 42, 44, 46, 48, 55, 65, 75, 100, 120][k])
            cart.append([9, 9, 10, 11, 12, 13, 14, 35, 45, 55, None, None][k])
        return heads, drops, ends, cart

    def _paint_ribs(self, cv, hu):
        """Rib arcs and costal cartilages, then the rib necks from the vertebral bodies to the
        rib angles."""
        heads, drops, ends, cart = self._rib_table()
        rib_hu = 0.45 * hu["bone_cortex"] + 0.55 * hu["bone_cancellous"]
        if not self._paint_rib_arcs(cv, hu, rib_hu, heads, drops, ends, cart):
            return
        for k, n in enumerate(THORACIC):
            zm = self.zmid(n)
            xs0, ys0 = float(self.spine_x(zm)), float(self.spine_y(zm))
            for sx in (-1.0, 1.0):
                p0 = np.array([xs0 + sx * (self.vrx[n] + 1.0), ys0 + 4.0, heads[k]])
                p1 = np.array(
                    [xs0 + sx * 42.0 * self.s_w, ys0 + 22.0 + 0.2 * self.vry[n], heads[k] - 2.0]
                )
                paint_tube(cv, np.array([p0, p1]), 4.5, [(0.0, rib_hu, LABEL["rib"])], BODY_ANY)

    def _paint_rib_arcs(self, cv, hu, rib_hu, heads, drops, ends, cart):
        """Ribs and costal cartilages in a shell just outside the body cavity, each rib dropping
        from its head towards the front. Returns False when no voxel lies in the shell."""
        z0 = self.levels["T12"][1] - 90.0
        z1 = self.levels["T1"][0] + 15.0
        reg = cv.region((-400, -400, z0), (400, 400, z1))
        if reg is None:
            return False
        key, X, Y, Z = reg
        q = cv.qcav[key]
        zr = (self.zt >= z0) & (self.zt <= z1)
        r_min = max(
            float(min(self.t_ba_cav[zr].min(), self.t_bp_cav[zr].min(), self.t_a_cav[zr].min())),
            40.0,
        )
        cand = (q > np.float32((1 - 1.5 / r_min) ** 2)) & (q < np.float32((1 + 9.5 / r_min) ** 2))
        idx = np.nonzero(cand)
        if idx[0].size == 0:
            return False
        xs, ys, zs = X[idx], Y[idx], Z[idx]
        rho = np.sqrt(q[idx])
        rs = np.sqrt(xs * xs + ys * ys)
        ds = (rho - 1.0) / np.maximum(rho, 1e-3) * rs
        keep = (ds > -1.0) & (ds < 9.0) & (np.abs(xs - self.spine_x(zs).astype(np.float32)) > 30.0)
        idx = tuple(a[keep] for a in idx)
        xs, ys, zs, ds, rs = xs[keep], ys[keep], zs[keep], ds[keep], rs[keep]
        cos_t = -ys / np.maximum(rs, 1e-3)
        g = 0.5 * (1.0 + cos_t)
        radial = np.abs(ds - 4.0) < 3.3
        bone = np.zeros(xs.shape, bool)
        cartilage = np.zeros(xs.shape, bool)
        for k in range(12):
            zc = heads[k] - drops[k] * g
            on = radial & (np.abs(zs - zc) < 5.5)
            bone |= on & (cos_t < np.cos(np.deg2rad(ends[k])))
            if cart[k] is not None:
                cartilage |= (
                    on
                    & (cos_t >= np.cos(np.deg2rad(ends[k])))
                    & (cos_t < np.cos(np.deg2rad(cart[k])))
                )
        for m, val in ((cartilage, hu["cartilage"]), (bone, rib_hu)):
            cv.paint_at(key, tuple(a[m] for a in idx), val, LABEL["rib"], BODY_ANY)
        return True

    def _paint_sternum(self, cv, hu):
        """The sternum: a plate in front of the cavity, cortex around cancellous bone."""
        zn, za, zx = self.z_notch, self.z_angle, self.z_xiph
        reg = cv.region((-40, -300, zx - 2), (40, 0, zn + 2))
        if reg is not None:
            key, X, Y, Z = reg
            yc = -(cv.ztab(self.t_ba_cav, key) + np.float32(6.0))
            zz = [zx, zx + 25, za - 5, za, zn]
            w = np.interp(Z.ravel(), zz, [4, 12, 15, 17, 27]).reshape(Z.shape).astype(np.float32)
            t = np.interp(Z.ravel(), zz, [3, 5, 5.5, 6, 7]).reshape(Z.shape).astype(np.float32)
            inz = (Z >= zx) & (Z <= zn)
            dx, dy = X / w, (Y - yc) / t
            cv.paint(
                key, inz & (dx * dx + dy * dy <= 1.0), hu["bone_cortex"], LABEL["sternum"], BODY_ANY
            )
            dx, dy = X / (w - 2.0), (Y - yc) / np.maximum(t - 2.0, 0.5)
            cv.paint(
                key,
                inz & (dx * dx + dy * dy <= 1.0) & (Z > zx + 4) & (Z < zn - 2),
                hu["bone_cancellous"],
                LABEL["sternum"],
                label_lut("sternum"),
            )

    def _paint_clavicles(self, cv, hu):
        """The clavicles, from the sternal notch to the shoulders."""
        bone_mix = 0.5 * (hu["bone_cortex"] + hu["bone_cancellous"])
        zn = self.z_notch
        yn = float(self.sternum_y(zn))
        for sx in (-1.0, 1.0):
            pts = np.array(
                [
                    [sx * 20.0, yn + 4.0, zn + 2.0],
                    [sx * 70.0 * self.s_w, yn - 2.0, zn + 14.0],
                    [sx * 118.0 * self.s_w, yn + 40.0, zn + 24.0],
                    [sx * 135.0 * self.s_w, yn + 80.0, zn + 26.0],
                ]
            )
            paint_tube(cv, spline(pts, 5.0)[0], 7.0, [(0.0, bone_mix, LABEL["clavicle"])], BODY_ANY)

    def _paint_scapulae(self, cv, hu):
        """The scapulae: curved triangular plates on the posterolateral chest wall."""
        zc = self.zmid("T4") - 10.0
        a_c, bp = float(self.tab(self.t_a_cav, zc)), float(self.tab(self.t_bp_cav, zc))
        for sx in (-1.0, 1.0):
            x0 = 0.62 * a_c
            y0 = bp * np.sqrt(1.0 - 0.62**2)
            nrm = unit([x0 / a_c**2, y0 / bp**2, 0.0])  # outward normal (right side mirrored)
            c = np.array([sx * x0, y0, zc]) + 15.0 * np.array([sx * nrm[0], nrm[1], 0.0])
            tang = unit([nrm[1] * sx, -nrm[0], 0.0])
            frame = np.stack([tang, [0.0, 0.0, 1.0], [sx * nrm[0], nrm[1], 0.0]], axis=1)
            res = plate_mask(
                cv, c, frame, 48.0 * self.s_w, 70.0 * self.s_h, 5.0, kappa=0.0, taper=0.8
            )
            if res is not None:
                key, m, w = res
                cv.paint(
                    key,
                    m & (np.abs(w) < 2.5),
                    0.35 * hu["bone_cortex"] + 0.65 * hu["bone_cancellous"],
                    LABEL["scapula"],
                    BODY_ANY,
                )

    def _paint_pelvis(self, cv, hu):
        """Sacrum and coccyx, then each hip bone and femur."""
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        body = BODY_ANY
        pel = LABEL["pelvis"]
        L = self.sac_len
        reg = cv.region((-60, -100, self.z_S1 - L), (60, 250, self.z_S1))
        if reg is not None:
            key, X, Y, Z = reg
            s = (np.float32(self.z_S1) - Z) / np.float32(L)
            inz = (s >= 0) & (s <= 1)
            s = np.clip(s, 0, 1)
            yc = self.sac_y(s).astype(np.float32)
            w, t = self.sac_w(s).astype(np.float32), self.sac_t(s).astype(np.float32)
            dx, dy = X / w, (Y - yc) / t
            cv.paint(key, inz & (dx * dx + dy * dy <= 1.0), cortex, pel, body)
            dx, dy = X / np.maximum(w - 3.0, 1.0), (Y - yc) / np.maximum(t - 3.0, 1.0)
            cv.paint(key, inz & (dx * dx + dy * dy <= 1.0), canc, pel, label_lut("pelvis"))
        for side, sx in (("L", 1.0), ("R", -1.0)):
            self._paint_hip_bone(cv, hu, side, sx)
            self._paint_femur(cv, hu, side, sx)

    def _paint_hip_bone(self, cv, hu, side, sx):
        """Ilium (a curved plate from the sacroiliac joint to the iliac crest, with the iliacus
        muscle inside it), acetabulum, pubic and ischial rami, and the symphysis."""
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        bone_mix = 0.5 * (cortex + canc)
        body = BODY_ANY
        pel = LABEL["pelvis"]
        fh = self.fh[side]
        e1 = unit([sx * 0.45, -0.9, 0.0])
        e2 = np.array([sx * 0.28, 0.0, 1.0])
        e2 = unit(e2 - np.dot(e2, e1) * e1)
        n = np.cross(e1, e2)
        if n[0] * sx > 0:
            n = -n
        frame = np.stack([e1, e2, n], axis=1)
        c = np.array([sx * 86.0 * self.s_w, 10.0 * self.s_d, self.z_S1 - 4.0])
        res = plate_mask(cv, c, frame, 60.0 * self.s_w, 58.0 * self.s_h, 40.0, kappa=0.003)
        if res is not None:
            key, m, w = res
            cv.paint(
                key,
                m & (w > 4.0) & (w < 20.0),
                hu["muscle"],
                LABEL["muscle"],
                label_lut("visceral_fat", "bowel"),
            )
            cv.paint(key, m & (np.abs(w) < 4.5), cortex, pel, body)
            cv.paint(key, m & (np.abs(w) < 2.0), canc, pel, label_lut("pelvis"))
        # acetabulum: bony cup around the femoral head, open laterally and downwards
        rr = self.r_fh
        reg = cv.region(fh - rr - 11, fh + rr + 11)
        if reg is not None:
            key, X, Y, Z = reg
            dx, dy, dz = X - np.float32(fh[0]), Y - np.float32(fh[1]), Z - np.float32(fh[2])
            d = np.sqrt(dx * dx + dy * dy + dz * dz)
            cup = (-sx * 0.55 * dx + 0.83 * dz) > -0.35 * d
            cv.paint(key, (d > rr + 1.5) & (d < rr + 10.0) & cup, bone_mix, pel, body)
        # pubic rami, ischium
        sym = self.symphysis + np.array([sx * 10.0, 0.0, 0.0])
        tub = np.array([sx * 58.0 * self.s_w, 18.0, self.z_fh - 58.0])
        for p0, p1, r in (
            (fh + [-sx * 18.0, -26.0, -4.0], sym + [0.0, 0.0, 6.0], 9.0),
            (sym + [0.0, 4.0, -16.0], tub, 8.0),
            (fh + [-sx * 6.0, 24.0, -14.0], tub, 12.0),
        ):
            paint_tube(cv, np.array([p0, p1]), r, [(0.0, bone_mix, pel)], body)
        paint_ellipsoid(
            cv,
            self.symphysis + [sx * 12.0, 0.0, 0.0],
            np.array([10.0, 9.0, 22.0]),
            None,
            bone_mix,
            pel,
            body,
        )

    def _paint_femur(self, cv, hu, side, sx):
        """Femur: head, neck, greater trochanter and shaft (cortex, cancellous bone, marrow)."""
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        body = BODY_ANY
        fh, rr = self.fh[side], self.r_fh
        flab = LABEL["femur_left" if side == "L" else "femur_right"]
        neck_end = fh + np.array([sx * 40.0, 8.0, -26.0])
        troch = fh + np.array([sx * 50.0, 12.0, -20.0])
        shaft0 = fh + np.array([sx * 44.0, 8.0, -40.0])
        shaft1 = fh + np.array([sx * 26.0, 2.0, -300.0])
        paint_ellipsoid(cv, fh, np.full(3, rr), None, cortex, flab, body)
        paint_tube(cv, np.array([fh, neck_end]), 14.0, [(0.0, cortex, flab)], body)
        paint_ellipsoid(cv, troch, np.array([15.0, 20.0, 22.0]), None, cortex, flab, body)
        paint_tube(cv, np.array([shaft0, shaft1]), 14.0, [(0.0, cortex, flab)], body)
        fl = label_lut(ORGAN_NAMES[flab])
        paint_ellipsoid(cv, fh, np.full(3, rr - 2.5), None, canc, flab, fl)
        paint_tube(cv, np.array([fh, neck_end]), 10.5, [(0.0, canc, flab)], fl)
        paint_ellipsoid(cv, troch, np.array([12.0, 17.0, 19.0]), None, canc, flab, fl)
        paint_tube(
            cv, np.array([shaft0 + [0, 0, -20.0], shaft1]), 8.0, [(0.0, hu["marrow"], flab)], fl
        )
