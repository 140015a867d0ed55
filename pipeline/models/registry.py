"""Build the reconstruction U-Net from its config; save and load checkpoints.

A checkpoint is `{"state_dict": ..., "config": {...}}` (plain tensors and JSON-able values), read
back with `torch.load(weights_only=True)`. `config["model"]` rebuilds the network, so a checkpoint
says by itself which architecture it holds; a state dict that does not fit it is an InputError.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import BadValue, InputError
from pipeline.models.torch_files import read_model_file
from pipeline.models.unet_seed import SeedUnet
from pipeline.stores.zarr_store import atomic_path

KIND = "unet"
ARCHS = ("fastmri", "seed")


class Residual(nn.Module):
    """out = x + net(x): the network learns the correction to its (normalised zero-filled) input.

    The net's last convolution starts at zero, so training starts from the zero-filled image
    instead of from noise, which matters on short training budgets.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        last = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def model_config(arch: str, chans: int = 32, num_pool_layers: int = 4, drop_prob: float = 0.0,
                 residual: bool = False) -> dict[str, Any]:
    """The part of a config that fixes the network (the seed network has no free sizes)."""
    if arch == "fastmri":
        return {"arch": "fastmri", "chans": int(chans), "num_pool_layers": int(num_pool_layers),
                "drop_prob": float(drop_prob), "residual": bool(residual)}
    if arch == "seed":
        return {"arch": "seed", "residual": bool(residual)}
    raise BadValue("arch", f"expected one of {', '.join(ARCHS)}, got {arch!r}")


def build_unet(cfg: dict[str, Any]) -> nn.Module:
    """`fastmri`: fastmri.models.Unet(1, 1, chans, num_pool_layers, drop_prob); `seed`: SeedUnet.
    With `residual`, wrapped in Residual (same parameters, keys prefixed `net.`)."""
    arch = cfg.get("arch")
    if arch == "fastmri":
        from fastmri.models import Unet
        net: nn.Module = Unet(in_chans=1, out_chans=1, chans=cfg["chans"], num_pool_layers=cfg["num_pool_layers"],
                              drop_prob=cfg["drop_prob"])
    elif arch == "seed":
        net = SeedUnet(1, 1)
    else:
        raise BadValue("arch", f"expected one of {', '.join(ARCHS)}, got {arch!r}")
    return Residual(net) if cfg.get("residual", False) else net


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
            for k, v in inner.state_dict().items()}


def save_unet(path: Path | str, model: nn.Module | dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write `{"state_dict", "config"}` atomically; config must hold `model` (see model_config)."""
    state = model if isinstance(model, dict) else plain_state_dict(model)
    config = {"kind": KIND, **config}
    with atomic_path(path) as tmp:
        # through a Python file object: a full disk or a forbidden directory is then an OSError
        # naming the file (torch's own writer turns it into a RuntimeError without the cause)
        try:
            with open(tmp, "wb") as fh:
                torch.save({"state_dict": state, "config": config}, fh)
        except OSError as exc:
            if exc.filename is None and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
            raise


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    return read_model_file(path, missing="missing U-Net checkpoint (run train-unet first)",
                           unreadable="not a readable checkpoint", invalid="not a roirecon checkpoint")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise an InputError naming what differs when `state` does not fit `model` exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}")
        raise InputError(f"{where}: weights do not fit the architecture ({'; '.join(parts)})")


def load_unet(path: Path | str, expected_model: dict[str, Any] | None = None, *,
              expected_label: str = "the expected", require_trained: bool = False
              ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights (on CPU, eval mode).

    `expected_model`: if given, the checkpoint's `config["model"]` must equal it (a `model_config`,
    described as `expected_label` in the message, e.g. "the configured"): a checkpoint trained with
    other widths is refused instead of evaluated as if it were the configured model.
    `require_trained`: refuse a checkpoint whose config records no training epoch (`history`),
    such as weights saved straight after initialisation.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    config = ckpt["config"]
    if config.get("kind") != KIND or not isinstance(config.get("model"), dict):
        raise InputError(f"{path}: not a U-Net checkpoint (config kind {config.get('kind')!r})")
    cfg = config["model"]
    if expected_model is not None and cfg != expected_model:
        raise InputError(f"{path}: checkpoint architecture {_describe(cfg)} differs from {expected_label} "
                         f"{_describe(expected_model)}")
    if require_trained and not (isinstance(config.get("history"), list) and config["history"]):
        raise InputError(f"{path}: the checkpoint records no training epoch (no 'history' in its config); "
                         f"run train-unet to produce it")
    try:
        model = build_unet(cfg)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: incomplete model config {cfg!r} ({exc})") from None
    check_state_dict(model, ckpt["state_dict"], f"{path} ({_describe(cfg)})")
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, config


def _describe(cfg: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items())
