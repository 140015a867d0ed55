"""Shared fixtures: tiny synthetic fastMRI-format datasets, written once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("ROIRECON_PROGRESS", "0")
REPO = Path(__file__).resolve().parents[1]


def _write(root: Path, **spec_kw) -> Path:
    from pipeline.synthetic import SyntheticSpec, write_fastmri
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
