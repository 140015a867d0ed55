"""Overlay PNGs of Grad-CAM heatmaps: image, heatmap, and both with the ground-truth boxes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.roi_scores import Box, pointing_hit


def overlay_png(path: Path | str, image: np.ndarray, heat: np.ndarray, boxes: Sequence[Box],
                labels: Sequence[str], title: str) -> None:
    """Three panels: the slice, its heatmap, the overlay with boxes (green) and the map's maximum
    (a cross: white when inside a box, red when not)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lo, hi = np.percentile(image, [0.5, 99.5])
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6), dpi=100)
    axes[0].imshow(image, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title("target")
    im = axes[1].imshow(heat, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM (per volume max = 1)")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(image, cmap="gray", vmin=lo, vmax=hi)
    axes[2].imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=0.4)
    for (r0, c0, h, w) in boxes:
        for ax in (axes[0], axes[2]):
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), w, h, fill=False, edgecolor="lime", linewidth=1.2))
    if heat.max() > 0:
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        hit = pointing_hit(heat, boxes)
        axes[2].plot([c], [r], marker="x", color="white" if hit else "red", markersize=9, mew=2)
    axes[2].set_title("overlay: " + "; ".join(sorted(set(labels)))[:48], fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pick_evenly(items: Sequence, n: int) -> list:
    """`n` items spread evenly over `items` (all of them when there are fewer)."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]
