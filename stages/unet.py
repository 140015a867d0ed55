"""train-unet: the reconstruction U-Net for one variant and seed: baseline (plain loss), weighted (loss
up-weighted by the Grad-CAM heatmaps) or oracle (up-weighted by the ground-truth box maps)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import InputError
from pipeline.stores.tmp_sweep import owns
from stages.app import PARAMS_OPTION, app, named, rerun_under_torchrun, stage


@app.command("train-unet")
@stage
def train_unet_cmd(
    ctx: typer.Context,
    variant: str = typer.Option(..., help="baseline (plain loss) | weighted (Grad-CAM maps) | oracle (box maps)"),
    seed: int = typer.Option(..., help="training seed (one of unet.seeds): model init and shuffling"),
    slices: Path = typer.Option(Path("data/slices.zarr"), help="slices store (targets)"),
    undersampled: Path = typer.Option(Path("data/undersampled.zarr"), help="undersampled store (inputs)"),
    heatmaps: Optional[Path] = typer.Option(
        None, help="ROI map store that weights the loss: data/heatmaps.zarr (weighted), data/boxmaps.zarr (oracle)"),
    out: Optional[Path] = typer.Option(None, help="weights to write (default models/unet/<variant>_s<seed>.pt)"),
    live: Optional[Path] = typer.Option(None, help="dvclive directory for the per-epoch curves"),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, help="resume checkpoints, kept outside DVC outs (default .roirecon/checkpoints/<variant>_s<seed>)"),
    stop_after_epochs: Optional[int] = typer.Option(
        None, min=1, help="end this run after N epochs, keeping the resume checkpoint (time-limited jobs); "
                          "the next run continues"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Train one U-Net (variant x seed), keep the best epoch.

    Trains on the train split and validates on val each epoch, streaming slices from the stores;
    resumes an interrupted run with the same config from --checkpoint-dir. With unet.nproc > 1 the
    command runs itself under torchrun with that many processes (DDP, one GPU each); it also runs
    under a torchrun you start yourself (multi-node).

    Reads: the slices and undersampled stores, and for weighted/oracle the ROI map store.

    Writes: models/unet/<variant>_s<seed>.pt (state dict + config with the per-epoch history and
    the acquisition the inputs were made with), per-epoch curves under --live.

    Params: unet.* (not unet.seeds), loss.kind, loss.ssim_weight; loss.roi_weight, roi_norm,
    roi_margin, roi_soft and background_weight (weighted/oracle only)."""
    run = f"{variant}_s{seed}"
    out, checkpoint_dir = out or Path(f"models/unet/{run}.pt"), checkpoint_dir or Path(".roirecon/checkpoints") / run
    owns(out, live, checkpoint_dir)  # first: sweep what a killed run left (tmp_sweep)
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.models.registry import model_config
    from pipeline.threads import share_cpus
    from pipeline.training.unet import (CURVE_KEYS, ROI_VARIANTS, TrainConfig, epoch_line, is_main_process,
                                        result_line, train_unet)
    from pipeline.stores.unet_data import SliceStores, acquisition
    from stages.progress import bar, live_logger
    from stages.settings import load_params

    p = load_params(params)
    u, lo = p.unet, p.loss
    if variant in ROI_VARIANTS and heatmaps is None:
        raise InputError(f"train-unet {variant}: --heatmaps is required (the ROI maps that weight the loss)")
    if u.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return rerun_under_torchrun(ctx, u.nproc, f"unet.nproc {u.nproc}")
    with named(variant="--variant"):
        cfg = TrainConfig(variant=variant, model=model_config(u.arch, u.chans, u.num_pool_layers, u.drop_prob,
                                                              u.residual),
                          epochs=u.epochs, batch_size=u.batch_size, lr=u.lr, loss_kind=lo.kind,
                          ssim_weight=lo.ssim_weight, **lo.weighting_for(variant in ROI_VARIANTS),
                          seed=seed, device=u.device, val_volumes=u.val_volumes, deterministic=u.deterministic,
                          compile=u.compile)
    heatmaps = heatmaps if variant in ROI_VARIANTS else None
    main = is_main_process()
    train = SliceStores(slices, undersampled, heatmaps, "train")
    val = SliceStores(slices, undersampled, heatmaps, "val", raw=True)
    stores = {"slices": str(slices), "undersampled": str(undersampled), "heatmaps": str(heatmaps) if heatmaps else None}
    with share_cpus(u.device), live_logger(live if main else None) as log:
        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            log({k: v for k, v in m.items() if k in CURVE_KEYS})
            typer.echo(epoch_line(epoch, cfg.epochs, m))

        result = train_unet(train, val, cfg, out, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch,
                            bar=bar if main else None, workers=u.num_workers, stop_after=stop_after_epochs,
                            extra_config={"stores": stores, "acquisition": acquisition(undersampled)})
    if main and not result.finished:
        typer.echo(f"train-unet {run}: stopped after epoch {len(result.history)}/{cfg.epochs} "
                   f"(--stop-after-epochs); rerun to continue from {checkpoint_dir}")
    elif main:
        typer.echo(f"train-unet {run}: {result_line(result, cfg.epochs, out)}")
