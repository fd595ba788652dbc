"""Evaluation metrics for point localisation: radial errors, their summary (MRE, SDR) and target
registration errors.

All functions take points in one common frame (usually world millimetres, ``(x, y[, z])`` order)
and return distances in that frame's unit times ``scale``. They validate shapes and values and raise
a ``ValueError`` naming the argument; nothing is silently dropped except ground-truth points that are
explicitly missing (NaN), which are reported as such.

* :func:`radial_errors` -- Euclidean distance between predicted and true landmarks, per image and
  landmark (the "radial error" of the cephalometric literature). NaN where the truth is NaN.
* :func:`landmark_summary` -- mean radial error (MRE), its standard deviation, median, 90th
  percentile, maximum and the success detection rate (SDR: share of errors ``<= r``) for each radius.
* :func:`target_registration_error` -- per-point distance between mapped and true target points of a
  registration (TRE).
* :func:`points_in_boxes` -- whether each matched point lies inside its lesion's box (the lesion
  matching accuracy of SAM §IV-A: a match is correct if it falls in the lesion's bounding box).
"""
from __future__ import annotations

import numpy as np

__all__ = ["radial_errors", "landmark_summary", "target_registration_error", "points_in_boxes",
           "DEFAULT_RADII"]

#: Radii of the ISBI 2015 cephalometric challenge (mm); pass ``radii=`` in your own unit otherwise.
DEFAULT_RADII = (2.0, 2.5, 3.0, 4.0)


def _as_float_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    return arr


def _check_scale(scale, ndim: int) -> np.ndarray:
    s = _as_float_array(scale, "scale")
    if s.ndim == 0:
        s = np.full(ndim, float(s))
    if s.shape != (ndim,):
        raise ValueError(f"scale must be a number or {ndim} values (one per axis, x, y[, z] order), "
                         f"got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale must be finite and positive, got {s.tolist()}")
    return s


def radial_errors(pred, true, scale=1.0) -> np.ndarray:
    """Euclidean distance between predicted and true points.

    Parameters
    ----------
    pred, true : array of shape (n_images, n_points, ndim) or (n_points, ndim)
        Points in one common frame (e.g. world mm, ``(x, y[, z])`` order), ``ndim`` 2 or 3. ``true``
        may hold NaN rows for landmarks without ground truth; ``pred`` must be finite wherever
        ``true`` is (a missing prediction is an error to report, never a point to drop silently).
    scale : float or array of ndim floats, default 1.0
        Factor applied to the coordinate differences before the norm, e.g. ``2.0`` to express
        errors in full-resolution pixels for points given on a half-resolution grid, or the pixel
        spacing to turn pixel errors into mm.

    Returns
    -------
    errors : array of shape ``pred.shape[:-1]``, i.e. (n_images, n_points) (or (n_points,))
        NaN exactly where ``true`` is NaN.
    """
    p = _as_float_array(pred, "pred")
    t = _as_float_array(true, "true")
    if p.ndim not in (2, 3) or p.shape[-1] not in (2, 3):
        raise ValueError(f"pred must have shape (n_images, n_points, ndim) or (n_points, ndim) with "
                         f"ndim 2 or 3, got shape {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"true must have the same shape as pred {p.shape}, got shape {t.shape}")
    if p.size == 0:
        raise ValueError(f"pred is empty (shape {p.shape})")
    if np.any(np.isinf(t)):
        raise ValueError("true contains infinite coordinates (use NaN to mark a missing landmark)")
    t_missing = np.isnan(t)
    partial = np.any(t_missing, axis=-1) & ~np.all(t_missing, axis=-1)
    if np.any(partial):
        where = np.argwhere(partial)[:5].tolist()
        raise ValueError(f"true has points with only some coordinates NaN at {where}: mark a missing "
                         f"landmark with NaN in every coordinate")
    missing = np.all(t_missing, axis=-1)
    bad_pred = ~np.all(np.isfinite(p), axis=-1) & ~missing
    if np.any(bad_pred):
        where = np.argwhere(bad_pred)[:5].tolist()
        raise ValueError(f"pred has non-finite coordinates where true is known, at indices {where} "
                         f"(first 5): every landmark with ground truth needs a finite prediction")
    s = _check_scale(scale, p.shape[-1])
    diff = (p - t) * s
    err = np.sqrt(np.sum(diff * diff, axis=-1))
    err[missing] = np.nan
    return err


def landmark_summary(errors, radii=DEFAULT_RADII) -> dict:
    """Summary statistics of radial errors (as returned by :func:`radial_errors`).

    NaN entries (landmarks without ground truth) are left out and counted in ``n_missing``.

    Parameters
    ----------
    errors : array of shape (n_images, n_points) or (n_errors,)
        Non-negative radial errors; NaN where there is no ground truth.
    radii : float or sequence of float, default DEFAULT_RADII
        Positive radii of the success detection rate, in the errors' unit (the default: the ISBI
        2015 challenge's, mm).

    Returns
    -------
    dict
        JSON-serialisable after ``float`` keys become strings:

        * ``mre``: mean radial error; ``sd``: its standard deviation (population, ``ddof=0``);
          ``median``, ``p90`` (90th percentile), ``max``;
        * ``sdr``: ``{radius: share of errors <= radius}`` for each radius (success detection rate,
          a fraction in [0, 1]);
        * ``n_errors`` (finite errors used), ``n_missing`` (NaN entries);
        * for 2D input (n_images, n_points) also ``n_images`` and ``per_landmark_mre`` (list of
          n_points means, NaN for a landmark with no ground truth anywhere).
    """
    e = _as_float_array(errors, "errors")
    if e.ndim not in (1, 2):
        raise ValueError(f"errors must have shape (n_images, n_points) or (n_errors,), got shape {e.shape}")
    if np.any(np.isinf(e)):
        raise ValueError("errors contains infinite values")
    finite = e[~np.isnan(e)]
    if finite.size == 0:
        raise ValueError(f"errors holds no finite value (shape {e.shape}): nothing to summarise")
    if np.any(finite < 0):
        raise ValueError(f"errors must be non-negative distances, got a minimum of {finite.min():.4g}")
    r = _as_float_array(radii, "radii")
    if r.ndim == 0:
        r = r[None]
    if r.ndim != 1 or not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"radii must be a sequence of positive finite numbers, got {np.asarray(radii).tolist()}")
    out = {
        "mre": float(finite.mean()),
        "sd": float(finite.std()),
        "median": float(np.median(finite)),
        "p90": float(np.percentile(finite, 90)),
        "max": float(finite.max()),
        "sdr": {float(rad): float(np.mean(finite <= rad)) for rad in r},
        "n_errors": int(finite.size),
        "n_missing": int(e.size - finite.size),
    }
    if e.ndim == 2:
        out["n_images"] = int(e.shape[0])
        with np.errstate(invalid="ignore"):
            counts = np.sum(~np.isnan(e), axis=0)
            sums = np.nansum(e, axis=0)
            per = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        out["per_landmark_mre"] = [float(v) for v in per]
    return out


def target_registration_error(mapped, true) -> np.ndarray:
    """Per-point target registration error: ``||mapped_i - true_i||``.

    Parameters
    ----------
    mapped : array (n_points, ndim)
        Target points carried through the registration (e.g. fixed-image points mapped into the
        moving image), world mm.
    true : array (n_points, ndim)
        Where those points really are in the same (moving) image, world mm.

    Returns
    -------
    tre : ndarray of shape (n_points,)
        Distances in the points' unit. Summarise with :func:`landmark_summary` or ``tre.mean()``.
    """
    m = _as_float_array(mapped, "mapped")
    t = _as_float_array(true, "true")
    if m.ndim != 2 or m.shape[1] not in (2, 3) or m.shape[0] == 0:
        raise ValueError(f"mapped must have shape (n_points, ndim) with ndim 2 or 3, got shape {m.shape}")
    if t.shape != m.shape:
        raise ValueError(f"true must have the same shape as mapped {m.shape}, got shape {t.shape}")
    for name, a in (("mapped", m), ("true", t)):
        if not np.all(np.isfinite(a)):
            rows = np.unique(np.nonzero(~np.isfinite(a))[0])[:5].tolist()
            raise ValueError(f"{name} contains non-finite coordinates (rows {rows})")
    return np.linalg.norm(m - t, axis=1)


def points_in_boxes(points, boxes, margin_mm=0.0) -> np.ndarray:
    """Whether each point lies inside its axis-aligned box (borders included).

    Parameters
    ----------
    points : array (..., ndim)
        Matched points, world mm (``(x, y[, z])``); NaN rows (a lesion reported as not found) count
        as *not* inside.
    boxes : array (..., 2 * ndim)
        One box per point, same leading shape: the minimum corner then the maximum corner,
        ``(x0, y0[, z0], x1, y1[, z1])`` in world mm (as ``LesionMatcher`` takes them).
    margin_mm : float, default 0.0
        Grow every box by this much on each side (0: the box itself).

    Returns
    -------
    inside : ndarray of bool, shape ``points.shape[:-1]``
        The lesion matching accuracy is its mean.
    """
    p = _as_float_array(points, "points")
    b = _as_float_array(boxes, "boxes")
    if p.ndim < 1 or p.shape[-1] not in (2, 3):
        raise ValueError(f"points must have shape (..., ndim) with ndim 2 or 3, got shape {p.shape}")
    ndim = p.shape[-1]
    if b.shape != p.shape[:-1] + (2 * ndim,):
        raise ValueError(f"boxes must have shape {p.shape[:-1] + (2 * ndim,)} (one (min corner, max "
                         f"corner) box of {2 * ndim} values per point), got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes contains non-finite values")
    lo, hi = b[..., :ndim], b[..., ndim:]
    if np.any(lo > hi):
        where = np.argwhere(np.any(lo > hi, axis=-1))[:5].tolist()
        raise ValueError(f"boxes must give the minimum corner first: min > max at indices {where}")
    if np.any(np.isinf(p)):
        raise ValueError("points contains infinite coordinates (use NaN for a point not found)")
    m = float(margin_mm)
    if not np.isfinite(m) or m < 0:
        raise ValueError(f"margin_mm must be a finite non-negative number, got {margin_mm!r}")
    with np.errstate(invalid="ignore"):
        inside = np.all((p >= lo - m) & (p <= hi + m), axis=-1)
    return inside & np.all(np.isfinite(p), axis=-1)
