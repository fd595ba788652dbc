"""The painting target of the torso phantoms: the voxel grid of an image seen through its exact
world geometry, or a list of points (to read the exact labels of the anatomy anywhere, with no
grid involved)."""

from __future__ import annotations

import numpy as np

from ...image import ImageGeometry

__all__ = ["Canvas"]


class Canvas:
    """Target of the painting: a voxel grid (an image) or a list of points.

    Coordinates are in the patient frame (mm). Painters ask :meth:`region` (or :meth:`chunks`)
    for the sub-domain a shape may cover, set intensities and labels with :meth:`paint`,
    :meth:`paint_at` or :meth:`splat`, and read per-z tables of the torso with :meth:`ztab`.
    Use :meth:`for_grid` or :meth:`for_points` to make one.

    Parameters
    ----------
    X, Y, Z : ndarray of float32
        Patient-frame coordinates of every voxel (shape (nz, ny, nx)) or point (shape (n,)).
    grid : bool
        True for a voxel grid, False for a list of points.
    z0 : float
        Patient-frame z of the first row of the per-z tables (mm).
    inv_dz : float
        Rows of the per-z tables per mm.
    nz_tab : int
        Number of rows of the per-z tables.

    Attributes
    ----------
    hu : ndarray of float32
        Intensities (HU); -1000 (air) before anything is painted.
    lab : ndarray of uint8
        Labels (keys of ``ORGAN_NAMES``); 0 (background) before anything is painted.
    ZI : ndarray of int32
        Row of the per-z tables of every voxel.
    cavity : ndarray of bool or None
        Inside the body cavity; set by the body painter.
    qcav : ndarray of float32 or None
        Normalised radius squared of the cavity cross-section (the ribs sit just outside it);
        set by the body painter.
    """

    def __init__(self, X, Y, Z, grid, z0, inv_dz, nz_tab):
        self.X, self.Y, self.Z = X, Y, Z
        self.grid = grid
        self.hu = np.full(X.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(X.shape, dtype=np.uint8)
        zi = (Z - np.float32(z0)) * np.float32(inv_dz)
        np.clip(zi, 0, nz_tab - 1, out=zi)
        self.ZI = zi.astype(np.int32)
        self.cavity = None
        self.qcav = None

    # -- construction
    @classmethod
    def for_grid(cls, geometry: ImageGeometry, pose_R, pose_t, z0, inv_dz, nz_tab):
        """Canvas on the voxel grid of an image, for a subject in a given pose.

        Parameters
        ----------
        geometry : ImageGeometry
            The 3D grid (size, spacing, origin, direction; world mm).
        pose_R : ndarray of shape (3, 3)
            Rotation of the pose: ``world = pose_R @ patient + pose_t``.
        pose_t : ndarray of shape (3,)
            Translation of the pose (mm).
        z0, inv_dz, nz_tab
            The per-z tables, as in :class:`Canvas`.

        Returns
        -------
        canvas : Canvas
            Also holding the affine map ``patient = A @ (i, j, k) + b`` of voxel indices
            (``A``, ``b``, ``Ainv``, ``absAinv``) and the grid ``size``.
        """
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
        """Canvas on a list of patient-frame points.

        Parameters
        ----------
        pts : array-like of shape (n, 3)
            Points (mm).
        z0, inv_dz, nz_tab
            The per-z tables, as in :class:`Canvas`.

        Returns
        -------
        canvas : Canvas
        """
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
        """Sub-domain covering a patient-frame box.

        Parameters
        ----------
        lo, hi : array-like of shape (3,)
            Corners of the box (mm).

        Returns
        -------
        region : tuple (key, X, Y, Z) or None
            ``key`` indexes the canvas arrays (slices on a grid, point indices otherwise) and
            X, Y, Z are the coordinates there; None when the box misses the canvas.
        """
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
        """Split a region into slabs of a few slices, so that the many passes of a painter stay
        in cache.

        Parameters
        ----------
        reg : tuple or None
            A region from :meth:`region`.
        voxels : int, default=600_000
            Approximate size of a slab.

        Yields
        ------
        region : tuple (key, X, Y, Z)
            The slabs (a point region comes whole; None yields nothing).
        """
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

    def ztab(self, table, key):
        """Values of a per-z table at the voxels of a region.

        Parameters
        ----------
        table : ndarray of shape (nz_tab,)
        key : region key

        Returns
        -------
        values : ndarray shaped like the region
        """
        return table[self.ZI[key]]

    def splat(self, pts, value, allowed, thick=False):
        """Set ``value`` at the voxels nearest to many points (vessels a voxel or two wide).

        Labels are kept. A no-op on point canvases.

        Parameters
        ----------
        pts : array-like of shape (n, 3)
            Patient-frame points (mm).
        value : float
            Intensity to set.
        allowed : ndarray of bool
            Labels that may be painted over.
        thick : bool, default=False
            Also paint the 6 face neighbours of every voxel.
        """
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
        """Like :meth:`paint`, for a few voxels of a large region.

        Parameters
        ----------
        key : region key
        idx : tuple of ndarray
            Indices of the voxels within the region, as returned by ``np.nonzero``.
        value, label, allowed
            As in :meth:`paint` (``value`` a scalar, ``label`` not None).
        """
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
        """Set intensities and labels where a mask holds.

        Parameters
        ----------
        key : region key
        mask : ndarray of bool shaped like the region
        value : float or ndarray shaped like the region
            Intensity (HU).
        label : int or None
            Label to set; None keeps the current labels (e.g. vessels inside the lungs).
        allowed : ndarray of bool, default=None
            Lookup table over labels: only voxels whose current label is allowed are painted.
        """
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
