"""Grad-CAM heatmaps: per-slice maps, the heatmaps store, ROI scores, the gradcam stage."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from pipeline.errors import BadValue, InputError
from pipeline.evaluation.gradcam_report import score_heatmaps, scores_by_call, scores_by_group
from pipeline.evaluation.reports import write_json
from pipeline.roi.gradcam import (METHODS, GradCAMSpec, as_str, explainable, feature_geometry, slice_cams,
                                  upsample_aligned, volume_calls, volume_heatmaps)
from pipeline.models.mrnet import MRNet, exam_logit, prepare_volume, save_mrnet
from pipeline.roi.boxes import crop_boxes, slice_boxes, split_boxes, without_labels
from pipeline.roi.scores import (location_prior, slice_scores, near_boxes, pointing_hit, score_slices, tolerance_px,
                                 tracked_scores)
from pipeline.stats import ratio_bootstrap_interval
from pipeline.stores.zarr_store import check_aligned, finish_store, open_store, split_group
from tests.helpers import run_cli, write_params


# --------------------------------------------------------------------------- scores
def test_pointing_game_and_energy():
    heat = np.zeros((10, 10), np.float32)
    heat[2, 3] = 1.0
    heat[8, 8] = 0.5
    assert pointing_hit(heat, [(1, 2, 3, 3)])
    assert not pointing_hit(heat, [(7, 7, 2, 2)])
    assert not pointing_hit(np.zeros((10, 10)), [(0, 0, 10, 10)])
    assert slice_scores(heat, [(1, 2, 3, 3)], 0)["energy_in_box"] == pytest.approx(1 / 1.5)
    assert slice_scores(heat, [(1, 2, 3, 3), (7, 7, 2, 2)], 0)["energy_in_box"] == pytest.approx(1.0)
    s = score_slices([("v1", heat, [(1, 2, 3, 3)], ["a"], 0.0), ("v2", heat, [(7, 7, 2, 2)], ["b"], 0.0)])
    o = s["overall"]
    assert o["n_slices"] == 2 and o["n_volumes"] == 2 and o["pointing_game"]["mean"] == 0.5
    assert o["energy_in_box"]["mean"] == pytest.approx((1 / 1.5 + 0.5 / 1.5) / 2)
    assert o["chance"]["mean"] == pytest.approx((9 + 4) / 2 / 100)
    assert {k: (v["n_slices"], v["pointing_game"]["mean"]) for k, v in s["by_label"].items()} == \
        {"a": (1, 1.0), "b": (1, 0.0)}
    tracked = tracked_scores(s)
    assert tracked == {"n_slices": 2, "pointing_game": 0.5, "pointing_game_15px": 0.5,
                       "energy_in_box": pytest.approx((1 / 1.5 + 0.5 / 1.5) / 2), "chance": pytest.approx(0.065)}


def test_fifteen_px_tolerance_turns_a_near_miss_into_a_hit():
    heat = np.zeros((128, 128), np.float32)
    heat[50, 70] = 1.0                              # 6 columns right of the box's last column (64)
    box = [(50, 60, 5, 5)]                          # rows 50..54, cols 60..64
    assert tolerance_px((128, 128)) == pytest.approx(6.0)    # 15 px at 320 -> 6 px in a 128 frame
    assert tolerance_px((320, 320)) == pytest.approx(15.0)
    assert not pointing_hit(heat, box)
    assert pointing_hit(heat, box, tolerance_px((128, 128)))
    assert not pointing_hit(heat, box, tolerance_px((100, 100)))   # 4.7 px: still a miss
    # Euclidean, not a square dilation: 2 rows below and 6 columns right is 6.32 px away
    diag = np.zeros((128, 128), np.float32)
    diag[56, 70] = 1.0
    assert not pointing_hit(diag, box, 6.0) and pointing_hit(diag, box, 6.33)
    # the 15 px chance level is the dilated box's area share
    near = near_boxes((128, 128), box, 6.0)
    assert near.sum() > 25 and near[52, 70] and not near[52, 71] and not near[44, 59]
    s = score_slices([("v", heat, box, ["Meniscus Tear"], 6.0)])["overall"]
    assert s["pointing_game"]["mean"] == 0.0 and s["pointing_game_15px"]["mean"] == 1.0
    assert s["chance"]["mean"] == pytest.approx(25 / 128 ** 2)
    assert s["chance_15px"]["mean"] == pytest.approx(near.sum() / 128 ** 2)


def test_energy_share_of_a_known_map_and_its_chance_level():
    heat = np.full((20, 20), 0.5, np.float32)
    heat[2:5, 3:7] = 1.0                            # the box: 12 px at 1, 388 px at 0.5
    box = [(2, 3, 3, 4)]
    assert slice_scores(heat, box, 0)["energy_in_box"] == pytest.approx(12 / (12 + 0.5 * 388))
    assert slice_scores(np.ones((20, 20)), box, 0)["energy_in_box"] == pytest.approx(12 / 400)   # uniform map = chance
    s = score_slices([("v", heat, box, ["x"], 0.0), ("v", np.ones((20, 20)), box, ["x"], 0.0)])["overall"]
    assert s["energy_in_box"]["mean"] == pytest.approx((12 / 206 + 12 / 400) / 2)
    assert s["chance"]["mean"] == pytest.approx(12 / 400)


def test_scores_pool_slices_and_bootstrap_over_volumes():
    hit, miss = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)
    hit[1, 1] = 1.0
    miss[6, 6] = 1.0
    box = [(0, 0, 3, 3)]
    # v0: 1 slice, a hit; v1: 9 slices, 3 hits; v2..v5: 2 slices, 1 hit each
    items = [("v0", hit, box, ["a"], 0.0)]
    items += [("v1", hit if i < 3 else miss, box, ["a"], 0.0) for i in range(9)]
    items += [(f"v{k}", m, box, ["a"], 0.0) for k in range(2, 6) for m in (hit, miss)]
    o = score_slices(items, n_resamples=2000, seed=0)["overall"]
    pg = o["pointing_game"]
    # slice-pooled (8 hits / 18 slices), not the mean of the volume rates (0.5 + ...) / 6
    assert pg["mean"] == pytest.approx(8 / 18) and pg["mean"] != pytest.approx((1 + 1 / 3 + 4 * 0.5) / 6)
    assert 0 <= pg["ci95_low"] < pg["mean"] < pg["ci95_high"] <= 1
    assert o["n_volumes"] == 6 and o["n_slices"] == 18
    # the same interval from the helper, resampling volumes (hits, slices)
    lo, hi = ratio_bootstrap_interval(np.array([1, 3, 1, 1, 1, 1]), np.array([1, 9, 2, 2, 2, 2]), 2000, 0)
    assert (pg["ci95_low"], pg["ci95_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # equal rates in every volume: a zero-width interval; one volume: none
    assert ratio_bootstrap_interval(np.array([1, 2]), np.array([2, 4])) == (0.5, 0.5)
    assert all(np.isnan(ratio_bootstrap_interval(np.array([1]), np.array([2]))))


def test_location_prior_is_the_share_of_slices_boxed_at_each_pixel():
    prior = location_prior((8, 8), {("a.h5", 0): [(0, 0, 2, 2)], ("a.h5", 1): [(1, 1, 2, 2), (6, 6, 1, 1)],
                                    ("b.h5", 3): [(0, 0, 1, 1)]})
    assert prior.dtype == np.float32 and prior.shape == (8, 8)
    assert prior[0, 0] == pytest.approx(2 / 3) and prior[1, 1] == pytest.approx(2 / 3)
    assert prior[2, 2] == pytest.approx(1 / 3) and prior[6, 6] == pytest.approx(1 / 3) and prior[5, 5] == 0
    assert location_prior((8, 8), {}) is None


def test_per_label_scores_use_that_labels_boxes():
    heat = np.zeros((16, 16), np.float32)
    heat[2, 2] = 1.0
    s = score_slices([("v", heat, [(0, 0, 4, 4), (10, 10, 4, 4)], ["Meniscus Tear", "Bone- Subchondral edema"], 0.0)])
    assert s["overall"]["pointing_game"]["mean"] == 1.0
    assert s["by_label"]["Meniscus Tear"]["pointing_game"]["mean"] == 1.0
    assert s["by_label"]["Bone- Subchondral edema"]["pointing_game"]["mean"] == 0.0
    assert s["by_label"]["Bone- Subchondral edema"]["chance"]["mean"] == pytest.approx(16 / 256)


def test_boxes_follow_fastmri_plus_flip_and_center_crop():
    import pandas as pd
    # native box rows 100..119, cols 150..159 in a 320x320 frame -> y = 320 - 100 - 20 = 200
    ann = pd.DataFrame({"file": ["file1", "file1", "other"], "slice": [3, 3, 1], "x": [150, 0, 5],
                        "y": [200, 0, 5], "width": [10, 4, 4], "height": [20, 4, 4],
                        "label": ["Meniscus Tear", "far", "x"], "study_level": ["No"] * 3})
    for c in ("slice", "x", "y", "width", "height"):
        ann[c] = ann[c].astype("Int64")
    boxes = slice_boxes(ann, {"file1.h5": (320, 320)}, crop=128)
    # crop offset (320 - 128) // 2 = 96; the second box (rows 316..319) lies outside the crop
    assert boxes == {("file1.h5", 3): [((4, 54, 20, 10), "Meniscus Tear")]}
    assert crop_boxes([(90, 90, 10, 10)], (320, 320), 128) == [(0, 0, 4, 4)]


# --------------------------------------------------------------------------- per-slice maps
def bright_spot_mrnet(threshold: float = 120.0) -> tuple[MRNet, dict]:
    """A hand-set MRNet whose channel 0 fires where the 11x11 local mean exceeds `threshold`
    (0..255 pixel units) and is passed unchanged through the trunk; the logit is that channel's
    pooled value. A slice without bright spots has a zero map; a spot lights up where it is."""
    model = MRNet().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        f = model.features
        f[0].weight[0] = 1.0 / (3 * 11 * 11)
        f[0].bias[0] = -threshold
        f[3].weight[0, 0, 2, 2] = 1.0
        for i in (6, 8, 10):
            f[i].weight[0, 0, 1, 1] = 1.0
        model.classifier.weight[0, 0] = 1.0
    return model, {"image_size": 128, "mean": 0.0, "std": 1.0}


def phantom_volume(spots: dict[int, tuple[int, int, float]], slices: int = 5, size: int = 128) -> np.ndarray:
    """Tissue disc (70) in air (0) with a rim reaching 255 in every slice (so the per-volume
    0..255 scaling is the identity), plus Gaussian spots {slice: (row, col, amplitude)}."""
    yy, xx = np.mgrid[:size, :size]
    rad = np.hypot(yy - size / 2, xx - size / 2) / size
    vol = np.repeat((70.0 * (rad < 0.47))[None], slices, axis=0)
    vol[:, 0, 0] = 255.0
    for k, (r, c, amp) in spots.items():
        vol[k] += amp * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 6.0 ** 2))
    return vol.astype(np.float32)


@pytest.mark.parametrize("layer,size", [("features.10", 256), ("features.3", 96), ("features.0", 64)])
def test_feature_geometry_is_the_receptive_field_centre(layer, size):
    model = MRNet()
    a, b = feature_geometry(model, layer)
    # inputs large enough that the centre cell's receptive field (163 px at features.10) fits; the trunk with ReLUs dropped and max- replaced by average pooling: the input gradient of one
    # cell is then non-zero over its whole receptive field
    upto = int(layer.split(".")[1]) + 1
    linear = torch.nn.Sequential(*[
        torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding) if isinstance(m, torch.nn.MaxPool2d) else m
        for m in model.features[:upto] if not isinstance(m, torch.nn.ReLU)])
    x = torch.zeros(1, 3, size, size, requires_grad=True)
    fmap = linear(x)
    n = fmap.shape[-1] // 2
    fmap[0, :, n, n].sum().backward()
    rows = np.flatnonzero(x.grad[0].abs().sum(dim=(0, 2)).numpy())
    cols = np.flatnonzero(x.grad[0].abs().sum(dim=(0, 1)).numpy())
    assert (rows[0] + rows[-1]) / 2 == pytest.approx(a * n + b)
    assert (cols[0] + cols[-1]) / 2 == pytest.approx(a * n + b)


def test_aligned_upsampling_puts_a_cell_at_its_centre():
    cams = torch.zeros(1, 7, 7)
    cams[0, 1, 5] = 1.0
    up = upsample_aligned(cams, (16.0, 15.0), 128, (256, 256))[0].numpy()
    r, c = np.unravel_index(np.argmax(up), up.shape)
    # input pixel 16 n + 15 of the 128-side model input is crop pixel 2 (16 n + 15) + 0.5
    assert abs(r - (2 * 31 + 0.5)) <= 1 and abs(c - (2 * 95 + 0.5)) <= 1
    assert up.max() == pytest.approx(1.0, abs=0.05)


def test_captum_gradcam_matches_the_definition():
    torch.manual_seed(0)
    model = explainable(MRNet())
    torch.nn.init.normal_(model.classifier.weight)
    x = torch.randn(3, 1, 96, 96)
    cams = slice_cams(model, x, "features.10")
    a = model.features[:11](x.expand(-1, 3, -1, -1).requires_grad_(True))
    logits = model.classifier(model.features[11:](a).mean(dim=(2, 3)))
    grad = torch.autograd.grad(logits.sum(), a)[0]
    ref = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    assert cams.shape == (3, 5, 5)
    torch.testing.assert_close(cams, ref.detach(), rtol=1e-4, atol=1e-6)


def test_gradcam_method_is_the_previous_implementation_bit_for_bit():
    """`gradcam` (the default) runs exactly the code it ran before `gradcam.method` existed."""
    from captum.attr import LayerGradCam
    torch.manual_seed(1)
    model = explainable(MRNet())
    torch.nn.init.normal_(model.classifier.weight)
    x = torch.randn(5, 1, 96, 96)
    cam = LayerGradCam(model.slice_logits, model.features[10])     # the previous slice_cams, batch 2
    old = torch.cat([cam.attribute(x[i:i + 2].clone().requires_grad_(True), target=0,
                                   relu_attributions=True).detach()[:, 0] for i in range(0, 5, 2)])
    assert torch.equal(slice_cams(model, x, "features.10", batch=2), old)
    assert torch.equal(slice_cams(model, x, "features.10", batch=2, method="gradcam"), old)
    assert GradCAMSpec().method == "gradcam"


@pytest.mark.parametrize("layer", ["features.10", "features.6"])
def test_hirescam_and_layercam_match_their_definitions_and_differ(layer):
    torch.manual_seed(0)
    model = explainable(MRNet())
    torch.nn.init.normal_(model.classifier.weight)
    x = torch.randn(3, 1, 96, 96)
    upto = int(layer.split(".")[1]) + 1
    a = model.features[:upto](x.expand(-1, 3, -1, -1).requires_grad_(True))
    logits = model.classifier(model.features[upto:](a).mean(dim=(2, 3)))
    g = torch.autograd.grad(logits.sum(), a)[0]
    a = a.detach()
    refs = {"gradcam": torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)),
            "hirescam": torch.relu((g * a).sum(1)),
            "layercam": torch.relu((torch.relu(g) * a).sum(1))}
    maps = {m: slice_cams(model, x, layer, method=m) for m in METHODS}
    for m in METHODS:
        torch.testing.assert_close(maps[m], refs[m], rtol=1e-4, atol=1e-6)
        assert maps[m].min() >= 0 and maps[m].max() > 0, m
    for m1, m2 in (("gradcam", "hirescam"), ("gradcam", "layercam"), ("hirescam", "layercam")):
        assert not torch.allclose(maps[m1], maps[m2], rtol=1e-2, atol=1e-4), (m1, m2)
    with pytest.raises(BadValue, match="method"):
        slice_cams(model, x, layer, method="gradcam++")


def test_source_mismatch_rule(tmp_path):
    import h5py

    from pipeline.roi.gradcam import SYNTHETIC_MARKER, source_mismatch

    def raw(name: str, header: bytes) -> Path:
        (tmp_path / name / "val").mkdir(parents=True)
        with h5py.File(tmp_path / name / "val" / "file1.h5", "w") as f:
            f.create_dataset("ismrmrd_header", data=np.bytes_(header))
        return tmp_path / name

    synthetic = raw("synthetic", b"<ismrmrdHeader>" + SYNTHETIC_MARKER + b"</ismrmrdHeader>")
    real = raw("real", b"<ismrmrdHeader><institutionName>NYU</institutionName></ismrmrdHeader>")
    assert source_mismatch({"source": "synthetic"}, synthetic) is None
    assert source_mismatch({"source": "kneemri"}, real) is None
    line = source_mismatch({"source": "synthetic"}, real)
    assert "trained on synthetic exams" in line and "real fastMRI files" in line and "\n" not in line
    line = source_mismatch({"source": "mrnet"}, synthetic)
    assert "real exams (mrnet)" in line and "synthetic fastMRI files" in line
    # nothing to tell from: no source recorded, raw files absent
    assert source_mismatch({}, real) is None
    assert source_mismatch({"source": "synthetic"}, tmp_path / "absent") is None
    assert source_mismatch({"source": "synthetic"}, None) is None


def test_every_lesion_slice_gets_a_map_at_its_lesion():
    model, config = bright_spot_mrnet()
    model = explainable(model)
    # slice 1: strong spot; slice 3: weaker spot elsewhere, which loses the max over slices
    vol = phantom_volume({1: (40, 50, 180.0), 3: (85, 30, 120.0)})
    heat = volume_heatmaps(model, config, vol, GradCAMSpec(layer="features.10", smooth_sigma=1.0))
    assert heat.shape == vol.shape and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    for k, (r, c) in ((1, (40, 50)), (3, (85, 30))):
        assert heat[k].max() > 0.2, k
        peak = np.unravel_index(int(np.argmax(heat[k])), heat[k].shape)
        assert abs(peak[0] - r) <= 16 and abs(peak[1] - c) <= 16, (k, peak)  # one feature cell
        assert pointing_hit(heat[k], [(r - 12, c - 12, 24, 24)])
    assert heat[3].max() < heat[1].max()                 # the weaker lesion stays weaker
    for k in (0, 2, 4):                                  # nothing suspicious: nothing on the map
        assert heat[k].max() == 0.0

    # the exam-level logit (max over slices) gives the weaker lesion slice no gradient at all
    x = prepare_volume(vol, config["image_size"], config["mean"], config["std"])
    acts = {}
    hook = model.features[10].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logit = model(x.requires_grad_(True))
    hook.remove()
    grad = torch.autograd.grad(logit.sum(), acts["a"])[0]
    assert grad[1].abs().sum() > 0 and grad[3].abs().sum() == 0


# --------------------------------------------------------------------------- store and stage
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny synthetic fastMRI dataset (recon 64, lesions in every test volume) and its slices store."""
    from pipeline.synthetic.dataset import SyntheticSpec, synthesize
    root = tmp_path_factory.mktemp("gradcam_data")
    spec = SyntheticSpec(volumes={"train": 1, "val": 1, "test": 2}, slices=4, recon_size=64, coils=1,
                         lesion_rate=1.0, exams={"train": 2, "valid": 2}, exam_slices=2)
    synthesize(root / "synthetic", spec, seed=0)
    params = write_params(root / "params.yaml", data={"raw_dir": str(root / "synthetic/fastmri"), "crop": 64,
                                                      "annotations": str(root / "synthetic/annotations.csv")})
    res = run_cli("prepare", "--raw-dir", root / "synthetic/fastmri", "--out", root / "slices.zarr",
                  "--params", params)
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A model file as train-mrnet writes it (the hand-set detector: no training needed here)."""
    path = tmp_path_factory.mktemp("gradcam_model") / "mrnet.pt"
    model, config = bright_spot_mrnet(threshold=60.0)
    save_mrnet(path, model, config)
    return path


def _gradcam(root: Path, model: Path, out: Path, *extra: str, method: str = "gradcam"):
    params = write_params(out / "params.yaml", data={"annotations": str(root / "synthetic/annotations.csv")},
                          gradcam={"n_overlays": 3, "method": method})
    return run_cli("gradcam", "--slices", root / "slices.zarr", "--raw-dir", root / "synthetic/fastmri", "--model", model,
                   "--annotations", root / "synthetic/annotations.csv", "--out", out / "heatmaps.zarr",
                   "--metrics", out / "gradcam.json", "--detail", out / "gradcam_detail.json",
                   "--overlays", out / "overlays", "--params", params, *extra)


def test_gradcam_stage_writes_aligned_store_scores_and_overlays(tiny_data, model_file, tmp_path):
    res = _gradcam(tiny_data, model_file, tmp_path)
    assert res.exit_code == 0, res.output
    slices = zarr.open_group(str(tiny_data / "slices.zarr"), mode="r")
    for split in ("train", "val", "test"):
        h = split_group(open_store(tmp_path / "heatmaps.zarr", kind="heatmaps"), split, "heatmaps")
        check_aligned(slices[split], h, "heatmaps")
        maps = h["heatmap"][:]
        assert maps.shape == slices[split]["target"].shape and maps.dtype == np.float32
        assert h["heatmap"].chunks == (1, 64, 64)
        np.testing.assert_array_equal(h["slice"][:], slices[split]["slice"][:])
        names = as_str(h["volume"][:])
        for name in set(names):  # per volume in [0, 1], max 1 (or all 0 where nothing fires)
            sel = names == name
            assert maps[sel].min() >= 0 and maps[sel].max() in (0.0, pytest.approx(1.0))
        assert maps.max() == pytest.approx(1.0)
    report = json.loads((tmp_path / "gradcam.json").read_text())
    detail = json.loads((tmp_path / "gradcam_detail.json").read_text())
    test = report["test"]
    # scored on every annotated test slice (counted from the CSV), with the maps the store holds
    ann = pd.read_csv(tiny_data / "synthetic/annotations.csv")
    test_names = set(as_str(slices["test"]["volume"][:]))
    annotated = sorted({(f"{r.file}.h5", int(r.slice)) for r in ann.itertuples() if f"{r.file}.h5" in test_names})
    assert detail["overall"]["n_slices"] == len(annotated) > 0
    boxes = without_labels(split_boxes(tiny_data / "synthetic/annotations.csv", tiny_data / "slices.zarr", "test", 64))
    assert sorted(boxes) == annotated
    h = open_store(tmp_path / "heatmaps.zarr", kind="heatmaps")["test"]
    row = {(str(v), int(k)): i for i, (v, k) in enumerate(zip(as_str(h["volume"][:]), h["slice"][:]))}
    maps = [h["heatmap"][row[key]] for key in annotated]
    assert test["pointing_game"] == pytest.approx(np.mean([pointing_hit(m, boxes[k]) for m, k in zip(maps, annotated)]))
    assert test["energy_in_box"] == pytest.approx(np.mean([slice_scores(m, boxes[k], 0)["energy_in_box"] for m, k in zip(maps, annotated)]))
    # 15 px in the 320 frame is 3 px in the tiny data's 64 frame
    assert test["pointing_game_15px"] == pytest.approx(
        np.mean([pointing_hit(m, boxes[k], 3.0) for m, k in zip(maps, annotated)]))
    # tracked: quality only (what `dvc metrics diff` shows); counts, chance and settings in the detail
    assert set(report) == {"test"}
    assert set(test) == {"pointing_game", "pointing_game_15px", "energy_in_box", "location_prior"}
    assert set(test["location_prior"]) == {"pointing_game_15px"}
    assert test["location_prior"]["pointing_game_15px"] == detail["location_prior"]["pointing_game_15px"]["mean"]
    assert detail["slices"] == {"train": 4, "val": 4, "test": 8} and detail["method"] == "gradcam"
    # the detail: every number with its interval over volumes, overall and per label
    assert detail["tolerance_px"] == [3.0] and detail["split"] == "test"
    o = detail["overall"]
    assert o["n_volumes"] == 2
    for q in ("pointing_game", "pointing_game_15px", "energy_in_box", "chance", "chance_15px"):
        assert set(o[q]) == {"mean", "ci95_low", "ci95_high"}
        assert o[q]["ci95_low"] is None or o[q]["ci95_low"] <= o[q]["mean"] <= o[q]["ci95_high"]
    assert o["pointing_game_15px"]["mean"] == test["pointing_game_15px"]
    test_labels = {r.label for r in ann.itertuples() if f"{r.file}.h5" in test_names}
    assert set(detail["by_label"]) == test_labels
    assert sum(v["n_slices"] for v in detail["by_label"].values()) >= o["n_slices"]
    assert "warning" not in res.stderr         # a hand-built model records no source: nothing to tell
    # the location prior: the train boxes' mean mask, scored on the same slices
    train_boxes = without_labels(split_boxes(tiny_data / "synthetic/annotations.csv", tiny_data / "slices.zarr", "train", 64))
    prior = location_prior((64, 64), train_boxes)
    lp = detail["location_prior"]
    assert lp["n_slices"] == o["n_slices"]
    assert lp["energy_in_box"]["mean"] == pytest.approx(
        np.mean([slice_scores(prior, boxes[k], 0)["energy_in_box"] for k in annotated]))
    assert lp["pointing_game_15px"]["mean"] == pytest.approx(np.mean([pointing_hit(prior, boxes[k], 3.0) for k in annotated]))
    # gradcam.n_overlays = 3 PNGs, each of an annotated test slice
    pngs = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(pngs) == min(3, len(annotated)) and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert {p.name for p in pngs} <= {f"{Path(v).stem}_s{k:03d}.png" for v, k in annotated}
    assert not list(tmp_path.glob(".tmp-*"))
    # split by MRNet's call: the hand-set model records no threshold (0.5), and its logit is a pooled
    # ReLU output (>= 0), so it calls every test volume abnormal and the normal group is empty (null scores)
    assert detail["calls"] == {"threshold": 0.5, "n_volumes_called_abnormal": 2, "n_volumes": 2}
    ab, no = detail["by_call"]["abnormal"], detail["by_call"]["normal"]
    assert ab["n_slices"] + no["n_slices"] == o["n_slices"] and ab["n_volumes"] + no["n_volumes"] == o["n_volumes"]
    assert ab["pointing_game_15px"] == o["pointing_game_15px"] and ab["energy_in_box"] == o["energy_in_box"]
    assert no["n_slices"] == 0 and no["pointing_game_15px"]["mean"] is None
    lp = detail["location_prior_by_call"]
    assert lp["abnormal"]["pointing_game_15px"] == detail["location_prior"]["pointing_game_15px"]
    assert lp["normal"]["n_slices"] == 0
    assert "on the 2 annotated volumes MRNet calls abnormal pointing game at 15 px" in res.output
    # split by each volume's contrast, as its fastMRI file names it
    acq = {v: h5py.File(tiny_data / "synthetic/fastmri/test" / v).attrs["acquisition"] for v in test_names}
    by_acq, prior_by_acq = detail["by_acquisition"], detail["location_prior_by_acquisition"]
    assert list(by_acq) == list(prior_by_acq) == sorted(set(acq.values()))
    for a, group in by_acq.items():
        mine = [k for k in annotated if acq[k[0]] == a]
        assert (group["n_volumes"], group["n_slices"]) == (len({v for v, _ in mine}), len(mine))
        assert group["pointing_game_15px"]["mean"] == pytest.approx(
            np.mean([pointing_hit(maps[annotated.index(k)], boxes[k], 3.0) for k in mine]))
    assert sum(g["n_slices"] for g in by_acq.values()) == o["n_slices"]
    assert "gradcam: by contrast, pointing game at 15 px" in res.output


def test_gradcam_stage_calls_volumes_at_the_models_threshold(tiny_data, tmp_path):
    """The threshold comes from the model config (MRNet's tune choice): set between the two test
    volumes' probabilities, it calls one abnormal, and that volume's annotated slices (and only they)
    are scored in the abnormal group."""
    model, config = bright_spot_mrnet(threshold=60.0)
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)           # logits of order 1: probabilities not saturated at 1
    probs = volume_calls(model, config, tiny_data / "slices.zarr", "test")
    (low, lo), (high, hi) = sorted(probs.items(), key=lambda kv: kv[1])
    assert 0.5 < lo < hi - 0.01 < 1.0
    threshold = (lo + hi) / 2
    save_mrnet(tmp_path / "mrnet.pt", model, {**config, "threshold": threshold})
    res = _gradcam(tiny_data, tmp_path / "mrnet.pt", tmp_path)
    assert res.exit_code == 0, res.output
    detail = json.loads((tmp_path / "gradcam_detail.json").read_text())
    assert detail["calls"] == {"threshold": pytest.approx(threshold), "n_volumes_called_abnormal": 1, "n_volumes": 2}
    ann = pd.read_csv(tiny_data / "synthetic/annotations.csv")
    n_annotated = {v: len({int(r.slice) for r in ann.itertuples() if f"{r.file}.h5" == v}) for v in (low, high)}
    ab, no = detail["by_call"]["abnormal"], detail["by_call"]["normal"]
    assert (ab["n_volumes"], ab["n_slices"]) == (1, n_annotated[high])
    assert (no["n_volumes"], no["n_slices"]) == (1, n_annotated[low])
    assert "on the 1 annotated volumes MRNet calls abnormal" in res.output


def _outputs(d: Path):
    return [d / "heatmaps.zarr", d / "gradcam.json", d / "gradcam_detail.json", d / "overlays"]


def test_gradcam_stage_bad_inputs(tiny_data, model_file, tmp_path):
    # missing / corrupt model
    for name, content in (("missing.pt", None), ("corrupt.pt", model_file.read_bytes()[:3000])):
        d = tmp_path / name
        d.mkdir()
        if content is not None:
            (d / name).write_bytes(content)
        res = _gradcam(tiny_data, d / name, d)
        assert res.exit_code == 1
        assert res.stderr.strip().count("\n") == 0 and name in res.stderr
        assert not any(p.exists() for p in _outputs(d)) and not list(d.glob(".tmp-*"))

    # a slices store whose targets have the wrong rank, and one with an empty split
    for case in ("rank", "empty"):
        d = tmp_path / case
        d.mkdir()
        bad = d / "data"
        (bad / "synthetic").mkdir(parents=True)
        (bad / "synthetic/annotations.csv").write_bytes((tiny_data / "synthetic/annotations.csv").read_bytes())
        root = zarr.open_group(str(bad / "slices.zarr"), mode="w")
        root.attrs.update(dict(zarr.open_group(str(tiny_data / "slices.zarr"), mode="r").attrs))
        for split in ("train", "val", "test"):
            g = root.create_group(split)
            n = 0 if (case == "empty" and split == "val") else 2
            g.create_array("volume", shape=(n,), dtype=str, fill_value="")
            if n:
                g["volume"][:] = np.array(["file1.h5"] * n)
            g.create_array("slice", data=np.arange(n, dtype=np.int32))
            shape = (n, 64) if case == "rank" else (n, 64, 64)
            g.create_array("target", data=np.ones(shape, np.float32))
        finish_store(root)
        res = _gradcam(bad, model_file, d)
        assert res.exit_code == 1, res.output
        expected = "target must have rank 3" if case == "rank" else "split 'val' is empty"
        assert expected in res.stderr and res.stderr.strip().count("\n") == 0
        assert not any(p.exists() for p in _outputs(d)) and not list(d.glob(".tmp-*"))

    # fastMRI files that are not there (the contrast of each scored volume comes from its file)
    d = tmp_path / "raw"
    d.mkdir()
    params = write_params(d / "params.yaml", data={"annotations": str(tiny_data / "synthetic/annotations.csv")})
    res = run_cli("gradcam", "--slices", tiny_data / "slices.zarr", "--raw-dir", d / "nowhere", "--model", model_file,
                  "--annotations", tiny_data / "synthetic/annotations.csv", "--out", d / "heatmaps.zarr",
                  "--metrics", d / "gradcam.json", "--overlays", d / "overlays", "--params", params)
    assert res.exit_code == 1 and "nowhere/test: split directory is missing" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and not any(p.exists() for p in _outputs(d))

    # a layer that is not in the trunk
    d = tmp_path / "layer"
    d.mkdir()
    params = write_params(d / "params.yaml", gradcam={"layer": "classifier"})
    res = run_cli("gradcam", "--slices", tiny_data / "slices.zarr", "--model", model_file,
                  "--annotations", tiny_data / "synthetic/annotations.csv", "--out", d / "heatmaps.zarr",
                  "--metrics", d / "gradcam.json", "--overlays", d / "overlays", "--params", params)
    assert res.exit_code == 1 and "gradcam.layer" in res.stderr


def test_gradcam_warns_once_when_model_and_slices_differ_in_source(tiny_data, tmp_path):
    """An MRNet trained on real exams (source mrnet) explaining the synthetic slices: one warning line."""
    model, config = bright_spot_mrnet(threshold=60.0)
    for source, warned in (("mrnet", 1), ("synthetic", 0)):
        d = tmp_path / source
        d.mkdir()
        save_mrnet(d / "mrnet.pt", model, {**config, "source": source})
        res = _gradcam(tiny_data, d / "mrnet.pt", d, method="layercam")
        assert res.exit_code == 0, res.output
        assert res.stderr.count("warning:") == warned, res.stderr
        if warned:
            line, = [ln for ln in res.stderr.splitlines() if "warning" in ln]
            assert "real exams (mrnet)" in line and "synthetic fastMRI files" in line
    # the method reaches the maps and the reports
    assert json.loads((d / "gradcam_detail.json").read_text())["method"] == "layercam"
    assert open_store(d / "heatmaps.zarr", kind="heatmaps").attrs["method"] == "layercam"


def test_gradcam_methods_benchmark_on_val(tiny_data, model_file, tmp_path, capsys):
    """benchmarks/gradcam_methods.py: every method x layer scored on val, as the stage scores test."""
    from benchmarks.gradcam_methods import main
    from pipeline.roi.scores import frame_tolerances
    from pipeline.roi.boxes import check_boxes

    out = tmp_path / "bench.json"
    params = write_params(tmp_path / "params.yaml", data={"annotations": str(tiny_data / "synthetic/annotations.csv")})
    assert main(["--slices", str(tiny_data / "slices.zarr"), "--model", str(model_file), "--params", str(params),
                 "--layers", "features.6,features.10", "--resamples", "1000", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "val"
    assert [(r["method"], r["layer"]) for r in result["results"]] == \
        [(m, lay) for m in METHODS for lay in ("features.6", "features.10")]
    # gradcam at features.10: the numbers of score_slices on the maps the stage would write for val
    ann = tiny_data / "synthetic/annotations.csv"
    val_boxes = split_boxes(ann, tiny_data / "slices.zarr", "val", 64)
    assert val_boxes, "the tiny val split needs annotated slices"
    model, config = bright_spot_mrnet(threshold=60.0)
    model = explainable(model)
    g = open_store(tiny_data / "slices.zarr", kind="slices")["val"]
    names, idx = as_str(g["volume"][:]), g["slice"][:]
    tol = frame_tolerances(check_boxes(ann, tiny_data / "slices.zarr").frames)
    items = []
    for name in sorted(set(names)):
        sel = np.flatnonzero(names == name)
        heat = volume_heatmaps(model, config, g["target"][sel[0]:sel[-1] + 1], GradCAMSpec(layer="features.10"))
        for j, r in enumerate(sel):
            found = val_boxes.get((name, int(idx[r])))
            if found:
                items.append((name, heat[j], [b for b, _ in found], [lab for _, lab in found], tol[name]))
    expected = score_slices(items, n_resamples=1000)["overall"]
    got, = [r["overall"] for r in result["results"] if (r["method"], r["layer"]) == ("gradcam", "features.10")]
    assert got["n_slices"] == len(val_boxes) == expected["n_slices"]
    for q in ("pointing_game", "pointing_game_15px", "energy_in_box", "chance"):
        assert got[q]["mean"] == pytest.approx(expected[q]["mean"])
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(METHODS) * 2 + 1 and "| HiResCAM | `features.6` |" in table


def _store(path: Path, kind_rows: dict[str, np.ndarray], names: list[str]) -> Path:
    """A finished one-split ('test') store at `path`: `volume` (`names`), `slice` (0.. per volume) and
    the image arrays of `kind_rows` ({name: (N, C, C)})."""
    root = zarr.open_group(str(path), mode="w")
    g = root.create_group("test")
    g.create_array("volume", shape=(len(names),), dtype=str, fill_value="")
    g["volume"][:] = np.array(names)
    every_chunk = {"write_empty_chunks": True}      # a slice index of 0 is an all-zero chunk
    g.create_array("slice", data=np.array([names[:i].count(v) for i, v in enumerate(names)], np.int32),
                   config=every_chunk)
    for name, rows in kind_rows.items():
        g.create_array(name, data=np.asarray(rows, np.float32), config=every_chunk)
    finish_store(root)
    return path


def test_scores_split_by_acquisition(tmp_path):
    """The same two volumes (the map of `a` in its box, that of `b` far away) of two contrasts: each
    contrast scored apart, groups in sorted order, maps and prior alike; one contrast: one group."""
    heat = np.zeros((2, 16, 16), np.float32)
    heat[0, 3, 3] = 1.0
    heat[1, 14, 14] = 1.0
    names = ["a.h5", "b.h5"]
    slices = _store(tmp_path / "slices.zarr", {"target": np.ones((2, 16, 16))}, names)
    heatmaps = _store(tmp_path / "heatmaps.zarr", {"heatmap": heat}, names)
    boxes = {(v, 0): [((2, 2, 4, 4), "Meniscus Tear")] for v in names}
    prior = np.zeros((16, 16), np.float32)
    prior[14, 14] = 1.0                           # where b's map peaks: misses both boxes

    def score(acquisitions, out):
        return score_heatmaps(heatmaps, slices, "test", boxes, 0, tmp_path / out, {v: 1.0 for v in names},
                              n_resamples=200, prior=prior, acquisitions=acquisitions)

    scores = score({"a.h5": "CORPDFS_FBK", "b.h5": "CORPD_FBK"}, "ov1")
    assert list(scores["by_acquisition"]) == ["CORPDFS_FBK", "CORPD_FBK"] and "by_call" not in scores
    fs, pd_ = scores["by_acquisition"]["CORPDFS_FBK"], scores["by_acquisition"]["CORPD_FBK"]
    assert (fs["n_volumes"], fs["n_slices"], pd_["n_volumes"], pd_["n_slices"]) == (1, 1, 1, 1)
    for q in ("pointing_game", "pointing_game_15px", "energy_in_box"):
        assert fs[q]["mean"] == 1.0 and pd_[q]["mean"] == 0.0, q
    prior_groups = scores["location_prior_by_acquisition"]
    assert prior_groups["CORPDFS_FBK"]["pointing_game"]["mean"] == prior_groups["CORPD_FBK"]["pointing_game"]["mean"] == 0.0
    one = score({"a.h5": "CORPD_FBK", "b.h5": "CORPD_FBK"}, "ov2")["by_acquisition"]
    assert list(one) == ["CORPD_FBK"] and one["CORPD_FBK"]["n_slices"] == 2
    assert one["CORPD_FBK"]["pointing_game"]["mean"] == 0.5
    with pytest.raises(KeyError):                  # a scored volume without a contrast is a bug
        scores_by_group([("c.h5", {})], {"a.h5": "CORPD_FBK"})


def test_split_acquisitions_reads_the_files_attribute(tmp_path):
    """{file: acquisition} from the split's files (test carved out of val too); a file without the
    attribute is `unknown`; a name the split has no file for is one InputError naming it."""
    from pipeline.io.fastmri import UNKNOWN_ACQUISITION, list_split, split_acquisitions

    for split, names in (("train", ["t0.h5"]), ("val", [f"v{i}.h5" for i in range(6)])):
        (tmp_path / split).mkdir()
        for i, name in enumerate(names):
            with h5py.File(tmp_path / split / name, "w") as f:
                f.attrs["patient_id"] = f"p{split}{i}"
                if name != "v5.h5":
                    f.attrs["acquisition"] = "CORPD_FBK" if i % 2 else "CORPDFS_FBK"
    assert split_acquisitions(tmp_path, "train", ["t0.h5"]) == {"t0.h5": "CORPDFS_FBK"}
    val = split_acquisitions(tmp_path, "val", ["v0.h5", "v1.h5", "v5.h5"])
    assert val == {"v0.h5": "CORPDFS_FBK", "v1.h5": "CORPD_FBK", "v5.h5": UNKNOWN_ACQUISITION}
    expected = {f"v{i}.h5": "CORPD_FBK" if i % 2 else "CORPDFS_FBK" for i in range(5)} | {"v5.h5": UNKNOWN_ACQUISITION}
    carved = [f.name for f in list_split(tmp_path, "test", test_from_val=0.5)]
    assert split_acquisitions(tmp_path, "test", carved, test_from_val=0.5) == {v: expected[v] for v in carved}
    kept = next(v for v in expected if v not in carved)          # in val, not carved into test
    with pytest.raises(InputError, match=f"{kept}: no such fastMRI file in the test split"):
        split_acquisitions(tmp_path, "test", [kept], test_from_val=0.5)


def test_scores_split_by_the_classifiers_call(tmp_path):
    """Two volumes, one slice each with the same box: the map of `a` peaks in it, that of `b` far
    away. Called {a: abnormal, b: normal}, the abnormal group scores 1 and the normal one 0."""
    heat = np.zeros((2, 16, 16), np.float32)
    heat[0, 3, 3] = 1.0                           # inside the box (rows and cols 2..5)
    heat[1, 14, 14] = 1.0                         # 12 px away
    names = ["a.h5", "b.h5"]
    slices = _store(tmp_path / "slices.zarr", {"target": np.ones((2, 16, 16))}, names)
    heatmaps = _store(tmp_path / "heatmaps.zarr", {"heatmap": heat}, names)
    boxes = {(v, 0): [((2, 2, 4, 4), "Meniscus Tear")] for v in names}
    tolerances = {v: 1.0 for v in names}

    def score(called, out):
        return score_heatmaps(heatmaps, slices, "test", boxes, 0, tmp_path / out, tolerances,
                              n_resamples=200, called=called)

    scores = score({"a.h5": True, "b.h5": False}, "ov1")
    assert scores["overall"]["pointing_game_15px"]["mean"] == 0.5
    ab, no = scores["by_call"]["abnormal"], scores["by_call"]["normal"]
    assert (ab["n_volumes"], ab["n_slices"], no["n_volumes"], no["n_slices"]) == (1, 1, 1, 1)
    for q in ("pointing_game", "pointing_game_15px", "energy_in_box"):
        assert ab[q]["mean"] == 1.0 and no[q]["mean"] == 0.0, q
    assert ab["chance"]["mean"] == no["chance"]["mean"] == pytest.approx(16 / 256)
    assert "location_prior_by_call" not in scores          # no prior given
    # the prior on the same groups: one map for every slice, peaking inside the shared box, hits both
    prior = np.zeros((16, 16), np.float32)
    prior[3, 3] = 1.0
    with_prior = score_heatmaps(heatmaps, slices, "test", boxes, 0, tmp_path / "ov5", tolerances, n_resamples=200,
                                called={"a.h5": True, "b.h5": False}, prior=prior)["location_prior_by_call"]
    assert with_prior["abnormal"]["pointing_game"]["mean"] == with_prior["normal"]["pointing_game"]["mean"] == 1.0
    assert (with_prior["abnormal"]["n_volumes"], with_prior["normal"]["n_volumes"]) == (1, 1)
    flipped = score({"a.h5": False, "b.h5": True}, "ov2")["by_call"]
    assert flipped["abnormal"]["pointing_game"]["mean"] == 0.0 and flipped["normal"]["pointing_game"]["mean"] == 1.0
    assert "by_call" not in score(None, "ov3")
    # every volume called abnormal: the normal group is empty, NaN scores that the JSON writes as null
    everything = score({"a.h5": True, "b.h5": True}, "ov4")["by_call"]
    assert everything["abnormal"]["n_slices"] == 2 and everything["abnormal"]["pointing_game"]["mean"] == 0.5
    write_json(tmp_path / "detail.json", {"by_call": everything})
    normal = json.loads((tmp_path / "detail.json").read_text())["by_call"]["normal"]
    assert normal["n_slices"] == normal["n_volumes"] == 0
    assert normal["pointing_game_15px"] == {"mean": None, "ci95_low": None, "ci95_high": None}
    with pytest.raises(KeyError):                  # a scored volume the calls do not cover is a bug, not "normal"
        scores_by_call([("c.h5", {})], {"a.h5": True})


def test_volume_calls_are_the_classifiers_probabilities(tmp_path):
    """Per volume of the split, sigmoid of the exam logit: a volume with a bright spot is called
    abnormal, a blank one gets the bias alone (the hand-set detector's pooled channel is 0 there)."""
    model, config = bright_spot_mrnet()
    with torch.no_grad():
        model.classifier.bias.fill_(-2.0)
        model.classifier.weight.mul_(0.1)
    blank, spot = phantom_volume({}, slices=3), phantom_volume({1: (40, 50, 180.0)}, slices=3)
    names = ["blank.h5"] * 3 + ["spot.h5"] * 3 + ["blank2.h5"] * 3
    path = _store(tmp_path / "slices.zarr", {"target": np.concatenate([blank, spot, blank])}, names)
    calls = volume_calls(model, config, path, "test")
    assert list(calls) == ["blank.h5", "spot.h5", "blank2.h5"]
    assert calls["blank.h5"] == calls["blank2.h5"] == pytest.approx(1 / (1 + np.exp(2.0)))
    assert calls["spot.h5"] > 0.5
    assert calls["spot.h5"] == pytest.approx(1 / (1 + np.exp(-exam_logit(model, spot, config))))


def test_overlay_marks_the_peak_and_the_tolerance(tmp_path):
    """The overlay's maximum marker follows the pointing game at 0 and at the tolerance; the circle
    of the tolerance changes the picture."""
    from pipeline.figures import overlays as fg

    heat = np.zeros((64, 64), np.float32)
    heat[20, 30] = 1.0                                   # 3 columns right of the box (cols 22..27)
    box = [(18, 22, 5, 6)]
    assert fg.peak_marker(heat, box, 0.0) == ("red", fg.PEAK_OUT_OF_BOX)
    assert fg.peak_marker(heat, box, 2.9) == ("red", fg.PEAK_OUT_OF_BOX)
    assert fg.peak_marker(heat, box, 3.0) == ("orange", fg.PEAK_NEAR_BOX)
    assert fg.peak_marker(heat, [(18, 22, 5, 9)], 3.0) == ("white", fg.PEAK_IN_BOX)
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    pngs = []
    for tol in (0.0, 3.0):
        fg.overlay_png(tmp_path / f"t{tol}.png", img, heat, box, ["Meniscus Tear"], "t", tol=tol)
        pngs.append((tmp_path / f"t{tol}.png").read_bytes())
    assert pngs[0][:4] == b"\x89PNG" and pngs[0] != pngs[1]


def test_occlusion_replaces_the_boxes_by_the_unboxed_slices_mean_and_the_control_moves_them():
    """benchmarks/mrnet_evidence.occluded: the padded box takes the mean of the slices without boxes;
    nothing else changes; the control region has the same area, away from the box."""
    from benchmarks.mrnet_evidence import PAD, SHIFT, occluded

    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 64, 64)).astype(np.float32)
    box = (20, 24, 6, 8)
    out = occluded(vol, {1: [box]})
    r0, c0, h, w = box[0] - PAD, box[1] - PAD, box[2] + 2 * PAD, box[3] + 2 * PAD
    reference = vol[[0, 2, 3]].mean(axis=0)
    np.testing.assert_array_equal(out[1, r0:r0 + h, c0:c0 + w], reference[r0:r0 + h, c0:c0 + w])
    changed = out != vol
    assert changed.sum() == h * w and not changed[[0, 2, 3]].any()
    control = occluded(vol, {1: [box]}, np.random.default_rng(1))
    moved = np.argwhere(control[1] != vol[1])
    assert len(moved) == h * w
    offset = moved.min(axis=0) - (r0, c0)
    assert all(SHIFT[0] <= abs(d) <= SHIFT[1] for d in offset)
    np.testing.assert_array_equal(control[1, r0:r0 + h, c0:c0 + w], vol[1, r0:r0 + h, c0:c0 + w])


def test_mrnet_evidence_benchmark_splits_by_the_call(tiny_data, model_file, tmp_path, capsys):
    """benchmarks/mrnet_evidence.py on the tiny val split: every boxed volume in one group by its
    call, the groups' maps scored like gradcam_methods scores them, the logit changes recorded."""
    from benchmarks.mrnet_evidence import main

    out = tmp_path / "evidence.json"
    params = write_params(tmp_path / "params.yaml", data={"annotations": str(tiny_data / "synthetic/annotations.csv")},
                          gradcam={"layer": "features.10"})
    assert main(["--slices", str(tiny_data / "slices.zarr"), "--model", str(model_file), "--params", str(params),
                 "--resamples", "500", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    val_boxes = split_boxes(tiny_data / "synthetic/annotations.csv", tiny_data / "slices.zarr", "val", 64)
    boxed = sorted({name for name, _ in val_boxes})
    assert [v["volume"] for v in result["volumes"]] == boxed
    groups = result["groups"]
    for pair in (("called_abnormal", "called_normal"), ("confident", "not_confident")):   # two partitions
        assert sum(groups[g]["n_volumes"] for g in pair) == len(boxed)
        assert sum((groups[g]["maps"] or {}).get("n_slices", 0) for g in pair) == len(val_boxes)
        assert sum((groups[g]["location_prior"] or {}).get("n_slices", 0) for g in pair) == len(val_boxes)
    confident = {v["volume"] for v in result["volumes"] if v["logit"] > result["confident_logit"]}
    assert groups["confident"]["n_volumes"] == len(confident)
    model, config = bright_spot_mrnet(threshold=60.0)
    v = result["volumes"][0]
    assert v["called_abnormal"] == (1 / (1 + np.exp(-v["logit"])) >= config.get("threshold", 0.5))
    assert all(np.isfinite(x["change_boxes_occluded"]) and np.isfinite(x["change_elsewhere_occluded"])
               for x in result["volumes"])
    assert "called_abnormal:" in capsys.readouterr().out
