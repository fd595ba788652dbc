"""Which image to annotate: label-free choice of the template(s) for one-shot methods.

One-shot landmark detection, atlas-based segmentation and lesion tracking all start from one
annotated *template*, and which image that is matters: Quan et al. ("Which images to label for
few-shot medical landmark detection?", CVPR 2022, their Sample Choosing Policy, SCP) show that the
accuracy of a few-shot detector varies widely with the images chosen for labelling, and that a
choice made from self-supervised features, without any label, beats a random one.
:func:`suggest_templates` makes such a choice from SAM embeddings. The method is samlearn's own,
inspired by that work (not a reimplementation of SCP):

* each image is represented by the set of vectors of its *global* embedding map (every voxel of
  the map), which describe the anatomy it shows;
* for a pair of images, ``S[i, j]`` is the mean, over the vectors of image ``i``, of their best
  cosine similarity in image ``j``: how well image ``i``'s anatomy is found in image ``j``;
* a good template both contains the anatomy of the other images and has its own anatomy found in
  them, so pairs are compared by the symmetric ``Ssym = (S + S.T) / 2``, and an image's score as a
  single template is its mean ``Ssym`` with every other image;
* several templates are chosen greedily by facility location: the best single template first,
  then repeatedly the image that most increases ``sum_j max_{t in chosen} Ssym[t, j]`` (each image
  served by its most similar template), which spreads the choice over distinct groups of images.

An image whose anatomy is not in the others (another body part, a different field of view) gets a
low score and is not suggested; of images that show overlapping parts of the body, the one in the
middle, whose anatomy overlaps the most with the rest, is preferred.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch

from .._utils.validation import Interval, check_param
from ..image import check_images
from ._base import embed_images, resolve_embedder

__all__ = ["suggest_templates", "TemplateSuggestion"]

#: rows (and columns) of the similarity blocks computed at once: a block is at most
#: ``_CHUNK * _CHUNK`` float32 values (64 MiB), whatever the size of the maps
_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class TemplateSuggestion:
    """The images suggested as templates, and the evidence behind the choice.

    Parameters
    ----------
    indices : ndarray of int, shape (n_templates,)
        The chosen images (indices into the images given), in order of choice: the first is the
        best single template.
    scores : ndarray of float, shape (n_images,)
        Each image's representativeness as a single template: its mean symmetric similarity
        with every other image (higher is better; at most 1).
    similarity : ndarray of float, shape (n_images, n_images)
        The symmetric similarity of every pair of images, ``(S[i, j] + S[j, i]) / 2`` where
        ``S[i, j]`` is the mean, over the global embedding vectors of image ``i``, of their best
        cosine similarity in image ``j``; the diagonal is 1.

    Attributes
    ----------
    indices, scores, similarity
        The parameters (read-only arrays).
    """

    indices: np.ndarray
    scores: np.ndarray
    similarity: np.ndarray

    def __post_init__(self):
        for name in ("indices", "scores", "similarity"):
            arr = np.array(getattr(self, name))
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)


def _vectors(embedding, device) -> torch.Tensor:
    """The global map's voxel vectors of one image, ``(n_voxels, C)`` float32, unit length."""
    data = embedding.global_map.data
    v = data.reshape(data.shape[0], -1).T.to(device=device, dtype=torch.float32)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _best_match_mean(a: torch.Tensor, b: torch.Tensor, chunk: int) -> float:
    """Mean over the rows of ``a`` of their largest dot product with a row of ``b``, computed
    in blocks of at most ``chunk x chunk``."""
    total = 0.0
    for r0 in range(0, len(a), chunk):
        rows = a[r0:r0 + chunk]
        best = torch.full((len(rows),), -float("inf"), dtype=rows.dtype, device=rows.device)
        for c0 in range(0, len(b), chunk):
            best = torch.maximum(best, (rows @ b[c0:c0 + chunk].T).amax(dim=1))
        total += float(best.sum(dtype=torch.float64))
    return total / len(a)


def _coverage(vectors, chunk: int) -> np.ndarray:
    """``S[i, j]``: how well image ``i``'s vectors are found among image ``j``'s."""
    n = len(vectors)
    s = np.ones((n, n))
    with torch.no_grad():
        for i in range(n):
            for j in range(n):
                if i != j:
                    s[i, j] = _best_match_mean(vectors[i], vectors[j], chunk)
    return s


def _facility_location(sim: np.ndarray, first: int, k: int) -> list:
    """Greedy choice of ``k`` images maximising ``sum_j max_{t in chosen} sim[t, j]``."""
    chosen = [first]
    served = sim[first].copy()
    while len(chosen) < k:
        gain = np.maximum(sim, served[None, :]).sum(axis=1)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        served = np.maximum(served, sim[best])
    return chosen


def suggest_templates(embedder, images, n_templates=1, *, batch_size=1) -> TemplateSuggestion:
    """Suggest which image(s) to annotate as the template(s) of a one-shot method, without labels.

    Each image's anatomy is described by the vectors of its global embedding map; images are
    compared by how well each one's vectors are found in the other (both ways), and the image
    most similar to all the others is suggested first. Further templates are added greedily so
    that every image has a similar template (facility location). See the module docstring.

    Parameters
    ----------
    embedder : SAMEmbedder, str or path
        A fitted embedder, or the path of a saved model (loaded with :func:`samlearn.load`).
    images : list of Image, SimpleITK.Image, str or path
        The candidate images, at least 2, of the embedder's dimensionality.
    n_templates : int, default 1
        How many templates to suggest, from 1 to the number of images.
    batch_size : int, default 1
        Images per ``embedder.transform`` call.

    Returns
    -------
    TemplateSuggestion
        The chosen images' indices in order of choice, each image's score as a single template,
        and the pairwise similarity matrix.

    Raises
    ------
    ValueError
        When ``embedder`` is None, for fewer than 2 images or images whose dimensionality is not
        the embedder's, or for an ``n_templates`` or ``batch_size`` out of range.
    TypeError
        When ``embedder`` is not an embedder.
    sklearn.exceptions.NotFittedError
        When the embedder is not fitted.
    """
    embedder = resolve_embedder(embedder, "suggest_templates")
    ims = check_images(images, ndim=embedder.ndim_, name="images")
    n = len(ims)
    if n < 2:
        raise ValueError(f"images must hold at least 2 images to choose a template from, got {n}")
    check_param(n_templates, [Interval(Integral, 1, n)], "n_templates")
    check_param(batch_size, [Interval(Integral, 1, None)], "batch_size")

    embs = embed_images(embedder, ims, int(batch_size))
    device = embs[0].global_map.data.device
    vectors = [_vectors(e, device) for e in embs]
    channels = {v.shape[1] for v in vectors}
    if len(channels) > 1:
        raise ValueError(f"the embedder gave global maps with different numbers of channels "
                         f"{sorted(channels)}; they cannot be compared")
    s = _coverage(vectors, _CHUNK)
    sym = np.clip(0.5 * (s + s.T), -1.0, 1.0)
    np.fill_diagonal(sym, 1.0)
    scores = (sym.sum(axis=1) - 1.0) / (n - 1)
    chosen = _facility_location(sym, int(np.argmax(scores)), int(n_templates))
    return TemplateSuggestion(indices=np.asarray(chosen, dtype=np.intp), scores=scores,
                              similarity=sym)
