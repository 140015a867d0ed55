"""Classifier exams for MRNet: the synthetic exams, MRNet-v1.0 and KneeMRI.

- MRNet-v1.0 (and the synthetic exams, written in the same layout): `{train,valid}/<plane>/NNNN.npy`
  uint8 `(slices, H, W)` plus header-less label files `{train,valid}-<task>.csv` with rows `id,label`.
- KneeMRI (Štajduhar et al. 2017): `metadata.csv` (patientID, examId, seriesNo, aclDiagnosis,
  kneeLR, roiX, roiY, roiZ, roiWidth, roiHeight, roiDepth, volumeFilename) and one pickled numpy
  volume `(slices, H, W)` per exam (`*.pck`, anywhere under the directory). Pickles are read only
  through `load_pickled_array`, which admits numpy arrays and nothing else. KneeMRI has no official
  split: patients are assigned to train/valid by a seeded draw.

Every listing is validated up front (labels vs. volumes, ranks, empty splits, an exam in both
splits) and raises `InputError` naming the file at fault; volumes are loaded one exam at a time.
"""
from __future__ import annotations

import csv
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.errors import BadValue, InputError, check_disjoint, first_line

SPLITS = ("train", "valid")
SOURCES = ("synthetic", "mrnet", "kneemri")
KNEEMRI_COLUMNS = ("patientID", "examId", "seriesNo", "aclDiagnosis", "kneeLR", "roiX", "roiY", "roiZ",
                   "roiWidth", "roiHeight", "roiDepth", "volumeFilename")
KNEEMRI_TASKS = {"abnormal": 1, "acl": 1, "tear": 1, "rupture": 2}  # label = aclDiagnosis >= value


@dataclass(frozen=True)
class Exam:
    """One exam: where its volume is, its label, and (KneeMRI) the ROI `(z, y, x, depth, height, width)`."""
    id: str
    path: Path
    label: int
    roi: Optional[tuple[int, int, int, int, int, int]] = None

    def load(self) -> np.ndarray:
        """The volume as float32 `(slices, H, W)`, cropped to the ROI when one is set."""
        if self.path.suffix == ".npy":
            try:
                vol = np.load(self.path, allow_pickle=False)
            except Exception as exc:
                raise InputError(f"{self.path}: unreadable .npy volume ({first_line(exc)})") from None
        else:
            vol = load_pickled_array(self.path)
        vol = check_volume(vol, self.path)
        if self.roi is not None:
            z, y, x, d, h, w = self.roi
            vol = vol[z:z + d, y:y + h, x:x + w]
            if min(vol.shape) < 1:
                raise InputError(f"{self.path}: ROI {self.roi} (z, y, x, depth, height, width) is empty")
        vol = vol.astype(np.float32, copy=False)
        if not np.isfinite(vol).all():
            raise InputError(f"{self.path}: volume holds NaN or Inf")
        return vol


def check_volume(vol: object, path: Path) -> np.ndarray:
    if not isinstance(vol, np.ndarray):
        raise InputError(f"{path}: expected a numpy array, got {type(vol).__name__}")
    if vol.ndim != 3:
        raise InputError(f"{path}: expected a volume of rank 3 (slices, H, W), got shape {vol.shape}")
    if vol.dtype.kind not in "uif" or min(vol.shape) < 1:
        raise InputError(f"{path}: expected a non-empty numeric volume, got {vol.dtype} {vol.shape}")
    return vol


def list_exams(source: str, data_dir: Path | str, split: str, *, plane: str = "coronal",
               task: str = "abnormal", roi_crop: bool = False, valid_fraction: float = 0.25,
               seed: int = 0) -> list[Exam]:
    """The exams of one split (`train` or `valid`), sorted by id, validated."""
    if source not in SOURCES:
        raise BadValue("source", f"expected one of {', '.join(SOURCES)}, got {source!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: classifier data directory not found")
    if source == "kneemri":
        exams = _kneemri(data_dir, split, task, roi_crop, valid_fraction, seed)
    else:
        exams = _mrnet_layout(data_dir, split, plane, task)
    if not exams:
        raise InputError(f"{data_dir}: split '{split}' has no exams")
    return exams


def list_splits(source: str, data_dir: Path | str, **kw) -> dict[str, list[Exam]]:
    """`list_exams` of both splits; an exam id in both (an exam copied across) is an InputError."""
    exams = {split: list_exams(source, data_dir, split, **kw) for split in SPLITS}
    check_disjoint({split: {e.id: e.path for e in ex} for split, ex in exams.items()}, "exam")
    return exams


def _mrnet_layout(root: Path, split: str, plane: str, task: str) -> list[Exam]:
    labels_path = root / f"{split}-{task}.csv"
    vol_dir = root / split / plane
    if not labels_path.is_file():
        raise InputError(f"{labels_path}: label file missing (MRNet layout needs {split}-{task}.csv)")
    if not vol_dir.is_dir():
        raise InputError(f"{vol_dir}: volume directory missing")
    labels: dict[str, int] = {}
    with open(labels_path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise InputError(f"{labels_path}:{lineno}: expected 'id,label' without a header, got {row!r}")
            key, value = row[0].strip(), row[1].strip()
            if value not in ("0", "1"):
                raise InputError(f"{labels_path}:{lineno}: label must be 0 or 1, got {value!r}")
            key = _exam_id(key, labels_path, lineno)
            if key in labels:
                raise InputError(f"{labels_path}:{lineno}: exam {key} listed twice")
            labels[key] = int(value)
    volumes = {p.stem: p for p in vol_dir.glob("*.npy")}
    if not labels:
        raise InputError(f"{labels_path}: no labels (split '{split}' is empty)")
    missing = sorted(set(labels) - set(volumes))
    if missing:
        raise InputError(f"{labels_path}: labels do not match the volumes: no {vol_dir}/{missing[0]}.npy "
                         f"({len(missing)} labelled exams without a volume)")
    unlabelled = sorted(set(volumes) - set(labels))
    if unlabelled:
        raise InputError(f"{labels_path}: labels do not match the volumes: {vol_dir}/{unlabelled[0]}.npy "
                         f"has no label ({len(unlabelled)} volumes without a label)")
    exams = []
    for key in sorted(labels):
        path = volumes[key]
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: unreadable .npy volume ({first_line(exc)})") from None
        check_volume(arr, path)
        exams.append(Exam(id=key, path=path, label=labels[key]))
    return exams


def _exam_id(raw: str, path: Path, lineno: int) -> str:
    if not raw.isdigit():
        raise InputError(f"{path}:{lineno}: exam id must be a number, got {raw!r}")
    return f"{int(raw):04d}"


def _kneemri(root: Path, split: str, task: str, roi_crop: bool, valid_fraction: float,
             seed: int) -> list[Exam]:
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise InputError(f"{meta}: KneeMRI metadata (labels) missing")
    if task not in KNEEMRI_TASKS:
        raise BadValue("task", f"KneeMRI labels ACL injuries; use one of {', '.join(KNEEMRI_TASKS)}, "
                               f"got {task!r}")
    threshold = KNEEMRI_TASKS[task]
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        absent = [c for c in KNEEMRI_COLUMNS if c not in fields]
        if absent:
            raise InputError(f"{meta}: missing column(s) {', '.join(absent)}")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows:
        raise InputError(f"{meta}: no exams listed")
    files = {p.name: p for p in root.rglob("*.pck")}
    exams_by_patient: dict[str, list[Exam]] = {}
    seen: dict[str, int] = {}
    for lineno, r in enumerate(rows, 2):
        name = r["volumeFilename"]
        if name in seen:  # one volume under two rows could land in both splits
            raise InputError(f"{meta}:{lineno}: {name} listed twice (also on line {seen[name]})")
        seen[name] = lineno
        if name not in files:
            raise InputError(f"{meta}:{lineno}: labels do not match the volumes: {name} not found under {root}")
        try:
            diag = int(r["aclDiagnosis"])
            roi = tuple(int(r[k]) for k in ("roiZ", "roiY", "roiX", "roiDepth", "roiHeight", "roiWidth"))
        except ValueError:
            raise InputError(f"{meta}:{lineno}: aclDiagnosis and roi* must be integers") from None
        if diag not in (0, 1, 2):
            raise InputError(f"{meta}:{lineno}: aclDiagnosis must be 0, 1 or 2, got {diag}")
        if min(roi[3:]) < 1 or min(roi[:3]) < 0:
            raise InputError(f"{meta}:{lineno}: ROI {roi} is empty or negative")
        exam = Exam(id=Path(name).stem, path=files[name], label=int(diag >= threshold),
                    roi=roi if roi_crop else None)
        exams_by_patient.setdefault(r["patientID"], []).append(exam)
    unlisted = sorted(set(files) - {r["volumeFilename"] for r in rows})
    if unlisted:
        raise InputError(f"{meta}: labels do not match the volumes: {files[unlisted[0]]} is not listed "
                         f"({len(unlisted)} volumes without a label)")
    # Patient-level split, so no patient is in both.
    patients = sorted(exams_by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    n_valid = max(1, math.ceil(valid_fraction * len(patients))) if len(patients) > 1 else 0
    valid = {patients[i] for i in order[:n_valid]}
    chosen = [e for p in patients if (p in valid) == (split == "valid") for e in exams_by_patient[p]]
    return sorted(chosen, key=lambda e: e.id)


# --------------------------------------------------------------------------- restricted unpickling
def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    import _codecs

    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
             ("_codecs", "encode"): _codecs.encode}
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = _reconstruct
        table[(f"{mod}.numeric", "_frombuffer")] = _frombuffer
    return table


def _plain_dtype(*args, **kwargs) -> np.dtype:
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError("object arrays are not admitted")
    return dt


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs; anything else is refused before it
    is looked up, so a crafted pickle cannot name (let alone call) os.system, eval, etc."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load '{module}.{name}': only numpy arrays are admitted") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not admitted")


def load_pickled_array(path: Path | str) -> np.ndarray:
    """Unpickle a numpy array (Python 2 or 3 pickles, as KneeMRI ships them), admitting nothing else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: unsafe or invalid pickle ({exc})") from None
    except Exception as exc:
        raise InputError(f"{path}: unreadable pickle ({first_line(exc)})") from None
    if type(obj) is not np.ndarray:
        raise InputError(f"{path}: unsafe or invalid pickle (holds {type(obj).__name__}, only numpy arrays are admitted)")
    if obj.dtype.hasobject:
        raise InputError(f"{path}: unsafe or invalid pickle (object array)")
    return obj

