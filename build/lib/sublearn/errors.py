"""User-facing errors: one line, naming the file or field and what was expected."""

from __future__ import annotations


class SublearnError(Exception):
    """An error caused by input or environment that the user can fix.

    The CLI prints `error: <message>` and exits with status 2, without a traceback, so the message
    must stand alone: name the file/field, say what was expected and, where useful, how to fix it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
