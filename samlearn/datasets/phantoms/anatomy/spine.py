"""The spine of the torso phantom: vertebral levels C4 to L5, the curvature of the column, the
sacrum's shape, and the painting of the vertebrae, discs and spinal canal."""

from __future__ import annotations

import numpy as np

from ..shapes import paint_cylinder, paint_tube
from ..tables import BODY_ANY, LABEL, label_lut

__all__ = ["CERVICAL", "THORACIC", "LUMBAR", "SpineMixin"]

#: Vertebrae of the phantom, top to bottom.
CERVICAL = ["C4", "C5", "C6", "C7"]
THORACIC = [f"T{i}" for i in range(1, 13)]
LUMBAR = [f"L{i}" for i in range(1, 6)]


class SpineMixin:
    """Spine of :class:`~samlearn.datasets.phantoms.anatomy.Torso`.

    Sets ``levels`` (vertebra name -> (top z, bottom z) of its body), ``order`` (C4 to L5),
    ``z_S1`` (top of the sacrum), ``vrx`` / ``vry`` (lateral and antero-posterior radii of the
    vertebral bodies) and the curvature of the column (kyphosis, lordosis and a mild scoliosis).
    """

    def _build_spine(self, N, s_bone):
        """Vertebral heights, discs, body radii and the column's curvature. ``N(s)`` draws a
        clipped normal deviation of scale ``s``; ``s_bone`` scales the bones."""
        s_h = self.s_h
        heights, discs = {}, {}
        for n in CERVICAL:
            heights[n], discs[n] = 13.5, 5.0
        for i, n in enumerate(THORACIC):
            heights[n], discs[n] = 16.5 + 0.6 * i, 3.6 + 0.22 * i
        for n, h, d in zip(LUMBAR, (25.0, 26.0, 27.0, 27.0, 26.0), (8.5, 9.5, 10.0, 10.5, 11.0)):
            heights[n], discs[n] = h, d
        lv = {}
        z = 0.0
        for n in THORACIC + LUMBAR:
            h = heights[n] * s_h * (1.0 + N(0.03))
            lv[n] = (z, z - h)
            z = z - h - discs[n] * s_h
        self.z_S1 = z
        z = discs["C7"] * s_h
        for n in reversed(CERVICAL):
            h = heights[n] * s_h * (1.0 + N(0.03))
            lv[n] = (z + h, z)
            z = z + h + discs[n] * s_h
        self.levels = lv
        self.order = CERVICAL + THORACIC + LUMBAR
        # vertebral body radii (lateral rx, antero-posterior ry)
        rx = np.concatenate(
            [np.full(4, 10.5), np.linspace(13.0, 20.0, 12), np.linspace(22.0, 25.0, 5)]
        )
        ry = np.concatenate(
            [np.full(4, 8.0), np.linspace(10.0, 15.5, 12), np.linspace(16.5, 18.5, 5)]
        )
        self.vrx = dict(zip(self.order, rx * s_bone))
        self.vry = dict(zip(self.order, ry * s_bone))
        # antero-posterior position of the body centres (kyphosis / lordosis)
        nodes = {
            "C4": 12,
            "C7": 28,
            "T1": 36,
            "T3": 48,
            "T6": 56,
            "T9": 54,
            "T12": 44,
            "L2": 30,
            "L4": 24,
            "L5": 28,
        }
        kyph = 1.0 + N(0.2)
        zs, ys = [], []
        for n, y in nodes.items():
            zs.append(self.zmid(n))
            ys.append(40.0 + (y - 40.0) * kyph * self.s_d + N(2.0))
        o = np.argsort(zs)
        self._spine_nodes = (np.asarray(zs)[o], np.asarray(ys)[o])
        self.scol_amp, self.scol_phase = N(3.0), float(N(1.0) * 100.0)
        self.s_bone = s_bone

    def zmid(self, name):
        """Mid-height z of a vertebral body.

        Parameters
        ----------
        name : str
            Vertebra ("C4" to "L5").

        Returns
        -------
        z : float
        """
        t, b = self.levels[name]
        return 0.5 * (t + b)

    def spine_y(self, z):
        """Antero-posterior position of the vertebral body centres at height ``z``.

        Parameters
        ----------
        z : float or ndarray

        Returns
        -------
        y : float or ndarray
        """
        zs, ys = self._spine_nodes
        return np.interp(z, zs, ys)

    def spine_x(self, z):
        """Lateral position of the vertebral body centres (scoliosis) at height ``z``.

        Parameters
        ----------
        z : float or ndarray

        Returns
        -------
        x : float or ndarray
        """
        return self.scol_amp * np.sin(2 * np.pi * (np.asarray(z) - self.scol_phase) / 420.0)

    def vert_r(self, z):
        """Radii of the vertebral bodies at height ``z``.

        Parameters
        ----------
        z : float or ndarray

        Returns
        -------
        rx, ry : float or ndarray
            Lateral and antero-posterior radii (mm).
        """
        zs = [self.zmid(n) for n in reversed(self.order)]
        return (
            np.interp(z, zs, [self.vrx[n] for n in reversed(self.order)]),
            np.interp(z, zs, [self.vry[n] for n in reversed(self.order)]),
        )

    def y_front_of_spine(self, z, off):
        """Antero-posterior position ``off`` mm in front of the vertebral bodies at height ``z``.

        Parameters
        ----------
        z : float
        off : float

        Returns
        -------
        y : float
        """
        return float(self.spine_y(z)) - float(self.vert_r(z)[1]) - off

    def sac_y(self, s):
        """Antero-posterior position of the sacrum's axis.

        Parameters
        ----------
        s : float or ndarray
            Position down the sacrum: 0 at S1, 1 at the tip of the coccyx.

        Returns
        -------
        y : float or ndarray
        """
        y0 = float(self.spine_y(self.zmid("L5"))) + 10.0
        return y0 + 52.0 * self.s_d * np.clip(s, 0, None) ** 1.4

    def sac_t(self, s):
        """Antero-posterior half-thickness of the sacrum.

        Parameters
        ----------
        s : float or ndarray
            Position down the sacrum (see :meth:`sac_y`).

        Returns
        -------
        t : float or ndarray
        """
        return 19.0 - 11.0 * np.clip(s, 0, 1)

    def sac_w(self, s):
        """Half-width of the sacrum.

        Parameters
        ----------
        s : float or ndarray
            Position down the sacrum (see :meth:`sac_y`).

        Returns
        -------
        w : float or ndarray
        """
        return (50.0 - 37.0 * np.clip(s, 0, 1)) * self.s_w

    # ------------------------------------------------------------------ painting
    def _paint_spine(self, cv, hu):
        """Every vertebra from C4 to L5 (disc below, body, neural arch), then the spinal canal
        through the arches, down into the sacrum."""
        canal_pts = [self._paint_vertebra(cv, hu, i) for i in range(len(self.order))]
        cp = np.array([[x, y, z] for x, y, z, _ in canal_pts])
        cr = np.array([r for *_, r in canal_pts])
        cp = np.vstack([cp, [[cp[-1, 0], cp[-1, 1] + 6.0, self.z_S1 - 30.0]]])
        cr = np.append(cr, 6.0)
        paint_tube(cv, cp, cr, [(0.0, hu["csf"], LABEL["spinal_canal"])], BODY_ANY)

    def _paint_vertebra(self, cv, hu, i):
        """Vertebra ``order[i]``: the disc below it and its body (cortex around cancellous
        bone), then its neural arch. Returns the canal point (x, y, z, radius) of the level."""
        body = BODY_ANY
        names = self.order
        n = names[i]
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        zt, zb = self.levels[n]
        zm = 0.5 * (zt + zb)
        xs, ys = float(self.spine_x(zm)), float(self.spine_y(zm))
        rx, ry = self.vrx[n], self.vry[n]
        # disc below
        if i + 1 < len(names):
            zn = self.levels[names[i + 1]][0]
            rxn, ryn = 0.5 * (rx + self.vrx[names[i + 1]]), 0.5 * (ry + self.vry[names[i + 1]])
            paint_cylinder(
                cv, xs, ys, rxn, ryn, zn, zb, hu["disc"], LABEL["intervertebral_disc"], body
            )
        else:  # L5/S1 disc
            paint_cylinder(
                cv, xs, ys, rx, ry, self.z_S1, zb, hu["disc"], LABEL["intervertebral_disc"], body
            )
        paint_cylinder(cv, xs, ys, rx, ry, zb, zt, cortex, LABEL["vertebra"], body)
        paint_cylinder(
            cv,
            xs,
            ys,
            rx - 2.2,
            ry - 2.2,
            zb + 1.5,
            zt - 1.5,
            canc,
            LABEL["vertebra"],
            label_lut("vertebra"),
        )
        return self._paint_neural_arch(cv, hu, n, xs, ys, zt, zb)

    def _paint_neural_arch(self, cv, hu, n, xs, ys, zt, zb):
        """Ring around the canal, spinous and transverse processes of vertebra ``n`` whose body
        is centred at (xs, ys) between zb and zt. Returns the canal point (x, y, z, radius)."""
        body = BODY_ANY
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        zm = 0.5 * (zt + zb)
        ry = self.vry[n]
        cervical, lumbar = n.startswith("C"), n.startswith("L")
        rc = 7.5 if cervical else (9.5 if lumbar else 8.0)
        yc = ys + ry + rc - 1.0
        reg = cv.region((xs - rc - 6, yc - rc - 6, zb + 1.0), (xs + rc + 6, yc + rc + 6, zt - 1.0))
        if reg is not None:
            key, X, Y, Z = reg
            dx, dy = X - np.float32(xs), Y - np.float32(yc)
            d2 = dx * dx + dy * dy
            m = (d2 <= (rc + 5.5) ** 2) & (Z >= np.float32(zb + 1.0)) & (Z <= np.float32(zt - 1.0))
            cv.paint(key, m, 0.5 * (cortex + canc), LABEL["vertebra"], body)
        spl, drop = (20.0, 6.0) if cervical else ((30.0, 6.0) if lumbar else (32.0, 20.0))
        p0 = np.array([xs, yc + rc + 2.0, zm])
        paint_tube(
            cv,
            np.array([p0, p0 + [0.0, spl, -drop]]),
            np.array([4.5, 3.5]),
            [(0.0, 0.5 * (cortex + canc), LABEL["vertebra"])],
            body,
        )
        tl = 22.0 if cervical else (36.0 if lumbar else 28.0)
        for sx in (-1.0, 1.0):
            q0 = np.array([xs + sx * (rc + 2.0), yc - 2.0, zm])
            q1 = q0 + np.array([sx * tl, 2.0 if lumbar else 9.0, 0.0])
            paint_tube(
                cv,
                np.array([q0, q1]),
                np.array([4.5, 4.0]),
                [(0.0, 0.5 * (cortex + canc), LABEL["vertebra"])],
                body,
            )
        return xs, yc, zm, rc
