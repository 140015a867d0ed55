"""Report files: strict JSON as DVC reads metrics (NaN and inf as null), written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.store import atomic_path


def clean(value: Any, digits: Optional[int] = None) -> Any:
    """JSON-able copy: numpy scalars as Python numbers, non-finite floats as None, floats rounded
    to `digits` significant digits when given (a p-value of 3e-9 stays 3e-9); dicts, lists and
    tuples recursively."""
    if isinstance(value, dict):
        return {str(k): clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}") if digits is not None else x
    return value


def write_json(path: Path | str, payload: dict, digits: Optional[int] = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(payload, digits), indent=2, allow_nan=False) + "\n")
