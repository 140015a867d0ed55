"""Torch stages on a shared machine: alone, beside a busy process, two at once.

Each run is a stage command (`python -m stages.cli ...`) in a fresh subprocess on the pipeline's
stores, with a temporary params.yaml: the embedded defaults but `unet.epochs: 1` and
`unet.seeds: [0]`. Wall times include the command's start (imports), as `dvc repro` sees them.
- `alone`: one epoch of `train-unet --variant baseline`;
- `beside_busy`: the same, beside one busy single-threaded process (`while True: pass`, started
  half a second before); ratio to `alone` (goal <= 2.2);
- `two_at_once`: `train-unet` weighted and oracle started together, as `dvc queue start -j 2`
  runs two experiments; ratio of the time until both are done to the two run one after the other
  (goal <= 1.25);
- `two_evaluates`: two `evaluate`s at once (of those three U-Nets) against the two in sequence.
With `--reference-code DIR` (a checkout of earlier code) the alone run is also timed with that code,
and `alone_speed_vs_reference` is its time over ours (goal >= 0.95); alone runs alternate between
the codes when `--repeats` > 1, and the fastest of each is kept. The reference code's own
beside-busy and two-at-once ratios (`reference_ratios`, the "before") follow, with `--reference-all`.

Every ratio is measured within this one invocation. Each run's thread decisions (pipeline/threads.py:
the first count, the others' load it saw, every change) come from ROIRECON_THREADS_REPORT. The load
average and the CPU count are recorded before and after. Environment variables that fix threads or
the OpenMP wait (ROIRECON_THREADS, OMP_NUM_THREADS, OMP_WAIT_POLICY, GOMP_SPINCOUNT) are removed from
the runs' environment, so the defaults are measured. Writes reports/bench/contention.json.

    python benchmarks/contention.py                       # ~4 min on 2 cores
    python benchmarks/contention.py --reference-code ../roirecon-old --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.evaluation.reports import write_json  # noqa: E402
from pipeline.threads import REPORT_VARIABLE, THREADS_VARIABLE, cgroup_quota, usable_cpus  # noqa: E402

FIXING = (THREADS_VARIABLE, "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
BUSY = "while True: pass"
TIMEOUT_S = 300
GOALS = {"alone_speed_vs_reference": ">= 0.95", "beside_busy_vs_alone": "<= 2.2",
         "two_at_once_vs_sequential": "<= 1.25"}


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.params = write_params(args.params, work / "params.yaml")
        self.models = work / "models"
        self.threads_log = work / "threads.jsonl"
        self.n = 0

    def env(self, code: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in FIXING}
        env.update(PYTHONPATH=str(code), ROIRECON_PROGRESS="0", **{REPORT_VARIABLE: str(self.threads_log)})
        return env

    def train_cmd(self, variant: str, out_dir: Path) -> list[str]:
        a = self.args
        cmd = ["train-unet", "--variant", variant, "--seed", "0", "--slices", a.slices,
               "--undersampled", a.undersampled, "--out", out_dir / f"{variant}_s0.pt",
               "--checkpoint-dir", self.work / "ckpt" / f"{self.n}", "--params", self.params]
        if variant != "baseline":
            cmd += ["--heatmaps", a.boxmaps]
        self.n += 1
        return cmd

    def evaluate_cmd(self, tag: str) -> list[str]:
        a, d = self.args, self.work / f"eval_{tag}"
        return ["evaluate", "--slices", a.slices, "--undersampled", a.undersampled, "--heatmaps", a.boxmaps,
                "--annotations", a.annotations, "--models", self.models, "--out", d / "recon.zarr",
                "--metrics", d / "metrics.json", "--detail", d / "detail.json", "--per-volume", d / "pv.csv",
                "--figures", d / "figures", "--error-maps", d / "error_maps", "--params", self.params]

    def run(self, cmds: list[list], code: Path = REPO, busy: bool = False) -> dict:
        """Start every command at once (beside a busy process with `busy`); wall seconds until each
        is done and until all are, the load average before and after, the thread decisions."""
        self.threads_log.unlink(missing_ok=True)
        load0 = os.getloadavg()
        hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
        try:
            if hog:
                time.sleep(0.5)
            t0 = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-m", "stages.cli", *map(str, c)], cwd=code, env=self.env(code),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
            done = []
            for p, c in zip(procs, cmds):
                _, err = p.communicate(timeout=TIMEOUT_S)
                done.append(time.perf_counter() - t0)
                if p.returncode:
                    raise SystemExit(f"{c[0]} failed ({p.returncode}):\n{err[-3000:]}")
        finally:
            if hog:
                hog.kill()
                hog.wait()
        threads = [json.loads(line) for line in self.threads_log.read_text().splitlines()] \
            if self.threads_log.exists() else []
        return {"wall_s": round(max(done), 2), "each_s": [round(t, 2) for t in done],
                "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
                "threads": threads}


def write_params(src: Path, dst: Path) -> Path:
    p = yaml.safe_load(Path(src).read_text())
    p["unet"].update(epochs=1, seeds=[0])
    dst.write_text(yaml.safe_dump(p, sort_keys=False))
    return dst


def _commit(code: Path) -> str:
    """The reference checkout's commit (its path where it is no git checkout)."""
    r = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or str(code)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", default=str(REPO / "data/slices.zarr"))
    ap.add_argument("--undersampled", default=str(REPO / "data/undersampled.zarr"))
    ap.add_argument("--boxmaps", default=str(REPO / "data/boxmaps.zarr"),
                    help="ROI maps for the weighted/oracle trainings and evaluate's figures (the heatmaps layout)")
    ap.add_argument("--annotations", default=str(REPO / "data/synthetic/annotations.csv"))
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--reference-code", type=Path, help="a checkout of earlier code: its alone time is the reference")
    ap.add_argument("--reference-all", action="store_true",
                    help="also the reference code's beside-busy and two-at-once runs (~3 min more on 2 cores)")
    ap.add_argument("--repeats", type=int, default=1, help="alone runs per code (the fastest is kept)")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/contention.json")
    args = ap.parse_args(argv)
    for name in ("slices", "undersampled", "boxmaps", "annotations"):
        setattr(args, name, str(Path(getattr(args, name)).resolve()))
        if not Path(getattr(args, name)).exists():
            raise SystemExit(f"--{name} {getattr(args, name)}: not found (dvc repro boxmaps builds the stores)")

    started = time.time()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        work = Path(tmp)
        b = Bench(args, work)
        runs: dict = {"alone": []}
        ref = args.reference_code.resolve() if args.reference_code else None
        if ref:
            runs["alone_reference_code"] = []
        for _ in range(args.repeats):
            if ref:
                runs["alone_reference_code"].append(b.run([b.train_cmd("baseline", work / "scratch")], code=ref))
            runs["alone"].append(b.run([b.train_cmd("baseline", b.models)]))
        runs["beside_busy"] = b.run([b.train_cmd("baseline", work / "scratch")], busy=True)
        runs["one_after_the_other"] = [b.run([b.train_cmd(v, b.models)]) for v in ("weighted", "oracle")]
        runs["two_at_once"] = b.run([b.train_cmd(v, work / "pair") for v in ("weighted", "oracle")])
        runs["evaluate_one_after_the_other"] = [b.run([b.evaluate_cmd(t)]) for t in ("a", "b")]
        runs["two_evaluates_at_once"] = b.run([b.evaluate_cmd(t) for t in ("c", "d")])
        if ref and args.reference_all:
            runs["reference_beside_busy"] = b.run([b.train_cmd("baseline", work / "scratch")], code=ref, busy=True)
            runs["reference_one_after_the_other"] = [b.run([b.train_cmd(v, work / "scratch")], code=ref)
                                                     for v in ("weighted", "oracle")]
            runs["reference_two_at_once"] = b.run([b.train_cmd(v, work / "pair") for v in ("weighted", "oracle")],
                                                  code=ref)

    alone = min(r["wall_s"] for r in runs["alone"])
    seq = sum(r["wall_s"] for r in runs["one_after_the_other"])
    eval_seq = sum(r["wall_s"] for r in runs["evaluate_one_after_the_other"])
    ratios = {"beside_busy_vs_alone": ratio(runs["beside_busy"]["wall_s"], alone),
              "two_at_once_vs_sequential": ratio(runs["two_at_once"]["wall_s"], seq),
              "two_evaluates_at_once_vs_sequential": ratio(runs["two_evaluates_at_once"]["wall_s"], eval_seq)}
    if ref:
        ratios = {"alone_speed_vs_reference": ratio(min(r["wall_s"] for r in runs["alone_reference_code"]), alone),
                  **ratios}
    reference_ratios = None
    if "reference_beside_busy" in runs:
        ref_alone = min(r["wall_s"] for r in runs["alone_reference_code"])
        reference_ratios = {
            "beside_busy_vs_alone": ratio(runs["reference_beside_busy"]["wall_s"], ref_alone),
            "two_at_once_vs_sequential": ratio(runs["reference_two_at_once"]["wall_s"],
                                               sum(r["wall_s"] for r in runs["reference_one_after_the_other"]))}
    report = {
        "benchmark": "contention",
        "stage": "train-unet, one epoch of the embedded defaults (unet.epochs 1, unet.seeds [0]); evaluate of "
                 "those three U-Nets",
        "ratios": ratios,
        "goals": GOALS,
        "seconds": {"alone": alone, "beside_busy": runs["beside_busy"]["wall_s"], "one_after_the_other": seq,
                    "two_at_once": runs["two_at_once"]["wall_s"], "evaluate_one_after_the_other": eval_seq,
                    "two_evaluates_at_once": runs["two_evaluates_at_once"]["wall_s"],
                    **({"alone_reference_code": min(r["wall_s"] for r in runs["alone_reference_code"])} if ref else {})},
        "machine": {"nproc": os.cpu_count(), "usable_cpus": len(usable_cpus()), "cgroup_quota": cgroup_quota(),
                    "load_before": [round(x, 2) for x in load_start],
                    "load_after": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "duration_s": round(time.time() - started, 1)},
        "reference_code": _commit(ref) if ref else None,
        "reference_ratios": reference_ratios,
        "runs": runs,
    }
    write_json(args.out, report)
    print(json.dumps({"ratios": ratios, "reference_ratios": reference_ratios, "seconds": report["seconds"], "machine": report["machine"]}, indent=1))
    return report


if __name__ == "__main__":
    main()
