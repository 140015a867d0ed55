"""Synthetic knee dataset in the public fastMRI / fastMRI+ / MRNet formats.

`synthesize(out_root, spec, seed)` writes
- `out_root/fastmri/{train,val,test}/file*.h5`: fastMRI knee files (see `write_fastmri`),
- `out_root/annotations.csv`: fastMRI+ `knee.csv`-style lesion boxes for those files,
- `out_root/mrnet/`: MRNet-v1.0-style classifier exams (see `write_mrnet_exams`).

A volume is a knee from `pipeline.synthetic.phantom` (anatomy and lesions) at a random image scale, acquired
by `pipeline.synthetic.acquisition` (k-space geometry, coils, noise, the ISMRMRD header; the fastMRI format
of `kspace` and `ismrmrd_header` is described there). The fastMRI files hold:
- `kspace` (`noise` = `spec.noise`) and `ismrmrd_header`,
- `reconstruction_esc` (single-coil) float32 (slices, R, R), the acquisition's target; single-coil
  files also carry `reconstruction_rss` (identical for one coil) as the real ones do; multi-coil
  files only `reconstruction_rss`,
- attrs `acquisition` ("CORPD_FBK" | "CORPDFS_FBK"), `max` (max of the target volume), `norm`
  (Frobenius norm of the target volume), `patient_id` (sha256 hex).
- Scale: target maxima between ~1.5e-4 and ~8e-4, like the real files.
- Rendering runs in `workers` processes (default: up to 4 for jobs of >= 24 volumes+exams, else
  in-process); results are collected in order, so the output does not depend on it.
- Names `file` + 7 digits + `.h5`, drawn without replacement from the seed, split by split.

Determinism: every volume and exam has its own generator `np.random.default_rng([seed, stream,
split_index, i])` (stream 0: fastMRI volumes, 1: MRNet exams, 2: file names, 3: lesion flags), so
the same seed gives byte-identical files, on every x86-64 CPU whatever SIMD level numpy, OpenBLAS
and libm dispatch to (transcendental functions, complex products and magnitudes and sums of squares
are computed without CPU-dependent kernels: see `pipeline.portable_math`), and exams
and reconstruction volumes are different subjects. floor(n * lesion_rate + 0.5) of the n volumes
(exams) of each split have lesions, at seeded positions (`eval_lesion_rate` for the val and test
splits, when set: lesion-rich evaluation splits give the ROI metrics enough volumes with boxes).

MRNet exams (`write_mrnet_exams`) are drawn from the same phantom and the same acquisition model
(band-limit, noise) as the fastMRI targets (computed with 1-D column FFTs on the recon rows, which
is equivalent), so a classifier trained on them sees the fastMRI targets' visual domain. An exam
is labelled abnormal when it has a visible (boxed) lesion.

`progress`: optional callable, called as `progress(1)` after each volume file and each exam is
written (`total_units(spec)` units in all for `synthesize`), e.g. `tqdm.update`.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import h5py
import numpy as np

from pipeline.synthetic.acquisition import acquire_fov, acquire_volume, encoding_for, ismrmrd_header
from pipeline.errors import InputError
from pipeline.io.annotations import to_fastmri_plus, write_annotations
from pipeline.parallel import OrderedPool, worker_count
from pipeline.synthetic.anatomy import draw_subject
from pipeline.synthetic.phantom import render_knee
from pipeline.synthetic.lesions import Lesion
from pipeline.portable_math import det_exp, det_rmul

__all__ = ["SyntheticSpec", "write_fastmri", "write_annotations", "write_mrnet_exams", "synthesize",
           "total_units", "synth_volume", "synth_exam", "exam_acquisitions"]

Progress = Optional[Callable[[int], object]]
FASTMRI_SPLITS = ("train", "val", "test")
MRNET_SPLITS = ("train", "valid")
_LN_SCALE_LO, _LN_SCALE_HI = -8.804875, -7.418581   # ln(1.5e-4), ln(6e-4): image scale range


@dataclass(frozen=True)
class SyntheticSpec:
    volumes: dict[str, int] = field(default_factory=lambda: {"train": 22, "val": 6, "test": 8})
    slices: int = 16
    recon_size: int = 128
    coils: int = 1
    lesion_rate: float = 0.5
    noise: float = 0.02
    eval_lesion_rate: float | None = None   # the val and test splits' rate (None: lesion_rate)
    exams: dict[str, int] = field(default_factory=lambda: {"train": 120, "valid": 40})
    exam_slices: int = 8

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        for name, lo in (("slices", 1), ("recon_size", 16), ("coils", 1), ("exam_slices", 1)):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                raise InputError(f"synthetic.{name}: must be an integer >= {lo}, got {v!r}")
        for name in ("lesion_rate", "eval_lesion_rate"):
            v = getattr(self, name)
            if (v is not None or name == "lesion_rate") and (not is_num(v) or not 0.0 <= float(v) <= 1.0):
                raise InputError(f"synthetic.{name}: must be a number in [0, 1], got {v!r}")
        if not is_num(self.noise) or not 0.0 <= float(self.noise) < 1.0 \
                or not math.isfinite(float(self.noise)):
            raise InputError(f"synthetic.noise: must be a number in [0, 1), got {self.noise!r}")
        for name, allowed in (("volumes", FASTMRI_SPLITS), ("exams", MRNET_SPLITS)):
            d = getattr(self, name)
            if not isinstance(d, dict) or not d:
                raise InputError(f"synthetic.{name}: must be a mapping split -> count, got {d!r}")
            for k, v in d.items():
                if k not in allowed:
                    raise InputError(f"synthetic.{name}: unknown split {k!r} "
                                     f"(allowed: {', '.join(allowed)})")
                if not is_int(v) or v < 0:
                    raise InputError(f"synthetic.{name}.{k}: must be an integer >= 0, got {v!r}")
        if sum(self.volumes.values()) < 1:
            raise InputError("synthetic.volumes: needs at least one volume")


def total_units(spec: SyntheticSpec) -> int:
    """Number of `progress(1)` calls `synthesize` makes: one per volume and per exam."""
    return sum(spec.volumes.values()) + sum(spec.exams.values())


# --------------------------------------------------------------------------- drawing the dataset
def _lesion_flags(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    k = int(math.floor(n * float(rate) + 0.5))
    flags = np.zeros(n, bool)
    flags[rng.permutation(n)[:k]] = True
    return flags


def _file_numbers(spec: SyntheticSpec, seed: int) -> dict[str, list[int]]:
    total = sum(spec.volumes.get(s, 0) for s in FASTMRI_SPLITS)
    rng = np.random.default_rng([seed, 2])
    nums = 1000000 + rng.choice(max(4 * total, 3000), size=total, replace=False)
    out, i = {}, 0
    for split in FASTMRI_SPLITS:
        n = spec.volumes.get(split, 0)
        out[split] = sorted(int(v) for v in nums[i:i + n])
        i += n
    return out


def _rows_for(name: str, lesions: list[Lesion], R: int) -> list[dict]:
    rows = []
    for les in lesions:
        for k, b in zip(les.slices, les.boxes):
            x, y, w, h = to_fastmri_plus(*b, frame_height=R)
            rows.append(dict(file=name, slice=int(k), study_level="No", x=x, y=y, width=w,
                             height=h, label=les.label))
    rows.sort(key=lambda r: (r["slice"], r["label"], r["y"], r["x"]))
    return rows


# --------------------------------------------------------------------------- writers
def _write_h5(path: Path, kspace: np.ndarray, target: np.ndarray, header: bytes,
              acquisition: str, patient_id: str, coils: int) -> None:
    with h5py.File(path, "w") as hf:
        hf.create_dataset("ismrmrd_header", data=np.bytes_(header), track_times=False)
        hf.create_dataset("kspace", data=kspace, track_times=False)
        if coils == 1:
            hf.create_dataset("reconstruction_esc", data=target, track_times=False)
        hf.create_dataset("reconstruction_rss", data=target, track_times=False)
        hf.attrs["acquisition"] = acquisition
        hf.attrs["max"] = float(target.max())
        t = target.astype(np.float64)          # not np.linalg.norm: BLAS, CPU-dependent
        hf.attrs["norm"] = math.sqrt(float(np.sum(t * t)))
        hf.attrs["patient_id"] = patient_id


def synth_volume(spec: SyntheticSpec, seed: int, split: str, index: int, lesion: bool):
    """One fastMRI volume: (kspace, target, lesions, acquisition, header_bytes, patient_id)."""
    enc = encoding_for(spec.recon_size)
    rng = np.random.default_rng([seed, 0, FASTMRI_SPLITS.index(split), index])
    vol = render_knee(rng, spec.slices, enc.grid, lesion=lesion,
                      fov_shape=(enc.recon, enc.recon))
    scale = np.float32(det_exp(rng.uniform(_LN_SCALE_LO, _LN_SCALE_HI)))   # log-uniform
    images = det_rmul(vol.images, scale)
    kspace, target = acquire_volume(images, enc, spec.coils, spec.noise, rng)
    header = ismrmrd_header(enc, spec.slices, spec.coils, vol.acquisition, rng)
    pid = hashlib.sha256(f"roirecon-synthetic/{seed}/{split}/{index}".encode()).hexdigest()
    return kspace, target, vol.lesions, vol.acquisition, header, pid


def _rendering_pool(workers: int | None, units: int) -> OrderedPool:
    """The rendering processes: `workers`, or by default up to 4 for jobs of >= 24 volumes and
    exams, else none (in-process). They only run numpy (no BLAS, no h5py: this process writes the
    files), and results come back in order, so the files are the same either way."""
    if workers is None:
        workers = min(worker_count(0), 4) if units >= 24 else 1
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers: must be an integer >= 1, got {workers!r}")
    return OrderedPool(workers)


def _own(pool: OrderedPool | None, workers: int | None, units: int):
    return _rendering_pool(workers, units) if pool is None else contextlib.nullcontext(pool)


def _volume_job(job: tuple):
    return synth_volume(*job)


def _exam_job(job: tuple):
    return synth_exam(*job)


def _fastmri_jobs(spec: SyntheticSpec, seed: int) -> list[tuple]:
    jobs = []
    for split in FASTMRI_SPLITS:
        n = spec.volumes.get(split, 0)
        rate = spec.lesion_rate if split == "train" or spec.eval_lesion_rate is None else spec.eval_lesion_rate
        flags = _lesion_flags(n, rate, np.random.default_rng([seed, 3, FASTMRI_SPLITS.index(split)]))
        jobs += [(spec, seed, split, i, bool(flags[i])) for i in range(n)]
    return jobs


def _exam_jobs(spec: SyntheticSpec, seed: int) -> list[tuple]:
    jobs = []
    for split in MRNET_SPLITS:
        n = spec.exams.get(split, 0)
        flags = _lesion_flags(n, spec.lesion_rate,
                              np.random.default_rng([seed, 3, 10 + MRNET_SPLITS.index(split)]))
        jobs += [(spec, seed, split, i, bool(flags[i])) for i in range(n)]
    return jobs


def write_fastmri(out_dir: Path | str, spec: SyntheticSpec, seed: int,
                  progress: Progress = None, *, workers: int | None = None,
                  pool: OrderedPool | None = None) -> list[dict]:
    """Write `out_dir/{train,val,test}/file*.h5` (splits named in `spec.volumes`) and return the
    annotation rows (fastMRI+ knee.csv columns, see `pipeline.io.annotations`) of their lesions.
    `workers`: processes to render in (None: up to 4 for large jobs, else in-process); `pool`: a
    `pipeline.parallel.OrderedPool` to render in instead (`synthesize` shares one)."""
    out_dir = Path(out_dir)
    enc = encoding_for(spec.recon_size)
    names = _file_numbers(spec, seed)
    for split in spec.volumes:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    jobs = _fastmri_jobs(spec, seed)
    rows: list[dict] = []
    with _own(pool, workers, len(jobs)) as pool:
        for (_, _, split, i, _), res in zip(jobs, pool.map(_volume_job, jobs)):
            kspace, target, lesions, acq, header, pid = res
            name = f"file{names[split][i]:07d}"
            _write_h5(out_dir / split / f"{name}.h5", kspace, target, header, acq, pid,
                      spec.coils)
            rows.extend(_rows_for(name, lesions, enc.recon))
            if progress is not None:
                progress(1)
    return rows


def synth_exam(spec: SyntheticSpec, seed: int, split: str, index: int, lesion: bool
               ) -> tuple[np.ndarray, list[Lesion]]:
    """One MRNet-style exam: uint8 (exam_slices, R, R) scaled 0..255, and its lesions."""
    enc = encoding_for(spec.recon_size)
    rng = _exam_rng(seed, split, index)
    vol = render_knee(rng, spec.exam_slices, enc.grid, lesion=lesion,
                      fov_shape=(enc.recon, enc.recon))
    mag = acquire_fov(vol.images, enc, spec.noise, rng)
    lo, hi = float(mag.min()), float(mag.max())
    u8 = np.rint((mag - lo) * (255.0 / max(hi - lo, 1e-12))).clip(0, 255).astype(np.uint8)
    return u8, vol.lesions


def _exam_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, MRNET_SPLITS.index(split), index])


def exam_acquisitions(exams: Mapping[str, int], seed: int) -> dict[str, str]:
    """{case id: the contrast (`acquisition`) it was drawn with} for the exams `write_mrnet_exams`
    writes with these counts per split and this seed (the same ids), without rendering them: the
    subject's first draw decides it (`draw_subject`)."""
    out, case = {}, 0
    for split in MRNET_SPLITS:
        for i in range(exams.get(split, 0)):
            out[f"{case:04d}"] = draw_subject(_exam_rng(seed, split, i)).acquisition
            case += 1
    return out


def write_mrnet_exams(out_dir: Path | str, spec: SyntheticSpec, seed: int,
                      progress: Progress = None, *, workers: int | None = None,
                      pool: OrderedPool | None = None) -> None:
    """MRNet-v1.0 layout: `out_dir/{train,valid}/coronal/NNNN.npy` (uint8 (slices, R, R), each
    exam min-max scaled to 0..255), header-less `{train,valid}-abnormal.csv` rows `NNNN,0|1`
    (1: the exam has a lesion), and `boxes.csv` (`case,split,slice,row0,col0,height,width,label`,
    native recon-frame boxes). Case ids run on across splits (train 0000.., then valid),
    4-digit zero-padded as MRNet's. `workers` and `pool` as in `write_fastmri`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = _exam_jobs(spec, seed)
    labels: dict[str, list] = {split: [] for split in spec.exams}
    for split in spec.exams:
        (out_dir / split / "coronal").mkdir(parents=True, exist_ok=True)
    boxes = []
    with _own(pool, workers, len(jobs)) as pool:
        for case, (job, res) in enumerate(zip(jobs, pool.map(_exam_job, jobs))):
            split = job[2]
            vol, lesions = res
            cid = f"{case:04d}"
            np.save(out_dir / split / "coronal" / f"{cid}.npy", vol)
            labels[split].append((cid, int(bool(lesions))))
            for les in lesions:
                for k, b in zip(les.slices, les.boxes):
                    boxes.append((cid, split, int(k), *b, les.label))
            if progress is not None:
                progress(1)
    for split, rows in labels.items():
        with open(out_dir / f"{split}-abnormal.csv", "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(rows)
    with open(out_dir / "boxes.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["case", "split", "slice", "row0", "col0", "height", "width", "label"])
        w.writerows(boxes)


def synthesize(out_root: Path | str, spec: SyntheticSpec, seed: int,
               progress: Progress = None, *, workers: int | None = None) -> None:
    """Write `out_root/fastmri/`, `out_root/annotations.csv` and `out_root/mrnet/`.
    `workers`: processes to render in (None: up to 4 when the job is large, else in-process);
    the output does not depend on it."""
    out_root = Path(out_root)
    with _rendering_pool(workers, total_units(spec)) as pool:
        rows = write_fastmri(out_root / "fastmri", spec, seed, progress, pool=pool)
        write_annotations(out_root / "annotations.csv", rows)
        write_mrnet_exams(out_root / "mrnet", spec, seed, progress, pool=pool)
