"""The resolved configuration of a :class:`~samlearn.SAMEmbedder`: a preset with the estimator's
overrides on top, validated by declared constraints, and what it implies (the network, the loss,
the working grid of ``transform``, the autocast precision).

A configuration is a plain dict (JSON-serialisable: it is saved in model files) with the keys of a
preset (:data:`samlearn.presets.PRESETS`). :data:`CONFIG_CONSTRAINTS` declares what each key may
be, in the same constraint language as the estimators' parameters
(:mod:`samlearn._utils.validation`); :func:`validate_config` checks them and the rules that relate
several keys.
"""
from __future__ import annotations

import logging
from numbers import Integral, Real

import torch

from .._utils.validation import Interval, IntSequence, Options, check_param, validate_params
from ..exceptions import InvalidParameterError
from ..nn.loss import LossConfig
from ..nn.network import NetworkConfig
from ..presets import PRESETS, get_preset, resolve_preset_name
from ..training.distributed import rank_device

__all__ = ["loading_device", "PRESET_KEYS", "CONFIG_CONSTRAINTS", "resolve_config", "validate_config", "network_config",
           "loss_config", "inference_config", "amp_dtype", "bf16_supported", "resolve_device"]

logger = logging.getLogger(__name__)

#: estimator parameters that override the preset key of the same name (None: keep the preset's)
PRESET_KEYS = (
    "spacing_mm", "image_size", "intensity", "patch_shape", "batch_size", "depth", "width",
    "stem_stride", "stem_kernel", "stage_strides", "n_stages", "local_level", "fpn_channels",
    "embed_dim", "head", "lr", "warmup_iter", "lr_schedule", "weight_decay", "max_iter", "max_time",
    "n_pos", "n_hard", "n_random", "n_candidates", "n_local", "tau", "delta_mm", "overlap",
    "scale", "rotation_deg", "elastic", "intensity_jitter", "transform_scale",
)

_POSITIVE_INT = [Interval(Integral, 1, None)]
_POSITIVE = [Interval(Real, 0, None, closed="neither")]

#: constraints of the configuration keys checked here; the architecture keys (depth, strides,
#: head, ...) are checked by :class:`~samlearn.nn.NetworkConfig`, the augmentation keys (scale,
#: rotation_deg, elastic, ...) by :class:`~samlearn.training.PatchPairSampler`
CONFIG_CONSTRAINTS = {
    **{k: _POSITIVE_INT for k in ("batch_size", "n_pos", "n_hard", "n_random", "n_candidates",
                                  "n_local", "embed_dim", "fpn_channels", "n_stages", "stem_kernel")},
    **{k: _POSITIVE for k in ("lr", "tau", "delta_mm", "width", "transform_scale")},
    "max_iter": [Interval(Integral, 1, None), None],
    "max_time": [Interval(Real, 0, None, closed="neither"), None],
    "warmup_iter": [Interval(Integral, 0, None)],
    "weight_decay": [Interval(Real, 0, None)],
    "lr_schedule": [Options("cosine", "constant")],
    "intensity": [Options("ct", "xray", "none")],
    "spacing_mm": [Interval(Real, 0, None, closed="neither", unit="mm"), None],
}

#: amp values: "auto" (bf16 autocast on GPUs with bf16, else fp16; off on the CPU), a precision,
#: or off (:func:`amp_dtype`)
AMP_OPTIONS = [Options("auto", "bf16", "fp16", "none", False), None]


def resolve_config(preset: str, ndim: int, cuda: bool, overrides: dict) -> tuple:
    """The named preset for ``ndim``-D images with ``overrides`` (keys of :data:`PRESET_KEYS`
    whose value is not None) on top, validated.

    Parameters
    ----------
    preset : str
        ``"auto"`` or a name of :data:`samlearn.presets.PRESETS`.
    ndim : int
        Dimensionality of the training images.
    cuda : bool
        Whether training runs on a GPU (``"auto"`` then picks the paper's presets).
    overrides : dict
        Estimator parameters by name; None values keep the preset's.

    Returns
    -------
    name : str
        The preset used.
    config : dict
        The resolved configuration.
    """
    check_param(preset, [Options("auto", *PRESETS)], "preset")
    name = resolve_preset_name(preset, ndim, cuda)
    cfg = get_preset(name)
    if cfg["ndim"] != ndim:
        raise ValueError(f"preset {name!r} is for {cfg['ndim']}D images but the images are {ndim}D")
    for key in PRESET_KEYS:
        if overrides.get(key) is not None:
            cfg[key] = overrides[key]
    validate_config(cfg)
    return name, cfg


def validate_config(cfg: dict) -> None:
    """Check a configuration: every key against :data:`CONFIG_CONSTRAINTS`, then the rules that
    relate keys (a training budget, exactly one working resolution, patches that are multiples of
    the network's global stride, a valid architecture).

    Parameters
    ----------
    cfg : dict
        A resolved configuration.

    Raises
    ------
    InvalidParameterError, ValueError
        Naming the key.
    """
    nd = cfg["ndim"]
    validate_params(cfg, CONFIG_CONSTRAINTS)
    if cfg["max_iter"] is None and cfg["max_time"] is None:
        raise ValueError("max_iter and max_time are both None: set a training budget")
    if (cfg.get("spacing_mm") is None) == (cfg.get("image_size") is None):
        raise ValueError("exactly one of spacing_mm and image_size must be set")
    if cfg.get("image_size") is not None:
        check_param(cfg["image_size"], [IntSequence(nd, 8)], "image_size")
    check_param(cfg["patch_shape"], [IntSequence(nd, 1, what="integers in numpy order")], "patch_shape")
    try:
        net_cfg = network_config(cfg)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid network configuration: {exc}") from None
    gs = net_cfg.global_stride
    if any(p % s for p, s in zip(cfg["patch_shape"], gs)):
        raise ValueError(f"patch_shape {tuple(cfg['patch_shape'])} must be a multiple of the global "
                         f"stride {gs} on every axis")
    lo, hi = cfg["overlap"]
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"overlap must be a range within (0, 1], got {cfg['overlap']!r}")


def network_config(cfg: dict) -> NetworkConfig:
    """The :class:`~samlearn.nn.NetworkConfig` of a configuration.

    Parameters
    ----------
    cfg : dict
        A configuration (resolved or saved in a model file).

    Returns
    -------
    NetworkConfig
    """
    return NetworkConfig(ndim=cfg["ndim"], depth=cfg["depth"], width=cfg["width"],
                         stem_stride=cfg["stem_stride"], stem_kernel=cfg["stem_kernel"],
                         stage_strides=cfg["stage_strides"], n_stages=cfg["n_stages"],
                         local_level=cfg["local_level"], fpn_channels=cfg["fpn_channels"],
                         embed_dim=cfg["embed_dim"], head=cfg.get("head", "conv"))


def loss_config(cfg: dict) -> LossConfig:
    """The :class:`~samlearn.nn.LossConfig` of a configuration.

    Parameters
    ----------
    cfg : dict
        A resolved configuration.

    Returns
    -------
    LossConfig
    """
    return LossConfig(tau=cfg["tau"], delta_mm=cfg["delta_mm"], n_hard=cfg["n_hard"],
                      n_random=cfg["n_random"], n_candidates=cfg["n_candidates"],
                      n_local=cfg["n_local"])


def inference_config(cfg: dict, transform_scale) -> dict:
    """The configuration with the working grid of ``transform``.

    The grid is ``image_size`` x scale (2D) or ``spacing_mm`` / scale (3D), scale =
    ``transform_scale`` when set, else the fitted ``cfg["transform_scale"]`` (1.0 for models saved
    before it existed).

    Parameters
    ----------
    cfg : dict
        The fitted configuration (``SAMEmbedder.config_``).
    transform_scale : float or None
        The estimator's ``transform_scale`` parameter.

    Returns
    -------
    dict
        ``cfg`` itself when the scale is 1, else a copy with the scaled working grid.
    """
    scale = cfg.get("transform_scale", 1.0) if transform_scale is None else transform_scale
    check_param(scale, [Interval(Real, 0, None, closed="neither"), None], "transform_scale")
    scale = float(scale)
    if scale == 1.0:
        return cfg
    cfg = dict(cfg, transform_scale=scale)
    if cfg.get("spacing_mm") is not None:
        cfg["spacing_mm"] = float(cfg["spacing_mm"]) / scale
    else:
        size = tuple(int(round(int(v) * scale)) for v in cfg["image_size"])
        if min(size) < 8:
            raise InvalidParameterError(
                f"transform_scale={scale:g} makes the working size {size} from image_size "
                f"{tuple(cfg['image_size'])}: below 8 pixels; use a larger transform_scale")
        cfg["image_size"] = size
    return cfg


def bf16_supported(device: torch.device) -> bool:
    """Whether a CUDA device computes in bfloat16 natively (compute capability 8.0, Ampere, or
    newer; every ROCm device torch supports).

    Older GPUs only emulate bf16 (slowly), which ``torch.cuda.is_bf16_supported()`` counts as
    support by default; the capability of ``device`` itself is what decides here.

    Parameters
    ----------
    device : torch.device
        A CUDA device (``cuda`` without an index: the current one).

    Returns
    -------
    bool
    """
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def amp_dtype(amp, device: torch.device):
    """The autocast dtype of an ``amp`` setting on ``device`` (None: no autocast).

    On CUDA ``"auto"`` is bf16 where the GPU computes in bf16 (:func:`bf16_supported`: compute
    capability 8.0 or newer), else fp16 -- in training with a gradient scaler
    (:func:`samlearn.training.loop.make_grad_scaler`), in inference as plain fp16 autocast. On the
    CPU ``"auto"`` is off (float32).

    Parameters
    ----------
    amp : {"auto", "bf16", "fp16", "none"} or None
        The setting; ``"none"``, False and None: no autocast.
    device : torch.device
        Where the network runs.

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16``, ``torch.float16`` or None.

    Raises
    ------
    InvalidParameterError
        For an unknown setting, ``"fp16"`` on the CPU, or ``"bf16"`` on a GPU without bf16.
    """
    check_param(amp, AMP_OPTIONS, "amp")
    if amp in (None, "none", False):
        return None
    cuda = device.type == "cuda"
    if amp == "auto":
        if not cuda:
            return None
        dtype = torch.bfloat16 if bf16_supported(device) else torch.float16
        logger.debug("amp='auto' on %s: %s autocast", device, dtype)
        return dtype
    if amp == "bf16":
        if cuda and not bf16_supported(device):
            cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
            raise InvalidParameterError(f"amp='bf16' needs a GPU with bfloat16 (compute capability 8.0 "
                                        f"or newer) but {device} has compute capability {cap}; use "
                                        f"amp='fp16' (trained with a gradient scaler), 'auto' or 'none'")
        return torch.bfloat16
    if not cuda:
        raise InvalidParameterError("amp='fp16' needs a CUDA device; use 'bf16' or 'none' on the CPU")
    return torch.float16


def resolve_device(device, distributed=False) -> torch.device:
    """The torch device of a ``device`` setting.

    With ``distributed`` other than False, a process launched by ``torchrun`` with
    ``WORLD_SIZE > 1`` gets its own GPU: every CUDA setting ("auto" on a GPU, "cuda", "cuda:N")
    becomes ``cuda:LOCAL_RANK``, an explicit other index with a warning
    (:func:`samlearn.training.distributed.rank_device`).

    Parameters
    ----------
    device : "auto", str, torch.device or None
        "auto" (or None) is a GPU when there is one, else the CPU.
    distributed : {"auto", True, False} or None, default False
        The estimator's ``distributed`` setting; False: the device as asked, whatever the
        environment.

    Returns
    -------
    torch.device
        The device of this process.

    Raises
    ------
    InvalidParameterError
        For a string that names no device.
    ValueError
        When CUDA is asked for and not available, or ``LOCAL_RANK`` is not below the number of
        GPUs.
    """
    if device is None or device == "auto":
        return rank_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"), distributed)
    d = device
    if isinstance(device, str):
        try:
            d = torch.device(device)
        except RuntimeError:
            raise InvalidParameterError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                        f"got {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine")
    return rank_device(d, distributed)


def loading_device(device) -> torch.device:
    """Where a loaded model goes: its ``device`` setting when this machine has it, else the CPU.

    Parameters
    ----------
    device : "auto", str, torch.device or None
        The saved ``device`` parameter.

    Returns
    -------
    torch.device
        :func:`resolve_device` of it, or the CPU when it names a device this machine lacks.
    """
    try:
        return resolve_device(device)
    except ValueError:
        return torch.device("cpu")
