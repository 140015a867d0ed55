"""`dvc metrics diff` shows quality numbers only, at most 40 of them: the tracked metric files (the
`metrics` of dvc.yaml) hold no count, setting, threshold or chance level; those live in each stage's
detail JSON. Checked on the committed files and on what the stages' writers produce."""
from __future__ import annotations

import json

import yaml

from tests.helpers import REPO, full_reports

MAX_TRACKED = 40
# counts, settings and references: never tracked (each stage's detail JSON has them)
NOT_QUALITY = {"n", "n_positive", "n_slices", "n_volumes", "n_train", "n_tune", "parameters", "threshold",
               "best_epoch", "slices", "method", "layer", "smooth_sigma", "annotations", "chance", "chance_15px",
               "zero_filled"}


def _declared_metrics() -> list[str]:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return [next(iter(m)) if isinstance(m, dict) else m
            for st in dvc["stages"].values() for m in (st.get("do", st).get("metrics") or [])]


def _leaves(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}


def _check(files: dict[str, dict]) -> None:
    rows = {f"{name}:{k}": v for name, report in files.items() for k, v in _leaves(report).items()}
    assert len(rows) <= MAX_TRACKED, f"{len(rows)} tracked values: {sorted(rows)}"
    assert not [k for k in rows if set(k.split(":")[1].split(".")) & NOT_QUALITY], sorted(rows)
    assert all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows.values()), rows


def test_committed_tracked_metrics_are_few_and_quality_only():
    declared = _declared_metrics()
    assert sorted(declared) == ["reports/gradcam.json", "reports/metrics.json", "reports/mrnet.json"]
    _check({p: json.loads((REPO / p).read_text()) for p in declared})


def test_what_the_stages_track_is_few_and_quality_only():
    """The files a full run writes (3 trained variants, 2 comparisons; MRNet; Grad-CAM with its
    location prior), built by the functions the stages call: at most 40 values, quality only."""
    s = full_reports()
    assert "zero_filled" in s["evaluation"]["means"] and "zero_filled" in s["evaluation"]["means_ci95"]
    assert set(s["gradcam"]["test"]["location_prior"]) == {"pointing_game_15px"}
    assert s["mrnet"]["tune_auc"] == s["mrnet_detail"]["tune_auc"]
    assert set(s["mrnet"]["test"]) == {"auc", "accuracy", "sensitivity", "specificity"}
    tracked = {"reports/metrics.json": s["metrics"], "reports/mrnet.json": s["mrnet"],
               "reports/gradcam.json": s["gradcam"]}
    _check(tracked)
    total = sum(len(_leaves(r)) for r in tracked.values())
    assert total == MAX_TRACKED       # 31 + 5 + 4: the budget is full; a new tracked number needs one out


def test_pick_keeps_the_paths_and_their_nesting():
    from pipeline.evaluation.reports import pick
    report = {"test": {"auc": 0.6, "n": 120}, "tune_auc": 0.7, "n_train": 10}
    assert pick(report, ("test.auc", "tune_auc", "test.missing", "nothing.here")) == \
        {"test": {"auc": 0.6}, "tune_auc": 0.7}
