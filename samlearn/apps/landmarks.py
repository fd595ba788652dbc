"""One-shot landmark detection: mark points on one template image, find them in any other image.

:class:`OneShotLandmarkDetector` wraps a fitted embedder (a ``SAMEmbedder`` or anything with the
same ``transform(images) -> list[Embedding]`` / ``ndim_`` interface) and the similarity search of
:mod:`samlearn.matching` in a scikit-learn estimator: ``fit`` reads the template vectors,
``predict`` returns world-mm points per query image. The search is the paper's (§III-D); the
coarse-to-fine window, the consistency check of all points of a query and the intensity
refinement are samlearn's additions (each can be switched off, see the class docstring).
"""
from __future__ import annotations

import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._utils.docs import fill_doc
from .._utils.parallel import N_JOBS_CONSTRAINT, effective_n_jobs, limit_threads, progress_bar, thread_map_list
from .._utils.validation import Interval, Options
from ..exceptions import RegistrationError
from ..image import check_images, check_points, image_items, load_item
from ..matching import (DEFAULT_CHUNK_SIZE, MODES, auto_body_threshold, body_grid_points, combine_templates,
                        cycle_consistency, match_points, template_vectors)
from ..matching.ncc import NCC_PARAMETER_CONSTRAINTS, ncc_refine, resolve_search_mm, template_patches
from ..matching.search import SEARCH_RADIUS_CONSTRAINT
from ..transforms import AffineTransform, field_from_matches, field_geometry, fit_affine
from ._base import POSITIVE_INT, POSITIVE_MM, FrozenComponentMixin, embed_images, resolve_embedder

__all__ = ["OneShotLandmarkDetector"]

#: grid matches of ``consistency="coarse"`` below this peak score are not used (the registrars' default)
_COARSE_SCORE_THRESHOLD = 0.5
#: RANSAC trials of its affine step: hundreds of grid matches, most of them inliers, so 100 trials
#: miss an all-inlier sample with probability (1 - 0.5^3)^100 = 2e-6 even at half inliers
_COARSE_RANSAC_TRIALS = 100
#: the grid points' local search around the affine's prediction, in global voxels
_COARSE_FINE_RADIUS = 0.5
#: "auto" or a positive number of mm
_AUTO_MM = [Options("auto"), POSITIVE_MM]


def _embedder_threads(embedder):
    """The embedder's ``n_threads`` when it has a valid one (a SAMEmbedder), else None."""
    n = getattr(embedder, "n_threads", None)
    return int(n) if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 else None


@fill_doc
class OneShotLandmarkDetector(FrozenComponentMixin, BaseEstimator):
    """Find landmarks marked on one (or a few) template images in new images (SAM §III-D).

    ``fit(template_image, template_points)`` reads the template's global and local embedding
    vectors at the points; ``predict(images)`` finds, in each image, the peak of the similarity
    maps for every point (:func:`samlearn.matching.match_points`). No labels beyond the
    template's points are needed.

    The paper's rule is the peak of ``(S^g + S^l) / 2`` over the whole image, each point on its
    own. samlearn's defaults add a coarse-to-fine window (``search_radius_mm``), a joint check
    of all points of a query (``consistency``) and sub-voxel peaks (``refine``);
    ``OneShotLandmarkDetector(search_radius_mm=None, consistency=None, refine=False)`` is the
    paper's rule (see the "paper vs samlearn" page of the documentation).

    Parameters
    ----------
    %(embedder)s
    %(mode)s
    %(search_radius_mm)s
    refine : bool, default True
        Sub-voxel (parabola) refinement of each peak (samlearn's; the paper reports the voxel).
    cycle_check : bool, default False
        Also compute the forward-backward distance (mm) of every match (query -> template; the
        mean over templates), returned by ``predict(..., return_scores=True)``. Keeps the template
        embeddings in memory.
    %(batch_size)s
    %(chunk_size)s
    consistency : {"coarse", "affine", None}, default "coarse"
        Joint check of all points of a query (samlearn's), against the rare global mismatches (a
        point matched to similar-looking anatomy far away) that one point alone cannot detect.

        * ``"coarse"`` (SAM-coarse prior): ``fit`` also reads the vectors of a grid of template
          points in the body (``coarse_grid_mm``, at most ``coarse_max_points``); ``predict``
          matches them (global map, then local map near a robust affine), smooths their residuals
          into a displacement field (``coarse_smoothing_mm``) as ``SAMDeformableRegistrar`` does,
          and searches every landmark again within ``consistency_tol_mm`` of where the affine and
          the field put it (no second embedding). With several templates the grid comes from the
          first. Falls back to ``"affine"`` when the grid matches are too few or disagree with
          most of the landmarks' own matches, and with ``mode="global"``. Chosen as the default
          on the cephalometric development split and checked on the demo's validation phantoms
          (benchmarks/RESULTS.md).
        * ``"affine"``: fit an affine from the template points to the matched points robustly
          (RANSAC) and search every point whose match lies more than ``consistency_tol_mm`` from
          the affine's prediction again, its coarse peak restricted to within
          ``consistency_tol_mm`` of that prediction. Needs at least ndim + 2 points.
        * None: each point on its own (the paper's rule).
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
    ncc_radius_mm : float or None, default None
        Intensity refinement (:mod:`samlearn.matching.ncc`; samlearn's, off when None): ``fit``
        keeps the template's intensity patch of this half-width (mm, world axes) around every
        point, and ``predict`` moves each match to the shift of best normalised cross-correlation
        with the query's intensities within ``ncc_search_mm`` (sub-step parabola; never farther).
        It sharpens matches that are right to about one local voxel; it cannot repair a wrong
        structure. Off by default (it was chosen on X-rays only; benchmarks/RESULTS.md).
    %(ncc_search_mm)s
    %(ncc_penalty)s
    n_jobs : int or None, default None
        ``predict`` on several images with an embedder on the CPU: images are embedded and
        matched in ``n_jobs`` threads, each with its share of the torch threads. None: 1; -1: all
        cores. One job runs all of its work (matching included) with the embedder's
        ``n_threads``. On a GPU, images go through the embedder ``batch_size`` at a time (a
        ``SAMEmbedder`` batches same-size images and prepares the next ones in the background).
    verbose : int, default 0
        Progress bar over the images in ``predict``.

    Attributes
    ----------
    embedder_ : SAMEmbedder
        The embedder used (the loaded model when ``embedder`` is a path).
    template_global_, template_local_ : ndarray of shape (n_points, C), float32
        Template vectors, averaged over templates (averaging vectors = averaging similarity maps).
    n_points_, ndim_, n_templates_ : int
        Number of landmarks, image dimension and number of templates.
    template_points_ : ndarray of shape (n_templates, n_points, ndim)
        Template points in world mm.
    template_embeddings_ : list of Embedding
        The templates' embeddings; only with ``cycle_check``.
    ncc_patches_ : ndarray of shape ``(n_templates, n_points, *grid)``, float32
        Template intensity patches; only with ``ncc_radius_mm``.
    ncc_step_mm_ : float
        Their sampling step; only with ``ncc_radius_mm``.
    coarse_points_ : ndarray of shape (n_grid, ndim)
        The template grid of ``consistency="coarse"`` (template world mm); this and the next four
        only with ``consistency="coarse"``.
    coarse_global_, coarse_local_ : ndarray of shape (n_grid, C), float32
        Its vectors.
    coarse_grid_mm_ : float
        Its spacing (mm).
    coarse_geometry_ : ImageGeometry
        The (first) template's geometry.

    See Also
    --------
    samlearn.SAMEmbedder : Trains the embedder.
    samlearn.matching.match_points : The search behind ``predict``.
    """

    _parameter_constraints = {
        "mode": [Options(*MODES)],
        "search_radius_mm": SEARCH_RADIUS_CONSTRAINT,
        "refine": ["boolean"],
        "cycle_check": ["boolean"],
        "batch_size": [POSITIVE_INT],
        "chunk_size": [POSITIVE_INT],
        "consistency": [Options("coarse", "affine"), None],
        "consistency_tol_mm": _AUTO_MM,
        "coarse_grid_mm": _AUTO_MM,
        "coarse_max_points": [POSITIVE_INT],
        "coarse_smoothing_mm": _AUTO_MM,
        **NCC_PARAMETER_CONSTRAINTS,
        "n_jobs": N_JOBS_CONSTRAINT,
        "verbose": [Interval(Integral, 0, None), "boolean"],
    }

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags

    # ------------------------------------------------------------------ validation
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
        """Read the template vectors (and patches, grid, embeddings that the options need).

        Parameters
        ----------
        template_image : image or list of images
            One template (``Image``, ``SimpleITK.Image`` or path), or several.
        template_points : array-like of shape (n_points, ndim), or one such array per template
            World mm in (x, y[, z]) order, inside the template; every template marks the same
            points in the same order (a list, or an array (n_templates, n_points, ndim)).

        Returns
        -------
        self : OneShotLandmarkDetector
            The fitted detector.

        Raises
        ------
        ValueError
            When the templates do not match the embedder's dimension, the point arrays do not
            match the templates, or a point lies outside its template.
        """
        self._validate_params()
        embedder = resolve_embedder(self.embedder, type(self).__name__)
        ndim = int(embedder.ndim_)
        images, point_sets = self._check_templates(template_image, template_points, ndim)
        embeddings = embed_images(embedder, images, self.batch_size)
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
        """Find the landmarks in each image.

        Parameters
        ----------
        images : image or list of images
            ``Image``, ``SimpleITK.Image`` or paths, of the templates' dimension; read lazily, one
            batch at a time.
        return_scores : bool, default False
            Also return the peak scores (and, with ``cycle_check``, the cycle distances).

        Returns
        -------
        points : ndarray of shape (n_images, n_points, ndim)
            Landmark positions, world mm of each image.
        scores : ndarray of shape (n_images, n_points)
            Peak scores in [-1, 1] (``samlearn.matching.MatchResult.scores``); only with
            ``return_scores``.
        cycle : ndarray of shape (n_images, n_points)
            Forward-backward distances (mm); only with ``return_scores`` and ``cycle_check``.
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
                embs = embed_images(embedder, ims, self.batch_size)
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
        per = max(1, torch.get_num_threads() // n_jobs)
        embedder = self.embedder_
        if hasattr(embedder, "get_params") and "n_threads" in embedder.get_params(deep=False):
            if hasattr(embedder, "_network_for_inference"):
                embedder._network_for_inference()  # built once, then shared by the copy's threads
            embedder = copy.copy(embedder)  # same network; its own thread count, no nested jobs
            embedder.n_threads = per
            embedder.n_jobs = None
        parts = thread_map_list(lambda i: self._predict_items([items[i]], i, embedder=embedder),
                                len(items), n_jobs, torch_threads=per, verbose=self.verbose,
                                desc="landmarks")
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
        """Negative mean radial error (mm) of the detected landmarks.

        Higher is better, as scikit-learn's model selection expects.

        Parameters
        ----------
        images : list of images
            ``Image``, ``SimpleITK.Image`` or paths.
        points : array-like of shape (n_images, n_points, ndim)
            The true landmarks, world mm; NaN rows (missing landmarks) are ignored.

        Returns
        -------
        float
            Minus the mean distance (mm) between ``predict(images)`` and ``points``.

        Raises
        ------
        ValueError
            When ``points`` has the wrong shape, infinite values or no finite landmark.
        """
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
