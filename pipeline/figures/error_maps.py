"""Error-map figures of chosen test slices, one PNG per slice.

Top row: the ground truth with its lesion boxes, then each reconstruction on the same grey scale,
titled with its PSNR and ROI PSNR (data range = the volume max, as in the metrics). Bottom row: the
Grad-CAM heatmap over the ground truth, then each reconstruction's |error| as a percentage of the
volume max, all on one colour scale, each with a zoomed inset of the largest box.

Slices are chosen from the ground-truth boxes alone, so every commit draws the same slices and
`dvc plots diff` compares like with like.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from pipeline.roi.boxes import Box, box_mask
from pipeline.metrics import psnr_db
from pipeline.stores.zarr_store import atomic_path

DPI = 100
BOX_COLOR = "#39ff14"
BOX_LABEL = "ground-truth lesion box"
ERROR_CMAP = "inferno"
ERROR_LABEL = "absolute error (% of volume max)"
ERROR_PERCENTILE = 99.5
ZOOM_MARGIN = 0.5  # inset margin on each side, as a fraction of the box size


@dataclass
class ErrorPanel:
    """Inputs of one figure. recons: display label -> (C,C) image, in column order; heat in [0, 1];
    maxval: the volume max (the metrics' data range)."""
    volume: str
    slice: int
    target: np.ndarray
    recons: dict[str, np.ndarray]
    heat: np.ndarray | None
    boxes: list[Box]
    maxval: float

    @property
    def file_name(self) -> str:
        return f"{self.volume.removesuffix('.h5')}_slice{self.slice:03d}.png"


# ---- output ---------------------------------------------------------------------------------------

def save_png(fig: Figure, path: Path | str) -> None:
    """PNG at a fixed dpi without the version stamp, so equal inputs give equal bytes."""
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def write_png(fig: Figure, path: Path | str) -> None:
    """`save_png` to `path` atomically."""
    with atomic_path(path) as tmp:
        save_png(fig, tmp)


def write_error_maps(out_dir: Path | str, panels: Sequence[ErrorPanel]) -> list[str]:
    """One PNG per panel into `out_dir` (the whole directory replaced atomically); returns the names."""
    names = [p.file_name for p in panels]
    if len(set(names)) != len(names):
        raise ValueError(f"two panels would write the same file: {names}")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for panel in panels:
            save_png(error_map_figure(panel), tmp / panel.file_name)
    return names


# ---- slice choice ---------------------------------------------------------------------------------

def choose_slices(volumes: np.ndarray, slices: np.ndarray, roi_area: np.ndarray, n: int) -> list[int]:
    """Up to n row indices, from the ground-truth boxes alone.

    Rows with boxes, largest ROI area first (ties: volume name, then slice index), taking one slice
    per volume while volumes last; when fewer than n rows have boxes, the middle slices of the
    volumes in name order fill up (volumes not yet drawn first).
    """
    names = [str(v) for v in np.asarray(volumes)]
    index = [int(s) for s in np.asarray(slices)]
    area = np.asarray(roi_area, dtype=np.float64).ravel()
    if not len(names) == len(index) == len(area):
        raise ValueError(f"volumes, slices, roi_area differ in length: {len(names)}, {len(index)}, {len(area)}")
    if n <= 0:
        return []
    boxed = sorted(np.flatnonzero(area > 0).tolist(), key=lambda i: (-area[i], names[i], index[i]))
    seen: Counter = Counter()
    rank = {}
    for i in boxed:  # rank within its volume: 0 for the volume's largest box
        rank[i] = seen[names[i]]
        seen[names[i]] += 1
    chosen = sorted(boxed, key=lambda i: rank[i])[:n]  # stable: keeps the area order within a rank
    drawn = {names[i] for i in chosen}
    for i in sorted(middle_rows(names, index), key=lambda i: (names[i] in drawn, names[i])):
        if len(chosen) == n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def middle_rows(names: Sequence[str], index: Sequence[int]) -> list[int]:
    """Row of each volume's middle slice (by slice index), volumes in name order."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    out = []
    for name in sorted(rows):
        ordered = sorted(rows[name], key=lambda i: index[i])
        out.append(ordered[len(ordered) // 2])
    return out


# ---- numbers --------------------------------------------------------------------------------------

def percent_error(target: np.ndarray, recon: np.ndarray, maxval: float) -> np.ndarray:
    """|recon - target| as a percentage of maxval."""
    scale = float(maxval) if maxval > 0 else 1.0
    return 100.0 * np.abs(recon.astype(np.float64) - target.astype(np.float64)) / scale


def shared_error_scale(target: np.ndarray, recons: Mapping[str, np.ndarray] | Iterable[np.ndarray],
                       maxval: float) -> float:
    """Colour-scale top for all error panels of a figure: the 99.5th percentile of the percent
    errors of all reconstructions together (their max if that is 0; 1 if all errors are 0)."""
    images = recons.values() if isinstance(recons, Mapping) else recons
    errors = [percent_error(target, r, maxval).ravel() for r in images]
    if not errors:
        return 1.0
    pooled = np.concatenate(errors)
    top = float(np.percentile(pooled, ERROR_PERCENTILE))
    if not top > 0:
        top = float(pooled.max())
    return top if top > 0 else 1.0


def largest_box(boxes: Sequence[Box]) -> Box:
    """The box of largest area (the first one on ties)."""
    return max(boxes, key=lambda b: b[2] * b[3])


def zoom_window(box: Box, shape: tuple[int, int], margin: float = ZOOM_MARGIN) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end-exclusive: the box plus `margin` of its size on each side, in the image."""
    r0, c0, h, w = box
    dr, dc = max(2, round(margin * h)), max(2, round(margin * w))
    return max(r0 - dr, 0), min(r0 + h + dr, shape[0]), max(c0 - dc, 0), min(c0 + w + dc, shape[1])


# ---- drawing --------------------------------------------------------------------------------------

def error_map_figure(panel: ErrorPanel) -> Figure:
    """The figure of one slice (see the module doc)."""
    labels = list(panel.recons)
    cols = 1 + len(labels)
    fig = Figure(figsize=(2.8 * cols + 1.0, 6.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False)
    gt = panel.target.astype(np.float64)
    grey = {"cmap": "gray", "vmin": 0.0, "vmax": float(gt.max()) or 1.0}
    mask = box_mask(gt.shape, panel.boxes)
    vmax = shared_error_scale(gt, panel.recons, panel.maxval)

    _show(axes[0, 0], gt, "ground truth", grey, panel.boxes)
    _heat_panel(axes[1, 0], gt, panel.heat, grey, panel.boxes)
    image = None
    for j, label in enumerate(labels, start=1):
        recon = panel.recons[label]
        _show(axes[0, j], recon, _quality_title(label, gt, recon, panel.maxval, mask), grey, [])
        err = percent_error(gt, recon, panel.maxval)
        image = _show(axes[1, j], err, f"|error| {label}", {"cmap": ERROR_CMAP, "vmin": 0.0, "vmax": vmax},
                      panel.boxes)
        if panel.boxes:
            _zoom_inset(axes[1, j], err, largest_box(panel.boxes), vmax)
    if image is not None:
        fig.colorbar(image, ax=axes[1, 1:].tolist(), label=ERROR_LABEL, shrink=0.9)
    if panel.boxes:
        fig.legend(handles=[Patch(facecolor="none", edgecolor=BOX_COLOR, label=BOX_LABEL)],
                   loc="outside lower center", fontsize=9, frameon=False)
    fig.suptitle(f"{panel.volume} slice {panel.slice}  (data range = volume max {panel.maxval:.4g})", fontsize=10)
    return fig


def _show(ax, image: np.ndarray, title: str, scale: dict, boxes: Sequence[Box]):
    im = ax.imshow(image, **scale)
    ax.set_title(title, fontsize=8)
    _draw_boxes(ax, boxes)
    ax.set_axis_off()
    return im


def _draw_boxes(ax, boxes: Sequence[Box]) -> None:
    for r0, c0, h, w in boxes:
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), w, h, fill=False, edgecolor=BOX_COLOR, linewidth=1.2))


def _quality_title(label: str, gt: np.ndarray, recon: np.ndarray, maxval: float, mask: np.ndarray) -> str:
    roi = f"ROI {psnr_db(gt, recon, maxval, mask):.2f} dB" if mask.any() else "ROI n/a"
    return f"{label}\nPSNR {psnr_db(gt, recon, maxval):.2f} dB, {roi}"


def _heat_panel(ax, gt: np.ndarray, heat: np.ndarray | None, grey: dict, boxes: Sequence[Box]) -> None:
    if heat is None:
        _show(ax, gt, "ground truth\n(no heatmap)", grey, boxes)
        ax.text(0.5, 0.5, "no heatmap", transform=ax.transAxes, ha="center", va="center", fontsize=10,
                color="white", bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})
        return
    _show(ax, gt, "Grad-CAM heatmap\nover ground truth", grey, boxes)
    ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)


def _zoom_inset(ax, err: np.ndarray, box: Box, vmax: float) -> None:
    """Inset of the box's neighbourhood, in the corner away from the box, on the same colour scale."""
    r0, r1, c0, c1 = zoom_window(box, err.shape)
    below = box[0] + box[2] / 2 < err.shape[0] / 2  # box in the upper half: inset at the bottom
    right = box[1] + box[3] / 2 < err.shape[1] / 2
    inset = ax.inset_axes((0.56 if right else 0.02, 0.02 if below else 0.56, 0.42, 0.42))
    inset.imshow(err, cmap=ERROR_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
    inset.set_xlim(c0 - 0.5, c1 - 0.5)
    inset.set_ylim(r1 - 0.5, r0 - 0.5)
    _draw_boxes(inset, [box])
    inset.text(0.04, 0.96, "zoom", transform=inset.transAxes, ha="left", va="top", fontsize=6, color="white")
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("white")
