"""Evaluation of one split: zero-filled and every trained U-Net (variant x seed) against the targets.

Per volume and run: fastMRI's metrics and their ROI-restricted versions (`pipeline.metrics`). Then,
per variant, the seed-averaged means, and for each ROI variant the paired comparison with the
baseline (`pipeline.stats`: an interval over seeds and volumes, the volume-only one beside it).
The split streams one volume at a time (a DataLoader over the stores); every run reconstructs that
volume, its metrics are taken and its reconstructions appended to the store, so only one volume's
slices are in memory.

Outputs: the tracked metrics (31 numbers: per trained variant nmse/psnr/ssim/roi_psnr/roi_ssim, per
comparison delta/ci95_low/ci95_high/p of roi_psnr and psnr, the two-level ones), a detail JSON
(everything else: every variant's means with intervals, zero-filled's included (a reference that
only data and mask move), all comparisons with their variance components and `volume_only` interval
and Wilcoxon p, the half-width projected for more seeds, seed SDs, per-seed means, counts, the
Grad-CAM variant's share of the oracle's ROI gain, the comparisons on each contrast's volumes alone
(fastMRI's `acquisition`: with or without fat suppression); no timings), the long per-volume CSV and the
reconstructions store (`<split>/zero_filled`, `<split>/<variant>/seed<k>`, in target units).
"""
from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import zarr
from torch import nn

from pipeline.errors import InputError
from pipeline.models.inference import prepare_model, reconstruct
from pipeline.metrics import ALL, volume_metrics
from pipeline.models.registry import load_unet
from pipeline.evaluation.reports import clean
from pipeline.roi.boxes import Box, slice_masks, split_boxes, without_labels
from pipeline.stats import bootstrap_interval, compare_all, projected_half_width, seed_means, share_of_gain
from pipeline.stores.zarr_store import ShardedWriter, atomic_path, finish_store
from pipeline.training.device import select_device
from pipeline.stores.unet_data import SliceStores, iterate, volume_loader

REFERENCE = "baseline"
MODEL_VARIANTS = ("baseline", "weighted", "oracle")
ROI_VARIANTS = ("weighted", "oracle")
ZERO_FILLED = "zero_filled"
COMPARED = ("roi_psnr", "roi_ssim", "roi_nmse", "psnr", "ssim", "nmse")   # in the detail JSON
TRACKED_MEANS = ("nmse", "psnr", "ssim", "roi_psnr", "roi_ssim")   # of each trained variant (MODEL_VARIANTS)
TRACKED_COMPARED = ("roi_psnr", "psnr")
TRACKED_STATS = ("delta", "ci95_low", "ci95_high", "p")           # the two-level ones (pipeline.stats)
PROJECTED_SEEDS = (3, 4, 5, 6)  # seed counts the detail projects each tracked comparison's half-width to
DIGITS = 8                      # significant digits in the JSON reports
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
class Panel:
    """What an error-map figure needs of one kept slice."""
    volume: str
    slice: int
    target: np.ndarray                      # (C,C) target units
    heat: Optional[np.ndarray]              # (C,C) ROI map, or None
    maxval: float                           # the volume's target max (the figures' error scale)
    recons: dict[str, np.ndarray] = field(default_factory=dict)   # run label -> (C,C)


@dataclass
class Evaluation:
    per_volume: list[dict[str, Any]]                    # one row per (run, volume)
    panels: dict[int, Panel] = field(default_factory=dict)   # kept row -> its slices, for figures
    configs: dict[str, dict] = field(default_factory=dict)   # run label -> checkpoint config


def roi_area(stores: SliceStores, boxes: dict[tuple[str, int], list[Box]], step: int = 256) -> np.ndarray:
    """Pixels inside the ground-truth boxes (crop frame) of each slice of the split, (N,); `step`
    slices' masks at a time."""
    shape, n = (stores.crop, stores.crop), len(stores.volume)
    return np.concatenate([slice_masks(stores.volume[a:a + step], stores.slice[a:a + step], shape, boxes)
                           .sum(axis=(1, 2), dtype=np.int64) for a in range(0, n, step)])


def _load_checked(run: Run, expected_model: Optional[dict], expected_label: str) -> tuple[nn.Module, dict]:
    """The run's trained U-Net; refused when it is another variant or seed, never trained, or of
    other widths than `expected_model` (named `expected_label` in the message)."""
    model, config = load_unet(run.path, expected_model, expected_label=expected_label, require_trained=True)
    if config.get("variant") not in (None, run.variant):
        raise InputError(f"{run.path}: holds the {config['variant']!r} variant, expected {run.variant!r}")
    seed = config.get("train", {}).get("seed")
    if seed is not None and int(seed) != run.seed:
        raise InputError(f"{run.path}: trained with seed {seed}, expected {run.seed}")
    return model, config


def evaluate(stores: SliceStores, runs: Sequence[Run], boxes: dict[tuple[str, int], list[Box]],
             device_name: str, batch_size: int = 16, keep_rows: Sequence[int] = (),
             on_recon: Optional[Callable[[Run, np.ndarray], None]] = None, progress: Progress = None,
             expected_model: Optional[dict] = None, expected_label: str = "the expected",
             workers: int = 0) -> Evaluation:
    """Reconstruct the split, a volume at a time, with zero-filling and every run; per-volume metrics.

    `stores` is opened with `raw=True`. `on_recon(run, recons)` receives each run's reconstructions
    of each volume (target units) in store order, e.g. to store them; `keep_rows` are kept for
    figures; `expected_model` (a model config, described as `expected_label` in the message) refuses
    checkpoints of other widths; `progress(1)` per volume."""
    if not stores.raw:
        raise ValueError("open the stores with raw=True")
    device = select_device(device_name)
    ev = Evaluation(per_volume=[])
    models = {}
    for run in runs:
        model, ev.configs[run.label] = _load_checked(run, expected_model, expected_label)
        models[run.label] = prepare_model(model, device)
    by_run: dict[str, list[dict[str, Any]]] = {r.label: [] for r in [Run(ZERO_FILLED)] + list(runs)}
    keep = set(int(i) for i in keep_rows)
    for batch in iterate(volume_loader(stores, stores.volumes(), workers, device)):
        rows = batch["rows"].numpy()
        target, heat = batch["target_raw"].numpy(), batch["heatmap"][:, 0].numpy() if "heatmap" in batch else None
        roi = slice_masks(stores.volume[rows], stores.slice[rows], (stores.crop, stores.crop), boxes)
        _keep_panels(ev, stores, rows, target, heat, keep)
        for run in [Run(ZERO_FILLED)] + list(runs):
            if run.seed is None:
                recon = batch["zero_filled"].numpy()
            else:
                recon = reconstruct(models[run.label], batch["image"], batch["mean"], batch["std"], device,
                                    batch_size)
                if not np.isfinite(recon).all():
                    raise InputError(f"{run.path}: produces non-finite reconstructions")
            by_run[run.label].append(volume_row(stores, rows, target, recon, run, roi, heat))
            for i in keep.intersection(rows.tolist()):
                ev.panels[i].recons[run.label] = recon[i - rows[0]]
            if on_recon:
                on_recon(run, recon)
        if progress:
            progress(1)
    ev.per_volume = [row for rows_of_run in by_run.values() for row in rows_of_run]
    return ev


def _keep_panels(ev: Evaluation, stores: SliceStores, rows: np.ndarray, target: np.ndarray,
                 heat: Optional[np.ndarray], keep: set[int]) -> None:
    for i in sorted(keep.intersection(rows.tolist())):
        j = i - int(rows[0])
        ev.panels[i] = Panel(volume=str(stores.volume[i]), slice=int(stores.slice[i]), target=target[j],
                             heat=None if heat is None else heat[j], maxval=float(target.max()))


def volume_row(stores: SliceStores, rows: np.ndarray, target: np.ndarray, recon: np.ndarray, run: Run,
               roi: np.ndarray, heat: Optional[np.ndarray]) -> dict[str, Any]:
    """The metrics of one run's reconstruction of one volume (rows of the split)."""
    m = volume_metrics(target, recon, roi, heat)
    return {"variant": run.variant, "seed": run.seed, "volume": str(stores.volume[rows[0]]), "split": stores.split,
            "n_slices": len(rows), "n_roi_slices": int(roi.any(axis=(1, 2)).sum()), **m}


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


def summarize_evaluation(ev: Evaluation, n_resamples: int, acquisitions: Optional[Mapping[str, str]] = None
                         ) -> tuple[dict, dict, pd.DataFrame]:
    """(tracked metrics, detail, per-volume table) of an evaluation: `summarize` of its per-volume
    rows. Quality only: inference latency is measured by benchmarks/unet_training.py."""
    table = per_volume_table(ev.per_volume)
    tracked, detail = summarize(table, n_resamples, acquisitions=acquisitions)
    return tracked, detail, table


def summarize(table: pd.DataFrame, n_resamples: int, seed: int = 0,
              acquisitions: Optional[Mapping[str, str]] = None) -> tuple[dict, dict]:
    """(tracked metrics, detail) from the per-volume table; see the module doc for what goes where.
    With `acquisitions` ({volume: its fastMRI `acquisition`}), the detail also holds every
    comparison on the volumes of each contrast alone (`comparisons_by_acquisition`)."""
    variants = [v for v in (ZERO_FILLED,) + MODEL_VARIANTS if v in set(table["variant"])]
    comparisons = compare_all(table, ROI_VARIANTS, REFERENCE, COMPARED, n_resamples=n_resamples, seed=seed)
    means = {v: variant_means(table, v) for v in variants}
    metrics: dict[str, Any] = {v: {m: _clean(means[v][m]) for m in TRACKED_MEANS} for v in variants
                               if v in MODEL_VARIANTS}
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
        "comparison_interval": {"method": "two-level: crossed seed x volume random effects, t interval with "
                                          "Satterthwaite df, t-test p", "confidence": 0.95,
                                "volume_only": "BCa bootstrap over volumes of seed-averaged differences, Wilcoxon p"},
        "means": {v: {m: _clean(x) for m, x in means[v].items()} for v in variants},
        "means_ci95": {v: _clean(variant_intervals(table, v, TRACKED_MEANS, n_resamples, seed)) for v in variants},
        "means_by_seed": _per_seed_means(table),
        "comparisons": _clean(comparisons),
        "projected_half_width": _clean(_projections(comparisons)),
    }
    if acquisitions is not None:
        detail["comparisons_by_acquisition"] = comparisons_by_acquisition(table, acquisitions, n_resamples, seed)
    if {"weighted", "oracle", REFERENCE} <= set(table["variant"]):
        detail["weighted_share_of_oracle_gain"] = _clean(
            {m: share_of_gain(table, "weighted", "oracle", REFERENCE, m, n_resamples=n_resamples, seed=seed)
             for m in ("roi_psnr", "roi_ssim")})
    return metrics, detail


def comparisons_by_acquisition(table: pd.DataFrame, acquisitions: Mapping[str, str], n_resamples: int,
                               seed: int = 0) -> dict:
    """{acquisition: {"n_volumes", "n_roi_volumes", "comparisons"}}: the comparisons of `summarize`
    (ROI PSNR and PSNR) on the volumes of one contrast at a time (`acquisitions`: {volume: its
    fastMRI `acquisition`}, every volume of the table in it)."""
    contrast = table["volume"].map(lambda v: acquisitions[v])
    out = {}
    for acq in sorted(set(contrast)):
        rows = table[contrast == acq]
        vols = rows.drop_duplicates("volume")
        out[acq] = {"n_volumes": int(len(vols)), "n_roi_volumes": int((vols["n_roi_slices"] > 0).sum()),
                    "comparisons": _clean(compare_all(rows, ROI_VARIANTS, REFERENCE, TRACKED_COMPARED,
                                                      n_resamples=n_resamples, seed=seed))}
    return out


def _projections(comparisons: dict) -> dict:
    """Each tracked comparison's expected two-level half-width with PROJECTED_SEEDS seeds on its
    volumes, from its measured variance components: {name: {metric: {n_seeds: half-width}}}."""
    return {name: {m: {str(s): projected_half_width(c["variance_components"], s, c["n_volumes"])
                       for s in PROJECTED_SEEDS}
                   for m, c in by_metric.items() if m in TRACKED_COMPARED}
            for name, by_metric in comparisons.items()}


def _per_seed_means(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for (variant, seed), rows in table.dropna(subset=["seed"]).groupby(["variant", "seed"]):
        out[f"{variant} s{int(seed)}"] = {m: _clean(float(rows[m].mean())) for m in ALL}
    return out


def _clean(x: Any) -> Any:
    return clean(x, DIGITS)


# ---------------------------------------------------------------- outputs

@contextlib.contextmanager
def reconstructions_writer(out: Path | str, stores: SliceStores, attrs: dict[str, Any]
                           ) -> Iterator[Callable[[Run, np.ndarray], None]]:
    """Yield `write(run, recons)`, called with each run's reconstructions in store order (volume by
    volume); the store appears at `out` only when the block succeeds."""
    c, n = stores.crop, len(stores)
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"kind": "reconstructions", "units": "target (fully sampled magnitude)", **attrs})
        group = root.create_group(stores.split)
        ids = ShardedWriter(group, n, {"volume": ((), str), "slice": ((), "int32")})
        ids.append(volume=stores.volume, slice=stores.slice.astype(np.int32))
        ids.close()
        writers: dict[str, tuple[ShardedWriter, str]] = {}

        def write(run: Run, recon: np.ndarray) -> None:
            if run.label not in writers:
                parent = group if run.seed is None else group.require_group(run.variant)
                name = run.variant if run.seed is None else f"seed{run.seed}"
                writers[run.label] = (ShardedWriter(parent, n, {name: ((c, c), "float32")}), name)
            w, name = writers[run.label]
            w.append(**{name: recon.astype(np.float32, copy=False)})

        yield write
        for w, _ in writers.values():
            w.close()
        root.attrs["runs"] = list(writers)
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


def annotation_boxes(annotations: Path | str | None, slices_path: Path | str, split: str, crop: int,
                     frame: int | None = None, param: str = "frame") -> dict[tuple[str, int], list[Box]]:
    """Ground-truth boxes of a split in the crop frame: {(volume file name, slice): [box]}.

    fastMRI+ boxes are given in the recon frame (`frame` x `frame` when set, 320 for fastMRI+
    knee; else each volume's target shape) and moved into the centre crop as fastMRI crops;
    `param` names `frame` in messages (`split_boxes`).
    """
    return without_labels(split_boxes(annotations, slices_path, split, crop, frame, param))
