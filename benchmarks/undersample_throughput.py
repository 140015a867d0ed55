"""Undersample throughput (slices/s) on fastMRI-sized single-coil slices (640x368 k-space, crop 320).

References measured in the same run on the same cores:
- fastMRI's own `SliceDataset` + `UnetDataTransform` over the same files, through a DataLoader with
  one worker per core;
- the bare inverse FFT of the same k-space held in memory (fastMRI's full 640x368 `ifft2c` in torch,
  one thread), scaled by the number of cores as if it parallelised perfectly: the floor set by the
  arithmetic, with no I/O at all. (torch's own intra-op threads scale badly on a busy 2-core machine.)
Peak memory of the undersample stage is measured in fresh processes for a small and a 3x larger
number of volumes. Writes reports/bench/undersample.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
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
from pipeline.slice_stores import MaskSpec, build_undersampled_store, scan  # noqa: E402
from pipeline.synthetic import SyntheticSpec, write_fastmri  # noqa: E402


def make_data(root: Path, volumes: int, slices: int) -> Path:
    spec = SyntheticSpec(volumes={"train": volumes, "val": 1, "test": 1}, slices=slices, recon_size=320)
    write_fastmri(root, spec, seed=123)
    return root


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


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


def peak_rss_mb(root: Path, workers: int) -> float:
    """Peak RSS (parent or largest worker) of one undersample run over `root`, in a fresh process."""
    code = f"""
import resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from benchmarks.undersample_throughput import ours
with tempfile.TemporaryDirectory() as d:
    ours(Path({str(root)!r}), Path(d) / "u.zarr", {workers})
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(max(me, kids) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
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
        t_ours = best_of(lambda: ours(root, Path(d) / "u.zarr", workers), args.repeats)
        t_fastmri = best_of(lambda: fastmri_loop(root, workers), args.repeats)
        ks = []
        for split in ("train", "val", "test"):
            for f in sorted((root / split).glob("*.h5")):
                with h5py.File(f) as h:
                    ks.append(h["kspace"][()])
        kspace = torch.view_as_real(torch.from_numpy(np.concatenate(ks)))
        t_fft = best_of(lambda: bare_fft(kspace), args.repeats)
        del ks, kspace
        small, large = args.volumes, 3 * args.volumes
        mem = {f"{small}_volumes": peak_rss_mb(root, workers),
               f"{large}_volumes": peak_rss_mb(make_data(Path(d) / "raw_large", large, args.slices), workers)}
    rates = {"ours": n / t_ours, "fastmri_slicedataset_unet_transform": n / t_fastmri,
             "bare_ifft2c": workers * n / t_fft}
    result = {
        "benchmark": "undersample_throughput",
        "kspace_shape": [640, 368], "crop": 320, "mask": "random 4x cf 0.08", "slices": n,
        "cores": workers, "bare_fft": "torch, 1 thread, rate x cores", "python": platform.python_version(),
        "slices_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_fastmri": round(rates["ours"] / rates["fastmri_slicedataset_unet_transform"], 2),
        "ratio_vs_bare_fft": round(rates["ours"] / rates["bare_ifft2c"], 2),
        "peak_rss_mb": {k: round(v, 1) for k, v in mem.items()},
        "peak_rss_growth": round(mem[f"{large}_volumes"] / mem[f"{small}_volumes"], 3),
        "targets": {"ratio_vs_fastmri": ">= 2", "ratio_vs_bare_fft": ">= 0.5", "peak_rss_growth": "~1 (flat)"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
