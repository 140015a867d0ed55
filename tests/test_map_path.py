"""The map path, end to end, against ground truth it does not share with the code under test.

fastMRI-format files whose targets hold one conspicuous blob per annotated slice, at a place this
file chooses; a fastMRI+ CSV whose rows this file writes with its own arithmetic (320-style frame
flipped up/down, `y = H - row0 - height`); a hand-set MRNet whose logit is the pooled brightness
above a threshold (so its map must peak on the blob). Through the real stages: `prepare` (crop),
`gradcam` (maps, per-volume batching, upsampling) and its scoring (the fastMRI+ flip, the centre
crop, the 15 px tolerance scaled to the frame). A flip, an off-by-one crop or a map shifted by a
feature cell sends the pointing game from 1 towards 0; the blobs sit in the upper half and off the
centre column so that neither a flip nor a mirror maps a box onto itself.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.synthetic.acquisition import acquire_volume, encoding_for, ismrmrd_header
from pipeline.models.mrnet import MRNet, save_mrnet
from pipeline.synthetic.dataset import _write_h5
from tests.helpers import run_cli, write_params

R, CROP, SLICES = 96, 64, 4            # recon frame 96 (boxes are given in it), centre crop 64
# per test volume: {slice: (row0, col0) of an 8x8 blob in the native 96 frame}; other slices empty
BLOBS = {       # crop rows 14..25: upper half, around the feature cells' centres (crop row 19)
    "file2000000.h5": {1: (30, 34), 2: (30, 42)},
    "file2000001.h5": {0: (30, 50), 3: (30, 58)},
    "file2000002.h5": {2: (30, 38)},
}
BLOB = 16


def blob_volume(blobs: dict[int, tuple[int, int]]) -> np.ndarray:
    """Tissue disc (70) on air with a Gaussian blob (peak 250, SD BLOB / 4) centred in each
    BLOB x BLOB box that `blobs` places, (S, R, R). A peaked blob, not a flat square: AlexNet's
    max-poolings turn a flat one into a plateau of equal cells whose first pixel is the argmax."""
    yy, xx = np.mgrid[:R, :R]
    disc = 70.0 * (np.hypot(yy - R / 2, xx - R / 2) < 0.45 * R)
    vol = np.repeat(disc[None], SLICES, axis=0)
    for k, (r0, c0) in blobs.items():
        r, c = r0 + (BLOB - 1) / 2, c0 + (BLOB - 1) / 2
        blob = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * (BLOB / 4) ** 2))
        vol[k] = np.maximum(vol[k], 250.0 * blob)
    return vol


def write_volume(path, target: np.ndarray, index: int) -> None:
    """A fastMRI-format single-coil file whose `reconstruction_esc` is `target` (noise-free)."""
    enc = encoding_for(R)
    images = np.zeros((SLICES, *enc.grid), dtype=np.complex64)
    r0, c0 = (enc.rows - R) // 2, (enc.cols - R) // 2
    images[:, r0:r0 + R, c0:c0 + R] = target
    kspace, _ = acquire_volume(images, enc, 1, 0.0, np.random.default_rng(index))
    header = ismrmrd_header(enc, SLICES, 1, "CORPD_FBK", np.random.default_rng(index))
    _write_h5(path, kspace, target.astype(np.float32), header, "CORPD_FBK", f"patient{index}", 1)


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("map_path")
    raw = root / "fastmri"
    rows = ["file,slice,study_level,x,y,width,height,label"]
    volumes = {"train": {"file1000000.h5": {1: (28, 50)}}, "val": {"file1500000.h5": {}}, "test": BLOBS}
    for i, (split, vols) in enumerate(volumes.items()):
        (raw / split).mkdir(parents=True)
        for j, (name, blobs) in enumerate(vols.items()):
            write_volume(raw / split / name, blob_volume(blobs), 10 * i + j)
            for k, (r0, c0) in blobs.items():   # fastMRI+: x = col0, y = H - row0 - height
                rows.append(f"{name[:-3]},{k},No,{c0},{R - r0 - BLOB},{BLOB},{BLOB},Meniscus Tear")
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    params = write_params(root / "params.yaml", data={"raw_dir": str(raw), "crop": CROP,
                                                      "annotations": str(root / "annotations.csv")})
    res = run_cli("prepare", "--raw-dir", raw, "--out", root / "slices.zarr", "--params", params)
    assert res.exit_code == 0, res.output
    return root


def brightness_mrnet(norm: str) -> tuple[MRNet, dict]:
    """Channel 0 of conv 0 is the 11x11 mean minus 150 (0..255 units), passed through every later
    conv by a centre tap; the logit is its pooled value. With `batch` norm the per-exam BatchNorm
    (weight 1, bias 0) re-centres that channel on the volume's mean, which keeps its argmax."""
    model = MRNet(norm).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
        f = model.features
        f[0].weight[0] = 1.0 / (3 * 11 * 11)
        f[0].bias[0] = -150.0
        f[3].weight[0, 0, 2, 2] = 1.0
        for i in (6, 8, 10):
            f[i].weight[0, 0, 1, 1] = 1.0
        model.classifier.weight[0, 0] = 1.0
    return model, {"image_size": 128, "mean": 0.0, "std": 1.0, "norm": norm}


@pytest.mark.parametrize("norm,method,layer", [("none", "hirescam", "features.8"),
                                               ("batch", "hirescam", "features.8"),
                                               ("batch", "gradcam", "features.9")])
def test_maps_point_at_the_planted_blobs_through_the_real_stages(blob_data, tmp_path, norm, method, layer):
    model, config = brightness_mrnet(norm)
    save_mrnet(tmp_path / "mrnet.pt", model, config)
    params = write_params(tmp_path / "params.yaml", data={"annotations": str(blob_data / "annotations.csv")},
                          gradcam={"method": method, "layer": layer, "n_overlays": 0, "smooth_sigma": 1.0})
    res = run_cli("gradcam", "--slices", blob_data / "slices.zarr", "--raw-dir", blob_data / "fastmri",
                  "--model", tmp_path / "mrnet.pt",
                  "--annotations", blob_data / "annotations.csv", "--out", tmp_path / "heatmaps.zarr",
                  "--metrics", tmp_path / "gradcam.json", "--detail", tmp_path / "gradcam_detail.json",
                  "--overlays", tmp_path / "overlays", "--params", params)
    assert res.exit_code == 0, res.output
    test = json.loads((tmp_path / "gradcam.json").read_text())["test"]
    overall = json.loads((tmp_path / "gradcam_detail.json").read_text())["overall"]
    assert overall["n_slices"] == sum(len(b) for b in BLOBS.values()) == 5
    assert test["pointing_game"] >= 0.9, test
    assert test["pointing_game_15px"] >= 0.9, test
    assert test["energy_in_box"] > 5 * overall["chance"]["mean"], test
