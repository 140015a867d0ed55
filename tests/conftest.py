"""Shared fixtures: tiny synthetic fastMRI-format datasets, written once per session."""
from __future__ import annotations

import os
import random
from itertools import groupby
from pathlib import Path

import pytest

os.environ.setdefault("ROIRECON_PROGRESS", "0")
# the stages' tiny tensors: one intra-op thread (more only add synchronisation), whatever the load
# (pipeline/threads.py; its own tests inject what they need)
os.environ.setdefault("ROIRECON_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """ROIRECON_TEST_ORDER=reverse, or shuffle[:SEED]: run the test files, and the tests within each
    file, in reverse or shuffled order (files stay together, so each module's fixtures are built
    once), to check that no test depends on another having run first."""
    order = os.environ.get("ROIRECON_TEST_ORDER", "")
    if not order:
        return
    modules = [list(group) for _, group in groupby(items, key=lambda item: item.path)]
    if order == "reverse":
        modules = [m[::-1] for m in modules[::-1]]
    elif order.split(":")[0] == "shuffle":
        rng = random.Random(int(order.split(":")[1]) if ":" in order else 0)
        rng.shuffle(modules)
        for m in modules:
            rng.shuffle(m)
    else:
        raise pytest.UsageError(f"ROIRECON_TEST_ORDER: expected reverse or shuffle[:SEED], got {order!r}")
    items[:] = [item for m in modules for item in m]


def _write(root: Path, **spec_kw) -> Path:
    from pipeline.synthetic.dataset import SyntheticSpec, write_fastmri
    kw = dict(volumes={"train": 2, "val": 1, "test": 1}, slices=3, recon_size=32, coils=1,
              lesion_rate=0.5, exams={"train": 4, "valid": 2}, exam_slices=3)
    kw.update(spec_kw)
    write_fastmri(root, SyntheticSpec(**kw), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_fastmri(tmp_path_factory) -> Path:
    """Single-coil fastMRI-format files at recon size 32: {train,val,test}/file*.h5."""
    return _write(tmp_path_factory.mktemp("tiny_single"))


@pytest.fixture(scope="session")
def tiny_fastmri_multicoil(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("tiny_multi"), coils=4)


@pytest.fixture(scope="session")
def full_size_fastmri(tmp_path_factory) -> Path:
    """fastMRI-sized single- and multi-coil files (640x368 k-space, 320 recon), two slices each."""
    root = tmp_path_factory.mktemp("full_size")
    small = dict(volumes={"train": 1, "val": 1, "test": 1}, slices=2, recon_size=320)
    _write(root / "singlecoil", **small)
    _write(root / "multicoil", coils=3, **small)
    return root
