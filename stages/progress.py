"""Progress of long stages on stderr: a tqdm bar on a terminal, plain lines in a log.

- stderr is a terminal (or ROIRECON_PROGRESS=1): a tqdm bar, redrawn in place.
- stderr is not a terminal (`dvc repro 2>&1 | tee log`, CI, `dvc exp run --queue`): one plain line
  every INTERVAL_S seconds, e.g. `train-unet baseline seed 0 2/5: 34/88 steps (39%), 12 s, ~19 s left`,
  and a last line when such a task ends; tasks shorter than INTERVAL_S print nothing. tqdm would
  write carriage returns there, which a log shows as one endless line.
- ROIRECON_PROGRESS=0: nothing (the tests set it).

The training stages' per-epoch curves go to dvclive through `live_logger`, the LogFn (see
pipeline/training/logging.py) that the stages hand to the training loops.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, TextIO

INTERVAL_S = 5.0  # seconds between two plain progress lines


def mode() -> str:
    """'off', 'bar' (tqdm) or 'lines' (plain lines), from ROIRECON_PROGRESS and whether stderr is a tty."""
    value = os.environ.get("ROIRECON_PROGRESS")
    if value == "0":
        return "off"
    if value == "1":
        return "bar"
    return "bar" if _isatty(sys.stderr) else "lines"


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "slice",
        interval: Optional[float] = None) -> Iterator[Callable[[int], None]]:
    """Yield `update(n)`, to be called as `n` more of `total` units are done."""
    how = mode()
    if how == "bar":
        from tqdm import tqdm  # imported here: `roirecon --help` does not need it

        with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as t:
            yield t.update
    elif how == "lines":
        lines = _Lines(total, desc, unit, sys.stderr, INTERVAL_S if interval is None else interval)
        try:
            yield lines.update
        finally:
            lines.close()
    else:
        yield lambda n=1: None


class _Lines:
    """A progress report as plain lines, at most one per `interval` seconds (no carriage returns)."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO, interval: float) -> None:
        self.total, self.desc, self.file, self.interval = total, desc, file, interval
        self.units = unit if total == 1 else f"{unit}s"
        self.n = 0
        self.printed = False
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._print(now)

    def close(self) -> None:
        if self.printed:  # a task long enough to report also reports its end
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        elapsed = now - self.start
        text = f"{self.desc}: {self.n}/{self.total} {self.units}"
        if self.total > 0:
            text += f" ({100 * self.n // self.total}%)"
        text += f", {elapsed:.0f} s"
        if 0 < self.n < self.total:
            text += f", ~{elapsed * (self.total - self.n) / self.n:.0f} s left"
        try:
            print(text, file=self.file, flush=True)
        except (OSError, ValueError):  # stderr closed or gone (a closed pipe): progress is optional
            return
        self.printed = True


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


@contextlib.contextmanager
def live_logger(out_dir: Optional[Path | str]) -> Iterator[Callable[[Mapping[str, float]], None]]:
    """Yield `log(metrics)`, each call one step (epoch), written with dvclive under `out_dir`:
    `metrics.json` and `plots/metrics/<name>.tsv` (x = step), which `dvc plots show` draws. dvclive
    is told not to touch dvc.yaml nor to create DVC experiments (`dvc repro` / `dvc exp run` record
    everything). The directory appears only when the block succeeds; a failed run leaves nothing.
    `out_dir` None: the metrics are dropped."""
    if out_dir is None:
        yield lambda metrics: None
        return
    from dvclive import Live  # imported here: `roirecon --help` does not need it

    from pipeline.stores.zarr_store import atomic_path

    with atomic_path(out_dir) as tmp:
        live = Live(dir=str(tmp), dvcyaml=False, save_dvc_exp=False, report=None)

        def log(metrics: Mapping[str, float]) -> None:
            for name, value in metrics.items():
                live.log_metric(name, float(value))
            live.next_step()

        try:
            yield log
        finally:
            live.end()
