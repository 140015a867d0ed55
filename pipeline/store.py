"""Zarr v3 store layouts (DESIGN.md) and atomic output paths.

Every store has one group per split; arrays have one slice per chunk and many slices per
shard, so a store is tens of files. Writers fill whole shards at a time from a buffer.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr

from pipeline.errors import InputError

SPLITS = ("train", "val", "test")

warnings.filterwarnings("ignore", message=".*UnstableSpecificationWarning.*")
warnings.filterwarnings("ignore", message=".*not part of the Zarr format 3.*")


def shard_slices(slice_nbytes: int, target_bytes: int = 16 << 20) -> int:
    """Slices per shard: about `target_bytes` per shard file."""
    return max(1, min(256, target_bytes // max(1, slice_nbytes)))


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `final`, on error it is removed.

    A killed process leaves only a `.tmp-*` sibling, never something that looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.exists() or final.is_symlink():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


class ShardedWriter:
    """Writes rows (first axis) of several arrays in one zarr group, a full shard at a time."""

    def __init__(self, group: zarr.Group, n: int, arrays: dict[str, tuple[tuple[int, ...], object]],
                 shard: int | None = None):
        row_bytes = max(int(np.prod(s)) * np.dtype(d if d is not str else "U1").itemsize
                        for s, d in arrays.values())
        self.shard = shard or shard_slices(row_bytes)
        self.n = n
        self.arrays = {}
        for name, (row_shape, dtype) in arrays.items():
            self.arrays[name] = group.create_array(
                name, shape=(n, *row_shape), chunks=(1, *row_shape),
                shards=(min(self.shard, max(n, 1)), *row_shape), dtype=dtype,
                fill_value="" if dtype is str else None,
            )
        self._buf: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
        self._buffered = 0
        self._start = 0

    def append(self, **rows: np.ndarray) -> None:
        if set(rows) != set(self.arrays):
            raise ValueError(f"expected arrays {sorted(self.arrays)}, got {sorted(rows)}")
        lengths = {len(v) for v in rows.values()}
        if len(lengths) != 1:
            raise ValueError("all arrays must get the same number of rows")
        for k, v in rows.items():
            self._buf[k].append(np.asarray(v))
        self._buffered += lengths.pop()
        step = self.arrays[next(iter(self.arrays))].shards[0]
        while self._buffered >= step:
            self._flush(step)

    def _flush(self, count: int) -> None:
        for k, parts in self._buf.items():
            block = np.concatenate(parts) if len(parts) > 1 else parts[0]
            self.arrays[k][self._start:self._start + count] = block[:count]
            rest = block[count:]
            self._buf[k] = [rest] if len(rest) else []
        self._start += count
        self._buffered -= count

    def close(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        if self._start != self.n:
            raise RuntimeError(f"wrote {self._start} rows, expected {self.n}")


def open_store(path: Path | str, *, kind: str) -> zarr.Group:
    """Open a finished store read-only; a missing or unfinished one is an InputError."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(f"{path}: missing {kind} store (run the stage that writes it first)")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # corrupt metadata
        raise InputError(f"{path}: unreadable {kind} store ({exc})") from None


def split_group(root: zarr.Group, split: str, path: Path | str) -> zarr.Group:
    if split not in root:
        raise InputError(f"{path}: store has no split '{split}'")
    return root[split]


def check_aligned(ref: zarr.Group, other: zarr.Group, what: str) -> None:
    """Raise unless `other` lists the same (volume, slice) rows as `ref`, in the same order."""
    for key in ("volume", "slice"):
        if key not in other:
            raise InputError(f"{what}: has no '{key}' array to check alignment with the slices store")
    a_vol, b_vol = ref["volume"][:], other["volume"][:]
    if a_vol.shape != b_vol.shape:
        raise InputError(f"{what}: {b_vol.shape[0]} slices, the slices store has {a_vol.shape[0]}")
    if not (np.array_equal(a_vol.astype(str), b_vol.astype(str))
            and np.array_equal(ref["slice"][:], other["slice"][:])):
        raise InputError(f"{what}: volume/slice order differs from the slices store")
