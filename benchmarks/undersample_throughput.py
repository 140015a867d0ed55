"""Undersample throughput (slices/s) on fastMRI-sized single-coil slices (640x368 k-space, crop 320).

`ours` is the whole undersample stage as `roirecon undersample` runs it: scanning and validating
every file, reading k-space from HDF5, masks, zero-filled images, statistics, and writing the zarr
store (zstd + crc32c per chunk, content digests), with one worker process per core. Each repeat
writes a new store; removing the previous one is not timed.

References, measured in the same run on the same cores:
- fastMRI's own `SliceDataset` + `UnetDataTransform` over the same files, through a DataLoader with
  one worker per core (it writes nothing);
- the bare inverse FFT of the same k-space held in memory: fastMRI's full 640x368 `ifft2c` in torch,
  one thread, slice by slice, scaled by the number of cores as if it parallelised perfectly: the floor
  set by the arithmetic, with no I/O, no crop, no magnitude and no store at all. (torch's own
  intra-op threads scale badly on a busy 2-core machine.)

Each rate is the best of `--repeats` runs; the JSON also keeps every run's time, so the spread is
visible. Timings on a shared machine are noisy; the ratios compare rates measured in the same run.
Peak memory of the stages is measured by benchmarks/stage_memory.py. Writes
reports/bench/undersample.json.
"""
from __future__ import annotations

import argparse
import json
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


def make_data(root: Path, volumes: int, slices: int) -> Path:
    spec = SyntheticSpec(volumes={"train": volumes, "val": 1, "test": 1}, slices=slices, recon_size=320)
    write_fastmri(root, spec, seed=123)
    return root


def timed(fn, repeats: int, before=None) -> list[float]:
    """Seconds of each of `repeats` calls of fn (`before` runs untimed ahead of each)."""
    times = []
    for _ in range(repeats):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def ours(root: Path, out: Path, workers: int) -> None:
    scans = scan(root, "singlecoil", 320)
    build_undersampled_store(out, scans, raw_dir=str(root), challenge="singlecoil", crop=320,
                             mask=MaskSpec("random", 4, 0.08), workers=workers)


def fastmri_loop(root: Path, workers: int) -> None:
    mask_func = mask_function("random", 4, 0.08)
    for split in ("train", "val", "test"):
        ds = SliceDataset(root / split, "singlecoil", transform=UnetDataTransform("singlecoil", mask_func=mask_func))
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers)
        for _ in loader:
            pass


def bare_fft(kspace: torch.Tensor) -> None:
    for k in kspace:  # one slice at a time, as a loader would
        fastmri.ifft2c(k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=6)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/undersample.json")
    args = ap.parse_args()
    workers = worker_count(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        root = make_data(Path(d) / "raw", args.volumes, args.slices)
        n = sum(i.n_slices for infos in scan(root, "singlecoil", 320).values() for i in infos)
        store = Path(d) / "u.zarr"
        t_ours = timed(lambda: ours(root, store, workers), args.repeats,
                       before=lambda: shutil.rmtree(store, ignore_errors=True))
        t_fastmri = timed(lambda: fastmri_loop(root, workers), args.repeats)
        ks = []
        for split in ("train", "val", "test"):
            for f in sorted((root / split).glob("*.h5")):
                with h5py.File(f) as h:
                    ks.append(h["kspace"][()])
        kspace = torch.view_as_real(torch.from_numpy(np.concatenate(ks)))
        t_fft = timed(lambda k=kspace: bare_fft(k), args.repeats)
        del ks, kspace
    rates = {"ours": n / min(t_ours), "fastmri_slicedataset_unet_transform": n / min(t_fastmri),
             "bare_ifft2c": workers * n / min(t_fft)}
    result = {
        "benchmark": "undersample_throughput",
        "kspace_shape": [640, 368], "crop": 320, "mask": "random 4x cf 0.08", "slices": n,
        "cores": workers, "bare_fft": "torch ifft2c, 1 thread, rate x cores", "python": platform.python_version(),
        "slices_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_fastmri": round(rates["ours"] / rates["fastmri_slicedataset_unet_transform"], 2),
        "ratio_vs_bare_fft": round(rates["ours"] / rates["bare_ifft2c"], 2),
        "seconds_per_run": {"ours": [round(t, 3) for t in t_ours],
                            "fastmri_slicedataset_unet_transform": [round(t, 3) for t in t_fastmri],
                            "bare_ifft2c_one_core": [round(t, 3) for t in t_fft]},
        "targets": {"ratio_vs_fastmri": ">= 3", "ratio_vs_bare_fft": ">= 0.5"},
        "peak_memory": "reports/bench/stage_memory.json (benchmarks/stage_memory.py)",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
