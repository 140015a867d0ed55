"""evaluate: zero-filled and every U-Net (variant x seed) on one split; paired comparisons with the baseline."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, RAW_DIR_OPTION, app, named, stage


@app.command("evaluate")
@stage
def evaluate_cmd(
    slices: Path = typer.Option(Path("data/slices.zarr"), help="slices store (targets)"),
    raw_dir: Optional[Path] = RAW_DIR_OPTION,
    undersampled: Path = typer.Option(Path("data/undersampled.zarr"), help="undersampled store (inputs)"),
    heatmaps: Path = typer.Option(Path("data/heatmaps.zarr"), help="Grad-CAM heatmaps store (figures, heatmap NMSE)"),
    annotations: Optional[Path] = typer.Option(None, help="fastMRI+ knee.csv-style ROI boxes (default: data.annotations)"),
    models: Path = typer.Option(Path("models/unet"), help="directory with <variant>_s<seed>.pt for every variant and seed"),
    out: Path = typer.Option(Path("data/reconstructions.zarr"), help="reconstructions store to write"),
    metrics: Path = typer.Option(Path("reports/metrics.json"), help="tracked metrics (JSON, at most 40 numbers)"),
    detail: Path = typer.Option(Path("reports/evaluation.json"), help="all comparisons, seed SDs, counts (JSON)"),
    per_volume: Path = typer.Option(Path("reports/per_volume.csv"), help="per (variant, seed, volume) metrics (CSV)"),
    figures: Path = typer.Option(Path("reports/figures"), help="directory for the comparison figures"),
    error_maps: Path = typer.Option(Path("reports/error_maps"), help="directory for the error-map PNGs"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Score zero-filled and all U-Nets: metrics, tests, figures.

    Runs on evaluate.split (test for the final numbers, val for tuning). Metrics are fastMRI's (per volume,
    then mean), whole image and inside the ROI boxes; comparisons are paired by seed and volume, with a
    95% interval over both (two-level t, Satterthwaite df) and its t-test p; the volume-only BCa
    interval and Wilcoxon p (seeds averaged) go to the detail JSON (pipeline/stats.py).

    Reads: the three stores, the ROI boxes, models/unet/<variant>_s<seed>.pt for baseline, weighted and
    oracle and every seed in unet.seeds, data.raw_dir (each volume's `acquisition`: the comparisons
    are also made on each contrast's volumes alone).

    Writes: data/reconstructions.zarr, reports/metrics.json, reports/evaluation.json,
    reports/per_volume.csv, reports/figures/*.png, reports/error_maps/*.png.

    Params: evaluate.*, unet.seeds and the unet.* widths (a checkpoint of other widths is refused),
    data.annotations, data.annotation_frame, data.raw_dir, data.test_from_val."""
    owns(out, metrics, detail, per_volume, figures, error_maps)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.evaluation.evaluate import (annotation_boxes, evaluate, model_runs, reconstructions_writer,
                                              summarize_evaluation, write_per_volume)
    from pipeline.models.registry import model_config
    from pipeline.evaluation.report_figures import error_map_rows, write_figures
    from pipeline.io.fastmri import split_acquisitions
    from pipeline.evaluation.reports import metrics_table, write_json
    from pipeline.threads import share_cpus
    from pipeline.stores.unet_data import SliceStores
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    e, u = p.evaluate, p.unet
    ann = p.data.annotations_path(annotations)
    runs = model_runs(models, u.seeds)
    stores = SliceStores(slices, undersampled, heatmaps, e.split, raw=True)
    boxes = annotation_boxes(ann, slices, e.split, stores.crop, p.data.annotation_frame, "data.annotation_frame")
    rows = error_map_rows(stores, boxes, e.n_figures)
    with named(test_from_val="data.test_from_val"):
        acquisitions = split_acquisitions(raw_dir or Path(p.data.raw_dir), e.split,
                                          [v for v, _ in stores.volumes()], test_from_val=p.data.test_from_val)
    with share_cpus(e.device), reconstructions_writer(out, stores, {"seeds": list(u.seeds)}) as write, \
            bar(len(stores.volumes()), f"evaluate {e.split}: {len(runs) + 1} runs", unit="volume") as update:
        ev = evaluate(stores, runs, boxes, e.device, keep_rows=rows, on_recon=write, progress=update,
                      expected_model=model_config(u.arch, u.chans, u.num_pool_layers, u.drop_prob, u.residual),
                      expected_label="unet.* in params.yaml", workers=e.num_workers)
    tracked, info, table = summarize_evaluation(ev, e.bootstrap_resamples, acquisitions)
    write_per_volume(per_volume, ev.per_volume)
    write_json(metrics, tracked)
    write_json(detail, info)
    n_png = write_figures(figures, error_maps, ev, table, info, boxes, rows)
    typer.echo(f"evaluate: {info['n_volumes']} {e.split} volumes ({info['n_roi_volumes']} with ROI boxes), "
               f"{info['n_slices']} slices, {len(runs)} U-Nets -> {metrics}, {detail}, {per_volume}, {out}, "
               f"{n_png} figures")
    typer.echo(metrics_table(tracked, info))
