"""Files that appear complete or not at all, with the permissions any new file gets.

Every file samlearn writes (models, embeddings caches, point files, transforms, job outputs) goes
to a temporary file beside its final name and is renamed into place, so a reader or a crash never
sees half a file. The temporary file is created with ``O_EXCL`` under a random name (two writers
never share one) and mode ``0o666``, which the kernel reduces by the umask, as for any new file
(``tempfile.mkstemp``'s private ``0o600`` would survive the rename and hide a model from the
other users of a shared cluster).
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["new_temp_file", "fsync_dir", "write_atomically", "atomic_write_bytes", "atomic_write_text"]


def new_temp_file(path, suffix: str = ".tmp") -> tuple:
    """Create a new, empty temporary file beside ``path``.

    Parameters
    ----------
    path : str or path
        The final file the temporary one stands in for; its folder must exist.
    suffix : str, default ".tmp"
        The temporary file's suffix (keep the format's, e.g. ``".nii.gz"``, where a writer picks
        the format from the name).

    Returns
    -------
    fd : int
        A descriptor open for writing.
    tmp : pathlib.Path
        The temporary file, ``.<name>.<random>.<suffix>``.

    Raises
    ------
    FileNotFoundError
        When the folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write '{path}': folder '{path.parent}' does not exist")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        with contextlib.suppress(FileExistsError):
            return os.open(tmp, flags, 0o666), tmp
    raise FileExistsError(f"could not create a temporary file beside '{path}'")  # pragma: no cover


def fsync_dir(folder) -> None:
    """Make a rename durable: flush the folder's entry to disk (a no-op where folders cannot be
    opened, as on Windows).

    Parameters
    ----------
    folder : str or path
        The folder.
    """
    with contextlib.suppress(OSError):
        fd = os.open(str(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(path: Path, tmp: Path, fill, durable: bool) -> Path:
    """Fill the temporary file (``fill()``), rename it over ``path``; remove it on any failure."""
    try:
        fill()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_atomically(path, write, *, suffix: str = ".tmp", durable: bool = True) -> Path:
    """Write a file through ``write(tmp_path)`` into a temporary file beside it, then rename.

    Parameters
    ----------
    path : str or path
        The final file; its folder must exist.
    write : callable
        ``write(tmp_path: str)`` writes the whole content to that path (a writer that opens files
        by name, as SimpleITK's do).
    suffix : str, default ".tmp"
        The temporary file's suffix.
    durable : bool, default True
        Flush the file and the folder entry to disk before returning.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    fd, tmp = new_temp_file(path, suffix)
    os.close(fd)

    def fill():
        write(str(tmp))
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    return _commit(path, tmp, fill, durable)


def atomic_write_bytes(path, data: bytes, *, durable: bool = True) -> Path:
    """Write bytes atomically (see :func:`write_atomically`).

    Parameters
    ----------
    path : str or path
        The file; its folder must exist.
    data : bytes
        The content.
    durable : bool, default True
        Flush the file and the folder entry to disk before returning.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    fd, tmp = new_temp_file(path)

    def fill():
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())

    return _commit(path, tmp, fill, durable)


def atomic_write_text(path, text: str, *, durable: bool = True) -> Path:
    """Write UTF-8 text atomically (see :func:`write_atomically`), line ends as given.

    Parameters
    ----------
    path : str or path
        The file; its folder must exist.
    text : str
        The content.
    durable : bool, default True
        Flush the file and the folder entry to disk before returning.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
