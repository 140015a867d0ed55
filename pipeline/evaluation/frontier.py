"""The ROI weighting's frontier: each setting's oracle and Grad-CAM (weighted) variants against the
baseline of the same capacity and loss, on val, and the rule that picks the default from it.

The rule (docs/tuning.md, written before the sweep): among the settings whose oracle whole-image
PSNR change has a two-level 95% interval reaching -0.05 dB or better (upper end >= -0.05), the one
with the largest oracle in-box PSNR gain; settings within TIE_DB of the best count as tied, and the
cheapest of them (training seconds per run) wins.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from pipeline.evaluation.evaluate import Run, annotation_boxes, evaluate, per_volume_table
from pipeline.stats import compare
from pipeline.stores.unet_data import SliceStores

WHOLE_FLOOR_DB = -0.05      # the oracle's whole-image interval must reach this or better
TIE_DB = 0.02               # in-box gains this close to the best are tied; the cheaper setting wins
METRICS = ("roi_psnr", "psnr", "roi_ssim", "ssim")
COMPARED = ("oracle", "weighted")


@dataclass(frozen=True)
class Setting:
    """A named set of params.yaml overrides ({"loss.roi_weight": 8.0}); {} is the default."""
    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


def evaluate_checkpoints(variant: str, paths: Sequence[Path], data: Path, params: dict, cache: Path
                         ) -> list[dict[str, Any]]:
    """Per-volume val rows of one variant's checkpoints (one per seed, `<variant>_s<seed>.pt`), cached
    in `cache` by the checkpoints' bytes and the val stores' content digests."""
    stores = SliceStores(data / "slices.zarr", data / "undersampled.zarr", data / "heatmaps.zarr", "val", raw=True)
    h = hashlib.blake2b(stores.fingerprint().encode(), digest_size=8)
    for p in paths:
        h.update(Path(p).read_bytes())
    cached = cache / f"{variant}-{h.hexdigest()}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    d = params["data"]
    boxes = annotation_boxes(d["annotations"], data / "slices.zarr", "val", stores.crop, d["annotation_frame"],
                             "data.annotation_frame")
    runs = [Run(variant, int(Path(p).stem.rsplit("_s", 1)[1]), Path(p)) for p in paths]
    rows = [r for r in evaluate(stores, runs, boxes, params["evaluate"]["device"]).per_volume
            if r["variant"] == variant]
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(rows))
    return rows


def evaluate_settings(plan: Mapping[str, Mapping[str, Sequence[Path]]], data: Path, params: dict, cache: Path,
                      seconds: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """{setting: {"table": per-volume table of its three variants, "seconds": mean training seconds
    of its runs that were timed}} from {setting: {variant: checkpoints}}."""
    out = {}
    for name, variants in plan.items():
        rows = [r for v, paths in variants.items() for r in evaluate_checkpoints(v, paths, data, params, cache)]
        timed = [seconds[str(p)] for paths in variants.values() for p in paths if str(p) in seconds]
        out[name] = {"table": per_volume_table(rows),
                     "seconds": sum(timed) / len(timed) if timed else math.nan}
    return out


def _summary(c: dict) -> dict[str, Any]:
    keep = ("delta", "ci95_low", "ci95_high", "p", "n_seeds", "n_volumes", "seed_sd", "by_seed")
    return {**{k: c[k] for k in keep}, "volume_only": c["volume_only"]}


def frontier_rows(results: Mapping[str, dict], settings: Sequence[Setting]) -> list[dict[str, Any]]:
    """One row per setting: its overrides, training seconds per run, and for the oracle and the
    weighted variant the paired comparison with the baseline on METRICS (two-level, with the
    volume-only interval inside)."""
    rows = []
    for s in settings:
        r = results[s.name]
        rows.append({"name": s.name, "overrides": dict(s.overrides), "seconds_per_training": r["seconds"],
                     **{v: {m: _summary(compare(r["table"], v, "baseline", m)) for m in METRICS} for v in COMPARED}})
    return rows


def eligible(row: Mapping[str, Any]) -> bool:
    """The oracle's whole-image PSNR interval reaches WHOLE_FLOOR_DB or better."""
    return row["oracle"]["psnr"]["ci95_high"] >= WHOLE_FLOOR_DB


def choose_default(rows: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """The rule (module doc): the setting's name, or None when no setting is eligible."""
    ok = [r for r in rows if eligible(r)]
    if not ok:
        return None
    best = max(r["oracle"]["roi_psnr"]["delta"] for r in ok)
    tied = [r for r in ok if r["oracle"]["roi_psnr"]["delta"] >= best - TIE_DB]
    cost = {r["name"]: (r["seconds_per_training"] if math.isfinite(r["seconds_per_training"]) else math.inf)
            for r in tied}
    return min(tied, key=lambda r: (cost[r["name"]], -r["oracle"]["roi_psnr"]["delta"]))["name"]


def frontier_table(rows: Sequence[Mapping[str, Any]], chosen: Optional[str]) -> pd.DataFrame:
    """The figure's numbers as a table (one row per setting and variant)."""
    out = []
    for r in rows:
        for v in COMPARED:
            box, whole = r[v]["roi_psnr"], r[v]["psnr"]
            out.append({"setting": r["name"], "variant": v, "chosen": r["name"] == chosen,
                        "eligible": eligible(r), "in_box": box["delta"], "in_box_low": box["ci95_low"],
                        "in_box_high": box["ci95_high"], "whole": whole["delta"], "whole_low": whole["ci95_low"],
                        "whole_high": whole["ci95_high"], "seconds": r["seconds_per_training"]})
    return pd.DataFrame(out)
