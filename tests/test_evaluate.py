"""evaluate and summary: reconstructions store, per-volume metrics equal to fastMRI's, ROI metrics from the
boxes, seed-averaged means and paired comparisons, the tracked-metrics schema, figures, and bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from fastmri import evaluate as fm_eval

from pipeline.roi.box_maps import write_box_maps
from pipeline.io.annotations import to_fastmri_plus, write_annotations
from pipeline.metrics import ALL, volume_slices
from pipeline.models.inference import reconstruct
from pipeline.models.registry import load_unet, model_config
from pipeline.models.unet_seed import SeedUnet
from pipeline.stats import compare
from pipeline.stores.zarr_store import as_str, open_store
from pipeline.training.unet import train_unet
from pipeline.stores.unet_data import SliceStores
from tests.helpers import run_cli, write_params
from tests.test_unet import CROP, TINY_UNET, _cfg, build_stores, fake_heatmaps, one_thread  # noqa: F401

BOX = (8, 10, 6, 8)  # native (row0, col0, height, width) in the 32x32 recon frame = the crop
SEEDS = (0, 1)
RUNS = [("zero_filled", None)] + [(v, s) for v in ("baseline", "weighted", "oracle") for s in SEEDS]
TIMING = ("time", "seconds", "elapsed", "per_s", "ms_per", "threads", "version")


@pytest.fixture(scope="module")
def setup(tiny_fastmri, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny U-Nets train faster on one thread
    try:
        d = build_stores(tiny_fastmri, tmp_path_factory.mktemp("eval"))
        write_params(d / "params.yaml", data={"raw_dir": str(tiny_fastmri), "crop": CROP, "workers": 1,
                                              "annotations": None},
                     unet={**TINY_UNET, "seeds": list(SEEDS)},
                     evaluate={"n_figures": 2, "device": "cpu", "bootstrap_resamples": 1000})
        test_vol = as_str(open_store(d / "slices.zarr", kind="slices")["test"]["volume"][:])[0]
        train_vol = as_str(open_store(d / "slices.zarr", kind="slices")["train"]["volume"][:])[0]
        x, y, w, h = to_fastmri_plus(*BOX, frame_height=CROP)
        rows = [{"file": f, "slice": k, "study_level": "No", "x": x, "y": y, "width": w, "height": h,
                 "label": "Meniscus Tear"} for f in (test_vol, train_vol) for k in (0, 1)]
        rows.append({"file": "file9999999", "slice": 0, "study_level": "No", "x": 1, "y": 1, "width": 2, "height": 2,
                     "label": "other volume"})
        write_annotations(d / "annotations.csv", rows)
        write_box_maps(d / "boxmaps.zarr", d / "slices.zarr", d / "annotations.csv")
        args = (d / "slices.zarr", d / "undersampled.zarr")
        for variant, maps in (("baseline", None), ("weighted", d / "heatmaps.zarr"), ("oracle", d / "boxmaps.zarr")):
            train, val = SliceStores(*args, maps, "train"), SliceStores(*args, maps, "val", raw=True)
            for s in SEEDS:
                train_unet(train, val, _cfg(variant=variant, epochs=2, lr=3e-3, seed=s,
                                            roi_weight=0.0 if variant == "baseline" else 4.0),
                           d / "models" / f"{variant}_s{s}.pt")
    finally:
        torch.set_num_threads(threads)
    return d


def _evaluate(d: Path, out: Path, models: Path | None = None, heatmaps: Path | None = None,
              annotations: Path | None = None):
    return run_cli("evaluate", "--slices", d / "slices.zarr", "--undersampled", d / "undersampled.zarr",
                   "--heatmaps", heatmaps or d / "heatmaps.zarr", "--annotations", annotations or d / "annotations.csv",
                   "--models", models or d / "models", "--out", out / "reconstructions.zarr",
                   "--metrics", out / "metrics.json", "--detail", out / "evaluation.json",
                   "--per-volume", out / "per_volume.csv", "--figures", out / "figures",
                   "--error-maps", out / "error_maps", "--params", d / "params.yaml")


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    r = _evaluate(setup, out)
    assert r.exit_code == 0, r.output
    return out, r.output


def _recon(group, variant, seed):
    return group[variant][:] if seed is None else group[variant][f"seed{seed}"][:]


def test_box_maps_mark_exactly_the_boxes(setup):
    maps = open_store(setup / "boxmaps.zarr", kind="heatmaps")
    s = open_store(setup / "slices.zarr", kind="slices")
    for split, n_marked in (("train", 2), ("val", 0), ("test", 2)):
        m = maps[split]["heatmap"][:]
        np.testing.assert_array_equal(as_str(maps[split]["volume"][:]), as_str(s[split]["volume"][:]))
        assert set(np.unique(m)) <= {0.0, 1.0} and int((m.reshape(len(m), -1).max(1) > 0).sum()) == n_marked
    first = maps["test"]["heatmap"][0]
    assert first.sum() == BOX[2] * BOX[3] and first[BOX[0], BOX[1]] == 1 and first[BOX[0] - 1, BOX[1]] == 0


def test_reconstructions_store_holds_every_run(setup, evaluated):
    out, _ = evaluated
    rec = open_store(out / "reconstructions.zarr", kind="reconstructions")
    assert list(rec.group_keys()) == ["test"]
    g = rec["test"]
    s = open_store(setup / "slices.zarr", kind="slices")["test"]
    u = open_store(setup / "undersampled.zarr", kind="undersampled")["test"]
    n = s["target"].shape[0]
    for v, seed in RUNS:
        r = _recon(g, v, seed)
        assert r.shape == (n, CROP, CROP) and r.dtype == np.float32
    np.testing.assert_array_equal(g["zero_filled"][:], u["image"][:])
    np.testing.assert_array_equal(as_str(g["volume"][:]), as_str(s["volume"][:]))
    # each run's reconstructions are its own checkpoint's outputs, back in target units
    stores = SliceStores(setup / "slices.zarr", setup / "undersampled.zarr", None, "test", raw=True)
    batch = stores[np.arange(n)]
    for v, seed in RUNS[1:]:
        model, _ = load_unet(setup / "models" / f"{v}_s{seed}.pt")
        expected = reconstruct(model, batch["image"], batch["mean"], batch["std"], torch.device("cpu"), 16)
        np.testing.assert_allclose(_recon(g, v, seed), expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    assert not np.array_equal(_recon(g, "baseline", 0), _recon(g, "baseline", 1))   # seeds differ
    assert rec.attrs["runs"] == ["zero_filled"] + [f"{v} s{s}" for v, s in RUNS[1:]]


def test_per_volume_rows_equal_fastmri_evaluate_on_the_stored_reconstructions(setup, evaluated):
    out, output = evaluated
    table = pd.read_csv(out / "per_volume.csv")
    assert list(table.columns) == ["variant", "seed", "volume", "split", "n_slices", "n_roi_slices", *ALL]
    rec = open_store(out / "reconstructions.zarr", kind="reconstructions")["test"]
    target = open_store(setup / "slices.zarr", kind="slices")["test"]["target"][:]
    vols = volume_slices(as_str(rec["volume"][:]))
    assert len(table) == len(RUNS) * len(vols)
    assert table["seed"].isna().sum() == len(vols)                       # zero-filled has no seed
    for v, seed in RUNS:
        pred = _recon(rec, v, seed)
        rows = table[(table["variant"] == v) & (table["seed"].isna() if seed is None else table["seed"] == seed)]
        for name, sl in vols:
            row = rows[rows["volume"] == name].iloc[0]
            assert row["split"] == "test" and row["n_slices"] == sl.stop - sl.start
            for key, fn in (("nmse", fm_eval.nmse), ("psnr", fm_eval.psnr), ("ssim", fm_eval.ssim)):
                assert row[key] == pytest.approx(float(np.squeeze(fn(target[sl], pred[sl]))), rel=1e-5, abs=1e-6)
        # ROI: the box on slices 0 and 1 of the first test volume; the other volume has none
        (name, sl) = vols[0]
        roi = np.zeros(target[sl].shape, bool)
        roi[0:2, BOX[0]:BOX[0] + BOX[2], BOX[1]:BOX[1] + BOX[3]] = True
        mse = np.mean((target[sl][roi].astype(np.float64) - pred[sl][roi]) ** 2)
        row = rows[rows["volume"] == name].iloc[0]
        assert row["n_roi_slices"] == 2
        assert row["roi_psnr"] == pytest.approx(10 * np.log10(target[sl].max() ** 2 / mse), rel=1e-5)
        assert rows[rows["volume"] != name]["roi_psnr"].isna().all()
    assert "oracle" in output and "ROI PSNR" in output


def test_tracked_metrics_are_seed_averaged_means_and_paired_comparisons(setup, evaluated):
    out, _ = evaluated
    m = json.loads((out / "metrics.json").read_text())
    numbers = [x for v in m.values() for x in (v.values() if not isinstance(next(iter(v.values())), dict)
                                              else [y for s in v.values() for y in s.values()])]
    assert len(numbers) <= 40
    # zero-filled is a reference (only data and mask move it): in the detail, not tracked
    assert set(m) == {"baseline", "weighted", "oracle", "weighted_vs_baseline", "oracle_vs_baseline"}
    assert set(m["oracle_vs_baseline"]) == {"roi_psnr", "psnr"}
    assert set(m["oracle_vs_baseline"]["psnr"]) == {"delta", "ci95_low", "ci95_high", "p"}
    table = pd.read_csv(out / "per_volume.csv")
    # seed averaging per volume, then the mean over volumes
    w = table[table["variant"] == "weighted"].groupby("volume")["psnr"].mean()
    assert m["weighted"]["psnr"] == pytest.approx(w.mean(), abs=2e-6)
    table["seed"] = table["seed"].astype("Int64")
    ref = compare(table, "oracle", "baseline", "psnr", n_resamples=1000)
    assert m["oracle_vs_baseline"]["psnr"]["delta"] == pytest.approx(ref["delta"], abs=2e-6)
    # one test volume here: no interval over volumes, so none tracked (test_stats checks the two-level
    # interval itself; test_evaluate_summary_tracks_the_two_level_interval its place in the outputs)
    assert ref["n_seeds"] == len(SEEDS) and ref["n_volumes"] == 1
    assert m["oracle_vs_baseline"]["psnr"]["ci95_low"] is None and m["oracle_vs_baseline"]["psnr"]["p"] is None
    detail = json.loads((out / "evaluation.json").read_text())
    assert detail["seeds"] == list(SEEDS) and detail["n_roi_volumes"] == 1 and detail["n_roi_slices"] == 2
    c = detail["comparisons"]["weighted_vs_baseline"]["roi_psnr"]
    assert c["n_volumes"] == 1 and set(c["by_seed"]) == {"0", "1"}
    assert c["ci95_low"] is None and c["volume_only"]["ci95_low"] is None     # one volume: no interval
    v = detail["comparisons"]["oracle_vs_baseline"]["psnr"]["volume_only"]
    assert set(v) == {"delta", "ci95_low", "ci95_high", "p_wilcoxon", "n_volumes"}
    proj = detail["projected_half_width"]["oracle_vs_baseline"]
    assert set(proj) == {"roi_psnr", "psnr"} and proj["psnr"] == {"3": None, "4": None, "5": None, "6": None}
    assert set(detail["comparisons"]["oracle_vs_baseline"]) >= {"roi_ssim", "ssim", "nmse"}
    # one test volume here: no interval of a variant's mean (test_stats checks the bootstrap itself)
    assert detail["means_ci95"]["weighted"]["psnr"] == [None, None]
    assert set(detail["means_ci95"]) == {"zero_filled", "baseline", "weighted", "oracle"}


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)


Z_2X4 = np.array([[0.3, 0.1, 0.5, 0.2], [0.1, 0.0, 0.2, 0.1]])   # oracle - baseline, 2 seeds x 4 volumes


def _summarized_2x4() -> tuple[dict, dict]:
    """`summarize` of a baseline and an oracle over 2 seeds x 4 volumes, oracle - baseline = Z_2X4."""
    from pipeline.evaluation.evaluate import summarize
    rows = [{"variant": v, "seed": s, "volume": f"v{k}", "split": "test", "n_slices": 4, "n_roi_slices": 1,
             **{m: 20.0 + k + (Z_2X4[s, k] if v == "oracle" else 0.0) for m in ALL}}
            for v in ("baseline", "oracle") for s in (0, 1) for k in range(4)]
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    return summarize(table, n_resamples=1000)


def test_evaluate_summary_tracks_the_two_level_interval():
    # the tracked comparison is the two-level one, the volume-only one sits in the detail, and the
    # detail projects the half-width to more seeds
    from pipeline.stats import two_level_interval
    m, detail = _summarized_2x4()
    ref = two_level_interval(Z_2X4)
    tracked = m["oracle_vs_baseline"]["roi_psnr"]
    assert set(tracked) == {"delta", "ci95_low", "ci95_high", "p"}
    assert [tracked[k] for k in ("delta", "ci95_low", "ci95_high", "p")] == pytest.approx(
        [ref[k] for k in ("delta", "ci95_low", "ci95_high", "p")], rel=1e-7)
    c = detail["comparisons"]["oracle_vs_baseline"]["roi_psnr"]
    assert c["n_seeds"] == 2 and c["df"] == pytest.approx(ref["df"], rel=1e-7)
    assert c["volume_only"]["ci95_high"] < tracked["ci95_high"]        # the seed noise widens it
    assert detail["projected_half_width"]["oracle_vs_baseline"]["roi_psnr"]["3"] > 0
    assert detail["comparison_interval"]["volume_only"].startswith("BCa")


def test_no_timing_or_version_in_any_tracked_metric(evaluated):
    from tests.helpers import REPO
    import yaml
    out, _ = evaluated
    tracked = [out / "metrics.json"]
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = [next(iter(m)) if isinstance(m, dict) else m
                for st in dvc["stages"].values() for m in (st.get("do", st).get("metrics") or [])]
    tracked += [REPO / p for p in declared if (REPO / p).is_file() and p != "reports/metrics.json"]
    assert declared and all(p.endswith(".json") for p in declared)
    for path in tracked:
        keys = list(_keys(json.loads(path.read_text())))
        assert not [k for k in keys if any(t in k for t in TIMING)], path
    # the detail is git-tracked too: quality only (inference latency is benchmarks/unet_training.py's)
    detail = list(_keys(json.loads((out / "evaluation.json").read_text())))
    assert detail and not [k for k in detail if any(t in k for t in TIMING)]


def test_comparisons_on_each_contrast_alone(setup, evaluated, tiny_fastmri):
    """The stage reads each volume's contrast from its fastMRI file; `summarize` compares on each
    contrast's volumes alone, as `compare` does on that part of the table."""
    from pipeline.evaluation.evaluate import summarize

    out, _ = evaluated
    detail = json.loads((out / "evaluation.json").read_text())
    table = pd.read_csv(out / "per_volume.csv")
    table["seed"] = table["seed"].astype("Int64")
    acq = {v: h5py.File(tiny_fastmri / "test" / v).attrs["acquisition"] for v in set(table["volume"])}
    by = detail["comparisons_by_acquisition"]
    assert sorted(by) == sorted(set(acq.values()))
    for a, g in by.items():
        part = table[table["volume"].map(acq) == a]
        assert g["n_volumes"] == part["volume"].nunique()
        assert set(g["comparisons"]) == {"weighted_vs_baseline", "oracle_vs_baseline"}
        assert set(g["comparisons"]["oracle_vs_baseline"]) == {"roi_psnr", "psnr"}
        assert g["comparisons"]["oracle_vs_baseline"]["psnr"]["delta"] == pytest.approx(
            compare(part, "oracle", "baseline", "psnr", n_resamples=1000)["delta"], abs=2e-6)
    # two contrasts, made up: each group's numbers are those of its own volumes
    rng = np.random.default_rng(3)
    rows = [{"variant": v, "seed": s, "volume": f"v{k}", "split": "test", "n_slices": 4, "n_roi_slices": 1,
             **{m: 20.0 + k + rng.normal(0, 0.2) + (1.0 if v == "oracle" and k >= 3 else 0.0) for m in ALL}}
            for v in ("baseline", "weighted", "oracle") for s in (0, 1) for k in range(6)]
    made_up = pd.DataFrame(rows)
    made_up["seed"] = made_up["seed"].astype("Int64")
    contrast = {f"v{k}": "CORPD_FBK" if k < 3 else "CORPDFS_FBK" for k in range(6)}
    _, detail = summarize(made_up, n_resamples=200, acquisitions=contrast)
    groups = detail["comparisons_by_acquisition"]
    assert list(groups) == ["CORPDFS_FBK", "CORPD_FBK"]
    assert groups["CORPDFS_FBK"]["n_volumes"] == groups["CORPD_FBK"]["n_volumes"] == 3
    fs = groups["CORPDFS_FBK"]["comparisons"]["oracle_vs_baseline"]["roi_psnr"]
    assert fs["delta"] == pytest.approx(compare(made_up[made_up["volume"].isin(["v3", "v4", "v5"])], "oracle",
                                                "baseline", "roi_psnr", n_resamples=200)["delta"])
    assert fs["delta"] > 0.5 > abs(groups["CORPD_FBK"]["comparisons"]["oracle_vs_baseline"]["roi_psnr"]["delta"])
    assert "comparisons_by_acquisition" not in summarize(made_up, n_resamples=200)[1]
    with pytest.raises(KeyError):                  # a volume without a contrast is a bug
        summarize(made_up, n_resamples=200, acquisitions={"v0": "CORPD_FBK"})


def test_figures_and_error_maps(setup, evaluated):
    out, _ = evaluated
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == ["compare.png", "paired_roi_psnr.png", "training_curves.png"]
    pngs = sorted((out / "error_maps").glob("*.png"))
    assert len(pngs) == 2  # evaluate.n_figures
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    assert pngs[0].name.endswith("_slice000.png") or pngs[0].name.endswith("_slice001.png")  # an ROI slice


def test_val_split_for_tuning(setup, tiny_fastmri, tmp_path):
    params = write_params(tmp_path / "params.yaml", data={"raw_dir": str(tiny_fastmri), "crop": CROP, "workers": 1,
                                                          "annotations": None},
                          unet={**TINY_UNET, "seeds": list(SEEDS)},
                          evaluate={"split": "val", "n_figures": 1, "device": "cpu", "bootstrap_resamples": 1000})
    d = setup
    r = run_cli("evaluate", "--slices", d / "slices.zarr", "--undersampled", d / "undersampled.zarr",
                "--heatmaps", d / "heatmaps.zarr", "--annotations", d / "annotations.csv", "--models", d / "models",
                "--out", tmp_path / "rec.zarr", "--metrics", tmp_path / "m.json", "--detail", tmp_path / "e.json",
                "--per-volume", tmp_path / "pv.csv", "--figures", tmp_path / "f", "--error-maps", tmp_path / "em",
                "--params", params)
    assert r.exit_code == 0, r.output
    assert list(open_store(tmp_path / "rec.zarr", kind="reconstructions").group_keys()) == ["val"]
    assert set(pd.read_csv(tmp_path / "pv.csv")["split"]) == {"val"}


def test_summary(evaluated, tmp_path):
    out, _ = evaluated
    r = run_cli("summary", "--metrics", out / "metrics.json", "--reports", out)
    assert r.exit_code == 0, r.output
    assert "oracle_vs_baseline roi_psnr: delta" in r.output and "ROI SSIM" in r.output and "error maps" in r.output
    # the tracked (two-level) interval first, the volume-only one from the detail beside it
    from pipeline.evaluation.reports import write_json
    metrics, detail = _summarized_2x4()
    write_json(tmp_path / "metrics.json", metrics)
    write_json(tmp_path / "evaluation.json", detail)
    r = run_cli("summary", "--metrics", tmp_path / "metrics.json", "--reports", tmp_path)
    assert r.exit_code == 0, r.output
    m, v = metrics["oracle_vs_baseline"]["psnr"], detail["comparisons"]["oracle_vs_baseline"]["psnr"]["volume_only"]
    line = next(x for x in r.output.splitlines() if x.startswith("oracle_vs_baseline psnr:"))
    assert line.startswith(f"oracle_vs_baseline psnr: delta {m['delta']:+.3f} [{m['ci95_low']:+.3f}, "
                           f"{m['ci95_high']:+.3f}], p {m['p']:.3g} (2 seeds x 4 volumes; ")
    assert line.endswith(f"volume-only [{v['ci95_low']:+.3f}, {v['ci95_high']:+.3f}], "
                         f"Wilcoxon p {v['p_wilcoxon']:.3g})")
    assert "seeds and test volumes" in r.output
    r = run_cli("summary", "--metrics", tmp_path / "none.json")
    assert r.exit_code == 1 and "no metrics yet" in r.output


def test_bad_inputs(setup, tmp_path):
    # a checkpoint whose weights belong to another architecture
    models = shutil.copytree(setup / "models", tmp_path / "models")
    cfg = {"kind": "unet", "model": model_config("fastmri", 4, 2, 0.0, True), "variant": "weighted", "history": [{}]}
    torch.save({"state_dict": SeedUnet().state_dict(), "config": cfg}, models / "weighted_s1.pt")
    r = _evaluate(setup, tmp_path / "o1", models=models)
    assert r.exit_code == 1 and "weighted_s1.pt" in r.output and "do not fit the architecture" in r.output
    # never trained, or trained with other widths than params.yaml's unet.*
    torch.save({"state_dict": SeedUnet().state_dict(), "config": {**cfg, "history": []}}, models / "weighted_s1.pt")
    r = _evaluate(setup, tmp_path / "o6", models=models)
    assert r.exit_code == 1 and "weighted_s1.pt: the checkpoint records no training epoch" in r.output
    torch.save({"state_dict": SeedUnet().state_dict(),
                "config": {**cfg, "model": model_config("fastmri", 8, 2, 0.0, True)}}, models / "weighted_s1.pt")
    r = _evaluate(setup, tmp_path / "o7", models=models)
    assert r.exit_code == 1 and "differs from unet.* in params.yaml" in r.output
    (models / "weighted_s1.pt").unlink()
    r = _evaluate(setup, tmp_path / "o2", models=models)
    assert r.exit_code == 1 and "weighted_s1.pt: checkpoint not found" in r.output
    shutil.copy(setup / "models" / "oracle_s0.pt", models / "weighted_s1.pt")   # the wrong variant
    r = _evaluate(setup, tmp_path / "o5", models=models)
    assert r.exit_code == 1 and "holds the 'oracle' variant" in r.output
    # heatmaps out of order on the test split
    bad = fake_heatmaps(setup / "slices.zarr", tmp_path / "bad.zarr", order=lambda i: i[::-1], alter="test")
    r = _evaluate(setup, tmp_path / "o3", heatmaps=bad)
    assert r.exit_code == 1 and "order differs from the slices store" in r.output
    r = _evaluate(setup, tmp_path / "o4", annotations=tmp_path / "none.csv")
    assert r.exit_code == 1 and "annotations file not found" in r.output
    for o in ("o1", "o2", "o3", "o4", "o5", "o6", "o7"):
        assert not (tmp_path / o / "metrics.json").exists() and not (tmp_path / o / "reconstructions.zarr").exists()
