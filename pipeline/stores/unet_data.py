"""U-Net data: one split of the slices, undersampled and ROI-map stores, read slice by slice.

`SliceStores` is a `torch.utils.data.Dataset` whose items are *batches*: `stores[rows]` reads those
rows of every store (one zarr chunk per slice and array) and returns them normalised. Only the
per-slice index (volume, slice) and scalars (mean, std) are held in memory, a few bytes per
slice; images are read when a batch asks for them, so memory does not grow with the split. The
loaders below put it behind a `DataLoader` (worker processes, pinned memory on CUDA):
`train_loader` shards shuffled batches over ranks with a `DistributedSampler`; `volume_loader`
gives each rank whole volumes (as fastMRI's `VolumeSampler` does), one volume per item.

Normalisation is fastMRI's `UnetDataTransform`: the zero-filled image is instance-normalised with its
own mean and std (eps 1e-11) and clamped to [-6, 6]; the target is normalised with the same mean and
std and clamped likewise. Outputs go back to target units as `out * std + mean`.

Every batch is checked as it is read (finite values, statistics that are the image's own, no blank
target, ROI maps in [0, 1]): a damaged store is an InputError naming the store and the row.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from pipeline.errors import InputError
from pipeline.metrics import volume_slices
from pipeline.stores.zarr_store import (ShardRows, check_aligned, content_digest, open_store, read_rows, reading,
                                        split_group)

EPS = 1e-11
CLAMP = 6.0
Batch = dict[str, Any]


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """fastMRI `normalize(x, mean, std, eps=1e-11)` per slice, then clamp to [-6, 6]."""
    m, s = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    return ((x - m) / (s + EPS)).clamp(-CLAMP, CLAMP)


def denormalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Back to target units, as fastMRI's UnetModule does (`output * std + mean`)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return x * std.view(shape) + mean.view(shape)


class SliceStores(Dataset):
    """One split of the stores; `self[rows]` is a batch (see the module doc).

    A batch holds `rows` (int64), `image` and `target` (B,1,C,C, normalised and clamped), `mean`
    and `std` (B,), `heatmap` (B,1,C,C in [0, 1]) when an ROI store is given, and with `raw=True`
    also `target_raw` and `zero_filled` (B,C,C, target units)."""

    def __init__(self, slices: Path | str, undersampled: Path | str, heatmaps: Path | str | None, split: str,
                 *, raw: bool = False):
        self.paths = {"slices": Path(slices), "undersampled": Path(undersampled),
                      "heatmaps": Path(heatmaps) if heatmaps is not None else None}
        self.split, self.raw = split, raw
        groups = self._open()
        s, u, h = groups["slices"], groups["undersampled"], groups["heatmaps"]
        check_aligned(s, u, f"{undersampled} [{split}]")
        if h is not None:
            check_aligned(s, h, f"{heatmaps} [{split}]")
        self.volume = read_rows(s["volume"])
        self.slice = np.asarray(read_rows(s["slice"]), dtype=np.int32)
        if len(self.volume) == 0:
            raise InputError(f"{slices} [{split}]: split has no slices")
        self._check_shapes(groups)
        self.mean = self._scalars(u, "mean", self.where("undersampled"))
        self.std = self._scalars(u, "std", self.where("undersampled"))
        bad = np.flatnonzero(~(self.std > 0))
        if bad.size:
            raise InputError(f"{self.where('undersampled')} std: {bad.size} slice(s) with std {self.std[bad[0]]:g}, "
                             f"first {self._row(bad[0])}; the store is damaged, rebuild it")
        self._groups: Optional[dict] = groups
        self._fast: dict[str, Optional[ShardRows]] = {}

    # -------------------------------------------------------------- opening and checks

    def _open(self) -> dict[str, Optional[zarr.Group]]:
        kinds = {"slices": "slices", "undersampled": "undersampled", "heatmaps": "heatmaps"}
        return {name: (split_group(open_store(path, kind=kinds[name]), self.split, path) if path is not None else None)
                for name, path in self.paths.items()}

    def where(self, store: str) -> str:
        return f"{self.paths[store]} [{self.split}]"

    def _row(self, i: int) -> str:
        return f"row {i} ({self.volume[i]})"

    def _check_shapes(self, groups: dict) -> None:
        arrays = {"slices": "target", "undersampled": "image", "heatmaps": "heatmap"}
        shapes = {}
        for store, name in arrays.items():
            g = groups[store]
            if g is None:
                continue
            if name not in g:
                raise InputError(f"{self.where(store)}: has no '{name}' array")
            shapes[store] = tuple(g[name].shape)
        target = shapes["slices"]
        if len(target) != 3 or target[1] != target[2]:
            raise InputError(f"{self.where('slices')}: target shape {target} is not (N, C, C)")
        for store, shape in shapes.items():
            if shape != target:
                raise InputError(f"{self.where(store)}: {arrays[store]} shape {shape} differs from the target "
                                 f"shape {target} in {self.paths['slices']}")
        self.crop = int(target[-1])

    def _scalars(self, group: zarr.Group, name: str, where: str) -> np.ndarray:
        if name not in group:
            raise InputError(f"{where}: has no '{name}' array")
        values = np.asarray(read_rows(group[name]), dtype=np.float32)
        if values.shape != (len(self),):
            raise InputError(f"{where}: {name} must have shape ({len(self)},)")
        if not np.isfinite(values).all():
            raise InputError(f"{where} {name}: contains NaN or Inf")
        return values

    # -------------------------------------------------------------- Dataset

    def __len__(self) -> int:
        return len(self.volume)

    def __getstate__(self) -> dict:  # worker processes open their own zarr handles
        return {**self.__dict__, "_groups": None, "_fast": {}}

    def _rows(self, store: str, name: str, rows: np.ndarray) -> np.ndarray:
        groups = self._groups = self._groups or self._open()
        arr = groups[store][name]
        if name not in self._fast:
            self._fast[name] = ShardRows.for_array(arr)
        return read_image_rows(arr, rows, self._fast[name])

    def volumes(self) -> list[tuple[str, slice]]:
        return volume_slices(self.volume)

    def fingerprint(self) -> str:
        """Content hash of the training inputs from the stores' recorded digests (no data read):
        keys resume checkpoints to the data they were made from."""
        groups = self._groups or self._open()
        h = hashlib.blake2b(digest_size=12)
        for store, names in (("slices", ("volume", "slice", "target")), ("undersampled", ("image", "mean", "std")),
                             ("heatmaps", ("heatmap",))):
            if groups[store] is not None:
                for name in names:
                    h.update(content_digest(groups[store][name]).encode())
        return h.hexdigest()

    def __getitem__(self, rows: Sequence[int]) -> Batch:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        target = self._rows("slices", "target", rows)
        image = self._rows("undersampled", "image", rows)
        self._check_batch(rows, image, target)
        mean, std = torch.from_numpy(self.mean[rows]), torch.from_numpy(self.std[rows])
        batch: Batch = {
            "rows": torch.from_numpy(rows), "mean": mean, "std": std,
            "image": normalize(torch.from_numpy(image), mean, std).unsqueeze(1),
            "target": normalize(torch.from_numpy(target), mean, std).unsqueeze(1),
        }
        if self.paths["heatmaps"] is not None:
            batch["heatmap"] = torch.from_numpy(self._heatmap(rows)).unsqueeze(1)
        if self.raw:
            batch.update(target_raw=torch.from_numpy(target), zero_filled=torch.from_numpy(image))
        return batch

    def _check_batch(self, rows: np.ndarray, image: np.ndarray, target: np.ndarray) -> None:
        """A damaged or zeroed chunk shows as non-finite values, statistics that are not the image's
        own, or a blank target slice."""
        for what, x in (("slices", target), ("undersampled", image)):
            bad = ~np.isfinite(x).all(axis=(1, 2))
            if bad.any():
                raise InputError(f"{self.where(what)} {'target' if what == 'slices' else 'image'}: contains NaN or "
                                 f"Inf, {self._row(rows[bad.argmax()])}")
        flat = image.reshape(len(image), -1)
        own_mean, own_std = flat.mean(axis=1), flat.std(axis=1, ddof=1)
        mean, std = self.mean[rows], self.std[rows]
        off = (np.abs(own_std - std) > 1e-3 * std) | (np.abs(own_mean - mean) > 1e-3 * std)
        if off.any():
            j = int(off.argmax())
            raise InputError(f"{self.where('undersampled')} mean/std: stored mean/std ({mean[j]:.4g}/{std[j]:.4g}) "
                             f"are not the image's own ({own_mean[j]:.4g}/{own_std[j]:.4g}), "
                             f"{self._row(rows[j])}; the store is damaged, rebuild it")
        blank = ~target.any(axis=(1, 2))
        if blank.any():
            raise InputError(f"{self.where('slices')} target: all-zero slice where the zero-filled image has "
                             f"signal, {self._row(rows[blank.argmax()])}; the store is damaged, rebuild it")

    def _heatmap(self, rows: np.ndarray) -> np.ndarray:
        hm = self._rows("heatmaps", "heatmap", rows)
        if not np.isfinite(hm).all():
            raise InputError(f"{self.where('heatmaps')} heatmap: contains NaN or Inf")
        if hm.min() < -1e-6 or hm.max() > 1 + 1e-6:
            raise InputError(f"{self.where('heatmaps')} heatmap: values must lie in [0, 1], "
                             f"found [{hm.min():.3g}, {hm.max():.3g}]")
        return np.clip(hm, 0, 1)


def read_image_rows(arr: zarr.Array, rows: np.ndarray, fast: Optional[ShardRows] = None) -> np.ndarray:
    """`arr[rows]` as float32. With `fast` (the array's `ShardRows`), row by row from the shard files;
    else through zarr, one request per run of consecutive rows within a shard (a volume is a request
    or two). Either way a damaged chunk is an InputError naming its shard (`pipeline.stores.zarr_store`)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + tuple(arr.shape[1:]), dtype=np.float32)
    if fast is not None:
        fast.read(rows, out)
        return out
    shard = (arr.shards or arr.chunks)[0]
    breaks = np.flatnonzero((np.diff(rows) != 1) | (rows[1:] // shard != rows[:-1] // shard)) + 1
    for part in np.split(np.arange(len(rows)), breaks):
        if len(part):
            a, b = int(rows[part[0]]), int(rows[part[-1]]) + 1
            with reading(arr, a):
                out[part[0]:part[-1] + 1] = arr[a:b]
    return out


# ---------------------------------------------------------------- loaders

def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers read and decode; the main process owns the cores' compute


def _loader(stores: SliceStores, batches: Any, workers: int, device: torch.device) -> DataLoader:
    """Each item of `batches` is a list of rows; the dataset returns it as one batch (no collation)."""
    return DataLoader(stores, sampler=batches, batch_size=None, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, worker_init_fn=_one_thread if workers else None)


def train_batches(n: int, batch_size: int, world: int, rank: int, seed: int) -> tuple[DistributedSampler, BatchSampler]:
    """This rank's shuffled batches: `DistributedSampler` (a new shuffle per `set_epoch`, every slice
    once per epoch over the ranks when `n` divides by `world`) cut into batches of
    `ceil(batch_size / world)`, so the ranks' batches together are one global batch."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return sampler, BatchSampler(sampler, max(1, -(-batch_size // world)), drop_last=False)


def train_loader(stores: SliceStores, batches: BatchSampler, workers: int, device: torch.device) -> DataLoader:
    return _loader(stores, batches, workers, device)


def rank_volumes(volumes: list[tuple[str, slice]], world: int, rank: int) -> list[tuple[str, slice]]:
    """Whole volumes per rank (every world-th, as fastMRI's VolumeSampler keeps volumes whole)."""
    return volumes[rank::world]


def volume_loader(stores: SliceStores, volumes: list[tuple[str, slice]], workers: int,
                  device: torch.device) -> DataLoader:
    """One item per volume: all of its slices as one batch, in volume order."""
    return _loader(stores, [list(range(sl.start, sl.stop)) for _, sl in volumes], workers, device)


def iterate(loader: DataLoader) -> Iterator[Batch]:
    """Iterate a loader; an InputError raised in a worker process comes back as its own one line
    (the DataLoader wraps it in a traceback)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except InputError as exc:
            raise InputError(_worker_message(str(exc))) from None
        yield batch


def _worker_message(text: str) -> str:
    if not text.startswith("Caught InputError"):
        return text
    marker = "InputError: "
    tail = text.rstrip().splitlines()[-1]
    return tail.split(marker, 1)[1] if marker in tail else tail


def to_device(batch: Batch, device: torch.device, keys: Sequence[str]) -> list[Optional[torch.Tensor]]:
    """The batch's tensors under `keys` on `device` (non-blocking from pinned memory); None when absent.
    Images go channels_last on CUDA."""
    out = []
    for k in keys:
        t = batch.get(k)
        if t is not None and device.type != "cpu":
            t = t.to(device, non_blocking=True)
            if t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
        out.append(t)
    return out


def acquisition(undersampled: Path | str) -> dict[str, Any]:
    """How the undersampled store's inputs were made: {"challenge", "crop", "mask": {type, acceleration,
    center_fraction}} (kept in U-Net checkpoints, so new files can be undersampled the same way)."""
    attrs = open_store(undersampled, kind="undersampled").attrs
    missing = [k for k in ("challenge", "crop", "mask") if k not in attrs]
    if missing:
        raise InputError(f"{undersampled}: store attrs lack {', '.join(missing)}; rebuild it with undersample")
    return {"challenge": attrs["challenge"], "crop": int(attrs["crop"]), "mask": dict(attrs["mask"])}
