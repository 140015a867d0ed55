"""MRNet stability over training seeds: test AUC (and tune AUC, best epoch) for several seeds on the
same exams, the data fixed (only the classifier's seed changes: init, tune split, shuffling).

#21 asks for a mean test AUC >= 0.90 on the 120 exams with SD <= 0.03 over MRNet seeds 0, 1, 2;
this measures where the default stands. Reads the exams of params.yaml's `mrnet.*` (`data/synthetic/mrnet` after
`dvc repro synthesize`). Writes reports/bench/mrnet_seeds.json.

For synthetic exams (which come with `boxes.csv`) it also reports, per seed, the test AUC of the
abnormal exams split by the area of their largest lesion box (as a fraction of the frame: under
and over the median) against all normal exams: whether the classifier sees the small lesions, the
large ones, or neither; and the test AUC within each contrast the exams were drawn with (proton
density with or without fat suppression, `exam_acquisitions`).

With `--maps` (after `dvc repro prepare`: it reads `data/slices.zarr` and the boxes of
`data.annotations`), each seed's model also gets the gradcam stage's maps (`gradcam.*` of params)
on the fastMRI test slices, scored like the stage scores them: the pointing game's spread over
MRNet seeds (#11: SD <= 0.05).

    python benchmarks/mrnet_seeds.py --seeds 0,1,2 --maps
    python benchmarks/mrnet_seeds.py --seeds 0 --epochs 6 --maps --out reports/bench/mrnet_long.json
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pipeline.models.mrnet import exam_logit  # noqa: E402
from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.training.mrnet import roc_auc  # noqa: E402
from pipeline.training.mrnet import train_mrnet  # noqa: E402
from pipeline.synthetic.dataset import exam_acquisitions  # noqa: E402
from stages.mrnet import exam_splits, train_config  # noqa: E402
from stages.settings import load_params  # noqa: E402


def largest_box_area(data_dir: Path) -> dict[str, float]:
    """Exam id -> area of its largest lesion box / frame area (synthetic exams' boxes.csv)."""
    boxes = pd.read_csv(data_dir / "boxes.csv", dtype={"case": str})
    frame = float(np.load(next((data_dir / "valid").rglob("*.npy"))).shape[-1]) ** 2
    return (boxes.height * boxes.width / frame).groupby(boxes.case).max().to_dict()


def auc_by_lesion_size(score: dict[str, float], exams, largest: dict[str, float]) -> dict:
    """Test AUC (`score`: {exam id: logit}) of the abnormal exams with a small (<= median) or large
    largest box, each against every normal exam."""
    abnormal = [e.id for e in exams if e.label and e.id in largest]
    normal = [e.id for e in exams if not e.label]
    cut = float(np.median([largest[i] for i in abnormal]))
    out = {"median_largest_box_fraction": cut}
    for name, ids in (("small", [i for i in abnormal if largest[i] <= cut]),
                      ("large", [i for i in abnormal if largest[i] > cut])):
        labels = [1] * len(ids) + [0] * len(normal)
        out[f"auc_{name}_lesions"] = roc_auc(labels, [score[i] for i in ids + normal])
        out[f"n_{name}"] = len(ids)
    return out


def auc_by_acquisition(score: dict[str, float], exams, acquisitions: dict[str, str]) -> dict:
    """{acquisition: AUC} of `exams` (`score`: {exam id: logit}) within each contrast the synthetic
    exams were drawn with (`acquisitions`: {exam id: acquisition},
    `pipeline.synthetic.dataset.exam_acquisitions`): the normal and abnormal exams of that contrast
    only, with their counts."""
    out = {}
    for acq in sorted({acquisitions[e.id] for e in exams}):
        group = [e for e in exams if acquisitions[e.id] == acq]
        out[acq] = {"auc": roc_auc([e.label for e in group], [score[e.id] for e in group]),
                    "n": len(group), "n_positive": sum(e.label for e in group)}
    return out


def localisation(model, config: dict, p, slices: Path) -> dict:
    """The gradcam stage's tracked scores on the test split for one MRNet (`gradcam.*` of params;
    the maps are scored like the stage scores them, `benchmarks/gradcam_methods.score_maps`)."""
    from benchmarks.gradcam_methods import score_maps
    from pipeline.roi.scores import tracked_scores

    g = p.gradcam
    scores, = score_maps(model, config, slices, p.data.annotations_path(None), frame=p.data.annotation_frame,
                         smooth_sigma=g.smooth_sigma, methods=[g.method], layers=[g.layer], split="test",
                         n_resamples=2000)
    return {f"test_{k}": v for k, v in tracked_scores(scores).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="override mrnet.epochs (is it the budget?)")
    ap.add_argument("--maps", action="store_true", help="also score each seed's Grad-CAM maps on the test slices")
    ap.add_argument("--slices", type=Path, default=REPO / "data/slices.zarr")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/mrnet_seeds.json")
    args = ap.parse_args()
    p = load_params(args.params)
    m = p.mrnet
    splits = exam_splits(p, Path(m.data_dir))
    runs = {}
    largest = largest_box_area(Path(m.data_dir)) if (Path(m.data_dir) / "boxes.csv").exists() else None
    acquisitions = exam_acquisitions(p.synthetic.exams, p.seed) if m.source == "synthetic" else None
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = train_config(m, seed)
        if args.epochs is not None:
            cfg = dataclasses.replace(cfg, epochs=args.epochs)
        t0 = time.perf_counter()
        r = train_mrnet(splits["train"], splits["valid"], cfg)
        runs[str(seed)] = {"test_auc": r.metrics["test"]["auc"], "tune_auc": r.metrics["tune_auc"],
                           "best_epoch": r.metrics["best_epoch"], "seconds": round(time.perf_counter() - t0, 1)}
        if largest is not None or acquisitions is not None:     # the test logits, once, for both splits
            score = {e.id: exam_logit(r.model, e.load(), r.config) for e in splits["valid"]}
        if largest is not None:
            runs[str(seed)].update(auc_by_lesion_size(score, splits["valid"], largest))
        if acquisitions is not None:
            runs[str(seed)]["auc_by_acquisition"] = auc_by_acquisition(score, splits["valid"], acquisitions)
        if args.maps:
            runs[str(seed)].update(localisation(r.model, r.config, p, args.slices))
        print(f"seed {seed}: test AUC {r.metrics['test']['auc']:.3f}, tune AUC {r.metrics['tune_auc']:.3f}, "
              f"best epoch {r.metrics['best_epoch']}", file=sys.stderr)
    aucs = [r["test_auc"] for r in runs.values()]
    result = {"benchmark": "mrnet_seeds", "python": platform.python_version(), "source": m.source,
              "n_test_exams": len(splits["valid"]), "n_train_exams": len(splits["train"]), "epochs": cfg.epochs,
              "runs": runs, "test_auc_mean": statistics.mean(aucs),
              "test_auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else None,
              "goal": "mean test AUC >= 0.90 on >= 120 exams, SD <= 0.03 over 3 seeds (#21)"}
    if args.maps:
        pg = [r["test_pointing_game_15px"] for r in runs.values()]
        result.update({"gradcam": {"method": p.gradcam.method, "layer": p.gradcam.layer},
                       "pointing_game_15px_mean": statistics.mean(pg),
                       "pointing_game_15px_sd": statistics.stdev(pg) if len(pg) > 1 else None,
                       "pointing_game_goal": "pointing game at 15 px >= 0.6, above the location prior (#21)"})
    write_json(args.out, result)
    print(f"test AUC {result['test_auc_mean']:.3f} +- {result['test_auc_sd'] or 0:.3f} over {len(aucs)} seeds, "
          f"{result['n_test_exams']} test exams", file=sys.stderr)


if __name__ == "__main__":
    main()
