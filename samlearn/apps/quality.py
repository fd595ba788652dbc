"""How much to trust a registration, from its own evidence (no ground truth needed).

An affine fitted to matches can be wrong in two ways that its residuals do not show: too few
matches agree (the consensus is a coincidence among matches that have no true counterpart, as when
the moving image is rotated beyond what the embeddings recognise, or shows another part of the
body), or the agreeing matches do not pin the transform down. :func:`assess_affine` measures both:

* the *agreement*: of the grid points that the transform maps inside the moving image (those that
  can have a counterpart there; points of a partial view that fall outside are not evidence
  either way), the fraction whose first-pass match -- made over the whole moving image, before
  any transform was known -- lies within ``agree_mm`` of where the transform puts them. A right
  transform agrees with most of these independent matches; a wrong one only with the few it was
  fitted to. (Non-rigid anatomy moves points by a few mm, within ``agree_mm``.)
* the *split-half disagreement*: affines fitted to random halves of the kept matches, compared
  over their fixed points; half of their root-mean-square distance estimates the error of the
  whole fit (each half carries twice the whole fit's error variance).

A registration is flagged (``ok=False``) when either falls outside its threshold. The thresholds
were chosen on development volumes (the five shared CTs under shifts, rotations, crops and thick
slices; benchmarks/registration/robustness.py) to separate registrations off by more than 10 mm
from the rest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..transforms import fit_affine

__all__ = ["RegistrationQuality", "assess_affine", "MIN_AGREEMENT", "AGREE_MM", "MAX_EXPECTED_ERROR_MM"]

#: smallest agreement (fraction of overlapping grid points whose first-pass match is within
#: ``agree_mm`` of the transform) for a trusted registration
MIN_AGREEMENT = 0.2
#: distance within which a first-pass match agrees with the transform (the 10 mm a registration
#: may be off and still count as a success)
AGREE_MM = 10.0
#: largest split-half error estimate (mm) for a trusted registration
MAX_EXPECTED_ERROR_MM = 3.0


@dataclass(frozen=True)
class RegistrationQuality:
    """The evidence behind a registration, and whether it is trusted.

    Parameters
    ----------
    n_matched : int
        Grid points matched.
    n_overlap : int
        Of these, the points the transform maps into the moving image: the points that can have a
        counterpart there.
    n_agree : int
        Of these, the points whose first-pass match lies within ``agree_mm`` of the transform.
    agreement : float
        ``n_agree / n_overlap``.
    n_inliers : int
        Matches the final robust fit kept.
    residual_mm : float
        Median distance of the kept matches from the fitted transform.
    expected_error_mm : float
        Half the median root-mean-square disagreement of affines fitted to random halves of the
        kept matches, over the kept fixed points: an estimate of the fit's own error.
    ok : bool
        Whether every measure is within its threshold.
    reasons : tuple of str
        Why not, when ``ok`` is False.
    """

    n_matched: int
    n_overlap: int
    n_agree: int
    agreement: float
    n_inliers: int
    residual_mm: float
    expected_error_mm: float
    ok: bool
    reasons: tuple = ()

    def as_dict(self) -> dict:
        """The measures as a plain dict (JSON-friendly).

        Returns
        -------
        dict
            Field name -> value.
        """
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def _split_half_mm(x, y, rng, n_splits: int) -> float:
    n = len(x)
    ndim = x.shape[1]
    if n < 2 * (ndim + 2):
        return float("inf")
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2:]
        ma, _ = fit_affine(x[a], y[a])
        mb, _ = fit_affine(x[b], y[b])
        xh = np.c_[x, np.ones(n)]
        d = xh @ (ma - mb)[:ndim].T
        out.append(float(np.sqrt(np.mean(np.sum(d * d, axis=1)))))
    return float(np.median(out))


def assess_affine(transform, grid_points, first_matches, moving_geometry, fixed_points, moving_points, inliers,
                  residuals_mm, *, rng=None, n_splits: int = 16, agree_mm: float = AGREE_MM,
                  min_agreement: float = MIN_AGREEMENT, max_expected_error_mm: float = MAX_EXPECTED_ERROR_MM
                  ) -> RegistrationQuality:
    """Assess an affine registration from its matches.

    Parameters
    ----------
    transform : AffineTransform
        The fitted transform, fixed -> moving world mm.
    grid_points : ndarray of shape (m, ndim)
        Every fixed grid point that was matched, world mm.
    first_matches : ndarray of shape (m, ndim)
        Their matches in the moving image from the first pass (over the whole image), NaN where
        the match was not confident.
    moving_geometry : ImageGeometry
        The moving image's grid (its field of view).
    fixed_points, moving_points : ndarray of shape (n, ndim)
        The matches of the final fit, world mm.
    inliers : ndarray of bool, shape (n,)
        The matches the final robust fit kept.
    residuals_mm : ndarray of shape (n,)
        Distances of those matches from the fitted transform.
    rng : numpy.random.Generator, optional
        Draws the random halves (default: seeded with 0, so the measure is reproducible).
    n_splits : int, default 16
        Random halvings.
    agree_mm : float, default AGREE_MM
        Distance within which a first-pass match agrees with the transform.
    min_agreement : float, default MIN_AGREEMENT
        Threshold of ``agreement``.
    max_expected_error_mm : float, default MAX_EXPECTED_ERROR_MM
        Threshold of ``expected_error_mm``.

    Returns
    -------
    RegistrationQuality
        The measures and the verdict.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    grid = np.asarray(grid_points, dtype=np.float64)
    mapped = transform.transform_points(grid)
    overlap = moving_geometry.contains(mapped)
    dist = np.linalg.norm(np.asarray(first_matches, dtype=np.float64) - mapped, axis=1)
    n_overlap = int(np.count_nonzero(overlap))
    n_agree = int(np.count_nonzero(overlap & (dist <= agree_mm)))  # NaN (not confident) never agrees
    agreement = n_agree / max(n_overlap, 1)
    inl = np.asarray(inliers, dtype=bool)
    x = np.asarray(fixed_points, dtype=np.float64)[inl]
    y = np.asarray(moving_points, dtype=np.float64)[inl]
    res = np.asarray(residuals_mm, dtype=np.float64)[inl]
    expected = _split_half_mm(x, y, rng, n_splits) / 2.0
    reasons = []
    if agreement < min_agreement:
        reasons.append(f"only {n_agree} of the {n_overlap} grid points that the transform puts inside the "
                       f"moving image ({agreement:.0%}) were matched within {agree_mm:g} mm of it "
                       f"(threshold {min_agreement:.0%})")
    if not expected <= max_expected_error_mm:
        reasons.append(f"the agreeing matches leave the transform uncertain by about {expected:.1f} mm "
                       f"(threshold {max_expected_error_mm:g} mm)")
    return RegistrationQuality(n_matched=len(grid), n_overlap=n_overlap, n_agree=n_agree,
                               agreement=float(agreement), n_inliers=int(inl.sum()),
                               residual_mm=float(np.median(res)) if len(res) else float("nan"),
                               expected_error_mm=float(expected), ok=not reasons, reasons=tuple(reasons))
