"""train-mrnet: the MRNet abnormality classifier whose Grad-CAM maps mark regions of interest."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, app, named, stage

# what `dvc metrics diff` shows of the classifier: quality only (counts, threshold, best epoch,
# parameters: the detail JSON, which holds everything)
TRACKED = ("test.auc", "test.accuracy", "test.sensitivity", "test.specificity", "tune_auc")


@app.command("train-mrnet")
@stage
def train_mrnet_cmd(
    data_dir: Optional[Path] = typer.Option(None, help="classifier exams (default: mrnet.data_dir)"),
    out: Path = typer.Option(Path("models/mrnet.pt"), help="model file to write"),
    metrics: Path = typer.Option(Path("reports/mrnet.json"), help="tracked quality numbers (JSON)"),
    detail: Path = typer.Option(Path("reports/mrnet_detail.json"), help="every number, counts included (JSON)"),
    live: Optional[Path] = typer.Option(Path("reports/live/mrnet"), help="dvclive directory for the curves"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Train MRNet, the classifier whose Grad-CAM marks the ROIs.

    Reads: mrnet.data_dir (synthetic exams, MRNet-v1.0 or KneeMRI, see mrnet.source).

    Writes: models/mrnet.pt (state dict + config), reports/mrnet.json (tracked: test AUC, accuracy,
    sensitivity, specificity on the `valid` split, tune AUC), reports/mrnet_detail.json (the same
    with the exam counts, decision threshold, best epoch, parameter count), per-epoch curves under
    --live.

    Params: seed, mrnet.*."""
    owns(out, metrics, detail, live)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.models.mrnet import save_mrnet
    from pipeline.evaluation.reports import pick, write_json
    from pipeline.stores.zarr_store import atomic_path
    from pipeline.threads import share_cpus
    from pipeline.training.mrnet import progress_units, train_mrnet
    from stages.progress import bar, live_logger
    from stages.settings import load_params

    p = load_params(params)
    m = p.mrnet
    root = data_dir or Path(m.data_dir)
    splits = exam_splits(p, root)
    train, test = splits["train"], splits["valid"]
    cfg = train_config(m, p.seed)
    extra = {"source": m.source, "plane": m.plane, "task": m.task, "data_dir": str(root)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(share_cpus(m.device))
        update = stack.enter_context(bar(progress_units(train, test, cfg), "train-mrnet", unit="exam"))
        log = stack.enter_context(live_logger(live))
        with named(pretrained="mrnet.pretrained"):
            result = train_mrnet(train, test, cfg, log=log, progress=update, extra_config=extra)
        model_tmp = stack.enter_context(atomic_path(out))
        save_mrnet(model_tmp, result.model, result.config)
        write_json(metrics, pick(result.metrics, TRACKED))
        write_json(detail, result.metrics)
    t = result.metrics["test"]
    typer.echo(f"train-mrnet: {out} (best epoch {result.metrics['best_epoch']}), test AUC {t['auc']:.3f}, "
               f"accuracy {t['accuracy']:.3f}, sensitivity {t['sensitivity']:.3f}, "
               f"specificity {t['specificity']:.3f} on {t['n']} exams")


def exam_splits(p, root: Path) -> dict:
    """The classifier's exams per split (`train`, `valid`) under `root`, as `mrnet.*` says."""
    from pipeline.io.classifier import list_splits
    m = p.mrnet
    with named(task="mrnet.task"):
        return list_splits(m.source, root, plane=m.plane, task=m.task, roi_crop=m.kneemri_roi_crop,
                           valid_fraction=m.kneemri_valid_fraction, seed=p.seed)


def train_config(m, seed: int):
    """MRNet's training config from the `mrnet` settings and a seed."""
    from pipeline.training.mrnet import MRNetTrainConfig
    return MRNetTrainConfig(image_size=m.image_size, epochs=m.epochs, lr=m.lr, weight_decay=m.weight_decay,
                            tune_fraction=m.tune_fraction, augment=m.augment, device=m.device, seed=seed,
                            pretrained=m.pretrained, norm=m.norm, schedule=m.schedule)
