"""fastMRI+ knee annotations (`knee.csv`): reading and writing.

Columns (exactly, as in microsoft/fastmri-plus `Annotations/knee.csv`):
`file,slice,study_level,x,y,width,height,label`. `file` is the volume name without `.h5`
(`file1000001`). Slice-level rows have `study_level == "No"` and a box; study-level rows
(`"Yes"`) leave slice and box empty. The box is given in the recon frame flipped up/down: for a
frame of height H (320 for fastMRI knee), `x` is the column of the left edge and
`y = H - row0 - height`, where `row0` is the top row in native orientation (row 0 = top).
fastMRI's `AnnotatedSliceDataset` applies the same flip (`y = maxy - y - height`).
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


def read_annotations(path: Path | str, frame_height: int = 320) -> pd.DataFrame:
    """Read a fastMRI+ knee.csv-style file.

    Returns the CSV columns (`slice,x,y,width,height` as nullable integers, `file` without `.h5`,
    `label` stripped of surrounding blanks; real knee.csv has e.g. "Joint Effusion ") plus native
    `row0,col0,height,width` in a recon frame of height `frame_height`: `row0 = H - y - height`,
    `col0 = x`. Study-level rows (empty slice/box) keep `<NA>` in the numeric columns.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read annotations ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: annotation CSV lacks columns {missing}")
    df = df[list(COLUMNS)].copy()
    df["file"] = df["file"].str.strip().str.replace(r"\.h5$", "", regex=True)
    df["study_level"] = df["study_level"].str.strip()
    df["label"] = df["label"].str.strip()
    for c in _BOX:
        vals = df[c].str.strip().replace("", None)
        num = pd.to_numeric(vals, errors="coerce")
        bad = num.isna() & vals.notna()
        if bad.any():
            i = int(bad.idxmax())
            raise InputError(f"{path}: row {i + 2}: column {c!r} is not a number: {df[c][i]!r}")
        df[c] = num.round().astype("Int64")
    df["row0"] = (int(frame_height) - df["y"] - df["height"]).astype("Int64")
    df["col0"] = df["x"].astype("Int64")
    return df


def recon_frames(slices_path: Path | str, split: str, frame: int | None = None,
                 param: str = "frame") -> dict[str, tuple[int, int]]:
    """Recon frame (H, W) of each volume of a split, in which annotation boxes are given:
    `frame` x `frame` when set (fastMRI+ knee: 320), else the target shape the slices store
    recorded (its `recon_frames` attr) or, for a store without it, read from the fastMRI files it
    was built from (its `raw_dir` and `challenge` attrs). `param` names the setting to suggest
    when a file cannot be found."""
    from pipeline.io.fastmri import FastMRIFile
    from pipeline.store import as_str, open_store, split_group

    slices = open_store(slices_path, kind="slices")
    names = sorted(set(as_str(split_group(slices, split, slices_path)["volume"][:])))
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
