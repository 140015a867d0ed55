"""`roirecon reconstruct`: new fastMRI files through a trained U-Net, written as fastMRI reconstructions."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.kspace import mask_function, volume_mask
from pipeline.models.registry import build_unet, model_config, save_unet
from pipeline.reconstruct import acquisition_of
from pipeline.stores.unet_data import denormalize, normalize
from tests.helpers import run_cli

CROP = 32  # the tiny fixtures' recon size


def _checkpoint(path: Path, challenge: str = "singlecoil", *, acquisition: bool = True,
                crop: int = CROP, acceleration: float = 4) -> Path:
    """A train-unet-style checkpoint: random fastMRI U-Net weights, a one-epoch history and the
    acquisition settings (the undersampled store's challenge, crop and mask attrs)."""
    torch.manual_seed(0)
    cfg = model_config("fastmri", chans=4, num_pool_layers=2)
    config = {"model": cfg, "variant": "baseline", "history": [{"epoch": 0}]}
    if acquisition:
        config["acquisition"] = {"challenge": challenge, "crop": crop,
                                 "mask": {"type": "random", "acceleration": acceleration, "center_fraction": 0.08}}
    save_unet(path, build_unet(cfg), config)
    return path


def _model(path: Path) -> torch.nn.Module:
    from pipeline.models.registry import load_unet
    return load_unet(path)[0]


@torch.no_grad()
def _through_model(model, image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    m, s = torch.from_numpy(np.asarray(mean, np.float32)), torch.from_numpy(np.asarray(std, np.float32))
    x = normalize(torch.from_numpy(np.asarray(image, np.float32)), m, s).unsqueeze(1)
    return denormalize(model(x)[:, 0], m, s).numpy()


def _close(a: np.ndarray, b: np.ndarray, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * float(np.abs(b).max()))


def _evaluate_style(tmp: Path, path: Path, challenge: str, model) -> np.ndarray:
    """The evaluate stage's reconstruction of one volume: the undersample stage's store of that file,
    then normalise -> model -> back to target units with the stored image, mean and std."""
    from pipeline.slice_stores import MaskSpec, build_undersampled_store, scan_split
    from pipeline.stores.zarr_store import open_store

    store = tmp / "undersampled.zarr"
    build_undersampled_store(store, {"test": scan_split([path], challenge, CROP)}, raw_dir=str(path.parent),
                             challenge=challenge, crop=CROP, mask=MaskSpec("random", 4, 0.08))
    g = open_store(store, kind="undersampled")["test"]
    return _through_model(model, g["image"][:], g["mean"][:], g["std"][:])


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_output_equals_the_evaluate_style_reconstruction(tmp_path, tiny_fastmri, tiny_fastmri_multicoil, challenge):
    root = tiny_fastmri if challenge == "singlecoil" else tiny_fastmri_multicoil
    (src,) = sorted((root / "test").glob("*.h5"))
    ckpt = _checkpoint(tmp_path / "unet.pt", challenge)
    out = tmp_path / "out"
    r = run_cli("reconstruct", src, "--model", ckpt, "--out", out, "--batch-size", 2, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""                         # fully sampled at the checkpoint's own mask: no warning
    with h5py.File(out / src.name, "r") as f:
        assert list(f) == ["reconstruction"]        # fastMRI's save_reconstructions layout
        got = f["reconstruction"][()]
    with h5py.File(src, "r") as f:
        n = f["kspace"].shape[0]
    assert got.shape == (n, CROP, CROP) and got.dtype == np.float32
    _close(got, _evaluate_style(tmp_path, src, challenge, _model(ckpt)))
    assert sorted(p.name for p in out.iterdir()) == [src.name]   # no temporary left behind


def _undersampled_copy(src: Path, dst: Path, acceleration: int, mask: np.ndarray) -> np.ndarray:
    """A fastMRI test/challenge-style file: masked kspace, a 1-D `mask`, an `acceleration` attr, no target."""
    with h5py.File(src, "r") as f:
        k = f["kspace"][()] * mask
        header = f["ismrmrd_header"][()]
    with h5py.File(dst, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("mask", data=mask)
        f.create_dataset("ismrmrd_header", data=header)
        f.attrs["acceleration"] = acceleration
        f.attrs["num_low_frequency"] = int(mask.sum())
    return k


def test_an_undersampled_file_is_used_as_it_is_and_warns_on_another_acceleration(tmp_path, tiny_fastmri):
    from fastmri.data.transforms import UnetDataTransform

    (src,) = sorted((tiny_fastmri / "test").glob("*.h5"))
    with h5py.File(src, "r") as f:
        shape = f["kspace"].shape
    mask = volume_mask(mask_function("equispaced", 8, 0.08), "other", shape)  # not the checkpoint's mask
    d = tmp_path / "challenge"
    d.mkdir()
    k = _undersampled_copy(src, d / "at8x.h5", 8, mask)
    _undersampled_copy(src, d / "at4x.h5", 4, mask)
    ckpt = _checkpoint(tmp_path / "unet.pt")
    out = tmp_path / "out"
    r = run_cli("reconstruct", d / "at8x.h5", d / "at4x.h5", "--model", ckpt, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {d / 'at8x.h5'}: ")
    assert "8x" in lines[0] and "4x" in lines[0]

    # fastMRI's own test-time transform (no mask function: the k-space as it is), then the model
    transform = UnetDataTransform("singlecoil", mask_func=None)
    samples = [transform(k[i], mask, None, {"recon_size": (CROP, CROP, 1)}, "at8x.h5", i) for i in range(len(k))]
    image = torch.stack([s.image for s in samples]).unsqueeze(1)
    mean, std = torch.stack([s.mean for s in samples]), torch.stack([s.std for s in samples])
    with torch.no_grad():
        expected = denormalize(_model(ckpt)(image.float())[:, 0], mean, std).numpy()
    for name in ("at8x.h5", "at4x.h5"):
        with h5py.File(out / name, "r") as f:
            _close(f["reconstruction"][()], expected, rel=1e-4)  # torch FFT and float32 stats vs ours


def test_the_output_is_scored_by_fastmri_evaluate(tmp_path, tiny_fastmri):
    from fastmri import evaluate

    targets = tiny_fastmri / "test"
    ckpt = _checkpoint(tmp_path / "unet.pt")
    out = tmp_path / "out"
    r = run_cli("reconstruct", *sorted(targets.glob("*.h5")), "--model", ckpt, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    metrics = evaluate.evaluate(Namespace(target_path=targets, predictions_path=out, acquisition=None,
                                          acceleration=None), "reconstruction_esc")
    means = metrics.means()
    assert {"NMSE", "PSNR", "SSIM"} <= set(means) and all(np.isfinite(v) for v in means.values())
    assert means["PSNR"] > 0


def _too_small(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.ones((2, 40, 20), np.complex64))  # 40x20 < crop 32x32
    return path


def _no_kspace(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_esc", data=np.ones((2, 32, 32), np.float32))
    return path


def _not_hdf5(path: Path) -> Path:
    path.write_text("not an HDF5 file\n")
    return path


@pytest.mark.parametrize("case, expected", [
    ("multicoil file", "kspace has rank 4 (multicoil data), expected 3: the checkpoint was trained on singlecoil"),
    ("singlecoil file", "kspace has rank 3 (singlecoil data), expected 4: the checkpoint was trained on multicoil"),
    ("too small", "image 40x20 is smaller than the checkpoint's crop 32x32"),
    ("no kspace", "no 'kspace' dataset"),
    ("not hdf5", "not a readable HDF5 file"),
])
def test_bad_input_gives_one_line_naming_the_file(tmp_path, tiny_fastmri, tiny_fastmri_multicoil, case, expected):
    good = sorted((tiny_fastmri / "val").glob("*.h5"))[0]   # not the name of either fixture's test file
    challenge = "multicoil" if case == "singlecoil file" else "singlecoil"
    bad = {
        "multicoil file": lambda: sorted((tiny_fastmri_multicoil / "test").glob("*.h5"))[0],
        "singlecoil file": lambda: good,
        "too small": lambda: _too_small(tmp_path / "small.h5"),
        "no kspace": lambda: _no_kspace(tmp_path / "nok.h5"),
        "not hdf5": lambda: _not_hdf5(tmp_path / "text.h5"),
    }[case]()
    ckpt = _checkpoint(tmp_path / "unet.pt", challenge)
    out = tmp_path / "out"
    inputs = [bad] if case == "singlecoil file" else [good, bad]   # checked before any file is written
    r = run_cli("reconstruct", *inputs, "--model", ckpt, "--out", out, "--device", "cpu")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: {bad}: ") and expected in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists() or not any(out.iterdir())


def test_a_checkpoint_without_acquisition_settings_is_refused(tmp_path, tiny_fastmri):
    ckpt = _checkpoint(tmp_path / "old.pt", acquisition=False)
    src = sorted((tiny_fastmri / "test").glob("*.h5"))[0]
    r = run_cli("reconstruct", src, "--model", ckpt, "--out", tmp_path / "out", "--device", "cpu")
    assert r.exit_code == 1
    assert r.stderr == f"error: {ckpt}: has no acquisition settings; retrain it with this version\n"


def test_acquisition_of_reads_the_store_attrs_layout():
    acq = acquisition_of({"acquisition": {"challenge": "multicoil", "crop": 320,
                                          "mask": {"type": "equispaced", "acceleration": 8,
                                                   "center_fraction": 0.04}}}, "ckpt.pt")
    assert (acq.challenge, acq.crop, acq.mask_type, acq.acceleration, acq.center_fraction) == \
        ("multicoil", 320, "equispaced", 8, 0.04)
    assert acquisition_of({"acquisition": acq.as_config()}, "ckpt.pt") == acq
    with pytest.raises(Exception, match=r"ckpt.pt: acquisition mask.acceleration"):
        acquisition_of({"acquisition": {**acq.as_config(), "mask": {**acq.as_config()["mask"], "acceleration": 1}}},
                       "ckpt.pt")
