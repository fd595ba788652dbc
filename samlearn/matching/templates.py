"""Template vectors and what is built on them: the vectors of template points, several
templates combined into one search, and the forward-backward (cycle) consistency of matches."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..embedding import Embedding
from ..image import check_points
from .results import CycleResult, MatchResult
from .search import check_embedding, match_points

__all__ = ["template_vectors", "combine_templates", "cycle_consistency"]


def template_vectors(embedding: Embedding, points_world) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global and local embedding vectors of a template at its points.

    Vectors are interpolated linearly at the sub-voxel positions of the points on each map's grid
    and L2-normalised again (:meth:`EmbeddingMap.vectors_at`); they stay on the maps' device.

    Parameters
    ----------
    embedding : Embedding
        The template image's embedding.
    points_world : array-like of shape (K, ndim)
        Template points, world mm (x, y[, z]).

    Returns
    -------
    global_vectors, local_vectors : torch.Tensor of shape (K, C)
        The vectors of the global and of the local map (each map's own channel count ``C``).

    See Also
    --------
    samlearn.matching.match_points : Searches these vectors in a query embedding.
    """
    embedding = check_embedding(embedding, "embedding")
    pts = check_points(points_world, embedding.ndim, name="points_world")
    return embedding.global_map.vectors_at(pts), embedding.local_map.vectors_at(pts)


def combine_templates(vector_sets: Sequence[Tuple[torch.Tensor, torch.Tensor]]):
    """Combine the vectors of several templates into one search by averaging them.

    The vectors are averaged *without* renormalising: because cosine similarity with a map is
    linear in the vector, the similarity map of the mean vector is exactly the mean of the
    templates' similarity maps, and scores keep their scale (the mean of cosine similarities, in
    [-1, 1]). One search then serves all templates.

    Parameters
    ----------
    vector_sets : sequence of (global, local) pairs
        Per template, its ``(global (K, C), local (K, C))`` vectors (:func:`template_vectors`), the
        same K points in the same order for every template.

    Returns
    -------
    global_vectors, local_vectors : torch.Tensor of shape (K, C), float32
        The mean vectors, on the device of the first template's.

    Raises
    ------
    ValueError
        When ``vector_sets`` is empty or the templates' vectors differ in shape.
    """
    sets = list(vector_sets)
    if not sets:
        raise ValueError("vector_sets is empty: give at least one (global, local) pair")
    out = []
    for part, name in ((0, "global"), (1, "local")):
        vs = [torch.as_tensor(s[part]) for s in sets]
        shapes = {tuple(v.shape) for v in vs}
        if len(shapes) != 1:
            raise ValueError(f"the {name} vectors of the templates differ in shape: {sorted(shapes)}; "
                             f"every template must give the same points and channels")
        out.append(torch.stack([v.to(vs[0].device, torch.float32) for v in vs]).mean(0))
    return out[0], out[1]


def cycle_consistency(template: Embedding, template_points, query: Embedding, *,
                      global_vectors=None, local_vectors=None, forward: Optional[MatchResult] = None,
                      **match_kwargs) -> CycleResult:
    """Forward-backward check of matches, a second confidence signal besides the score.

    Match the template points into ``query`` (or take the given ``forward`` result), read the query's
    vectors at the found points, match those back into ``template``, and measure how far (mm) each
    lands from its original template point. Correct matches come back close (within about a voxel
    of the local grid); matches of anatomy that is missing from the query usually do not.

    Parameters
    ----------
    template : Embedding
        The template image's embedding (where the backward search runs).
    template_points : array-like of shape (K, ndim)
        Template points, world mm (x, y[, z]).
    query : Embedding
        The query image's embedding.
    global_vectors, local_vectors : (K, C) tensors or arrays, optional
        Vectors to search in ``query``; default the template's vectors at ``template_points``
        (pass combined vectors of several templates to check against one of them).
    forward : MatchResult, optional
        The forward matches when already computed (the vectors are then not used).
    **match_kwargs
        Arguments of :func:`match_points` (mode, search_radius_mm, refine, chunk_size, ...),
        applied to both directions (``top_k`` only to the forward one).

    Returns
    -------
    CycleResult
        The distances (mm) and both searches' results.

    Raises
    ------
    ValueError
        When the embeddings differ in ``ndim`` or ``forward`` has another number of points.
    """
    template = check_embedding(template, "template")
    query = check_embedding(query, "query")
    if template.ndim != query.ndim:
        raise ValueError(f"template is {template.ndim}D but query is {query.ndim}D")
    pts = check_points(template_points, template.ndim, name="template_points")
    if forward is None:
        if global_vectors is None or local_vectors is None:
            tg, tl = template_vectors(template, pts)
            global_vectors = tg if global_vectors is None else global_vectors
            local_vectors = tl if local_vectors is None else local_vectors
        forward = match_points(global_vectors, local_vectors, query, **match_kwargs)
    if len(forward.points) != len(pts):
        raise ValueError(f"forward has {len(forward.points)} points but template_points has {len(pts)}")
    kwargs = dict(match_kwargs)
    kwargs.pop("top_k", None)
    bg, bl = template_vectors(query, forward.points)
    backward = match_points(bg, bl, template, **kwargs)
    dist = np.linalg.norm(backward.points - pts, axis=1)
    return CycleResult(distances_mm=dist, forward=forward, backward=backward)
