"""Argument checks of the patch geometry objects (patch shapes, (low, high) ranges, per-axis
values, strides, generators). They return the converted value; errors are ``ValueError`` /
``TypeError`` naming the argument."""
from __future__ import annotations

import math
import numbers
from numbers import Real

import numpy as np

from .._utils.validation import Interval, check_param, is_int

__all__ = ["check_patch_shape", "check_range", "check_number", "per_axis", "as_generator",
           "check_index_points", "check_stride", "check_grid_points"]


def check_patch_shape(patch_shape, name="patch_shape", ndim=None) -> tuple:
    try:
        vals = tuple(patch_shape)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of 2 or 3 integers, got {patch_shape!r}") from None
    if len(vals) not in (2, 3) or (ndim is not None and len(vals) != ndim):
        want = f"{ndim}" if ndim is not None else "2 or 3"
        raise ValueError(f"{name} must have {want} values (numpy order), got {patch_shape!r}")
    if not all(is_int(v) or (isinstance(v, float) and v.is_integer()) for v in vals):
        raise ValueError(f"{name} must be integers, got {patch_shape!r}")
    vals = tuple(int(v) for v in vals)
    if min(vals) < 2:
        raise ValueError(f"{name} values must be >= 2, got {patch_shape!r}")
    return vals


def check_range(value, name, *, lo=None, hi=None, lo_open=True, hi_open=False,
                 allow_scalar=False) -> tuple:
    """A (low, high) pair with low <= high inside the given bounds."""
    if allow_scalar and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{name} must be a finite (low, high) pair, got {value!r}")
    a, b = pair
    bad_lo = lo is not None and (a <= lo if lo_open else a < lo)
    bad_hi = hi is not None and (b >= hi if hi_open else b > hi)
    if a > b or bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        interval = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise ValueError(f"{name} must be (low, high) with low <= high inside {interval}, "
                         f"got {value!r}")
    return pair


def check_number(value, name, *, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """A finite number in the given bounds, as float (the declared-constraint check)."""
    closed = {(False, False): "both", (True, False): "right", (False, True): "left", (True, True): "neither"}
    return float(check_param(value, [Interval(Real, lo, hi, closed=closed[lo_open, hi_open])], name))


def per_axis(value, ndim, name, *, lo=None, lo_open=False, integer=False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if not isinstance(value, bool) else None
    if arr is None or arr.ndim > 1 or (arr.ndim == 1 and arr.size != ndim):
        raise ValueError(f"{name} must be a number or {ndim} numbers (one per axis), got {value!r}")
    arr = np.broadcast_to(arr, (ndim,)).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and np.any(arr <= lo if lo_open else arr < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if integer and not np.all(arr == np.round(arr)):
        raise ValueError(f"{name} must be integers, got {value!r}")
    return arr


def as_generator(rng, name="rng") -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or is_int(rng) or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise TypeError(f"{name} must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def check_index_points(points, ndim, name) -> tuple:
    pts = np.asarray(points, dtype=np.float64)
    single = pts.ndim == 1
    if single:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != ndim:
        raise ValueError(f"{name} must have shape (n_points, {ndim}) (numpy index order), "
                         f"got shape {np.shape(points)}")
    return pts, single


def check_stride(stride, ndim) -> np.ndarray:
    s = np.asarray(stride)
    ok = s.ndim == 0 or (s.ndim == 1 and s.size == ndim)
    ok = ok and s.dtype != bool and s.dtype.kind in "iuf" and np.all(np.isfinite(s))
    ok = ok and np.all(s == np.round(s)) and np.all(s >= 1)
    if not ok:
        raise ValueError(f"stride must be a positive integer or {ndim} of them, got {stride!r}")
    return np.broadcast_to(s, (ndim,)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
def check_grid_points(shape, n_per_axis):
    axes = [np.linspace(0.0, p - 1.0, n_per_axis) for p in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
