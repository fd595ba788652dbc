"""Plumbing shared by the estimators that use a fitted component they never train (an embedder or a
landmark detector): sklearn cloning that shares it, parameter checks, and resolving it in ``fit``.

The component is a frozen, pre-trained part (like ``sklearn.frozen.FrozenEstimator``):
``clone(estimator)`` returns an unfitted estimator that shares the *same* component object, so
``Pipeline``, ``cross_val_score`` and ``GridSearchCV`` clone cheaply without discarding the trained
network, and ``get_params(deep=True)`` does not expose the component's own parameters.
"""
from __future__ import annotations

import numbers
import os
from typing import List

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .maps import Embedding

__all__ = ["FrozenComponentMixin", "resolve_embedder", "embed_images", "check_flag",
           "check_positive_int", "check_positive_float", "check_probability"]


def check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive_float(value, name, *, allow_none=False, allow_zero=False):
    """A finite number > 0 (>= 0 with ``allow_zero``), or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number"
                        f"{' or None' if allow_none else ''}, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} "
                         f"number{' or None' if allow_none else ''}, got {value!r}")
    return v


def check_probability(value, name, *, low=-1.0, high=1.0):
    """A finite number in [low, high] (similarity scores live in [-1, 1])."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    v = float(value)
    if not (np.isfinite(v) and low <= v <= high):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return v


def resolve_embedder(emb, owner: str):
    """The fitted embedder behind the ``embedder`` parameter (a path is loaded with
    :func:`samlearn.load`). Raises named errors for a missing, wrong or unfitted embedder."""
    if emb is None:
        raise ValueError(f"embedder is required: pass a fitted SAMEmbedder or the path of a saved "
                         f"model, e.g. {owner}(embedder=SAMEmbedder().fit(images))")
    if isinstance(emb, (str, os.PathLike)):
        from . import load  # lazily: the model loader lives in the package root

        emb = load(emb)
    if not (hasattr(emb, "transform") and callable(emb.transform)):
        raise TypeError(f"embedder must be a fitted SAMEmbedder-like estimator with a transform "
                        f"method (or a path to a saved model), got {type(emb).__name__}")
    try:
        check_is_fitted(emb)
    except NotFittedError:
        raise NotFittedError(
            f"embedder ({type(emb).__name__}) is not fitted: fit it on unlabelled images first "
            f"(embedder.fit(images)) or pass a path to a saved, trained model") from None
    ndim = getattr(emb, "ndim_", None)
    if ndim not in (2, 3):
        raise TypeError(f"embedder must expose ndim_ (2 or 3) after fitting, got {ndim!r}")
    return emb


def embed_images(embedder, images, batch_size: int = 1) -> List[Embedding]:
    """Embeddings of ``images`` (a list of Image), ``batch_size`` images per ``transform`` call."""
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        embs = list(embedder.transform(batch))
        if len(embs) != len(batch) or not all(isinstance(e, Embedding) for e in embs):
            raise TypeError(f"embedder.transform must return one samlearn.maps.Embedding per "
                            f"image; got {len(embs)} objects for {len(batch)} images")
        out.extend(embs)
    return out


class FrozenComponentMixin:
    """sklearn plumbing for an estimator whose parameter ``_frozen_param`` is a frozen, shared,
    pre-trained component (see the module docstring). Put it before ``BaseEstimator``."""

    _frozen_param = "embedder"

    def __sklearn_clone__(self):
        """Clone own parameters, pass the frozen component through unchanged."""
        params = self.get_params(deep=False)
        new = {k: (v if k == self._frozen_param else clone(v, safe=False)) for k, v in params.items()}
        return type(self)(**new)

    def get_params(self, deep=True):
        """Parameters of this estimator; the frozen component's own parameters are not exposed,
        whatever ``deep`` is."""
        return super().get_params(deep=False)

    def set_params(self, **params):
        """Set parameters. Nested ``<component>__...`` parameters are refused: the component is
        shared and frozen; set another one instead."""
        nested = sorted(k for k in params if "__" in k)
        if nested:
            p = self._frozen_param
            raise ValueError(f"Invalid parameter(s) {nested} for {type(self).__name__}: the {p} "
                             f"is a frozen, shared component; pass another one with "
                             f"set_params({p}=...) instead of changing its parameters")
        return super().set_params(**params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags
