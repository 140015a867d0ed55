"""Zarr v3 store layouts (DESIGN.md), atomic output paths and store integrity.

Every store has one group per split; arrays have one slice per chunk and many slices per
shard, so a store is tens of files. Writers fill whole shards at a time from a buffer.

Integrity. Every chunk carries a crc32c checksum (zarr's `crc32c` codec after zstd, inside
each shard, and on each shard's index), and empty chunks are written like any other, so a
finished store holds every chunk of every array. A writer ends with `finish_store`, which
records, as the store's last write, the number of chunk files (shards) of each array:
`attrs["complete"] = {"checksum": "crc32c", "chunks": {"train/target": 2, ...}}`.
`open_store` refuses a store without that record, or with an array whose metadata is
unreadable or disagrees with it, or whose chunk files are not all there (a missing chunk would
otherwise read as the fill value); reads go through `read_rows`/`reading`, which turn a
checksum mismatch or an undecodable chunk into one InputError line naming store, array and shard.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import google_crc32c
import numpy as np
import zarr
from numcodecs.zstd import Zstd
from zarr.codecs import Crc32cCodec, ZstdCodec

from pipeline.errors import InputError, first_line
from pipeline.stores.tmp_sweep import Claim, sweep

SPLITS = ("train", "val", "test")

warnings.filterwarnings("ignore", message=".*UnstableSpecificationWarning.*")
warnings.filterwarnings("ignore", message=".*not part of the Zarr format 3.*")


def shard_slices(slice_nbytes: int, target_bytes: int = 16 << 20) -> int:
    """Slices per shard: about `target_bytes` per shard file."""
    return max(1, min(256, target_bytes // max(1, slice_nbytes)))


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `final`, on error it is removed.

    A killed process leaves only `.tmp-`/`.old-`/`.lock-` siblings that name it as their gone owner,
    never something that looks complete; `tmp_sweep` removes them (see there for who and when).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final)  # left by a killed earlier run (kill -9 skips the cleanup below)
    claim = Claim(final)
    tmp = claim.path("tmp")
    try:
        try:
            yield tmp
        except BaseException:
            _remove(tmp)
            raise
        if final.exists() or final.is_symlink():
            old = claim.path("old")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        claim.release()


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
    Each array records a content digest of its rows (attrs `content_blake2b`, see `content_digest`),
    so a reader can key work to the data without reading it.
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
                compressors=checksum_codecs(dtype),
                # all-zero slices (box maps, heatmaps) are written too: every chunk is on disk.
                config={"write_empty_chunks": True},
            )
        self._big = set(big)
        self._fast = {k: ShardRows.for_array(self.arrays[k]) for k in big}
        self._hash = {k: hashlib.blake2b(digest_size=16) for k in arrays}
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
            v = np.asarray(v)
            self._buf[k].append(v)
            self._hash[k].update(np.ascontiguousarray(v))  # hashlib reads the buffer: no copy
        self._buffered += lengths.pop()
        while self._big and self._buffered >= self.shard:
            self._flush(self.shard)

    def _flush(self, count: int) -> None:
        for k in self._big:
            parts = self._buf[k]
            block = np.concatenate(parts) if len(parts) > 1 else parts[0]
            write_rows(self.arrays[k], self._start, block[:count], self._fast[k])
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
        for k, arr in self.arrays.items():
            arr.attrs[DIGEST] = self._hash[k].hexdigest()


DIGEST = "content_blake2b"


def content_digest(arr: zarr.Array) -> str:
    """The digest ShardedWriter recorded for the array's rows; a store written otherwise has none."""
    digest = arr.attrs.get(DIGEST)
    if not isinstance(digest, str):
        raise InputError(f"{_where(arr)}: has no content digest (attrs '{DIGEST}'): written by an older "
                         f"version or altered; rebuild the store")
    return digest


def checksum_codecs(dtype) -> list:
    """Bytes-to-bytes codecs of a pipeline array: zstd (not for strings), then a crc32c checksum.
    In a sharded array they apply to each inner chunk; the shard index has its own crc32c."""
    return [Crc32cCodec()] if dtype is str else [ZstdCodec(level=1), Crc32cCodec()]


COMPLETE = "complete"


def _grid(arr: zarr.Array) -> tuple[int, ...]:
    """Number of chunk files (shards, or chunks when not sharded) along each axis."""
    step = arr.shards or arr.chunks
    return tuple(math.ceil(n / c) for n, c in zip(arr.shape, step))


def _chunk_keys(arr: zarr.Array) -> list[str]:
    """The chunk files a complete array holds, relative to the array (default key encoding)."""
    grid = _grid(arr)
    if not grid:
        return ["c"]
    return ["c/" + "/".join(map(str, idx)) for idx in itertools.product(*(range(g) for g in grid))]


def _arrays(root: zarr.Group) -> dict[str, zarr.Array]:
    return {name: a for name, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}


def finish_store(root: zarr.Group) -> dict[str, int]:
    """Record the store as complete, with each array's number of chunk files; call it last,
    once every array is written. Raises if a chunk file is missing already."""
    base = _store_dir(root)
    chunks = {}
    for name, arr in sorted(_arrays(root).items()):
        keys = _chunk_keys(arr)
        missing = [k for k in keys if not (base / name / k).is_file()]
        if missing:
            raise RuntimeError(f"{base}: {name}: chunk {missing[0]} was not written")
        chunks[name] = len(keys)
    root.attrs[COMPLETE] = {"checksum": "crc32c", "chunks": chunks}
    return chunks


def _store_dir(root: zarr.Group) -> Path:
    store_root = getattr(root.store, "root", None)
    if store_root is None:
        raise RuntimeError("pipeline stores are directories on disk")
    return Path(store_root) / root.path if root.path else Path(store_root)


def verify_store(path: Path, root: zarr.Group, kind: str) -> None:
    """Cheap checks of a store against its completion record (metadata and file sizes only)."""
    record = root.attrs.get(COMPLETE)
    if not isinstance(record, dict) or not isinstance(record.get("chunks"), dict):
        raise InputError(f"{path}: {kind} store has no completion record (attrs '{COMPLETE}'): it was not "
                         f"finished or has been altered; rebuild it")
    try:
        members = _arrays(root)  # all metadata in one concurrent pass
    except Exception:
        members = {}  # some metadata is unreadable: found below, array by array
    for name, expected in record["chunks"].items():
        try:
            arr = members[name] if name in members else root[name]
            keys = _chunk_keys(arr)
        except Exception as exc:
            raise InputError(f"{path}: array {name}: unreadable metadata ({first_line(exc)})") from None
        if not isinstance(arr, zarr.Array):
            raise InputError(f"{path}: {name} is not an array")
        if len(keys) != expected:
            raise InputError(f"{path}: array {name}: metadata gives {len(keys)} chunk files, the completion "
                             f"record {expected}")
        for key in keys:
            f = path / name / key
            try:
                size = f.stat().st_size
            except OSError:
                raise InputError(f"{path}: array {name}: chunk {key} is missing") from None
            if size == 0:
                raise InputError(f"{path}: array {name}: chunk {key} is empty (truncated)")


def open_store(path: Path | str, *, kind: str) -> zarr.Group:
    """Open a finished store read-only; a missing, unfinished or damaged one is an InputError.

    Checks the completion record and that every chunk file it counts is there (no data is read)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(f"{path}: missing {kind} store (run the stage that writes it first)")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # corrupt metadata
        raise InputError(f"{path}: unreadable {kind} store ({first_line(exc)})") from None
    verify_store(path, root, kind)
    return root


def _where(arr: zarr.Array) -> str:
    store_root = getattr(arr.store, "root", None)
    store = str(store_root) if store_root is not None else "store"
    return f"{store}: array {arr.path}"


@contextlib.contextmanager
def reading(arr: zarr.Array, start: int | None = None) -> Iterator[None]:
    """Turn a failed read of `arr` (checksum mismatch, undecodable chunk or shard index) into one
    InputError line naming the store, the array and, given the first row read, the shard."""
    try:
        yield
    except (InputError, MemoryError, OSError):
        raise  # not damage: the stage wrapper reports an OSError with its path
    except Exception as exc:
        what = "checksum mismatch" if "checksum" in str(exc) else first_line(exc, 120)
        if start is not None and arr.ndim:
            raise _damaged(arr, start, what) from None
        raise InputError(f"{_where(arr)}: damaged ({what})") from None


def _damaged(arr: zarr.Array, start: int, what: str) -> InputError:
    step = (arr.shards or arr.chunks)[0]
    k = start // step
    where = f" chunk c/{'/'.join([str(k)] + ['0'] * (arr.ndim - 1))} (rows {k * step}-" \
            f"{min((k + 1) * step, arr.shape[0]) - 1})"
    return InputError(f"{_where(arr)}:{where} damaged ({what})")


_INDEX_END = 2**64 - 1   # a shard index entry of a chunk that is not there


class ShardRows:
    """Rows of an image array in the layout ShardedWriter writes (one row per inner chunk,
    bytes + zstd + crc32c inside `sharding_indexed`, the index at the end with its own crc32c),
    read and written straight from and to the shard files. Reading a row costs about 10x less CPU
    than zarr's general path, which matters when a DataLoader reads a shuffled batch slice by
    slice; writing a shard (`write_shard`) about half, the same bytes as zarr writes, with no
    event loop and no threads (the stages write shards from several processes already). Reads make
    the same checks as zarr's, plus a missing chunk is damage; `ShardRows.for_array` returns None
    for any other layout (use zarr for those)."""

    def __init__(self, arr: zarr.Array, directory: Path, zstd: dict):
        self.arr, self.dir = arr, directory
        self.rows_per_shard = int(arr.shards[0])
        self.row_shape = tuple(int(n) for n in arr.shape[1:])
        self.dtype = np.dtype(arr.dtype)
        self._index: dict[int, np.ndarray] = {}
        self._zstd = Zstd(level=int(zstd.get("level", 0)), checksum=bool(zstd.get("checksum", False)))

    @classmethod
    def for_array(cls, arr: zarr.Array) -> "ShardRows | None":
        meta = arr.metadata.to_dict()
        codecs = meta.get("codecs", [])
        if arr.ndim < 2 or arr.shards is None or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = [c.get("name") for c in conf["codecs"]]
        index = [c.get("name") for c in conf["index_codecs"]]
        little = all(c.get("configuration", {}).get("endian", "little") == "little"
                     for c in conf["codecs"] + conf["index_codecs"] if c.get("name") == "bytes")
        key = meta.get("chunk_key_encoding", {})
        if (inner != ["bytes", "zstd", "crc32c"] or index != ["bytes", "crc32c"] or not little
                or conf.get("index_location", "end") != "end" or tuple(conf["chunk_shape"])[0] != 1
                or tuple(conf["chunk_shape"][1:]) != tuple(arr.shape[1:])
                or key.get("name") != "default" or key.get("configuration", {}).get("separator", "/") != "/"
                or np.dtype(arr.dtype).kind not in "fiub"):
            return None
        store_root = getattr(arr.store, "root", None)
        if store_root is None:
            return None
        return cls(arr, Path(store_root) / arr.path, conf["codecs"][1].get("configuration", {}))

    def _shard_file(self, k: int) -> Path:
        return self.dir / "c" / "/".join([str(k)] + ["0"] * (len(self.row_shape)))

    def _shard_index(self, k: int) -> np.ndarray:
        if k not in self._index:
            n = self.rows_per_shard * 16 + 4
            with open(self._shard_file(k), "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                raw = os.pread(fh.fileno(), n, size - n) if size >= n else b""
            if len(raw) != n:
                raise _damaged(self.arr, k * self.rows_per_shard, "truncated shard index")
            if _crc32c_bytes(raw[:-4]) != raw[-4:]:
                raise _damaged(self.arr, k * self.rows_per_shard, "checksum mismatch")
            self._index[k] = np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)
        return self._index[k]

    def write_shard(self, k: int, rows: np.ndarray) -> None:
        """Shard file k from `rows`, all its rows (fewer only in the array's last shard), as zarr
        writes it with empty chunks written: each row's chunk (its little-endian bytes, zstd, then
        the crc32c of that) in row order, then the index of (offset, size) pairs, (2^64 - 1, 2^64 - 1)
        for a row past the array's end, and the index's crc32c."""
        first = k * self.rows_per_shard
        n = min(self.rows_per_shard, int(self.arr.shape[0]) - first)
        rows = np.asarray(rows)
        if n <= 0 or rows.shape != (n, *self.row_shape):
            raise ValueError(f"shard {k} of {_where(self.arr)} holds {max(n, 0)} rows of {self.row_shape}, "
                             f"got {rows.shape}")
        rows = np.ascontiguousarray(rows, dtype=self.dtype.newbyteorder("<"))
        index = np.full((self.rows_per_shard, 2), _INDEX_END, dtype="<u8")
        parts, offset = [], 0
        for j, row in enumerate(rows):
            chunk = self._zstd.encode(row)
            parts += [chunk, _crc32c_bytes(chunk)]
            index[j] = offset, len(chunk) + 4
            offset += len(chunk) + 4
        index_bytes = index.tobytes()
        parts += [index_bytes, _crc32c_bytes(index_bytes)]
        path = self._shard_file(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.writelines(parts)

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out[i] = row rows[i], for each i."""
        for i, row in enumerate(np.asarray(rows, dtype=np.int64)):
            out[i] = self.row(int(row))

    def row(self, row: int) -> np.ndarray:
        k, j = divmod(row, self.rows_per_shard)
        offset, nbytes = (int(v) for v in self._shard_index(k)[j])
        if offset == _INDEX_END:
            raise _damaged(self.arr, row, "missing chunk")
        with open(self._shard_file(k), "rb") as fh:
            raw = os.pread(fh.fileno(), nbytes, offset)
        if len(raw) != nbytes or nbytes < 4:
            raise _damaged(self.arr, row, "truncated chunk")
        if _crc32c_bytes(raw[:-4]) != raw[-4:]:
            raise _damaged(self.arr, row, "checksum mismatch")
        try:
            data = self._zstd.decode(raw[:-4])
        except Exception as exc:
            raise _damaged(self.arr, row, first_line(exc, 120)) from None
        expected = self.dtype.itemsize * int(np.prod(self.row_shape))
        if len(data) != expected:
            raise _damaged(self.arr, row, f"chunk of {len(data)} bytes, expected {expected}")
        return np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).reshape(self.row_shape)


def _crc32c_bytes(data) -> bytes:
    """The crc32c checksum zarr's `crc32c` codec appends: 4 bytes, little-endian."""
    return google_crc32c.value(data).to_bytes(4, "little")


def write_rows(arr: zarr.Array, start: int, rows: np.ndarray, fast: "ShardRows | None" = None) -> None:
    """`arr[start:start + len(rows)] = rows` for whole shards (`start` at a shard's first row, the
    rows filling shards up to the array's end if not a whole number of them): shard by shard through
    `fast` (the array's `ShardRows`, or found here) when the layout is ShardRows', else zarr's path.
    The same bytes either way."""
    fast = fast or ShardRows.for_array(arr)
    if fast is None:
        arr[start:start + len(rows)] = rows
        return
    step = fast.rows_per_shard
    if start % step or (len(rows) % step and start + len(rows) != arr.shape[0]):
        raise ValueError(f"{_where(arr)}: rows {start}-{start + len(rows) - 1} are not whole shards of {step}")
    for a in range(0, len(rows), step):
        fast.write_shard((start + a) // step, rows[a:a + step])


def read_rows(arr: zarr.Array, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """`arr[start:stop]` (all rows by default), failures as InputError (see `reading`).
    Strings come back as numpy's fixed-width str."""
    with reading(arr, start or 0):
        out = arr[...] if arr.ndim == 0 else arr[start:stop]
    return as_str(out) if getattr(out, "dtype", None) is not None and out.dtype.kind in "OTU" else out


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
    a_vol, b_vol = read_rows(ref["volume"]), read_rows(other["volume"])
    if a_vol.shape != b_vol.shape:
        raise InputError(f"{what}: {b_vol.shape[0]} slices, the slices store has {a_vol.shape[0]}")
    if not (np.array_equal(a_vol, b_vol)
            and np.array_equal(read_rows(ref["slice"]), read_rows(other["slice"]))):
        raise InputError(f"{what}: volume/slice order differs from the slices store")
