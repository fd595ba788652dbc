"""Self-training: a landmark regressor trained on a one-shot detector's own pseudo-labels.

samlearn's second stage after the paper's one-shot matching (in the spirit of CC2D's stage 2, Yao
et al., MICCAI 2021): :class:`SelfTrainedLandmarkDetector` runs a fitted
:class:`~samlearn.OneShotLandmarkDetector` on unlabelled images, keeps the pseudo-labels that
agree with the template's landmark configuration (:mod:`samlearn.apps.shape_prior`), and trains a
heatmap network (:class:`samlearn.nn.HeatmapNet`, initialised from the SAM trunk) on them
(:mod:`samlearn.training.heatmaps`). Averaging many images' independent matching errors and
decoding heatmaps below the voxel is where the gain over the one-shot stage comes from; the
shape prior keeps predictions on unusual images from running away.
"""
from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._utils.parallel import limit_threads, progress_bar
from .._utils.validation import Interval, Options
from ..embedding.config import loading_device, network_config, resolve_device
from ..embedding.model_file import load_payload, save_payload, to_jsonable, untuple
from ..embedding.preprocessing import preprocess
from ..exceptions import ModelFileError
from ..image import check_images, image_items, load_item
from ..nn.heatmap import HeatmapNet, decode_heatmaps
from ..presets import get_preset
from ..training.heatmaps import HeatmapTraining, train_heatmap_net
from ._base import POSITIVE_INT, FrozenComponentMixin, check_fitted_component
from .shape_prior import prior_tolerance, pseudo_label_weights, shape_outliers

__all__ = ["SelfTrainedLandmarkDetector"]

_KIND = "SelfTrainedLandmarkDetector"
#: half-width (heatmap voxels) of the window whose probability-weighted mean is a landmark
_DECODE_RADIUS = 2
#: working-grid settings that ``network_params`` may change without changing the architecture
_GRID_KEYS = ("image_size", "spacing_mm", "intensity")


class SelfTrainedLandmarkDetector(FrozenComponentMixin, BaseEstimator):
    """A landmark regressor trained on a one-shot detector's pseudo-labels (samlearn's).

    ``fit(images)`` runs ``detector`` on the unlabelled ``images`` (the embedder's training
    images are the natural choice), gives each pseudo-label weight 1 or 0
    (``pseudo_label_filter``), and trains a :class:`~samlearn.nn.HeatmapNet` on them: SAM's
    encoder and FPN (initialised from the detector's embedder with ``init="sam"``) and one
    heatmap per landmark at the local stride, on the embedder's working grid. ``predict(images)``
    decodes each heatmap below the voxel and returns world-mm points like the detector.

    Parameters
    ----------
    detector : OneShotLandmarkDetector
        A fitted detector (its embedder a fitted ``SAMEmbedder`` for ``init="sam"``). Frozen:
        shared by clones, never refitted. Not needed after ``fit`` (nor stored by ``save``).
    init : {"sam", "random"}, default "sam"
        Initialise the trunk from the embedder's trained network, or at random.
    freeze_trunk : bool, default False
        Train the heatmap head alone on the trunk's (SAM's) features; the trunk learns too when
        False.
    pseudo_label_filter : bool, default True
        Drop (weight 0) pseudo-labels far from the template configuration's robust affine fit
        (beyond their landmark's median + 3 robust SDs) or among the lowest 10% of their
        landmark's similarity scores; False keeps them all.
    max_iter : int, default 3000
        Training iterations at most.
    max_time : float or None, default 600
        Seconds for the whole ``fit`` (pseudo-labelling, preprocessing and training) at most;
        None: ``max_iter`` only.
    batch_size : int, default 4
        Images per iteration.
    lr : float, default 1e-3
        Peak learning rate (AdamW; linear warm-up, cosine decay over the budget).
    sigma : float, default 1.5
        Width of the Gaussian heatmap targets, in heatmap voxels.
    augment : bool, default True
        Random rotations (up to 10 degrees), scales (up to 10%), shifts (up to 5%) and intensity
        jitter of every training sample.
    contrast_augment : bool, default True
        Also train on contrast-inverted copies (half of the samples) and under gamma curves in
        [0.5, 2]: robustness to images from other scanners, windows or polarities. Chosen on the
        cephalometric development split, where it cost nothing on images like the training set.
    shape_check : bool, default True
        In ``predict``, search a landmark again within its tolerance of where a robust affine of
        the template configuration (fitted to the other landmarks) puts it, when it lies farther;
        its score is then the heatmap's mass there, usually low.
    network_params : dict or None, default None
        Working-grid overrides (``image_size``, ``spacing_mm``, ``intensity``) and, with
        ``init="random"``, architecture overrides (e.g. ``{"width": 0.25}``) of the embedder's
        configuration (or of the ``xray-lite`` / ``ct-lite`` preset when the embedder has none).
    device : str, torch.device or None, default None
        Where to train and predict; None: the GPU when there is one, else the CPU.
    n_threads : int or None, default None
        torch CPU threads during ``fit`` and ``predict``; None leaves torch's setting.
    random_state : int, numpy.random.Generator or None, default None
        Seeds the initialisation, the batches and the augmentation.
    verbose : int, default 0
        Progress bars and a summary line.

    Attributes
    ----------
    network_ : HeatmapNet
        The trained network (eval mode).
    config_ : dict
        The working grid and architecture configuration.
    ndim_, n_points_ : int
        Image dimension and number of landmarks.
    reference_points_ : ndarray of shape (n_points, ndim)
        The template's landmarks (world mm): the shape prior's configuration.
    pseudo_labels_ : ndarray of shape (n_images, n_points, ndim)
        The pseudo-labels (world mm of each training image).
    pseudo_weights_ : ndarray of shape (n_images, n_points)
        Their weights (0 or 1).
    prior_tolerance_mm_ : ndarray of shape (n_points,)
        Per-landmark distance from the shape prior beyond which ``predict`` searches again.
    n_iter_ : int
        Training iterations run.
    train_time_ : float
        Seconds of the training loop.
    fit_time_ : float
        Seconds of the whole ``fit``.
    history_ : list of float
        The loss of every iteration.

    See Also
    --------
    samlearn.OneShotLandmarkDetector : The first stage, which gives the pseudo-labels.
    samlearn.suggest_templates : Which image to annotate as the template.
    """

    _frozen_param = "detector"
    _parameter_constraints = {
        "init": [Options("sam", "random")],
        "freeze_trunk": ["boolean"],
        "pseudo_label_filter": ["boolean"],
        "max_iter": [POSITIVE_INT],
        "max_time": [Interval(Real, 0, None, closed="neither", unit="s"), None],
        "batch_size": [POSITIVE_INT],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "sigma": [Interval(Real, 0, None, closed="neither", unit="voxels")],
        "augment": ["boolean"],
        "contrast_augment": ["boolean"],
        "shape_check": ["boolean"],
        "network_params": [dict, None],
        "device": [str, torch.device, None],
        "n_threads": [Interval(Integral, 1, None), None],
        "random_state": ["random_state"],
        "verbose": [Interval(Integral, 0, None), "boolean"],
    }

    def __init__(self, *, detector=None, init="sam", freeze_trunk=False, pseudo_label_filter=True, max_iter=3000,
                 max_time=600.0, batch_size=4, lr=1e-3, sigma=1.5, augment=True,
                 contrast_augment=True, shape_check=True, network_params=None,
                 device=None, n_threads=None, random_state=None, verbose=0):
        self.detector = detector
        self.init = init
        self.freeze_trunk = freeze_trunk
        self.pseudo_label_filter = pseudo_label_filter
        self.max_iter = max_iter
        self.max_time = max_time
        self.batch_size = batch_size
        self.lr = lr
        self.sigma = sigma
        self.augment = augment
        self.contrast_augment = contrast_augment
        self.shape_check = shape_check
        self.network_params = network_params
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def _check_detector(self):
        det = check_fitted_component(
            self.detector, "detector", "predict",
            required="pass a fitted OneShotLandmarkDetector, e.g. SelfTrainedLandmarkDetector("
                     "detector=OneShotLandmarkDetector(embedder=emb).fit(template, points))",
            expected="a fitted OneShotLandmarkDetector-like estimator with a predict method",
            how_to_fit="fit it on the template first (detector.fit(template_image, template_points))")
        if not hasattr(det, "template_points_") or not hasattr(det, "embedder_"):
            raise TypeError(f"detector must expose template_points_ and embedder_ after fitting (a "
                            f"OneShotLandmarkDetector), got {type(det).__name__}")
        return det

    def _config(self, embedder, ndim: int) -> dict:
        """The working grid and architecture: the embedder's, with ``network_params`` applied."""
        if hasattr(embedder, "_inference_config") and hasattr(embedder, "network_"):
            cfg = dict(embedder._inference_config())
        elif self.init == "sam":
            raise ValueError(f"init='sam' needs the detector's embedder to be a fitted SAMEmbedder "
                             f"(got {type(embedder).__name__}); use init='random'")
        else:
            cfg = get_preset("xray-lite" if ndim == 2 else "ct-lite")
            if cfg.get("transform_scale", 1.0) != 1.0 and cfg.get("spacing_mm") is None:
                cfg["image_size"] = tuple(int(round(v * cfg["transform_scale"])) for v in cfg["image_size"])
        extra = dict(self.network_params or {})
        if self.init == "sam":
            arch = sorted(k for k in extra if k not in _GRID_KEYS)
            if arch:
                raise ValueError(f"network_params {arch} change the architecture, which init='sam' "
                                 f"takes from the embedder; only {list(_GRID_KEYS)} may be set")
        cfg.update(extra)
        try:
            network_config(cfg)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"network_params give an invalid configuration: {exc}") from None
        return cfg

    def fit(self, images, y=None):
        """Pseudo-label ``images`` with the detector and train the regressor on them.

        Parameters
        ----------
        images : list of images
            Unlabelled images (``Image``, ``SimpleITK.Image`` or paths) of the detector's
            dimension, at least two.
        y : None
            Ignored (unsupervised), present for scikit-learn's API.

        Returns
        -------
        self : SelfTrainedLandmarkDetector
            The fitted estimator.

        Raises
        ------
        ValueError
            For fewer than two images, images of another dimension, or an invalid
            ``network_params``.
        """
        t_start = time.perf_counter()
        self._validate_params()
        det = self._check_detector()
        ims = check_images(images, name="images")
        ndim = int(det.ndim_)
        if len(ims) < 2:
            raise ValueError(f"images must hold at least two unlabelled images, got {len(ims)}")
        bad = [i for i, im in enumerate(ims) if im.ndim != ndim]
        if bad:
            raise ValueError(f"images {bad[:5]} are not {ndim}D like the detector's templates")
        cfg = self._config(det.embedder_, ndim)
        rng = np.random.default_rng(self.random_state)  # a Generator passes through unchanged
        device = resolve_device(self.device)
        deadline = t_start + self.max_time if self.max_time is not None else None
        with limit_threads(self.n_threads):
            points, scores = det.predict(ims, return_scores=True)[:2]
            reference = np.asarray(det.template_points_, dtype=np.float64).mean(axis=0)
            finite = np.isfinite(points).all(axis=-1) & np.isfinite(scores)
            points = np.where(finite[..., None], points, np.nan)
            scores = np.where(finite, scores, -np.inf)
            weights, residuals = pseudo_label_weights(reference, points, scores)
            if not self.pseudo_label_filter:
                weights = finite.astype(np.float64)
            works = [preprocess(im, cfg, where=f"images[{i}]") for i, im in enumerate(ims)]
            net = self._new_network(cfg, det, len(reference), rng)
            arrays, idx = self._training_arrays(works, points, net.config.global_stride)
            aug = {} if self.augment else dict(rotation_deg=0.0, scale=0.0, shift=0.0, intensity=0.0)
            if self.contrast_augment:
                aug.update(invert=0.5, gamma=float(np.log(2.0)))
            settings = HeatmapTraining(max_iter=int(self.max_iter), batch_size=int(self.batch_size),
                                       lr=float(self.lr), sigma=float(self.sigma), **aug)
            bar = progress_bar(self.verbose, int(self.max_iter), "self-training", unit="it")
            try:
                out = train_heatmap_net(net.to(device), arrays, np.nan_to_num(idx), weights * finite, settings,
                                        rng=rng, stop_time=deadline, device=device,
                                        progress=None if bar is None else lambda it, loss: bar.update(1))
            finally:
                if bar is not None:
                    bar.close()
        self.network_ = net.eval()
        self.device_ = device
        self.config_ = cfg
        self.ndim_ = ndim
        self.n_points_ = len(reference)
        self.reference_points_ = reference
        self.pseudo_labels_ = points
        self.pseudo_weights_ = weights * finite
        # never tighter than two heatmap voxels: the regressor's own resolution
        heat_mm = float(np.max(works[0].geometry.spacing)) * float(np.max(net.config.local_stride))
        self.prior_tolerance_mm_ = prior_tolerance(residuals, self.pseudo_weights_,
                                                   floor_mm=2.0 * heat_mm)
        self.n_iter_ = out["n_iter"]
        self.train_time_ = out["train_time"]
        self.history_ = out["history"]
        self.fit_time_ = time.perf_counter() - t_start
        if self.n_iter_ == 0:
            warnings.warn(f"SelfTrainedLandmarkDetector: max_time={self.max_time} s was spent before any "
                          f"training iteration (pseudo-labelling and preprocessing took {self.fit_time_:.0f} s); "
                          f"the network is untrained: raise max_time", UserWarning, stacklevel=2)
        if self.verbose:
            print(f"SelfTrainedLandmarkDetector: {len(ims)} images, {int(self.pseudo_weights_.sum())} of "
                  f"{self.pseudo_weights_.size} pseudo-labels kept, {self.n_iter_} iterations in "
                  f"{self.train_time_:.0f} s (fit {self.fit_time_:.0f} s)")
        return self

    def _new_network(self, cfg, det, n_points, rng):
        seed = int(rng.integers(2 ** 31))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = HeatmapNet(network_config(cfg), n_points)
        if self.init == "sam":
            try:
                net.load_trunk(det.embedder_.network_.state_dict())
            except ValueError as exc:
                raise ValueError(f"init='sam': {exc}") from None
        if self.freeze_trunk:
            net.freeze_trunk()
        return net

    @staticmethod
    def _training_arrays(works, points, stride):
        """Working arrays padded at the far end, each with its minimum, to one shape (a multiple of
        ``stride``), and the labels' array indices (NaN where the label is)."""
        arrays = [w.array.astype(np.float32) for w in works]
        shape = [int(np.ceil(m / s) * s) for m, s in zip(np.max([a.shape for a in arrays], axis=0), stride)]
        batch = np.empty((len(arrays), *shape), dtype=np.float32)
        for b, a in enumerate(arrays):
            batch[b] = a.min()
            batch[(b,) + tuple(slice(0, n) for n in a.shape)] = a
        idx = np.stack([w.geometry.world_to_array_index(np.nan_to_num(p)) for w, p in zip(works, points)])
        return batch, np.where(np.isfinite(points).all(-1, keepdims=True), idx, np.nan)

    # ------------------------------------------------------------------ predict
    def predict(self, images, return_scores=False):
        """Find the landmarks in each image.

        Parameters
        ----------
        images : image or list of images
            ``Image``, ``SimpleITK.Image`` or paths, of the training images' dimension; read one
            at a time.
        return_scores : bool, default False
            Also return the scores: the heatmap's probability mass around each landmark, in
            [0, 1] (low for landmarks the shape check searched again).

        Returns
        -------
        points : ndarray of shape (n_images, n_points, ndim)
            Landmark positions, world mm of each image.
        scores : ndarray of shape (n_images, n_points)
            Only with ``return_scores``.
        """
        check_is_fitted(self, "network_")
        items = image_items(images, name="images")
        points = np.empty((len(items), self.n_points_, self.ndim_))
        scores = np.empty((len(items), self.n_points_))
        bar = progress_bar(self.verbose and len(items) > 1, len(items), "landmarks")
        with limit_threads(self.n_threads), torch.inference_mode():
            for i, item in enumerate(items):
                im = load_item(item, self.ndim_, "images", i,
                               why=f"the regressor was trained on {self.ndim_}D images")
                points[i], scores[i] = self._predict_one(preprocess(im, self.config_, where=f"images[{i}]"))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return (points, scores) if return_scores else points

    def _predict_one(self, work):
        net = self.network_
        x = torch.from_numpy(np.ascontiguousarray(work.array, dtype=np.float32))[None, None].to(self.device_)
        logits = net(x)
        heat = work.geometry.strided(net.config.local_stride[::-1], size=logits.shape[2:][::-1])
        pos, mass = decode_heatmaps(logits, radius=_DECODE_RADIUS)
        pts = heat.array_index_to_world(pos[0].cpu().double().numpy())
        score = mass[0].cpu().double().numpy()
        if not self.shape_check:
            return pts, score
        out, expected = shape_outliers(self.reference_points_, pts, self.prior_tolerance_mm_)
        if out.any():
            centers = heat.world_to_array_index(expected)
            centers = np.clip(centers, 0, np.asarray(logits.shape[2:]) - 1)
            radius = np.maximum(self.prior_tolerance_mm_ / float(np.max(heat.spacing)), 1.0)
            p2, m2 = decode_heatmaps(logits, radius=_DECODE_RADIUS,
                                     centers=torch.as_tensor(centers[None], dtype=torch.float32, device=x.device),
                                     max_distance=torch.as_tensor(radius[None], dtype=torch.float32, device=x.device))
            pts[out] = heat.array_index_to_world(p2[0].cpu().double().numpy())[out]
            score[out] = m2[0].cpu().double().numpy()[out]
        return pts, score

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted regressor to a model file (safetensors; no pickle, no detector).

        Parameters
        ----------
        path : str or path
            The file.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        check_is_fitted(self, "network_")
        params = {k: v for k, v in self.get_params().items() if k not in ("detector", "random_state")}
        if not isinstance(self.device, (str, type(None))):
            params["device"] = str(self.device)
        meta = {"params": to_jsonable(params), "config": to_jsonable(self.config_), "ndim": self.ndim_,
                "n_points": self.n_points_, "n_iter": self.n_iter_, "train_time": self.train_time_,
                "fit_time": self.fit_time_, "history": self.history_}
        tensors = {"network": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
                   "reference_points": torch.as_tensor(self.reference_points_),
                   "prior_tolerance_mm": torch.as_tensor(self.prior_tolerance_mm_),
                   "pseudo_labels": torch.as_tensor(self.pseudo_labels_),
                   "pseudo_weights": torch.as_tensor(self.pseudo_weights_)}
        return save_payload(path, _KIND, meta, tensors)

    @classmethod
    def load(cls, path):
        """Read a model file written by :meth:`save`.

        Parameters
        ----------
        path : str or path
            The file.

        Returns
        -------
        SelfTrainedLandmarkDetector
            The fitted estimator (``detector`` None), on the CPU unless its ``device`` asks for a
            GPU and there is one.

        Raises
        ------
        ModelFileError
            For a file that is not an intact model file of this kind.
        """
        _, meta, tensors, _ = load_payload(path, kind=_KIND)
        try:
            params = {k: untuple(v) for k, v in dict(meta["params"]).items() if k in cls._get_param_names()}
            params["network_params"] = dict(meta["params"].get("network_params") or {}) or None
            est = cls(**params)
            cfg = {k: untuple(v) for k, v in dict(meta["config"]).items()}
            net = HeatmapNet(network_config(cfg), int(meta["n_points"]))
            net.load_state_dict(tensors["network"], strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"model file '{path}' has damaged or incompatible contents "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        device = loading_device(est.device)
        est.network_ = net.to(device).eval()
        est.device_ = device
        est.config_ = cfg
        est.ndim_ = int(meta["ndim"])
        est.n_points_ = int(meta["n_points"])
        est.n_iter_ = int(meta["n_iter"])
        est.train_time_ = float(meta["train_time"])
        est.fit_time_ = float(meta["fit_time"])
        est.history_ = list(meta["history"])
        for name in ("reference_points", "prior_tolerance_mm", "pseudo_labels", "pseudo_weights"):
            setattr(est, name + "_", tensors[name].double().numpy())
        return est
