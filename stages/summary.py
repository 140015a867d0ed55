"""summary: where the results are, and the main metrics at a glance (run by `make repro` after dvc repro)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.errors import InputError
from stages.app import app, stage

VARIANTS = ("zero_filled", "baseline", "weighted", "oracle")


@app.command("summary")
@stage
def summary_cmd(
    metrics: Path = typer.Option(Path("reports/metrics.json"), help="evaluate's metrics (JSON)"),
    reports: Path = typer.Option(Path("reports"), help="reports directory"),
) -> None:
    """Where the results are, and the metrics as a table.

    Reads: reports/metrics.json, reports/evaluation.json, reports/.

    Writes: nothing."""
    if not metrics.is_file():
        raise InputError(f"{metrics}: no metrics yet (run `dvc repro` first)")
    try:
        m = json.loads(metrics.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{metrics}: not valid JSON ({exc})") from None
    detail_path = metrics.with_name("evaluation.json")
    if detail_path.is_file():
        d = json.loads(detail_path.read_text())
        typer.echo(f"{d.get('split')} split: {d.get('n_volumes')} volumes, {d.get('n_slices')} slices "
                   f"({d.get('n_roi_volumes')} volumes / {d.get('n_roi_slices')} slices with ROI boxes), "
                   f"seeds {d.get('seeds')}")
    typer.echo(metrics_table(m))
    typer.echo("")
    where = [
        ("metrics", metrics), ("comparison detail", reports / "evaluation.json"),
        ("per-volume metrics", reports / "per_volume.csv"), ("figures", reports / "figures"),
        ("error maps", reports / "error_maps"), ("Grad-CAM overlays", reports / "gradcam"),
        ("MRNet metrics", reports / "mrnet.json"), ("Grad-CAM metrics", reports / "gradcam.json"),
        ("training curves", reports / "live" / "unet"),
    ]
    for label, path in where:
        if path.is_dir():
            n = sum(1 for _ in path.rglob("*.png")) if label not in ("training curves",) else \
                len([d for d in path.iterdir() if d.is_dir()])
            what = "runs" if label == "training curves" else "PNGs"
            typer.echo(f"{label + ':':<22}{path}/ ({n} {what})")
        elif path.exists():
            typer.echo(f"{label + ':':<22}{path}")
    typer.echo("compare runs:         dvc metrics diff; dvc plots show (or dvc plots diff) -> dvc_plots/index.html")


def metrics_table(m: dict) -> str:
    """The tracked metrics as text: each variant's seed-averaged means, then each comparison with the
    baseline (paired by volume: delta, 95% bootstrap interval, Wilcoxon p). Also printed by `evaluate`."""
    cols = [("NMSE", "nmse", "{:.4f}"), ("PSNR", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"),
            ("ROI PSNR", "roi_psnr", "{:.2f}"), ("ROI SSIM", "roi_ssim", "{:.4f}")]
    lines = [f"{'':<13}" + "".join(f"{c:>10}" for c, _, _ in cols)]
    for v in VARIANTS:
        if v in m:
            lines.append(f"{v:<13}" + "".join(f"{_fmt(m[v].get(k), fmt):>10}" for _, k, fmt in cols))
    for name, by_metric in m.items():
        if "_vs_" not in name:
            continue
        for k, s in by_metric.items():
            lines.append(f"{name} {k}: delta {_fmt(s.get('delta'), '{:+.3f}')} "
                         f"[{_fmt(s.get('ci95_low'), '{:+.3f}')}, {_fmt(s.get('ci95_high'), '{:+.3f}')}], "
                         f"p {_fmt(s.get('p'), '{:.3g}')}")
    return "\n".join(lines)


def _fmt(x, fmt: str) -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else fmt.format(x)
