"""ROI maps drawn from the ground-truth boxes: the `oracle` variant's loss weights.

The store has the heatmaps store's layout (per split `volume`, `slice`, and `heatmap` float32
(N, C, C), aligned row by row with the slices store), so the oracle trains through exactly the
code path of the Grad-CAM-weighted variant; only the map differs: 1 inside the union of a
slice's boxes (in the crop frame), 0 elsewhere, all zeros on slices without boxes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import zarr

from pipeline.roi.boxes import CheckedBoxes, check_boxes, slice_masks, split_boxes, without_labels
from pipeline.stores.zarr_store import SPLITS, ShardedWriter, finish_store, open_store, read_rows, split_group

Progress = Optional[Callable[[int], None]]


def write_box_maps(path: Path | str, slices_path: Path | str, annotations: CheckedBoxes | Path | str,
                   frame: int | None = None, progress: Progress = None, frame_param: str = "frame") -> dict[str, int]:
    """Box-map store at `path` (not atomic: give it a temporary path); returns {split: slices with boxes}.
    `annotations`: a file (checked here, see `check_boxes`) or one already checked."""
    slices = open_store(slices_path, kind="slices")
    checked = annotations if isinstance(annotations, CheckedBoxes) else \
        check_boxes(annotations, slices_path, frame, frame_param)
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"kind": "heatmaps", "source": "ground-truth boxes", "slices": str(slices_path),
                       "annotations": str(checked.path)})
    counts = {}
    for split in SPLITS:
        g = split_group(slices, split, slices_path)
        names, idx = read_rows(g["volume"]), np.asarray(read_rows(g["slice"]), dtype=np.int32)
        n, c = len(names), int(g["target"].shape[-1])
        boxes = without_labels(split_boxes(checked, slices_path, split, c, frame, frame_param))
        writer = ShardedWriter(root.create_group(split), n, {"volume": ((), str), "slice": ((), "int32"),
                                                             "heatmap": ((c, c), "float32")})
        step = writer.shard
        for start in range(0, n, step):
            stop = min(start + step, n)
            maps = slice_masks(names[start:stop], idx[start:stop], (c, c), boxes)
            writer.append(volume=names[start:stop], slice=idx[start:stop], heatmap=maps.astype(np.float32))
            if progress:
                progress(stop - start)
        writer.close()
        counts[split] = sum(1 for key in boxes if key[0] in set(names.tolist()))
    finish_store(root)
    return counts
