"""Small synthetic images for quick checks: smooth random structure on grids with non-trivial
geometry (anisotropic spacing, an offset origin, rotated or reflected axes). Deterministic for a
seed; no anatomy (for that, see :mod:`samlearn.datasets.phantoms`)."""
from __future__ import annotations

import numpy as np

from ..image import Image

__all__ = ["random_direction", "make_smooth_images"]


def random_direction(rng: np.random.Generator, ndim: int, allow_reflection: bool = True) -> np.ndarray:
    """A random orthonormal matrix (the QR of a Gaussian matrix), e.g. an image direction.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws the matrix.
    ndim : int
        2 or 3.
    allow_reflection : bool, default True
        Whether a reflection (determinant -1) may come out; when False the first column is
        flipped where needed.

    Returns
    -------
    ndarray of shape (ndim, ndim)
    """
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if not allow_reflection and np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_smooth_images(n, ndim=2, seed=0, shape=None) -> list:
    """Images holding 12 random Gaussian blobs plus noise, each on its own random grid.

    Parameters
    ----------
    n : int
        Number of images.
    ndim : {2, 3}, default 2
        Their dimensionality.
    seed : int, default 0
        Seeds everything (the same seed gives the same images).
    shape : tuple of int, optional
        Array shape in numpy order (default (60, 70) in 2D, (24, 40, 44) in 3D).

    Returns
    -------
    list of Image
        Intensities of a few hundred units; spacing 0.8-1.6 mm (2D) or 1.5-3 mm (3D) per axis,
        origin within 50 mm of zero, a random (possibly reflected) direction.
    """
    rng = np.random.default_rng(seed)
    shape = shape or ((60, 70) if ndim == 2 else (24, 40, 44))
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    out = []
    for _ in range(n):
        arr = np.zeros(shape, np.float32)
        for _ in range(12):
            c = [rng.uniform(0, s) for s in shape]
            w = rng.uniform(2, 8)
            arr += rng.uniform(-1, 1) * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * w * w))
        arr = arr * 400 + rng.normal(0, 5, size=shape)
        spacing = rng.uniform(0.8, 1.6, size=ndim) if ndim == 2 else rng.uniform(1.5, 3.0, size=ndim)
        out.append(Image.from_array(arr, spacing=spacing, origin=rng.uniform(-50, 50, size=ndim),
                                    direction=random_direction(rng, ndim, allow_reflection=True)))
    return out
