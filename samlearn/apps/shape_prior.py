"""A robust shape prior on a landmark configuration: how far each landmark may lie from where an
affine of the template's configuration, fitted to the other landmarks, puts it.

samlearn's (not the paper's). Used twice by :class:`samlearn.SelfTrainedLandmarkDetector`:

* to weigh pseudo-labels: a landmark of an unlabelled image that the one-shot detector put far
  from where the affine of its other landmarks says (beyond the population's spread for that
  landmark), or whose similarity score is among the lowest for that landmark, gets weight 0;
* to keep predictions sane on images unlike the training set: a predicted landmark beyond its
  tolerance is searched again within it (:func:`shape_outliers` says which, and where).

Each landmark is judged by an affine fitted to the image's other landmarks (leave-one-out, on the
inliers of a Huber fit: :func:`samlearn.transforms.fit_affine`), so a wrong landmark can neither
hide in its own fit nor move the others'.
"""
from __future__ import annotations

import numpy as np

from ..exceptions import RegistrationError
from ..transforms import fit_affine

__all__ = ["affine_residuals", "pseudo_label_weights", "prior_tolerance", "shape_outliers"]

#: a landmark's residual beyond median + this many robust SDs (1.4826 MAD) of that landmark is an outlier
_MAD_FACTOR = 3.0
#: pseudo-labels whose score is below this quantile of their landmark's scores get weight 0
_SCORE_QUANTILE = 0.1
#: the prediction tolerance: this many times the 95th percentile of a landmark's kept residuals
_TOL_FACTOR = 2.0


def _loo_residuals(reference, points, usable=None):
    """Leave-one-out residuals of one image: each landmark's distance from where the affine fitted
    (least squares) to the *other* usable landmarks puts it, and those predictions. ``usable``
    (bool, (K,)): the landmarks the fits may use; default the inliers of a Huber fit."""
    k, d = reference.shape
    res, pred = np.full(k, np.nan), np.full((k, d), np.nan)
    ok = np.isfinite(points).all(axis=1)
    if ok.sum() < d + 2:
        return res, pred
    if usable is None:
        try:
            _, inl = fit_affine(reference[ok], points[ok], robust="huber")
        except RegistrationError:
            return res, pred
        usable = np.zeros(k, dtype=bool)
        usable[np.flatnonzero(ok)[inl]] = True
    usable = usable & ok
    for j in range(k):
        use = usable.copy()
        use[j] = False
        if use.sum() < d + 1:
            continue
        try:
            a, _ = fit_affine(reference[use], points[use])
        except RegistrationError:
            continue
        pred[j] = reference[j] @ a[:-1, :-1].T + a[:-1, -1]
        if ok[j]:
            res[j] = float(np.linalg.norm(points[j] - pred[j]))
    return res, pred


def affine_residuals(reference, points) -> np.ndarray:
    """Distance of every landmark from where an affine of the reference, fitted to the image's
    other landmarks, puts it (leave-one-out, so a wrong landmark cannot hide in its own fit).

    The affine is fitted by least squares to the inliers of a Huber fit
    (:func:`samlearn.transforms.fit_affine`), the landmark itself left out.

    Parameters
    ----------
    reference : ndarray of shape (K, ndim)
        The template's landmarks (world mm).
    points : ndarray of shape (n_images, K, ndim)
        Landmarks of each image (world mm; NaN rows are left out of the fits).

    Returns
    -------
    ndarray of shape (n_images, K)
        Residuals (mm); NaN where no fit was possible (fewer than ndim + 2 finite landmarks).
    """
    return np.stack([_loo_residuals(reference, pts)[0] for pts in points])


def pseudo_label_weights(reference, points, scores) -> tuple:
    """Keep (weight 1) or drop (weight 0) each pseudo-label by its shape residual and score.

    Parameters
    ----------
    reference : ndarray of shape (K, ndim)
        The template's landmarks (world mm).
    points : ndarray of shape (n_images, K, ndim)
        The pseudo-labels (world mm).
    scores : ndarray of shape (n_images, K)
        Their similarity scores (higher is more confident).

    Returns
    -------
    weights : ndarray of shape (n_images, K)
        1.0 for kept pseudo-labels, 0.0 for dropped ones: residual (:func:`affine_residuals`)
        beyond its landmark's median + 3 robust SDs, or a score among its landmark's lowest 10%.
        With fewer than ndim + 2 landmarks there is no shape to check: only the scores filter.
    residuals : ndarray of shape (n_images, K)
        Their leave-one-out affine residuals (mm; 0 without a shape to check).
    """
    keep_scores = scores >= np.nanquantile(scores, _SCORE_QUANTILE, axis=0)
    finite = np.isfinite(points).all(-1)
    if points.shape[1] < reference.shape[1] + 2:
        res = np.where(finite, 0.0, np.nan)
        return (keep_scores & finite).astype(np.float64), res
    res = affine_residuals(reference, points)
    centre = np.nanmedian(res, axis=0)
    spread = 1.4826 * np.nanmedian(np.abs(res - centre), axis=0)
    keep = np.isfinite(res) & (res <= centre + _MAD_FACTOR * spread) & keep_scores
    return keep.astype(np.float64), res


def prior_tolerance(residuals, weights, floor_mm: float) -> np.ndarray:
    """Per-landmark distance from the affine prediction beyond which a prediction is an outlier.

    Parameters
    ----------
    residuals : ndarray of shape (n_images, K)
        Affine residuals of the training labels (mm).
    weights : ndarray of shape (n_images, K)
        Their weights (only labels with weight > 0 count).
    floor_mm : float
        The smallest tolerance (mm).

    Returns
    -------
    ndarray of shape (K,)
        ``max(2 x the 95th percentile of the kept residuals, floor_mm)``.
    """
    kept = np.where((weights > 0) & np.isfinite(residuals), residuals, np.nan)
    q = np.nanquantile(kept, 0.95, axis=0) if np.isfinite(kept).any() else np.full(kept.shape[1], np.nan)
    q = np.where(np.isfinite(q), q, np.nanmax(q) if np.isfinite(q).any() else floor_mm)
    return np.maximum(_TOL_FACTOR * q, floor_mm)


def shape_outliers(reference, points, tolerance) -> tuple:
    """Which predicted landmarks break the shape prior, and where the prior puts them.

    Worst first: the landmark farthest beyond its tolerance (leave-one-out residual over
    tolerance) is set aside, the residuals are computed again without it, and so on while one
    exceeds its tolerance (at most half of the landmarks), so that several wrong landmarks, e.g.
    outside a cropped field of view, do not pull the judgement of the others.

    Parameters
    ----------
    reference : ndarray of shape (K, ndim)
        The template's landmarks (world mm).
    points : ndarray of shape (K, ndim)
        One image's predicted landmarks (world mm).
    tolerance : ndarray of shape (K,)
        Per-landmark tolerance (mm), from :func:`prior_tolerance`.

    Returns
    -------
    outliers : ndarray of bool, shape (K,)
        The landmarks set aside (none when no affine could be fitted, e.g. fewer than ndim + 2
        landmarks).
    expected : ndarray of shape (K, ndim)
        Where the affine of the other kept landmarks puts each landmark (``points`` itself where
        none could be fitted).
    """
    reference = np.asarray(reference, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    k = len(points)
    out = np.zeros(k, dtype=bool)
    res, pred = _loo_residuals(reference, points, usable=np.ones(k, dtype=bool))
    for _ in range(k // 2):
        ratio = np.where(np.isfinite(res) & ~out, res / tolerance, 0.0)
        worst = int(np.argmax(ratio))
        if ratio[worst] <= 1.0:
            break
        out[worst] = True
        res, pred = _loo_residuals(reference, points, usable=~out)
    fitted = np.isfinite(pred).all(axis=1)
    return out & fitted, np.where(fitted[:, None], pred, points)
