"""Lesion boxes: from fastMRI+ rows to each slice's boxes in the crop frame, and from boxes to pixels.

A box is `(row0, col0, height, width)` in native orientation (row 0 = top). fastMRI+ rows give
`(x, y, width, height)` in the recon frame flipped up/down; `pipeline.io.annotations` reads the
file and undoes the flip (`from_fastmri_plus`, the only place it is done). The boxes then move
into the central `crop` x `crop` as fastMRI's `center_crop` crops the image (offsets
`(n - crop) // 2`), clipped to it. Every slice's boxes are keyed by (volume file name, slice index),
the rows of the stores.

`box_mask` draws boxes as pixels (the ROI of the metrics, the oracle's map, the figures' ROI);
`slice_masks` does it for rows of a store.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io.annotations import (from_fastmri_plus, read_annotations, reason_counts, recon_frames, sort_rows,
                                     store_volumes)

Box = tuple[int, int, int, int]
SliceKey = tuple[str, int]          # (volume file name, slice index)


# --------------------------------------------------------------------------- pixels
def box_mask(shape: tuple[int, int], boxes: Iterable[Box], out: Optional[np.ndarray] = None) -> np.ndarray:
    """bool `shape`: True inside the union of `boxes` (parts outside the image are left out).
    Drawn into `out` (bool, `shape`, all False) when given."""
    mask = np.zeros(shape, dtype=bool) if out is None else out
    for r0, c0, h, w in boxes:
        mask[max(r0, 0):max(r0 + h, 0), max(c0, 0):max(c0 + w, 0)] = True
    return mask


def slice_masks(volumes: Sequence, slices: Sequence, shape: tuple[int, int],
                boxes: Mapping[SliceKey, Sequence[Box]]) -> np.ndarray:
    """bool (n, *shape): the `box_mask` of each row (volumes[i], slices[i]); all False for a row
    without boxes."""
    out = np.zeros((len(volumes), *shape), dtype=bool)
    for i, (v, k) in enumerate(zip(volumes, slices)):
        box_mask(shape, boxes.get((str(v), int(k)), ()), out=out[i])
    return out


# --------------------------------------------------------------------------- geometry
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
                ) -> dict[SliceKey, list[tuple[Box, str]]]:
    """Slice-level fastMRI+ rows -> {(volume file name, slice): [(crop-frame box, label)]} for the
    volumes in `frames` (file name -> recon frame (H, W))."""
    by_stem = {name[:-3] if name.endswith(".h5") else name: name for name in frames}
    rows = annotations[annotations["slice"].notna() & annotations["height"].notna()
                       & annotations["file"].isin(list(by_stem))]
    out: dict[SliceKey, list[tuple[Box, str]]] = defaultdict(list)
    for r in rows.itertuples(index=False):
        name = by_stem[r.file]
        frame = frames[name]
        native = from_fastmri_plus(r.x, r.y, r.width, r.height, frame_height=frame[0])
        for b in crop_boxes([native], frame, crop):
            out[(name, int(r.slice))].append((b, str(r.label)))
    return dict(out)


def without_labels(found: Mapping[SliceKey, Sequence[tuple[Box, str]]]) -> dict[SliceKey, list[Box]]:
    """{slice: [(box, label)]} -> {slice: [box]}."""
    return {key: [b for b, _ in pairs] for key, pairs in found.items()}


# --------------------------------------------------------------------------- an annotations file
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
                frame: int | None = None, param: str = "frame") -> dict[SliceKey, list[tuple[Box, str]]]:
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
        frames = recon_frames(slices_path, split, frame, param=param)
    return slice_boxes(checked.table, frames, crop)
