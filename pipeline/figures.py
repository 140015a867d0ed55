"""Error-map figures of chosen test slices.

One PNG per slice: top row ground truth (with the ROI boxes), zero-filled, baseline and weighted
reconstructions on one grey scale; bottom row the Grad-CAM heatmap over the ground truth (with the
boxes), and the absolute error maps of the three reconstructions on one shared colour scale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipeline.store import atomic_path

Box = tuple[int, int, int, int]
LABELS = {"zero_filled": "zero-filled", "baseline": "U-Net baseline", "weighted": "U-Net ROI-weighted"}


def choose_slices(volumes: np.ndarray, roi: np.ndarray, heat: np.ndarray | None, n: int) -> list[int]:
    """Up to n rows, one per volume first: largest ROI area, then largest heatmap mass, then middle slices."""
    if n <= 0:
        return []
    names = np.asarray(volumes)
    area = roi.reshape(len(roi), -1).sum(1).astype(np.float64)
    mass = heat.reshape(len(heat), -1).sum(1) if heat is not None else np.zeros(len(roi))
    middle = np.zeros(len(roi))
    for name in dict.fromkeys(names.tolist()):
        rows = np.flatnonzero(names == name)
        middle[rows[len(rows) // 2]] = 1
    order = np.lexsort((-middle, -mass, -area))  # primary key last: area, then mass, then middle
    chosen, used = [], set()
    for i in order:  # one slice per volume while volumes last, then any
        if names[i] not in used:
            chosen.append(int(i))
            used.add(names[i])
        if len(chosen) == n:
            return chosen
    for i in order:
        if int(i) not in chosen:
            chosen.append(int(i))
        if len(chosen) == n:
            break
    return chosen


def _psnr(gt: np.ndarray, x: np.ndarray, maxval: float, mask: np.ndarray | None = None) -> float:
    err = (gt.astype(np.float64) - x) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10 * np.log10(maxval ** 2 / mse)) if mse > 0 else float("inf")


def _boxes(ax, boxes: Sequence[Box], color: str = "#39ff14") -> None:
    for r0, c0, h, w in boxes:
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), w, h, fill=False, edgecolor=color, linewidth=1.2))


def error_map_figure(path: Path | str, gt: np.ndarray, recons: Mapping[str, np.ndarray], heat: np.ndarray | None,
                     boxes: Sequence[Box], maxval: float, title: str) -> None:
    """Write one error-map PNG (see module doc); `maxval` is the volume max (the metrics' data range)."""
    names = list(recons)
    cols = 1 + len(names)
    fig = Figure(figsize=(2.6 * cols + 0.9, 6.0), dpi=100)
    axes = fig.subplots(2, cols, gridspec_kw={"left": 0.01, "right": 0.9, "bottom": 0.02, "top": 0.86,
                                              "wspace": 0.04, "hspace": 0.22})
    roi = np.zeros(gt.shape, dtype=bool)
    for r0, c0, h, w in boxes:
        roi[max(r0, 0):r0 + h, max(c0, 0):c0 + w] = True
    errors = {k: np.abs(recons[k].astype(np.float64) - gt) for k in names}
    emax = float(max(np.percentile(e, 99.5) for e in errors.values())) or 1.0
    vmax = float(gt.max()) or 1.0

    axes[0, 0].imshow(gt, cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("ground truth", fontsize=9)
    _boxes(axes[0, 0], boxes)
    for j, k in enumerate(names, start=1):
        axes[0, j].imshow(recons[k], cmap="gray", vmin=0, vmax=vmax)
        t = f"{LABELS.get(k, k)}\nPSNR {_psnr(gt, recons[k], maxval):.2f} dB"
        if roi.any():
            t += f", ROI {_psnr(gt, recons[k], maxval, roi):.2f} dB"
        axes[0, j].set_title(t, fontsize=8)
        im = axes[1, j].imshow(errors[k], cmap="inferno", vmin=0, vmax=emax)
        axes[1, j].set_title(f"|error| {LABELS.get(k, k)}", fontsize=8)
        _boxes(axes[1, j], boxes, color="#00e5ff")
    axes[1, 0].imshow(gt, cmap="gray", vmin=0, vmax=vmax)
    if heat is not None:
        axes[1, 0].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1, 0].set_title("Grad-CAM heatmap + ROI boxes", fontsize=8)
    _boxes(axes[1, 0], boxes)
    for ax in axes.ravel():
        ax.set_axis_off()
    box = axes[1, -1].get_position()
    cax = fig.add_axes((box.x1 + 0.012, box.y0, 0.015, box.height))
    fig.colorbar(im, cax=cax, label="absolute error (shared scale)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)


def write_error_maps(out_dir: Path | str, volumes: np.ndarray, slices: np.ndarray, target: np.ndarray,
                     recons: Mapping[str, np.ndarray], heat: np.ndarray | None, roi: np.ndarray,
                     boxes: Mapping[tuple[str, int], Sequence[Box]], n: int) -> list[str]:
    """PNGs of n chosen slices into `out_dir` (replaced atomically); returns the file names."""
    rows = choose_slices(volumes, roi, heat, n)
    names = []
    vol_max = {}
    for name in dict.fromkeys(np.asarray(volumes).tolist()):
        vol_max[name] = float(target[np.asarray(volumes) == name].max())
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for i in rows:
            vol, k = str(volumes[i]), int(slices[i])
            fname = f"{vol.removesuffix('.h5')}_slice{k:03d}.png"
            error_map_figure(tmp / fname, target[i], {v: r[i] for v, r in recons.items()},
                             None if heat is None else heat[i], boxes.get((vol, k), []), vol_max[vol],
                             f"{vol} slice {k}")
            names.append(fname)
    return names
