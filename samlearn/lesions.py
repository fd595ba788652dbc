"""Follow-up lesion matching (SAM §IV-A): find lesions marked on one scan in follow-up scans, and say
when a lesion is not there.

``LesionMatcher.fit(template_image, lesions)`` reads the template's embedding vectors at the lesion
centres (boxes are reduced to their centres, as in the paper); ``predict(follow_up_images)`` finds
each lesion's best match in every follow-up with :func:`samlearn.matching.match_points` and decides
whether the match can be trusted. A lesion is reported **found** only if all of these hold:

1. **score**: the peak score ``(S^g + S^l) / 2`` is at least ``score_threshold`` (the paper's rule:
   "an unrelated point with a low similarity score can be filtered with a score threshold");
2. **field of view**: the matched point lies inside the follow-up image's field of view, at least
   ``fov_margin_mm`` from its border. When the lesion's region was not scanned, the best match is
   the nearest anatomy that was, i.e. a point at the border of the scanned range: this check
   catches that case even when the score is high;
3. **cycle consistency** (unless ``cycle_threshold_mm=None``): matching the found point back into
   the template lands within ``cycle_threshold_mm`` of the lesion.

Otherwise the lesion comes back as not found: a NaN centre and ``found = False``, never a confident
wrong point.

How the defaults were chosen (benchmarks/ct_registration.py on the lung1 / lung2 tumours, 3 known
warps each, the 15-minute ct-lite model; benchmarks/RESULTS.md "CT registration"): the 6 present
tumours scored 0.75-0.91 and came back 1.3-16.9 mm from where they started after the cycle; the 12
follow-ups cropped so that the tumour was gone scored 0.71-0.82 (the score alone does **not**
separate them with this model), their best matches lay 20-73 mm inside the cropped view (so the
field-of-view check did not fire either: the model's best guess was other lung tissue, not the
border), and their cycles ended 41-214 mm away. The cycle check is therefore on by default, at
2.5 voxels of the template's local embedding grid (20 mm for ct-lite), between the two groups.
The score threshold (0.5) only drops clearly unrelated matches; the scale of scores depends on the
model, so check both on your own model with :meth:`LesionMatcher.match`.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._frozen import (FrozenComponentMixin, check_positive_float, check_positive_int,
                      check_probability, embed_images, resolve_embedder)
from .image import check_images, check_points
from .matching import (DEFAULT_CHUNK_SIZE, MODES, check_search_radius, cycle_consistency,
                       match_points, template_vectors)
from .metrics import points_in_boxes

__all__ = ["LesionMatcher", "DEFAULT_LESION_SCORE_THRESHOLD", "AUTO_CYCLE_LOCAL_VOXELS"]

#: Default ``score_threshold``: well below every present tumour's score measured on real CT (0.75
#: at least, see the module docstring); it drops only clearly unrelated matches.
DEFAULT_LESION_SCORE_THRESHOLD = 0.5
#: ``cycle_threshold_mm="auto"``: this many voxels of the template's local embedding grid (its
#: largest spacing), i.e. 20 mm for the ct-lite preset (8 mm local voxels in-plane).
AUTO_CYCLE_LOCAL_VOXELS = 2.5


def _check_lesions(lesions, ndim):
    arr = np.asarray(lesions, dtype=np.float64) if not isinstance(lesions, np.ndarray) else lesions
    if arr.ndim == 1 and arr.shape[0] in (ndim, 2 * ndim):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (ndim, 2 * ndim) or arr.shape[0] == 0:
        raise ValueError(f"lesions must be centres (n_lesions, {ndim}) or boxes (n_lesions, {2 * ndim}) "
                         f"= (min corner, max corner) in world mm, got shape {np.shape(lesions)}")
    if arr.shape[1] == ndim:
        return check_points(arr, ndim, name="lesions"), None
    boxes = check_points(arr, 2 * ndim, name="lesions")
    lo, hi = boxes[:, :ndim], boxes[:, ndim:]
    if np.any(lo > hi):
        bad = np.flatnonzero(np.any(lo > hi, axis=1))[:5].tolist()
        raise ValueError(f"lesions boxes must give the minimum corner first (x0, y0[, z0], x1, y1[, z1]); "
                         f"min > max in rows {bad}")
    return (lo + hi) / 2.0, boxes


class LesionMatcher(FrozenComponentMixin, BaseEstimator):
    """Match lesions from a template scan into follow-up scans, with a not-found decision.

    Parameters
    ----------
    embedder : fitted SAMEmbedder or path
        Frozen, pre-trained component (``clone`` shares it); a path is loaded with ``samlearn.load``.
    score_threshold : float in [-1, 1], default :data:`DEFAULT_LESION_SCORE_THRESHOLD`
        Minimum peak score ``(S^g + S^l) / 2`` of a found lesion (see the module docstring for how
        the default was chosen).
    cycle_threshold_mm : "auto", float or None, default "auto"
        Maximum forward-backward distance of a found lesion (mm). "auto":
        :data:`AUTO_CYCLE_LOCAL_VOXELS` voxels of the template's local embedding grid. None: no
        cycle check (saves the second search per lesion, but see the module docstring: on the
        lite CT model it was the only check that rejected absent tumours).
    search_radius_mm : "auto", float or None, default "auto"
        Coarse-to-fine window of the search (``match_points``).
    fov_margin_mm : "auto" or float >= 0, default "auto"
        Matches closer than this to the border of the follow-up's field of view are not found.
        "auto": one voxel of the follow-up's local embedding grid (its largest spacing).
    mode : {"sum", "global", "local"}, default "sum"
    batch_size : int, chunk_size : int
        Images per ``embedder.transform`` call; memory bound of the search.

    Attributes
    ----------
    centers_ : (n_lesions, ndim) template lesion centres (world mm)
    boxes_ : (n_lesions, 2 * ndim) template boxes, or None when centres were given
    template_global_, template_local_ : (n_lesions, C) template vectors
    cycle_threshold_mm_ : float or None -- the cycle threshold in force (mm)
    n_lesions_, ndim_, embedder_
    """

    def __init__(self, *, embedder=None, score_threshold=DEFAULT_LESION_SCORE_THRESHOLD,
                 cycle_threshold_mm="auto", search_radius_mm="auto", fov_margin_mm="auto", mode="sum",
                 batch_size=1, chunk_size=DEFAULT_CHUNK_SIZE):
        self.embedder = embedder
        self.score_threshold = score_threshold
        self.cycle_threshold_mm = cycle_threshold_mm
        self.search_radius_mm = search_radius_mm
        self.fov_margin_mm = fov_margin_mm
        self.mode = mode
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    def _check_params(self):
        check_probability(self.score_threshold, "score_threshold")
        if not (isinstance(self.cycle_threshold_mm, str) and self.cycle_threshold_mm == "auto"):
            if isinstance(self.cycle_threshold_mm, str):
                raise ValueError(f"cycle_threshold_mm must be 'auto', None or a positive number of "
                                 f"mm, got {self.cycle_threshold_mm!r}")
            check_positive_float(self.cycle_threshold_mm, "cycle_threshold_mm", allow_none=True)
        check_search_radius(self.search_radius_mm)
        if not (isinstance(self.fov_margin_mm, str) and self.fov_margin_mm == "auto"):
            if isinstance(self.fov_margin_mm, str):
                raise ValueError(f"fov_margin_mm must be 'auto' or a non-negative number of mm, got "
                                 f"{self.fov_margin_mm!r}")
            check_positive_float(self.fov_margin_mm, "fov_margin_mm", allow_zero=True)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.chunk_size, "chunk_size")

    def fit(self, template_image, lesions):
        """Read the template vectors at the lesion centres.

        Parameters
        ----------
        template_image : Image, SimpleITK image or path
        lesions : (n_lesions, ndim) centres or (n_lesions, 2 * ndim) boxes (min corner, max corner),
            world mm (x, y[, z]); each centre must lie inside the template image.
        """
        self._check_params()
        embedder = resolve_embedder(self.embedder, type(self).__name__)
        ndim = int(embedder.ndim_)
        if isinstance(template_image, (list, tuple)):
            raise TypeError(f"template_image must be one image (Image, SimpleITK.Image or path), got "
                            f"a {type(template_image).__name__}")
        template = check_images(template_image, name="template_image")[0]
        if template.ndim != ndim:
            raise ValueError(f"template_image is {template.ndim}D but the embedder was fitted on "
                             f"{ndim}D images (embedder.ndim_={ndim})")
        centers, boxes = _check_lesions(lesions, ndim)
        inside = template.geometry.contains(centers)
        if not np.all(inside):
            bad = np.flatnonzero(~inside).tolist()
            raise ValueError(f"lesions rows {bad} have centres outside template_image "
                             f"({centers[bad].round(2).tolist()} mm; the image covers "
                             f"{template.geometry!r})")
        emb = embed_images(embedder, [template], 1)[0]
        gv, lv = template_vectors(emb, centers)
        self.embedder_ = embedder
        self.ndim_ = ndim
        self.n_lesions_ = len(centers)
        self.centers_ = centers
        self.boxes_ = boxes
        self.template_global_ = gv.detach().float().cpu().numpy()
        self.template_local_ = lv.detach().float().cpu().numpy()
        cyc = self.cycle_threshold_mm
        if isinstance(cyc, str):
            cyc = AUTO_CYCLE_LOCAL_VOXELS * float(np.max(emb.local_map.geometry.spacing))
        self.cycle_threshold_mm_ = None if cyc is None else float(cyc)
        if cyc is not None:
            self.template_embedding_ = emb
        elif hasattr(self, "template_embedding_"):
            del self.template_embedding_
        return self

    def _match_kwargs(self):
        return dict(mode=self.mode, search_radius_mm=self.search_radius_mm, refine=True,
                    chunk_size=self.chunk_size)

    def match(self, follow_up_images) -> dict:
        """Every detail of the decision, per image and lesion (arrays (n_images, n_lesions[, ndim])):
        ``raw_points`` (the best match, whatever its quality), ``scores``, ``cycle_mm`` (NaN when
        no cycle check), ``in_fov``, ``found`` and ``points`` (``raw_points`` where found, NaN
        elsewhere)."""
        check_is_fitted(self, "template_local_")
        ims = check_images(follow_up_images, name="follow_up_images")
        if ims[0].ndim != self.ndim_:
            raise ValueError(f"follow_up_images are {ims[0].ndim}D but the matcher was fitted on a "
                             f"{self.ndim_}D template")
        n, k, d = len(ims), self.n_lesions_, self.ndim_
        raw = np.empty((n, k, d))
        scores = np.empty((n, k))
        cycle = np.full((n, k), np.nan)
        in_fov = np.empty((n, k), bool)
        kwargs = self._match_kwargs()
        thr_cycle = self.cycle_threshold_mm_
        for i0 in range(0, n, self.batch_size):
            embs = embed_images(self.embedder_, ims[i0:i0 + self.batch_size], self.batch_size)
            for j, emb in enumerate(embs):
                i = i0 + j
                res = match_points(self.template_global_, self.template_local_, emb, **kwargs)
                raw[i], scores[i] = res.points, res.scores
                if thr_cycle is not None:
                    cycle[i] = cycle_consistency(self.template_embedding_, self.centers_, emb,
                                                 forward=res, **kwargs).distances_mm
                in_fov[i] = self._in_fov(ims[i], res.points, emb)
        found = (scores >= float(self.score_threshold)) & in_fov
        if thr_cycle is not None:
            found &= cycle <= float(thr_cycle)
        points = np.where(found[..., None], raw, np.nan)
        return {"points": points, "scores": scores, "found": found, "raw_points": raw,
                "cycle_mm": cycle, "in_fov": in_fov}

    def _in_fov(self, image, points, emb):
        margin = self.fov_margin_mm
        if isinstance(margin, str):
            margin = float(np.max(emb.local_map.geometry.spacing))
        geom = image.geometry
        idx = geom.world_to_index(points)  # continuous index (x, y, z); borders at -0.5, n - 0.5
        lo = (idx + 0.5) * geom.spacing
        hi = (np.asarray(geom.size) - 0.5 - idx) * geom.spacing
        return np.all((lo >= margin) & (hi >= margin), axis=1)

    def predict(self, follow_up_images, return_scores=False):
        """Matched lesion centres (n_images, n_lesions, ndim), world mm of each follow-up; NaN rows
        for lesions not found. With ``return_scores``: ``(points, scores, found)``, scores
        (n_images, n_lesions) in [-1, 1] and the found mask (n_images, n_lesions)."""
        out = self.match(follow_up_images)
        if return_scores:
            return out["points"], out["scores"], out["found"]
        return out["points"]

    def score(self, follow_up_images, boxes):
        """Lesion matching accuracy: the share of (image, lesion) pairs decided correctly.

        ``boxes`` (n_images, n_lesions, 2 * ndim): each lesion's true box in each follow-up (min
        corner, max corner, world mm), or a NaN row where the lesion is absent from that scan. A
        present lesion counts as correct when it is found inside its box (SAM §IV-A), an absent one
        when it is reported not found."""
        check_is_fitted(self, "template_local_")
        ims = check_images(follow_up_images, name="follow_up_images")
        b = np.asarray(boxes, dtype=np.float64)
        expected = (len(ims), self.n_lesions_, 2 * self.ndim_)
        if b.shape != expected:
            raise ValueError(f"boxes must have shape (n_images, n_lesions, 2*ndim) = {expected}, "
                             f"got {b.shape}")
        absent = np.all(np.isnan(b), axis=-1)
        partial = np.any(np.isnan(b), axis=-1) & ~absent
        if np.any(partial):
            raise ValueError(f"boxes has rows with only some values NaN at "
                             f"{np.argwhere(partial)[:5].tolist()}: mark an absent lesion with a NaN row")
        pts = self.predict(ims)
        correct = np.where(absent, np.all(np.isnan(pts), axis=-1), False)
        if np.any(~absent):
            correct[~absent] = points_in_boxes(pts[~absent], b[~absent])
        return float(np.mean(correct))
