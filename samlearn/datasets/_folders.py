"""Checks shared by the loaders of real data kept on the local disk."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_folder"]


def check_folder(path, what: str) -> Path:
    """The data folder ``path`` as a ``Path``; samlearn never downloads data.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the folder holds, for the error message ("CT", "cephalogram").

    Returns
    -------
    folder : pathlib.Path

    Raises
    ------
    TypeError
        ``path`` is not a str or path-like.
    FileNotFoundError
        The folder does not exist.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} folder does not exist: '{p}' (samlearn never downloads it)")
    return p
