"""gradcam: MRNet class-activation (Grad-CAM) ROI heatmaps for every slice of the slices store, scored
against boxes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, RAW_DIR_OPTION, app, named, stage

SCORED_SPLIT = "test"
# the intervals of the localisation scores: fixed, not params (the same maps always give the same numbers)
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 10000, 0


@app.command("gradcam")
@stage
def gradcam_cmd(
    slices: Path = typer.Option(Path("data/slices.zarr"), help="slices store (fully sampled targets)"),
    raw_dir: Optional[Path] = RAW_DIR_OPTION,
    model: Path = typer.Option(Path("models/mrnet.pt"), help="trained MRNet"),
    annotations: Optional[Path] = typer.Option(None, help="fastMRI+ knee.csv-style boxes (default: data.annotations)"),
    out: Path = typer.Option(Path("data/heatmaps.zarr"), help="heatmaps store to write"),
    metrics: Path = typer.Option(Path("reports/gradcam.json"), help="pointing game / energy in box (JSON)"),
    detail: Path = typer.Option(Path("reports/gradcam_detail.json"),
                                help="every score with its interval, per label (JSON)"),
    overlays: Path = typer.Option(Path("reports/gradcam"), help="directory for overlay PNGs"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Grad-CAM ROI heatmaps per slice, scored against the boxes.

    Reads: data/slices.zarr, models/mrnet.pt, data.annotations, data.raw_dir (each scored volume's
    `acquisition`).

    Writes: data/heatmaps.zarr (heatmap in [0, 1] per slice, aligned with the slices store),
    reports/gradcam.json (tracked, quality only: pointing game at 0 and 15 px and energy in box on
    the annotated test slices, the location prior's pointing game at 15 px),
    reports/gradcam_detail.json (every score with its 95% bootstrap interval over volumes, overall,
    per label and for the location prior, and split by MRNet's call on each volume at its tune
    threshold, and by each volume's contrast, the fastMRI files' `acquisition`; chance levels, counts
    and settings), reports/gradcam/*.png.

    Params: gradcam.*, data.annotations, data.annotation_frame, data.raw_dir, data.test_from_val."""
    owns(out, metrics, detail, overlays)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.roi.boxes import check_boxes, split_boxes
    from pipeline.roi.gradcam import (GradCAMSpec, call_threshold, check_layer, source_mismatch, volume_calls,
                                      write_heatmaps)
    from pipeline.evaluation.gradcam_report import score_heatmaps, slices_shapes
    from pipeline.io.fastmri import split_acquisitions
    from pipeline.models.mrnet import load_mrnet
    from pipeline.evaluation.reports import write_json
    from pipeline.roi.scores import frame_tolerances, location_prior, tracked_metrics
    from pipeline.stores.zarr_store import atomic_path, open_store, read_rows, split_group
    from pipeline.threads import share_cpus
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    g = p.gradcam
    spec = GradCAMSpec(layer=g.layer, smooth_sigma=g.smooth_sigma, method=g.method)
    net, config = load_mrnet(model)
    with named(layer="gradcam.layer"):
        check_layer(net, spec.layer)
    shapes = slices_shapes(slices)
    warning = source_mismatch(config, open_store(slices, kind="slices").attrs.get("raw_dir"))
    if warning:
        typer.echo(f"gradcam: {warning}", err=True)
    ann = p.data.annotations_path(annotations)
    # the boxes are read and checked before the long part
    checked = check_boxes(ann, slices, p.data.annotation_frame, "data.annotation_frame") if ann else None
    boxes = split_boxes(checked, slices, SCORED_SPLIT, shapes[SCORED_SPLIT][1], p.data.annotation_frame,
                        "data.annotation_frame")
    tolerances = frame_tolerances(checked.frames) if checked else {}
    # each scored volume's contrast, from its fastMRI file (a classifier may see the lesions on one
    # contrast and not on the other), read before the long part too
    scored = split_group(open_store(slices, kind="slices"), SCORED_SPLIT, slices)["volume"]
    with named(test_from_val="data.test_from_val"):
        acquisitions = split_acquisitions(raw_dir or Path(p.data.raw_dir), SCORED_SPLIT,
                                          sorted(set(read_rows(scored))), test_from_val=p.data.test_from_val)
    # where lesions tend to be: the mean box mask of the training slices, a baseline for the maps
    train_boxes = split_boxes(checked, slices, "train", shapes["train"][1], p.data.annotation_frame,
                              "data.annotation_frame")
    crop = shapes[SCORED_SPLIT][1]
    prior = location_prior((crop, crop), {k: [b for b, _ in v] for k, v in train_boxes.items()})
    with share_cpus("cpu"), atomic_path(out) as tmp_out, atomic_path(overlays) as tmp_fig:
        with bar(sum(n for n, _ in shapes.values()), "gradcam") as update:
            counts = write_heatmaps(tmp_out, slices, net, config, spec, progress=update,
                                    attrs={"model": str(model), "annotations": str(ann)})
        # the maps can only find what the classifier sees: scored apart on the volumes it calls abnormal
        threshold = call_threshold(config)
        called = {v: prob >= threshold for v, prob in volume_calls(net, config, slices, SCORED_SPLIT).items()}
        scores = score_heatmaps(tmp_out, slices, SCORED_SPLIT, boxes, g.n_overlays, tmp_fig, tolerances,
                                method=spec.method, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                                prior=prior, called=called, acquisitions=acquisitions)
        calls = {"threshold": threshold, "n_volumes_called_abnormal": sum(called.values()), "n_volumes": len(called)}
        about = {"method": spec.method, "layer": spec.layer, "smooth_sigma": spec.smooth_sigma,
                 "annotations": str(ann) if ann else None}
        write_json(detail, {"split": SCORED_SPLIT, **about, "slices": counts, "calls": calls, **scores, "bootstrap": {
            "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
            "method": "BCa, volumes resampled, slice-pooled ratio"}})
        write_json(metrics, {SCORED_SPLIT: tracked_metrics(scores)})   # quality only: settings, counts in detail
    o = scores["overall"]
    typer.echo(f"gradcam: {out} ({', '.join(f'{s} {n}' for s, n in counts.items())} slices); "
               f"{SCORED_SPLIT}: pointing game {o['pointing_game']['mean']:.3f}, at 15 px "
               f"{o['pointing_game_15px']['mean']:.3f}, energy in box {o['energy_in_box']['mean']:.3f} "
               f"(chance {o['chance']['mean']:.3f}) over {o['n_slices']} annotated slices")
    if "location_prior" in scores:
        lp = scores["location_prior"]
        typer.echo(f"gradcam: the train boxes' location prior scores pointing game {lp['pointing_game']['mean']:.3f}, "
                   f"at 15 px {lp['pointing_game_15px']['mean']:.3f}, energy in box {lp['energy_in_box']['mean']:.3f}")
    by_call, prior_by_call = scores["by_call"], scores.get("location_prior_by_call")

    def pointing(groups: dict, prior_groups: Optional[dict], group: str) -> str:
        text = f"{groups[group]['pointing_game_15px']['mean']:.3f}"
        return text + (f" (the prior {prior_groups[group]['pointing_game_15px']['mean']:.3f})" if prior_groups else "")

    typer.echo(f"gradcam: on the {by_call['abnormal']['n_volumes']} annotated volumes MRNet calls abnormal pointing "
               f"game at 15 px {pointing(by_call, prior_by_call, 'abnormal')}; on the {by_call['normal']['n_volumes']} "
               f"it calls normal {pointing(by_call, prior_by_call, 'normal')} (threshold {threshold:.3f})")
    by_acq, prior_by_acq = scores["by_acquisition"], scores.get("location_prior_by_acquisition")
    typer.echo("gradcam: by contrast, pointing game at 15 px " + "; ".join(
        f"{acq} ({by_acq[acq]['n_volumes']} volumes) {pointing(by_acq, prior_by_acq, acq)}" for acq in by_acq))
