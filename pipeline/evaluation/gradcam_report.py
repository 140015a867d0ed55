"""How well the Grad-CAM heatmaps find the lesions: scores on the annotated slices of one split
(pointing game at tolerance 0 and 15 px of the 320 frame, energy in box, chance levels, overall and
per label, with cluster-bootstrap intervals over volumes: `pipeline.roi.scores.score_slices`) and
overlay PNGs of a few of those slices, picked evenly (`pipeline.figures.overlays`). Given which
volumes the classifier calls abnormal, the same scores on those volumes and on the others: a map
can only point at a lesion the classifier sees."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import zarr

from pipeline.figures.overlays import overlay_png, pick_evenly
from pipeline.roi.gradcam import METHOD_NAMES, annotated_slices, check_slices_split
from pipeline.roi.scores import score_slices, summarise, slice_scores
from pipeline.stores.zarr_store import SPLITS, open_store, split_group


def slices_shapes(slices_path: Path | str) -> dict[str, tuple[int, int]]:
    """(slices, crop) of every split of the slices store, each split checked (`check_slices_split`)."""
    store = open_store(slices_path, kind="slices")
    return {s: check_slices_split(split_group(store, s, slices_path), slices_path, s) for s in SPLITS}


def scores_by_group(rows: Sequence[tuple[str, dict[str, float]]], group_of: Mapping[str, str],
                    groups: Optional[Sequence[str]] = None, n_resamples: int = 10000, seed: int = 0) -> dict:
    """(volume, slice_scores) rows split by their volume's group (`group_of`: {volume: group},
    every volume of `rows` in it): {group: summarise(...)} for `groups` (default: the groups of the
    rows, sorted). A group without rows has n_slices 0 and NaN scores (null in the JSON,
    `pipeline.evaluation.reports.write_json`)."""
    names = sorted({group_of[v] for v, _ in rows}) if groups is None else groups
    return {g: summarise([(v, s) for v, s in rows if group_of[v] == g], n_resamples, seed) for g in names}


def scores_by_call(rows: Sequence[tuple[str, dict[str, float]]], called: Mapping[str, bool],
                   n_resamples: int = 10000, seed: int = 0) -> dict:
    """`scores_by_group` by the classifier's call on each volume (`called`: {volume: called
    abnormal}): {"abnormal": ..., "normal": ...}, both always there."""
    group_of = {v: "abnormal" if c else "normal" for v, c in called.items()}
    return scores_by_group(rows, group_of, ("abnormal", "normal"), n_resamples, seed)


def score_heatmaps(heatmaps_path: Path | str, slices_path: Path | str, split: str,
                   boxes: dict[tuple[str, int], list], n_overlays: int, overlays_dir: Path | str,
                   tolerances: Mapping[str, float], method: str = "gradcam", n_resamples: int = 10000,
                   seed: int = 0, prior: np.ndarray | None = None,
                   called: Mapping[str, bool] | None = None,
                   acquisitions: Mapping[str, str] | None = None) -> dict:
    """Scores of the split's heatmaps on its slices with boxes (`boxes` as `split_boxes` gives them;
    `tolerances`: {volume: pointing-game tolerance in px}, `pipeline.roi.scores.frame_tolerances`),
    and `n_overlays` of those slices drawn into `overlays_dir` (created, empty when there are none)
    as `<volume stem>_s<slice>.png`. With a `prior` map (`pipeline.roi.scores.location_prior`),
    `location_prior` holds the same overall scores for that one map on every slice. With `called`
    ({volume: the classifier calls it abnormal}, every scored volume in it), `by_call` holds the
    overall scores on the volumes called abnormal and on the others (`scores_by_call`), and with a
    `prior` too, `location_prior_by_call` the prior's on the same two groups. With `acquisitions`
    ({volume: its fastMRI `acquisition`}), `by_acquisition` and `location_prior_by_acquisition`
    split them the same way by the volume's contrast (knee: with or without fat suppression)."""
    heat = zarr.open_group(str(heatmaps_path), mode="r")[split]
    rows = annotated_slices(heat, boxes)
    maps = heat["heatmap"]
    scores = score_slices(((name, maps[r], b, labels, tolerances[name]) for r, name, _, b, labels in rows),
                          n_resamples=n_resamples, seed=seed)
    prior_rows = [] if prior is None else [(name, slice_scores(prior, b, tolerances[name]))
                                           for _, name, _, b, _ in rows]
    if prior is not None:
        scores["location_prior"] = summarise(prior_rows, n_resamples, seed)
    groupings = {}
    if called is not None:
        groupings["by_call"] = lambda rr: scores_by_call(rr, called, n_resamples, seed)
    if acquisitions is not None:
        groupings["by_acquisition"] = lambda rr: scores_by_group(rr, acquisitions, None, n_resamples, seed)
    map_rows = [(name, slice_scores(maps[r], b, tolerances[name])) for r, name, _, b, _ in rows] if groupings else []
    for key, split_by in groupings.items():
        scores[key] = split_by(map_rows)
        if prior is not None:
            scores[f"location_prior_{key}"] = split_by(prior_rows)
    targets = open_store(slices_path, kind="slices")[split]["target"]
    overlays_dir = Path(overlays_dir)
    overlays_dir.mkdir(parents=True)
    for r, name, k, b, labels in pick_evenly(rows, n_overlays):
        overlay_png(overlays_dir / f"{Path(name).stem}_s{k:03d}.png", np.asarray(targets[r]), np.asarray(maps[r]),
                    b, labels, f"MRNet {METHOD_NAMES.get(method, method)}, {name} slice {k} ({split} split)",
                    tol=tolerances[name], method=METHOD_NAMES.get(method, method))
    return scores
