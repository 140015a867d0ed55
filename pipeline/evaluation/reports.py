"""Report files: strict JSON as DVC reads metrics (NaN and inf as null), written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.stores.zarr_store import atomic_path


def clean(value: Any, digits: Optional[int] = None) -> Any:
    """JSON-able copy: numpy scalars as Python numbers, non-finite floats as None, floats rounded
    to `digits` significant digits when given (a p-value of 3e-9 stays 3e-9); dicts, lists and
    tuples recursively."""
    if isinstance(value, dict):
        return {str(k): clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}") if digits is not None else x
    return value


def write_json(path: Path | str, payload: dict, digits: Optional[int] = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(payload, digits), indent=2, allow_nan=False) + "\n")


def pick(report: dict, paths: Sequence[str]) -> dict:
    """The part of a nested report at the dotted `paths` (e.g. "test.auc"), nesting kept; a path
    the report lacks is left out. What a stage tracks as metrics, its detail JSON holding all."""
    out: dict = {}
    for path in paths:
        *parents, leaf = path.split(".")
        src = report
        for key in parents:
            src = src.get(key) if isinstance(src, dict) else None
        if isinstance(src, dict) and leaf in src:
            dst = out
            for key in parents:
                dst = dst.setdefault(key, {})
            dst[leaf] = src[leaf]
    return out


VARIANTS = ("zero_filled", "baseline", "weighted", "oracle")


def metrics_table(m: dict, detail: Optional[dict] = None) -> str:
    """The tracked metrics as text: each variant's seed-averaged means (zero-filled's from the
    detail), then each comparison with the baseline (paired by seed and volume: delta, 95% interval
    over seeds and volumes, t-test p) and, given evaluate's detail JSON, the seed count and the
    volume-only interval and Wilcoxon p beside it. Also printed by `evaluate`."""
    cols = [("NMSE", "nmse", "{:.4f}"), ("PSNR", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"),
            ("ROI PSNR", "roi_psnr", "{:.2f}"), ("ROI SSIM", "roi_ssim", "{:.4f}")]
    lines = [f"{'':<13}" + "".join(f"{c:>10}" for c, _, _ in cols)]
    means = {**(detail or {}).get("means", {}), **m}     # zero-filled: a reference, in the detail only
    for v in VARIANTS:
        if v in means:
            lines.append(f"{v:<13}" + "".join(f"{_fmt(means[v].get(k), fmt):>10}" for _, k, fmt in cols))
    comparisons = (detail or {}).get("comparisons", {})
    for name, by_metric in m.items():
        if "_vs_" not in name:
            continue
        for k, s in by_metric.items():
            line = f"{name} {k}: delta {_fmt(s.get('delta'), '{:+.3f}')} {_interval(s)}, p {_fmt(s.get('p'), '{:.3g}')}"
            c = comparisons.get(name, {}).get(k)
            if c:
                v = c.get("volume_only") or {}
                line += (f" ({_fmt(c.get('n_seeds'), '{:d}')} seeds x {_fmt(c.get('n_volumes'), '{:d}')} volumes;"
                         f" volume-only {_interval(v)}, Wilcoxon p {_fmt(v.get('p_wilcoxon'), '{:.3g}')})")
            lines.append(line)
    return "\n".join(lines)


def _interval(s: dict) -> str:
    return f"[{_fmt(s.get('ci95_low'), '{:+.3f}')}, {_fmt(s.get('ci95_high'), '{:+.3f}')}]"


def _fmt(x, fmt: str) -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else fmt.format(x)
