"""The embedding cache: embeddings on disk, keyed by image content and model fingerprint.

:class:`EmbeddingCache` stores embeddings in float16 (half the memory of float32), keyed by the
image's content and geometry (:func:`image_key`) and by a fingerprint of the model (weights,
architecture, preprocessing, precision: :func:`model_fingerprint`), so a changed model never reads
stale embeddings; entries are read back as float32 with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .._utils.files import atomic_write_bytes
from ..image import ImageGeometry
from .maps import Embedding, EmbeddingMap

__all__ = ["EmbeddingCache", "model_fingerprint", "image_key", "cache_folder"]


def cache_folder(memory):
    """The folder of a ``memory`` parameter.

    Parameters
    ----------
    memory : str, path, joblib.Memory or None
        None (no cache), a folder path, or an object with a ``location`` (``joblib.Memory``).

    Returns
    -------
    pathlib.Path or None
        The folder, or None for no cache.

    Raises
    ------
    TypeError
        For anything else.
    """
    if memory is None:
        return None
    if isinstance(memory, (str, os.PathLike)):
        return Path(memory)
    loc = getattr(memory, "location", _MISSING)
    if loc is not _MISSING:
        return None if loc is None else Path(loc)
    raise TypeError(f"memory must be None, a folder path or a joblib.Memory, got {type(memory).__name__}")


_MISSING = object()


def _update_array(h, arr):
    a = np.ascontiguousarray(arr)
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(memoryview(a).cast("B"))


def image_key(image) -> str:
    """The cache key of an image's content.

    Parameters
    ----------
    image : Image
        The image.

    Returns
    -------
    str
        Hex digest of its voxel values (dtype and shape included) and its geometry.
    """
    h = hashlib.blake2b(digest_size=20)
    _update_array(h, image.array)
    g = image.geometry
    for v in (np.asarray(g.size, np.int64), np.asarray(g.spacing, np.float64),
              np.asarray(g.origin, np.float64), np.asarray(g.direction, np.float64)):
        _update_array(h, v)
    return h.hexdigest()


def model_fingerprint(net, config: dict, amp_dtype=None) -> str:
    """The fingerprint of what determines an embedding besides the image.

    Parameters
    ----------
    net : torch.nn.Module
        The network; every weight and buffer of its state dict counts, by name.
    config : dict
        The resolved configuration (architecture and preprocessing), JSON-serialisable.
    amp_dtype : torch.dtype or None, default None
        The inference precision.

    Returns
    -------
    str
        Hex digest.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(amp_dtype).encode())
    for name, t in net.state_dict().items():
        h.update(name.encode())
        _update_array(h, t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      if t.numel() else np.zeros(0, np.uint8))
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings on disk under ``folder/<model fingerprint>/<image key>.pt``.

    Maps are stored in float16 (half the memory of float32; unit vectors lose about 5e-4 per
    component), geometry as JSON. Files are written atomically, with the permissions of any new
    file (the umask), and read with ``torch.load(weights_only=True)``; an unreadable file is
    treated as missing (and rewritten).

    Parameters
    ----------
    folder : str or path
        The cache folder.
    fingerprint : str
        The model's :func:`model_fingerprint`; its first 32 characters name the sub-folder.

    Attributes
    ----------
    folder : pathlib.Path
        The sub-folder of this model.
    fingerprint : str
        The fingerprint, also stored in (and checked against) every entry.
    """

    FORMAT = 1

    def __init__(self, folder, fingerprint: str):
        self.folder = Path(folder) / fingerprint[:32]
        self.fingerprint = fingerprint

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str, device):
        """Read an entry.

        Parameters
        ----------
        key : str
            The image's :func:`image_key`.
        device : torch.device or str
            Where the maps go (as float32).

        Returns
        -------
        Embedding or None
            The embedding, or None when the entry is missing, of another format or model, or
            unreadable (with a warning).
        """
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("format") != self.FORMAT or blob.get("fingerprint") != self.fingerprint:
                return None
            geo = json.loads(blob["geometry"])
            g = blob["global"].to(device=device, dtype=torch.float32)
            loc = blob["local"].to(device=device, dtype=torch.float32)
            geom = {k: ImageGeometry.from_dict(v) for k, v in geo.items()}
            return Embedding(EmbeddingMap(g, geom["global"]), EmbeddingMap(loc, geom["local"]),
                             geom["image"], geom["source"])
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            warnings.warn(f"ignoring unreadable embedding cache file '{path}' "
                          f"({type(exc).__name__}: {str(exc)[:120]}); recomputing it", UserWarning, stacklevel=3)
            return None

    def save(self, key: str, embedding) -> Path:
        """Write an entry atomically (maps as float16).

        Parameters
        ----------
        key : str
            The image's :func:`image_key`.
        embedding : Embedding
            What to store.

        Returns
        -------
        pathlib.Path
            The file written.
        """
        path = self._path(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        geo = {"global": embedding.global_map.geometry.to_dict(), "local": embedding.local_map.geometry.to_dict(),
               "image": embedding.image_geometry.to_dict(), "source": embedding.source_geometry.to_dict()}
        blob = {"format": self.FORMAT, "fingerprint": self.fingerprint, "geometry": json.dumps(geo),
                "global": embedding.global_map.data.detach().to("cpu", torch.float16).contiguous(),
                "local": embedding.local_map.data.detach().to("cpu", torch.float16).contiguous()}
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(path, buf.getvalue(), durable=False)  # a cache: no fsync; mode from the umask
        return path
