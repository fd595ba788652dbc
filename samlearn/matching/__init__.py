"""Matching: where template points lie in a query image, from embeddings (SAM's inference rule,
paper §III-D) and, optionally, intensities.

* :mod:`~samlearn.matching.search` -- :func:`match_points`: the batched, memory-bounded similarity
  search (global, local or both maps; coarse-to-fine windows; sub-voxel peaks; top-k hypotheses).
* :mod:`~samlearn.matching.templates` -- :func:`template_vectors`, :func:`combine_templates` and
  :func:`cycle_consistency`.
* :mod:`~samlearn.matching.ncc` -- intensity refinement of matches by normalised
  cross-correlation (samlearn's addition, not the paper's).
* :mod:`~samlearn.matching.points` -- grids of points in the body, to match when a task gives none.
* :mod:`~samlearn.matching.grids`, :mod:`~samlearn.matching.scorer` -- the search's machinery.
"""
from .grids import upsample_to_grid
from .points import CT_BODY_THRESHOLD_HU, auto_body_threshold, body_grid_points, body_mask, grid_points
from .results import CycleResult, MatchResult
from .search import (AUTO_RADIUS_GLOBAL_VOXELS, DEFAULT_CHUNK_SIZE, MODES, check_search_radius, match_points,
                     resolve_search_radius)
from .templates import combine_templates, cycle_consistency, template_vectors

__all__ = [
    "MODES",
    "DEFAULT_CHUNK_SIZE",
    "AUTO_RADIUS_GLOBAL_VOXELS",
    "MatchResult",
    "CycleResult",
    "template_vectors",
    "combine_templates",
    "match_points",
    "cycle_consistency",
    "check_search_radius",
    "resolve_search_radius",
    "upsample_to_grid",
    "body_mask",
    "body_grid_points",
    "grid_points",
    "auto_body_threshold",
    "CT_BODY_THRESHOLD_HU",
]
