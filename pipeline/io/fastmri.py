"""Reader for fastMRI knee HDF5 files, validating each file before it is used.

Layout (public fastMRI): `kspace` complex (slices, [coils,] rows, cols), `reconstruction_esc`
(single-coil) or `reconstruction_rss` (multi-coil) float32 (slices, H, W), `ismrmrd_header` XML,
attrs `acquisition`, `max`, `norm`, `patient_id`.
"""
from __future__ import annotations

import hashlib
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from pipeline.errors import BadValue, InputError, first_line

ISMRMRD_NS = {"m": "http://www.ismrm.org/ISMRMRD"}
TARGET_KEY = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
KSPACE_RANK = {"singlecoil": 3, "multicoil": 4}
UNKNOWN_ACQUISITION = "unknown"


@dataclass(frozen=True)
class Header:
    enc_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    enc_limits_center: int
    enc_limits_max: int


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


def list_split(raw_dir: Path | str, split: str, *, test_from_val: float = 0.0) -> list[Path]:
    """Sorted `*.h5` files of one split; a missing or empty split is an InputError.

    `test_from_val`: 0 reads `raw_dir/test` as it is; a fraction in
    (0, 1) carves that share of val's files out of val to be the test split (fastMRI's own test
    files have no targets), by patient (see `carve_val`), the same way on every call, so every
    stage sees the same splits. `raw_dir/test` must then be absent or hold no `.h5` file."""
    if not 0.0 <= test_from_val < 1.0:
        raise BadValue("test_from_val", f"must be 0 or a fraction in (0, 1), got {test_from_val!r}")
    if test_from_val == 0.0 or split not in ("val", "test"):
        return _h5_files(Path(raw_dir) / split)
    test_dir = Path(raw_dir) / "test"
    if test_dir.is_dir() and any(test_dir.glob("*.h5")):
        raise BadValue("test_from_val", f"{test_from_val:g} carves the test split out of val, but {test_dir} "
                                        f"holds .h5 files: move them away or set it to 0")
    try:
        val, test = carve_val(_h5_files(Path(raw_dir) / "val"), test_from_val)
    except BadValue as exc:  # carve_val's `fraction`
        raise BadValue("test_from_val", exc.problem) from None
    return val if split == "val" else test


def split_acquisitions(raw_dir: Path | str, split: str, names: Sequence[str], *,
                       test_from_val: float = 0.0) -> dict[str, str]:
    """{file name: its `acquisition` attribute} for the named files of one split (`list_split`'s
    files; fastMRI knee: `CORPD_FBK`, proton density, or `CORPDFS_FBK`, with fat suppression;
    `UNKNOWN_ACQUISITION` for a file without the attribute). A name with no such file, or a file
    that cannot be read, is an InputError naming it."""
    files = {f.name: f for f in list_split(raw_dir, split, test_from_val=test_from_val)}
    out = {}
    for name in names:
        if name not in files:
            raise InputError(f"{Path(raw_dir) / split / name}: no such fastMRI file in the {split} split")
        try:
            with h5py.File(files[name], "r") as h5:
                value = h5.attrs.get("acquisition", UNKNOWN_ACQUISITION)
        except OSError as exc:
            raise InputError(f"{files[name]}: unreadable HDF5 file ({first_line(exc)})") from None
        out[name] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def _h5_files(d: Path) -> list[Path]:
    if not d.is_dir():
        raise InputError(f"{d}: split directory is missing")
    files = sorted(d.glob("*.h5"))
    if not files:
        raise InputError(f"{d}: split directory has no .h5 files")
    return files


def patient_key(path: Path) -> str:
    """The file's `patient_id` attr (fastMRI files carry one); the file name when it has none."""
    try:
        with h5py.File(path, "r") as h5:
            pid = h5.attrs.get("patient_id")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None
    if isinstance(pid, bytes):
        pid = pid.decode("utf-8", "replace")
    pid = str(pid).strip() if pid is not None else ""
    return f"patient:{pid}" if pid else f"file:{path.name}"


def carve_val(files: list[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Split val's files into (val, test), both sorted and non-empty, by patient so that no patient
    is in both: patients are ordered by the SHA-256 of their id (the file name for a file without
    `patient_id`; not Python's salted `hash`), and taken in that order, each one whose files still
    fit, until the test split holds floor(fraction * n + 0.5) files (at least 1, at most n - 1).
    With one file per patient the test share is exact to within half a file; a patient with several
    files can leave it short by fewer files than that patient has. Only attrs are read."""
    groups: dict[str, list[Path]] = {}
    for p in files:
        groups.setdefault(patient_key(p), []).append(p)
    n = len(files)
    target = min(max(math.floor(fraction * n + 0.5), 1), n - 1)
    order = sorted(groups, key=lambda k: (hashlib.sha256(k.encode()).hexdigest(), k))
    test: list[Path] = []
    for key in order:
        if len(test) + len(groups[key]) <= target:
            test += groups[key]
    if not test and len(groups) > 1:        # every patient has more files than the target
        test = list(groups[order[0]])
    if not test or len(test) == n:
        raise BadValue("fraction", f"cannot carve a test split out of val's {n} file(s) of "
                                   f"{len(groups)} patient(s) and keep both non-empty")
    taken = set(test)
    return [p for p in files if p not in taken], sorted(test)


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
    """An open, validated fastMRI file. Use as a context manager.

    `info`: the file's VolumeInfo from an earlier validation (a worker reopening a scanned file):
    then only the shapes of `kspace` and the target are checked against it, not the whole file."""

    def __init__(self, path: Path | str, challenge: str, info: VolumeInfo | None = None):
        if challenge not in TARGET_KEY:
            raise BadValue("challenge", f"must be singlecoil or multicoil, got {challenge!r}")
        self.path = Path(path)
        self.challenge = challenge
        try:
            self._h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: not a readable HDF5 file ({first_line(exc)})") from None
        try:
            self.info = self._validate() if info is None else self._recheck(info)
        except BaseException:
            self._h5.close()
            raise

    def _recheck(self, info: VolumeInfo) -> VolumeInfo:
        try:
            k, t = self._h5["kspace"], self._h5[TARGET_KEY[self.challenge]]
            same = tuple(k.shape) == info.kspace_shape and tuple(t.shape[1:]) == info.target_shape
        except (KeyError, OSError, ValueError, AttributeError):
            same = False
        if not same or info.challenge != self.challenge:
            raise InputError(f"{self.path}: changed while being read (kspace or target shape differs)")
        return info

    def __enter__(self) -> "FastMRIFile":
        return self

    def __exit__(self, *exc) -> None:
        self._h5.close()

    def _validate(self) -> VolumeInfo:
        h5, p = self._h5, self.path
        other = next(c for c in KSPACE_RANK if c != self.challenge)
        k = kspace_dataset(h5, p, self.challenge, lambda got, want: f"kspace has rank {got}, expected {want} for "
                                                                    f"{self.challenge} (a {other} file?)")
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
        return self.kspace_block(0, self.info.n_slices)

    def kspace_block(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """K-space slices [start, stop) as complex64, checked finite; read straight into `out`
        (complex64, C-contiguous, of the block's shape) when given."""
        k = self._h5["kspace"]
        shape = (stop - start, *k.shape[1:])
        try:
            if out is not None and k.dtype == np.complex64 and out.shape == shape and out.dtype == np.complex64:
                k.read_direct(out, np.s_[start:stop])
                block = out
            else:
                block = k[start:stop].astype(np.complex64, copy=False)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{self.path}: cannot read kspace ({first_line(exc)})") from None
        if not all_finite(block.view(np.float32)):
            raise InputError(f"{self.path}: kspace contains NaN or Inf")
        return block

    def target(self) -> np.ndarray:
        return self.target_block(0, self.info.n_slices)

    def target_block(self, start: int, stop: int, crop: int | None = None, out: np.ndarray | None = None
                     ) -> np.ndarray:
        """Target slices [start, stop) as float32, only their centre crop (fastMRI `center_crop`)
        read when `crop` is given; checked finite. Read straight into `out` (float32, C-contiguous,
        of the block's shape) when given."""
        key = TARGET_KEY[self.challenge]
        h, w = self.info.target_shape
        rows = cols = slice(None)
        if crop is not None:
            rows, cols = slice((h - crop) // 2, (h - crop) // 2 + crop), slice((w - crop) // 2, (w - crop) // 2 + crop)
        t = self._h5[key]
        try:
            if out is not None and t.dtype == np.float32 and out.dtype == np.float32 and out.flags.c_contiguous:
                t.read_direct(out, np.s_[start:stop, rows, cols])
                block = out
            else:
                block = np.ascontiguousarray(t[start:stop, rows, cols], dtype=np.float32)
                if out is not None:
                    out[...] = block
                    block = out
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{self.path}: cannot read target ({first_line(exc)})") from None
        if not all_finite(block):
            raise InputError(f"{self.path}: {key} contains NaN or Inf")
        return block


def kspace_dataset(h5: h5py.File, path: Path, challenge: str, rank_message: Callable[[int, int], str]
                   ) -> h5py.Dataset:
    """The `kspace` dataset of an open fastMRI file, checked: a complex dataset of the challenge's rank
    (else the error says `rank_message(rank found, rank expected)`) with at least one slice."""
    if "kspace" not in h5:
        raise InputError(f"{path}: no 'kspace' dataset")
    k = h5["kspace"]
    if not isinstance(k, h5py.Dataset):
        raise InputError(f"{path}: 'kspace' is not a dataset")
    rank = KSPACE_RANK[challenge]
    if k.ndim != rank:
        raise InputError(f"{path}: {rank_message(k.ndim, rank)}")
    if not np.issubdtype(k.dtype, np.complexfloating):
        raise InputError(f"{path}: kspace dtype is {k.dtype}, expected complex")
    if k.shape[0] == 0:
        raise InputError(f"{path}: kspace has no slices")
    return k


def all_finite(x: np.ndarray) -> bool:
    """No NaN or Inf in float array `x`. A sum is finite exactly when every term is, unless it
    overflows: only then is each element checked (faster than `isfinite(x).all()` on large arrays)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(x, axis=None)):
            return True
    return bool(np.isfinite(x).all())
