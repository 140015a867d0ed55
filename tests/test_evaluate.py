"""evaluate and summary: reconstructions store, metrics equal to fastMRI's, ROI metrics from the boxes,
per-volume CSV, error-map PNGs, and bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastmri import evaluate as fm_eval

from pipeline.io.annotations import to_fastmri_plus, write_annotations
from pipeline.metrics import ALL, volume_slices
from pipeline.models.registry import model_config
from pipeline.models.unet_seed import SeedUnet
from pipeline.store import open_store
from pipeline.training.unet import train_unet
from pipeline.store import as_str
from tests.helpers import run_cli
from tests.test_unet import CROP, _cfg, _splits, build_stores, fake_heatmaps, one_thread  # noqa: F401

BOX = (8, 10, 6, 8)  # native (row0, col0, height, width) in the 32x32 recon frame = the crop


@pytest.fixture(scope="module")
def setup(tiny_fastmri, tmp_path_factory):
    torch.set_num_threads(1)
    d = build_stores(tiny_fastmri, tmp_path_factory.mktemp("eval"))
    train, val = _splits(d)
    for variant in ("baseline", "weighted"):
        train_unet(train, val, _cfg(variant=variant, epochs=2, lr=3e-3), d / "models" / f"unet_{variant}.pt")
    test_vol = as_str(open_store(d / "slices.zarr", kind="slices")["test"]["volume"][:])[0]
    x, y, w, h = to_fastmri_plus(*BOX, frame_height=CROP)
    rows = [{"file": test_vol, "slice": k, "study_level": "No", "x": x, "y": y, "width": w, "height": h,
             "label": "Meniscus Tear"} for k in (0, 1)]
    rows.append({"file": "file9999999", "slice": 0, "study_level": "No", "x": 1, "y": 1, "width": 2, "height": 2,
                 "label": "other volume"})
    write_annotations(d / "annotations.csv", rows)
    return d


def _evaluate(d: Path, out: Path, models: Path | None = None, heatmaps: Path | None = None,
              annotations: Path | None = None):
    return run_cli("evaluate", "--slices", d / "slices.zarr", "--undersampled", d / "undersampled.zarr",
                   "--heatmaps", heatmaps or d / "heatmaps.zarr", "--annotations", annotations or d / "annotations.csv",
                   "--models", models or d / "models", "--out", out / "reconstructions.zarr",
                   "--metrics", out / "metrics.json", "--per-volume", out / "per_volume.csv",
                   "--figures", out / "error_maps", "--params", d / "params.yaml")


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    r = _evaluate(setup, out)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_reconstructions_store(setup, evaluated):
    out, _ = evaluated
    rec = open_store(out / "reconstructions.zarr", kind="reconstructions")
    assert list(rec.group_keys()) == ["test"]
    g = rec["test"]
    s = open_store(setup / "slices.zarr", kind="slices")["test"]
    u = open_store(setup / "undersampled.zarr", kind="undersampled")["test"]
    n = s["target"].shape[0]
    for v in ("zero_filled", "baseline", "weighted"):
        assert g[v].shape == (n, CROP, CROP) and g[v].dtype == np.float32
    np.testing.assert_array_equal(g["zero_filled"][:], u["image"][:])
    np.testing.assert_array_equal(as_str(g["volume"][:]), as_str(s["volume"][:]))
    # model outputs are in target units: close to the target's scale, and not the zero-filled image
    assert not np.array_equal(g["baseline"][:], g["zero_filled"][:])
    assert 0.5 < g["weighted"][:].mean() / s["target"][:].mean() < 2
    assert rec.attrs["models"]["weighted"] == model_config("fastmri", 4, 2, 0.0, True)


def test_metrics_equal_fastmri_evaluate_on_the_stored_reconstructions(setup, evaluated):
    out, output = evaluated
    m = json.loads((out / "metrics.json").read_text())
    assert all(not isinstance(v, (dict, list)) for v in m.values())  # flat
    for v in ("zero_filled", "baseline", "weighted"):
        assert {f"{v}_{k}" for k in ALL} <= set(m)
    assert m["baseline_ms_per_slice"] > 0 and m["weighted_ms_per_slice"] > 0
    rec = open_store(out / "reconstructions.zarr", kind="reconstructions")["test"]
    target = open_store(setup / "slices.zarr", kind="slices")["test"]["target"][:]
    vols = volume_slices(as_str(rec["volume"][:]))
    assert m["n_volumes"] == len(vols) and m["n_roi_volumes"] == 1 and m["n_roi_slices"] == 2
    for v in ("zero_filled", "baseline", "weighted"):
        pred = rec[v][:]
        for key, fn in (("nmse", fm_eval.nmse), ("psnr", fm_eval.psnr), ("ssim", fm_eval.ssim)):
            ref = np.mean([float(np.squeeze(fn(target[sl], pred[sl]))) for _, sl in vols])
            assert m[f"{v}_{key}"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
        # ROI: the box on slices 0 and 1 of the (only) test volume
        (_, sl), = vols
        roi = np.zeros(target.shape, bool)
        roi[0:2, BOX[0]:BOX[0] + BOX[2], BOX[1]:BOX[1] + BOX[3]] = True
        mse = np.mean((target[roi].astype(np.float64) - pred[roi]) ** 2)
        assert m[f"{v}_roi_psnr"] == pytest.approx(10 * np.log10(target[sl].max() ** 2 / mse), rel=1e-5)
    assert m["gain_weighted_vs_baseline_roi_psnr"] == pytest.approx(m["weighted_roi_psnr"] - m["baseline_roi_psnr"],
                                                                    abs=2e-6)
    assert "zero_filled" in output and "ROI PSNR" in output


def test_per_volume_csv_and_error_maps(setup, evaluated):
    out, _ = evaluated
    rows = list(csv.DictReader((out / "per_volume.csv").open()))
    m = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 3 * m["n_volumes"]
    assert [r["variant"] for r in rows] == ["zero_filled", "baseline", "weighted"] * m["n_volumes"]
    assert set(rows[0]) == {"volume", "variant", *ALL, "case"}
    assert float(rows[2]["psnr"]) == pytest.approx(m["weighted_psnr"], rel=1e-4)
    pngs = sorted((out / "error_maps").glob("*.png"))
    assert len(pngs) == 2  # evaluate.n_figures
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    assert any(p.name.endswith("_slice000.png") or p.name.endswith("_slice001.png") for p in pngs)  # an ROI slice


def test_summary(evaluated, tmp_path):
    out, _ = evaluated
    r = run_cli("summary", "--metrics", out / "metrics.json", "--reports", out)
    assert r.exit_code == 0, r.output
    assert "weighted" in r.output and "ROI SSIM" in r.output and "error maps" in r.output
    r = run_cli("summary", "--metrics", tmp_path / "none.json")
    assert r.exit_code == 1 and "no metrics yet" in r.output


def test_bad_inputs(setup, tmp_path):
    # a checkpoint whose weights belong to another architecture
    models = shutil.copytree(setup / "models", tmp_path / "models")
    torch.save({"state_dict": SeedUnet().state_dict(),
                "config": {"kind": "unet", "model": model_config("fastmri", 4, 2, 0.0, True), "variant": "weighted"}},
               models / "unet_weighted.pt")
    r = _evaluate(setup, tmp_path / "o1", models=models)
    assert r.exit_code == 1 and "unet_weighted.pt" in r.output and "do not fit the architecture" in r.output
    (models / "unet_weighted.pt").unlink()
    r = _evaluate(setup, tmp_path / "o2", models=models)
    assert r.exit_code == 1 and "missing U-Net checkpoint" in r.output
    # heatmaps out of order on the test split
    bad = fake_heatmaps(setup / "slices.zarr", tmp_path / "bad.zarr", order=lambda i: i[::-1], alter="test")
    r = _evaluate(setup, tmp_path / "o3", heatmaps=bad)
    assert r.exit_code == 1 and "order differs from the slices store" in r.output
    r = _evaluate(setup, tmp_path / "o4", annotations=tmp_path / "none.csv")
    assert r.exit_code == 1 and "annotations file not found" in r.output
    for o in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / o / "metrics.json").exists() and not (tmp_path / o / "reconstructions.zarr").exists()
