"""How well ROI heatmaps find annotated lesions: pointing game and energy inside the boxes.

- Pointing game (Zhang et al. 2018): a slice is a hit when the heatmap's maximum lies inside one
  of its ground-truth boxes; the score is the share of annotated slices that are hits. A map
  that is zero everywhere is a miss.
- Energy in box: the share of the heatmap's total mass that falls inside the union of the boxes
  (0 for an all-zero map), averaged over annotated slices.
Chance levels for both are the union's share of the image area (a uniformly random point, a
uniform map), reported next to them.

Boxes are `(row0, col0, height, width)` in the crop frame (native orientation, row 0 = top).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import InputError

Box = tuple[int, int, int, int]


def box_mask(shape: tuple[int, int], boxes: Iterable[Box]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r0, c0, h, w in boxes:
        mask[max(r0, 0):max(r0 + h, 0), max(c0, 0):max(c0 + w, 0)] = True
    return mask


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


def crop_boxes(boxes: Iterable[Box], frame: tuple[int, int], crop: int) -> list[Box]:
    """Boxes in a recon frame `(H, W)` -> the central `crop` x `crop` (fastMRI center_crop
    offsets `(n - crop) // 2`), clipped; boxes entirely outside the crop are dropped."""
    dr, dc = (frame[0] - crop) // 2, (frame[1] - crop) // 2
    out = []
    for r0, c0, h, w in boxes:
        r_lo, c_lo = max(r0 - dr, 0), max(c0 - dc, 0)
        r_hi, c_hi = min(r0 - dr + h, crop), min(c0 - dc + w, crop)
        if r_hi > r_lo and c_hi > c_lo:
            out.append((int(r_lo), int(c_lo), int(r_hi - r_lo), int(c_hi - c_lo)))
    return out


def slice_boxes(annotations: pd.DataFrame, frames: Mapping[str, tuple[int, int]], crop: int
                ) -> dict[tuple[str, int], list[tuple[Box, str]]]:
    """Slice-level fastMRI+ rows -> {(volume file name, slice): [(crop-frame box, label)]} for the
    volumes in `frames` (file name -> recon frame (H, W)). Native row0 = H - y - height."""
    by_stem = {name[:-3] if name.endswith(".h5") else name: name for name in frames}
    rows = annotations[annotations["slice"].notna() & annotations["height"].notna()
                       & annotations["file"].isin(list(by_stem))]
    out: dict[tuple[str, int], list[tuple[Box, str]]] = defaultdict(list)
    for r in rows.itertuples(index=False):
        name = by_stem[r.file]
        H, W = frames[name]
        native = (int(H - r.y - r.height), int(r.x), int(r.height), int(r.width))
        for b in crop_boxes([native], (H, W), crop):
            out[(name, int(r.slice))].append((b, str(r.label)))
    return dict(out)


@dataclass(frozen=True)
class CheckedBoxes:
    """An annotations file read and checked against a slices store (see `check_boxes`)."""
    path: Path
    table: pd.DataFrame                  # the rows kept (study-level rows included)
    rejected: pd.DataFrame               # `pipeline.io.annotations.REJECTED_COLUMNS`
    volumes: dict[str, dict[str, int]]   # {split: {volume file name: slices}}
    frames: dict[str, tuple[int, int]]   # {volume file name: recon frame (H, W)}, every split


def check_boxes(annotations: Path | str, slices_path: Path | str, frame: int | None = None,
                param: str = "frame", rejected_csv: Path | str | None = None) -> CheckedBoxes:
    """Read an annotations file and check every slice-level row against all splits of the slices
    store (`pipeline.io.annotations.sort_rows`). Rejected rows are left out and summed up in one
    line on stderr, ending "see <rejected_csv>" when the caller writes them there, else "not
    used". A missing, empty or header-only file is an InputError. `frame`, `param` as
    `recon_frames`."""
    from pipeline.io.annotations import read_annotations, reason_counts, recon_frames, sort_rows, store_volumes

    path = Path(annotations)
    if not path.is_file():
        raise InputError(f"{path}: annotations file not found (set data.annotations to null to run without ROIs)")
    table = read_annotations(path)
    volumes = store_volumes(slices_path)
    frames: dict[str, tuple[int, int]] = {}
    for split in volumes:
        frames.update(recon_frames(slices_path, split, frame, param=param))
    kept, rejected = sort_rows(table, volumes, frames)
    if len(rejected):
        total = int((table["study_level"] != "Yes").sum())
        kinds = ", ".join(f"{n} {k}" for k, n in reason_counts(rejected).items())
        where = f"see {rejected_csv}" if rejected_csv is not None else "not used"
        print(f"{path}: {len(rejected)} of {total} box row{'s' if total != 1 else ''} rejected ({kinds}): {where}",
              file=sys.stderr)
    return CheckedBoxes(path, kept, rejected, volumes, frames)


def split_boxes(annotations: CheckedBoxes | Path | str | None, slices_path: Path | str, split: str, crop: int,
                frame: int | None = None, param: str = "frame") -> dict[tuple[str, int], list[tuple[Box, str]]]:
    """Boxes of one split of the slices store in its crop frame, with their labels (see
    `slice_boxes`); {} without an annotations file. A path is checked first (`check_boxes`, which
    warns about rejected rows); pass a `CheckedBoxes` to read several splits with one warning.
    `frame` and `param` as `recon_frames`."""
    if annotations is None:
        return {}
    checked = annotations if isinstance(annotations, CheckedBoxes) else \
        check_boxes(annotations, slices_path, frame, param)
    if split in checked.volumes:
        frames = {n: checked.frames[n] for n in checked.volumes[split]}
    else:
        from pipeline.io.annotations import recon_frames
        frames = recon_frames(slices_path, split, frame, param=param)
    return slice_boxes(checked.table, frames, crop)


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
