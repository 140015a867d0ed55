"""End to end: `dvc repro` on a tiny configuration in a temporary git repo; each stage depends on exactly the
params it reads (checked with `dvc status` and the stage graph); the experiment workflow and the metrics diff."""
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

SEEDS = (0, 1)
TRAININGS = {f"train-{v}@{s}" for v in ("baseline", "weighted", "oracle") for s in SEEDS}
ROI_TRAININGS = {f"train-{v}@{s}" for v in ("weighted", "oracle") for s in SEEDS}
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
    small = {"mrnet": {"epochs": 2, "image_size": 64},
             "unet": {"epochs": 1, "chans": 4, "num_pool_layers": 2, "seeds": list(SEEDS)},
             "gradcam": {"n_overlays": 1}, "evaluate": {"n_figures": 1, "bootstrap_resamples": 1000}}
    for section, values in small.items():
        params[section].update({k: v for k, v in values.items() if k in params[section]})
    return params


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The tiny pipeline in a git repo, reproduced once and committed: (repo, the `dvc repro` output).
    Every test leaves the repo as it found it (committed and up to date), so they run in any order."""
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
    out = _sh(root, "dvc", "repro")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "repro")
    return root, out


@pytest.fixture
def repo(built) -> Path:
    root = built[0]
    yield root
    assert _status(root) == {}, "a test left the repo changed"


def _status(repo: Path) -> dict:
    return json.loads(_sh(repo, "dvc", "status", "--json"))


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _would_run(repo: Path) -> tuple[set[str], set[str]]:
    """(stages `dvc status` lists as changed, those plus everything downstream of them)."""
    from dvc.repo import Repo
    import networkx as nx

    changed = set(_status(repo))
    with Repo(str(repo)) as r:
        g = r.index.graph          # edges point from a stage to the stages it depends on
        by_name = {s.name: s for s in g.nodes}
        downstream = {a.name for name in changed for a in nx.ancestors(g, by_name[name])}
    return changed, changed | downstream


def test_repro_builds_everything_then_is_up_to_date(built, repo):
    assert {"synthesize", "prepare", "undersample", "train-mrnet", "gradcam", "boxmaps", "evaluate"} | TRAININGS \
        == _ran(built[1])
    for path in ("data/synthetic/fastmri/train", "data/synthetic/annotations.csv", "data/slices.zarr/zarr.json",
                 "data/undersampled.zarr/zarr.json", "data/heatmaps.zarr/zarr.json", "data/boxmaps.zarr/zarr.json",
                 "models/mrnet.pt", "models/unet/oracle_s1.pt", "reports/metrics.json", "reports/evaluation.json",
                 "reports/per_volume.csv", "reports/figures/compare.png", "data/reconstructions.zarr/zarr.json"):
        assert (repo / path).exists(), path
    assert _status(repo) == {}                    # every stage's deps, params and outs as dvc.lock records
    assert _ran(_sh(repo, "dvc", "repro")) == set()
    assert _sh(repo, "git", "status", "--porcelain") == ""     # nothing to commit: dvc.lock unchanged


@pytest.mark.parametrize("key,value,changed,downstream", [
    # the ROI weight retrains the two weighted variants, never the baseline
    ("loss.roi_weight", 2.5, ROI_TRAININGS, {"evaluate"}),
    # so does every other knob of the ROI weighting (pipeline/losses.py RoiWeighting)
    ("loss.roi_norm", "none", ROI_TRAININGS, {"evaluate"}),
    ("loss.roi_margin", 3, ROI_TRAININGS, {"evaluate"}),
    ("loss.roi_soft", 1.5, ROI_TRAININGS, {"evaluate"}),
    ("loss.background_weight", 0.25, ROI_TRAININGS, {"evaluate"}),
    # Grad-CAM settings: gradcam, the Grad-CAM-weighted trainings, evaluate; not the oracle nor the baseline
    ("gradcam.smooth_sigma", 2.0, {"gradcam"}, {f"train-weighted@{s}" for s in SEEDS} | {"evaluate"}),
    # U-Net settings: every training and evaluate, never MRNet or Grad-CAM
    ("unet.lr", 1e-3, TRAININGS, {"evaluate"}),
    # a mask: undersample and what reads it, never MRNet, Grad-CAM or the box maps
    ("mask.acceleration", 8, {"undersample"}, TRAININGS | {"evaluate"}),
    # evaluation settings: evaluate alone
    ("evaluate.split", "val", {"evaluate"}, set()),
])
def test_each_stage_depends_on_exactly_the_params_it_reads(repo, key, value, changed, downstream):
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    section, name = key.split(".")
    params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status, would_run = _would_run(repo)
    finally:
        path.write_text(original)
    assert status == changed
    assert would_run == changed | downstream


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_mask_experiment_skips_mrnet_and_gradcam(repo):
    committed = _flat(json.loads((repo / "reports/metrics.json").read_text()))
    try:
        out = _sh(repo, "dvc", "exp", "run", "-S", "mask.acceleration=8")
        ran = _ran(out)
        assert ran == {"undersample", "evaluate"} | TRAININGS
        assert json.loads(_sh(repo, "dvc", "params", "diff", "--json")) == \
            {"params.yaml": {"mask.acceleration": {"old": 4, "new": 8, "diff": 4}}}
        # metrics diff against the committed run: quality numbers only, at most 40 of them from evaluate,
        # old = the committed run's, new = the experiment's
        diff = json.loads(_sh(repo, "dvc", "metrics", "diff", "--all", "--json"))
        metrics = diff["reports/metrics.json"]
        assert 15 <= len(metrics) <= 40            # 3 variants x 5 means, and the comparisons that are defined
        # (one test volume: no interval over volumes, so ci95 and p are null and dvc leaves them out)
        assert {"oracle_vs_baseline.roi_psnr.delta", "weighted_vs_baseline.psnr.delta", "baseline.psnr"} <= set(metrics)
        rows = [k for f in diff.values() for k in f]
        assert not [k for k in rows if any(t in k for t in ("time", "seconds", "per_s", "threads", "version"))]
        new = _flat(json.loads((repo / "reports/metrics.json").read_text()))
        assert {k: v["old"] for k, v in metrics.items()} == {k: committed[k] for k in metrics}
        assert {k: v["new"] for k, v in metrics.items()} == {k: new[k] for k in metrics}
        # 8x undersampling: a worse baseline than the committed run's 4x
        assert new["baseline.psnr"] < committed["baseline.psnr"]
    finally:   # back to the committed run
        _sh(repo, "git", "checkout", "--", ".")
        _sh(repo, "dvc", "checkout", "--force")


def test_push_then_pull_into_a_second_clone_restores_every_output(repo, tmp_path):
    """Sharing results: push the cache to a (local) remote, clone the git repo elsewhere, pull: every output
    of the committed run comes back and the clone is up to date without re-running anything."""
    remote = tmp_path / "remote"
    # --local: .dvc/config.local is git-ignored, so the first repo's committed state is untouched
    _sh(repo, "dvc", "remote", "add", "--local", "--force", "-d", "store", str(remote))
    # --all-branches: the committed run's outputs, whatever the workspace holds
    _sh(repo, "dvc", "push", "--all-branches")
    assert any(remote.rglob("*")), "nothing was pushed"
    branch = _sh(repo, "git", "rev-parse", "--abbrev-ref", "HEAD").strip()

    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "models" / "mrnet.pt").exists(), "outputs are not in git"
    _sh(clone, "dvc", "remote", "add", "--local", "--force", "-d", "store", str(remote))
    _sh(clone, "dvc", "pull")
    assert _status(clone) == {}
    assert _ran(_sh(clone, "dvc", "repro")) == set()

    for path in [f"models/unet/{v}_s{s}.pt" for v in ("baseline", "weighted", "oracle") for s in SEEDS] + [
            "models/mrnet.pt", "data/slices.zarr/zarr.json", "data/undersampled.zarr/zarr.json",
            "data/heatmaps.zarr/zarr.json", "data/boxmaps.zarr/zarr.json", "data/reconstructions.zarr/zarr.json",
            "reports/metrics.json", "reports/evaluation.json", "reports/figures/compare.png"]:
        assert (clone / path).exists(), path
    # the clone's metrics are the first repo's at the committed revision
    # (plain `show` gives {"": the workspace}; `--all-branches` keys by branch name, plus "workspace" when dirty)
    (ours,) = json.loads(_sh(clone, "dvc", "metrics", "show", "--json")).values()
    theirs = json.loads(_sh(repo, "dvc", "metrics", "show", "--all-branches", "--json"))[branch]
    assert ours["data"] == theirs["data"]
    assert ours["data"]["reports/metrics.json"]["data"]
    # the first repo is left as it was: no tracked change from the remote setup
    assert _sh(repo, "git", "status", "--porcelain", ".dvc") == ""
