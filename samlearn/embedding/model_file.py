"""Safe model files: JSON metadata + torch state dicts, written atomically, loaded without code.

A samlearn model file is a ``torch.save`` archive holding only plain data: strings (JSON metadata),
numbers, lists, dicts and tensors. It is read with ``torch.load(weights_only=True)``, which refuses
any pickled object that is not plain data, so loading a model file never executes code from it.
Files are written to a temporary file in the same folder, flushed to disk and renamed into place
(then the folder entry is flushed), so a crash never leaves a half-written model behind; a SHA-256
checksum of the content, verified on load, catches damage that the archive format would not.
Weights are checked against the architecture before they are loaded (:func:`network_from_state`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..exceptions import ModelFileError
from ..nn.network import SAMNet
from .config import network_config

__all__ = ["save_payload", "load_payload", "check_checkpointing", "read_checkpoint", "network_from_state", "embedder_meta",
           "read_embedder_meta", "to_jsonable", "FORMAT_VERSION"]


FORMAT_VERSION = 1


MAGIC = "samlearn-model"


def save_payload(path, kind: str, meta: dict, tensors: dict) -> Path:
    """Write a model file atomically.

    Parameters
    ----------
    path : str or path
        The file (not a folder); missing parent folders are created.
    kind : str
        The kind of model (e.g. ``"SAMEmbedder"``), checked by :func:`load_payload`.
    meta : dict
        JSON-serialisable metadata.
    tensors : dict
        Nested dicts of tensors / numbers.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path '{path}' is a folder; give a file name for the model")
    meta_json = json.dumps(meta, allow_nan=True)
    payload = {
        "magic": MAGIC,
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "samlearn_version": __version__,
        "torch_version": str(torch.__version__),
        "meta_json": meta_json,
        "tensors": tensors,
        "sha256": payload_digest(meta_json, tensors),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the folder's entry is flushed to disk), so a power
    cut just after a save cannot bring back the previous file. A no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def payload_digest(meta_json: str, tensors) -> str:
    """SHA-256 of the metadata and of every tensor's name, dtype, shape and bytes. Stored in the file
    and checked on load: torch's archive format does not verify its data records, so without it a
    flipped bit in a weight (bit rot, a damaged copy) loads silently as a different model."""
    h = hashlib.sha256()
    h.update(meta_json.encode("utf-8"))
    _digest_into(h, tensors)
    return h.hexdigest()


def _digest_into(h, obj) -> None:
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(f"K{k!r}".encode())
            _digest_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest_into(h, v)
    else:
        h.update(f"V{obj!r}".encode())


def _version_tuple(v: str):
    out = []
    for part in str(v).split("+")[0].split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def load_payload(path, kind: str | None = None) -> tuple:
    """Read a model file written by :func:`save_payload`.

    Parameters
    ----------
    path : str or path
        The model file.
    kind : str, optional
        The kind of model expected (None: any).

    Returns
    -------
    kind : str
        The kind of model in the file.
    meta : dict
        Its metadata.
    tensors : dict
        Its tensors (on the CPU).
    header : dict
        The whole payload (versions, checksum, ...).

    Raises
    ------
    ModelFileError
        For anything that is not an intact samlearn model file (of ``kind``).
    FileNotFoundError, IsADirectoryError, TypeError
        For a missing file, a folder, or a ``path`` that is not a path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a folder, not a model file")
    if not path.is_file():
        raise FileNotFoundError(f"model file does not exist: '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe content, RuntimeError/EOFError for damage
        text = str(exc)
        if "WeightsUnpickler error:" in text:  # keep torch's diagnosis, drop its advice to disable the check
            text = text.split("WeightsUnpickler error:", 1)[1]
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        msg = lines[0] if lines else type(exc).__name__
        if "Unsupported global" in text:
            why = "it contains objects that are not plain data (code or classes: possibly malicious)"
        else:
            why = ("it is corrupt, truncated or not a samlearn model file (or holds objects that are "
                   "not plain data)")
        raise ModelFileError(f"cannot load model file '{path}': {why}; refusing to load it "
                             f"({type(exc).__name__}: {msg[:200]})") from None
    if not isinstance(payload, dict) or payload.get("magic") != MAGIC:
        raise ModelFileError(f"'{path}' is not a samlearn model file (no samlearn header)")
    try:
        meta = json.loads(payload["meta_json"])
        tensors = payload["tensors"]
        fmt = int(payload["format_version"])
        file_kind = str(payload["kind"])
        if not isinstance(meta, dict) or not isinstance(tensors, dict):
            raise TypeError("metadata and tensors must be dicts")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file '{path}' is damaged: {exc}") from None
    digest = payload.get("sha256")
    if digest is not None and digest != payload_digest(payload["meta_json"], tensors):
        raise ModelFileError(f"model file '{path}' is corrupt: its SHA-256 checksum does not match its "
                             f"content (damaged on disk or in a copy); refusing to load it")
    if fmt > FORMAT_VERSION:
        raise ModelFileError(f"model file '{path}' has format version {fmt}; this samlearn "
                             f"({__version__}) reads up to {FORMAT_VERSION}. Upgrade samlearn.")
    saved = payload.get("samlearn_version", "0")
    if _version_tuple(saved) > _version_tuple(__version__):
        warnings.warn(f"model file '{path}' was written by samlearn {saved}, newer than this "
                      f"samlearn {__version__}; it may not load or behave identically", UserWarning, stacklevel=3)
    if kind is not None and file_kind != kind:
        raise ModelFileError(f"model file '{path}' holds a {file_kind}, expected a {kind}")
    return file_kind, meta, tensors, payload


def check_checkpointing(path, every, resume) -> None:
    """Check the checkpoint settings at the start of ``fit``, not hours later at the first
    checkpoint: ``checkpoint_every`` and ``resume`` need a ``path``, which must be a file name in a
    writable folder (missing folders are created when the checkpoint is written).

    Parameters
    ----------
    path : str, path or None
        ``checkpoint_path``.
    every : int or None
        ``checkpoint_every``.
    resume : bool
        ``resume``.

    Raises
    ------
    ValueError
        Naming the parameter.
    """
    if path is None:
        if every is not None:
            raise ValueError(f"checkpoint_every={every} but checkpoint_path is None: no checkpoint would be "
                             f"written; set checkpoint_path")
        if resume:
            raise ValueError("resume=True but checkpoint_path is None: there is nothing to resume from; "
                             "set checkpoint_path")
        return
    if os.path.isdir(path):
        raise ValueError(f"checkpoint_path '{os.fspath(path)}' is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.exists(parent):  # save_payload creates missing folders: check the first existing one
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise ValueError(f"checkpoint_path '{os.fspath(path)}' cannot be written (folder '{parent}' is "
                         f"not writable)")


def read_checkpoint(path):
    """Read a training checkpoint of a ``SAMEmbedder``.

    Parameters
    ----------
    path : str or path
        The checkpoint.

    Returns
    -------
    meta : dict
        Its metadata, with ``n_iter`` (int), ``train_time`` (float), ``history`` (list) and
        ``config`` (dict) checked.
    tensors : dict
        Its tensors (``network``, ``optimizer``).

    Raises
    ------
    ModelFileError
        For a damaged file or damaged metadata.
    """
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


def network_from_state(net_cfg, tensors, what):
    """Build a SAMNet and load checked weights into it.

    The architecture is first built on the "meta" device (no memory), so a tampered configuration
    cannot make samlearn allocate a huge network.

    Parameters
    ----------
    net_cfg : NetworkConfig
        The architecture.
    tensors : dict
        The file's tensors; ``tensors["network"]`` is the state dict.
    what : str
        Names the file in error messages.

    Returns
    -------
    SAMNet
        The network on the CPU, weights loaded.

    Raises
    ------
    ModelFileError
        For weights whose names, shapes or dtypes do not match the architecture, or that are not
        finite, and for an invalid configuration.
    """
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


def embedder_meta(params: dict, config: dict, preset: str, n_iter: int, train_time: float,
                  interrupted: bool, history: list, checkpoint: bool = False) -> dict:
    """The JSON metadata of a saved ``SAMEmbedder`` (``checkpoint``: of a training checkpoint).

    Parameters
    ----------
    params : dict
        The estimator's parameters (JSON-serialisable).
    config : dict
        The resolved configuration.
    preset : str
        The preset used.
    n_iter : int
        Iterations trained.
    train_time : float
        Seconds of training.
    interrupted : bool
        Whether training was interrupted.
    history : list of dict
        Per-iteration records.
    checkpoint : bool, default False
        Mark the metadata as a checkpoint's.

    Returns
    -------
    dict
        JSON-serialisable metadata.
    """
    meta = {"params": params, "config": to_jsonable(config), "preset": preset, "ndim": config["ndim"],
            "n_iter": n_iter, "train_time": train_time, "interrupted": bool(interrupted),
            "history": history}
    if checkpoint:
        meta["checkpoint"] = True
    return meta


def read_embedder_meta(meta: dict, param_names, source) -> tuple:
    """The parameters and fitted attributes stored by :func:`embedder_meta`.

    Parameters
    ----------
    meta : dict
        The metadata of a model file.
    param_names : list of str
        The estimator's parameters (others in the file are ignored).
    source : str or None
        Names the file in error messages.

    Returns
    -------
    params : dict
        Estimator parameters.
    fitted : dict
        ``config_``, ``preset_``, ``ndim_``, ``n_iter_``, ``train_time_``, ``history_``,
        ``interrupted_``.
    net_cfg : NetworkConfig
        The network's architecture.

    Raises
    ------
    ModelFileError
        For damaged or incompatible metadata.
    """
    try:
        params = {k: untuple(v) for k, v in dict(meta["params"]).items() if k in param_names}
        cfg = dict(meta["config"])
        cfg.setdefault("transform_scale", 1.0)  # saved before transform_scale existed
        fitted = {"config_": cfg, "preset_": str(meta["preset"]), "ndim_": int(meta["ndim"]),
                  "n_iter_": int(meta["n_iter"]), "train_time_": float(meta["train_time"]),
                  "history_": list(meta["history"]), "interrupted_": bool(meta.get("interrupted", False))}
        net_cfg = network_config(cfg)
        if net_cfg.ndim != fitted["ndim_"]:
            raise ValueError(f"ndim {fitted['ndim_']} does not match the network's {net_cfg.ndim}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"model file {source!r} has damaged or incompatible metadata "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return params, fitted, net_cfg


def to_cpu(obj):
    """Detached CPU copies of the tensors in nested dicts / lists / tuples (others unchanged)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def to_jsonable(obj):
    """Convert a parameter value to plain JSON data.

    Parameters
    ----------
    obj : object
        Nested dicts, lists and tuples of numbers, strings, None, numpy scalars and arrays,
        ``torch.device`` and paths.

    Returns
    -------
    object
        The same as dicts (str keys), lists, numbers, strings and None.

    Raises
    ------
    TypeError
        For a value that cannot be stored in a model file.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
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


def untuple(v):
    """Turn the JSON lists of a stored parameter back into tuples (recursively)."""
    if isinstance(v, list):
        return tuple(untuple(x) for x in v)
    return v
