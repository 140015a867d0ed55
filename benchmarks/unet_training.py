"""U-Net training throughput and inference latency on the pipeline's own stores.

- ours: `pipeline.training.unet.train_unet` for one epoch on the train split (zarr stores read
  and normalised by `load_split`, validation pass and checkpoint writes included);
- reference, same run: a bare loop over in-memory tensors of the same model, batch size,
  optimiser and loss (no validation, no checkpoints, no logging);
- inference latency per slice (batch 1, median) of the same model.
Needs the stores of `dvc repro` (data/*.zarr). Writes reports/bench/unet_training.json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.models.registry import build_unet, model_config  # noqa: E402
from pipeline.training.unet import TrainConfig, train_unet  # noqa: E402
from pipeline.unet_data import load_split  # noqa: E402
from stages.settings import load_params  # noqa: E402


def bare_epoch(model_cfg: dict, x: torch.Tensor, y: torch.Tensor, batch: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    model = build_unet(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.randperm(len(x))
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        idx = order[i:i + batch]
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/unet_training.json")
    ap.add_argument("--repeats", type=int, default=2, help="epochs timed per side (best is kept)")
    args = ap.parse_args()
    p = load_params(args.params)
    u = p.unet
    stores = [args.data / n for n in ("slices.zarr", "undersampled.zarr", "heatmaps.zarr")]
    t = time.perf_counter()
    train = load_split(*stores, "train")
    val = load_split(*stores, "val", keep_raw=True)
    t_load = time.perf_counter() - t
    mcfg = model_config(u.arch, chans=u.chans, num_pool_layers=u.num_pool_layers, drop_prob=u.drop_prob,
                        residual=u.residual)
    cfg = TrainConfig(variant="weighted", model=mcfg, epochs=1, batch_size=u.batch_size, lr=u.lr,
                      loss_kind=p.loss.kind, roi_weight=p.loss.roi_weight, seed=p.seed, device="cpu")
    def ours() -> float:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            train_unet(train, val, cfg, Path(d) / "unet.pt", checkpoint_dir=Path(d) / "ckpt")
            return time.perf_counter() - t

    # alternating, best of `repeats` each: neither side gets the warm-up or a noisy moment alone
    t_ours, t_bare = math.inf, math.inf
    for _ in range(args.repeats):
        t_bare = min(t_bare, bare_epoch(mcfg, train.image, train.target, u.batch_size, u.lr, p.seed))
        t_ours = min(t_ours, ours())

    model = build_unet(mcfg).eval()
    lat = []
    with torch.no_grad():
        for i in range(min(64, len(val))):
            x = val.image[i:i + 1]
            t = time.perf_counter()
            model(x)
            lat.append(time.perf_counter() - t)
    n = len(train)
    result = {
        "benchmark": "unet_training",
        "model": mcfg, "batch_size": u.batch_size, "train_slices": n, "crop": int(train.image.shape[-1]),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "store_load_s": round(t_load, 2), "repeats": args.repeats,
        "slices_per_s": {"ours_epoch_with_validation": round(n / t_ours, 1), "bare_in_memory_loop": round(n / t_bare, 1)},
        "ratio_vs_bare": round(t_bare / t_ours, 3),
        "inference_ms_per_slice_median": round(1e3 * float(np.median(lat)), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
