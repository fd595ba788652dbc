"""Logging of the command line: the ``samlearn`` logger's messages on standard error.

The library never prints: it logs to loggers under ``samlearn`` (and warns with
:mod:`warnings`). The command line shows them on stderr, at the level ``-q`` / ``-v`` ask for:
warnings only, information (default), or debug messages. Python warnings and the warnings of
SimpleITK / ITK (which would otherwise go raw to stderr from C++) are routed through logging too,
so that everything reads alike and ``-q`` / ``-v`` decide.
"""
from __future__ import annotations

import logging
import re
import sys

import SimpleITK as sitk

__all__ = ["configure_logging", "level_for", "ITKToLogging"]

_HANDLER_NAME = "samlearn-cli"


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of each message (so that it
    follows redirections made after it was set up, as test harnesses do)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always reads sys.stderr
        pass


class ITKToLogging(sitk.LoggerBase):
    """SimpleITK's global message sink, forwarding ITK's messages to the ``samlearn.itk`` logger.

    ITK writes its warnings (a non-orthonormal direction read from a NIfTI header, a DICOM slice
    spacing that varies, ...) to stderr from C++; once this logger is installed with
    ``SetAsGlobalITKLogger`` they reach Python's logging like every other message. The source
    location ITK passes along (``*context``: file, line, class, object) is left out.
    """

    def __init__(self):
        super().__init__()
        self._logger = logging.getLogger("samlearn.itk")

    @staticmethod
    def _clean(t) -> str:
        text = " ".join(str(t).split())
        return "SimpleITK: " + _ITK_PREFIX.sub("", text)

    def DisplayText(self, t, *context):  # noqa: N802 - SimpleITK's interface
        """Log a message of ITK at level INFO.

        Parameters
        ----------
        t : str
            The message.
        *context
            ITK's source location (file, line, class, object), left out.
        """
        self._logger.info(self._clean(t))

    def DisplayErrorText(self, t, *context):  # noqa: N802
        """Log an error of ITK at level ERROR.

        Parameters
        ----------
        t : str
            The message.
        *context
            ITK's source location (file, line, class, object), left out.
        """
        self._logger.error(self._clean(t))

    def DisplayWarningText(self, t, *context):  # noqa: N802
        """Log a warning of ITK at level WARNING.

        Parameters
        ----------
        t : str
            The message.
        *context
            ITK's source location (file, line, class, object), left out.
        """
        self._logger.warning(self._clean(t))

    def DisplayGenericOutputText(self, t, *context):  # noqa: N802
        """Log other output of ITK at level INFO.

        Parameters
        ----------
        t : str
            The message.
        *context
            ITK's source location (file, line, class, object), left out.
        """
        self._logger.info(self._clean(t))

    def DisplayDebugText(self, t, *context):  # noqa: N802
        """Log a debug message of ITK at level DEBUG.

        Parameters
        ----------
        t : str
            The message.
        *context
            ITK's source location (file, line, class, object), left out.
        """
        self._logger.debug(self._clean(t))


_ITK_PREFIX = re.compile(r"^(WARNING|ERROR|Debug)?:? ?In \S+, line \d+ ")
_ITK_LOGGER = []  # the installed instance, kept alive for as long as SimpleITK may call it


def level_for(quiet: bool = False, verbose: int = 0) -> int:
    """The log level that ``-q`` / ``-v`` ask for.

    Parameters
    ----------
    quiet : bool, default False
        ``-q``: warnings and errors only.
    verbose : int, default 0
        How many ``-v``: 1 or more shows debug messages.

    Returns
    -------
    int
        A :mod:`logging` level.
    """
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose and verbose > 1 else logging.INFO


def configure_logging(level: int) -> logging.Logger:
    """Show the ``samlearn`` logger's messages of at least ``level`` on stderr.

    Calling it again replaces the earlier set-up (no duplicated lines).

    Parameters
    ----------
    level : int
        The :mod:`logging` level.

    Returns
    -------
    logging.Logger
        The ``samlearn`` logger.
    """
    logger = logging.getLogger("samlearn")
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    warn_logger = logging.getLogger("py.warnings")
    for h in list(warn_logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            warn_logger.removeHandler(h)
    warn_logger.addHandler(handler)
    logging.captureWarnings(True)
    if not _ITK_LOGGER:
        itk = ITKToLogging()
        itk.SetAsGlobalITKLogger()
        _ITK_LOGGER.append(itk)
    return logger
