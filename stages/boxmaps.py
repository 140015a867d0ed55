"""boxmaps: the ground-truth boxes drawn as ROI maps, aligned with the slices store (the oracle's weights)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import InputError
from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, app, stage


@app.command("boxmaps")
@stage
def boxmaps_cmd(
    slices: Path = typer.Option(Path("data/slices.zarr"), help="slices store (defines the rows)"),
    annotations: Optional[Path] = typer.Option(None, help="fastMRI+ knee.csv-style boxes (default: data.annotations)"),
    out: Path = typer.Option(Path("data/boxmaps.zarr"), help="box-map store to write"),
    rejected: Path = typer.Option(Path("reports/annotations_rejected.csv"),
                                  help="CSV of the annotation rows left out, with the reason"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Oracle ROI maps: the ground-truth boxes as 0/1 maps.

    Reads: data/slices.zarr, data.annotations.

    Writes: data/boxmaps.zarr (1 inside each slice's boxes, else 0; the heatmaps store's layout),
    reports/annotations_rejected.csv (the box rows left out: unknown file, slice out of range, ...;
    the header alone when none).

    Params: data.annotations, data.annotation_frame."""
    owns(out, rejected)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.roi.box_maps import write_box_maps
    from pipeline.io.annotations import write_rejected
    from pipeline.roi.boxes import check_boxes
    from pipeline.stores.zarr_store import atomic_path, open_store
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    ann = p.data.annotations_path(annotations)
    if ann is None:
        raise InputError("data.annotations: the oracle variant needs ground-truth boxes (a fastMRI+ knee.csv)")
    store = open_store(slices, kind="slices")
    total = sum(store[s]["volume"].shape[0] for s in store.group_keys())
    checked = check_boxes(ann, slices, p.data.annotation_frame, "data.annotation_frame", rejected_csv=rejected)
    with atomic_path(out) as tmp, atomic_path(rejected) as tmp_rejected, bar(total, "boxmaps") as update:
        counts = write_box_maps(tmp, slices, checked, p.data.annotation_frame, update, "data.annotation_frame")
        write_rejected(tmp_rejected, checked.rejected)
    typer.echo(f"boxmaps: {out} (slices with boxes: {', '.join(f'{s} {n}' for s, n in counts.items())})")
