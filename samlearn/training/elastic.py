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
    """Control-point indices and cubic B-spline weights at positions ``u``.

    Parameters
    ----------
    u : ndarray, shape (n,)
        Positions along one axis, in patch voxels (clamped to ``[0, length - 1]``).
    length : int
        Patch size along the axis.
    n_intervals : int
        Number of B-spline intervals over ``[0, length - 1]`` (``n_intervals + 3`` control points).
    derivative : bool, default False
        Also return the weights of d/du (zero where ``u`` is clamped).

    Returns
    -------
    idx : ndarray of int64, shape (n, 4)
        Indices of the four control points of each position.
    w : ndarray, shape (n, 4)
        Their weights.
    dw : ndarray, shape (n, 4)
        The weights of d/du; only with ``derivative``.
    """
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
    """Contract gathered control values with per-axis B-spline weights.

    Parameters
    ----------
    vals : ndarray, shape (A, n, 4, ..., 4)
        Control values of the ``4 ** ndim`` control points of each of ``n`` positions.
    weights : sequence of ndarray, each of shape (n, 4)
        One weight array per axis.

    Returns
    -------
    ndarray, shape (A, n)
        The field's components at the positions.
    """
    for w in reversed(weights):
        vals = np.einsum("an...k,nk->an...", vals, w)
    return vals


def bspline_matrix(u, length, n_intervals):
    """Dense B-spline basis matrix: the field on the grid is ``B @ coefficients``.

    Parameters
    ----------
    u : ndarray, shape (n,)
        Positions along one axis, in patch voxels.
    length : int
        Patch size along the axis.
    n_intervals : int
        Number of B-spline intervals.

    Returns
    -------
    ndarray, shape (n, n_intervals + 3)
        The basis matrix.
    """
    idx, w = bspline_weights(u, length, n_intervals)
    B = np.zeros((u.size, n_intervals + 3))
    np.put_along_axis(B, idx, w, axis=1)
    return B


def elastic_lipschitz(coef, patch_shape) -> float:
    """Upper bound on the spectral norm of the Jacobian of the B-spline field ``coef``.

    The Frobenius norm of the per-entry bounds ``max |diff_b c_a| / h_b``.

    Parameters
    ----------
    coef : ndarray, shape (ndim, n_0 + 3, ..., n_{ndim-1} + 3)
        Control coefficients (patch voxels), ``n_b`` intervals along axis ``b``.
    patch_shape : tuple of int
        Patch shape.

    Returns
    -------
    float
        The Lipschitz bound of the displacement.
    """
    ndim = len(patch_shape)
    total = 0.0
    for b in range(ndim):
        n_int = coef.shape[b + 1] - 3
        h = (patch_shape[b] - 1) / n_int
        d = np.abs(np.diff(coef, axis=b + 1)).reshape(ndim, -1).max(axis=1)
        total += float(np.sum((d / h) ** 2))
    return math.sqrt(total)
