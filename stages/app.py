"""The `roirecon` typer app and the error boundary shared by every stage command."""
from __future__ import annotations

import functools
import os
from typing import Callable

import click
import typer

from pipeline.errors import InputError

app = typer.Typer(
    help="ROI-weighted accelerated knee MRI reconstruction. Each subcommand is one DVC stage "
         "(see dvc.yaml); `dvc repro` runs them in order.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="params file (YAML 1.2, as DVC reads it)")


def stage(func: Callable) -> Callable:
    """Turn expected errors into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
        except click.exceptions.Exit:
            raise
        except Exception as exc:
            line = environment_error(exc)
            if line is None:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


_BUGS = (AssertionError, AttributeError, IndexError, KeyError, NameError, TypeError,
         click.exceptions.ClickException)


def environment_error(exc: BaseException) -> str | None:
    """One line for a failure of the machine rather than of the code: an OSError (full disk,
    read-only or forbidden output, ...) naming its path and cause, or a file that is not UTF-8.
    Libraries often re-raise these wrapped, so the chain of causes is searched. None otherwise."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _BUGS):  # a bug met while handling an OSError is still a bug
            return None
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            cause = exc.strerror or os.strerror(exc.errno)
            where = exc.filename if exc.filename is not None else "(path not reported)"
            return f"{where}: {cause}"
        if isinstance(exc, UnicodeDecodeError):
            return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        exc = exc.__cause__ or exc.__context__
    return None
