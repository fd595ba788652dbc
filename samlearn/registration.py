"""Registration from SAM matches (SAM-affine and SAM-coarse, Yan et al. 2022 §III-E), and the
transform objects it returns.

**Direction convention (read this once).** Registering ``fixed`` and ``moving`` gives a transform
``T`` that maps **FIXED world points to MOVING world points**: ``T.transform_points(p)`` takes
points of the fixed image (mm) and returns where the same anatomy lies in the moving image. That is
exactly the transform image resampling wants: ``T.resample(moving)`` pulls the moving image onto
the fixed grid (output voxel at fixed position ``x`` gets the moving image's value at ``T(x)``).
So points and image content move in *opposite* directions through the same transform: if the
anatomy of the moving image sits 10 mm further along +x, ``transform_points`` adds 10 mm to x,
and ``resample`` shifts the moving image's content by -10 mm so it lies over the fixed image.
``T.inverse()`` maps moving points back to fixed points. ``to_sitk()`` gives the SimpleITK
transform with the same meaning (fixed -> moving physical points, as ``sitk.Resample`` expects).

Transforms: :class:`AffineTransform` (``y = A x + t``, homogeneous ``matrix``),
:class:`DisplacementField` (``y = x + u(x)``, ``u`` on a grid, linear interpolation, zero outside
the grid, as ITK's ``DisplacementFieldTransform``), and :class:`CompositeTransform` (a chain,
applied to points in the listed order).

Estimators (the embedder is a frozen, pre-trained component, as in ``OneShotLandmarkDetector``):

* :class:`SAMAffineRegistrar` -- sample a grid of points on the fixed image, drop points outside
  the body, match them into the moving image (one batched ``match_points`` call), keep confident
  matches (score threshold, optionally cycle consistency) and fit the affine by least squares,
  optionally robustly (RANSAC or Huber IRLS) against wrong matches.
* :class:`SAMDeformableRegistrar` -- SAM-affine, then SAM-coarse: a denser grid of confident
  matches, searched in small windows around the affine prediction, gives residual displacements
  that are smoothed into a coarse displacement field (normalised Gaussian convolution), composed
  with the affine.
"""
from __future__ import annotations

import functools
import numbers
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._frozen import (FrozenComponentMixin, check_flag, check_positive_float, check_positive_int,
                      check_probability, embed_images, resolve_embedder)
from .image import Image, ImageGeometry, check_images, check_points
from .ncc import NCCRefiner, check_ncc_params, resolve_search_mm
from .matching import (DEFAULT_CHUNK_SIZE, check_search_radius, cycle_consistency, match_points,
                       template_vectors)

__all__ = [
    "AffineTransform",
    "DisplacementField",
    "CompositeTransform",
    "Matches",
    "RegistrationError",
    "SAMAffineRegistrar",
    "SAMDeformableRegistrar",
    "body_mask",
    "fit_affine",
    "CT_BODY_THRESHOLD_HU",
]

#: "auto" body threshold for CT: tissue is denser than -500 HU (air -1000, lung -900..-500, fat -100).
CT_BODY_THRESHOLD_HU = -500.0
_ROBUST = (None, "ransac", "huber")
_REMATCH = ("original", "warped")


class RegistrationError(RuntimeError):
    """Registration could not produce a transform (e.g. too few confident matches)."""


# ============================================================================ transforms


def _reference_geometry(reference, name="reference") -> ImageGeometry:
    if isinstance(reference, ImageGeometry):
        return reference
    if isinstance(reference, Image):
        return reference.geometry
    if isinstance(reference, sitk.Image):
        return ImageGeometry.from_sitk(reference)
    raise TypeError(f"{name} must be an Image, a SimpleITK.Image or an ImageGeometry (the fixed "
                    f"grid to resample onto), got {type(reference).__name__}")


_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
                  "bspline": sitk.sitkBSpline}


class _Transform:
    """Shared behaviour: point checks, resampling through SimpleITK."""

    ndim: int
    reference: Optional[ImageGeometry]

    def _check(self, points, name="points"):
        single = np.ndim(points) == 1
        return check_points(points, self.ndim, name=name), single

    def transform_points(self, points) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_sitk(self) -> sitk.Transform:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, points) -> np.ndarray:
        return self.transform_points(points)

    def resample(self, moving_image, reference=None, *, interpolator: str = "linear",
                 default_value: Optional[float] = None) -> Image:
        """Resample ``moving_image`` onto the fixed grid: the output voxel at fixed world position
        ``x`` takes the moving image's value at ``transform_points(x)``.

        ``reference`` is the fixed grid (Image, SimpleITK image or ImageGeometry); default the
        fixed image the transform was estimated on (``self.reference``). ``interpolator`` is
        ``"linear"``, ``"nearest"`` or ``"bspline"``; outside the moving image the output gets
        ``default_value`` (default: the moving image's minimum, i.e. air for CT).
        """
        moving = check_images(moving_image, name="moving_image")
        if len(moving) != 1:
            raise ValueError(f"moving_image must be one image, got {len(moving)}")
        moving = moving[0]
        if moving.ndim != self.ndim:
            raise ValueError(f"moving_image is {moving.ndim}D but the transform is {self.ndim}D")
        if reference is None:
            if self.reference is None:
                raise ValueError("reference is needed: this transform does not know the fixed grid; "
                                 "pass reference=fixed_image (or its ImageGeometry)")
            geom = self.reference
        else:
            geom = _reference_geometry(reference)
        if geom.ndim != self.ndim:
            raise ValueError(f"reference is {geom.ndim}D but the transform is {self.ndim}D")
        if interpolator not in _INTERPOLATORS:
            raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}")
        if default_value is None:
            default_value = float(moving.array.min())
        f = sitk.ResampleImageFilter()
        f.SetSize([int(s) for s in geom.size])
        f.SetOutputSpacing([float(v) for v in geom.spacing])
        f.SetOutputOrigin([float(v) for v in geom.origin])
        f.SetOutputDirection([float(v) for v in geom.direction.ravel()])
        f.SetInterpolator(_INTERPOLATORS[interpolator])
        f.SetDefaultPixelValue(float(default_value))
        f.SetOutputPixelType(sitk.sitkFloat32)
        f.SetTransform(self.to_sitk())
        out = f.Execute(moving.to_sitk())
        return Image(sitk.GetArrayFromImage(out), geom, moving.source)


class AffineTransform(_Transform):
    """``y = A x + t``: FIXED world points ``x`` (mm) to MOVING world points ``y`` (mm).

    Parameters
    ----------
    matrix : (ndim + 1, ndim + 1) array
        Homogeneous matrix ``[[A, t], [0, 1]]`` (a (ndim, ndim + 1) ``[A | t]`` is accepted too).
    reference : ImageGeometry, Image or None
        The fixed grid: the default target of :meth:`resample`.
    """

    def __init__(self, matrix, *, reference=None):
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] not in (2, 3, 4) or m.shape[1] not in (3, 4):
            raise ValueError(f"matrix must be a (ndim+1, ndim+1) homogeneous matrix with ndim 2 or 3, "
                             f"got shape {m.shape}")
        ndim = m.shape[1] - 1
        if m.shape == (ndim, ndim + 1):
            m = np.vstack([m, np.r_[np.zeros(ndim), 1.0]])
        if m.shape != (ndim + 1, ndim + 1):
            raise ValueError(f"matrix must be (ndim+1, ndim+1) or (ndim, ndim+1), got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("matrix contains non-finite values")
        if not np.allclose(m[ndim], np.r_[np.zeros(ndim), 1.0]):
            raise ValueError(f"the last row of a homogeneous matrix must be [0, ..., 0, 1], got {m[ndim].tolist()}")
        if abs(np.linalg.det(m[:ndim, :ndim])) < 1e-12:
            raise ValueError("matrix is singular: its linear part has determinant 0")
        m.setflags(write=False)
        self._matrix = m
        self.ndim = ndim
        self.reference = None if reference is None else _reference_geometry(reference)

    @classmethod
    def identity(cls, ndim: int, *, reference=None) -> "AffineTransform":
        return cls(np.eye(ndim + 1), reference=reference)

    @classmethod
    def from_linear(cls, linear, translation, *, reference=None) -> "AffineTransform":
        """From the linear part ``A`` (ndim, ndim) and translation ``t`` (ndim,)."""
        a = np.asarray(linear, dtype=np.float64)
        t = np.asarray(translation, dtype=np.float64).reshape(-1)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or t.shape != (a.shape[0],):
            raise ValueError(f"linear must be (ndim, ndim) and translation (ndim,), got {a.shape} and {t.shape}")
        return cls(np.hstack([a, t[:, None]]), reference=reference)

    @classmethod
    def from_sitk(cls, transform: sitk.Transform, *, reference=None) -> "AffineTransform":
        """From a SimpleITK affine-like transform (its matrix, centre and translation)."""
        if not isinstance(transform, sitk.Transform):
            raise TypeError(f"transform must be a SimpleITK transform, got {type(transform).__name__}")
        ndim = transform.GetDimension()
        tx = transform.Downcast()
        if not all(hasattr(tx, m) for m in ("GetMatrix", "GetCenter", "GetTranslation")):
            raise TypeError(f"transform must be a SimpleITK affine-like transform (Affine, Euler, "
                            f"Similarity, ...), got {transform.GetName()}")
        a = np.asarray(tx.GetMatrix()).reshape(ndim, ndim)
        c = np.asarray(tx.GetCenter())
        t = np.asarray(tx.GetTranslation()) + c - a @ c
        return cls.from_linear(a, t, reference=reference)

    @property
    def matrix(self) -> np.ndarray:
        """(ndim + 1, ndim + 1) homogeneous matrix, fixed -> moving (read-only)."""
        return self._matrix

    @property
    def linear(self) -> np.ndarray:
        return self._matrix[: self.ndim, : self.ndim]

    @property
    def translation(self) -> np.ndarray:
        return self._matrix[: self.ndim, self.ndim]

    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points (n, ndim) to MOVING world points (n, ndim), mm."""
        pts, single = self._check(points)
        out = pts @ self.linear.T + self.translation
        return out[0] if single else out

    def inverse(self) -> "AffineTransform":
        """The transform mapping MOVING world points back to FIXED world points (its reference
        grid is unknown: pass one to ``resample``)."""
        return AffineTransform(np.linalg.inv(self._matrix))

    def to_sitk(self) -> sitk.AffineTransform:
        """SimpleITK ``AffineTransform`` (centre 0) with the same fixed -> moving meaning."""
        tx = sitk.AffineTransform(self.ndim)
        tx.SetMatrix([float(v) for v in self.linear.ravel()])
        tx.SetTranslation([float(v) for v in self.translation])
        tx.SetCenter([0.0] * self.ndim)
        return tx

    def __repr__(self) -> str:
        return f"AffineTransform(ndim={self.ndim}, matrix={np.round(self._matrix, 4).tolist()})"


class DisplacementField(_Transform):
    """``y = x + u(x)``: a dense displacement field ``u`` (mm) sampled on a grid in the domain
    (FIXED) space, linearly interpolated, zero outside the grid (ITK's
    ``DisplacementFieldTransform`` rule: inside means continuous index in ``[-0.5, n - 0.5)``,
    interpolation clamps at the outer voxel centres).

    Parameters
    ----------
    displacements : array (*geometry.shape, ndim)
        Displacement vectors, numpy spatial order (z, y, x), components in (x, y[, z]) world mm.
    geometry : ImageGeometry
        The grid of the field.
    reference : optional fixed grid for :meth:`resample`.
    """

    def __init__(self, displacements, geometry: ImageGeometry, *, reference=None):
        if not isinstance(geometry, ImageGeometry):
            raise TypeError(f"geometry must be an ImageGeometry, got {type(geometry).__name__}")
        u = np.asarray(displacements, dtype=np.float64)
        if u.shape != geometry.shape + (geometry.ndim,):
            raise ValueError(f"displacements must have shape {geometry.shape + (geometry.ndim,)} "
                             f"(grid shape in numpy order, then one (x, y[, z]) vector), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise ValueError("displacements contains non-finite values")
        u.setflags(write=False)
        self.displacements = u
        self.geometry = geometry
        self.ndim = geometry.ndim
        self.reference = None if reference is None else _reference_geometry(reference)

    def displacement_at(self, points) -> np.ndarray:
        """``u`` at world points (n, ndim): linear interpolation, zero outside the grid."""
        pts, _ = self._check(points)
        idx = self.geometry.world_to_array_index(pts)
        shape = np.asarray(self.geometry.shape)
        inside = np.all((idx >= -0.5) & (idx < shape - 0.5), axis=1)
        out = np.zeros_like(pts)
        if np.any(inside):
            coords = idx[inside].T
            for c in range(self.ndim):
                out[inside, c] = ndimage.map_coordinates(self.displacements[..., c], coords, order=1,
                                                         mode="nearest")
        return out

    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points to MOVING world points: ``x + u(x)``."""
        pts, single = self._check(points)
        out = pts + self.displacement_at(pts)
        return out[0] if single else out

    def inverse(self, n_iter: int = 50, tol_mm: float = 1e-4) -> "DisplacementField":
        """The inverse field ``v`` on the same grid (``y + v(y)`` undoes ``x + u(x)``), by the
        fixed-point iteration ``v(g) = -u(g + v(g))`` at every grid node: exact (to ``tol_mm``) at
        the nodes for fields without folding; between nodes the linear interpolation of ``v`` adds
        a small error (here up to 0.05 mm for a 3 mm field varying over ~30 mm on a 4-6 mm grid).
        ``transform_points`` and ``to_sitk`` of the result agree exactly."""
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in self.geometry.shape], indexing="ij"), -1)
        nodes = self.geometry.array_index_to_world(idx.reshape(-1, self.ndim))
        v = -self.displacement_at(nodes)
        for _ in range(int(n_iter)):
            v_new = -self.displacement_at(nodes + v)
            step = np.abs(v_new - v).max() if len(v) else 0.0
            v = v_new
            if step < tol_mm:
                break
        return DisplacementField(v.reshape(self.displacements.shape), self.geometry)

    def to_sitk(self) -> sitk.DisplacementFieldTransform:
        """SimpleITK ``DisplacementFieldTransform`` with the same fixed -> moving meaning."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.displacements), isVector=True)
        img = self.geometry.apply_to_sitk(img)
        img = sitk.Cast(img, sitk.sitkVectorFloat64)
        return sitk.DisplacementFieldTransform(img)  # takes the image over

    def __repr__(self) -> str:
        mag = np.linalg.norm(self.displacements, axis=-1)
        return f"DisplacementField({self.geometry!r}, max |u| = {mag.max():.3g} mm)"


class CompositeTransform(_Transform):
    """A chain of transforms applied to points **in the listed order**: ``transforms[0]`` first.

    For SAM-coarse the chain is ``[DisplacementField, AffineTransform]``: a fixed point ``x`` goes
    to ``A (x + u(x)) + t`` in the moving image. (SimpleITK's ``CompositeTransform`` applies its
    *last* entry first; :meth:`to_sitk` adds the entries in reverse so the meaning is the same.)
    """

    def __init__(self, transforms: Sequence[_Transform], *, reference=None):
        ts = list(transforms)
        if not ts:
            raise ValueError("transforms is empty: give at least one transform")
        for i, t in enumerate(ts):
            if not isinstance(t, _Transform):
                raise TypeError(f"transforms[{i}] must be a samlearn transform (AffineTransform, "
                                f"DisplacementField, CompositeTransform), got {type(t).__name__}")
        dims = {t.ndim for t in ts}
        if len(dims) != 1:
            raise ValueError(f"transforms mix dimensions {sorted(dims)}")
        self.transforms = tuple(ts)
        self.ndim = ts[0].ndim
        self.reference = None if reference is None else _reference_geometry(reference)

    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points to MOVING world points through the whole chain."""
        pts, single = self._check(points)
        for t in self.transforms:
            pts = t.transform_points(pts)
        return pts[0] if single else pts

    def inverse(self) -> "CompositeTransform":
        """Inverse chain: each entry inverted, in reverse order (moving -> fixed)."""
        return CompositeTransform([t.inverse() for t in reversed(self.transforms)])

    def to_sitk(self) -> sitk.CompositeTransform:
        comp = sitk.CompositeTransform(self.ndim)
        for t in reversed(self.transforms):
            comp.AddTransform(t.to_sitk())
        return comp

    def __repr__(self) -> str:
        return f"CompositeTransform({', '.join(type(t).__name__ for t in self.transforms)})"


# ============================================================================ affine fitting


def _lstsq_affine(x, y, w=None):
    """Weighted least-squares ``[A | t]`` (ndim, ndim + 1) with ``y ~ A x + t``."""
    xh = np.hstack([x, np.ones((len(x), 1))])
    if w is not None:
        sw = np.sqrt(w)[:, None]
        xh, y = xh * sw, y * sw
    p, *_ = np.linalg.lstsq(xh, y, rcond=None)
    return p.T


def _residuals(p, x, y):
    return np.linalg.norm(x @ p[:, :-1].T + p[:, -1] - y, axis=1)


def _ransac_samples(rng, n: int, k: int, n_trials: int) -> np.ndarray:
    """``n_trials`` rows of ``k`` distinct indices in ``range(n)`` (each row sorted): batches of
    independent draws with the rows that repeat an index dropped (``rng.choice`` without replacement,
    one call per trial, cost more than the whole RANSAC scoring)."""
    rows, have = [], 0
    for _ in range(64):
        s = np.sort(rng.integers(0, n, size=(2 * (n_trials - have) + 16, k)), axis=1)
        s = s[(np.diff(s, axis=1) > 0).all(1)][: n_trials - have]
        rows.append(s)
        have += len(s)
        if have == n_trials:
            break
    else:  # only for n barely above k and unlucky draws: finish one trial at a time
        rows += [np.sort(rng.choice(n, size=k, replace=False))[None] for _ in range(n_trials - have)]
    return np.concatenate(rows)


def fit_affine(fixed_points, moving_points, *, robust=None, residual_threshold_mm=None,
               n_trials: int = 1000, rng=None, weights=None):
    """Fit ``moving ~ A fixed + t`` to point pairs. Returns ``(matrix (ndim+1, ndim+1), inliers)``.

    ``robust``:

    * ``None``: ordinary (or ``weights``-weighted) least squares; every pair is an inlier.
    * ``"ransac"``: ``n_trials`` minimal samples (ndim + 1 pairs, degenerate ones skipped) are fitted
      exactly; the model with the most pairs within ``residual_threshold_mm`` wins (ties: smaller
      summed inlier residual), then least squares on its inliers, recomputing the inliers twice.
    * ``"huber"``: iteratively reweighted least squares with Huber weights ``min(1, k / r)``;
      ``k = residual_threshold_mm`` or, when None, ``1.345`` times a robust scale of the current
      residuals (``1.4826 * median``), re-estimated each iteration. Inliers: pairs with weight 1.
    """
    x = np.asarray(fixed_points, dtype=np.float64)
    y = np.asarray(moving_points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in (2, 3) or y.shape != x.shape:
        raise ValueError(f"fixed_points and moving_points must both have shape (n, ndim), ndim 2 or "
                         f"3; got {x.shape} and {y.shape}")
    n, d = x.shape
    if n < d + 1:
        raise RegistrationError(f"an affine in {d}D needs at least {d + 1} point pairs, got {n}")
    if robust not in _ROBUST:
        raise ValueError(f"robust must be one of {_ROBUST}, got {robust!r}")
    rng = np.random.default_rng(rng)
    inl = np.ones(n, bool)
    if robust is None:
        p = _lstsq_affine(x, y, weights)
    elif robust == "ransac":
        if residual_threshold_mm is None:
            raise ValueError("robust='ransac' needs residual_threshold_mm")
        thr = float(residual_threshold_mm)
        if int(n_trials) < 1:
            raise ValueError(f"n_trials must be at least 1, got {n_trials}")
        k = d + 1
        idx = _ransac_samples(rng, n, k, int(n_trials))
        xs = np.concatenate([x[idx], np.ones((len(idx), k, 1))], 2)  # (T, k, k)
        ys = y[idx]  # (T, k, d)
        scale = max(1.0, float(np.abs(x - x.mean(0)).max()))
        det = np.abs(np.linalg.det(x[idx[:, 1:]] - x[idx[:, :1]]))  # volume spanned by the edges
        ok = det > (1e-3 * scale) ** d
        if not np.any(ok):
            raise RegistrationError("every RANSAC sample was degenerate (points collinear / coplanar)")
        sol = np.linalg.solve(xs[ok], ys[ok])  # (T', k, d): [x 1] @ sol = y
        t = len(sol)
        # every trial's predictions in one GEMM, laid out (n, d, T') so that the element-wise steps
        # run over long contiguous rows (a trailing axis of length d makes numpy loop per pair)
        r2 = np.hstack([x, np.ones((n, 1))]) @ sol.transpose(1, 2, 0).reshape(k, d * t)
        r2 = r2.reshape(n, d, t)
        r2 -= y[:, :, None]
        np.square(r2, out=r2)
        r2 = r2.sum(1)  # (n, T') squared residuals
        inside = r2 <= thr * thr
        count = inside.sum(0)
        cost = np.sqrt(r2, where=inside, out=np.zeros_like(r2)).sum(0)
        best = np.lexsort((cost, -count))[0]
        inl = inside[:, best]
        if inl.sum() < k:
            raise RegistrationError(f"RANSAC found no model with {k} or more matches within "
                                    f"{thr:.3g} mm; raise residual_threshold_mm")
        for _ in range(3):
            p = _lstsq_affine(x[inl], y[inl])
            new = _residuals(p, x, y) <= thr
            if new.sum() < k or np.array_equal(new, inl):
                break
            inl = new
    else:  # huber
        p = _lstsq_affine(x, y, weights)
        w0 = np.ones(n) if weights is None else np.asarray(weights, float)
        for _ in range(100):
            r = _residuals(p, x, y)
            if residual_threshold_mm is None:
                kk = 1.345 * max(1.4826 * float(np.median(r)), 1e-9)
            else:
                kk = float(residual_threshold_mm)
            w = np.where(r <= kk, 1.0, kk / np.maximum(r, 1e-12))
            p_new = _lstsq_affine(x, y, w * w0)
            change = np.abs(p_new - p).max()
            p = p_new
            if change < 1e-9:
                break
        inl = _residuals(p, x, y) <= kk
    m = np.vstack([p, np.r_[np.zeros(d), 1.0]])
    return m, inl


# ============================================================================ body mask


def _block_reduce(arr, factors):
    sl = tuple(slice(0, (s // f) * f) for s, f in zip(arr.shape, factors))
    a = arr[sl]
    shape = []
    for s, f in zip(a.shape, factors):
        shape += [s // f, f]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def body_mask(image: Image, threshold: float, *, working_spacing_mm: float = 4.0):
    """Boolean mask (on a block-averaged copy of ``image``'s grid) of the body and a function
    ``inside(points) -> bool`` for world points.

    Rule: voxels brighter than ``threshold`` (raw intensity units: HU for CT), on a copy averaged in
    blocks of about ``working_spacing_mm``; the largest connected component is kept (drops the CT
    table and noise), then holes are filled slice by slice along every axis, so the lungs and bowel
    gas inside the body count as body.
    """
    factors = np.maximum(1, np.floor(working_spacing_mm / image.spacing[::-1])).astype(int)
    small = _block_reduce(image.array, factors)
    if small.size == 0 or min(small.shape) == 0:
        small, factors = image.array, np.ones(image.ndim, int)
    mask = small > threshold
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    filled = mask.copy()
    if mask.ndim == 3:
        for ax in range(3):
            for i in range(mask.shape[ax]):
                sl = [slice(None)] * 3
                sl[ax] = i
                filled[tuple(sl)] |= ndimage.binary_fill_holes(mask[tuple(sl)])
    else:
        filled = ndimage.binary_fill_holes(mask)

    def inside(points):
        idx = image.geometry.world_to_array_index(np.atleast_2d(points))
        # continuous index of the block-averaged grid: block b covers input indices [f b, f b + f)
        bidx = np.round((idx - (factors - 1) / 2.0) / factors).astype(int)
        ok = np.all((bidx >= 0) & (bidx < np.asarray(filled.shape)), axis=1)
        out = np.zeros(len(bidx), bool)
        out[ok] = filled[tuple(bidx[ok].T)]
        return out

    return filled, inside


def _xray_body_threshold(array) -> float:
    """X-ray rule: drop only the darkest background (air, collimation): pixels above the 2nd
    percentile plus 5% of the 2nd-98th percentile range."""
    sample = array.ravel()[:: max(1, array.size // 2_000_000)]
    lo, hi = np.percentile(sample, [2.0, 98.0])
    return float(lo + 0.05 * (hi - lo))


# ============================================================================ estimators


@dataclass
class Matches:
    """Confident point matches of a registration: ``fixed_points`` (n, ndim) and
    ``moving_points`` (n, ndim) world mm, ``scores`` (n,) in [-1, 1], and
    ``cycle_distances_mm`` (n,) when cycle consistency was checked (else None)."""

    fixed_points: np.ndarray
    moving_points: np.ndarray
    scores: np.ndarray
    cycle_distances_mm: Optional[np.ndarray] = field(default=None)

    def __len__(self):
        return len(self.fixed_points)


def auto_body_threshold(embedder, image: Image) -> float:
    """The "auto" body threshold of an image for :func:`body_mask`: -500 HU when the embedder
    normalises intensities as CT (``config_["intensity"] == "ct"``; 3D images when it does not
    say), otherwise the X-ray rule (only the darkest background is dropped)."""
    preset = (getattr(embedder, "config_", None) or {}).get("intensity")
    is_ct = preset == "ct" or (preset is None and image.ndim == 3)
    return CT_BODY_THRESHOLD_HU if is_ct else _xray_body_threshold(image.array)


def _grid_points(geometry: ImageGeometry, spacing_mm: float, rng=None) -> np.ndarray:
    """World points of a regular grid over ``geometry`` with about ``spacing_mm`` between points
    along each index axis, centred in the field of view. With ``rng`` each point is moved to a
    uniformly random position inside its grid cell (stratified sampling): the points then take
    every sub-voxel position relative to the embedding grids, so the sub-voxel biases of the
    matches average out in a fit instead of all pointing the same way (a regular grid whose step
    is a multiple of the embedding voxel puts every point at the same sub-voxel phase)."""
    axes, steps = [], []
    for n, sp in zip(geometry.size, geometry.spacing):
        extent = n * sp
        k = max(1, int(np.floor(extent / spacing_mm)))
        step = extent / k
        axes.append((np.arange(k) * step + step / 2) / sp - 0.5)  # continuous index (x, y, z)
        steps.append(step / sp)
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geometry.ndim)
    if rng is not None:
        idx = idx + (rng.random(idx.shape) - 0.5) * np.asarray(steps)
    return geometry.index_to_world(idx)


def body_grid_points(image: Image, spacing_mm: float, max_points: int, rng, threshold=None):
    """Stratified grid points of ``image`` (:func:`_grid_points`, spacing ``spacing_mm``) inside the
    body (:func:`body_mask` at ``threshold``; None keeps every point), at most ``max_points`` of them
    (a random subset drawn with ``rng``). Returns ``(points, n_grid, n_body)``."""
    pts = _grid_points(image.geometry, spacing_mm, rng)
    n_grid = len(pts)
    if threshold is not None:
        _, inside = body_mask(image, threshold)
        pts = pts[inside(pts)]
    n_body = len(pts)
    if len(pts) > max_points:
        pts = pts[np.sort(rng.choice(len(pts), size=max_points, replace=False))]
    return pts, n_grid, n_body


class SAMAffineRegistrar(FrozenComponentMixin, BaseEstimator):
    """SAM-affine registration (§III-E): affine transform from SAM matches of a point grid.

    ``fit(fixed, moving)`` estimates ``transform_``, an :class:`AffineTransform` mapping FIXED
    world points to MOVING world points (see the module docstring for the direction convention);
    ``transform_.resample(moving)`` brings the moving image onto the fixed grid.

    Parameters
    ----------
    embedder : fitted SAMEmbedder or path
        Frozen, pre-trained (``clone`` shares it; see ``OneShotLandmarkDetector``). A path to a
        saved model is loaded with ``samlearn.load``.
    grid_spacing_mm : float, default 16
        Spacing of the grid of fixed-image points that are matched.
    max_points : int, default 500
        At most this many in-body grid points are matched (a random subset, drawn with
        ``random_state``, when the grid holds more).
    score_threshold : float in [-1, 1], default 0.5
        Matches with a lower peak score ``(S^g + S^l) / 2`` are dropped before fitting.
    cycle_threshold_mm : float or None, default None
        Also drop matches whose forward-backward (cycle) distance exceeds this (mm); costs a second
        search. None: no cycle check.
    robust : {"ransac", "huber", None}, default "ransac"
        Robust fit against wrong matches (see :func:`fit_affine`); None = plain least squares.
    residual_threshold_mm : "auto", float or None, default "auto"
        RANSAC inlier distance / Huber transition (mm). "auto": RANSAC uses 1.5 voxels of the
        moving image's local embedding grid (its largest spacing); Huber estimates it from the
        residuals (1.345 x 1.4826 x median).
    ransac_trials : int, default 1000
    body_threshold : "auto", float or None, default "auto"
        Grid points where the fixed image is not body are dropped (:func:`body_mask`: intensity
        above the threshold, largest component, holes filled). "auto": -500 HU when the embedder
        normalises intensities as CT (``config_["intensity"] == "ct"``; 3D images when it does not
        say), otherwise the X-ray rule (above the 2nd percentile + 5% of the 2nd-98th percentile
        range: only the darkest background is dropped). A number: raw intensity threshold.
        None: keep every grid point.
    search_radius_mm : "auto", float or None, default "auto"
        Coarse-to-fine window of ``match_points`` for the grid matches.
    mode : {"sum", "global", "local"}, default "sum"
    n_refinements : int, default 1
        Refinement passes after the first fit (0 = the paper's one-pass SAM-affine). Each pass
        resamples the moving image through the current affine onto the fixed image's working grid,
        embeds it again, matches the same points in windows of ``refine_radius_mm`` of the local
        map centred on themselves (the affine is the prior, so the coarse global map is not used)
        and composes the fitted correction. Costs one more embedding per pass. Measured on five
        real CTs under known warps (benchmarks/RESULTS.md, "CT registration"): one pass lowered the
        mean TRE of the 15-minute ct-lite model from 3.8 to 2.4 mm; a second pass did not help
        consistently.
    refine_radius_mm : float, default 12
    ncc_radius_mm : None or float, default None
        Intensity refinement of the matches made on aligned images (:mod:`samlearn.ncc`; off when
        None): in every refinement pass (and in ``SAMDeformableRegistrar``'s warped dense passes),
        each SAM match in the resampled moving image is moved to the shift of best normalised
        cross-correlation between the fixed image's intensity patch of this half-width (mm) and
        the resampled image, within ``ncc_search_mm``. The images are compared only after the
        affine has aligned them, so rotation and scale do not disturb the correlation; it needs
        ``n_refinements >= 1`` (``SAMDeformableRegistrar``: or a warped dense pass) and images of
        one modality (block matching, as in NiftyReg's
        aladin). Not in the paper: a hybrid that adds intensity precision to SAM's robust
        correspondences. On five real CTs under known warps (benchmarks/RESULTS.md, "CT
        registration"), 10 mm: SAM-affine 2.40 -> 1.70 mm, SAM-coarse 2.80 -> 1.50 mm (elastix
        affine 1.31 mm); about 1 s per pair for 500 matches, 8-10 s for SAM-coarse's ~6,000
        (one thread).
    ncc_search_mm : "auto" or float, default "auto"
        Largest shift searched per world axis ("auto": one voxel of the moving embedding's local
        grid, its largest spacing).
    ncc_penalty : float, default 0.05
        NCC units subtracted at the edge of the search (in proportion to the squared shift).
    random_state : int, None
        Seeds the subsampling of grid points and RANSAC (a ``numpy.random.Generator`` per fit).
    chunk_size : int
        Memory bound of the search (``match_points``).

    Attributes
    ----------
    transform_ : AffineTransform (fixed -> moving world mm; ``reference`` = the fixed grid)
    matches_ : Matches -- the confident matches the fit saw
    inlier_mask_ : (len(matches_),) bool -- the matches the robust fit kept
    n_grid_points_, n_body_points_, n_matched_ : int
        Grid points, of which in the body (and matched, after ``max_points``), of which confident
        is ``len(matches_)``.
    residuals_mm_ : (len(matches_),) distances between ``transform_(fixed)`` and the matched points
    timings_ : dict of seconds (embed, match, fit, total)
    embedder_, ndim_
    """

    def __init__(self, *, embedder=None, grid_spacing_mm=16.0, max_points=500, score_threshold=0.5,
                 cycle_threshold_mm=None, robust="ransac", residual_threshold_mm="auto",
                 ransac_trials=1000, body_threshold="auto", search_radius_mm="auto", mode="sum",
                 n_refinements=1, refine_radius_mm=12.0, random_state=None, batch_size=1,
                 chunk_size=DEFAULT_CHUNK_SIZE, ncc_radius_mm=None, ncc_search_mm="auto", ncc_penalty=0.05):
        self.embedder = embedder
        self.grid_spacing_mm = grid_spacing_mm
        self.max_points = max_points
        self.score_threshold = score_threshold
        self.cycle_threshold_mm = cycle_threshold_mm
        self.robust = robust
        self.residual_threshold_mm = residual_threshold_mm
        self.ransac_trials = ransac_trials
        self.body_threshold = body_threshold
        self.search_radius_mm = search_radius_mm
        self.mode = mode
        self.n_refinements = n_refinements
        self.refine_radius_mm = refine_radius_mm
        self.ncc_radius_mm = ncc_radius_mm
        self.ncc_search_mm = ncc_search_mm
        self.ncc_penalty = ncc_penalty
        self.random_state = random_state
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        check_positive_float(self.grid_spacing_mm, "grid_spacing_mm")
        check_positive_int(self.max_points, "max_points")
        check_probability(self.score_threshold, "score_threshold")
        check_positive_float(self.cycle_threshold_mm, "cycle_threshold_mm", allow_none=True)
        if self.robust not in _ROBUST:
            raise ValueError(f"robust must be one of {_ROBUST}, got {self.robust!r}")
        if not (isinstance(self.residual_threshold_mm, str) and self.residual_threshold_mm == "auto"):
            if isinstance(self.residual_threshold_mm, str):
                raise ValueError(f"residual_threshold_mm must be 'auto' or a positive number of mm, "
                                 f"got {self.residual_threshold_mm!r}")
            check_positive_float(self.residual_threshold_mm, "residual_threshold_mm")
        check_positive_int(self.ransac_trials, "ransac_trials")
        bt = self.body_threshold
        if not (bt is None or (isinstance(bt, str) and bt == "auto")):
            if isinstance(bt, (str, bool, np.bool_)) or not isinstance(bt, numbers.Real) or not np.isfinite(bt):
                raise ValueError(f"body_threshold must be 'auto', None or a finite intensity, got {bt!r}")
        check_search_radius(self.search_radius_mm)
        if self.mode not in ("sum", "global", "local"):
            raise ValueError(f"mode must be one of ('sum', 'global', 'local'), got {self.mode!r}")
        if isinstance(self.n_refinements, bool) or not isinstance(self.n_refinements, (int, np.integer)) \
                or self.n_refinements < 0:
            raise ValueError(f"n_refinements must be a non-negative integer, got {self.n_refinements!r}")
        check_positive_float(self.refine_radius_mm, "refine_radius_mm")
        check_ncc_params(self.ncc_radius_mm, self.ncc_search_mm, self.ncc_penalty)
        if self.ncc_radius_mm is not None and not self._has_aligned_pass():
            raise ValueError("ncc_radius_mm needs a match on the moving image resampled through the "
                             "affine (the intensity refinement compares aligned images): n_refinements "
                             ">= 1 (SAMDeformableRegistrar: or rematch='warped', or n_coarse_passes > 1)")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.chunk_size, "chunk_size")
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, (int, np.integer)) or rs < 0):
            raise ValueError(f"random_state must be None or a non-negative int, got {rs!r}")

    def _check_pair(self, fixed, moving, ndim):
        out = []
        for name, img in (("fixed", fixed), ("moving", moving)):
            if isinstance(img, (list, tuple)):
                raise TypeError(f"{name} must be one image (Image, SimpleITK.Image or path), got a "
                                f"{type(img).__name__}")
            im = check_images(img, name=name)[0]
            if im.ndim != ndim:
                raise ValueError(f"{name} is {im.ndim}D but the embedder was fitted on {ndim}D images "
                                 f"(embedder.ndim_={ndim})")
            out.append(im)
        return out

    def _body_threshold(self, embedder, image: Image):
        bt = self.body_threshold
        if bt is None:
            return None
        if isinstance(bt, str):  # "auto"
            return auto_body_threshold(embedder, image)
        return float(bt)

    def _sample_points(self, embedder, fixed: Image, spacing_mm, max_points, rng):
        return body_grid_points(fixed, spacing_mm, max_points, rng, self._body_threshold(embedder, fixed))

    def _match_kwargs(self):
        return dict(mode=self.mode, search_radius_mm=self.search_radius_mm, refine=True,
                    chunk_size=self.chunk_size)

    def _residual_threshold(self, moving_emb):
        if isinstance(self.residual_threshold_mm, str):
            if self.robust == "ransac":
                return 1.5 * float(np.max(moving_emb.local_map.geometry.spacing))
            return None
        return float(self.residual_threshold_mm)

    # ------------------------------------------------------------------ fit
    def fit(self, fixed, moving, y=None):
        """Register ``moving`` to ``fixed`` (each one Image, SimpleITK image or path). ``y`` is
        ignored. Sets ``transform_`` (fixed -> moving world points) and the diagnostics."""
        t_start = time.perf_counter()
        self._check_params()
        embedder = resolve_embedder(self.embedder, type(self).__name__)
        ndim = int(embedder.ndim_)
        fixed_im, moving_im = self._check_pair(fixed, moving, ndim)
        rng = np.random.default_rng(np.random.SeedSequence(self.random_state))
        timings = {}
        t0 = time.perf_counter()
        fixed_emb, moving_emb = embed_images(embedder, [fixed_im, moving_im], self.batch_size)
        timings["embed"] = time.perf_counter() - t0

        pts, gv, lv = self._fit_affine(embedder, fixed_im, fixed_emb, moving_emb, rng, timings)
        # the embedding the latest matches were made in, and the transform that maps its world
        # points to the moving image's (identity for the moving image itself)
        ref = (moving_emb, AffineTransform.identity(ndim), moving_im)
        if self.n_refinements:
            ref = self._refine_affine(embedder, fixed_im, moving_im, fixed_emb, pts, gv, lv, ref, rng,
                                      timings)
        self.embedder_ = embedder
        self.ndim_ = ndim
        self._after_affine(embedder, fixed_im, moving_im, fixed_emb, moving_emb, ref, rng, timings)
        timings["total"] = time.perf_counter() - t_start
        self.timings_ = timings
        return self

    def _fit_affine(self, embedder, fixed_im, fixed_emb, moving_emb, rng, timings):
        t0 = time.perf_counter()
        pts, n_grid, n_body = self._sample_points(embedder, fixed_im, float(self.grid_spacing_mm),
                                                  int(self.max_points), rng)
        need = 3 * (fixed_im.ndim + 1)
        if len(pts) < need:
            raise RegistrationError(
                f"only {len(pts)} of {n_grid} grid points lie in the body of the fixed image (need "
                f"{need}); lower grid_spacing_mm ({self.grid_spacing_mm}) or body_threshold "
                f"({self.body_threshold!r}, None keeps every point)")
        kwargs = self._match_kwargs()
        gv, lv = template_vectors(fixed_emb, pts)
        res = match_points(gv, lv, moving_emb, **kwargs)
        keep = res.scores >= float(self.score_threshold)
        cyc = None
        if self.cycle_threshold_mm is not None:
            cyc = cycle_consistency(fixed_emb, pts, moving_emb, forward=res, **kwargs).distances_mm
            keep &= cyc <= float(self.cycle_threshold_mm)
        timings["match"] = time.perf_counter() - t0
        n_keep = int(keep.sum())
        if n_keep < need:
            raise RegistrationError(
                f"only {n_keep} of {len(pts)} matches passed score_threshold={self.score_threshold}"
                + (f" and cycle_threshold_mm={self.cycle_threshold_mm}" if cyc is not None else "")
                + f" (need {need}; scores ranged {res.scores.min():.3f}..{res.scores.max():.3f}); "
                  f"lower the threshold(s) or check that the images show the same body region")
        t0 = time.perf_counter()
        x, y = pts[keep], res.points[keep]
        matrix, inl = fit_affine(x, y, robust=self.robust,
                                 residual_threshold_mm=self._residual_threshold(moving_emb),
                                 n_trials=int(self.ransac_trials), rng=rng)
        timings["fit"] = time.perf_counter() - t0
        self.transform_ = AffineTransform(matrix, reference=fixed_im.geometry)
        self.matches_ = Matches(x, y, res.scores[keep], None if cyc is None else cyc[keep])
        self.inlier_mask_ = inl
        self.residuals_mm_ = np.linalg.norm(self.transform_.transform_points(x) - y, axis=1)
        self.n_grid_points_ = n_grid
        self.n_body_points_ = n_body
        self.n_matched_ = len(pts)
        self.n_refinements_done_ = 0
        return pts, gv, lv

    def _warp_and_embed(self, embedder, fixed_im, moving_im, transform):
        """The moving image resampled through ``transform`` onto the fixed image's working grid,
        and its embedding: ``(image, embedding)``."""
        warped = transform.resample(moving_im, reference=self._working_geometry(embedder, fixed_im))
        warped.source = None if moving_im.source is None else f"{moving_im.source} (affine-resampled)"
        return warped, embed_images(embedder, [warped], 1)[0]

    def _has_aligned_pass(self) -> bool:
        """Whether any matching is done on the affinely resampled moving image (where NCC applies)."""
        return bool(self.n_refinements)

    def _ncc(self, fixed_im, pts):
        """An NCCRefiner of the fixed points (None when ``ncc_radius_mm`` is None)."""
        if self.ncc_radius_mm is None:
            return None
        return NCCRefiner(fixed_im, pts, float(self.ncc_radius_mm), float(self.ncc_penalty))

    def _ncc_points(self, refiner, image, emb, points):
        """``points`` matched in ``image`` (embedding ``emb``), refined by ``refiner`` when there is one."""
        if refiner is None:
            return points
        return refiner(image, points, resolve_search_mm(self.ncc_search_mm, emb))[0]

    def _refine_affine(self, embedder, fixed_im, moving_im, fixed_emb, pts, gv, lv, ref, rng, timings):
        """Refinement passes: resample the moving image through the current affine onto the fixed
        working grid, embed it, match the same grid points again in small windows of the local
        map centred on themselves (the images are now nearly aligned, so the match is a residual
        correction ``C``, free of the rotation / scale the embeddings are not invariant to), fit
        ``C`` robustly and compose: ``T <- T o C``."""
        t0 = time.perf_counter()
        need = 3 * (fixed_im.ndim + 1)
        kwargs = dict(mode="local", search_radius_mm=float(self.refine_radius_mm), refine=True,
                      chunk_size=self.chunk_size)
        refiner = self._ncc(fixed_im, pts)
        for _ in range(int(self.n_refinements)):
            current = self.transform_
            w_im, w_emb = self._warp_and_embed(embedder, fixed_im, moving_im, current)
            res = match_points(gv, lv, w_emb, centers_world=pts, **kwargs)
            matched = self._ncc_points(refiner, w_im, w_emb, res.points)
            keep = res.scores >= float(self.score_threshold)
            cyc = None
            if self.cycle_threshold_mm is not None:
                cyc = cycle_consistency(fixed_emb, pts, w_emb, forward=res, centers_world=pts,
                                        **kwargs).distances_mm
                keep &= cyc <= float(self.cycle_threshold_mm)
            if keep.sum() < need:
                break  # keep the current affine: too few confident matches to correct it
            x, y = pts[keep], matched[keep]
            corr, inl = fit_affine(x, y, robust=self.robust,
                                   residual_threshold_mm=self._residual_threshold(w_emb),
                                   n_trials=int(self.ransac_trials), rng=rng)
            self.transform_ = AffineTransform(current.matrix @ corr, reference=fixed_im.geometry)
            y_moving = current.transform_points(y)
            self.matches_ = Matches(x, y_moving, res.scores[keep], None if cyc is None else cyc[keep])
            self.inlier_mask_ = inl
            self.residuals_mm_ = np.linalg.norm(self.transform_.transform_points(x) - y_moving, axis=1)
            self.n_refinements_done_ += 1
            ref = (w_emb, current, w_im)
        timings["refine"] = time.perf_counter() - t0
        return ref

    @staticmethod
    def _working_geometry(embedder, fixed_im: Image) -> ImageGeometry:
        """Resample warped images straight onto the embedder's working grid for the fixed image
        when it is known (the embedder then skips its own resampling and both embeddings share
        one grid), else onto the fixed grid."""
        working = getattr(embedder, "_inference_config", None)
        cfg = (working() if getattr(embedder, "config_", None) and working is not None
               else getattr(embedder, "config_", None) or {})
        sp = cfg.get("spacing_mm")
        if sp is not None:
            return fixed_im.geometry.canonical(spacing=sp)
        return fixed_im.geometry

    def _after_affine(self, embedder, fixed_im, moving_im, fixed_emb, moving_emb, ref, rng, timings):
        """Hook for SAM-coarse; nothing for the affine registrar."""

    # ------------------------------------------------------------------ helpers
    def transform_points(self, points) -> np.ndarray:
        """``transform_.transform_points``: FIXED world points -> MOVING world points."""
        check_is_fitted(self, "transform_")
        return self.transform_.transform_points(points)

    def resample(self, moving_image, **kwargs) -> Image:
        """``transform_.resample``: the moving image on the fixed grid."""
        check_is_fitted(self, "transform_")
        return self.transform_.resample(moving_image, **kwargs)


class SAMDeformableRegistrar(SAMAffineRegistrar):
    """SAM-affine followed by SAM-coarse (§III-E): a smooth displacement field from a denser grid
    of SAM matches, composed with the affine.

    After the affine fit, fixed points on a grid of ``dense_grid_spacing_mm`` (in the body,
    stratified random positions) are matched again, each searched on the local map only within
    ``dense_search_radius_mm`` of where the affine puts it (the affine replaces the coarse global
    map as the prior):

    * ``rematch="original"``: in the moving image's embedding (no second network pass); a match
      ``y`` gives the residual ``u = A^-1 (y - t) - x`` in fixed space;
    * ``rematch="warped"`` (the paper's way): in the embedding of the moving image resampled onto
      the fixed working grid through the affine (the one the last refinement pass made, else a
      new one), so both images are roughly aligned when they are compared (helps when the
      embeddings are not rotation invariant); a match ``y'`` there gives ``u = y' - x`` (up to
      the last refinement's correction).

    Matches below ``score_threshold`` are dropped; the residuals are smoothed into a field on a grid
    of ``field_spacing_mm`` by normalised Gaussian convolution (width ``smoothing_mm``; the field
    decays to zero away from the matches), matches that disagree with the smooth field by more
    than ``outlier_factor`` robust standard deviations are dropped and the field is estimated
    again. ``transform_`` is ``CompositeTransform([DisplacementField, AffineTransform])``: a fixed
    point ``x`` maps to ``A (x + u(x)) + t``. ``affine_transform_`` keeps the affine alone.

    Extra parameters: ``dense_grid_spacing_mm`` (default 6), ``dense_max_points`` (6000),
    ``dense_search_radius_mm`` (16), ``field_spacing_mm`` (8), ``smoothing_mm`` (32),
    ``max_displacement_mm`` (30: larger residuals are treated as wrong matches),
    ``outlier_factor`` (2.5), ``rematch`` (default "warped"). The defaults come from a small sweep
    on one real CT (lung1) with the 15-minute ct-lite model, where SAM-coarse still did *not*
    beat its own affine (its dense matches erred 4-5 mm against a 1.2 mm elastic part; see
    benchmarks/RESULTS.md): with a better-trained model, smaller ``smoothing_mm`` should pay.
    ``n_coarse_passes`` (default 1): passes after the first warp the moving image through the
    whole current transform onto the fixed working grid, embed it, match the same dense points
    within half of ``dense_search_radius_mm`` of themselves and put a correction field (same
    smoothing and outlier rule) in front of the chain: ``transform_`` becomes
    ``[field_k, ..., field_1, affine]``; one more embedding per pass. On the demo's validation
    phantoms (4-minute models, benchmarks/RESULTS.md "The demo") a second pass changed the mean
    error by 0.02 mm (9.66 -> 9.64 mm at ``smoothing_mm=16``), so the default stays one.
    Extra attributes: ``field_`` (the DisplacementField; with several passes a CompositeTransform
    of the fields, the last pass's first), ``n_coarse_passes_done_``, ``dense_matches_`` (the dense
    matches of the last pass that made a field; ``moving_points`` in the moving image),
    ``affine_transform_`` (the affine alone).
    """

    def __init__(self, *, embedder=None, grid_spacing_mm=16.0, max_points=500, score_threshold=0.5,
                 cycle_threshold_mm=None, robust="ransac", residual_threshold_mm="auto",
                 ransac_trials=1000, body_threshold="auto", search_radius_mm="auto", mode="sum",
                 n_refinements=1, refine_radius_mm=12.0, random_state=None, batch_size=1,
                 chunk_size=DEFAULT_CHUNK_SIZE, dense_grid_spacing_mm=6.0, dense_max_points=6000,
                 dense_search_radius_mm=16.0, field_spacing_mm=8.0, smoothing_mm=32.0,
                 max_displacement_mm=30.0, outlier_factor=2.5, rematch="warped", n_coarse_passes=1,
                 ncc_radius_mm=None, ncc_search_mm="auto", ncc_penalty=0.05):
        super().__init__(embedder=embedder, grid_spacing_mm=grid_spacing_mm, max_points=max_points,
                         score_threshold=score_threshold, cycle_threshold_mm=cycle_threshold_mm,
                         robust=robust, residual_threshold_mm=residual_threshold_mm,
                         ransac_trials=ransac_trials, body_threshold=body_threshold,
                         search_radius_mm=search_radius_mm, mode=mode, n_refinements=n_refinements,
                         refine_radius_mm=refine_radius_mm, random_state=random_state,
                         batch_size=batch_size, chunk_size=chunk_size, ncc_radius_mm=ncc_radius_mm,
                         ncc_search_mm=ncc_search_mm, ncc_penalty=ncc_penalty)
        self.dense_grid_spacing_mm = dense_grid_spacing_mm
        self.dense_max_points = dense_max_points
        self.dense_search_radius_mm = dense_search_radius_mm
        self.field_spacing_mm = field_spacing_mm
        self.smoothing_mm = smoothing_mm
        self.max_displacement_mm = max_displacement_mm
        self.outlier_factor = outlier_factor
        self.rematch = rematch
        self.n_coarse_passes = n_coarse_passes

    def _check_params(self):
        super()._check_params()
        check_positive_float(self.dense_grid_spacing_mm, "dense_grid_spacing_mm")
        check_positive_int(self.dense_max_points, "dense_max_points")
        check_positive_float(self.dense_search_radius_mm, "dense_search_radius_mm")
        check_positive_float(self.field_spacing_mm, "field_spacing_mm")
        check_positive_float(self.smoothing_mm, "smoothing_mm")
        check_positive_float(self.max_displacement_mm, "max_displacement_mm")
        check_positive_float(self.outlier_factor, "outlier_factor")
        check_positive_int(self.n_coarse_passes, "n_coarse_passes")
        if self.rematch not in _REMATCH:
            raise ValueError(f"rematch must be one of {_REMATCH}, got {self.rematch!r}")
        if self.mode == "global":
            raise ValueError("SAMDeformableRegistrar needs mode 'sum' or 'local' (its dense matches "
                             "are searched in windows of the local map)")

    def _has_aligned_pass(self) -> bool:
        passes = self.n_coarse_passes
        more = isinstance(passes, (int, np.integer)) and not isinstance(passes, bool) and passes > 1
        return bool(self.n_refinements) or self.rematch == "warped" or more

    def _after_affine(self, embedder, fixed_im, moving_im, fixed_emb, moving_emb, ref, rng, timings):
        t0 = time.perf_counter()
        affine = self.affine_transform_ = self.transform_
        pts, _, _ = self._sample_points(embedder, fixed_im, float(self.dense_grid_spacing_mm),
                                        int(self.dense_max_points), rng)
        gv, lv = template_vectors(fixed_emb, pts)
        ref_emb, ref_tx, ref_im = ref
        if self.rematch == "warped" and ref_emb is moving_emb:
            # no refinement pass left a warped embedding behind: make one with the final affine
            ref_im, ref_emb = self._warp_and_embed(embedder, fixed_im, moving_im, affine)
            ref_tx = affine
        elif self.rematch == "original":
            ref_emb, ref_tx, ref_im = moving_emb, AffineTransform.identity(fixed_im.ndim), moving_im
        # the intensity refinement compares aligned images only: not the first dense match with
        # rematch="original" (later passes match on warped images)
        aligned_later = int(self.n_coarse_passes) > 1
        refiner = self._ncc(fixed_im, pts) if self.rematch == "warped" or aligned_later else None
        # prior: where the affine puts each fixed point in the reference embedding's space
        prior = AffineTransform(np.linalg.inv(ref_tx.matrix) @ affine.matrix)
        kwargs = dict(mode="local", search_radius_mm=float(self.dense_search_radius_mm),
                      refine=True, chunk_size=self.chunk_size)
        res = match_points(gv, lv, ref_emb, centers_world=prior.transform_points(pts), **kwargs)
        matched = self._ncc_points(refiner if self.rematch == "warped" else None, ref_im, ref_emb,
                                   res.points)
        u = prior.inverse().transform_points(matched) - pts
        moving_pts = ref_tx.transform_points(matched)
        geom = self._field_geometry(fixed_im.geometry)
        field, kept = self._field_from_matches(pts, u, res.scores, geom, ref_emb)
        fields = [field]
        self.transform_ = CompositeTransform([field, affine], reference=fixed_im.geometry)
        scores = res.scores
        # later passes: the moving image warped through the whole current transform, the same
        # fixed points matched again in a window of half the first one's radius, a correction
        # field estimated the same way and put in front of the chain
        kwargs["search_radius_mm"] = 0.5 * float(self.dense_search_radius_mm)
        for _ in range(int(self.n_coarse_passes) - 1):
            current = self.transform_
            w_im, w_emb = self._warp_and_embed(embedder, fixed_im, moving_im, current)
            res = match_points(gv, lv, w_emb, centers_world=pts, **kwargs)
            matched = self._ncc_points(refiner, w_im, w_emb, res.points)
            corr, kept_k = self._field_from_matches(pts, matched - pts, res.scores, geom, w_emb)
            if len(kept_k) < 3 * (fixed_im.ndim + 1):
                break
            fields.insert(0, corr)
            kept, scores = kept_k, res.scores
            moving_pts = current.transform_points(matched)
            self.transform_ = CompositeTransform([corr, *current.transforms], reference=fixed_im.geometry)
        self.field_ = fields[-1] if len(fields) == 1 else CompositeTransform(fields)
        self.n_coarse_passes_done_ = len(fields)
        self.dense_matches_ = Matches(pts[kept], moving_pts[kept], scores[kept])
        timings["coarse"] = time.perf_counter() - t0

    def _field_from_matches(self, pts, u, scores, geom, ref_emb):
        return field_from_matches(pts, u, scores, geom, smoothing_mm=float(self.smoothing_mm),
                                  score_threshold=float(self.score_threshold),
                                  max_displacement_mm=float(self.max_displacement_mm),
                                  outlier_factor=float(self.outlier_factor),
                                  floor_mm=0.5 * float(np.max(ref_emb.local_map.geometry.spacing)))

    def _field_geometry(self, fixed: ImageGeometry) -> ImageGeometry:
        return field_geometry(fixed, float(self.field_spacing_mm), float(self.smoothing_mm))


def field_geometry(fixed: ImageGeometry, spacing_mm: float, smoothing_mm: float) -> ImageGeometry:
    """Identity-direction grid over ``fixed``'s bounding box at ``spacing_mm``, grown by two
    smoothing widths so a smoothed field decays inside it."""
    sp = float(spacing_mm)
    margin = 2.0 * float(smoothing_mm)
    corners = fixed.corners_world()
    lo, hi = corners.min(0) - margin, corners.max(0) + margin
    n = np.maximum(2, np.ceil((hi - lo) / sp).astype(int) + 1)
    origin = (lo + hi) / 2 - (n - 1) * sp / 2
    return ImageGeometry(tuple(int(v) for v in n), sp, origin, np.eye(fixed.ndim))


@functools.lru_cache(maxsize=16)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of ``ndimage.gaussian_filter1d(mode="constant")`` along an axis of length n:
    row i holds the kernel centred on i, cut at the borders (zeros beyond, not renormalised)."""
    from .inference import _gaussian_kernel
    g = _gaussian_kernel(sigma) if sigma > 0 else np.ones(1)
    r = len(g) // 2
    off = np.arange(n)[None, :] - np.arange(n)[:, None] + r
    m = np.where((off >= 0) & (off < len(g)), g[np.clip(off, 0, len(g) - 1)], 0.0)
    m.setflags(write=False)
    return m


#: axes up to this long are blurred by a dense matrix product (BLAS beats a 1D filter there)
_GAUSSIAN_MATRIX_MAX = 512


def _blur_planes(planes: np.ndarray, sigma) -> np.ndarray:
    """``ndimage.gaussian_filter(plane, sigma, mode="constant")`` of each plane of ``planes``
    (P, *shape): per axis one matrix product over all planes (:func:`_gaussian_matrix`), or the 1D
    filter along axes longer than ``_GAUSSIAN_MATRIX_MAX``."""
    for ax, n in enumerate(planes.shape[1:]):
        if n <= _GAUSSIAN_MATRIX_MAX:
            planes = np.moveaxis(np.tensordot(_gaussian_matrix(int(n), float(sigma[ax])), planes,
                                              axes=(1, ax + 1)), 0, ax + 1)
        else:
            planes = ndimage.gaussian_filter1d(planes, float(sigma[ax]), axis=ax + 1, mode="constant")
    return planes


def smooth_field(x, u, geom: ImageGeometry, smoothing_mm: float) -> np.ndarray:
    """Normalised Gaussian convolution of residuals ``u`` (n, ndim) at world points ``x`` onto the
    grid ``geom``: splat each residual (multilinear weights), blur values and weights with sigma =
    ``smoothing_mm``, divide. A prior weight (10% of the typical weight where matches are) pulls
    the field to zero where there are none. Returns (*geom.shape, ndim)."""
    d = geom.ndim
    shape = geom.shape
    idx = geom.world_to_array_index(x)
    base = np.floor(idx).astype(int)
    frac = idx - base
    size = int(np.prod(shape))
    num = np.zeros((d, size))
    den = np.zeros(size)
    for corner in np.ndindex(*([2] * d)):  # splat: bincount sums repeated voxels (np.add.at, faster)
        c = np.asarray(corner)
        pos = base + c
        w = np.prod(np.where(c == 1, frac, 1 - frac), axis=1)
        ok = np.all((pos >= 0) & (pos < np.asarray(shape)), axis=1)
        flat = np.ravel_multi_index(tuple(pos[ok].T), shape)
        den += np.bincount(flat, w[ok], minlength=size)
        for k in range(d):
            num[k] += np.bincount(flat, w[ok] * u[ok, k], minlength=size)
    sigma = float(smoothing_mm) / geom.spacing[::-1]
    # ndimage.gaussian_filter(mode="constant") of the weights and of each component, as one
    # banded matrix product per axis over all d + 1 planes (one small GEMM each instead of 3 d + 3
    # filter passes)
    planes = _blur_planes(np.concatenate([den[None], num]).reshape((d + 1,) + shape), sigma)
    den_s = planes[0]
    num_s = np.moveaxis(planes[1:], 0, -1)
    occupied = den_s[den_s > 1e-6 * den_s.max()] if den_s.max() > 0 else np.ones(1)
    prior = 0.1 * float(np.median(occupied))
    return num_s / (den_s + prior)[..., None]


def field_from_matches(pts, u, scores, geom: ImageGeometry, *, smoothing_mm: float,
                       score_threshold: float, max_displacement_mm: float, outlier_factor: float,
                       floor_mm: float):
    """The smooth field (SAM-coarse) of residuals ``u`` at points ``pts``: matches with a score of
    at least ``score_threshold`` and a residual of at most ``max_displacement_mm`` are smoothed
    (:func:`smooth_field`), those that disagree with the result by more than ``outlier_factor``
    robust standard deviations (at least ``floor_mm``) are dropped and the field is estimated
    again. Returns ``(DisplacementField, indices of the matches used)``; a zero field and no
    indices when fewer than 3 (ndim + 1) matches are usable."""
    d = pts.shape[1]
    keep = (scores >= score_threshold) & (np.linalg.norm(u, axis=1) <= max_displacement_mm)
    x, uu = pts[keep], u[keep]
    if len(x) < 3 * (d + 1):
        return DisplacementField(np.zeros(geom.shape + (d,)), geom), np.zeros(0, int)
    field_u = smooth_field(x, uu, geom, smoothing_mm)
    dev = np.linalg.norm(uu - DisplacementField(field_u, geom).displacement_at(x), axis=1)
    scale = 1.4826 * float(np.median(dev))
    sel = dev <= outlier_factor * max(scale, floor_mm)
    if sel.sum() >= 3 * (d + 1):
        field_u = smooth_field(x[sel], uu[sel], geom, smoothing_mm)
    else:
        sel = np.ones(len(x), bool)
    return DisplacementField(field_u, geom), np.flatnonzero(keep)[sel]
