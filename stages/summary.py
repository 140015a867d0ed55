"""summary: where the results are, and the main metrics at a glance (run by `make repro` after dvc repro)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.errors import InputError
from stages.app import app, stage


@app.command("summary")
@stage
def summary_cmd(
    metrics: Path = typer.Option(Path("reports/metrics.json"), help="evaluate's metrics (JSON)"),
    reports: Path = typer.Option(Path("reports"), help="reports directory"),
) -> None:
    """Where the results are, and the metrics as a table.

    Each comparison reads as delta, its 95% interval over training seeds and test volumes and p
    (the tracked two-level numbers), then, from the detail JSON, the seed and volume counts and the
    volume-only interval and Wilcoxon p beside it.

    Reads: reports/metrics.json, reports/evaluation.json, reports/.

    Writes: nothing."""
    from pipeline.evaluation.reports import metrics_table

    if not metrics.is_file():
        raise InputError(f"{metrics}: no metrics yet (run `dvc repro` first)")
    try:
        m = json.loads(metrics.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{metrics}: not valid JSON ({exc})") from None
    detail_path = metrics.with_name("evaluation.json")
    d = None
    if detail_path.is_file():
        d = json.loads(detail_path.read_text())
        typer.echo(f"{d.get('split')} split: {d.get('n_volumes')} volumes, {d.get('n_slices')} slices "
                   f"({d.get('n_roi_volumes')} volumes / {d.get('n_roi_slices')} slices with ROI boxes), "
                   f"seeds {d.get('seeds')}")
    typer.echo("comparisons: delta, 95% interval over training seeds and test volumes, t-test p")
    typer.echo(metrics_table(m, d))
    typer.echo("")
    where = [
        ("metrics", metrics), ("comparison detail", reports / "evaluation.json"),
        ("per-volume metrics", reports / "per_volume.csv"), ("figures", reports / "figures"),
        ("error maps", reports / "error_maps"), ("Grad-CAM overlays", reports / "gradcam"),
        ("MRNet metrics", reports / "mrnet.json"), ("MRNet detail", reports / "mrnet_detail.json"),
        ("Grad-CAM metrics", reports / "gradcam.json"),
        ("Grad-CAM detail", reports / "gradcam_detail.json"),
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
