"""Safe model files: JSON metadata + torch state dicts, written atomically, loaded without code.

A samlearn model file is a ``torch.save`` archive holding only plain data: strings (JSON metadata),
numbers, lists, dicts and tensors. It is read with ``torch.load(weights_only=True)``, which refuses
any pickled object that is not plain data, so loading a model file never executes code from it.
Files are written to a temporary file in the same folder, flushed to disk and renamed into place
(then the folder entry is flushed), so a crash never leaves a half-written model behind; a SHA-256
checksum of the content, verified on load, catches damage that the archive format would not.
"""
from __future__ import annotations

import hashlib
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
    """Read a model file written by :func:`save_payload`. Returns ``(kind, meta, tensors, header)``.
    Raises :class:`ModelFileError` for anything that is not an intact samlearn model file."""
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


def load(path):
    """Load any samlearn model file (currently: a fitted :class:`~samlearn.SAMEmbedder`)."""
    file_kind, meta, tensors, header = load_payload(path)
    if file_kind == "SAMEmbedder":
        from .embedder import SAMEmbedder
        return SAMEmbedder._from_payload(meta, tensors, header, source=str(path))
    raise ModelFileError(f"model file '{path}' holds an unknown kind of model: {file_kind!r}")
