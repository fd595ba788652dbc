"""Plumbing shared by the application estimators, which use a fitted component they never train
(an embedder or a landmark detector): sklearn cloning that shares it, declared parameter
constraints checked in one place, and resolving the component in ``fit``.

The component is a frozen, pre-trained part (like ``sklearn.frozen.FrozenEstimator``):
``clone(estimator)`` returns an unfitted estimator that shares the *same* component object, so
``Pipeline``, ``cross_val_score`` and ``GridSearchCV`` clone cheaply without discarding the trained
network, and ``get_params(deep=True)`` does not expose the component's own parameters.
"""
from __future__ import annotations

import os
from numbers import Integral, Real
from typing import List

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .._utils.validation import Interval, validate_params
from ..embedding import Embedding, load

__all__ = ["FrozenComponentMixin", "check_fitted_component", "resolve_embedder", "embed_images",
           "POSITIVE_MM", "SCORE", "POSITIVE_INT"]

#: a positive length in mm
POSITIVE_MM = Interval(Real, 0, None, closed="neither", unit="mm")
#: a similarity score threshold: cosine similarities lie in [-1, 1]
SCORE = Interval(Real, -1, 1)
#: a count
POSITIVE_INT = Interval(Integral, 1, None)


def check_fitted_component(obj, param: str, method: str, *, required: str, expected: str,
                           how_to_fit: str, load_paths: bool = False):
    """The fitted component behind a parameter (an embedder, a detector): given, with the method
    used, and fitted.

    Parameters
    ----------
    obj : object
        The parameter's value.
    param : str
        The parameter's name, which starts every error message.
    method : str
        The method the component must have (e.g. ``"transform"``).
    required : str
        What to pass, when ``obj`` is None (``"<param> is required: <required>"``).
    expected : str
        What the component must be, when it lacks ``method`` (``"<param> must be <expected>, got
        <type>"``).
    how_to_fit : str
        How to fit it, when it is not fitted (``"<param> (<type>) is not fitted: <how_to_fit>"``).
    load_paths : bool, default False
        Whether a str or path is the file of a saved model, loaded with :func:`samlearn.load`.

    Returns
    -------
    object
        The component (loaded from its file when ``obj`` is a path).

    Raises
    ------
    ValueError
        When ``obj`` is None.
    TypeError
        When it has no ``method``.
    sklearn.exceptions.NotFittedError
        When it is not fitted.
    """
    if obj is None:
        raise ValueError(f"{param} is required: {required}")
    if load_paths and isinstance(obj, (str, os.PathLike)):
        obj = load(obj)
    if not (hasattr(obj, method) and callable(getattr(obj, method))):
        raise TypeError(f"{param} must be {expected}, got {type(obj).__name__}")
    try:
        check_is_fitted(obj)
    except NotFittedError:
        raise NotFittedError(f"{param} ({type(obj).__name__}) is not fitted: {how_to_fit}") from None
    return obj


def resolve_embedder(emb, owner: str):
    """The fitted embedder behind an ``embedder`` parameter.

    Parameters
    ----------
    emb : SAMEmbedder, str or path
        A fitted embedder, or the path of a saved model (loaded with :func:`samlearn.load`).
    owner : str
        The estimator's class name, for the error messages.

    Returns
    -------
    SAMEmbedder
        The fitted embedder (anything with ``transform`` and ``ndim_`` 2 or 3).

    Raises
    ------
    ValueError
        When ``emb`` is None.
    TypeError
        When it has no ``transform`` method or no valid ``ndim_``.
    sklearn.exceptions.NotFittedError
        When it is not fitted.
    """
    emb = check_fitted_component(
        emb, "embedder", "transform",
        required=f"pass a fitted SAMEmbedder or the path of a saved model, e.g. "
                 f"{owner}(embedder=SAMEmbedder().fit(images))",
        expected="a fitted SAMEmbedder-like estimator with a transform method (or a path to a "
                 "saved model)",
        how_to_fit="fit it on unlabelled images first (embedder.fit(images)) or pass a path to a "
                   "saved, trained model",
        load_paths=True)
    ndim = getattr(emb, "ndim_", None)
    if ndim not in (2, 3):
        raise TypeError(f"embedder must expose ndim_ (2 or 3) after fitting, got {ndim!r}")
    return emb


def embed_images(embedder, images, batch_size: int = 1) -> List[Embedding]:
    """Embeddings of images, ``batch_size`` images per ``transform`` call.

    Parameters
    ----------
    embedder : SAMEmbedder
        A fitted embedder.
    images : list of Image
        The images.
    batch_size : int, default 1
        Images per ``embedder.transform`` call.

    Returns
    -------
    list of Embedding
        One per image, in order.

    Raises
    ------
    TypeError
        When ``embedder.transform`` does not return one ``Embedding`` per image.
    """
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        embs = list(embedder.transform(batch))
        if len(embs) != len(batch) or not all(isinstance(e, Embedding) for e in embs):
            raise TypeError(f"embedder.transform must return one samlearn.embedding.Embedding per "
                            f"image; got {len(embs)} objects for {len(batch)} images")
        out.extend(embs)
    return out


class FrozenComponentMixin:
    """sklearn plumbing for an estimator whose parameter ``_frozen_param`` is a frozen, shared,
    pre-trained component (see the module docstring). Put it before ``BaseEstimator``."""

    _frozen_param = "embedder"
    _parameter_constraints: dict = {}

    def _validate_params(self):
        """Check every parameter against ``_parameter_constraints`` (one uniform error)."""
        validate_params(self.get_params(deep=False), self._parameter_constraints)

    def __sklearn_clone__(self):
        """Clone own parameters, pass the frozen component through unchanged."""
        params = self.get_params(deep=False)
        new = {k: (v if k == self._frozen_param else clone(v, safe=False)) for k, v in params.items()}
        return type(self)(**new)

    def get_params(self, deep=True):
        """Parameters of this estimator.

        Parameters
        ----------
        deep : bool, default True
            Ignored: the frozen component's own parameters are never exposed.

        Returns
        -------
        dict
            Parameter names mapped to their values.
        """
        return super().get_params(deep=False)

    def set_params(self, **params):
        """Set parameters of this estimator.

        Parameters
        ----------
        **params
            New parameter values. Nested ``<component>__...`` parameters are refused: the
            component is shared and frozen; set another one instead.

        Returns
        -------
        self : estimator
            This estimator.

        Raises
        ------
        ValueError
            For nested or unknown parameters.
        """
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
