"""MRNet training on each device at hand: the default recipe (params.yaml's `mrnet.*`, per-exam
BatchNorm) on the same synthetic exams, per device the time of one training step (one exam) and
the tune and test AUC it reaches; on CUDA the training forward runs under bf16 autocast with
channels_last (`pipeline.training.device`), so its AUC is a check that the recipe survives mixed
precision, not a bit-for-bit copy of the CPU run.

    python benchmarks/mrnet_device.py --devices cuda,cpu --exams 600

Exams are drawn into a temporary folder (the embedded generator, `synthetic.*` of params.yaml but
`--exams` training exams). Writes reports/bench/mrnet_device.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.io.classifier import list_exams  # noqa: E402
from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.synthetic.dataset import SyntheticSpec, write_mrnet_exams  # noqa: E402
from pipeline.training.mrnet import train_mrnet  # noqa: E402
from stages.mrnet import train_config  # noqa: E402
from stages.settings import load_params  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--exams", type=int, default=600, help="training exams drawn")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/mrnet_device.json")
    args = ap.parse_args()
    p = load_params(args.params)
    s = p.synthetic
    spec = SyntheticSpec(volumes={"train": 1}, recon_size=s.recon_size, lesion_rate=s.lesion_rate, noise=s.noise,
                         exams={"train": args.exams, "valid": s.exams["valid"]}, exam_slices=s.exam_slices)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_mrnet_exams(Path(tmp), spec, p.seed)
        draw_s = time.perf_counter() - t0
        train, test = list_exams("synthetic", Path(tmp), "train"), list_exams("synthetic", Path(tmp), "valid")
        for device in args.devices.split(","):
            if device == "cuda" and not torch.cuda.is_available():
                print("no CUDA device: skipped", file=sys.stderr)
                continue
            cfg = dataclasses.replace(train_config(p.mrnet, p.seed), device=device)
            t0 = time.perf_counter()
            r = train_mrnet(train, test, cfg)
            seconds = time.perf_counter() - t0
            steps = cfg.epochs * r.metrics["n_train"]
            runs[device] = {"seconds": round(seconds, 1), "ms_per_exam_step": round(1000 * seconds / steps, 2),
                            "tune_auc": r.metrics["tune_auc"], "test_auc": r.metrics["test"]["auc"],
                            "best_epoch": r.metrics["best_epoch"],
                            "name": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
                            "torch_threads": torch.get_num_threads()}
            print(device, runs[device], file=sys.stderr, flush=True)
    write_json(args.out, {"benchmark": "mrnet_device", "python": platform.python_version(), "torch": torch.__version__,
                          "n_train_exams": args.exams, "n_test_exams": len(test), "draw_seconds": round(draw_s, 1),
                          "recipe": {k: getattr(p.mrnet, k) for k in ("norm", "lr", "epochs", "schedule", "image_size")},
                          "runs": runs,
                          "note": "training time includes the tune pass of every epoch and the test pass"})


if __name__ == "__main__":
    main()
