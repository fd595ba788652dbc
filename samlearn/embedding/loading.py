"""Loading any samlearn model file (:func:`samlearn.load`)."""
from __future__ import annotations

from ..exceptions import ModelFileError
from .estimator import SAMEmbedder
from .model_file import load_payload

__all__ = ["load"]


def load(path):
    """Load a samlearn model file, never running code from it.

    Parameters
    ----------
    path : str or path
        A file written by ``SAMEmbedder.save`` (or a training checkpoint).

    Returns
    -------
    SAMEmbedder
        The fitted model, on the GPU when its ``device`` asks for one and there is one, else on
        the CPU.

    Raises
    ------
    ModelFileError
        For a file that is not an intact samlearn model file (damaged, truncated, unsafe, or of
        an unknown kind).
    """
    file_kind, meta, tensors, header = load_payload(path)
    if file_kind == "SAMEmbedder":
        return SAMEmbedder._from_payload(meta, tensors, header, source=str(path))
    raise ModelFileError(f"model file '{path}' holds an unknown kind of model: {file_kind!r}")
