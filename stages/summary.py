"""summary: where the results are, and the main metrics at a glance (run by `make repro` after dvc repro)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.errors import InputError
from stages.app import app, stage

VARIANTS = ("zero_filled", "baseline", "weighted")


@app.command("summary")
@stage
def summary_cmd(
    metrics: Path = typer.Option(Path("reports/metrics.json"), help="evaluate's metrics (JSON)"),
    reports: Path = typer.Option(Path("reports"), help="reports directory"),
) -> None:
    """Print where the metrics, plots and pictures are, and a table of reports/metrics.json."""
    if not metrics.is_file():
        raise InputError(f"{metrics}: no metrics yet (run `dvc repro` first)")
    try:
        m = json.loads(metrics.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{metrics}: not valid JSON ({exc})") from None
    typer.echo(f"Test split: {m.get('n_volumes')} volumes, {m.get('n_slices')} slices "
               f"({m.get('n_roi_volumes')} volumes / {m.get('n_roi_slices')} slices with ROI boxes)")
    typer.echo(metrics_table(m))
    gains = [(k, m.get(f"gain_weighted_vs_{ref}_{k}")) for ref in ("baseline",) for k in ("psnr", "ssim", "roi_psnr", "roi_ssim")]
    typer.echo("weighted - baseline: " + ", ".join(
        f"{k} {v:+.4g}" for k, v in gains if isinstance(v, (int, float))))
    typer.echo("")
    where = [
        ("metrics", metrics), ("per-volume metrics", reports / "per_volume.csv"),
        ("error maps", reports / "error_maps"), ("Grad-CAM overlays", reports / "gradcam"),
        ("MRNet metrics", reports / "mrnet.json"), ("Grad-CAM metrics", reports / "gradcam.json"),
        ("training curves", reports / "live"),
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
    """A short fixed-width table of evaluate's flat metrics dict (also printed by `evaluate`)."""
    cols = [("NMSE", "nmse", "{:.4f}"), ("PSNR", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"),
            ("ROI NMSE", "roi_nmse", "{:.4f}"), ("ROI PSNR", "roi_psnr", "{:.2f}"), ("ROI SSIM", "roi_ssim", "{:.4f}"),
            ("heat NMSE", "heatmap_nmse", "{:.4f}"), ("ms/slice", "ms_per_slice", "{:.2f}")]
    lines = [f"{'':<12}" + "".join(f"{c:>10}" for c, _, _ in cols)]
    for v in VARIANTS:
        cells = []
        for _, k, fmt in cols:
            x = m.get(f"{v}_{k}")
            cells.append(f"{'-':>10}" if not isinstance(x, (int, float)) or x != x else f"{fmt.format(x):>10}")
        lines.append(f"{v:<12}" + "".join(cells))
    return "\n".join(lines)
