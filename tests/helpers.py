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


def full_reports() -> dict:
    """The reports of a full run as the stages write them (tracked files and details, their current
    keys; the tables' sources, tools/render_docs.py), from small made-up inputs: 3 variants x 3 seeds
    x 6 volumes and zero-filled; Grad-CAM scores with a location prior; an MRNet result."""
    import numpy as np
    import pandas as pd

    from pipeline.evaluation.evaluate import summarize
    from pipeline.evaluation.gradcam_report import scores_by_call, scores_by_group
    from pipeline.metrics import ALL
    from pipeline.evaluation.reports import clean, pick
    from pipeline.roi.scores import score_slices, slice_scores, summarise, tracked_metrics
    from stages.mrnet import TRACKED

    rng = np.random.default_rng(1)
    rows = [{"variant": v, "seed": s, "volume": f"v{k}", "split": "test", "n_slices": 4, "n_roi_slices": 1,
             **{m: 20.0 + k + rng.normal(0, 0.3) + (0.5 if v == "oracle" else 0.0) for m in ALL}}
            for v in ("baseline", "weighted", "oracle") for s in (0, 1, 2) for k in range(6)]
    rows += [{"variant": "zero_filled", "seed": None, "volume": f"v{k}", "split": "test", "n_slices": 4,
              "n_roi_slices": 1, **{m: 15.0 + k for m in ALL}} for k in range(6)]
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    # the first three volumes without fat suppression, the others with it
    metrics, evaluation = summarize(table, n_resamples=200,
                                    acquisitions={f"v{k}": "CORPD_FBK" if k < 3 else "CORPDFS_FBK" for k in range(6)})
    heat = np.zeros((16, 16), np.float32)
    heat[3, 4] = 1.0
    items = [(f"v{k}", heat, [(2, 3, 3, 3)] if k % 2 else [(9, 9, 3, 3)], ["a"], 1.0) for k in range(4)]
    scores = score_slices(items, n_resamples=200)
    scores["location_prior"] = summarise([(v, slice_scores(np.ones((16, 16)), b, t)) for v, _, b, _, t in items], 200)
    # MRNet calls the volumes whose map hits (odd k) abnormal
    called = {f"v{k}": k % 2 == 1 for k in range(4)}
    scores["by_call"] = scores_by_call([(v, slice_scores(h, b, t)) for v, h, b, _, t in items], called, 200)
    # the prior: a map peaking where the odd volumes' boxes are not (it misses them, hits the even ones)
    prior_map = np.zeros((16, 16), np.float32)
    prior_map[10, 10] = 1.0
    scores["location_prior_by_call"] = scores_by_call([(v, slice_scores(prior_map, b, t)) for v, _, b, _, t in items],
                                                      called, 200)
    # the contrasts: the odd volumes (maps hit, prior misses) fat-suppressed, the even ones not
    acquisitions = {f"v{k}": "CORPDFS_FBK" if k % 2 else "CORPD_FBK" for k in range(4)}
    scores["by_acquisition"] = scores_by_group([(v, slice_scores(h, b, t)) for v, h, b, _, t in items],
                                               acquisitions, None, 200)
    scores["location_prior_by_acquisition"] = scores_by_group(
        [(v, slice_scores(prior_map, b, t)) for v, _, b, _, t in items], acquisitions, None, 200)
    calls = {"threshold": 0.42, "n_volumes_called_abnormal": 2, "n_volumes": 4}
    mrnet_detail = {"test": {"auc": 0.91, "accuracy": 0.85, "sensitivity": 0.8, "specificity": 0.9, "n": 120,
                             "n_positive": 60, "threshold": 0.42}, "best_epoch": 7, "tune_auc": 0.93,
                    "n_train": 1800, "n_tune": 200, "parameters": 2469953}
    return clean({"params": {"gradcam": {"method": "hirescam", "layer": "features.8"}},
                  "metrics": metrics, "evaluation": evaluation,
                  "mrnet": pick(mrnet_detail, TRACKED), "mrnet_detail": mrnet_detail,
                  "gradcam": {"test": tracked_metrics(scores)},
                  "gradcam_detail": {"split": "test", "method": "hirescam", "layer": "features.8", "calls": calls,
                                     **scores}})
