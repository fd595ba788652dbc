"""Geometry helpers and the primitive painters of the torso phantoms.

Every organ is built from a few analytic shapes in the patient frame (mm): ellipsoids, capsules
(tubes along polylines and splines), elliptic cylinders and curved plates. A primitive asks the
:class:`~samlearn.datasets.phantoms.canvas.Canvas` for the sub-domain its bounding box covers,
evaluates its implicit form there and paints the voxels (or points) inside.

Conventions shared by the painters: ``value`` is the intensity (HU) to set, ``label`` the organ
label (``None`` keeps the current labels) and ``allowed`` a boolean lookup table over labels
(:func:`~samlearn.datasets.phantoms.tables.label_lut`): only voxels whose current label is
allowed are painted.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "unit",
    "rotation",
    "orthonormal_frame",
    "spline",
    "resample_polyline",
    "ellipsoid_mask",
    "paint_ellipsoid",
    "capsule_distance",
    "capsule_mask",
    "paint_tube",
    "paint_tubes",
    "paint_cylinder",
    "plate_mask",
]


# ============================================================================= small maths
def unit(v):
    """The vector ``v`` divided by its norm.

    Parameters
    ----------
    v : array-like of shape (3,)

    Returns
    -------
    u : ndarray of shape (3,)
    """
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def rotation(axis, deg):
    """Rotation matrix about a coordinate axis.

    Parameters
    ----------
    axis : {0, 1, 2}
        The axis (x, y or z).
    deg : float
        The angle in degrees (counter-clockwise looking down the axis).

    Returns
    -------
    R : ndarray of shape (3, 3)
    """
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def orthonormal_frame(u, hint=(0.0, 0.0, 1.0)):
    """Orthonormal frame whose first axis is the direction of ``u``.

    Parameters
    ----------
    u : array-like of shape (3,)
        Direction of the first axis.
    hint : array-like of shape (3,), default=(0, 0, 1)
        A direction the frame's third axis leans towards (replaced by x when nearly parallel to
        ``u``).

    Returns
    -------
    frame : ndarray of shape (3, 3)
        The axes (u, v, w) as columns.
    """
    u = unit(u)
    h = np.asarray(hint, dtype=np.float64)
    if abs(np.dot(u, unit(h))) > 0.95:
        h = np.array([1.0, 0.0, 0.0])
    v = unit(np.cross(h, u))
    w = np.cross(u, v)
    return np.stack([u, v, w], axis=1)


def spline(points, step=4.0):
    """Dense points along a Catmull-Rom spline through control points.

    Parameters
    ----------
    points : array-like of shape (n, 3)
        Control points (mm).
    step : float, default=4.0
        Approximate distance between the dense points (mm).

    Returns
    -------
    dense : ndarray of shape (m, 3)
        Points along the spline, from the first control point to the last.
    position : ndarray of shape (m,)
        Fractional position of each dense point along the control polygon (``k`` at control
        point ``k``), for interpolating radii given per control point.
    """
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


def resample_polyline(pts, radii, step):
    """Resample a polyline and its radii at about ``step`` mm along its length.

    Parameters
    ----------
    pts : ndarray of shape (n, 3)
        Polyline vertices (mm).
    radii : ndarray of shape (n,)
        Radius at each vertex (mm).
    step : float
        Approximate distance between the new vertices (mm).

    Returns
    -------
    pts : ndarray of shape (m, 3)
    radii : ndarray of shape (m,)
    """
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(t, s, pts[:, k]) for k in range(3)], axis=1)
    return out, np.interp(t, s, radii)


# ============================================================================= primitives
def ellipsoid_mask(cv, c, semi, R=None, margin=0.0, region=None):
    """Mask of an ellipsoid over the canvas region of its bounding box.

    Parameters
    ----------
    cv : Canvas
    c : array-like of shape (3,)
        Centre (mm).
    semi : array-like of shape (3,)
        Semi-axes (mm) along the columns of ``R``.
    R : ndarray of shape (3, 3), default=None
        Orientation (axes as columns); None is the identity.
    margin : float, default=0.0
        Added to every semi-axis (mm; negative shrinks).
    region : tuple, default=None
        A canvas region to evaluate on instead of the ellipsoid's own bounding box.

    Returns
    -------
    result : tuple (key, mask, q) or None
        The region key, the mask ``q <= 1`` and ``q``, the quadratic form
        ``(p - c)^T R diag(semi)^-2 R^T (p - c)``; None when the box misses the canvas.
    """
    c = np.asarray(c, dtype=np.float64)
    semi = np.asarray(semi, dtype=np.float64) + margin
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


def paint_ellipsoid(cv, c, semi, R, value, label, allowed=None, margin=0.0, extra=None):
    """Paint an ellipsoid (see :func:`ellipsoid_mask`).

    Parameters
    ----------
    cv : Canvas
    c, semi, R, margin
        The ellipsoid, as in :func:`ellipsoid_mask`.
    value, label, allowed
        What to paint and over which labels (see the module docstring).
    extra : callable, default=None
        ``extra(key) -> mask`` further restricting the painted voxels of the region ``key``.
    """
    r = ellipsoid_mask(cv, c, semi, R, margin=margin)
    if r is None:
        return
    key, m, _ = r
    if extra is not None:
        m &= extra(key)
    cv.paint(key, m, value, label, allowed)


def capsule_distance(cv, p0, p1, r0, r1, pad=0.0):
    """Squared distance to a segment and the radius interpolated along it.

    Parameters
    ----------
    cv : Canvas
    p0, p1 : array-like of shape (3,)
        End points of the segment (mm).
    r0, r1 : float
        Radii at ``p0`` and ``p1`` (mm).
    pad : float, default=0.0
        Grows the region beyond the capsule (for outer layers such as walls).

    Returns
    -------
    result : tuple (key, dist2, radius, region) or None
        Over the region of the capsule's bounding box: the squared distance to the segment, the
        radius at the nearest point of the segment, and the region itself; None when the box
        misses the canvas.
    """
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


def capsule_mask(cv, p0, p1, r0, r1):
    """Mask of a capsule (a segment with linearly varying radius).

    Parameters
    ----------
    cv : Canvas
    p0, p1, r0, r1
        As in :func:`capsule_distance`.

    Returns
    -------
    result : tuple (key, mask) or None
    """
    res = capsule_distance(cv, p0, p1, r0, r1)
    if res is None:
        return None
    key, d2, r, _ = res
    return key, d2 <= r * r


def paint_tube(cv, pts, radii, layers, allowed=None):
    """Paint one tube along a polyline (see :func:`paint_tubes`).

    Parameters
    ----------
    cv : Canvas
    pts : array-like of shape (n, 3)
        Polyline vertices (mm).
    radii : float or array-like of shape (n,)
        Radius at each vertex (mm).
    layers, allowed
        As in :func:`paint_tubes`.
    """
    paint_tubes(cv, [(pts, radii)], layers, allowed)


def paint_tubes(cv, tubes, layers, allowed=None):
    """Paint tubes along polylines, layer by layer.

    Each layer is painted over all the tubes before the next one (walls first, then lumens), so
    that joints and branchings stay clean. Polylines of more than two vertices are resampled
    every 10-24 mm (depending on their radius) and painted as a chain of capsules.

    Parameters
    ----------
    cv : Canvas
    tubes : list of (points, radii)
        Polylines (n, 3) in mm and their radii (a float or one per vertex).
    layers : list of tuple
        ``(radius_offset_mm, value, label[, allowed])``: the offset is added to the tube radius;
        ``value`` may be a callable ``f(X, Y, Z) -> array`` (e.g. mottled bowel content); a
        layer's own ``allowed`` replaces the argument.
    allowed : ndarray of bool, default=None
        Labels the layers may paint over (None: any).
    """
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
            pts, radii = resample_polyline(pts, radii, step)
        for i in range(len(pts) - 1):
            res = capsule_distance(cv, pts[i], pts[i + 1], radii[i], radii[i + 1], pad)
            if res is not None:
                segs.append(res)
    for layer in layers:
        off, value, label = layer[:3]
        ok = layer[3] if len(layer) > 3 else allowed
        for key, d2, r, reg in segs:
            rr = np.maximum(r + np.float32(off), np.float32(0.2))
            cv.paint(key, d2 <= rr * rr, value(*reg[1:]) if callable(value) else value, label, ok)


def paint_cylinder(cv, xc, yc, rx, ry, z0, z1, value, label, allowed):
    """Paint an elliptic cylinder along z (vertebral bodies and discs).

    Parameters
    ----------
    cv : Canvas
    xc, yc : float
        Axis position (mm).
    rx, ry : float
        Semi-axes of the cross-section along x and y (mm).
    z0, z1 : float
        Bottom and top (mm).
    value, label, allowed
        What to paint and over which labels (see the module docstring).
    """
    reg = cv.region((xc - rx, yc - ry, z0), (xc + rx, yc + ry, z1))
    if reg is None:
        return
    key, X, Y, Z = reg
    dx, dy = (X - np.float32(xc)) / np.float32(rx), (Y - np.float32(yc)) / np.float32(ry)
    cv.paint(key, (dx * dx + dy * dy <= 1.0) & (Z >= z0) & (Z <= z1), value, label, allowed)


def plate_mask(cv, c, frame, a, b, thick, kappa=0.0, taper=0.0):
    """Mask of a curved elliptic plate (scapulae, ilia).

    Parameters
    ----------
    cv : Canvas
    c : array-like of shape (3,)
        Centre (mm).
    frame : ndarray of shape (3, 3)
        In-plane axes (columns 0 and 1) and normal (column 2).
    a, b : float
        In-plane semi-axes along ``frame[:, 0]`` and ``frame[:, 1]`` (mm).
    thick : float
        Extent along the normal covered by the region (mm).
    kappa : float, default=0.0
        Bending: the normal coordinate becomes ``w - kappa (u^2 + v^2)``.
    taper : float, default=0.0
        Narrows the plate towards ``v = -b`` (triangle-like, for scapulae).

    Returns
    -------
    result : tuple (key, inside, w) or None
        The region key, the in-plane mask and the (bent) normal coordinate ``w`` (mm), with
        which the caller chooses the thickness; None when the box misses the canvas.
    """
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
