"""fastMRI+ knee annotations (`knee.csv`): reading and writing.

Columns (exactly, as in microsoft/fastmri-plus `Annotations/knee.csv`):
`file,slice,study_level,x,y,width,height,label`. `file` is the volume name without `.h5`
(`file1000001`). Slice-level rows have `study_level == "No"` and a box; study-level rows
(`"Yes"`) leave slice and box empty. The box is given in the recon frame flipped up/down: for a
frame of height H (320 for fastMRI knee), `x` is the column of the left edge and
`y = H - row0 - height`, where `row0` is the top row in native orientation (row 0 = top).
fastMRI's `AnnotatedSliceDataset` applies the same flip (`y = maxy - y - height`);
`from_fastmri_plus` undoes it (and `to_fastmri_plus` applies it) for every user of the boxes.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from pipeline.errors import InputError

COLUMNS = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
_BOX = ("slice", "x", "y", "width", "height")


def to_fastmri_plus(row0: int, col0: int, height: int, width: int, frame_height: int
                    ) -> tuple[int, int, int, int]:
    """Native box (row0, col0, height, width) -> fastMRI+ (x, y, width, height)."""
    return int(col0), int(frame_height) - int(row0) - int(height), int(width), int(height)


def from_fastmri_plus(x: int, y: int, width: int, height: int, frame_height: int
                      ) -> tuple[int, int, int, int]:
    """fastMRI+ (x, y, width, height) -> native box (row0, col0, height, width)."""
    return int(frame_height) - int(y) - int(height), int(x), int(height), int(width)


def write_annotations(path: Path | str, rows: Iterable[Mapping]) -> None:
    """Write fastMRI+ knee.csv-style rows (mappings with the `COLUMNS` keys; `file` without
    `.h5`, geometry already in the fastMRI+ convention) to `path`. Missing keys are left empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            out = []
            for c in COLUMNS:
                v = r.get(c, "")
                if c == "file":
                    v = str(v)
                    v = v[:-3] if v.endswith(".h5") else v
                out.append("" if v is None else v)
            w.writerow(out)


def read_annotations(path: Path | str) -> pd.DataFrame:
    """Read a fastMRI+ knee.csv-style file.

    Returns the CSV columns (`slice,x,y,width,height` as nullable integers, still in the flipped
    fastMRI+ frame; `file` without `.h5`; `label` stripped of surrounding blanks; real knee.csv has
    e.g. "Joint Effusion ") and `line`, the row's line number in the file (for messages).
    Study-level rows (empty slice/box) keep `<NA>` in the numeric columns. An empty or header-only file is an
    InputError; which rows fit which volume is checked against the data (`sort_rows`).
    """
    path = Path(path)
    try:
        # blank lines are kept (then dropped) so that `line` is the row's line number in the file
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty annotations file (expected the header {','.join(COLUMNS)} "
                         f"and one row per box)") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except (OSError, pd.errors.ParserError) as e:
        raise InputError(f"{path}: cannot read annotations ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if not {"file", "slice", "study_level"} & set(df.columns):  # the first line is a row, not the header
        raise InputError(f"{path}: no header line (the first line must be {','.join(COLUMNS)})")
    if missing:
        raise InputError(f"{path}: annotation CSV lacks columns {missing}")
    df = df[list(COLUMNS)].copy()
    df.insert(0, "line", df.index + 2)
    df = df[(df[list(COLUMNS)].apply(lambda col: col.str.strip()) != "").any(axis=1)].reset_index(drop=True)
    if df.empty:
        raise InputError(f"{path}: no annotation rows, only the header")
    df["file"] = df["file"].str.strip().str.replace(r"\.h5$", "", regex=True)
    df["study_level"] = df["study_level"].str.strip()
    df["label"] = df["label"].str.strip()
    for c in _BOX:
        vals = df[c].str.strip().replace("", None)
        num = pd.to_numeric(vals, errors="coerce")
        bad = num.isna() & vals.notna()
        if bad.any():
            i = int(bad.idxmax())
            raise InputError(f"{path}: line {df['line'][i]}: column {c!r} is not a number: {df[c][i]!r}")
        df[c] = num.round().astype("Int64")
    return df


def recon_frames(slices_path: Path | str, split: str, frame: int | None = None,
                 param: str = "frame") -> dict[str, tuple[int, int]]:
    """Recon frame (H, W) of each volume of a split, in which annotation boxes are given:
    `frame` x `frame` when set (fastMRI+ knee: 320), else the target shape the slices store
    recorded (its `recon_frames` attr) or, for a store without it, read from the fastMRI files it
    was built from (its `raw_dir` and `challenge` attrs). `param` names the setting to suggest
    when a file cannot be found."""
    from pipeline.io.fastmri import FastMRIFile
    from pipeline.stores.zarr_store import open_store, read_rows, split_group

    slices = open_store(slices_path, kind="slices")
    names = sorted(set(read_rows(split_group(slices, split, slices_path)["volume"]).tolist()))
    if frame is not None:
        return {n: (frame, frame) for n in names}
    recorded = dict(slices.attrs.get("recon_frames", {})).get(split, {})
    if all(n in recorded for n in names):
        return {n: (int(recorded[n][0]), int(recorded[n][1])) for n in names}
    raw_dir, challenge = slices.attrs.get("raw_dir"), slices.attrs.get("challenge", "singlecoil")
    frames = {}
    for n in names:
        path = Path(str(raw_dir)) / split / n
        if raw_dir is None or not path.is_file():
            raise InputError(f"{path}: fastMRI file not found to read the annotation frame size of {n}; "
                             f"set {param} (320 for fastMRI+ knee boxes)")
        with FastMRIFile(path, str(challenge)) as f:
            frames[n] = tuple(int(v) for v in f.info.target_shape)
    return frames


def store_volumes(slices_path: Path | str) -> dict[str, dict[str, int]]:
    """{split: {volume file name: number of slices}} of every split of a slices store."""
    import numpy as np

    from pipeline.stores.zarr_store import SPLITS, open_store, read_rows

    slices = open_store(slices_path, kind="slices")
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        if split not in slices:
            continue
        names = read_rows(slices[split]["volume"])
        idx = np.asarray(read_rows(slices[split]["slice"]))
        depth: dict[str, int] = {}
        for n, k in zip(names.tolist(), idx.tolist()):
            depth[n] = max(depth.get(n, 0), int(k) + 1)
        out[split] = depth
    return out


REJECTED_COLUMNS = ("line", "file", "slice", "x", "y", "width", "height", "label", "reason")
# why a slice-level row is left out, in the order they are checked (and counted in the warning)
REASONS = ("unknown file", "missing fields", "slice out of range", "non-positive size", "box outside the frame")


def sort_rows(annotations: pd.DataFrame, volumes: Mapping[str, Mapping[str, int]],
              frames: Mapping[str, tuple[int, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the slice-level rows (study_level other than "Yes") into usable and rejected ones.

    `volumes`: {split: {file name: slices}} (see `store_volumes`); `frames`: {file name: recon
    frame (H, W)}. A row is rejected, with the first reason of `REASONS` that applies, when its
    file is in none of the splits, it lacks slice/x/y/width/height, its slice is outside the
    volume, its box has a width or height below 1, or the box (x, y, width, height, in the
    fastMRI+ flipped frame) does not lie inside the volume's frame (x, y >= 0; a volume missing
    from `frames` only gets the x, y >= 0 check). Returns (annotations without the rejected
    rows, rejected rows with `REJECTED_COLUMNS`; `reason` is one of `REASONS`, maybe followed by
    a detail in parentheses). Study-level rows are kept as they are.
    """
    depth = {(n[:-3] if n.endswith(".h5") else n): k for split in volumes.values() for n, k in split.items()}
    frame_of = {(n[:-3] if n.endswith(".h5") else n): f for n, f in frames.items()}
    table = annotations if "line" in annotations.columns else \
        annotations.assign(line=annotations.index + 2)
    reasons: dict = {}
    for r in table[table["study_level"] != "Yes"].itertuples():
        if r.file not in depth:
            reasons[r.Index] = "unknown file"
            continue
        missing = [c for c in _BOX if pd.isna(getattr(r, c))]
        if missing:
            reasons[r.Index] = f"missing fields ({', '.join(missing)})"
            continue
        n = depth[r.file]
        if not 0 <= r.slice < n:
            reasons[r.Index] = f"slice out of range (volume has slices 0..{n - 1})"
        elif r.width <= 0 or r.height <= 0:
            reasons[r.Index] = f"non-positive size ({r.width}x{r.height})"
        elif r.x < 0 or r.y < 0:
            reasons[r.Index] = "box outside the frame (x and y must be >= 0)"
        elif r.file in frame_of:
            H, W = frame_of[r.file]
            if r.x + r.width > W or r.y + r.height > H:
                reasons[r.Index] = f"box outside the frame ({H}x{W})"
    bad = table.index.isin(list(reasons))
    rejected = table.loc[bad, list(REJECTED_COLUMNS[:-1])].copy()
    rejected["reason"] = [reasons[i] for i in rejected.index]
    return annotations.loc[~bad], rejected.reset_index(drop=True)


def reason_counts(rejected: pd.DataFrame) -> dict[str, int]:
    """{reason (without its detail): rows} in the order of `REASONS`, non-zero ones only."""
    kinds = rejected["reason"].str.replace(r" \(.*\)$", "", regex=True).value_counts()
    return {k: int(kinds[k]) for k in REASONS if kinds.get(k, 0)}


def write_rejected(path: Path | str, rejected: pd.DataFrame) -> None:
    """The rejected rows (`sort_rows`) as CSV with `REJECTED_COLUMNS`; a header alone when none."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(REJECTED_COLUMNS)
        for r in rejected[list(REJECTED_COLUMNS)].itertuples(index=False):
            w.writerow(["" if pd.isna(v) else v for v in r])
