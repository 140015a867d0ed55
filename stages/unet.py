"""train-unet: the reconstruction U-Net for one variant and seed: baseline (plain loss), weighted (loss
up-weighted by the Grad-CAM heatmaps) or oracle (up-weighted by the ground-truth box maps)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import InputError
from stages.app import PARAMS_OPTION, app, stage


@app.command("train-unet")
@stage
def train_unet_cmd(
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

    Params: unet.* (not unet.seeds), loss.kind, loss.ssim_weight, loss.roi_weight (weighted/oracle)."""
    # heavy imports here, not at module level: `roirecon --help` should not pay for them
    from pipeline.training.unet import ROI_VARIANTS, is_main_process
    from stages.settings import load_params

    p = load_params(params)
    if variant in ROI_VARIANTS and heatmaps is None:
        raise InputError(f"train-unet {variant}: --heatmaps is required (the ROI maps that weight the loss)")
    if p.unet.nproc > 1 and "LOCAL_RANK" not in os.environ:
        _relaunch_under_torchrun(p.unet.nproc, locals())
        return
    if variant not in ROI_VARIANTS:
        heatmaps = None
    run = f"{variant}_s{seed}"
    _train(p, variant, seed, slices, undersampled, heatmaps, out or Path(f"models/unet/{run}.pt"), live,
           checkpoint_dir or Path(".roirecon/checkpoints") / run, stop_after_epochs, is_main_process())


def _relaunch_under_torchrun(nproc: int, args: dict) -> None:
    """Run this same command under `torchrun --standalone --nproc-per-node nproc` and wait for it."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "stages.cli", "train-unet"]
    for name in ("variant", "seed", "slices", "undersampled", "heatmaps", "out", "live", "checkpoint_dir",
                 "stop_after_epochs", "params"):
        if args[name] is not None:
            argv += ["--" + name.replace("_", "-"), str(args[name])]
    typer.echo(f"train-unet: unet.nproc {nproc}: running under torchrun ({nproc} processes)")
    code = subprocess.call(argv)
    if code:
        raise typer.Exit(code)


def _train(p, variant: str, seed: int, slices: Path, undersampled: Path, heatmaps: Optional[Path], out: Path,
           live: Optional[Path], checkpoint_dir: Path, stop_after: Optional[int], main: bool) -> None:
    from pipeline.models.registry import model_config
    from pipeline.training.unet import CURVE_KEYS, ROI_VARIANTS, TrainConfig, train_unet
    from pipeline.unet_data import SliceStores, acquisition
    from stages.progress import bar, live_logger

    u, lo = p.unet, p.loss
    cfg = TrainConfig(
        variant=variant,
        model=model_config(u.arch, u.chans, u.num_pool_layers, u.drop_prob, u.residual),
        epochs=u.epochs, batch_size=u.batch_size, lr=u.lr, loss_kind=lo.kind,
        roi_weight=lo.roi_weight_for(variant in ROI_VARIANTS), ssim_weight=lo.ssim_weight,
        seed=seed, device=u.device, deterministic=u.deterministic, compile=u.compile)
    run = f"{variant}_s{seed}"
    train = SliceStores(slices, undersampled, heatmaps, "train")
    val = SliceStores(slices, undersampled, heatmaps, "val", raw=True)
    with live_logger(live if main else None) as log:
        def on_epoch(epoch: int, m: dict[str, float]) -> None:
            log({k: v for k, v in m.items() if k in CURVE_KEYS})
            typer.echo(f"  epoch {epoch + 1}/{cfg.epochs}: train loss {m['train/loss']:.4g}, "
                       f"val loss {m['val/loss']:.4g}, PSNR {m['val/psnr']:.2f} dB, SSIM {m['val/ssim']:.4f}, "
                       f"data wait {100 * m['data_wait_share']:.1f}%, {m['epoch_time_s']:.1f}s")

        result = train_unet(train, val, cfg, out, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch,
                            bar=bar if main else None, workers=u.num_workers, stop_after=stop_after,
                            extra_config={"stores": {"slices": str(slices), "undersampled": str(undersampled),
                                                     "heatmaps": str(heatmaps) if heatmaps else None},
                                          "acquisition": acquisition(undersampled)})
    if not main:
        return
    if not result.finished:
        typer.echo(f"train-unet {run}: stopped after epoch {len(result.history)}/{cfg.epochs} "
                   f"(--stop-after-epochs); rerun to continue from {checkpoint_dir}")
        return
    b = result.best
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    typer.echo(f"train-unet {run}: {out} (best epoch {result.best_epoch + 1}/{cfg.epochs}{resumed}): "
               f"val PSNR {b['val/psnr']:.2f} dB, SSIM {b['val/ssim']:.4f}, NMSE {b['val/nmse']:.4g}; "
               f"data wait {100 * max(h['data_wait_share'] for h in result.history):.1f}% of step time at most")
