"""What a similarity search returns: :class:`MatchResult` and :class:`CycleResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..image import ImageGeometry

__all__ = ["MatchResult", "CycleResult"]


@dataclass
class MatchResult:
    """Where each of K template points matched in a query embedding.

    What :func:`~samlearn.matching.match_points` returns; each parameter is kept as an attribute
    of the same name, and ``len(result)`` is K.

    Parameters
    ----------
    points : ndarray of shape (K, ndim), float64
        Matched positions, world mm (x, y[, z]); refined to sub-voxel when ``refine`` was set.
    scores : ndarray of shape (K,), float64
        Peak value of the searched map at the discrete peak voxel: ``(S^g + S^l) / 2`` for mode
        ``"sum"``, ``S^g`` or ``S^l`` for ``"global"`` / ``"local"``; in [-1, 1].
    index : ndarray of shape (K, ndim), int64
        Array index (numpy order, (z, y, x)) of the best voxel on ``grid``.
    grid : ImageGeometry
        The grid searched: the local map's grid, or the global map's for mode ``"global"``.
    hypotheses : ndarray of shape (K, top_k, ndim), float64
        The ``top_k`` best distinct peaks per point, best first (``hypotheses[:, 0] == points``);
        rows are NaN where fewer than ``top_k`` distinct peaks exist.
    hypothesis_scores : ndarray of shape (K, top_k), float64
        Their scores, descending; ``-inf`` for missing hypotheses.
    global_points : ndarray of shape (K, ndim), float64, or None, default None
        The (refined) peak of ``S^g`` on the coarse grid that centred the search window, when a
        window was used.
    search_radius_mm : float or None, default None
        The window radius actually used (``None``: whole-grid search).
    """

    points: np.ndarray
    scores: np.ndarray
    index: np.ndarray
    grid: ImageGeometry
    hypotheses: np.ndarray
    hypothesis_scores: np.ndarray
    global_points: Optional[np.ndarray] = None
    search_radius_mm: Optional[float] = None

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class CycleResult:
    """Forward-backward (cycle) consistency of K matches.

    What :func:`~samlearn.matching.cycle_consistency` returns; each parameter is kept as an
    attribute of the same name.

    Parameters
    ----------
    distances_mm : ndarray of shape (K,), float64
        Distance (mm) between each template point and the point it maps back to after matching
        template -> query -> template.
    forward : MatchResult
        The template -> query matches.
    backward : MatchResult
        The matches of the found query points back into the template.
    """

    distances_mm: np.ndarray
    forward: MatchResult
    backward: MatchResult = field(repr=False)
