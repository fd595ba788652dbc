"""Messages for people: an exception on one line."""
from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException) -> str:
    """The message of an exception on one line (no traceback, no newlines).

    Parameters
    ----------
    exc : BaseException
        The exception.

    Returns
    -------
    str
        Its message with whitespace runs collapsed, or its type's name when the message is empty.
    """
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
