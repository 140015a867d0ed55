"""Peak memory of the data and U-Net stages at N and 4N volumes of the same size.

Each stage command (`python -m stages.cli prepare|undersample|train-unet|evaluate`) runs in a fresh
subprocess on a synthetic dataset written in the fastMRI format (pipeline/synthetic/dataset.py), once with
N volumes per split and once with 4N, same slices per volume and image size. Measured per run:
- `peak_rss_mb`: the largest resident set of any one process of the stage (the stage process or one
  of its workers), from the kernel's accounting (`wait4` rusage `ru_maxrss`): exact, not sampled
  (a worker's counts the pages it shares with the stage process it was forked from);
- `peak_total_pss_mb` / `peak_total_rss_mb`: the stage process and all its descendants together,
  sampled every 20 ms (`/proc/<pid>/smaps_rollup`; PSS shares pages between the processes that map
  them, so forked workers are not counted twice; RSS sums them);
- `peak_worker_private_mb`: the most private memory (USS: pages no other process maps) of any one
  worker process of the stage, sampled: what each further worker adds.
`ratio` is 4N over N (goal: at most 1.2, memory flat in the number of volumes). `per_slice_bytes`
is the growth per added slice, (peak(4N) - peak(N)) / (slices(4N) - slices(N)); the projection for
fastMRI knee is peak(N) + per_slice_bytes x (fastMRI slices - slices(N)), with per-slice bytes
scaled by (320 / crop)^2 when a run used a smaller crop (a projection, labelled as such). It is
only made when at N every split already fills a zarr shard (the stores' writers and readers buffer
up to a shard, 40 slices at 320^2): below that, 4N - N also holds the filling of those buffers,
which stops at one shard whatever the number of volumes.

The stages run with a temporary params.yaml (`--params`): data.challenge and data.crop of the run,
data.workers 0 (one per core), unet.epochs 1, unet.chans 4, unet.seeds [0]. train-unet trains the
baseline, weighted and oracle variants (weighted and oracle weighted by the box maps of the
`boxmaps` stage, which has the heatmaps store's layout); evaluate scores the three. The memory of
`synthesize` and `boxmaps` is not measured. Writes reports/bench/stage_memory.json.

    python benchmarks/stage_memory.py                 # all four stages, single- and multi-coil
    python benchmarks/stage_memory.py --quick         # fewer volumes, slices and coils (~1 min)
    python benchmarks/stage_memory.py --stages prepare,undersample --datasets singlecoil
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.stores.zarr_store import shard_slices  # noqa: E402
from pipeline.synthetic.dataset import SyntheticSpec, write_annotations, write_fastmri  # noqa: E402

STAGES = ("prepare", "undersample", "train-unet", "evaluate")
VARIANTS = ("baseline", "weighted", "oracle")
# fastMRI knee (Zbontar et al. 2018, Table 1): train 973 volumes / 34,742 slices, val 199 / 7,135,
# the same volumes single- and multi-coil. The test split of this pipeline is carved out of val.
FASTMRI_KNEE_SLICES = {"train": 34742, "val": 7135}
# slices each stage goes through on fastMRI knee (evaluate: half of val carved out as test)
FASTMRI_STAGE_SLICES = {"prepare": 34742 + 7135, "undersample": 34742 + 7135,
                        "train-unet": 34742 + 7135, "evaluate": 7135 // 2}

CONFIGS = {
    # name: (challenge, coils, recon size = crop, slices per volume, volumes per split at N).
    # At N every split of `singlecoil` and `multicoil_2coils` already holds a zarr shard (40 slices of
    # 320^2: 80 and 42 slices), so the shard-sized buffers are full at N and 4N - N is what grows with
    # the volumes. `multicoil` has fastMRI's 15 coils (28 MB of k-space a slice, 390 MB a 14-slice
    # volume; 4.7 GB of files at 4N) but only 14 slices a split at N: its 4N - N includes the filling
    # of those buffers (see the projection note); its workers' private memory is the number to watch.
    "full": {"singlecoil": ("singlecoil", 1, 320, 8, 10), "multicoil": ("multicoil", 15, 320, 14, 1),
             "multicoil_2coils": ("multicoil", 2, 320, 14, 3)},
    "quick": {"singlecoil": ("singlecoil", 1, 320, 4, 2), "multicoil": ("multicoil", 4, 320, 2, 1)},
}


def _descendants(pid: int) -> list[int]:
    """pid and all its descendants, parents before children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out


def _rollup(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, USS = private pages) of one process in bytes, zeros once it is gone."""
    vals = {"Rss:": 0, "Pss:": 0, "Private_Clean:": 0, "Private_Dirty:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(maxsplit=1)[0]
                if key in vals:
                    vals[key] = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return vals["Rss:"], vals["Pss:"], vals["Private_Clean:"] + vals["Private_Dirty:"]


# Runs the stage in a child of a fresh, small interpreter: a process's peak RSS (ru_maxrss) starts
# at its parent's peak when it is forked (and exec keeps it), so the stage must not be a child of
# this benchmark, which holds more memory than a stage's floor.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], cwd: Path, env: dict, interval: float = 0.02) -> dict:
    """Run cmd; its peak memory (see the module doc) and wall time. Raises on failure."""
    t0 = time.perf_counter()
    maxrss_file = cwd / ".maxrss"
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(maxrss_file), *cmd], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = {"rss": 0, "pss": 0, "one": 0, "worker_uss": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            procs = _descendants(proc.pid)[1:]          # not the launcher: the stage, then its workers
            totals = [_rollup(p) for p in procs]
            peak["rss"] = max(peak["rss"], sum(t[0] for t in totals))
            peak["pss"] = max(peak["pss"], sum(t[1] for t in totals))
            peak["one"] = max([peak["one"], *(t[0] for t in totals)])
            peak["worker_uss"] = max([peak["worker_uss"], *(t[2] for t in totals[1:])])
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    proc.wait()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output.decode(errors='replace')[-3000:]}")
    maxrss_kb = int(maxrss_file.read_text())
    maxrss_file.unlink()
    return {"peak_rss_mb": round(maxrss_kb / 1024, 1), "peak_total_pss_mb": round(peak["pss"] / 2**20, 1),
            "peak_total_rss_mb": round(peak["rss"] / 2**20, 1),
            "peak_rss_sampled_mb": round(peak["one"] / 2**20, 1),
            "peak_worker_private_mb": round(peak["worker_uss"] / 2**20, 1), "seconds": round(time.perf_counter() - t0, 2)}


def write_params(path: Path, challenge: str, crop: int) -> Path:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(challenge=challenge, crop=crop, workers=0)
    p["unet"].update(epochs=1, chans=4, seeds=[0], nproc=1, device="cpu")
    p["evaluate"].update(split="test", n_figures=1, bootstrap_resamples=1000, device="cpu")
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def make_dataset(root: Path, challenge: str, coils: int, size: int, slices: int, per_split: int) -> Path:
    spec = SyntheticSpec(volumes={"train": per_split, "val": per_split, "test": per_split}, slices=slices,
                         recon_size=size, coils=coils, lesion_rate=0.5, eval_lesion_rate=1.0)
    rows = write_fastmri(root / "fastmri", spec, seed=7)
    write_annotations(root / "annotations.csv", rows)
    return root


def run_stages(work: Path, stages: list[str], env: dict) -> dict[str, dict]:
    """The stages in order on work/raw (writes under work/); their measurements."""
    py = [sys.executable, "-m", "stages.cli"]
    params = ["--params", str(work / "params.yaml")]
    raw, ann = work / "raw" / "fastmri", work / "raw" / "annotations.csv"
    s, u, b = work / "slices.zarr", work / "undersampled.zarr", work / "boxmaps.zarr"
    out: dict[str, dict] = {}
    need_stores = any(st in stages for st in ("train-unet", "evaluate"))
    if "prepare" in stages or need_stores:
        r = run_measured(py + ["prepare", "--raw-dir", str(raw), "--out", str(s)] + params, work, env)
        if "prepare" in stages:
            out["prepare"] = r
    if "undersample" in stages or need_stores:
        r = run_measured(py + ["undersample", "--raw-dir", str(raw), "--out", str(u)] + params, work, env)
        if "undersample" in stages:
            out["undersample"] = r
    if not need_stores:
        return out
    run_measured(py + ["boxmaps", "--slices", str(s), "--annotations", str(ann), "--out", str(b),
                       "--rejected", str(work / "rejected.csv")] + params, work, env)
    runs = {}
    for v in VARIANTS:
        cmd = py + ["train-unet", "--variant", v, "--seed", "0", "--slices", str(s), "--undersampled", str(u),
                    "--out", str(work / "models" / f"{v}_s0.pt"), "--live", str(work / "live" / v),
                    "--checkpoint-dir", str(work / "ckpt" / v)]
        if v != "baseline":
            cmd += ["--heatmaps", str(b)]
        runs[v] = run_measured(cmd + params, work, env)
    if "train-unet" in stages:
        worst = max(runs.values(), key=lambda r: r["peak_total_pss_mb"])
        out["train-unet"] = {**worst, "variants": runs}
    if "evaluate" in stages:
        rep = work / "reports"
        out["evaluate"] = run_measured(
            py + ["evaluate", "--slices", str(s), "--undersampled", str(u), "--heatmaps", str(b),
                  "--annotations", str(ann), "--models", str(work / "models"), "--out", str(work / "recon.zarr"),
                  "--metrics", str(rep / "metrics.json"), "--detail", str(rep / "evaluation.json"),
                  "--per-volume", str(rep / "per_volume.csv"), "--figures", str(rep / "figures"),
                  "--error-maps", str(rep / "error_maps")] + params, work, env)
    return out


def store_slices(work: Path) -> dict[str, int]:
    import zarr
    g = zarr.open_group(str(work / "slices.zarr"), mode="r")
    return {split: int(g[split]["volume"].shape[0]) for split in ("train", "val", "test")}


def stage_slices(stage: str, per_split: dict[str, int]) -> int:
    """Slices the stage goes through (evaluate: the test split; the others: every split)."""
    if stage == "evaluate":
        return per_split["test"]
    if stage == "train-unet":
        return per_split["train"] + per_split["val"]
    return sum(per_split.values())


def summarize(stage: str, small: dict, large: dict, n_small: int, n_large: int, crop: int,
              split_slices_small: int) -> dict:
    res = {"N": small, "4N": large, "slices": {"N": n_small, "4N": n_large}}
    for key in ("peak_rss_mb", "peak_total_pss_mb"):
        res[f"ratio_{key}"] = round(large[key] / small[key], 3)
    growth = (large["peak_total_pss_mb"] - small["peak_total_pss_mb"]) * 2**20 / max(1, n_large - n_small)
    res["per_slice_bytes"] = round(growth)
    shard = shard_slices(crop * crop * 4)
    if split_slices_small < shard:
        res["projection"] = (f"none: at N a split holds {split_slices_small} slices, less than one zarr shard "
                             f"({shard} slices of {crop}^2), so 4N - N includes the filling of shard-sized "
                             f"buffers, which stop growing at one shard")
        return res
    scale = (320 / crop) ** 2
    fastmri = FASTMRI_STAGE_SLICES[stage]
    res["projected_fastmri_knee_320_total_pss_gb"] = round(
        (small["peak_total_pss_mb"] * 2**20 + max(0.0, growth) * scale * (fastmri - n_small)) / 2**30, 2)
    res["projection"] = (f"projected: peak(N) + max(0, per_slice_bytes) x {scale:g} (pixels, 320^2 / crop^2) x "
                         f"({fastmri} fastMRI knee slices - {n_small}); peak(N) measured at crop {crop}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer volumes, slices and coils (a smoke test)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--datasets", default=None,
                    help="comma-separated subset of the mode's datasets (full: singlecoil, multicoil, "
                         "multicoil_2coils; quick: singlecoil, multicoil); default all")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/stage_memory.json")
    ap.add_argument("--keep", type=Path, default=None, help="work under this directory and keep it")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if bad := [s for s in stages if s not in STAGES]:
        ap.error(f"unknown stage(s): {', '.join(bad)}")
    config = CONFIGS["quick" if args.quick else "full"]
    env = dict(os.environ, ROIRECON_PROGRESS="0", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = {"benchmark": "stage_memory", "python": platform.python_version(), "cores": os.cpu_count(),
              "mode": "quick" if args.quick else "full", "stages": stages, "goal": "ratio <= 1.2 (4N over N)",
              "fastmri_knee_slices": FASTMRI_KNEE_SLICES, "results": {}}
    if args.out.exists():      # keep what an earlier run measured for other stages or challenges
        try:
            old = json.loads(args.out.read_text())
            if old.get("mode") == result["mode"]:
                result["results"] = old.get("results", {})
        except (ValueError, OSError):
            pass
    base = args.keep or Path(tempfile.mkdtemp(prefix="stage_memory-"))
    try:
        names = args.datasets.split(",") if args.datasets else list(config)
        if bad := [n for n in names if n not in config]:
            ap.error(f"unknown dataset(s) for this mode: {', '.join(bad)}")
        for name in names:
            challenge, coils, size, slices, n = config[name]
            measured: dict[str, dict] = {}
            counts: dict[str, dict[str, int]] = {}
            for label, per_split in (("N", n), ("4N", 4 * n)):
                work = base / f"{name}_{label}"
                shutil.rmtree(work, ignore_errors=True)
                make_dataset(work / "raw", challenge, coils, size, slices, per_split)
                write_params(work / "params.yaml", challenge, size)
                print(f"{name} {label}: {3 * per_split} volumes x {slices} slices, {coils} coil(s), {size}^2",
                      file=sys.stderr)
                measured[label] = run_stages(work, stages, env)
                counts[label] = store_slices(work)
                for st, r in measured[label].items():
                    print(f"  {st}: {r['peak_rss_mb']} MB largest process, {r['peak_total_pss_mb']} MB total PSS, "
                          f"{r['seconds']} s", file=sys.stderr)
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
            entry = result["results"].setdefault(name, {})
            entry["dataset"] = {"challenge": challenge, "coils": coils, "kspace": list(_kspace_shape(size)),
                                "crop": size, "slices_per_volume": slices,
                                "volumes_per_split": {"N": n, "4N": 4 * n}}
            for st in stages:
                entry[st] = summarize(st, measured["N"][st], measured["4N"][st],
                                      stage_slices(st, counts["N"]), stage_slices(st, counts["4N"]), size,
                                      min(counts["N"].values()))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


def _kspace_shape(size: int) -> tuple[int, int]:
    from pipeline.synthetic.acquisition import encoding_for
    return tuple(encoding_for(size).grid)


if __name__ == "__main__":
    main()
