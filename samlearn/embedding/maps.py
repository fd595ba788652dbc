"""Embedding maps with world geometry: what ``SAMEmbedder.transform`` returns per image.

An :class:`EmbeddingMap` is an L2-normalised ``(C, *spatial)`` torch tensor (spatial axes in numpy
order, (z, y, x) or (y, x)) plus the :class:`~samlearn.image.ImageGeometry` of its voxel grid, so
every embedding vector has a known world position. An :class:`Embedding` pairs the coarse
**global** map and the fine **local** map of one image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..image import ImageGeometry

__all__ = ["EmbeddingMap", "Embedding", "sample_map", "save_embedding", "load_embedding"]


def sample_map(data: torch.Tensor, array_index, normalize: bool = True) -> torch.Tensor:
    """Interpolate a map at continuous array indices.

    Linear interpolation, positions clamped to the grid border.

    Parameters
    ----------
    data : torch.Tensor, shape ``(C, *spatial)``
        The map (spatial axes in numpy order).
    array_index : array-like or torch.Tensor, shape (n, ndim)
        Continuous array indices (numpy order, integer values at voxel centres).
    normalize : bool, default True
        L2-normalise the vectors again (interpolating unit vectors shortens them).

    Returns
    -------
    torch.Tensor, shape (n, C)
        The vectors, in the map's dtype and on its device.
    """
    ndim = data.dim() - 1
    idx = torch.as_tensor(np.asarray(array_index, dtype=np.float32) if not torch.is_tensor(array_index)
                          else array_index, dtype=torch.float32, device=data.device)
    if idx.dim() != 2 or idx.shape[1] != ndim:
        raise ValueError(f"array_index must have shape (n, {ndim}), got {tuple(idx.shape)}")
    sizes = torch.tensor(data.shape[1:], dtype=torch.float32, device=data.device)
    idx = torch.minimum(torch.clamp(idx, min=0.0), sizes - 1)
    # grid_sample (align_corners=True): -1 and +1 are the centres of the first and last voxels.
    denom = torch.clamp(sizes - 1, min=1.0)
    grid = (idx / denom * 2 - 1).flip(-1)  # grid_sample wants (x, y[, z])
    grid = grid.view(1, *([1] * (ndim - 1)), -1, ndim)
    src = data.unsqueeze(0)
    out = F.grid_sample(src.float() if src.dtype != torch.float32 else src, grid,
                        mode="bilinear", padding_mode="border", align_corners=True)
    out = out.reshape(data.shape[0], -1).t()
    if normalize:
        out = F.normalize(out, dim=1)
    return out.to(data.dtype)


class EmbeddingMap:
    """An L2-normalised embedding map on a grid with world geometry.

    Parameters
    ----------
    data : torch.Tensor or array-like, shape ``(C, *spatial)``
        The map (spatial axes in numpy order); arrays are converted to tensors.
    geometry : ImageGeometry
        The grid of the map's voxels; its array shape must be ``spatial``.

    Attributes
    ----------
    data : torch.Tensor
        The map.
    geometry : ImageGeometry
        Its grid.
    """

    __slots__ = ("data", "geometry")

    def __init__(self, data: torch.Tensor, geometry: ImageGeometry):
        if not torch.is_tensor(data):
            data = torch.as_tensor(np.asarray(data))
        if data.dim() - 1 != geometry.ndim or tuple(data.shape[1:]) != geometry.shape:
            raise ValueError(f"map of shape {tuple(data.shape)} does not fit geometry with array "
                             f"shape {geometry.shape}")
        self.data = data
        self.geometry = geometry

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return self.data.shape[0]

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.geometry.ndim

    def vectors_at(self, points) -> torch.Tensor:
        """Embedding vectors at world points, interpolated and renormalised.

        Parameters
        ----------
        points : array-like, shape (n, ndim) or (ndim,)
            World points in mm ((x, y[, z]) order).

        Returns
        -------
        torch.Tensor, shape (n, C)
            Unit vectors.
        """
        return sample_map(self.data, self.geometry.world_to_array_index(np.atleast_2d(points)))

    def similarity(self, vectors: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each of ``vectors`` with every voxel.

        Parameters
        ----------
        vectors : torch.Tensor, shape (K, C)
            Unit vectors (moved to the map's device and dtype).

        Returns
        -------
        torch.Tensor, shape ``(K, *spatial)``
            The similarity maps.
        """
        v = vectors.to(self.data.device, self.data.dtype)
        flat = self.data.reshape(self.n_channels, -1)
        return (v @ flat).reshape(v.shape[0], *self.data.shape[1:])

    def to(self, device=None, dtype=None) -> "EmbeddingMap":
        """Return a copy on another device and / or dtype, with the same geometry.

        Parameters
        ----------
        device : torch.device or str, optional
            Target device (None: unchanged).
        dtype : torch.dtype, optional
            Target dtype (None: unchanged).

        Returns
        -------
        EmbeddingMap
            The moved map.
        """
        return EmbeddingMap(self.data.to(device=device, dtype=dtype), self.geometry)

    def numpy(self) -> np.ndarray:
        """Return the map as a float32 numpy array.

        Returns
        -------
        ndarray of float32, shape ``(C, *spatial)``
            A CPU copy of ``data``.
        """
        return self.data.detach().float().cpu().numpy()

    def __repr__(self) -> str:
        return f"EmbeddingMap(channels={self.n_channels}, {self.geometry!r})"

    def __getstate__(self):
        return {"data": self.data.detach().cpu(), "geometry": self.geometry}

    def __setstate__(self, state):
        self.data = state["data"]
        self.geometry = state["geometry"]


class Embedding:
    """Global and local embedding maps of one image.

    All maps and points share the same world space, so results are reported in the source
    image's world mm.

    Parameters
    ----------
    global_map : EmbeddingMap
        The coarse global map.
    local_map : EmbeddingMap
        The fine local map.
    image_geometry : ImageGeometry
        The grid of the preprocessed image the network saw (e.g. the 2 mm CT or the 512 x 512
        X-ray).
    source_geometry : ImageGeometry, optional
        The grid of the image as given (default: ``image_geometry``).

    Attributes
    ----------
    global_map, local_map, image_geometry, source_geometry
        The parameters (``source_geometry`` filled in).
    """

    __slots__ = ("global_map", "local_map", "image_geometry", "source_geometry")

    def __init__(self, global_map: EmbeddingMap, local_map: EmbeddingMap,
                 image_geometry: ImageGeometry, source_geometry: ImageGeometry | None = None):
        self.global_map = global_map
        self.local_map = local_map
        self.image_geometry = image_geometry
        self.source_geometry = source_geometry if source_geometry is not None else image_geometry

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.image_geometry.ndim

    def to(self, device=None, dtype=None) -> "Embedding":
        """Return a copy with both maps on another device and / or dtype.

        Parameters
        ----------
        device, dtype
            As in :meth:`EmbeddingMap.to`.

        Returns
        -------
        Embedding
            The moved embedding, with the same geometries.
        """
        return Embedding(self.global_map.to(device, dtype), self.local_map.to(device, dtype),
                         self.image_geometry, self.source_geometry)

    def __repr__(self) -> str:
        return f"Embedding(global={self.global_map!r}, local={self.local_map!r})"

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)


# ---------------------------------------------------------------------- files
_GEOMETRIES = ("global", "local", "image", "source")


def _geometry_fields(prefix: str, g: ImageGeometry) -> dict:
    return {f"{prefix}_{k}": np.asarray(v) for k, v in g.to_dict().items()}


def _geometry_from(fields: dict, prefix: str, path) -> ImageGeometry:
    try:
        return ImageGeometry.from_dict({k: fields[f"{prefix}_{k}"]
                                        for k in ("size", "spacing", "origin", "direction")})
    except KeyError as exc:
        raise ValueError(f"embedding file '{path}' lacks the field {exc.args[0]!r}: not a samlearn "
                         f"embedding file") from None


def save_embedding(embedding: Embedding, path) -> Path:
    """Write an embedding to a ``.npz`` or ``.pt`` file.

    Both formats hold the global and local maps (``global``, ``local``: float32 ``(C, *spatial)``,
    numpy axis order) and, for the maps, the preprocessed image and the source image, their grids
    as ``<name>_size`` / ``_spacing`` / ``_origin`` / ``_direction`` (x, y[, z] order, as
    SimpleITK), ``<name>`` one of ``global``, ``local``, ``image``, ``source``. Written
    atomically (temporary file, then rename). Read it back with :func:`load_embedding`.

    Parameters
    ----------
    embedding : Embedding
        What to write.
    path : str or path
        Ends in ``.npz`` (numpy arrays) or ``.pt`` (a dict of torch tensors, readable with
        ``torch.load(weights_only=True)``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if not isinstance(embedding, Embedding):
        raise TypeError(f"embedding must be a samlearn.embedding.Embedding, got {type(embedding).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pt"):
        raise ValueError(f"path must end in .npz or .pt, got '{path.name}'")
    fields = {"global": embedding.global_map.numpy().astype(np.float32, copy=False),
              "local": embedding.local_map.numpy().astype(np.float32, copy=False)}
    geoms = dict(zip(_GEOMETRIES, (embedding.global_map.geometry, embedding.local_map.geometry,
                                   embedding.image_geometry, embedding.source_geometry)))
    for name, g in geoms.items():
        fields.update(_geometry_fields(name, g))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        if suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **fields)
        else:
            torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in fields.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_embedding(path) -> Embedding:
    """Read an :class:`Embedding` written by :func:`save_embedding`.

    Parameters
    ----------
    path : str or path
        A ``.npz`` or ``.pt`` file; the latter is loaded with ``torch.load(weights_only=True)``,
        so it never executes code.

    Returns
    -------
    Embedding
        Maps as float32 CPU tensors, with their geometries.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For another suffix, or a file that is not a samlearn embedding file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file does not exist: '{path}'")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            fields = {k: npz[k] for k in npz.files}
    elif suffix == ".pt":
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict):
            raise ValueError(f"embedding file '{path}' does not hold a dict of tensors")
        fields = {k: (v.numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in raw.items()}
    else:
        raise ValueError(f"path must end in .npz or .pt, got '{path.name}'")
    geoms = {name: _geometry_from(fields, name, path) for name in _GEOMETRIES}
    if "global" not in fields or "local" not in fields:
        raise ValueError(f"embedding file '{path}' lacks the 'global' or 'local' map")
    return Embedding(EmbeddingMap(torch.from_numpy(np.ascontiguousarray(fields["global"], np.float32)),
                                  geoms["global"]),
                     EmbeddingMap(torch.from_numpy(np.ascontiguousarray(fields["local"], np.float32)),
                                  geoms["local"]),
                     geoms["image"], geoms["source"])
