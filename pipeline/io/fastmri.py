"""Reader for fastMRI knee HDF5 files, validating each file before it is used.

Layout (public fastMRI): `kspace` complex (slices, [coils,] rows, cols), `reconstruction_esc`
(single-coil) or `reconstruction_rss` (multi-coil) float32 (slices, H, W), `ismrmrd_header` XML,
attrs `acquisition`, `max`, `norm`, `patient_id`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import InputError, first_line

ISMRMRD_NS = {"m": "http://www.ismrm.org/ISMRMRD"}
TARGET_KEY = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
KSPACE_RANK = {"singlecoil": 3, "multicoil": 4}


@dataclass(frozen=True)
class Header:
    enc_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    enc_limits_center: int
    enc_limits_max: int

    @property
    def padding(self) -> tuple[int, int]:
        """Zero-filled phase-encode columns on each side, as fastMRI's SliceDataset computes."""
        left = self.enc_size[1] // 2 - self.enc_limits_center
        return left, left + self.enc_limits_max + 1


@dataclass(frozen=True)
class VolumeInfo:
    path: Path
    challenge: str
    n_slices: int
    kspace_shape: tuple[int, ...]
    target_shape: tuple[int, int]
    max_value: float
    header: Header

    @property
    def name(self) -> str:
        return self.path.name


def list_split(raw_dir: Path | str, split: str) -> list[Path]:
    """Sorted `*.h5` files of one split; a missing or empty split is an InputError."""
    d = Path(raw_dir) / split
    if not d.is_dir():
        raise InputError(f"{d}: split directory is missing")
    files = sorted(d.glob("*.h5"))
    if not files:
        raise InputError(f"{d}: split directory has no .h5 files")
    return files


def parse_header(raw: bytes | str, path: Path) -> Header:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise InputError(f"{path}: malformed ismrmrd_header ({exc})") from None

    def num(*parts: str) -> int:
        q = "./" + "/".join(f"m:{p}" for p in ("encoding", *parts))
        node = root.find(q, ISMRMRD_NS)
        if node is None or node.text is None:
            raise InputError(f"{path}: ismrmrd_header lacks encoding/{'/'.join(parts)}")
        try:
            return int(float(node.text))
        except ValueError:
            raise InputError(f"{path}: ismrmrd_header encoding/{'/'.join(parts)} is not a number") from None

    enc = tuple(num("encodedSpace", "matrixSize", a) for a in "xyz")
    rec = tuple(num("reconSpace", "matrixSize", a) for a in "xyz")
    center = num("encodingLimits", "kspace_encoding_step_1", "center")
    limit_max = num("encodingLimits", "kspace_encoding_step_1", "maximum")
    return Header(enc, rec, center, limit_max)


class FastMRIFile:
    """An open, validated fastMRI file. Use as a context manager."""

    def __init__(self, path: Path | str, challenge: str):
        if challenge not in TARGET_KEY:
            raise InputError(f"data.challenge: must be singlecoil or multicoil, got {challenge!r}")
        self.path = Path(path)
        self.challenge = challenge
        try:
            self._h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: not a readable HDF5 file ({first_line(exc)})") from None
        try:
            self.info = self._validate()
        except BaseException:
            self._h5.close()
            raise

    def __enter__(self) -> "FastMRIFile":
        return self

    def __exit__(self, *exc) -> None:
        self._h5.close()

    def _validate(self) -> VolumeInfo:
        h5, p = self._h5, self.path
        if "kspace" not in h5:
            raise InputError(f"{p}: no 'kspace' dataset")
        k = h5["kspace"]
        if not isinstance(k, h5py.Dataset):
            raise InputError(f"{p}: 'kspace' is not a dataset")
        rank = KSPACE_RANK[self.challenge]
        if k.ndim != rank:
            raise InputError(f"{p}: kspace has rank {k.ndim}, expected {rank} for {self.challenge} "
                             f"(check data.challenge)")
        if not np.issubdtype(k.dtype, np.complexfloating):
            raise InputError(f"{p}: kspace dtype is {k.dtype}, expected complex")
        if k.shape[0] == 0:
            raise InputError(f"{p}: kspace has no slices")
        tkey = TARGET_KEY[self.challenge]
        if tkey not in h5:
            raise InputError(f"{p}: no '{tkey}' target (fully sampled {self.challenge} files need it)")
        t = h5[tkey]
        if t.ndim != 3 or t.shape[0] != k.shape[0]:
            raise InputError(f"{p}: {tkey} has shape {t.shape}, expected ({k.shape[0]}, H, W)")
        if "ismrmrd_header" not in h5:
            raise InputError(f"{p}: no 'ismrmrd_header'")
        try:
            raw = h5["ismrmrd_header"][()]
        except Exception as exc:
            raise InputError(f"{p}: unreadable ismrmrd_header ({first_line(exc)})") from None
        header = parse_header(raw, p)
        if "max" in h5.attrs:
            max_value = float(h5.attrs["max"])
        else:
            max_value = float(np.max(t[()]))
        if not np.isfinite(max_value) or max_value <= 0:
            raise InputError(f"{p}: attr 'max' is {max_value}, expected a positive finite number")
        return VolumeInfo(p, self.challenge, k.shape[0], tuple(k.shape), tuple(t.shape[1:]),
                          max_value, header)

    def kspace(self) -> np.ndarray:
        """All k-space of the volume as complex64, checked finite."""
        try:
            k = self._h5["kspace"][()]
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: cannot read kspace ({first_line(exc)})") from None
        k = k.astype(np.complex64, copy=False)
        if not np.isfinite(k.view(np.float32)).all():
            raise InputError(f"{self.path}: kspace contains NaN or Inf")
        return k

    def target(self) -> np.ndarray:
        try:
            t = self._h5[TARGET_KEY[self.challenge]][()]
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: cannot read target ({first_line(exc)})") from None
        t = t.astype(np.float32, copy=False)
        if not np.isfinite(t).all():
            raise InputError(f"{self.path}: {TARGET_KEY[self.challenge]} contains NaN or Inf")
        return t

