"""Does MRNet learn the lesions of each contrast? The synthetic exams are drawn half with fat
suppression (`CORPDFS_FBK`: fluid, and so a lesion, is the brightest tissue) and half without
(`CORPD_FBK`: fluid about as bright as fat and marrow, a lesion a small local change). MRNet is
trained with the default recipe (params.yaml's `mrnet.*`) on all the training exams, then on the
exams of one contrast only; each model's tune AUC is read within each contrast (the tune hold-out
of its own training exams), beside its fit AUC on the last epoch (does it fit its own data?).
The test (`valid`) exams are never read.

    python benchmarks/mrnet_contrast.py

Writes reports/bench/mrnet_contrast.json. Synthetic exams only (real MRNet exams record no contrast).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.mrnet_seeds import auc_by_acquisition  # noqa: E402
from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.models.mrnet import exam_logit  # noqa: E402
from pipeline.synthetic.dataset import exam_acquisitions  # noqa: E402
from pipeline.training.mrnet import train_mrnet, tune_split  # noqa: E402
from stages.mrnet import exam_splits, train_config  # noqa: E402
from stages.settings import load_params  # noqa: E402

ALL = "all"


def run(train: list, cfg, acquisitions: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    r = train_mrnet(train, None, cfg)
    _, tune = tune_split(train, cfg.tune_fraction, cfg.seed)        # the hold-out train_mrnet used
    return {"n_train_exams": len(train), "tune_auc": r.metrics["tune_auc"], "best_epoch": r.metrics["best_epoch"],
            "fit_auc_last_epoch": r.history[-1]["train/auc"], "seconds": round(time.perf_counter() - t0, 1),
            "tune_auc_by_acquisition": auc_by_acquisition(
                {e.id: exam_logit(r.model, e.load(), r.config) for e in tune}, tune, acquisitions)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/mrnet_contrast.json")
    args = ap.parse_args(argv)
    p = load_params(args.params)
    if p.mrnet.source != "synthetic":
        raise SystemExit("mrnet_contrast: needs the synthetic exams (mrnet.source: synthetic)")
    train = exam_splits(p, Path(p.mrnet.data_dir))["train"]
    acquisitions = exam_acquisitions(p.synthetic.exams, p.seed)
    cfg = train_config(p.mrnet, args.seed)
    runs = {}
    for trained_on in (ALL, *sorted(set(acquisitions[e.id] for e in train))):
        exams = train if trained_on == ALL else [e for e in train if acquisitions[e.id] == trained_on]
        runs[trained_on] = run(exams, cfg, acquisitions)
        print(f"trained on {trained_on}: {runs[trained_on]}", file=sys.stderr, flush=True)
    write_json(args.out, {"benchmark": "mrnet_contrast", "python": platform.python_version(),
                          "torch_threads": torch.get_num_threads(), "seed": args.seed,
                          "recipe": {k: getattr(cfg, k) for k in ("norm", "lr", "epochs", "schedule", "image_size")},
                          "runs": runs})


if __name__ == "__main__":
    main()
