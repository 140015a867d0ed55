"""Damaged stores: every chunk is checksummed (crc32c) and counted in a completion record, and a
reader refuses a store with a missing, truncated or corrupted chunk, shard index or metadata, or
with insane statistics, in one line naming the store and array, writing nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.errors import InputError
from pipeline.models.registry import build_unet, model_config, save_unet
from pipeline.stores.zarr_store import ShardedWriter, finish_store, open_store
from pipeline.stores.unet_data import SliceStores
from tests.helpers import run_cli, write_params
from tests.test_unet import TINY_UNET, build_stores, one_thread  # noqa: F401

STORES = ("slices.zarr", "undersampled.zarr", "heatmaps.zarr")


@pytest.fixture(scope="module")
def stores(tiny_fastmri, tmp_path_factory) -> Path:
    return build_stores(tiny_fastmri, tmp_path_factory.mktemp("integrity_stores"))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in STORES:
        shutil.copytree(src / name, dst / name)
    shutil.copy(src / "params.yaml", dst / "params.yaml")
    return dst


def _load(d: Path, split: str) -> dict:
    """Every row of the split, read through the training/evaluation dataset."""
    stores = SliceStores(d / "slices.zarr", d / "undersampled.zarr", d / "heatmaps.zarr", split, raw=True)
    return {**stores[range(len(stores))], "volume": stores.volume, "slice": stores.slice}


def _shard(d: Path, store: str, split: str, array: str) -> Path:
    return d / store / split / array / "c" / "0" / "0" / "0"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def _garble_json(path: Path) -> None:
    path.write_text(path.read_text()[:-40] + "#")


def _drop_record(d: Path, store: str) -> None:
    meta = d / store / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["complete"]
    meta.write_text(json.dumps(doc))


def _rewrite(d: Path, store: str, split: str, array: str, fn) -> None:
    """A valid write (checksums and record intact) of implausible values."""
    arr = zarr.open_group(str(d / store), mode="r+")[split][array].with_config({"write_empty_chunks": True})
    arr[:] = fn(arr[:])


# (id, damage(d, split), store, what the one-line message names)
CASES = [
    ("deleted-shard", lambda d, s: _shard(d, "undersampled.zarr", s, "image").unlink(),
     "undersampled.zarr", "image: chunk c/0/0/0 is missing"),
    ("flipped-byte-in-shard", lambda d, s: _flip(_shard(d, "slices.zarr", s, "target"), 10),
     "slices.zarr", "target: chunk c/0/0/0 (rows 0-"),
    ("flipped-byte-in-heatmap", lambda d, s: _flip(_shard(d, "heatmaps.zarr", s, "heatmap"), 40),
     "heatmaps.zarr", "heatmap: chunk c/0/0/0"),
    ("truncated-shard", lambda d, s: _shard(d, "slices.zarr", s, "target").write_bytes(
        _shard(d, "slices.zarr", s, "target").read_bytes()[:-100]), "slices.zarr", "target: chunk c/0/0/0"),
    ("shard-emptied", lambda d, s: _shard(d, "slices.zarr", s, "target").write_bytes(b""),
     "slices.zarr", "target: chunk c/0/0/0 is empty"),
    ("corrupt-shard-index", lambda d, s: _flip(_shard(d, "undersampled.zarr", s, "image"),
                                                _shard(d, "undersampled.zarr", s, "image").stat().st_size - 12),
     "undersampled.zarr", "image: chunk c/0/0/0"),
    ("corrupt-index-checksum", lambda d, s: _flip(_shard(d, "undersampled.zarr", s, "image"),
                                                   _shard(d, "undersampled.zarr", s, "image").stat().st_size - 2),
     "undersampled.zarr", "image: chunk c/0/0/0"),
    ("deleted-std-chunk", lambda d, s: (d / "undersampled.zarr" / s / "std" / "c" / "0").unlink(),
     "undersampled.zarr", "std: chunk c/0 is missing"),
    ("deleted-mean-chunk", lambda d, s: (d / "undersampled.zarr" / s / "mean" / "c" / "0").unlink(),
     "undersampled.zarr", "mean: chunk c/0 is missing"),
    ("flipped-byte-in-volume-names", lambda d, s: _flip(d / "slices.zarr" / s / "volume" / "c" / "0", 6),
     "slices.zarr", "volume"),
    ("flipped-byte-in-std", lambda d, s: _flip(d / "undersampled.zarr" / s / "std" / "c" / "0", 5),
     "undersampled.zarr", "std"),
    ("array-metadata-garbled", lambda d, s: _garble_json(d / "undersampled.zarr" / s / "mean" / "zarr.json"),
     "undersampled.zarr", "mean: unreadable metadata"),
    ("store-metadata-garbled", lambda d, s: _garble_json(d / "slices.zarr" / "zarr.json"),
     "slices.zarr", "unreadable slices store"),
    ("no-completion-record", lambda d, s: _drop_record(d, "undersampled.zarr"),
     "undersampled.zarr", "no completion record"),
    ("std-zero", lambda d, s: _rewrite(d, "undersampled.zarr", s, "std", np.zeros_like),
     "undersampled.zarr", "slice(s) with std 0"),
    ("mean-not-the-image's", lambda d, s: _rewrite(d, "undersampled.zarr", s, "mean", lambda m: m + 1.0),
     "undersampled.zarr", "mean/std"),
    ("blank-target-slice", lambda d, s: _rewrite(d, "slices.zarr", s, "target",
                                                 lambda t: np.concatenate([np.zeros_like(t[:1]), t[1:]])),
     "slices.zarr", "target: all-zero slice"),
]


def _one_line(message: str, store: str, names: str) -> None:
    assert "\n" not in message.strip(), message
    assert store in message and names in message, message


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_damaged_store_is_refused_by_the_reader(stores, tmp_path, case):
    _, damage, store, names = case
    d = _copy(stores, tmp_path / "d")
    damage(d, "val")
    with pytest.raises(InputError) as err:
        _load(d, "val")
    _one_line(str(err.value), store, names)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_damaged_store_fails_train_unet_in_one_line_writing_nothing(stores, tmp_path, case):
    _, damage, store, names = case
    d = _copy(stores, tmp_path / "d")
    damage(d, "train")
    out = tmp_path / "out"
    r = run_cli("train-unet", "--variant", "weighted", "--seed", "0", "--slices", d / "slices.zarr",
                "--undersampled", d / "undersampled.zarr", "--heatmaps", d / "heatmaps.zarr",
                "--out", out / "m.pt", "--live", out / "live", "--checkpoint-dir", out / "ckpt",
                "--params", d / "params.yaml")
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ")
    _one_line(r.stderr, store, names)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in
                                  ("deleted-shard", "flipped-byte-in-shard", "deleted-std-chunk",
                                   "corrupt-shard-index", "no-completion-record", "std-zero")],
                         ids=lambda c: c[0])
def test_damaged_store_fails_evaluate_in_one_line_writing_nothing(stores, tiny_fastmri, tmp_path, case):
    _, damage, store, names = case
    d = _copy(stores, tmp_path / "d")
    write_params(d / "params.yaml", data={"raw_dir": str(tiny_fastmri), "crop": 32, "workers": 1, "annotations": None},
                 unet={**TINY_UNET, "seeds": [0]}, evaluate={"n_figures": 2, "device": "cpu", "split": "test"})
    models = d / "models"
    cfg = model_config("fastmri", TINY_UNET["chans"], TINY_UNET["num_pool_layers"], 0.0, True)
    for v in ("baseline", "weighted", "oracle"):   # valid checkpoints: only the stores are damaged
        save_unet(models / f"{v}_s0.pt", build_unet(cfg), {"model": cfg, "variant": v, "train": {"seed": 0},
                                                           "history": [{"val/loss": 1.0}]})
    damage(d, "test")
    out = tmp_path / "out"
    r = run_cli("evaluate", "--slices", d / "slices.zarr", "--undersampled", d / "undersampled.zarr",
                "--heatmaps", d / "heatmaps.zarr", "--models", models,
                "--out", out / "reconstructions.zarr", "--metrics", out / "metrics.json",
                "--detail", out / "evaluation.json", "--per-volume", out / "per_volume.csv",
                "--figures", out / "figures", "--error-maps", out / "error_maps", "--params", d / "params.yaml")
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ")
    _one_line(r.stderr, store, names)
    assert not out.exists() or not list(out.iterdir())


def test_undamaged_copy_loads_bit_identically(stores, tmp_path):
    d = _copy(stores, tmp_path / "d")
    for split in ("train", "val", "test"):
        a, b = _load(stores, split), _load(d, split)
        for name in ("image", "target", "mean", "std", "heatmap", "target_raw", "zero_filled"):
            assert torch.equal(a[name], b[name]), name
        np.testing.assert_array_equal(a["volume"], b["volume"])
        np.testing.assert_array_equal(a["slice"], b["slice"])


def test_every_array_is_checksummed_and_counted(stores):
    for name in STORES:
        root = zarr.open_group(str(stores / name), mode="r")
        record = root.attrs["complete"]
        arrays = {k: a for k, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}
        assert set(record["chunks"]) == set(arrays) and record["checksum"] == "crc32c"
        for key, arr in arrays.items():
            meta = json.loads((stores / name / key / "zarr.json").read_text())
            codecs = meta["codecs"]
            if codecs[0]["name"] == "sharding_indexed":
                inner = codecs[0]["configuration"]
                assert inner["codecs"][-1]["name"] == "crc32c", key
                assert inner["index_codecs"][-1]["name"] == "crc32c", key
            else:
                assert codecs[-1]["name"] == "crc32c", key
            files = [p for p in (stores / name / key / "c").rglob("*") if p.is_file()]
            assert len(files) == record["chunks"][key] >= 1, key


def test_all_zero_slices_are_written_and_a_store_without_record_is_refused(tmp_path):
    root = zarr.open_group(str(tmp_path / "h.zarr"), mode="w")
    w = ShardedWriter(root.create_group("train"), 5, {"slice": ((), "int32"), "heatmap": ((4, 4), "float32")},
                      shard=2)
    w.append(slice=np.zeros(5, np.int32), heatmap=np.zeros((5, 4, 4), np.float32))
    w.close()
    with pytest.raises(InputError, match="no completion record"):
        open_store(tmp_path / "h.zarr", kind="heatmaps")
    assert finish_store(root) == {"train/heatmap": 3, "train/slice": 1}
    g = open_store(tmp_path / "h.zarr", kind="heatmaps")
    assert (g["train"]["heatmap"][:] == 0).all()
    (tmp_path / "h.zarr/train/heatmap/c/2/0/0").unlink()
    with pytest.raises(InputError, match=r"h.zarr: array train/heatmap: chunk c/2/0/0 is missing"):
        open_store(tmp_path / "h.zarr", kind="heatmaps")


def test_damage_in_a_later_shard_names_that_shard(tmp_path):
    root = zarr.open_group(str(tmp_path / "u.zarr"), mode="w")
    w = ShardedWriter(root.create_group("val"), 5, {"image": ((4, 4), "float32")}, shard=2)
    w.append(image=np.arange(80, dtype=np.float32).reshape(5, 4, 4))
    w.close()
    finish_store(root)
    _flip(tmp_path / "u.zarr/val/image/c/1/0/0", 3)
    from pipeline.stores.unet_data import read_image_rows
    g = open_store(tmp_path / "u.zarr", kind="undersampled")["val"]
    np.testing.assert_array_equal(read_image_rows(g["image"], [4, 0, 1]), np.arange(80, dtype=np.float32).reshape(5, 4, 4)[[4, 0, 1]])
    with pytest.raises(InputError, match=r"u.zarr: array val/image: chunk c/1/0/0 \(rows 2-3\) damaged "
                                         r"\(checksum mismatch\)"):
        read_image_rows(g["image"], np.arange(5))


def test_shard_rows_read_what_zarr_reads_and_refuse_what_zarr_refuses(stores, tmp_path):
    from pipeline.stores.zarr_store import ShardRows
    for store, split, name in (("slices.zarr", "val", "target"), ("undersampled.zarr", "train", "image"),
                               ("heatmaps.zarr", "test", "heatmap")):
        arr = open_store(stores / store, kind=store.split(".")[0])[split][name]
        fast = ShardRows.for_array(arr)
        assert fast is not None, name
        rows = np.arange(arr.shape[0])[::-1]
        out = np.empty((len(rows),) + arr.shape[1:], np.float32)
        fast.read(rows, out)
        np.testing.assert_array_equal(out, arr[:][rows])
    assert ShardRows.for_array(open_store(stores / "undersampled.zarr", kind="undersampled")["val"]["mean"]) is None

    root = zarr.open_group(str(tmp_path / "u.zarr"), mode="w")
    w = ShardedWriter(root.create_group("val"), 5, {"image": ((4, 4), "float32")}, shard=2)
    w.append(image=np.arange(80, dtype=np.float32).reshape(5, 4, 4))
    w.close()
    finish_store(root)
    shard = tmp_path / "u.zarr/val/image/c/1/0/0"
    good = shard.read_bytes()
    for offset, what in ((3, "checksum mismatch"), (len(good) - 2, "checksum mismatch")):  # a chunk; the index
        _flip(shard, offset)
        fast = ShardRows.for_array(open_store(tmp_path / "u.zarr", kind="undersampled")["val"]["image"])
        np.testing.assert_array_equal(fast.row(4), np.arange(64, 80, dtype=np.float32).reshape(4, 4))
        with pytest.raises(InputError, match=rf"u.zarr: array val/image: chunk c/1/0/0 \(rows 2-3\) damaged "
                                             rf"\({what}\)"):
            fast.row(2)
        shard.write_bytes(good)
