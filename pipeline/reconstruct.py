"""Reconstruct new fastMRI knee files with a trained U-Net (what `roirecon reconstruct` runs).

A checkpoint written by train-unet records, in its config, the acquisition it was trained on:
`config["acquisition"] = {"challenge": ..., "crop": ..., "mask": {"type", "acceleration",
"center_fraction"}}` (the undersampled store's attrs of the same names). Each input file is then
- fully sampled (no `mask` dataset): undersampled with the checkpoint's own mask settings exactly as
  the undersample stage does (`mask_function`, one mask per volume seeded from the file name by
  `volume_mask`, `zero_filled`, `instance_stats`), or
- already undersampled (fastMRI's test and challenge files: a 1-D `mask` dataset over the k-space
  columns, an `acceleration` attr, k-space already masked): used as it is, its own mask selecting the
  columns (the others are zero in such files); a one-line warning when its acceleration differs from
  the checkpoint's.
The zero-filled crop is normalised as in training (fastMRI instance norm: its own mean and std, the
std unbiased, eps 1e-11, clamp to [-6, 6]), the model runs in fp32, and the output goes back to
target units (`out * std + mean`).

K-space is read from the HDF5 file one batch of slices at a time, and each batch's reconstruction is
written straight into the output, so memory holds one batch, never a whole volume's k-space. Each
input gives `DIR/<input name>` holding only a float32 `reconstruction` dataset (slices, C, C), the
layout of fastMRI's `save_reconstructions`, which fastMRI's `evaluate.py` reads. Outputs are written
to a temporary sibling and renamed into place, so a failed run leaves no half-written file.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import h5py
import numpy as np
import torch
from torch import nn

from pipeline.models import inference
from pipeline.errors import BadValue, InputError, first_line
from pipeline.io.fastmri import KSPACE_RANK, TARGET_KEY, kspace_dataset
from pipeline.kspace import ZeroFilled, check_mask, instance_stats, mask_function, volume_mask
from pipeline.models.registry import load_unet
from pipeline.stores.zarr_store import atomic_path
from pipeline.stores.unet_data import normalize

OUTPUT_KEY = "reconstruction"  # fastMRI's save_reconstructions / evaluate.py
CHALLENGE_OF_RANK = {rank: challenge for challenge, rank in KSPACE_RANK.items()}

Progress = Optional[Callable[[int], None]]
Warn = Callable[[str], None]


@dataclass(frozen=True)
class Acquisition:
    """How a checkpoint's training inputs were made: challenge, crop and undersampling mask."""
    challenge: str
    crop: int
    mask_type: str
    acceleration: float
    center_fraction: float

    def mask_func(self):
        return mask_function(self.mask_type, self.acceleration, self.center_fraction)

    def as_config(self) -> dict[str, Any]:
        """The layout stored under `config["acquisition"]` (the undersampled store's attrs)."""
        return {"challenge": self.challenge, "crop": self.crop,
                "mask": {"type": self.mask_type, "acceleration": self.acceleration,
                         "center_fraction": self.center_fraction}}


def acquisition_of(config: dict[str, Any], where: Path | str) -> Acquisition:
    """The acquisition settings recorded in a checkpoint config; `where` names the checkpoint."""
    acq = config.get("acquisition")
    if acq is None:
        raise InputError(f"{where}: has no acquisition settings; retrain it with this version")
    mask = acq.get("mask") if isinstance(acq, dict) else None
    if not isinstance(mask, dict):
        raise InputError(f"{where}: acquisition settings {acq!r} are malformed (expected challenge, crop "
                         f"and mask); retrain it with this version")
    missing = [k for k in ("challenge", "crop") if k not in acq] + \
              [f"mask.{k}" for k in ("type", "acceleration", "center_fraction") if k not in mask]
    if missing:
        raise InputError(f"{where}: acquisition settings lack {', '.join(missing)}; retrain it with this version")
    challenge, crop = acq["challenge"], acq["crop"]
    if challenge not in TARGET_KEY:
        raise InputError(f"{where}: acquisition challenge must be singlecoil or multicoil, got {challenge!r}")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise InputError(f"{where}: acquisition crop must be a positive integer, got {crop!r}")
    try:
        check_mask(mask["type"], mask["acceleration"], mask["center_fraction"])
    except BadValue as exc:  # named as the key under "mask"
        raise InputError(f"{where}: acquisition mask.{exc}") from None
    return Acquisition(challenge, crop, mask["type"], mask["acceleration"], mask["center_fraction"])


def load_model(path: Path | str) -> tuple[nn.Module, Acquisition, dict[str, Any]]:
    """A trained U-Net checkpoint (weights only), its acquisition settings and its config."""
    model, config = load_unet(path, require_trained=True)
    return model, acquisition_of(config, path), config


@dataclass(frozen=True)
class InputFile:
    """A validated input file: its k-space shape and the column mask to reconstruct it with."""
    path: Path
    kspace_shape: tuple[int, ...]
    mask: np.ndarray                 # bool (cols,)
    undersampled: bool               # the file carried its own mask (used as is)
    acceleration: Optional[float]    # the file's `acceleration` attr, for undersampled files

    @property
    def n_slices(self) -> int:
        return self.kspace_shape[0]


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None


def _kspace(h5: h5py.File, path: Path, acq: Acquisition) -> h5py.Dataset:
    """The `kspace` dataset, checked as pipeline.io.fastmri.FastMRIFile checks it, without requiring
    a target (test and challenge files have none), and against the checkpoint's crop."""
    def wrong_rank(got: int, want: int) -> str:
        other = CHALLENGE_OF_RANK.get(got)
        what = f" ({other} data)" if other else ""
        return f"kspace has rank {got}{what}, expected {want}: the checkpoint was trained on {acq.challenge} data"

    k = kspace_dataset(h5, path, acq.challenge, wrong_rank)
    rows, cols = k.shape[-2:]
    if acq.crop > min(rows, cols):
        raise InputError(f"{path}: image {rows}x{cols} is smaller than the checkpoint's crop "
                         f"{acq.crop}x{acq.crop}")
    return k


def _file_mask(h5: h5py.File, path: Path, cols: int) -> np.ndarray:
    try:
        raw = np.asarray(h5["mask"][()])
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: unreadable 'mask' ({first_line(exc)})") from None
    if raw.ndim != 1 or raw.shape[0] != cols or raw.dtype.kind not in "biuf":
        raise InputError(f"{path}: 'mask' has shape {raw.shape} and dtype {raw.dtype}, expected a 1-D mask "
                         f"over the {cols} k-space columns")
    mask = raw != 0
    if not mask.any():
        raise InputError(f"{path}: 'mask' samples no k-space column")
    return mask


def inspect_file(path: Path | str, acq: Acquisition, warn: Optional[Warn] = None) -> InputFile:
    """Validate one input (metadata only) and fix the mask it is reconstructed with."""
    path = Path(path)
    with _open(path) as h5:
        k = _kspace(h5, path, acq)
        shape = tuple(k.shape)
        if "mask" not in h5:
            mask = volume_mask(acq.mask_func(), path.name, shape)
            return InputFile(path, shape, mask, undersampled=False, acceleration=None)
        mask = _file_mask(h5, path, shape[-1])
        acc = h5.attrs.get("acceleration")
        try:
            acc = None if acc is None else float(np.asarray(acc).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            acc = None
    if warn is not None and acc is not None and acc != float(acq.acceleration):
        warn(f"{path}: already undersampled at {acc:g}x, the checkpoint was trained at "
             f"{float(acq.acceleration):g}x; reconstructing it as it is")
    return InputFile(path, shape, mask, undersampled=True, acceleration=acc)


def _read_kspace(k: h5py.Dataset, path: Path, start: int, stop: int) -> np.ndarray:
    try:
        batch = k[start:stop]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read kspace ({first_line(exc)})") from None
    batch = np.ascontiguousarray(batch.astype(np.complex64, copy=False))
    if not np.isfinite(batch.view(np.float32)).all():
        raise InputError(f"{path}: kspace contains NaN or Inf")
    return batch


def forward(model: nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Zero-filled magnitudes (n, C, C) -> reconstructions in the same units, as in training:
    instance-normalise and clamp (the statistics of `instance_stats`, as the undersampled store holds),
    model in fp32 (pipeline.models.inference, shared with validation and evaluate), back with the same
    mean and std."""
    mean, std = instance_stats(image)
    m, s = torch.from_numpy(mean), torch.from_numpy(std)
    x = normalize(torch.from_numpy(image), m, s).unsqueeze(1)
    return inference.reconstruct(model, x, m, s, device, batch_size=len(image))


def reconstruct_file(model: nn.Module, info: InputFile, acq: Acquisition, out: Path | str, *,
                     device: torch.device = torch.device("cpu"), batch_size: int = 8,
                     progress: Progress = None) -> Path:
    """Reconstruct one validated input into `out` (an HDF5 file with `reconstruction` only)."""
    out, path, crop = Path(out), info.path, acq.crop
    with atomic_path(out) as tmp, _open(path) as h5, h5py.File(tmp, "w") as dst:
        k = _kspace(h5, path, acq)
        if tuple(k.shape) != info.kspace_shape:
            raise InputError(f"{path}: changed while being read (kspace shape {tuple(k.shape)})")
        rec = dst.create_dataset(OUTPUT_KEY, shape=(info.n_slices, crop, crop), dtype=np.float32)
        zero_filled = ZeroFilled(info.kspace_shape[-2:], info.mask, crop)     # one mask for the whole file
        for start in range(0, info.n_slices, batch_size):
            stop = min(start + batch_size, info.n_slices)
            image = zero_filled(_read_kspace(k, path, start, stop))
            rec[start:stop] = forward(model, image, device)
            if progress:
                progress(stop - start)
    return out


def output_paths(inputs: Sequence[Path | str], out_dir: Path | str) -> list[Path]:
    """`out_dir/<input name>` per input (the names fastMRI's evaluate.py pairs with the targets);
    two inputs of the same name, or an output that is an input, are refused."""
    out_dir = Path(out_dir)
    seen: dict[str, Path] = {}
    resolved = {Path(p).resolve() for p in inputs}
    outs = []
    for p in map(Path, inputs):
        if p.name in seen:
            raise InputError(f"{p}: same file name as {seen[p.name]}; their reconstructions would overwrite "
                             f"one another in {out_dir}")
        seen[p.name] = p
        o = out_dir / p.name
        if o.resolve() in resolved:
            raise InputError(f"{o}: the output would overwrite an input file; choose another output directory")
        outs.append(o)
    return outs


@dataclass(frozen=True)
class Done:
    path: Path
    out: Path
    n_slices: int
    undersampled: bool


def reconstruct(inputs: Sequence[Path | str], model_path: Path | str, out_dir: Path | str, *,
                device: torch.device = torch.device("cpu"), batch_size: int = 8,
                warn: Optional[Warn] = None,
                bar: Optional[Callable[[int, str], Any]] = None) -> list[Done]:
    """Reconstruct every input into `out_dir`. Every input and the checkpoint are checked first, so
    bad input stops the run before any output is written. `bar(total, desc)`: a context manager
    yielding `update(n)` (stages.progress.bar), called per batch of slices."""
    if batch_size < 1:
        raise BadValue("batch_size", f"must be at least 1, got {batch_size}")
    if not inputs:
        raise InputError("no input files given")
    outs = output_paths(inputs, out_dir)
    model, acq, _ = load_model(model_path)
    infos = [inspect_file(p, acq, warn) for p in inputs]
    model = inference.prepare_model(model, device)
    done = []
    progress = bar(sum(i.n_slices for i in infos), "reconstruct") if bar is not None else nullcontext(None)
    with progress as update:
        for info, out in zip(infos, outs):
            reconstruct_file(model, info, acq, out, device=device, batch_size=batch_size, progress=update)
            done.append(Done(info.path, out, info.n_slices, info.undersampled))
    return done
