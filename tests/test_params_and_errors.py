"""Nothing silently wrong: params.yaml is complete and the only home of defaults; annotation rows
that point nowhere are left out, counted in one warning and listed with their reason; machine
failures (read-only, full disk, non-UTF-8 files), odd accelerations, mismatched or unsafe
checkpoints, killed workers and bugs all end in one clear line, never a silent fallback or a
traceback (unless ROIRECON_DEBUG=1 asks for it)."""
from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.errors import InputError
from stages import settings as S
from stages.settings import load_params
from tests.helpers import REPO, run_cli, write_params

HEADER = "file,slice,study_level,x,y,width,height,label\n"


def _leaf_keys(params: dict) -> list[str]:
    """`seed`, `data.crop`, ...: top-level scalars and each key of a section (dict-valued settings
    such as synthetic.volumes are one key)."""
    return [f"{k}.{kk}" for k, v in params.items() if isinstance(v, dict) for kk in v] + \
        [k for k, v in params.items() if not isinstance(v, dict)]


def _params_without(path: Path, dotted: str) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    *parents, last = dotted.split(".")
    node = params
    for p in parents:
        node = node[p]
    del node[last]
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ------------------------------------------------------------------ 1. one home for every default

REPO_KEYS = _leaf_keys(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_repo_params_list_every_setting():
    assert {"loss.roi_weight", "mask.acceleration", "data.raw_dir", "synthetic.volumes", "seed"} <= set(REPO_KEYS)
    model_keys = []
    for name, field in S.Params.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, S.Section):
            model_keys += [f"{name}.{k}" for k in sub.model_fields]
        else:
            model_keys.append(name)
    assert sorted(model_keys) == sorted(REPO_KEYS)


def test_settings_models_hold_no_defaults():
    for model in [S.Params] + [f.annotation for f in S.Params.model_fields.values()
                               if isinstance(f.annotation, type) and issubclass(f.annotation, S.Section)]:
        defaulted = [k for k, f in model.model_fields.items() if not f.is_required()]
        assert defaulted == [], f"{model.__name__} defaults {defaulted}"


@pytest.mark.parametrize("key", REPO_KEYS)
def test_every_missing_key_is_named(tmp_path, key):
    f = _params_without(tmp_path / "params.yaml", key)
    with pytest.raises(InputError) as e:
        load_params(f)
    assert str(e.value) == f"{f}: {key}: missing"


def test_missing_section_is_named(tmp_path):
    f = _params_without(tmp_path / "params.yaml", "loss")
    with pytest.raises(InputError, match=r"params\.yaml: loss: missing$"):
        load_params(f)


def test_missing_volume_count_is_named(tmp_path):
    f = write_params(tmp_path / "p.yaml", synthetic={"volumes": {"train": 2, "val": 1}})
    with pytest.raises(InputError, match=r"synthetic\.volumes: missing count for 'test'"):
        load_params(f)


def test_cli_missing_roi_weight_exits_1_and_writes_nothing(tmp_path):
    f = _params_without(tmp_path / "params.yaml", "loss.roi_weight")
    out = tmp_path / "u.zarr"
    r = run_cli("undersample", "--raw-dir", tmp_path / "raw", "--out", out, "--params", f)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"error: {f}: loss.roi_weight: missing"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_cli_missing_raw_dir_is_not_defaulted(tmp_path, tiny_fastmri):
    f = _params_without(tmp_path / "params.yaml", "data.raw_dir")
    out = tmp_path / "s.zarr"
    r = run_cli("prepare", "--raw-dir", tiny_fastmri, "--out", out, "--params", f)
    assert r.exit_code == 1 and "data.raw_dir: missing" in r.stderr
    assert not out.exists()


def test_train_config_requires_what_params_set():
    from pipeline.training.unet import TrainConfig
    required = {f.name for f in dataclasses.fields(TrainConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert {"epochs", "batch_size", "lr", "roi_weight", "seed", "device", "loss_kind", "ssim_weight",
            "deterministic", "compile"} <= required
    with pytest.raises(TypeError, match="roi_weight"):
        TrainConfig(variant="weighted", model={}, epochs=1, batch_size=1, lr=1e-3, seed=0, device="cpu")


def test_only_the_roi_variants_read_the_roi_weight(tmp_path):
    loss = load_params(write_params(tmp_path / "p.yaml", loss={"roi_weight": 7.5, "roi_norm": "none", "roi_margin": 3,
                                                               "roi_soft": 1.5, "background_weight": 0.25})).loss
    assert loss.weighting_for(True) == {"roi_weight": 7.5, "roi_norm": "none", "roi_margin": 3, "roi_soft": 1.5,
                                        "background_weight": 0.25}
    assert loss.weighting_for(False) == {"roi_weight": 0.0, "roi_norm": "mean", "roi_margin": 0, "roi_soft": 0.0,
                                         "background_weight": 1.0}


def test_recon_loss_kind_is_required():
    from pipeline.losses import ReconLoss
    with pytest.raises(TypeError):
        ReconLoss()


# ------------------------------------------------------------------ 4. mask.acceleration

@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_acceleration_must_be_finite(tmp_path, value):
    f = write_params(tmp_path / "p.yaml", mask={"acceleration": value})
    with pytest.raises(InputError, match=r"mask\.acceleration: Input should be a finite number"):
        load_params(f)


def test_acceleration_yaml_inf_is_refused_by_the_cli(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("  acceleration: 4\n", "  acceleration: .inf\n")
    f = tmp_path / "params.yaml"
    f.write_text(text)
    out = tmp_path / "u.zarr"
    r = run_cli("undersample", "--raw-dir", tmp_path / "raw", "--out", out, "--params", f)
    assert r.exit_code == 1 and "mask.acceleration" in r.stderr and "finite" in r.stderr
    assert "inf" not in r.stdout and not out.exists()


@pytest.mark.parametrize("mask_type", ["equispaced", "magic"])
def test_integer_masks_need_integer_acceleration(tmp_path, mask_type):
    f = write_params(tmp_path / "p.yaml", mask={"type": mask_type, "acceleration": 2.5})
    with pytest.raises(InputError) as e:
        load_params(f)
    assert str(e.value).startswith(f"{f}: mask.acceleration: {mask_type} masks need an integer acceleration")
    ok = write_params(tmp_path / "q.yaml", mask={"type": mask_type, "acceleration": 4.0})
    assert load_params(ok).mask.acceleration == 4


def test_fractional_acceleration_still_fine_for_random_masks(tmp_path):
    assert load_params(write_params(tmp_path / "p.yaml", mask={"acceleration": 2.5})).mask.acceleration == 2.5


def test_check_mask_refuses_the_same_as_the_settings():
    from pipeline.kspace import check_mask
    with pytest.raises(ValueError, match=r"^acceleration: must be a finite number"):
        check_mask("random", float("inf"), 0.08)
    with pytest.raises(ValueError, match=r"^acceleration: equispaced masks need an integer"):
        check_mask("equispaced", 2.5, 0.08)
    with pytest.raises(ValueError, match=r"^type: unknown mask type 'gaussian'"):
        check_mask("gaussian", 4, 0.08)
    with pytest.raises(ValueError, match=r"^center_fraction: must be in \(0, 1\), got 1.5"):
        check_mask("random", 4, 1.5)
    check_mask("equispaced", 4.0, 0.08)
    check_mask("random", 2.5, 0.08)


# ------------------------------------------------------------------ 4. checkpoints vs params, 5. unsafe files

def test_checkpoint_with_other_widths_or_never_trained_is_refused(tmp_path):
    from pipeline.models.registry import build_unet, load_unet, model_config, save_unet
    cfg = model_config("fastmri", 4, 2, 0.0, True)
    save_unet(tmp_path / "a.pt", build_unet(cfg), {"model": cfg, "history": [{"val/loss": 1.0}]})
    save_unet(tmp_path / "raw.pt", build_unet(cfg), {"model": cfg})
    params_model = model_config("fastmri", 8, 2, 0.0, True)
    with pytest.raises(InputError, match=r"a\.pt: checkpoint architecture .*chans=4.* differs from unet\.\* in "
                                         r"params\.yaml .*chans=8"):
        load_unet(tmp_path / "a.pt", params_model, expected_label="unet.* in params.yaml")
    load_unet(tmp_path / "a.pt", cfg, require_trained=True)
    with pytest.raises(InputError, match=r"raw\.pt: the checkpoint records no training epoch"):
        load_unet(tmp_path / "raw.pt", cfg, require_trained=True)


@pytest.mark.parametrize("value", [1, 1.0, 0.5])
def test_acceleration_must_be_greater_than_one(tmp_path, value):
    f = write_params(tmp_path / "p.yaml", mask={"acceleration": value})
    with pytest.raises(InputError) as e:
        load_params(f)
    assert str(e.value) == f"{f}: mask.acceleration: Input should be greater than 1 (got {value!r})"
    from pipeline.kspace import check_mask
    with pytest.raises(ValueError) as e:
        check_mask("random", value, 0.08)
    assert str(e.value) == f"acceleration: must be a finite number greater than 1, got {value!r}"


def test_acceleration_of_one_is_one_line_from_the_cli(tmp_path, tiny_fastmri):
    f = write_params(tmp_path / "p.yaml", mask={"acceleration": 1})
    out = tmp_path / "u.zarr"
    r = run_cli("undersample", "--raw-dir", tiny_fastmri, "--out", out, "--params", f)
    assert r.exit_code == 1
    assert r.stderr == f"error: {f}: mask.acceleration: Input should be greater than 1 (got 1)\n"
    assert not out.exists()


# ------------------------------------------------------------------ 5. tracebacks only on request

DEBUG_HINT = "(set ROIRECON_DEBUG=1 for the traceback)"


def _stage_raising(monkeypatch, tmp_path, exc):
    """Run `boxmaps` with its params loading raising `exc`."""
    import stages.settings

    def boom(*a, **k):
        raise exc
    monkeypatch.setattr(stages.settings, "load_params", boom)
    out = tmp_path / "b.zarr"
    r = run_cli("boxmaps", "--slices", tmp_path / "s.zarr", "--out", out, "--rejected", tmp_path / "r.csv")
    assert not out.exists() and not (tmp_path / "r.csv").exists()
    return r


def test_a_bug_is_one_line_and_exit_code_2(tmp_path, monkeypatch):
    monkeypatch.delenv("ROIRECON_DEBUG", raising=False)
    r = _stage_raising(monkeypatch, tmp_path, KeyError("oops"))
    assert r.exit_code == 2
    assert r.stderr == f"error: internal error: KeyError: 'oops' {DEBUG_HINT}\n"
    monkeypatch.setenv("ROIRECON_DEBUG", "0")
    r = _stage_raising(monkeypatch, tmp_path, ValueError("bad\nthing"))
    assert r.exit_code == 2 and r.stderr == f"error: internal error: ValueError: bad {DEBUG_HINT}\n"
    r = _stage_raising(monkeypatch, tmp_path, RuntimeError())
    assert r.exit_code == 2 and r.stderr == f"error: internal error: RuntimeError {DEBUG_HINT}\n"


def test_a_bug_shows_its_traceback_with_roirecon_debug(tmp_path, monkeypatch):
    monkeypatch.setenv("ROIRECON_DEBUG", "1")
    r = _stage_raising(monkeypatch, tmp_path, KeyError("oops"))
    assert r.exit_code == 2
    first, rest = r.stderr.split("\n", 1)
    assert first == "error: internal error: KeyError: 'oops'"
    assert rest.startswith("Traceback (most recent call last):\n") and "in boom" in rest
    assert rest.endswith("KeyError: 'oops'\n")


@pytest.mark.parametrize("exc,line", [
    (InputError("data.crop: too big"), "data.crop: too big"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/y"), "/x/y: Permission denied"),
])
def test_expected_errors_are_one_line_with_the_traceback_only_on_request(tmp_path, monkeypatch, exc, line):
    monkeypatch.delenv("ROIRECON_DEBUG", raising=False)
    r = _stage_raising(monkeypatch, tmp_path, exc)
    assert r.exit_code == 1 and r.stderr == f"error: {line}\n"
    monkeypatch.setenv("ROIRECON_DEBUG", "1")
    r = _stage_raising(monkeypatch, tmp_path, exc)
    assert r.exit_code == 1
    first, rest = r.stderr.split("\n", 1)
    assert first == f"error: {line}"
    assert rest.startswith("Traceback (most recent call last):\n") and f"{type(exc).__name__}: " in rest


def test_click_usage_errors_raised_in_a_stage_stay_usage_errors(tmp_path, monkeypatch):
    import typer
    r = _stage_raising(monkeypatch, tmp_path, typer.BadParameter("nope"))
    assert r.exit_code == 2 and "Invalid value: nope" in r.stderr and "internal error" not in r.stderr


class NotATensor:
    pass


def test_unsafe_checkpoint_refused_without_torch_advice(tmp_path):
    from pipeline.models.registry import load_unet
    from pipeline.models.torch_files import read_torch_file
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "config": {"kind": "unet"}, "x": NotATensor()}, path)
    for call in (lambda: read_torch_file(path, missing="m", unreadable="not a readable checkpoint"),
                 lambda: load_unet(path)):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{path}: not a readable checkpoint (it holds objects other than tensors and plain data")
        assert "NotATensor" in msg and "refused" in msg
        assert "weights_only" not in msg and "False" not in msg and "\n" not in msg


# ------------------------------------------------------------------ 2. annotation rows

@pytest.fixture(scope="module")
def slices_store(tiny_fastmri, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ann")
    params = write_params(tmp / "params.yaml", data={"crop": 24, "workers": 1})
    r = run_cli("prepare", "--raw-dir", tiny_fastmri, "--out", tmp / "slices.zarr", "--params", params)
    assert r.exit_code == 0, r.output
    return tmp / "slices.zarr"


def _volume(slices_store: Path, split: str = "train") -> tuple[str, int]:
    from pipeline.io.annotations import store_volumes
    name, n = sorted(store_volumes(slices_store)[split].items())[0]
    return name[:-3], n


def _boxes(csv: Path, slices_store: Path, split: str = "train"):
    from pipeline.roi.boxes import split_boxes
    return split_boxes(csv, slices_store, split, 24, None)


def test_good_rows_are_kept_and_absent_files_rejected_in_one_line(tmp_path, slices_store, capsys):
    name, n = _volume(slices_store)
    csv = tmp_path / "knee.csv"
    csv.write_text(HEADER + f"{name},{n - 1},No,10,10,6,5,Meniscus Tear\n"
                   f"{name},,Yes,,,,,Artifact\n"
                   "file9999998,99,No,-5,400,0,3,far away\n"
                   "file9999999,1,No,1,1,2,2,x\n")
    boxes = _boxes(csv, slices_store)
    assert list(boxes) == [(f"{name}.h5", n - 1)]
    assert capsys.readouterr().err == f"{csv}: 2 of 3 box rows rejected (2 unknown file): not used\n"


def test_labels_are_stripped(tmp_path, slices_store):
    from pipeline.io.annotations import read_annotations
    name, _ = _volume(slices_store)
    csv = tmp_path / "knee.csv"
    csv.write_text(HEADER + f" {name}.h5 ,1,No,1,1,4,4,Joint Effusion \n{name},,Yes ,,,,,  Artifact\t\n")
    table = read_annotations(csv)
    assert table["label"].tolist() == ["Joint Effusion", "Artifact"]
    assert table["file"].tolist() == [name, name] and table["study_level"].tolist() == ["No", "Yes"]
    # native rows 32 - 1 - 4 = 27.. in the 32x32 frame, moved into the central 24x24 crop (offset 4), clipped
    assert _boxes(csv, slices_store) == {(f"{name}.h5", 1): [((23, 0, 1, 1), "Joint Effusion")]}


BAD_ROWS = [  # (row, reason written to the rejected-rows CSV)
    ("{name},99,No,10,10,6,5,x", "slice out of range (volume has slices 0..{last})"),
    ("{name},-3,No,10,10,6,5,x", "slice out of range (volume has slices 0..{last})"),
    ("{name},1,No,-2,10,6,5,x", "box outside the frame (x and y must be >= 0)"),
    ("{name},1,No,10,-1,6,5,x", "box outside the frame (x and y must be >= 0)"),
    ("{name},1,No,10,10,0,5,x", "non-positive size (0x5)"),
    ("{name},1,No,10,10,6,-5,x", "non-positive size (6x-5)"),
    ("{name},1,No,30,10,6,5,x", "box outside the frame (32x32)"),
    ("{name},1,No,10,30,6,5,x", "box outside the frame (32x32)"),
    ("{name},1,No,,,,,x", "missing fields (x, y, width, height)"),
    ("{name},,No,1,1,4,4,x", "missing fields (slice)"),
    ("file9999999,1,No,1,1,4,4,x", "unknown file"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_bad_row_is_left_out_with_its_reason(tmp_path, slices_store, capsys, row, reason):
    from pipeline.roi.boxes import check_boxes
    name, n = _volume(slices_store)
    csv = tmp_path / "knee.csv"
    csv.write_text(HEADER + f"{name},0,No,1,1,4,4,ok\n\n" + row.format(name=name) + "\n")
    checked = check_boxes(csv, slices_store, rejected_csv=tmp_path / "rejected.csv")
    assert checked.rejected["line"].tolist() == [4]
    assert checked.rejected["reason"].tolist() == [reason.format(last=n - 1)]
    kind = reason.split(" (")[0]
    assert capsys.readouterr().err == f"{csv}: 1 of 2 box rows rejected (1 {kind}): see {tmp_path / 'rejected.csv'}\n"
    assert list(_boxes(csv, slices_store)) == [(f"{name}.h5", 0)]


def test_bad_row_of_another_split_is_rejected_too(tmp_path, slices_store, capsys):
    name, n = _volume(slices_store, "test")
    csv = tmp_path / "knee.csv"
    csv.write_text(HEADER + f"{name},{n},No,1,1,4,4,x\n{name},0,No,1,1,4,4,y\n")
    assert _boxes(csv, slices_store, "train") == {}
    assert capsys.readouterr().err == f"{csv}: 1 of 2 box rows rejected (1 slice out of range): not used\n"


@pytest.mark.parametrize("text,message", [
    ("", "empty annotations file (expected the header file,slice,"),
    ("\n", "empty annotations file"),
    (HEADER, "no annotation rows, only the header"),
    (HEADER + "\n,,,,,,,\n", "no annotation rows, only the header"),
    ("file1000001,1,No,1,1,4,4,x\n", "no header line (the first line must be file,slice,study_level,x,y,width,"
                                     "height,label)"),
    ("file,slice,study_level,x,y,width,height\nfile1,1,No,1,1,4,4\n", "annotation CSV lacks columns ['label']"),
])
def test_empty_or_headerless_csv_is_one_line(tmp_path, slices_store, text, message):
    csv = tmp_path / "knee.csv"
    csv.write_text(text)
    with pytest.raises(InputError) as e:
        _boxes(csv, slices_store)
    assert str(e.value) == f"{csv}: {message}" or str(e.value).startswith(f"{csv}: {message}")
    assert "\n" not in str(e.value)


def _boxmaps(tmp_path, slices_store, csv):
    out, rejected = tmp_path / "boxmaps.zarr", tmp_path / "reports" / "annotations_rejected.csv"
    r = run_cli("boxmaps", "--slices", slices_store, "--annotations", csv, "--out", out, "--rejected", rejected,
                "--params", write_params(tmp_path / "p.yaml"))
    return r, out, rejected


def test_boxmaps_cli_writes_rejected_rows_with_reasons(tmp_path, slices_store):
    import zarr
    name, n = _volume(slices_store)
    other, m = _volume(slices_store, "val")
    csv = tmp_path / "knee.csv"
    csv.write_text(HEADER + f"{name},1,No,10,10,4,4,Joint Effusion \n"
                   f"{name},99,No,1,1,4,4,Meniscus Tear\n"
                   f"{name},,Yes,,,,,Artifact\n"
                   "file9999999,1,No,1,1,4,4,x\n"
                   f"{other},0,No,30,1,4,4,y\n"
                   f"{other},0,No,1,1,0,4,z\n"
                   f"{other},0,No,,1,3,4,\n"
                   "file9999998,1,No,1,1,4,4,x\n")
    r, out, rejected = _boxmaps(tmp_path, slices_store, csv)
    assert r.exit_code == 0, r.output
    assert r.stderr.count(f"{csv}:") == 1
    assert f"{csv}: 6 of 7 box rows rejected (2 unknown file, 1 missing fields, 1 slice out of range, " \
           f"1 non-positive size, 1 box outside the frame): see {rejected}\n" in r.stderr
    assert rejected.read_text() == (
        "line,file,slice,x,y,width,height,label,reason\n"
        f"3,{name},99,1,1,4,4,Meniscus Tear,slice out of range (volume has slices 0..{n - 1})\n"
        "5,file9999999,1,1,1,4,4,x,unknown file\n"
        f"6,{other},0,30,1,4,4,y,box outside the frame (32x32)\n"
        f"7,{other},0,1,1,0,4,z,non-positive size (0x4)\n"
        f"8,{other},0,,1,3,4,,missing fields (x)\n"
        "9,file9999998,1,1,1,4,4,x,unknown file\n")
    heat = zarr.open_group(str(out), mode="r")
    assert float(heat["train"]["heatmap"][:].sum()) == 16.0  # only the one good 4x4 box
    assert float(heat["val"]["heatmap"][:].sum()) == 0.0
    assert not list(tmp_path.glob(".tmp-*")) and not list(rejected.parent.glob(".tmp-*"))


def test_boxmaps_cli_writes_a_header_only_csv_when_nothing_is_rejected(tmp_path, slices_store):
    name, _ = _volume(slices_store)
    csv = tmp_path / "knee.csv"
    csv.write_text(HEADER + f"{name},1,No,1,1,4,4,x\n")
    r, out, rejected = _boxmaps(tmp_path, slices_store, csv)
    assert r.exit_code == 0 and "rejected" not in r.stderr
    assert rejected.read_text() == "line,file,slice,x,y,width,height,label,reason\n"
    assert out.is_dir()


@pytest.mark.parametrize("text", ["", HEADER])
def test_boxmaps_cli_empty_csv_exits_1_and_writes_nothing(tmp_path, slices_store, text):
    csv = tmp_path / "knee.csv"
    csv.write_text(text)
    r, out, rejected = _boxmaps(tmp_path, slices_store, csv)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: {csv}: ") and r.stderr.count("\n") == 1
    assert not out.exists() and not rejected.exists() and not list(tmp_path.glob(".tmp-*"))


# ------------------------------------------------------------------ 3. machine failures and encodings

def test_non_utf8_params_is_one_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_bytes((REPO / "params.yaml").read_bytes().replace(b"# Every key", b"# \xe9very key"))
    out = tmp_path / "s.zarr"
    r = run_cli("prepare", "--raw-dir", tmp_path, "--out", out, "--params", f)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"error: {f}: not UTF-8 text (byte 0xe9 at offset 2)"
    assert not out.exists()


def test_non_utf8_annotations_is_one_line(tmp_path, slices_store):
    csv = tmp_path / "knee.csv"
    csv.write_bytes(HEADER.encode() + b"file1,1,No,1,1,4,4,Meniscus \xff\n")
    out = tmp_path / "boxmaps.zarr"
    r = run_cli("boxmaps", "--slices", slices_store, "--annotations", csv, "--out", out,
                "--params", write_params(tmp_path / "p.yaml"))
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: {csv}: not UTF-8 text (byte 0xff") and r.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory_is_one_line(tmp_path, tiny_fastmri):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        r = run_cli("prepare", "--raw-dir", tiny_fastmri, "--out", d / "s.zarr",
                    "--params", write_params(tmp_path / "p.yaml", data={"crop": 24, "workers": 1}))
    finally:
        d.chmod(0o755)
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "Permission denied" in r.stderr and str(d) in r.stderr
    assert list(d.iterdir()) == []


def test_output_below_a_file_is_one_line(tmp_path, tiny_fastmri):
    """A real OSError from the file system (no monkeypatching): the output's parent is a file."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("prepare", "--raw-dir", tiny_fastmri, "--out", blocker / "sub" / "s.zarr",
                "--params", write_params(tmp_path / "p.yaml", data={"crop": 24, "workers": 1}))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"error: {blocker / 'sub'}: ") and "Traceback" not in r.output
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_os_errors_while_writing_are_one_line(tmp_path, tiny_fastmri, monkeypatch, code):
    """The error is raised where bytes reach the disk (zarr's LocalStore), under every writer."""
    import zarr.storage

    set_bytes = zarr.storage.LocalStore.set

    async def fail_on_chunks(self, key, value, *a, **k):
        if "/c/" in key:        # a shard of data; metadata (zarr.json) is written as usual
            raise OSError(code, os.strerror(code), "/data/out/shard.bin")
        return await set_bytes(self, key, value, *a, **k)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", fail_on_chunks)
    out = tmp_path / "s.zarr"
    r = run_cli("prepare", "--raw-dir", tiny_fastmri, "--out", out,
                "--params", write_params(tmp_path / "p.yaml", data={"crop": 24, "workers": 1}))
    assert r.exit_code == 1
    assert r.stderr == f"error: /data/out/shard.bin: {os.strerror(code)}\n"
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_wrapped_os_error_is_found_and_bugs_still_raise():
    from stages.app import environment_error
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/x/y")
        except OSError as exc:
            raise RuntimeError("write failed") from exc
    except RuntimeError as wrapped:
        assert environment_error(wrapped) == "/x/y: No space left on device"
    assert environment_error(ValueError("a bug")) is None
    assert environment_error(OSError(errno.ENOSPC, "No space left on device")) == \
        "(path not reported): No space left on device"


# ------------------------------------------------------------------ 6. killed parents, stale temporaries

WORKER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from pipeline.parallel import ordered_map
    d = {d!r}

    def work(i):
        open(os.path.join(d, f"{{os.getpid()}}.pid"), "w").close()
        time.sleep(120)
        return i

    for _ in ordered_map(work, range(4), 2):
        pass
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(WORKER_SCRIPT.format(repo=str(REPO), d=str(tmp_path)))
    parent = subprocess.Popen([sys.executable, str(script)])
    pids: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(pids) < 2:
            pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
            time.sleep(0.1)
        assert len(pids) == 2, "workers did not start"
        assert all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "pool workers outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_ordered_map_still_maps_in_order():
    from pipeline.parallel import ordered_map
    assert list(ordered_map(abs, [-3, -1, -2, 5, -7], 2)) == [3, 1, 2, 5, 7]


def _pid(_) -> int:
    time.sleep(0.05)        # every worker gets some of the items
    return os.getpid()


def test_one_pool_serves_several_ordered_maps():
    """synthesize renders the fastMRI volumes and then the exams on the same two workers."""
    from pipeline.parallel import OrderedPool
    with OrderedPool(2) as pool:
        assert list(pool.map(abs, [-3, -1, -2, 5, -7])) == [3, 1, 2, 5, 7]
        first, second = set(pool.map(_pid, range(6))), set(pool.map(_pid, range(6)))
    # the same (at most two) workers, never this process; a pool per map would give new pids
    assert len(first | second) <= 2 and first & second and os.getpid() not in first | second
    with OrderedPool(1) as pool:                            # one worker: in this process
        assert set(pool.map(_pid, range(3))) == {os.getpid()}


def test_parent_watchdog_ends_an_orphaned_worker():
    """The fallback where prctl is unavailable: a worker whose parent pid changed exits."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from pipeline.parallel import _watch_parent; " \
           f"_watch_parent(-1, 0.01)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 1


def test_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    """torch.save onto a full device (/dev/full gives ENOSPC on every write): an OSError naming
    the checkpoint, which the stage wrapper prints as one line."""
    import builtins

    from pipeline.models import registry
    from stages.app import environment_error
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: real_open("/dev/full", mode)
                        if str(f).startswith(str(tmp_path / ".tmp-")) else real_open(f, mode, *a, **k))
    cfg = registry.model_config("fastmri", 2, 1, 0.0, False)
    with pytest.raises(OSError) as e:
        registry.save_unet(tmp_path / "m.pt", registry.build_unet(cfg), {"model": cfg})
    assert environment_error(e.value) == f"{tmp_path / 'm.pt'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_a_bug_raised_while_handling_an_os_error_keeps_its_traceback():
    from stages.app import environment_error
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")
        except OSError:
            {}["missing"]
    except KeyError as bug:
        assert environment_error(bug) is None


def test_a_refused_value_is_told_by_the_setting_it_came_from():
    from pipeline.errors import BadValue
    from stages.app import named
    with pytest.raises(InputError) as e, named(crop="data.crop"):
        raise BadValue("crop", "4096 is larger than the image (640x368) of f.h5")
    assert str(e.value) == "data.crop: 4096 is larger than the image (640x368) of f.h5"
    with pytest.raises(BadValue) as e, named(crop="data.crop"):    # another value: left as it is
        raise BadValue("layer", "'x' is not a layer")
    assert str(e.value) == "layer: 'x' is not a layer" and isinstance(e.value, ValueError)
