"""Console entry point `roirecon`: registers every stage module on the typer app."""
from __future__ import annotations

import signal
import sys

from stages import boxmaps, evaluate, gradcam, mrnet, slices, summary, synthesize, unet  # noqa: F401  (registers commands)
from stages.app import app


def main() -> None:
    # SIGTERM (a killed `dvc repro`, a CI timeout) unwinds like Ctrl-C, so atomic outputs remove
    # their temporary siblings instead of leaving them behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    app()


if __name__ == "__main__":
    main()
