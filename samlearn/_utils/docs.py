"""Shared docstring text, written once (nilearn's ``fill_doc`` pattern).

Parameters that several estimators share (the frozen ``embedder``, the search ``mode`` and
``search_radius_mm``, the intensity refinement ``ncc_*``, ...) are described here once. A
docstring names them as ``%(embedder)s`` on a line of its own and :func:`fill_doc` substitutes
the text, indented like the placeholder line; the rest of the docstring is left as it is.
"""
from __future__ import annotations

import re

__all__ = ["DOCDICT", "fill_doc", "fill_doc_with"]

#: name -> numpydoc text, unindented: a parameter's entry (the ``name : type`` line and its
#: description), or whole sections that several methods share word for word
DOCDICT: dict = {}

DOCDICT["embedder"] = """
embedder : SAMEmbedder, str or path
    A fitted ``SAMEmbedder`` (anything with ``transform(images) -> list[Embedding]`` and
    ``ndim_``), or the path of a saved model, loaded with :func:`samlearn.load` in ``fit``. It is
    a frozen, pre-trained component: never fitted here, and ``sklearn.base.clone`` returns an
    unfitted estimator sharing the *same* embedder object (like ``sklearn.frozen.FrozenEstimator``),
    so ``Pipeline``, ``cross_val_score`` and ``GridSearchCV`` clone cheaply without discarding the
    trained network. ``get_params(deep=True)`` does not expose the embedder's own parameters:
    change it by setting another one (``set_params(embedder=...)``)."""

DOCDICT["mode"] = """
mode : {"sum", "global", "local"}, default "sum"
    Which similarity maps decide a match: ``(S^g + S^l) / 2`` (the paper's rule), or one of them
    (:func:`samlearn.matching.match_points`)."""

DOCDICT["search_radius_mm"] = """
search_radius_mm : "auto", float or None, default "auto"
    Coarse-to-fine window (samlearn's, not the paper's): the local map is searched only within
    this radius (mm) of the global map's peak, which removes far-away false peaks of the local
    map; "auto" is two voxels of the query's global grid. None searches the whole image (the
    paper's rule)."""

DOCDICT["batch_size"] = """
batch_size : int, default 1
    Images embedded per call of ``embedder.transform`` (embeddings of whole CT volumes are large:
    keep this small)."""

DOCDICT["chunk_size"] = """
chunk_size : int, default 2**24
    Memory bound of the search: floats per intermediate (:func:`samlearn.matching.match_points`)."""

DOCDICT["ncc_search_mm"] = """
ncc_search_mm : "auto" or float, default "auto"
    Largest shift searched per world axis by the intensity refinement ("auto": one voxel of the
    query's local embedding grid, its largest spacing)."""

DOCDICT["ncc_penalty"] = """
ncc_penalty : float, default 0.05
    NCC units subtracted at the edge of the search (in proportion to the squared shift), so that
    flat correlation surfaces keep the SAM match."""

DOCDICT["world_points"] = """
points : array-like of shape (n_points, ndim) or (ndim,)
    World points (mm), ``(x, y[, z])`` order."""

DOCDICT["fixed_to_moving"] = """
Parameters
----------
points : array-like of shape (n_points, ndim) or (ndim,)
    Points of the fixed image (mm).

Returns
-------
ndarray of shape (n_points, ndim) or (ndim,)
    Where the same anatomy lies in the moving image."""

DOCDICT["config"] = """
config : NetworkConfig
    The architecture."""

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<key>\w+)\)s[ \t]*$", re.MULTILINE)


def _indented(text: str, indent: str) -> str:
    lines = text.strip("\n").splitlines()
    return "\n".join((indent + ln) if ln.strip() else "" for ln in lines)


def fill_doc(obj):
    """Substitute the shared entries of :data:`DOCDICT` into ``obj.__doc__``.

    Parameters
    ----------
    obj : class or function
        Its docstring holds placeholders such as ``%(embedder)s``, each alone on its line.

    Returns
    -------
    class or function
        ``obj`` itself, its docstring filled (usable as a decorator).

    Raises
    ------
    KeyError
        For a placeholder with no entry in :data:`DOCDICT`.
    """
    return _fill(obj, DOCDICT)


def fill_doc_with(entries: dict):
    """A :func:`fill_doc` that also knows ``entries`` (a module's own shared text, e.g. the
    parameters a subclass inherits).

    Parameters
    ----------
    entries : dict
        Name to numpydoc text, as in :data:`DOCDICT`.

    Returns
    -------
    callable
        The decorator.
    """
    merged = {**DOCDICT, **entries}
    return lambda obj: _fill(obj, merged)


def _fill(obj, entries):
    doc = obj.__doc__
    if not doc:
        return obj

    def sub(match):
        key = match.group("key")
        if key not in entries:
            raise KeyError(f"{obj.__qualname__}: no shared docstring entry {key!r}")
        return _indented(entries[key], match.group("indent"))

    for _ in range(3):  # entries may hold placeholders of their own
        doc = _PLACEHOLDER.sub(sub, doc)
    obj.__doc__ = doc
    return obj
