"""Console entry point `roirecon`: registers every stage module on the typer app."""
from __future__ import annotations

import os

# torch's OpenMP threads busy-wait by default; beside any other load on a small machine that
# slows training steps 5-25x. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from stages import evaluate, gradcam, mrnet, slices, summary, synthesize, unet  # noqa: F401  (registers commands)
from stages.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
