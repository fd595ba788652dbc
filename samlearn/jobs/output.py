"""Durable outputs of batch jobs: an exclusive output lock, a per-image journal, atomic writes.

A batch job (one result per input image) must lose nothing when it is killed or when one input is
bad. It keeps, next to its final output, a *journal*: one JSON line per finished image (its result
rows, or its error), flushed to disk before the next image starts, so a kill loses at most the image
in flight. ``--resume`` reads the journal back and skips what it holds; when every image is done the
final output is written in input order from the journal (so a resumed run writes exactly the file of
an uninterrupted one) and the journal is removed. A lock file held while the job runs refuses a
second run on the same output.
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import tempfile
from pathlib import Path

from .._utils.files import atomic_write_text

__all__ = ["OutputBusyError", "OutputLock", "Journal", "write_text", "check_output_file",
           "check_output_folder", "failures_path", "write_failures", "csv_text", "read_journal"]


class OutputBusyError(ValueError):
    """Another run holds the output (its lock file exists and its process is alive)."""


def write_text(path, text: str) -> Path:
    """Write a text file atomically, creating its folder (:func:`samlearn._utils.files.atomic_write_text`).

    Parameters
    ----------
    path : str or path
        The file.
    text : str
        The content.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def csv_text(header, rows) -> str:
    """Rows as CSV text (``\\n`` line ends).

    Parameters
    ----------
    header : sequence of str
        The header row.
    rows : iterable of sequences
        The rows.

    Returns
    -------
    str
        The CSV text.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _check_writable_folder(folder: Path, what: str) -> None:
    """Create the folder and write a probe file into it: root passes ``os.access`` on folders it
    still cannot write (``/proc``), so only trying tells."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=str(folder)):
            pass
    except OSError as exc:
        raise ValueError(f"{what}: cannot write into the folder '{folder}' ({exc.strerror or exc})") from None


def check_output_file(path, what: str = "--out") -> Path:
    """Check before any work that a result file can be written there.

    Parameters
    ----------
    path : str or path
        The output file (its folder is created now when missing).
    what : str, default "--out"
        The argument's name, for the message.

    Returns
    -------
    pathlib.Path
        The path.

    Raises
    ------
    ValueError
        When the path is a folder, its folder cannot be created or written, or the file exists
        and is not writable.
    """
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        raise ValueError(f"{what} '{path}' is a folder; give a file name")
    _check_writable_folder(p.parent, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{what} '{path}' exists and is not writable")
    return p


def check_output_folder(path, what: str = "--out") -> Path:
    """Check before any work that result files can be written into a folder.

    Parameters
    ----------
    path : str or path
        The output folder (created now when missing).
    what : str, default "--out"
        The argument's name, for the message.

    Returns
    -------
    pathlib.Path
        The path.

    Raises
    ------
    ValueError
        When the path is a file, or the folder cannot be created or written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} '{path}' is a file; give a folder")
    _check_writable_folder(p, what)
    return p


def failures_path(output) -> Path:
    """Where a job's failures go: ``<output stem>.failures.csv`` beside the output.

    Parameters
    ----------
    output : str or path
        The job's output file or folder.

    Returns
    -------
    pathlib.Path
        ``out.csv`` gives ``out.failures.csv``; a folder ``embeddings/`` gives
        ``embeddings.failures.csv``.
    """
    p = Path(output)
    name = p.name
    for suffix in (".mrk.json", ".csv", ".json", ".fcsv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}.failures.csv")


def write_failures(output, failures) -> Path | None:
    """Write (or remove, when there are none) the failures file of a job.

    Parameters
    ----------
    output : str or path
        The job's output file or folder.
    failures : list of (str, str)
        (image, error) pairs, in input order.

    Returns
    -------
    pathlib.Path or None
        The failures file, or None when there were no failures.
    """
    path = failures_path(output)
    if not failures:
        if path.exists():
            path.unlink()
        return None
    return write_text(path, csv_text(["image", "error"], failures))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An exclusive lock on an output, held by a file created with ``O_EXCL``.

    The lock file records the host and process id. A lock left by a process that no longer runs on
    this host (a killed run) is taken over; a live one refuses the second run.

    Parameters
    ----------
    path : str or path
        The lock file.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._held = False

    def acquire(self) -> "OutputLock":
        """Take the lock.

        Returns
        -------
        OutputLock
            ``self``.

        Raises
        ------
        OutputBusyError
            When another live run holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise OutputBusyError(
                    f"another run is writing this output (lock file '{self.path}' held by "
                    f"{self.path.read_text(errors='replace').strip()}); wait for it, or delete the lock "
                    f"file if that run is gone") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self._held = True
            return self
        raise OutputBusyError(f"could not take the lock file '{self.path}'")  # pragma: no cover

    def _stale(self) -> bool:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False  # being written by its owner right now, or not ours: do not take it
        if info.get("host") != socket.gethostname():
            return False
        return not _pid_alive(int(info.get("pid", -1)))

    def release(self) -> None:
        """Give the lock back (a no-op when not held)."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_journal(path, settings: dict) -> tuple:
    """Read a journal back.

    Parameters
    ----------
    path : str or path
        The journal file.
    settings : dict
        The settings the journal must have been written with.

    Returns
    -------
    done : dict
        Image -> its entry (``{"image", "ok", "rows"}``), for the finished images.
    failed : dict
        Image -> its error, for the images whose last attempt failed.

    Raises
    ------
    ValueError
        When the journal was written with other settings.
    """
    path = Path(path)
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:  # a line cut by a kill: that image is redone
            continue
    if not entries or entries[0].get("settings") != json.loads(json.dumps(settings)):
        raise ValueError(f"the journal '{path}' was written by a run with other settings (model, "
                         f"template, points or options); delete it to start again")
    done, failed = {}, {}
    for e in entries[1:]:
        if "image" not in e:
            continue
        if e.get("ok"):
            done[e["image"]] = e
            failed.pop(e["image"], None)
        else:
            failed[e["image"]] = e.get("error", "")
    return done, failed


class Journal:
    """The per-image record of a batch job, one JSON line per finished image.

    The first line records the job's settings; :meth:`open` refuses a journal written with other
    settings. Each :meth:`record` is flushed and synced to disk before it returns. A last line cut
    by a kill is ignored on reading.

    Parameters
    ----------
    path : str or path
        The journal file.
    settings : dict
        The job's settings (JSON-serialisable); a resumed run must have the same.
    """

    def __init__(self, path, settings: dict):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.done = {}
        self.failed = {}
        self._fh = None

    def open(self, resume: bool) -> "Journal":
        """Open the journal, reading back what an earlier run recorded when resuming.

        Parameters
        ----------
        resume : bool
            Whether to continue an earlier run. Without it, an existing journal is refused (so an
            interrupted run's work is never thrown away by accident).

        Returns
        -------
        Journal
            ``self``, with :attr:`done` mapping each finished image to its entry and
            :attr:`failed` each image whose last attempt failed to its error.

        Raises
        ------
        ValueError
            When a journal exists without ``resume``, or it was written with other settings.
        """
        if self.path.exists():
            if not resume:
                raise ValueError(f"an interrupted run left its journal '{self.path}': add --resume to "
                                 f"continue it, or delete the file to start again")
            self.done, self.failed = read_journal(self.path, self.settings)
            self._fh = open(self.path, "a", encoding="utf-8")
        else:
            self._fh = open(self.path, "w", encoding="utf-8")
            self._write({"settings": self.settings})
        return self

    def _write(self, entry: dict) -> None:
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def record(self, image: str, rows=None, error: str | None = None) -> None:
        """Record one finished image durably.

        Parameters
        ----------
        image : str
            The image, as given to the job.
        rows : list of list of str, optional
            Its result rows (on success).
        error : str, optional
            Its error message (on failure).
        """
        entry = {"image": image, "ok": error is None}
        entry.update({"rows": rows} if error is None else {"error": error})
        self._write(entry)
        if error is None:
            self.done[image] = entry
            self.failed.pop(image, None)
        else:
            self.failed[image] = error

    def close(self, remove: bool = False) -> None:
        """Close the journal file, and remove it when the job is complete.

        Parameters
        ----------
        remove : bool, default False
            Whether to delete the journal.
        """
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if remove:
            self.path.unlink(missing_ok=True)
