"""Errors that mean 'bad input': the CLI prints them as one line and exits non-zero."""
from __future__ import annotations


class InputError(Exception):
    """Expected, user-facing error. The message names the file or parameter at fault."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception's message cut to one line, to quote inside an InputError."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
