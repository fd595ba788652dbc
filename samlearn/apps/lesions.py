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

The cycle check is on by default: on the lite CT models it was the check that rejected absent
tumours, whose best matches scored as high as present ones and lay well inside the cropped view
(benchmarks/RESULTS.md, "Lesions"). The score threshold only drops clearly unrelated matches; the
scale of scores depends on the model, so check both on your own model with
:meth:`LesionMatcher.match`. The score rule is the paper's; the field-of-view and cycle checks
are samlearn's.
"""
from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._utils.docs import fill_doc
from .._utils.validation import Interval, Options
from ..image import check_images, check_points
from ..matching import DEFAULT_CHUNK_SIZE, MODES, cycle_consistency, match_points, template_vectors
from ..matching.search import SEARCH_RADIUS_CONSTRAINT
from ..metrics import points_in_boxes
from ._base import POSITIVE_INT, POSITIVE_MM, SCORE, FrozenComponentMixin, embed_images, resolve_embedder

__all__ = ["LesionMatcher", "DEFAULT_LESION_SCORE_THRESHOLD", "AUTO_CYCLE_LOCAL_VOXELS"]

#: Default ``score_threshold``: well below the scores of present tumours measured on real CT; it
#: drops only clearly unrelated matches.
DEFAULT_LESION_SCORE_THRESHOLD = 0.5
#: ``cycle_threshold_mm="auto"``: this many voxels of the template's local embedding grid (its
#: largest spacing).
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


@fill_doc
class LesionMatcher(FrozenComponentMixin, BaseEstimator):
    """Match lesions from a template scan into follow-up scans, with a not-found decision.

    Parameters
    ----------
    %(embedder)s
    score_threshold : float in [-1, 1], default 0.5
        Minimum peak score ``(S^g + S^l) / 2`` of a found lesion (the paper's rule).
    cycle_threshold_mm : "auto", float or None, default "auto"
        Maximum forward-backward distance of a found lesion (mm). "auto":
        :data:`AUTO_CYCLE_LOCAL_VOXELS` voxels of the template's local embedding grid. None: no
        cycle check (saves the second search per lesion; see the module docstring).
    %(search_radius_mm)s
    fov_margin_mm : "auto" or float >= 0, default "auto"
        Matches closer than this to the border of the follow-up's field of view are not found.
        "auto": one voxel of the follow-up's local embedding grid (its largest spacing).
    %(mode)s
    %(batch_size)s
    %(chunk_size)s

    Attributes
    ----------
    centers_ : ndarray of shape (n_lesions, ndim)
        Template lesion centres (world mm).
    boxes_ : ndarray of shape (n_lesions, 2 * ndim) or None
        Template boxes, or None when centres were given.
    template_global_, template_local_ : ndarray of shape (n_lesions, C)
        Template vectors.
    cycle_threshold_mm_ : float or None
        The cycle threshold in force (mm).
    template_embedding_ : Embedding
        The template's embedding, kept for the cycle check (only when it is on).
    n_lesions_, ndim_ : int
        Number of lesions and image dimension.
    embedder_ : SAMEmbedder
        The embedder used (the loaded model when ``embedder`` is a path).

    See Also
    --------
    samlearn.matching.cycle_consistency : The forward-backward check.
    """

    _parameter_constraints = {
        "score_threshold": [SCORE],
        "cycle_threshold_mm": [Options("auto"), POSITIVE_MM, None],
        "search_radius_mm": SEARCH_RADIUS_CONSTRAINT,
        "fov_margin_mm": [Options("auto"), Interval(Real, 0, None, unit="mm")],
        "mode": [Options(*MODES)],
        "batch_size": [POSITIVE_INT],
        "chunk_size": [POSITIVE_INT],
    }

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

    def fit(self, template_image, lesions):
        """Read the template vectors at the lesion centres.

        Parameters
        ----------
        template_image : Image, SimpleITK image or path
            One template image, of the embedder's dimension.
        lesions : array-like of shape (n_lesions, ndim) or (n_lesions, 2 * ndim)
            Centres, or boxes (min corner, max corner), world mm (x, y[, z]); boxes are reduced to
            their centres (as in the paper). Each centre must lie inside the template image.

        Returns
        -------
        self : LesionMatcher
            The fitted matcher.

        Raises
        ------
        ValueError
            For a template of the wrong dimension, malformed lesions, or a centre outside the
            template.
        """
        self._validate_params()
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
        """Match the lesions and return every detail of the found / not-found decision.

        Parameters
        ----------
        follow_up_images : image or list of images
            ``Image``, ``SimpleITK.Image`` or paths, of the template's dimension.

        Returns
        -------
        dict
            Arrays of shape (n_images, n_lesions[, ndim]), per image and lesion: ``raw_points``
            (the best match, whatever its quality, world mm), ``scores`` (in [-1, 1]),
            ``cycle_mm`` (forward-backward distance; NaN when there is no cycle check),
            ``in_fov`` (inside the field of view, beyond the margin), ``found`` (all checks
            passed) and ``points`` (``raw_points`` where found, NaN elsewhere).
        """
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
        """Matched lesion centres in each follow-up; NaN for lesions not found.

        Parameters
        ----------
        follow_up_images : image or list of images
            ``Image``, ``SimpleITK.Image`` or paths, of the template's dimension.
        return_scores : bool, default False
            Also return the scores and the found mask.

        Returns
        -------
        points : ndarray of shape (n_images, n_lesions, ndim)
            World mm of each follow-up; NaN rows for lesions not found.
        scores : ndarray of shape (n_images, n_lesions)
            Peak scores in [-1, 1]; only with ``return_scores``.
        found : ndarray of shape (n_images, n_lesions), bool
            The found mask; only with ``return_scores``.

        See Also
        --------
        match : Every detail of the decision.
        """
        out = self.match(follow_up_images)
        if return_scores:
            return out["points"], out["scores"], out["found"]
        return out["points"]

    def score(self, follow_up_images, boxes):
        """Lesion matching accuracy: the share of (image, lesion) pairs decided correctly.

        A present lesion counts as correct when it is found inside its box (SAM §IV-A), an absent
        one when it is reported not found.

        Parameters
        ----------
        follow_up_images : list of images
            ``Image``, ``SimpleITK.Image`` or paths.
        boxes : array-like of shape (n_images, n_lesions, 2 * ndim)
            Each lesion's true box in each follow-up (min corner, max corner, world mm), or a NaN
            row where the lesion is absent from that scan.

        Returns
        -------
        float
            The accuracy, in [0, 1].

        Raises
        ------
        ValueError
            When ``boxes`` has the wrong shape or rows with only some values NaN.
        """
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
