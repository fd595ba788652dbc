"""Figures in world millimetres: image slices and projections, landmarks (true vs predicted),
similarity maps, registration checkerboards and training-loss curves (matplotlib, the ``plot``
extra: ``pip install samlearn[plot]``; imported only when a function here is called).

Every view is sampled on a plane of **world** coordinates, never on the voxel grid, so images with
anisotropic spacing, any origin and any direction matrix (mirrored, permuted, rotated) appear in one
orientation, axes are labelled in mm, and points, maps and images from different grids overlay
exactly. 3D views follow the radiological convention of LPS world space: ``"axial"`` (plane of
constant z; x to the right, anterior at the top), ``"coronal"`` (constant y; x to the right,
superior at the top) and ``"sagittal"`` (constant x; anterior to the left, superior at the top).
2D images show world x to the right and world y in the direction of their rows.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .embedding import Embedding
from .image import Image, ImageGeometry, check_images, check_points
from .matching import upsample_to_grid

__all__ = ["plot_image", "plot_landmarks", "similarity_map", "plot_similarity", "plot_checkerboard",
           "plot_loss", "VIEWS"]

#: the planes of 3D views (see the module docstring for their orientation)
VIEWS = ("axial", "coronal", "sagittal")
# view -> (axis held constant, horizontal axis, vertical axis), world axes x=0, y=1, z=2
_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
_NAMES = "xyz"
_MAX_PLANE = 512 * 512  # samples per plane (the plane spacing grows beyond it)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("samlearn.plot needs matplotlib: pip install 'samlearn[plot]' "
                          "(or pip install matplotlib)") from None
    return plt


def _axes(ax):
    if ax is not None:
        return ax
    plt = _pyplot()
    _, ax = plt.subplots(figsize=(6, 6))
    return ax


def _one_image(image, name="image") -> Image:
    ims = check_images(image, name=name)
    if len(ims) != 1:
        raise ValueError(f"{name} must be one image, got {len(ims)}")
    return ims[0]


@dataclass
class _Plane:
    """A rectangular grid of world points: ``points`` (rows * cols [* depth], ndim)."""

    ndim: int
    view: str
    position: float
    extent: tuple          # (left, right, bottom, top) for imshow
    origin: str            # imshow origin
    shape: tuple           # (rows, cols)
    points: np.ndarray     # (depth, rows * cols, ndim)
    xlabel: str
    ylabel: str

    def project(self, pts):
        """(n, ndim) world points -> (horizontal, vertical, distance to the plane) in mm."""
        pts = np.atleast_2d(np.asarray(pts, dtype=np.float64))
        if self.ndim == 2:
            return pts[:, 0], pts[:, 1], np.zeros(len(pts))
        c, h, v = _AXES[self.view]
        return pts[:, h], pts[:, v], pts[:, c] - self.position


def _bbox(geometry: ImageGeometry):
    c = geometry.corners_world()
    return c.min(0), c.max(0)


def _plane(geometry: ImageGeometry, view: str, position_mm, slab_mm, spacing=None) -> _Plane:
    lo, hi = _bbox(geometry)
    step = float(spacing) if spacing is not None else float(np.min(geometry.spacing))
    if geometry.ndim == 2:
        span = hi - lo
        step = max(step, float(np.sqrt(span[0] * span[1] / _MAX_PLANE)))
        xs = np.arange(lo[0] + step / 2, hi[0], step)
        ys = np.arange(lo[1] + step / 2, hi[1], step)
        # rows follow the image's own row direction (e.g. head up for a radiograph stored with y down)
        down = geometry.direction[1, 1] >= 0
        X, Y = np.meshgrid(xs, ys)
        pts = np.stack([X.ravel(), Y.ravel()], 1)[None]
        ext = (lo[0], hi[0], hi[1], lo[1]) if down else (lo[0], hi[0], lo[1], hi[1])
        return _Plane(2, "2d", 0.0, ext, "upper" if down else "lower", X.shape, pts, "x (mm)", "y (mm)")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    c, h, v = _AXES[view]
    span = hi - lo
    step = max(step, float(np.sqrt(span[h] * span[v] / _MAX_PLANE)))
    hs = np.arange(lo[h] + step / 2, hi[h], step)
    vs = np.arange(lo[v] + step / 2, hi[v], step)
    if position_mm is None:
        position_mm = (lo[c] + hi[c]) / 2
    position_mm = float(position_mm)
    if slab_mm is None or slab_mm <= 0:
        depths = np.array([position_mm])
    else:
        a = max(lo[c], position_mm - slab_mm / 2)
        b = min(hi[c], position_mm + slab_mm / 2)
        n = max(1, int(np.ceil((b - a) / max(step, float(np.max(geometry.spacing))))))
        depths = np.linspace(a, b, n)
    H, V = np.meshgrid(hs, vs)
    pts = np.empty((len(depths), H.size, 3))
    pts[:, :, h] = H.ravel()
    pts[:, :, v] = V.ravel()
    pts[:, :, c] = depths[:, None]
    if view == "axial":   # anterior (small y) at the top
        ext, origin = (lo[h], hi[h], hi[v], lo[v]), "upper"
    else:                 # superior (large z) at the top
        ext, origin = (lo[h], hi[h], lo[v], hi[v]), "lower"
    return _Plane(3, view, position_mm, ext, origin, H.shape, pts, f"{_NAMES[h]} (mm)", f"{_NAMES[v]} (mm)")


def _sample(image: Image, plane: _Plane, projection="mean", fill=np.nan, points=None) -> np.ndarray:
    pts = plane.points if points is None else points
    depth, n, nd = pts.shape
    vals = image.sample(pts.reshape(-1, nd), order=1, cval=fill).reshape(depth, n)
    if depth > 1:
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                vals = np.nanmax(vals, 0) if projection == "max" else np.nanmean(vals, 0)
    else:
        vals = vals[0]
    return vals.reshape(plane.shape)


def _window(image: Image, values, window, projected):
    if window is not None:
        return window
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    if not projected and image.ndim == 3 and float(np.min(image.array)) < -500:  # CT in HU
        return (-400.0, 600.0)
    lo, hi = np.percentile(finite, [1, 99.5])
    return (float(lo), float(hi if hi > lo else lo + 1))


def _draw(image, plane, ax, window, cmap, projection, title):
    vals = _sample(image, plane, projection, fill=float(np.min(image.array)))
    vmin, vmax = _window(image, vals, window, projected=plane.points.shape[0] > 1)
    ax.imshow(vals, cmap=cmap, vmin=vmin, vmax=vmax, extent=plane.extent, origin=plane.origin,
              interpolation="bilinear")
    ax.set_xlabel(plane.xlabel)
    ax.set_ylabel(plane.ylabel)
    if title is None and plane.ndim == 3:
        c = _AXES[plane.view][0]
        thick = plane.points.shape[0] > 1
        title = (f"{plane.view} {projection} projection" if thick else
                 f"{plane.view} at {_NAMES[c]} = {plane.position:.1f} mm")
    if title:
        ax.set_title(title)
    return vals


def plot_image(image, *, view="axial", position_mm=None, slab_mm=None, projection="mean", window=None,
               cmap="gray", ax=None, title=None):
    """Show one image in world mm.

    Parameters
    ----------
    image : Image, SimpleITK.Image or path
        One 2D or 3D image.
    view : {"axial", "coronal", "sagittal"}, default "axial"
        3D: the plane shown (see the module docstring for the orientations).
    position_mm : float or None, default None
        3D: the plane's position along its normal (world mm); None is the middle of the image.
    slab_mm : float or None, default None
        3D: show the ``projection`` of a slab of this thickness around the plane
        (``np.inf``: the whole image, like a radiograph); None shows the plane alone.
    projection : {"mean", "max"}, default "mean"
        How a slab is projected.
    window : tuple of float or None, default None
        ``(vmin, vmax)``; None is -400..600 HU for CT slices, the 1st-99.5th percentiles otherwise.
    cmap : str, default "gray"
        Matplotlib colour map.
    ax : matplotlib.axes.Axes or None, default None
        Where to draw; None makes a new figure.
    title : str or None, default None
        None: the view and position for 3D images.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
    img = _one_image(image)
    ax = _axes(ax)
    plane = _plane(img.geometry, view, position_mm, slab_mm)
    _draw(img, plane, ax, window, cmap, projection, title)
    return ax


def plot_landmarks(image, *, true=None, predicted=None, names=None, view="coronal", position_mm=None,
                   slab_mm=np.inf, projection="mean", window=None, ax=None, title=None, legend=True):
    """Landmarks over an image: ``true`` (green circles) and ``predicted`` (red crosses).

    Each true point is joined to its prediction by a line. For 3D images the points are projected
    orthogonally onto the view (default: a coronal mean projection of the whole body, on which
    every landmark is visible); pass ``slab_mm=None`` and a ``position_mm`` for a single slice.

    Parameters
    ----------
    image : Image, SimpleITK.Image or path
        One 2D or 3D image.
    true, predicted : array-like of shape (n_points, ndim) or None, default None
        World mm; NaN rows are skipped. Both given: the same shape.
    names : sequence of str or None, default None
        Labels of the true points.
    view : {"axial", "coronal", "sagittal"}, default "coronal"
        3D: the plane shown.
    position_mm : float or None, default None
        3D: the plane's position; None is the median of the points along the plane's normal.
    slab_mm : float or None, default np.inf
        3D: thickness of the projected slab (``np.inf``: the whole image; None: one slice).
    projection : {"mean", "max"}, default "mean"
        How the slab is projected.
    window : tuple of float or None, default None
        ``(vmin, vmax)`` as in :func:`plot_image`.
    ax : matplotlib.axes.Axes or None, default None
        Where to draw; None makes a new figure.
    title : str or None, default None
        The axes title.
    legend : bool, default True
        Draw a legend.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
    img = _one_image(image)
    nd = img.ndim
    t = None if true is None else check_points(true, nd, name="true", allow_nan=True)
    p = None if predicted is None else check_points(predicted, nd, name="predicted", allow_nan=True)
    if t is not None and p is not None and t.shape != p.shape:
        raise ValueError(f"true and predicted must have the same shape, got {t.shape} and {p.shape}")
    if names is not None and t is not None and len(names) != len(t):
        raise ValueError(f"names has {len(names)} entries but true has {len(t)} points")
    ax = _axes(ax)
    if position_mm is None and nd == 3:
        ref = t if t is not None else p
        if ref is not None and np.isfinite(ref).any():
            position_mm = float(np.nanmedian(ref[:, _AXES.get(view, (0,))[0]]))
    plane = _plane(img.geometry, view, position_mm, slab_mm)
    _draw(img, plane, ax, window, "gray", projection, title)
    if t is not None and p is not None:
        th, tv, _ = plane.project(t)
        ph, pv, _ = plane.project(p)
        for k in range(len(t)):
            if np.all(np.isfinite([th[k], tv[k], ph[k], pv[k]])):
                ax.plot([th[k], ph[k]], [tv[k], pv[k]], "-", color="yellow", lw=1.0, alpha=0.9)
    if t is not None:
        th, tv, _ = plane.project(t)
        ax.plot(th, tv, "o", mfc="none", mec="lime", mew=1.5, ms=7, label="true")
        if names is not None:
            for k, nm in enumerate(names):
                if np.isfinite(th[k]) and np.isfinite(tv[k]):
                    ax.annotate(str(nm), (th[k], tv[k]), xytext=(4, 3), textcoords="offset points",
                                color="lime", fontsize=6)
    if p is not None:
        ph, pv, _ = plane.project(p)
        ax.plot(ph, pv, "x", color="red", mew=1.5, ms=6, label="predicted")
    if legend and (t is not None or p is not None):
        ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_xlim(plane.extent[0], plane.extent[1])
    ax.set_ylim(plane.extent[2], plane.extent[3])
    return ax


def similarity_map(embedding, global_vector=None, local_vector=None, *, mode="sum") -> Image:
    """The similarity map of one template point in a query embedding, as an :class:`Image`.

    Parameters
    ----------
    embedding : Embedding
        The query image's embedding.
    global_vector, local_vector : array-like or torch.Tensor of shape (C,), optional
        The template point's global and local vectors, e.g. ``detector.template_global_[k]`` and
        ``detector.template_local_[k]`` of a fitted :class:`~samlearn.OneShotLandmarkDetector`;
        those that ``mode`` uses are required.
    mode : {"sum", "global", "local"}, default "sum"
        ``(S^g + S^l) / 2`` (S^g upsampled to the local grid), or ``S^g`` / ``S^l`` alone.

    Returns
    -------
    Image
        Cosine similarities in world space, on the local map's grid (the global map's for
        ``"global"``).
    """

    if not isinstance(embedding, Embedding):
        raise TypeError(f"embedding must be a samlearn.embedding.Embedding, got {type(embedding).__name__}")
    if mode not in ("sum", "global", "local"):
        raise ValueError(f"mode must be 'sum', 'global' or 'local', got {mode!r}")

    def vec(v, m, name):
        if v is None:
            raise ValueError(f"{name} is required for mode={mode!r}")
        t = torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(1, -1)
        if t.shape[1] != m.n_channels:
            raise ValueError(f"{name} has {t.shape[1]} values but the map has {m.n_channels} channels")
        return t

    gmap, lmap = embedding.global_map, embedding.local_map
    with torch.no_grad():
        if mode == "global":
            s = gmap.similarity(vec(global_vector, gmap, "global_vector"))
            return Image(s[0].float().cpu().numpy(), gmap.geometry)
        sl = lmap.similarity(vec(local_vector, lmap, "local_vector"))
        if mode == "local":
            return Image(sl[0].float().cpu().numpy(), lmap.geometry)
        sg = gmap.similarity(vec(global_vector, gmap, "global_vector"))
        sg = upsample_to_grid(sg.float().cpu(), gmap.geometry, lmap.geometry)
        return Image(((sg + sl.float().cpu()) / 2)[0].numpy(), lmap.geometry)


def plot_similarity(image, similarity, *, point=None, true=None, view="axial", position_mm=None,
                    ax=None, alpha=0.55, cmap="jet", window=None, title=None, colorbar=True):
    """A similarity map over the image, on the plane through the match.

    Parameters
    ----------
    image : Image, SimpleITK.Image or path
        One 2D or 3D image.
    similarity : Image
        The map, on any grid of the same dimension (e.g. from :func:`similarity_map`).
    point : array-like of shape (ndim,) or None, default None
        The match (world mm), drawn as a red cross; None is the map's peak.
    true : array-like of shape (ndim,) or None, default None
        The true position, drawn as a green circle.
    view : {"axial", "coronal", "sagittal"}, default "axial"
        3D: the plane shown.
    position_mm : float or None, default None
        3D: the plane's position; None is the plane through ``point``.
    ax : matplotlib.axes.Axes or None, default None
        Where to draw; None makes a new figure.
    alpha : float, default 0.55
        Opacity of the map.
    cmap : str, default "jet"
        Colour map of the map.
    window : tuple of float or None, default None
        ``(vmin, vmax)`` of the image, as in :func:`plot_image`.
    title : str or None, default None
        The axes title.
    colorbar : bool, default True
        Draw a colour bar of the similarity.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
    img = _one_image(image)
    sim = _one_image(similarity, name="similarity")
    if sim.ndim != img.ndim:
        raise ValueError(f"similarity is {sim.ndim}D but image is {img.ndim}D")
    if point is None:
        k = np.unravel_index(int(np.argmax(sim.array)), sim.array.shape)
        point = sim.geometry.array_index_to_world(np.asarray(k, dtype=np.float64))
    point = check_points(point, img.ndim, name="point")[0]
    ax = _axes(ax)
    if img.ndim == 3 and position_mm is None:
        position_mm = float(point[_AXES[view][0]]) if view in _AXES else None
    plane = _plane(img.geometry, view, position_mm, None)
    _draw(img, plane, ax, window, "gray", "mean", title)
    s = _sample(sim, plane, fill=np.nan)
    im = ax.imshow(np.ma.masked_invalid(s), cmap=cmap, alpha=alpha, extent=plane.extent, origin=plane.origin,
                   vmin=float(np.nanmin(sim.array)), vmax=float(np.nanmax(sim.array)), interpolation="bilinear")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    h, v, _ = plane.project(point)
    ax.plot(h, v, "x", color="red", mew=2, ms=9, label="match")
    if true is not None:
        th, tv, _ = plane.project(check_points(true, img.ndim, name="true")[0])
        ax.plot(th, tv, "o", mfc="none", mec="lime", mew=1.5, ms=9, label="true")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
    return ax


def _map_points(transform, pts):
    if transform is None:
        return pts
    if hasattr(transform, "transform_points"):
        return np.asarray(transform.transform_points(pts), dtype=np.float64)
    if hasattr(transform, "TransformPoint"):  # a SimpleITK transform
        return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in pts])
    if callable(transform):
        return np.asarray(transform(pts), dtype=np.float64)
    raise TypeError(f"transform must be None, an object with transform_points, a SimpleITK transform "
                    f"or a callable, got {type(transform).__name__}")


def plot_checkerboard(fixed, moving, *, transform=None, n_squares=8, view="axial", position_mm=None,
                      window=None, ax=None, title=None):
    """Registration checkerboard on the fixed image's plane.

    Squares alternate between the fixed image at world point ``x`` and the moving image at
    ``transform(x)``. Aligned images show continuous edges across the squares.

    Parameters
    ----------
    fixed, moving : Image, SimpleITK.Image or path
        One image each, of the same dimension.
    transform : Transform, SimpleITK.Transform, callable or None, default None
        FIXED -> MOVING world points, as samlearn's registration and SimpleITK transforms map
        them; None: the same world point (e.g. for a moving image already resampled onto the
        fixed grid).
    n_squares : int, default 8
        Squares along each side.
    view : {"axial", "coronal", "sagittal"}, default "axial"
        3D: the plane shown.
    position_mm : float or None, default None
        3D: the plane's position; None is the middle of the fixed image.
    window : tuple of float or None, default None
        ``(vmin, vmax)``, as in :func:`plot_image` (from the fixed image).
    ax : matplotlib.axes.Axes or None, default None
        Where to draw; None makes a new figure.
    title : str or None, default None
        None: "checkerboard: fixed / moving".

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
    f = _one_image(fixed, name="fixed")
    m = _one_image(moving, name="moving")
    if f.ndim != m.ndim:
        raise ValueError(f"fixed is {f.ndim}D but moving is {m.ndim}D")
    if not isinstance(n_squares, (int, np.integer)) or n_squares < 1:
        raise ValueError(f"n_squares must be a positive integer, got {n_squares!r}")
    ax = _axes(ax)
    plane = _plane(f.geometry, view, position_mm, None)
    a = _sample(f, plane, fill=float(np.min(f.array)))
    mpts = _map_points(transform, plane.points[0]).reshape(plane.points.shape)
    b = _sample(m, plane, fill=float(np.min(m.array)), points=mpts)
    rows, cols = a.shape
    ii, jj = np.meshgrid(np.arange(rows) * n_squares // rows, np.arange(cols) * n_squares // cols,
                         indexing="ij")
    board = np.where((ii + jj) % 2 == 0, a, b)
    vmin, vmax = _window(f, a, window, projected=False)
    ax.imshow(board, cmap="gray", vmin=vmin, vmax=vmax, extent=plane.extent, origin=plane.origin,
              interpolation="bilinear")
    ax.set_xlabel(plane.xlabel)
    ax.set_ylabel(plane.ylabel)
    ax.set_title(title if title is not None else "checkerboard: fixed / moving")
    return ax


def plot_loss(history, *, ax=None, x="iteration", smooth=25, title="training loss"):
    """Training loss curves: total, global and local loss per iteration and their moving average.

    Parameters
    ----------
    history : list of dict or SAMEmbedder
        A fitted ``SAMEmbedder``'s ``history_``, or the estimator itself.
    ax : matplotlib.axes.Axes or None, default None
        Where to draw; None makes a new figure.
    x : {"iteration", "time"}, default "iteration"
        The horizontal axis: iterations, or training time (minutes).
    smooth : int, default 25
        Window of the moving average (thick lines) over the raw values (thin lines).
    title : str, default "training loss"
        The axes title.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
    hist = getattr(history, "history_", history)
    if not isinstance(hist, (list, tuple)) or not hist or not all(isinstance(h, dict) for h in hist):
        raise ValueError("history must be a non-empty list of dicts (SAMEmbedder.history_) or a fitted "
                         "SAMEmbedder")
    if x not in ("iteration", "time"):
        raise ValueError(f"x must be 'iteration' or 'time', got {x!r}")
    ax = _axes(ax)
    xs = np.array([h.get("iteration", i + 1) for i, h in enumerate(hist)], dtype=float)
    if x == "time":
        xs = np.array([h.get("time", np.nan) for h in hist], dtype=float) / 60.0
    colors = {"loss": "k", "loss_global": "tab:blue", "loss_local": "tab:orange"}
    w = max(1, min(int(smooth), len(hist)))
    for key, col in colors.items():
        ys = np.array([h.get(key, np.nan) for h in hist], dtype=float)
        if not np.isfinite(ys).any():
            continue
        ax.plot(xs, ys, "-", color=col, lw=0.5, alpha=0.35)
        if w > 1:
            kern = np.ones(w) / w
            sm = np.convolve(ys, kern, mode="valid")
            ax.plot(xs[w - 1:], sm, "-", color=col, lw=2, label=key.replace("_", " "))
        else:
            ax.plot(xs, ys, "-", color=col, lw=2, label=key.replace("_", " "))
    ax.set_xlabel("iteration" if x == "iteration" else "training time (min)")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
