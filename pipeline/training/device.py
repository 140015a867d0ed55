"""Device choice, mixed precision and seeding shared by every training loop."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from pipeline.errors import InputError


def select_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else CPU. Under torchrun, the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device: 'cuda' requested but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"device: expected auto, cpu or cuda, got {name!r}")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU (fp32 keeps CPU runs deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, numpy and torch (CPU and every CUDA device).

    CPU runs are always repeatable (deterministic kernels). `deterministic` makes CUDA runs repeatable,
    at some speed: cuBLAS gets a fixed workspace (`CUBLAS_WORKSPACE_CONFIG`, read when cuBLAS
    starts, so set before the first matmul), non-deterministic kernels raise, cuDNN autotuning is off.
    Without it, cuDNN picks the fastest kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    else:  # CPU: deterministic kernels where torch has a choice, as CPU runs always were
        torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
