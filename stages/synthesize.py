"""synthesize: the embedded synthetic knee dataset in the fastMRI / fastMRI+ / MRNet formats."""
from __future__ import annotations

from pathlib import Path

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, app, stage


@app.command("synthesize")
@stage
def synthesize_cmd(
    out: Path = typer.Option(Path("data/synthetic"), help="output root"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Synthetic fastMRI volumes, fastMRI+ boxes and MRNet exams.

    Reads: nothing.

    Writes: OUT/fastmri/{train,val,test}/file*.h5 (fastMRI knee format), OUT/annotations.csv (fastMRI+ boxes),
    OUT/mrnet/ (MRNet-v1.0 exams).

    Params: seed, synthetic.*."""
    owns(out)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.stores.zarr_store import atomic_path
    from pipeline.synthetic.dataset import SyntheticSpec, synthesize
    from stages.progress import bar
    from stages.settings import load_params

    p = load_params(params)
    s = p.synthetic
    spec = SyntheticSpec(volumes=dict(s.volumes), slices=s.slices, recon_size=s.recon_size, coils=s.coils,
                         lesion_rate=s.lesion_rate, eval_lesion_rate=s.eval_lesion_rate,
                         noise=s.noise, exams=dict(s.exams), exam_slices=s.exam_slices)
    total = sum(s.volumes.values()) + sum(s.exams.values())
    with atomic_path(out) as tmp, bar(total, "synthesize", unit="volume") as update:
        synthesize(tmp, spec, p.seed, progress=update)
    typer.echo(f"synthesize: wrote {sum(s.volumes.values())} volumes and {sum(s.exams.values())} exams to {out}")
