"""SAM-coarse registration (paper §III-E): SAM-affine, then a smooth displacement field from a
denser grid of SAM matches, composed with the affine."""
from __future__ import annotations

import time
from numbers import Real

import numpy as np

from .._utils.docs import fill_doc_with
from .._utils.validation import Interval, Options
from ..image import ImageGeometry
from ..matching import DEFAULT_CHUNK_SIZE, match_points, template_vectors
from ..transforms import AffineTransform, CompositeTransform, field_from_matches, field_geometry
from ._base import POSITIVE_INT, POSITIVE_MM
from .registration import REGISTRAR_DOCS, Matches, SAMAffineRegistrar

__all__ = ["SAMDeformableRegistrar"]


_REMATCH = ("original", "warped")


@fill_doc_with(REGISTRAR_DOCS)
class SAMDeformableRegistrar(SAMAffineRegistrar):
    """SAM-affine followed by SAM-coarse (paper §III-E): a smooth displacement field from a denser
    grid of SAM matches, composed with the affine.

    After the affine fit, fixed points on a grid of ``dense_grid_spacing_mm`` (in the body,
    stratified random positions) are matched again, each searched on the local map only within
    ``dense_search_radius_mm`` of where the affine puts it (the affine replaces the coarse global
    map as the prior). Matches below ``score_threshold`` are dropped; the residuals are smoothed
    into a field on a grid of ``field_spacing_mm`` by normalised Gaussian convolution (width
    ``smoothing_mm``; the field decays to zero away from the matches); matches that disagree with
    the smooth field by more than ``outlier_factor`` robust standard deviations are dropped and
    the field is estimated again. ``transform_`` is
    ``CompositeTransform([DisplacementField, AffineTransform])``: a fixed point ``x`` maps to
    ``A (x + u(x)) + t``.

    Parameters
    ----------
    %(registrar_parameters)s
    dense_grid_spacing_mm : float, default 6
        Spacing of the dense grid of fixed points.
    dense_max_points : int, default 6000
        At most this many dense points (a seeded random subset).
    dense_search_radius_mm : float, default 16
        Search radius (mm) of a dense point around where the affine puts it.
    field_spacing_mm : float, default 8
        Spacing of the displacement field's grid.
    smoothing_mm : float, default 32
        Width of the Gaussian smoothing of the residuals. The default comes from a small sweep on
        one real CT with a lite model (benchmarks/RESULTS.md); with a better-trained model,
        smaller widths should pay.
    max_displacement_mm : float, default 30
        Larger residuals are treated as wrong matches.
    outlier_factor : float, default 2.5
        Matches further from the smooth field than this many robust standard deviations are
        dropped before the field is estimated again.
    rematch : {"warped", "original"}, default "warped"
        Where the dense points are matched. ``"original"``: in the moving image's embedding (no
        second network pass); a match ``y`` gives the residual ``u = A^-1 (y - t) - x`` in fixed
        space. ``"warped"`` (the paper's way): in the embedding of the moving image resampled onto
        the fixed working grid through the affine (the one the last refinement pass made, else a
        new one), so both images are roughly aligned when they are compared (helps when the
        embeddings are not rotation invariant); a match ``y'`` there gives ``u = y' - x`` (up to
        the last refinement's correction).
    n_coarse_passes : int, default 1
        Passes after the first warp the moving image through the whole current transform onto
        the fixed working grid, embed it, match the same dense points within half of
        ``dense_search_radius_mm`` of themselves and put a correction field (same smoothing and
        outlier rule) in front of the chain: ``transform_`` becomes
        ``[field_k, ..., field_1, affine]``; one more embedding per pass.
    %(registrar_ncc_parameters)s

    Attributes
    ----------
    transform_ : CompositeTransform
        Fixed -> moving world mm: the fields, then the affine. ``transform_.save("t.h5")``
        writes it as one ITK composite transform that ``SimpleITK.ReadTransform``, ITK and ANTs
        read with the same meaning (:func:`samlearn.transforms.write_transform`).
    affine_transform_ : AffineTransform
        The affine alone.
    field_ : DisplacementField or CompositeTransform
        The field; with several passes a CompositeTransform of the fields, the last pass's first.
    n_coarse_passes_done_ : int
        Passes that made a field (the first included).
    dense_matches_ : Matches
        The dense matches of the last pass that made a field (``moving_points`` in the moving
        image).
    matches_, inlier_mask_, n_grid_points_, n_body_points_, n_matched_, residuals_mm_, timings_, embedder_, ndim_
        As in :class:`SAMAffineRegistrar` (of the affine fit).
    """

    _parameter_constraints = {
        **SAMAffineRegistrar._parameter_constraints,
        "dense_grid_spacing_mm": [POSITIVE_MM],
        "dense_max_points": [POSITIVE_INT],
        "dense_search_radius_mm": [POSITIVE_MM],
        "field_spacing_mm": [POSITIVE_MM],
        "smoothing_mm": [POSITIVE_MM],
        "max_displacement_mm": [POSITIVE_MM],
        "outlier_factor": [Interval(Real, 0, None, closed="neither")],
        "rematch": [Options(*_REMATCH)],
        "n_coarse_passes": [POSITIVE_INT],
    }

    def __init__(self, *, embedder=None, grid_spacing_mm=16.0, max_points=500, score_threshold=0.5,
                 cycle_threshold_mm=None, robust="ransac", residual_threshold_mm="auto",
                 ransac_trials=1000, body_threshold="auto", search_radius_mm="auto", mode="sum",
                 n_refinements=1, refine_radius_mm=12.0, random_state=None, batch_size=1,
                 chunk_size=DEFAULT_CHUNK_SIZE, dense_grid_spacing_mm=6.0, dense_max_points=6000,
                 dense_search_radius_mm=16.0, field_spacing_mm=8.0, smoothing_mm=32.0,
                 max_displacement_mm=30.0, outlier_factor=2.5, rematch="warped", n_coarse_passes=1,
                 ncc_radius_mm=None, ncc_search_mm="auto", ncc_penalty=0.05):
        super().__init__(embedder=embedder, grid_spacing_mm=grid_spacing_mm, max_points=max_points,
                         score_threshold=score_threshold, cycle_threshold_mm=cycle_threshold_mm,
                         robust=robust, residual_threshold_mm=residual_threshold_mm,
                         ransac_trials=ransac_trials, body_threshold=body_threshold,
                         search_radius_mm=search_radius_mm, mode=mode, n_refinements=n_refinements,
                         refine_radius_mm=refine_radius_mm, random_state=random_state,
                         batch_size=batch_size, chunk_size=chunk_size, ncc_radius_mm=ncc_radius_mm,
                         ncc_search_mm=ncc_search_mm, ncc_penalty=ncc_penalty)
        self.dense_grid_spacing_mm = dense_grid_spacing_mm
        self.dense_max_points = dense_max_points
        self.dense_search_radius_mm = dense_search_radius_mm
        self.field_spacing_mm = field_spacing_mm
        self.smoothing_mm = smoothing_mm
        self.max_displacement_mm = max_displacement_mm
        self.outlier_factor = outlier_factor
        self.rematch = rematch
        self.n_coarse_passes = n_coarse_passes

    def _check_params(self):
        super()._check_params()
        if self.mode == "global":
            raise ValueError("SAMDeformableRegistrar needs mode 'sum' or 'local' (its dense matches "
                             "are searched in windows of the local map)")

    def _has_aligned_pass(self) -> bool:
        passes = self.n_coarse_passes
        more = isinstance(passes, (int, np.integer)) and not isinstance(passes, bool) and passes > 1
        return bool(self.n_refinements) or self.rematch == "warped" or more

    def _after_affine(self, embedder, fixed_im, moving_im, fixed_emb, moving_emb, ref, rng, timings):
        t0 = time.perf_counter()
        affine = self.affine_transform_ = self.transform_
        pts, _, _ = self._sample_points(embedder, fixed_im, float(self.dense_grid_spacing_mm),
                                        int(self.dense_max_points), rng)
        gv, lv = template_vectors(fixed_emb, pts)
        ref_emb, ref_tx, ref_im = ref
        if self.rematch == "warped" and ref_emb is moving_emb:
            # no refinement pass left a warped embedding behind: make one with the final affine
            ref_im, ref_emb = self._warp_and_embed(embedder, fixed_im, moving_im, affine)
            ref_tx = affine
        elif self.rematch == "original":
            ref_emb, ref_tx, ref_im = moving_emb, AffineTransform.identity(fixed_im.ndim), moving_im
        # the intensity refinement compares aligned images only: not the first dense match with
        # rematch="original" (later passes match on warped images)
        aligned_later = int(self.n_coarse_passes) > 1
        refiner = self._ncc(fixed_im, pts) if self.rematch == "warped" or aligned_later else None
        # prior: where the affine puts each fixed point in the reference embedding's space
        prior = AffineTransform(np.linalg.inv(ref_tx.matrix) @ affine.matrix)
        kwargs = dict(mode="local", search_radius_mm=float(self.dense_search_radius_mm),
                      refine=True, chunk_size=self.chunk_size)
        res = match_points(gv, lv, ref_emb, centers_world=prior.transform_points(pts), **kwargs)
        matched = self._ncc_points(refiner if self.rematch == "warped" else None, ref_im, ref_emb,
                                   res.points)
        u = prior.inverse().transform_points(matched) - pts
        moving_pts = ref_tx.transform_points(matched)
        geom = self._field_geometry(fixed_im.geometry)
        field, kept = self._field_from_matches(pts, u, res.scores, geom, ref_emb)
        fields = [field]
        self.transform_ = CompositeTransform([field, affine], reference=fixed_im.geometry)
        scores = res.scores
        # later passes: the moving image warped through the whole current transform, the same
        # fixed points matched again in a window of half the first one's radius, a correction
        # field estimated the same way and put in front of the chain
        kwargs["search_radius_mm"] = 0.5 * float(self.dense_search_radius_mm)
        for _ in range(int(self.n_coarse_passes) - 1):
            current = self.transform_
            w_im, w_emb = self._warp_and_embed(embedder, fixed_im, moving_im, current)
            res = match_points(gv, lv, w_emb, centers_world=pts, **kwargs)
            matched = self._ncc_points(refiner, w_im, w_emb, res.points)
            corr, kept_k = self._field_from_matches(pts, matched - pts, res.scores, geom, w_emb)
            if len(kept_k) < 3 * (fixed_im.ndim + 1):
                break
            fields.insert(0, corr)
            kept, scores = kept_k, res.scores
            moving_pts = current.transform_points(matched)
            self.transform_ = CompositeTransform([corr, *current.transforms], reference=fixed_im.geometry)
        self.field_ = fields[-1] if len(fields) == 1 else CompositeTransform(fields)
        self.n_coarse_passes_done_ = len(fields)
        self.dense_matches_ = Matches(pts[kept], moving_pts[kept], scores[kept])
        timings["coarse"] = time.perf_counter() - t0

    def _field_from_matches(self, pts, u, scores, geom, ref_emb):
        return field_from_matches(pts, u, scores, geom, smoothing_mm=float(self.smoothing_mm),
                                  score_threshold=float(self.score_threshold),
                                  max_displacement_mm=float(self.max_displacement_mm),
                                  outlier_factor=float(self.outlier_factor),
                                  floor_mm=0.5 * float(np.max(ref_emb.local_map.geometry.spacing)))

    def _field_geometry(self, fixed: ImageGeometry) -> ImageGeometry:
        return field_geometry(fixed, float(self.field_spacing_mm), float(self.smoothing_mm))
