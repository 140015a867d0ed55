"""Reconstruction losses: ROI-weighted MSE (the seed report's) or L1 (fastMRI's), optionally mixed with SSIM.

Weights come from an ROI map h in [0, 1] (Grad-CAM heatmaps or ground-truth box maps), shaped by
`RoiWeighting`: the map is grown by `margin` pixels and its edges softened (Gaussian, `soft` px);
then per pixel w = b * (1 + roi_weight * h), with b = `background` outside the knee (the target's
foreground) and 1 inside. With `norm: mean` (the default) w is divided by its mean over the image,
so the weighted loss of a prediction that is equally wrong everywhere is the plain loss, whatever the
map: only the balance between regions changes, not the scale. With `norm: none` the ROI is purely
up-weighted; Adam's steps do not depend on the loss scale, so no learning-rate correction is needed
for the comparison with the baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import BadValue

KINDS = ("mse", "l1")


ROI_NORMS = ("mean", "none")
FOREGROUND_FRACTION = 0.1   # knee = target above this share of the image's range (air is ~0.5% of max)


@dataclass(frozen=True)
class RoiWeighting:
    """How an ROI map becomes loss weights (module doc); `RoiWeighting()` is today's default with
    `roi_weight` 0, i.e. no weighting."""
    roi_weight: float = 0.0
    norm: str = "mean"
    margin: int = 0
    soft: float = 0.0
    background: float = 1.0

    def __post_init__(self):
        if self.norm not in ROI_NORMS:
            raise BadValue("roi_norm", f"expected one of {', '.join(ROI_NORMS)}, got {self.norm!r}")
        for name, v in (("roi_weight", self.roi_weight), ("roi_margin", self.margin), ("roi_soft", self.soft)):
            if v < 0:
                raise BadValue(name, f"must be >= 0, got {v!r}")
        if not 0 < self.background <= 1:
            raise BadValue("background_weight", f"must be in (0, 1], got {self.background!r}")

    def weights(self, heatmap: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel weights (same shape as `heatmap`, (..., H, W)); `target` (same shape, any affine
        units) is needed when `background` < 1."""
        h = soften(grow(heatmap.float(), self.margin), self.soft)
        w = 1.0 + self.roi_weight * h
        if self.background < 1:
            if target is None:
                raise ValueError("down-weighting the background needs the target")
            w = w * torch.where(foreground(target), 1.0, self.background)
        return w / w.mean(dim=(-2, -1), keepdim=True) if self.norm == "mean" else w


def grow(h: torch.Tensor, margin: int) -> torch.Tensor:
    """The map grown by `margin` pixels: a (2 margin + 1)^2 maximum filter."""
    if margin == 0:
        return h
    k = 2 * int(margin) + 1
    flat = h.reshape(-1, 1, *h.shape[-2:])
    return F.max_pool2d(flat, k, stride=1, padding=int(margin)).reshape(h.shape)


def soften(h: torch.Tensor, sigma: float) -> torch.Tensor:
    """The map's edges softened: a Gaussian filter of `sigma` pixels (3 sigma each side, zero beyond
    the image), separable."""
    if sigma == 0:
        return h
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=h.dtype, device=h.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    flat = h.reshape(-1, 1, *h.shape[-2:])
    flat = F.conv2d(flat, g.view(1, 1, 1, -1), padding=(0, r))
    flat = F.conv2d(flat, g.view(1, 1, -1, 1), padding=(r, 0))
    return flat.reshape(h.shape)


def foreground(target: torch.Tensor) -> torch.Tensor:
    """The knee: pixels above FOREGROUND_FRACTION of each image's range (invariant to the
    per-slice normalisation)."""
    t = target.float()
    lo, hi = t.amin(dim=(-2, -1), keepdim=True), t.amax(dim=(-2, -1), keepdim=True)
    return (t - lo) > FOREGROUND_FRACTION * (hi - lo)


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
