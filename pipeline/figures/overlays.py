"""Overlay PNGs of Grad-CAM heatmaps: the slice, its heatmap, and both with the ground-truth boxes.

Each PNG reads without the code: the title names the volume, slice, split and the boxes' labels,
the colour bar says what the heatmap values are, and a legend explains the box outline, the
marker at the heatmap's maximum (the pointing game: white inside a box, orange within the
tolerance, red a miss) and the dashed circle of the pointing game's tolerance around it. Fixed size and dpi, no version stamp:
equal inputs give equal bytes.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.roi.boxes import Box
from pipeline.roi.scores import TOLERANCE_320, pointing_hit

HEAT_CMAP = "jet"
HEAT_LABEL = "Grad-CAM (1 = the volume's maximum)"
OVERLAY_ALPHA = 0.6  # opacity of the heatmap at value 1 in the overlay (proportional below)
PEAK_IN_BOX = "heatmap maximum, inside a box (hit)"
PEAK_NEAR_BOX = "heatmap maximum, within the tolerance of a box (hit at 15 px)"
PEAK_OUT_OF_BOX = "heatmap maximum, beyond the tolerance (miss)"
TOLERANCE_COLOR = "magenta"


def overlay_png(path: Path | str, image: np.ndarray, heat: np.ndarray, boxes: Sequence[Box],
                labels: Sequence[str], title: str, tol: float = 0.0, method: str = "Grad-CAM") -> None:
    """Three panels, each with the boxes: the slice, its heatmap with a labelled colour bar, and the
    heatmap over the slice with the map's maximum (a white cross when inside a box, orange within
    `tol` px of one, red when not) and, for `tol` > 0, a dashed circle of radius `tol` around it;
    a legend below. `title` names the slice (e.g. "file1000143.h5 slice 6 (test split)"); the box
    labels are added to it."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Patch, Rectangle

    from pipeline.figures.error_maps import BOX_COLOR, BOX_LABEL, save_png

    image = np.asarray(image, dtype=np.float32)
    heat = np.asarray(heat, dtype=np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    fig = Figure(figsize=(10.5, 4.1), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    axes[0].set_title("fully sampled target", fontsize=10)
    im = axes[1].imshow(heat, cmap=HEAT_CMAP, vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"{method} heatmap", fontsize=10)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03).set_label(
        HEAT_LABEL.replace("Grad-CAM", method), fontsize=9)
    axes[2].imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    rgba = im.cmap(Normalize(0, 1)(heat))
    rgba[..., 3] = OVERLAY_ALPHA * np.clip(heat, 0, 1)  # where the map is ~0 the slice shows through
    axes[2].imshow(rgba, interpolation="nearest")
    axes[2].set_title("heatmap over the target", fontsize=10)
    for (r0, c0, h, w) in boxes:
        for ax in axes:
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), w, h, fill=False, edgecolor=BOX_COLOR, linewidth=1.4))
    handles = [Patch(facecolor="none", edgecolor=BOX_COLOR, linewidth=1.4, label=BOX_LABEL)]
    if heat.max() > 0:
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        face, label = peak_marker(heat, boxes, tol)
        style = dict(marker="X", markersize=11, markeredgecolor="black", markeredgewidth=1.0, linestyle="none",
                     markerfacecolor=face, label=label)
        axes[2].plot([c], [r], **style)
        handles.append(Line2D([], [], **style))
        if tol > 0:
            axes[2].add_patch(Circle((c, r), tol, fill=False, edgecolor=TOLERANCE_COLOR, linestyle="--", linewidth=1.0))
            handles.append(Line2D([], [], color=TOLERANCE_COLOR, linestyle="--", linewidth=1.0, label=(
                f"pointing-game tolerance ({TOLERANCE_320:g} px at 320, {tol:.1f} px here)")))
    else:
        handles.append(Patch(facecolor="none", edgecolor="none", label="heatmap is 0 everywhere (no maximum)"))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2), fontsize=9, frameon=False)
    names = sorted(set(labels))
    what = f"box label{'s' if len(names) != 1 else ''}: {', '.join(names)}" if names else "no boxes"
    fig.suptitle(textwrap.fill(f"{title}; {what}", width=110), fontsize=10)
    save_png(fig, path)


def peak_marker(heat: np.ndarray, boxes: Sequence[Box], tol: float) -> tuple[str, str]:
    """(colour, legend label) of the heatmap-maximum marker: white inside a box, orange within `tol`
    px of one, red beyond."""
    if pointing_hit(heat, boxes):
        return "white", PEAK_IN_BOX
    if tol > 0 and pointing_hit(heat, boxes, tol):
        return "orange", PEAK_NEAR_BOX
    return "red", PEAK_OUT_OF_BOX


def pick_evenly(items: Sequence, n: int) -> list:
    """`n` items spread evenly over `items` (all of them when there are fewer)."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]
