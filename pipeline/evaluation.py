"""Evaluation of one split: zero-filled and every trained U-Net (variant x seed) against the targets.

Per volume and run: fastMRI's metrics and their ROI-restricted versions (`pipeline.metrics`). Then,
per variant, the seed-averaged means, and for each ROI variant the paired comparison with the
baseline (`pipeline.stats`). Runs are reconstructed one at a time and written to the
reconstructions store as they come, so only one run's reconstructions are in memory.

Outputs: the tracked metrics (at most 40 numbers: per variant nmse/psnr/ssim/roi_psnr/roi_ssim, per
comparison delta/ci95_low/ci95_high/p of roi_psnr and psnr), a detail JSON (everything else:
all comparisons, seed SDs, per-seed means, counts, timings), the long per-volume CSV and the
reconstructions store (`<split>/zero_filled`, `<split>/<variant>/seed<k>`, in target units).
"""
from __future__ import annotations

import contextlib
import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import zarr
from torch import nn

from pipeline.errors import InputError
from pipeline.metrics import ALL, volume_metrics, volume_slices
from pipeline.models.registry import load_unet
from pipeline.reports import clean
from pipeline.stats import bootstrap_interval, compare_all, seed_means
from pipeline.store import ShardedWriter, atomic_path, finish_store
from pipeline.training.device import select_device
from pipeline.training.unet import predict
from pipeline.unet_data import SplitData

REFERENCE = "baseline"
MODEL_VARIANTS = ("baseline", "weighted", "oracle")
ROI_VARIANTS = ("weighted", "oracle")
ZERO_FILLED = "zero_filled"
COMPARED = ("roi_psnr", "roi_ssim", "roi_nmse", "psnr", "ssim", "nmse")   # in the detail JSON
TRACKED_MEANS = ("nmse", "psnr", "ssim", "roi_psnr", "roi_ssim")
TRACKED_COMPARED = ("roi_psnr", "psnr")
TRACKED_STATS = ("delta", "ci95_low", "ci95_high", "p")
DIGITS = 8                      # significant digits in the JSON reports
Box = tuple[int, int, int, int]
Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class Run:
    """One reconstruction: a variant, its training seed (None for zero-filled) and its checkpoint."""
    variant: str
    seed: Optional[int] = None
    path: Optional[Path] = None

    @property
    def label(self) -> str:
        return self.variant if self.seed is None else f"{self.variant} s{self.seed}"


def model_path(models_dir: Path | str, variant: str, seed: int) -> Path:
    """Where train-unet writes a variant's checkpoint for one seed (dvc.yaml uses the same names)."""
    return Path(models_dir) / f"{variant}_s{seed}.pt"


def model_runs(models_dir: Path | str, seeds: Sequence[int], variants: Sequence[str] = MODEL_VARIANTS) -> list[Run]:
    """Every (variant, seed) checkpoint; a missing one is an InputError naming it."""
    runs = [Run(v, int(s), model_path(models_dir, v, s)) for v in variants for s in seeds]
    missing = [str(r.path) for r in runs if not r.path.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: checkpoint not found ({len(missing)} of {len(runs)} missing; "
                         f"run the train-unet stages first)")
    return runs


@dataclass
class Evaluation:
    per_volume: list[dict[str, Any]]                    # one row per (run, volume)
    kept: dict[str, np.ndarray]                          # run label -> reconstructions of the kept rows
    configs: dict[str, dict] = field(default_factory=dict)   # run label -> checkpoint config
    ms_per_slice: dict[str, float] = field(default_factory=dict)


def roi_masks(data: SplitData, boxes: dict[tuple[str, int], list[Box]]) -> np.ndarray:
    """bool (N,C,C): pixels inside the ground-truth boxes (crop frame) of each slice."""
    from pipeline.roi_scores import box_mask

    c = data.image.shape[-1]
    return np.stack([box_mask((c, c), boxes.get((str(name), int(k)), ()))
                     for name, k in zip(data.volume, data.slice)]) if len(data) else np.zeros((0, c, c), bool)


def _load_checked(run: Run, expected_model: Optional[dict]) -> tuple[nn.Module, dict]:
    """The run's trained U-Net; refused when it is another variant or seed, never trained, or of
    other widths than `expected_model` (the params' unet.*)."""
    model, config = load_unet(run.path, expected_model, expected_label="unet.* in params.yaml", require_trained=True)
    if config.get("variant") not in (None, run.variant):
        raise InputError(f"{run.path}: holds the {config['variant']!r} variant, expected {run.variant!r}")
    seed = config.get("train", {}).get("seed")
    if seed is not None and int(seed) != run.seed:
        raise InputError(f"{run.path}: trained with seed {seed}, expected {run.seed}")
    return model, config


def timed_predict(model: nn.Module, data: SplitData, device: torch.device, batch_size: int = 16
                  ) -> tuple[np.ndarray, float]:
    """Reconstructions and inference time per slice in ms (after one warm-up batch)."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    predict(model, data, device, batch_size, rows=np.arange(min(batch_size, len(data))))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = predict(model, data, device, batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - t) * 1000 / len(data)


def volume_rows(data: SplitData, recon: np.ndarray, run: Run, roi: np.ndarray,
                heat: Optional[np.ndarray]) -> list[dict[str, Any]]:
    """The per-volume metrics of one run's reconstructions of the split."""
    rows = []
    for name, sl in volume_slices(data.volume):
        m = volume_metrics(data.target_raw[sl], recon[sl], roi[sl], None if heat is None else heat[sl])
        rows.append({"variant": run.variant, "seed": run.seed, "volume": name, "split": data.split,
                     "n_slices": sl.stop - sl.start, "n_roi_slices": int(roi[sl].any(axis=(1, 2)).sum()), **m})
    return rows


def evaluate(data: SplitData, runs: Sequence[Run], boxes: dict[tuple[str, int], list[Box]],
             device_name: str = "auto", batch_size: int = 16, keep_rows: Sequence[int] = (),
             on_recon: Optional[Callable[[Run, np.ndarray], None]] = None, progress: Progress = None,
             expected_model: Optional[dict] = None) -> Evaluation:
    """Reconstruct the split with zero-filling and every run; per-volume metrics of each.

    `on_recon(run, recons)` receives each run's reconstructions (target units) once, e.g. to store
    them; `keep_rows` are kept for figures; `expected_model` (a model config) refuses checkpoints of
    other widths."""
    if data.target_raw is None:
        raise ValueError("load the split with keep_raw=True")
    device = select_device(device_name)
    roi = roi_masks(data, boxes)
    heat = data.heatmap[:, 0].numpy() if data.heatmap is not None else None
    keep = np.asarray(keep_rows, dtype=np.int64)
    ev = Evaluation(per_volume=[], kept={})

    def add(run: Run, recon: np.ndarray) -> None:
        ev.per_volume += volume_rows(data, recon, run, roi, heat)
        ev.kept[run.label] = recon[keep]
        if on_recon:
            on_recon(run, recon)
        if progress:
            progress(1)

    add(Run(ZERO_FILLED), data.zero_filled)
    for run in runs:
        model, ev.configs[run.label] = _load_checked(run, expected_model)
        recon, ev.ms_per_slice[run.label] = timed_predict(model, data, device, batch_size)
        if not np.isfinite(recon).all():
            raise InputError(f"{run.path}: produces non-finite reconstructions")
        add(run, recon)
    return ev


# ---------------------------------------------------------------- summaries

def per_volume_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    return table


def variant_means(table: pd.DataFrame, variant: str, metrics: Sequence[str] = ALL) -> dict[str, float]:
    """Mean over volumes of the seed-averaged per-volume values (volumes without a value left out)."""
    return {m: float(seed_means(table, variant, m).mean()) for m in metrics}


def variant_intervals(table: pd.DataFrame, variant: str, metrics: Sequence[str], n_resamples: int,
                      seed: int) -> dict[str, list[float]]:
    """95% bootstrap interval over volumes of each `variant_means` value (unpaired: it says how
    well the split pins the level down; differences between variants are the paired comparisons)."""
    return {m: list(bootstrap_interval(seed_means(table, variant, m).to_numpy(), n_resamples, seed))
            for m in metrics}


def summarize(table: pd.DataFrame, n_resamples: int = 10000, seed: int = 0) -> tuple[dict, dict]:
    """(tracked metrics, detail) from the per-volume table; see the module doc for what goes where."""
    variants = [v for v in (ZERO_FILLED,) + MODEL_VARIANTS if v in set(table["variant"])]
    comparisons = compare_all(table, ROI_VARIANTS, REFERENCE, COMPARED, n_resamples=n_resamples, seed=seed)
    means = {v: variant_means(table, v) for v in variants}
    metrics: dict[str, Any] = {v: {m: _clean(means[v][m]) for m in TRACKED_MEANS} for v in variants}
    for name, by_metric in comparisons.items():
        metrics[name] = {m: {s: _clean(by_metric[m][s]) for s in TRACKED_STATS} for m in TRACKED_COMPARED}
    vols = table.drop_duplicates("volume")
    detail = {
        "split": str(table["split"].iloc[0]),
        "n_volumes": int(len(vols)), "n_roi_volumes": int((vols["volume"].isin(
            table.loc[table["n_roi_slices"] > 0, "volume"])).sum()),
        "n_slices": int(vols["n_slices"].sum()), "n_roi_slices": int(vols["n_roi_slices"].sum()),
        "seeds": sorted(int(s) for s in table["seed"].dropna().unique()),
        "bootstrap": {"method": "BCa", "resamples": n_resamples, "seed": seed, "confidence": 0.95},
        "means": {v: {m: _clean(x) for m, x in means[v].items()} for v in variants},
        "means_ci95": {v: _clean(variant_intervals(table, v, TRACKED_MEANS, n_resamples, seed)) for v in variants},
        "per_seed_means": _per_seed_means(table),
        "comparisons": _clean(comparisons),
    }
    return metrics, detail


def _per_seed_means(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for (variant, seed), rows in table.dropna(subset=["seed"]).groupby(["variant", "seed"]):
        out[f"{variant} s{int(seed)}"] = {m: _clean(float(rows[m].mean())) for m in ALL}
    return out


def _clean(x: Any) -> Any:
    return clean(x, DIGITS)


# ---------------------------------------------------------------- outputs

@contextlib.contextmanager
def reconstructions_writer(out: Path | str, data: SplitData, attrs: dict[str, Any]
                           ) -> Iterator[Callable[[Run, np.ndarray], None]]:
    """Yield `write(run, recons)`; the store appears at `out` only when the block succeeds."""
    c = int(data.image.shape[-1])
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"kind": "reconstructions", "units": "target (fully sampled magnitude)", **attrs})
        group = root.create_group(data.split)
        ids = ShardedWriter(group, len(data), {"volume": ((), str), "slice": ((), "int32")})
        ids.append(volume=data.volume, slice=data.slice.astype(np.int32))
        ids.close()
        written: list[str] = []

        def write(run: Run, recon: np.ndarray) -> None:
            parent = group if run.seed is None else group.require_group(run.variant)
            name = run.variant if run.seed is None else f"seed{run.seed}"
            w = ShardedWriter(parent, len(data), {name: ((c, c), "float32")})
            w.append(**{name: recon.astype(np.float32, copy=False)})
            w.close()
            written.append(run.label)

        yield write
        root.attrs["runs"] = written
        finish_store(root)


PER_VOLUME_COLUMNS = ("variant", "seed", "volume", "split", "n_slices", "n_roi_slices", *ALL)


def write_per_volume(path: Path | str, rows: list[dict[str, Any]]) -> None:
    """Long format: one row per (variant, seed, volume); empty seed for zero-filled, empty ROI values
    for volumes without boxes."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(PER_VOLUME_COLUMNS)
            for r in rows:
                vals = [r["variant"], "" if r["seed"] is None else r["seed"], r["volume"], r["split"],
                        r["n_slices"], r["n_roi_slices"]]
                vals += ["" if not math.isfinite(r[k]) else f"{r[k]:.9g}" for k in ALL]
                w.writerow(vals)


def read_per_volume(path: Path | str) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"variant": str, "volume": str, "split": str})
    table["seed"] = table["seed"].astype("Int64")
    return table


def annotation_boxes(annotations: Path | str | None, slices_path: Path | str, data: SplitData,
                     frame: int | None = None) -> dict[tuple[str, int], list[Box]]:
    """Ground-truth boxes of a split in the crop frame: {(volume file name, slice): [box]}.

    fastMRI+ boxes are given in the recon frame (`frame` x `frame` when set, 320 for fastMRI+
    knee; else each volume's target shape) and moved into the centre crop as fastMRI crops.
    """
    from pipeline.roi_scores import split_boxes

    found = split_boxes(annotations, slices_path, data.split, int(data.image.shape[-1]), frame,
                        "data.annotation_frame")
    return {key: [b for b, _ in pairs] for key, pairs in found.items()}
