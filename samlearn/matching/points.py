"""Which template points to match when the task gives none: a regular, stratified grid over an
image, restricted to the body (:func:`body_mask`). Registration matches such grids; the landmark
detector's SAM-coarse consistency prior too."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..image import Image, ImageGeometry

__all__ = ["body_mask", "grid_points", "body_grid_points", "auto_body_threshold", "CT_BODY_THRESHOLD_HU"]


#: "auto" body threshold for CT: tissue is denser than -500 HU (air -1000, lung -900..-500, fat -100).
CT_BODY_THRESHOLD_HU = -500.0


def _block_reduce(arr, factors):
    sl = tuple(slice(0, (s // f) * f) for s, f in zip(arr.shape, factors))
    a = arr[sl]
    shape = []
    for s, f in zip(a.shape, factors):
        shape += [s // f, f]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def body_mask(image: Image, threshold: float, *, working_spacing_mm: float = 4.0):
    """The body of an image: a mask and a test for world points.

    Rule: voxels brighter than ``threshold``, on a copy averaged in blocks of about
    ``working_spacing_mm``; the largest connected component is kept (drops the CT table and noise),
    then holes are filled slice by slice along every axis, so the lungs and bowel gas inside the
    body count as body.

    Parameters
    ----------
    image : Image
        The image.
    threshold : float
        Intensity threshold in raw intensity units (HU for CT; see :func:`auto_body_threshold`).
    working_spacing_mm : float, default 4
        Approximate block size (mm) of the averaged copy the mask is made on.

    Returns
    -------
    mask : ndarray of bool
        The body on the block-averaged copy of ``image``'s grid (numpy order).
    inside : callable
        ``inside(points) -> ndarray of bool``: whether world points (n, ndim) lie in the body.
    """
    factors = np.maximum(1, np.floor(working_spacing_mm / image.spacing[::-1])).astype(int)
    small = _block_reduce(image.array, factors)
    if small.size == 0 or min(small.shape) == 0:
        small, factors = image.array, np.ones(image.ndim, int)
    mask = small > threshold
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    filled = mask.copy()
    if mask.ndim == 3:
        for ax in range(3):
            for i in range(mask.shape[ax]):
                sl = [slice(None)] * 3
                sl[ax] = i
                filled[tuple(sl)] |= ndimage.binary_fill_holes(mask[tuple(sl)])
    else:
        filled = ndimage.binary_fill_holes(mask)

    def inside(points):
        idx = image.geometry.world_to_array_index(np.atleast_2d(points))
        # continuous index of the block-averaged grid: block b covers input indices [f b, f b + f)
        bidx = np.round((idx - (factors - 1) / 2.0) / factors).astype(int)
        ok = np.all((bidx >= 0) & (bidx < np.asarray(filled.shape)), axis=1)
        out = np.zeros(len(bidx), bool)
        out[ok] = filled[tuple(bidx[ok].T)]
        return out

    return filled, inside


def _xray_body_threshold(array) -> float:
    """X-ray rule: drop only the darkest background (air, collimation): pixels above the 2nd
    percentile plus 5% of the 2nd-98th percentile range."""
    sample = array.ravel()[:: max(1, array.size // 2_000_000)]
    lo, hi = np.percentile(sample, [2.0, 98.0])
    return float(lo + 0.05 * (hi - lo))


def auto_body_threshold(embedder, image: Image) -> float:
    """The "auto" body threshold of an image for :func:`body_mask`.

    Parameters
    ----------
    embedder : SAMEmbedder or object
        Its ``config_["intensity"]`` says whether the images are CT.
    image : Image
        The image.

    Returns
    -------
    float
        :data:`CT_BODY_THRESHOLD_HU` (-500 HU) when the embedder normalises intensities as CT
        (``config_["intensity"] == "ct"``; 3D images when it does not say), otherwise the X-ray rule:
        the 2nd percentile plus 5% of the 2nd-98th percentile range (only the darkest background,
        air and collimation, is dropped).
    """
    preset = (getattr(embedder, "config_", None) or {}).get("intensity")
    is_ct = preset == "ct" or (preset is None and image.ndim == 3)
    return CT_BODY_THRESHOLD_HU if is_ct else _xray_body_threshold(image.array)


def grid_points(geometry: ImageGeometry, spacing_mm: float, rng=None) -> np.ndarray:
    """World points of a regular grid over an image, optionally stratified.

    The grid has about ``spacing_mm`` between points along each index axis and is centred in the
    field of view. With ``rng`` each point is moved to a uniformly random position inside its grid
    cell (stratified sampling): the points then take every sub-voxel position relative to the
    embedding grids, so the sub-voxel biases of the matches average out in a fit instead of all
    pointing the same way (a regular grid whose step is a multiple of the embedding voxel puts
    every point at the same sub-voxel phase).

    Parameters
    ----------
    geometry : ImageGeometry
        The image's grid.
    spacing_mm : float
        Approximate spacing of the points (mm).
    rng : numpy.random.Generator or None, default None
        Draws the positions inside the cells; None keeps the cell centres.

    Returns
    -------
    ndarray of shape (n_points, ndim)
        World points (mm), (x, y[, z]) order.
    """
    axes, steps = [], []
    for n, sp in zip(geometry.size, geometry.spacing):
        extent = n * sp
        k = max(1, int(np.floor(extent / spacing_mm)))
        step = extent / k
        axes.append((np.arange(k) * step + step / 2) / sp - 0.5)  # continuous index (x, y, z)
        steps.append(step / sp)
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geometry.ndim)
    if rng is not None:
        idx = idx + (rng.random(idx.shape) - 0.5) * np.asarray(steps)
    return geometry.index_to_world(idx)


def body_grid_points(image: Image, spacing_mm: float, max_points: int, rng, threshold=None):
    """Stratified grid points of an image that lie inside the body.

    Parameters
    ----------
    image : Image
        The image.
    spacing_mm : float
        Grid spacing (mm; :func:`grid_points`).
    max_points : int
        At most this many points are returned (a random subset drawn with ``rng``).
    rng : numpy.random.Generator
        Draws the stratified positions and the subset.
    threshold : float or None, default None
        Body threshold of :func:`body_mask`; None keeps every point.

    Returns
    -------
    points : ndarray of shape (n, ndim)
        World points (mm).
    n_grid : int
        Points of the whole grid.
    n_body : int
        Of these, points inside the body (before the ``max_points`` subset).
    """
    pts = grid_points(image.geometry, spacing_mm, rng)
    n_grid = len(pts)
    if threshold is not None:
        _, inside = body_mask(image, threshold)
        pts = pts[inside(pts)]
    n_body = len(pts)
    if len(pts) > max_points:
        pts = pts[np.sort(rng.choice(len(pts), size=max_points, replace=False))]
    return pts, n_grid, n_body
