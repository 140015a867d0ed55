"""U-Net training/evaluation data: one split of the slices, undersampled and heatmaps stores, in memory.

The stores are small (a split is tens of MB at crop 128), so each split is read once, a shard at a
time, into contiguous tensors; batches are then plain index gathers, and the loader is never the
bottleneck (the training loop measures and logs the share of step time spent waiting for data).

Normalisation is fastMRI's `UnetDataTransform`: the zero-filled image is instance-normalised with its
own mean and std (eps 1e-11) and clamped to [-6, 6]; the target is normalised with the same mean and
std and clamped likewise. Outputs go back to target units as `out * std + mean`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import zarr

from pipeline.errors import InputError
from pipeline.store import check_aligned, open_store, read_rows, reading, split_group

EPS = 1e-11
CLAMP = 6.0


@dataclass
class SplitData:
    """One split, aligned row by row with the slices store."""
    split: str
    volume: np.ndarray          # str (N,)
    slice: np.ndarray           # int32 (N,)
    image: torch.Tensor         # (N,1,C,C) normalised, clamped zero-filled input
    target: torch.Tensor        # (N,1,C,C) normalised, clamped target
    mean: torch.Tensor          # (N,)
    std: torch.Tensor           # (N,)
    heatmap: Optional[torch.Tensor]  # (N,1,C,C) in [0, 1], or None
    target_raw: Optional[np.ndarray] = None   # (N,C,C) target units (kept for metrics)
    zero_filled: Optional[np.ndarray] = None  # (N,C,C) target units
    max_value: Optional[np.ndarray] = None    # (N,)

    def __len__(self) -> int:
        return len(self.volume)

    def fingerprint(self) -> str:
        """Content hash of the training inputs (keys resume checkpoints to the data they were made from)."""
        h = hashlib.blake2b(digest_size=12)
        for t in (self.image, self.target, self.heatmap):
            if t is not None:
                h.update(t.cpu().numpy().tobytes())
        h.update("\0".join(self.volume.tolist()).encode())
        return h.hexdigest()

    def to(self, device: torch.device) -> "SplitData":
        for name in ("image", "target", "mean", "std", "heatmap"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """fastMRI `normalize(x, mean, std, eps=1e-11)` per slice, then clamp to [-6, 6]."""
    m, s = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    return ((x - m) / (s + EPS)).clamp(-CLAMP, CLAMP)


def denormalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Back to target units, as fastMRI's UnetModule does (`output * std + mean`)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return x * std.view(shape) + mean.view(shape)


def _read(group: zarr.Group, name: str, where: str, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Read a whole array a shard at a time (one request per shard file, not per slice); a damaged
    shard (checksum mismatch, bad index) is an InputError naming the store, array and shard."""
    if name not in group:
        raise InputError(f"{where}: has no '{name}' array")
    arr = group[name]
    step = (arr.shards or arr.chunks)[0] if arr.ndim else 1
    if arr.ndim == 0 or arr.shape[0] == 0:
        return read_rows(arr)
    out = np.empty(arr.shape, dtype=arr.dtype if arr.dtype.kind not in "OTU" else object)
    for start in range(0, arr.shape[0], step):
        with reading(arr, start):
            out[start:start + step] = arr[start:start + step]
        if progress:
            progress(min(step, arr.shape[0] - start))
    return out


def _finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise InputError(f"{what}: contains NaN or Inf")


def _check_stats(image: np.ndarray, target: np.ndarray, mean: np.ndarray, std: np.ndarray, volume: np.ndarray,
                 slices: str, undersampled: str) -> None:
    """Sanity of the normalisation statistics and of the slices against one another: a damaged
    or zeroed chunk shows as std 0, stats that are not the image's own, or a blank target slice
    whose zero-filled input has signal."""
    def row(i: int) -> str:
        return f"row {i} ({volume[i]})"

    bad = np.flatnonzero(~(std > 0))
    if bad.size:
        raise InputError(f"{undersampled} std: {bad.size} slice(s) with std {std[bad[0]]:g}, first {row(bad[0])}; "
                         f"the store is damaged, rebuild it")
    own_mean, own_std = np.empty(len(image), np.float32), np.empty(len(image), np.float32)
    for a in range(0, len(image), 256):  # blocks bound the temporary; float32 (pairwise sums) is ~1e-6 exact
        flat = image[a:a + 256].reshape(len(image[a:a + 256]), -1)
        own_mean[a:a + 256], own_std[a:a + 256] = flat.mean(axis=1), flat.std(axis=1, ddof=1)
    off = np.flatnonzero((np.abs(own_std - std) > 1e-3 * std)
                         | (np.abs(own_mean - mean) > 1e-3 * std))
    if off.size:
        i = off[0]
        raise InputError(f"{undersampled} mean/std: {off.size} slice(s) whose stored mean/std "
                         f"({mean[i]:.4g}/{std[i]:.4g}) are not the image's own ({own_mean[i]:.4g}/"
                         f"{own_std[i]:.4g}), first {row(i)}; the store is damaged, rebuild it")
    blank = np.flatnonzero(~target.any(axis=(1, 2)))
    if blank.size:
        raise InputError(f"{slices} target: {blank.size} all-zero slice(s) where the zero-filled image has "
                         f"signal, first {row(blank[0])}; the store is damaged, rebuild it")


def load_split(slices: Path | str, undersampled: Path | str, heatmaps: Path | str | None, split: str, *,
               keep_raw: bool = False, progress: Optional[Callable[[int], None]] = None) -> SplitData:
    """Read one split of the three stores, check they line up, normalise as fastMRI does."""
    s_root = open_store(slices, kind="slices")
    u_root = open_store(undersampled, kind="undersampled")
    s = split_group(s_root, split, slices)
    u = split_group(u_root, split, undersampled)
    check_aligned(s, u, f"{undersampled} [{split}]")
    h = None
    if heatmaps is not None:
        h = split_group(open_store(heatmaps, kind="heatmaps"), split, heatmaps)
        check_aligned(s, h, f"{heatmaps} [{split}]")

    volume = read_rows(s["volume"])
    n = len(volume)
    if n == 0:
        raise InputError(f"{slices} [{split}]: split has no slices")
    target = _read(s, "target", f"{slices} [{split}]", progress).astype(np.float32, copy=False)
    image = _read(u, "image", f"{undersampled} [{split}]", progress).astype(np.float32, copy=False)
    if target.shape != image.shape or target.ndim != 3:
        raise InputError(f"{undersampled} [{split}]: image shape {image.shape} differs from the target shape "
                         f"{target.shape} in {slices}")
    _finite(target, f"{slices} [{split}] target")
    _finite(image, f"{undersampled} [{split}] image")
    mean = _read(u, "mean", f"{undersampled} [{split}]").astype(np.float32)
    std = _read(u, "std", f"{undersampled} [{split}]").astype(np.float32)
    if mean.shape != (n,) or std.shape != (n,):
        raise InputError(f"{undersampled} [{split}]: mean/std must have shape ({n},)")
    _finite(mean, f"{undersampled} [{split}] mean")
    _finite(std, f"{undersampled} [{split}] std")
    if (std < 0).any():
        raise InputError(f"{undersampled} [{split}] std: negative values")
    _check_stats(image, target, mean, std, volume, f"{slices} [{split}]", f"{undersampled} [{split}]")

    heat = None
    if h is not None:
        hm = _read(h, "heatmap", f"{heatmaps} [{split}]", progress).astype(np.float32, copy=False)
        if hm.shape != target.shape:
            raise InputError(f"{heatmaps} [{split}]: heatmap shape {hm.shape} differs from the target shape "
                             f"{target.shape} in {slices}")
        _finite(hm, f"{heatmaps} [{split}] heatmap")
        if hm.min() < -1e-6 or hm.max() > 1 + 1e-6:
            raise InputError(f"{heatmaps} [{split}] heatmap: values must lie in [0, 1], "
                             f"found [{hm.min():.3g}, {hm.max():.3g}]")
        heat = torch.from_numpy(np.clip(hm, 0, 1)).unsqueeze(1)

    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    data = SplitData(
        split=split, volume=volume, slice=np.asarray(read_rows(s["slice"]), dtype=np.int32),
        image=normalize(torch.from_numpy(image), mean_t, std_t).unsqueeze(1).contiguous(),
        target=normalize(torch.from_numpy(target), mean_t, std_t).unsqueeze(1).contiguous(),
        mean=mean_t, std=std_t, heatmap=heat,
    )
    if keep_raw:
        data.target_raw, data.zero_filled = target, image
        data.max_value = _read(s, "max_value", f"{slices} [{split}]").astype(np.float32)
    return data
