"""Grid geometry of the search: index maps between two grids, interpolation onto another grid,
flat / array indices, world balls and field-of-view masks. Maps are ``(K, *spatial)`` torch
tensors in numpy order; geometry comes from :class:`~samlearn.image.ImageGeometry`."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..image import ImageGeometry

__all__ = ["upsample_to_grid", "GridIndex", "index_affine", "interp", "taps", "lerp_axis",
           "outside_fov", "clip_to_image", "max_filter", "nearest_voxel", "ball_mask"]


def index_affine(src: ImageGeometry, dst: ImageGeometry) -> Tuple[np.ndarray, np.ndarray]:
    """The affine map from array indices of one grid to array indices of another.

    Parameters
    ----------
    src, dst : ImageGeometry
        The two grids.

    Returns
    -------
    M : ndarray of shape (ndim, ndim)
        Linear part.
    t : ndarray of shape (ndim,)
        Offset: ``src_array_index = M @ dst_array_index + t`` (continuous indices, numpy order).
    """
    a = (src.direction.T @ dst.direction) * dst.spacing[None, :] / src.spacing[:, None]
    b = (src.direction.T @ (dst.origin - src.origin)) / src.spacing
    return a[::-1, ::-1].copy(), b[::-1].copy()


def interp(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Multilinear interpolation of maps at continuous array indices.

    Parameters
    ----------
    values : torch.Tensor of shape ``(B, Cv, *S)``
        Maps on a grid of shape ``S``.
    idx : torch.Tensor of shape (B, n, ndim)
        Continuous array indices (numpy order), clamped to the grid: the values are constant
        beyond the outer voxel centres.

    Returns
    -------
    torch.Tensor of shape (B, Cv, n)
        The interpolated values.
    """
    b, n, ndim = idx.shape
    sizes = torch.tensor(values.shape[2:], dtype=idx.dtype, device=idx.device)
    idx = torch.minimum(idx.clamp(min=0), sizes - 1)
    grid = (idx / (sizes - 1).clamp(min=1) * 2 - 1).flip(-1)
    grid = grid.reshape(b, *([1] * (ndim - 1)), n, ndim)
    out = F.grid_sample(values, grid.to(values.dtype), mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.reshape(b, values.shape[1], n)


def taps(n_out: int, scale: float, offset: float, n_in: int, device):
    """Linear interpolation taps along one axis.

    Output voxel ``i`` sits at input index ``scale * i + offset`` (clamped to the input).

    Parameters
    ----------
    n_out : int
        Output length.
    scale, offset : float
        The affine map from output to input index.
    n_in : int
        Input length.
    device : torch.device or str
        Device of the returned tensors.

    Returns
    -------
    i0, i1 : torch.Tensor of shape (n_out,), int64
        The two input neighbours of each output voxel.
    w : torch.Tensor of shape (n_out,), float32
        Weights: the output is ``(1 - w) * x[i0] + w * x[i1]``.
    """
    pos = (torch.arange(n_out, dtype=torch.float64, device=device) * scale + offset).clamp(0, n_in - 1)
    i0 = pos.floor().long().clamp(max=max(n_in - 2, 0))
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (pos - i0).float()


def lerp_axis(x: torch.Tensor, dim: int, i0, i1, w) -> torch.Tensor:
    """Interpolate ``x`` along one axis with the taps of :func:`taps`.

    Parameters
    ----------
    x : torch.Tensor
        The values.
    dim : int
        The axis of ``x`` to interpolate along.
    i0, i1, w : torch.Tensor
        Taps (:func:`taps`): output ``j`` is ``(1 - w[j]) * x[i0[j]] + w[j] * x[i1[j]]`` along ``dim``.

    Returns
    -------
    torch.Tensor
        ``x`` with axis ``dim`` of length ``len(w)``.
    """
    shape = [1] * x.dim()
    shape[dim] = -1
    a, b = x.index_select(dim, i0), x.index_select(dim, i1)
    return torch.lerp(a, b, w.reshape(shape))


def upsample_to_grid(values, src_geometry: ImageGeometry, dst_geometry: ImageGeometry) -> torch.Tensor:
    """Resample maps from one grid onto another through world space.

    Each destination voxel centre is mapped through world space to a continuous index of the
    source grid and the maps are interpolated linearly there (exact for maps that are linear in
    world coordinates, whatever the strides, offsets and directions); beyond the outermost source
    voxel centres the border value is kept. This is how ``S^g`` reaches the local grid.

    Parameters
    ----------
    values : torch.Tensor or array-like of shape ``(K, *src_geometry.shape)``
        The maps.
    src_geometry, dst_geometry : ImageGeometry
        Their grid and the grid to resample onto (same ``ndim``).

    Returns
    -------
    torch.Tensor of shape ``(K, *dst_geometry.shape)``, float32
        The resampled maps, on the device of ``values``.

    Raises
    ------
    ValueError
        When ``values`` does not fit ``src_geometry`` or the two grids differ in ``ndim``.
    """
    values = torch.as_tensor(values)
    if tuple(values.shape[1:]) != src_geometry.shape:
        raise ValueError(f"values must have shape (K, *{src_geometry.shape}), got {tuple(values.shape)}")
    if src_geometry.ndim != dst_geometry.ndim:
        raise ValueError(f"src_geometry is {src_geometry.ndim}D but dst_geometry is {dst_geometry.ndim}D")
    m, t = index_affine(src_geometry, dst_geometry)
    grid = GridIndex(dst_geometry.shape, values.device)
    pos = grid.rows(0, dst_geometry.shape[0])
    pos = pos @ torch.as_tensor(m.T, dtype=torch.float32, device=values.device) \
        + torch.as_tensor(t, dtype=torch.float32, device=values.device)
    out = interp(values.float().unsqueeze(0), pos.unsqueeze(0))
    return out.reshape(values.shape[0], *dst_geometry.shape)


class GridIndex:
    """Array indices of a grid, by slab of leading rows or from flat indices.

    Parameters
    ----------
    shape : sequence of int
        Grid shape (numpy order).
    device : torch.device or str
        Device of the index tensors.

    Attributes
    ----------
    shape : tuple of int
        The grid shape.
    ndim, n, row_size : int
        Number of axes, of voxels, and of voxels per index of axis 0.
    strides, sizes : torch.Tensor of shape (ndim,), int64
        C-order strides of flat indices, and the shape.
    device : torch.device or str
        As given.
    """

    def __init__(self, shape, device):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        self.device = device
        self.row_size = int(np.prod(self.shape[1:]))
        self.n = int(np.prod(self.shape))
        strides = np.cumprod((1,) + self.shape[::-1][:-1])[::-1].copy()
        self.strides = torch.as_tensor(strides, dtype=torch.long, device=device)
        self.sizes = torch.as_tensor(self.shape, dtype=torch.long, device=device)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Array indices of the voxels of rows ``r0:r1`` along axis 0.

        Parameters
        ----------
        r0, r1 : int
            First and one-past-last index along axis 0.

        Returns
        -------
        torch.Tensor of shape (n, ndim), float32
            Array indices, in flat (C) order.
        """
        axes = [torch.arange(r0, r1, device=self.device, dtype=torch.float32)]
        axes += [torch.arange(s, device=self.device, dtype=torch.float32) for s in self.shape[1:]]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)

    def unravel(self, flat: torch.Tensor) -> torch.Tensor:
        """Array indices of flat voxel indices.

        Parameters
        ----------
        flat : torch.Tensor of int64
            Flat (C-order) indices, any shape.

        Returns
        -------
        torch.Tensor of shape ``(*flat.shape, ndim)``, int64
            Array indices (numpy order).
        """
        return (flat.unsqueeze(-1) // self.strides) % self.sizes

    def ravel(self, idx: torch.Tensor) -> torch.Tensor:
        """Flat voxel indices of array indices (the inverse of :meth:`unravel`).

        Parameters
        ----------
        idx : torch.Tensor of shape (..., ndim), int64
            Array indices (numpy order).

        Returns
        -------
        torch.Tensor of shape (...), int64
            Flat (C-order) indices.
        """
        return (idx * self.strides).sum(-1)


def outside_fov(grid: ImageGeometry, source: ImageGeometry, device) -> Optional[torch.Tensor]:
    """Which voxels of a map's grid lie outside the query image.

    The working grid is the axis-aligned bounding box of the image, so for an image stored with a
    rotated direction its corners are padding; a peak there would put a landmark outside the image.
    A voxel counts as overlapping when its centre lies within the image's extent widened by the
    voxel's diagonal (generous on purpose: a voxel's box reaches half a diagonal from its centre, and
    the working grid may fall short of the image's box by half a working voxel; so some voxel is
    always valid, whatever the image's size and orientation).

    Parameters
    ----------
    grid : ImageGeometry
        The grid of a map (of the working grid).
    source : ImageGeometry
        The query image's own grid.
    device : torch.device or str
        Device of the mask.

    Returns
    -------
    torch.Tensor of shape (prod(grid.shape),), bool, or None
        Flat mask of the voxels of ``grid`` that do not overlap ``source``; None when every voxel
        does (always for axis-aligned images).
    """
    if grid.allclose(source, atol=1e-9):
        return None
    pad = float(np.linalg.norm(grid.spacing)) / np.asarray(source.spacing)  # in source voxels, per axis
    lo, hi = -0.5 - pad - 1e-6, np.asarray(source.size) - 0.5 + pad + 1e-6

    def inside(array_idx):
        idx = source.world_to_index(grid.array_index_to_world(array_idx))
        return np.all((idx >= lo) & (idx <= hi), axis=-1)

    shape = np.asarray(grid.shape)
    corners = np.stack(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"), -1).reshape(-1, grid.ndim)
    if inside(corners.astype(np.float64)).all():
        return None  # affine grid, convex box: all voxel centres are inside too
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    rows = []
    for r in range(shape[0]):  # row by row: memory bounded by one row of world positions
        idx = np.stack(np.meshgrid(*([axes[0][r:r + 1]] + axes[1:]), indexing="ij"), -1).reshape(-1, grid.ndim)
        rows.append(~inside(idx))
    return torch.as_tensor(np.concatenate(rows), device=device)


def clip_to_image(points: np.ndarray, source: ImageGeometry) -> np.ndarray:
    """Move points lying just outside an image onto its border.

    A peak voxel overlapping the image's border, or the sub-voxel refinement, can put a point
    just outside; a landmark is never reported outside the image.

    Parameters
    ----------
    points : ndarray of shape (n, ndim)
        World points (mm).
    source : ImageGeometry
        The image's grid; its border is half a voxel beyond the outer voxel centres.

    Returns
    -------
    ndarray of shape (n, ndim)
        The points, clipped (``points`` itself when none was outside).
    """
    if len(points) == 0:
        return points
    idx = source.world_to_index(points)
    clipped = np.clip(idx, -0.5, np.asarray(source.size) - 0.5)
    if np.array_equal(clipped, idx):
        return points
    return source.index_to_world(clipped)


def max_filter(x: torch.Tensor, half: Sequence[int]) -> torch.Tensor:
    """Box maximum over +-``half[i]`` voxels along each spatial axis.

    Separable, and per axis by doubling (max of shifted views of widths 1, 2, 4, ...), so the cost
    grows with log(width) (faster than ``max_pool``).

    Parameters
    ----------
    x : torch.Tensor of shape ``(k, *spatial)``
        The values; beyond the borders counts as -inf.
    half : sequence of int
        Half-width of the box along each spatial axis (0: no filtering along it).

    Returns
    -------
    torch.Tensor of shape ``(k, *spatial)``
        The maximum over the box around each voxel.
    """
    for ax, h in enumerate(half):
        h, dim = int(h), ax + 1
        if h <= 0:
            continue
        w, n = 2 * h + 1, x.shape[dim]
        pad_shape = list(x.shape)
        pad_shape[dim] = h
        pad = x.new_full(pad_shape, -math.inf)
        m = torch.cat([pad, x, pad], dim)
        width = 1
        while 2 * width <= w:  # m[i] = max of the padded line over [i, i + width)
            length = m.shape[dim] - width
            m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, width, length))
            width *= 2
        if width < w:
            r = w - width
            length = m.shape[dim] - r
            m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, r, length))
        x = m.narrow(dim, 0, n)
    return x


def nearest_voxel(centres: torch.Tensor, g: GridIndex) -> torch.Tensor:
    """The voxel of a grid nearest to each continuous array index.

    Parameters
    ----------
    centres : torch.Tensor of shape (k, ndim)
        Continuous array indices (numpy order).
    g : GridIndex
        The grid; indices outside it are clamped to its border voxels.

    Returns
    -------
    torch.Tensor of shape (k, ndim)
        Rounded, clamped array indices, in the dtype of ``centres``.
    """
    return torch.minimum(torch.round(centres).clamp(min=0), (g.sizes - 1).to(centres.dtype))


def ball_mask(axes, centres: torch.Tensor, spacing: Sequence[float], radius: float,
               nearest: torch.Tensor) -> torch.Tensor:
    """Mask of the voxels within a radius (mm) of each centre.

    Separable: the squared distance is a broadcast sum of per-axis terms (directions are
    orthonormal, so index offsets times spacings give world distances).

    Parameters
    ----------
    axes : sequence of torch.Tensor
        Per axis ``i``, the array coordinates spanning the grid, (k, n_i) or (1, n_i).
    centres : torch.Tensor of shape (k, ndim)
        Ball centres, continuous array indices (numpy order).
    spacing : sequence of float
        Voxel spacing (mm) per array axis (numpy order).
    radius : float
        Ball radius (mm).
    nearest : torch.Tensor of shape (k, ndim)
        The voxel nearest to each centre (:func:`nearest_voxel`); it always counts.

    Returns
    -------
    torch.Tensor of shape (k, n_0, ..., n_{d-1}), bool
        True for voxels in the ball.
    """
    nd = len(axes)
    d2 = 0.0
    at_nearest = True
    for i, coord in enumerate(axes):
        shape = [-1] + [1] * nd
        shape[1 + i] = coord.shape[1]
        d2 = d2 + (((coord - centres[:, i:i + 1]) * float(spacing[i])) ** 2).reshape(shape)
        at_nearest = at_nearest & (coord == nearest[:, i:i + 1]).reshape(shape)
    return (d2 <= radius * radius) | at_nearest
