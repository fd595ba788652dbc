"""Safe model files: JSON metadata + torch state dicts, written atomically, loaded without code.

A samlearn model file is a ``torch.save`` archive holding only plain data: strings (JSON metadata),
numbers, lists, dicts and tensors. It is read with ``torch.load(weights_only=True)``, which refuses
any pickled object that is not plain data, so loading a model file never executes code from it.
Files are written to a temporary file in the same folder and renamed into place, so a crash never
leaves a half-written model behind.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ._version import __version__

__all__ = ["save_payload", "load_payload", "load", "FORMAT_VERSION", "ModelFileError"]

FORMAT_VERSION = 1
MAGIC = "samlearn-model"


class ModelFileError(ValueError):
    """A model file that is missing its samlearn header, corrupt, truncated or unsafe."""


def save_payload(path, kind: str, meta: dict, tensors: dict) -> Path:
    """Write ``meta`` (JSON-serialisable) and ``tensors`` (nested dicts of tensors / numbers)
    atomically to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path '{path}' is a folder; give a file name for the model")
    payload = {
        "magic": MAGIC,
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "samlearn_version": __version__,
        "torch_version": str(torch.__version__),
        "meta_json": json.dumps(meta),
        "tensors": tensors,
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
    return path


def _version_tuple(v: str):
    out = []
    for part in str(v).split("+")[0].split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def load_payload(path, kind: str | None = None) -> tuple:
    """Read a model file written by :func:`save_payload`. Returns ``(kind, meta, tensors, header)``.
    Raises :class:`ModelFileError` for anything that is not an intact samlearn model file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file does not exist: '{path}'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe content, RuntimeError/EOFError for damage
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        why = ("it contains objects that are not plain data (possibly malicious); refusing to load it"
               if unsafe else "it is corrupt, truncated or not a samlearn model file")
        raise ModelFileError(f"cannot load model file '{path}': {why} ({type(exc).__name__}: {msg[:200]})") from None
    if not isinstance(payload, dict) or payload.get("magic") != MAGIC:
        raise ModelFileError(f"'{path}' is not a samlearn model file (no samlearn header)")
    try:
        meta = json.loads(payload["meta_json"])
        tensors = payload["tensors"]
        fmt = int(payload["format_version"])
        file_kind = str(payload["kind"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model file '{path}' is damaged: {exc}") from None
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


def load(path):
    """Load any samlearn model file (currently: a fitted :class:`~samlearn.SAMEmbedder`)."""
    file_kind, meta, tensors, header = load_payload(path)
    if file_kind == "SAMEmbedder":
        from .embedder import SAMEmbedder
        return SAMEmbedder._from_payload(meta, tensors, header, source=str(path))
    raise ModelFileError(f"model file '{path}' holds an unknown kind of model: {file_kind!r}")
