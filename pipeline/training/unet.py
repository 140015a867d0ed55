"""U-Net training: baseline (plain loss), or a loss up-weighted by an ROI map: `weighted` (Grad-CAM
heatmaps) or `oracle` (the ground-truth boxes drawn as a map; the same weighting code).

- Device `auto`: CUDA (bf16 autocast, channels_last, data kept on the GPU) when present, else CPU (fp32).
- Under torchrun (WORLD_SIZE > 1): a process group (nccl on CUDA, gloo on CPU), DDP, a
  DistributedSampler; `batch_size` is the global batch; only rank 0 logs and writes files.
- Seeded: model init from `seed`, shuffling from `seed + epoch` (DistributedSampler), dropout from the
  global generator, whose state is checkpointed; CPU runs are bit-for-bit repeatable.
- Every epoch: validation on the val split (fastMRI NMSE/PSNR/SSIM per volume, then mean), the
  best weights (lowest validation loss of the variant's own objective) are kept, and a resume
  checkpoint is written to `checkpoint_dir/<config hash>/last.pt`; a rerun with the same config and
  data continues from it, a changed config or data starts afresh. It is deleted on success.
- A non-finite loss stops the run with an InputError; the resume checkpoint of the last good
  epoch is left in place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline.errors import InputError, first_line
from pipeline.losses import ReconLoss, roi_weights
from pipeline.metrics import volume_metrics, volume_slices
from pipeline.models.registry import build_unet, check_state_dict, plain_state_dict, save_unet
from pipeline.store import atomic_path
from pipeline.training.device import autocast, seed_everything, select_device
from pipeline.unet_data import SplitData, denormalize

VARIANTS = ("baseline", "weighted", "oracle")
ROI_VARIANTS = ("weighted", "oracle")
Bar = Callable[[int, str, str], ContextManager[Callable[[int], None]]]
EpochCallback = Callable[[int, dict[str, float]], None]

VAL_KEYS = ("nmse", "psnr", "ssim", "heatmap_nmse")
# per-epoch quality numbers kept in the checkpoint config and logged to dvclive (timings only printed)
CURVE_KEYS = ("train/loss", "lr") + tuple(f"val/{k}" for k in ("loss",) + VAL_KEYS)


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does. The values come from params.yaml (`unet.*`, `loss.*`, `seed`),
    the only home of their defaults, so nothing that shapes a run is defaulted here; the loss is
    plain MSE unless `loss_kind`/`ssim_weight` say otherwise."""
    variant: str
    model: dict[str, Any]
    epochs: int
    batch_size: int
    lr: float
    roi_weight: float
    seed: int
    device: str
    loss_kind: str = "mse"
    ssim_weight: float = 0.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise InputError(f"--variant: expected one of {', '.join(VARIANTS)}, got {self.variant!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self, data_fingerprint: str) -> str:
        """Hash of everything that shapes the run except the device (a run may resume elsewhere)."""
        d = {k: v for k, v in self.as_dict().items() if k != "device"}
        blob = json.dumps({"config": d, "data": data_fingerprint}, sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch]


# ---------------------------------------------------------------- distributed helpers

def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Initialise torch.distributed under torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if world_size() <= 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if not _distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


# ---------------------------------------------------------------- training

def _null_bar(total: int, desc: str, unit: str = "step"):
    return contextlib.nullcontext(lambda n: None)


def _batches(sampler: DistributedSampler, batch: int) -> list[torch.Tensor]:
    idx = torch.tensor(list(iter(sampler)), dtype=torch.long)
    return list(idx.split(batch))


class _Stepper:
    """One optimisation step per batch; the split's tensors are already in memory (on the device for CUDA)."""

    def __init__(self, model: nn.Module, data: SplitData, cfg: TrainConfig, device: torch.device):
        self.model, self.data, self.cfg, self.device = model, data, cfg, device
        self.loss_fn = ReconLoss(cfg.loss_kind, cfg.ssim_weight)
        self.channels_last = device.type == "cuda"

    def fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        d = self.data
        idx = idx.to(d.image.device)
        x, y = d.image.index_select(0, idx), d.target.index_select(0, idx)
        w = _weights_for(d, idx, self.cfg)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        w = w.to(self.device, non_blocking=True) if w is not None else None
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, w

    def loss(self, x: torch.Tensor, y: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
        with autocast(self.device):
            out = self.model(x)
        return self.loss_fn(out, y, w)


def _weights_for(data: SplitData, idx: torch.Tensor, cfg: TrainConfig) -> Optional[torch.Tensor]:
    if cfg.variant not in ROI_VARIANTS:
        return None
    return roi_weights(data.heatmap.index_select(0, idx), cfg.roi_weight)


@torch.no_grad()
def forward_rows(model: nn.Module, data: SplitData, rows: np.ndarray, device: torch.device,
                 batch_size: int = 16) -> torch.Tensor:
    """Model outputs in normalised units, float32 (n,1,C,C) on `device`, for `rows` of the split."""
    model.eval()
    outs = []
    for start in range(0, len(rows), batch_size):
        idx = torch.as_tensor(rows[start:start + batch_size], dtype=torch.long, device=data.image.device)
        x = data.image.index_select(0, idx).to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            outs.append(model(x).float().contiguous())
    return torch.cat(outs)


def to_target_units(out: torch.Tensor, data: SplitData, rows: np.ndarray) -> np.ndarray:
    idx = torch.as_tensor(rows, dtype=torch.long, device=data.mean.device)
    mean, std = data.mean[idx].to(out.device), data.std[idx].to(out.device)
    return denormalize(out[:, 0], mean, std).cpu().numpy().astype(np.float32, copy=False)


def predict(model: nn.Module, data: SplitData, device: torch.device, batch_size: int = 16,
            rows: Optional[np.ndarray] = None) -> np.ndarray:
    """Reconstructions in target units (float32, (n,C,C)) for `rows` of the split (default: all)."""
    rows = np.arange(len(data)) if rows is None else rows
    return to_target_units(forward_rows(model, data, rows, device, batch_size), data, rows)


@torch.no_grad()
def validate(model: nn.Module, data: SplitData, cfg: TrainConfig, device: torch.device,
             loss_fn: ReconLoss) -> dict[str, float]:
    """Validation loss (the variant's objective, normalised units) and fastMRI metrics, mean over volumes.

    Under DDP each rank takes every world-th volume; the sums are all-reduced.
    """
    vols = volume_slices(data.volume)
    if _distributed():
        vols = vols[dist.get_rank()::dist.get_world_size()]
    loss_sum, n_slices = 0.0, 0
    sums = {k: 0.0 for k in VAL_KEYS}
    counts = {k: 0 for k in VAL_KEYS}
    for _, sl in vols:
        rows = np.arange(sl.start, sl.stop)
        out = forward_rows(model, data, rows, device)
        idx = torch.as_tensor(rows, dtype=torch.long, device=data.image.device)
        y = data.target.index_select(0, idx).to(device)
        w = _weights_for(data, idx, cfg)
        loss_sum += float(loss_fn(out, y, None if w is None else w.to(device))) * len(rows)
        n_slices += len(rows)
        heat = data.heatmap[idx, 0].cpu().numpy() if data.heatmap is not None else None
        m = volume_metrics(data.target_raw[sl], to_target_units(out, data, rows), None, heat)
        for k in VAL_KEYS:
            if not math.isnan(m[k]):
                sums[k] += m[k]
                counts[k] += 1
    flat = _all_sum([loss_sum, float(n_slices)] + [sums[k] for k in VAL_KEYS]
                    + [float(counts[k]) for k in VAL_KEYS], device)
    n = len(VAL_KEYS)
    result = {"loss": flat[0] / max(flat[1], 1)}
    result.update({k: (flat[2 + i] / flat[2 + n + i] if flat[2 + n + i] else float("nan"))
                   for i, k in enumerate(VAL_KEYS)})
    return result


def _ckpt_state(model, opt, sched, epoch, best_state, best_epoch, best_loss, history, cfg, key) -> dict:
    return {
        "key": key, "config": cfg.as_dict(), "epoch": epoch,
        "model": plain_state_dict(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "best": {"state_dict": best_state, "epoch": best_epoch, "loss": best_loss},
        "history": history, "rng": torch.get_rng_state(),
    }


def _load_resume(path: Path, key: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: unreadable resume checkpoint ({first_line(exc)}); "
                         f"delete it to start afresh") from None
    if not isinstance(ckpt, dict) or ckpt.get("key") != key:
        raise InputError(f"{path}: resume checkpoint belongs to another config; delete it to start afresh")
    return ckpt


def train_unet(train: SplitData, val: SplitData, cfg: TrainConfig, out: Path | str, *,
               checkpoint_dir: Optional[Path | str] = None, on_epoch: Optional[EpochCallback] = None,
               bar: Optional[Bar] = None, extra_config: Optional[dict[str, Any]] = None) -> TrainResult:
    """Train, validate each epoch, and write the best weights to `out` (rank 0).

    `on_epoch(epoch, metrics)` is called on rank 0 after each epoch, and first for every epoch a
    resumed run already has (so a fresh logger gets the whole history).
    """
    if cfg.variant in ROI_VARIANTS and train.heatmap is None:
        raise InputError(f"train-unet {cfg.variant}: needs an ROI map store (--heatmaps)")
    if val.target_raw is None:
        raise ValueError("val split must be loaded with keep_raw=True")
    device = select_device(cfg.device)
    with process_group(device):
        return _train(train, val, cfg, Path(out), checkpoint_dir, on_epoch, bar or _null_bar,
                      extra_config or {}, device)


def _train(train: SplitData, val: SplitData, cfg: TrainConfig, out: Path, checkpoint_dir, on_epoch, bar,
           extra_config: dict, device: torch.device) -> TrainResult:
    main = is_main_process()
    world = dist.get_world_size() if _distributed() else 1
    r = dist.get_rank() if _distributed() else 0
    seed_everything(cfg.seed)
    key = cfg.key(train.fingerprint())
    model = build_unet(cfg.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        train.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_rank = max(1, math.ceil(cfg.batch_size / world))
    sampler = DistributedSampler(range(len(train)), num_replicas=world, rank=r, shuffle=True, seed=cfg.seed)
    steps = math.ceil(len(sampler) / per_rank)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps, eta_min=cfg.lr * 0.02)

    ckpt_path = Path(checkpoint_dir) / key / "last.pt" if checkpoint_dir is not None else None
    start, history = 0, []
    best_state, best_epoch, best_loss = None, -1, math.inf
    resumed = ckpt_path and _load_resume(ckpt_path, key)
    if resumed:
        check_state_dict(model, resumed["model"], str(ckpt_path))
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["rng"])
        start, history = int(resumed["epoch"]), list(resumed["history"])
        best = resumed["best"]
        best_state, best_epoch, best_loss = best["state_dict"], int(best["epoch"]), float(best["loss"])
    if main and on_epoch:
        for e, m in enumerate(history):
            on_epoch(e, m)

    net: nn.Module = model
    if _distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stepper = _Stepper(net, train, cfg, device)

    for epoch in range(start, cfg.epochs):
        net.train()
        sampler.set_epoch(epoch)
        batches = _batches(sampler, per_rank)
        t_epoch = time.perf_counter()
        wait = 0.0
        loss_sum, n_seen = 0.0, 0
        desc = f"train-unet {cfg.variant} seed {cfg.seed} {epoch + 1}/{cfg.epochs}"
        with (bar(len(batches), desc, "step") if main else _null_bar(0, "")) as update:
            for step, idx in enumerate(batches):
                t0 = time.perf_counter()
                x, y, w = stepper.fetch(idx)
                wait += time.perf_counter() - t0
                loss = stepper.loss(x, y, w)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                value = _all_sum([float(loss.detach())], device)[0] / world
                if not math.isfinite(value):
                    kept = (f"the last good checkpoint (epoch {len(history)}) is kept at "
                            f"{ckpt_path}" if ckpt_path and ckpt_path.exists() else "no checkpoint was written yet")
                    raise InputError(f"train-unet {cfg.variant}: non-finite loss ({value}) at epoch {epoch + 1}, "
                                     f"step {step + 1}; stopped, {kept} (try a lower unet.lr)")
                opt.step()
                sched.step()
                loss_sum += value * len(idx)
                n_seen += len(idx)
                update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t_epoch
        v = validate(model, val, cfg, device, stepper.loss_fn)
        metrics = {"train/loss": loss_sum / max(n_seen, 1), **{f"val/{k}": x for k, x in v.items()},
                   "lr": sched.get_last_lr()[0], "epoch_time_s": epoch_time,
                   "data_wait_share": wait / max(epoch_time, 1e-9)}
        history.append(metrics)
        if v["loss"] < best_loss:
            best_state, best_epoch, best_loss = plain_state_dict(model), epoch, v["loss"]
        if main and ckpt_path is not None:
            with atomic_path(ckpt_path) as tmp:
                torch.save(_ckpt_state(model, opt, sched, epoch + 1, best_state, best_epoch, best_loss,
                                       history, cfg, key), tmp)
        if main and on_epoch:
            on_epoch(epoch, metrics)
        _barrier()

    if best_state is None:  # epochs == start == 0 cannot happen (epochs >= 1); kept for type checkers
        best_state, best_epoch = plain_state_dict(model), len(history) - 1
    if main:
        config = {"model": cfg.model, "variant": cfg.variant, "train": cfg.as_dict(),
                  "normalization": "fastmri_instance", "best_epoch": best_epoch,
                  "val": {k.removeprefix("val/"): history[best_epoch][k] for k in history[best_epoch]
                          if k.startswith("val/")},
                  "history": [{k: v for k, v in h.items() if k in CURVE_KEYS} for h in history],
                  **extra_config}
        save_unet(out, best_state, config)
        if ckpt_path is not None:
            shutil.rmtree(ckpt_path.parent, ignore_errors=True)
    _barrier()
    return TrainResult(best_epoch=best_epoch, epochs_run=cfg.epochs - start, resumed_from=start, history=history)
