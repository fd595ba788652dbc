"""``SAMEmbedder``: trains SAM on unlabelled images and maps images to global and local embeddings.

``fit`` runs the paper's self-supervised training (:mod:`samlearn.training`; with landmark labels
for a few images, also its semi-supervised positives, §IV-H) on a GPU when there is one, else on
the CPU; ``transform`` returns one :class:`~samlearn.embedding.Embedding` per image, with world
geometry (:mod:`samlearn.embedding.inference`); ``backbone_state_dict`` exports the encoder
(§IV-G). Both see images through :func:`samlearn.embedding.preprocess`.
"""
from __future__ import annotations

import math
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._utils.parallel import N_JOBS_CONSTRAINT, effective_n_jobs, limit_threads
from .._utils.validation import HasMethods, Interval, IntSequence, Options, check_param, validate_params
from ..image import Image, check_images, image_items, load_item
from ..nn.network import SAMBackbone, SAMNet
from ..presets import PRESETS
from ..training import TrainState, run_training, sampler_from_config, setup_distributed
from .cache import EmbeddingCache, cache_folder, model_fingerprint
from .config import (AMP_OPTIONS, PRESET_KEYS, amp_dtype, inference_config, loss_config, network_config,
                     resolve_config, resolve_device, validate_config)
from .engine import check_tile_shape
from .fitting import (checkpoint_tensors, continued_network, make_optimizer, new_network, resumed_network,
                      training_arrays)
from .inference import InferenceEngine, inference_network, memory_budget
from .labels import check_landmark_labels
from .maps import Embedding
from .model_file import check_checkpointing, embedder_meta, read_checkpoint, save_payload, to_jsonable
from .preprocessing import preprocess

__all__ = ["SAMEmbedder"]


class SAMEmbedder(BaseEstimator):
    """Self-supervised anatomical embedding (SAM) of medical images.

    Trains on unlabelled images, then maps every image to a coarse global and a fine local
    embedding map with world geometry. Parameters are keyword-only; ``spacing_mm`` ...
    ``transform_scale`` default to the ``preset``'s value (:mod:`samlearn.embedding.config`).

    Parameters
    ----------
    preset : {"auto", "ct", "xray", "ct-lite", "xray-lite"}, default "auto"
        Named configuration (:mod:`samlearn.presets`). "ct" and "xray" are the paper's; the
        "-lite" variants are samlearn's, small enough to learn on a CPU. "auto" picks "ct" / "xray"
        on a GPU and the "-lite" variants on a CPU, by the dimensionality of the training images.
    spacing_mm, image_size, intensity, patch_shape : float, tuple of int, str, tuple of int
        Working resolution: isotropic spacing in mm (3D) or size in pixels, numpy order (2D);
        intensity normalisation ("ct", "xray", "none": :func:`samlearn.image.normalize_intensity`);
        training patch shape in numpy order ((z, y, x) or (y, x)). Each None by default.
    depth, width, stem_stride, stem_kernel, stage_strides, n_stages, local_level, fpn_channels, embed_dim, head : optional
        Network architecture (:class:`samlearn.nn.NetworkConfig`).
    batch_size, lr, warmup_iter, lr_schedule, weight_decay : optional
        Optimisation (RAdam). The presets warm up linearly and decay the rate along a cosine
        (samlearn's schedule); ``lr_schedule="constant", warmup_iter=0`` is the paper's.
    max_iter, max_time : int, float or None
        Training budget: total iterations and total seconds of training, whichever is reached
        first (None: no limit of that kind; at least one must be set).
    n_pos, n_hard, n_random, n_candidates, n_local, tau, delta_mm : optional
        Loss and negative sampling (:class:`samlearn.nn.LossConfig`).
    overlap, scale, rotation_deg, elastic, intensity_jitter : optional
        Patch-pair augmentation (:class:`samlearn.training.PatchPairSampler`).
    transform_scale : float or None
        Resolution of ``transform`` relative to training: 2D at ``image_size`` x scale pixels
        (rounded), 3D at ``spacing_mm`` / scale mm. Read by ``transform``: ``set_params`` changes
        it on a fitted model (fitted: ``config_["transform_scale"]``; 1.0 before it existed).
    label_positive_prob : float in [0, 1], default 0.5
        With landmark labels ``y`` in ``fit``: the probability that a pair drawn from a labelled
        image is a labelled pair (:class:`~samlearn.training.PairStream`) instead of two crops of
        one image. The paper's value; it found that always using labelled pairs overfits.
    pretrained : str, path or None, default None
        A local torchvision-format ResNet state dict to initialise the backbone (I3D inflation for
        3D). Nothing is ever downloaded; None is random initialisation.
    device : "auto", str or torch.device, default "auto"
        "cpu", "cuda", "cuda:N"; "auto": a GPU when there is one. Resolved in ``fit`` (``device_``).
        Under torchrun (``WORLD_SIZE > 1``) each rank uses ``cuda:LOCAL_RANK`` (another explicit
        index is remapped, with a warning; an error if ``LOCAL_RANK`` is not below the GPU count).
    amp : {"auto", "bf16", "fp16", "none"}, default "auto"
        Autocast precision. "auto": bf16 on GPUs with bf16 (compute capability 8.0+), else fp16
        (training with a gradient scaler); off on the CPU. "bf16" on an older GPU is an error.
    num_workers, n_threads : int or None, default None
        DataLoader worker processes (None: 1 on the CPU, 4 on a GPU); torch and BLAS CPU threads
        during ``fit`` and ``transform`` (None: leave the settings).
    channels_last : "auto" or bool, default "auto"
        Channels-last memory format (``channels_last_3d`` in 3D). "auto": for inference on the CPU
        (faster, same maps up to float rounding); True: training and inference; False: never.
    compile : bool, default False
        Wrap the network with ``torch.compile`` for training.
    checkpoint_path, checkpoint_every, resume : path or None, int or None, bool
        Write an atomic checkpoint to the path every ``checkpoint_every`` iterations (None: not
        periodically), at the end and on interruption (only rank 0 when data-parallel);
        ``resume=True`` continues an existing one there (every rank resumes from it).
    warm_start : bool, default False
        When fitted, ``fit`` continues the current network until the total budget is reached:
        ``max_iter`` / ``max_time`` as set now (totals, counting the training done), else the
        fitted ones (an interrupted run finishes its budget). Other settings stay fitted.
    random_state : int or None, default None
        Seeds weights, patch sampling and negatives (separate streams); the same seed on the CPU
        gives identical weights. Global random generators are never touched.
    verbose : int, default 0
        0 silent; 1 progress bars (tqdm): training (loss, it/s), ``transform`` of several images.
    distributed : "auto" or bool, default "auto"
        Data-parallel training (:mod:`samlearn.training.distributed`): "auto" joins the group when
        launched by ``torchrun`` with ``WORLD_SIZE > 1`` (or a process group exists); True: the
        same, an error otherwise; False: never. Save on rank 0 only (``if est.rank_ == 0: ...``).
    tile_shape : "auto", tuple of int or None, default "auto"
        Tile cores of inference (working-grid voxels, numpy order), giving the maps of one pass
        (:mod:`samlearn.embedding.engine`). "auto": tiles only when one pass would need more
        than ``max_memory_gb``; None: always one pass.
    max_memory_gb : float or None, default None
        Memory budget of one network pass at inference (activations; output maps on top); also
        bounds GPU batches of same-size images. None: half the GPU's free memory, 2 GB on a CPU.
    memory : str, path, joblib.Memory or None, default None
        Cache embeddings in this folder (:mod:`samlearn.embedding.cache`), keyed by image content
        and model fingerprint: a changed model never reads stale embeddings.
    n_jobs : int or None, default None
        Threads over images: CPU ``transform`` (each with a share of torch's threads), reading and
        preprocessing in ``fit`` and ahead of the network on a GPU. None: 1; -1: all cores.

    Attributes
    ----------
    preset_, config_, ndim_ : str, dict, int
        The preset used, the resolved configuration, the training images' dimensionality (2, 3).
    device_, network_ : torch.device, SAMNet
        The trained network (eval mode) and its device.
    n_iter_, train_time_, history_, interrupted_ : int, float, list of dict, bool
        Iterations and seconds of training in total; per iteration: loss, loss_global,
        loss_local, lr, time, step_time, ...; True when Ctrl-C or SIGTERM stopped training early.
    world_size_, rank_ : int
        Data-parallel group of the last ``fit`` (1 and 0 for one process).

    See Also
    --------
    samlearn.load : Load a saved model.
    samlearn.OneShotLandmarkDetector : Find points marked on a template image.
    """

    _parameter_constraints = {
        "preset": [Options("auto", *PRESETS)],
        "label_positive_prob": [Interval(Real, 0, 1)],
        "pretrained": ["path", None],
        "device": [str, torch.device, None],
        "amp": AMP_OPTIONS,
        "num_workers": [Interval(Integral, 0, None), None],
        "n_threads": [Interval(Integral, 1, None), None],
        "channels_last": [Options("auto"), "boolean"],
        "compile": ["boolean"],
        "checkpoint_path": ["path", None],
        "checkpoint_every": [Interval(Integral, 1, None), None],
        "resume": ["boolean"],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": [Interval(Integral, 0, None), "boolean"],
        "distributed": [Options("auto"), "boolean"],
        "tile_shape": [Options("auto"), IntSequence(), None],
        "max_memory_gb": [Interval(Real, 0, None, closed="neither", unit="GB"), None],
        "memory": ["path", HasMethods("cache"), None],
        "n_jobs": N_JOBS_CONSTRAINT,
    }
    #: parameters read by ``transform`` (a fitted model's may change with ``set_params``)
    _inference_params = ("n_threads", "channels_last", "tile_shape", "max_memory_gb", "memory",
                         "n_jobs", "amp")

    def __init__(self, *, preset="auto", spacing_mm=None, image_size=None, intensity=None,
                 patch_shape=None, batch_size=None, depth=None, width=None, stem_stride=None,
                 stem_kernel=None, stage_strides=None, n_stages=None, local_level=None,
                 fpn_channels=None, embed_dim=None, head=None, lr=None, warmup_iter=None, lr_schedule=None,
                 weight_decay=None, max_iter=None, max_time=None, n_pos=None, n_hard=None,
                 n_random=None, n_candidates=None, n_local=None, tau=None, delta_mm=None,
                 overlap=None, scale=None, rotation_deg=None, elastic=None, intensity_jitter=None,
                 transform_scale=None, label_positive_prob=0.5, pretrained=None, device="auto", amp="auto",
                 num_workers=None,
                 n_threads=None, channels_last="auto", compile=False, checkpoint_path=None,
                 checkpoint_every=None, resume=False, warm_start=False, random_state=None, verbose=0,
                 distributed="auto", tile_shape="auto", max_memory_gb=None, memory=None, n_jobs=None):
        self.preset = preset
        self.spacing_mm = spacing_mm
        self.image_size = image_size
        self.intensity = intensity
        self.patch_shape = patch_shape
        self.batch_size = batch_size
        self.depth = depth
        self.width = width
        self.stem_stride = stem_stride
        self.stem_kernel = stem_kernel
        self.stage_strides = stage_strides
        self.n_stages = n_stages
        self.local_level = local_level
        self.fpn_channels = fpn_channels
        self.embed_dim = embed_dim
        self.head = head
        self.lr = lr
        self.warmup_iter = warmup_iter
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.max_time = max_time
        self.n_pos = n_pos
        self.n_hard = n_hard
        self.n_random = n_random
        self.n_candidates = n_candidates
        self.n_local = n_local
        self.tau = tau
        self.delta_mm = delta_mm
        self.overlap = overlap
        self.scale = scale
        self.rotation_deg = rotation_deg
        self.elastic = elastic
        self.intensity_jitter = intensity_jitter
        self.transform_scale = transform_scale
        self.label_positive_prob = label_positive_prob
        self.pretrained = pretrained
        self.device = device
        self.amp = amp
        self.num_workers = num_workers
        self.n_threads = n_threads
        self.channels_last = channels_last
        self.compile = compile
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.distributed = distributed
        self.tile_shape = tile_shape
        self.max_memory_gb = max_memory_gb
        self.memory = memory
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ configuration
    def _inference_config(self) -> dict:
        """``config_`` with the working grid of ``transform`` (``transform_scale`` applied)."""
        return inference_config(self.config_, self.transform_scale)

    def _preprocess(self, image: Image) -> Image:
        """``image`` as the fitted network sees it in ``transform``."""
        return preprocess(image, self._inference_config(), self.device_)

    # ------------------------------------------------------------------ training
    def fit(self, images, y=None):
        """Train SAM on unlabelled images (and, optionally, a few landmark labels).

        Parameters
        ----------
        images : image or list of images
            Paths, :class:`~samlearn.Image` or ``SimpleITK.Image`` objects, read and preprocessed
            one at a time (``n_jobs`` threads): only the working-resolution arrays are kept.
        y : None or list, default None
            Semi-supervised landmark labels (paper §IV-H): None, or per image None (unlabelled) or
            an ``(n_landmarks, ndim)`` array of world mm ((x, y[, z]), as SimpleITK reports them),
            NaN rows for landmarks not labelled on it; row ``k`` is the same landmark on every
            image (an ``(n_images, n_landmarks, ndim)`` array works too). At least two images must
            carry labels, sharing a landmark. ``y=None`` (or every entry None) gives exactly the
            self-supervised run (same seed, same weights).

        Returns
        -------
        self : SAMEmbedder
        """
        return self._fit(images, y, continuing=bool(self.warm_start) and self.__sklearn_is_fitted__(),
                         additional=False, extra_iter=None)

    def partial_fit(self, images, y=None, n_iter=None):
        """Train ``n_iter`` more iterations, continuing the current network and optimiser state.

        Parameters
        ----------
        images, y : image or list of images, None or list
            As in :meth:`fit` (the labels ``y`` of these images, for this call only).
        n_iter : int or None, default None
            Iterations to add (default: the configuration's ``max_iter``; ``max_time``, when set,
            also bounds this call). An unfitted model starts a new one.

        Returns
        -------
        self : SAMEmbedder
        """
        check_param(n_iter, [Interval(Integral, 1, None), None], "n_iter")
        return self._fit(images, y, continuing=self.__sklearn_is_fitted__(), additional=True,
                         extra_iter=int(n_iter) if n_iter is not None else None)

    def _fit(self, images, y, continuing, additional, extra_iter):
        validate_params(self.get_params(deep=False), self._parameter_constraints)
        check_checkpointing(self.checkpoint_path, self.checkpoint_every, self.resume)
        items = image_items(images, name="images")
        first = load_item(items[0], None, "images", 0)
        ndim = first.ndim
        labels = check_landmark_labels(y, len(items), ndim)
        if continuing:
            if self.ndim_ != ndim:
                raise ValueError(f"images are {ndim}D but the model was trained on {self.ndim_}D "
                                 f"images (ndim_={self.ndim_})")
            device, preset, cfg = self.device_, self.preset_, dict(self.config_)
            cfg.setdefault("transform_scale", 1.0)  # a model from before transform_scale existed
            # the network and training settings stay the fitted ones; a budget set since (sklearn's
            # warm_start: set_params(max_iter=...) then fit) is the new total
            for key in ("max_iter", "max_time"):
                if getattr(self, key) is not None:
                    cfg[key] = getattr(self, key)
            validate_config(cfg)
        else:
            device = resolve_device(self.device)
            preset, cfg = resolve_config(self.preset, ndim, device.type == "cuda",
                                         {k: getattr(self, k) for k in PRESET_KEYS})
        device = resolve_device(device, self.distributed)   # under torchrun: cuda:LOCAL_RANK
        amp = amp_dtype(self.amp, device)
        n_jobs = effective_n_jobs(self.n_jobs)
        if additional and extra_iter is None:
            extra_iter = cfg["max_iter"]
        ctx = setup_distributed(self.distributed, device)
        try:
            resume_ckpt = None
            if not continuing and self.resume and self.checkpoint_path is not None \
                    and os.path.exists(self.checkpoint_path):
                resume_ckpt = read_checkpoint(self.checkpoint_path)
            with limit_threads(self.n_threads):
                arrays, spacings, work_labels = training_arrays(items, first, cfg, device, labels, ctx, n_jobs)
                del first
                self._train(arrays, spacings, preset, cfg, device, amp, continuing, resume_ckpt,
                            additional, extra_iter, ctx, work_labels)
        finally:
            ctx.close()
        return self

    def _train(self, arrays, spacings, preset, cfg, device, amp, continuing, resume_ckpt,
               additional, extra_iter, ctx, labels):
        ss_weights, ss_data, ss_loss = np.random.SeedSequence(self.random_state).spawn(3)
        net_cfg = network_config(cfg)
        if continuing:
            net, state, opt_state = continued_network(self)
        elif resume_ckpt is not None:
            # the estimator's parameters rule (budget included); the checkpoint brings the state
            net, state, opt_state = resumed_network(net_cfg, resume_ckpt, self.checkpoint_path)
        else:
            net, state, opt_state = new_network(net_cfg, ss_weights, self.pretrained), TrainState(), None
        net = net.to(device)
        channels_last = self.channels_last is True  # "auto": not for training
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d if cfg["ndim"] == 3 else torch.channels_last)
        optimizer = make_optimizer(net, cfg, opt_state, f"checkpoint '{self.checkpoint_path}'"
                                   if resume_ckpt is not None else "this model")
        if additional:  # partial_fit: a budget on top of what was already done
            max_iter = state.iteration + extra_iter if extra_iter is not None else None
            max_time = state.train_time + cfg["max_time"] if cfg["max_time"] is not None else None
        else:
            max_iter, max_time = cfg["max_iter"], cfg["max_time"]
        ckpt_fn = None
        if self.checkpoint_path is not None and ctx.is_main:
            def ckpt_fn(st):
                self._write_checkpoint(self.checkpoint_path, net, optimizer, cfg, preset, st)

        # the data stream continues deterministically after a resume: seed by the iteration count
        state = run_training(
            net, optimizer, state, arrays, spacings, sampler=sampler_from_config(cfg),
            loss_config=loss_config(cfg), n_pos=cfg["n_pos"], batch_size=cfg["batch_size"],
            lr=cfg["lr"], warmup=cfg["warmup_iter"], schedule=cfg["lr_schedule"], device=device,
            amp_dtype=amp, max_iter=max_iter, max_time=max_time,
            data_seed=np.random.SeedSequence(ss_data.entropy, spawn_key=ss_data.spawn_key + (state.iteration,)),
            loss_seed=np.random.SeedSequence(ss_loss.entropy, spawn_key=ss_loss.spawn_key + (state.iteration,)),
            labels=labels, label_positive_prob=self.label_positive_prob, ctx=ctx,
            num_workers=self.num_workers, compile=self.compile,
            progress_desc=f"SAM {preset}" if self.verbose else None, checkpoint=ckpt_fn,
            checkpoint_every=self.checkpoint_every, channels_last=channels_last)
        for name, value in dict(preset_=preset, config_=cfg, ndim_=cfg["ndim"], device_=device, network_=net,
                                n_iter_=state.iteration, train_time_=state.train_time,
                                history_=state.history, interrupted_=state.interrupted,
                                world_size_=ctx.world_size, rank_=ctx.rank).items():
            setattr(self, name, value)
        self._optimizer_state, self._scaler_state = optimizer.state_dict(), state.scaler_state
        self._fingerprint = None   # the weights changed: cached fingerprint and inference copy are stale
        self._inference_net = None
        if state.interrupted:
            warnings.warn(f"training was interrupted after {state.iteration} iterations: the model is "
                          f"only partially trained (interrupted_=True); fit again with warm_start=True "
                          f"to continue", UserWarning, stacklevel=3)
        if state.history and not all(math.isfinite(h["loss"]) for h in state.history[-10:]):
            raise FloatingPointError("training diverged: the loss became NaN or infinite; lower lr")

    # ------------------------------------------------------------------ inference
    def transform(self, images) -> list:
        """Embed images: one :class:`~samlearn.embedding.Embedding` per image, in order.

        Parameters
        ----------
        images : image or list of images
            Paths (read one at a time), :class:`~samlearn.Image` or ``SimpleITK.Image`` objects.

        Returns
        -------
        list of Embedding
            Global and local maps with the world geometry of their grids.
        """
        check_is_fitted(self, "network_")
        validate_params(self.get_params(deep=False), self._parameter_constraints, self._inference_params)
        items = image_items(images, name="images")
        check_tile_shape(self.tile_shape, self.ndim_)
        n_jobs = effective_n_jobs(self.n_jobs)
        with limit_threads(self.n_threads):
            if self.device_.type == "cpu" and n_jobs > 1 and len(items) > 1:
                # images in threads, each with its share of the torch threads
                return self._engine().embed_threaded(items, self.ndim_, n_jobs)
            return list(self._engine().iter_embeddings(items, self.ndim_))

    def fit_transform(self, images, y=None):
        """Fit on ``images`` (and labels ``y``), then embed them.

        Parameters
        ----------
        images, y : image or list of images, None or list
            As in :meth:`fit`.

        Returns
        -------
        list of Embedding
            ``fit(images, y).transform(images)``.
        """
        return self.fit(images, y).transform(images)

    def preprocess(self, image) -> Image:
        """The image as the fitted network sees it in ``transform``.

        Resampled onto the canonical working grid (identity direction, ``spacing_mm`` or
        ``image_size`` scaled by ``transform_scale``) and intensity normalised; its geometry maps
        it to the input's world mm. Feeds networks initialised by :meth:`backbone_state_dict`.

        Parameters
        ----------
        image : Image, SimpleITK.Image or path
            One image.

        Returns
        -------
        Image
            The working image.
        """
        check_is_fitted(self, "network_")
        image = check_images(image, name="image")
        if len(image) != 1:
            raise ValueError(f"image must be one image, got {len(image)}")
        if image[0].ndim != self.ndim_:
            raise ValueError(f"image is {image[0].ndim}D but this model was trained on {self.ndim_}D "
                             f"images (ndim_={self.ndim_})")
        return self._preprocess(image[0])

    def embed(self, image) -> Embedding:
        """The embedding of one image: ``transform(image)[0]``.

        Parameters
        ----------
        image : Image, SimpleITK.Image or path
            The image to embed.

        Returns
        -------
        Embedding
            Its global and local maps.
        """
        return self.transform(image)[0]

    def _embed(self, image: Image) -> Embedding:
        """Embedding of one loaded image (no cache, no parallelism)."""
        return next(self._engine(use_cache=False).iter_embeddings([image], self.ndim_))

    # ------------------------------------------------------------------ backbone export
    def backbone_state_dict(self) -> dict:
        """The trained encoder, to initialise another network (e.g. a U-Net's, paper §IV-G).

        The ResNet of the network, without FPN and heads. Its keys (``stem.*``,
        ``stages.<i>.<j>.*``: :class:`samlearn.nn.SAMBackbone` lists them, with the stages'
        channels and strides) are those of ``network_``; it loads strictly into
        ``SAMBackbone(network_.config)`` (:meth:`backbone`).

        Returns
        -------
        dict of str to torch.Tensor
            Detached CPU copies of the weights and buffers.
        """
        check_is_fitted(self, "network_")
        out = {}
        for k, v in self.network_.state_dict().items():
            if k.startswith("stem.") or k.startswith("stages."):
                out[k] = v.detach().cpu().clone()
        return out

    def backbone(self):
        """A new :class:`samlearn.nn.SAMBackbone` holding the trained encoder weights.

        Returns
        -------
        SAMBackbone
            On the CPU, in train mode, loaded from :meth:`backbone_state_dict`.
        """
        state = self.backbone_state_dict()
        net = SAMBackbone(network_config(self.config_))
        net.load_state_dict(state, strict=True)
        return net

    # ------------------------------------------------------------------ inference machinery
    def _engine(self, use_cache: bool = True) -> InferenceEngine:
        """The inference engine of one ``transform`` call (its network copy is cached)."""
        net, channels_last = self._network_for_inference()
        cuda = self.device_.type == "cuda"
        return InferenceEngine(net, channels_last, self._inference_config(), self.device_,
                               amp_dtype(self.amp, self.device_), check_tile_shape(self.tile_shape, self.ndim_),
                               memory_budget(self.max_memory_gb, self.device_), cache=self._cache() if use_cache else None,
                               n_prepare=effective_n_jobs(self.n_jobs) if cuda else 0, verbose=self.verbose)

    def _network_for_inference(self):
        """:func:`~samlearn.embedding.inference.inference_network` of the fitted network, made once
        per network, device and memory format."""
        cl = self.device_.type == "cpu" if self.channels_last == "auto" else bool(self.channels_last)
        key = (id(self.network_), cl, str(self.device_))
        cached = getattr(self, "_inference_net", None)
        if cached is None or cached[0] != key:
            cached = (key, *inference_network(self.network_, self.device_, self.channels_last))
            self._inference_net = cached
        return cached[1], cached[2]

    def _cache(self):
        folder = cache_folder(self.memory)
        if folder is None:
            return None
        fp = getattr(self, "_fingerprint", None)
        amp = amp_dtype(self.amp, self.device_)
        cfg = to_jsonable(self._inference_config())   # the working grid of transform is part of the key
        if fp is None or fp[0] != id(self.network_) or fp[1] != str(amp) or fp[2] != cfg:
            fp = (id(self.network_), str(amp), cfg, model_fingerprint(self.network_, cfg, amp))
            self._fingerprint = fp
        return EmbeddingCache(folder, fp[3])

    # ------------------------------------------------------------------ persistence
    def _params_json(self) -> dict:
        params = self.get_params(deep=False)
        if params.get("memory") is not None and not isinstance(params["memory"], (str, os.PathLike)):
            folder = cache_folder(params["memory"])  # a joblib.Memory: keep its folder
            params["memory"] = None if folder is None else str(folder)
        return to_jsonable(params)

    def save(self, path):
        """Save the fitted model: parameters and metadata as JSON, weights as a state dict.

        Parameters
        ----------
        path : str or path
            The model file, written atomically; :func:`samlearn.load` loads it without running
            code (:mod:`samlearn.embedding.model_file`).

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        check_is_fitted(self, "network_")
        tensors = {"network": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}}
        meta = embedder_meta(self._params_json(), self.config_, self.preset_, self.n_iter_, self.train_time_,
                             self.interrupted_, self.history_)
        return save_payload(path, "SAMEmbedder", meta, tensors)

    def _write_checkpoint(self, path, net, optimizer, cfg, preset, state):
        meta = embedder_meta(self._params_json(), cfg, preset, state.iteration, state.train_time,
                             state.interrupted, state.history, checkpoint=True)
        save_payload(path, "SAMEmbedder", meta, checkpoint_tensors(net, optimizer, state))

    def __getstate__(self):
        state = self.__dict__.copy()
        if "network_" in state:
            state["network_"] = None
            state["_network_state"] = {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}
            state["device_"] = str(self.device_)
        for key in ("_optimizer_state", "_inference_net", "_fingerprint"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        net_state = state.pop("_network_state", None)
        self.__dict__.update(state)
        if net_state is not None:
            net = SAMNet(network_config(self.config_))
            net.load_state_dict(net_state)
            dev = torch.device(state.get("device_", "cpu"))
            if dev.type == "cuda" and not torch.cuda.is_available():
                dev = torch.device("cpu")
            self.device_ = dev
            self.network_ = net.to(dev).eval()

    def __sklearn_is_fitted__(self):
        return hasattr(self, "network_") and self.network_ is not None
