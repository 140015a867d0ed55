"""Helpers for tests that drive the CLI in-process."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from stages.cli import app

REPO = Path(__file__).resolve().parents[1]


def write_params(path: Path, **sections) -> Path:
    """params.yaml = the repo's defaults with `sections` merged in (one level deep)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_cli(*args: str):
    """Run `roirecon ARGS` in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
