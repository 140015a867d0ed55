"""Reconstruction losses: ROI-weighted MSE (the seed report's) or L1 (fastMRI's), optionally mixed with SSIM.

Weights come from the Grad-CAM heatmap h in [0, 1]: per pixel w = 1 + roi_weight * h, divided by its
mean over the image so that every image's weights average 1. The weighted loss of a prediction that
is equally wrong everywhere is then the plain loss, whatever the heatmap: only the balance between
regions changes, not the scale (learning rate and loss values stay comparable with the baseline).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import BadValue

KINDS = ("mse", "l1")


def roi_weights(heatmap: torch.Tensor, roi_weight: float) -> torch.Tensor:
    """w = 1 + roi_weight * heatmap, normalised to mean 1 over the last two axes."""
    w = 1.0 + roi_weight * heatmap.float()
    return w / w.mean(dim=(-2, -1), keepdim=True)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, win_size: int = 7,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """fastMRI's SSIMLoss map (uniform 7x7 window, valid region), (B,1,H-6,W-6); data_range (B,)."""
    w = torch.ones(1, 1, win_size, win_size, device=x.device, dtype=x.dtype) / win_size ** 2
    n = win_size ** 2
    cov_norm = n / (n - 1)
    dr = data_range.to(x.dtype)[:, None, None, None]
    c1, c2 = (k1 * dr) ** 2, (k2 * dr) ** 2
    ux, uy = F.conv2d(x, w), F.conv2d(y, w)
    uxx, uyy, uxy = F.conv2d(x * x, w), F.conv2d(y * y, w), F.conv2d(x * y, w)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


class ReconLoss(nn.Module):
    """(1 - ssim_weight) * weighted pixel loss + ssim_weight * (1 - weighted mean SSIM).

    pred, target: (B,1,H,W) in normalised units; weight: (B,1,H,W) with mean 1 per image, or None.
    Computed in float32 even under autocast.
    """

    def __init__(self, kind: str, ssim_weight: float, win_size: int = 7):
        super().__init__()
        if kind not in KINDS:
            raise BadValue("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        if not 0 <= ssim_weight <= 1:
            raise BadValue("ssim_weight", f"must be in [0, 1], got {ssim_weight!r}")
        self.kind, self.ssim_weight, self.win_size = kind, float(ssim_weight), win_size

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        diff = pred - target
        err = diff * diff if self.kind == "mse" else diff.abs()
        pixel = (err * weight).mean() if weight is not None else err.mean()
        if self.ssim_weight == 0:
            return pixel
        flat = target.flatten(1)
        data_range = (flat.amax(1) - flat.amin(1)).clamp_min(1e-6)
        s = ssim_map(pred, target, data_range, self.win_size)
        if weight is not None:
            p = self.win_size // 2
            wc = weight[..., p:-p, p:-p]
            ssim = (s * wc).sum() / wc.sum()
        else:
            ssim = s.mean()
        return (1 - self.ssim_weight) * pixel + self.ssim_weight * (1 - ssim)
