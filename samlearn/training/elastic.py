"""Smooth elastic displacements of a patch: a uniform cubic B-spline on a coarse control grid, in
patch voxels, clamped (constant) outside the patch box ``[0, P - 1]``.

The Lipschitz constant of a field is bounded from its control coefficients
(``|de_a/du_b| <= max |finite difference of c_a along b| / h_b``, :func:`elastic_lipschitz`) and
kept below 1, so ``u -> u + e(u)`` is a bijection with a Jacobian determinant
``>= (1 - L) ** ndim > 0``: the deformation never folds, and its inverse always converges.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_ELASTIC_LIPSCHITZ", "SAMPLER_ELASTIC_LIPSCHITZ", "bspline_weights", "bspline_contract",
           "bspline_matrix", "elastic_lipschitz"]


#: Largest Lipschitz constant of the elastic displacement a :class:`PatchTransform` accepts.
MAX_ELASTIC_LIPSCHITZ = 0.9


#: Lipschitz cap the sampler enforces on the elastic fields it draws (shrinking them if needed).
SAMPLER_ELASTIC_LIPSCHITZ = 0.5


# ---------------------------------------------------------------------------------------------
# uniform cubic B-spline, clamped outside [0, P - 1]
def bspline_weights(u, length, n_intervals, derivative=False):
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


def bspline_contract(vals, weights):
    """(A, n, 4, ..., 4) control values and one (n, 4) weight array per axis -> (A, n)."""
    for w in reversed(weights):
        vals = np.einsum("an...k,nk->an...", vals, w)
    return vals


def bspline_matrix(u, length, n_intervals):
    """Dense basis matrix (len(u), n_intervals + 3): field on the grid = B @ coefficients."""
    idx, w = bspline_weights(u, length, n_intervals)
    B = np.zeros((u.size, n_intervals + 3))
    np.put_along_axis(B, idx, w, axis=1)
    return B


def elastic_lipschitz(coef, patch_shape) -> float:
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
