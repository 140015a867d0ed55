"""Build the slices store (fully sampled targets) and the undersampled store from fastMRI files.

One volume at a time per worker, results written in file order through a shard-sized buffer,
so memory does not grow with the number of volumes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import zarr

from pipeline.errors import check_disjoint
from pipeline.io.fastmri import FastMRIFile, VolumeInfo, list_split
from pipeline.kspace import center_crop, check_crop, instance_stats, mask_function, volume_mask, zero_filled
from pipeline.parallel import ordered_map
from pipeline.store import SPLITS, ShardedWriter, atomic_path, finish_store

Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class MaskSpec:
    type: str = "random"
    acceleration: float = 4
    center_fraction: float = 0.08


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


def scan(raw_dir: Path | str, challenge: str, crop: int) -> dict[str, list[VolumeInfo]]:
    """Every split's files validated; a file name in two splits (a volume copied across) is refused
    before any file is opened."""
    files = {split: list_split(raw_dir, split) for split in SPLITS}
    check_disjoint({split: {p.name: p for p in paths} for split, paths in files.items()}, "file")
    return {split: scan_split(paths, challenge, crop) for split, paths in files.items()}


def _target_job(args: tuple[Path, str, int]) -> dict[str, np.ndarray]:
    path, challenge, crop = args
    with FastMRIFile(path, challenge) as f:
        target = np.ascontiguousarray(center_crop(f.target(), crop))
        max_value = f.info.max_value
    return {"target": target, "max_value": np.full(len(target), max_value, np.float32)}


def _undersample_job(args: tuple[Path, str, int, MaskSpec, int]) -> dict[str, np.ndarray]:
    path, challenge, crop, spec, width = args
    mask_func = mask_function(spec.type, spec.acceleration, spec.center_fraction)
    with FastMRIFile(path, challenge) as f:
        k = f.kspace()
    mask = volume_mask(mask_func, path.name, k.shape)
    image = zero_filled(k, mask, crop)
    mean, std = instance_stats(image)
    # Real knee files differ in width (368, 372, ...): masks are padded with False to the split's widest.
    padded = np.zeros(width, dtype=bool)
    padded[:mask.size] = mask
    return {"image": image, "mean": mean, "std": std, "mask": np.broadcast_to(padded, (len(image), width))}


def _width(infos: list[VolumeInfo]) -> int:
    return max(i.kspace_shape[-1] for i in infos)


def _write_store(out: Path, scans: dict[str, list[VolumeInfo]], attrs: dict,
                 layout: Callable[[list[VolumeInfo]], dict], job: Callable, job_args: Callable,
                 workers: int, progress: Progress) -> dict[str, int]:
    counts = {}
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs.update(attrs)
        for split, infos in scans.items():
            n = sum(i.n_slices for i in infos)
            group = root.create_group(split)
            writer = ShardedWriter(group, n, {"volume": ((), str), "slice": ((), "int32"), **layout(infos)})
            for info, arrays in zip(infos, ordered_map(job, [job_args(i) for i in infos], workers)):
                writer.append(volume=np.full(info.n_slices, info.name),
                              slice=np.arange(info.n_slices, dtype=np.int32), **arrays)
                if progress:
                    progress(info.n_slices)
            writer.close()
            counts[split] = n
        finish_store(root)
    return counts


def build_slices_store(out: Path | str, scans: dict[str, list[VolumeInfo]], *, raw_dir: str,
                       challenge: str, crop: int, workers: int = 1, progress: Progress = None) -> dict[str, int]:
    """slices store: volume, slice, target (N,C,C) float32, max_value (N,). Returns slices per split.
    Attr `recon_frames` keeps each volume's target shape (the frame of fastMRI+ boxes), so later
    stages need not reopen the raw files."""
    frames = {split: {i.name: list(i.target_shape) for i in infos} for split, infos in scans.items()}
    attrs = {"kind": "slices", "raw_dir": str(raw_dir), "challenge": challenge, "crop": crop,
             "recon_frames": frames}
    return _write_store(
        Path(out), scans, attrs,
        layout=lambda _: {"target": ((crop, crop), "float32"), "max_value": ((), "float32")},
        job=_target_job, job_args=lambda i: (i.path, challenge, crop),
        workers=workers, progress=progress)


def build_undersampled_store(out: Path | str, scans: dict[str, list[VolumeInfo]], *, raw_dir: str,
                             challenge: str, crop: int, mask: MaskSpec, workers: int = 1,
                             progress: Progress = None) -> dict[str, int]:
    """undersampled store: volume, slice, image (N,C,C), mean, std (N,), mask bool (N,W)."""
    mask_function(mask.type, mask.acceleration, mask.center_fraction)  # validate before any work
    widths = {i.path: _width(infos) for infos in scans.values() for i in infos}
    attrs = {"kind": "undersampled", "raw_dir": str(raw_dir), "challenge": challenge, "crop": crop,
             "mask": asdict(mask), "mask_seed": "tuple(map(ord, file_name)) as fastMRI's UnetDataTransform"}
    return _write_store(
        Path(out), scans, attrs,
        layout=lambda i: {"image": ((crop, crop), "float32"), "mean": ((), "float32"),
                          "std": ((), "float32"), "mask": ((_width(i),), "bool")},
        job=_undersample_job, job_args=lambda i: (i.path, challenge, crop, mask, widths[i.path]),
        workers=workers, progress=progress)
