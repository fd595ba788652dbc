"""One-shot landmark detection: mark points on one template image, find them in any other image.

:class:`OneShotLandmarkDetector` wraps a fitted embedder (a ``SAMEmbedder`` or anything with the
same ``transform(images) -> list[Embedding]`` / ``ndim_`` interface) and the similarity search of
:mod:`samlearn.matching` in a scikit-learn estimator: ``fit`` reads the template vectors,
``predict`` returns world-mm points per query image.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .image import Image, check_images, check_points
from .inference import effective_n_jobs, image_items, load_item, progress_bar
from .maps import Embedding
from .matching import (DEFAULT_CHUNK_SIZE, MODES, check_search_radius, combine_templates,
                       cycle_consistency, match_points, template_vectors)

__all__ = ["OneShotLandmarkDetector"]


def _predict_task(detector, item, index):
    """A joblib task: ``detector``'s predictions for one image (in a worker process)."""
    return detector._predict_items([item], index)


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class OneShotLandmarkDetector(BaseEstimator):
    """Find landmarks marked on one (or a few) template images in new images (SAM §III-D).

    ``fit(template_image, template_points)`` reads the template's global and local embedding
    vectors at the points; ``predict(images)`` finds, in each image, the peak of the similarity
    maps for every point (see :func:`samlearn.matching.match_points`). No labels beyond the
    template's points are needed.

    Parameters
    ----------
    embedder : fitted estimator or path
        A fitted ``SAMEmbedder`` (anything with ``transform(images) -> list[Embedding]`` and
        ``ndim_``), or the path of a saved model, loaded with ``samlearn.load`` in ``fit``.
        **The embedder is treated as a frozen, pre-trained component**: the detector never fits it,
        and ``sklearn.base.clone(detector)`` returns an unfitted detector that shares the *same*
        embedder object (like ``sklearn.frozen.FrozenEstimator``), so ``Pipeline``,
        ``cross_val_score`` and ``GridSearchCV`` clone the detector cheaply without discarding the
        trained network. For the same reason ``get_params(deep=True)`` does not expose the
        embedder's own parameters: change the embedder by setting another one
        (``set_params(embedder=...)``), never its parameters through the detector.
    mode : {"sum", "global", "local"}, default "sum"
        Which similarity maps decide the match: ``(S^g + S^l) / 2`` (SAM), or one of them.
    search_radius_mm : "auto", float or None, default "auto"
        Coarse-to-fine window: search the local map only within this radius (mm) of the global
        map's peak. ``"auto"`` is two voxels of the query's global grid. ``None`` searches the whole
        image (the paper's rule), which lets far-away false local peaks win (measured on real
        cephalograms: MRE 34.8 px whole-image vs 21.5 px windowed).
    refine : bool, default True
        Sub-voxel (parabola) refinement of each peak.
    cycle_check : bool, default False
        Also compute the forward-backward distance (mm) of every match (query -> template; the
        mean over templates), returned by ``predict(..., return_scores=True)``. Keeps the template
        embeddings in memory.
    batch_size : int, default 1
        Images embedded per call of ``embedder.transform`` (embeddings of whole CT volumes are
        large: keep this small).
    chunk_size : int, default 2**24
        Memory bound of the search (floats per intermediate), see ``match_points``.
    consistency : {"affine", None}, default "affine"
        Joint check of all points of a query: fit an affine from the template points to the matched
        points robustly (RANSAC), and search every point whose match lies more than
        ``consistency_tol_mm`` from the affine's prediction again, its coarse peak now restricted to
        within ``consistency_tol_mm`` of that prediction (the fine search window around it still
        reaches points that deviate from the affine by more). Repairs the rare global mismatches
        (a point matched to similar-looking anatomy far away) that one point alone cannot detect.
        Needs at least ndim + 2 points; anatomy that deforms far beyond an affine (joints in very
        different poses) may need a larger tolerance. The default since it lowered the mean error
        on the cephalometric development split (images 051-070: 30.0 -> 27.6 px, maximum 596 ->
        201 px, median unchanged; benchmarks/RESULTS.md); None searches each point on its own.
    consistency_tol_mm : "auto" or float, default "auto"
        Residual beyond which a match is searched again; "auto" is one voxel of the query's global
        grid (its coarsest resolution, where mismatches happen).
    n_jobs : int or None, default None
        ``predict`` on several images with an embedder on the CPU: images are embedded and matched
        in ``n_jobs`` joblib processes (each returns only its points). None: 1; -1: all cores. On
        a GPU, images go through the embedder ``batch_size`` at a time (a ``SAMEmbedder`` batches
        same-size images and prepares the next ones in the background).
    verbose : int, default 0
        Progress bar over the images in ``predict``.

    Attributes
    ----------
    embedder_ : the embedder used (the loaded model when ``embedder`` is a path).
    template_global_, template_local_ : (n_points, C) float32 arrays
        Template vectors, averaged over templates (averaging vectors = averaging similarity maps).
    n_points_, ndim_, n_templates_ : int
    template_points_ : (n_templates, n_points, ndim) template points in world mm.
    template_embeddings_ : list of Embedding, only with ``cycle_check``.
    """

    def __init__(self, *, embedder=None, mode="sum", search_radius_mm="auto", refine=True,
                 cycle_check=False, batch_size=1, chunk_size=DEFAULT_CHUNK_SIZE, consistency="affine",
                 consistency_tol_mm="auto", n_jobs=None, verbose=0):
        self.embedder = embedder
        self.mode = mode
        self.search_radius_mm = search_radius_mm
        self.refine = refine
        self.cycle_check = cycle_check
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.consistency = consistency
        self.consistency_tol_mm = consistency_tol_mm
        self.n_jobs = n_jobs
        self.verbose = verbose

    # ------------------------------------------------------------------ sklearn plumbing
    def __sklearn_clone__(self):
        """Clone own parameters, pass the (frozen, pre-trained) embedder through unchanged."""
        params = self.get_params(deep=False)
        new = {k: (v if k == "embedder" else clone(v, safe=False)) for k, v in params.items()}
        return type(self)(**new)

    def get_params(self, deep=True):
        """Parameters of this detector; the embedder's own parameters are not exposed (the embedder
        is frozen; see the class docstring), whatever ``deep`` is."""
        return super().get_params(deep=False)

    def set_params(self, **params):
        """Set this detector's parameters. Nested ``embedder__...`` parameters are refused: the
        embedder is shared and frozen; set another embedder instead."""
        nested = sorted(k for k in params if "__" in k)
        if nested:
            raise ValueError(f"Invalid parameter(s) {nested} for {type(self).__name__}: the embedder "
                             f"is a frozen, shared component; pass another one with "
                             f"set_params(embedder=...) instead of changing its parameters")
        return super().set_params(**params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.two_d_array = False
        return tags

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_search_radius(self.search_radius_mm)
        if self.consistency not in (None, "affine"):
            raise ValueError(f"consistency must be None or 'affine', got {self.consistency!r}")
        tol = self.consistency_tol_mm
        if tol != "auto":
            try:
                ok = np.isfinite(float(tol)) and float(tol) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"consistency_tol_mm must be 'auto' or a positive number of mm, got {tol!r}")
        _check_flag(self.refine, "refine")
        _check_flag(self.cycle_check, "cycle_check")
        _check_positive_int(self.batch_size, "batch_size")
        _check_positive_int(self.chunk_size, "chunk_size")

    def _resolve_embedder(self):
        emb = self.embedder
        if emb is None:
            raise ValueError("embedder is required: pass a fitted SAMEmbedder or the path of a saved "
                             "model, e.g. OneShotLandmarkDetector(embedder=SAMEmbedder().fit(images))")
        if isinstance(emb, (str, os.PathLike)):
            from . import load  # lazily: the model loader lives in the package root

            emb = load(emb)
        if not (hasattr(emb, "transform") and callable(emb.transform)):
            raise TypeError(f"embedder must be a fitted SAMEmbedder-like estimator with a transform "
                            f"method (or a path to a saved model), got {type(emb).__name__}")
        try:
            check_is_fitted(emb)
        except NotFittedError:
            raise NotFittedError(
                f"embedder ({type(emb).__name__}) is not fitted: fit it on unlabelled images first "
                f"(embedder.fit(images)) or pass a path to a saved, trained model") from None
        ndim = getattr(emb, "ndim_", None)
        if ndim not in (2, 3):
            raise TypeError(f"embedder must expose ndim_ (2 or 3) after fitting, got {ndim!r}")
        return emb

    def _embed(self, embedder, images: List[Image]) -> List[Embedding]:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i:i + self.batch_size]
            embs = list(embedder.transform(batch))
            if len(embs) != len(batch) or not all(isinstance(e, Embedding) for e in embs):
                raise TypeError(f"embedder.transform must return one samlearn.maps.Embedding per "
                                f"image; got {len(embs)} objects for {len(batch)} images")
            out.extend(embs)
        return out

    @staticmethod
    def _check_templates(template_image, template_points, ndim):
        multiple = isinstance(template_image, (list, tuple))
        images = check_images(template_image, name="template_image")
        if images[0].ndim != ndim:
            raise ValueError(f"template_image is {images[0].ndim}D but the embedder was fitted on "
                             f"{ndim}D images (embedder.ndim_={ndim})")
        if not multiple:
            point_sets = [check_points(template_points, ndim, name="template_points")]
        else:
            if isinstance(template_points, np.ndarray) and template_points.ndim == 2 and len(images) == 1:
                raw = [template_points]
            elif isinstance(template_points, np.ndarray) and template_points.ndim == 3:
                raw = list(template_points)
            elif isinstance(template_points, (list, tuple)):
                raw = list(template_points)
            else:
                raise ValueError(
                    f"with {len(images)} template images, template_points must be a list of "
                    f"{len(images)} point arrays (n_points, {ndim}) or an array (n_templates, "
                    f"n_points, {ndim}); got {type(template_points).__name__} of shape "
                    f"{np.shape(template_points)}")
            if len(raw) != len(images):
                raise ValueError(f"template_points holds {len(raw)} point arrays but {len(images)} "
                                 f"template images were given; give one point array per image")
            point_sets = [check_points(p, ndim, name=f"template_points[{i}]") for i, p in enumerate(raw)]
            counts = {len(p) for p in point_sets}
            if len(counts) != 1:
                raise ValueError(f"every template must mark the same points: template_points arrays "
                                 f"have {[len(p) for p in point_sets]} rows")
        for i, (im, pts) in enumerate(zip(images, point_sets)):
            inside = im.geometry.contains(pts)
            if not np.all(inside):
                bad = np.nonzero(~inside)[0].tolist()
                where = "template_points" if not multiple else f"template_points[{i}]"
                raise ValueError(f"{where} rows {bad} lie outside the template image "
                                 f"(points {pts[bad].round(2).tolist()} mm; the image covers "
                                 f"{im.geometry!r})")
        return images, point_sets

    # ------------------------------------------------------------------ fit / predict
    def fit(self, template_image, template_points):
        """Read the template vectors.

        Parameters
        ----------
        template_image : image or list of images
            One template (``Image``, ``SimpleITK.Image`` or path), or several.
        template_points : (n_points, ndim) array, or one such array per template
            World mm in (x, y[, z]) order; every template marks the same points in the same order.
        """
        self._check_params()
        embedder = self._resolve_embedder()
        ndim = int(embedder.ndim_)
        images, point_sets = self._check_templates(template_image, template_points, ndim)
        embeddings = self._embed(embedder, images)
        sets = [template_vectors(e, p) for e, p in zip(embeddings, point_sets)]
        vg, vl = combine_templates(sets)
        self.embedder_ = embedder
        self.template_global_ = vg.detach().float().cpu().numpy()
        self.template_local_ = vl.detach().float().cpu().numpy()
        self.template_points_ = np.stack(point_sets)
        self.n_points_ = int(point_sets[0].shape[0])
        self.n_templates_ = len(images)
        self.ndim_ = ndim
        if self.cycle_check:
            self.template_embeddings_ = embeddings
        elif hasattr(self, "template_embeddings_"):
            del self.template_embeddings_
        return self

    def _match_kwargs(self):
        return dict(mode=self.mode, search_radius_mm=self.search_radius_mm, refine=self.refine,
                    chunk_size=self.chunk_size)

    def predict(self, images, return_scores=False):
        """Landmark positions (n_images, n_points, ndim), world mm of each image.

        With ``return_scores``, also the peak scores (n_images, n_points) (in [-1, 1]; see
        ``samlearn.matching.MatchResult.scores``), and with ``cycle_check`` the forward-backward
        distances (n_images, n_points) in mm: ``(points, scores)`` or ``(points, scores, cycle)``.
        """
        check_is_fitted(self, "template_local_")
        items = image_items(images, name="images")  # read lazily: many images, bounded memory
        n_jobs = effective_n_jobs(self.n_jobs)
        device = getattr(self.embedder_, "device_", "cpu")
        if n_jobs > 1 and len(items) > 1 and str(device).startswith("cpu"):
            out = self._predict_parallel(items, n_jobs)
        else:
            out = self._predict_items(items, 0, progress=True)
        points, scores, cycle = out
        if not return_scores:
            return points
        return (points, scores, cycle) if self.cycle_check else (points, scores)

    def _load(self, item, index):
        return load_item(item, self.ndim_, "images", index,
                         why=f"images are {'2D' if self.ndim_ == 3 else '3D'} but the detector was "
                             f"fitted on {self.ndim_}D templates")

    def _predict_items(self, items, offset, progress=False):
        """Points, scores and cycle distances of ``items`` (serial; batches of ``batch_size``)."""
        kwargs = self._match_kwargs()
        n = len(items)
        points = np.empty((n, self.n_points_, self.ndim_))
        scores = np.empty((n, self.n_points_))
        cycle = np.empty((n, self.n_points_)) if self.cycle_check else None
        bar = progress_bar(self.verbose and progress and n > 1, n, "landmarks")
        try:
            for i in range(0, n, self.batch_size):
                ims = [self._load(items[k], offset + k) for k in range(i, min(n, i + self.batch_size))]
                embs = self._embed(self.embedder_, ims)
                del ims
                for j, emb in enumerate(embs):
                    res = match_points(self.template_global_, self.template_local_, emb, **kwargs)
                    points[i + j] = res.points
                    scores[i + j] = res.scores
                    if self.consistency == "affine":
                        self._affine_repair(emb, points[i + j], scores[i + j], kwargs)
                    if self.cycle_check:
                        d = [cycle_consistency(t_emb, t_pts, emb, forward=res, **kwargs).distances_mm
                             for t_emb, t_pts in zip(self.template_embeddings_, self.template_points_)]
                        cycle[i + j] = np.mean(d, axis=0)
                    if bar is not None:
                        bar.update(1)
                del embs
        finally:
            if bar is not None:
                bar.close()
        return points, scores, cycle

    def _predict_parallel(self, items, n_jobs):
        """One image per joblib (loky) task: each worker embeds and matches, and returns only its
        small arrays (never the embeddings)."""
        from joblib import Parallel, delayed
        bar = progress_bar(self.verbose, len(items), "landmarks")
        parts = []
        try:
            tasks = (delayed(_predict_task)(self, item, i) for i, item in enumerate(items))
            for part in Parallel(n_jobs=n_jobs, return_as="generator")(tasks):
                parts.append(part)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        points = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        cycle = np.concatenate([p[2] for p in parts]) if self.cycle_check else None
        return points, scores, cycle

    def _affine_repair(self, emb, pts, scores, kwargs):
        """Search again, near a robust affine's prediction, the points that disagree with it
        (in place)."""
        tol = self.consistency_tol_mm
        if tol == "auto":
            tol = float(np.max(emb.global_map.geometry.spacing))
        src = self.template_points_.mean(axis=0)
        if len(src) < self.ndim_ + 2:
            return
        from .registration import RegistrationError, fit_affine
        try:
            A, _ = fit_affine(src, pts, robust="ransac", residual_threshold_mm=tol, rng=0)
        except RegistrationError:  # degenerate point layout: nothing to check against
            return
        expected = src @ A[:-1, :-1].T + A[:-1, -1]
        bad = np.linalg.norm(pts - expected, axis=1) > tol
        if not bad.any():
            return
        kw = dict(kwargs)
        if kw.get("search_radius_mm") is None and kw["mode"] != "global":
            kw["search_radius_mm"] = "auto"
        res = match_points(self.template_global_[bad], self.template_local_[bad], emb,
                           prior_points=expected[bad], prior_radius_mm=tol, **kw)
        pts[bad] = res.points
        scores[bad] = res.scores

    def score(self, images, points):
        """Negative mean radial error (mm) of ``predict(images)`` against ``points``
        (n_images, n_points, ndim) world mm; NaN rows (missing landmarks) are ignored.
        Higher is better, as scikit-learn's model selection expects."""
        check_is_fitted(self, "template_local_")
        ims = check_images(images, name="images")
        truth = np.asarray(points, dtype=np.float64)
        expected = (len(ims), self.n_points_, self.ndim_)
        if truth.shape != expected:
            raise ValueError(f"points must have shape (n_images, n_points, ndim) = {expected}, "
                             f"got {truth.shape}")
        if np.isinf(truth).any():
            raise ValueError("points contains infinite coordinates")
        err = np.linalg.norm(self.predict(ims) - truth, axis=-1)
        if np.all(np.isnan(err)):
            raise ValueError("points holds no finite landmark to score against")
        return -float(np.nanmean(err))
