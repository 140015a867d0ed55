"""train-unet: architectures, checkpoints, data loading and normalisation, the training loop
(determinism, resume, non-finite loss, DDP under torchrun) and bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from fastmri.data import transforms as fm_transforms

from pipeline.errors import InputError
from pipeline.models.registry import build_unet, load_unet, model_config, save_unet
from pipeline.models.torch_files import count_parameters
from pipeline.models.unet_seed import SeedUnet
from pipeline.stores.zarr_store import SPLITS, ShardedWriter, atomic_path, finish_store, open_store
from pipeline.training.unet import TrainConfig, train_unet
from pipeline.stores.zarr_store import as_str
from pipeline.stores.unet_data import SliceStores
from tests.helpers import REPO, run_cli, write_params

CROP = 32
TINY_UNET = {"chans": 4, "num_pool_layers": 2, "epochs": 1, "batch_size": 2, "device": "cpu"}


# ---------------------------------------------------------------- tiny stores (also used by test_evaluate)

def fake_heatmaps(slices: Path, out: Path, *, order=None, drop_last: bool = False, alter: str = "train") -> Path:
    """A heatmaps store aligned with `slices`: a Gaussian blob per slice.
    `order` permutes the rows and `drop_last` drops one (of split `alter`), to make misaligned stores."""
    root = open_store(slices, kind="slices")
    with atomic_path(out) as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs["kind"] = "heatmaps"
        for split in SPLITS:
            s = root[split]
            vol, sl = as_str(s["volume"][:]), s["slice"][:].astype(np.int32)
            n, c = s["target"].shape[0], s["target"].shape[-1]
            yy, xx = np.mgrid[:c, :c]
            heat = np.stack([np.exp(-((yy - c * 0.4 - i % 3) ** 2 + (xx - c * 0.6) ** 2) / (2 * (c / 8) ** 2))
                             for i in range(n)]).astype(np.float32)
            heat[np.arange(n) % 3 == 2] *= 0.2  # some slices with little evidence
            idx = np.arange(n)
            if split == alter and order is not None:
                idx = order(idx)
            if split == alter and drop_last:
                idx = idx[:-1]
            w = ShardedWriter(g.create_group(split), len(idx), {"volume": ((), str), "slice": ((), "int32"),
                                                                  "heatmap": ((c, c), "float32")})
            w.append(volume=vol[idx], slice=sl[idx], heatmap=heat[idx])
            w.close()
        finish_store(g)
    return out


def build_stores(raw: Path, out: Path) -> Path:
    """slices + undersampled stores (via the prepare/undersample stages) and fake heatmaps, crop 32."""
    out.mkdir(parents=True, exist_ok=True)
    params = write_params(out / "params.yaml", data={"raw_dir": str(raw), "crop": CROP, "workers": 1,
                                                     "annotations": None},
                          unet=TINY_UNET, evaluate={"n_figures": 2, "device": "cpu"})
    for stage, name in (("prepare", "slices.zarr"), ("undersample", "undersampled.zarr")):
        r = run_cli(stage, "--raw-dir", raw, "--out", out / name, "--params", params)
        assert r.exit_code == 0, r.output
    fake_heatmaps(out / "slices.zarr", out / "heatmaps.zarr")
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and are slow on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def stores(tiny_fastmri, tmp_path_factory) -> Path:
    return build_stores(tiny_fastmri, tmp_path_factory.mktemp("unet_stores"))


def _train_cli(d: Path, variant: str, out: Path, *extra, params: Path | None = None, heatmaps: Path | None = None):
    return run_cli("train-unet", "--variant", variant, "--seed", "0", "--slices", d / "slices.zarr",
                   "--undersampled", d / "undersampled.zarr", "--heatmaps", heatmaps or d / "heatmaps.zarr",
                   "--out", out, "--params", params or d / "params.yaml", *extra)


def _cfg(variant="weighted", epochs=1, **kw) -> TrainConfig:
    base = dict(variant=variant, model=model_config("fastmri", 4, 2, 0.0, True), epochs=epochs, batch_size=2,
                lr=1e-3, roi_weight=4.0 if variant == "weighted" else 0.0, roi_norm="mean", roi_margin=0, roi_soft=0.0,
                background_weight=1.0, seed=0, device="cpu", loss_kind="mse",
                ssim_weight=0.0, val_volumes=0, deterministic=False, compile=False)
    base.update(kw)
    return TrainConfig(**base)


def _splits(d: Path):
    args = (d / "slices.zarr", d / "undersampled.zarr", d / "heatmaps.zarr")
    return SliceStores(*args, "train"), SliceStores(*args, "val", raw=True)


# ---------------------------------------------------------------- architectures and checkpoints

def test_seed_unet_is_figure_3():
    m = SeedUnet()
    assert count_parameters(m) == 365_761
    per_layer = [sum(p.numel() for p in mod.parameters()) for mod in m.modules()
                 if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert per_layer == [640, 36_928, 73_856, 147_584, 32_832, 36_928, 36_928, 65]
    assert count_parameters(build_unet(model_config("seed", residual=True))) == 365_761
    assert m(torch.zeros(2, 1, 32, 48)).shape == (2, 1, 32, 48)


def test_fastmri_arch_is_fastmri_unet():
    from fastmri.models import Unet
    net = build_unet(model_config("fastmri", 8, 3, 0.1))
    assert isinstance(net, Unet) and net.chans == 8 and net.num_pool_layers == 3 and net.drop_prob == 0.1
    assert count_parameters(net) == count_parameters(Unet(1, 1, 8, 3, 0.1))
    res = build_unet(model_config("fastmri", 8, 3, 0.0, residual=True))
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(res(x), x)  # residual branch starts at zero: the zero-filled input


def test_checkpoint_roundtrip_and_wrong_architecture(tmp_path):
    cfg = model_config("fastmri", 4, 2)
    net = build_unet(cfg)
    save_unet(tmp_path / "a.pt", net, {"model": cfg, "variant": "baseline"})
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(raw) == {"state_dict", "config"} and raw["config"]["kind"] == "unet"
    loaded, config = load_unet(tmp_path / "a.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    assert config["variant"] == "baseline"
    # weights of one architecture under the config of another
    torch.save({"state_dict": SeedUnet().state_dict(), "config": {"kind": "unet", "model": cfg}}, tmp_path / "b.pt")
    with pytest.raises(InputError, match="do not fit the architecture"):
        load_unet(tmp_path / "b.pt")
    with pytest.raises(InputError, match="differs from the expected"):
        load_unet(tmp_path / "a.pt", expected_model=model_config("seed"))
    torch.save({"state_dict": {}, "config": {"kind": "mrnet"}}, tmp_path / "c.pt")
    with pytest.raises(InputError, match="not a U-Net checkpoint"):
        load_unet(tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_unet(tmp_path / "d.pt")
    with pytest.raises(InputError, match="missing U-Net checkpoint"):
        load_unet(tmp_path / "none.pt")


# ---------------------------------------------------------------- data

def test_slice_stores_normalise_as_fastmri_unet_transform(stores):
    ds = SliceStores(stores / "slices.zarr", stores / "undersampled.zarr", stores / "heatmaps.zarr", "val", raw=True)
    u = open_store(stores / "undersampled.zarr", kind="undersampled")["val"]
    s = open_store(stores / "slices.zarr", kind="slices")["val"]
    assert len(ds) == s["target"].shape[0]
    rows = [2, 0, 1, 2]  # shuffled rows, as a training batch asks for them (a padded epoch repeats one)
    data = ds[rows]
    assert data["image"].shape == (4, 1, CROP, CROP) and data["rows"].tolist() == rows
    with pytest.raises(IndexError):
        ds[[0, len(ds)]]
    for j, i in enumerate(rows):
        image, mean, std = fm_transforms.normalize_instance(torch.from_numpy(u["image"][i]), eps=1e-11)
        target = fm_transforms.normalize(torch.from_numpy(s["target"][i]), mean, std, eps=1e-11).clamp(-6, 6)
        assert torch.allclose(data["image"][j, 0], image.clamp(-6, 6), atol=1e-5)
        assert torch.allclose(data["target"][j, 0], target, atol=1e-5)
        assert float(data["std"][j]) == pytest.approx(float(std), rel=1e-5)
        np.testing.assert_array_equal(data["zero_filled"][j].numpy(), u["image"][i])
        np.testing.assert_array_equal(data["target_raw"][j].numpy(), s["target"][i])
    assert 0 <= float(data["heatmap"].min()) and float(data["heatmap"].max()) <= 1


def test_misaligned_or_missing_heatmaps_are_errors(stores, tmp_path):
    args = (stores / "slices.zarr", stores / "undersampled.zarr")
    short = fake_heatmaps(stores / "slices.zarr", tmp_path / "short.zarr", drop_last=True)
    with pytest.raises(InputError, match="slices, the slices store has"):
        SliceStores(*args, short, "train")
    swapped = fake_heatmaps(stores / "slices.zarr", tmp_path / "swapped.zarr", order=lambda i: i[::-1])
    with pytest.raises(InputError, match="order differs"):
        SliceStores(*args, swapped, "train")
    with pytest.raises(InputError, match="missing heatmaps store"):
        SliceStores(*args, tmp_path / "nothing.zarr", "train")
    r = _train_cli(stores, "weighted", tmp_path / "m.pt", heatmaps=tmp_path / "swapped.zarr")
    assert r.exit_code == 1 and "order differs from the slices store" in r.output
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------- training

def test_train_unet_cli_writes_model_and_curves(stores, tmp_path):
    params = write_params(tmp_path / "params.yaml", data={"crop": CROP, "annotations": None},
                          unet={**TINY_UNET, "epochs": 2}, loss={"roi_weight": 7.0})
    out, live = tmp_path / "models" / "unet_weighted.pt", tmp_path / "live"
    r = _train_cli(stores, "weighted", out, "--live", live, "--checkpoint-dir", tmp_path / "ckpt", params=params)
    assert r.exit_code == 0, r.output
    assert "epoch 2/2" in r.output and "data wait" in r.output
    model, config = load_unet(out)
    assert config["variant"] == "weighted" and config["train"]["roi_weight"] == 7.0
    assert config["model"] == model_config("fastmri", 4, 2, 0.0, True)
    loss = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert loss[0].split("\t") == ["step", "loss"] and len(loss) == 3
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["val"]["psnr"] > 10 and summary["train"]["loss"] > 0
    assert not {"data_wait_share", "epoch_time_s"} & set(summary)      # timings are printed, never logged
    assert len(config["history"]) == 2 and config["history"][1]["val/psnr"] == summary["val"]["psnr"]
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())  # removed on success


def test_training_is_deterministic_on_cpu(stores, tmp_path):
    train, val = _splits(stores)
    for name in ("a", "b"):
        train_unet(train, val, _cfg(), tmp_path / f"{name}.pt")
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = build_unet(_cfg().model).state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a)  # it did train


def test_resume_after_interruption_gives_the_same_weights(stores, tmp_path):
    train, val = _splits(stores)
    cfg = _cfg(epochs=2, model=model_config("fastmri", 4, 2, 0.2, True))  # dropout: RNG state must resume too
    train_unet(train, val, cfg, tmp_path / "straight.pt")

    def interrupt(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_unet(train, val, cfg, tmp_path / "resumed.pt", checkpoint_dir=tmp_path / "ckpt", on_epoch=interrupt)
    assert not (tmp_path / "resumed.pt").exists()
    assert len(list((tmp_path / "ckpt").glob("*/last.pt"))) == 1
    seen = []
    res = train_unet(train, val, cfg, tmp_path / "resumed.pt", checkpoint_dir=tmp_path / "ckpt",
                     on_epoch=lambda e, m: seen.append(e))
    assert res.resumed_from == 1 and res.epochs_run == 1 and seen == [0, 1]  # history replayed, then epoch 2
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a different config does not pick up a stale checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_unet(train, val, cfg, tmp_path / "x.pt", checkpoint_dir=tmp_path / "ckpt", on_epoch=interrupt)
    res = train_unet(train, val, _cfg(epochs=2, lr=5e-4, model=cfg.model), tmp_path / "y.pt",
                     checkpoint_dir=tmp_path / "ckpt")
    assert res.resumed_from == 0


def test_changed_training_code_starts_afresh(stores, tmp_path, monkeypatch):
    """dvc reruns a train stage when its code changes: that run must not resume epochs the old
    code trained (the resume key holds a digest of the training modules' source)."""
    import pipeline.training.unet as tu
    train, val = _splits(stores)
    cfg = _cfg(epochs=2)
    key = cfg.key(train.fingerprint())
    assert key == cfg.key(train.fingerprint())          # stable for the same code

    def interrupt(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_unet(train, val, cfg, tmp_path / "a.pt", checkpoint_dir=tmp_path / "ckpt", on_epoch=interrupt)
    real = tu.training_code_digest()
    monkeypatch.setattr(tu, "training_code_digest", lambda: "0" * 16)     # the code changed
    assert cfg.key(train.fingerprint()) != key
    res = train_unet(train, val, cfg, tmp_path / "b.pt", checkpoint_dir=tmp_path / "ckpt")
    assert res.resumed_from == 0 and res.epochs_run == 2
    monkeypatch.setattr(tu, "training_code_digest", lambda: real)          # the old code again: resumes
    res = train_unet(train, val, cfg, tmp_path / "c.pt", checkpoint_dir=tmp_path / "ckpt")
    assert res.resumed_from == 1 and res.epochs_run == 1


def test_training_code_digest_follows_the_sources(monkeypatch, tmp_path):
    import importlib
    import pipeline.training.unet as tu
    before = tu.training_code_digest()
    copy = tmp_path / "losses.py"
    copy.write_bytes(Path(importlib.import_module("pipeline.losses").__file__).read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(importlib.import_module("pipeline.losses"), "__file__", str(copy))
    assert tu.training_code_digest() != before


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(stores, tmp_path, monkeypatch):
    from pipeline import losses
    train, val = _splits(stores)
    cfg = _cfg(epochs=3)
    original = losses.ReconLoss.forward
    calls = {"n": 0}
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size

    def poisoned(self, pred, target, weight=None):
        out = original(self, pred, target, weight)
        if pred.requires_grad:  # training steps, not validation
            calls["n"] += 1
            if calls["n"] > steps_per_epoch:  # the second epoch's first step
                return out * float("nan")
        return out
    monkeypatch.setattr(losses.ReconLoss, "forward", poisoned)
    with pytest.raises(InputError, match=r"non-finite loss \(nan\) at epoch 2, step 1.*last good checkpoint \(epoch 1\)"):
        train_unet(train, val, cfg, tmp_path / "m.pt", checkpoint_dir=tmp_path / "ckpt")
    assert not (tmp_path / "m.pt").exists()
    (last,) = (tmp_path / "ckpt").glob("*/last.pt")
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_bad_variant_and_missing_store(stores, tmp_path):
    r = _train_cli(stores, "fancy", tmp_path / "m.pt")
    assert r.exit_code == 1 and "--variant: expected one of baseline, weighted, oracle" in r.output
    r = run_cli("train-unet", "--variant", "oracle", "--seed", "0", "--slices", stores / "slices.zarr",
                "--undersampled", stores / "undersampled.zarr", "--out", tmp_path / "m.pt",
                "--params", stores / "params.yaml")
    assert r.exit_code == 1 and "train-unet oracle: --heatmaps is required" in r.output
    r = run_cli("train-unet", "--variant", "baseline", "--seed", "0", "--slices", tmp_path / "none.zarr", "--undersampled",
                stores / "undersampled.zarr", "--heatmaps", stores / "heatmaps.zarr", "--out", tmp_path / "m.pt",
                "--params", stores / "params.yaml")
    assert r.exit_code == 1 and "missing slices store" in r.output


def test_seed_arch_trains(stores, tmp_path):
    train, val = _splits(stores)
    res = train_unet(train, val, _cfg(variant="baseline", model=model_config("seed", residual=True)), tmp_path / "s.pt")
    model, _ = load_unet(tmp_path / "s.pt")
    assert count_parameters(model) == 365_761 and np.isfinite(res.best["val/psnr"])


def test_train_batches_shard_every_slice_once_into_the_global_batches():
    from pipeline.stores.unet_data import train_batches
    n, batch, epochs = 10, 4, 3
    for epoch in range(epochs):
        single_sampler, single = train_batches(n, batch, 1, 0, seed=5)
        single_sampler.set_epoch(epoch)
        ranks = []
        for r in range(2):
            sampler, batches = train_batches(n, batch, 2, r, seed=5)
            sampler.set_epoch(epoch)
            ranks.append(list(batches))
        global_batches = [sorted(a + b) for a, b in zip(*ranks)]
        assert global_batches == [sorted(b) for b in single]          # same global batch, step by step
        assert sorted(i for b in global_batches for i in b) == list(range(n))   # every slice once
    first, second = (list(train_batches(n, batch, 1, 0, seed=5)[1]) for _ in range(2))
    assert first == second
    sampler, batches = train_batches(n, batch, 1, 0, seed=5)
    sampler.set_epoch(1)
    assert list(batches) != first                                     # a new shuffle each epoch


def test_only_rank_0_writes(stores, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")       # a non-zero rank of a run (WORLD_SIZE 1: no process group)
    out, live, ckpt = tmp_path / "m.pt", tmp_path / "live", tmp_path / "ckpt"
    r = _train_cli(stores, "weighted", out, "--live", live, "--checkpoint-dir", ckpt)
    assert r.exit_code == 0, r.output
    assert not out.exists() and not live.exists() and not ckpt.exists()
    assert "train-unet weighted_s0:" not in r.output


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_two_ranks_equal_one_process_and_resume(stores, tmp_path):
    """unet.nproc 2 runs the stage under torchrun (gloo on CPU). Interrupted after epoch 1 and resumed
    under 2 ranks, it ends with the weights of one process with the same global batch (1e-5)."""
    unet = {**TINY_UNET, "epochs": 2, "batch_size": 4}   # 6 train slices: per rank batches of 2, then 1
    single = write_params(tmp_path / "single.yaml", data={"crop": CROP, "annotations": None}, unet=unet)
    ddp = write_params(tmp_path / "ddp.yaml", data={"crop": CROP, "annotations": None}, unet={**unet, "nproc": 2})
    r = _train_cli(stores, "weighted", tmp_path / "one.pt", params=single)
    assert r.exit_code == 0, r.output

    env = {**os.environ, "ROIRECON_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    out, live, ckpt = tmp_path / "ddp.pt", tmp_path / "live", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "stages.cli", "train-unet", "--variant", "weighted", "--seed", "0",
           "--slices", str(stores / "slices.zarr"), "--undersampled", str(stores / "undersampled.zarr"),
           "--heatmaps", str(stores / "heatmaps.zarr"), "--out", str(out), "--live", str(live),
           "--checkpoint-dir", str(ckpt), "--params", str(ddp)]
    first = subprocess.run(cmd + ["--stop-after-epochs", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "running under torchrun (2 processes)" in first.stdout
    assert first.stdout.count("stopped after epoch 1/2") == 1 and not out.exists()   # rank 0 reports, once
    (kept,) = ckpt.glob("*/last.pt")
    assert torch.load(kept, weights_only=True)["epoch"] == 1

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("train-unet weighted_s0:") == 1 and "resumed after epoch 1" in second.stdout
    a, b = _state(tmp_path / "one.pt"), _state(out)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(float((a[k] - build_unet(_cfg().model).state_dict()[k]).abs().max()) > 1e-3 for k in a)  # trained
    _, config = load_unet(out)
    assert [h["train/slices"] for h in config["history"]] == [6, 6]       # every slice once per epoch
    assert (live / "plots" / "metrics" / "val" / "psnr.tsv").read_text().count("\n") == 3   # header + 2 epochs
    assert not list(ckpt.glob("*/last.pt"))                              # removed on success


def test_autocast_only_in_the_training_forward_and_compile_is_wired(stores, tmp_path, monkeypatch):
    """bf16 autocast (a no-op on CPU, so counted here) wraps the training forward of every step and
    nothing else: validation and evaluation run in fp32. `compile` passes the model through torch.compile."""
    import contextlib
    from pipeline.training import unet as training
    entered, compiled = [], []

    @contextlib.contextmanager
    def counting(device):
        entered.append(torch.is_grad_enabled())
        yield
    monkeypatch.setattr(training, "autocast", counting)
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)
    train, val = _splits(stores)
    cfg = _cfg(epochs=2, compile=True)
    train_unet(train, val, cfg, tmp_path / "m.pt")
    steps = -(-len(train) // cfg.batch_size)
    assert entered == [True] * (2 * steps)            # training steps only, never under no_grad
    assert len(compiled) == 1


def test_deterministic_mode_sets_cublas_workspace_and_strict_algorithms(monkeypatch):
    from pipeline.training.device import seed_everything
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        seed_everything(3, deterministic=True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        seed_everything(0)
    assert torch.is_deterministic_algorithms_warn_only_enabled()   # CPU default: deterministic where possible


def test_resume_checkpoint_keeps_rng_states_and_loads_older_ones(stores, tmp_path):
    from pipeline.training.unet import _rng_state, _set_rng_state
    torch.manual_seed(11)
    state = _rng_state()
    assert set(state) == {"cpu", "cuda"} and state["cuda"] == [] if not torch.cuda.is_available() else True
    a = torch.rand(3)
    _set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    _set_rng_state(state["cpu"])            # checkpoints of the previous version held the CPU state only
    assert torch.equal(torch.rand(3), a)


def test_each_epoch_is_scored_on_the_first_val_volumes(stores):
    from pipeline.training.unet import epoch_val_volumes
    val = SliceStores(stores / "slices.zarr", stores / "undersampled.zarr", None, "train", raw=True)
    every = val.volumes()
    assert len(every) >= 2
    assert epoch_val_volumes(val, 0) == every and epoch_val_volumes(val, 1) == every[:1]
    assert epoch_val_volumes(val, len(every) + 5) == every
