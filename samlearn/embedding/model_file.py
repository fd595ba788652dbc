"""Safe model files: JSON metadata + tensors in a safetensors file, written atomically, loaded without code.

A model file (format version 2) is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: a
JSON header, then raw tensor bytes; it holds no pickle, so loading it never runs code. The tensors of
the nested ``tensors`` dict are named by their path of keys joined by ``/`` (``network/stem.0.weight``);
the header's string metadata holds ``magic``, ``kind``, ``format_version``, ``samlearn_version``,
``torch_version``, ``meta_json`` (the JSON metadata), ``layout_json`` (the nesting of ``tensors``, with
its numbers, strings, booleans and None) and ``sha256``, a mandatory checksum of ``meta_json`` and
``tensors``: a file without it, or whose content does not match it (damaged or edited), is refused.
Format 1 files (``torch.save`` archives, from older samlearn) still load, with a
:class:`~samlearn.exceptions.ModelFormatWarning` asking to save them again, through
``torch.load(weights_only=True)``, which refuses any pickled object that is not plain data.
Files are written to a new temporary file in the same folder, flushed to disk and renamed into place
(then the folder entry is flushed), so a crash never leaves a half-written model behind; they get the
permissions of any new file (the umask). Weights are checked against the architecture before they
are loaded (:func:`network_from_state`).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from .._utils.files import atomic_write_bytes
from .._version import __version__
from ..exceptions import ModelFileError, ModelFormatWarning
from ..nn.network import SAMNet
from .config import network_config

__all__ = ["save_payload", "load_payload", "check_checkpointing", "read_checkpoint", "network_from_state", "embedder_meta",
           "read_embedder_meta", "to_jsonable", "FORMAT_VERSION"]

FORMAT_VERSION = 2
MAGIC = "samlearn-model"
_SCALARS = (str, int, float, bool, type(None))
_ZIP = b"PK\x03\x04"  # a torch.save archive: format version 1


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
        Nested dicts, lists and tuples of tensors, numbers, strings, booleans and None (also as keys).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        For a value in ``tensors`` that cannot be stored.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path '{path}' is a folder; give a file name for the model")
    meta_json = json.dumps(meta, allow_nan=True)
    flat, layout = _flatten(tensors)
    header = {"magic": MAGIC, "kind": str(kind), "format_version": str(FORMAT_VERSION),
              "samlearn_version": __version__, "torch_version": str(torch.__version__), "meta_json": meta_json,
              "layout_json": json.dumps(layout, allow_nan=True), "sha256": payload_digest(meta_json, tensors)}
    data = safetensors.torch.save(flat, metadata=header)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, data)


def _flatten(tensors):
    """The tensors of a nested dict, named by their path of keys, and the JSON layout of the nesting:
    ``{"dict": [[key, node], ...]}``, ``{"list"|"tuple": [node, ...]}``, ``{"tensor": name}``, ``{"value": v}``."""
    flat, storages = {}, set()

    def encode(obj, where):
        if torch.is_tensor(obj):
            t = obj.detach().cpu().contiguous()
            if t.numel():
                if t.untyped_storage().data_ptr() in storages:  # safetensors refuses shared memory
                    t = t.clone()
                storages.add(t.untyped_storage().data_ptr())
            name, n = where or "tensor", 1
            while name in flat or name == "__metadata__":  # keys such as "a/b" beside "a": {"b": ...}
                name, n = f"{where}#{n}", n + 1
            flat[name] = t
            return {"tensor": name}
        if isinstance(obj, dict):
            for k in obj:
                if type(k) not in _SCALARS:
                    raise TypeError(f"cannot store a key of type {type(k).__name__} (at '{where}') in a model file")
            return {"dict": [[k, encode(v, f"{where}/{k}" if where else str(k))] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {"tuple" if isinstance(obj, tuple) else "list":
                    [encode(v, f"{where}/{i}" if where else str(i)) for i, v in enumerate(obj)]}
        if type(obj) in _SCALARS:
            return {"value": obj}
        raise TypeError(f"cannot store a value of type {type(obj).__name__} (at '{where}') in a model file")

    return flat, encode(tensors, "")


def _unflatten(layout, flat):
    """Rebuild the nested ``tensors`` dict from its layout (which must use every tensor)."""
    used = set()

    def decode(node):
        (tag, body), = node.items()
        if tag == "tensor":
            used.add(body)
            return flat[body]
        if tag == "dict":
            return {k: decode(v) for k, v in body}
        if tag in ("list", "tuple"):
            return (tuple if tag == "tuple" else list)(decode(v) for v in body)
        if tag == "value" and type(body) in _SCALARS:
            return body
        raise ValueError(f"unknown layout entry {tag!r}")

    tensors = decode(layout)
    if not isinstance(tensors, dict) or used != set(flat):
        raise ValueError("the layout does not describe the file's tensors")
    return tensors


def payload_digest(meta_json: str, tensors) -> str:
    """SHA-256 of the metadata and of every key, value and tensor (dtype, shape, bytes) of ``tensors``:
    without it a flipped bit (bit rot, a damaged copy) or an edited weight would load silently."""
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


def _corrupt(path, exc) -> ModelFileError:
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return ModelFileError(f"cannot load model file '{path}': it is corrupt, truncated or not a samlearn model "
                          f"file; refusing to load it ({type(exc).__name__}: {line[:200]})")


def _read_file(path: Path) -> tuple:
    """``(header, flat)`` of a model file, unchecked: its metadata and tensors (by name); for a
    format-1 file (a ``torch.save`` archive, read with the safe unpickler), its payload and None."""
    data = path.read_bytes()
    if data[:4] == _ZIP:
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for unsafe content, RuntimeError/EOFError for damage
            text = str(exc)
            if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
                # torch's message advises weights_only=False (running the file's code): keep its diagnosis
                found = [ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[-1].splitlines()
                         if "global" in ln.lower() and "weights_only" not in ln]
                raise ModelFileError(f"cannot load model file '{path}': it holds objects that are not plain "
                                     f"data (code or classes, possibly malicious) and was refused, since loading "
                                     f"it could run code" + (f" ({found[0][:200]})" if found else "")) from None
            raise _corrupt(path, exc) from None
        return (payload if isinstance(payload, dict) else {}), None
    try:
        flat = safetensors.torch.load(data)
        # safetensors checked the header: JSON, with str -> str metadata
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, JSON, UTF-8 errors: all damage
        raise _corrupt(path, exc) from None
    return dict(header), flat


def load_payload(path, kind: str | None = None) -> tuple:
    """Read a model file written by :func:`save_payload` (or a format-1 file, with a warning).

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
        The file's header (``magic``, ``kind``, ``format_version`` (int), ``sha256``, ...), ``tensors``.

    Raises
    ------
    ModelFileError
        For anything that is not an intact samlearn model file (of ``kind``): damaged, truncated,
        edited (no checksum, or one that does not match), unsafe, or of a newer format.
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
    payload, flat = _read_file(path)
    legacy = flat is None
    if payload.get("magic") != MAGIC:
        raise ModelFileError(f"'{path}' is not a samlearn model file (no samlearn header)")
    try:
        fmt = int(payload["format_version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file '{path}' is damaged: no format version ({exc})") from None
    if fmt > FORMAT_VERSION:
        raise ModelFileError(f"model file '{path}' has format version {fmt}; this samlearn "
                             f"({__version__}) reads up to {FORMAT_VERSION}. Upgrade samlearn.")
    try:
        if fmt < 1 or (fmt == 1) != legacy:
            raise ValueError(f"format version {fmt} does not match the file's container")
        if not legacy:
            payload["tensors"] = _unflatten(json.loads(payload["layout_json"]), flat)
        meta, tensors, file_kind = json.loads(payload["meta_json"]), payload["tensors"], str(payload["kind"])
        if not isinstance(meta, dict) or not isinstance(tensors, dict):
            raise TypeError("metadata and tensors must be dicts")
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ModelFileError(f"model file '{path}' is damaged: {type(exc).__name__}: {str(exc)[:200]}") from None
    digest = payload.get("sha256")
    if not isinstance(digest, str) or not digest:
        raise ModelFileError(f"model file '{path}' has no checksum: its SHA-256 checksum is missing (every "
                             f"samlearn model file carries one), so it was damaged or edited; refusing to load it")
    if digest != payload_digest(payload["meta_json"], tensors):
        raise ModelFileError(f"model file '{path}' is corrupt: its SHA-256 checksum does not match its content, "
                             f"so it was damaged (on disk or in a copy) or edited; refusing to load it")
    saved = payload.get("samlearn_version", "0")
    if _version_tuple(saved) > _version_tuple(__version__):
        warnings.warn(f"model file '{path}' was written by samlearn {saved}, newer than this "
                      f"samlearn {__version__}; it may not load or behave identically", UserWarning, stacklevel=3)
    if kind is not None and file_kind != kind:
        raise ModelFileError(f"model file '{path}' holds a {file_kind}, expected a {kind}")
    if legacy:
        warnings.warn(f"model file '{path}' has samlearn's old format (version 1, a torch.save archive); it "
                      f"loaded safely, but re-save it with this samlearn to get the current format (load it "
                      f"and call .save() again: samlearn.load(path).save(path))", ModelFormatWarning, stacklevel=3)
    header = dict({k: v for k, v in payload.items() if k != "layout_json"}, format_version=fmt)
    return file_kind, meta, tensors, header


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
