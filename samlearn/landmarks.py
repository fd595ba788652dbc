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
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .image import Image, check_images, check_points
from .inference import effective_n_jobs, image_items, limit_threads, load_item, progress_bar, thread_map
from .maps import Embedding
from .ncc import check_ncc_params, ncc_refine, resolve_search_mm, template_patches
from .matching import (DEFAULT_CHUNK_SIZE, MODES, check_search_radius, combine_templates,
                       cycle_consistency, match_points, template_vectors)

__all__ = ["OneShotLandmarkDetector"]

#: grid matches of ``consistency="coarse"`` below this peak score are not used (the registrars' default)
_COARSE_SCORE_THRESHOLD = 0.5
#: RANSAC trials of its affine step: hundreds of grid matches, most of them inliers, so 100 trials
#: miss an all-inlier sample with probability (1 - 0.5^3)^100 = 2e-6 even at half inliers (300
#: gave the same points on all 20 dev queries)
_COARSE_RANSAC_TRIALS = 100
#: the grid points' local search around the affine's prediction, in global voxels
_COARSE_FINE_RADIUS = 0.5


def _embedder_threads(embedder):
    """The embedder's ``n_threads`` when it has a valid one (a SAMEmbedder), else None."""
    n = getattr(embedder, "n_threads", None)
    return int(n) if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 else None


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_auto_mm(value, name):
    if isinstance(value, str) and value == "auto":
        return
    try:
        ok = not isinstance(value, (bool, np.bool_, str)) and np.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be 'auto' or a positive number of mm, got {value!r}")


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
    consistency : {"coarse", "affine", None}, default "coarse"
        Joint check of all points of a query, against the rare global mismatches (a point matched
        to similar-looking anatomy far away) that one point alone cannot detect.

        * ``"coarse"`` (SAM-coarse prior): ``fit`` also reads the vectors of a grid of template
          points in the body (``coarse_grid_mm``, at most ``coarse_max_points``); ``predict``
          matches them (global map, then local map near a robust affine), smooths their residuals
          into a displacement field (``coarse_smoothing_mm``) as ``SAMDeformableRegistrar`` does,
          and searches every landmark again within ``consistency_tol_mm`` of where the affine and
          the field put it (no second embedding). With several templates the grid comes from the
          first. Falls back to ``"affine"`` when the grid matches are too few or disagree with most
          of the landmarks' own matches, and with ``mode="global"``. Chosen as the default on the
          cephalometric development split (images 051-070: MRE 27.6 -> 19.2 px, max 201 -> 116
          px; test split 071-100, evaluated once: 26.9 -> 22.4 px) and checked on the demo's
          validation phantoms (4-minute CT models: 27.5 -> 11.5 and 24.3 -> 15.3 mm); costs about
          0.1-0.2 s per query more on the CPU (benchmarks/RESULTS.md).
        * ``"affine"``: fit an affine from the template points to the matched points robustly
          (RANSAC) and search every point whose match lies more than ``consistency_tol_mm`` from
          the affine's prediction again, its coarse peak restricted to within
          ``consistency_tol_mm`` of that prediction. Needs at least ndim + 2 points (dev split:
          30.0 -> 27.6 px).
        * None: each point on its own.
    consistency_tol_mm : "auto" or float, default "auto"
        ``"affine"``: residual beyond which a match is searched again; "auto" is one voxel of the
        query's global grid. ``"coarse"``: radius of the final search around the prior; "auto" is
        one voxel of the query's local grid.
    coarse_grid_mm : "auto" or float, default "auto"
        Spacing of the template grid of ``"coarse"`` ("auto": two voxels of the template's local
        map; stratified random positions, seeded).
    coarse_max_points : int, default 1000
        At most this many grid points (a seeded random subset).
    coarse_smoothing_mm : "auto" or float, default "auto"
        Width of the field's Gaussian smoothing ("auto": twice the grid spacing).
    ncc_radius_mm : None or float, default None
        Intensity refinement (:mod:`samlearn.ncc`), off when None: ``fit`` keeps the template's
        intensity patch of this half-width (mm, world axes) around every point, and ``predict``
        moves each match to the shift of best normalised cross-correlation with the query's
        intensities within ``ncc_search_mm`` (sub-step parabola; never farther). It sharpens
        matches that are right to about one local voxel; it cannot repair a wrong structure. Off
        by default (chosen on X-rays only). On the cephalometric development split (051-070) a
        patch of radius 32 (half-resolution px: the loader's world unit) lowered the MRE from 19.2
        to 18.2 px and from 19.1 to 17.9 px (two 30-minute models at 512 x 512); on the test split
        071-100, with the xray-lite preset's 384 x 384 working size, from 21.6 to 19.7 px and from
        21.2 to 19.4 px (two 30-minute models), for about 0.01 s per query (benchmarks/RESULTS.md).
    ncc_search_mm : "auto" or float, default "auto"
        Largest shift searched per world axis ("auto": one voxel of the query's local grid).
    ncc_penalty : float, default 0.05
        NCC units subtracted at the edge of the search (in proportion to the squared shift), so
        that flat correlation surfaces keep the SAM match.
    n_jobs : int or None, default None
        ``predict`` on several images with an embedder on the CPU: images are embedded and matched
        in ``n_jobs`` threads, each with its share of the torch threads (on 2 cores, 2 jobs:
        1.3-1.6x the images per second of one, benchmarks/RESULTS.md). None: 1; -1: all cores. One
        job runs all of its work (matching included) with the embedder's ``n_threads``. On
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
    ncc_patches_ : (n_templates, n_points, *grid) float32, ncc_step_mm_ : float
        Template intensity patches and their sampling step; only with ``ncc_radius_mm``.
    coarse_points_, coarse_global_, coarse_local_, coarse_grid_mm_, coarse_geometry_
        The grid of ``consistency="coarse"`` (template world mm), its vectors, spacing and the
        template's geometry; only with ``consistency="coarse"``.
    """

    def __init__(self, *, embedder=None, mode="sum", search_radius_mm="auto", refine=True,
                 cycle_check=False, batch_size=1, chunk_size=DEFAULT_CHUNK_SIZE, consistency="coarse",
                 consistency_tol_mm="auto", coarse_grid_mm="auto", coarse_max_points=1000,
                 coarse_smoothing_mm="auto", ncc_radius_mm=None, ncc_search_mm="auto", ncc_penalty=0.05,
                 n_jobs=None, verbose=0):
        self.embedder = embedder
        self.mode = mode
        self.search_radius_mm = search_radius_mm
        self.refine = refine
        self.cycle_check = cycle_check
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.consistency = consistency
        self.consistency_tol_mm = consistency_tol_mm
        self.coarse_grid_mm = coarse_grid_mm
        self.coarse_max_points = coarse_max_points
        self.coarse_smoothing_mm = coarse_smoothing_mm
        self.ncc_radius_mm = ncc_radius_mm
        self.ncc_search_mm = ncc_search_mm
        self.ncc_penalty = ncc_penalty
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
        if self.consistency not in (None, "affine", "coarse"):
            raise ValueError(f"consistency must be None, 'affine' or 'coarse', got {self.consistency!r}")
        for name in ("consistency_tol_mm", "coarse_grid_mm", "coarse_smoothing_mm"):
            _check_auto_mm(getattr(self, name), name)
        _check_positive_int(self.coarse_max_points, "coarse_max_points")
        check_ncc_params(self.ncc_radius_mm, self.ncc_search_mm, self.ncc_penalty)
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
        if self.consistency == "coarse":
            self._fit_coarse_grid(embedder, images[0], embeddings[0])
        else:
            for name in ("coarse_points_", "coarse_global_", "coarse_local_", "coarse_grid_mm_",
                         "coarse_geometry_"):
                if hasattr(self, name):
                    delattr(self, name)
        if self.ncc_radius_mm is not None:
            self.ncc_patches_, self.ncc_step_mm_ = template_patches(images, point_sets, self.ncc_radius_mm)
        else:
            for name in ("ncc_step_mm_", "ncc_patches_"):
                if hasattr(self, name):
                    delattr(self, name)
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
            # the matching runs with the embedder's thread setting too, not only its network
            with limit_threads(_embedder_threads(self.embedder_)):
                out = self._predict_items(items, 0, progress=True)
        points, scores, cycle = out
        if not return_scores:
            return points
        return (points, scores, cycle) if self.cycle_check else (points, scores)

    def _load(self, item, index):
        return load_item(item, self.ndim_, "images", index,
                         why=f"images are {'2D' if self.ndim_ == 3 else '3D'} but the detector was "
                             f"fitted on {self.ndim_}D templates")

    def _predict_items(self, items, offset, progress=False, embedder=None):
        """Points, scores and cycle distances of ``items`` (serial; batches of ``batch_size``),
        embedded by ``embedder`` (default ``embedder_``)."""
        embedder = self.embedder_ if embedder is None else embedder
        kwargs = self._match_kwargs()
        n = len(items)
        points = np.empty((n, self.n_points_, self.ndim_))
        scores = np.empty((n, self.n_points_))
        cycle = np.empty((n, self.n_points_)) if self.cycle_check else None
        bar = progress_bar(self.verbose and progress and n > 1, n, "landmarks")
        try:
            for i in range(0, n, self.batch_size):
                ims = [self._load(items[k], offset + k) for k in range(i, min(n, i + self.batch_size))]
                embs = self._embed(embedder, ims)
                if self.ncc_radius_mm is None:
                    ims = None  # only the intensity refinement reads the images again
                for j, emb in enumerate(embs):
                    res = match_points(self.template_global_, self.template_local_, emb, **kwargs)
                    points[i + j] = res.points
                    scores[i + j] = res.scores
                    if self.consistency == "affine":
                        self._affine_repair(emb, points[i + j], scores[i + j], kwargs)
                    elif self.consistency == "coarse":
                        self._coarse_repair(emb, points[i + j], scores[i + j], kwargs)
                    if self.ncc_radius_mm is not None:
                        points[i + j] = ncc_refine(
                            self.ncc_patches_, ims[j], points[i + j], step=self.ncc_step_mm_,
                            search_mm=resolve_search_mm(self.ncc_search_mm, emb),
                            penalty=float(self.ncc_penalty))[0]
                    if self.cycle_check:
                        d = [cycle_consistency(t_emb, t_pts, emb, forward=res, **kwargs).distances_mm
                             for t_emb, t_pts in zip(self.template_embeddings_, self.template_points_)]
                        cycle[i + j] = np.mean(d, axis=0)
                    if bar is not None:
                        bar.update(1)
                del embs, ims
        finally:
            if bar is not None:
                bar.close()
        return points, scores, cycle

    def _predict_parallel(self, items, n_jobs):
        """Images embedded and matched in ``n_jobs`` threads, one image per task, each thread with
        its share of the torch threads (torch and numpy release the GIL in their kernels; no copy
        of the model or the images into other processes); results in order."""
        import copy
        per = max(1, torch.get_num_threads() // n_jobs)
        embedder = self.embedder_
        if hasattr(embedder, "get_params") and "n_threads" in embedder.get_params(deep=False):
            if hasattr(embedder, "_network_for_inference"):
                embedder._network_for_inference()  # built once, then shared by the copy's threads
            embedder = copy.copy(embedder)  # same network; its own thread count, no nested jobs
            embedder.n_threads = per
            embedder.n_jobs = None
        bar = progress_bar(self.verbose, len(items), "landmarks")
        parts = []
        try:
            for part in thread_map(lambda i: self._predict_items([items[i]], i, embedder=embedder),
                                   len(items), n_jobs, torch_threads=per):
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

    def _fit_coarse_grid(self, embedder, image, embedding):
        """Template points on a grid in the body of the (first) template, and their vectors, for
        ``consistency="coarse"``."""
        from .registration import auto_body_threshold, body_grid_points
        spacing = self.coarse_grid_mm
        if spacing == "auto":
            spacing = 2.0 * float(np.max(embedding.local_map.geometry.spacing))
        spacing = float(spacing)
        pts, _, _ = body_grid_points(image, spacing, self.coarse_max_points, np.random.default_rng(0),
                                     auto_body_threshold(embedder, image))
        if len(pts) < 3 * (self.ndim_ + 1):
            # too small a body for a field: predict falls back to the affine check
            pts = np.zeros((0, self.ndim_))
            gv = np.zeros((0, self.template_global_.shape[1]), np.float32)
            lv = np.zeros((0, self.template_local_.shape[1]), np.float32)
        else:
            gv, lv = (v.detach().float().cpu().numpy() for v in template_vectors(embedding, pts))
        self.coarse_points_ = pts
        self.coarse_global_ = gv
        self.coarse_local_ = lv
        self.coarse_grid_mm_ = spacing
        self.coarse_geometry_ = image.geometry

    def _coarse_repair(self, emb, pts, scores, kwargs):
        """SAM-coarse prior (in place), SAMDeformableRegistrar's steps without a second embedding:
        (1) the template's grid points matched on the global map alone, a RANSAC affine fitted to
        the confident ones (inlier distance one global voxel); (2) each grid point searched again on
        the local map within half a global voxel of where the affine puts it; (3) the residuals
        smoothed into a displacement field (outliers dropped, ``coarse_smoothing_mm``); (4) each
        landmark searched again (``mode``) within ``consistency_tol_mm`` of where the affine and the
        field put it. Falls back to the affine check when too few grid matches are confident, or
        when fewer than half of the landmarks' own matches lie within half a global voxel of where the
        prior puts them (a wrong grid affine)."""
        from .registration import (AffineTransform, RegistrationError, field_from_matches,
                                   field_geometry, fit_affine)
        d = self.ndim_
        g_sp = float(np.max(emb.global_map.geometry.spacing))
        l_sp = float(np.max(emb.local_map.geometry.spacing))
        x = self.coarse_points_
        if len(x) == 0 or kwargs["mode"] == "global":  # no field, or no fine search to restrict
            return self._affine_repair(emb, pts, scores, kwargs)
        coarse = match_points(self.coarse_global_, None, emb, mode="global", chunk_size=self.chunk_size)
        keep = coarse.scores >= _COARSE_SCORE_THRESHOLD
        if keep.sum() < 3 * (d + 1):
            return self._affine_repair(emb, pts, scores, kwargs)
        try:
            A, _ = fit_affine(x[keep], coarse.points[keep], robust="ransac", residual_threshold_mm=g_sp,
                              n_trials=_COARSE_RANSAC_TRIALS, rng=0)
        except RegistrationError:
            return self._affine_repair(emb, pts, scores, kwargs)
        affine = AffineTransform(A)
        fine = match_points(None, self.coarse_local_, emb, mode="local", chunk_size=self.chunk_size,
                            centers_world=affine.transform_points(x),
                            search_radius_mm=_COARSE_FINE_RADIUS * g_sp)
        smoothing = self.coarse_smoothing_mm
        smoothing = 2.0 * self.coarse_grid_mm_ if smoothing == "auto" else float(smoothing)
        geom = field_geometry(self.coarse_geometry_, max(smoothing / 4.0, l_sp / 2.0), smoothing)
        u = affine.inverse().transform_points(fine.points) - x
        field, _ = field_from_matches(x, u, fine.scores, geom, smoothing_mm=smoothing,
                                      score_threshold=_COARSE_SCORE_THRESHOLD,
                                      max_displacement_mm=np.inf, outlier_factor=2.5, floor_mm=0.5 * l_sp)
        prior = affine.transform_points(field.transform_points(self.template_points_[0]))
        # a wrong grid affine (repeated anatomy on a coarse global map) disagrees with most of the
        # landmarks' own matches: keep those, checked by the landmarks' own affine, instead
        agree = np.linalg.norm(pts - prior, axis=1) <= 0.5 * g_sp
        if agree.mean() < 0.5:
            return self._affine_repair(emb, pts, scores, kwargs)
        tol = self.consistency_tol_mm
        kw = dict(kwargs, search_radius_mm=l_sp if tol == "auto" else float(tol))
        out = match_points(self.template_global_, self.template_local_, emb, centers_world=prior, **kw)
        pts[:] = out.points
        scores[:] = out.scores

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
