"""Tabular features from detected landmarks, for downstream scikit-learn models.

:class:`LandmarkIntensityFeatures` turns images into a feature matrix of raw intensity statistics
(e.g. Hounsfield units) in a ball around each landmark that a fitted
:class:`~samlearn.OneShotLandmarkDetector` finds. This is the contrast-phase classifier of
SAM §IV-D (MIDL'21): one template with points on contrast-sensitive anatomy (aorta, portal vein,
kidney...), HU at the detected points, an SVM::

    make_pipeline(LandmarkIntensityFeatures(detector=detector), StandardScaler(), SVC())
"""
from __future__ import annotations

import re

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..image import Image, check_images
from ._base import POSITIVE_MM, FrozenComponentMixin, check_fitted_component

__all__ = ["LandmarkIntensityFeatures", "STATS"]

#: Named statistics; ``"pNN"`` (e.g. ``"p10"``, ``"p90"``) is the NN-th percentile.
STATS = ("mean", "std", "median", "min", "max")
_PCT = re.compile(r"^p(\d{1,2}(\.\d+)?|100)$")


def _stat_fn(name):
    fixed = {"mean": np.mean, "std": np.std, "median": np.median, "min": np.min, "max": np.max}
    if name in fixed:
        return fixed[name]
    q = float(_PCT.match(name).group(1))
    return lambda v: np.percentile(v, q)


class LandmarkIntensityFeatures(FrozenComponentMixin, TransformerMixin, BaseEstimator):
    """Intensity statistics around detected landmarks: images -> (n_images, n_landmarks * n_stats).

    Columns are landmark-major: ``[lm0_stat0, lm0_stat1, ..., lm1_stat0, ...]``, named
    ``"<landmark>__<stat>"``. Intensities are the images' raw values (HU for CT), not normalised.

    Parameters
    ----------
    detector : OneShotLandmarkDetector
        Fitted on its template; a frozen component (``clone`` shares it; ``fit`` never refits it).
    radius_mm : float, default 5
        Radius of the ball (world mm) around each detected landmark whose voxels are summarised.
        When no voxel centre falls inside (a radius below the voxel size), the intensity
        interpolated at the landmark is used.
    stats : sequence of str, default ("mean", "std", "median")
        Any of ``"mean", "std", "median", "min", "max"`` and percentiles ``"pNN"``.
    landmark_names : sequence of str or None, default None
        Names of the detector's landmarks for ``get_feature_names_out`` (default ``landmark0``...).

    Attributes
    ----------
    n_landmarks_, ndim_ : int
        The detector's number of landmarks and image dimension.
    stats_ : tuple of str
        The statistics, in column order.
    feature_names_out_ : ndarray of str
        Column names ``"<landmark>__<stat>"``, landmark-major.
    n_features_out_ : int
        Number of columns, ``n_landmarks_ * len(stats_)``.

    See Also
    --------
    samlearn.OneShotLandmarkDetector : Finds the landmarks.
    """

    _frozen_param = "detector"
    _parameter_constraints = {"radius_mm": [POSITIVE_MM]}

    def __init__(self, *, detector=None, radius_mm=5.0, stats=("mean", "std", "median"),
                 landmark_names=None):
        self.detector = detector
        self.radius_mm = radius_mm
        self.stats = stats
        self.landmark_names = landmark_names

    def _check_detector(self):
        det = check_fitted_component(
            self.detector, "detector", "predict",
            required="pass a OneShotLandmarkDetector fitted on a template, e.g. "
                     "LandmarkIntensityFeatures(detector=OneShotLandmarkDetector("
                     "embedder=embedder).fit(template, points))",
            expected="a fitted OneShotLandmarkDetector (with predict)",
            how_to_fit="fit it on a template first (detector.fit(template_image, template_points))")
        n = getattr(det, "n_points_", None)
        ndim = getattr(det, "ndim_", None)
        if not isinstance(n, (int, np.integer)) or ndim not in (2, 3):
            raise TypeError(f"detector must expose n_points_ and ndim_ after fitting (a "
                            f"OneShotLandmarkDetector), got n_points_={n!r}, ndim_={ndim!r}")
        return det, int(n), int(ndim)

    def _check_params(self, n_landmarks):
        self._validate_params()
        stats = self.stats
        if isinstance(stats, str) or not hasattr(stats, "__iter__"):
            raise TypeError(f"stats must be a sequence of statistic names, got {stats!r}")
        stats = list(stats)
        if not stats:
            raise ValueError("stats is empty: give at least one statistic")
        for s in stats:
            if not isinstance(s, str) or not (s in STATS or _PCT.match(s)):
                raise ValueError(f"stats entries must be among {STATS} or percentiles 'pNN' (e.g. "
                                 f"'p90'), got {s!r}")
        if len(set(stats)) != len(stats):
            raise ValueError(f"stats has duplicates: {stats}")
        names = self.landmark_names
        if names is None:
            names = [f"landmark{i}" for i in range(n_landmarks)]
        else:
            if isinstance(names, str):
                raise TypeError("landmark_names must be a sequence of names, got a single string")
            names = [str(n) for n in names]
            if len(names) != n_landmarks:
                raise ValueError(f"landmark_names has {len(names)} names but the detector finds "
                                 f"{n_landmarks} landmarks")
            if len(set(names)) != len(names):
                raise ValueError(f"landmark_names has duplicates: {names}")
        return stats, names

    def fit(self, X=None, y=None):
        """Validate the parameters, the detector and, when given, the images.

        Nothing is learned: the detector is frozen and never refitted.

        Parameters
        ----------
        X : list of images, optional
            Images (``Image``, ``SimpleITK.Image`` or paths), only checked for their dimension.
        y : None
            Ignored (scikit-learn API).

        Returns
        -------
        self : LandmarkIntensityFeatures
            The fitted transformer.
        """
        det, n, ndim = self._check_detector()
        stats, names = self._check_params(n)
        if X is not None:
            ims = check_images(X, name="X")
            if ims[0].ndim != ndim:
                raise ValueError(f"X holds {ims[0].ndim}D images but the detector works on {ndim}D images")
        self.n_landmarks_ = n
        self.ndim_ = ndim
        self.stats_ = tuple(stats)
        self.feature_names_out_ = np.asarray([f"{lm}__{s}" for lm in names for s in stats], dtype=object)
        self.n_features_out_ = len(self.feature_names_out_)
        return self

    def get_feature_names_out(self, input_features=None):
        """Names of the output columns.

        Parameters
        ----------
        input_features : None
            Ignored (scikit-learn API; the input is images, not columns).

        Returns
        -------
        ndarray of str, shape (n_features_out_,)
            ``"<landmark>__<stat>"``, landmark-major.
        """
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()

    def transform(self, X):
        """Intensity statistics around the landmarks detected in each image.

        Parameters
        ----------
        X : list of images
            ``Image``, ``SimpleITK.Image`` or paths, of the detector's dimension.

        Returns
        -------
        ndarray of shape (n_images, n_landmarks * n_stats), float64
            Landmark-major columns (:meth:`get_feature_names_out`), raw intensities (HU for CT).
        """
        check_is_fitted(self, "feature_names_out_")
        ims = check_images(X, name="X")
        if ims[0].ndim != self.ndim_:
            raise ValueError(f"X holds {ims[0].ndim}D images but the detector works on {self.ndim_}D images")
        points = np.asarray(self.detector.predict(ims))
        if points.shape != (len(ims), self.n_landmarks_, self.ndim_):
            raise ValueError(f"detector.predict returned shape {points.shape}, expected "
                             f"{(len(ims), self.n_landmarks_, self.ndim_)}")
        fns = [_stat_fn(s) for s in self.stats_]
        out = np.empty((len(ims), self.n_landmarks_ * len(fns)))
        for i, (im, pts) in enumerate(zip(ims, points)):
            for k, p in enumerate(pts):
                vals = _ball_values(im, p, float(self.radius_mm))
                out[i, k * len(fns):(k + 1) * len(fns)] = [fn(vals) for fn in fns]
        return out


def _ball_values(image: Image, point, radius_mm: float) -> np.ndarray:
    """Raw voxel values whose centres lie within ``radius_mm`` (world) of ``point``; the value
    interpolated at the point when none does (or when the point is outside the image: the
    image's minimum, as ``Image.sample`` pads)."""
    g = image.geometry
    idx = g.world_to_array_index(np.asarray(point)[None])[0]
    half = np.ceil(radius_mm / g.spacing[::-1]).astype(int) + 1
    lo = np.maximum(np.floor(idx).astype(int) - half, 0)
    hi = np.minimum(np.floor(idx).astype(int) + half + 1, np.asarray(g.shape))
    if np.all(hi > lo):
        axes = [np.arange(a, b) for a, b in zip(lo, hi)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, g.ndim)
        d = np.linalg.norm(g.array_index_to_world(grid) - point, axis=1)
        sel = grid[d <= radius_mm]
        if len(sel):
            return image.array[tuple(sel.T)].astype(np.float64)
    return image.sample(np.asarray(point)[None]).astype(np.float64)
