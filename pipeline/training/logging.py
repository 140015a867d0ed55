"""Per-epoch metric logging shared by the training loops: dvclive, written atomically.

`live_logger(dir)` yields `log(metrics)`; each call is one step (epoch). dvclive writes
`<dir>/metrics.json` and `<dir>/plots/metrics/<name>.tsv` (x = step), which `dvc plots show`
draws; it is told not to touch dvc.yaml nor to create DVC experiments (the stage is run by
`dvc repro` / `dvc exp run`, which record everything). The directory appears only when the
training finishes; a failed run leaves nothing.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

from pipeline.store import atomic_path

LogFn = Callable[[Mapping[str, float]], None]


@contextlib.contextmanager
def live_logger(out_dir: Optional[Path | str]) -> Iterator[LogFn]:
    if out_dir is None:
        yield lambda metrics: None
        return
    from dvclive import Live

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
