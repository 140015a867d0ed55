"""reconstruct: new fastMRI knee files through a trained U-Net, written as fastMRI reconstructions.
Not a DVC stage: a command for data outside the pipeline (fastMRI's test or challenge files, a new scan)."""
from __future__ import annotations

from pathlib import Path

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import app, named, stage


@app.command("reconstruct")
@stage
def reconstruct_cmd(
    files: list[Path] = typer.Argument(..., metavar="FILE.h5...",
                                       help="fastMRI knee HDF5 files (fully sampled or already undersampled)"),
    model: Path = typer.Option(..., "--model", help="U-Net checkpoint written by train-unet (models/unet/*.pt)"),
    out: Path = typer.Option(..., "--out", help="directory for the reconstructions (one FILE name each)"),
    batch_size: int = typer.Option(8, help="slices per forward pass (k-space is read this many slices at a time)"),
    device: str = typer.Option("auto", help="auto (CUDA when present) | cpu | cuda"),
) -> None:
    """Reconstruct new fastMRI files with a trained U-Net.

    A fully sampled file is undersampled with the checkpoint's own mask (type, acceleration, center
    fraction; one mask per volume seeded from the file name, as the undersample stage does); a file that
    is already undersampled (fastMRI test and challenge files: a `mask` dataset and an `acceleration`
    attr) is used as it is, with a warning when its acceleration differs from the checkpoint's. Inputs
    are normalised as in training and the model runs in fp32.

    Reads: FILE.h5 ... (kspace; single- or multi-coil, as the checkpoint was trained), the --model
    checkpoint (its weights and acquisition settings: challenge, crop, mask).

    Writes: <out>/<FILE name>, each with a float32 `reconstruction` dataset (slices, crop, crop), the
    layout of fastMRI's save_reconstructions: score them with fastMRI's evaluate.py.

    Params: none (everything comes from the checkpoint)."""
    owns(out)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.reconstruct import reconstruct
    from pipeline.threads import share_cpus
    from pipeline.training.device import select_device
    from stages.progress import bar

    with share_cpus(device), named(batch_size="--batch-size"):
        done = reconstruct(files, model, out, device=select_device(device), batch_size=batch_size,
                           warn=lambda line: typer.echo(f"warning: {line}", err=True), bar=bar)
    n_slices = sum(d.n_slices for d in done)
    given = sum(d.undersampled for d in done)
    how = f"; {given} already undersampled, used as they are" if given else ""
    typer.echo(f"reconstruct: {len(done)} file(s), {n_slices} slices -> {out}{how}")
