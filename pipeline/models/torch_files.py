"""What every network module shares: reading torch files (our checkpoints, a user's pretrained
weights) with one clear error, and counting a network's parameters."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import InputError, first_line


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of `model` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def read_torch_file(path: Path | str, *, missing: str, unreadable: str,
                    map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`; a missing file raises `"<path>: <missing>"`, one torch
    cannot read `"<path>: <unreadable> (<reason>)"`."""
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise InputError(f"{label}: {missing}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise InputError(f"{label}: {unreadable} ({first_line(exc)})") from None
        # torch's own message advises loading with weights_only=False, i.e. running whatever code
        # the file carries: never quote that for a file we refuse because we do not trust it.
        raise InputError(f"{label}: {unreadable} (it holds objects other than tensors and plain data"
                         f"{_offending_global(str(exc))}; refused, as loading them could run code "
                         f"from the file)") from None
    except Exception as exc:
        raise InputError(f"{label}: {unreadable} ({first_line(exc)})") from None


def _offending_global(message: str) -> str:
    """`, such as <module.Name>` from torch's weights-only refusal, or '' when it names none."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return f", such as {m.group(1)}" if m else ""


def read_model_file(path: Path | str, *, missing: str, unreadable: str, invalid: str,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A `{"state_dict": ..., "config": ...}` file as our save functions write; anything else
    raises `"<path>: <invalid> (expected keys ...)"`."""
    blob = read_torch_file(path, missing=missing, unreadable=unreadable, map_location=map_location)
    if not (isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict)
            and isinstance(blob.get("config"), dict)):
        raise InputError(f"{path}: {invalid} (expected keys 'state_dict' and 'config')")
    return blob
