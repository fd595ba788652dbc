"""Fitting an affine to point pairs: least squares, RANSAC or Huber IRLS (robust to wrong
matches). RANSAC and Huber are samlearn's additions: the paper fits plain least squares."""
from __future__ import annotations

import numpy as np

from ..exceptions import RegistrationError

__all__ = ["fit_affine", "ROBUST_FITS"]

#: the values of :func:`fit_affine`'s ``robust``
ROBUST_FITS = (None, "ransac", "huber")


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
    """Fit ``moving ~ A fixed + t`` to point pairs.

    ``robust``:

    * ``None``: ordinary (or ``weights``-weighted) least squares; every pair is an inlier.
    * ``"ransac"``: ``n_trials`` minimal samples (ndim + 1 pairs, degenerate ones skipped) are fitted
      exactly; the model with the most pairs within ``residual_threshold_mm`` wins (ties: smaller
      summed inlier residual), then least squares on its inliers, recomputing the inliers twice.
    * ``"huber"``: iteratively reweighted least squares with Huber weights ``min(1, k / r)``;
      ``k = residual_threshold_mm`` or, when None, ``1.345`` times a robust scale of the current
      residuals (``1.4826 * median``), re-estimated each iteration. Inliers: pairs with weight 1.

    Parameters
    ----------
    fixed_points, moving_points : array-like of shape (n_pairs, ndim)
        The matched world points (mm), ndim 2 or 3; at least ndim + 1 pairs.
    robust : {None, "ransac", "huber"}, default None
        The fit (above).
    residual_threshold_mm : float or None, default None
        Inlier distance (mm); required by RANSAC, Huber's ``k`` when given.
    n_trials : int, default 1000
        RANSAC's minimal samples.
    rng : int, numpy.random.Generator or None, default None
        Seed of RANSAC's draws.
    weights : array-like of shape (n_pairs,) or None, default None
        Pair weights of the least squares (``None`` and ``"huber"``; RANSAC ignores them).

    Returns
    -------
    matrix : ndarray of shape (ndim + 1, ndim + 1)
        The homogeneous matrix, fixed -> moving.
    inliers : ndarray of bool, shape (n_pairs,)
        The pairs the fit kept.

    Raises
    ------
    RegistrationError
        Too few pairs, or RANSAC found no non-degenerate model with enough inliers.
    """
    x = np.asarray(fixed_points, dtype=np.float64)
    y = np.asarray(moving_points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in (2, 3) or y.shape != x.shape:
        raise ValueError(f"fixed_points and moving_points must both have shape (n, ndim), ndim 2 or "
                         f"3; got {x.shape} and {y.shape}")
    n, d = x.shape
    if n < d + 1:
        raise RegistrationError(f"an affine in {d}D needs at least {d + 1} point pairs, got {n}")
    if robust not in ROBUST_FITS:
        raise ValueError(f"robust must be one of {ROBUST_FITS}, got {robust!r}")
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
