"""One scan of a phantom subject: the tissue intensities of its contrast phase, its pose in the
scanner, the field of view and voxel grid, and the finished image (a CT with noise and blur, or
an AP radiograph projected through the painted volume)."""

from __future__ import annotations

import numpy as np

from ...image import ImageGeometry
from .shapes import rotation
from .tables import BASE_JITTER, N_LABELS, PHASES, TIMING, TISSUE_HU, label_lut

__all__ = [
    "subject_hu",
    "draw_pose",
    "grid_for_box",
    "scan_geometry",
    "ct_image",
    "smooth3",
    "project",
]

#: Linear attenuation of water at about 70 keV (1/mm), for the radiographs.
MU_WATER = 0.02
#: Image directions drawn when none is given: 3D (50 %, 35 %, 15 %) and 2D (75 %, 25 %).
DIRECTIONS_3D = (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0]))
DIRECTIONS_2D = (np.diag([1.0, -1.0]), np.diag([-1.0, -1.0]))


def subject_hu(rng, phase):
    """Tissue intensities of one scan in a contrast phase.

    Each tissue's baseline is jittered, its enhancement scaled by a bolus strength and by the
    timing inside the phase. The number of draws does not depend on the phase.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scan's intensity stream.
    phase : str
        One of :data:`~samlearn.datasets.phantoms.tables.PHASES`.

    Returns
    -------
    hu : dict
        Tissue name (keys of ``TISSUE_HU``) -> mean HU.
    """
    p = PHASES.index(phase)
    bolus = rng.uniform(0.88, 1.12)
    timing = rng.uniform(0.0, 1.0)
    out = {}
    for name, vals in TISSUE_HU.items():
        base = vals[0] + BASE_JITTER.get(name, 4.0) * np.clip(rng.normal(), -2.5, 2.5)
        enh = (vals[p] - vals[0]) * bolus * (1.0 + 0.05 * np.clip(rng.normal(), -2.0, 2.0))
        enh *= 1.0 + TIMING.get(phase, {}).get(name, 0.0) * (timing - 0.5) * 2.0
        out[name] = float(base + enh)
    return out


def draw_pose(rng, variation):
    """Pose of the subject in the scanner: small rotations and a position.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scan's pose stream.
    variation : float
        Scales the rotations (0: none).

    Returns
    -------
    R : ndarray of shape (3, 3)
    t : ndarray of shape (3,)
        ``world = R @ patient + t`` (mm).
    """
    v = variation

    def c(s):
        return v * s * float(np.clip(rng.standard_normal(), -2.5, 2.5))

    R = rotation(2, c(3.0)) @ rotation(0, c(1.5)) @ rotation(1, c(1.5))
    t = np.array([rng.normal(0.0, 15.0), rng.normal(0.0, 20.0) - 40.0, rng.uniform(-750.0, -150.0)])
    return R, t


def grid_for_box(center, half, spacing, D):
    """Voxel grid with a given direction and spacing that covers a world box.

    Parameters
    ----------
    center, half : ndarray of shape (ndim,)
        Centre and half-extent of the box (mm).
    spacing : ndarray of shape (ndim,)
    D : ndarray of shape (ndim, ndim)
        Direction matrix.

    Returns
    -------
    size : ndarray of int
    origin : ndarray of shape (ndim,)
        World position of the first voxel centre.
    """
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    ext = np.abs(corners @ D).max(0)
    size = np.maximum(np.ceil(2.0 * ext / spacing - 1e-9).astype(int), 1)
    origin = center - D @ ((size - 1) / 2.0 * spacing)
    return size, origin


def scan_geometry(rng, torso, pose, ndim, spacing, direction, fov):
    """Field of view and voxel grid of one scan.

    Parameters
    ----------
    rng : numpy.random.Generator
        The scan's geometry stream.
    torso : Torso
    pose : tuple (R, t)
        From :func:`draw_pose`.
    ndim : {2, 3}
    spacing : ndarray or None
        Checked spacing, or None to draw it.
    direction : ndarray or None
        Checked direction, or None to draw it.
    fov : {"random", "full"}

    Returns
    -------
    geometry3 : ImageGeometry
        The 3D grid that is painted.
    geometry2 : ImageGeometry or None
        For ``ndim=2``, the radiograph's grid (the x-z plane of ``geometry3``); None in 3D.
    """
    center, half = _field_of_view(rng, torso, pose, fov)
    sp = _voxel_spacing(rng, ndim, spacing)
    choice = rng.uniform()
    if ndim == 3:
        if direction is None:
            D = DIRECTIONS_3D[0 if choice < 0.5 else (1 if choice < 0.85 else 2)]
        else:
            D = direction
        size, origin = grid_for_box(center, half, sp, D)
        return ImageGeometry(tuple(int(s) for s in size), sp, origin, D), None
    D2 = (DIRECTIONS_2D[0 if choice < 0.75 else 1]) if direction is None else direction
    # 3D grid in the x-z plane of the radiograph, y (beam direction) sampled every 4 mm
    D3 = np.array([[D2[0, 0], 0.0, D2[0, 1]], [0.0, 1.0, 0.0], [D2[1, 0], 0.0, D2[1, 1]]])
    half3 = half.copy()
    half3[1] += 25.0
    sp3 = np.array([sp[0], 4.0, sp[1]])
    size, origin = grid_for_box(center, half3, sp3, D3)
    g3 = ImageGeometry(tuple(int(s) for s in size), sp3, origin, D3)
    g2 = ImageGeometry((int(size[0]), int(size[2])), sp, origin[[0, 2]], D2)
    return g3, g2


def _field_of_view(rng, torso, pose, fov):
    """World box (centre, half-extent) of the scan: its z range anchored on the lung apices
    and the femoral heads (a trunk scan cropped at random, or a chest-first or pelvis-anchored
    scan of 400-520 mm), its in-plane extent the body's plus a jittered margin."""
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
    return center, half


def _voxel_spacing(rng, ndim, spacing):
    """The given spacing as an ndim vector, or one drawn: 3D in-plane 2.0-2.5 mm and slices
    3.5-5 mm; 2D square pixels of 1.6-2.4 mm."""
    if spacing is None:
        if ndim == 3:
            s_xy = rng.uniform(2.0, 2.5)
            sp = np.array([s_xy, s_xy, rng.uniform(3.5, 5.0)])
        else:
            s = rng.uniform(1.6, 2.4)
            sp = np.array([s, s])
    else:
        sp = np.broadcast_to(np.asarray(spacing, float), (ndim,)).copy()
    return sp


def ct_image(cv, rng, noise):
    """The CT of a painted canvas: uniform noise (correlated by the blur), the partial-volume
    blur, and clipping to the CT range.

    Parameters
    ----------
    cv : Canvas
        A painted grid canvas (its ``hu`` is modified in place).
    rng : numpy.random.Generator
        The scan's noise stream.
    noise : float
        Noise level relative to the default (about 20 HU after the blur); 0 disables it.

    Returns
    -------
    arr : ndarray of float32, shape (nz, ny, nx)
    """
    arr = cv.hu
    if noise > 0:
        amp = np.float32(20.0 * noise / 0.292 * np.sqrt(12.0))
        arr += (rng.random(arr.shape, dtype=np.float32) - np.float32(0.5)) * amp
    arr = smooth3(arr, 0.2)
    np.clip(arr, -1024.0, 3071.0, out=arr)
    return arr


def smooth3(arr, w=0.2):
    """Separable 3-tap blur ``[w, 1 - 2w, w]`` along every axis, edges repeated (the
    partial-volume effect, or the detector's point-spread function).

    Parameters
    ----------
    arr : ndarray of float32
    w : float, default=0.2

    Returns
    -------
    blurred : ndarray of float32, C-contiguous
    """
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


def project(cv, geometry3, rng, noise):
    """AP radiograph of a painted canvas: line integrals of attenuation along the y (beam)
    axis, in the log domain, with quantum noise and the detector blur.

    Parameters
    ----------
    cv : Canvas
        A painted grid canvas whose y axis is the beam direction.
    geometry3 : ImageGeometry
        Its grid (the beam is sampled every ``spacing[1]`` mm).
    rng : numpy.random.Generator
        The scan's noise stream.
    noise : float
        Noise level relative to the default (4e4 photons per pixel); 0 disables it.

    Returns
    -------
    image : ndarray of float32, shape (rows, cols)
        ``-log`` of the transmitted intensity (bone bright).
    labels : ndarray of float32, shape (rows, cols)
        Per pixel, the structure with the largest weighted attenuation along the ray (bones x5,
        organs x1, body wall x0.02): what a reader would outline on a radiograph.
    """
    mu = np.clip(cv.hu * np.float32(MU_WATER / 1000.0) + np.float32(MU_WATER), 0.0, None)
    P = mu.sum(axis=1) * np.float32(geometry3.spacing[1])  # (rows, cols)
    if noise > 0:
        i0 = 4.0e4 / noise**2
        counts = rng.poisson(i0 * np.exp(-P.astype(np.float64)))
        P = -np.log(np.maximum(counts, 0.5) / i0)
    P = smooth3(P.astype(np.float32), 0.15)
    # label: the structure with the largest weighted attenuation along the ray (bones x5, organs
    # x1, body wall x0.02): what a reader would outline on a radiograph
    lab = cv.lab
    factor = np.ones(N_LABELS, np.float32)
    factor[label_lut("subcutaneous_fat", "visceral_fat", "muscle")] = 0.02
    factor[
        label_lut(
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
    base = (np.arange(rows * cols, dtype=np.int32) * N_LABELS).reshape(rows, 1, cols)
    acc = np.bincount(
        (base + lab).ravel(), weights=weight.ravel(), minlength=rows * cols * N_LABELS
    ).reshape(rows, cols, N_LABELS)
    acc[..., 0] = 0.0
    lab2 = np.where(acc.max(-1) > 0, acc.argmax(-1), 0).astype(np.float32)
    return P.astype(np.float32), lab2
