"""The whole pipeline on a few small files in the REAL formats, through dvc.yaml's own commands.

- fastMRI knee single-coil HDF5 as the public release: 640 x 368 k-space, 320 x 320
  `reconstruction_esc`, ISMRMRD header, attrs `acquisition`, `max`, `norm`, `patient_id`; only
  `train/` and `val/` (fastMRI's test files have no targets), the test split carved out of val by
  `data.test_from_val`;
- a fastMRI+ `knee.csv` (boxes in the 320 frame flipped up/down, `data.annotation_frame: 320`) with
  the quirks of the real file: study-level rows with empty fields, labels with a trailing blank, rows
  for knee files that are not here;
- MRNet-v1.0 exams: `{train,valid}/{axial,coronal,sagittal}/NNNN.npy` uint8 (slices, 256, 256) with
  slice counts that differ between exams, and header-less `{split}-{abnormal,acl,meniscus}.csv`.

Each stage runs the command dvc.yaml gives it (`python -m stages.cli ...`, `${...}` filled in from
this params.yaml), in-process through typer's CliRunner from a scratch workspace, then the outputs
are checked: slice counts per split at crop C in every store, the carve, the rejected rows, finite
metrics. About 30-40 s on 2 CPU cores (crop 128 of the 320 frame, 1-epoch tiny U-Nets, one seed).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.io.fastmri import FastMRIFile, list_split
from pipeline.stores.zarr_store import as_str, open_store
from tests.helpers import REPO, run_cli, stage_argv, write_params

CROP = 128
SLICES = 3
VOLUMES = {"train": 3, "val": 6}
TEST_FROM_VAL = 0.5                       # val 6 -> val 3 + test 3 volumes
MRNET_PLANES = ("axial", "coronal", "sagittal")
MRNET_TASKS = ("abnormal", "acl", "meniscus")
ORDER = ["prepare", "undersample", "train-mrnet", "gradcam", "boxmaps", "train-baseline", "train-weighted",
         "train-oracle", "evaluate"]
VARIANTS = ("baseline", "weighted", "oracle")
RAW = "data/raw/fastmri"
KNEE_CSV = "data/raw/knee.csv"
MRNET_DIR = "data/raw/MRNet-v1.0"


# ---------------------------------------------------------------- data in the real formats

def _write_fastmri(ws: Path) -> list[dict]:
    from pipeline.synthetic.dataset import SyntheticSpec, write_fastmri
    spec = SyntheticSpec(volumes=VOLUMES, slices=SLICES, recon_size=320, coils=1, lesion_rate=1.0,
                         eval_lesion_rate=1.0, noise=0.02)
    return write_fastmri(ws / RAW, spec, seed=3, workers=1)


def _write_knee_csv(ws: Path, rows: list[dict]) -> None:
    """fastMRI+ knee.csv: the boxes of the synthetic lesions plus the real file's quirks."""
    files = sorted({r["file"] for r in rows})
    out = [dict(r, label=r["label"] + " ") if i % 2 else r for i, r in enumerate(rows)]   # "Joint Effusion "
    out += [{"file": f, "slice": "", "study_level": "Yes", "x": "", "y": "", "width": "", "height": "",
             "label": "Joint Effusion "} for f in files[:2]]
    out.append({"file": "file1099999", "slice": 10, "study_level": "No", "x": 120, "y": 140, "width": 20,
                "height": 15, "label": "Meniscus Tear"})                # a knee file that is not here
    path = ws / KNEE_CSV
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["file", "slice", "study_level", "x", "y", "width", "height", "label"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(out)


def _write_mrnet(ws: Path) -> None:
    """MRNet-v1.0: every plane and task; exams of 4 or 5 slices of 256 x 256 (the real ones vary)."""
    from pipeline.synthetic.dataset import SyntheticSpec, write_mrnet_exams
    root = ws / MRNET_DIR
    write_mrnet_exams(root, SyntheticSpec(recon_size=256, exams={"train": 10, "valid": 4}, exam_slices=5,
                                          lesion_rate=0.5), seed=3, workers=1)
    (root / "boxes.csv").unlink()                                      # not part of MRNet-v1.0
    for split in ("train", "valid"):
        for exam in sorted((root / split / "coronal").glob("*.npy")):
            vol = np.load(exam)
            if int(exam.stem) % 2:
                vol = vol[:-1]
                np.save(exam, vol)
            for plane in ("axial", "sagittal"):
                (root / split / plane).mkdir(exist_ok=True)
                np.save(root / split / plane / exam.name, vol)
        ids = [row.split(",")[0] for row in (root / f"{split}-abnormal.csv").read_text().split()]
        for task in ("acl", "meniscus"):
            (root / f"{split}-{task}.csv").write_text("".join(f"{i},0\n" for i in ids))


def _workspace(ws: Path) -> dict:
    """Raw data in the real formats and params.yaml under `ws`; returns the params."""
    (ws / "data" / "raw").mkdir(parents=True)
    _write_knee_csv(ws, _write_fastmri(ws))
    _write_mrnet(ws)
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    # the streaming/DDP keys, when params.yaml has them: one process, no loader workers, no compile
    unet_extra = {k: v for k, v in {"nproc": 1, "num_workers": 0, "compile": False}.items()
                  if k in defaults["unet"]}
    write_params(
        ws / "params.yaml",
        data={"raw_dir": RAW, "challenge": "singlecoil", "crop": CROP, "annotations": KNEE_CSV,
              "annotation_frame": 320, "workers": 1, "test_from_val": TEST_FROM_VAL},
        mrnet={"source": "mrnet", "data_dir": MRNET_DIR, "plane": "coronal", "task": "abnormal",
               "image_size": 64, "epochs": 1, "device": "cpu"},
        gradcam={"n_overlays": 1},
        unet={"chans": 4, "num_pool_layers": 2, "epochs": 1, "batch_size": 2, "seeds": [0], "device": "cpu",
              **unet_extra},
        evaluate={"split": "test", "n_figures": 1, "bootstrap_resamples": 1000, "device": "cpu"},
    )
    return yaml.safe_load((ws / "params.yaml").read_text())


def _run_stages(ws: Path, params: dict, names: list[str], seconds: dict) -> None:
    """Run each named stage's dvc.yaml command (every `foreach` item) from `ws`, timing each stage."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) - {"synthesize"} == set(ORDER)
    old, threads = Path.cwd(), torch.get_num_threads()
    torch.set_num_threads(1)      # tiny tensors: one thread is faster (the stages run in this process)
    try:
        os.chdir(ws)
        for name in names:
            start = time.perf_counter()
            st = stages[name]
            for item in (params["unet"]["seeds"] if "foreach" in st else [None]):
                args = stage_argv(st.get("do", st)["cmd"], params, item)
                r = run_cli(*args)
                assert r.exit_code == 0, f"{name}: {' '.join(args)}\n{r.output}"
            seconds[name] = time.perf_counter() - start
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """The data and map stages (prepare .. boxmaps); returns (workspace, params, seconds per stage)."""
    ws = tmp_path_factory.mktemp("real_formats")
    params, seconds = _workspace(ws), {}
    _run_stages(ws, params, ORDER[:5], seconds)
    return ws, params, seconds


@pytest.fixture(scope="module")
def pipeline_run(data_run):
    """Then the U-Nets (baseline, weighted, oracle; one seed) and evaluate; returns (workspace, seconds)."""
    ws, params, seconds = data_run
    _run_stages(ws, params, ORDER[5:], seconds)
    return ws, seconds


# ---------------------------------------------------------------- checks

def _raw_split_names(ws: Path) -> dict[str, list[str]]:
    return {s: [p.name for p in list_split(ws / RAW, s, test_from_val=TEST_FROM_VAL)]
            for s in ("train", "val", "test")}


def test_raw_files_have_the_real_fastmri_layout(data_run):
    ws = data_run[0]
    assert sorted(p.name for p in (ws / RAW).iterdir()) == ["train", "val"]
    for path in sorted((ws / RAW).glob("*/*.h5")):
        with FastMRIFile(path, "singlecoil") as f:
            info = f.info
        assert info.kspace_shape == (SLICES, 640, 368) and info.target_shape == (320, 320)
        assert info.header.recon_size[:2] == (320, 320) and info.header.enc_size[:2] == (640, 368)


def test_stores_hold_every_split_at_crop_c_with_the_carved_test_split(data_run):
    ws = data_run[0]
    names = _raw_split_names(ws)
    assert [len(names[s]) for s in ("train", "val", "test")] == [3, 3, 3]
    assert not set(names["val"]) & set(names["test"])
    assert sorted(names["val"] + names["test"]) == sorted(p.name for p in (ws / RAW / "val").glob("*.h5"))
    slices = open_store(ws / "data/slices.zarr", kind="slices")
    under = open_store(ws / "data/undersampled.zarr", kind="undersampled")
    for split, files in names.items():
        n = len(files) * SLICES
        vols = as_str(slices[split]["volume"][:])
        assert sorted(set(vols)) == files and vols.tolist() == sorted(vols.tolist())
        assert slices[split]["slice"][:].tolist() == list(range(SLICES)) * len(files)
        assert slices[split]["target"].shape == (n, CROP, CROP)
        target = slices[split]["target"][:]
        assert target.dtype == np.float32 and np.isfinite(target).all() and target.max() > 0
        assert as_str(under[split]["volume"][:]).tolist() == vols.tolist()
        assert under[split]["image"].shape == (n, CROP, CROP) and under[split]["mask"].shape == (n, 368)
        mask = under[split]["mask"][:]
        assert np.all(np.abs(mask.sum(1) - 368 / 4) < 368 * 0.05)       # 4x random mask, one per volume
        assert np.isfinite(under[split]["mean"][:]).all() and (under[split]["std"][:] > 0).all()
        for store in ("heatmaps", "boxmaps"):
            maps = open_store(ws / f"data/{store}.zarr", kind="heatmaps")[split]["heatmap"]
            assert maps.shape == (n, CROP, CROP)
            m = maps[:]
            assert m.min() >= 0 and m.max() <= 1
    test_boxes = open_store(ws / "data/boxmaps.zarr", kind="heatmaps")["test"]["heatmap"][:]
    assert (test_boxes.reshape(len(test_boxes), -1).max(1) == 1).sum() >= 2  # the knee.csv boxes land in the crop


def test_knee_csv_rows_that_cannot_be_used_are_listed(data_run):
    ws = data_run[0]
    with open(ws / "reports/annotations_rejected.csv", newline="") as fh:
        rejected = list(csv.DictReader(fh))
    assert [(r["file"], r["reason"]) for r in rejected] == [("file1099999", "unknown file")]


def test_classifier_and_gradcam_reports(data_run):
    ws = data_run[0]
    mrnet = json.loads((ws / "reports/mrnet.json").read_text())
    assert json.loads((ws / "reports/mrnet_detail.json").read_text())["test"]["n"] == 4
    assert 0 <= mrnet["test"]["auc"] <= 1
    gradcam = json.loads((ws / "reports/gradcam.json").read_text())
    detail = json.loads((ws / "reports/gradcam_detail.json").read_text())
    assert detail["slices"] == {"train": 9, "val": 9, "test": 9}
    assert detail["overall"]["n_slices"] > 0 and 0 <= gradcam["test"]["pointing_game"] <= 1
    assert list((ws / "reports/gradcam").glob("*.png"))


def test_metrics_have_every_key_and_finite_values(pipeline_run):
    ws, _ = pipeline_run
    metrics = json.loads((ws / "reports/metrics.json").read_text())
    assert set(metrics) == {*VARIANTS, "weighted_vs_baseline", "oracle_vs_baseline"}
    zero_filled = json.loads((ws / "reports/evaluation.json").read_text())["means"]["zero_filled"]   # a reference
    metrics["zero_filled"] = {k: zero_filled[k] for k in ("nmse", "psnr", "ssim", "roi_psnr", "roi_ssim")}
    for v in ("zero_filled", *VARIANTS):
        assert set(metrics[v]) == {"nmse", "psnr", "ssim", "roi_psnr", "roi_ssim"}
        assert all(math.isfinite(x) for x in metrics[v].values()), metrics[v]
        assert 10 < metrics[v]["psnr"] < 60 and 0 < metrics[v]["ssim"] <= 1 and metrics[v]["nmse"] > 0
    for c in ("weighted_vs_baseline", "oracle_vs_baseline"):
        assert set(metrics[c]) == {"roi_psnr", "psnr"}
        for m in metrics[c].values():
            assert set(m) == {"delta", "ci95_low", "ci95_high", "p"}
            assert math.isfinite(m["delta"]), metrics[c]
            # one seed cannot measure the training noise: the two-level interval and p stay empty
            assert m["ci95_low"] is None and m["ci95_high"] is None and m["p"] is None, metrics[c]
    with open(ws / "reports/per_volume.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    test_files = set(_raw_split_names(ws)["test"])
    assert len(rows) == 4 * len(test_files)                                # zero-filled + 3 variants x 1 seed
    assert {r["volume"] for r in rows} == test_files
    recon = open_store(ws / "data/reconstructions.zarr", kind="reconstructions")
    for v in VARIANTS:
        assert recon["test"][v]["seed0"].shape == (len(test_files) * SLICES, CROP, CROP)
    for v in VARIANTS:
        assert (ws / f"models/unet/{v}_s0.pt").is_file()


def test_runs_in_well_under_a_minute(pipeline_run):
    _, seconds = pipeline_run
    print({k: round(v, 1) for k, v in seconds.items()}, f"total {sum(seconds.values()):.1f} s")
    assert sum(seconds.values()) < 120
