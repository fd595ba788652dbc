"""Synthetic CT-like torso phantoms (3D) and AP radiograph-like projections (2D) with exact ground
truth: named landmarks in world millimetres, organ label maps, lesion boxes and contrast phase.

Every subject is drawn from its own random stream: anatomy (body habitus, organ shape and position,
breathing), pose, scan geometry (field of view, spacing, origin, direction), contrast enhancement,
noise and lesions each come from a separate child of ``numpy.random.SeedSequence``, so the same
``random_state`` always gives identical images, and subject ``i`` does not depend on ``n_subjects``.

The anatomy is analytic: organs are ellipsoids, tubes and curved plates in a patient frame
(x to the patient's left, y posterior, z superior, millimetres: the LPS convention of SimpleITK),
painted directly on the output voxel grid through the exact world geometry. Landmarks are computed
from the same per-subject shapes (never from a template), then mapped to world coordinates.

Public functions: :func:`make_phantoms` (independent subjects) and :func:`make_phantom_pair`
(two scans of the same subjects with the exact rigid transform between them).
"""

from __future__ import annotations

import numbers
import textwrap

import numpy as np

from ..image import Image, ImageGeometry

__all__ = ["make_phantoms", "make_phantom_pair", "PHASES", "LANDMARK_NAMES", "ORGAN_NAMES"]

PHASES = ("non-contrast", "arterial", "venous")

# ----------------------------------------------------------------------------- labels
ORGAN_NAMES = {
    0: "background",
    1: "subcutaneous_fat",
    2: "visceral_fat",
    3: "muscle",
    4: "lung_left",
    5: "lung_right",
    6: "airway",
    7: "esophagus",
    8: "heart",
    9: "aorta",
    10: "pulmonary_artery",
    11: "vena_cava",
    12: "portal_vein",
    13: "other_vessel",
    14: "liver",
    15: "gallbladder",
    16: "spleen",
    17: "stomach",
    18: "pancreas",
    19: "kidney_left",
    20: "kidney_right",
    21: "bowel",
    22: "bladder",
    23: "spinal_canal",
    24: "vertebra",
    25: "intervertebral_disc",
    26: "rib",
    27: "sternum",
    28: "clavicle",
    29: "scapula",
    30: "pelvis",
    31: "femur_left",
    32: "femur_right",
    33: "lesion",
}
_L = {name: k for k, name in ORGAN_NAMES.items()}
_N_LABELS = 64

LANDMARK_NAMES = (
    "lung_apex_left",
    "lung_apex_right",
    "sternal_notch",
    "aortic_arch_top",
    "carina",
    "vertebra_T1",
    "vertebra_T6",
    "heart_apex",
    "xiphoid_tip",
    "liver_dome",
    "vertebra_T12",
    "spleen_tip",
    "kidney_left_upper_pole",
    "kidney_right_upper_pole",
    "portal_vein_bifurcation",
    "vertebra_L3",
    "aortic_bifurcation",
    "bladder_centre",
    "femoral_head_left",
    "femoral_head_right",
)

_LANDMARK_DOC = {
    "lung_apex_left": "highest point of the left lung, 3 mm below its top",
    "lung_apex_right": "highest point of the right lung, 3 mm below its top",
    "sternal_notch": "top of the manubrium in the midline, 3 mm inside the bone",
    "aortic_arch_top": "centre of the aortic lumen at the highest point of the arch",
    "carina": "tracheal bifurcation: centre of the airway lumen where the main bronchi split",
    "vertebra_T1": "centre of the T1 vertebral body",
    "vertebra_T6": "centre of the T6 vertebral body",
    "heart_apex": "tip of the heart (left ventricle), 3 mm inside the myocardium",
    "xiphoid_tip": "lower tip of the sternum (xiphoid), 3 mm inside the bone",
    "liver_dome": "top of the right hepatic dome, 4 mm below the diaphragm",
    "vertebra_T12": "centre of the T12 vertebral body",
    "spleen_tip": "lowest point (inferior tip) of the spleen, 5 mm inside it",
    "kidney_left_upper_pole": "upper pole of the left kidney, 3 mm inside it",
    "kidney_right_upper_pole": "upper pole of the right kidney, 3 mm inside it",
    "portal_vein_bifurcation": "centre of the portal vein lumen where it splits at the liver hilum",
    "vertebra_L3": "centre of the L3 vertebral body",
    "aortic_bifurcation": "centre of the aortic lumen where it divides into the iliac arteries",
    "bladder_centre": "centre of the urinary bladder",
    "femoral_head_left": "centre of the left femoral head",
    "femoral_head_right": "centre of the right femoral head",
}

# ----------------------------------------------------------------------------- intensities
# Mean Hounsfield units per tissue: (non-contrast, arterial, venous). Each subject jitters the
# baseline and scales the enhancement (bolus strength, timing inside the phase).
_TISSUE_HU = {
    "fat": (-100, -98, -95),
    "muscle": (48, 55, 62),
    "airway_wall": (30, 45, 50),
    "blood_left": (42, 300, 155),  # aorta, left heart, systemic arteries
    "blood_right": (42, 215, 150),  # right heart, pulmonary arteries
    "pulm_vein": (42, 285, 150),
    "svc": (42, 340, 150),
    "ivc": (42, 85, 140),
    "portal": (42, 120, 175),
    "hepatic_vein": (42, 52, 165),
    "liver": (58, 74, 112),
    "spleen": (48, 125, 120),
    "kidney_cortex": (32, 210, 172),
    "kidney_medulla": (32, 85, 168),
    "pancreas": (42, 118, 95),
    "myocardium": (45, 110, 100),
    "gut_wall": (42, 95, 88),
    "esophagus": (42, 80, 75),
    "fluid": (8, 8, 10),
    "bowel_fluid": (15, 15, 18),
    "stool": (25, 25, 25),
    "csf": (28, 28, 30),
    "disc": (85, 85, 88),
    "cartilage": (125, 125, 128),
    "bone_cortex": (820, 820, 820),
    "bone_cancellous": (330, 335, 340),
    "marrow": (10, 12, 15),
    "lesion_liver": (38, 52, 60),
    "lesion_lung": (32, 60, 70),
    "lung": (-850, -848, -846),
    "air": (-990, -990, -990),
}
_BASE_JITTER = {
    "fat": 8,
    "lung": 18,
    "bone_cortex": 70,
    "bone_cancellous": 30,
    "air": 5,
    "stool": 15,
    "fluid": 4,
    "bowel_fluid": 6,
}
# Tissues whose enhancement grows (+) or shrinks (-) with timing inside a phase.
_TIMING = {
    "arterial": {
        "blood_left": -0.15,
        "pulm_vein": -0.15,
        "blood_right": -0.35,
        "svc": -0.40,
        "portal": 0.3,
        "liver": 0.45,
        "spleen": 0.15,
        "kidney_medulla": 0.5,
        "hepatic_vein": 0.6,
        "ivc": 0.5,
        "pancreas": -0.1,
    },
    "venous": {
        "blood_left": -0.15,
        "pulm_vein": -0.15,
        "blood_right": -0.25,
        "svc": -0.25,
        "liver": 0.25,
        "portal": -0.15,
        "hepatic_vein": 0.1,
        "kidney_cortex": -0.1,
    },
}

_MU_WATER = 0.02  # linear attenuation of water at ~70 keV, 1/mm (for the 2D projection)
_MAX_VOXELS = 64_000_000  # largest painted grid (memory guard)


# ============================================================================= small maths
def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rot(axis, deg):
    """Rotation matrix about a coordinate axis (0=x, 1=y, 2=z) by ``deg`` degrees."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _frame(u, hint=(0.0, 0.0, 1.0)):
    """Orthonormal frame (columns u, v, w) whose first axis is ``u``."""
    u = _unit(u)
    h = np.asarray(hint, dtype=np.float64)
    if abs(np.dot(u, _unit(h))) > 0.95:
        h = np.array([1.0, 0.0, 0.0])
    v = _unit(np.cross(h, u))
    w = np.cross(u, v)
    return np.stack([u, v, w], axis=1)


def _spline(points, step=4.0):
    """Dense points along a Catmull-Rom spline through control points (n, 3), ~``step`` mm apart.
    Returns the dense points and, for each, the fractional position along the control polygon."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 2:
        return p, np.zeros(len(p))
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    n = np.maximum(2, np.ceil(np.linalg.norm(np.diff(p, axis=0), axis=1) / step).astype(int))
    seg = np.repeat(np.arange(len(p) - 1), n)
    t = ((np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n))[:, None]
    p0, p1, p2, p3 = ext[seg], ext[seg + 1], ext[seg + 2], ext[seg + 3]
    out = 0.5 * (
        (2 * p1)
        + (-p0 + p2) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )
    return np.vstack([out, p[-1:]]), np.concatenate([seg + t[:, 0], [len(p) - 1.0]])


def _lut(*names):
    lut = np.zeros(_N_LABELS, dtype=bool)
    for n in names:
        lut[_L[n]] = True
    return lut


_SOFT = _lut("visceral_fat", "muscle", "subcutaneous_fat")
# Cross-sections are q = u^2 + v^2 - c min(u^2, 1) min(v^2, 1) <= 1 (u = x/a, v = y/b): ellipses
# in front (c = 0), squarer behind (c > 0), like the flat back and the deep posterolateral gutters.
_SQUARE = np.array([0.0, 0.55], dtype=np.float32)
_CORNERS_PM = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
_CORNERS = np.array([[a, b, c] for a in (0.0, 1.0) for b in (0.0, 1.0) for c in (0.0, 1.0)])
_BODY_ANY = ~_lut("background")


# ============================================================================= canvases
class _Canvas:
    """Target of the painting: either a voxel grid (an image) or a list of points (exact label
    queries). Coordinates are in the patient frame (mm). Painting functions only use ``region``,
    ``paint``, ``labels`` and the per-z lookup ``ztab``."""

    def __init__(self, X, Y, Z, grid, z0, inv_dz, nz_tab):
        self.X, self.Y, self.Z = X, Y, Z
        self.grid = grid
        self.hu = np.full(X.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(X.shape, dtype=np.uint8)
        zi = (Z - np.float32(z0)) * np.float32(inv_dz)
        np.clip(zi, 0, nz_tab - 1, out=zi)
        self.ZI = zi.astype(np.int32)
        self.cavity = None  # bool array, filled by the body painter
        self.ZI2 = None  # 2 * ZI + (Y > 0), for front/back tables

    # -- construction
    @classmethod
    def for_grid(cls, geometry: ImageGeometry, pose_R, pose_t, z0, inv_dz, nz_tab):
        D = geometry.direction
        A = pose_R.T @ D @ np.diag(geometry.spacing)  # anat = A @ (i, j, k) + b
        b = pose_R.T @ (geometry.origin - pose_t)
        nx, ny, nz = geometry.size
        i = np.arange(nx, dtype=np.float32)[None, None, :]
        j = np.arange(ny, dtype=np.float32)[None, :, None]
        k = np.arange(nz, dtype=np.float32)[:, None, None]
        coords = []
        for r in range(3):
            plane = np.float32(A[r, 0]) * i + np.float32(A[r, 1]) * j  # (1, ny, nx)
            c = np.empty((nz, ny, nx), np.float32)
            np.add(plane, np.float32(A[r, 2]) * k + np.float32(b[r]), out=c)
            coords.append(c)
        cv = cls(*coords, grid=True, z0=z0, inv_dz=inv_dz, nz_tab=nz_tab)
        cv.A, cv.b, cv.Ainv, cv.size = A, b, np.linalg.inv(A), np.asarray(geometry.size)
        cv.absAinv = np.abs(cv.Ainv)
        return cv

    @classmethod
    def for_points(cls, pts, z0, inv_dz, nz_tab):
        pts = np.asarray(pts, dtype=np.float32)
        return cls(
            pts[:, 0].copy(),
            pts[:, 1].copy(),
            pts[:, 2].copy(),
            grid=False,
            z0=z0,
            inv_dz=inv_dz,
            nz_tab=nz_tab,
        )

    # -- access
    def region(self, lo, hi):
        """Sub-domain covering the patient-frame box [lo, hi]: (key, X, Y, Z) or None."""
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        if self.grid:
            c = self.Ainv @ (0.5 * (lo + hi) - self.b)
            h = self.absAinv @ (0.5 * (hi - lo))
            i0 = np.maximum(np.floor(c - h).astype(int), 0)
            i1 = np.minimum(np.ceil(c + h).astype(int) + 1, self.size)
            if (i1 <= i0).any():
                return None
            key = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
            return key, self.X[key], self.Y[key], self.Z[key]
        sel = (
            (self.X >= lo[0])
            & (self.X <= hi[0])
            & (self.Y >= lo[1])
            & (self.Y <= hi[1])
            & (self.Z >= lo[2])
            & (self.Z <= hi[2])
        )
        key = np.flatnonzero(sel)
        if key.size == 0:
            return None
        return key, self.X[key], self.Y[key], self.Z[key]

    def chunks(self, reg, voxels=600_000):
        """Split a grid region into slabs of a few slices (so that the many passes a painter
        makes stay in cache); a point region is returned whole."""
        if reg is None:
            return
        key = reg[0]
        if not self.grid:
            yield reg
            return
        kz, ky, kx = key
        per_slice = max(1, (ky.stop - ky.start) * (kx.stop - kx.start))
        step = max(1, voxels // per_slice)
        for k0 in range(kz.start, kz.stop, step):
            sub = (slice(k0, min(k0 + step, kz.stop)), ky, kx)
            yield sub, self.X[sub], self.Y[sub], self.Z[sub]

    def full(self):
        if self.grid:
            key = (slice(None),) * 3
        else:
            key = np.arange(self.X.size)
        return key, self.X, self.Y, self.Z

    def labels(self, key):
        return self.lab[key]

    def ztab(self, table, key):
        return table[self.ZI[key]]

    def splat(self, pts, value, allowed, thick=False):
        """Set ``value`` at the voxels nearest to many patient-frame points (thin vessels; with
        ``thick`` also their 6 face neighbours); only on grids, where labels are kept (a no-op on
        point canvases)."""
        if not self.grid or len(pts) == 0:
            return
        idx = np.rint((np.asarray(pts) - self.b) @ self.Ainv.T).astype(np.int64)
        if thick:
            off = np.vstack([np.zeros(3, int), np.eye(3, dtype=int), -np.eye(3, dtype=int)])
            idx = (idx[:, None, :] + off[None]).reshape(-1, 3)
        ok = np.all((idx >= 0) & (idx < self.size), axis=1)
        i, j, k = idx[ok].T
        sel = allowed[self.lab[k, j, i]]
        self.hu[k[sel], j[sel], i[sel]] = value

    def paint_at(self, key, idx, value, label, allowed=None):
        """Like :meth:`paint`, for the voxels ``idx`` (a tuple of index arrays, as returned by
        ``np.nonzero``) of the region ``key``: cheap when they are few in a large region."""
        if self.grid:
            lab, hu = self.lab[key], self.hu[key]
            if allowed is not None:
                ok = allowed[lab[idx]]
                idx = tuple(a[ok] for a in idx)
            hu[idx] = value
            lab[idx] = label
        else:
            sel = key[idx[0]]
            if allowed is not None:
                sel = sel[allowed[self.lab[sel]]]
            self.hu[sel] = value
            self.lab[sel] = label

    def paint(self, key, mask, value, label, allowed=None):
        """Set ``value`` (scalar or array shaped like the region) and ``label`` where ``mask``;
        ``allowed`` (a boolean LUT over labels) restricts painting to those current labels;
        ``label=None`` keeps the current labels (e.g. vessels inside the lungs)."""
        lab = self.lab[key]
        if allowed is not None:
            mask = mask & allowed[lab]
        if self.grid:
            hu = self.hu[key]
            hu[mask] = value[mask] if np.ndim(value) else value
            if label is not None:
                lab[mask] = label
        else:
            sel = key[mask]
            self.hu[sel] = value[mask] if np.ndim(value) else value
            if label is not None:
                self.lab[sel] = label


# ============================================================================= primitives
def _ellipsoid_mask(cv, c, semi, R=None, margin=0.0, scale=1.0, region=None):
    """(key, mask, q) for the ellipsoid {(p-c)^T R diag(semi)^-2 R^T (p-c) <= 1}; q = that form."""
    c = np.asarray(c, dtype=np.float64)
    semi = np.asarray(semi, dtype=np.float64) * scale + margin
    R = np.eye(3) if R is None else np.asarray(R)
    half = np.sqrt(((R * semi[None, :]) ** 2).sum(1))
    reg = region if region is not None else cv.region(c - half, c + half)
    if reg is None:
        return None
    key, X, Y, Z = reg
    dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    q = None
    for j in range(3):
        u = (
            np.float32(R[0, j] / semi[j]) * dx
            + np.float32(R[1, j] / semi[j]) * dy
            + np.float32(R[2, j] / semi[j]) * dz
        )
        q = u * u if q is None else q + u * u
    return key, q <= 1.0, q


def _paint_ellipsoid(cv, c, semi, R, value, label, allowed=None, margin=0.0, extra=None):
    r = _ellipsoid_mask(cv, c, semi, R, margin=margin)
    if r is None:
        return
    key, m, _ = r
    if extra is not None:
        m &= extra(key)
    cv.paint(key, m, value, label, allowed)


def _capsule_dist(cv, p0, p1, r0, r1, pad=0.0):
    """Squared distance to the segment p0-p1 and the interpolated radius there, over the box of the
    capsule grown by ``pad``: (key, dist2, radius, region) or None."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    rmax = max(r0, r1) + pad
    reg = cv.region(np.minimum(p0, p1) - rmax, np.maximum(p0, p1) + rmax)
    if reg is None:
        return None
    key, X, Y, Z = reg
    d = p1 - p0
    L2 = float(d @ d)
    dx, dy, dz = X - np.float32(p0[0]), Y - np.float32(p0[1]), Z - np.float32(p0[2])
    if L2 < 1e-9:
        t = np.zeros_like(dx)
    else:
        t = dx * np.float32(d[0] / L2)
        t += dy * np.float32(d[1] / L2)
        t += dz * np.float32(d[2] / L2)
        np.clip(t, 0.0, 1.0, out=t)
    dx -= np.float32(d[0]) * t
    dy -= np.float32(d[1]) * t
    dz -= np.float32(d[2]) * t
    dx *= dx
    dy *= dy
    dz *= dz
    dx += dy
    dx += dz
    r = np.float32(r1 - r0) * t
    r += np.float32(r0)
    return key, dx, r, reg


def _capsule_mask(cv, p0, p1, r0, r1):
    res = _capsule_dist(cv, p0, p1, r0, r1)
    if res is None:
        return None
    key, d2, r, _ = res
    return key, d2 <= r * r


def _resample_polyline(pts, radii, step):
    """Resample a polyline (and radii) at about ``step`` mm along its length."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(t, s, pts[:, k]) for k in range(3)], axis=1)
    return out, np.interp(t, s, radii)


def _paint_tube(cv, pts, radii, layers, allowed=None):
    """Paint a tube along a polyline (see :func:`_paint_tubes`)."""
    _paint_tubes(cv, [(pts, radii)], layers, allowed)


def _paint_tubes(cv, tubes, layers, allowed=None):
    """Paint tubes along polylines ``[(points (n, 3), radii), ...]``. ``layers``: list of
    (radius_offset_mm, value, label[, allowed]), each painted over all the tubes before the next
    (walls first, then lumens), so joints and branchings stay clean. A value may be a callable
    f(X, Y, Z) -> array (e.g. mottled bowel content)."""
    pad = max(0.0, max(layer[0] for layer in layers))
    segs = []
    for pts, radii in tubes:
        pts = np.asarray(pts, dtype=np.float64)
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),)).copy()
        rmax = float(radii.max()) + pad
        if cv.region(pts.min(0) - rmax, pts.max(0) + rmax) is None:  # whole tube off the canvas
            continue
        if len(pts) > 2:
            step = float(np.clip(1.8 * np.median(radii), 10.0, 24.0))
            pts, radii = _resample_polyline(pts, radii, step)
        for i in range(len(pts) - 1):
            res = _capsule_dist(cv, pts[i], pts[i + 1], radii[i], radii[i + 1], pad)
            if res is not None:
                segs.append(res)
    for layer in layers:
        off, value, label = layer[:3]
        ok = layer[3] if len(layer) > 3 else allowed
        for key, d2, r, reg in segs:
            rr = np.maximum(r + np.float32(off), np.float32(0.2))
            cv.paint(key, d2 <= rr * rr, value(*reg[1:]) if callable(value) else value, label, ok)


def _plate_mask(cv, c, frame, a, b, thick, kappa=0.0, taper=0.0):
    """Curved plate: in-plane semi-axes a (along frame[:,0]) and b (frame[:,1]), thickness
    ``thick`` along frame[:,2], bent by w -> w - kappa (u^2 + v^2); ``taper`` narrows the plate
    towards v = -b (triangle-like, for scapulae)."""
    c = np.asarray(c, dtype=np.float64)
    bend = kappa * max(a, b) ** 2
    half = np.abs(frame) @ np.array([a, b, thick / 2 + bend])
    reg = cv.region(c - half, c + half)
    if reg is None:
        return None
    key, X, Y, Z = reg
    dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    u = np.float32(frame[0, 0]) * dx + np.float32(frame[1, 0]) * dy + np.float32(frame[2, 0]) * dz
    v = np.float32(frame[0, 1]) * dx + np.float32(frame[1, 1]) * dy + np.float32(frame[2, 1]) * dz
    w = np.float32(frame[0, 2]) * dx + np.float32(frame[1, 2]) * dy + np.float32(frame[2, 2]) * dz
    if kappa:
        w = w - np.float32(kappa) * (u * u + v * v)
    aa = np.float32(a) * (1.0 - np.float32(taper) * (0.5 - 0.5 * v / np.float32(b))) if taper else a
    inside = (u / aa) ** 2 + (v / np.float32(b)) ** 2 <= 1.0
    return key, inside, w


# ============================================================================= one subject
_THORACIC = [f"T{i}" for i in range(1, 13)]
_LUMBAR = [f"L{i}" for i in range(1, 6)]
_CERVICAL = ["C4", "C5", "C6", "C7"]
_Z_STEP = 1.0  # resolution of the per-z lookup tables (mm)


class _Torso:
    """Analytic anatomy of one subject in the patient frame (x left, y posterior, z superior, mm;
    z = 0 at the top of the T1 vertebral body). All shapes are drawn from ``rng``; ``variation``
    scales every deviation from the average subject (0: all subjects identical)."""

    def __init__(self, rng: np.random.Generator, variation: float = 1.0):
        v = float(variation)

        def N(s=1.0):
            return v * s * float(np.clip(rng.standard_normal(), -2.5, 2.5))

        def U(lo, hi):  # symmetric variation around the midpoint, scaled by ``variation``
            mid = 0.5 * (lo + hi)
            return mid + v * (float(rng.uniform(lo, hi)) - mid)

        self.s_h = 1.0 + N(0.045)  # length (height) scale
        self.s_w = 1.0 + N(0.05)  # width scale
        self.s_d = 1.0 + N(0.06)  # depth scale
        s_bone = 1.0 + N(0.05)
        self.fat0 = float(np.clip(14.0 + N(7.0), 3.0, 40.0))
        self.breath = U(-16.0, 16.0)  # diaphragm shift, mm (+ = expiration, higher)
        self._build_spine(N, s_bone)
        self._build_body(N)
        self._build_thorax(N, U)
        self._build_abdomen(N, U)
        self._build_vessels(N, U, rng)
        self._build_pelvis(N, s_bone)
        self._build_bowel(N, U, rng)
        self._build_lung_trees(rng)

    # ------------------------------------------------------------------ spine and levels
    def _build_spine(self, N, s_bone):
        s_h = self.s_h
        heights, discs = {}, {}
        for n in _CERVICAL:
            heights[n], discs[n] = 13.5, 5.0
        for i, n in enumerate(_THORACIC):
            heights[n], discs[n] = 16.5 + 0.6 * i, 3.6 + 0.22 * i
        for n, h, d in zip(_LUMBAR, (25.0, 26.0, 27.0, 27.0, 26.0), (8.5, 9.5, 10.0, 10.5, 11.0)):
            heights[n], discs[n] = h, d
        lv = {}
        z = 0.0
        for n in _THORACIC + _LUMBAR:
            h = heights[n] * s_h * (1.0 + N(0.03))
            lv[n] = (z, z - h)
            z = z - h - discs[n] * s_h
        self.z_S1 = z
        z = discs["C7"] * s_h
        for n in reversed(_CERVICAL):
            h = heights[n] * s_h * (1.0 + N(0.03))
            lv[n] = (z + h, z)
            z = z + h + discs[n] * s_h
        self.levels = lv
        self.order = _CERVICAL + _THORACIC + _LUMBAR
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
        t, b = self.levels[name]
        return 0.5 * (t + b)

    def spine_y(self, z):
        zs, ys = self._spine_nodes
        return np.interp(z, zs, ys)

    def spine_x(self, z):
        return self.scol_amp * np.sin(2 * np.pi * (np.asarray(z) - self.scol_phase) / 420.0)

    def vert_r(self, z):
        zs = [self.zmid(n) for n in reversed(self.order)]
        return (
            np.interp(z, zs, [self.vrx[n] for n in reversed(self.order)]),
            np.interp(z, zs, [self.vry[n] for n in reversed(self.order)]),
        )

    # ------------------------------------------------------------------ body outline tables
    def _build_body(self, N):
        s_w, s_d, s_h = self.s_w, self.s_d, self.s_h
        # pelvis landmarks needed by the outline
        self.sac_len = 108.0 * s_h
        self.z_fh = self.z_S1 - 92.0 * s_h + N(4.0)
        self.z_top = self.zmid("C4") + 25.0
        self.z_lo = self.z_fh - 420.0
        self.z_hi = self.z_top + 300.0
        zt = np.arange(self.z_lo, self.z_hi + _Z_STEP, _Z_STEP)
        self.zt = zt
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
        # subcutaneous fat
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
        # muscle wall thickness -> cavity
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
        # posterior cavity boundary: in front of the spine/sacrum, lungs reach beside the spine
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
        ys, rys = self.spine_y(zt), self.vert_r(zt)[1]
        bp_cav = ys + np.interp(zt, np.asarray(pz)[o], np.asarray(pp)[o]) - rys * 0.0
        sac = zt < self.z_S1
        s = np.clip((self.z_S1 - zt) / self.sac_len, 0, 1.2)
        y_sac_front = self.sac_y(s) - self.sac_t(s)
        bp_cav[sac] = y_sac_front[sac] + 3.0
        bp_cav = np.minimum(bp_cav, bp_lean - 12.0)
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
        self.t_spine_y = ys.astype(np.float32)
        self.t_spine_x = self.spine_x(zt).astype(np.float32)

    def sac_y(self, s):
        y0 = float(self.spine_y(self.zmid("L5"))) + 10.0
        return y0 + 52.0 * self.s_d * np.clip(s, 0, None) ** 1.4

    def sac_t(self, s):
        return 19.0 - 11.0 * np.clip(s, 0, 1)

    def sac_w(self, s):
        return (50.0 - 37.0 * np.clip(s, 0, 1)) * self.s_w

    def tab(self, arr, z):
        """Evaluate a per-z table at scalar/array z (for building, not per voxel)."""
        return np.interp(z, self.zt, arr)

    # ------------------------------------------------------------------ thorax
    def _build_thorax(self, N, U):
        s_w, s_d, s_h = self.s_w, self.s_d, self.s_h
        # diaphragm domes
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
        # lungs
        za = 10.0 * s_h + N(5.0)
        self.apex = {
            "R": (-40.0 * s_w + N(3.0), 8.0 * s_d + N(3.0), za),
            "L": (40.0 * s_w + N(3.0), 8.0 * s_d + N(3.0), za - 2.0 + N(4.0)),
        }
        self.apex_k = 1.0 / (2 * 90.0 * (1 + N(0.1)))
        self.lung_grad = 60.0 + N(15.0)
        # airway
        self.z_car = self.zmid("T5") - 4.0 + N(6.0) + 0.3 * self.breath
        x_car = -2.0 + N(2.0)
        y_car = float(self.spine_y(self.z_car)) - self.vert_r(self.z_car)[1] - 19.0 * s_d + N(2.0)
        self.carina = np.array([x_car, y_car, self.z_car])
        # mediastinum (between the lungs)
        mz = [self.z_lo, self.z_dR - 30, self.z_car - 40, self.z_car, self.z_car + 40, self.z_hi]
        mx = [6, 6, 4, 0, 0, 0]
        mw = [13, 13, 16, 20, 24, 17]
        self.t_med_x = np.interp(self.zt, mz, mx).astype(np.float32)
        self.t_med_w = (np.interp(self.zt, mz, mw) * (1 + N(0.1))).astype(np.float32)
        # heart: ellipsoid on the central diaphragm, long axis to the apex (left, anterior, down)
        hs = 1.0 + N(0.08)
        xh, yh = 16.0 * s_w + N(4.0), -20.0 * s_d + N(4.0)
        z_dc = float(self.dia(np.array([xh]), np.array([yh]))[0])
        self.heart_c = np.array([xh, yh, z_dc + 47.0 * hs])
        u = _unit([0.62 + N(0.08), -0.52 + N(0.08), -0.58 + N(0.08)])
        self.heart_R = _frame(u, hint=(0.0, 0.0, 1.0))
        self.heart_semi = np.array([60.0, 47.0, 42.0]) * hs
        self.hs = hs
        # sternum
        self.z_notch = self.levels["T2"][0] - 4.0 + N(5.0)
        self.z_xiph = self.levels["T10"][0] + N(8.0)
        self.z_angle = self.z_notch - 48.0 * s_h

    def dia(self, X, Y):
        """Height of the diaphragm surface (mm) above (X, Y)."""
        out = None
        for xc, yc, zt in self.domes:
            dx = X - np.float32(xc)
            dy = Y - np.float32(yc)
            k = np.where(dy > 0, np.float32(self.dia_kp), np.float32(self.dia_ka))
            z = np.float32(zt) - dx * dx * np.float32(self.dia_kx) - dy * dy * k
            out = z if out is None else np.maximum(out, z)
        return np.maximum(out, np.float32(self.dia_floor))

    # ------------------------------------------------------------------ abdomen
    def _build_abdomen(self, N, U):
        s_w, s_d = self.s_w, self.s_d
        br = self.breath
        # liver: right lobe + left lobe ellipsoids, cut by the diaphragm and the cavity
        ls = 1.0 + N(0.08)
        self.liver_ls = ls
        self.liver_rl = (
            np.array([-55.0 * s_w + N(5), 8.0 * s_d + N(5), self.z_dR - 58.0 * ls]),
            np.array([92.0, 98.0, 100.0]) * ls,
        )
        self.liver_ll = (
            np.array([28.0 * s_w + N(6), -48.0 * s_d + N(4), self.z_dR - 42.0 + N(5)]),
            np.array([50.0, 34.0, 44.0]) * (1 + N(0.12)),
            _rot(1, -15 + N(6)),
        )
        # spleen
        u = _unit([0.2 + N(0.1), -0.75 + N(0.1), -0.63])
        zs = (
            self.z_dL - 48.0 + N(6)
        )  # spleen centre: posterolateral, inside the cavity at its level
        a_c, bp_c = float(self.tab(self.t_a_cav, zs)), float(self.tab(self.t_bp_cav, zs))
        self.spleen = (
            np.array([0.66 * a_c + N(4), 0.5 * bp_c + N(4), zs]),
            np.array([58.0, 44.0, 23.0]) * (1 + N(0.12)),
            _frame(u, hint=(1.0, 0.0, 0.0)),
        )
        # stomach (fundus, body, antrum) with an air-fluid level (air anterior: patient supine)
        gs = 1.0 + N(0.12)
        zL = self.z_dL
        self.stomach = [
            (
                np.array([55.0 * s_w, -5.0, zL - 42.0]),
                np.array([40.0, 35.0, 42.0]) * gs,
                _rot(2, 0),
            ),
            (
                np.array([42.0 * s_w, -35.0 * s_d, zL - 88.0]),
                np.array([38.0, 28.0, 46.0]) * gs,
                _rot(2, 30) @ _rot(0, 20),
            ),
            (
                np.array([8.0, -58.0 * s_d, zL - 118.0]),
                np.array([30.0, 22.0, 26.0]) * gs,
                _rot(2, -20),
            ),
        ]
        self.stomach_air = U(0.15, 0.45)
        # kidneys: tilted ellipsoids (upper pole medial and posterior)
        ks = 1.0 + N(0.07)
        zk = self.levels["L2"][0] + 8.0 + 0.5 * br
        self.kidneys = {}
        for side, sx, dz in (("L", 1.0, 8.0 + N(6)), ("R", -1.0, -4.0 + N(6))):
            c = np.array([sx * (68.0 * s_w + N(4)), 40.0 * s_d + N(4), zk + dz])
            u = _unit([-sx * (0.25 + N(0.08)), 0.3 + N(0.08), 1.0])
            R = _frame(u, hint=(sx, -1.0, 0.0))
            semi = np.array([52.0, 27.0, 22.0]) * ks * (1 + N(0.05))
            # keep the whole kidney at least 12 mm below the diaphragm (posterior recess)
            top = c[2] + np.sqrt(((R * semi[None, :]) ** 2).sum(1))[2]
            z_dia = float(self.dia(np.array([c[0]]), np.array([c[1]]))[0])
            c[2] -= max(0.0, top - (z_dia - 12.0))
            self.kidneys[side] = (c, semi, R)
        # portal venous system, pancreas
        lc = self.liver_rl[0]
        self.porta = lc + np.array([22.0 + N(4), -12.0 + N(4), -14.0 + N(5)])
        zc = self.zmid("L1") - 4.0 + 0.4 * br
        y_ao = float(self.spine_y(zc)) - self.vert_r(zc)[1] - 13.0
        self.confluence = np.array([4.0 + N(3), y_ao - 26.0 + N(3), zc + N(4)])
        # gallbladder under the liver
        self.gallbladder = (
            lc + np.array([10.0 + N(5), -60.0 * s_d + N(5), -58.0 * ls + N(6)]),
            np.array([32.0, 15.0, 14.0]) * (1 + N(0.15)),
            _frame([0.2, -0.5, -0.85], hint=(1.0, 0.0, 0.0)),
        )
        # bladder
        fill = U(0.45, 1.6)
        bs = fill ** (1 / 3)
        self.bladder = (
            np.array([N(4), -50.0 * s_d + N(4), self.z_fh - 8.0 + 26.0 * bs]),
            np.array([42.0, 33.0, 30.0]) * bs,
        )

    # ------------------------------------------------------------------ vessels and airways
    def _build_vessels(self, N, U, rng):
        s_w, s_d = self.s_w, self.s_d
        zc = self.z_car
        car = self.carina
        y_tr = car[1]
        ao_s = 1.0 + N(0.1)
        self.ao_s = ao_s

        def y_front(z, off):  # just in front of the vertebral bodies
            return float(self.spine_y(z)) - float(self.vert_r(z)[1]) - off

        # aorta: root (heart base) -> ascending -> arch -> descending -> abdominal -> bifurcation
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
        pts, pos = _spline(np.array(ctrl), step=5.0)
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
        # supra-aortic branches
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
        # iliac arteries and veins
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
            self.iliac_a.append(_spline(p, 5.0)[0])
            self.iliac_v.append(_spline(p + np.array([-sx * 4.0, 10.0, -6.0]), 5.0)[0])
        # veins: SVC (+ left brachiocephalic), IVC
        ra_c = self.chamber("RA")[0]
        self.svc = _spline(
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
        self.bcv = _spline(
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
        self.ivc = _spline(np.array(ivc), 5.0)[0]
        self.ivc_conf = self.ivc[-1]
        # pulmonary arteries and veins
        pv = root + np.array([18.0, -16.0, 14.0])
        bif = np.array([car[0] + 10.0, y_tr - 14.0, zc - 14.0])
        self.pa_trunk = _spline(
            np.array([hc - 0.15 * hsemi[0] * hR[:, 0] + np.array([-6.0, -22.0, 6.0]), pv, bif]), 5.0
        )[0]
        self.hilum = {
            "L": np.array([58.0 * s_w, y_tr + 8.0, zc - 12.0]),
            "R": np.array([-56.0 * s_w, y_tr + 2.0, zc - 24.0]),
        }
        self.lpa = _spline(np.array([bif, [30.0, y_tr + 2.0, zc - 2.0], self.hilum["L"]]), 5.0)[0]
        self.rpa = _spline(np.array([bif, [-20.0, y_tr - 6.0, zc - 16.0], self.hilum["R"]]), 5.0)[0]
        la_c = self.chamber("LA")[0]
        self.pulm_veins = []
        for side, sx in (("L", 1.0), ("R", -1.0)):
            for dz in (12.0, -22.0):
                tip = np.array([sx * 62.0 * s_w, la_c[1] + 6.0, la_c[2] + dz])
                self.pulm_veins.append(
                    np.array([la_c, la_c + np.array([sx * 25.0, 4.0, dz * 0.6]), tip])
                )
        # airways: trachea + main, lobar bronchi (lumen radius)
        tr_top = np.array([0.0, y_front(self.z_top, 20.0), self.z_top + 40.0])
        self.trachea = _spline(
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
        # esophagus
        gej = self.stomach[0][0] + np.array([-30.0, -4.0, 16.0])
        self.esophagus = _spline(
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

    def chamber(self, name):
        """(centre, semi-axes, frame) of a heart cavity; RA/LA also give the atrial walls."""
        hc, R, s = self.heart_c, self.heart_R, self.heart_semi
        u = R[:, 0]
        left_post = _unit(np.array([1.0, 1.0, 0.0]) - np.dot([1.0, 1.0, 0.0], u) * u)
        right_ant = _unit(np.array([-1.0, -1.0, 0.0]) - np.dot([-1.0, -1.0, 0.0], u) * u)
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
                _frame(u, hint=left_post),
            )
        if name == "LA":
            return (
                hc - 0.72 * s[0] * u + np.array([0.0, 14.0, 4.0]) * hs,
                np.array([22.0, 26.0, 17.0]) * hs,
                _frame([1.0, 0.0, 0.0], hint=(0.0, 0.0, 1.0)),
            )
        if name == "RA":
            return (
                hc - 0.55 * s[0] * u + np.array([-26.0, 4.0, -2.0]) * hs,
                np.array([24.0, 22.0, 25.0]) * hs,
                np.eye(3),
            )
        raise KeyError(name)

    # ------------------------------------------------------------------ pelvis
    def _build_pelvis(self, N, s_bone):
        s_w, s_d = self.s_w, self.s_d
        self.r_fh = 23.0 * s_bone
        self.fh = {}
        for side, sx in (("L", 1.0), ("R", -1.0)):
            self.fh[side] = np.array(
                [sx * (86.0 * s_w + N(2.0)), -6.0 * s_d + N(3.0), self.z_fh + N(1.5)]
            )
        self.symphysis = np.array([0.0, -74.0 * s_d, self.z_fh - 22.0])

    # ------------------------------------------------------------------ bowel
    def _build_bowel(self, N, U, rng):
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
        self.colon, pos = _spline(np.array(ctrl), 6.0)
        self.colon_r = np.interp(pos, [0, 1, 3, 6, 9, 10, 11, 12], [28, 24, 23, 22, 17, 18, 19, 8])
        self.colon_gas = U(0.15, 0.5)
        # small bowel: random walks in the mid and lower abdomen
        lo = np.array([-70.0 * s_w, -88.0 * s_d, zS1 - 35.0])
        hi = np.array([70.0 * s_w, 5.0, self.zmid("L2")])
        self.small_bowel = []
        for _ in range(6):
            p = lo + rng.uniform(0.15, 0.85, 3) * (hi - lo)
            d = _unit(rng.normal(size=3))
            pts = [p]
            for _ in range(12):
                d = _unit(d + 0.8 * rng.normal(size=3))
                q = pts[-1] + 22.0 * d
                out = (q < lo) | (q > hi)
                d[out] = -d[out]
                q = np.clip(pts[-1] + 22.0 * d, lo, hi)
                pts.append(q)
            gas = bool(rng.uniform() < 0.12)
            self.small_bowel.append(
                (_spline(np.array(pts), 6.0)[0], float(rng.uniform(10.0, 13.0)), gas)
            )
        # duodenum C-loop around the pancreatic head
        a_end = self.stomach[2][0] + np.array([-24.0, 4.0, -4.0])
        cf = self.confluence
        self.duodenum = _spline(
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
        self.pancreas = _spline(
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
        self.splenic_v = _spline(
            np.array([cf, cf + [38.0, 8.0, 10.0], self.spleen[0] + np.array([-24.0, -4.0, 4.0])]),
            6.0,
        )[0]
        self.smv = _spline(np.array([cf, cf + [6.0, -10.0, -40.0], cf + [8.0, -16.0, -90.0]]), 6.0)[
            0
        ]
        lc = self.liver_rl[0]
        ph = self.porta
        self.portal = _spline(
            np.array([cf, 0.5 * (cf + ph) + np.array([-4.0, 4.0, 0.0]), ph]), 5.0
        )[0]
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

    def in_lung(self, pts, side):
        """Approximate analytic test (cavity, diaphragm, apex, mediastinum; heart and vessels
        ignored) that points lie inside a lung, at least ~3 mm from its border."""
        x, y, z = np.asarray(pts, dtype=np.float64).T
        a = self.tab(self.t_a_cav, z) - 3.0
        b = np.where(y > 0, self.tab(self.t_bp_cav, z), self.tab(self.t_ba_cav, z)) - 3.0
        u2, v2 = (x / a) ** 2, (y / b) ** 2
        ok = (
            u2
            + v2
            - np.where(y > 0, _SQUARE[1], _SQUARE[0]) * np.minimum(u2, 1) * np.minimum(v2, 1)
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

    # ================================================================== painting
    def paint(self, cv: _Canvas, hu: dict):
        """Paint the whole subject onto a canvas (order matters: later structures win)."""
        self._paint_body(cv, hu)
        self._paint_lungs(cv, hu)
        self._paint_muscles(cv, hu)
        self._paint_abdomen(cv, hu)
        if cv.grid:  # bowel only replaces visceral fat: irrelevant to exact organ-label queries
            self._paint_bowel(cv, hu)
        self._paint_heart(cv, hu)
        self._paint_vessels(cv, hu)
        self._paint_airways(cv, hu)
        self._paint_spine(cv, hu)
        self._paint_ribs(cv, hu)
        self._paint_shoulders_sternum(cv, hu)
        self._paint_pelvis(cv, hu)

    @staticmethod
    def _ellipse_q(X, Y, ia, ib):
        """Normalised radius^2 of the per-slice ellipse: ``ia`` = 1/a, ``ib`` = 1/b (per voxel)."""
        q = X * ia
        q *= q
        t = Y * ib
        t *= t
        q += t
        return q

    @staticmethod
    def _inv_tables(ta, tba, tbp):
        """1/a per z and 1/b interleaved per (z, posterior?) for lookups with 2*zi + (Y > 0)."""
        ib = np.empty(2 * len(ta), np.float32)
        ib[0::2] = 1.0 / tba
        ib[1::2] = 1.0 / tbp
        return (1.0 / ta).astype(np.float32), ib

    def _paint_body(self, cv, hu):
        hu_lut = np.array([-1000.0, hu["fat"], hu["muscle"], hu["fat"]], np.float32)
        lab_lut = np.array([0, _L["subcutaneous_fat"], _L["muscle"], _L["visceral_fat"]], np.uint8)
        tables = [
            self._inv_tables(*tabs)
            for tabs in (
                (self.t_a_out, self.t_ba_out, self.t_bp_out),
                (self.t_a_lean, self.t_ba_lean, self.t_bp_lean),
                (self.t_a_cav, self.t_ba_cav, self.t_bp_cav),
            )
        ]
        tables = [((ia * ia), (ib * ib)) for ia, ib in tables]
        cv.ZI2 = np.empty_like(cv.ZI)
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
            cv.ZI2[key] = zi2
            X2, Y2 = X * X, Y * Y
            c_sq = _SQUARE[post.view(np.uint8)]
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
        # legs: a midline gap (with its own skin fat) below the perineum
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
                _L["subcutaneous_fat"],
                _BODY_ANY,
            )
            cv.paint(k2, below & (ax < gap), np.float32(-1000.0), _L["background"])

    def _paint_lungs(self, cv, hu):
        z0 = self.dia_floor - self.dia_t - 2.0
        z_split = max(d[2] for d in self.domes) + 1.0
        z1 = max(self.apex["L"][2], self.apex["R"][2]) + 2.0
        for lo_z, hi_z, lower in ((z0, z_split, True), (z_split, z1, False)):
            for key, X, Y, Z in cv.chunks(cv.region((-400, -400, lo_z), (400, 400, hi_z))):
                self._paint_lung_slab(cv, hu, key, X, Y, Z, lower, z_split)

    def _paint_lung_slab(self, cv, hu, key, X, Y, Z, lower, z_split):
        cav = cv.cavity[key]
        if lower:
            cav = cav & (Z <= z_split)
            d = self.dia(X, Y)
            band = cav & (Z <= d) & (Z > d - np.float32(self.dia_t))
            cv.paint(key, band, hu["muscle"], _L["muscle"])
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
            cv.paint(key, m & (Z < cap), value, _L["lung_left" if side == "L" else "lung_right"])

    def _paint_muscles(self, cv, hu):
        allowed = _lut("visceral_fat", "lung_left", "lung_right", "muscle")
        reg = cv.region((-90, -60, self.z_S1 - 10), (90, 250, self.zmid("C7")))
        if reg is not None:
            key, X, Y, Z = reg
            ys = cv.ztab(self.t_spine_y, key)
            xs = cv.ztab(self.t_spine_x, key)
            rel = Y - ys
            m = (rel > -2.0) & (np.abs(X - xs) < 24.0 + 0.35 * rel)
            m &= (Z > np.float32(self.z_S1 - 10)) & (Z < np.float32(self.zmid("C7")))
            cv.paint(key, m, hu["muscle"], _L["muscle"], allowed)
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
            p, pos = _spline(np.array(pts, dtype=float), 6.0)
            r = np.interp(pos, [0, 1, 2, 3, 4, 5], [7, 13, 19, 19, 16, 13])
            _paint_tube(
                cv, p, r, [(0.0, hu["muscle"], _L["muscle"])], _lut("visceral_fat", "muscle")
            )

    def _paint_abdomen(self, cv, hu):
        fat_only = _lut("visceral_fat")
        t = np.float32(self.dia_t)

        def below_dia(key):
            _, X, Y, Z = key
            return cv.cavity[key[0]] & (Z < self.dia(X, Y) - t)

        # liver
        (c1, s1), (c2, s2, R2) = self.liver_rl, self.liver_ll
        lo = np.minimum(c1 - s1, c2 - s2.max())
        hi = np.maximum(c1 + s1, c2 + s2.max())
        reg = cv.region(lo, hi)
        if reg is not None:
            key, X, Y, Z = reg
            m1 = _ellipsoid_mask(cv, c1, s1, region=reg)[1] & (X < 6.0 - 0.3 * Y)
            m2 = _ellipsoid_mask(cv, c2, s2, R2, region=reg)[1]
            m = (m1 | m2) & below_dia(reg)
            cv.paint(key, m, hu["liver"], _L["liver"], fat_only)
        # gallbladder
        c, s, R = self.gallbladder
        _paint_ellipsoid(cv, c, s, R, hu["fluid"], _L["gallbladder"], _lut("visceral_fat", "liver"))
        # stomach: walls, then contents (air anterior, fluid posterior)
        lo = np.min([c - s.max() for c, s, _ in self.stomach], axis=0)
        hi = np.max([c + s.max() for c, s, _ in self.stomach], axis=0)
        reg = cv.region(lo, hi)
        if reg is not None:
            key, X, Y, Z = reg
            outer = np.zeros(X.shape, bool)
            inner = np.zeros(X.shape, bool)
            for c, s, R in self.stomach:
                outer |= _ellipsoid_mask(cv, c, s, R, region=reg)[1]
                inner |= _ellipsoid_mask(cv, c, s, R, margin=-4.0, region=reg)[1]
            bd = below_dia(reg)
            cv.paint(key, outer & bd, hu["gut_wall"], _L["stomach"], _lut("visceral_fat"))
            level = np.float32(lo[1] + self.stomach_air * (hi[1] - lo[1]))
            val = np.where(Y < level, np.float32(hu["air"]), np.float32(hu["bowel_fluid"] + 10.0))
            cv.paint(key, inner & bd, val, _L["stomach"], _lut("stomach"))
        # pancreas
        p, pos = self.pancreas
        r = np.interp(pos, [0, 1, 2, 3], [15.0, 11.0, 10.0, 8.5])
        _paint_tube(cv, p, r, [(0.0, hu["pancreas"], _L["pancreas"])], fat_only)
        # kidneys: perirenal fat, cortex, medulla, sinus fat + pelvis
        for side, sx in (("L", 1.0), ("R", -1.0)):
            c, s, R = self.kidneys[side]
            lab = _L["kidney_left" if side == "L" else "kidney_right"]
            _paint_ellipsoid(
                cv,
                c,
                s,
                R,
                hu["fat"],
                _L["visceral_fat"],
                _lut("visceral_fat", "muscle", "liver", "spleen", "bowel"),
                margin=9.0,
            )
            _paint_ellipsoid(cv, c, s, R, hu["kidney_cortex"], lab, _lut("visceral_fat"))
            _paint_ellipsoid(
                cv,
                c,
                s * np.array([0.72, 0.62, 0.62]),
                R,
                hu["kidney_medulla"],
                lab,
                _lut(ORGAN_NAMES[lab]),
            )
            u = R[:, 0]
            hil = np.array([-sx, -0.8, 0.0])
            hil = _unit(hil - np.dot(hil, u) * u)
            cs = c + 0.55 * s[1] * hil
            _paint_ellipsoid(
                cv,
                cs,
                np.array([0.45 * s[0], 11.0, 9.0]),
                R,
                hu["fat"],
                lab,
                _lut(ORGAN_NAMES[lab], "visceral_fat"),
            )
            _paint_ellipsoid(
                cv,
                cs,
                np.array([0.3 * s[0], 6.0, 5.0]),
                R,
                hu["fluid"],
                lab,
                _lut(ORGAN_NAMES[lab]),
            )
        # spleen
        c, s, R = self.spleen
        r = _ellipsoid_mask(cv, c, s, R)
        if r is not None:
            key = r[0]
            reg = (key,) + tuple(a[key] for a in (cv.X, cv.Y, cv.Z))
            cv.paint(key, r[1] & below_dia(reg), hu["spleen"], _L["spleen"], fat_only)
        # bladder
        c, s = self.bladder
        _paint_ellipsoid(
            cv, c, s, None, hu["gut_wall"], _L["bladder"], _lut("visceral_fat"), margin=3.0
        )
        _paint_ellipsoid(cv, c, s, None, hu["fluid"], _L["bladder"], _lut("bladder"))

    def _paint_bowel(self, cv, hu):
        wall_ok = _lut("visceral_fat")
        thr = np.float32(1.6 - 3.2 * self.colon_gas)
        gas, stool = np.float32(hu["air"]), np.float32(hu["stool"])

        def content(X, Y, Z):  # irregular gas pockets in stool (quasi-periodic field)
            f = np.sin(X * np.float32(0.21) + Y * np.float32(0.13) + np.float32(0.3))
            f += np.sin(X * np.float32(-0.11) + Z * np.float32(0.19) + np.float32(1.1))
            f += np.sin(
                Y * np.float32(0.17) - Z * np.float32(0.15) + X * np.float32(0.07) + np.float32(2.0)
            )
            return np.where(f > thr, gas, stool)

        _paint_tube(
            cv,
            self.colon,
            self.colon_r,
            [(2.5, hu["gut_wall"], _L["bowel"]), (0.0, content, _L["bowel"])],
            wall_ok | _lut("bowel"),
        )
        # small bowel loops and duodenum
        for pts, r, has_gas in self.small_bowel + [(self.duodenum, 11.0, False)]:
            fill = hu["air"] if has_gas else hu["bowel_fluid"]
            _paint_tube(
                cv,
                pts,
                r,
                [
                    (2.0, hu["gut_wall"], _L["bowel"], wall_ok),
                    (0.0, fill, _L["bowel"], _lut("bowel")),
                ],
            )

    def _paint_heart(self, cv, hu):
        ok = _lut("visceral_fat", "lung_left", "lung_right")

        def above_dia(key):
            return cv.cavity[key] & (cv.Z[key] > self.dia(cv.X[key], cv.Y[key]))

        _paint_ellipsoid(
            cv,
            self.heart_c,
            self.heart_semi,
            self.heart_R,
            hu["myocardium"],
            _L["heart"],
            ok,
            extra=above_dia,
        )
        for name in ("LA", "RA"):
            c, s, R = self.chamber(name)
            _paint_ellipsoid(
                cv, c, s, R, hu["myocardium"], _L["heart"], ok, margin=2.5, extra=above_dia
            )
        heart = _lut("heart")
        for name, tissue in (
            ("LV", "blood_left"),
            ("RV", "blood_right"),
            ("LA", "blood_left"),
            ("RA", "blood_right"),
        ):
            c, s, R = self.chamber(name)
            _paint_ellipsoid(cv, c, s, R, hu[tissue], _L["heart"], heart)

    def _paint_vessels(self, cv, hu):
        inside = ~_lut("background", "subcutaneous_fat")
        lungs = _lut("lung_left", "lung_right")
        ao_pts, ao_r = self.aorta
        for pts, r in self.branches:
            p = _spline(pts, 5.0)[0]
            _paint_tube(cv, p, r, [(0.0, hu["blood_left"], _L["other_vessel"])], inside)
        for p in self.iliac_a:
            _paint_tube(
                cv, p, 5.5 * self.ao_s, [(0.0, hu["blood_left"], _L["other_vessel"])], inside
            )
        _paint_tube(cv, ao_pts, ao_r, [(0.0, hu["blood_left"], _L["aorta"])], inside)
        for p in self.iliac_v:
            _paint_tube(cv, p, 6.5, [(0.0, hu["ivc"], _L["other_vessel"])], inside)
        _paint_tube(cv, self.svc, 9.5, [(0.0, hu["svc"], _L["vena_cava"])], inside)
        _paint_tube(cv, self.bcv, 6.0, [(0.0, hu["svc"], _L["vena_cava"])], inside)
        _paint_tube(cv, self.ivc, 11.5, [(0.0, hu["ivc"], _L["vena_cava"])], inside)
        # renal vessels
        for side, sx in (("L", 1.0), ("R", -1.0)):
            c, s, R = self.kidneys[side]
            hil = c + np.array([-sx * 20.0, -8.0, 0.0])
            ia = np.argmin(np.abs(ao_pts[:, 2] - c[2]))
            iv = np.argmin(np.abs(self.ivc[:, 2] - c[2]))
            _paint_tube(
                cv,
                np.array([ao_pts[ia], hil]),
                3.5,
                [(0.0, hu["blood_left"], _L["other_vessel"])],
                inside,
            )
            _paint_tube(
                cv,
                np.array([self.ivc[iv], hil + [0.0, -6.0, -4.0]]),
                4.5,
                [(0.0, hu["ivc"], _L["other_vessel"])],
                inside,
            )
        # pulmonary arteries and veins
        for p, r in ((self.pa_trunk, 13.0), (self.lpa, 10.0), (self.rpa, 10.0)):
            _paint_tube(cv, p, r, [(0.0, hu["blood_right"], _L["pulmonary_artery"])], inside)
        for pts in self.pulm_veins:
            _paint_tube(
                cv,
                _spline(pts, 5.0)[0],
                6.0,
                [(0.0, hu["pulm_vein"], _L["other_vessel"])],
                _lut("visceral_fat", "lung_left", "lung_right"),
            )
        for kind, tissue in (("art", "blood_right"), ("vein", "pulm_vein")):
            if not cv.grid:  # intrapulmonary vessels keep the lung label
                break
            p0, p1, r0, r1 = self.lung_trees[kind]
            for i in np.flatnonzero(r0 >= 2.8):
                res = _capsule_mask(cv, p0[i], p1[i], r0[i], r1[i])
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
        # portal venous system and hepatic veins
        for p, r in ((self.portal, 8.0), (self.splenic_v, 5.0), (self.smv, 6.0)):
            _paint_tube(cv, p, r, [(0.0, hu["portal"], _L["portal_vein"])], inside)
        liver = _lut("liver")
        for pts in self.portal_branches:
            _paint_tube(
                cv,
                pts,
                np.array([6.5, 5.0, 3.5])[: len(pts)],
                [(0.0, hu["portal"], _L["portal_vein"])],
                liver,
            )
        for pts in self.hepatic_veins:
            _paint_tube(
                cv,
                pts,
                np.array([7.0, 5.5, 3.5]),
                [(0.0, hu["hepatic_vein"], _L["other_vessel"])],
                liver,
            )
        # esophagus (a small air lumen in the chest)
        _paint_tube(cv, self.esophagus, 8.0, [(0.0, hu["esophagus"], _L["esophagus"])], inside)

    def _paint_airways(self, cv, hu):
        inside = ~_lut("background", "subcutaneous_fat")
        tubes = [(self.trachea, self.trachea_r)] + [
            (_spline(p, 4.0)[0], r) for p, r in self.bronchi
        ]
        _paint_tubes(
            cv,
            tubes,
            [(2.0, hu["airway_wall"], _L["airway"]), (0.0, hu["air"], _L["airway"])],
            inside,
        )

    def _paint_spine(self, cv, hu):
        body = _BODY_ANY
        names = self.order
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        canal_pts = []
        for i, n in enumerate(names):
            zt, zb = self.levels[n]
            zm = 0.5 * (zt + zb)
            xs, ys = float(self.spine_x(zm)), float(self.spine_y(zm))
            rx, ry = self.vrx[n], self.vry[n]
            # disc below
            if i + 1 < len(names):
                zn = self.levels[names[i + 1]][0]
                rxn, ryn = 0.5 * (rx + self.vrx[names[i + 1]]), 0.5 * (ry + self.vry[names[i + 1]])
                self._cyl(cv, xs, ys, rxn, ryn, zn, zb, hu["disc"], _L["intervertebral_disc"], body)
            else:  # L5/S1 disc
                self._cyl(
                    cv, xs, ys, rx, ry, self.z_S1, zb, hu["disc"], _L["intervertebral_disc"], body
                )
            self._cyl(cv, xs, ys, rx, ry, zb, zt, cortex, _L["vertebra"], body)
            self._cyl(
                cv,
                xs,
                ys,
                rx - 2.2,
                ry - 2.2,
                zb + 1.5,
                zt - 1.5,
                canc,
                _L["vertebra"],
                _lut("vertebra"),
            )
            # neural arch: ring around the canal, spinous and transverse processes
            cervical, lumbar = n.startswith("C"), n.startswith("L")
            rc = 7.5 if cervical else (9.5 if lumbar else 8.0)
            yc = ys + ry + rc - 1.0
            canal_pts.append((xs, yc, zm, rc))
            reg = cv.region(
                (xs - rc - 6, yc - rc - 6, zb + 1.0), (xs + rc + 6, yc + rc + 6, zt - 1.0)
            )
            if reg is not None:
                key, X, Y, Z = reg
                dx, dy = X - np.float32(xs), Y - np.float32(yc)
                d2 = dx * dx + dy * dy
                m = (
                    (d2 <= (rc + 5.5) ** 2)
                    & (Z >= np.float32(zb + 1.0))
                    & (Z <= np.float32(zt - 1.0))
                )
                cv.paint(key, m, 0.5 * (cortex + canc), _L["vertebra"], body)
            spl, drop = (20.0, 6.0) if cervical else ((30.0, 6.0) if lumbar else (32.0, 20.0))
            p0 = np.array([xs, yc + rc + 2.0, zm])
            _paint_tube(
                cv,
                np.array([p0, p0 + [0.0, spl, -drop]]),
                np.array([4.5, 3.5]),
                [(0.0, 0.5 * (cortex + canc), _L["vertebra"])],
                body,
            )
            tl = 22.0 if cervical else (36.0 if lumbar else 28.0)
            for sx in (-1.0, 1.0):
                q0 = np.array([xs + sx * (rc + 2.0), yc - 2.0, zm])
                q1 = q0 + np.array([sx * tl, 2.0 if lumbar else 9.0, 0.0])
                _paint_tube(
                    cv,
                    np.array([q0, q1]),
                    np.array([4.5, 4.0]),
                    [(0.0, 0.5 * (cortex + canc), _L["vertebra"])],
                    body,
                )
        cp = np.array([[x, y, z] for x, y, z, _ in canal_pts])
        cr = np.array([r for *_, r in canal_pts])
        cp = np.vstack([cp, [[cp[-1, 0], cp[-1, 1] + 6.0, self.z_S1 - 30.0]]])
        cr = np.append(cr, 6.0)
        _paint_tube(cv, cp, cr, [(0.0, hu["csf"], _L["spinal_canal"])], body)

    @staticmethod
    def _cyl(cv, xc, yc, rx, ry, z0, z1, value, label, allowed):
        reg = cv.region((xc - rx, yc - ry, z0), (xc + rx, yc + ry, z1))
        if reg is None:
            return
        key, X, Y, Z = reg
        dx, dy = (X - np.float32(xc)) / np.float32(rx), (Y - np.float32(yc)) / np.float32(ry)
        cv.paint(key, (dx * dx + dy * dy <= 1.0) & (Z >= z0) & (Z <= z1), value, label, allowed)

    def _rib_table(self):
        heads, drops, ends, cart = [], [], [], []
        for k, n in enumerate(_THORACIC):
            zt, zb = self.levels[n]
            heads.append(zt - 0.3 * (zt - zb))
            drops.append([50, 68, 80, 88, 92, 95, 96, 96, 94, 90, 72, 55][k] * self.s_h)
            ends.append([40, 38, 40, 42, 44, 46, 48, 55, 65, 75, 100, 120][k])
            cart.append([9, 9, 10, 11, 12, 13, 14, 35, 45, 55, None, None][k])
        return heads, drops, ends, cart

    def _paint_ribs(self, cv, hu):
        heads, drops, ends, cart = self._rib_table()
        z0 = self.levels["T12"][1] - 90.0
        z1 = self.levels["T1"][0] + 15.0
        reg = cv.region((-400, -400, z0), (400, 400, z1))
        if reg is None:
            return
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
            return
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
        rib_hu = 0.45 * hu["bone_cortex"] + 0.55 * hu["bone_cancellous"]
        for m, val in ((cartilage, hu["cartilage"]), (bone, rib_hu)):
            cv.paint_at(key, tuple(a[m] for a in idx), val, _L["rib"], _BODY_ANY)
        # rib necks: vertebral body -> rib angle
        for k, n in enumerate(_THORACIC):
            zm = self.zmid(n)
            xs0, ys0 = float(self.spine_x(zm)), float(self.spine_y(zm))
            for sx in (-1.0, 1.0):
                p0 = np.array([xs0 + sx * (self.vrx[n] + 1.0), ys0 + 4.0, heads[k]])
                p1 = np.array(
                    [xs0 + sx * 42.0 * self.s_w, ys0 + 22.0 + 0.2 * self.vry[n], heads[k] - 2.0]
                )
                _paint_tube(cv, np.array([p0, p1]), 4.5, [(0.0, rib_hu, _L["rib"])], _BODY_ANY)

    def sternum_y(self, z):
        return -(self.tab(self.t_ba_cav, z) + 6.0)

    def _paint_shoulders_sternum(self, cv, hu):
        bone_mix = 0.5 * (hu["bone_cortex"] + hu["bone_cancellous"])
        # sternum: plate in front of the cavity
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
                key, inz & (dx * dx + dy * dy <= 1.0), hu["bone_cortex"], _L["sternum"], _BODY_ANY
            )
            dx, dy = X / (w - 2.0), (Y - yc) / np.maximum(t - 2.0, 0.5)
            cv.paint(
                key,
                inz & (dx * dx + dy * dy <= 1.0) & (Z > zx + 4) & (Z < zn - 2),
                hu["bone_cancellous"],
                _L["sternum"],
                _lut("sternum"),
            )
        # clavicles
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
            _paint_tube(cv, _spline(pts, 5.0)[0], 7.0, [(0.0, bone_mix, _L["clavicle"])], _BODY_ANY)
        # scapulae: curved triangular plates on the posterolateral chest wall
        zc = self.zmid("T4") - 10.0
        a_c, bp = float(self.tab(self.t_a_cav, zc)), float(self.tab(self.t_bp_cav, zc))
        for sx in (-1.0, 1.0):
            x0 = 0.62 * a_c
            y0 = bp * np.sqrt(1.0 - 0.62**2)
            nrm = _unit([x0 / a_c**2, y0 / bp**2, 0.0])  # outward normal (right side mirrored)
            c = np.array([sx * x0, y0, zc]) + 15.0 * np.array([sx * nrm[0], nrm[1], 0.0])
            tang = _unit([nrm[1] * sx, -nrm[0], 0.0])
            frame = np.stack([tang, [0.0, 0.0, 1.0], [sx * nrm[0], nrm[1], 0.0]], axis=1)
            res = _plate_mask(
                cv, c, frame, 48.0 * self.s_w, 70.0 * self.s_h, 5.0, kappa=0.0, taper=0.8
            )
            if res is not None:
                key, m, w = res
                cv.paint(
                    key,
                    m & (np.abs(w) < 2.5),
                    0.35 * hu["bone_cortex"] + 0.65 * hu["bone_cancellous"],
                    _L["scapula"],
                    _BODY_ANY,
                )

    def _paint_pelvis(self, cv, hu):
        cortex, canc = hu["bone_cortex"], hu["bone_cancellous"]
        bone_mix = 0.5 * (cortex + canc)
        body = _BODY_ANY
        pel = _L["pelvis"]
        # sacrum + coccyx
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
            cv.paint(key, inz & (dx * dx + dy * dy <= 1.0), canc, pel, _lut("pelvis"))
        for side, sx in (("L", 1.0), ("R", -1.0)):
            fh = self.fh[side]
            # ilium: curved plate from the sacroiliac joint to the iliac crest and the acetabulum
            e1 = _unit([sx * 0.45, -0.9, 0.0])
            e2 = np.array([sx * 0.28, 0.0, 1.0])
            e2 = _unit(e2 - np.dot(e2, e1) * e1)
            n = np.cross(e1, e2)
            if n[0] * sx > 0:
                n = -n
            frame = np.stack([e1, e2, n], axis=1)
            c = np.array([sx * 86.0 * self.s_w, 10.0 * self.s_d, self.z_S1 - 4.0])
            res = _plate_mask(cv, c, frame, 60.0 * self.s_w, 58.0 * self.s_h, 40.0, kappa=0.003)
            if res is not None:
                key, m, w = res
                cv.paint(
                    key,
                    m & (w > 4.0) & (w < 20.0),
                    hu["muscle"],
                    _L["muscle"],
                    _lut("visceral_fat", "bowel"),
                )
                cv.paint(key, m & (np.abs(w) < 4.5), cortex, pel, body)
                cv.paint(key, m & (np.abs(w) < 2.0), canc, pel, _lut("pelvis"))
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
                _paint_tube(cv, np.array([p0, p1]), r, [(0.0, bone_mix, pel)], body)
            _paint_ellipsoid(
                cv,
                self.symphysis + [sx * 12.0, 0.0, 0.0],
                np.array([10.0, 9.0, 22.0]),
                None,
                bone_mix,
                pel,
                body,
            )
            # femur: head, neck, greater trochanter, shaft
            flab = _L["femur_left" if side == "L" else "femur_right"]
            neck_end = fh + np.array([sx * 40.0, 8.0, -26.0])
            troch = fh + np.array([sx * 50.0, 12.0, -20.0])
            shaft0 = fh + np.array([sx * 44.0, 8.0, -40.0])
            shaft1 = fh + np.array([sx * 26.0, 2.0, -300.0])
            _paint_ellipsoid(cv, fh, np.full(3, rr), None, cortex, flab, body)
            _paint_tube(cv, np.array([fh, neck_end]), 14.0, [(0.0, cortex, flab)], body)
            _paint_ellipsoid(cv, troch, np.array([15.0, 20.0, 22.0]), None, cortex, flab, body)
            _paint_tube(cv, np.array([shaft0, shaft1]), 14.0, [(0.0, cortex, flab)], body)
            fl = _lut(ORGAN_NAMES[flab])
            _paint_ellipsoid(cv, fh, np.full(3, rr - 2.5), None, canc, flab, fl)
            _paint_tube(cv, np.array([fh, neck_end]), 10.5, [(0.0, canc, flab)], fl)
            _paint_ellipsoid(cv, troch, np.array([12.0, 17.0, 19.0]), None, canc, flab, fl)
            _paint_tube(
                cv, np.array([shaft0 + [0, 0, -20.0], shaft1]), 8.0, [(0.0, hu["marrow"], flab)], fl
            )

    # ================================================================== landmarks
    def landmarks(self) -> np.ndarray:
        """(n_landmarks, 3) patient-frame points, in the order of LANDMARK_NAMES. Poles, tips and
        domes are found on the painted organ itself: from just outside the analytic extreme point,
        step inwards until the organ's exact label is met, then go ``inset`` mm deeper."""
        if getattr(self, "_landmarks", None) is not None:
            return self._landmarks.copy()

        def extreme(c, semi, R, direction):
            M = R @ np.diag(np.asarray(semi) ** 2) @ R.T
            e = np.asarray(direction, float)
            return c + M @ e / np.sqrt(e @ M @ e)

        def vert(n):
            zm = self.zmid(n)
            return np.array([float(self.spine_x(zm)), float(self.spine_y(zm)), zm])

        hc, hR, hsemi = self.heart_c, self.heart_R, self.heart_semi
        xr, yr, zr = self.domes[0]
        zn, zx = self.z_notch, self.z_xiph
        down = np.array([0.0, 0.0, -1.0])
        poles = []  # (name, start, inward direction, labels, inset)
        for side in ("L", "R"):
            xa, ya, za = self.apex[side]
            lung = (_L["lung_left" if side == "L" else "lung_right"],)
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
            ("heart_apex", hc + (hsemi[0] + 2.0) * hR[:, 0], -hR[:, 0], (_L["heart"],), 3.0)
        )
        poles.append(("liver_dome", np.array([xr, yr, zr + 2.0]), down, (_L["liver"],), 4.0))
        c, semi, R = self.spleen
        p = extreme(c, semi, R, (0.0, 0.0, -1.0))
        poles.append(("spleen_tip", p + 2.0 * _unit(p - c), _unit(c - p), (_L["spleen"],), 5.0))
        for side, name in (("L", "kidney_left"), ("R", "kidney_right")):
            c, semi, R = self.kidneys[side]
            p = extreme(c, semi, R, (0.0, 0.0, 1.0))
            poles.append(
                (f"{name}_upper_pole", p + 2.0 * _unit(p - c), _unit(c - p), (_L[name],), 3.0)
            )
        pts = {
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
        step = 0.5
        s = np.arange(0.0, 90.0 + step, step)
        probe = np.concatenate([p0 + s[:, None] * d for _, p0, d, _, _ in poles])
        labs = _labels_at(self, probe).reshape(len(poles), len(s))
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
        self._landmarks = np.array([pts[n] for n in LANDMARK_NAMES], dtype=np.float64)
        return self._landmarks.copy()

    def z_range(self):
        """Anatomical z of the top of the lungs and of the femoral heads (field-of-view anchors)."""
        return max(self.apex["L"][2], self.apex["R"][2]), self.z_fh

    def extent_xy(self, z0, z1):
        """Max body half-width, anterior and posterior depth between z0 < z1."""
        m = (self.zt >= z0) & (self.zt <= z1)
        return (
            float(self.t_a_out[m].max()),
            float(self.t_ba_out[m].max()),
            float(self.t_bp_out[m].max()),
        )


# ============================================================================= subject pieces
def _subject_hu(rng, phase):
    """Per-subject tissue intensities (HU) for a contrast phase: baseline jitter, bolus strength
    and timing inside the phase. The number of draws does not depend on the phase."""
    p = PHASES.index(phase)
    bolus = rng.uniform(0.88, 1.12)
    timing = rng.uniform(0.0, 1.0)
    out = {}
    for name, vals in _TISSUE_HU.items():
        base = vals[0] + _BASE_JITTER.get(name, 4.0) * np.clip(rng.normal(), -2.5, 2.5)
        enh = (vals[p] - vals[0]) * bolus * (1.0 + 0.05 * np.clip(rng.normal(), -2.0, 2.0))
        enh *= 1.0 + _TIMING.get(phase, {}).get(name, 0.0) * (timing - 0.5) * 2.0
        out[name] = float(base + enh)
    return out


_DIRECTIONS_3D = (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0]))
_DIRECTIONS_2D = (np.diag([1.0, -1.0]), np.diag([-1.0, -1.0]))


def _draw_pose(rng, variation):
    v = variation
    c = lambda s: v * s * float(np.clip(rng.standard_normal(), -2.5, 2.5))  # noqa: E731
    R = _rot(2, c(3.0)) @ _rot(0, c(1.5)) @ _rot(1, c(1.5))
    t = np.array([rng.normal(0.0, 15.0), rng.normal(0.0, 20.0) - 40.0, rng.uniform(-750.0, -150.0)])
    return R, t


def _grid_for_box(center, half, spacing, D):
    """Grid with direction D and spacing covering the world box center +- half."""
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    ext = np.abs(corners @ D).max(0)
    size = np.maximum(np.ceil(2.0 * ext / spacing - 1e-9).astype(int), 1)
    origin = center - D @ ((size - 1) / 2.0 * spacing)
    return size, origin


def _scan_geometry(rng, torso, pose, ndim, spacing, direction, fov):
    """Field of view (anatomical z range -> world box) and the voxel grid of one subject.
    Returns the 3D geometry that is painted and, for ndim=2, the 2D projection geometry."""
    R, t = pose
    z_apex, z_fh = torso.z_range()
    length, kind = rng.uniform(400.0, 520.0), rng.uniform()
    u_top, u_bot = rng.uniform(-8.0, 40.0), rng.uniform(-12.0, 60.0)
    jx, jy, mx, my = (
        rng.normal(0, 6.0),
        rng.normal(0, 6.0),
        rng.uniform(5.0, 16.0),
        rng.uniform(5.0, 13.0),
    )
    hi_lim, lo_lim = z_apex + 60.0, z_fh - 80.0
    top, bot = z_apex + u_top, z_fh - u_bot  # trunk scan, cropped a little at either end
    if fov == "full":
        top, bot, jx, jy, mx, my = z_apex + 40.0, z_fh - 60.0, 0.0, 0.0, 25.0, 25.0
    elif kind < 0.15:  # chest-first scan: starts near the lung apices
        bot = max(top - length, lo_lim)
    elif kind < 0.3:  # pelvis-anchored scan: ends near the femoral heads
        top = min(bot + length, hi_lim)
    a, ba, bp = torso.extent_xy(bot, top)
    mid = 0.5 * (top + bot)
    c_anat = np.array([0.0, 0.5 * (bp - ba), mid])
    half_anat = np.array([a + mx, 0.5 * (ba + bp) + my, 0.5 * (top - bot)])
    # world box of the rotated anatomical box (axis-aligned in world)
    half = np.abs(R) @ half_anat
    half[2] = half_anat[2]  # z extent: the field of view itself, not the tilt of the body box
    center = R @ c_anat + t + np.array([jx, jy, 0.0])
    if spacing is None:
        if ndim == 3:
            s_xy = rng.uniform(2.0, 2.5)
            sp = np.array([s_xy, s_xy, rng.uniform(3.5, 5.0)])
        else:
            s = rng.uniform(1.6, 2.4)
            sp = np.array([s, s])
    else:
        sp = np.broadcast_to(np.asarray(spacing, float), (ndim,)).copy()
    choice = rng.uniform()
    if ndim == 3:
        if direction is None:
            D = _DIRECTIONS_3D[0 if choice < 0.5 else (1 if choice < 0.85 else 2)]
        else:
            D = direction
        size, origin = _grid_for_box(center, half, sp, D)
        return ImageGeometry(tuple(int(s) for s in size), sp, origin, D), None
    D2 = (_DIRECTIONS_2D[0 if choice < 0.75 else 1]) if direction is None else direction
    # 3D grid in the x-z plane of the radiograph, y (beam direction) sampled every 4 mm
    D3 = np.array([[D2[0, 0], 0.0, D2[0, 1]], [0.0, 1.0, 0.0], [D2[1, 0], 0.0, D2[1, 1]]])
    half3 = half.copy()
    half3[1] += 25.0
    sp3 = np.array([sp[0], 4.0, sp[1]])
    size, origin = _grid_for_box(center, half3, sp3, D3)
    g3 = ImageGeometry(tuple(int(s) for s in size), sp3, origin, D3)
    g2 = ImageGeometry((int(size[0]), int(size[2])), sp, origin[[0, 2]], D2)
    return g3, g2


def _canvas_for(torso, geometry, pose):
    return _Canvas.for_grid(geometry, pose[0], pose[1], torso.zt[0], 1.0 / _Z_STEP, len(torso.zt))


def _labels_at(torso, pts_anat):
    """Exact labels of the subject at patient-frame points (no grid involved; bowel is not
    painted, so it reads as visceral fat)."""
    cv = _Canvas.for_points(pts_anat, torso.zt[0], 1.0 / _Z_STEP, len(torso.zt))
    torso.paint(cv, {k: v[0] for k, v in _TISSUE_HU.items()})
    return cv.lab


def _place_lesions(rng, torso, n, organs, scans, n_try=48):
    """Lesion ellipsoids fully inside an organ and inside the field of view of every scan
    (``scans``: list of (pose, 3D geometry)): list of (centre, semi-axes, frame, organ) in the
    patient frame."""
    if n == 0:
        return []
    boxes = {
        "liver": (torso.liver_rl[0] - torso.liver_rl[1], torso.liver_rl[0] + torso.liver_rl[1]),
        "lung": (
            np.array([-150.0, -120.0, torso.dia_floor]),
            np.array([150.0, 120.0, max(torso.apex["L"][2], torso.apex["R"][2])]),
        ),
    }
    organ_labels = {"liver": (_L["liver"],), "lung": (_L["lung_left"], _L["lung_right"])}
    specs = []
    for _ in range(n):
        organ = organs[int(rng.integers(len(organs)))]
        r = rng.uniform(5.0, 14.0) if organ == "liver" else rng.uniform(3.5, 9.0)
        semi = r * rng.uniform(0.8, 1.2, 3)
        frame = _frame(rng.normal(size=3), hint=rng.normal(size=3))
        lo, hi = boxes[organ]
        cand = lo + rng.uniform(0.0, 1.0, (n_try, 3)) * (hi - lo)
        specs.append((organ, semi, frame, cand))
    # evaluate every candidate's centre and six extreme points at once
    probes = []
    for organ, semi, frame, cand in specs:
        ext = frame * (semi + 2.0)[None, :]
        offs = np.vstack([np.zeros(3), ext.T, -ext.T])  # (7, 3)
        probes.append(cand[:, None, :] + offs[None, :, :])
    labs = _labels_at(torso, np.concatenate([p.reshape(-1, 3) for p in probes])).reshape(
        n, n_try, 7
    )
    landmarks = torso.landmarks()
    out = []
    for k, (organ, semi, frame, cand) in enumerate(specs):
        ok = np.isin(labs[k], organ_labels[organ]).all(1)
        for j in np.flatnonzero(ok):
            c = cand[j]
            if any(np.linalg.norm(c - o[0]) < (semi.max() + o[1].max() + 4.0) for o in out):
                continue
            if (((landmarks - c) @ frame / (semi + 5.0)) ** 2).sum(1).min() <= 1.0:
                continue  # never cover a landmark
            fits = True
            for (R, t), geometry3 in scans:
                half = np.sqrt(((R @ frame * semi[None, :]) ** 2).sum(1))
                corners = R @ c + t + half * _CORNERS_PM
                fits &= bool(geometry3.contains(corners, margin=0.0).all())
            if not fits:
                continue
            out.append((c, semi, frame, organ))
            break
    return out


def _paint_lesions(cv, lesions, hu):
    allowed = _lut("liver", "lung_left", "lung_right", "portal_vein", "other_vessel")
    for c, semi, frame, organ in lesions:
        _paint_ellipsoid(
            cv,
            c,
            semi,
            frame,
            hu["lesion_liver" if organ == "liver" else "lesion_lung"],
            _L["lesion"],
            allowed,
        )


def _lesion_boxes(lesions, pose, ndim):
    R, t = pose
    boxes = np.zeros((len(lesions), 2 * ndim))
    for i, (c, semi, frame, _) in enumerate(lesions):
        half = np.sqrt(((R @ frame * semi[None, :]) ** 2).sum(1))
        cw = R @ c + t
        lo, hi = cw - half, cw + half
        boxes[i] = (
            np.concatenate([lo, hi]) if ndim == 3 else np.concatenate([lo[[0, 2]], hi[[0, 2]]])
        )
    return boxes


def _smooth3(arr, w=0.2):
    """Separable 3-tap blur [w, 1-2w, w] along every axis, edges repeated (partial-volume /
    detector point-spread function)."""
    w = np.float32(w)
    for ax in range(arr.ndim):
        a = np.moveaxis(arr, ax, 0)
        out = a * np.float32(1.0 - 2.0 * w)
        out[1:] += a[:-1] * w
        out[:-1] += a[1:] * w
        out[0] += a[0] * w
        out[-1] += a[-1] * w
        arr = np.moveaxis(out, 0, ax)
    return np.ascontiguousarray(arr)


def _project(cv, geometry3, rng, noise):
    """AP radiograph: line integrals of attenuation along the y (beam) axis, log domain."""
    mu = np.clip(cv.hu * np.float32(_MU_WATER / 1000.0) + np.float32(_MU_WATER), 0.0, None)
    P = mu.sum(axis=1) * np.float32(geometry3.spacing[1])  # (rows, cols)
    if noise > 0:
        i0 = 4.0e4 / noise**2
        counts = rng.poisson(i0 * np.exp(-P.astype(np.float64)))
        P = -np.log(np.maximum(counts, 0.5) / i0)
    P = _smooth3(P.astype(np.float32), 0.15)
    # label: the structure with the largest weighted attenuation along the ray (bones x5, organs
    # x1, body wall x0.02): what a reader would outline on a radiograph
    lab = cv.lab
    factor = np.ones(_N_LABELS, np.float32)
    factor[_lut("subcutaneous_fat", "visceral_fat", "muscle")] = 0.02
    factor[
        _lut(
            "vertebra",
            "rib",
            "sternum",
            "clavicle",
            "scapula",
            "pelvis",
            "femur_left",
            "femur_right",
        )
    ] = 5.0
    weight = mu * factor[lab]
    rows, ny, cols = lab.shape
    base = (np.arange(rows * cols, dtype=np.int32) * _N_LABELS).reshape(rows, 1, cols)
    acc = np.bincount(
        (base + lab).ravel(), weights=weight.ravel(), minlength=rows * cols * _N_LABELS
    ).reshape(rows, cols, _N_LABELS)
    acc[..., 0] = 0.0
    lab2 = np.where(acc.max(-1) > 0, acc.argmax(-1), 0).astype(np.float32)
    return P.astype(np.float32), lab2


# ============================================================================= public API
def _seed_sequence(random_state) -> np.random.SeedSequence:
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.SeedSequence):
        return np.random.SeedSequence(random_state.entropy, spawn_key=random_state.spawn_key)
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(0, 2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(0, 2**31 - 1)))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state}")
        return np.random.SeedSequence(int(random_state))
    raise TypeError(
        "random_state must be None, an int, a numpy SeedSequence, Generator or "
        f"RandomState, got {type(random_state).__name__}"
    )


def _child(ss, *key):
    return np.random.default_rng(
        np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + key)
    )


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r} " f"({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_float(value, name, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return float(value)


def _check_phases(contrast_phase, n):
    if contrast_phase is None:
        return ["non-contrast"] * n, False
    if isinstance(contrast_phase, str):
        if contrast_phase == "random":
            return None, True
        if contrast_phase not in PHASES:
            raise ValueError(
                f"contrast_phase must be None, 'random', one of {PHASES} or a list of "
                f"these (one per subject), got {contrast_phase!r}"
            )
        return [contrast_phase] * n, False
    if isinstance(contrast_phase, (list, tuple, np.ndarray)):
        phases = list(contrast_phase)
        if len(phases) != n:
            raise ValueError(
                f"contrast_phase has {len(phases)} entries but n_subjects is {n}: give one "
                "phase per subject"
            )
        bad = [p for p in phases if p not in PHASES]
        if bad:
            raise ValueError(f"contrast_phase entries must be in {PHASES}, got {bad[0]!r}")
        return [str(p) for p in phases], False
    raise ValueError(
        f"contrast_phase must be None, 'random', one of {PHASES} or a list of these, "
        f"got {type(contrast_phase).__name__}"
    )


def _check_spacing(spacing, ndim):
    if spacing is None:
        return None
    try:
        sp = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"spacing must be None, a positive number or {ndim} positive numbers "
            f"(x, y[, z] mm), got {spacing!r}"
        ) from None
    if (
        sp.ndim > 1
        or (sp.ndim == 1 and sp.size != ndim)
        or not np.all(np.isfinite(sp))
        or np.any(sp <= 0)
    ):
        raise ValueError(
            f"spacing must be None, a positive number or {ndim} positive numbers "
            f"(x, y[, z] mm), got {spacing!r}"
        )
    if np.any(sp < 0.3) or np.any(sp > 20):
        raise ValueError(
            f"spacing must be between 0.3 and 20 mm (a phantom of ~400 mm), got {sp.tolist()}"
        )
    return sp


def _check_direction(direction, ndim):
    if direction is None:
        return None
    if isinstance(direction, str):
        if direction == "identity":
            return np.eye(ndim)
        raise ValueError(
            f"direction must be None (random), 'identity' or a {ndim}x{ndim} matrix, "
            f"got {direction!r}"
        )
    D = np.asarray(direction, dtype=np.float64)
    if D.shape == (ndim * ndim,):
        D = D.reshape(ndim, ndim)
    if (
        D.shape != (ndim, ndim)
        or not np.all(np.isfinite(D))
        or np.abs(D.T @ D - np.eye(ndim)).max() > 1e-4
    ):
        raise ValueError(
            f"direction must be None, 'identity' or an orthonormal {ndim}x{ndim} "
            f"matrix, got shape {D.shape}"
        )
    return D


def make_phantoms(
    n_subjects=4,
    *,
    ndim=3,
    contrast_phase=None,
    n_lesions=0,
    spacing=None,
    direction=None,
    field_of_view="random",
    noise=1.0,
    variation=1.0,
    random_state=None,
):
    """Generate synthetic torso CT volumes (or AP radiographs) with exact ground truth.

    Each subject is an analytic torso (body wall with fat and muscle, lungs with vessels and
    airways, heart with four chambers, aorta from the root through the arch to the iliac
    bifurcation, venae cavae, pulmonary and portal veins, liver, spleen, stomach, pancreas,
    kidneys, bowel, bladder, spine with vertebrae and discs, ribs, sternum, clavicles, scapulae,
    pelvis and femora), with real inter-subject variation: body size and fat, organ shape and
    position, breathing (diaphragm height, lung size), pose (small rotations), field of view,
    voxel spacing, origin and direction. See ``DESCR`` of the result for the full description.

    Parameters
    ----------
    n_subjects : int, default=4
        Number of subjects (positive).
    ndim : {3, 2}, default=3
        3: CT volumes in Hounsfield units. 2: AP radiographs, the line integrals of attenuation
        through each subject's phantom (the ``-log`` of the transmitted intensity, bone bright),
        with world axes (x, z) of the patient frame.
    contrast_phase : None, 'random', str or list of str, default=None
        Contrast phase per subject among ``PHASES`` = ('non-contrast', 'arterial', 'venous').
        None means non-contrast for all; 'random' draws one per subject; a list gives one each.
    n_lesions : int, default=0
        Number of lesions per subject: hypodense liver lesions and lung nodules (3D), lung nodules
        only (2D). Fewer are placed when the organs are outside the field of view.
    spacing : None, float or sequence, default=None
        Voxel spacing in mm (x, y[, z]). None draws it per subject: 3D in-plane 2.0-2.5 mm and
        slice spacing 3.5-5 mm (about 3 million voxels); 2D square pixels of 1.6-2.4 mm. Grids
        above 64 million voxels (e.g. 0.6 mm isotropic) are refused (ValueError).
    direction : None, 'identity' or array, default=None
        Image direction matrix. None draws it per subject: 3D identity (50 %), diag(-1, -1, 1)
        (35 %) or diag(1, -1, -1) (15 %); 2D diag(1, -1) (head up, 75 %) or diag(-1, -1).
    field_of_view : {'random', 'full'}, default='random'
        'random': per subject, a trunk scan from near the lung apices to near the femoral heads
        (70 %, each end cropped at random), or a 400-520 mm scan starting near the apices (15 %)
        or ending near the femoral heads (15 %); landmarks outside the field of view are NaN
        (the lung apices in about a quarter of the subjects, the femoral heads in about a
        third, mid-trunk landmarks almost never). The in-plane extent is jittered too. 'full'
        always covers from above the lung apices to below the femoral heads (600-700 mm).
    noise : float, default=1.0
        Noise level relative to the default (3D: about 20 HU standard deviation of correlated
        Gaussian noise; 2D: quantum noise of 4e4 photons per pixel). 0 disables noise.
    variation : float, default=1.0
        Scale of the anatomical variation and of the pose rotations between subjects, in
        [0, 1.5] (1: the default, realistic spread; 0: every subject has the same anatomy and
        orientation, while the position in the scanner, the scan geometry and the intensities
        still vary).
    random_state : None, int, numpy SeedSequence, Generator or RandomState, default=None
        Seed. The same seed gives identical subjects, and subject ``i`` does not depend on
        ``n_subjects``; with the same seed, the 2D subject ``i`` is a radiograph of the 3D
        subject ``i`` in the same pose (its landmarks are the (x, z) of the 3D ones).

    Returns
    -------
    data : sklearn.utils.Bunch
        images : list of Image
            CT volumes in HU (3D) or radiographs (2D), with exact world geometry.
        labels : list of Image
            Organ label maps on the same grids (values are keys of ``organ_names``). In 2D, each
            pixel gets the structure with the largest attenuation along its ray, bones weighted
            x5 and the body wall (fat, muscle) x0.02, i.e. what a reader would outline.
        organ_names : dict int -> str
            Label value -> organ name.
        landmarks : ndarray of shape (n_subjects, n_landmarks, ndim)
            World coordinates in mm, (x, y[, z]) order; NaN where a landmark is outside the
            subject's field of view (outside the hull of the voxel centres, so every finite
            landmark can be interpolated). In 2D the world point is (x, z) of the 3D point.
        landmark_names : list of str
        phase : list of str
            Contrast phase of each subject.
        lesions : list of ndarray of shape (n_lesions_i, 2 * ndim)
            Axis-aligned lesion boxes in world mm: (min corner, max corner), possibly empty.
        DESCR : str
    """
    from sklearn.utils import Bunch

    n_subjects = _check_int(n_subjects, "n_subjects", 1)
    opts = _check_options(
        n_subjects,
        ndim,
        contrast_phase,
        n_lesions,
        spacing,
        direction,
        field_of_view,
        noise,
        variation,
    )
    (visit,), _ = _generate(_seed_sequence(random_state), n_subjects, 1, opts)
    return Bunch(
        **visit,
        organ_names=dict(ORGAN_NAMES),
        landmark_names=list(LANDMARK_NAMES),
        DESCR=_descr(opts["ndim"]),
    )


def make_phantom_pair(
    n_pairs=1,
    *,
    ndim=3,
    contrast_phase=None,
    n_lesions=0,
    spacing=None,
    direction=None,
    field_of_view="random",
    noise=1.0,
    variation=1.0,
    random_state=None,
):
    """Two scans of the same subjects (baseline ``fixed`` and follow-up ``moving``), with the
    exact correspondence between them.

    Both scans of a pair share the anatomy (breath-hold included) and the lesions; each has its
    own pose (position and small rotation in the scanner), scan geometry (field of view, spacing,
    origin, direction), contrast phase draw and noise. The scene moves rigidly between the two
    scans, so ``transforms`` is the ground truth for registration, and landmarks and lesion boxes
    correspond row by row (for lesion matching). Parameters are those of :func:`make_phantoms`
    (``n_pairs`` instead of ``n_subjects``; with ``contrast_phase='random'`` each scan draws its
    own phase). Lesions are placed inside both fields of view. The ``fixed`` scans are identical
    to ``make_phantoms(n_pairs, ...)`` with the same arguments when ``n_lesions=0``.

    Returns
    -------
    data : sklearn.utils.Bunch
        fixed, moving : Bunch
            Each with ``images``, ``labels``, ``landmarks``, ``phase`` and ``lesions`` as returned
            by :func:`make_phantoms`.
        transforms : ndarray of shape (n_pairs, 4, 4)
            Homogeneous rigid transforms mapping 3D world points (mm) of the fixed scan to the
            same anatomical points in the moving scan: ``p_moving = T[:3, :3] @ p_fixed +
            T[:3, 3]``. For ``ndim=2`` they relate the 3D scenes the radiographs project.
        organ_names, landmark_names, DESCR
            As in :func:`make_phantoms`.
    """
    from sklearn.utils import Bunch

    n_pairs = _check_int(n_pairs, "n_pairs", 1)
    opts = _check_options(
        n_pairs,
        ndim,
        contrast_phase,
        n_lesions,
        spacing,
        direction,
        field_of_view,
        noise,
        variation,
    )
    (fixed, moving), transforms = _generate(_seed_sequence(random_state), n_pairs, 2, opts)
    return Bunch(
        fixed=Bunch(**fixed),
        moving=Bunch(**moving),
        transforms=np.stack(transforms),
        organ_names=dict(ORGAN_NAMES),
        landmark_names=list(LANDMARK_NAMES),
        DESCR=_descr(opts["ndim"]),
    )


def _check_options(
    n, ndim, contrast_phase, n_lesions, spacing, direction, field_of_view, noise, variation
):
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (radiographs) or 3 (CT volumes), got {ndim!r}")
    ndim = int(ndim)
    phases, random_phase = _check_phases(contrast_phase, n)
    if field_of_view not in ("random", "full"):
        raise ValueError(f"field_of_view must be 'random' or 'full', got {field_of_view!r}")
    return dict(
        ndim=ndim,
        phases=phases,
        random_phase=random_phase,
        n_lesions=_check_int(n_lesions, "n_lesions", 0),
        spacing=_check_spacing(spacing, ndim),
        direction=_check_direction(direction, ndim),
        fov=field_of_view,
        noise=_check_float(noise, "noise", 0.0, 10.0),
        variation=_check_float(variation, "variation", 0.0, 1.5),
    )


def _visit_rng(ss, i, stream, visit):
    """Random stream ``stream`` of subject ``i`` for scan ``visit`` (visit 0 = make_phantoms)."""
    return _child(ss, i, stream) if visit == 0 else _child(ss, i, stream, visit)


def _generate(ss, n, n_visits, o):
    """Subjects 0..n-1, each scanned ``n_visits`` times: per visit, a dict of lists (images,
    labels, landmarks, phase, lesions), and the fixed -> moving world transforms (n_visits=2)."""
    ndim = o["ndim"]
    out = [dict(images=[], labels=[], landmarks=[], phase=[], lesions=[]) for _ in range(n_visits)]
    transforms = []
    for i in range(n):
        torso = _Torso(_child(ss, i, 0), o["variation"])
        scans = []
        for v in range(n_visits):
            pose = _draw_pose(_visit_rng(ss, i, 1, v), o["variation"])
            g3, g2 = _scan_geometry(
                _visit_rng(ss, i, 2, v), torso, pose, ndim, o["spacing"], o["direction"], o["fov"]
            )
            if o["random_phase"]:
                ph = PHASES[int(_visit_rng(ss, i, 5, v).integers(3))]
            else:
                ph = o["phases"][i]
            n_vox = int(np.prod(g3.size))
            if n_vox > _MAX_VOXELS:
                what = "grid" if ndim == 3 else "3D grid projected into the radiograph"
                raise ValueError(
                    f"spacing {np.round(g3.spacing, 3).tolist()} gives a {what} of "
                    f"{n_vox / 1e6:.0f} million voxels for subject {i} (more than "
                    f"{_MAX_VOXELS / 1e6:.0f} million, about 40 bytes each while painting): use a "
                    "coarser spacing"
                )
            scans.append((pose, g3, g2, ph))
        organs = ("liver", "lung", "lung") if ndim == 3 else ("lung",)
        lesions = _place_lesions(
            _child(ss, i, 4), torso, o["n_lesions"], organs, [(sc[0], sc[1]) for sc in scans]
        )
        for v, (pose, g3, g2, ph) in enumerate(scans):
            hu = _subject_hu(_visit_rng(ss, i, 3, v), ph)
            cv = _canvas_for(torso, g3, pose)
            torso.paint(cv, hu)
            _paint_lesions(cv, lesions, hu)
            lm = torso.landmarks() @ pose[0].T + pose[1]
            rng_noise = _visit_rng(ss, i, 6, v)
            if ndim == 3:
                arr = cv.hu
                if o["noise"] > 0:
                    amp = np.float32(20.0 * o["noise"] / 0.292 * np.sqrt(12.0))
                    arr += (rng_noise.random(arr.shape, dtype=np.float32) - np.float32(0.5)) * amp
                arr = _smooth3(arr, 0.2)
                np.clip(arr, -1024.0, 3071.0, out=arr)
                img, lab, geom = Image(arr, g3), Image(cv.lab.astype(np.float32), g3), g3
            else:
                P, lab2 = _project(cv, g3, rng_noise, o["noise"])
                img, lab, geom = Image(P, g2), Image(lab2, g2), g2
                lm = lm[:, [0, 2]]
            lm[~geom.contains(lm, margin=0.0)] = np.nan
            out[v]["images"].append(img)
            out[v]["labels"].append(lab)
            out[v]["landmarks"].append(lm)
            out[v]["phase"].append(ph)
            out[v]["lesions"].append(_lesion_boxes(lesions, pose, ndim))
        if n_visits == 2:
            (Rf, tf), (Rm, tm) = scans[0][0], scans[1][0]
            T = np.eye(4)
            T[:3, :3] = Rm @ Rf.T
            T[:3, 3] = tm - Rm @ Rf.T @ tf
            transforms.append(T)
    for visit in out:
        visit["landmarks"] = np.stack(visit["landmarks"])
    return out, transforms


def _descr(ndim):
    kind = (
        "CT-like torso volumes in Hounsfield units (air -1000, fat -100, soft tissue 30-60, "
        "lung -850, bone 250-1000), with correlated noise of ~20 HU and a partial-volume blur."
        if ndim == 3
        else "AP radiographs: line integrals of linear attenuation (mu = 0.02/mm x (1 + HU/1000)) "
        "through a 3D phantom along the antero-posterior axis, i.e. -log of the transmitted "
        "intensity, with quantum noise; world axes are (x, z) of the patient frame (head up for "
        "direction diag(1, -1)), bone is bright."
    )
    lines = [
        "Synthetic torso phantoms (samlearn.datasets.make_phantoms)",
        "==========================================================",
        "",
        *textwrap.wrap(kind, 96),
        "",
        *textwrap.wrap(
            "Anatomy: body outline with subcutaneous fat and a muscle wall; lungs (with a "
            "dependent density gradient, branching pulmonary vessels and lobar bronchi) over two "
            "diaphragm domes; trachea and main bronchi; heart with four chambers; aorta (root, "
            "ascending, arch with three branches, descending, abdominal, iliac arteries); SVC, "
            "IVC, pulmonary arteries and veins; liver with portal and hepatic veins; gallbladder; "
            "spleen; stomach with an air-fluid level; pancreas; kidneys (cortex, medulla, sinus); "
            "colon, small bowel, duodenum; bladder; cervical to lumbar vertebrae with discs, "
            "neural arches and processes; ribs with costal cartilages; sternum; clavicles; "
            "scapulae; sacrum, ilia, acetabula, pubic and ischial rami; femora.",
            96,
        ),
        "",
        *textwrap.wrap(
            "Inter-subject variation: body size and fat, spine curvature, organ size, position "
            "and orientation, breathing (diaphragm +-16 mm), pose (yaw ~3 deg, tilts ~1.5 deg, "
            "position in the scanner), field of view, spacing, origin and direction, tissue "
            "intensities, bolus strength and timing inside the contrast phase.",
            96,
        ),
        "",
        *textwrap.wrap(
            "Coordinates: world millimetres in (x, y[, z]) order (LPS, as SimpleITK); the patient "
            "frame (x to the patient's left, y posterior, z superior) is rotated and translated "
            "by the pose. Landmarks are computed from each subject's own shapes; poles, tips and "
            "domes are located on the painted organ itself. A landmark outside the hull of an "
            "image's voxel centres is NaN.",
            96,
        ),
        "",
        "Landmarks:",
        *(f"  {n}: {d}" for n, d in _LANDMARK_DOC.items()),
        "",
        "Mean tissue HU (non-contrast / arterial / venous), jittered per subject; enhancement",
        "scaled by a bolus factor (0.88-1.12) and by the timing inside the phase (early/late):",
        *(f"  {n}: {v[0]} / {v[1]} / {v[2]}" for n, v in _TISSUE_HU.items() if n != "air"),
        "",
        "Labels (organ_names):",
        *textwrap.wrap(
            ", ".join(f"{k}={v}" for k, v in ORGAN_NAMES.items()),
            94,
            initial_indent="  ",
            subsequent_indent="  ",
        ),
    ]
    return "\n".join(lines) + "\n"
