"""Reconstruction metrics: fastMRI's `evaluate.py` definitions, plus ROI-restricted and heatmap-weighted ones.

Whole image (per volume, over its (slices, H, W) arrays, data range = the target volume's max, as
fastMRI's evaluate.py does; a split's value is the mean over volumes):
  nmse  = ||gt - pred||^2 / ||gt||^2
  psnr  = skimage peak_signal_noise_ratio(gt, pred, data_range=max(gt))
  ssim  = mean over slices of skimage structural_similarity(7x7 uniform window, data_range=max(gt))
ROI-restricted, over the pixels inside the ground-truth boxes (mask m) of the volume's slices:
  roi_nmse = sum_m (gt - pred)^2 / sum_m gt^2
  roi_psnr = 10 log10(max(gt)^2 / mean_m (gt - pred)^2)     (same data range as psnr)
  roi_ssim = mean of the per-slice SSIM map (the map skimage averages for ssim) over the ROI pixels,
             leaving out the 3-pixel image border skimage leaves out of its mean
  A volume without boxes has no ROI values (NaN) and is left out of the ROI means.
Heatmap-weighted (h = Grad-CAM heatmap in [0, 1]):
  heatmap_nmse = sum h (gt - pred)^2 / sum h gt^2
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from fastmri.evaluate import nmse, psnr, ssim  # noqa: F401  (re-exported: the reference definitions)
from skimage.metrics import structural_similarity

WHOLE = ("nmse", "psnr", "ssim")
ROI = ("roi_nmse", "roi_psnr", "roi_ssim")
ALL = WHOLE + ROI + ("heatmap_nmse",)
SSIM_WIN = 7


def psnr_db(gt: np.ndarray, pred: np.ndarray, maxval: float, mask: np.ndarray | None = None) -> float:
    """10 log10(maxval^2 / MSE), the MSE over `mask` when given (NaN for an empty mask, inf for a
    perfect reconstruction): fastMRI's psnr on whole images, the ROI PSNR on the box pixels."""
    err = (gt.astype(np.float64) - pred.astype(np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    return float(10 * np.log10(float(maxval) ** 2 / mse)) if mse > 0 else math.inf


def ssim_maps(gt: np.ndarray, pred: np.ndarray, maxval: float) -> tuple[float, np.ndarray]:
    """fastMRI's volume SSIM and the per-slice SSIM maps it averages, (slices, H, W)."""
    total = np.array([0])
    maps = np.empty(gt.shape, dtype=np.float64)
    for i in range(gt.shape[0]):
        mssim, maps[i] = structural_similarity(gt[i], pred[i], data_range=maxval, full=True)
        total = total + mssim  # same accumulation as fastmri.evaluate.ssim, so the value is identical
    return float((total / gt.shape[0])[0]), maps


def ssim_valid(shape: tuple[int, ...], win_size: int = SSIM_WIN) -> np.ndarray:
    """The pixels skimage averages over: all but a (win_size - 1) / 2 border."""
    pad = (win_size - 1) // 2
    valid = np.zeros(shape, dtype=bool)
    valid[..., pad:shape[-2] - pad, pad:shape[-1] - pad] = True
    return valid


def volume_metrics(gt: np.ndarray, pred: np.ndarray, roi: np.ndarray | None = None,
                   heatmap: np.ndarray | None = None) -> dict[str, float]:
    """All metrics of one volume; gt, pred: (slices, H, W); roi: bool mask; heatmap: [0, 1] weights."""
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(f"expected matching (slices, H, W) arrays, got {gt.shape} and {pred.shape}")
    maxval = gt.max()
    out = {"nmse": float(nmse(gt, pred)), "psnr": float(psnr(gt, pred, maxval))}
    out["ssim"], maps = ssim_maps(gt, pred, maxval)
    err2 = (gt.astype(np.float64) - pred.astype(np.float64)) ** 2
    nan = float("nan")
    if roi is not None and roi.any():
        m = roi.astype(bool)
        out["roi_nmse"] = float(err2[m].sum() / np.square(gt[m].astype(np.float64)).sum())
        out["roi_psnr"] = psnr_db(gt, pred, maxval, m)
        ms = m & ssim_valid(m.shape)
        out["roi_ssim"] = float(maps[ms].mean()) if ms.any() else nan
    else:
        out.update(roi_nmse=nan, roi_psnr=nan, roi_ssim=nan)
    if heatmap is not None and heatmap.sum() > 0:
        h = heatmap.astype(np.float64)
        out["heatmap_nmse"] = float((h * err2).sum() / (h * np.square(gt.astype(np.float64))).sum())
    else:
        out["heatmap_nmse"] = nan
    return out


def mean_over_volumes(rows: Iterable[dict[str, float]], keys: Iterable[str] = ALL) -> dict[str, float]:
    """Mean of each metric over volumes, leaving out NaN (volumes without an ROI)."""
    rows = list(rows)
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[k] = float(vals.mean()) if vals.size else float("nan")
    return out


def volume_slices(volumes: np.ndarray) -> list[tuple[str, slice]]:
    """(name, row range) of each volume in a store's `volume` array (rows of a volume are contiguous)."""
    names = np.asarray(np.asarray(volumes).tolist(), dtype=str)
    if names.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = np.r_[starts[1:], names.size]
    return [(names[s], slice(int(s), int(e))) for s, e in zip(starts, ends)]
