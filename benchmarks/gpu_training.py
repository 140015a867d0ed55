"""U-Net training throughput at fastMRI size (320 x 320) on one GPU: the pipeline against a bare loop.

- ours: `pipeline.training.unet.train_unet`, one epoch on the train split of a synthetic
  fastMRI-format dataset at recon size 320 (written here, then prepare + undersample), slices
  streamed from the zarr stores through the DataLoader (workers, pinned memory, non-blocking copies),
  bf16 autocast, the plain (baseline) loss; the epoch time excludes the validation pass, so the
  two sides do the same work;
- reference, same run, same model, batch size, optimiser, autocast and loss: a bare loop over
  tensors already on the GPU (no loader, no host work at all);
- the share of step time the pipeline waits for data (`data_wait_share`, measured by the loop).
Writes reports/bench/gpu_training.json. Without CUDA it says so and writes nothing, unless
`--device cpu` (a smoke run of the same code; its numbers say nothing about a GPU).
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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.losses import ReconLoss  # noqa: E402
from pipeline.models.registry import build_unet, model_config  # noqa: E402
from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.slice_stores import MaskSpec, build_slices_store, build_undersampled_store, scan  # noqa: E402
from pipeline.synthetic.dataset import SyntheticSpec, write_fastmri  # noqa: E402
from pipeline.training.device import autocast  # noqa: E402
from pipeline.training.unet import TrainConfig, train_unet  # noqa: E402
from pipeline.stores.unet_data import SliceStores  # noqa: E402


def make_stores(root: Path, volumes: int, slices: int, size: int) -> tuple[Path, Path]:
    spec = SyntheticSpec(volumes={"train": volumes, "val": 1, "test": 1}, slices=slices, recon_size=size)
    write_fastmri(root / "raw", spec, seed=7)
    scans = scan(root / "raw", "singlecoil", size)
    build_slices_store(root / "slices.zarr", scans, raw_dir=str(root / "raw"), challenge="singlecoil", crop=size)
    build_undersampled_store(root / "undersampled.zarr", scans, raw_dir=str(root / "raw"), challenge="singlecoil",
                             crop=size, mask=MaskSpec("random", 4, 0.08))
    return root / "slices.zarr", root / "undersampled.zarr"


def bare_epoch(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """One epoch of the same steps over tensors already on the device; seconds."""
    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = ReconLoss(cfg.loss_kind, cfg.ssim_weight)
    order = torch.randperm(len(x), device=device)
    sync(device)
    t = time.perf_counter()
    for i in range(0, len(x), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        with autocast(device):
            out = model(x[idx])
        loss = loss_fn(out.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--volumes", type=int, default=8, help="train volumes")
    ap.add_argument("--slices", type=int, default=35, help="slices per volume (fastMRI knee: ~35)")
    ap.add_argument("--size", type=int, default=320, help="recon size and crop")
    ap.add_argument("--chans", type=int, default=32, help="U-Net width (fastMRI's knee baseline: 32)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="epochs timed per side (best is kept)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/gpu_training.json")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_training: no CUDA device here; nothing measured, nothing written")
        return
    device = torch.device(args.device)
    cfg = TrainConfig(variant="baseline", model=model_config("fastmri", args.chans, 4, 0.0, True), epochs=1,
                      batch_size=args.batch_size, lr=1e-3, roi_weight=0.0, roi_norm="mean", roi_margin=0, roi_soft=0.0,
                      background_weight=1.0, seed=0, device=args.device,
                      loss_kind="mse", ssim_weight=0.0, val_volumes=0, deterministic=False, compile=False)
    with tempfile.TemporaryDirectory() as d:
        slices, under = make_stores(Path(d), args.volumes, args.slices, args.size)
        train = SliceStores(slices, under, None, "train")
        val = SliceStores(slices, under, None, "val", raw=True)
        n = len(train)
        whole = train[range(n)]
        x, y = whole["image"].to(device), whole["target"].to(device)
        del whole
        t_ours, t_bare, wait = math.inf, math.inf, 0.0
        for _ in range(args.repeats):
            t_bare = min(t_bare, bare_epoch(cfg, x, y, device))
            res = train_unet(train, val, cfg, Path(d) / "unet.pt", workers=args.workers)
            h = res.history[0]
            if h["epoch_time_s"] < t_ours:
                t_ours, wait = h["epoch_time_s"], h["data_wait_share"]
    result = {
        "benchmark": "gpu_training", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "size": args.size, "chans": args.chans, "batch_size": args.batch_size, "train_slices": n,
        "loader_workers": args.workers, "repeats": args.repeats,
        "slices_per_s": {"ours_streaming_epoch": round(n / t_ours, 1), "bare_loop_on_device": round(n / t_bare, 1)},
        "ratio_vs_bare": round(t_bare / t_ours, 3),
        "data_wait_share": round(wait, 4),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
