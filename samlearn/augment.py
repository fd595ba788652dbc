"""Training patch pairs for SAM with exact voxel correspondences (paper §III-B, §IV-B).

One job: from one preprocessed source image, draw two crops of random location, size, rotation and
(optionally) smooth elastic deformation, resample them to a fixed patch shape, and say exactly which
source voxel every patch voxel shows, so the loss can pair the voxels of the overlap.

Everything here works on **array indices in numpy order** (``(z, y, x)`` in 3D, ``(y, x)`` in 2D):
the source image is already at the network's working resolution (CT at isotropic 2 mm, X-ray
resized to 512 x 512) and its spacing is only used to express positions in millimetres.

* :class:`PatchTransform` -- a concrete, deterministic mapping from patch indices ``u`` to source
  indices ``x = M @ u + t + d(u)``, with ``d(u) = M @ e(u)`` a smooth displacement, and its exact
  inverse. ``apply`` resamples a source array onto the patch grid (linear interpolation, values
  outside the source set to ``cval``, exactly ``scipy.ndimage.map_coordinates(order=1,
  mode="constant")``). ``to_dict`` / ``from_dict`` replay a drawn transform bit for bit.
* :class:`PatchPairSampler` -- draws the two transforms and the intensity jitter from a
  ``numpy.random.Generator`` (the paper's crop logic: overlap ratio ``a/b`` per axis uniform in
  ``overlap``, random scale, rotation, elastic deformation, intensity jitter, **never a flip**).
* :class:`PatchPair` -- the two patches, their transforms, uniformly sampled positive pairs
  anywhere in the overlap, and the source position (mm) of every voxel of a strided feature grid.
* :meth:`PatchPairSampler.sample_across` / :class:`CrossPatchPair` -- the semi-supervised variant
  (paper §IV-H): one patch from each of two images, each showing a given point (the same labelled
  landmark) at a random patch position, with the same augmentation.
* :func:`sampler_for_preset` -- sensible samplers for ``"ct"``, ``"xray"`` and their ``-lite``
  variants.

Conventions
-----------
* A patch of shape ``P`` covers the continuous index box ``[0, P - 1]`` per axis (the hull of its
  voxel centres); positives are drawn in that box, borders included.
* A feature map of stride ``s`` has voxel ``i`` at patch index ``s * i + (s - 1) / 2`` and
  ``ceil(P / s)`` voxels per axis (the same rule as :meth:`samlearn.image.ImageGeometry.strided`).
* ``scale`` is *source voxels per patch voxel*: ``scale > 1`` zooms out (the crop is larger than
  the patch).
* The elastic displacement ``e`` is a uniform cubic B-spline on a coarse control grid, in patch
  voxels, clamped (constant) outside the patch box. Its Lipschitz constant is bounded from the
  control coefficients (``|de_a/du_b| <= max |finite difference of c_a along b| / h_b``) and kept
  below 1 (the sampler keeps it at most ``0.5``), so ``u -> u + e(u)`` is a bijection with a
  Jacobian determinant ``>= (1 - L) ** ndim > 0``: the deformation never folds, and the inverse
  (a safeguarded Newton iteration) always converges.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage

__all__ = [
    "PatchTransform",
    "PatchPair",
    "CrossPatchPair",
    "PatchPairSampler",
    "sampler_for_preset",
    "sampler_from_config",
    "estimate_overlap",
    "feature_grid_positions",
    "patch_to_feature_index",
]

#: Largest Lipschitz constant of the elastic displacement a :class:`PatchTransform` accepts.
MAX_ELASTIC_LIPSCHITZ = 0.9
#: Lipschitz cap the sampler enforces on the elastic fields it draws (shrinking them if needed).
SAMPLER_ELASTIC_LIPSCHITZ = 0.5
_INVERSE_TOL = 1e-10         # relative residual (patch voxels) at which an inverse converged
_INVERSE_MAX_ITER = 200
_INVERSE_RESIDUAL = 1e-4     # source voxels; larger residual -> NaN
_OVERLAP_GRID = 9            # points per axis of the overlap check grid
_MAX_DRAW_ATTEMPTS = 200
_POSITIVE_BUDGET = 100_000   # candidate points per positives() call before reusing points found


# ---------------------------------------------------------------------------------------------
# small validation helpers
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_patch_shape(patch_shape, name="patch_shape", ndim=None) -> tuple:
    try:
        vals = tuple(patch_shape)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of 2 or 3 integers, got {patch_shape!r}") from None
    if len(vals) not in (2, 3) or (ndim is not None and len(vals) != ndim):
        want = f"{ndim}" if ndim is not None else "2 or 3"
        raise ValueError(f"{name} must have {want} values (numpy order), got {patch_shape!r}")
    if not all(_is_int(v) or (isinstance(v, float) and v.is_integer()) for v in vals):
        raise ValueError(f"{name} must be integers, got {patch_shape!r}")
    vals = tuple(int(v) for v in vals)
    if min(vals) < 2:
        raise ValueError(f"{name} values must be >= 2, got {patch_shape!r}")
    return vals


def _check_range(value, name, *, lo=None, hi=None, lo_open=True, hi_open=False,
                 allow_scalar=False) -> tuple:
    """A (low, high) pair with low <= high inside the given bounds."""
    if allow_scalar and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{name} must be a finite (low, high) pair, got {value!r}")
    a, b = pair
    bad_lo = lo is not None and (a <= lo if lo_open else a < lo)
    bad_hi = hi is not None and (b >= hi if hi_open else b > hi)
    if a > b or bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        interval = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ValueError(f"{name} must be (low, high) with low <= high inside {interval}, "
                         f"got {value!r}")
    return pair


def _check_number(value, name, *, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if (lo is not None and (v <= lo if lo_open else v < lo)) or \
            (hi is not None and (v >= hi if hi_open else v > hi)):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return v


def _per_axis(value, ndim, name, *, lo=None, lo_open=False, integer=False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if not isinstance(value, bool) else None
    if arr is None or arr.ndim > 1 or (arr.ndim == 1 and arr.size != ndim):
        raise ValueError(f"{name} must be a number or {ndim} numbers (one per axis), got {value!r}")
    arr = np.broadcast_to(arr, (ndim,)).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and np.any(arr <= lo if lo_open else arr < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if integer and not np.all(arr == np.round(arr)):
        raise ValueError(f"{name} must be integers, got {value!r}")
    return arr


def _as_generator(rng, name="rng") -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or _is_int(rng) or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise TypeError(f"{name} must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _check_points(points, ndim, name) -> tuple:
    pts = np.asarray(points, dtype=np.float64)
    single = pts.ndim == 1
    if single:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != ndim:
        raise ValueError(f"{name} must have shape (n_points, {ndim}) (numpy index order), "
                         f"got shape {np.shape(points)}")
    return pts, single


def _check_stride(stride, ndim) -> np.ndarray:
    s = np.asarray(stride)
    ok = s.ndim == 0 or (s.ndim == 1 and s.size == ndim)
    ok = ok and s.dtype != bool and s.dtype.kind in "iuf" and np.all(np.isfinite(s))
    ok = ok and np.all(s == np.round(s)) and np.all(s >= 1)
    if not ok:
        raise ValueError(f"stride must be a positive integer or {ndim} of them, got {stride!r}")
    return np.broadcast_to(s, (ndim,)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# feature-grid conventions
def feature_grid_positions(patch_shape, stride=1) -> list:
    """Patch indices of the voxel centres of a stride-``s`` feature grid, one 1D array per axis:
    feature voxel ``i`` sits at patch index ``s * i + (s - 1) / 2``; ``ceil(P / s)`` voxels."""
    shape = _check_patch_shape(patch_shape)
    s = _check_stride(stride, len(shape))
    return [sa * np.arange(-(-p // sa), dtype=np.float64) + (sa - 1) / 2.0
            for p, sa in zip(shape, s)]


def patch_to_feature_index(u, stride) -> np.ndarray:
    """Continuous patch indices ``u`` (n, ndim) -> continuous indices in a stride-``s`` feature
    map (the inverse of :func:`feature_grid_positions`: ``(u - (s - 1) / 2) / s``)."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim < 1 or u.shape[-1] not in (2, 3):
        raise ValueError(f"u must have shape (n_points, 2 or 3), got shape {u.shape}")
    s = _check_stride(stride, u.shape[-1]).astype(np.float64)
    return (u - (s - 1) / 2.0) / s


# ---------------------------------------------------------------------------------------------
# uniform cubic B-spline, clamped outside [0, P - 1]
def _bspline_weights(u, length, n_intervals, derivative=False):
    """Indices (n, 4) of the control points and cubic B-spline weights (n, 4) at positions u
    (and, with ``derivative``, the weights of d/du, zero where u is clamped)."""
    h = (length - 1) / n_intervals
    t = np.clip(u, 0.0, length - 1) / h
    i = np.minimum(np.floor(t), n_intervals - 1)
    f = t - i
    f2 = f * f
    f3 = f2 * f
    w = np.stack([(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3], -1) / 6.0
    idx = i.astype(np.int64)[:, None] + np.arange(4)
    if not derivative:
        return idx, w
    g = 1 - f
    dw = np.stack([-g * g, 3 * f2 - 4 * f, -3 * f2 + 2 * f + 1, f2], -1) / (2.0 * h)
    dw[(u < 0) | (u > length - 1)] = 0.0
    return idx, w, dw


def _contract(vals, weights):
    """(A, n, 4, ..., 4) control values and one (n, 4) weight array per axis -> (A, n)."""
    for w in reversed(weights):
        vals = np.einsum("an...k,nk->an...", vals, w)
    return vals


def _bspline_matrix(u, length, n_intervals):
    """Dense basis matrix (len(u), n_intervals + 3): field on the grid = B @ coefficients."""
    idx, w = _bspline_weights(u, length, n_intervals)
    B = np.zeros((u.size, n_intervals + 3))
    np.put_along_axis(B, idx, w, axis=1)
    return B


def _elastic_lipschitz(coef, patch_shape) -> float:
    """Upper bound on the spectral norm of the Jacobian of the B-spline field ``coef``
    (Frobenius norm of the per-entry bounds ``max |diff_b c_a| / h_b``)."""
    ndim = len(patch_shape)
    total = 0.0
    for b in range(ndim):
        n_int = coef.shape[b + 1] - 3
        h = (patch_shape[b] - 1) / n_int
        d = np.abs(np.diff(coef, axis=b + 1)).reshape(ndim, -1).max(axis=1)
        total += float(np.sum((d / h) ** 2))
    return math.sqrt(total)


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
    patch_shape : sequence of 2 or 3 ints (numpy order), each >= 2.
    matrix : (ndim, ndim) array, finite, ``det > 0``.
    offset : (ndim,) array: source index of patch index 0 (without elastic displacement).
    elastic : None or array as above; its Lipschitz bound must be <= ``MAX_ELASTIC_LIPSCHITZ``.
    """

    def __init__(self, patch_shape, matrix, offset, elastic=None):
        shape = _check_patch_shape(patch_shape)
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
            lip = _elastic_lipschitz(e, shape)
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
        """Build from readable parameters: the patch centre ``(P - 1) / 2`` maps to source index
        ``center``; ``matrix = rotation @ diag(scale)`` (scale: source voxels per patch voxel,
        scalar or per axis; rotation: proper rotation matrix, identity when None)."""
        shape = _check_patch_shape(patch_shape)
        ndim = len(shape)
        scale = _per_axis(scale, ndim, "scale", lo=0.0, lo_open=True)
        R = np.eye(ndim) if rotation is None else np.asarray(rotation, dtype=np.float64)
        if R.shape != (ndim, ndim) or not np.allclose(R.T @ R, np.eye(ndim), atol=1e-6) or \
                np.linalg.det(R) <= 0:
            raise ValueError(f"rotation must be a proper {ndim}x{ndim} rotation matrix "
                             f"(orthonormal, det +1)")
        c = _per_axis(center, ndim, "center")
        M = R * scale[None, :]
        t = c - M @ ((np.asarray(shape, dtype=np.float64) - 1) / 2.0)
        return cls(shape, M, t, elastic)

    # --------------------------------------------------------------------------- properties
    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def patch_shape(self) -> tuple:
        return self._shape

    @property
    def matrix(self) -> np.ndarray:
        return self._M

    @property
    def offset(self) -> np.ndarray:
        return self._t

    @property
    def elastic(self):
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
        """Plain, JSON-serialisable parameters; :meth:`from_dict` replays them exactly."""
        return {
            "patch_shape": list(self._shape),
            "matrix": self._M.tolist(),
            "offset": self._t.tolist(),
            "elastic": None if self._e is None else self._e.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PatchTransform":
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
            res = _bspline_weights(u[:, a], self._shape[a], grid[a] - 3, jacobian)
            ws.append(res[1])
            if jacobian:
                dws.append(res[2])
            idx = res[0]
            flat = idx if flat is None else (flat[..., None] * grid[a]
                                             + idx.reshape((n,) + (1,) * a + (4,)))
        # coefficients of the 4**ndim control points around each point: (ndim, n, 4, ...)
        vals = np.take(self._e.reshape(ndim, -1), flat, axis=1)
        out = _contract(vals, ws).T
        out[~finite] = np.nan
        if not jacobian:
            return out
        jac = np.stack([_contract(vals, [dws[a] if a == b else ws[a] for a in range(ndim)]).T
                        for b in range(ndim)], -1)
        jac[~finite] = np.nan
        return out, jac

    def _elastic_grid(self, positions, coef=None) -> np.ndarray:
        """B-spline field (default: the displacement e) on the tensor grid of 1D ``positions``
        -> (ndim, *grid), by one separable contraction per axis."""
        out = self._e if coef is None else coef
        for a, p in enumerate(positions):  # contract control axis a + 1 with its basis matrix
            B = _bspline_matrix(p, self._shape[a], self._e.shape[a + 1] - 3)
            out = np.moveaxis(np.tensordot(B, out, axes=([1], [a + 1])), 0, a + 1)
        return out

    # --------------------------------------------------------------------------- points
    def to_source(self, u) -> np.ndarray:
        """Patch indices ``u`` (n, ndim) -> source indices (n, ndim), numpy order (float64)."""
        u, single = _check_points(u, self.ndim, "u")
        v = u + self._elastic_at(u) if self._e is not None else u
        x = v @ self._M.T + self._t
        return x[0] if single else x

    def from_source(self, x) -> np.ndarray:
        """Source indices ``x`` (n, ndim) -> patch indices (n, ndim): the exact inverse of
        :meth:`to_source` (closed form without elastic; with it, a safeguarded Newton iteration
        on ``u + e(u) = M^-1 (x - t)`` to ~1e-9 voxel). Points that do not converge (or are not
        finite) come back as NaN."""
        x, single = _check_points(x, self.ndim, "x")
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
        """Source indices (float64, (ndim, *grid)) on the tensor grid of 1D patch ``positions``."""
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
        """Source indices (float32, shape ``(ndim, *grid)``) of the patch voxel centres
        (``stride=1``) or of the voxel centres of a stride-``s`` feature grid (``s`` int or one
        per axis; voxel ``i`` at patch index ``s * i + (s - 1) / 2``, grid ``ceil(P / s)``)."""
        return self._coords64(feature_grid_positions(self._shape, stride)).astype(np.float32)

    def source_mm(self, spacing, stride=1) -> np.ndarray:
        """:meth:`source_coords` times the source ``spacing`` (mm per voxel, numpy order)."""
        sp = _per_axis(spacing, self.ndim, "spacing", lo=0.0, lo_open=True)
        c = self._coords64(feature_grid_positions(self._shape, stride))
        return (c * sp.reshape((-1,) + (1,) * self.ndim)).astype(np.float32)

    # --------------------------------------------------------------------------- images
    def _block_diagonal_z(self) -> bool:
        return (self.ndim == 3 and self._e is None and not np.any(self._M[0, 1:])
                and not np.any(self._M[1:, 0]))

    def apply(self, source_array, cval: float = 0.0) -> np.ndarray:
        """Resample ``source_array`` (numpy order, same ndim) onto the patch grid: linear
        interpolation at :meth:`source_coords`, points outside ``[0, S - 1]`` (any axis) set to
        ``cval``. Same result as ``scipy.ndimage.map_coordinates(source_array,
        self.source_coords(), order=1, mode="constant", cval=cval)`` (to float32 rounding), computed
        faster: 2D by a vectorised bilinear gather; 3D without elastic and without tilt out of the
        axial plane separably (z blend of two slices, then bilinear in (y, x) with indices shared
        by all slices); other 3D transforms through map_coordinates itself."""
        src = np.asarray(source_array)
        if src.ndim != self.ndim:
            raise ValueError(
                f"source_array must be {self.ndim}D (numpy order), got shape {src.shape}")
        if src.dtype != np.float32:
            src = src.astype(np.float32)
        cval = _check_number(cval, "cval")
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
    ``(y, x)`` (float32 arrays of one shape) -> (B, *shape) float32. Indices are clamped to the
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


# ---------------------------------------------------------------------------------------------
def _check_grid_points(shape, n_per_axis):
    axes = [np.linspace(0.0, p - 1.0, n_per_axis) for p in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))


def _inside(u, shape) -> np.ndarray:
    hi = np.asarray(shape, dtype=np.float64) - 1
    return np.all((u >= 0) & (u <= hi), axis=1)


def estimate_overlap(t1: PatchTransform, t2: PatchTransform, n_per_axis: int = _OVERLAP_GRID):
    """Fraction of a regular ``n_per_axis ** ndim`` grid over patch 1's box (borders included)
    whose source points fall inside patch 2's box. 0 means no overlap was found."""
    if not isinstance(t1, PatchTransform) or not isinstance(t2, PatchTransform):
        raise TypeError("t1 and t2 must be PatchTransform objects")
    if t1.ndim != t2.ndim:
        raise ValueError(f"t1 and t2 must have the same ndim, got {t1.ndim} and {t2.ndim}")
    pts = _check_grid_points(t1.patch_shape, int(n_per_axis))
    u2 = t2.from_source(t1.to_source(pts))
    return float(_inside(u2, t2.patch_shape).mean())


def _apply_jitter(patch: np.ndarray, jitter: dict, k: int) -> np.ndarray:
    out = patch * np.float32(jitter["gain"][k]) + np.float32(jitter["bias"][k])
    if jitter.get("noise_std", 0.0) > 0:
        noise_rng = np.random.default_rng(jitter["noise_seed"][k])
        out += np.float32(jitter["noise_std"]) * noise_rng.standard_normal(out.shape, np.float32)
    return out.astype(np.float32, copy=False)


class PatchPair:
    """Two patches of one source image with exact correspondences.

    Attributes
    ----------
    patches : float32 (2, *patch_shape), intensity-jittered (what the network sees).
    clean_patches : float32 (2, *patch_shape), the same before intensity jitter.
    transforms : (PatchTransform, PatchTransform).
    jitter : dict of the intensity jitter (``gain``, ``bias``, ``noise_std``, ``noise_seed``).
    spacing : (ndim,) source spacing, mm per voxel in numpy order (ones when not given).
    cval : value used outside the source.
    """

    def __init__(self, patches, clean_patches, transforms, jitter, spacing, cval):
        self.patches = patches
        self.clean_patches = clean_patches
        self.transforms = tuple(transforms)
        self.jitter = jitter
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.cval = float(cval)
        self._overlap = None

    @property
    def ndim(self) -> int:
        return self.transforms[0].ndim

    @property
    def patch_shape(self) -> tuple:
        return self.transforms[0].patch_shape

    @property
    def overlap_fraction(self) -> float:
        """Estimated fraction of patch 1's box that patch 2 also shows (> 0 by construction)."""
        if self._overlap is None:
            self._overlap = estimate_overlap(*self.transforms)
        return self._overlap

    def __repr__(self) -> str:
        return (f"PatchPair(patch_shape={self.patch_shape}, overlap_fraction~"
                f"{self.overlap_fraction:.3f}, transforms={self.transforms})")

    def positives(self, n: int, rng) -> np.ndarray:
        """``n`` positive pairs: float32 (2, n, ndim) continuous patch indices ``u1`` (patch 1)
        and ``u2`` (patch 2) showing the same source point, drawn uniformly in the overlap
        (uniform over patch 1's box restricted to the overlap, borders included). Rejection
        sampling; when the overlap is so small that ``n`` distinct points are not found quickly,
        the points found are reused (drawn with replacement)."""
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        rng = _as_generator(rng)
        t1, t2 = self.transforms
        hi = np.asarray(t1.patch_shape, dtype=np.float64) - 1
        frac = max(self.overlap_fraction, 1e-3)
        got1, got2, have, drawn = [], [], 0, 0
        while drawn < _POSITIVE_BUDGET:
            m = int(min(max(math.ceil(1.3 * (n - have) / frac) + 16, 64),
                        _POSITIVE_BUDGET - drawn))
            u1 = rng.uniform(0.0, 1.0, size=(m, self.ndim)) * hi
            u2 = t2.from_source(t1.to_source(u1))
            ok = _inside(u2, t2.patch_shape)
            got1.append(u1[ok])
            got2.append(u2[ok])
            have += int(ok.sum())
            drawn += m
            if have >= n:
                break
            frac = max(have / drawn, 1e-4)  # the grid estimate was optimistic: use the rate seen
        u1 = np.concatenate(got1)
        u2 = np.concatenate(got2)
        if have == 0:  # tiny overlap: fall back to the overlap check grid (non-empty)
            u1 = _check_grid_points(t1.patch_shape, _OVERLAP_GRID)
            u2 = t2.from_source(t1.to_source(u1))
            ok = _inside(u2, t2.patch_shape)
            u1, u2 = u1[ok], u2[ok]
            if u1.shape[0] == 0:
                raise RuntimeError("the two patches do not overlap; cannot draw positive pairs")
        if u1.shape[0] >= n:
            sel = slice(0, n)
        else:
            sel = rng.integers(0, u1.shape[0], size=n)
        return np.stack([u1[sel], u2[sel]]).astype(np.float32)

    def source_index(self, k: int, stride=1) -> np.ndarray:
        """Source array indices (float32, (ndim, *grid)) of patch ``k``'s stride-``s`` grid."""
        return self._transform(k).source_coords(stride)

    def source_mm(self, k: int, stride=1) -> np.ndarray:
        """Source positions in mm (array index times spacing, numpy order; float32,
        (ndim, *grid)) of the voxel centres of patch ``k``'s stride-``s`` grid."""
        return self._transform(k).source_mm(self.spacing, stride)

    def _transform(self, k) -> PatchTransform:
        if not _is_int(k) or k not in (0, 1):
            raise ValueError(f"k must be 0 or 1 (which patch), got {k!r}")
        return self.transforms[k]


class CrossPatchPair:
    """Two patches of two *different* source images, centred nowhere in particular but each
    showing one given point (a labelled landmark) at a random patch position: the positive pair of
    the semi-supervised variant (paper §IV-H). There is no voxel-wise overlap between the patches;
    the correspondences are the labelled points (see :meth:`points_to_patch`).

    Attributes
    ----------
    patches, clean_patches : float32 (2, *patch_shape), with / without intensity jitter.
    transforms : (PatchTransform, PatchTransform): patch ``k`` indices -> source ``k`` indices.
    jitter : dict of the intensity jitter (as :class:`PatchPair`).
    spacings : (2, ndim) mm per voxel of each source (numpy order).
    cvals : (2,) value used outside each source.
    anchor : float64 (2, ndim): patch index of the given point in patch 1 and in patch 2 (drawn
        uniformly in the patch box ``[0, P - 1]``; exact: ``transforms[k].to_source(anchor[k])``
        is the given point to rounding).
    """

    def __init__(self, patches, clean_patches, transforms, jitter, spacings, cvals, anchor):
        self.patches = patches
        self.clean_patches = clean_patches
        self.transforms = tuple(transforms)
        self.jitter = jitter
        self.spacings = np.asarray(spacings, dtype=np.float64)
        self.cvals = tuple(float(c) for c in cvals)
        self.anchor = np.asarray(anchor, dtype=np.float64)

    @property
    def ndim(self) -> int:
        return self.transforms[0].ndim

    @property
    def patch_shape(self) -> tuple:
        return self.transforms[0].patch_shape

    def __repr__(self) -> str:
        return (f"CrossPatchPair(patch_shape={self.patch_shape}, anchor={self.anchor.round(2).tolist()}, "
                f"transforms={self.transforms})")

    def points_to_patch(self, k: int, points) -> tuple:
        """Source-``k`` array indices ``points`` (n, ndim; NaN rows allowed) -> patch ``k`` indices
        (n, ndim) and a mask of the points inside the patch box ``[0, P - 1]``."""
        t = self._transform(k)
        pts, _ = _check_points(points, self.ndim, "points")
        u = np.full(pts.shape, np.nan)
        finite = np.all(np.isfinite(pts), axis=1)
        if finite.any():
            u[finite] = t.from_source(pts[finite])
        inside = np.all(np.isfinite(u), axis=1)
        inside[inside] = _inside(u[inside], t.patch_shape)
        return u, inside

    def source_index(self, k: int, stride=1) -> np.ndarray:
        """Source-``k`` array indices (float32, (ndim, *grid)) of patch ``k``'s stride-``s`` grid."""
        return self._transform(k).source_coords(stride)

    def source_mm(self, k: int, stride=1) -> np.ndarray:
        """Positions in source ``k``'s mm frame (array index times its spacing; float32,
        (ndim, *grid)) of the voxel centres of patch ``k``'s stride-``s`` grid."""
        return self._transform(k).source_mm(self.spacings[k], stride)

    def _transform(self, k) -> PatchTransform:
        if not _is_int(k) or k not in (0, 1):
            raise ValueError(f"k must be 0 or 1 (which patch), got {k!r}")
        return self.transforms[k]


# ---------------------------------------------------------------------------------------------
def _rotation_2d(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _rotation_3d(axis, angle):
    """Rodrigues rotation about a unit ``axis`` (numpy order z, y, x)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * (K @ K)


class PatchPairSampler:
    """Draws SAM training patch pairs from one source image (paper §III-B, §IV-B).

    Crop logic: two crops of random location and size from the same image, each resampled to
    ``patch_shape``. Along every axis the overlap ratio ``a / b`` (side of the overlap over side
    of the patch) is drawn uniformly in ``overlap``; the side ``b`` is the smaller of the two
    crops' extents along that axis (``(P - 1) * scale``, voxel-centre hull) and the ratio is exact
    before rotation and elastic deformation. The first crop centre is uniform among positions
    that keep both centres inside the image (patches may stick out over the border, padded with
    ``cval``); when no such position exists the pair is centred on the image. Each crop then gets
    its own rotation about its centre and elastic deformation. A pair whose patches do not
    overlap is redrawn. Never flips.

    Parameters
    ----------
    patch_shape : 2 or 3 ints, numpy order (e.g. ``(32, 96, 96)`` CT, ``(400, 400)`` X-ray).
    overlap : (low, high), ``0 < low <= high <= 1``; overlap ratio per axis, uniform.
    scale : (low, high), ``0 < low <= high``; source voxels per patch voxel, drawn log-uniformly,
        independently for each patch (a scalar means a fixed scale).
    scale_anisotropy : float >= 0; each axis' scale is further multiplied by a factor drawn
        log-uniformly in ``[1 / (1 + a), 1 + a]`` (0: isotropic).
    rotation_deg : float in [0, 180]; per-patch rotation about its centre. 2D: angle uniform in
        ``[-rotation_deg, rotation_deg]``. 3D: a rotation by at most ``rotation_deg``.
    rotation_axes : ``"axial"`` (3D: in-plane rotation about the z axis, i.e. in the (y, x)
        plane) or ``"any"`` (3D: uniformly random axis); ignored in 2D.
    elastic : bool; smooth B-spline deformation of each patch.
    elastic_magnitude : float >= 0 or one per axis; maximal control-point displacement as a
        fraction of the patch side along that axis (0.02 of 400 px = 8 px). Fields steeper than a
        Lipschitz constant of 0.5 are shrunk to it (no folding).
    elastic_grid : int >= 1 or one per axis; number of B-spline intervals across the patch.
    intensity_jitter : float in [0, 1); per-patch gain uniform in ``[1 - j, 1 + j]`` and bias
        uniform in ``[-j, j]`` (intensity units of the normalised image), applied after
        resampling.
    noise_std : float >= 0; standard deviation of additive Gaussian noise after the jitter.
    cval : float or None; value outside the source image, None: the source minimum.
    """

    def __init__(self, patch_shape, *, overlap=(0.2, 1.0), scale=(0.8, 1.25), scale_anisotropy=0.0,
                 rotation_deg=0.0, rotation_axes="axial", elastic=False, elastic_magnitude=0.02,
                 elastic_grid=4, intensity_jitter=0.1, noise_std=0.0, cval=None):
        self.patch_shape = _check_patch_shape(patch_shape)
        ndim = len(self.patch_shape)
        self.overlap = _check_range(overlap, "overlap", lo=0.0, hi=1.0)
        self.scale = _check_range(scale, "scale", lo=0.0, allow_scalar=True)
        self.scale_anisotropy = _check_number(scale_anisotropy, "scale_anisotropy", lo=0.0)
        self.rotation_deg = _check_number(rotation_deg, "rotation_deg", lo=0.0, hi=180.0)
        if rotation_axes not in ("axial", "any"):
            raise ValueError(f"rotation_axes must be 'axial' or 'any', got {rotation_axes!r}")
        self.rotation_axes = rotation_axes
        if not isinstance(elastic, (bool, np.bool_)):
            raise ValueError(f"elastic must be True or False, got {elastic!r}")
        self.elastic = bool(elastic)
        mag = _per_axis(elastic_magnitude, ndim, "elastic_magnitude", lo=0.0)
        if np.any(mag > 0.25):
            raise ValueError(f"elastic_magnitude must be <= 0.25 (fraction of the patch side), "
                             f"got {elastic_magnitude!r}")
        self.elastic_magnitude = elastic_magnitude
        self._mag = mag
        grid = _per_axis(elastic_grid, ndim, "elastic_grid", lo=1, integer=True)
        self.elastic_grid = elastic_grid
        self._grid = grid.astype(np.int64)
        self.intensity_jitter = _check_number(intensity_jitter, "intensity_jitter", lo=0.0, hi=1.0,
                                              hi_open=True)
        self.noise_std = _check_number(noise_std, "noise_std", lo=0.0)
        self.cval = None if cval is None else _check_number(cval, "cval")

    @property
    def ndim(self) -> int:
        return len(self.patch_shape)

    def get_config(self) -> dict:
        """The constructor parameters as a plain dict (for logs; ``PatchPairSampler(**cfg)``)."""
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            return list(v) if isinstance(v, tuple) else v
        return {k: plain(getattr(self, k)) for k in (
            "patch_shape", "overlap", "scale", "scale_anisotropy", "rotation_deg", "rotation_axes",
            "elastic", "elastic_magnitude", "elastic_grid", "intensity_jitter", "noise_std",
            "cval")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"PatchPairSampler({args})"

    # --------------------------------------------------------------------------- drawing
    def _draw_scale(self, rng) -> np.ndarray:
        lo, hi = self.scale
        s = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        a = self.scale_anisotropy
        f = np.exp(rng.uniform(-math.log1p(a), math.log1p(a), size=self.ndim))
        return s * f

    def _draw_rotation(self, rng) -> np.ndarray:
        theta = math.radians(self.rotation_deg)
        if self.ndim == 2:
            return _rotation_2d(rng.uniform(-theta, theta))
        angle = rng.uniform(-theta, theta)
        if self.rotation_axes == "axial":
            R = np.eye(3)
            R[1:, 1:] = _rotation_2d(angle)  # exact zeros off the (y, x) block
            return R
        axis = rng.normal(size=3)
        while np.linalg.norm(axis) < 1e-8:
            axis = rng.normal(size=3)
        return _rotation_3d(axis, angle)

    def _draw_elastic(self, rng):
        if not self.elastic or not np.any(self._mag > 0):
            return None
        P = np.asarray(self.patch_shape, dtype=np.float64)
        amp = self._mag * (P - 1)
        shape = (self.ndim,) + tuple(int(g) + 3 for g in self._grid)
        coef = rng.uniform(-1.0, 1.0, size=shape) * amp.reshape((-1,) + (1,) * self.ndim)
        lip = _elastic_lipschitz(coef, self.patch_shape)
        if lip > SAMPLER_ELASTIC_LIPSCHITZ:
            coef *= SAMPLER_ELASTIC_LIPSCHITZ / lip * (1 - 1e-9)
        return coef

    def draw(self, source_shape, rng):
        """Draw concrete parameters for one pair from a source of ``source_shape`` (numpy order).

        Returns ``(t1, t2, jitter)``: two :class:`PatchTransform` whose patches overlap, and the
        intensity jitter dict (``gain``, ``bias``: one value per patch; ``noise_std``;
        ``noise_seed``: one seed per patch or None)."""
        return self._draw(source_shape, rng)[:3]

    def _draw(self, source_shape, rng):
        shape = np.asarray(source_shape)
        if shape.ndim != 1 or shape.size != self.ndim or shape.dtype.kind not in "iu" or \
                np.any(shape < 1):
            raise ValueError(f"source_shape must be {self.ndim} positive integers (numpy order, "
                             f"matching patch_shape {self.patch_shape}), got {source_shape!r}")
        rng = _as_generator(rng)
        S = shape.astype(np.float64)
        P = np.asarray(self.patch_shape, dtype=np.float64)
        for _ in range(_MAX_DRAW_ATTEMPTS):
            s1, s2 = self._draw_scale(rng), self._draw_scale(rng)
            b1, b2 = (P - 1) * s1, (P - 1) * s2
            ratio = rng.uniform(self.overlap[0], self.overlap[1], size=self.ndim)
            a = ratio * np.minimum(b1, b2)
            sign = np.where(rng.random(self.ndim) < 0.5, -1.0, 1.0)
            delta = sign * ((b1 + b2) / 2 - a)
            lo = np.maximum(0.0, -delta)
            hi = np.minimum(S - 1, S - 1 - delta)
            u = rng.random(self.ndim)
            c1 = np.where(lo <= hi, lo + u * (hi - lo), (S - 1) / 2 - delta / 2)
            c2 = c1 + delta
            R1, R2 = self._draw_rotation(rng), self._draw_rotation(rng)
            e1, e2 = self._draw_elastic(rng), self._draw_elastic(rng)
            t1 = PatchTransform.from_parameters(self.patch_shape, c1, R1, s1, e1)
            t2 = PatchTransform.from_parameters(self.patch_shape, c2, R2, s2, e2)
            frac = estimate_overlap(t1, t2)
            if frac > 0:
                break
        else:
            raise RuntimeError(f"no overlapping patch pair found in {_MAX_DRAW_ATTEMPTS} draws; "
                               f"rotation_deg={self.rotation_deg} and overlap={self.overlap} "
                               f"are too extreme")
        j = self.intensity_jitter
        jitter = {
            "gain": rng.uniform(1 - j, 1 + j, size=2).tolist(),
            "bias": rng.uniform(-j, j, size=2).tolist(),
            "noise_std": self.noise_std,
            "noise_seed": (rng.integers(0, 2**63 - 1, size=2).tolist() if self.noise_std > 0
                           else None),
        }
        return t1, t2, jitter, frac

    def sample(self, source_array, rng, spacing=None) -> PatchPair:
        """Draw one :class:`PatchPair` from ``source_array`` (numpy order, float). ``spacing``:
        mm per voxel in numpy order (only used to express positions in mm; ones when None)."""
        src = np.asarray(source_array)
        if src.ndim != self.ndim:
            raise ValueError(f"source_array must be {self.ndim}D to match patch_shape "
                             f"{self.patch_shape}, got shape {src.shape}")
        if src.dtype.kind not in "fiub" or src.size == 0:
            raise ValueError(f"source_array must be a non-empty numeric array, got dtype "
                             f"{src.dtype} and shape {src.shape}")
        src = src.astype(np.float32, copy=False)
        sp = np.ones(self.ndim) if spacing is None else _per_axis(spacing, self.ndim, "spacing",
                                                                    lo=0.0, lo_open=True)
        if self.cval is None:
            cval = float(src.min())
            if not math.isfinite(cval):
                raise ValueError("source_array contains NaN or infinite values")
        else:
            cval = self.cval
        t1, t2, jitter, frac = self._draw(src.shape, rng)
        clean = np.stack([t1.apply(src, cval), t2.apply(src, cval)])
        jittered = np.stack([_apply_jitter(clean[k], jitter, k) for k in range(2)])
        pair = PatchPair(jittered, clean, (t1, t2), jitter, sp, cval)
        pair._overlap = frac
        return pair

    def sample_across(self, source_a, point_a, source_b, point_b, rng, spacing_a=None,
                      spacing_b=None) -> CrossPatchPair:
        """Draw a :class:`CrossPatchPair`: patch 1 from ``source_a`` showing ``point_a`` and patch
        2 from ``source_b`` showing ``point_b`` (source array indices, numpy order; e.g. the same
        labelled landmark in two images). Each patch gets its own scale, rotation, elastic
        deformation and intensity jitter from the same distributions as :meth:`sample` (never a
        flip); the point sits at a position drawn uniformly in the patch box, and the patch offset
        is solved so that this patch index maps exactly onto the point."""
        rng = _as_generator(rng)
        srcs, pts, sps, cvals = [], [], [], []
        for name, src, pt, sp in (("source_a", source_a, point_a, spacing_a),
                                  ("source_b", source_b, point_b, spacing_b)):
            arr = np.asarray(src)
            if arr.ndim != self.ndim or arr.dtype.kind not in "fiub" or arr.size == 0:
                raise ValueError(f"{name} must be a non-empty numeric {self.ndim}D array (matching "
                                 f"patch_shape {self.patch_shape}), got shape {arr.shape}")
            arr = arr.astype(np.float32, copy=False)
            p = np.asarray(pt, dtype=np.float64).reshape(-1)
            if p.shape != (self.ndim,) or not np.all(np.isfinite(p)):
                raise ValueError(f"the point in {name} must be {self.ndim} finite array indices "
                                 f"(numpy order), got {pt!r}")
            srcs.append(arr)
            pts.append(p)
            sps.append(np.ones(self.ndim) if sp is None else
                       _per_axis(sp, self.ndim, "spacing", lo=0.0, lo_open=True))
            if self.cval is None:
                c = float(arr.min())
                if not math.isfinite(c):
                    raise ValueError(f"{name} contains NaN or infinite values")
            else:
                c = self.cval
            cvals.append(c)
        hi = np.asarray(self.patch_shape, dtype=np.float64) - 1
        transforms, anchor = [], []
        for p in pts:
            s = self._draw_scale(rng)
            R = self._draw_rotation(rng)
            e = self._draw_elastic(rng)
            u = rng.uniform(0.0, 1.0, size=self.ndim) * hi
            M = R * s[None, :]
            # x = M (u + e(u)) + t: solve t so that the drawn patch index u shows the point exactly
            zero = PatchTransform(self.patch_shape, M, np.zeros(self.ndim), e)
            transforms.append(PatchTransform(self.patch_shape, M, p - zero.to_source(u), e))
            anchor.append(u)
        j = self.intensity_jitter
        jitter = {
            "gain": rng.uniform(1 - j, 1 + j, size=2).tolist(),
            "bias": rng.uniform(-j, j, size=2).tolist(),
            "noise_std": self.noise_std,
            "noise_seed": (rng.integers(0, 2**63 - 1, size=2).tolist() if self.noise_std > 0
                           else None),
        }
        clean = np.stack([transforms[k].apply(srcs[k], cvals[k]) for k in range(2)])
        jittered = np.stack([_apply_jitter(clean[k], jitter, k) for k in range(2)])
        return CrossPatchPair(jittered, clean, transforms, jitter, np.stack(sps), cvals,
                              np.stack(anchor))


# ---------------------------------------------------------------------------------------------
_SAMPLER_KEYS = ("patch_shape", "overlap", "scale", "scale_anisotropy", "rotation_deg", "rotation_axes",
                 "elastic", "elastic_magnitude", "elastic_grid", "intensity_jitter", "noise_std")


def sampler_from_config(cfg: dict, **overrides) -> PatchPairSampler:
    """The sampler of a configuration dict (a :mod:`samlearn.presets` entry or a fitted
    ``SAMEmbedder.config_``): its augmentation keys, with ``overrides`` on top."""
    params = {k: cfg[k] for k in _SAMPLER_KEYS if k in cfg}
    params.update(overrides)
    if "elastic" in params:
        params["elastic"] = bool(params["elastic"])
    return PatchPairSampler(params.pop("patch_shape"), **params)


def sampler_for_preset(name: str, **overrides) -> PatchPairSampler:
    """The sampler of a named preset (``"ct"`` 32x96x96, ``"ct-lite"``, ``"xray"`` 400x400,
    ``"xray-lite"``; see :mod:`samlearn.presets`); keyword ``overrides`` replace its values."""
    from .presets import get_preset
    return sampler_from_config(get_preset(name), **overrides)
