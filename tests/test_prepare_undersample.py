"""prepare / undersample through the CLI: store layouts, order, attrs, sharding, bad input."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from pipeline.io.annotations import recon_frames
from pipeline.stores.zarr_store import open_store
from tests.helpers import copy_tree, run_cli, write_params


def _run(stage: str, raw: Path, out: Path, params: Path):
    return run_cli(stage, "--raw-dir", raw, "--out", out, "--params", params)


@pytest.fixture(scope="module")
def built(tiny_fastmri, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    params = write_params(tmp / "params.yaml", data={"crop": 24, "workers": 2})
    for stage, name in (("prepare", "slices.zarr"), ("undersample", "undersampled.zarr")):
        r = _run(stage, tiny_fastmri, tmp / name, params)
        assert r.exit_code == 0, r.output
    return tmp


def test_slices_store_layout_and_values(built, tiny_fastmri):
    s = open_store(built / "slices.zarr", kind="slices")
    assert s.attrs["crop"] == 24 and s.attrs["challenge"] == "singlecoil"
    for split in ("train", "val", "test"):
        files = sorted((tiny_fastmri / split).glob("*.h5"))
        g = s[split]
        expected_vol, expected_slice, targets = [], [], []
        for f in files:
            with h5py.File(f) as h:
                t = h["reconstruction_esc"][()]
                expected_vol += [f.name] * len(t)
                expected_slice += list(range(len(t)))
                r0 = (t.shape[-2] - 24) // 2
                c0 = (t.shape[-1] - 24) // 2
                targets.append(t[:, r0:r0 + 24, c0:c0 + 24])
        assert list(g["volume"][:]) == expected_vol
        assert g["slice"].dtype == np.int32 and list(g["slice"][:]) == expected_slice
        assert g["target"].dtype == np.float32 and g["target"].shape == (len(expected_vol), 24, 24)
        np.testing.assert_array_equal(g["target"][:], np.concatenate(targets))
        assert sorted(g.array_keys()) == ["slice", "target", "volume"]
        assert g["target"].chunks == (1, 24, 24)


def test_slices_store_records_recon_frames(built, tiny_fastmri, tmp_path):
    s = open_store(built / "slices.zarr", kind="slices")
    for split in ("train", "val", "test"):
        expected = {}
        for f in sorted((tiny_fastmri / split).glob("*.h5")):
            with h5py.File(f) as h:
                expected[f.name] = tuple(h["reconstruction_esc"].shape[-2:])
        assert {k: tuple(v) for k, v in s.attrs["recon_frames"][split].items()} == expected
        # read from the store: the raw files are not needed any more
        moved = copy_tree(built / "slices.zarr", tmp_path / split / "slices.zarr")
        zarr.open_group(str(moved), mode="r+").attrs["raw_dir"] = str(tmp_path / "gone")
        assert recon_frames(moved, split) == expected
        assert recon_frames(moved, split, frame=320) == {k: (320, 320) for k in expected}


def test_undersampled_store_layout(built):
    u = open_store(built / "undersampled.zarr", kind="undersampled")
    s = open_store(built / "slices.zarr", kind="slices")
    assert u.attrs["mask"] == {"type": "random", "acceleration": 4, "center_fraction": 0.08}
    for split in ("train", "val", "test"):
        g = u[split]
        n = s[split]["target"].shape[0]
        assert g["image"].shape == (n, 24, 24) and g["image"].dtype == np.float32
        assert g["mask"].dtype == bool and g["mask"].shape[0] == n
        assert list(g["volume"][:]) == list(s[split]["volume"][:])
        image = g["image"][:]
        np.testing.assert_allclose(g["mean"][:], image.reshape(n, -1).mean(1), rtol=1e-5)
        np.testing.assert_allclose(g["std"][:], image.reshape(n, -1).std(1, ddof=1), rtol=1e-4)
        # every slice of a volume shares one mask; roughly a quarter of the columns sampled
        masks = g["mask"][:]
        vols = g["volume"][:]
        for v in set(vols):
            m = masks[vols == v]
            assert (m == m[0]).all()
        assert 0.15 < masks.mean() < 0.45


def test_store_is_tens_of_files(built):
    files = [p for p in (built / "slices.zarr").rglob("*") if p.is_file()]
    assert len(files) < 40


def test_rerun_replaces_store_atomically(built, tiny_fastmri, tmp_path):
    params = write_params(tmp_path / "p.yaml", data={"crop": 16})
    r = _run("prepare", tiny_fastmri, built / "slices2.zarr", params)
    assert r.exit_code == 0
    assert open_store(built / "slices2.zarr", kind="slices")["train"]["target"].shape[-1] == 16
    r = _run("prepare", tiny_fastmri, built / "slices2.zarr", write_params(tmp_path / "q.yaml", data={"crop": 20}))
    assert open_store(built / "slices2.zarr", kind="slices")["train"]["target"].shape[-1] == 20
    assert not [p for p in built.iterdir() if p.name.startswith((".tmp-", ".old-"))]


# ---- bad input: one line naming the file or key, exit 1, nothing that looks complete ----

def _first(raw: Path, split: str = "train") -> Path:
    return sorted((raw / split).glob("*.h5"))[0]


def _truncate(f: Path):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3])


def _not_hdf5(f: Path):
    f.write_text("this is not hdf5\n")


def _drop(key: str):
    def go(f: Path):
        with h5py.File(f, "a") as h:
            del h[key]
    return go


def _replace_kspace(fn):
    def go(f: Path):
        with h5py.File(f, "a") as h:
            k = h["kspace"][()]
            del h["kspace"]
            h["kspace"] = fn(k)
    return go


def _nan(k):
    k = k.copy()
    k[0, 3, 3] = np.nan
    return k


def _bad_header(f: Path):
    with h5py.File(f, "a") as h:
        del h["ismrmrd_header"]
        h["ismrmrd_header"] = b"<ismrmrdHeader><encoding>"


def _empty_split(raw: Path):
    for f in (raw / "val").glob("*.h5"):
        f.unlink()


def _missing_split(raw: Path):
    import shutil
    shutil.rmtree(raw / "test")


FILE_CASES = {
    "truncated": (_truncate, "not a readable HDF5 file"),
    "not_hdf5": (_not_hdf5, "not a readable HDF5 file"),
    "no_kspace": (_drop("kspace"), "no 'kspace'"),
    "wrong_rank": (_replace_kspace(lambda k: k[0]), "kspace has rank 2"),
    "wrong_dtype": (_replace_kspace(lambda k: np.abs(k).astype(np.float32)), "kspace dtype is float32"),
    "nan": (_replace_kspace(_nan), "kspace contains NaN or Inf"),
    "no_header": (_drop("ismrmrd_header"), "no 'ismrmrd_header'"),
    "bad_header": (_bad_header, "malformed ismrmrd_header"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_file(case, tiny_fastmri, tmp_path):
    raw = copy_tree(tiny_fastmri, tmp_path / "raw")
    bad = _first(raw)
    corrupt, expected = FILE_CASES[case]
    corrupt(bad)
    out = tmp_path / "undersampled.zarr"
    out.mkdir()
    (out / "previous").write_text("kept")  # what was there before survives a failed run
    r = _run("undersample", raw, out, write_params(tmp_path / "p.yaml", data={"crop": 24, "workers": 2}))
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0] and bad.name in lines[0]
    assert "Traceback" not in r.output
    assert (out / "previous").read_text() == "kept"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("corrupt,expected", [(_empty_split, "val: split directory has no .h5 files"),
                                              (_missing_split, "test: split directory is missing")])
def test_bad_split(corrupt, expected, tiny_fastmri, tmp_path):
    raw = copy_tree(tiny_fastmri, tmp_path / "raw")
    corrupt(raw)
    r = _run("prepare", raw, tmp_path / "s.zarr", write_params(tmp_path / "p.yaml", data={"crop": 24}))
    assert r.exit_code == 1 and expected in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


PARAM_CASES = [
    ({"data": {"crop": 4096}}, "data.crop: 4096 is larger than the image"),
    ({"mask": {"type": "spiral"}}, "mask.type"),
    ({"mask": {"acceleration": 0.5}}, "mask.acceleration"),
    ({"mask": {"acceleration": "fast"}}, "mask.acceleration"),
    ({"mask": {"center_fraction": 0.0}}, "mask.center_fraction"),
    ({"mask": {"center_fraction": 1.5}}, "mask.center_fraction"),
    ({"data": {"challenge": "tricoil"}}, "data.challenge"),
    ({"data": {"challenge": "multicoil"}}, "kspace has rank 3, expected 4"),
]


@pytest.mark.parametrize("sections,expected", PARAM_CASES)
def test_bad_params(sections, expected, tiny_fastmri, tmp_path):
    r = _run("undersample", tiny_fastmri, tmp_path / "u.zarr", write_params(tmp_path / "p.yaml", **sections))
    assert r.exit_code == 1
    assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r.stderr
    assert not (tmp_path / "u.zarr").exists()


def test_multicoil_pipeline(tiny_fastmri_multicoil, tmp_path):
    params = write_params(tmp_path / "p.yaml", data={"challenge": "multicoil", "crop": 24})
    assert _run("prepare", tiny_fastmri_multicoil, tmp_path / "s.zarr", params).exit_code == 0
    assert _run("undersample", tiny_fastmri_multicoil, tmp_path / "u.zarr", params).exit_code == 0
    s = open_store(tmp_path / "s.zarr", kind="slices")
    u = open_store(tmp_path / "u.zarr", kind="undersampled")
    assert s["train"]["target"].shape == u["train"]["image"].shape
    # zero-filled magnitude correlates strongly with the RSS target
    a, b = s["train"]["target"][:].ravel(), u["train"]["image"][:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8
