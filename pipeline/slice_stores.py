"""Build the slices store (fully sampled targets) and the undersampled store from fastMRI files.

One job per zarr shard of a split's image array (40 slices of 320^2; it may span volumes), over a
pool of worker processes: a worker reads its slices from HDF5 a few at a time (`READ_BYTES` of
k-space: a multicoil volume's k-space is never whole in memory), computes them, and writes the
image shard itself, so the encoding and checksums run in parallel. Results come back in order:
the per-slice arrays (volume, slice, statistics, masks) go through a pipeline.stores.zarr_store.ShardedWriter,
and the parent hashes the image rows for the arrays' content digests, reading them from shared
memory. Memory holds a few shards, whatever the number or size of the volumes; the stores are
byte for byte what writing everything through ShardedWriter gives (tests/test_slice_blocks.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import mmap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import zarr

from pipeline.errors import check_disjoint
from pipeline.io.fastmri import FastMRIFile, VolumeInfo, list_split
from pipeline.kspace import Workspace, ZeroFilled, check_crop, instance_stats, mask_function, volume_mask
from pipeline.parallel import forks, ordered_map
from pipeline.stores.zarr_store import (DIGEST, SPLITS, ShardedWriter, atomic_path, checksum_codecs, finish_store,
                                        shard_slices, write_rows)

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class MaskSpec:
    """The undersampling mask (`pipeline.kspace.mask_function`'s arguments), taken as it is."""
    type: str
    acceleration: float
    center_fraction: float


def scan_split(paths: list[Path], challenge: str, crop: int) -> list[VolumeInfo]:
    """Validate every file of a split (metadata only) and check the crop fits."""
    infos = []
    for path in paths:
        with FastMRIFile(path, challenge) as f:
            info = f.info
        check_crop(crop, info.target_shape, str(path))
        check_crop(crop, info.kspace_shape[-2:], str(path))
        infos.append(info)
    return infos


def scan(raw_dir: Path | str, challenge: str, crop: int, *, test_from_val: float = 0.0
         ) -> dict[str, list[VolumeInfo]]:
    """Every split's files validated; a file name in two splits (a volume copied across) is refused
    before any file is opened. `test_from_val`: carve test out of val (see `list_split`)."""
    files = {split: list_split(raw_dir, split, test_from_val=test_from_val) for split in SPLITS}
    check_disjoint({split: {p.name: p for p in paths} for split, paths in files.items()}, "file")
    return {split: scan_split(paths, challenge, crop) for split, paths in files.items()}


def _kspace_slice_bytes(info: VolumeInfo) -> int:
    return int(np.prod(info.kspace_shape[1:])) * 8


_WORK: dict[str, object] = {}   # per process: the last volume's mask and reused work arrays


@contextlib.contextmanager
def _fresh_work() -> Iterator[None]:
    """Forget the work arrays (tens of MB) when a store is done, also in this process."""
    _WORK.clear()
    try:
        yield
    finally:
        _WORK.clear()


def _target_block(params: tuple[int], info: VolumeInfo, start: int, stop: int,
                  out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Slices [start, stop) of one volume: the target crops into out["target"] (no per-slice rows)."""
    (crop,) = params
    with FastMRIFile(info.path, info.challenge, info) as f:
        f.target_block(start, stop, crop, out=out["target"])
    return {}


READ_BYTES = 8 << 20   # k-space read from HDF5 and transformed this much at a time (cache-sized)


def _undersample_block(params: tuple[int, MaskSpec, int], info: VolumeInfo, start: int, stop: int,
                       out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Slices [start, stop) of one volume: the zero-filled images into out["image"]; returns their
    mean, std and the mask."""
    crop, spec, width = params
    shape = info.kspace_shape
    key = (info.name, shape, crop, spec)
    if _WORK.get("key") != key:             # a new volume: its mask (seeded by the file name)
        mask_func = mask_function(spec.type, spec.acceleration, spec.center_fraction)
        mask = volume_mask(mask_func, info.name, shape)
        work = _WORK.get("workspace") or Workspace()
        _WORK.update(key=key, mask=mask, workspace=work,
                     zero_filled=ZeroFilled(shape[-2:], mask, crop, workspace=work))
    mask, zf, work = _WORK["mask"], _WORK["zero_filled"], _WORK["workspace"]
    image = out["image"]
    step = max(1, READ_BYTES // _kspace_slice_bytes(info))
    with FastMRIFile(info.path, info.challenge, info) as f:
        for a in range(start, stop, step):
            b = min(a + step, stop)
            buf = work.empty("kspace", (b - a, *shape[1:]), np.complex64)
            image[a - start:b - start] = zf(f.kspace_block(a, b, out=buf))
    mean, std = instance_stats(image)
    # Real knee files differ in width (368, 372, ...): masks are padded with False to the split's widest.
    padded = np.zeros((stop - start, width), dtype=bool)
    padded[:, :mask.size] = mask
    return {"mean": mean, "std": std, "mask": padded}


def _width(infos: list[VolumeInfo]) -> int:
    return max(i.kspace_shape[-1] for i in infos)


def _row_bytes(row_shape: tuple[int, ...], dtype) -> int:
    return int(np.prod(row_shape)) * np.dtype(dtype).itemsize


def _create_rows_array(group: zarr.Group, name: str, n: int, row_shape: tuple[int, ...], dtype) -> zarr.Array:
    """An image array laid out as pipeline.stores.zarr_store.ShardedWriter lays out its 2-D rows: one slice per
    chunk, `shard_slices` slices per shard, zstd + crc32c on every chunk, empty chunks written."""
    shard = min(shard_slices(_row_bytes(row_shape, dtype)), max(n, 1))
    return group.create_array(name, shape=(n, *row_shape), chunks=(1, *row_shape), shards=(shard, *row_shape),
                              dtype=dtype, fill_value=None, compressors=checksum_codecs(dtype),
                              config={"write_empty_chunks": True})


def _shard_jobs(infos: list[VolumeInfo], shard: int) -> Iterator[tuple[int, int, list[tuple[VolumeInfo, int, int]]]]:
    """A split's rows in shard-aligned jobs: (first row, end row, [(volume, start, stop), ...])."""
    row, first, parts = 0, 0, []
    for info in infos:
        a = 0
        while a < info.n_slices:
            take = min(info.n_slices - a, shard - (row - first))
            parts.append((info, a, a + take))
            row, a = row + take, a + take
            if row - first == shard:
                yield first, row, parts
                first, parts = row, []
    if parts:
        yield first, row, parts


# Shared memory for the image rows of the jobs in flight (forked workers inherit it): a worker
# puts a shard's rows there and writes them to the store, and the parent reads them there for the
# content digest, instead of 16 MB a shard going through a pipe. Job k uses slot k % len(_SLOTS).
_SLOTS: list[np.ndarray] = []                                       # uint8, one shared mmap
_SLOT_LAYOUT: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}  # name -> offset, row shape, dtype


@contextlib.contextmanager
def _shared_slots(count: int, rows: int, big: dict[str, tuple[tuple[int, ...], object]]) -> Iterator[None]:
    """`count` slots of `rows` rows of each image array in big = {name: (row shape, dtype)}."""
    offset = 0
    for name, (row_shape, dtype) in big.items():
        dtype = np.dtype(dtype)
        _SLOT_LAYOUT[name] = (offset, tuple(row_shape), dtype)
        offset += rows * int(np.prod(row_shape)) * dtype.itemsize
    # Anonymous and shared: forked workers see it. Not touched here: a worker faults its slot's pages
    # in as it fills them, in parallel, instead of this process zeroing a few shards (tens of MB, tens
    # of ms) before any worker starts; every slot is in use once a split has as many shards as slots.
    mm = mmap.mmap(-1, max(1, count * offset))
    base = np.frombuffer(mm, np.uint8)
    _SLOTS[:] = [base[i * offset:(i + 1) * offset] for i in range(count)]
    try:
        yield
    finally:
        _SLOTS.clear()
        _SLOT_LAYOUT.clear()
        del base
        try:
            mm.close()
        except BufferError:                                  # a view is still alive: the GC closes it
            pass


def _slot_rows(slot: int, name: str, n: int) -> np.ndarray:
    offset, row_shape, dtype = _SLOT_LAYOUT[name]
    size = n * int(np.prod(row_shape)) * dtype.itemsize
    return _SLOTS[slot][offset:offset + size].view(dtype).reshape(n, *row_shape)


def _rows_job(args: tuple) -> dict[str, np.ndarray]:
    """Worker: one shard of a split. Computes its rows (`block` per volume part) into shared slot
    `slot` (without one: into arrays it returns) for the image arrays `big`, writes those rows
    straight into their shard of the store, and returns the per-slice rows."""
    block, params, root, split, big, first, end, parts, slot = args
    n = end - first
    images = ({name: _slot_rows(slot, name, n) for name in big} if slot is not None else
              {name: np.empty((n, *shape), dtype) for name, (shape, dtype) in big.items()})
    rows, row = [], 0
    for info, a, b in parts:
        rows.append(block(params, info, a, b, {name: v[row:row + b - a] for name, v in images.items()}))
        row += b - a
    out = {k: np.concatenate([r[k] for r in rows]) if len(rows) > 1 else rows[0][k] for k in rows[0]}
    for name, v in images.items():
        write_rows(zarr.open_array(store=root, path=f"{split}/{name}", mode="r+"), first, v)
    if slot is None:
        out.update(images)
    return out


def _write_store(out: Path, scans: dict[str, list[VolumeInfo]], attrs: dict,
                 layout: Callable[[list[VolumeInfo]], dict], block: Callable,
                 params: Callable[[list[VolumeInfo]], tuple], workers: int, progress: Progress) -> dict[str, int]:
    """Every split through one pool of workers, a shard of rows per job: a worker reads its slices
    from HDF5 in blocks, computes them and writes the image shard itself (encoding and checksums in
    parallel); results come back in order, for the per-slice arrays (a pipeline.stores.zarr_store.ShardedWriter)
    and the image arrays' content digests. Memory holds a few shards whatever the number of volumes."""
    if any(i.challenge != attrs["challenge"] for infos in scans.values() for i in infos):
        raise ValueError(f"scans of another challenge than {attrs['challenge']!r}")
    counts = {split: sum(i.n_slices for i in infos) for split, infos in scans.items()}
    layouts = {split: layout(infos) for split, infos in scans.items()}
    big = {k: v for lay in layouts.values() for k, v in lay.items() if len(v[0]) >= 2}   # image arrays
    shards = {split: min(max(n, 1), *(shard_slices(_row_bytes(*big[k])) for k in big))
              for split, n in counts.items()}
    with atomic_path(out) as tmp, _fresh_work(), ThreadPoolExecutor(1) as writer:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(attrs)
        images: dict[str, dict[str, zarr.Array]] = {}     # split -> its image arrays
        small: dict[str, ShardedWriter] = {}               # split -> writer of its per-slice arrays
        # The per-slice arrays are created, filled and closed in order by one thread, apart from the
        # results coming in (zarr metadata writes take tens of ms a split).
        pending = []

        def in_order(fn, *a):
            pending.append(writer.submit(fn, *a))
            while pending and pending[0].done():
                pending.pop(0).result()                    # raises what the thread raised

        def open_small(split: str) -> None:
            small[split] = ShardedWriter(root[split], counts[split], {
                "volume": ((), str), "slice": ((), "int32"),
                **{name: v for name, v in layouts[split].items() if name not in big}})

        def close_small(split: str, digest: dict[str, str]) -> None:
            small[split].close()
            for name, arr in images[split].items():
                arr.attrs[DIGEST] = digest[name]

        def jobs(create: bool = False):
            for split, infos in scans.items():
                if create:      # a split's arrays exist before its first job is submitted
                    group = root.create_group(split)
                    images[split] = {k: _create_rows_array(group, k, counts[split], *big[k]) for k in big}
                    in_order(open_small, split)
                for first, end, parts in _shard_jobs(infos, shards[split]):
                    yield split, first, end, parts

        in_flight = workers + 1
        slots = in_flight + 1 if (workers <= 1 or forks()) else 0
        split_params = {split: params(infos) for split, infos in scans.items()}
        args = ((block, split_params[split], str(tmp), split, big, first, end, parts,
                 k % slots if slots else None)
                for k, (split, first, end, parts) in enumerate(jobs(create=True)))
        digests = {split: {k: hashlib.blake2b(digest_size=16) for k in big} for split in scans}
        with _shared_slots(slots, max(shards.values()), big):
            results = ordered_map(_rows_job, args, workers, in_flight=in_flight)
            for k, (out, (split, first, end, parts)) in enumerate(zip(results, jobs())):
                for name in big:        # before the slot is used again
                    digests[split][name].update(np.ascontiguousarray(
                        out[name] if not slots else _slot_rows(k % slots, name, end - first)).data)
                rows = {name: v for name, v in out.items() if name not in big}
                rows["volume"] = np.concatenate([np.full(b - a, info.name) for info, a, b in parts])
                rows["slice"] = np.concatenate([np.arange(a, b, dtype=np.int32) for info, a, b in parts])
                in_order(lambda split, rows: small[split].append(**rows), split, rows)
                if end == counts[split]:
                    in_order(close_small, split, {name: h.hexdigest() for name, h in digests[split].items()})
                if progress:
                    progress(end - first)
        for f in pending:
            f.result()
        finish_store(root)
    return counts


def build_slices_store(out: Path | str, scans: dict[str, list[VolumeInfo]], *, raw_dir: str,
                       challenge: str, crop: int, workers: int = 1, progress: Progress = None) -> dict[str, int]:
    """slices store: volume, slice, target (N,C,C) float32. Returns slices per split.
    Attr `recon_frames` keeps each volume's target shape (the frame of fastMRI+ boxes), so later
    stages need not reopen the raw files."""
    frames = {split: {i.name: list(i.target_shape) for i in infos} for split, infos in scans.items()}
    attrs = {"kind": "slices", "raw_dir": str(raw_dir), "challenge": challenge, "crop": crop,
             "recon_frames": frames}
    return _write_store(
        Path(out), scans, attrs,
        layout=lambda _: {"target": ((crop, crop), "float32")},
        block=_target_block, params=lambda infos: (crop,), workers=workers, progress=progress)


def build_undersampled_store(out: Path | str, scans: dict[str, list[VolumeInfo]], *, raw_dir: str,
                             challenge: str, crop: int, mask: MaskSpec, workers: int = 1,
                             progress: Progress = None) -> dict[str, int]:
    """undersampled store: volume, slice, image (N,C,C), mean, std (N,), mask bool (N,W)."""
    attrs = {"kind": "undersampled", "raw_dir": str(raw_dir), "challenge": challenge, "crop": crop,
             "mask": asdict(mask), "mask_seed": "tuple(map(ord, file_name)) as fastMRI's UnetDataTransform"}
    return _write_store(
        Path(out), scans, attrs,
        layout=lambda i: {"image": ((crop, crop), "float32"), "mean": ((), "float32"),
                          "std": ((), "float32"), "mask": ((_width(i),), "bool")},
        block=_undersample_block, params=lambda infos: (crop, mask, _width(infos)), workers=workers,
        progress=progress)
