"""How well ROI heatmaps find annotated lesions: pointing game and energy inside the boxes.

- Pointing game (Zhang et al. 2018): a slice is a hit when the heatmap's maximum lies within
  `tol` pixels (Euclidean, pixel centres) of one of its ground-truth boxes, i.e. inside the boxes
  dilated by a disc of radius `tol`; the score is the share of annotated slices that are hits. A
  map that is zero everywhere is a miss. Reported at tolerance 0 (inside a box) and at 15 px in
  fastMRI+'s 320 x 320 frame, scaled to the volume's recon frame (`tolerance_px`): the crop keeps
  the recon frame's pixel size, so 15 px at 320 is 6 px in a 128 frame.
- Energy in box: the share of the heatmap's total mass that falls inside the union of the boxes
  (0 for an all-zero map), averaged over annotated slices.
Chance levels: the union's share of the image area (a uniform map's energy in box, a uniformly
random point's pointing game at tolerance 0), and the dilated union's share (a random point at the
tolerance). A stronger baseline is the location prior (`location_prior`): the mean box mask of
another split's annotated slices, one fixed map for every slice. A map that beats chance but not
the prior has learnt where lesions tend to be (the joint), not where this one is.

Per label, a slice counts once for each label it carries, scored against that label's boxes only.
Every number comes with a 95% cluster-bootstrap interval over volumes (`ratio_bootstrap_interval`):
slices of one volume are not independent, so volumes are resampled and the slice-pooled ratio
recomputed.

Boxes are `(row0, col0, height, width)` in the crop frame (see `pipeline.roi.boxes`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

from pipeline.roi.boxes import Box, box_mask
from pipeline.stats import ratio_bootstrap_interval

TOLERANCE_320 = 15.0     # pointing-game tolerance in pixels of fastMRI+'s 320 x 320 frame
FASTMRI_PLUS_FRAME = 320
# per-slice quantities averaged into each score; `chance*` are the uniform-map / random-point levels
QUANTITIES = ("pointing_game", "pointing_game_15px", "energy_in_box", "chance", "chance_15px")


def tolerance_px(frame: tuple[int, int] | int, tolerance_320: float = TOLERANCE_320) -> float:
    """The pointing-game tolerance in pixels of a recon frame `(H, W)` (its larger side), from
    `tolerance_320` pixels in the 320 x 320 fastMRI+ frame."""
    side = max(frame) if isinstance(frame, (tuple, list)) else int(frame)
    return float(tolerance_320) * side / FASTMRI_PLUS_FRAME


def near_boxes(shape: tuple[int, int], boxes: Iterable[Box], tol: float = 0.0) -> np.ndarray:
    """bool `shape`: pixels within `tol` (Euclidean distance between pixel centres) of a box pixel;
    `tol` = 0 is `box_mask`."""
    return _dilate(box_mask(shape, boxes), tol)


def _dilate(mask: np.ndarray, tol: float) -> np.ndarray:
    """Pixels within `tol` (Euclidean, between pixel centres) of a pixel of `mask`."""
    if tol <= 0 or not mask.any():
        return mask
    return distance_transform_edt(~mask) <= tol + 1e-9


def peak(heat: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of the heatmap's maximum (the first one), None for a map with no positive value."""
    if not heat.max() > 0:
        return None
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(r), int(c)


def pointing_hit(heat: np.ndarray, boxes: Sequence[Box], tol: float = 0.0) -> bool:
    """The heatmap's maximum lies within `tol` px of a box (an all-zero map misses)."""
    p = peak(heat)
    return p is not None and bool(near_boxes(heat.shape, boxes, tol)[p])


def slice_scores(heat: np.ndarray, boxes: Sequence[Box], tol: float) -> dict[str, float]:
    """One slice's values of every `QUANTITIES` entry (`tol`: the tolerance in its pixels)."""
    inside = box_mask(heat.shape, boxes)
    near = _dilate(inside, tol)
    p = peak(heat)
    total = float(heat.sum(dtype=np.float64))
    return {"pointing_game": float(p is not None and bool(inside[p])),
            "pointing_game_15px": float(p is not None and bool(near[p])),
            "energy_in_box": float(heat[inside].sum(dtype=np.float64)) / total if total > 0 else 0.0,
            "chance": float(inside.mean()),
            "chance_15px": float(near.mean())}


def summarise(rows: Sequence[tuple[str, dict[str, float]]], n_resamples: int = 10000, seed: int = 0) -> dict:
    """(volume, slice_scores) rows -> n_slices, n_volumes and per quantity {mean, ci95_low,
    ci95_high}: the mean over slices with its cluster-bootstrap interval over volumes."""
    by_volume: dict[str, list[dict[str, float]]] = defaultdict(list)
    for volume, s in rows:
        by_volume[volume].append(s)
    volumes = sorted(by_volume)
    counts = np.array([len(by_volume[v]) for v in volumes], dtype=np.float64)
    out: dict = {"n_slices": len(rows), "n_volumes": len(volumes)}
    for q in QUANTITIES:
        sums = np.array([sum(s[q] for s in by_volume[v]) for v in volumes], dtype=np.float64)
        if not len(volumes):
            out[q] = {"mean": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan")}
            continue
        lo, hi = ratio_bootstrap_interval(sums, counts, n_resamples, seed)
        out[q] = {"mean": float(sums.sum() / counts.sum()), "ci95_low": lo, "ci95_high": hi}
    return out


def score_slices(items: Iterable[tuple[str, np.ndarray, Sequence[Box], Sequence[str], float]],
                 n_resamples: int = 10000, seed: int = 0) -> dict:
    """Scores over (volume, heatmap, boxes, labels, tolerance px) of annotated slices: `overall`
    and `by_label` (each as `summarise`), and the tolerances used."""
    overall, per_label = [], defaultdict(list)
    tolerances = set()
    for volume, heat, boxes, labels, tol in items:
        tolerances.add(round(float(tol), 6))
        overall.append((volume, slice_scores(heat, boxes, tol)))
        for label in sorted(set(labels)):
            mine = [b for b, lab in zip(boxes, labels) if lab == label]
            per_label[label].append((volume, slice_scores(heat, mine, tol)))
    return {"tolerance_px": sorted(tolerances), "tolerance_320_px": TOLERANCE_320,
            "overall": summarise(overall, n_resamples, seed),
            "by_label": {k: summarise(v, n_resamples, seed) for k, v in sorted(per_label.items())}}


def location_prior(shape: tuple[int, int], boxes: Mapping[tuple[str, int], Sequence[Box]]) -> np.ndarray | None:
    """float32 `shape`: the share of annotated slices (keys of `boxes`) whose boxes cover each pixel;
    None without any."""
    if not boxes:
        return None
    total = np.zeros(shape, dtype=np.float64)
    for slice_boxes in boxes.values():
        total += box_mask(shape, slice_boxes)
    return (total / len(boxes)).astype(np.float32)


def tracked_scores(scores: dict) -> dict:
    """The overall slice count and means of the pointing game at 0 and 15 px, energy in box and
    chance: one run's row (benchmarks/mrnet_seeds.py)."""
    o = scores["overall"]
    return {"n_slices": o["n_slices"], **{q: o[q]["mean"] for q in
                                          ("pointing_game", "pointing_game_15px", "energy_in_box", "chance")}}


TRACKED = ("pointing_game", "pointing_game_15px", "energy_in_box")   # the maps' quality, overall
TRACKED_PRIOR = ("pointing_game_15px",)                              # the bar they must clear


def tracked_metrics(scores: dict) -> dict:
    """What `dvc metrics diff` shows of the maps: quality only. The overall means of `TRACKED` and,
    with a location prior, its `TRACKED_PRIOR` means (under `location_prior`); counts, chance
    levels (a property of the boxes, not of the maps), intervals and labels stay in the detail."""
    out = {q: scores["overall"][q]["mean"] for q in TRACKED}
    if "location_prior" in scores:
        out["location_prior"] = {q: scores["location_prior"][q]["mean"] for q in TRACKED_PRIOR}
    return out


def frame_tolerances(frames: Mapping[str, tuple[int, int]], tolerance_320: float = TOLERANCE_320) -> dict[str, float]:
    """{volume: pointing-game tolerance in px} from each volume's recon frame."""
    return {v: tolerance_px(f, tolerance_320) for v, f in frames.items()}
