"""Console entry point `roirecon`: registers every stage module on the typer app."""
from __future__ import annotations

import importlib

from stages.app import app

STAGE_MODULES = ("synthesize", "slices", "mrnet", "gradcam", "unet", "evaluate", "summary")

for _name in STAGE_MODULES:
    try:
        importlib.import_module(f"stages.{_name}")
    except ModuleNotFoundError as exc:  # a stage not written yet must not break the others
        if exc.name != f"stages.{_name}":
            raise


def main() -> None:
    app()


if __name__ == "__main__":
    main()
