"""One way to validate parameters: declarative constraints, checked in one place.

Each estimator declares ``_parameter_constraints``, a dict mapping every parameter name to a list
of constraints; a value is valid when it satisfies at least one of them. :func:`validate_params`
checks a dict of values against such a declaration and raises
:class:`~samlearn.exceptions.InvalidParameterError` with one uniform message::

    mode must be one of ('sum', 'global', 'local'), got 'max'

The same constraints serve functions (:func:`check_param`) and configuration dicts (the resolved
``SAMEmbedder.config_``). The idea is scikit-learn's ``_parameter_constraints`` (its private
module is not imported). Constraints:

* ``Interval(Integral | Real, left, right, closed=..., unit=...)`` -- a finite number in a range
  (``bool`` is never a number here);
* ``Options(value, ...)`` -- one of the given values (compared by type and value, so ``True`` is
  not ``1``);
* ``None`` -- the value ``None``; ``"boolean"`` -- ``True`` or ``False`` (numpy booleans too);
* ``"path"`` -- a ``str`` or ``os.PathLike``; ``"random_state"`` -- ``None`` or an int >= 0;
* ``IntSequence(length, low)`` -- a list or tuple of ``length`` integers >= ``low``;
* ``HasMethods(name, ...)`` -- an object with these callable methods; a class -- an instance of it.

Checks that relate several parameters (``checkpoint_every`` needs ``checkpoint_path``) stay in
the estimator, after the declarative step.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Iterable

import numpy as np

from ..exceptions import InvalidParameterError

__all__ = ["Interval", "Options", "IntSequence", "HasMethods", "check_param", "validate_params",
           "describe", "is_int", "is_real"]


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or numpy), booleans excluded."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """Whether ``value`` is a real number (Python or numpy), booleans excluded."""
    return isinstance(value, (numbers.Real, np.floating, np.integer)) \
        and not isinstance(value, (bool, np.bool_))


class Interval:
    """A finite number between ``left`` and ``right`` (None: unbounded on that side).

    Parameters
    ----------
    kind : numbers.Integral or numbers.Real
        Integers only, or any real number (integers included).
    left, right : float or None
        The bounds.
    closed : {"both", "left", "right", "neither"}, default "both"
        Which bounds belong to the interval.
    unit : str, default ""
        The unit named in messages, e.g. ``"mm"`` gives "a positive number of mm".
    """

    def __init__(self, kind, left, right, *, closed="both", unit=""):
        if kind not in (numbers.Integral, numbers.Real):
            raise TypeError(f"kind must be numbers.Integral or numbers.Real, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        self.kind, self.left, self.right, self.closed, self.unit = kind, left, right, closed, unit

    def is_satisfied_by(self, value) -> bool:
        if not (is_int(value) if self.kind is numbers.Integral else is_real(value)):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.left is not None and (v < self.left or (v == self.left and self.closed in ("right", "neither"))):
            return False
        if self.right is not None and (v > self.right or (v == self.right and self.closed in ("left", "neither"))):
            return False
        return True

    def __str__(self) -> str:
        integer = self.kind is numbers.Integral
        noun = "integer" if integer else "number"
        unit = f" of {self.unit}" if self.unit else ""
        lo_in = self.closed in ("both", "left")
        if self.right is None:
            # the usual one-sided cases read as words: "a positive integer", "a non-negative number"
            smallest_positive = 1 if integer else None
            if self.left == 0 and not lo_in or (lo_in and self.left == smallest_positive):
                return f"a positive {noun}{unit}"
            if self.left == 0 and lo_in:
                return f"a non-negative {noun}{unit}"
            if self.left is not None:
                return f"{'an' if integer else 'a'} {noun} {'>=' if lo_in else '>'} {self.left:g}{unit}"
            return f"{'an' if integer else 'a'} {noun}{unit}"
        lo = "(-inf" if self.left is None else ("[" if lo_in else "(") + f"{self.left:g}"
        hi = f"{self.right:g}" + ("]" if self.closed in ("both", "right") else ")")
        return f"{'an' if integer else 'a'} {noun} in {lo}, {hi}{unit}"


class Options:
    """One of the given values; compared by type and value (``True`` is not ``1``)."""

    def __init__(self, *values):
        self.values = values

    def is_satisfied_by(self, value) -> bool:
        for v in self.values:
            if isinstance(v, str):
                if isinstance(value, str) and value == v:
                    return True
            elif isinstance(v, bool):
                if isinstance(value, (bool, np.bool_)) and bool(value) is v:
                    return True
            elif type(value) is type(v) and value == v:
                return True
        return False

    def __str__(self) -> str:
        if len(self.values) == 1:
            return repr(self.values[0])
        return f"one of {self.values!r}"


class IntSequence:
    """A list or tuple of ``length`` integers, each at least ``low`` (``length`` None: any)."""

    def __init__(self, length=None, low=1, *, what="integers"):
        self.length, self.low, self.what = length, low, what

    def is_satisfied_by(self, value) -> bool:
        return (isinstance(value, (list, tuple)) and (self.length is None or len(value) == self.length)
                and len(value) > 0 and all(is_int(v) and v >= self.low for v in value))

    def __str__(self) -> str:
        count = "" if self.length is None else f"{self.length} "
        kind = "positive" if self.low == 1 else f">= {self.low}"
        return f"{count}{kind} {self.what}"


class HasMethods:
    """An object with these callable methods."""

    def __init__(self, *methods):
        self.methods = methods

    def is_satisfied_by(self, value) -> bool:
        return all(callable(getattr(value, m, None)) for m in self.methods)

    def __str__(self) -> str:
        return "an object with " + " and ".join(f"a {m} method" for m in self.methods)


class _Constant:
    def __init__(self, test, text):
        self._test, self._text = test, text

    def is_satisfied_by(self, value) -> bool:
        return self._test(value)

    def __str__(self) -> str:
        return self._text


class _InstanceOf:
    def __init__(self, cls):
        self.cls = cls

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, self.cls)

    def __str__(self) -> str:
        return f"a {self.cls.__name__}"


_NAMED = {
    "boolean": _Constant(lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "path": _Constant(lambda v: isinstance(v, (str, os.PathLike)), "a path (str or os.PathLike)"),
    "random_state": _Constant(lambda v: v is None or (is_int(v) and v >= 0), "a non-negative int or None"),
}
_NONE = _Constant(lambda v: v is None, "None")


def _make(constraint):
    if constraint is None:
        return _NONE
    if isinstance(constraint, str):
        return _NAMED[constraint]
    if isinstance(constraint, type):
        return _InstanceOf(constraint)
    return constraint


def describe(constraints: Iterable) -> str:
    """The constraints in words, ``None`` last: "'auto', a positive number of mm or None"."""
    made = [_make(c) for c in constraints]
    parts = [str(c) for c in made if c is not _NONE] + (["None"] if _NONE in made else [])
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def check_param(value, constraints, name: str):
    """Return ``value`` if it satisfies one of ``constraints``, else raise.

    Parameters
    ----------
    value : object
        The value to check.
    constraints : list
        Constraints as described in the module docstring.
    name : str
        The parameter's name, for the message.

    Returns
    -------
    object
        ``value``, unchanged.

    Raises
    ------
    InvalidParameterError
        Naming the parameter, the constraints and the value.
    """
    if any(_make(c).is_satisfied_by(value) for c in constraints):
        return value
    raise InvalidParameterError(f"{name} must be {describe(constraints)}, got {value!r}")


def validate_params(params: dict, constraints: dict, names=None) -> None:
    """Check every entry of ``params`` that has constraints (only ``names`` when given).

    Parameters
    ----------
    params : dict
        Parameter values, e.g. ``estimator.get_params(deep=False)``.
    constraints : dict
        Parameter name to list of constraints (an estimator's ``_parameter_constraints``).
    names : iterable of str, optional
        Check only these parameters.

    Raises
    ------
    InvalidParameterError
        For the first parameter outside its constraints.
    """
    for name in (constraints if names is None else names):
        if name in params:
            check_param(params[name], constraints[name], name)
