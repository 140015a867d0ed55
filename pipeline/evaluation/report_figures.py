"""The figures evaluate writes, assembled from an `Evaluation`:

- `figures/compare.png`: forest plot, each comparison with the baseline, mean paired difference and
  95% interval per metric (over seeds and volumes, the volume-only one as a thin inner bar), with
  the zero line;
- `figures/paired_roi_psnr.png`: ROI PSNR per volume, baseline against each ROI variant (seed-averaged), y = x;
- `figures/training_curves.png`: every variant and seed's per-epoch curves, one panel per quantity;
- `error_maps/*.png`: the slices with the largest boxes (chosen from the boxes alone), zero-filled and
  the first seed of each variant, one shared error scale with an ROI zoom.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from pipeline.evaluation.evaluate import (MODEL_VARIANTS, REFERENCE, ROI_VARIANTS, ZERO_FILLED, Evaluation, roi_area,
                                          seed_means)
from pipeline.figures.error_maps import ErrorPanel, choose_slices, write_error_maps
from pipeline.figures.compare import forest_plot, paired_volume_plot, training_curves_plot
from pipeline.stores.zarr_store import atomic_path
from pipeline.stores.unet_data import SliceStores

LABELS = {ZERO_FILLED: "zero-filled", "baseline": "baseline", "weighted": "Grad-CAM weighted",
          "oracle": "oracle weighted"}
COMPARED_IN_FOREST = ("roi_psnr", "psnr", "roi_ssim", "ssim")


def write_figures(figures_dir: Path | str, error_maps_dir: Path | str, ev: Evaluation,
                  table: pd.DataFrame, detail: dict, boxes: dict, rows: Sequence[int]) -> int:
    """Write every figure (see the module doc); returns the number of PNGs."""
    comparisons = {name: {m: by_metric[m] for m in COMPARED_IN_FOREST if m in by_metric}
                   for name, by_metric in detail["comparisons"].items()}
    seed_avg = seed_averaged(table, "roi_psnr")
    with atomic_path(figures_dir) as tmp:
        tmp.mkdir(parents=True)
        forest_plot(tmp / "compare.png", comparisons)
        paired_volume_plot(tmp / "paired_roi_psnr.png", seed_avg, reference=REFERENCE,
                           variants=ROI_VARIANTS, metric="roi_psnr")
        training_curves_plot(tmp / "training_curves.png",
                             {label: cfg.get("history", []) for label, cfg in ev.configs.items()})
    names = write_error_maps(error_maps_dir, error_panels(ev, boxes, rows))
    return 3 + len(names)


def error_map_rows(stores: SliceStores, boxes: dict, n: int) -> list[int]:
    """The `n` rows of the split the error maps show, chosen from the boxes alone (`choose_slices`),
    so they are known before the evaluation keeps their reconstructions."""
    return choose_slices(stores.volume, stores.slice, roi_area(stores, boxes), n)


def seed_averaged(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (variant, volume): the metric averaged over the variant's seeds."""
    parts = [seed_means(table, v, metric).rename(metric).reset_index().assign(variant=v)
             for v in dict.fromkeys(table["variant"])]
    return pd.concat(parts, ignore_index=True)


def error_panels(ev: Evaluation, boxes: dict, rows: Sequence[int]) -> list[ErrorPanel]:
    """One panel per chosen row: zero-filled and the first trained seed of each variant."""
    labels = list(ev.panels[rows[0]].recons) if len(rows) else []   # every run, in evaluation order
    shown = [ZERO_FILLED] + [next((lab for lab in labels if lab.split(" ")[0] == v), None) for v in MODEL_VARIANTS]
    shown = [lab for lab in shown if lab in labels]
    panels = []
    for i in rows:
        p = ev.panels[i]
        panels.append(ErrorPanel(volume=p.volume, slice=p.slice, target=p.target,
                                 recons={_display(lab): p.recons[lab] for lab in shown}, heat=p.heat,
                                 boxes=list(boxes.get((p.volume, p.slice), [])), maxval=p.maxval))
    return panels


def _display(label: str) -> str:
    variant, _, seed = label.partition(" s")
    return LABELS.get(variant, variant) + (f" (seed {seed})" if seed else "")
