"""Logging of the command line: the ``samlearn`` logger's messages on standard error.

The library never prints: it logs to loggers under ``samlearn`` (and warns with
:mod:`warnings`). The command line shows them on stderr, at the level ``-q`` / ``-v`` ask for:
warnings only, information (default), or debug messages. Python warnings are routed through
logging too, so that ``-q`` silences nothing that matters and everything reads alike.
"""
from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "level_for"]

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
    return logger
