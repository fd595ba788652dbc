"""Landmark labels of the semi-supervised ``SAMEmbedder.fit(images, y)`` (paper §IV-H)."""
from __future__ import annotations

import numpy as np

__all__ = ["check_landmark_labels", "check_labels_inside"]


def check_landmark_labels(y, n, ndim):
    """Validate the semi-supervised labels of ``fit``.

    Parameters
    ----------
    y : None, sequence or ndarray
        None, or one entry per image: None or an (n_landmarks, ndim) array in world mm
        ((x, y[, z]) order; NaN rows for unlabelled landmarks); a (n_images, n_landmarks, ndim)
        array works too. At least two images must carry labels, sharing at least one landmark.
    n : int
        Number of images.
    ndim : int
        Their dimensionality.

    Returns
    -------
    list or None
        None for ``y=None`` (or every entry None); else, per image, None or an
        (n_landmarks, ndim) float64 array.

    Raises
    ------
    ValueError, TypeError
        Naming ``y``, for labels of the wrong kind, shape or content.
    """
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


def check_labels_inside(arr, image, i):
    """Check that the landmark labels of ``images[i]`` lie inside it.

    Parameters
    ----------
    arr : ndarray, shape (n_landmarks, ndim)
        The labels in world mm (NaN rows: not labelled).
    image : Image
        The image.
    i : int
        Its index, for messages.

    Raises
    ------
    ValueError
        For a label outside the image.
    """
    have = ~np.isnan(arr).all(1)
    if have.any():
        inside = image.geometry.contains(arr[have])
        if not inside.all():
            bad = np.flatnonzero(have)[~inside]
            raise ValueError(f"y[{i}] rows {bad[:5].tolist()} (e.g. {arr[bad[0]].tolist()} mm) lie "
                             f"outside images[{i}] (world mm, (x, y[, z]) order; check the "
                             f"coordinate order and frame)")
