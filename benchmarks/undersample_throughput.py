"""Undersample throughput (slices/s) on fastMRI-sized slices (640x368 k-space, crop 320), single-coil
and multi-coil (15 coils, as fastMRI's knee files).

`ours` is the whole undersample stage as `roirecon undersample` runs it: scanning and validating
every file, reading k-space from HDF5, masks, zero-filled images, statistics, and writing the zarr
store (zstd + crc32c per chunk, content digests), with one worker process per core. Each repeat
writes a new store; removing the previous one is not timed.

References, measured in the same run on the same cores:
- fastMRI's own `SliceDataset` + `UnetDataTransform` over the same files, through a DataLoader with
  one worker per core (it writes nothing);
- the bare inverse FFT of the same k-space held in memory: fastMRI's full 640x368 `ifft2c` in torch
  (every coil), one thread, slice by slice, scaled by the number of cores as if it parallelised
  perfectly: the floor set by the arithmetic, with no I/O, no crop, no magnitude, no RSS and no store
  at all. (torch's own intra-op threads scale badly on a busy 2-core machine.)

The three run in turns (ours, fastMRI's loop, the FFT; `--repeats` rounds), so a change of the
machine's load falls on all three alike. Each rate is the best of its runs; the JSON also keeps
every run's time and the ratio of each round, so the spread is visible, and the load average.
Timings on a shared machine are noisy; the ratios compare rates measured in the same run.
Peak memory of the stages is measured by benchmarks/stage_memory.py. Writes
reports/bench/undersample.json (the single-coil numbers at the top level, as before; the multi-coil
ones under `multicoil`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastmri.data import SliceDataset  # noqa: E402
from fastmri.data.transforms import UnetDataTransform  # noqa: E402
import fastmri  # noqa: E402

from pipeline.kspace import mask_function  # noqa: E402
from pipeline.parallel import worker_count  # noqa: E402
from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.slice_stores import MaskSpec, build_undersampled_store, scan  # noqa: E402
from pipeline.synthetic.dataset import SyntheticSpec, write_fastmri  # noqa: E402


def make_data(root: Path, volumes: int, slices: int, coils: int) -> Path:
    spec = SyntheticSpec(volumes={"train": volumes, "val": 1, "test": 1}, slices=slices, recon_size=320,
                         coils=coils)
    write_fastmri(root, spec, seed=123)
    return root


def timed(fn, before=None) -> float:
    """Seconds of one call of fn (`before` runs untimed ahead of it)."""
    if before:
        before()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ours(root: Path, out: Path, workers: int, challenge: str) -> None:
    scans = scan(root, challenge, 320)
    build_undersampled_store(out, scans, raw_dir=str(root), challenge=challenge, crop=320,
                             mask=MaskSpec("random", 4, 0.08), workers=workers)


def fastmri_loop(root: Path, workers: int, challenge: str) -> None:
    mask_func = mask_function("random", 4, 0.08)
    for split in ("train", "val", "test"):
        ds = SliceDataset(root / split, challenge, transform=UnetDataTransform(challenge, mask_func=mask_func))
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers)
        for _ in loader:
            pass


def bare_fft(kspace: torch.Tensor) -> None:
    for k in kspace:  # one slice (all its coils) at a time, as a loader would
        fastmri.ifft2c(k)


def in_memory_kspace(root: Path) -> torch.Tensor:
    ks = []
    for split in ("train", "val", "test"):
        for f in sorted((root / split).glob("*.h5")):
            with h5py.File(f) as h:
                ks.append(h["kspace"][()])
    return torch.view_as_real(torch.from_numpy(np.concatenate(ks)))


def measure(d: Path, challenge: str, coils: int, volumes: int, slices: int, repeats: int, workers: int) -> dict:
    """One case: its data written under d, the three timed in turns `repeats` times."""
    root = make_data(d / challenge, volumes, slices, coils)
    n = sum(i.n_slices for infos in scan(root, challenge, 320).values() for i in infos)
    store = d / f"{challenge}.zarr"
    kspace = in_memory_kspace(root)
    times: dict[str, list[float]] = {"ours": [], "fastmri_slicedataset_unet_transform": [], "bare_ifft2c_one_core": []}
    for _ in range(repeats):
        times["ours"].append(timed(lambda: ours(root, store, workers, challenge),
                                   before=lambda: shutil.rmtree(store, ignore_errors=True)))
        times["fastmri_slicedataset_unet_transform"].append(timed(lambda: fastmri_loop(root, workers, challenge)))
        times["bare_ifft2c_one_core"].append(timed(lambda: bare_fft(kspace)))
    del kspace
    shutil.rmtree(root)
    t_ours, t_fastmri, t_fft = (times[k] for k in times)
    rates = {"ours": n / min(t_ours), "fastmri_slicedataset_unet_transform": n / min(t_fastmri),
             "bare_ifft2c": workers * n / min(t_fft)}
    by_round = {"vs_fastmri": [f / o for o, f in zip(t_ours, t_fastmri)],
                "vs_bare_fft": [t / (workers * o) for o, t in zip(t_ours, t_fft)]}
    return {
        "kspace_shape": [coils, 640, 368] if coils > 1 else [640, 368], "slices": n,
        "slices_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_fastmri": round(rates["ours"] / rates["fastmri_slicedataset_unet_transform"], 2),
        "ratio_vs_bare_fft": round(rates["ours"] / rates["bare_ifft2c"], 2),
        "ratio_by_round": {k: [round(r, 2) for r in v] for k, v in by_round.items()},
        "seconds_per_run": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=6, help="single-coil train volumes (val and test: 1 each)")
    ap.add_argument("--slices", type=int, default=12, help="slices per single-coil volume")
    ap.add_argument("--multicoil-volumes", type=int, default=2, help="15-coil train volumes (0: no multi-coil case)")
    ap.add_argument("--multicoil-slices", type=int, default=8, help="slices per 15-coil volume")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/undersample.json")
    args = ap.parse_args()
    workers = worker_count(0)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        single = measure(Path(d), "singlecoil", 1, args.volumes, args.slices, args.repeats, workers)
        multi = (measure(Path(d), "multicoil", 15, args.multicoil_volumes, args.multicoil_slices, args.repeats, workers)
                 if args.multicoil_volumes else None)
    result = {
        "benchmark": "undersample_throughput",
        **single,
        "crop": 320, "mask": "random 4x cf 0.08",
        "cores": workers, "bare_fft": "torch ifft2c, 1 thread, rate x cores", "python": platform.python_version(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "targets": {"ratio_vs_fastmri": ">= 3", "ratio_vs_bare_fft": ">= 0.5"},
        "multicoil": multi,
        "peak_memory": "reports/bench/stage_memory.json (benchmarks/stage_memory.py)",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
