"""SAM-affine registration (paper §III-E): an affine transform from SAM matches of a point grid.

:class:`SAMAffineRegistrar` samples a grid of points on the fixed image, drops points outside the
body, matches them into the moving image (one batched ``match_points`` call), keeps confident
matches (score threshold, optionally cycle consistency) and fits the affine. The paper fits plain
least squares in one pass; samlearn's defaults fit robustly (RANSAC) and add a refinement pass on
the moving image resampled through the first affine (``robust=None, n_refinements=0`` is the
paper's). The transform maps FIXED world points to MOVING world points (the direction convention
of :mod:`samlearn.transforms`).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Optional

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._utils.docs import fill_doc_with
from .._utils.validation import Interval, Options
from ..exceptions import RegistrationError, RegistrationQualityWarning
from ..image import Image, ImageGeometry, check_images
from ..matching import (DEFAULT_CHUNK_SIZE, MODES, auto_body_threshold, body_grid_points, cycle_consistency,
                        match_points, template_vectors)
from ..matching.ncc import NCC_PARAMETER_CONSTRAINTS, NCCRefiner, resolve_search_mm
from ..matching.search import SEARCH_RADIUS_CONSTRAINT
from ..transforms import ROBUST_FITS, AffineTransform, fit_affine
from ._base import POSITIVE_INT, POSITIVE_MM, SCORE, FrozenComponentMixin, embed_images, resolve_embedder
from .quality import assess_affine

__all__ = ["SAMAffineRegistrar", "Matches", "REGISTRAR_DOCS"]

#: the parameters of :class:`SAMAffineRegistrar`, which :class:`SAMDeformableRegistrar` inherits (the
#: intensity refinement's apart: they come last in both signatures)
#: how far inside the moving image's faces a mapped fixed point must lie to be matched in the
#: refinement passes (a patch cut by the face embeds differently from the whole anatomy)
FOV_MARGIN_MM = 16.0

REGISTRAR_DOCS = {"registrar_parameters": """
%(embedder)s
grid_spacing_mm : float, default 16
    Spacing of the grid of fixed-image points that are matched.
max_points : int, default 500
    At most this many in-body grid points are matched (a random subset, drawn with
    ``random_state``, when the grid holds more).
score_threshold : float in [-1, 1], default 0.5
    Matches with a lower peak score ``(S^g + S^l) / 2`` are dropped before fitting.
cycle_threshold_mm : float or None, default None
    Also drop matches whose forward-backward (cycle) distance exceeds this (mm); costs a second
    search. None: no cycle check.
robust : {"ransac", "huber", None}, default "ransac"
    Robust fit against wrong matches (samlearn's; :func:`samlearn.transforms.fit_affine`);
    None is plain least squares (the paper's).
residual_threshold_mm : "auto" or float, default "auto"
    RANSAC inlier distance / Huber transition (mm). "auto": RANSAC uses 1.5 voxels of the
    moving image's local embedding grid (its largest spacing); Huber estimates it from the
    residuals (1.345 x 1.4826 x median).
ransac_trials : int, default 1000
    Minimal samples RANSAC draws.
body_threshold : "auto", float or None, default "auto"
    Grid points where the fixed image is not body are dropped
    (:func:`samlearn.matching.body_mask`: intensity above the threshold, largest component,
    holes filled). "auto": -500 HU when the embedder normalises intensities as CT
    (``config_["intensity"] == "ct"``; 3D images when it does not say), otherwise the X-ray
    rule (above the 2nd percentile + 5% of the 2nd-98th percentile range: only the darkest
    background is dropped). A number: raw intensity threshold. None: keep every grid point.
%(search_radius_mm)s
%(mode)s
n_refinements : int, default 1
    Refinement passes after the first fit (samlearn's; 0 is the paper's one-pass SAM-affine).
    Each pass resamples the moving image through the current affine onto the fixed image's
    working grid, embeds it again, matches the same points in windows of
    ``refine_radius_mm`` of the local map centred on themselves (the affine is the prior, so
    the coarse global map is not used) and composes the fitted correction. Costs one more
    embedding per pass.
refine_radius_mm : float, default 12
    Search radius (mm) of the refinement passes.
random_state : int or None, default None
    Seeds the subsampling of grid points and RANSAC (a ``numpy.random.Generator`` per fit).
%(batch_size)s
%(chunk_size)s""",
                  "registrar_ncc_parameters": """
ncc_radius_mm : float or None, default None
    Intensity refinement of the matches made on aligned images (:mod:`samlearn.matching.ncc`;
    samlearn's, off when None): in every refinement pass (and in
    ``SAMDeformableRegistrar``'s warped dense passes), each SAM match in the resampled moving
    image is moved to the shift of best normalised cross-correlation between the fixed image's
    intensity patch of this half-width (mm) and the resampled image, within
    ``ncc_search_mm``. The images are compared only after the affine has aligned them, so
    rotation and scale do not disturb the correlation; it needs ``n_refinements >= 1``
    (``SAMDeformableRegistrar``: or a warped dense pass) and images of one modality (block
    matching, as in NiftyReg's aladin): a hybrid that adds intensity precision to SAM's
    robust correspondences.
%(ncc_search_mm)s
%(ncc_penalty)s"""}


@dataclass
class Matches:
    """Confident point matches of a registration.

    Each parameter is kept as an attribute of the same name; ``len(matches)`` is n.

    Parameters
    ----------
    fixed_points : ndarray of shape (n, ndim)
        Points of the fixed image, world mm.
    moving_points : ndarray of shape (n, ndim)
        Their matches in the moving image, world mm.
    scores : ndarray of shape (n,)
        Peak scores, in [-1, 1].
    cycle_distances_mm : ndarray of shape (n,) or None, default None
        Forward-backward distances (mm) when cycle consistency was checked, else None.
    """

    fixed_points: np.ndarray
    moving_points: np.ndarray
    scores: np.ndarray
    cycle_distances_mm: Optional[np.ndarray] = field(default=None)

    def __len__(self):
        return len(self.fixed_points)


@fill_doc_with(REGISTRAR_DOCS)
class SAMAffineRegistrar(FrozenComponentMixin, BaseEstimator):
    """SAM-affine registration (paper §III-E): an affine transform from SAM matches of a point grid.

    ``fit(fixed, moving)`` estimates ``transform_``, an :class:`~samlearn.transforms.AffineTransform`
    mapping FIXED world points to MOVING world points (the direction convention of
    :mod:`samlearn.transforms`); ``transform_.resample(moving)`` brings the moving image onto the
    fixed grid. ``SAMAffineRegistrar(robust=None, n_refinements=0)`` is the paper's one-pass
    least-squares fit (with ``search_radius_mm=None`` also its whole-image search).

    Parameters
    ----------
    %(registrar_parameters)s
    %(registrar_ncc_parameters)s

    Attributes
    ----------
    transform_ : AffineTransform
        Fixed -> moving world mm; its ``reference`` is the fixed grid.
    matches_ : Matches
        The confident matches the fit saw.
    inlier_mask_ : ndarray of bool, one per match in ``matches_``
        The matches the robust fit kept.
    n_grid_points_, n_body_points_, n_matched_ : int
        Grid points, of which in the body (and matched, after ``max_points``); of these,
        ``len(matches_)`` were confident.
    residuals_mm_ : ndarray, one per match in ``matches_``
        Distances between ``transform_(fixed)`` and the matched points.
    n_refinements_done_ : int
        Refinement passes that changed the affine.
    quality_ : RegistrationQuality
        How far the matches support the affine (:func:`samlearn.apps.quality.assess_affine`): the
        fraction of the grid points mapped inside the moving image whose first-pass match agrees
        with it, and a split-half estimate of its error. When
        ``quality_.ok`` is False the fit warns (:class:`~samlearn.exceptions.RegistrationQualityWarning`)
        and the transform should not be trusted.
    timings_ : dict
        Seconds of each stage (embed, match, fit, refine, total).
    embedder_ : SAMEmbedder
        The embedder used (the loaded model when ``embedder`` is a path).
    ndim_ : int
        Image dimension.

    See Also
    --------
    samlearn.SAMDeformableRegistrar : Adds a smooth displacement field.
    samlearn.transforms.fit_affine : The (robust) affine fit.
    """

    _parameter_constraints = {
        "grid_spacing_mm": [POSITIVE_MM],
        "max_points": [POSITIVE_INT],
        "score_threshold": [SCORE],
        "cycle_threshold_mm": [POSITIVE_MM, None],
        "robust": [Options(*ROBUST_FITS)],
        "residual_threshold_mm": [Options("auto"), POSITIVE_MM],
        "ransac_trials": [POSITIVE_INT],
        "body_threshold": [Options("auto"), Interval(Real, None, None), None],
        "search_radius_mm": SEARCH_RADIUS_CONSTRAINT,
        "mode": [Options(*MODES)],
        "n_refinements": [Interval(Integral, 0, None)],
        "refine_radius_mm": [POSITIVE_MM],
        "random_state": ["random_state"],
        "batch_size": [POSITIVE_INT],
        "chunk_size": [POSITIVE_INT],
        **NCC_PARAMETER_CONSTRAINTS,
    }

    def __init__(self, *, embedder=None, grid_spacing_mm=16.0, max_points=500, score_threshold=0.5,
                 cycle_threshold_mm=None, robust="ransac", residual_threshold_mm="auto",
                 ransac_trials=1000, body_threshold="auto", search_radius_mm="auto", mode="sum",
                 n_refinements=1, refine_radius_mm=12.0, random_state=None, batch_size=1,
                 chunk_size=DEFAULT_CHUNK_SIZE, ncc_radius_mm=None, ncc_search_mm="auto", ncc_penalty=0.05):
        self.embedder = embedder
        self.grid_spacing_mm = grid_spacing_mm
        self.max_points = max_points
        self.score_threshold = score_threshold
        self.cycle_threshold_mm = cycle_threshold_mm
        self.robust = robust
        self.residual_threshold_mm = residual_threshold_mm
        self.ransac_trials = ransac_trials
        self.body_threshold = body_threshold
        self.search_radius_mm = search_radius_mm
        self.mode = mode
        self.n_refinements = n_refinements
        self.refine_radius_mm = refine_radius_mm
        self.ncc_radius_mm = ncc_radius_mm
        self.ncc_search_mm = ncc_search_mm
        self.ncc_penalty = ncc_penalty
        self.random_state = random_state
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        self._validate_params()
        if self.ncc_radius_mm is not None and not self._has_aligned_pass():
            raise ValueError("ncc_radius_mm needs a match on the moving image resampled through the "
                             "affine (the intensity refinement compares aligned images): n_refinements "
                             ">= 1 (SAMDeformableRegistrar: or rematch='warped', or n_coarse_passes > 1)")

    def _check_pair(self, fixed, moving, ndim):
        out = []
        for name, img in (("fixed", fixed), ("moving", moving)):
            if isinstance(img, (list, tuple)):
                raise TypeError(f"{name} must be one image (Image, SimpleITK.Image or path), got a "
                                f"{type(img).__name__}")
            im = check_images(img, name=name)[0]
            if im.ndim != ndim:
                raise ValueError(f"{name} is {im.ndim}D but the embedder was fitted on {ndim}D images "
                                 f"(embedder.ndim_={ndim})")
            out.append(im)
        return out

    def _body_threshold(self, embedder, image: Image):
        bt = self.body_threshold
        if bt is None:
            return None
        if isinstance(bt, str):  # "auto"
            return auto_body_threshold(embedder, image)
        return float(bt)

    def _sample_points(self, embedder, fixed: Image, spacing_mm, max_points, rng):
        return body_grid_points(fixed, spacing_mm, max_points, rng, self._body_threshold(embedder, fixed))

    def _match_kwargs(self):
        return dict(mode=self.mode, search_radius_mm=self.search_radius_mm, refine=True,
                    chunk_size=self.chunk_size)

    def _residual_threshold(self, moving_emb):
        if isinstance(self.residual_threshold_mm, str):
            if self.robust == "ransac":
                return 1.5 * float(np.max(moving_emb.local_map.geometry.spacing))
            return None
        return float(self.residual_threshold_mm)

    # ------------------------------------------------------------------ fit
    def fit(self, fixed, moving, y=None):
        """Register ``moving`` to ``fixed``: estimate ``transform_`` and the diagnostics.

        Parameters
        ----------
        fixed : Image, SimpleITK image or path
            The fixed image; its grid is the reference of ``transform_``.
        moving : Image, SimpleITK image or path
            The moving image, of the same dimension.
        y : None
            Ignored (scikit-learn API).

        Returns
        -------
        self : SAMAffineRegistrar
            The fitted registrar; ``transform_`` maps FIXED world points to MOVING world points.

        Raises
        ------
        RegistrationError
            When too few grid points lie in the body or too few matches are confident.
        """
        t_start = time.perf_counter()
        self._check_params()
        embedder = resolve_embedder(self.embedder, type(self).__name__)
        ndim = int(embedder.ndim_)
        fixed_im, moving_im = self._check_pair(fixed, moving, ndim)
        rng = np.random.default_rng(np.random.SeedSequence(self.random_state))
        timings = {}
        t0 = time.perf_counter()
        fixed_emb, moving_emb = embed_images(embedder, [fixed_im, moving_im], self.batch_size)
        timings["embed"] = time.perf_counter() - t0

        pts, gv, lv = self._fit_affine(embedder, fixed_im, fixed_emb, moving_emb, rng, timings)
        # the embedding the latest matches were made in, and the transform that maps its world
        # points to the moving image's (identity for the moving image itself)
        ref = (moving_emb, AffineTransform.identity(ndim), moving_im)
        if self.n_refinements:
            ref = self._refine_affine(embedder, fixed_im, moving_im, fixed_emb, pts, gv, lv, ref, rng,
                                      timings)
        self.embedder_ = embedder
        self.ndim_ = ndim
        self.quality_ = assess_affine(self.transform_, pts, self._first_matches, moving_im.geometry,
                                      self.matches_.fixed_points, self.matches_.moving_points,
                                      self.inlier_mask_, self.residuals_mm_)
        if not self.quality_.ok:
            warnings.warn(RegistrationQualityWarning(
                f"{type(self).__name__}: the affine is likely wrong: " + "; ".join(self.quality_.reasons)),
                stacklevel=2)
        self._after_affine(embedder, fixed_im, moving_im, fixed_emb, moving_emb, ref, rng, timings)
        timings["total"] = time.perf_counter() - t_start
        self.timings_ = timings
        return self

    def _fit_affine(self, embedder, fixed_im, fixed_emb, moving_emb, rng, timings):
        t0 = time.perf_counter()
        pts, n_grid, n_body = self._sample_points(embedder, fixed_im, float(self.grid_spacing_mm),
                                                  int(self.max_points), rng)
        need = 3 * (fixed_im.ndim + 1)
        if len(pts) < need:
            raise RegistrationError(
                f"only {len(pts)} of {n_grid} grid points lie in the body of the fixed image (need "
                f"{need}); lower grid_spacing_mm ({self.grid_spacing_mm}) or body_threshold "
                f"({self.body_threshold!r}, None keeps every point)")
        kwargs = self._match_kwargs()
        gv, lv = template_vectors(fixed_emb, pts)
        res = match_points(gv, lv, moving_emb, **kwargs)
        keep = res.scores >= float(self.score_threshold)
        cyc = None
        if self.cycle_threshold_mm is not None:
            cyc = cycle_consistency(fixed_emb, pts, moving_emb, forward=res, **kwargs).distances_mm
            keep &= cyc <= float(self.cycle_threshold_mm)
        timings["match"] = time.perf_counter() - t0
        n_keep = int(keep.sum())
        if n_keep < need:
            raise RegistrationError(
                f"only {n_keep} of {len(pts)} matches passed score_threshold={self.score_threshold}"
                + (f" and cycle_threshold_mm={self.cycle_threshold_mm}" if cyc is not None else "")
                + f" (need {need}; scores ranged {res.scores.min():.3f}..{res.scores.max():.3f}); "
                  f"lower the threshold(s) or check that the images show the same body region")
        # the first-pass matches, independent of any transform: the evidence quality_ weighs
        self._first_matches = np.where(keep[:, None], res.points, np.nan)
        t0 = time.perf_counter()
        x, y = pts[keep], res.points[keep]
        matrix, inl = fit_affine(x, y, robust=self.robust,
                                 residual_threshold_mm=self._residual_threshold(moving_emb),
                                 n_trials=int(self.ransac_trials), rng=rng)
        timings["fit"] = time.perf_counter() - t0
        self.transform_ = AffineTransform(matrix, reference=fixed_im.geometry)
        self.matches_ = Matches(x, y, res.scores[keep], None if cyc is None else cyc[keep])
        self.inlier_mask_ = inl
        self.residuals_mm_ = np.linalg.norm(self.transform_.transform_points(x) - y, axis=1)
        self.n_grid_points_ = n_grid
        self.n_body_points_ = n_body
        self.n_matched_ = len(pts)
        self.n_refinements_done_ = 0
        return pts, gv, lv

    def _warp_and_embed(self, embedder, fixed_im, moving_im, transform):
        """The moving image resampled through ``transform`` onto the fixed image's working grid,
        and its embedding: ``(image, embedding)``."""
        warped = transform.resample(moving_im, reference=self._working_geometry(embedder, fixed_im))
        warped.source = None if moving_im.source is None else f"{moving_im.source} (affine-resampled)"
        return warped, embed_images(embedder, [warped], 1)[0]

    def _has_aligned_pass(self) -> bool:
        """Whether any matching is done on the affinely resampled moving image (where NCC applies)."""
        return bool(self.n_refinements)

    def _ncc(self, fixed_im, pts):
        """An NCCRefiner of the fixed points (None when ``ncc_radius_mm`` is None)."""
        if self.ncc_radius_mm is None:
            return None
        return NCCRefiner(fixed_im, pts, float(self.ncc_radius_mm), float(self.ncc_penalty))

    def _ncc_points(self, refiner, image, emb, points):
        """``points`` matched in ``image`` (embedding ``emb``), refined by ``refiner`` when there is one."""
        if refiner is None:
            return points
        return refiner(image, points, resolve_search_mm(self.ncc_search_mm, emb))[0]

    def _refine_affine(self, embedder, fixed_im, moving_im, fixed_emb, pts, gv, lv, ref, rng, timings):
        """Refinement passes: resample the moving image through the current affine onto the fixed
        working grid, embed it, match the same grid points again in small windows of the local
        map centred on themselves (the images are now nearly aligned, so the match is a residual
        correction ``C``, free of the rotation / scale the embeddings are not invariant to), fit
        ``C`` robustly and compose: ``T <- T o C``."""
        t0 = time.perf_counter()
        need = 3 * (fixed_im.ndim + 1)
        kwargs = dict(mode="local", search_radius_mm=float(self.refine_radius_mm), refine=True,
                      chunk_size=self.chunk_size)
        refiner = self._ncc(fixed_im, pts)
        for _ in range(int(self.n_refinements)):
            current = self.transform_
            w_im, w_emb = self._warp_and_embed(embedder, fixed_im, moving_im, current)
            res = match_points(gv, lv, w_emb, centers_world=pts, **kwargs)
            matched = self._ncc_points(refiner, w_im, w_emb, res.points)
            # partial views: a fixed point the current affine puts outside (or at the edge of) the
            # moving image has no counterpart there, only padding; it must not drive the fit
            keep = (res.scores >= float(self.score_threshold)) & self._overlaps(moving_im, current, pts)
            cyc = None
            if self.cycle_threshold_mm is not None:
                cyc = cycle_consistency(fixed_emb, pts, w_emb, forward=res, centers_world=pts,
                                        **kwargs).distances_mm
                keep &= cyc <= float(self.cycle_threshold_mm)
            if keep.sum() < need:
                break  # keep the current affine: too few confident matches to correct it
            x, y = pts[keep], matched[keep]
            corr, inl = fit_affine(x, y, robust=self.robust,
                                   residual_threshold_mm=self._residual_threshold(w_emb),
                                   n_trials=int(self.ransac_trials), rng=rng)
            self.transform_ = AffineTransform(current.matrix @ corr, reference=fixed_im.geometry)
            y_moving = current.transform_points(y)
            self.matches_ = Matches(x, y_moving, res.scores[keep], None if cyc is None else cyc[keep])
            self.inlier_mask_ = inl
            self.residuals_mm_ = np.linalg.norm(self.transform_.transform_points(x) - y_moving, axis=1)
            self.n_refinements_done_ += 1
            ref = (w_emb, current, w_im)
        timings["refine"] = time.perf_counter() - t0
        return ref

    @staticmethod
    def _overlaps(moving_im: Image, transform, pts) -> np.ndarray:
        """Which fixed points ``transform`` maps at least ``FOV_MARGIN_MM`` inside the moving image."""
        g = moving_im.geometry
        return g.contains(transform.transform_points(pts), margin=-FOV_MARGIN_MM / float(g.spacing.max()))

    @staticmethod
    def _working_geometry(embedder, fixed_im: Image) -> ImageGeometry:
        """Resample warped images straight onto the embedder's working grid for the fixed image
        when it is known (the embedder then skips its own resampling and both embeddings share
        one grid), else onto the fixed grid."""
        working = getattr(embedder, "_inference_config", None)
        cfg = (working() if getattr(embedder, "config_", None) and working is not None
               else getattr(embedder, "config_", None) or {})
        sp = cfg.get("spacing_mm")
        if sp is not None:
            return fixed_im.geometry.canonical(spacing=sp)
        return fixed_im.geometry

    def _after_affine(self, embedder, fixed_im, moving_im, fixed_emb, moving_emb, ref, rng, timings):
        """Hook for SAM-coarse; nothing for the affine registrar."""

    # ------------------------------------------------------------------ helpers
    def transform_points(self, points) -> np.ndarray:
        """Map FIXED world points to MOVING world points (``transform_.transform_points``).

        Parameters
        ----------
        points : array-like of shape (n, ndim) or (ndim,)
            Points of the fixed image, world mm (x, y[, z]).

        Returns
        -------
        ndarray of shape (n, ndim) or (ndim,)
            The corresponding points of the moving image, world mm.
        """
        check_is_fitted(self, "transform_")
        return self.transform_.transform_points(points)

    def resample(self, moving_image, **kwargs) -> Image:
        """Resample the moving image onto the fixed grid (``transform_.resample``).

        The output voxel at fixed world position ``x`` takes the moving image's value at
        ``transform_points(x)``.

        Parameters
        ----------
        moving_image : Image, SimpleITK image or path
            The moving image.
        **kwargs
            Arguments of :meth:`samlearn.transforms.AffineTransform.resample`: ``reference`` (the
            output grid; default the fixed image's), ``interpolator`` ("linear", "nearest" or
            "bspline"), ``default_value`` (outside the moving image; default its minimum).

        Returns
        -------
        Image
            The moving image on the fixed grid.
        """
        check_is_fitted(self, "transform_")
        return self.transform_.resample(moving_image, **kwargs)
