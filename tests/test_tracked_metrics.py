"""`dvc metrics diff` shows quality numbers only, at most 40 of them: the tracked metric files (the
`metrics` of dvc.yaml) hold no count, setting, threshold or chance level; those live in each stage's
detail JSON. Checked on the committed files and on what the stages' writers produce."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import yaml

from tests.helpers import REPO

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
    from pipeline.evaluation import summarize
    from pipeline.metrics import ALL
    from pipeline.reports import clean, pick
    from pipeline.roi_scores import score_slices, slice_scores, summarise, tracked_metrics
    from pipeline.training.mrnet import binary_metrics
    from stages.mrnet import TRACKED

    rng = np.random.default_rng(0)
    rows = [{"variant": v, "seed": s, "volume": f"v{k}", "split": "test", "n_slices": 4, "n_roi_slices": 1,
             **{m: 20.0 + k + rng.normal() for m in ALL}}
            for v in ("baseline", "weighted", "oracle") for s in (0, 1, 2) for k in range(5)]
    rows += [{"variant": "zero_filled", "seed": None, "volume": f"v{k}", "split": "test", "n_slices": 4,
              "n_roi_slices": 1, **{m: 15.0 + k for m in ALL}} for k in range(5)]
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    evaluate_tracked, detail = summarize(table, n_resamples=200)
    assert "zero_filled" in detail["means"] and "zero_filled" in detail["means_ci95"]   # a reference: detail only

    heat = np.zeros((16, 16), np.float32)
    heat[3, 4] = 1.0
    items = [(f"v{k}", heat, [(2, 3, 3, 3)], ["a"], 1.0) for k in range(3)]
    scores = score_slices(items, n_resamples=200)
    scores["location_prior"] = summarise([(v, slice_scores(np.ones((16, 16)), b, t)) for v, _, b, _, t in items], 200)
    gradcam_tracked = {"test": tracked_metrics(scores)}
    assert set(gradcam_tracked["test"]["location_prior"]) == {"pointing_game_15px"}

    full = {"test": binary_metrics([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.1], 0.5), "best_epoch": 3, "tune_auc": 0.7,
            "n_train": 8, "n_tune": 4, "parameters": 1000}
    mrnet_tracked = pick(full, TRACKED)
    assert mrnet_tracked["tune_auc"] == 0.7 and set(mrnet_tracked["test"]) == {"auc", "accuracy", "sensitivity",
                                                                                "specificity"}
    _check(clean({"reports/metrics.json": evaluate_tracked, "reports/mrnet.json": mrnet_tracked,
                  "reports/gradcam.json": gradcam_tracked}))
    total = sum(len(_leaves(r)) for r in (evaluate_tracked, mrnet_tracked, gradcam_tracked))
    assert total == MAX_TRACKED       # 31 + 5 + 4: the budget is full; a new tracked number needs one out


def test_pick_keeps_the_paths_and_their_nesting():
    from pipeline.reports import pick
    report = {"test": {"auc": 0.6, "n": 120}, "tune_auc": 0.7, "n_train": 10}
    assert pick(report, ("test.auc", "tune_auc", "test.missing", "nothing.here")) == \
        {"test": {"auc": 0.6}, "tune_auc": 0.7}
