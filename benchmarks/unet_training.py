"""U-Net training throughput and inference latency on the pipeline's own stores.

- ours: `pipeline.training.unet.train_unet` for one epoch on the train split, streaming slices from
  the zarr stores through the DataLoader (`unet.num_workers` workers), validation pass and checkpoint
  writes included;
- reference, same run: a bare loop over in-memory tensors of the same model, batch size,
  optimiser, loss and ROI weights (no loader, no validation, no checkpoints, no logging);
- `ratio_vs_bare` compares the training epochs (the same work); `ratio_vs_bare_with_validation`
  adds ours's validation pass and checkpoint write, which the bare loop does not do;
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

from pipeline.losses import ReconLoss  # noqa: E402
from pipeline.models.registry import build_unet, model_config  # noqa: E402
from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.training.unet import TrainConfig, train_unet  # noqa: E402
from pipeline.stores.unet_data import SliceStores  # noqa: E402
from stages.settings import load_params  # noqa: E402


def bare_epoch(cfg: TrainConfig, batch: dict, seed: int) -> float:
    """One epoch of the same steps (model, optimiser, loss, ROI weights, batch size) over in-memory
    tensors: no loader, no scheduler, no validation, no checkpoints; seconds."""
    torch.manual_seed(seed)
    model = build_unet(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = ReconLoss(cfg.loss_kind, cfg.ssim_weight)
    x, y, h = batch["image"], batch["target"], batch.get("heatmap")
    order = torch.randperm(len(x))
    t = time.perf_counter()
    for i in range(0, len(x), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        w = cfg.weighting.weights(h[idx], y[idx]) if h is not None and cfg.variant == "weighted" else None
        loss = loss_fn(model(x[idx]), y[idx], w)
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
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: unet.num_workers)")
    args = ap.parse_args()
    p = load_params(args.params)
    u = p.unet
    args.workers = u.num_workers if args.workers is None else args.workers
    heat = args.data / "heatmaps.zarr"
    variant = "weighted" if heat.exists() else "baseline"
    stores = [args.data / "slices.zarr", args.data / "undersampled.zarr", heat if heat.exists() else None]
    train = SliceStores(*stores, "train")
    val = SliceStores(*stores, "val", raw=True)
    t = time.perf_counter()
    in_memory = train[range(len(train))]   # the bare loop's tensors (the pipeline never does this)
    t_load = time.perf_counter() - t
    mcfg = model_config(u.arch, chans=u.chans, num_pool_layers=u.num_pool_layers, drop_prob=u.drop_prob,
                        residual=u.residual)
    cfg = TrainConfig(variant=variant, model=mcfg, epochs=1, batch_size=u.batch_size, lr=u.lr,
                      loss_kind=p.loss.kind, **p.loss.weighting_for(variant == "weighted"), seed=p.seed,
                      device="cpu", ssim_weight=p.loss.ssim_weight, val_volumes=u.val_volumes, deterministic=False,
                      compile=False)
    def ours() -> tuple[float, float, float]:
        """(whole call incl. validation and checkpoint, training epoch alone, its data-wait share)"""
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            res = train_unet(train, val, cfg, Path(d) / "unet.pt", checkpoint_dir=Path(d) / "ckpt",
                             workers=args.workers)
            h = res.history[0]
            return time.perf_counter() - t, h["epoch_time_s"], h["data_wait_share"]

    # alternating, best of `repeats` each: neither side gets the warm-up or a noisy moment alone
    t_ours, t_train, wait, t_bare = math.inf, math.inf, 0.0, math.inf
    for _ in range(args.repeats):
        t_bare = min(t_bare, bare_epoch(cfg, in_memory, p.seed))
        total, epoch, share = ours()
        t_ours = min(t_ours, total)
        if epoch < t_train:
            t_train, wait = epoch, share

    model = build_unet(mcfg).eval()
    lat = []
    with torch.no_grad():
        for i in range(min(64, len(train))):
            x = in_memory["image"][i:i + 1]
            t = time.perf_counter()
            model(x)
            lat.append(time.perf_counter() - t)
    n = len(train)
    result = {
        "benchmark": "unet_training",
        "model": mcfg, "batch_size": u.batch_size, "train_slices": n, "crop": train.crop,
        "variant": variant, "loader_workers": args.workers,
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "bare_loop_load_s": round(t_load, 2), "repeats": args.repeats,
        "slices_per_s": {"ours_streaming_epoch": round(n / t_train, 1),
                         "ours_epoch_with_validation": round(n / t_ours, 1),
                         "bare_in_memory_loop": round(n / t_bare, 1)},
        "ratio_vs_bare": round(t_bare / t_train, 3),
        "ratio_vs_bare_with_validation": round(t_bare / t_ours, 3),
        "data_wait_share": round(wait, 4),
        "inference_ms_per_slice_median": round(1e3 * float(np.median(lat)), 2),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
