"""evaluate: zero-filled, baseline and weighted reconstructions of the test split, metrics and error maps."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.app import PARAMS_OPTION, app, stage
from stages.progress import bar
from stages.settings import load_params
from stages.summary import metrics_table


@app.command("evaluate")
@stage
def evaluate_cmd(
    slices: Path = typer.Option(Path("data/slices.zarr"), help="slices store (targets)"),
    undersampled: Path = typer.Option(Path("data/undersampled.zarr"), help="undersampled store (inputs)"),
    heatmaps: Path = typer.Option(Path("data/heatmaps.zarr"), help="Grad-CAM heatmaps store"),
    annotations: Optional[Path] = typer.Option(None, help="fastMRI+ knee.csv-style ROI boxes (default: data.annotations)"),
    models: Path = typer.Option(Path("models"), help="directory with unet_baseline.pt and unet_weighted.pt"),
    out: Path = typer.Option(Path("data/reconstructions.zarr"), help="reconstructions store to write"),
    metrics: Path = typer.Option(Path("reports/metrics.json"), help="metrics (JSON) to write"),
    per_volume: Path = typer.Option(Path("reports/per_volume.csv"), help="per-volume metrics (CSV) to write"),
    figures: Path = typer.Option(Path("reports/error_maps"), help="directory for the error-map PNGs"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Evaluate on the test split. Reads: the three stores, the ROI boxes, models/unet_{baseline,weighted}.pt.
    Writes: data/reconstructions.zarr, reports/metrics.json, reports/per_volume.csv, reports/error_maps/*.png.
    Params: data.annotations, evaluate.*. Metrics are fastMRI's (per volume, then mean), whole image and
    inside the ROI boxes, plus a heatmap-weighted NMSE; see pipeline/metrics.py."""
    # heavy imports here, not at module level: `roirecon <other stage>` should not pay for them
    from pipeline.evaluation import (MODELS, annotation_boxes, evaluate, load_models, roi_masks, write_metrics,
                                     write_per_volume, write_reconstructions)
    from pipeline.figures import write_error_maps
    from pipeline.unet_data import load_split

    p = load_params(params)
    e = p.evaluate
    ann = annotations if annotations is not None else (Path(p.data.annotations) if p.data.annotations else None)
    test = load_split(slices, undersampled, heatmaps, "test", keep_raw=True)
    models_ = load_models(models)
    boxes = annotation_boxes(ann, slices, test, e.frame)
    with bar(len(MODELS), "evaluate", unit="model") as update:
        ev = evaluate(test, models_, boxes, e.device, progress=update)
    write_reconstructions(out, test, ev, {"models": {v: ev.configs[v]["model"] for v in MODELS}})
    write_metrics(metrics, ev.metrics)
    write_per_volume(per_volume, ev.per_volume)
    roi = roi_masks(test, boxes)
    heat = test.heatmap[:, 0].numpy() if test.heatmap is not None else None
    pngs = write_error_maps(figures, test.volume, test.slice, test.target_raw, ev.recons, heat, roi, boxes,
                            e.n_figures)
    m = ev.metrics
    typer.echo(f"evaluate: {m['n_volumes']} test volumes ({m['n_roi_volumes']} with ROI boxes), "
               f"{m['n_slices']} slices -> {metrics}, {per_volume}, {out}, {len(pngs)} figures in {figures}")
    typer.echo(metrics_table(m))

