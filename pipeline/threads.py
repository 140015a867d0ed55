"""Intra-op threads of the torch stages: how many, and how they wait. The one home of that choice.

A torch stage (train-mrnet, gradcam, train-unet, evaluate, reconstruct) runs its heavy part inside
`share_cpus(device)`. Its thread count is `choose_threads`: the CPUs the process may use (its
affinity, capped by a cgroup CPU quota) less what other processes use of them now, at least one:
- `cpus`: `os.sched_getaffinity` (taskset, cpusets, a container's CPU list);
- `quota`: the cgroup's CPU bandwidth (`cpu.max`, or v1 `cpu.cfs_quota_us` / `cfs_period_us`), in
  CPUs, floored: a container limited to 2.5 CPUs gets 2 threads, not one per host core;
- `others`: the CPU time the other processes used on those CPUs (from `/proc/stat`, less this
  process's own time), per second of wall time: a busy single-threaded job is about 1.0.
The decision is made when the heavy part starts (over the window since the command started: its
imports), then again every `RECHECK_S` seconds from a global forward pre-hook on every module, so
a job that starts or ends beside a long training changes its thread count within seconds (two
windows in a row must agree before it changes). It is made for CPU compute only: with the model
on a GPU the count is set once and no hook is installed (torch.compile traces module hooks).

Why: torch's OpenMP pool runs one thread per core and its threads spin at every barrier; beside
one busy process a 2-thread pool on 2 cores waits for a preempted thread at every op (one epoch of
train-unet: 11.3x its alone time before, 1.39x now; reports/bench/contention.json). With as many
threads as there are free CPUs each thread keeps its core. The price: a training's last bits
depend on the thread count (reductions split over threads), so CPU reruns are bit-identical only
at a fixed count (ROIRECON_THREADS).

How they wait (`openmp_environment`, called by the `roirecon` entry point before torch is imported):
libgomp's default spins 300,000 rounds before it sleeps, which turns every preemption into lost
time; `GOMP_SPINCOUNT` = `SPIN_COUNT` keeps the spin long enough to cost nothing alone (1.02x,
within the run-to-run spread; 1,000 rounds: 1.24x) and short when a thread is preempted (the
seconds before a re-check). A fully passive wait (`OMP_WAIT_POLICY=PASSIVE`) is 1.40x slower
alone (a futex wake-up at every op of a small U-Net). Measurements: README, CPU threads.

The user's word wins: `ROIRECON_THREADS=N` (or the standard `OMP_NUM_THREADS=N`) fixes the count
and turns the re-checks off; a user's own `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` is kept.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, MutableMapping, Optional

THREADS_VARIABLE = "ROIRECON_THREADS"
REPORT_VARIABLE = "ROIRECON_THREADS_REPORT"   # benchmarks: where share_cpus notes its decisions
SPIN_COUNT = 10_000        # libgomp rounds of spinning before a waiting thread sleeps (default 300,000)
RECHECK_S = 2.0            # seconds between re-decisions while a stage runs
MIN_WINDOW_S = 0.25        # the first decision waits this long when the command started just now


# ---------------------------------------------------------------- the decision (pure)

def choose_threads(cpus: int, quota: Optional[float], others: float) -> int:
    """Intra-op threads for `cpus` usable CPUs, a CPU `quota` (None: none) and `others` CPUs' worth
    of work by other processes: the free CPUs, rounded to the nearest (a light background load of
    under half a CPU keeps every core), capped by the quota, at least 1."""
    cap = cpus if quota is None else max(1, min(cpus, math.floor(quota + 1e-9)))
    free = int(cpus - max(0.0, others) + 0.5)
    return max(1, min(cap, free))


def requested_threads(env: Mapping[str, str] = os.environ) -> Optional[int]:
    """The count the user fixed: ROIRECON_THREADS, else OMP_NUM_THREADS (its first value); None
    when neither is set. A value that is not a positive integer is an error naming the variable."""
    for name in (THREADS_VARIABLE, "OMP_NUM_THREADS"):
        text = env.get(name, "").strip()
        if not text:
            continue
        try:
            n = int(text.split(",")[0])
        except ValueError:
            n = 0
        if n < 1:
            from pipeline.errors import InputError
            raise InputError(f"{name}: expected a positive number of threads, got {text!r}")
        return n
    return None


# ---------------------------------------------------------------- what this machine says

def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cgroup_quota(root: Path | str = "/sys/fs/cgroup") -> Optional[float]:
    """The cgroup CPU bandwidth limit in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or
    None when there is none (or it cannot be read)."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for d in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        try:
            quota = int((d / "cpu.cfs_quota_us").read_text())
            period = int((d / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 or period <= 0 else quota / period
        except (OSError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class CpuSample:
    wall: float      # time.monotonic()
    busy: float      # CPU seconds all processes spent on the usable CPUs (None-free: 0 where unknown)
    own: float       # CPU seconds this process spent (all its threads)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_sample(cpus: Optional[list[int]] = None, stat: Path | str = "/proc/stat") -> Optional[CpuSample]:
    """Busy time of `cpus` (default: the usable ones) and this process's own CPU time, now; None
    where /proc/stat cannot be read (not Linux)."""
    want = {f"cpu{c}" for c in (usable_cpus() if cpus is None else cpus)}
    t = os.times()
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name in want:
            v = [int(x) for x in rest.split()[:8]]   # user nice system idle iowait irq softirq steal
            busy += sum(v) - v[3] - v[4]
    return CpuSample(time.monotonic(), busy / _TICK, t.user + t.system)


def others_between(a: CpuSample, b: CpuSample) -> float:
    """CPUs' worth of work by other processes between two samples."""
    wall = b.wall - a.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((b.busy - a.busy) - (b.own - a.own)) / wall)


# ---------------------------------------------------------------- before torch: how threads wait

_START: Optional[CpuSample] = None


def openmp_environment(env: MutableMapping[str, str] = os.environ) -> None:
    """Called by the `roirecon` entry point before torch is imported (libgomp reads its variables
    once, when it loads): a short spin before a waiting thread sleeps, unless the user chose a wait
    policy or spin count. Also notes the command's start, the first window `share_cpus` measures."""
    global _START
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    _START = read_sample()


# ---------------------------------------------------------------- while a stage runs

class ThreadShare:
    """Re-decides the thread count from the load of each window of `recheck_s` seconds; a new count
    is applied once two windows in a row ask for it. `sample` and `apply` are injectable (tests)."""

    def __init__(self, cpus: int, quota: Optional[float], threads: int, start: Optional[CpuSample],
                 sample: Callable[[], Optional[CpuSample]], apply: Callable[[int], None],
                 recheck_s: float = RECHECK_S):
        self.cpus, self.quota, self.threads = cpus, quota, threads
        self._sample, self._apply, self.recheck_s = sample, apply, recheck_s
        self._last = start
        self._pending: Optional[int] = None
        self.started = start.wall if start else time.monotonic()
        self._next = self.started + recheck_s
        self.changes: list[tuple[float, int, float]] = []    # (time, threads, others) of each change

    def tick(self) -> None:
        """Cheap unless a window has passed: then one read of /proc/stat."""
        if time.monotonic() >= self._next:
            self.recheck()

    def recheck(self) -> None:
        now = self._sample()
        if now is None or self._last is None:
            self._next = time.monotonic() + self.recheck_s
            return
        others = others_between(self._last, now)
        self._last, self._next = now, now.wall + self.recheck_s
        want = choose_threads(self.cpus, self.quota, others)
        if want == self.threads:
            self._pending = None
        elif want == self._pending:
            self.threads, self._pending = want, None
            self._apply(want)
            self.changes.append((now.wall, want, round(others, 2)))
        else:
            self._pending = want


def first_decision(cpus: list[int], quota: Optional[float], start: Optional[CpuSample],
                   sample: Callable[[], Optional[CpuSample]] = read_sample,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> tuple[int, float, Optional[CpuSample]]:
    """The count at the start of a stage from the window since `start` (the command's start; a
    window of at least MIN_WINDOW_S): (threads, others, the sample that ends the window)."""
    if start is None:
        start = sample()
    if start is not None and clock() - start.wall < MIN_WINDOW_S:
        sleep(MIN_WINDOW_S - (clock() - start.wall))
    now = sample()
    others = others_between(start, now) if start is not None and now is not None else 0.0
    return choose_threads(len(cpus), quota, others), others, now


@contextlib.contextmanager
def share_cpus(device: str = "auto") -> Iterator[Optional[ThreadShare]]:
    """Set torch's intra-op threads for the heavy part of a torch stage (see the module doc) and,
    for CPU compute (`device` cpu, or auto without CUDA), re-check them while it runs. The count in
    force before is restored at exit. Yields the ThreadShare (None when the count is fixed)."""
    import torch

    before = torch.get_num_threads()
    fixed = requested_threads()
    share, handle = None, None
    note: dict = {"pid": os.getpid(), "fixed": fixed}
    try:
        if fixed is not None:
            torch.set_num_threads(fixed)
        else:
            cpus, quota = usable_cpus(), cgroup_quota()
            threads, others, last = first_decision(cpus, quota, _START)
            note.update(cpus=len(cpus), quota=quota, threads=threads, others=round(others, 2))
            torch.set_num_threads(threads)
            cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
            if not cuda:
                share = ThreadShare(len(cpus), quota, threads, last, read_sample, torch.set_num_threads)
                handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda *_: share.tick())
        yield share
    finally:
        if handle is not None:
            handle.remove()
        torch.set_num_threads(before)
        _report(note, share)


def _report(note: dict, share: Optional[ThreadShare]) -> None:
    """With ROIRECON_THREADS_REPORT=FILE (benchmarks/contention.py), append one JSON line: the
    first decision and every change (seconds since the first decision, threads, others)."""
    path = os.environ.get(REPORT_VARIABLE)
    if not path:
        return
    import json
    if share is not None:
        t0 = share.started
        note["changes"] = [[round(t - t0, 1), n, o] for t, n, o in share.changes]
    with open(path, "a") as f:
        f.write(json.dumps(note) + "\n")
