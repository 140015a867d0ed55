"""End to end: `dvc repro` on a tiny configuration in a temporary git repo, then the experiment workflow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

TINY = {
    "data": {"crop": 64},
    "synthetic": {"volumes": {"train": 3, "val": 1, "test": 1}, "slices": 4, "recon_size": 64,
                  "exams": {"train": 16, "valid": 8}, "exam_slices": 4},
}


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               DVC_NO_ANALYTICS="1", ROIRECON_PROGRESS="0")
    return env


def _sh(cwd: Path, *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    # every stage gets its smallest sensible size (keys only set where the section has them)
    small = {"mrnet": {"epochs": 2, "image_size": 64}, "unet": {"epochs": 1, "chans": 4, "num_pool_layers": 2},
             "gradcam": {"n_overlays": 1}, "evaluate": {"n_figures": 1}}
    for section, values in small.items():
        params[section].update({k: v for k, v in values.items() if k in params[section]})
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    _sh(root, "git", "init", "-q")
    _sh(root, "dvc", "init", "-q")
    _sh(root, "dvc", "config", "core.analytics", "false")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "tiny pipeline")
    return root


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_repro_builds_everything_then_is_up_to_date(repo):
    out = _sh(repo, "dvc", "repro")
    assert {"synthesize", "prepare", "undersample", "train-mrnet", "gradcam", "train-unet@baseline",
            "train-unet@weighted", "evaluate"} == _ran(out)
    for path in ("data/synthetic/fastmri/train", "data/synthetic/annotations.csv", "data/slices.zarr/zarr.json",
                 "data/undersampled.zarr/zarr.json", "data/heatmaps.zarr/zarr.json", "models/mrnet.pt",
                 "models/unet_weighted.pt", "reports/metrics.json", "data/reconstructions.zarr/zarr.json"):
        assert (repo / path).exists(), path
    status = _sh(repo, "dvc", "status")
    assert "up to date" in status
    again = _sh(repo, "dvc", "repro")
    assert _ran(again) == set()
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "repro")


def test_mask_experiment_skips_mrnet_and_gradcam(repo):
    assert (repo / "dvc.lock").exists(), "needs the repro test first"
    out = _sh(repo, "dvc", "exp", "run", "-S", "mask.acceleration=8")
    ran = _ran(out)
    assert "undersample" in ran
    assert not ran & {"synthesize", "prepare", "train-mrnet", "gradcam"}
    assert {"train-unet@baseline", "train-unet@weighted", "evaluate"} <= ran
    # metrics diff against the committed run shows every reconstruction metric, with real numbers
    diff = json.loads(_sh(repo, "dvc", "metrics", "diff", "--all", "--json"))
    metrics = diff["reports/metrics.json"]
    assert any(k.startswith("weighted") for k in metrics) and any(k.startswith("zero_filled") for k in metrics)
    assert all(isinstance(v["old"], (int, float)) for v in metrics.values())
    show = json.loads(_sh(repo, "dvc", "exp", "show", "--json"))
    assert show
