"""The newcomer's view of `roirecon`: help in pipeline order, light imports, progress in logs, clean git status."""
from __future__ import annotations

import inspect
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from stages import progress
from tests.helpers import REPO

PIPELINE = ["synthesize", "prepare", "undersample", "train-mrnet", "gradcam", "boxmaps", "train-unet",
            "evaluate", "summary", "reconstruct"]  # reconstruct: no DVC stage, new files through a U-Net
HEAVY = ("torch", "zarr", "matplotlib", "pandas", "scipy", "dvclive", "h5py", "tqdm")


def _python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_help_lists_the_stages_in_pipeline_order_one_line_each():
    res = _python("-m", "stages.cli", "--help")
    assert res.returncode == 0, res.stderr
    section = res.stdout[res.stdout.index("Commands"):]
    rows = re.findall(r"^\W*([a-z][a-z-]*[a-z]) {2,}(\S.*?)\W*$", section, re.M)
    assert [name for name, _ in rows] == PIPELINE
    assert all(help_text for _, help_text in rows)  # every command has its one line


def test_each_command_docstring_starts_with_a_short_one_line_summary():
    from stages.cli import app

    for info in app.registered_commands:
        first = inspect.cleandoc(info.callback.__doc__).split("\n\n")[0]
        assert "\n" not in first and len(first) <= 70, (info.name, first)


def test_cli_import_and_help_do_not_load_torch_or_the_data_stack():
    res = _python("-c", "import stages.cli, sys; print('torch' in sys.modules)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    # `roirecon <stage> --help` too (typer exits through SystemExit; atexit still reports)
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
            "sys.argv = ['roirecon', 'train-unet', '--help']\n"
            "from stages.cli import main\n"
            "main()\n")
    res = _python("-c", code)
    assert res.returncode == 0, res.stderr
    assert "--variant" in res.stdout and "LOADED []" in res.stdout


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_progress_without_a_terminal_prints_plain_lines(monkeypatch):
    monkeypatch.delenv("ROIRECON_PROGRESS", raising=False)
    err = io.StringIO()  # not a tty
    monkeypatch.setattr(sys, "stderr", err)
    clock = _Clock()
    monkeypatch.setattr(progress, "time", clock)
    assert progress.mode() == "lines"
    with progress.bar(88, "train-unet baseline_s0 2/5", unit="step") as update:
        for _ in range(88):
            clock.now += 0.25  # 22 s in all: a line every INTERVAL_S (5 s), then the last one
            update(1)
    text = err.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0] == "train-unet baseline_s0 2/5: 20/88 steps (22%), 5 s, ~17 s left"
    assert lines[-1] == "train-unet baseline_s0 2/5: 88/88 steps (100%), 22 s"


def test_progress_without_a_terminal_is_quiet_for_short_tasks(monkeypatch):
    monkeypatch.delenv("ROIRECON_PROGRESS", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.bar(50, "prepare") as update:
        for _ in range(50):
            update(1)
    assert err.getvalue() == ""


@pytest.mark.parametrize("value, expected", [("0", "off"), ("1", "bar")])
def test_progress_variable_overrides_the_terminal_check(monkeypatch, value, expected):
    monkeypatch.setenv("ROIRECON_PROGRESS", value)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert progress.mode() == expected
    with progress.bar(3, "synthesize", unit="volume", interval=0) as update:
        for _ in range(3):
            update(1)
    assert (err.getvalue() != "") == (value == "1")  # =1: the tqdm bar even into a file; =0: nothing


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_gitignore_covers_user_run_outputs_but_not_dvc_gitignores():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    assert ignored("dvc_plots/index.html")  # `dvc plots show`
    assert ignored(".roirecon/checkpoints/baseline_s0/last.pt")
    assert ignored("stages/__pycache__/cli.cpython-311.pyc")
    assert not ignored("data/synthetic/.gitignore")  # written by DVC, committed
