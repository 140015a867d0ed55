"""prepare: the fully sampled targets of the fastMRI files into the slices store."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, RAW_DIR_OPTION, app, named, slice_counts, stage


@app.command("prepare")
@stage
def prepare_cmd(
    raw_dir: Optional[Path] = RAW_DIR_OPTION,
    out: Path = typer.Option(Path("data/slices.zarr"), help="slices store to write"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Fully sampled target slices from the fastMRI files.

    Reads: data.raw_dir (fastMRI h5).

    Writes: data/slices.zarr (volume, slice, target per split).

    Params: data.*."""
    owns(out)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.parallel import worker_count
    from pipeline.slice_stores import build_slices_store, scan
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    raw = raw_dir or Path(p.data.raw_dir)
    with named(crop="data.crop", test_from_val="data.test_from_val"):
        scans = scan(raw, p.data.challenge, p.data.crop, test_from_val=p.data.test_from_val)
    total = sum(i.n_slices for infos in scans.values() for i in infos)
    with bar(total, "prepare") as update:
        counts = build_slices_store(out, scans, raw_dir=str(raw), challenge=p.data.challenge, crop=p.data.crop,
                                    workers=worker_count(p.data.workers), progress=update)
    typer.echo(f"prepare: {out} ({slice_counts(counts)})")
