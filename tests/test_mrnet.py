"""MRNet: architecture, weights files, classifier data sources, training, the train-mrnet stage."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.io.classifier import list_exams, load_pickled_array
from pipeline.models.mrnet import MRNet, exam_logit, load_mrnet, load_pretrained_features, prepare_volume, save_mrnet, to_pixels
from pipeline.models.torch_files import count_parameters
from pipeline.training.mrnet import (MRNetTrainConfig, binary_metrics, roc_auc, train_mrnet, tune_split,
                                     youden_threshold)
from tests.helpers import run_cli, write_params

# torchvision.models.alexnet().features: (name, shape) of every parameter
ALEXNET_FEATURES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
}
ALEXNET_HEAD = {"classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
                "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
                "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}


def easy_exams(root: Path, n_train: int = 24, n_valid: int = 12, slices: int = 4, size: int = 64,
               seed: int = 0) -> dict:
    """MRNet-v1.0 layout exams that are easy to learn: abnormal ones have one bright blob in one
    slice. Returns {(split, exam id): (slice, row, col)} of the blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blobs = {}
    case = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        d = root / split / "coronal"
        d.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            label = i % 2
            # a disc of tissue in air with a bright rim: every exam spans 0..255 before the
            # per-exam min/max scaling, so only the blob tells abnormal exams apart
            rad = np.hypot(yy - size / 2, xx - size / 2) / size
            vol = rng.normal(70, 12, (slices, size, size)) * (rad < 0.46)
            vol += 200 * ((rad > 0.40) & (rad < 0.46))
            cid = f"{case:04d}"
            if label:
                k = int(rng.integers(slices))
                cy, cx = (int(v) for v in rng.integers(size // 4, size - size // 4, size=2))
                vol[k] += 130 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 16) ** 2))
                blobs[(split, cid)] = (k, cy, cx)
            np.save(d / f"{cid}.npy", np.clip(vol, 0, 255).astype(np.uint8))
            rows.append(f"{cid},{label}")
            case += 1
        (root / f"{split}-abnormal.csv").write_text("\n".join(rows) + "\n")
    return blobs


@pytest.fixture(scope="session")
def easy_model(tmp_path_factory):
    """MRNet trained briefly on easy exams (16 train, 8 valid)."""
    root = tmp_path_factory.mktemp("easy_exams")
    easy_exams(root, n_train=16, n_valid=8)
    train = list_exams("synthetic", root, "train")
    test = list_exams("synthetic", root, "valid")
    cfg = MRNetTrainConfig(image_size=64, epochs=3, lr=1e-4, augment=False, seed=0)
    return train_mrnet(train, test, cfg)


# --------------------------------------------------------------------------- architecture
def test_parameter_count_and_alexnet_names():
    model = MRNet()
    assert count_parameters(model) == 2_469_953
    feats = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("features.")}
    assert feats == ALEXNET_FEATURES
    head = sum(int(np.prod(s)) for s in ALEXNET_HEAD.values())
    assert count_parameters(model) + head == 61_101_097  # the seed report's count, with AlexNet's head


def test_exam_logit_is_max_over_slices():
    torch.manual_seed(0)
    model = MRNet().eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    a = torch.randn(5, 1, 64, 64)
    with torch.no_grad():
        pooled = model.pooled(a)
        assert pooled.shape == (5, 256)
        ref = model.classifier(pooled.max(dim=0).values)
        assert torch.allclose(model(a), ref)
        assert torch.allclose(model.slice_logits(a), model.classifier(pooled))   # each slice alone
        # grey input is replicated to three channels
        assert torch.allclose(model(a), model(a.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("norm,extra", [("none", 0), ("batch", 2 * (64 + 192 + 384 + 256 + 256)),
                                         ("group", 2 * (64 + 192 + 384 + 256 + 256))])
def test_norm_layers_keep_alexnet_conv_names(norm, extra):
    model = MRNet(norm)
    assert count_parameters(model) == 2_469_953 + extra
    feats = {k: tuple(v.shape) for k, v in model.state_dict().items()
             if k.startswith("features.") and k.split(".")[1] in ("0", "3", "6", "8", "10")}
    assert feats == ALEXNET_FEATURES            # pretrained AlexNet weights still load by name
    assert not any("running" in k for k in model.state_dict())    # no running statistics to go stale
    with pytest.raises(InputError, match="norm"):
        MRNet("layer")


def test_per_exam_batchnorm_uses_the_exams_own_statistics_in_train_and_eval():
    torch.manual_seed(0)
    model = MRNet("batch")
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    exam, other = torch.randn(6, 1, 64, 64), 3.0 + 2.0 * torch.randn(6, 1, 64, 64)
    with torch.no_grad():
        train_mode = model.train()(exam)
        eval_mode = model.eval()(exam)
        assert torch.equal(train_mode, eval_mode)        # the same statistics in both modes
        # one slice's logit depends on the rest of its exam (per-exam statistics) ...
        alone = model.slice_logits(exam)[0]
        with_other = model.slice_logits(torch.cat([exam[:1], other[1:]]))[0]
        assert not torch.allclose(alone, with_other)
        # ... and a scaling of the whole exam's intensities cancels in the first norm layer (zero conv bias)
        assert torch.allclose(model(exam), model(exam * 2.0), atol=1e-4)
    # a saved per-exam BatchNorm model loads back as one
    assert model.batch_dependent and not MRNet("group").batch_dependent and not MRNet().batch_dependent


def test_detached_statistics_give_the_same_values_and_each_slice_its_own_gradient():
    from pipeline.roi.gradcam import explainable
    torch.manual_seed(1)
    model = MRNet("batch").eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.1)
    x = torch.randn(4, 1, 64, 64)
    frozen = explainable(model)
    with torch.no_grad():
        assert torch.allclose(frozen.slice_logits(x), model.slice_logits(x), atol=1e-5)
    # slice 0's logit: with the statistics as constants, no gradient reaches the other slices
    xg = x.clone().requires_grad_(True)
    frozen.slice_logits(xg)[0].sum().backward()
    assert xg.grad[0].abs().sum() > 0 and xg.grad[1:].abs().sum() == 0
    xg = x.clone().requires_grad_(True)
    model.slice_logits(xg)[0].sum().backward()            # through the statistics: it does
    assert xg.grad[1:].abs().sum() > 0


def test_pretrained_alexnet_weights_load_without_torchvision(tmp_path):
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) for k, s in {**ALEXNET_FEATURES, **ALEXNET_HEAD}.items()
             if "classifier.1" not in k}  # the big head layer is not needed to make the point
    torch.save(state, tmp_path / "alexnet.pth")
    model = MRNet()
    load_pretrained_features(model, tmp_path / "alexnet.pth")
    for k in ALEXNET_FEATURES:
        assert torch.equal(model.state_dict()[k], state[k])
    bad = dict(state, **{"features.3.weight": torch.zeros(192, 64, 3, 3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="features.3.weight"):
        load_pretrained_features(MRNet(), tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not found"):
        load_pretrained_features(MRNet(), tmp_path / "none.pth")


def test_model_file_roundtrip_and_bad_files(tmp_path):
    model = MRNet("batch")
    save_mrnet(tmp_path / "m.pt", model, {"image_size": 64, "mean": 50.0, "std": 20.0, "norm": "batch"})
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(blob) == {"state_dict", "config"} and blob["config"]["arch"] == "mrnet-alexnet"
    loaded, config = load_mrnet(tmp_path / "m.pt")
    assert config["image_size"] == 64 and loaded.norm == "batch"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(InputError, match="not found"):
        load_mrnet(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:5000])
    with pytest.raises(InputError, match="not a readable MRNet model"):
        load_mrnet(tmp_path / "corrupt.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an MRNet model"):
        load_mrnet(tmp_path / "other.pt")


def test_preprocessing_scales_per_volume_like_the_exams():
    vol = np.linspace(1e-4, 5e-4, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    px = to_pixels(vol)
    assert float(px.min()) == 0.0 and float(px.max()) == pytest.approx(255.0)
    x = prepare_volume(vol * 7.0, 64, 100.0, 50.0)  # units do not matter, only the volume's range
    assert x.shape == (2, 1, 64, 64)
    assert torch.allclose(x, prepare_volume(vol, 64, 100.0, 50.0), atol=1e-4)
    assert float(x.min()) == pytest.approx(-2.0, abs=1e-3)


# --------------------------------------------------------------------------- metrics
def test_auc_and_binary_metrics():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    m = binary_metrics([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.6, 0.1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)


def test_youden_threshold_separates_held_out_scores():
    # all scores above 0.5 (an over-confident model): the cut falls between the classes
    t = youden_threshold([0, 0, 0, 1, 1], [0.6, 0.65, 0.7, 0.8, 0.9])
    assert t == pytest.approx(0.75)
    m = binary_metrics([0, 1, 1, 0], [0.62, 0.85, 0.95, 0.72], t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0 and m["threshold"] == t
    # overlapping classes: J is best at the cut with the fewest errors (here one positive missed)
    assert youden_threshold([0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.7]) == pytest.approx(0.45)
    assert youden_threshold([1, 1], [0.2, 0.3]) == 0.5


# --------------------------------------------------------------------------- data sources
def test_mrnet_layout_listing_and_bad_inputs(tmp_path):
    root = tmp_path / "exams"
    easy_exams(root, n_train=6, n_valid=4)
    train = list_exams("mrnet", root, "train")
    assert [e.id for e in train] == [f"{i:04d}" for i in range(6)]
    assert [e.label for e in train] == [0, 1] * 3
    assert train[0].load().shape == (4, 64, 64) and train[0].load().dtype == np.float32
    assert [e.id for e in list_exams("mrnet", root, "valid")] == ["0006", "0007", "0008", "0009"]

    (root / "train-abnormal.csv").rename(root / "labels.bak")
    with pytest.raises(InputError, match="train-abnormal.csv: label file missing"):
        list_exams("mrnet", root, "train")
    (root / "labels.bak").rename(root / "train-abnormal.csv")

    np.save(root / "train" / "coronal" / "0099.npy", np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(InputError, match="labels do not match the volumes: .*0099.npy has no label"):
        list_exams("mrnet", root, "train")
    (root / "train" / "coronal" / "0099.npy").unlink()

    (root / "train" / "coronal" / "0005.npy").unlink()
    with pytest.raises(InputError, match="labels do not match the volumes: no .*0005.npy"):
        list_exams("mrnet", root, "train")
    np.save(root / "train" / "coronal" / "0005.npy", np.zeros((64, 64), np.uint8))
    with pytest.raises(InputError, match="0005.npy: expected a volume of rank 3"):
        list_exams("mrnet", root, "train")

    (root / "valid-abnormal.csv").write_text("")
    with pytest.raises(InputError, match="split 'valid' is empty"):
        list_exams("mrnet", root, "valid")
    (root / "valid-abnormal.csv").write_text("0006,2\n")
    with pytest.raises(InputError, match="label must be 0 or 1"):
        list_exams("mrnet", root, "valid")


def _kneemri(root: Path, n: int = 6) -> None:
    root.mkdir()
    (root / "vol01").mkdir()
    lines = ["patientID,examId,seriesNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,roiWidth,roiHeight,roiDepth,volumeFilename"]
    rng = np.random.default_rng(0)
    for i in range(n):
        vol = rng.integers(0, 3000, size=(5, 40, 36)).astype(np.uint16)
        name = f"{1000 + i}-{i}.pck"
        protocol = 2 if i % 2 else pickle.HIGHEST_PROTOCOL  # KneeMRI ships Python 2 pickles
        (root / "vol01" / name).write_bytes(pickle.dumps(vol, protocol=protocol))
        lines.append(f"{100 + i // 2},{i},{i},{i % 3},{i % 2},4,6,1,20,24,3,{name}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_kneemri_source_split_labels_and_roi(tmp_path):
    root = tmp_path / "kneemri"
    _kneemri(root)
    train = list_exams("kneemri", root, "train", valid_fraction=0.3, seed=0)
    valid = list_exams("kneemri", root, "valid", valid_fraction=0.3, seed=0)
    assert len(train) + len(valid) == 6 and len(valid) == 2  # 3 patients, one of them held out
    patient = lambda e: int(e.id.split("-")[1]) // 2  # noqa: E731  (two exams per patient)
    assert not {patient(e) for e in train} & {patient(e) for e in valid}
    by_id = {e.id: e for e in train + valid}
    assert [by_id[f"{1000 + i}-{i}"].label for i in range(6)] == [0, 1, 1, 0, 1, 1]  # aclDiagnosis > 0
    full = by_id["1000-0"].load()
    assert full.shape == (5, 40, 36)
    ref = pickle.loads((root / "vol01" / "1000-0.pck").read_bytes())
    np.testing.assert_array_equal(full, ref.astype(np.float32))
    cropped = list_exams("kneemri", root, "train", roi_crop=True, valid_fraction=0.3)[0].load()
    assert cropped.shape == (3, 24, 20)  # roiDepth, roiHeight, roiWidth
    (root / "vol01" / "extra.pck").write_bytes(pickle.dumps(np.zeros((2, 2, 2))))
    with pytest.raises(InputError, match="extra.pck is not listed"):
        list_exams("kneemri", root, "train")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_kneemri_pickles_refuse_code_and_non_arrays(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pck"
    evil.write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(InputError, match=r"evil.pck: unsafe or invalid pickle \(refused to load '(posix|os)\.system'"):
        load_pickled_array(evil)
    assert not marker.exists()
    # hidden inside an otherwise valid array
    (tmp_path / "obj.pck").write_bytes(pickle.dumps(np.array([_Exploit(marker)], dtype=object)))
    with pytest.raises(InputError, match="unsafe or invalid pickle"):
        load_pickled_array(tmp_path / "obj.pck")
    assert not marker.exists()
    (tmp_path / "dict.pck").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="only numpy arrays are admitted"):
        load_pickled_array(tmp_path / "dict.pck")
    (tmp_path / "trunc.pck").write_bytes(pickle.dumps(np.zeros((3, 4, 4)))[:40])
    with pytest.raises(InputError, match="trunc.pck"):
        load_pickled_array(tmp_path / "trunc.pck")
    ok = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    for protocol in (2, 3, 4, 5):
        (tmp_path / "ok.pck").write_bytes(pickle.dumps(ok, protocol=protocol))
        np.testing.assert_array_equal(load_pickled_array(tmp_path / "ok.pck"), ok)


# --------------------------------------------------------------------------- training
def test_tune_split_is_stratified_and_disjoint(tmp_path):
    easy_exams(tmp_path, n_train=16, n_valid=2)
    train = list_exams("synthetic", tmp_path, "train")
    fit, tune = tune_split(train, 0.25, seed=0)
    assert len(tune) == 4 and sum(e.label for e in tune) == 2
    assert not {e.id for e in fit} & {e.id for e in tune}
    assert tune_split(train, 0.25, seed=0)[1] == tune


def test_mrnet_learns_easy_exams(easy_model):
    m = easy_model.metrics
    assert m["test"]["auc"] >= 0.85  # well above chance (0.5)
    assert m["parameters"] == 2_469_953 and m["n_train"] + m["n_tune"] == 16
    assert len(easy_model.history) == 3 and 0 <= m["best_epoch"] < 3
    assert easy_model.config["std"] > 0 and easy_model.config["image_size"] == 64


# --------------------------------------------------------------------------- stage
def test_train_mrnet_stage(tmp_path):
    easy_dir = tmp_path / "exams"
    easy_exams(easy_dir, n_train=8, n_valid=4, slices=3)
    params = write_params(tmp_path / "params.yaml", mrnet={"epochs": 2, "lr": 1e-3, "image_size": 64,
                                                            "augment": True, "data_dir": str(easy_dir)})
    out, metrics, live = tmp_path / "models/mrnet.pt", tmp_path / "reports/mrnet.json", tmp_path / "live"
    detail = tmp_path / "reports/mrnet_detail.json"
    res = run_cli("train-mrnet", "--data-dir", easy_dir, "--out", out, "--metrics", metrics, "--detail", detail,
                  "--live", live, "--params", params)
    assert res.exit_code == 0, res.output
    model, config = load_mrnet(out)
    assert config["source"] == "synthetic" and config["epochs"] == 2
    report = json.loads(detail.read_text())
    # the reported test metrics are the saved model's on the valid exams, at the saved threshold
    exams = list_exams("synthetic", easy_dir, "valid")
    with torch.no_grad():
        logits = np.array([exam_logit(model, e.load(), config)
                           for e in exams])
    expected = binary_metrics([e.label for e in exams], 1 / (1 + np.exp(-logits)), config["threshold"])
    assert report["test"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert report["test"]["n"] == 4 and report["best_epoch"] == config["best_epoch"]
    # tracked: quality only (what `dvc metrics diff` shows); the counts, threshold and epoch in the detail
    tracked = json.loads(metrics.read_text())
    assert tracked == {"test": {k: report["test"][k] for k in ("auc", "accuracy", "sensitivity", "specificity")},
                       "tune_auc": report["tune_auc"]}
    live_metrics = json.loads((live / "metrics.json").read_text())
    assert live_metrics["step"] == 1
    for name in ("train/loss", "train/auc", "val/loss", "val/auc"):
        rows = (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t") == ["step", name.split("/")[1]] and len(rows) == 3
    assert not list(tmp_path.rglob(".tmp-*"))


def test_train_mrnet_stage_bad_inputs(tmp_path):
    params = write_params(tmp_path / "params.yaml", mrnet={"epochs": 1, "image_size": 64})
    outs = dict(out=tmp_path / "m.pt", metrics=tmp_path / "m.json", live=tmp_path / "live")

    def run(data_dir):
        return run_cli("train-mrnet", "--data-dir", data_dir, "--out", outs["out"], "--metrics", outs["metrics"],
                       "--live", outs["live"], "--params", params)

    nolabels = tmp_path / "nolabels"
    (nolabels / "train" / "coronal").mkdir(parents=True)
    np.save(nolabels / "train" / "coronal" / "0000.npy", np.zeros((2, 64, 64), np.uint8))
    res = run(nolabels)
    assert res.exit_code == 1
    assert res.stderr.strip().count("\n") == 0 and "train-abnormal.csv: label file missing" in res.stderr
    assert not any(p.exists() for p in outs.values()) and not list(tmp_path.glob(".tmp-*"))

    res = run(tmp_path / "nowhere")
    assert res.exit_code == 1 and "classifier data directory not found" in res.stderr

    one_class = tmp_path / "one_class"
    easy_exams(one_class, n_train=4, n_valid=2)
    (one_class / "train-abnormal.csv").write_text("".join(f"{i:04d},0\n" for i in range(4)))
    res = run(one_class)
    assert res.exit_code == 1 and "needs at least 2 normal and 2 abnormal" in res.stderr
    assert not any(p.exists() for p in outs.values())


def test_mrnet_contrast_benchmark_trains_on_each_contrast_apart(tmp_path):
    """benchmarks/mrnet_contrast.py on tiny synthetic exams: one run on every training exam and one
    per contrast on that contrast's exams only, each scored within each contrast of its own tune
    hold-out (the one train_mrnet held out), never on the test exams."""
    from benchmarks.mrnet_contrast import main
    from pipeline.synthetic.dataset import SyntheticSpec, exam_acquisitions, write_mrnet_exams

    exams = {"train": 24, "valid": 4}
    write_mrnet_exams(tmp_path / "mrnet", SyntheticSpec(recon_size=32, exams=exams, exam_slices=2, lesion_rate=0.5),
                      seed=5)
    params = write_params(tmp_path / "params.yaml", seed=5, synthetic={"exams": exams},
                          mrnet={"data_dir": str(tmp_path / "mrnet"), "image_size": 64, "epochs": 1,
                                 "tune_fraction": 0.25, "device": "cpu"})
    main(["--params", str(params), "--out", str(tmp_path / "contrast.json")])
    runs = json.loads((tmp_path / "contrast.json").read_text())["runs"]
    acq = exam_acquisitions(exams, seed=5)
    train = list_exams("synthetic", tmp_path / "mrnet", "train")
    contrasts = sorted({acq[e.id] for e in train})
    assert list(runs) == ["all", *contrasts]
    assert runs["all"]["n_train_exams"] == len(train)
    _, tune = tune_split(train, 0.25, 0)
    assert {a: g["n"] for a, g in runs["all"]["tune_auc_by_acquisition"].items()} == {
        a: sum(acq[e.id] == a for e in tune) for a in contrasts}
    for a in contrasts:
        mine = [e for e in train if acq[e.id] == a]
        assert runs[a]["n_train_exams"] == len(mine)
        assert list(runs[a]["tune_auc_by_acquisition"]) == [a]
        assert runs[a]["tune_auc_by_acquisition"][a]["n"] == len(tune_split(mine, 0.25, 0)[1])
        assert 0.0 <= runs[a]["fit_auc_last_epoch"] <= 1.0
