"""gradcam: MRNet Grad-CAM ROI heatmaps for every slice of the slices store, scored against boxes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stages.app import PARAMS_OPTION, app, named, stage

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
    from pipeline.gradcam import GradCAMSpec, check_layer, write_heatmaps
    from pipeline.gradcam_report import score_heatmaps, slices_shapes
    from pipeline.models.mrnet import load_mrnet
    from pipeline.reports import write_json
    from pipeline.boxes import split_boxes
    from pipeline.store import atomic_path
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    g = p.gradcam
    spec = GradCAMSpec(layer=g.layer, smooth_sigma=g.smooth_sigma)
    net, config = load_mrnet(model)
    with named(layer="gradcam.layer"):
        check_layer(net, spec.layer)
    shapes = slices_shapes(slices)
    ann = annotations or (Path(p.data.annotations) if p.data.annotations else None)
    # the boxes are read and checked before the long part
    boxes = split_boxes(ann, slices, SCORED_SPLIT, shapes[SCORED_SPLIT][1], p.data.annotation_frame,
                        "data.annotation_frame")
    with atomic_path(out) as tmp_out, atomic_path(overlays) as tmp_fig:
        with bar(sum(n for n, _ in shapes.values()), "gradcam") as update:
            counts = write_heatmaps(tmp_out, slices, net, config, spec, progress=update,
                                    attrs={"model": str(model), "annotations": str(ann)})
        scores = score_heatmaps(tmp_out, slices, SCORED_SPLIT, boxes, g.n_overlays, tmp_fig)
        write_json(metrics, {SCORED_SPLIT: scores, "layer": spec.layer, "smooth_sigma": spec.smooth_sigma,
                             "annotations": str(ann) if ann else None, "slices": counts})
    typer.echo(f"gradcam: {out} ({', '.join(f'{s} {n}' for s, n in counts.items())} slices); "
               f"{SCORED_SPLIT}: pointing game {scores['pointing_game']:.3f}, energy in box "
               f"{scores['energy_in_box']:.3f} (chance {scores['chance']:.3f}) over {scores['n_slices']} annotated slices")
