"""A volume or exam in two splits is refused: one line naming it and both splits, exit 1, nothing written."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from pipeline.errors import InputError, check_disjoint
from pipeline.io.classifier import list_splits
from tests.helpers import copy_tree, run_cli, write_params
from tests.test_mrnet import easy_exams


def _one_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize("stage", ["prepare", "undersample"])
@pytest.mark.parametrize("dest", ["val", "test"])
def test_fastmri_file_in_two_splits(stage, dest, tiny_fastmri, tmp_path):
    raw = copy_tree(tiny_fastmri, tmp_path / "raw")
    leaked = sorted((raw / "train").glob("*.h5"))[0]
    shutil.copy(leaked, raw / dest / leaked.name)
    out = tmp_path / "store.zarr"
    res = run_cli(stage, "--raw-dir", raw, "--out", out,
                  "--params", write_params(tmp_path / "p.yaml", data={"crop": 24, "workers": 1}))
    line = _one_line(res)
    assert line.startswith("error: ") and leaked.name in line
    assert f"both the train and {dest} splits" in line
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def _train_mrnet(tmp_path, data_dir, **mrnet):
    params = write_params(tmp_path / "params.yaml", mrnet={"epochs": 1, "image_size": 64, **mrnet})
    outs = dict(out=tmp_path / "m.pt", metrics=tmp_path / "m.json", live=tmp_path / "live")
    res = run_cli("train-mrnet", "--data-dir", data_dir, "--out", outs["out"], "--metrics", outs["metrics"],
                  "--live", outs["live"], "--params", params)
    return res, outs


def test_mrnet_exam_in_train_and_valid(tmp_path):
    root = tmp_path / "exams"
    easy_exams(root, n_train=6, n_valid=4, slices=2)
    # exam 0003 of train copied into valid, volume and label
    shutil.copy(root / "train" / "coronal" / "0003.npy", root / "valid" / "coronal" / "0003.npy")
    with open(root / "valid-abnormal.csv", "a") as f:
        f.write("0003,1\n")
    res, outs = _train_mrnet(tmp_path, root, source="mrnet")
    line = _one_line(res)
    assert "exam 0003 is in both the train and valid splits" in line
    assert "train/coronal/0003.npy" in line and "valid/coronal/0003.npy" in line
    assert not any(p.exists() for p in outs.values()) and not list(tmp_path.rglob(".tmp-*"))


def test_synthetic_exams_are_disjoint(tmp_path):
    from pipeline.synthetic.dataset import SyntheticSpec, write_mrnet_exams
    spec = SyntheticSpec(volumes={"train": 1}, slices=1, recon_size=32, exams={"train": 3, "valid": 2},
                         exam_slices=2)
    write_mrnet_exams(tmp_path, spec, seed=0)
    splits = list_splits("synthetic", tmp_path)
    assert [len(splits[s]) for s in ("train", "valid")] == [3, 2]


def _kneemri(root, patients, exams_per_patient=2):
    (root / "vols").mkdir(parents=True)
    lines = ["patientID,examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiWidth,roiHeight,roiDepth,volumeFilename"]
    for p in range(patients):
        for k in range(exams_per_patient):
            name = f"{p:03d}-{k}.pck"
            (root / "vols" / name).write_bytes(pickle.dumps(np.zeros((2, 8, 8), np.uint16), protocol=2))
            lines.append(f"{p},{k},{k},{(p + k) % 3},0,0,0,0,8,8,2,{name}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kneemri_split_is_by_patient(seed, tmp_path):
    _kneemri(tmp_path, patients=9, exams_per_patient=3)
    splits = list_splits("kneemri", tmp_path, valid_fraction=0.3, seed=seed)
    patients = {s: {e.id.split("-")[0] for e in exams} for s, exams in splits.items()}
    assert not patients["train"] & patients["valid"]
    assert len(patients["valid"]) == 3 and len(patients["train"]) == 6
    assert all(len(exams) == 3 * len(patients[s]) for s, exams in splits.items())  # every exam of a patient together


def test_kneemri_volume_listed_twice(tmp_path):
    # the same volume under two patients could otherwise land in both splits
    _kneemri(tmp_path, patients=3)
    meta = tmp_path / "metadata.csv"
    meta.write_text(meta.read_text() + "7,0,0,1,0,0,0,0,8,8,2,000-0.pck\n")
    res, outs = _train_mrnet(tmp_path, tmp_path, source="kneemri")
    line = _one_line(res)
    assert "metadata.csv:8: 000-0.pck listed twice (also on line 2)" in line
    assert not any(p.exists() for p in outs.values())


def test_check_disjoint_names_key_splits_and_count():
    check_disjoint({"a": {"x": 1}, "b": {"y": 2}, "c": {}}, "file")
    with pytest.raises(InputError, match=r"^file y is in both the b and c splits: B/y and C/y$"):
        check_disjoint({"a": {"x": "A/x"}, "b": {"y": "B/y"}, "c": {"y": "C/y"}}, "file")
    with pytest.raises(InputError, match=r"file x is in both the a and b splits: .* \(2 files in more than one"):
        check_disjoint({"a": {"x": 1, "y": 1}, "b": {"x": 2, "y": 2}}, "file")
