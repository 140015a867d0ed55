"""The `roirecon` typer app and the error boundary shared by every stage command."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

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
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


def progress_enabled() -> bool:
    return sys.stderr.isatty() or os.environ.get("ROIRECON_PROGRESS") == "1"
