"""The inference engine of ``SAMEmbedder.transform``: images in, embeddings out.

An :class:`InferenceEngine` holds what one ``transform`` call needs (the network copy made for
inference, the working configuration, device, precision, tiling and memory budget, the cache) and
turns a stream of images into embeddings in order: it reads and preprocesses each image
(:func:`~samlearn.embedding.preprocess`), takes cached embeddings from the cache, runs same-size
images through the network in batches on a GPU (one at a time on the CPU, where threads over
images pay better), tiles passes that would exceed the memory budget
(:mod:`samlearn.embedding.engine`), checks the maps are finite and gives each map its world
geometry.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._utils.parallel import progress_bar, thread_map, thread_map_list
from ..image import load_item
from ..nn.fusion import fold_small_conv3d, fuse_conv_bn, pointwise_as_matmul
from .cache import EmbeddingCache, image_key
from .engine import auto_tile_shape, estimate_pass_bytes, pad_batch, run_network
from .maps import Embedding, EmbeddingMap
from .preprocessing import preprocess

__all__ = ["InferenceEngine", "inference_network", "memory_budget"]

#: most images one batched GPU pass takes
_MAX_BATCH = 64


def inference_network(network, device: torch.device, channels_last) -> tuple:
    """The copy of a fitted network that inference runs: BatchNorm folded into the convolutions,
    in the inference memory format, on the CPU also with its faster pointwise and stem
    convolutions (:mod:`samlearn.nn.fusion`); the same maps up to float rounding.

    Parameters
    ----------
    network : SAMNet
        The fitted network (unchanged).
    device : torch.device
        Where the copy runs.
    channels_last : "auto" or bool
        "auto": channels-last on the CPU only.

    Returns
    -------
    net : torch.nn.Module
        The copy, in eval mode, on ``device``.
    channels_last : bool
        Whether it takes channels-last inputs.
    """
    cl = device.type == "cpu" if channels_last == "auto" else bool(channels_last)
    net = fuse_conv_bn(network).to(device)
    if cl:
        net = net.to(memory_format=torch.channels_last_3d if net.config.ndim == 3 else torch.channels_last)
        if device.type == "cpu":
            pointwise_as_matmul(net)
            if net.config.ndim == 3:
                fold_small_conv3d(net)
    return net, cl


def memory_budget(max_memory_gb, device: torch.device) -> float:
    """Bytes one network pass may use.

    Parameters
    ----------
    max_memory_gb : float or None
        The budget in GB ``(2**30 bytes)``; None: half the free memory of the GPU, or 2 GB on the CPU.
    device : torch.device
        Where the network runs.

    Returns
    -------
    float
        Bytes.
    """
    if max_memory_gb is not None:
        return float(max_memory_gb) * 2 ** 30
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free
    return 2.0 * 2 ** 30


class InferenceEngine:
    """Embeds images with a fitted network.

    Parameters
    ----------
    network : torch.nn.Module
        The network prepared for inference (eval mode, on ``device``): a
        :class:`~samlearn.nn.SAMNet` or its fused copy (:func:`samlearn.nn.fuse_conv_bn`).
    channels_last : bool
        Whether inputs are passed in the channels-last memory format.
    config : dict
        The working configuration of ``transform`` (its grid and intensity preset).
    device : torch.device
        Where the network runs.
    amp_dtype : torch.dtype or None
        Autocast precision (None: float32); fp16 runs as plain autocast (no scaling is needed
        without gradients).
    tile_shape : "auto", tuple of int or None
        Tiling of the network passes (a checked ``SAMEmbedder.tile_shape``).
    budget_bytes : float
        Memory one network pass may use.
    cache : EmbeddingCache, optional
        Where embeddings are read and written.
    n_prepare : int, default 0
        Threads that read and preprocess upcoming images ahead of the network (0: none).
    verbose : bool, default False
        A progress bar over the images (for more than one).
    """

    def __init__(self, network, channels_last: bool, config: dict, device: torch.device, amp_dtype,
                 tile_shape, budget_bytes: float, cache: Optional[EmbeddingCache] = None,
                 n_prepare: int = 0, verbose=False):
        self.network = network
        self.channels_last = channels_last
        self.config = config
        self.device = device
        self.amp_dtype = amp_dtype
        self.tile_shape = tile_shape
        self.budget_bytes = budget_bytes
        self.cache = cache
        self.n_prepare = n_prepare
        self.verbose = verbose

    def tile_core(self, spatial):
        """The tile core for a working array, or None for one pass.

        Parameters
        ----------
        spatial : sequence of int
            Shape of the working array (numpy order).

        Returns
        -------
        tuple of int or None
            The core (input voxels, numpy order), or None when one pass is used.
        """
        ts = self.tile_shape
        if ts is None:
            return None
        if ts == "auto":
            return auto_tile_shape(self.network.config, spatial, self.budget_bytes)
        if all(t >= n for t, n in zip(ts, spatial)):
            return None
        return ts

    def batch_limit(self, spatial) -> int:
        """How many working arrays of one shape a network pass may take.

        Parameters
        ----------
        spatial
            As in :meth:`tile_core`.

        Returns
        -------
        int
            Between 1 (always when tiled) and 64, within the memory budget.
        """
        if self.tile_core(spatial) is not None:
            return 1
        per = estimate_pass_bytes(self.network.config, spatial)
        return max(1, min(_MAX_BATCH, int(self.budget_bytes // max(per, 1))))

    def embed_group(self, group) -> list:
        """Embed a group of images of one working shape in one (possibly tiled) network pass.

        Parameters
        ----------
        group : list of tuple
            ``(image, working image)`` pairs: the image as given (its geometry becomes the
            source geometry) and its preprocessed :class:`~samlearn.Image`.

        Returns
        -------
        list of Embedding
            One per pair, in order, with the world geometry of each map.

        Raises
        ------
        FloatingPointError
            When a map holds a NaN or an infinity (numeric overflow, damaged weights).
        """
        cfg = self.network.config
        arrays = [pre.array for _, pre in group]
        spatial = arrays[0].shape
        x = torch.from_numpy(pad_batch(arrays, [float(a.min()) for a in arrays], cfg.global_stride))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        g, l = run_network(self.network, x, spatial, amp_dtype=self.amp_dtype,
                           tile_core=self.tile_core(spatial), channels_last=self.channels_last)
        # a NaN or infinity anywhere makes the sum non-finite: one read of each map, no mask (the
        # maps are L2-normalised, so finite values cannot overflow the float32 sums)
        if not (torch.isfinite(g.sum()) and torch.isfinite(l.sum())):
            raise FloatingPointError("an embedding holds NaN or infinite values (numeric overflow, e.g. "
                                     "with fp16 autocast: amp='fp16', or amp='auto' on a GPU without "
                                     "bf16; try amp='none'; or damaged weights)")
        out = []
        for b, (image, pre) in enumerate(group):
            gb, lb = (g[b], l[b]) if len(group) == 1 else (g[b].clone(), l[b].clone())
            ggeom = pre.geometry.strided(cfg.global_stride[::-1], size=gb.shape[1:][::-1])
            lgeom = pre.geometry.strided(cfg.local_stride[::-1], size=lb.shape[1:][::-1])
            out.append(Embedding(EmbeddingMap(gb, ggeom), EmbeddingMap(lb, lgeom), pre.geometry, image.geometry))
        return out

    def embed_threaded(self, items, ndim: int, n_jobs: int) -> list:
        """The embeddings of ``items`` computed in ``n_jobs`` threads, one image per task, each
        thread with its share of the torch threads (torch releases the GIL in its kernels: no copy
        of the network or of the maps into other processes); in order.

        Parameters
        ----------
        items : list
            Items of :func:`samlearn.image.image_items`.
        ndim : int
            The dimensionality the model was trained on.
        n_jobs : int
            Threads.

        Returns
        -------
        list of Embedding
            In the order of ``items``.
        """
        per = max(1, torch.get_num_threads() // n_jobs)
        return thread_map_list(lambda i: next(self.iter_embeddings([items[i]], ndim, offset=i)),
                               len(items), n_jobs, torch_threads=per, verbose=self.verbose,
                               desc="embedding")

    def iter_embeddings(self, items, ndim: int, offset: int = 0):
        """Yield the embeddings of ``items`` in order.

        Parameters
        ----------
        items : list
            Items of :func:`samlearn.image.image_items` (images or paths, read one at a time).
        ndim : int
            The dimensionality the model was trained on (other images are refused).
        offset : int, default 0
            Index of ``items[0]`` in the caller's list, for error messages.

        Yields
        ------
        Embedding
            One per item, in order (from the cache when it holds it).
        """
        cache = self.cache
        cuda = self.device.type == "cuda"
        bar = progress_bar(self.verbose and len(items) > 1, len(items), "embedding")

        def prepare(i):
            im = load_item(items[i], ndim, "images", i + offset,
                           why=f"images are {5 - ndim}D but this model was trained on "
                               f"{ndim}D images (ndim_={ndim})")
            key = image_key(im) if cache is not None else None
            hit = cache.load(key, self.device) if cache is not None else None
            pre = None if hit is not None else preprocess(im, self.config, self.device,
                                                          where=f"images[{i + offset}]")
            return im, key, hit, pre

        group = []  # (image, key, pre) of same working shape awaiting one batched pass

        def run_group():
            embs = self.embed_group([(im, pre) for im, _, pre in group])
            for (im, key, _), emb in zip(group, embs):
                if cache is not None:
                    cache.save(key, emb)
            group.clear()
            return embs

        try:
            # upcoming images are read and preprocessed by n_prepare background threads
            for im, key, hit, pre in thread_map(prepare, len(items), self.n_prepare):
                if hit is not None:
                    if group:
                        yield from run_group()
                    yield hit
                else:
                    shape = pre.array.shape
                    limit = self.batch_limit(shape) if cuda else 1
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
