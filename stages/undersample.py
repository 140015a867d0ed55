"""undersample: the fastMRI files under a fastMRI mask into the undersampled store (zero-filled inputs)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, RAW_DIR_OPTION, app, named, slice_counts, stage


@app.command("undersample")
@stage
def undersample_cmd(
    raw_dir: Optional[Path] = RAW_DIR_OPTION,
    out: Path = typer.Option(Path("data/undersampled.zarr"), help="undersampled store to write"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Zero-filled inputs: the k-space under a fastMRI mask.

    Reads: data.raw_dir (fastMRI h5).

    Writes: data/undersampled.zarr (image, mean, std, mask per split).

    Params: data.*, mask.*."""
    owns(out)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.parallel import worker_count
    from pipeline.slice_stores import MaskSpec, build_undersampled_store, scan
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    raw = raw_dir or Path(p.data.raw_dir)
    m = p.mask
    spec = MaskSpec(m.type, m.acceleration, m.center_fraction)
    with named(crop="data.crop", test_from_val="data.test_from_val"):
        scans = scan(raw, p.data.challenge, p.data.crop, test_from_val=p.data.test_from_val)
    total = sum(i.n_slices for infos in scans.values() for i in infos)
    with bar(total, "undersample") as update:
        counts = build_undersampled_store(out, scans, raw_dir=str(raw), challenge=p.data.challenge,
                                          crop=p.data.crop, mask=spec, workers=worker_count(p.data.workers),
                                          progress=update)
    typer.echo(f"undersample: {out} ({slice_counts(counts)}, {m.type} mask, {m.acceleration:g}x)")
