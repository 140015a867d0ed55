"""The `roirecon` typer app and the error boundary shared by every stage command."""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import traceback
from typing import Callable, Iterator

import click
import typer

from pipeline.errors import BadValue, InputError

app = typer.Typer(
    help="ROI-weighted accelerated knee MRI reconstruction. Each subcommand but `reconstruct` is one "
         "DVC stage (see dvc.yaml), and `dvc repro` runs them in order; `reconstruct` runs a trained "
         "U-Net on new fastMRI files.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="params file (YAML 1.2, as DVC reads it)")
RAW_DIR_OPTION = typer.Option(None, help="fastMRI root with {train,val,test}/*.h5, or {train,val} with "
                                          "data.test_from_val > 0 (default: data.raw_dir)")


def slice_counts(counts: dict[str, int]) -> str:
    """`train 12 slices, val 4 slices, ...`: a store's slices per split, for a stage's last line."""
    return ", ".join(f"{k} {v} slices" for k, v in counts.items())


@contextlib.contextmanager
def named(**keys: str) -> Iterator[None]:
    """Tell a value the library refuses (a BadValue) by where the stage took it from: `keys` maps the
    library's argument names to params keys or options, so that under `named(crop="data.crop")`
    `crop: 4096 is larger than the image ...` reads `data.crop: 4096 is larger than the image ...`."""
    try:
        yield
    except BadValue as exc:
        if exc.name not in keys:
            raise
        raise InputError(f"{keys[exc.name]}: {exc.problem}") from None


def rerun_under_torchrun(ctx: typer.Context, nproc: int, reason: str) -> None:
    """Run the command of `ctx`, with the options it was given, again under `torchrun --standalone
    --nproc-per-node nproc`, and wait for it; its exit code is this command's."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "stages.cli", ctx.info_name]
    for param in ctx.command.params:
        if ctx.params.get(param.name) is not None:
            argv += ["--" + param.name.replace("_", "-"), str(ctx.params[param.name])]
    typer.echo(f"{ctx.info_name}: {reason}: running under torchrun ({nproc} processes)")
    code = subprocess.call(argv, preexec_fn=_terminated_with_this_process())
    if code:
        raise typer.Exit(code)


def _terminated_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn`: the child gets SIGTERM when this process ends, even by kill -9 (Linux's
    PR_SET_PDEATHSIG; None elsewhere). torchrun ends its workers on SIGTERM, so a killed train-unet
    leaves no training running on; the pool workers of pipeline/parallel.py end the same way."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        if prctl(1, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() != parent:   # 1: PR_SET_PDEATHSIG
            os._exit(1)   # this process ended before the signal was armed

    return arm


DEBUG_VARIABLE = "ROIRECON_DEBUG"
# exits and usage errors that typer/click handle themselves (typer vendors its own click classes)
_CLI_EXITS = tuple({typer.Exit, typer.Abort, getattr(typer, "TyperException", typer.Exit),
                    click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort})


def debug() -> bool:
    """ROIRECON_DEBUG set (to anything but empty or 0): errors come with their traceback."""
    return os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0")


def _fail(line: str, exc: BaseException, code: int) -> typer.Exit:
    """Print `error: <line>` on stderr, then the traceback of `exc` with ROIRECON_DEBUG set."""
    typer.echo(f"error: {line}", err=True)
    if debug():
        typer.echo("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip("\n"), err=True)
    return typer.Exit(code)


def internal_error(exc: BaseException) -> str:
    """One line for an unexpected exception (a bug): its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"internal error: {type(exc).__name__}{': ' + text[0] if text else ''}"


def stage(func: Callable) -> Callable:
    """Turn errors into one line on stderr, never a traceback: expected ones (bad input, a failure
    of the machine) exit with code 1, unexpected ones (bugs) with `error: internal error: ...` and
    code 2. With ROIRECON_DEBUG=1 the traceback follows the line, for bug reports."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            raise _fail(str(exc), exc, 1) from None
        except _CLI_EXITS:
            raise  # the CLI's own ways out (usage errors exit 2 with click's message)
        except Exception as exc:
            line = environment_error(exc)
            if line is not None:
                raise _fail(line, exc, 1) from None
            if debug():
                raise _fail(internal_error(exc), exc, 2) from None
            raise _fail(f"{internal_error(exc)} (set {DEBUG_VARIABLE}=1 for the traceback)", exc, 2) from None
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
