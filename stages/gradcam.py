"""gradcam: MRNet Grad-CAM ROI heatmaps for every slice of the slices store, scored against boxes."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from stages.app import PARAMS_OPTION, app, stage

SCORED_SPLIT = "test"


@app.command("gradcam")
@stage
def gradcam_cmd(
    slices: Path = typer.Option(Path("data/slices.zarr"), help="slices store (fully sampled targets)"),
    model: Path = typer.Option(Path("models/mrnet.pt"), help="trained MRNet"),
    annotations: Optional[Path] = typer.Option(None, help="fastMRI+ knee.csv-style boxes (default: data.annotations)"),
    out: Path = typer.Option(Path("data/heatmaps.zarr"), help="heatmaps store to write"),
    metrics: Path = typer.Option(Path("reports/gradcam.json"), help="pointing game / energy in box (JSON)"),
    overlays: Path = typer.Option(Path("reports/gradcam"), help="directory for overlay PNGs"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Grad-CAM ROI heatmaps per slice, scored against the boxes.

    Reads: data/slices.zarr, models/mrnet.pt, data.annotations.

    Writes: data/heatmaps.zarr (heatmap in [0, 1] per slice, aligned with the slices store),
    reports/gradcam.json (pointing game, energy in box on annotated test slices), reports/gradcam/*.png.

    Params: gradcam.*, data.annotations, data.annotation_frame."""
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    import numpy as np
    import zarr

    from pipeline.figures_gradcam import overlay_png, pick_evenly
    from pipeline.gradcam import (GradCAMSpec, annotated_slices, check_layer, check_slices_split,
                                  write_heatmaps)
    from pipeline.models.mrnet import load_mrnet
    from pipeline.reports import write_json
    from pipeline.roi_scores import score_slices, split_boxes
    from pipeline.store import SPLITS, atomic_path, open_store, split_group
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    g = p.gradcam
    spec = GradCAMSpec(layer=g.layer, smooth_sigma=g.smooth_sigma)
    net, config = load_mrnet(model)
    check_layer(net, spec.layer)
    store = open_store(slices, kind="slices")
    shapes = {s: check_slices_split(split_group(store, s, slices), slices, s) for s in SPLITS}
    test = store[SCORED_SPLIT]
    crop = shapes[SCORED_SPLIT][1]
    ann_path = annotations or (Path(p.data.annotations) if p.data.annotations else None)
    # the boxes are read and checked before the long part
    boxes = split_boxes(ann_path, slices, SCORED_SPLIT, crop, p.data.annotation_frame, "data.annotation_frame")
    total = sum(n for n, _ in shapes.values())

    with contextlib.ExitStack() as stack:
        tmp_out = stack.enter_context(atomic_path(out))
        tmp_fig = stack.enter_context(atomic_path(overlays))
        with bar(total, "gradcam") as update:
            counts = write_heatmaps(tmp_out, slices, net, config, spec, progress=update,
                                    attrs={"model": str(model), "annotations": str(ann_path)})
        heat = zarr.open_group(str(tmp_out), mode="r")[SCORED_SPLIT]
        rows = annotated_slices(heat, boxes)
        maps = heat["heatmap"]
        scores = score_slices((maps[r], b, labels) for r, _, _, b, labels in rows)
        report = {SCORED_SPLIT: scores, "layer": spec.layer, "smooth_sigma": spec.smooth_sigma,
                  "annotations": str(ann_path) if ann_path else None,
                  "slices": counts}
        tmp_fig.mkdir(parents=True)
        for r, name, k, b, labels in pick_evenly(rows, g.n_overlays):
            overlay_png(tmp_fig / f"{Path(name).stem}_s{k:03d}.png", np.asarray(test["target"][r]),
                        np.asarray(maps[r]), b, labels,
                        f"MRNet Grad-CAM, {name} slice {k} ({SCORED_SPLIT} split)")
        write_json(metrics, report)
    pg = scores["pointing_game"]
    typer.echo(f"gradcam: {out} ({', '.join(f'{s} {n}' for s, n in counts.items())} slices); "
               f"{SCORED_SPLIT}: pointing game {pg:.3f}, energy in box {scores['energy_in_box']:.3f} "
               f"(chance {scores['chance']:.3f}) over {scores['n_slices']} annotated slices")
