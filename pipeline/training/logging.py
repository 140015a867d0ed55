"""The callback through which the training loops report their per-epoch metrics.

A loop calls `log(metrics)` once per epoch with that epoch's numbers (name -> value); where they
go is the caller's choice (the stages write them as training curves, a notebook may collect them
in a list). `no_log` drops them.
"""
from __future__ import annotations

from typing import Mapping, Protocol


class LogFn(Protocol):
    def __call__(self, metrics: Mapping[str, float]) -> None: ...


def no_log(metrics: Mapping[str, float]) -> None:
    """A LogFn that keeps nothing."""
