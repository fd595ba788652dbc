"""The endless stream of training samples, and its DataLoader.

:class:`PairStream` is an ``IterableDataset`` that turns preprocessed source arrays into an endless
stream of patch pairs (via :class:`~samlearn.training.PatchPairSampler`), each with its positive
pairs and the source position in mm of every voxel of the global and local maps. Every DataLoader
worker draws from its own ``numpy`` generator spawned from one ``SeedSequence``: same seed, same
stream. With landmark labels for some images it also forms the paper's semi-supervised positives
(§IV-H).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["PairStream", "make_loader"]


class PairStream(IterableDataset):
    """Endless stream of SAM training samples from in-memory source arrays.

    Semi-supervised positives (paper §IV-H): for each drawn image that shares at least one
    landmark with another labelled image, with probability ``label_positive_prob`` the sample is
    a labelled pair: a landmark ``k`` drawn uniformly among the image's landmarks that another
    image also has, a partner image drawn uniformly among those, and
    :meth:`PatchPairSampler.sample_across` crops patch 1 around landmark ``k`` of the image and
    patch 2 around landmark ``k`` of the partner. The positives are landmark ``k`` and every other
    landmark labelled on both images that both patches show, cycled to ``n_pos`` slots (landmark
    ``k`` first). Otherwise (and for unlabelled images) the sample is the usual augmented-copy
    pair.

    Parameters
    ----------
    arrays : list of ndarray
        Preprocessed float32 source arrays (numpy order).
    spacings : list of array-like
        Their voxel sizes in mm (numpy order).
    sampler : PatchPairSampler
        Draws the patch pairs.
    n_pos : int
        Positive pairs per sample.
    global_stride, local_stride : sequence of int
        Strides of the network's global and local maps (numpy order).
    seed : numpy.random.SeedSequence
        Each DataLoader worker spawns its own stream from it.
    labels : list or None, default None
        None: purely self-supervised (the stream is exactly the unsupervised one). Otherwise one
        entry per array: None for an unlabelled image, or an ``(n_landmarks, ndim)`` array of
        landmark positions in that array's indices (numpy order), NaN rows for landmarks not
        labelled on it.
    label_positive_prob : float, default 0.5
        Probability of a labelled pair for an image that has a partner.

    Attributes
    ----------
    partners : list of dict or None
        Per image, ``{landmark k: [other images that also have k]}`` (only landmarks with
        partners); None without ``labels``.
    """

    def __init__(self, arrays, spacings, sampler, n_pos, global_stride, local_stride, seed,
                 labels=None, label_positive_prob=0.5):
        super().__init__()
        self.arrays = arrays
        self.spacings = [np.asarray(s, dtype=np.float64) for s in spacings]
        self.sampler = sampler
        self.n_pos = int(n_pos)
        self.global_stride = tuple(global_stride)
        self.local_stride = tuple(local_stride)
        self.seed = seed
        self.label_positive_prob = float(label_positive_prob)
        self.labels = None if labels is None else [None if y is None else np.asarray(y, np.float64)
                                                    for y in labels]
        # partners[a] = {landmark k: [images b != a that also have landmark k]}, only keys with partners
        self.partners = None
        if self.labels is not None:
            if len(self.labels) != len(arrays):
                raise ValueError(f"labels must have one entry per array ({len(arrays)}), got {len(self.labels)}")
            have = [None if y is None else np.all(np.isfinite(y), axis=1) for y in self.labels]
            self.partners = []
            for a, ha in enumerate(have):
                d = {}
                if ha is not None:
                    for k in np.flatnonzero(ha):
                        bs = [b for b, hb in enumerate(have) if b != a and hb is not None and hb[k]]
                        if bs:
                            d[int(k)] = bs
                self.partners.append(d)

    def sample(self, rng: np.random.Generator) -> dict:
        """Draw one training sample from a uniformly drawn image.

        Parameters
        ----------
        rng : numpy.random.Generator
            The worker's generator.

        Returns
        -------
        dict
            ``patches`` ``(2, 1, *P)`` float32; ``pos`` (2, n_pos, ndim) patch indices of the
            positives in patch 1 and 2; ``pos_mm`` (n_pos, ndim) their source positions in mm;
            ``cg``, ``cl`` ``(2, ndim, *grid)`` source mm of the global / local map voxels of each
            patch; ``image_id``. With ``labels`` four more entries: ``pos_mm2`` (the positives in
            patch 2's source frame; equal to ``pos_mm`` for a single-image pair), ``pair_ids``
            (source image of each patch), ``label_pair`` ``(image_a, image_b, k)`` (``-1``s for an
            unsupervised pair) and ``pos_landmark`` (the landmark of each positive slot, ``-1``
            for an unsupervised pair).
        """
        k = int(rng.integers(len(self.arrays)))
        if self.labels is None:
            return self._sample_same(k, rng)
        if self.partners[k] and rng.random() < self.label_positive_prob:
            return self._sample_labelled(k, rng)
        out = self._sample_same(k, rng)
        out["pos_mm2"] = out["pos_mm"].copy()
        out["pair_ids"] = np.array([k, k], dtype=np.int64)
        out["label_pair"] = np.full(3, -1, dtype=np.int64)
        out["pos_landmark"] = np.full(self.n_pos, -1, dtype=np.int64)
        return out

    def _sample_same(self, k: int, rng: np.random.Generator) -> dict:
        """The self-supervised sample: two augmented crops of image ``k``."""
        spacing = self.spacings[k]
        pair = self.sampler.sample(self.arrays[k], rng, spacing=spacing)
        pos = pair.positives(self.n_pos, rng).astype(np.float32)              # (2, n, ndim)
        pos_mm = (pair.transforms[0].to_source(pos[0].astype(np.float64)) * spacing).astype(np.float32)
        return {
            "patches": pair.patches[:, None].astype(np.float32, copy=False),  # (2, 1, *P)
            "pos": pos,
            "pos_mm": pos_mm,
            "cg": np.stack([pair.source_mm(i, self.global_stride) for i in (0, 1)]).astype(np.float32),
            "cl": np.stack([pair.source_mm(i, self.local_stride) for i in (0, 1)]).astype(np.float32),
            "image_id": np.int64(k),
        }

    def _sample_labelled(self, a: int, rng: np.random.Generator) -> dict:
        """A labelled pair: landmark ``k`` of image ``a`` and of a random partner image ``b``."""
        choices = sorted(self.partners[a])
        k = choices[int(rng.integers(len(choices)))]
        partners = self.partners[a][k]
        b = partners[int(rng.integers(len(partners)))]
        ya, yb = self.labels[a], self.labels[b]
        pair = self.sampler.sample_across(self.arrays[a], ya[k], self.arrays[b], yb[k], rng,
                                          spacing_a=self.spacings[a], spacing_b=self.spacings[b])
        # landmark k sits exactly at the drawn anchors; other shared landmarks count when both
        # patches show them
        ua, ina = pair.points_to_patch(0, ya)
        ub, inb = pair.points_to_patch(1, yb)
        both = ina & inb
        both[k] = False
        lms = np.concatenate([[k], np.flatnonzero(both)]).astype(np.int64)
        u1 = np.concatenate([pair.anchor[:1], ua[lms[1:]]])
        u2 = np.concatenate([pair.anchor[1:], ub[lms[1:]]])
        slots = np.resize(np.arange(lms.size), self.n_pos)
        pos = np.stack([u1[slots], u2[slots]]).astype(np.float32)           # (2, n, ndim)
        return {
            "patches": pair.patches[:, None].astype(np.float32, copy=False),
            "pos": pos,
            "pos_mm": (ya[lms[slots]] * self.spacings[a]).astype(np.float32),
            "cg": np.stack([pair.source_mm(i, self.global_stride) for i in (0, 1)]).astype(np.float32),
            "cl": np.stack([pair.source_mm(i, self.local_stride) for i in (0, 1)]).astype(np.float32),
            "image_id": np.int64(a),
            "pos_mm2": (yb[lms[slots]] * self.spacings[b]).astype(np.float32),
            "pair_ids": np.array([a, b], dtype=np.int64),
            "label_pair": np.array([a, b, k], dtype=np.int64),
            "pos_landmark": lms[slots],
        }

    def __iter__(self):
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        wid = info.id if info is not None else 0
        rng = np.random.default_rng(self.seed.spawn(n_workers)[wid])
        while True:
            yield self.sample(rng)


def make_loader(stream: PairStream, batch_size: int, num_workers: int, pin_memory: bool,
                seed: int = 0) -> DataLoader:
    """Build the DataLoader of batches of ``stream``.

    Parameters
    ----------
    stream : PairStream
        The samples.
    batch_size : int
        Samples per batch.
    num_workers : int
        DataLoader workers; each keeps 4 batches prepared ahead (augmentation runs while the
        device trains). 0: samples are drawn in the main process.
    pin_memory : bool
        Pinned batches (on CUDA), so that the step copies them asynchronously.
    seed : int, default 0
        Seed of the loader's own generator (otherwise it would draw its base seed from torch's
        global RNG).

    Returns
    -------
    torch.utils.data.DataLoader
        The loader.
    """
    # an explicit generator: the DataLoader would otherwise draw its base seed from torch's global RNG
    kwargs = {"generator": torch.Generator().manual_seed(int(seed))}
    if num_workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=False)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers,
                      pin_memory=pin_memory, **kwargs)
