"""How well ROI heatmaps find annotated lesions: pointing game and energy inside the boxes.

- Pointing game (Zhang et al. 2018): a slice is a hit when the heatmap's maximum lies inside one
  of its ground-truth boxes; the score is the share of annotated slices that are hits. A map
  that is zero everywhere is a miss.
- Energy in box: the share of the heatmap's total mass that falls inside the union of the boxes
  (0 for an all-zero map), averaged over annotated slices.
Chance levels for both are the union's share of the image area (a uniformly random point, a
uniform map), reported next to them.

Boxes are `(row0, col0, height, width)` in the crop frame (see `pipeline.boxes`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from pipeline.boxes import Box, box_mask
# the stages read boxes through these names; they live in pipeline.boxes


def pointing_hit(heat: np.ndarray, boxes: Sequence[Box]) -> bool:
    if not heat.max() > 0:
        return False
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(box_mask(heat.shape, boxes)[r, c])


def energy_in_boxes(heat: np.ndarray, boxes: Sequence[Box]) -> float:
    total = float(heat.sum(dtype=np.float64))
    if not total > 0:
        return 0.0
    return float(heat[box_mask(heat.shape, boxes)].sum(dtype=np.float64)) / total


def score_slices(items: Iterable[tuple[np.ndarray, Sequence[Box], Sequence[str]]]) -> dict:
    """Pointing game and energy in box over (heatmap, boxes, labels) of annotated slices."""
    hits, energy, chance = [], [], []
    per_label: dict[str, list[bool]] = defaultdict(list)
    for heat, boxes, labels in items:
        hit = pointing_hit(heat, boxes)
        hits.append(hit)
        energy.append(energy_in_boxes(heat, boxes))
        chance.append(float(box_mask(heat.shape, boxes).mean()))
        for label in sorted(set(labels)):
            per_label[label].append(hit)
    n = len(hits)
    nan = float("nan")
    return {
        "n_slices": n,
        "pointing_game": float(np.mean(hits)) if n else nan,
        "energy_in_box": float(np.mean(energy)) if n else nan,
        "chance": float(np.mean(chance)) if n else nan,
        "pointing_game_by_label": {k: {"n": len(v), "pointing_game": float(np.mean(v))}
                                   for k, v in sorted(per_label.items())},
    }
