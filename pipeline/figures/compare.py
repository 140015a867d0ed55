"""Summary figures comparing the variants: a forest plot of paired differences, a per-volume paired
scatter plot, and training curves. Each is one PNG, written atomically and deterministically."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from pipeline.figures.error_maps import DPI, write_png

# metric substring -> (forest panel axis label, decimals of its differences)
METRIC_GROUPS = (("psnr", "difference in PSNR (dB)", 2), ("ssim", "difference in SSIM (unitless)", 4),
                 ("nmse", "difference in NMSE (unitless)", 4))
MARKERS = ("o", "s", "^", "D", "v")
LINESTYLES = ("-", "--", ":", "-.")
TWO_LEVEL_WIDTH, TWO_LEVEL_ALPHA, VOLUME_ONLY_WIDTH = 7.0, 0.45, 1.5   # forest bars: outer, inner
CURVES = (("val/psnr", "validation PSNR (dB)"), ("val/loss", "validation loss"), ("train/loss", "training loss"))


def as_float(value) -> float:
    """float(value), NaN when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def metric_unit(metric: str) -> str:
    """'dB' for PSNR metrics, '' for unitless ones."""
    return "dB" if "psnr" in metric else ""


def metric_group(metric: str) -> tuple[str, int]:
    """(forest panel axis label, decimals) of a metric's differences."""
    for key, label, decimals in METRIC_GROUPS:
        if key in metric:
            return label, decimals
    return f"difference in {metric}", 4


# ---- forest plot ----------------------------------------------------------------------------------

def forest_text(stats: Mapping, decimals: int = 2) -> str:
    """'Δ=+0.31 [+0.09, +0.71] p=0.05 n=36', with 'n/a' for missing or NaN numbers."""
    def num(key: str) -> str:
        x = as_float(stats.get(key))
        return f"{x:+.{decimals}f}" if math.isfinite(x) else "n/a"
    p = as_float(stats.get("p"))
    p_text = "p=n/a" if not math.isfinite(p) else ("p<0.001" if p < 0.001 else f"p={p:.2g}")
    n = as_float(stats.get("n_volumes"))
    n_text = str(int(n)) if math.isfinite(n) else "n/a"
    return f"Δ={num('delta')} [{num('ci95_low')}, {num('ci95_high')}] {p_text} n={n_text}"


def forest_rows(comparisons: Mapping[str, Mapping[str, Mapping]]) -> dict[str, list[tuple[str, str, Mapping]]]:
    """Panel label -> rows (comparison, metric, stats), in input order."""
    groups: dict[str, list[tuple[str, str, Mapping]]] = {}
    for name, metrics in comparisons.items():
        for metric, stats in metrics.items():
            groups.setdefault(metric_group(metric)[0], []).append((name, metric, stats))
    return groups


def forest_plot(path: Path | str, comparisons: Mapping[str, Mapping[str, Mapping]]) -> None:
    """Write `forest_figure` as a PNG."""
    write_png(forest_figure(comparisons), path)


def forest_figure(comparisons: Mapping[str, Mapping[str, Mapping]]) -> Figure:
    """Mean paired difference (point) and 95% interval per (comparison, metric): the interval over
    seeds and volumes (`ci95_low`/`ci95_high`) as a thick bar, the volume-only one (`volume_only`,
    when given) as a thin dark bar inside it; one panel per unit group, a zero line, a legend and the
    two-level numbers as text at the right."""
    groups = forest_rows(comparisons)
    rows = sum(len(r) for r in groups.values())
    fig = Figure(figsize=(10, 1.2 + 0.42 * rows + 0.9 * len(groups)), dpi=DPI, layout="constrained")
    if not groups:
        _empty(fig.add_subplot(), "no comparisons")
    else:
        axes = fig.subplots(len(groups), 1, squeeze=False,
                            gridspec_kw={"height_ratios": [len(r) + 1 for r in groups.values()]})[:, 0]
        colors = {name: f"C{i}" for i, name in enumerate(comparisons)}
        for ax, (label, group_rows) in zip(axes, groups.items()):
            _forest_panel(ax, label, group_rows, colors)
    fig.suptitle("Paired differences between variants over test volumes and training seeds (mean, 95% interval)",
                 fontsize=10)
    if groups:
        fig.legend(handles=[Line2D([], [], color="0.5", alpha=TWO_LEVEL_ALPHA, linewidth=TWO_LEVEL_WIDTH,
                                   label="95% interval over seeds and volumes (two-level t)"),
                            Line2D([], [], color="0.1", linewidth=VOLUME_ONLY_WIDTH,
                                   label="volume-only (seeds averaged, BCa)")],
                   loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


def _forest_panel(ax, label: str, rows: Sequence[tuple[str, str, Mapping]], colors: Mapping[str, str]) -> None:
    text_at = blended_transform_factory(ax.transAxes, ax.transData)
    finite = [0.0]
    for y, (name, metric, stats) in enumerate(rows):
        d, lo, hi = (as_float(stats.get(k)) for k in ("delta", "ci95_low", "ci95_high"))
        if math.isfinite(lo) and math.isfinite(hi):
            ax.hlines(y, lo, hi, color=colors[name], linewidth=TWO_LEVEL_WIDTH, alpha=TWO_LEVEL_ALPHA)
        inner = stats.get("volume_only") or {}
        vlo, vhi = as_float(inner.get("ci95_low")), as_float(inner.get("ci95_high"))
        if math.isfinite(vlo) and math.isfinite(vhi):
            ax.hlines(y, vlo, vhi, color="0.1", linewidth=VOLUME_ONLY_WIDTH)
            finite += [vlo, vhi]
        if math.isfinite(d):
            ax.plot([d], [y], "o", color=colors[name], markersize=6, markeredgecolor="0.1", zorder=3)
        else:
            ax.text(0.0, y, " n/a", va="center", ha="left", fontsize=8, color="0.4")
        finite += [x for x in (d, lo, hi) if math.isfinite(x)]
        ax.text(1.02, y, forest_text(stats, metric_group(metric)[1]), transform=text_at, va="center",
                ha="left", fontsize=8, family="monospace")
    ax.axvline(0.0, color="0.4", linestyle="--", linewidth=1)
    lo, hi = min(finite), max(finite)
    pad = 0.1 * (hi - lo) if hi > lo else 1.0
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks(range(len(rows)), [f"{n.replace('_vs_', ' vs ').replace('_', ' ')}: {m}" for n, m, _ in rows],
                  fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row at the top
    ax.set_xlabel(label, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")
    ax.set_axis_off()


# ---- paired per-volume plot -----------------------------------------------------------------------

def paired_values(table: pd.DataFrame, reference: str, variant: str, metric: str) -> pd.DataFrame:
    """Columns volume, x (reference value), y (variant value): rows paired on the volume column,
    non-finite values dropped, sorted by volume. Raises if a (variant, volume) appears twice."""
    def side(name: str) -> pd.DataFrame:
        return table.loc[table["variant"] == name, ["volume", metric]]
    merged = side(reference).merge(side(variant), on="volume", how="inner", suffixes=("_x", "_y"),
                                   validate="one_to_one")
    merged.columns = ["volume", "x", "y"]
    merged[["x", "y"]] = merged[["x", "y"]].astype(np.float64)
    keep = np.isfinite(merged[["x", "y"]].to_numpy()).all(axis=1)
    return merged[keep].sort_values("volume", kind="stable").reset_index(drop=True)


def paired_volume_plot(path: Path | str, table: pd.DataFrame, reference: str = "baseline",
                       variants: Sequence[str] = ("weighted", "oracle"), metric: str = "roi_psnr") -> None:
    """Write `paired_volume_figure` as a PNG."""
    write_png(paired_volume_figure(table, reference, variants, metric), path)


def paired_volume_figure(table: pd.DataFrame, reference: str = "baseline",
                         variants: Sequence[str] = ("weighted", "oracle"), metric: str = "roi_psnr") -> Figure:
    """Scatter of each variant's per-volume `metric` (y) against the reference's (x), with y = x."""
    fig = Figure(figsize=(6.0, 5.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    values = []
    for i, variant in enumerate(variants):
        pairs = paired_values(table, reference, variant, metric)
        if len(pairs):
            ax.scatter(pairs["x"], pairs["y"], marker=MARKERS[i % len(MARKERS)], color=f"C{i}", s=28, alpha=0.8,
                       label=f"{variant} (n={len(pairs)})")
            values.append(pairs[["x", "y"]].to_numpy().ravel())
    unit = f" ({metric_unit(metric)})" if metric_unit(metric) else ""
    if values:
        _identity_line(ax, np.concatenate(values))
        ax.legend(loc="best", fontsize=8)
    else:
        _empty(ax, "no paired volumes")
    ax.set_xlabel(f"{reference} {metric}{unit}")
    ax.set_ylabel(f"{' / '.join(variants)} {metric}{unit}")
    ax.set_title(f"{metric} per test volume, against {reference}\n(above the line: variant higher)", fontsize=10)
    return fig


def _identity_line(ax, values: np.ndarray) -> None:
    lo, hi = float(values.min()), float(values.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label="y = x (no change)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")


# ---- training curves ------------------------------------------------------------------------------

def run_styles(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Run label ('baseline s0') -> (colour, line style): colour by variant (before the first
    space), line style by seed (the rest), each in order of first appearance."""
    variants = list(dict.fromkeys(label.split(" ", 1)[0] for label in labels))
    seeds = list(dict.fromkeys(label.partition(" ")[2] for label in labels))
    return {label: (f"C{variants.index(label.split(' ', 1)[0]) % 10}",
                    LINESTYLES[seeds.index(label.partition(' ')[2]) % len(LINESTYLES)]) for label in labels}


def training_curves_plot(path: Path | str, histories: Mapping[str, Sequence[Mapping[str, float]]]) -> None:
    """Write `training_curves_figure` as a PNG."""
    write_png(training_curves_figure(histories), path)


def training_curves_figure(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """One panel per quantity (validation PSNR, validation loss, training loss), every run over
    1-based epochs; colour = variant, line style = seed, one legend."""
    styles = run_styles(list(histories))
    fig = Figure(figsize=(13.5, 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(CURVES), squeeze=False)[0]
    for ax, (key, title) in zip(axes, CURVES):
        for label, history in histories.items():
            color, style = styles[label]
            y = [as_float(epoch.get(key)) for epoch in history]
            ax.plot(range(1, len(y) + 1), y, color=color, linestyle=style, marker=".", markersize=4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, linestyle=s, marker=".", label=label) for label, (c, s) in styles.items()]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle("Training curves (colour = variant, line style = seed)", fontsize=10)
    return fig
