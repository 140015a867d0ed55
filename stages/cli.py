"""Console entry point `roirecon`: registers every stage module on the typer app.

Only typer and the command signatures are imported here; each command imports torch, zarr and
the library inside its function, so `roirecon --help` answers in well under a second.
"""
from __future__ import annotations

import inspect
import signal
import sys

from stages import (boxmaps, evaluate, gradcam, mrnet, prepare, reconstruct, summary,  # noqa: F401  (registers commands)
                    synthesize, undersample, unet)
from pipeline.threads import openmp_environment
from pipeline.stores.tmp_sweep import start_reaper
from stages.app import app

# `roirecon --help` lists the commands in the order `dvc repro` runs them (dvc.yaml), not in
# import or alphabetical order; typer's group lists them in registration order. `reconstruct` is no
# DVC stage (new files through a trained U-Net): it comes last.
PIPELINE_ORDER = ("synthesize", "prepare", "undersample", "train-mrnet", "gradcam", "boxmaps",
                  "train-unet", "evaluate", "summary", "reconstruct")


def _pipeline_rank(info) -> int:
    name = info.name or ""
    return PIPELINE_ORDER.index(name) if name in PIPELINE_ORDER else len(PIPELINE_ORDER)


def _reflowed_help(doc: str) -> str:
    """A command docstring with the line breaks inside each paragraph removed: typer's rich help keeps
    single newlines as hard breaks, which leaves ragged lines at any terminal width."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


app.registered_commands.sort(key=_pipeline_rank)  # stable: any other command follows, as registered
for _info in app.registered_commands:
    if _info.help is None and _info.callback is not None and _info.callback.__doc__:
        _info.help = _reflowed_help(_info.callback.__doc__)


def main() -> None:
    # first, while this is the only thread: the reaper sweeps the temporaries of the outputs the stage
    # owns once this process has ended, kill -9 included (pipeline/stores/tmp_sweep.py)
    start_reaper()
    # SIGTERM (a killed `dvc repro`, a CI timeout) unwinds like Ctrl-C, so atomic outputs remove
    # their temporary siblings instead of leaving them behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # before torch is imported (libgomp reads its variables when it loads): how the intra-op threads
    # of the torch stages wait; the stages choose how many (pipeline/threads.py)
    openmp_environment()
    app()


if __name__ == "__main__":
    main()
