"""Helpers for tests that drive the CLI in-process."""
from __future__ import annotations

import re
import shlex
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


def dvc_interpolate(text: str, params: dict, item=None) -> str:
    """dvc.yaml text with `${key.path}` (from `params`) and `${item}` (a foreach item) filled in."""
    def value(m: re.Match) -> str:
        if m.group(1) == "item":
            return str(item)
        v = params
        for k in m.group(1).split("."):
            v = v[k]
        return str(v)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def stage_argv(cmd: str, params: dict, item=None) -> list[str]:
    """dvc.yaml's cmd filled in, without `python -m stages.cli`: the arguments of `roirecon`."""
    argv = shlex.split(dvc_interpolate(cmd, params, item))
    assert argv[:3] == ["python", "-m", "stages.cli"], cmd
    return argv[3:]
