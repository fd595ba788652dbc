"""``SAMEmbedder``: trains SAM on unlabeled images and maps images to global / local embeddings.

``SAMEmbedder().fit(images)`` runs the paper's self-supervised training loop (patch pairs with exact
correspondences, coarse-to-fine network, pixel-level InfoNCE with hard and diverse negatives) on a
GPU when there is one and on the CPU otherwise; ``transform(images)`` returns, per image, a
:class:`~samlearn.maps.Embedding` whose maps carry the world geometry of their grids.

``fit(images, y)`` with landmark labels for a few images adds the paper's semi-supervised positives
(§IV-H): the same landmark on two different labelled images forms a positive pair.
``backbone_state_dict()`` exports the trained encoder to initialise other networks (§IV-G).

Preprocessing (the same in ``fit`` and ``transform``): every image is resampled onto an
identity-direction grid covering its world bounding box (so images stored with mirrored or permuted
axes look alike to the network), at ``spacing_mm`` (CT presets: isotropic 2 mm) or with
``image_size`` voxels (X-ray presets: 512 x 512), then normalised with the ``intensity`` preset.
World coordinates are untouched by all of this: results are in the input image's world mm.

Scale: ``fit`` reads and preprocesses images one at a time (``n_jobs`` threads), so only the
working-resolution arrays stay in memory; under ``torchrun`` it trains data-parallel (see
:mod:`samlearn.training`). ``transform`` embeds large volumes by tiles that give the same maps as
one pass (``tile_shape``, ``max_memory_gb``), runs many images in parallel on the CPU (``n_jobs``)
or batched on a GPU, and can cache embeddings on disk in float16 (``memory``).
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from ._version import __version__
from .image import Image, check_images, normalize_intensity
from .inference import (EmbeddingCache, auto_tile_shape, cache_folder, check_channels_last, check_tile_shape,
                        effective_n_jobs, estimate_pass_bytes, fold_small_conv3d, fuse_conv_bn, image_items, image_key,
                        load_item, model_fingerprint, pad_batch, pointwise_as_matmul, progress_bar,
                        limit_threads, resample_canonical, run_network, thread_map)
from .maps import Embedding, EmbeddingMap
from .nn.loss import LossConfig
from .nn.network import NetworkConfig, SAMNet
from .presets import get_preset, resolve_preset_name

__all__ = ["SAMEmbedder"]

# largest working grid (voxels) an image may be resampled to: 4 GiB of float32. Beyond it an
# image's geometry is almost surely wrong (e.g. spacing in micrometres read as mm).
_MAX_WORK_VOXELS = 2 ** 30

# parameters that override preset keys of the same name
_PRESET_KEYS = (
    "spacing_mm", "image_size", "intensity", "patch_shape", "batch_size", "depth", "width",
    "stem_stride", "stem_kernel", "stage_strides", "n_stages", "local_level", "fpn_channels",
    "embed_dim", "head", "lr", "warmup_iter", "lr_schedule", "weight_decay", "max_iter", "max_time",
    "n_pos", "n_hard", "n_random", "n_candidates", "n_local", "tau", "delta_mm", "overlap",
    "scale", "rotation_deg", "elastic", "intensity_jitter", "transform_scale",
)


class SAMEmbedder(BaseEstimator):
    """Self-supervised anatomical embedding (SAM) model.

    Parameters (keyword-only; ``None`` takes the value of the ``preset``):

    preset : {"auto", "ct", "xray", "ct-lite", "xray-lite"}, default "auto"
        Named configuration (see :mod:`samlearn.presets`). "auto" picks "ct"/"xray" on a GPU and
        the "-lite" variants on a CPU, by the dimensionality of the training images.
    spacing_mm, image_size : working resolution (3D: isotropic spacing in mm; 2D: size in pixels).
    intensity : {"ct", "xray", "none"} intensity normalisation preset.
    patch_shape : training patch shape in numpy order ((z, y, x) or (y, x)).
    depth, width, stem_stride, stem_kernel, stage_strides, n_stages, local_level, fpn_channels,
    embed_dim, head : network architecture (:class:`samlearn.nn.NetworkConfig`).
    batch_size, lr, warmup_iter, lr_schedule, weight_decay : optimisation (RAdam).
    max_iter, max_time : training budget: total iterations and total seconds of training, whichever
        is reached first (``None``: no limit of that kind; at least one must be set).
    n_pos, n_hard, n_random, n_candidates, n_local, tau, delta_mm : loss and negative sampling
        (:class:`samlearn.nn.LossConfig`).
    overlap, scale, rotation_deg, elastic, intensity_jitter : patch-pair augmentation.
    transform_scale : positive float or None (preset: 0.75 for "xray-lite", 1.0 otherwise)
        Resolution of ``transform`` relative to the training resolution: 2D images are embedded at
        ``image_size`` x ``transform_scale`` pixels (rounded), 3D volumes at ``spacing_mm`` /
        ``transform_scale`` mm. It is read when ``transform`` runs, so ``set_params`` changes it on
        a fitted model (the resolved value is ``config_["transform_scale"]``; models saved before
        it existed use 1.0). Below 1 is faster (fewer pixels) and, for the "xray-lite" network
        trained at 512 x 512, also more accurate: 0.75 (384 x 384) cut the cephalometric dev MRE
        by 0.6-0.9 px on two models and the time per query by a quarter
        (benchmarks/RESULTS.md, chosen on images 001-070 only).
    label_positive_prob : float in [0, 1], default 0.5 (the paper's value)
        Only used when ``fit`` gets landmark labels ``y``: the probability that a training pair drawn
        from a labelled image is a labelled pair (patch 1 around landmark ``k`` of this image, patch
        2 around landmark ``k`` of another labelled image, positives = the shared landmarks) instead
        of the usual two augmented crops of one image. The paper found always using labelled pairs
        (1.0) overfits.
    pretrained : str or None
        Path to a local torchvision-format ResNet state dict to initialise the backbone (I3D
        inflation for 3D). Nothing is ever downloaded; ``None`` means random initialisation.
    device : "auto", "cpu", "cuda", "cuda:N"; resolved in ``fit`` into ``device_``.
    amp : "auto" (bf16 autocast on CUDA, off on CPU), "bf16", "fp16" or "none".
    num_workers : DataLoader worker processes (``None``: 1 on the CPU, 4 on a GPU).
    n_threads : torch CPU threads during fit / transform (``None``: leave torch's setting).
    channels_last : "auto" (default), True or False
        Channels-last memory format (``channels_last_3d`` for 3D). "auto": for inference on the CPU
        (1.5-1.6x faster for xray-lite and ct-lite on a 2-core AVX2 CPU, identical maps up to
        float rounding: ``benchmarks/memory_format.py``, benchmarks/RESULTS.md), the default
        format otherwise; True: for training and inference (GPUs with tensor cores usually gain:
        ``benchmarks/gpu.py`` measures both); False: never.
    compile : wrap the network with ``torch.compile`` for training.
    checkpoint_path, checkpoint_every : write an atomic checkpoint every N iterations (and at the
        end or on interruption); with ``resume=True`` an existing checkpoint is continued. Under
        data-parallel training only rank 0 writes it; every rank resumes from it.
    distributed : "auto" (default), True or False
        Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``. "auto": when the
        process was launched by ``torchrun`` with ``WORLD_SIZE > 1`` (or a process group is already
        initialised), join it (NCCL on CUDA, Gloo on the CPU; this rank's GPU is
        ``cuda:LOCAL_RANK``); True: the same but an error otherwise; False: never. Each rank draws
        its own patch pairs and computes the loss on its own batch (random negatives come from the
        other images of the rank's batch; they are not exchanged between ranks), DDP averages the
        gradients; with at least two images per rank the images are sharded between the ranks (each
        rank reads and keeps only its share). Every rank ends with the same weights; only rank 0
        writes checkpoints: save the model on rank 0 only (``if est.rank_ == 0: est.save(path)``).
        ``samlearn train --nproc-per-node N`` launches it from the command line.
    tile_shape : "auto" (default), None or tuple of ints
        Inference by tiles (working-grid voxels, numpy order, rounded down to multiples of the
        global stride) with a halo covering the network's receptive field, so the maps equal those
        of one pass up to float rounding. "auto": tiles only when one pass would need more than
        ``max_memory_gb``; None: always one pass.
    max_memory_gb : float or None
        Memory budget of one network pass at inference (activations; the output maps come on top).
        None: half the free memory of the GPU, or 2 GB on the CPU. Also bounds how many
        same-size images are batched on a GPU.
    memory : None, str / path or joblib.Memory
        Cache embeddings in this folder (float16 on disk, float32 when read back), keyed by the
        image's content and geometry and by the model's fingerprint (weights, configuration,
        precision); a changed model never reads stale embeddings.
    n_jobs : int or None
        Parallel work: on the CPU, ``transform`` of several images runs in ``n_jobs`` threads,
        each with its share of the torch threads; ``fit`` reads and preprocesses images in
        ``n_jobs`` threads; on a GPU, images are
        preprocessed by ``n_jobs`` threads ahead of the network, which takes same-size images in
        batches. None: 1; -1: all cores.
    warm_start : if True and already fitted, ``fit`` continues training the current network until
        the total budget is reached instead of starting over: ``max_iter`` / ``max_time`` as set
        now (totals, counting the training done so far), else the fitted ones (an interrupted run
        then finishes its budget). Every other setting stays the fitted one.
    random_state : int or None. Same seed on the CPU -> identical weights.
    verbose : 0 silent, 1 progress bars (tqdm): training with loss and it/s; ``transform`` of
        several images.

    Attributes
    ----------
    preset_, config_ (resolved configuration), ndim_, device_, network_ (the torch module),
    n_iter_, history_ (per-iteration dicts: loss, loss_global, loss_local, lr, time, ...),
    train_time_, interrupted_ (True if Ctrl-C stopped training early: partially trained model),
    world_size_ and rank_ (data-parallel group of the last ``fit``: 1 and 0 for one process).
    """

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
    def _resolve_device(self) -> torch.device:
        dev = self.device
        if dev is None or dev == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if isinstance(dev, torch.device):
            d = dev
        elif isinstance(dev, str):
            try:
                d = torch.device(dev)
            except RuntimeError:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {dev!r}") from None
        else:
            raise TypeError(f"device must be a str or torch.device, got {type(dev).__name__}")
        if d.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={dev!r} was requested but CUDA is not available on this machine")
        return d

    def _resolve_config(self, ndim: int, device: torch.device) -> tuple:
        name = resolve_preset_name(self.preset, ndim, device.type == "cuda")
        cfg = get_preset(name)
        if cfg["ndim"] != ndim:
            raise ValueError(f"preset {name!r} is for {cfg['ndim']}D images but the images are {ndim}D")
        for key in _PRESET_KEYS:
            val = getattr(self, key)
            if val is not None:
                cfg[key] = val
        _validate_config(cfg)
        return name, cfg

    def _amp_dtype(self, device: torch.device):
        amp = self.amp
        if amp in (None, "none", False):
            return None
        if amp == "auto":
            return torch.bfloat16 if device.type == "cuda" else None
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            if device.type != "cuda":
                raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' or 'none' on the CPU")
            return torch.float16
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'none', got {amp!r}")

    @staticmethod
    def _network_config(cfg: dict) -> NetworkConfig:
        return NetworkConfig(ndim=cfg["ndim"], depth=cfg["depth"], width=cfg["width"],
                             stem_stride=cfg["stem_stride"], stem_kernel=cfg["stem_kernel"],
                             stage_strides=cfg["stage_strides"], n_stages=cfg["n_stages"],
                             local_level=cfg["local_level"], fpn_channels=cfg["fpn_channels"],
                             embed_dim=cfg["embed_dim"], head=cfg.get("head", "conv"))

    @staticmethod
    def _loss_config(cfg: dict) -> LossConfig:
        return LossConfig(tau=cfg["tau"], delta_mm=cfg["delta_mm"], n_hard=cfg["n_hard"],
                          n_random=cfg["n_random"], n_candidates=cfg["n_candidates"],
                          n_local=cfg["n_local"])

    # ------------------------------------------------------------------ preprocessing
    def _inference_config(self) -> dict:
        """``config_`` with the working grid of ``transform``: ``image_size`` x scale (2D) or
        ``spacing_mm`` / scale (3D), scale = ``transform_scale`` when set, else the fitted
        ``config_["transform_scale"]`` (1.0 for models saved before it existed)."""
        cfg = self.config_
        scale = self.transform_scale
        if scale is None:
            scale = cfg.get("transform_scale", 1.0)
        if (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (scale > 0)
                or not math.isfinite(scale)):
            raise ValueError(f"transform_scale must be a positive number or None, got {scale!r}")
        scale = float(scale)
        if scale == 1.0:
            return cfg
        cfg = dict(cfg, transform_scale=scale)
        if cfg.get("spacing_mm") is not None:
            cfg["spacing_mm"] = float(cfg["spacing_mm"]) / scale
        else:
            size = tuple(int(round(int(v) * scale)) for v in cfg["image_size"])
            if min(size) < 8:
                raise ValueError(f"transform_scale={scale:g} makes the working size {size} from "
                                 f"image_size {tuple(cfg['image_size'])}: below 8 pixels; use a larger "
                                 f"transform_scale")
            cfg["image_size"] = size
        return cfg

    def _preprocess(self, image: Image, cfg: dict | None = None, device=None, where: str = "image") -> Image:
        """Resample onto the canonical working grid (``cfg``; default: that of ``transform``,
        :meth:`_inference_config`) and normalise intensities. On a CUDA
        ``device`` (default: the fitted model's) axis-aligned images are resampled there
        (:func:`samlearn.inference.resample_canonical`, the same values as the SimpleITK path)
        and on the CPU too (its scipy.sparse form); rotated images take the SimpleITK path.
        ``where`` names the image in error messages
        (e.g. ``"images[3]"``)."""
        cfg = cfg or self._inference_config()
        device = device if device is not None else getattr(self, "device_", None)
        geom = image.geometry
        src = f" ('{image.source}')" if image.source else ""
        lo, hi = float(image.array.min()), float(image.array.max())
        if lo == hi:
            # a blank image holds no anatomy: its embedding would be the same vector everywhere and
            # any match in it an arbitrary voxel, so refuse it instead of answering silently wrong
            raise ValueError(f"{where}{src} is constant (every voxel is {lo:g}): it holds no anatomy "
                             f"to embed; remove blank images")
        if cfg.get("spacing_mm") is not None:
            target = geom.canonical(spacing=cfg["spacing_mm"])
        else:
            size = tuple(int(v) for v in cfg["image_size"])
            target = geom.canonical(size=size[::-1])  # image_size is (rows, cols) numpy order
        n_vox = float(np.prod(np.asarray(target.size, dtype=np.float64)))
        if n_vox > _MAX_WORK_VOXELS:
            raise ValueError(
                f"{where}{src} would need a working grid of {target.size} voxels (x, y, z) at "
                f"spacing_mm={cfg.get('spacing_mm')} for its {np.round(geom.extent_mm, 1).tolist()} mm "
                f"extent, over the limit of {_MAX_WORK_VOXELS:.3g} voxels; check the image's spacing, "
                f"crop it, or use a larger spacing_mm")
        if target.allclose(geom, atol=1e-6):
            work = image
        else:
            dev = torch.device(device) if device is not None else torch.device("cpu")
            work = resample_canonical(image, target, device=dev if dev.type == "cuda" else "cpu")
            if work is None:
                work = image.resample_to_geometry(target, interpolator="linear")
        try:
            return normalize_intensity(work, cfg["intensity"])
        except ValueError as exc:
            raise ValueError(f"{where}{src}: {exc}") from None

    # ------------------------------------------------------------------ training
    def fit(self, images, y=None):
        """Train SAM on ``images`` (paths, Images, SimpleITK images, or a list). With
        ``warm_start=True`` a fitted model continues until its total iteration budget is reached;
        with ``resume=True`` an existing checkpoint at ``checkpoint_path`` is continued.

        ``y`` (optional, semi-supervised training, paper §IV-H): ``None`` (self-supervised only), or
        one entry per image: ``None`` for an unlabelled image, or an ``(n_landmarks, ndim)`` array of
        landmark positions in world mm ((x, y[, z]) order, as SimpleITK reports them) with NaN rows
        for landmarks not labelled on that image. Every array has the same ``n_landmarks`` (row
        ``k`` is the same landmark on every image); a ``(n_images, n_landmarks, ndim)`` array works
        too. At least two images must carry labels, sharing at least one landmark. Labelled images
        then form labelled positive pairs with probability ``label_positive_prob``; unlabelled
        images train exactly as without ``y``. ``y=None``, or ``y`` with every entry ``None``, gives
        exactly the self-supervised run (same seed, same weights)."""
        return self._fit(images, y, continuing=bool(self.warm_start) and self.__sklearn_is_fitted__(),
                         additional=False, extra_iter=None)

    def partial_fit(self, images, y=None, n_iter=None):
        """Train ``n_iter`` more iterations (default: the configuration's ``max_iter``) on
        ``images``, continuing the current network and optimiser state (a new model if unfitted).
        ``max_time``, when set, also bounds this call. ``y``: landmark labels for these images,
        exactly as in :meth:`fit` (they apply to this call only)."""
        if n_iter is not None and (not isinstance(n_iter, (numbers.Integral, np.integer)) or n_iter < 1):
            raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
        return self._fit(images, y, continuing=self.__sklearn_is_fitted__(), additional=True,
                         extra_iter=int(n_iter) if n_iter is not None else None)

    def _fit(self, images, y, continuing, additional, extra_iter):
        from .training import setup_distributed, torchrun_env

        items = image_items(images, name="images")
        first = load_item(items[0], None, "images", 0)
        ndim = first.ndim
        _check_probability(self.label_positive_prob, "label_positive_prob")
        labels = _check_landmark_labels(y, len(items), ndim)
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
            _validate_config(cfg)
        else:
            device = self._resolve_device()
            preset, cfg = self._resolve_config(ndim, device)
        _check_random_state(self.random_state)
        amp_dtype = self._amp_dtype(device)
        n_jobs = effective_n_jobs(self.n_jobs)
        if self.distributed not in ("auto", True, False):
            raise ValueError(f"distributed must be 'auto', True or False, got {self.distributed!r}")
        if additional and extra_iter is None:
            extra_iter = cfg["max_iter"]
        _check_checkpointing(self.checkpoint_path, self.checkpoint_every, self.resume)
        env = torchrun_env() if self.distributed is not False else None
        if env is not None and env["world_size"] > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", env["local_rank"])  # one GPU per rank
        ctx = setup_distributed(self.distributed, device)
        try:
            resume_ckpt = None
            if not continuing and self.resume and self.checkpoint_path is not None \
                    and os.path.exists(self.checkpoint_path):
                resume_ckpt = _read_checkpoint(self.checkpoint_path)
            # data-parallel: each rank reads and keeps only its share (when every rank gets at
            # least two images, so that random negatives from other images exist on every rank)
            # (with landmark labels every rank keeps every image: labelled pairs span images)
            index = list(range(len(items)))
            if ctx.enabled and labels is None and len(items) >= 2 * ctx.world_size:
                index = index[ctx.rank::ctx.world_size]

            def prepare(i):
                im = first if i == 0 else load_item(items[i], ndim, "images", i)
                pre = self._preprocess(im, cfg, device, where=f"images[{i}]")
                lab = None
                if labels is not None and labels[i] is not None:
                    _check_labels_inside(labels[i], im, i)
                    # world mm -> indices of the working array (numpy order)
                    lab = pre.geometry.world_to_array_index(labels[i])
                return pre.array, pre.spacing[::-1].copy(), lab

            with _threads(self.n_threads):
                if n_jobs > 1 and len(index) > 1:
                    from joblib import Parallel, delayed
                    prepared = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(prepare)(i) for i in index)
                else:
                    prepared = [prepare(i) for i in index]
                del first
                arrays = [a for a, _, _ in prepared]
                spacings = [sp for _, sp, _ in prepared]
                work_labels = None if labels is None else [lab for _, _, lab in prepared]
                del prepared
                self._train(arrays, spacings, preset, cfg, device, amp_dtype, continuing, resume_ckpt,
                            additional, extra_iter, ctx, work_labels)
        finally:
            ctx.close()
        return self

    def _train(self, arrays, spacings, preset, cfg, device, amp_dtype, continuing, resume_ckpt,
               additional, extra_iter, ctx=None, labels=None):
        from .augment import sampler_from_config
        from .training import DistributedContext, PairStream, TrainState, make_loader, sync_buffers, train

        ctx = ctx if ctx is not None else DistributedContext()
        ss = np.random.SeedSequence(self.random_state)
        ss_weights, ss_data, ss_loss = ss.spawn(3)
        net_cfg = self._network_config(cfg)
        if continuing:
            net = self.network_
            state = TrainState(self.n_iter_, self.train_time_, list(self.history_))
            opt_state = getattr(self, "_optimizer_state", None)
        elif resume_ckpt is not None:
            # the estimator's parameters rule (budget included); the checkpoint brings the state
            meta, tensors = resume_ckpt
            try:
                same = self._network_config(meta["config"]).to_dict() == net_cfg.to_dict()
            except (KeyError, TypeError, ValueError):
                same = False
            if not same:
                raise ValueError(f"checkpoint '{self.checkpoint_path}' was written by a different network "
                                 f"architecture; resume with the parameters that produced it")
            net = _network_from_state(net_cfg, tensors, f"checkpoint '{self.checkpoint_path}'")
            state = TrainState(meta["n_iter"], meta["train_time"], meta["history"])
            opt_state = tensors.get("optimizer")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(ss_weights.generate_state(1)[0]))
                net = SAMNet(net_cfg)
            if self.pretrained is not None:
                from .nn.pretrained import load_torchvision_resnet
                load_torchvision_resnet(net, self.pretrained)
            state = TrainState()
            opt_state = None
        net = net.to(device)
        channels_last = check_channels_last(self.channels_last) is True  # "auto": not for training
        if channels_last:
            net = net.to(memory_format=torch.channels_last_3d if cfg["ndim"] == 3 else torch.channels_last)
        optimizer = torch.optim.RAdam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        if opt_state is not None:
            try:
                optimizer.load_state_dict(opt_state)
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                from .persistence import ModelFileError
                source = f"checkpoint '{self.checkpoint_path}'" if resume_ckpt is not None else "this model"
                raise ModelFileError(f"the optimiser state of {source} does not fit the network: "
                                     f"{str(exc)[:200]}") from None

        # the data stream continues deterministically after a resume: seed by the iteration count;
        # data-parallel ranks spawn their own streams from it, by rank
        data_seed = np.random.SeedSequence(ss_data.entropy, spawn_key=ss_data.spawn_key + (state.iteration,))
        loss_seed = np.random.SeedSequence(ss_loss.entropy, spawn_key=ss_loss.spawn_key + (state.iteration,))
        if ctx.enabled:
            data_seed = data_seed.spawn(ctx.world_size)[ctx.rank]
            loss_seed = loss_seed.spawn(ctx.world_size)[ctx.rank]
        sampler = sampler_from_config(cfg)
        stream = PairStream(arrays, spacings, sampler, cfg["n_pos"], net_cfg.global_stride,
                            net_cfg.local_stride, data_seed, labels=labels,
                            label_positive_prob=self.label_positive_prob)
        n_workers = self.num_workers if self.num_workers is not None else (4 if device.type == "cuda" else 1)
        loader = make_loader(stream, cfg["batch_size"], n_workers, pin_memory=device.type == "cuda",
                             seed=int(data_seed.generate_state(1)[0]))
        gen = torch.Generator(device=device)
        gen.manual_seed(int(loss_seed.generate_state(1)[0]))

        if additional:  # partial_fit: a budget on top of what was already done
            max_iter = state.iteration + extra_iter if extra_iter is not None else None
            max_time = state.train_time + cfg["max_time"] if cfg["max_time"] is not None else None
        else:
            max_iter, max_time = cfg["max_iter"], cfg["max_time"]

        train_net = net
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel
            # the constructor broadcasts rank 0's weights and buffers: every rank starts identical
            train_net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        if self.compile:
            train_net = torch.compile(train_net)
        progress = None
        if self.verbose and ctx.is_main:
            try:
                from tqdm.auto import tqdm
                # with a time budget the iteration count it ends at is unknown: no misleading ETA
                total = (max_iter if max_iter is not None and max_iter < 10**7 and max_time is None
                         else None)
                progress = tqdm(total=total, initial=state.iteration, desc=f"SAM {preset}", unit="it",
                                dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                progress = None

        ckpt_fn = None
        if self.checkpoint_path is not None and ctx.is_main:
            def ckpt_fn(st):
                self._write_checkpoint(self.checkpoint_path, net, optimizer, cfg, preset, st)

        try:
            with _sigterm_as_interrupt():
                state = train(train_net, optimizer, loader, state, loss_config=self._loss_config(cfg),
                              device=device, amp_dtype=amp_dtype, max_iter=max_iter, max_time=max_time,
                              lr=cfg["lr"], warmup=cfg["warmup_iter"], schedule=cfg["lr_schedule"],
                              generator=gen, checkpoint=ckpt_fn, checkpoint_every=self.checkpoint_every,
                              progress=progress, channels_last=channels_last, config=net.config,
                              dist_ctx=ctx)
        finally:
            if progress is not None:
                progress.close()
        if not state.interrupted:
            sync_buffers(net, ctx)
        net.eval()
        self.preset_ = preset
        self.config_ = cfg
        self.ndim_ = cfg["ndim"]
        self.device_ = device
        self.network_ = net
        self.n_iter_ = state.iteration
        self.train_time_ = state.train_time
        self.history_ = state.history
        self.interrupted_ = state.interrupted
        self.world_size_ = ctx.world_size
        self.rank_ = ctx.rank
        self._optimizer_state = optimizer.state_dict()
        self._fingerprint = None   # the weights changed: cached fingerprint and inference copy are stale
        self._inference_net = None
        if state.interrupted:
            warnings.warn(f"training was interrupted after {state.iteration} iterations: the model is "
                          f"only partially trained (interrupted_=True); fit again with warm_start=True "
                          f"to continue", UserWarning, stacklevel=3)
        if not state.history or not all(math.isfinite(h["loss"]) for h in state.history[-10:]):
            if state.history:
                raise FloatingPointError("training diverged: the loss became NaN or infinite; lower lr")

    # ------------------------------------------------------------------ inference
    def transform(self, images) -> list:
        """Embed images: a list of :class:`~samlearn.maps.Embedding` (global and local maps with
        world geometry), one per input image, in order.

        Images given as paths are read one at a time. Large volumes are embedded by tiles
        (``tile_shape``, ``max_memory_gb``); several images run in ``n_jobs`` threads on the CPU
        or in batches of same-size images on a GPU; with ``memory`` embeddings are cached on disk.
        ``verbose`` shows a progress bar over the images."""
        check_is_fitted(self, "network_")
        items = image_items(images, name="images")
        check_tile_shape(self.tile_shape, self.ndim_)
        n_jobs = effective_n_jobs(self.n_jobs)
        with _threads(self.n_threads):
            if self.device_.type == "cpu" and n_jobs > 1 and len(items) > 1:
                return self._transform_parallel(items, n_jobs)
            return list(self._iter_embeddings(items))

    def fit_transform(self, images, y=None):
        return self.fit(images, y).transform(images)

    def preprocess(self, image) -> Image:
        """The image as the fitted network sees it in ``transform``: resampled onto the canonical
        working grid (identity direction, ``spacing_mm`` or ``image_size`` of the configuration
        scaled by ``transform_scale``) and intensity normalised. Its geometry maps the working
        grid to the input's world mm. Use it to feed other networks initialised from
        :meth:`backbone_state_dict` with the same inputs."""
        check_is_fitted(self, "network_")
        image = check_images(image, name="image")
        if len(image) != 1:
            raise ValueError(f"image must be one image, got {len(image)}")
        if image[0].ndim != self.ndim_:
            raise ValueError(f"image is {image[0].ndim}D but this model was trained on {self.ndim_}D "
                             f"images (ndim_={self.ndim_})")
        return self._preprocess(image[0])

    # ------------------------------------------------------------------ backbone export
    def backbone_state_dict(self) -> dict:
        """The trained encoder (the ResNet of the network, without FPN and heads) as a state dict of
        detached CPU tensors (copies), to initialise another network, e.g. a segmentation U-Net's
        encoder (paper §IV-G).

        Key layout, the names of :class:`samlearn.nn.SAMBackbone` (and of ``network_``):

        * ``stem.1.weight`` (stem convolution; ``stem.0`` is the stem's pooling, without weights),
          ``stem.2.*`` (its BatchNorm: ``weight``, ``bias``, ``running_mean``, ``running_var``,
          ``num_batches_tracked``);
        * ``stages.<i>.<j>.*`` for stage ``i`` = 0 .. n_stages - 1 (Conv2_x, Conv3_x, ...), block
          ``j`` (in stage 0, ``j = 0`` is the max pool, so its blocks start at 1):
          ``conv1.weight``, ``bn1.*``, ``conv2.weight``, ``bn2.*`` and, for blocks that change
          resolution or width, ``downsample.1.weight`` (1x1 conv) and ``downsample.2.*`` (BN).

        It loads strictly into ``SAMBackbone(embedder.network_.config)`` (see :meth:`backbone`);
        stage ``i`` outputs ``network_.config.channels[i]`` channels at total stride
        ``network_.config.level_strides()[i]`` (numpy axis order)."""
        check_is_fitted(self, "network_")
        out = {}
        for k, v in self.network_.state_dict().items():
            if k.startswith("stem.") or k.startswith("stages."):
                out[k] = v.detach().cpu().clone()
        return out

    def backbone(self):
        """A new :class:`samlearn.nn.SAMBackbone` (on the CPU, in train mode) holding the trained
        encoder weights of :meth:`backbone_state_dict`."""
        from .nn.network import SAMBackbone
        state = self.backbone_state_dict()
        net = SAMBackbone(self._network_config(self.config_))
        net.load_state_dict(state, strict=True)
        return net

    def embed(self, image) -> Embedding:
        """Embedding of one image."""
        return self.transform(image)[0]

    def _embed(self, image: Image) -> Embedding:
        """Embedding of one loaded image (no cache, no parallelism)."""
        return next(self._iter_embeddings([image], use_cache=False))

    # ---- helpers
    def _memory_budget(self) -> float:
        """Bytes one network pass may use (``max_memory_gb``; default half the free GPU memory,
        2 GB on the CPU)."""
        gb = self.max_memory_gb
        if gb is not None:
            if isinstance(gb, bool) or not isinstance(gb, numbers.Real) or not (gb > 0) or not math.isfinite(gb):
                raise ValueError(f"max_memory_gb must be a positive number of GB or None, got {gb!r}")
            return float(gb) * 2 ** 30
        if self.device_.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device_)
            return 0.5 * free
        return 2.0 * 2 ** 30

    def _tile_core(self, spatial, budget):
        ts = check_tile_shape(self.tile_shape, self.ndim_)
        if ts is None:
            return None
        cfg = self.network_.config
        if ts == "auto":
            return auto_tile_shape(cfg, spatial, budget)
        if all(t >= n for t, n in zip(ts, spatial)):
            return None
        return ts

    def _channels_last_inference(self) -> bool:
        cl = check_channels_last(self.channels_last)
        if cl == "auto":
            return self.device_.type == "cpu"
        return bool(cl)

    def _network_for_inference(self):
        """The fitted network with BatchNorm folded into the convolutions, in the inference memory
        format; rebuilt when the network changes."""
        cl = self._channels_last_inference()
        key = (id(self.network_), cl, str(self.device_))
        cached = getattr(self, "_inference_net", None)
        if cached is None or cached[0] != key:
            net = fuse_conv_bn(self.network_).to(self.device_)
            if cl:
                net = net.to(memory_format=torch.channels_last_3d if self.ndim_ == 3 else torch.channels_last)
                if self.device_.type == "cpu":  # CPU kernels: measured faster (benchmarks/RESULTS.md)
                    pointwise_as_matmul(net)
                    if self.ndim_ == 3:
                        fold_small_conv3d(net)
            cached = (key, net, cl)
            self._inference_net = cached
        return cached[1], cached[2]

    def _cache(self):
        folder = cache_folder(self.memory)
        if folder is None:
            return None
        fp = getattr(self, "_fingerprint", None)
        amp = self._amp_dtype(self.device_)
        cfg = _jsonable(self._inference_config())   # the working grid of transform is part of the key
        if fp is None or fp[0] != id(self.network_) or fp[1] != str(amp) or fp[2] != cfg:
            fp = (id(self.network_), str(amp), cfg, model_fingerprint(self.network_, cfg, amp))
            self._fingerprint = fp
        return EmbeddingCache(folder, fp[3])

    def _transform_parallel(self, items, n_jobs):
        """CPU: images embedded in ``n_jobs`` threads, each with its share of the torch threads
        (torch releases the GIL in its kernels: no copy of the network or of the maps into other
        processes), results in order."""
        per = max(1, torch.get_num_threads() // n_jobs)
        self._network_for_inference()  # built once, before the threads share it
        bar = progress_bar(self.verbose, len(items), "embedding")
        out = []
        try:
            for emb in thread_map(lambda i: next(self._iter_embeddings([items[i]], offset=i)),
                                  len(items), n_jobs, torch_threads=per):
                out.append(emb)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out

    def _iter_embeddings(self, items, use_cache=True, offset=0):
        """Embeddings of ``items`` in order. On CUDA, upcoming images are read and preprocessed
        in background threads and same-size images go through the network in batches."""
        device = self.device_
        cache = self._cache() if use_cache else None
        budget = self._memory_budget()
        cuda = device.type == "cuda"
        n_prep = effective_n_jobs(self.n_jobs) if cuda else 0
        bar = progress_bar(self.verbose and len(items) > 1, len(items), "embedding")

        def prepare(i):
            im = load_item(items[i], self.ndim_, "images", i + offset,
                           why=f"images are {5 - self.ndim_}D but this model was trained on "
                               f"{self.ndim_}D images (ndim_={self.ndim_})")
            key = image_key(im) if cache is not None else None
            hit = cache.load(key, device) if cache is not None else None
            pre = self._preprocess(im, where=f"images[{i + offset}]") if hit is None else None
            return im, key, hit, pre

        group = []  # (image, key, pre) of same working shape awaiting one batched pass

        def run_group():
            embs = self._embed_group([(im, pre) for im, _, pre in group], budget)
            for (im, key, _), emb in zip(group, embs):
                if cache is not None:
                    cache.save(key, emb)
            group.clear()
            return embs

        try:
            for im, key, hit, pre in _prefetch(prepare, len(items), n_prep):
                if hit is not None:
                    if group:
                        yield from run_group()
                    yield hit
                else:
                    shape = pre.array.shape
                    limit = self._batch_limit(shape, budget) if cuda else 1
                    if group and (group[0][2].array.shape != shape or len(group) >= limit):
                        yield from run_group()
                    group.append((im, key, pre))
                    if len(group) >= limit:
                        yield from run_group()
                if bar is not None:
                    bar.update(1)
            if group:
                yield from run_group()
        finally:
            if bar is not None:
                bar.close()

    def _batch_limit(self, shape, budget) -> int:
        if self._tile_core(shape, budget) is not None:
            return 1
        per = estimate_pass_bytes(self.network_.config, shape)
        return max(1, min(64, int(budget // max(per, 1))))

    def _embed_group(self, group, budget) -> list:
        """One (possibly tiled) network pass over preprocessed images of one shape."""
        net, channels_last = self._network_for_inference()
        device = self.device_
        cfg = net.config
        arrays = [pre.array for _, pre in group]
        spatial = arrays[0].shape
        x = torch.from_numpy(pad_batch(arrays, [float(a.min()) for a in arrays], cfg.global_stride))
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        g, l = run_network(net, x, spatial, amp_dtype=self._amp_dtype(device),
                           tile_core=self._tile_core(spatial, budget), channels_last=channels_last)
        # a NaN or infinity anywhere makes the sum non-finite: one read of each map, no mask (the
        # maps are L2-normalised, so finite values cannot overflow the float32 sums)
        if not (torch.isfinite(g.sum()) and torch.isfinite(l.sum())):
            raise FloatingPointError("an embedding holds NaN or infinite values (numeric overflow, e.g. "
                                     "with amp='fp16', or damaged weights)")
        out = []
        for b, (image, pre) in enumerate(group):
            gb, lb = (g[b], l[b]) if len(group) == 1 else (g[b].clone(), l[b].clone())
            ggeom = pre.geometry.strided(cfg.global_stride[::-1], size=gb.shape[1:][::-1])
            lgeom = pre.geometry.strided(cfg.local_stride[::-1], size=lb.shape[1:][::-1])
            out.append(Embedding(EmbeddingMap(gb, ggeom), EmbeddingMap(lb, lgeom), pre.geometry, image.geometry))
        return out

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict:
        return {
            "params": self._params_json(),
            "config": _jsonable(self.config_),
            "preset": self.preset_,
            "ndim": self.ndim_,
            "n_iter": self.n_iter_,
            "train_time": self.train_time_,
            "interrupted": bool(self.interrupted_),
            "history": self.history_,
        }

    def _params_json(self) -> dict:
        params = self.get_params(deep=False)
        if params.get("memory") is not None and not isinstance(params["memory"], (str, os.PathLike)):
            folder = cache_folder(params["memory"])  # a joblib.Memory: keep its folder
            params["memory"] = None if folder is None else str(folder)
        return _jsonable(params)

    def save(self, path):
        """Save the fitted model: parameters and metadata as JSON, weights as a state dict, written
        atomically. Load it with :func:`samlearn.load`."""
        check_is_fitted(self, "network_")
        from .persistence import save_payload
        tensors = {"network": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}}
        return save_payload(path, "SAMEmbedder", self._meta(), tensors)

    def _write_checkpoint(self, path, net, optimizer, cfg, preset, state):
        from .persistence import save_payload
        meta = {"params": self._params_json(), "config": _jsonable(cfg), "preset": preset,
                "ndim": cfg["ndim"], "n_iter": state.iteration, "train_time": state.train_time,
                "interrupted": bool(state.interrupted), "history": state.history, "checkpoint": True}
        tensors = {"network": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                   "optimizer": _to_cpu(optimizer.state_dict())}
        save_payload(path, "SAMEmbedder", meta, tensors)

    @classmethod
    def _from_payload(cls, meta, tensors, header, source=None):
        from .persistence import ModelFileError
        try:
            params = {k: _untuple(v) for k, v in dict(meta["params"]).items() if k in cls._get_param_names()}
            cfg = dict(meta["config"])
            cfg.setdefault("transform_scale", 1.0)  # saved before transform_scale existed
            preset = str(meta["preset"])
            ndim = int(meta["ndim"])
            n_iter = int(meta["n_iter"])
            train_time = float(meta["train_time"])
            history = list(meta["history"])
            interrupted = bool(meta.get("interrupted", False))
            net_cfg = cls._network_config(cfg)
            if net_cfg.ndim != ndim:
                raise ValueError(f"ndim {ndim} does not match the network's {net_cfg.ndim}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(f"model file {source!r} has damaged or incompatible metadata "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        net = _network_from_state(net_cfg, tensors, f"model file {source!r}")
        est = cls(**params)
        device = est._resolve_device_for_load()
        est.network_ = net.to(device).eval()
        est.device_ = device
        est.config_ = cfg
        est.preset_ = preset
        est.ndim_ = ndim
        est.n_iter_ = n_iter
        est.train_time_ = train_time
        est.history_ = history
        est.interrupted_ = interrupted
        if isinstance(tensors, dict) and "optimizer" in tensors:
            est._optimizer_state = tensors["optimizer"]
        return est

    def _resolve_device_for_load(self):
        try:
            return self._resolve_device()
        except ValueError:
            return torch.device("cpu")

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
            net = SAMNet(self._network_config(self.config_))
            net.load_state_dict(net_state)
            dev = torch.device(state.get("device_", "cpu"))
            if dev.type == "cuda" and not torch.cuda.is_available():
                dev = torch.device("cpu")
            self.device_ = dev
            self.network_ = net.to(dev).eval()

    def __sklearn_is_fitted__(self):
        return hasattr(self, "network_") and self.network_ is not None


# ---------------------------------------------------------------------- helpers


def _prefetch(fn, n, n_threads):
    """``fn(0), ..., fn(n - 1)`` in order; with ``n_threads`` > 0 computed ahead in background
    threads (at most ``2 * n_threads`` results waiting, so memory stays bounded)."""
    return thread_map(fn, n, n_threads)


def _read_checkpoint(path):
    from .persistence import ModelFileError, load_payload
    _, meta, tensors, _ = load_payload(path, kind="SAMEmbedder")
    try:
        meta = dict(meta)
        meta["n_iter"] = int(meta["n_iter"])
        meta["train_time"] = float(meta["train_time"])
        meta["history"] = list(meta["history"])
        meta["config"] = dict(meta["config"])
        if meta["n_iter"] < 0 or not math.isfinite(meta["train_time"]):
            raise ValueError(f"n_iter={meta['n_iter']}, train_time={meta['train_time']}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"checkpoint '{path}' has damaged metadata ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    return meta, tensors


def _network_from_state(net_cfg, tensors, what):
    """Build a SAMNet for ``net_cfg`` and load ``tensors["network"]`` into it, refusing (with
    :class:`~samlearn.persistence.ModelFileError`) weights whose names, shapes or dtypes do not match
    the architecture, or that are not finite. The architecture is first built on the "meta" device
    (no memory), so a tampered configuration cannot make samlearn allocate a huge network."""
    from .persistence import ModelFileError
    state = tensors.get("network") if isinstance(tensors, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelFileError(f"{what} holds no network weights (a dict of tensors)")
    try:
        with torch.device("meta"):
            expected = SAMNet(net_cfg).state_dict()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{what}: invalid network configuration ({str(exc)[:200]})") from None
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} {state[k].dtype} (expected {tuple(v.shape)} {v.dtype})"
             for k, v in expected.items() if k in state
             and (state[k].shape != v.shape or state[k].dtype != v.dtype)]
    if missing or extra or wrong:
        raise ModelFileError(f"{what}: weights do not match the architecture "
                             f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shape/dtype {wrong[:3]})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{what}: weights {bad[:3]} hold NaN or infinite values (a diverged or "
                             f"damaged model)")
    net = SAMNet(net_cfg)
    net.load_state_dict(state)
    return net


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store parameter value of type {type(obj).__name__} in a model file")


def _untuple(v):
    if isinstance(v, list):
        return tuple(_untuple(x) for x in v)
    return v


def _check_checkpointing(path, every, resume):
    """Fail at the start of fit, not hours later at the first checkpoint."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, (numbers.Integral, np.integer))
                              or every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer or None, got {every!r}")
    if path is None:
        if every is not None:
            raise ValueError(f"checkpoint_every={every} but checkpoint_path is None: no checkpoint would be "
                             f"written; set checkpoint_path")
        if resume:
            raise ValueError("resume=True but checkpoint_path is None: there is nothing to resume from; "
                             "set checkpoint_path")
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint_path '{os.fspath(path)}' is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.exists(parent):  # save_payload creates missing folders: check the first existing one
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise ValueError(f"checkpoint_path '{os.fspath(path)}' cannot be written (folder '{parent}' is "
                         f"not writable)")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """During training, turn SIGTERM (what batch schedulers and ``kill`` send before SIGKILL) into
    the same clean stop as Ctrl-C: the loop ends after the current step, writes a final checkpoint
    and returns a usable, partially trained model (``interrupted_=True``). Only possible in the
    main thread; elsewhere (and on platforms without SIGTERM) nothing changes."""
    import signal
    import threading
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - e.g. embedded interpreters
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _check_probability(p, name):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0.0 <= float(p) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {p!r}")


def _check_landmark_labels(y, n, ndim):
    """Validate the semi-supervised labels of ``fit``: None (or all entries None) -> None; else a
    list with, per image, None or an (n_landmarks, ndim) float64 array in world mm (NaN rows for
    unlabelled landmarks). Raises ValueError / TypeError naming ``y``."""
    if y is None:
        return None
    if isinstance(y, np.ndarray):
        if y.dtype == object:
            y = list(y)
        elif y.ndim != 3:
            raise ValueError(f"y as an array must have shape (n_images, n_landmarks, {ndim}), got shape "
                             f"{y.shape}")
    if isinstance(y, (str, bytes, dict)) or not hasattr(y, "__len__") or not hasattr(y, "__getitem__"):
        raise TypeError(f"y must be None or a sequence with one entry per image (None or an "
                        f"(n_landmarks, {ndim}) array of world mm), got {type(y).__name__}")
    if len(y) != n:
        raise ValueError(f"y must have one entry per image: len(images) = {n} but len(y) = {len(y)}")
    out, n_lm, labelled = [], None, []
    for i in range(n):
        item = y[i]
        if item is None:
            out.append(None)
            continue
        try:
            arr = np.asarray(item, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"y[{i}] must be None or a numeric (n_landmarks, {ndim}) array of world mm, "
                            f"got {type(item).__name__}") from None
        if arr.ndim != 2 or arr.shape[1] != ndim or arr.shape[0] < 1:
            raise ValueError(f"y[{i}] must have shape (n_landmarks, {ndim}) (world mm, (x, y[, z]) "
                             f"order) for {ndim}D images, got shape {arr.shape}")
        if n_lm is None:
            n_lm, first = arr.shape[0], i
        elif arr.shape[0] != n_lm:
            raise ValueError(f"every labelled image must have the same landmarks: y[{first}] has {n_lm} "
                             f"rows but y[{i}] has {arr.shape[0]} (use NaN rows for landmarks not "
                             f"labelled on an image)")
        nan = np.isnan(arr)
        partial = np.flatnonzero(nan.any(1) & ~nan.all(1))
        if np.isinf(arr).any() or partial.size:
            rows = np.flatnonzero(np.isinf(arr).any(1)).tolist() + partial.tolist()
            raise ValueError(f"y[{i}] rows {sorted(set(rows))[:5]} are not valid: a landmark is either "
                             f"all finite coordinates or all NaN (not labelled)")
        have = ~nan.all(1)
        if have.any():
            labelled.append(i)
        out.append(arr)
    if all(a is None for a in out):
        return None
    if len(labelled) < 2:
        raise ValueError(f"y labels {len(labelled)} image(s) with at least one landmark; semi-supervised "
                         f"training pairs the same landmark on two different images, so at least 2 "
                         f"labelled images are needed (or pass y=None)")
    have = np.stack([~np.isnan(out[i]).all(1) for i in labelled])
    if not (have.sum(0) >= 2).any():
        raise ValueError("y has no landmark labelled on two or more images: no labelled pair can be "
                         "formed (row k of every array must be the same landmark)")
    return out


def _check_labels_inside(arr, image, i):
    """Landmark labels of ``images[i]`` must lie inside it (NaN rows: not labelled)."""
    have = ~np.isnan(arr).all(1)
    if have.any():
        inside = image.geometry.contains(arr[have])
        if not inside.all():
            bad = np.flatnonzero(have)[~inside]
            raise ValueError(f"y[{i}] rows {bad[:5].tolist()} (e.g. {arr[bad[0]].tolist()} mm) lie "
                             f"outside images[{i}] (world mm, (x, y[, z]) order; check the "
                             f"coordinate order and frame)")


def _check_random_state(rs):
    if rs is not None and not isinstance(rs, (numbers.Integral, np.integer)):
        raise TypeError(f"random_state must be an int or None, got {type(rs).__name__}")
    if rs is not None and rs < 0:
        raise ValueError(f"random_state must be non-negative, got {rs}")


@contextlib.contextmanager
def _threads(n):
    if n is None:
        yield
        return
    if not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {n!r}")
    with limit_threads(int(n)):
        yield


def _validate_config(cfg: dict) -> None:
    nd = cfg["ndim"]

    def pos_int(name, allow_none=False):
        v = cfg[name]
        if v is None and allow_none:
            return
        if not isinstance(v, (numbers.Integral, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def pos_float(name, allow_none=False):
        v = cfg[name]
        if v is None and allow_none:
            return
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not (v > 0) or not math.isfinite(v):
            raise ValueError(f"{name} must be a positive number, got {v!r}")

    for name in ("batch_size", "n_pos", "n_hard", "n_random", "n_candidates", "n_local", "embed_dim",
                 "fpn_channels", "n_stages", "stem_kernel"):
        pos_int(name)
    pos_int("max_iter", allow_none=True)
    pos_float("max_time", allow_none=True)
    if cfg["max_iter"] is None and cfg["max_time"] is None:
        raise ValueError("max_iter and max_time are both None: set a training budget")
    for name in ("lr", "tau", "delta_mm", "width", "transform_scale"):
        pos_float(name)
    if not isinstance(cfg["warmup_iter"], (numbers.Integral, np.integer)) or cfg["warmup_iter"] < 0:
        raise ValueError(f"warmup_iter must be a non-negative integer, got {cfg['warmup_iter']!r}")
    if cfg["lr_schedule"] not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {cfg['lr_schedule']!r}")
    if cfg["intensity"] not in ("ct", "xray", "none"):
        raise ValueError(f"intensity must be 'ct', 'xray' or 'none', got {cfg['intensity']!r}")
    if (cfg.get("spacing_mm") is None) == (cfg.get("image_size") is None):
        raise ValueError("exactly one of spacing_mm and image_size must be set")
    if cfg.get("spacing_mm") is not None:
        pos_float("spacing_mm")
    else:
        size = cfg["image_size"]
        if len(size) != nd or any((not isinstance(s, (numbers.Integral, np.integer))) or s < 8 for s in size):
            raise ValueError(f"image_size must be {nd} integers >= 8, got {size!r}")
    ps = cfg["patch_shape"]
    if not isinstance(ps, (list, tuple)) or len(ps) != nd or any(
            not isinstance(s, (numbers.Integral, np.integer)) or s < 1 for s in ps):
        raise ValueError(f"patch_shape must be {nd} positive integers in numpy order, got {ps!r}")
    try:
        net_cfg = SAMEmbedder._network_config(cfg)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid network configuration: {exc}") from None
    gs = net_cfg.global_stride
    if any(p % s for p, s in zip(ps, gs)):
        raise ValueError(f"patch_shape {tuple(ps)} must be a multiple of the global stride {gs} on every axis")
    lo, hi = cfg["overlap"]
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"overlap must be a range within (0, 1], got {cfg['overlap']!r}")
