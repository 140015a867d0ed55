"""Console entry point `roirecon`: registers every stage module on the typer app."""
from __future__ import annotations

from stages import evaluate, gradcam, mrnet, slices, summary, synthesize, unet  # noqa: F401  (registers commands)
from stages.app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
