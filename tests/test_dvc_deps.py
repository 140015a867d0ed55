"""dvc.yaml: every stage depends on the modules it runs (its stage module and every pipeline module it
imports, directly or through others), listed one by one, never a whole package."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

STAGE_MODULES = {
    "synthesize": "stages/synthesize.py", "prepare": "stages/prepare.py", "undersample": "stages/undersample.py",
    "train-mrnet": "stages/mrnet.py", "gradcam": "stages/gradcam.py", "boxmaps": "stages/boxmaps.py",
    "train-baseline": "stages/unet.py", "train-weighted": "stages/unet.py", "train-oracle": "stages/unet.py",
    "evaluate": "stages/evaluate.py",
}
# the CLI plumbing every stage shares: argument parsing, params validation, progress display
SHARED = {"stages/app.py", "stages/settings.py", "stages/progress.py", "stages/cli.py"}


def _module_file(module: str) -> str | None:
    path = Path(*module.split("."))
    return str(path.with_suffix(".py")) if (REPO / path.with_suffix(".py")).is_file() else None


def _imports(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    found = set()
    for node in ast.walk(tree):         # function-level imports count too: they run in the stage
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("pipeline", "stages"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("pipeline", "stages"))
    return {f for f in map(_module_file, found) if f}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(_imports(f) - seen)
    return seen - SHARED


def _stages() -> dict[str, dict]:
    return {name: st.get("do", st) for name, st in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()}


def test_every_stage_has_a_known_module():
    assert set(_stages()) == set(STAGE_MODULES)


@pytest.mark.parametrize("name", sorted(STAGE_MODULES))
def test_stage_depends_on_every_module_it_runs(name):
    deps = {d for d in _stages()[name]["deps"] if isinstance(d, str)}
    needed = _closure(STAGE_MODULES[name])
    assert STAGE_MODULES[name] in needed and "pipeline/stores/zarr_store.py" in needed
    assert not sorted(needed - deps), f"{name}: dvc.yaml misses modules it runs"
    code_deps = {d for d in deps if d.startswith(("pipeline", "stages"))}
    assert all(d.endswith(".py") for d in code_deps), f"{name}: depends on a whole package"
    assert not sorted(code_deps - needed), f"{name}: depends on modules it never runs"
