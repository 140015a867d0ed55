"""Test-split evaluation: zero-filled, baseline and weighted U-Nets against the fully sampled targets.

Writes the reconstructions store (test group: volume, slice, and one (N,C,C) float32 array per
variant, in target units), the flat metrics dict (see `pipeline.metrics` for the definitions),
one row per volume and variant, and error-map figures of chosen slices.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import zarr
from torch import nn

from pipeline.errors import InputError
from pipeline.metrics import ALL, mean_over_volumes, volume_metrics, volume_slices
from pipeline.models.registry import load_unet
from pipeline.store import ShardedWriter, atomic_path
from pipeline.training.device import select_device
from pipeline.training.unet import predict
from pipeline.unet_data import SplitData

MODELS = ("baseline", "weighted")
VARIANTS = ("zero_filled",) + MODELS
Box = tuple[int, int, int, int]
Progress = Optional[Callable[[int], None]]


@dataclass
class Evaluation:
    recons: dict[str, np.ndarray]                 # variant -> (N,C,C) target units
    per_volume: list[dict[str, Any]]              # volume, variant, metrics...
    metrics: dict[str, float]                     # flat, stable keys
    configs: dict[str, dict] = field(default_factory=dict)


def load_models(models_dir: Path | str) -> dict[str, tuple[nn.Module, dict]]:
    out = {}
    for v in MODELS:
        model, config = load_unet(Path(models_dir) / f"unet_{v}.pt")
        if config.get("variant") not in (None, v):
            raise InputError(f"{Path(models_dir) / f'unet_{v}.pt'}: holds the {config['variant']!r} variant, "
                             f"expected {v!r}")
        out[v] = (model, config)
    return out


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


def roi_masks(data: SplitData, boxes: dict[tuple[str, int], list[Box]]) -> np.ndarray:
    """bool (N,C,C): pixels inside the ground-truth boxes (crop frame) of each slice."""
    n, c = len(data), data.image.shape[-1]
    mask = np.zeros((n, c, c), dtype=bool)
    for i, (name, k) in enumerate(zip(data.volume, data.slice)):
        for r0, c0, h, w in boxes.get((str(name), int(k)), ()):
            mask[i, max(r0, 0):max(r0 + h, 0), max(c0, 0):max(c0 + w, 0)] = True
    return mask


def evaluate(data: SplitData, models: dict[str, tuple[nn.Module, dict]], boxes: dict[tuple[str, int], list[Box]],
             device_name: str = "auto", batch_size: int = 16, progress: Progress = None) -> Evaluation:
    """Reconstruct the test split with every variant and compute all metrics."""
    if data.target_raw is None:
        raise ValueError("load the test split with keep_raw=True")
    device = select_device(device_name)
    recons = {"zero_filled": data.zero_filled}
    timing = {}
    for v in MODELS:
        recons[v], timing[v] = timed_predict(models[v][0], data, device, batch_size)
        if progress:
            progress(1)
        if not np.isfinite(recons[v]).all():
            raise InputError(f"unet_{v}.pt: produces non-finite reconstructions")
    roi = roi_masks(data, boxes)
    heat = data.heatmap[:, 0].numpy() if data.heatmap is not None else None
    per_volume = []
    for name, sl in volume_slices(data.volume):
        gt = data.target_raw[sl]
        for v in VARIANTS:
            m = volume_metrics(gt, recons[v][sl], roi[sl], None if heat is None else heat[sl])
            per_volume.append({"volume": name, "variant": v, **m})
    metrics: dict[str, float] = {}
    for v in VARIANTS:
        means = mean_over_volumes([r for r in per_volume if r["variant"] == v])
        metrics.update({f"{v}_{k}": _round(means[k]) for k in ALL})
    for v in MODELS:
        metrics[f"{v}_ms_per_slice"] = _round(timing[v], 4)
    for k in ("psnr", "ssim", "roi_psnr", "roi_ssim"):
        metrics[f"gain_weighted_vs_baseline_{k}"] = _round(metrics[f"weighted_{k}"] - metrics[f"baseline_{k}"])
        metrics[f"gain_weighted_vs_zero_filled_{k}"] = _round(metrics[f"weighted_{k}"] - metrics[f"zero_filled_{k}"])
    names = {r["volume"] for r in per_volume}
    roi_names = {r["volume"] for r in per_volume if not math.isnan(r["roi_psnr"])}
    metrics["n_volumes"], metrics["n_roi_volumes"], metrics["n_slices"] = len(names), len(roi_names), len(data)
    metrics["n_roi_slices"] = int(roi.any(axis=(1, 2)).sum())
    return Evaluation(recons=recons, per_volume=per_volume, metrics=metrics,
                      configs={v: models[v][1] for v in MODELS})


def _round(x: float, digits: int = 6) -> float:
    return x if math.isnan(x) or math.isinf(x) else round(float(x), digits)


# ---------------------------------------------------------------- outputs

def write_reconstructions(out: Path | str, data: SplitData, ev: Evaluation, attrs: dict[str, Any]) -> None:
    c = data.image.shape[-1]
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update({"kind": "reconstructions", "variants": list(VARIANTS),
                           "units": "target (fully sampled magnitude)", **attrs})
        group = root.create_group(data.split)
        writer = ShardedWriter(group, len(data), {"volume": ((), str), "slice": ((), "int32"),
                                                  **{v: ((c, c), "float32") for v in VARIANTS}})
        writer.append(volume=data.volume, slice=data.slice.astype(np.int32),
                      **{v: ev.recons[v].astype(np.float32, copy=False) for v in VARIANTS})
        writer.close()


def write_metrics(path: Path | str, metrics: dict[str, float]) -> None:
    """Strict JSON (as DVC reads metrics): NaN (no ROI) and inf (a perfect reconstruction) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")


PER_VOLUME_COLUMNS = ("volume", "variant", *ALL, "case")


def write_per_volume(path: Path | str, rows: list[dict[str, Any]]) -> None:
    """One row per volume and variant; `case` = 'volume variant' labels the bars of the DVC plot."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(PER_VOLUME_COLUMNS)
            for r in rows:
                vals = [r["volume"], r["variant"]]
                vals += ["" if not math.isfinite(r[k]) else f"{r[k]:.6g}" for k in ALL]
                vals.append(f"{r['volume'].removesuffix('.h5')} {r['variant']}")
                w.writerow(vals)


def annotation_boxes(annotations: Path | str | None, slices_path: Path | str, data: SplitData,
                     frame: int | None = None) -> dict[tuple[str, int], list[Box]]:
    """Ground-truth boxes of a split in the crop frame: {(volume file name, slice): [box]}.

    fastMRI+ boxes are given in the recon frame (`frame` x `frame` when set, 320 for fastMRI+
    knee; else each volume's target shape) and moved into the centre crop as fastMRI crops.
    """
    from pipeline.roi_scores import split_boxes

    found = split_boxes(annotations, slices_path, data.split, int(data.image.shape[-1]), frame, "evaluate.frame")
    return {key: [b for b, _ in pairs] for key, pairs in found.items()}
