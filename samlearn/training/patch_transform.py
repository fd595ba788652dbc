"""Patch transforms with exact voxel correspondences (paper §III-B), and feature-grid conventions.

Everything here works on **array indices in numpy order** (``(z, y, x)`` in 3D, ``(y, x)`` in 2D):
the source image is already at the network's working resolution and its spacing is only used to
express positions in millimetres.

A :class:`PatchTransform` is a concrete, deterministic mapping from patch indices ``u`` to source
indices ``x = M @ u + t + d(u)``, with ``d(u) = M @ e(u)`` a smooth elastic displacement
(:mod:`samlearn.training.elastic`), and its exact inverse. ``apply`` resamples a source array onto
the patch grid (linear interpolation, values outside the source set to ``cval``, exactly
``scipy.ndimage.map_coordinates(order=1, mode="constant")``). ``to_dict`` / ``from_dict`` replay a
drawn transform bit for bit.

Conventions
-----------
* A patch of shape ``P`` covers the continuous index box ``[0, P - 1]`` per axis (the hull of its
  voxel centres).
* A feature map of stride ``s`` has voxel ``i`` at patch index ``s * i + (s - 1) / 2`` and
  ``ceil(P / s)`` voxels per axis (the same rule as :meth:`samlearn.image.ImageGeometry.strided`).
* ``scale`` is *source voxels per patch voxel*: ``scale > 1`` zooms out (the crop is larger than
  the patch).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._checks import check_index_points, check_number, check_patch_shape, check_stride, per_axis
from .elastic import (MAX_ELASTIC_LIPSCHITZ, bspline_contract, bspline_matrix, bspline_weights,
                      elastic_lipschitz)

__all__ = ["PatchTransform", "feature_grid_positions", "patch_to_feature_index"]


_INVERSE_TOL = 1e-10         # relative residual (patch voxels) at which an inverse converged


_INVERSE_MAX_ITER = 200


_INVERSE_RESIDUAL = 1e-4     # source voxels; larger residual -> NaN


# ---------------------------------------------------------------------------------------------
# feature-grid conventions
def feature_grid_positions(patch_shape, stride=1) -> list:
    """Patch indices of the voxel centres of a stride-``s`` feature grid.

    Feature voxel ``i`` sits at patch index ``s * i + (s - 1) / 2``; ``ceil(P / s)`` voxels per
    axis.

    Parameters
    ----------
    patch_shape : sequence of int
        Patch shape ``P`` (numpy order, 2 or 3 axes).
    stride : int or sequence of int, default 1
        Stride ``s`` of the feature grid, one for all axes or one per axis.

    Returns
    -------
    list of ndarray
        One 1D float64 array of positions per axis.
    """
    shape = check_patch_shape(patch_shape)
    s = check_stride(stride, len(shape))
    return [sa * np.arange(-(-p // sa), dtype=np.float64) + (sa - 1) / 2.0
            for p, sa in zip(shape, s)]


def patch_to_feature_index(u, stride) -> np.ndarray:
    """Map continuous patch indices to continuous indices in a stride-``s`` feature map.

    The inverse of :func:`feature_grid_positions`: ``(u - (s - 1) / 2) / s``.

    Parameters
    ----------
    u : array-like, shape (n, ndim)
        Patch indices (numpy order, ``ndim`` 2 or 3).
    stride : int or sequence of int
        Stride ``s`` of the feature map, one for all axes or one per axis.

    Returns
    -------
    ndarray, shape (n, ndim)
        Feature-map indices (float64).
    """
    u = np.asarray(u, dtype=np.float64)
    if u.ndim < 1 or u.shape[-1] not in (2, 3):
        raise ValueError(f"u must have shape (n_points, 2 or 3), got shape {u.shape}")
    s = check_stride(stride, u.shape[-1]).astype(np.float64)
    return (u - (s - 1) / 2.0) / s


# ---------------------------------------------------------------------------------------------
class PatchTransform:
    """Deterministic map from patch array indices to source array indices (numpy order).

    ``x = M @ u + t + M @ e(u)`` where ``M`` (``matrix``, det > 0: rotation times anisotropic
    scale, never a reflection) and ``t`` (``offset``) are an affine map and ``e`` an optional
    smooth displacement in *patch voxels* (``elastic``: coefficients of a uniform cubic B-spline,
    shape ``(ndim, G_0, ..., G_{ndim-1})`` with ``G_a - 3 >= 1`` intervals spanning the patch box
    ``[0, P_a - 1]``; clamped outside it). The displacement in source voxels is ``d(u) = M e(u)``.

    Parameters
    ----------
    patch_shape : sequence of int
        2 or 3 sizes (numpy order), each >= 2.
    matrix : array-like, shape (ndim, ndim)
        Finite, ``det > 0``.
    offset : array-like, shape (ndim,)
        Source index of patch index 0 (without elastic displacement).
    elastic : array-like or None, default None
        B-spline coefficients as above; their Lipschitz bound must be <= ``MAX_ELASTIC_LIPSCHITZ``.
    """

    def __init__(self, patch_shape, matrix, offset, elastic=None):
        shape = check_patch_shape(patch_shape)
        ndim = len(shape)
        M = np.array(matrix, dtype=np.float64)
        if M.shape != (ndim, ndim) or not np.all(np.isfinite(M)):
            raise ValueError(f"matrix must be a finite {ndim}x{ndim} array, got {np.shape(matrix)}")
        det = float(np.linalg.det(M))
        cond = np.linalg.cond(M)
        if not det > 0 or not cond < 1e8:
            raise ValueError(f"matrix must be invertible without reflection (det > 0), got "
                             f"det = {det:.4g}")
        t = np.array(offset, dtype=np.float64).reshape(-1)
        if t.shape != (ndim,) or not np.all(np.isfinite(t)):
            raise ValueError(f"offset must be {ndim} finite numbers, got {offset!r}")
        e = None
        lip = 0.0
        if elastic is not None:
            e = np.array(elastic, dtype=np.float64)
            if e.ndim != ndim + 1 or e.shape[0] != ndim or min(e.shape[1:]) < 4:
                raise ValueError(f"elastic must have shape ({ndim}, G_0, ..., G_{ndim - 1}) with "
                                 f"every G >= 4, got shape {e.shape}")
            if not np.all(np.isfinite(e)):
                raise ValueError("elastic must be finite")
            lip = elastic_lipschitz(e, shape)
            if lip > MAX_ELASTIC_LIPSCHITZ:
                raise ValueError(
                    f"elastic displacement is too steep: Lipschitz bound {lip:.3g} > "
                    f"{MAX_ELASTIC_LIPSCHITZ} (the deformation could fold); shrink it")
            e.setflags(write=False)
        for arr in (M, t):
            arr.setflags(write=False)
        self._shape = shape
        self._M = M
        self._t = t
        self._Minv = np.linalg.inv(M)
        self._e = e
        self._lip = lip

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_parameters(cls, patch_shape, center, rotation=None, scale=1.0, elastic=None):
        """Build from readable parameters.

        The patch centre ``(P - 1) / 2`` maps to source index ``center``, and
        ``matrix = rotation @ diag(scale)``.

        Parameters
        ----------
        patch_shape : sequence of int
            Patch shape (numpy order).
        center : float or array-like, shape (ndim,)
            Source index of the patch centre.
        rotation : array-like, shape (ndim, ndim), optional
            A proper rotation matrix (orthonormal, det +1); identity when None.
        scale : float or array-like, shape (ndim,), default 1.0
            Source voxels per patch voxel, scalar or per axis (> 0).
        elastic : array-like or None, default None
            B-spline coefficients of the elastic displacement (see the class).

        Returns
        -------
        PatchTransform
            The transform.
        """
        shape = check_patch_shape(patch_shape)
        ndim = len(shape)
        scale = per_axis(scale, ndim, "scale", lo=0.0, lo_open=True)
        R = np.eye(ndim) if rotation is None else np.asarray(rotation, dtype=np.float64)
        if R.shape != (ndim, ndim) or not np.allclose(R.T @ R, np.eye(ndim), atol=1e-6) or \
                np.linalg.det(R) <= 0:
            raise ValueError(f"rotation must be a proper {ndim}x{ndim} rotation matrix "
                             f"(orthonormal, det +1)")
        c = per_axis(center, ndim, "center")
        M = R * scale[None, :]
        t = c - M @ ((np.asarray(shape, dtype=np.float64) - 1) / 2.0)
        return cls(shape, M, t, elastic)

    # --------------------------------------------------------------------------- properties
    @property
    def ndim(self) -> int:
        """Number of axes (2 or 3)."""
        return len(self._shape)

    @property
    def patch_shape(self) -> tuple:
        """Patch shape (numpy order)."""
        return self._shape

    @property
    def matrix(self) -> np.ndarray:
        """The (ndim, ndim) matrix ``M`` (read-only)."""
        return self._M

    @property
    def offset(self) -> np.ndarray:
        """The offset ``t``: source index of patch index 0 (read-only)."""
        return self._t

    @property
    def elastic(self):
        """B-spline coefficients of the elastic displacement (read-only), or None."""
        return self._e

    @property
    def elastic_lipschitz(self) -> float:
        """Upper bound on the spectral norm of ``de/du`` (0 without elastic)."""
        return self._lip

    @property
    def scales(self) -> np.ndarray:
        """Source voxels per patch voxel along each patch axis (column norms of ``matrix``)."""
        return np.linalg.norm(self._M, axis=0)

    def __repr__(self) -> str:
        return (f"PatchTransform(patch_shape={self._shape}, "
                f"matrix={np.round(self._M, 4).tolist()}, "
                f"offset={np.round(self._t, 3).tolist()}, elastic="
                f"{None if self._e is None else 'grid ' + str(self._e.shape[1:])})")

    def __eq__(self, other) -> bool:
        if not isinstance(other, PatchTransform):
            return NotImplemented
        same_e = (self._e is None and other._e is None) or (
            self._e is not None and other._e is not None and self._e.shape == other._e.shape
            and np.array_equal(self._e, other._e))
        return (self._shape == other._shape and np.array_equal(self._M, other._M)
                and np.array_equal(self._t, other._t) and same_e)

    __hash__ = None

    # --------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain, JSON-serialisable parameters; :meth:`from_dict` replays them exactly.

        Returns
        -------
        dict
            ``patch_shape``, ``matrix``, ``offset`` and ``elastic`` (None or nested lists).
        """
        return {
            "patch_shape": list(self._shape),
            "matrix": self._M.tolist(),
            "offset": self._t.tolist(),
            "elastic": None if self._e is None else self._e.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PatchTransform":
        """Rebuild a transform from :meth:`to_dict`, bit for bit.

        Parameters
        ----------
        d : dict
            ``patch_shape``, ``matrix``, ``offset`` and, optionally, ``elastic``.

        Returns
        -------
        PatchTransform
            The transform.
        """
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict from PatchTransform.to_dict, got {type(d).__name__}")
        missing = {"patch_shape", "matrix", "offset"} - set(d)
        if missing:
            raise ValueError(f"d is missing keys {sorted(missing)}")
        return cls(d["patch_shape"], d["matrix"], d["offset"], d.get("elastic"))

    # --------------------------------------------------------------------------- elastic field
    def _elastic_at(self, u: np.ndarray, jacobian: bool = False):
        """Displacement e(u) (patch voxels) at points u (n, ndim) -> (n, ndim); with
        ``jacobian`` also de/du (n, ndim, ndim), entry [i, a, b] = d e_a / d u_b at point i."""
        n, ndim = u.shape
        finite = np.all(np.isfinite(u), axis=1)
        if not finite.all():
            u = np.where(finite[:, None], u, 0.0)
        grid = self._e.shape[1:]
        ws, dws = [], []
        flat = None
        for a in range(ndim):
            res = bspline_weights(u[:, a], self._shape[a], grid[a] - 3, jacobian)
            ws.append(res[1])
            if jacobian:
                dws.append(res[2])
            idx = res[0]
            flat = idx if flat is None else (flat[..., None] * grid[a]
                                             + idx.reshape((n,) + (1,) * a + (4,)))
        # coefficients of the 4**ndim control points around each point: (ndim, n, 4, ...)
        vals = np.take(self._e.reshape(ndim, -1), flat, axis=1)
        out = bspline_contract(vals, ws).T
        out[~finite] = np.nan
        if not jacobian:
            return out
        jac = np.stack([bspline_contract(vals, [dws[a] if a == b else ws[a] for a in range(ndim)]).T
                        for b in range(ndim)], -1)
        jac[~finite] = np.nan
        return out, jac

    def _elastic_grid(self, positions, coef=None) -> np.ndarray:
        """B-spline field (default: the displacement e) on the tensor grid of 1D ``positions``
        -> ``(ndim, *grid)``, by one separable contraction per axis."""
        out = self._e if coef is None else coef
        for a, p in enumerate(positions):  # contract control axis a + 1 with its basis matrix
            B = bspline_matrix(p, self._shape[a], self._e.shape[a + 1] - 3)
            out = np.moveaxis(np.tensordot(B, out, axes=([1], [a + 1])), 0, a + 1)
        return out

    # --------------------------------------------------------------------------- points
    def to_source(self, u) -> np.ndarray:
        """Map patch indices to source indices (numpy order).

        Parameters
        ----------
        u : array-like, shape (n, ndim) or (ndim,)
            Patch indices.

        Returns
        -------
        ndarray, shape (n, ndim) or (ndim,)
            Source indices (float64), shaped like ``u``.
        """
        u, single = check_index_points(u, self.ndim, "u")
        v = u + self._elastic_at(u) if self._e is not None else u
        x = v @ self._M.T + self._t
        return x[0] if single else x

    def from_source(self, x) -> np.ndarray:
        """Map source indices to patch indices: the exact inverse of :meth:`to_source`.

        Closed form without elastic; with it, a safeguarded Newton iteration on
        ``u + e(u) = M^-1 (x - t)`` to ~1e-9 voxel.

        Parameters
        ----------
        x : array-like, shape (n, ndim) or (ndim,)
            Source indices (numpy order).

        Returns
        -------
        ndarray, shape (n, ndim) or (ndim,)
            Patch indices (float64); NaN for points that do not converge (or are not finite).
        """
        x, single = check_index_points(x, self.ndim, "x")
        v = (x - self._t) @ self._Minv.T
        if self._e is None:
            return v[0] if single else v
        u = self._invert_elastic(v)
        resid = np.linalg.norm(self.to_source(u) - x, axis=1)
        u[~(resid <= _INVERSE_RESIDUAL)] = np.nan
        return u[0] if single else u

    def _invert_elastic(self, v: np.ndarray) -> np.ndarray:
        """Solve u + e(u) = v. Newton steps, each accepted only when it shrinks the residual by
        a factor 0.9; otherwise the fixed-point step u <- v - e(u), which shrinks it by the
        Lipschitz bound L < 1 (e is a contraction). Non-converged points are NaN."""
        ndim = self.ndim
        u = v.copy()
        active = np.flatnonzero(np.all(np.isfinite(v), axis=1))
        u[np.setdiff1d(np.arange(len(v)), active)] = np.nan
        ua, va = u[active], v[active]
        e, jac = self._elastic_at(ua, jacobian=True)
        r = ua + e - va
        eye = np.eye(ndim)
        for _ in range(_INVERSE_MAX_ITER):
            rn = np.linalg.norm(r, axis=1)
            done = rn <= _INVERSE_TOL * (1.0 + np.abs(va).max(axis=1))
            if done.any():
                u[active[done]] = ua[done]
                keep = ~done
                active, ua, va, r, rn, jac = (active[keep], ua[keep], va[keep], r[keep], rn[keep],
                                              jac[keep])
            if active.size == 0:
                return u
            cand = ua - np.linalg.solve(jac + eye, r[..., None])[..., 0]
            ec, jc = self._elastic_at(cand, jacobian=True)
            rc = cand + ec - va
            slow = ~(np.linalg.norm(rc, axis=1) <= 0.9 * rn)
            if slow.any():
                cand[slow] = ua[slow] - r[slow]  # = v - e(u)
                es, jc[slow] = self._elastic_at(cand[slow], jacobian=True)
                rc[slow] = cand[slow] + es - va[slow]
            ua, r, jac = cand, rc, jc
        u[active] = np.nan
        return u

    # --------------------------------------------------------------------------- grids
    def _coords64(self, positions) -> np.ndarray:
        """Source indices (float64, ``(ndim, *grid)``) on the tensor grid of 1D patch ``positions``."""
        ndim = self.ndim
        grids = []
        for a, p in enumerate(positions):
            shp = [1] * ndim
            shp[a] = p.size
            grids.append(p.reshape(shp))
        gshape = tuple(p.size for p in positions)
        out = np.empty((ndim,) + gshape)
        for a in range(ndim):  # affine part, broadcast from the 1D axes
            acc = self._t[a]
            for b in range(ndim):
                acc = acc + self._M[a, b] * grids[b]
            out[a] = acc
        if self._e is not None:  # + M e(u): the B-spline of the coefficients M c
            out += self._elastic_grid(positions, np.tensordot(self._M, self._e, axes=([1], [0])))
        return out

    def source_coords(self, stride=1) -> np.ndarray:
        """Source indices of the patch voxel centres or of a feature grid's voxel centres.

        Parameters
        ----------
        stride : int or sequence of int, default 1
            1: the patch voxels; ``s``: the voxel centres of a stride-``s`` feature grid (int or
            one per axis; voxel ``i`` at patch index ``s * i + (s - 1) / 2``, grid
            ``ceil(P / s)``).

        Returns
        -------
        ndarray of float32, shape ``(ndim, *grid)``
            Source indices (numpy order).
        """
        return self._coords64(feature_grid_positions(self._shape, stride)).astype(np.float32)

    def source_mm(self, spacing, stride=1) -> np.ndarray:
        """:meth:`source_coords` in millimetres.

        Parameters
        ----------
        spacing : float or sequence of float
            Source spacing (mm per voxel, numpy order).
        stride : int or sequence of int, default 1
            As in :meth:`source_coords`.

        Returns
        -------
        ndarray of float32, shape ``(ndim, *grid)``
            Source positions in mm (numpy order).
        """
        sp = per_axis(spacing, self.ndim, "spacing", lo=0.0, lo_open=True)
        c = self._coords64(feature_grid_positions(self._shape, stride))
        return (c * sp.reshape((-1,) + (1,) * self.ndim)).astype(np.float32)

    # --------------------------------------------------------------------------- images
    def _block_diagonal_z(self) -> bool:
        return (self.ndim == 3 and self._e is None and not np.any(self._M[0, 1:])
                and not np.any(self._M[1:, 0]))

    def apply(self, source_array, cval: float = 0.0) -> np.ndarray:
        """Resample a source array onto the patch grid.

        Linear interpolation at :meth:`source_coords`; points outside ``[0, S - 1]`` (any axis)
        are set to ``cval``. Same result as ``scipy.ndimage.map_coordinates(source_array,
        self.source_coords(), order=1, mode="constant", cval=cval)`` (to float32 rounding),
        computed faster: 2D by a vectorised bilinear gather; 3D without elastic and without tilt
        out of the axial plane separably (z blend of two slices, then bilinear in (y, x) with
        indices shared by all slices); other 3D transforms through map_coordinates itself.

        Parameters
        ----------
        source_array : array-like
            The source (numpy order, same ndim as the patch).
        cval : float, default 0.0
            Value outside the source.

        Returns
        -------
        ndarray of float32, shape patch_shape
            The patch.
        """
        src = np.asarray(source_array)
        if src.ndim != self.ndim:
            raise ValueError(
                f"source_array must be {self.ndim}D (numpy order), got shape {src.shape}")
        if src.dtype != np.float32:
            src = src.astype(np.float32)
        cval = check_number(cval, "cval")
        if self.ndim == 2:
            y, x = self.source_coords(1)
            out = _bilinear(src[None], y, x)[0]
            out[~_inside_source(src.shape, y, x)] = cval
            return out
        if self._block_diagonal_z():
            return self._apply_separable_z(src, cval)
        coords = self.source_coords(1)
        return ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=cval,
                                       prefilter=False, output=np.float32)

    def _apply_separable_z(self, src: np.ndarray, cval: float) -> np.ndarray:
        """3D with z independent of (y, x): interpolate the needed slab along z (a blend of two
        slices per patch slice), then bilinear in (y, x) with indices shared by all slices. Same
        float32-rounded coordinates as source_coords, same border rule as
        map_coordinates(order=1, mode='constant')."""
        P = self._shape
        S = src.shape
        M, t = self._M, self._t
        u0, u1, u2 = (np.arange(p, dtype=np.float64) for p in P)
        # same arithmetic (and order) as _coords64, where the zero terms add nothing
        z = (t[0] + M[0, 0] * u0).astype(np.float32)
        y = ((t[1] + M[1, 1] * u1[:, None]) + M[1, 2] * u2[None, :]).astype(np.float32)
        x = ((t[2] + M[2, 1] * u1[:, None]) + M[2, 2] * u2[None, :]).astype(np.float32)
        out = np.full(P, cval, dtype=np.float32)
        vz = (z >= 0) & (z <= S[0] - 1)
        vyx = _inside_source(S[1:], y, x)
        if not vz.any() or not vyx.any():
            return out
        # (y, x) region actually needed, one voxel of margin for the upper neighbour
        ylo, xlo = int(np.floor(y[vyx].min())), int(np.floor(x[vyx].min()))
        yhi = min(int(np.floor(y[vyx].max())) + 2, S[1])
        xhi = min(int(np.floor(x[vyx].max())) + 2, S[2])
        zi = z[vz]
        z0 = np.minimum(np.floor(zi), max(S[0] - 2, 0)).astype(np.intp)
        z1 = np.minimum(z0 + 1, S[0] - 1)
        fz = (zi - z0.astype(np.float32))[:, None, None]
        region = (slice(ylo, yhi), slice(xlo, xhi))
        lower = src[(z0,) + region]
        slab = lower + fz * (src[(z1,) + region] - lower)
        res = _bilinear(slab, y - np.float32(ylo), x - np.float32(xlo))
        res[:, ~vyx] = cval
        out[vz] = res
        return out


def _inside_source(shape, *coords) -> np.ndarray:
    """Mask of the points whose coordinates all lie in [0, S - 1] (map_coordinates' rule for
    order=1, mode='constant': anything else is cval)."""
    mask = None
    for c, n in zip(coords, shape):
        m = (c >= 0) & (c <= n - 1)
        mask = m if mask is None else mask & m
    return mask


def _bilinear(planes: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of every plane of ``planes`` (B, H, W) at the same points
    ``(y, x)`` (float32 arrays of one shape) -> ``(B, *shape)`` float32. Indices are clamped to the
    plane: values at points outside ``[0, H - 1] x [0, W - 1]`` are meaningless (mask them)."""
    b, h, w = planes.shape
    if h < 2 or w < 2:  # one-voxel-thin plane: duplicate it so both neighbours exist
        planes = np.pad(planes, ((0, 0), (0, max(0, 2 - h)), (0, max(0, 2 - w))), mode="edge")
        b, h, w = planes.shape
    y0 = np.floor(y)
    np.clip(y0, 0, h - 2, out=y0)
    x0 = np.floor(x)
    np.clip(x0, 0, w - 2, out=x0)
    fy = (y - y0)
    fx = (x - x0)
    idx = y0.astype(np.intp) * w + x0.astype(np.intp)
    flat = planes.reshape(b, -1)
    v00 = np.take(flat, idx, axis=1)
    v01 = np.take(flat, idx + 1, axis=1)
    v10 = np.take(flat, idx + w, axis=1)
    v11 = np.take(flat, idx + (w + 1), axis=1)
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    return top + fy * (bottom - top)
