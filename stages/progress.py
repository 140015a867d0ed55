"""Progress bars for stages (tqdm on stderr; quiet when stderr is not a terminal)."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from tqdm import tqdm


def enabled() -> bool:
    if os.environ.get("ROIRECON_PROGRESS") in ("0", "1"):
        return os.environ["ROIRECON_PROGRESS"] == "1"
    return sys.stderr.isatty()


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "slice") -> Iterator[Callable[[int], None]]:
    with tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), dynamic_ncols=True) as t:
        yield t.update
