"""The ROI weighting's frontier on val: for each setting of the weighting (loss.roi_* and friends),
the oracle's and the Grad-CAM variant's paired in-box and whole-image PSNR change against the
baseline of the same capacity and loss, with two-level 95% intervals (seeds and volumes,
`pipeline.stats.compare`), and the default chosen by the rule written in docs/tuning.md.

Each training is `roirecon train-unet` on a params file that differs from params.yaml only in the
setting's keys (the stage's own code path, one thread each, `--jobs` at once); finished checkpoints
are kept under --work and reused, so an interrupted sweep continues. Evaluation reads the val split
of the stores with `pipeline.evaluation.evaluate`. Writes JSON (--out) and the figure (--figure).

    python benchmarks/roi_frontier.py --jobs 2                  # every setting (about an hour on 2 cores)
    python benchmarks/roi_frontier.py --only default,lambda-8   # a few
    python benchmarks/roi_frontier.py --report-only             # JSON and figure from what is trained
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.threads import openmp_environment, share_cpus  # noqa: E402

openmp_environment()   # before torch is imported, as the roirecon entry point does

from pipeline.evaluation.frontier import Setting, choose_default, frontier_rows  # noqa: E402

VARIANTS = ("baseline", "weighted", "oracle")

# In priority order (an interrupted sweep has the most telling settings first). Keys are params.yaml
# paths; the default is params.yaml as committed.
SETTINGS = (
    Setting("default", {}),
    Setting("lambda-8", {"loss.roi_weight": 8.0}),
    Setting("lambda-16", {"loss.roi_weight": 16.0}),
    Setting("lambda-2", {"loss.roi_weight": 2.0}),
    Setting("upweight", {"loss.roi_norm": "none"}),
    Setting("background-0.25", {"loss.background_weight": 0.25}),
    Setting("margin-4", {"loss.roi_margin": 4}),
    Setting("soft-2", {"loss.roi_margin": 2, "loss.roi_soft": 2.0}),
    Setting("lambda-16-margin-4", {"loss.roi_weight": 16.0, "loss.roi_margin": 4}),
    Setting("l1", {"loss.kind": "l1"}),
    Setting("ssim-0.5", {"loss.ssim_weight": 0.5}),
    Setting("chans-16", {"unet.chans": 16}),
    Setting("epochs-10", {"unet.epochs": 10}),
)


@dataclass
class Job:
    setting: str
    variant: str
    seed: int
    params: Path
    out: Path
    heatmaps: Path | None
    log: Path


@dataclass
class Sweep:
    data: Path
    work: Path
    base: dict
    jobs: list[Job] = field(default_factory=list)

    def maps(self, variant: str) -> Path | None:
        return {"baseline": None, "weighted": self.data / "heatmaps.zarr", "oracle": self.data / "boxmaps.zarr"}[variant]

    def data_key(self, variant: str) -> str:
        """Content digest of the stores the variant trains on (recorded digests, no data read): a
        checkpoint trained on other data (new maps, a new split) is never reused."""
        from pipeline.stores.unet_data import SliceStores
        return SliceStores(self.data / "slices.zarr", self.data / "undersampled.zarr", self.maps(variant),
                           "train").fingerprint()

    def params_for(self, setting: Setting, variant: str) -> tuple[Path, str]:
        """The params file of one (setting, variant) and its checkpoints' key (the params and the
        data): the baseline ignores the ROI keys, so settings that differ only there share its
        checkpoints."""
        p = json.loads(json.dumps(self.base))
        for key, value in setting.overrides.items():
            section, name = key.split(".")
            if variant != "baseline" or section != "loss" or name in ("kind", "ssim_weight"):
                p[section][name] = value
        text = yaml.safe_dump(p, sort_keys=True)
        path = self.work / "params" / f"{hashlib.blake2b(text.encode(), digest_size=6).hexdigest()}.yaml"
        key = hashlib.blake2b((text + self.data_key(variant)).encode(), digest_size=6).hexdigest()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
        return path, key

    def checkpoints(self, setting: Setting, variant: str, seeds: list[int]) -> list[Path]:
        _, key = self.params_for(setting, variant)
        return [self.work / "models" / key / f"{variant}_s{seed}.pt" for seed in seeds]

    def plan(self, settings: list[Setting], seeds: list[int]) -> dict[str, dict[str, list[Path]]]:
        """{setting: {variant: [checkpoint per seed]}}; a job for each checkpoint not trained yet."""
        plan = {s.name: {v: self.checkpoints(s, v, seeds) for v in VARIANTS} for s in settings}
        queued: set[Path] = set()
        for setting in settings:
            for variant in VARIANTS:
                params, _ = self.params_for(setting, variant)
                for seed, out in zip(seeds, plan[setting.name][variant]):
                    if not out.exists() and out not in queued:
                        queued.add(out)
                        self.jobs.append(Job(setting.name, variant, seed, params, out, self.maps(variant),
                                             out.with_suffix(".log")))
        return plan


def train(job: Job, data: Path) -> float:
    """One `roirecon train-unet` run, one CPU thread; seconds."""
    job.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "stages.cli", "train-unet", "--variant", job.variant, "--seed", str(job.seed),
           "--slices", str(data / "slices.zarr"), "--undersampled", str(data / "undersampled.zarr"),
           "--out", str(job.out), "--checkpoint-dir", str(job.out.with_suffix(".ckpt")), "--params", str(job.params)]
    if job.heatmaps is not None:
        cmd += ["--heatmaps", str(job.heatmaps)]
    env = {**os.environ, "ROIRECON_THREADS": "1", "ROIRECON_PROGRESS": "0"}
    t = time.perf_counter()
    with open(job.log, "w") as log:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"roi_frontier: {job.setting} {job.variant} seed {job.seed} failed; see {job.log}")
    return time.perf_counter() - t


def run_jobs(jobs: list[Job], data: Path, n: int) -> dict[str, float]:
    """Train every job, `n` at once; {checkpoint path: seconds}."""
    seconds: dict[str, float] = {}
    done = 0
    t0 = time.perf_counter()

    def one(job: Job) -> None:
        nonlocal done
        seconds[str(job.out)] = train(job, data)
        done += 1
        print(f"[{time.perf_counter() - t0:6.0f} s] {done}/{len(jobs)} {job.setting} {job.variant} s{job.seed}: "
              f"{seconds[str(job.out)]:.0f} s", flush=True)

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, jobs))
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--work", type=Path, default=REPO / ".roirecon/frontier")
    ap.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (one CPU thread each)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; report the settings fully trained")
    ap.add_argument("--out", type=Path, default=REPO / "reports/bench/roi_frontier.json")
    ap.add_argument("--figure", type=Path, default=REPO / "reports/bench/roi_frontier.png")
    args = ap.parse_args()
    base = yaml.safe_load(args.params.read_text())
    names = [s for s in args.only.split(",") if s]
    unknown = set(names) - {s.name for s in SETTINGS}
    if unknown:
        raise SystemExit(f"roi_frontier: --only: unknown setting(s) {', '.join(sorted(unknown))}")
    settings = [s for s in SETTINGS if not names or s.name in names]
    seeds = [int(s) for s in base["unet"]["seeds"]]
    sweep = Sweep(args.data.resolve(), args.work.resolve(), base)
    plan = sweep.plan(settings, seeds)
    if not args.report_only and sweep.jobs:
        print(f"roi_frontier: {len(sweep.jobs)} trainings for {len(settings)} settings, {args.jobs} at once", flush=True)
        secs = run_jobs(sweep.jobs, sweep.data, args.jobs)
        times = args.work / "seconds.json"
        old = json.loads(times.read_text()) if times.exists() else {}
        times.write_text(json.dumps({**old, **secs}, indent=1))
    trained = {name: p for name, p in plan.items() if all(x.exists() for v in p.values() for x in v)}
    if not trained:
        raise SystemExit("roi_frontier: no setting is fully trained yet")
    from pipeline.evaluation.frontier import WHOLE_FLOOR_DB, evaluate_settings, frontier_table
    from pipeline.figures.frontier import write_frontier
    seconds = json.loads((args.work / "seconds.json").read_text()) if (args.work / "seconds.json").exists() else {}
    with share_cpus(base["evaluate"]["device"]):
        results = evaluate_settings(trained, sweep.data, base, args.work / "rows", seconds)
    rows = frontier_rows(results, [s for s in settings if s.name in trained])
    chosen = choose_default(rows)
    report = {"what": "oracle and Grad-CAM (weighted) minus the baseline of the same capacity and loss, val split, "
                      "two-level 95% intervals over seeds and volumes (pipeline.stats.compare)",
              "rule": "docs/tuning.md: largest oracle in-box gain (val) among settings whose whole-image PSNR "
                      "interval reaches -0.05 dB or better; within 0.02 dB, the cheaper (training seconds)",
              "seeds": seeds, "settings": rows, "chosen": chosen}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    write_frontier(frontier_table(rows, chosen), WHOLE_FLOOR_DB, args.figure)
    print(f"roi_frontier: {len(rows)} settings; chosen by the rule: {chosen}; wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
