"""U-Net training: baseline (plain loss), or a loss up-weighted by an ROI map: `weighted` (Grad-CAM
heatmaps) or `oracle` (the ground-truth boxes drawn as a map; the same weighting code).

- Data streams from the stores through a DataLoader (`pipeline.stores.unet_data`): no split is held in memory.
- Device `auto`: CUDA when present, else CPU. On CUDA: bf16 autocast in the training forward only
  (validation is fp32), channels_last, pinned memory and non-blocking copies, no host synchronisation
  per step (losses accumulate on the device and are read once per `log_every` steps and per epoch);
  optional `compile` (torch.compile) and `deterministic` (see `seed_everything`).
- Under torchrun (WORLD_SIZE > 1): a process group (nccl on CUDA, gloo on CPU), DDP, a
  DistributedSampler; `batch_size` is the global batch; validation gives each rank whole volumes and
  sums the per-volume metrics over ranks; only rank 0 logs and writes files.
- Seeded: model init from `seed`, shuffling from `seed + epoch` (DistributedSampler), dropout from the
  global generators (CPU and CUDA), whose states are checkpointed; CPU runs are bit-for-bit repeatable.
- Every epoch: validation on the val split (fastMRI NMSE/PSNR/SSIM per volume, then mean), the
  best weights (lowest validation loss of the variant's own objective) are kept, and a resume
  checkpoint is written to `checkpoint_dir/<config hash>/last.pt`; a rerun with the same config and
  data continues from it, a changed config or data starts afresh. It is deleted on success.
- A non-finite loss stops the run with an InputError; the resume checkpoint of the last good
  epoch is left in place. `stop_after` ends a run early after that many epochs, keeping the resume
  checkpoint (for time-limited jobs: the next run continues).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import BadValue, InputError, first_line
from pipeline.models.inference import forward, to_target_units
from pipeline.losses import ReconLoss, RoiWeighting
from pipeline.metrics import volume_metrics
from pipeline.models.registry import build_unet, check_state_dict, plain_state_dict, save_unet
from pipeline.stores.zarr_store import atomic_path
from pipeline.training.device import autocast, seed_everything, select_device
from pipeline.stores.unet_data import (Batch, SliceStores, iterate, rank_volumes, to_device, train_batches,
                                       train_loader, volume_loader)

VARIANTS = ("baseline", "weighted", "oracle")
ROI_VARIANTS = ("weighted", "oracle")
Bar = Callable[[int, str, str], ContextManager[Callable[[int], None]]]
EpochCallback = Callable[[int, dict[str, float]], None]

VAL_KEYS = ("nmse", "psnr", "ssim", "heatmap_nmse")
# per-epoch quality numbers kept in the checkpoint config and logged as curves (timings only printed)
CURVE_KEYS = ("train/loss", "lr") + tuple(f"val/{k}" for k in ("loss",) + VAL_KEYS)
VAL_BATCH = 16   # slices per validation forward pass at least (no gradients: larger batches are cheap)
# the per-epoch history kept in the final checkpoint's config: the curves and the slices trained on
HISTORY_KEYS = CURVE_KEYS + ("train/slices",)


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does; every value is given (nothing that shapes a run is defaulted
    here). `roi_weight`, `roi_norm`, `roi_margin`, `roi_soft` and `background_weight` make the ROI
    variants' loss weights (`pipeline.losses.RoiWeighting`; the baseline's loss weights nothing and
    records the neutral values); the loss is `(1 - ssim_weight) * pixel loss (loss_kind) +
    ssim_weight * (1 - SSIM)`."""
    variant: str
    model: dict[str, Any]
    epochs: int
    batch_size: int
    lr: float
    roi_weight: float
    roi_norm: str
    roi_margin: int
    roi_soft: float
    background_weight: float
    seed: int
    device: str
    loss_kind: str
    ssim_weight: float
    val_volumes: int      # val volumes scored each epoch to pick the best (the first N in store order; 0: all)
    deterministic: bool   # CUDA: deterministic kernels (CPU runs always are)
    compile: bool         # torch.compile the model for training

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise BadValue("variant", f"expected one of {', '.join(VARIANTS)}, got {self.variant!r}")
        self.weighting  # checks the weighting's values

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def weighting(self) -> RoiWeighting:
        return RoiWeighting(self.roi_weight, self.roi_norm, self.roi_margin, self.roi_soft, self.background_weight)

    def key(self, data_fingerprint: str) -> str:
        """Hash of everything that shapes the run except the device (a run may resume elsewhere):
        config, data and the training code, so that a run after a code change starts afresh
        instead of resuming epochs trained by the old code."""
        d = {k: v for k, v in self.as_dict().items() if k != "device"}
        blob = json.dumps({"config": d, "data": data_fingerprint, "code": training_code_digest()},
                          sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


# The modules whose source shapes a training run: what this module and the data path run.
TRAINING_CODE = ("pipeline.training.unet", "pipeline.training.device", "pipeline.losses", "pipeline.metrics",
                 "pipeline.stores.unet_data", "pipeline.stores.zarr_store", "pipeline.models.inference",
                 "pipeline.models.registry", "pipeline.models.unet_seed")


def training_code_digest() -> str:
    """Digest of the source files of TRAINING_CODE (the same on every rank and machine)."""
    h = hashlib.blake2b(digest_size=8)
    for name in TRAINING_CODE:
        h.update(name.encode() + b"\0" + Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = True       # False: stopped early by `stop_after`, the resume checkpoint kept

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch]


def epoch_line(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One epoch's numbers (`metrics` as `on_epoch` gets them) on one line."""
    return (f"  epoch {epoch + 1}/{epochs}: train loss {m['train/loss']:.4g}, val loss {m['val/loss']:.4g}, "
            f"PSNR {m['val/psnr']:.2f} dB, SSIM {m['val/ssim']:.4f}, "
            f"data wait {100 * m['data_wait_share']:.1f}%, {m['epoch_time_s']:.1f}s")


def result_line(result: TrainResult, epochs: int, out: Path | str) -> str:
    """A finished run on one line: the weights written, the best epoch and its validation numbers."""
    b = result.best
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    return (f"{out} (best epoch {result.best_epoch + 1}/{epochs}{resumed}): "
            f"val PSNR {b['val/psnr']:.2f} dB, SSIM {b['val/ssim']:.4f}, NMSE {b['val/nmse']:.4g}; "
            f"data wait {100 * max(h['data_wait_share'] for h in result.history):.1f}% of step time at most")


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


def _all_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def _barrier() -> None:
    if _distributed():
        dist.barrier()


# ---------------------------------------------------------------- training

def _null_bar(total: int, desc: str, unit: str = "step"):
    return contextlib.nullcontext(lambda n: None)


class _EpochLoss:
    """Training loss of one epoch, accumulated on the device (no host sync per step), with the first
    non-finite step remembered; read with `check` (once per log interval) and `mean` (epoch end)."""

    def __init__(self, device: torch.device):
        # [sum of loss x slices, slices, first bad step (1-based, 0 = none), its loss]
        self.t = torch.zeros(4, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, n: int, step: int) -> None:
        d = loss.detach().double()
        first_bad = ~torch.isfinite(d) & (self.t[2] == 0)
        self.t[0] += d * n
        self.t[1] += n
        self.t[2] = torch.where(first_bad, torch.full_like(d, step + 1), self.t[2])
        self.t[3] = torch.where(first_bad, d, self.t[3])

    def check(self, epoch: int, variant: str, kept: str) -> None:
        """Raise on every rank when any rank has seen a non-finite loss."""
        bad = self.t[2:4].clone()
        any_bad = _all_sum_tensor((bad[0] > 0).double())
        if float(any_bad) > 0:
            where = f"step {int(bad[0])}" if bad[0] > 0 else "on another rank"
            raise InputError(f"training the {variant} variant: non-finite loss ({float(bad[1])}) at epoch {epoch + 1}, "
                             f"{where}; stopped, {kept} (try a lower learning rate)")

    def mean_and_count(self) -> tuple[float, int]:
        """Mean loss per slice and slices trained on, over all ranks."""
        s = _all_sum_tensor(self.t[:2])
        return float(s[0] / s[1].clamp(min=1)), int(s[1])


def _weights(h: Optional[torch.Tensor], y: torch.Tensor, cfg: TrainConfig) -> Optional[torch.Tensor]:
    """The loss weights of a batch: ROI maps `h` shaped by the config's weighting, targets `y`."""
    if cfg.variant not in ROI_VARIANTS:
        return None
    if h is None:
        raise ValueError(f"the {cfg.variant} variant needs ROI maps, and the batch has none")
    return cfg.weighting.weights(h, y)


@torch.no_grad()
def validate(model: nn.Module, loader, cfg: TrainConfig, device: torch.device, loss_fn: ReconLoss,
             batch_size: int) -> dict[str, float]:
    """Validation loss (the variant's objective, normalised units) and fastMRI metrics, mean over
    volumes, in fp32. `loader` gives this rank's whole volumes; the sums are all-reduced."""
    model.eval()
    loss_sum, n_slices = 0.0, 0
    sums = {k: 0.0 for k in VAL_KEYS}
    counts = {k: 0 for k in VAL_KEYS}
    for batch in iterate(loader):
        out = forward(model, batch["image"], device, batch_size)
        y, h = to_device(batch, device, ("target", "heatmap"))
        w = _weights(h, y, cfg)
        loss_sum += float(loss_fn(out, y, w)) * len(out)
        n_slices += len(out)
        heat = batch["heatmap"][:, 0].numpy() if "heatmap" in batch else None
        m = volume_metrics(batch["target_raw"].numpy(), to_target_units(out, batch["mean"], batch["std"]), None, heat)
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


def epoch_val_volumes(val: SliceStores, n: int) -> list[tuple[str, slice]]:
    """The val volumes each epoch is scored on: the first `n` in store order (0: all). A subset keeps
    per-epoch validation cheap when val is sized for paired intervals rather than for picking epochs."""
    volumes = val.volumes()
    return volumes[:n] if n else volumes


def _rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: Any) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints of earlier versions: the CPU state only
        state = {"cpu": state, "cuda": []}
    torch.set_rng_state(state["cpu"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _ckpt_state(model, opt, sched, epoch, best_state, best_epoch, best_loss, history, cfg, key) -> dict:
    return {
        "key": key, "config": cfg.as_dict(), "epoch": epoch,
        "model": plain_state_dict(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "best": {"state_dict": best_state, "epoch": best_epoch, "loss": best_loss},
        "history": history, "rng": _rng_state(),
    }


def _load_resume(path: Path, key: str, device: torch.device) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: unreadable resume checkpoint ({first_line(exc)}); "
                         f"delete it to start afresh") from None
    if not isinstance(ckpt, dict) or ckpt.get("key") != key:
        raise InputError(f"{path}: resume checkpoint belongs to another config; delete it to start afresh")
    return ckpt


def train_unet(train: SliceStores, val: SliceStores, cfg: TrainConfig, out: Path | str, *,
               checkpoint_dir: Optional[Path | str] = None, on_epoch: Optional[EpochCallback] = None,
               bar: Optional[Bar] = None, extra_config: Optional[dict[str, Any]] = None, workers: int = 0,
               log_every: int = 50, stop_after: Optional[int] = None) -> TrainResult:
    """Train, validate each epoch, and write the best weights to `out` (rank 0).

    `train` and `val` are the splits' stores (`val` opened with `raw=True`); `workers` DataLoader
    processes read them. `on_epoch(epoch, metrics)` is called on rank 0 after each epoch, and first
    for every epoch a resumed run already has (so a fresh logger gets the whole history).
    `stop_after` epochs of this run, the run ends with the resume checkpoint kept and no weights written.
    """
    if cfg.variant in ROI_VARIANTS and train.paths["heatmaps"] is None:
        raise ValueError(f"the {cfg.variant} variant needs an ROI map store (open the stores with heatmaps)")
    if not val.raw:
        raise ValueError("open the val split with raw=True")
    device = select_device(cfg.device)
    with process_group(device):
        return _train(train, val, cfg, Path(out), checkpoint_dir, on_epoch, bar or _null_bar,
                      extra_config or {}, device, workers, log_every, stop_after)


@dataclass
class _Progress:
    """How far a run is: the first epoch still to train, every epoch's metrics so far and the best
    epoch (lowest validation loss) with its weights. A resume checkpoint holds it."""
    start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: Optional[dict[str, torch.Tensor]] = None
    best_epoch: int = -1
    best_loss: float = math.inf

    def add(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
        self.history.append(metrics)
        if metrics["val/loss"] < self.best_loss:
            self.best_state, self.best_epoch, self.best_loss = plain_state_dict(model), epoch, metrics["val/loss"]

    def result(self, start: int, end: int, finished: bool) -> TrainResult:
        return TrainResult(best_epoch=self.best_epoch, epochs_run=end - start, resumed_from=start,
                           history=self.history, finished=finished)


@dataclass
class _Optimiser:
    """The model being trained, its optimiser and learning-rate schedule, and this rank's batches."""
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    sampler: Any
    batches: Any

    @classmethod
    def build(cls, cfg: TrainConfig, device: torch.device, n: int, world: int, this_rank: int) -> "_Optimiser":
        """Model init (from the global generator, seeded), Adam and a cosine schedule over every step."""
        model = build_unet(cfg.model).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sampler, batches = train_batches(n, cfg.batch_size, world, this_rank, cfg.seed)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * len(batches),
                                                           eta_min=cfg.lr * 0.02)
        return cls(model, opt, sched, sampler, batches)

    def resume(self, path: Optional[Path], key: str, device: torch.device) -> _Progress:
        """The progress a resume checkpoint at `path` holds, its weights, optimiser, schedule and
        random states restored; a fresh start when there is none."""
        ckpt = path and _load_resume(path, key, device)
        if not ckpt:
            return _Progress()
        check_state_dict(self.model, ckpt["model"], str(path))
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        best = ckpt["best"]
        return _Progress(start=int(ckpt["epoch"]), history=list(ckpt["history"]),
                         best_state={k: v.cpu() for k, v in best["state_dict"].items()},
                         best_epoch=int(best["epoch"]), best_loss=float(best["loss"]))

    def save_resume(self, path: Path, epoch: int, done: _Progress, cfg: TrainConfig, key: str) -> None:
        with atomic_path(path) as tmp:
            torch.save(_ckpt_state(self.model, self.opt, self.sched, epoch + 1, done.best_state, done.best_epoch,
                                   done.best_loss, done.history, cfg, key), tmp)


def _world() -> tuple[int, int]:
    """(processes, this one's rank) of the process group; (1, 0) without one."""
    return (dist.get_world_size(), dist.get_rank()) if _distributed() else (1, 0)


def _train(train: SliceStores, val: SliceStores, cfg: TrainConfig, out: Path, checkpoint_dir, on_epoch, bar,
           extra_config: dict, device: torch.device, workers: int, log_every: int,
           stop_after: Optional[int]) -> TrainResult:
    main = is_main_process()
    world, r = _world()
    seed_everything(cfg.seed, cfg.deterministic)
    key = cfg.key(train.fingerprint())
    o = _Optimiser.build(cfg, device, len(train), world, r)
    ckpt_path = Path(checkpoint_dir) / key / "last.pt" if checkpoint_dir is not None else None
    done = o.resume(ckpt_path, key, device)
    if main and on_epoch:
        for e, m in enumerate(done.history):
            on_epoch(e, m)
    loop = _EpochLoop.build(o, cfg, device, train, workers, world, log_every)
    val_loader = volume_loader(val, rank_volumes(epoch_val_volumes(val, cfg.val_volumes), world, r), workers, device)
    val_batch = max(VAL_BATCH, -(-cfg.batch_size // world))
    start = done.start
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    for epoch in range(start, end):
        kept = (f"the last good checkpoint (epoch {len(done.history)}) is kept at {ckpt_path}"
                if ckpt_path and ckpt_path.exists() else "no checkpoint was written yet")
        train_loss, seen, wait, epoch_time = loop.run(epoch, bar if main else _null_bar, kept)
        v = validate(o.model, val_loader, cfg, device, loop.loss_fn, val_batch)
        metrics = {"train/loss": train_loss, **{f"val/{k}": x for k, x in v.items()},
                   "lr": o.sched.get_last_lr()[0], "epoch_time_s": epoch_time,
                   "data_wait_share": wait / max(epoch_time, 1e-9), "train/slices": seen}
        done.add(epoch, metrics, o.model)
        if main and ckpt_path is not None:
            o.save_resume(ckpt_path, epoch, done, cfg, key)
        if main and on_epoch:
            on_epoch(epoch, metrics)
        _barrier()
    if end < cfg.epochs:
        return done.result(start, end, finished=False)
    if main:
        _save_best(out, cfg, done, extra_config)
        if ckpt_path is not None:
            shutil.rmtree(ckpt_path.parent, ignore_errors=True)
    _barrier()
    return done.result(start, cfg.epochs, finished=True)


@dataclass
class _EpochLoop:
    """One epoch of training steps over this rank's batches: forward (under autocast), the variant's
    loss, backward, optimiser and schedule step; the loss is checked every `log_every` steps."""
    o: _Optimiser
    net: nn.Module          # the model, wrapped in DDP under torchrun
    step_fn: Callable       # `net`, compiled when cfg.compile
    loss_fn: ReconLoss
    loader: Any
    cfg: TrainConfig
    device: torch.device
    log_every: int

    @classmethod
    def build(cls, o: _Optimiser, cfg: TrainConfig, device: torch.device, train: SliceStores, workers: int,
              world: int, log_every: int) -> "_EpochLoop":
        net: nn.Module = o.model
        if _distributed():
            net = nn.parallel.DistributedDataParallel(o.model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
        step_fn = torch.compile(net) if cfg.compile else net
        loss_fn = ReconLoss(cfg.loss_kind, cfg.ssim_weight)
        return cls(o, net, step_fn, loss_fn, train_loader(train, o.batches, workers, device), cfg, device, log_every)

    def run(self, epoch: int, bar: Bar, kept: str) -> tuple[float, int, float, float]:
        """Train one epoch: (mean loss, slices trained on over all ranks, seconds waiting for data,
        seconds in all). `kept` says in an error which checkpoint is left."""
        self.net.train()
        self.o.sampler.set_epoch(epoch)
        losses = _EpochLoss(self.device)
        wait = 0.0
        t_epoch = time.perf_counter()
        desc = f"train-unet {self.cfg.variant} seed {self.cfg.seed} {epoch + 1}/{self.cfg.epochs}"
        with bar(len(self.o.batches), desc, "step") as update:
            t0 = time.perf_counter()
            for step, batch in enumerate(iterate(self.loader)):
                wait += time.perf_counter() - t0
                self._step(batch, losses, step)
                if (step + 1) % self.log_every == 0:
                    losses.check(epoch, self.cfg.variant, kept)
                update(1)
                t0 = time.perf_counter()
            losses.check(epoch, self.cfg.variant, kept)
        train_loss, seen = losses.mean_and_count()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return train_loss, seen, wait, time.perf_counter() - t_epoch

    def _step(self, batch: Batch, losses: _EpochLoss, step: int) -> None:
        x, y, h = to_device(batch, self.device, ("image", "target", "heatmap"))
        w = _weights(h, y, self.cfg)
        with autocast(self.device):
            pred = self.step_fn(x)
        loss = self.loss_fn(pred.float(), y, w)
        self.o.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.o.opt.step()
        self.o.sched.step()
        losses.add(loss, len(x), step)


def _save_best(out: Path, cfg: TrainConfig, done: _Progress, extra_config: dict) -> None:
    """The best epoch's weights, with the config, the best epoch's validation metrics and the
    per-epoch history (`HISTORY_KEYS`), and `extra_config`."""
    best = done.history[done.best_epoch]
    config = {"model": cfg.model, "variant": cfg.variant, "train": cfg.as_dict(),
              "normalization": "fastmri_instance", "best_epoch": done.best_epoch,
              "val": {k.removeprefix("val/"): best[k] for k in best if k.startswith("val/")},
              "history": [{k: v for k, v in h.items() if k in HISTORY_KEYS} for h in done.history],
              **extra_config}
    save_unet(out, done.best_state, config)
