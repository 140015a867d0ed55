"""data.test_from_val: a test split carved out of val (fastMRI's own test files have no targets), by patient,
deterministic (SHA-256, not Python's salted hash), disjoint, the right share, the same for every stage."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from pipeline.errors import InputError
from pipeline.io.fastmri import carve_val, list_split
from stages.settings import load_params
from tests.helpers import REPO, run_cli, write_params


def _h5(path: Path, patient_id: str | None) -> Path:
    """A file with only the attrs the carve reads (the carve never opens the datasets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if patient_id is not None:
            f.attrs["patient_id"] = patient_id
    return path


def _raw(root: Path, n_val: int, patients: list[str] | None = None) -> Path:
    _h5(root / "train" / "file0000001.h5", "p-train")
    for i in range(n_val):
        _h5(root / "val" / f"file{1000 + i:07d}.h5", patients[i] if patients else f"p{i:03d}")
    return root


def _names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _ids(raw: Path, names: list[str]) -> set[str]:
    out = set()
    for n in names:
        with h5py.File(raw / "val" / n, "r") as f:
            out.add(str(f.attrs["patient_id"]))
    return out


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 0.75, 0.9])
def test_carve_is_disjoint_covers_val_and_has_the_share(tmp_path, fraction):
    raw = _raw(tmp_path, 23)
    every = _names(list_split(raw, "val"))
    val = _names(list_split(raw, "val", test_from_val=fraction))
    test = _names(list_split(raw, "test", test_from_val=fraction))
    assert val == sorted(val) and test == sorted(test)
    assert not set(val) & set(test)
    assert sorted(val + test) == every
    assert abs(len(test) - fraction * len(every)) <= 1 and 1 <= len(test) <= len(every) - 1
    assert _names(list_split(raw, "train", test_from_val=fraction)) == ["file0000001.h5"]


def test_carve_is_deterministic_across_calls_directories_and_hash_seeds(tmp_path):
    a, b = _raw(tmp_path / "a", 17), _raw(tmp_path / "b", 17)
    test = _names(list_split(a, "test", test_from_val=0.3))
    assert _names(list_split(a, "test", test_from_val=0.3)) == test
    assert _names(list_split(b, "test", test_from_val=0.3)) == test       # by patient id, not by path
    code = ("import sys; from pipeline.io.fastmri import list_split; "
            "print(','.join(p.name for p in list_split(sys.argv[1], 'test', test_from_val=0.3)))")
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code, str(a)], env=env, capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
        assert out.split(",") == test
    # the patient ids, not the file names, decide: other names for the same patients carve the same patients
    c = tmp_path / "c"
    _h5(c / "train" / "file0000001.h5", "p-train")
    for i in range(17):
        _h5(c / "val" / f"file{5000 - 7 * i:07d}.h5", f"p{i:03d}")
    assert _ids(c, _names(list_split(c, "test", test_from_val=0.3))) == _ids(a, test)


def test_a_patient_never_straddles_val_and_test(tmp_path):
    patients = [f"p{i // 3}" for i in range(12)] + ["", None, None]       # 4 patients of 3 files, 3 without id
    raw = _raw(tmp_path, len(patients), patients)
    pid = {f"file{1000 + i:07d}.h5": p for i, p in enumerate(patients)}
    for fraction in (0.2, 0.4, 0.6):
        val = _names(list_split(raw, "val", test_from_val=fraction))
        test = _names(list_split(raw, "test", test_from_val=fraction))
        assert sorted(val + test) == sorted(pid) and not set(val) & set(test)
        ids = lambda names: {pid[n] for n in names if pid[n]}               # noqa: E731
        assert not ids(val) & ids(test)
        target = math.floor(fraction * len(pid) + 0.5)
        assert target - 3 < len(test) <= target                             # short by less than one patient


def test_carve_needs_two_patients(tmp_path):
    raw = _raw(tmp_path, 3, ["same", "same", "same"])
    with pytest.raises(InputError, match="^test_from_val: cannot carve a test split out of val's 3 file"):
        list_split(raw, "test", test_from_val=0.5)
    one = [_h5(tmp_path / "one" / "file0000001.h5", "x")]
    with pytest.raises(InputError, match="keep both non-empty"):
        carve_val(one, 0.5)


def test_test_dir_must_be_absent_or_empty_with_a_carve(tmp_path):
    raw = _raw(tmp_path, 6)
    (raw / "test").mkdir()
    assert len(list_split(raw, "test", test_from_val=0.5)) == 3                # an empty test dir is fine
    _h5(raw / "test" / "file0009999.h5", "p-test")
    for split in ("val", "test"):
        with pytest.raises(InputError, match=r"^test_from_val: 0.5 carves the test split out of val, but \S*test holds \.h5 files"):
            list_split(raw, split, test_from_val=0.5)
    assert _names(list_split(raw, "test")) == ["file0009999.h5"]            # 0: the test dir as it is
    with pytest.raises(InputError, match="must be 0 or a fraction"):
        list_split(raw, "test", test_from_val=1.0)


@pytest.mark.parametrize("value", [1, 1.5, -0.1, "0.2", True])
def test_param_out_of_range_names_the_key(tmp_path, value):
    with pytest.raises(InputError, match=r"data\.test_from_val"):
        load_params(write_params(tmp_path / "params.yaml", data={"test_from_val": value}))


def test_prepare_with_a_carve_and_a_test_dir_is_one_clear_line(tiny_fastmri, tmp_path):
    params = write_params(tmp_path / "params.yaml", data={"crop": 32, "workers": 1, "test_from_val": 0.5})
    r = run_cli("prepare", "--raw-dir", tiny_fastmri, "--out", tmp_path / "slices.zarr", "--params", params)
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.test_from_val: 0.5 carves the test split out of "
                                                  "val, but ") and "test holds .h5 files" in lines[0], r.output
    assert "Traceback" not in r.output and not (tmp_path / "slices.zarr").exists()
