"""Errors that mean 'bad input': the CLI prints them as one line and exits non-zero."""


class InputError(Exception):
    """Expected, user-facing error. The message names the file or parameter at fault."""
