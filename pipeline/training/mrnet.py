"""Training MRNet as Bien et al. did: one exam per step (its slices are the batch), binary
cross-entropy weighted by inverse class prevalence, Adam with weight decay (constant learning rate
or a cosine decay per step), optional random rotation, shift and flip of the whole exam; the
trunk's normalisation is `norm` (`pipeline.models.mrnet`: per-exam BatchNorm by default). A stratified `tune_fraction` of the training exams is held out
for model selection (the best epoch by tune AUC is kept); test metrics are on the `valid` split.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.io.classifier import Exam
from pipeline.models.mrnet import MRNet, load_pretrained_features, normalise, prepare_volume, resize_slices, to_pixels
from pipeline.models.torch_files import count_parameters
from pipeline.training.device import autocast, seed_everything, select_device
from pipeline.training.logging import LogFn

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class MRNetTrainConfig:
    image_size: int = 128
    epochs: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.01
    tune_fraction: float = 0.2
    augment: bool = False
    rotation: float = 25.0          # degrees, as MRNet
    shift: float = 0.1              # fraction of the side (MRNet: 25 px of 256)
    flip: bool = True
    device: str = "auto"
    seed: int = 0
    pretrained: Optional[str] = None
    norm: str = "none"              # none | batch (per-exam statistics) | group | instance
    schedule: str = "constant"      # constant | cosine (per step, to 0 at the last step)
    threads: int = 0                # CPU threads; 0 = as the caller set them (the stage: pipeline/threads.py)


@dataclass
class TrainResult:
    model: MRNet
    config: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- metrics
def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); NaN with one class."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # tied scores share their average rank
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict:
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(probs, dtype=np.float64) >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "auc": roc_auc(y, probs),
        "accuracy": (tp + tn) / max(len(y), 1),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "n": int(len(y)), "n_positive": int(y.sum()), "threshold": threshold,
    }


def youden_threshold(labels: Sequence[int], probs: Sequence[float]) -> float:
    """The probability cut maximising sensitivity + specificity (Youden's J) on held-out exams,
    midway between neighbouring scores; 0.5 when there is a single class. A model trained for a
    few epochs is poorly calibrated, and a fixed 0.5 can call every exam abnormal."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.all() or not y.any():
        return 0.5
    u = np.unique(p)
    cuts = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    j = [((p >= c) & y).sum() / y.sum() + ((p < c) & ~y).sum() / (~y).sum() for c in cuts]
    return float(cuts[int(np.argmax(j))])


# --------------------------------------------------------------------------- data
def tune_split(exams: Sequence[Exam], fraction: float, seed: int) -> tuple[list[Exam], list[Exam]]:
    """Stratified hold-out: `fraction` of each class (at least one of each) goes to tune."""
    rng = np.random.default_rng(seed)
    fit, tune = [], []
    for label in (0, 1):
        group = [e for e in exams if e.label == label]
        idx = rng.permutation(len(group))
        n_tune = min(len(group) - 1, max(1, round(fraction * len(group))))
        tune += [group[i] for i in idx[:n_tune]]
        fit += [group[i] for i in idx[n_tune:]]
    return sorted(fit, key=lambda e: e.id), sorted(tune, key=lambda e: e.id)


def progress_units(train: Sequence[Exam], test: Sequence[Exam], cfg: MRNetTrainConfig) -> int:
    """Number of `progress(1)` calls `train_mrnet` makes (one per exam forward pass)."""
    return cfg.epochs * len(train) + len(test)


def check_classes(exams: Sequence[Exam], what: str, min_each: int = 1) -> None:
    n_pos = sum(e.label for e in exams)
    n_neg = len(exams) - n_pos
    if n_pos < min_each or n_neg < min_each:
        raise InputError(f"{what}: needs at least {min_each} normal and {min_each} abnormal exam(s), "
                         f"got {n_neg} normal and {n_pos} abnormal")


def pixel_stats(exams: Sequence[Exam], image_size: int, limit: int = 200) -> tuple[float, float]:
    """Mean and std of the 0..255-scaled, resized slices of (up to `limit`) training exams."""
    step = max(1, math.ceil(len(exams) / limit))
    total = total_sq = count = 0.0
    for e in exams[::step]:
        x = resize_slices(to_pixels(e.load()), image_size).double()
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    if not std > 0:
        raise InputError("mrnet: training exams are constant images (zero pixel std)")
    return mean, std


def augment(x: torch.Tensor, gen: torch.Generator, cfg: MRNetTrainConfig) -> torch.Tensor:
    """One random rotation, shift and horizontal flip for all slices of an exam `(S, 1, H, W)`."""
    u = torch.rand(4, generator=gen).tolist()
    angle = math.radians((2 * u[0] - 1) * cfg.rotation)
    tx, ty = ((2 * u[1] - 1) * 2 * cfg.shift, (2 * u[2] - 1) * 2 * cfg.shift)  # grid units are [-1, 1]
    sx = -1.0 if cfg.flip and u[3] < 0.5 else 1.0
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[c * sx, -s, tx], [s * sx, c, ty]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------- loop
def _predict(model: MRNet, exams: Sequence[Exam], cfg: MRNetTrainConfig, mean: float, std: float,
             device: torch.device, progress: Progress = None) -> np.ndarray:
    model.eval()
    logits = []
    with torch.no_grad(), autocast(device):
        for e in exams:
            x = prepare_volume(e.load(), cfg.image_size, mean, std).to(device)
            logits.append(float(model(x).float()))
            if progress:
                progress(1)
    return np.asarray(logits)


def _weighted_bce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    t_logits = torch.as_tensor(logits, dtype=torch.float64)
    t_labels = torch.as_tensor(labels, dtype=torch.float64)
    w = torch.as_tensor(weights[labels], dtype=torch.float64)
    return float(F.binary_cross_entropy_with_logits(t_logits, t_labels, weight=w))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def train_mrnet(train: Sequence[Exam], test: Optional[Sequence[Exam]], cfg: MRNetTrainConfig, *,
                log: LogFn = lambda m: None, progress: Progress = None,
                extra_config: Optional[dict] = None) -> TrainResult:
    """Fit MRNet on `train` (minus the tune hold-out), keep the best epoch by tune AUC, and
    report test metrics on `test` (None: tuning runs, which must not read the test exams).
    `progress(n)` is called once per exam processed."""
    if cfg.image_size < MRNet.min_size:
        raise InputError(f"mrnet.image_size: must be >= {MRNet.min_size} for AlexNet, got {cfg.image_size}")
    check_classes(train, "mrnet: training split", min_each=2)
    if test is not None:
        check_classes(test, "mrnet: test (valid) split")
    device = select_device(cfg.device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)   # else the caller's choice (the stage: pipeline/threads.py)
    gen = seed_everything(cfg.seed)
    fit, tune = tune_split(train, cfg.tune_fraction, cfg.seed)
    mean, std = pixel_stats(fit, cfg.image_size)
    model, opt = _new_model(cfg, device)
    sched = _schedule(opt, cfg, steps=cfg.epochs * len(fit))
    run = _Run(model, opt, sched, cfg, device, mean, std, class_weights([e.label for e in fit]), gen, progress)
    history, best = _fit(run, fit, tune, log)

    model.load_state_dict(best.state)
    threshold = youden_threshold([e.label for e in tune], _sigmoid(best.logits))
    metrics = {
        "test": None if test is None else binary_metrics(
            [e.label for e in test], _sigmoid(_predict(model, test, cfg, mean, std, device, progress)), threshold),
        "best_epoch": best.epoch,
        "tune_auc": best.auc,
        "n_train": len(fit), "n_tune": len(tune),
        "parameters": count_parameters(model),
    }
    config = {
        **asdict(cfg),
        "mean": mean, "std": std, "scaling": "per-volume min/max to 0..255, then (x - mean) / std",
        "best_epoch": best.epoch, "class_weights": run.class_w.tolist(), "threshold": threshold,
        **(extra_config or {}),
    }
    return TrainResult(model=model.cpu().eval(), config=config, metrics=metrics, history=history)


def class_weights(labels: Sequence[int]) -> np.ndarray:
    """Inverse class prevalence (normal, abnormal), scaled so that the mean weight over `labels` is 1."""
    prevalence = np.array(labels).mean()
    return np.array([0.5 / (1.0 - prevalence), 0.5 / prevalence])


def _new_model(cfg: MRNetTrainConfig, device: torch.device) -> tuple[MRNet, torch.optim.Optimizer]:
    """MRNet (He init, or the pretrained trunk) on `device`, and its Adam optimizer."""
    model = MRNet(cfg.norm)
    if cfg.pretrained:
        load_pretrained_features(model, cfg.pretrained)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


SCHEDULES = ("constant", "cosine")


def _schedule(opt: torch.optim.Optimizer, cfg: MRNetTrainConfig, steps: int
              ) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"mrnet.schedule: expected one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))


@dataclass
class _Run:
    """What every training step needs."""
    model: MRNet
    opt: torch.optim.Optimizer
    sched: Optional[torch.optim.lr_scheduler.LRScheduler]
    cfg: MRNetTrainConfig
    device: torch.device
    mean: float                 # pixel statistics of the fit exams
    std: float
    class_w: np.ndarray         # loss weight of a normal and an abnormal exam
    gen: torch.Generator        # exam order and augmentation
    progress: Progress


@dataclass
class _Best:
    """The best epoch so far, by tune AUC (then tune loss)."""
    auc: float = -1.0
    loss: float = math.inf
    epoch: int = -1
    logits: Optional[np.ndarray] = None      # its tune logits
    state: Optional[dict] = None             # its weights


def _fit(run: _Run, fit: Sequence[Exam], tune: Sequence[Exam], log: LogFn) -> tuple[list[dict], _Best]:
    """Every epoch: one pass over the fit exams, then the tune metrics (logged); the best epoch's
    weights are kept."""
    fit_labels = np.array([e.label for e in fit])
    tune_labels = np.array([e.label for e in tune])
    history: list[dict] = []
    best = _Best()
    for epoch in range(run.cfg.epochs):
        logits = _train_epoch(run, fit)
        tune_logits = _predict(run.model, tune, run.cfg, run.mean, run.std, run.device, run.progress)
        row = {
            "train/loss": _weighted_bce(logits, fit_labels, run.class_w),
            "train/auc": roc_auc(fit_labels, logits),
            "val/loss": _weighted_bce(tune_logits, tune_labels, run.class_w),
            "val/auc": roc_auc(tune_labels, tune_logits),
        }
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"mrnet: training diverged at epoch {epoch} ({row}); lower mrnet.lr")
        history.append({"epoch": epoch, **row})
        log(row)
        if (row["val/auc"], -row["val/loss"]) > (best.auc, -best.loss):
            best = _Best(row["val/auc"], row["val/loss"], epoch, tune_logits, copy.deepcopy(run.model.state_dict()))
    return history, best


def _train_epoch(run: _Run, fit: Sequence[Exam]) -> np.ndarray:
    """One step per exam, in a random order; returns each exam's logit (in `fit` order)."""
    run.model.train()
    order = torch.randperm(len(fit), generator=run.gen).tolist()
    logits = np.zeros(len(fit))
    for i in order:
        logits[i] = _train_step(run, fit[i])
        if run.progress:
            run.progress(1)
    return logits


def _train_step(run: _Run, e: Exam) -> float:
    """One exam (its slices are the batch): weighted BCE of the exam logit, one Adam step."""
    cfg, device = run.cfg, run.device
    x = resize_slices(to_pixels(e.load()), cfg.image_size)
    if cfg.augment:
        x = augment(x, run.gen, cfg)
    x = normalise(x, run.mean, run.std).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.tensor([float(e.label)], device=device)
    with autocast(device):
        logit = run.model(x).float()
    loss = F.binary_cross_entropy_with_logits(logit, target) * float(run.class_w[e.label])
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    if run.sched is not None:
        run.sched.step()
    return float(logit.detach())
