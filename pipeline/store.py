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
from zarr.codecs import ZstdCodec

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


def _row_bytes(row_shape: tuple[int, ...], dtype) -> int:
    return int(np.prod(row_shape)) * np.dtype(dtype if dtype is not str else "U16").itemsize


class ShardedWriter:
    """Writes rows (first axis) of several arrays in one zarr group.

    Image arrays (2-D rows) get one slice per chunk and are written a full shard at a time.
    Per-slice scalars and 1-D rows (masks) are one chunk each, written once at close(): one-element
    chunks would cost more in per-chunk overhead than the images themselves.
    """

    def __init__(self, group: zarr.Group, n: int, arrays: dict[str, tuple[tuple[int, ...], object]],
                 shard: int | None = None):
        big = {k: v for k, v in arrays.items() if len(v[0]) >= 2}
        self.shard = shard or shard_slices(max((_row_bytes(*v) for v in big.values()), default=1))
        self.shard = min(self.shard, max(n, 1))
        self.n = n
        self.arrays = {}
        for name, (row_shape, dtype) in arrays.items():
            rows = (1 if name in big else max(n, 1))
            self.arrays[name] = group.create_array(
                name, shape=(n, *row_shape), chunks=(rows, *row_shape),
                shards=(self.shard, *row_shape) if name in big else None, dtype=dtype,
                fill_value="" if dtype is str else None,
                # zstd level 1: float images barely compress, and level 3 doubles the write time.
                compressors=None if dtype is str else ZstdCodec(level=1),
            )
        self._big = set(big)
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
        while self._big and self._buffered >= self.shard:
            self._flush(self.shard)

    def _flush(self, count: int) -> None:
        for k in self._big:
            parts = self._buf[k]
            block = np.concatenate(parts) if len(parts) > 1 else parts[0]
            self.arrays[k][self._start:self._start + count] = block[:count]
            rest = block[count:]
            self._buf[k] = [rest] if len(rest) else []
        self._start += count
        self._buffered -= count

    def close(self) -> None:
        if self._buffered and self._big:
            self._flush(self._buffered)
        written = self._start if self._big else self._buffered
        if written != self.n:
            raise RuntimeError(f"wrote {written} rows, expected {self.n}")
        for k in set(self.arrays) - self._big:
            if self.n:
                self.arrays[k][:] = np.concatenate(self._buf[k])
            self._buf[k] = []


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


def as_str(values) -> np.ndarray:
    """Fixed-width str array from what zarr returns for string arrays (numpy StringDType, which
    does not cast with `.astype(str)`)."""
    return np.asarray(np.asarray(values).tolist(), dtype=str)


def check_aligned(ref: zarr.Group, other: zarr.Group, what: str) -> None:
    """Raise unless `other` lists the same (volume, slice) rows as `ref`, in the same order."""
    for key in ("volume", "slice"):
        if key not in other:
            raise InputError(f"{what}: has no '{key}' array to check alignment with the slices store")
    a_vol, b_vol = as_str(ref["volume"][:]), as_str(other["volume"][:])
    if a_vol.shape != b_vol.shape:
        raise InputError(f"{what}: {b_vol.shape[0]} slices, the slices store has {a_vol.shape[0]}")
    if not (np.array_equal(a_vol, b_vol)
            and np.array_equal(ref["slice"][:], other["slice"][:])):
        raise InputError(f"{what}: volume/slice order differs from the slices store")
