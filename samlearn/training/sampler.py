"""Drawing training patch pairs (paper §III-B, §IV-B).

:class:`PatchPairSampler` draws the two transforms of a pair and the intensity jitter from a
``numpy.random.Generator`` (the paper's crop logic: overlap ratio ``a/b`` per axis uniform in
``overlap``, random scale, rotation, elastic deformation, intensity jitter, **never a flip**), and
resamples the patches with exact voxel correspondences; :meth:`PatchPairSampler.sample_across`
draws the semi-supervised cross-image pairs. :func:`sampler_from_config` builds the sampler of a
configuration, :func:`sampler_for_preset` that of a named preset.
"""
from __future__ import annotations

import math

import numpy as np

from ..presets import get_preset
from ._checks import as_generator, check_number, check_patch_shape, check_range, per_axis
from .elastic import SAMPLER_ELASTIC_LIPSCHITZ, elastic_lipschitz
from .patch_pairs import CrossPatchPair, PatchPair, apply_jitter, estimate_overlap
from .patch_transform import PatchTransform

__all__ = ["PatchPairSampler", "sampler_from_config", "sampler_for_preset"]


_MAX_DRAW_ATTEMPTS = 200


# ---------------------------------------------------------------------------------------------
def _rotation_2d(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _rotation_3d(axis, angle):
    """Rodrigues rotation about a unit ``axis`` (numpy order z, y, x)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * (K @ K)


class PatchPairSampler:
    """Draws SAM training patch pairs from one source image (paper §III-B, §IV-B).

    Crop logic: two crops of random location and size from the same image, each resampled to
    ``patch_shape``. Along every axis the overlap ratio ``a / b`` (side of the overlap over side
    of the patch) is drawn uniformly in ``overlap``; the side ``b`` is the smaller of the two
    crops' extents along that axis (``(P - 1) * scale``, voxel-centre hull) and the ratio is exact
    before rotation and elastic deformation. The first crop centre is uniform among positions
    that keep both centres inside the image (patches may stick out over the border, padded with
    ``cval``); when no such position exists the pair is centred on the image. Each crop then gets
    its own rotation about its centre and elastic deformation. A pair whose patches do not
    overlap is redrawn. Never flips.

    Parameters
    ----------
    patch_shape : sequence of int
        2 or 3 sizes, numpy order (e.g. ``(32, 96, 96)`` CT, ``(400, 400)`` X-ray).
    overlap : (float, float), default (0.2, 1.0)
        ``(low, high)``, ``0 < low <= high <= 1``: overlap ratio per axis, uniform.
    scale : (float, float) or float, default (0.8, 1.25)
        ``(low, high)``, ``0 < low <= high``: source voxels per patch voxel, drawn log-uniformly,
        independently for each patch (a scalar means a fixed scale).
    scale_anisotropy : float, default 0.0
        ``a >= 0``: each axis' scale is further multiplied by a factor drawn log-uniformly in
        ``[1 / (1 + a), 1 + a]`` (0: isotropic).
    rotation_deg : float, default 0.0
        In [0, 180]: per-patch rotation about its centre. 2D: angle uniform in
        ``[-rotation_deg, rotation_deg]``. 3D: a rotation by at most ``rotation_deg``.
    rotation_axes : {"axial", "any"}, default "axial"
        3D: in-plane rotation about the z axis (in the (y, x) plane), or a uniformly random
        axis; ignored in 2D.
    elastic : bool, default False
        Smooth B-spline deformation of each patch.
    elastic_magnitude : float or sequence of float, default 0.02
        ``>= 0`` (at most 0.25), one for all axes or one per axis: maximal control-point
        displacement as a fraction of the patch side along that axis (0.02 of 400 px = 8 px).
        Fields steeper than a Lipschitz constant of 0.5 are shrunk to it (no folding).
    elastic_grid : int or sequence of int, default 4
        ``>= 1``, one for all axes or one per axis: number of B-spline intervals across the patch.
    intensity_jitter : float, default 0.1
        ``j`` in [0, 1): per-patch gain uniform in ``[1 - j, 1 + j]`` and bias uniform in
        ``[-j, j]`` (intensity units of the normalised image), applied after resampling.
    noise_std : float, default 0.0
        ``>= 0``: standard deviation of additive Gaussian noise after the jitter.
    cval : float or None, default None
        Value outside the source image; None: the source minimum.
    """

    def __init__(self, patch_shape, *, overlap=(0.2, 1.0), scale=(0.8, 1.25), scale_anisotropy=0.0,
                 rotation_deg=0.0, rotation_axes="axial", elastic=False, elastic_magnitude=0.02,
                 elastic_grid=4, intensity_jitter=0.1, noise_std=0.0, cval=None):
        self.patch_shape = check_patch_shape(patch_shape)
        ndim = len(self.patch_shape)
        self.overlap = check_range(overlap, "overlap", lo=0.0, hi=1.0)
        self.scale = check_range(scale, "scale", lo=0.0, allow_scalar=True)
        self.scale_anisotropy = check_number(scale_anisotropy, "scale_anisotropy", lo=0.0)
        self.rotation_deg = check_number(rotation_deg, "rotation_deg", lo=0.0, hi=180.0)
        if rotation_axes not in ("axial", "any"):
            raise ValueError(f"rotation_axes must be 'axial' or 'any', got {rotation_axes!r}")
        self.rotation_axes = rotation_axes
        if not isinstance(elastic, (bool, np.bool_)):
            raise ValueError(f"elastic must be True or False, got {elastic!r}")
        self.elastic = bool(elastic)
        mag = per_axis(elastic_magnitude, ndim, "elastic_magnitude", lo=0.0)
        if np.any(mag > 0.25):
            raise ValueError(f"elastic_magnitude must be <= 0.25 (fraction of the patch side), "
                             f"got {elastic_magnitude!r}")
        self.elastic_magnitude = elastic_magnitude
        self._mag = mag
        grid = per_axis(elastic_grid, ndim, "elastic_grid", lo=1, integer=True)
        self.elastic_grid = elastic_grid
        self._grid = grid.astype(np.int64)
        self.intensity_jitter = check_number(intensity_jitter, "intensity_jitter", lo=0.0, hi=1.0,
                                              hi_open=True)
        self.noise_std = check_number(noise_std, "noise_std", lo=0.0)
        self.cval = None if cval is None else check_number(cval, "cval")

    @property
    def ndim(self) -> int:
        """Number of axes (2 or 3)."""
        return len(self.patch_shape)

    def get_config(self) -> dict:
        """Return the constructor parameters as a plain dict.

        Returns
        -------
        dict
            JSON-friendly parameters, for logs; ``PatchPairSampler(**cfg)`` rebuilds the sampler.
        """
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            return list(v) if isinstance(v, tuple) else v
        return {k: plain(getattr(self, k)) for k in (
            "patch_shape", "overlap", "scale", "scale_anisotropy", "rotation_deg", "rotation_axes",
            "elastic", "elastic_magnitude", "elastic_grid", "intensity_jitter", "noise_std",
            "cval")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"PatchPairSampler({args})"

    # --------------------------------------------------------------------------- drawing
    def _draw_scale(self, rng) -> np.ndarray:
        lo, hi = self.scale
        s = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        a = self.scale_anisotropy
        f = np.exp(rng.uniform(-math.log1p(a), math.log1p(a), size=self.ndim))
        return s * f

    def _draw_rotation(self, rng) -> np.ndarray:
        theta = math.radians(self.rotation_deg)
        if self.ndim == 2:
            return _rotation_2d(rng.uniform(-theta, theta))
        angle = rng.uniform(-theta, theta)
        if self.rotation_axes == "axial":
            R = np.eye(3)
            R[1:, 1:] = _rotation_2d(angle)  # exact zeros off the (y, x) block
            return R
        axis = rng.normal(size=3)
        while np.linalg.norm(axis) < 1e-8:
            axis = rng.normal(size=3)
        return _rotation_3d(axis, angle)

    def _draw_elastic(self, rng):
        if not self.elastic or not np.any(self._mag > 0):
            return None
        P = np.asarray(self.patch_shape, dtype=np.float64)
        amp = self._mag * (P - 1)
        shape = (self.ndim,) + tuple(int(g) + 3 for g in self._grid)
        coef = rng.uniform(-1.0, 1.0, size=shape) * amp.reshape((-1,) + (1,) * self.ndim)
        lip = elastic_lipschitz(coef, self.patch_shape)
        if lip > SAMPLER_ELASTIC_LIPSCHITZ:
            coef *= SAMPLER_ELASTIC_LIPSCHITZ / lip * (1 - 1e-9)
        return coef

    def draw(self, source_shape, rng):
        """Draw concrete parameters for one pair.

        Parameters
        ----------
        source_shape : sequence of int
            Shape of the source (numpy order).
        rng : numpy.random.Generator, int or None
            Random generator (or seed).

        Returns
        -------
        t1, t2 : PatchTransform
            The transforms of the two patches, which overlap.
        jitter : dict
            The intensity jitter: ``gain``, ``bias`` (one value per patch), ``noise_std`` and
            ``noise_seed`` (one seed per patch, or None).

        Raises
        ------
        RuntimeError
            If no overlapping pair is found in 200 draws.
        """
        return self._draw(source_shape, rng)[:3]

    def _draw(self, source_shape, rng):
        shape = np.asarray(source_shape)
        if shape.ndim != 1 or shape.size != self.ndim or shape.dtype.kind not in "iu" or \
                np.any(shape < 1):
            raise ValueError(f"source_shape must be {self.ndim} positive integers (numpy order, "
                             f"matching patch_shape {self.patch_shape}), got {source_shape!r}")
        rng = as_generator(rng)
        S = shape.astype(np.float64)
        P = np.asarray(self.patch_shape, dtype=np.float64)
        for _ in range(_MAX_DRAW_ATTEMPTS):
            s1, s2 = self._draw_scale(rng), self._draw_scale(rng)
            b1, b2 = (P - 1) * s1, (P - 1) * s2
            ratio = rng.uniform(self.overlap[0], self.overlap[1], size=self.ndim)
            a = ratio * np.minimum(b1, b2)
            sign = np.where(rng.random(self.ndim) < 0.5, -1.0, 1.0)
            delta = sign * ((b1 + b2) / 2 - a)
            lo = np.maximum(0.0, -delta)
            hi = np.minimum(S - 1, S - 1 - delta)
            u = rng.random(self.ndim)
            c1 = np.where(lo <= hi, lo + u * (hi - lo), (S - 1) / 2 - delta / 2)
            c2 = c1 + delta
            R1, R2 = self._draw_rotation(rng), self._draw_rotation(rng)
            e1, e2 = self._draw_elastic(rng), self._draw_elastic(rng)
            t1 = PatchTransform.from_parameters(self.patch_shape, c1, R1, s1, e1)
            t2 = PatchTransform.from_parameters(self.patch_shape, c2, R2, s2, e2)
            frac = estimate_overlap(t1, t2)
            if frac > 0:
                break
        else:
            raise RuntimeError(f"no overlapping patch pair found in {_MAX_DRAW_ATTEMPTS} draws; "
                               f"rotation_deg={self.rotation_deg} and overlap={self.overlap} "
                               f"are too extreme")
        jitter = self._draw_jitter(rng)
        return t1, t2, jitter, frac

    def _draw_jitter(self, rng) -> dict:
        """The intensity jitter of the two patches of a pair (the ``jitter`` of :meth:`draw`)."""
        j = self.intensity_jitter
        return {
            "gain": rng.uniform(1 - j, 1 + j, size=2).tolist(),
            "bias": rng.uniform(-j, j, size=2).tolist(),
            "noise_std": self.noise_std,
            "noise_seed": (rng.integers(0, 2**63 - 1, size=2).tolist() if self.noise_std > 0
                           else None),
        }

    def sample(self, source_array, rng, spacing=None) -> PatchPair:
        """Draw one :class:`PatchPair` from a source image.

        Parameters
        ----------
        source_array : array-like
            The source (numpy order, numeric, finite).
        rng : numpy.random.Generator, int or None
            Random generator (or seed).
        spacing : float or sequence of float, optional
            mm per voxel in numpy order, only used to express positions in mm (ones when None).

        Returns
        -------
        PatchPair
            The two patches, their transforms and jitter.
        """
        src = np.asarray(source_array)
        if src.ndim != self.ndim:
            raise ValueError(f"source_array must be {self.ndim}D to match patch_shape "
                             f"{self.patch_shape}, got shape {src.shape}")
        if src.dtype.kind not in "fiub" or src.size == 0:
            raise ValueError(f"source_array must be a non-empty numeric array, got dtype "
                             f"{src.dtype} and shape {src.shape}")
        src = src.astype(np.float32, copy=False)
        sp = np.ones(self.ndim) if spacing is None else per_axis(spacing, self.ndim, "spacing",
                                                                    lo=0.0, lo_open=True)
        if self.cval is None:
            cval = float(src.min())
            if not math.isfinite(cval):
                raise ValueError("source_array contains NaN or infinite values")
        else:
            cval = self.cval
        t1, t2, jitter, frac = self._draw(src.shape, rng)
        clean = np.stack([t1.apply(src, cval), t2.apply(src, cval)])
        jittered = np.stack([apply_jitter(clean[k], jitter, k) for k in range(2)])
        pair = PatchPair(jittered, clean, (t1, t2), jitter, sp, cval)
        pair._overlap = frac
        return pair

    def sample_across(self, source_a, point_a, source_b, point_b, rng, spacing_a=None,
                      spacing_b=None) -> CrossPatchPair:
        """Draw a :class:`CrossPatchPair` showing one point in each of two images.

        Each patch gets its own scale, rotation, elastic deformation and intensity jitter from
        the same distributions as :meth:`sample` (never a flip); the point sits at a position
        drawn uniformly in the patch box, and the patch offset is solved so that this patch index
        maps exactly onto the point.

        Parameters
        ----------
        source_a, source_b : array-like
            The two sources (numpy order, numeric, finite).
        point_a, point_b : array-like, shape (ndim,)
            The point in each source (array indices, numpy order; e.g. the same labelled
            landmark in two images).
        rng : numpy.random.Generator, int or None
            Random generator (or seed).
        spacing_a, spacing_b : float or sequence of float, optional
            mm per voxel of each source (numpy order; ones when None).

        Returns
        -------
        CrossPatchPair
            Patch 1 from ``source_a`` showing ``point_a``, patch 2 from ``source_b`` showing
            ``point_b``.
        """
        rng = as_generator(rng)
        srcs, pts, sps, cvals = [], [], [], []
        for name, src, pt, sp in (("source_a", source_a, point_a, spacing_a),
                                  ("source_b", source_b, point_b, spacing_b)):
            arr = np.asarray(src)
            if arr.ndim != self.ndim or arr.dtype.kind not in "fiub" or arr.size == 0:
                raise ValueError(f"{name} must be a non-empty numeric {self.ndim}D array (matching "
                                 f"patch_shape {self.patch_shape}), got shape {arr.shape}")
            arr = arr.astype(np.float32, copy=False)
            p = np.asarray(pt, dtype=np.float64).reshape(-1)
            if p.shape != (self.ndim,) or not np.all(np.isfinite(p)):
                raise ValueError(f"the point in {name} must be {self.ndim} finite array indices "
                                 f"(numpy order), got {pt!r}")
            srcs.append(arr)
            pts.append(p)
            sps.append(np.ones(self.ndim) if sp is None else
                       per_axis(sp, self.ndim, "spacing", lo=0.0, lo_open=True))
            if self.cval is None:
                c = float(arr.min())
                if not math.isfinite(c):
                    raise ValueError(f"{name} contains NaN or infinite values")
            else:
                c = self.cval
            cvals.append(c)
        hi = np.asarray(self.patch_shape, dtype=np.float64) - 1
        transforms, anchor = [], []
        for p in pts:
            s = self._draw_scale(rng)
            R = self._draw_rotation(rng)
            e = self._draw_elastic(rng)
            u = rng.uniform(0.0, 1.0, size=self.ndim) * hi
            M = R * s[None, :]
            # x = M (u + e(u)) + t: solve t so that the drawn patch index u shows the point exactly
            zero = PatchTransform(self.patch_shape, M, np.zeros(self.ndim), e)
            transforms.append(PatchTransform(self.patch_shape, M, p - zero.to_source(u), e))
            anchor.append(u)
        jitter = self._draw_jitter(rng)
        clean = np.stack([transforms[k].apply(srcs[k], cvals[k]) for k in range(2)])
        jittered = np.stack([apply_jitter(clean[k], jitter, k) for k in range(2)])
        return CrossPatchPair(jittered, clean, transforms, jitter, np.stack(sps), cvals,
                              np.stack(anchor))


# ---------------------------------------------------------------------------------------------
_SAMPLER_KEYS = ("patch_shape", "overlap", "scale", "scale_anisotropy", "rotation_deg", "rotation_axes",
                 "elastic", "elastic_magnitude", "elastic_grid", "intensity_jitter", "noise_std")


def sampler_from_config(cfg: dict, **overrides) -> PatchPairSampler:
    """Build the sampler of a configuration dict.

    Parameters
    ----------
    cfg : dict
        A :mod:`samlearn.presets` entry or a fitted ``SAMEmbedder.config_``; its augmentation
        keys are used.
    **overrides
        :class:`PatchPairSampler` parameters that replace those of ``cfg``.

    Returns
    -------
    PatchPairSampler
        The sampler.
    """
    params = {k: cfg[k] for k in _SAMPLER_KEYS if k in cfg}
    params.update(overrides)
    if "elastic" in params:
        params["elastic"] = bool(params["elastic"])
    return PatchPairSampler(params.pop("patch_shape"), **params)


def sampler_for_preset(name: str, **overrides) -> PatchPairSampler:
    """Build the sampler of a named preset.

    Parameters
    ----------
    name : str
        ``"ct"`` (32x96x96), ``"ct-lite"``, ``"xray"`` (400x400) or ``"xray-lite"``; see
        :mod:`samlearn.presets`.
    **overrides
        :class:`PatchPairSampler` parameters that replace the preset's.

    Returns
    -------
    PatchPairSampler
        The sampler.
    """
    return sampler_from_config(get_preset(name), **overrides)
