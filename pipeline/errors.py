"""Errors that mean 'bad input': the CLI prints them as one line and exits non-zero."""
from __future__ import annotations


class InputError(Exception):
    """Expected, user-facing error. The message names the file or value at fault."""


class BadValue(InputError, ValueError):
    """A value a function cannot work with. `name` is the argument it came in as (`crop`,
    `acceleration`, ...) and the message reads `name: problem`; code that took the value from a
    settings file can tell it by the setting's name instead (`stages.app.named`)."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception's message cut to one line, to quote inside an InputError."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def check_disjoint(splits: dict[str, dict[str, object]], what: str) -> None:
    """Refuse a key (file name, exam id) found in more than one split: `splits` maps each split to
    {key: where it is}. The message names the first such key, both splits and both places."""
    names = list(splits)
    shared = [(key, a, b) for i, a in enumerate(names) for b in names[i + 1:]
              for key in sorted(splits[a].keys() & splits[b].keys())]
    if shared:
        key, a, b = shared[0]
        n = len({k for k, _, _ in shared})
        more = f" ({n} {what}s in more than one split)" if n > 1 else ""
        raise InputError(f"{what} {key} is in both the {a} and {b} splits: {splits[a][key]} and "
                         f"{splits[b][key]}{more}")
