"""U-Net inference in fp32: normalised inputs in, reconstructions in target units out.

Validation, evaluate and `roirecon reconstruct` share these, so a reconstruction is the same
whichever of them makes it. No autocast here: mixed precision is for the training forward only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.stores.unet_data import denormalize


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on `device` in eval mode (channels_last on CUDA)."""
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def forward(model: nn.Module, image: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Model outputs (normalised units, fp32, (n,1,C,C) on `device`) for normalised inputs (n,1,C,C),
    `batch_size` slices per forward pass."""
    outs = []
    for start in range(0, len(image), batch_size):
        x = image[start:start + batch_size].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().contiguous())
    return torch.cat(outs)


def to_target_units(out: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """(n,1,C,C) normalised outputs back to target units, float32 (n,C,C) numpy."""
    mean, std = mean.to(out.device), std.to(out.device)
    return denormalize(out[:, 0], mean, std).cpu().numpy().astype(np.float32, copy=False)


def reconstruct(model: nn.Module, image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                device: torch.device, batch_size: int) -> np.ndarray:
    """Reconstructions in target units (float32 (n,C,C)) of normalised inputs with their statistics."""
    return to_target_units(forward(model, image, device, batch_size), mean, std)
