"""The embedded synthetic knee dataset: phantom, fastMRI file format, fastMRI+ annotations, MRNet
exams. Sizes are tiny (recon 32-64, a few slices) so the module runs in seconds."""
from __future__ import annotations

import csv
import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import fastmri
from fastmri.data import transforms as T
from fastmri.data.mri_data import AnnotatedSliceDataset, SliceDataset, et_query
from fastmri.data.subsample import RandomMaskFunc

from pipeline.synthetic.acquisition import acquire_fov, acquire_volume, encoding_for
from pipeline.roi.boxes import slice_boxes
from pipeline.errors import InputError
from pipeline.io.annotations import (COLUMNS, from_fastmri_plus, read_annotations,
                                     to_fastmri_plus, write_annotations)
from pipeline.synthetic.phantom import render_knee
from pipeline.synthetic.fastmri_plus_knee import FRAME_AREA_QUANTILES, KNEE_LABELS, SHARE_UNDER_400_PX_AT_320
from pipeline.synthetic.lesions import LESION_KINDS
from pipeline.synthetic.dataset import (SyntheticSpec, exam_acquisitions, synth_volume, synthesize, total_units,
                                        write_fastmri, write_mrnet_exams)


def FULL_MASK(shape, offset=None, seed=None):
    """A fastMRI mask function that keeps every column (acceleration 1)."""
    mshape = [1] * len(shape)
    mshape[-2] = shape[-2]
    return torch.ones(mshape), shape[-2]


def _spec(**kw) -> SyntheticSpec:
    base = dict(volumes={"train": 2, "val": 1, "test": 1}, slices=4, recon_size=48, coils=1,
                lesion_rate=0.5, exams={"train": 6, "valid": 4}, exam_slices=3)
    base.update(kw)
    return SyntheticSpec(**base)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, list[dict], SyntheticSpec]:
    d = tmp_path_factory.mktemp("single")
    spec = _spec()
    rows = write_fastmri(d, spec, seed=3)
    return d, rows, spec


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> tuple[Path, SyntheticSpec]:
    d = tmp_path_factory.mktemp("multi")
    spec = _spec(volumes={"train": 1, "val": 1}, slices=2, recon_size=32, coils=4)
    write_fastmri(d, spec, seed=5)
    return d, spec


def _ifft_crop_abs(kspace: np.ndarray, R: int) -> torch.Tensor:
    img = fastmri.ifft2c(T.to_tensor(kspace))
    return fastmri.complex_abs(T.complex_center_crop(img, (R, R)))


# --------------------------------------------------------------------------- geometry
def test_encoding_matches_fastmri_knee_geometry():
    e = encoding_for(320)
    assert (e.rows, e.cols, e.acquired) == (640, 368, 332)
    assert (e.padding_left, e.padding_right) == (18, 350)
    assert 368 - e.padding_right == e.padding_left           # symmetric zero columns
    e = encoding_for(128)
    assert (e.rows, e.cols, e.acquired, e.padding_left, e.padding_right) == (256, 148, 134, 7, 141)
    for R in (16, 32, 48, 64, 100, 128, 256, 320):
        e = encoding_for(R)
        assert e.rows == 2 * R and e.cols % 2 == 0 and e.cols >= R
        assert 0 < e.padding_left < e.padding_right <= e.cols


def test_full_size_file_reads_like_fastmri_knee(tmp_path):
    spec = _spec(volumes={"val": 1}, slices=1, recon_size=320)
    write_fastmri(tmp_path, spec, seed=0)
    ds = SliceDataset(tmp_path / "val", "singlecoil")
    meta = ds.raw_samples[0].metadata
    assert meta["encoding_size"] == (640, 368, 1)
    assert meta["recon_size"] == (320, 320, 1)
    assert (meta["padding_left"], meta["padding_right"]) == (18, 350)
    kspace, mask, target, attrs, fname, _ = ds[0]
    assert kspace.shape == (640, 368) and kspace.dtype == np.complex64
    assert mask is None and target.shape == (320, 320)
    assert re.fullmatch(r"file\d{7}\.h5", fname)


# --------------------------------------------------------------------------- single-coil
def test_singlecoil_files_layout_and_attrs(single):
    d, _, spec = single
    enc = encoding_for(spec.recon_size)
    files = sorted(d.rglob("*.h5"))
    assert [len(list((d / s).glob("*.h5"))) for s in ("train", "val", "test")] == [2, 1, 1]
    assert len({f.name for f in files}) == 4
    for f in files:
        assert re.fullmatch(r"file\d{7}\.h5", f.name)
        with h5py.File(f, "r") as hf:
            k = hf["kspace"][()]
            esc = hf["reconstruction_esc"][()]
            assert k.shape == (spec.slices, enc.rows, enc.cols) and k.dtype == np.complex64
            assert esc.shape == (spec.slices, 48, 48) and esc.dtype == np.float32
            np.testing.assert_array_equal(hf["reconstruction_rss"][()], esc)
            a = dict(hf.attrs)
            assert a["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
            assert a["max"] == pytest.approx(float(esc.max()), rel=1e-6)
            assert a["norm"] == pytest.approx(float(np.linalg.norm(esc)), rel=1e-5)
            assert re.fullmatch(r"[0-9a-f]{64}", a["patient_id"])
            assert 5e-5 < a["max"] < 3e-3             # real-data scale, not ~1
            # zero columns outside the encoded lines, data inside
            pl, pr = enc.padding_left, enc.padding_right
            assert not k[..., :pl].any() and not k[..., pr:].any()
            assert np.all(np.abs(k[..., pl:pr]).sum(axis=(0, 1)) > 0)
            root = ET.fromstring(hf["ismrmrd_header"][()])
            assert root.tag == "{http://www.ismrm.org/ISMRMRD}ismrmrdHeader"
            enc_q = ["encoding", "encodedSpace", "matrixSize"]
            assert int(et_query(root, enc_q + ["x"])) == enc.rows
            assert int(et_query(root, enc_q + ["y"])) == enc.cols
            lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
            assert int(et_query(root, lims + ["maximum"])) == enc.acquired - 1
            assert int(et_query(root, lims + ["minimum"])) == 0
            assert int(et_query(root, ["encoding", "reconSpace", "matrixSize", "x"])) == 48
            assert float(et_query(root, ["encoding", "reconSpace", "fieldOfView_mm", "x"])) > 0


def test_singlecoil_slicedataset_and_unet_transform(single):
    d, _, spec = single
    enc = encoding_for(spec.recon_size)
    raw = SliceDataset(d / "train", "singlecoil")
    assert len(raw) == 2 * spec.slices
    meta = raw.raw_samples[0].metadata
    assert meta["encoding_size"] == (enc.rows, enc.cols, 1)
    assert meta["recon_size"] == (48, 48, 1)
    assert (meta["padding_left"], meta["padding_right"]) == (enc.padding_left, enc.padding_right)

    ds = SliceDataset(d / "train", "singlecoil",
                      transform=T.UnetDataTransform("singlecoil", mask_func=FULL_MASK))
    for i in range(len(ds)):
        kspace, _, target, attrs, fname, sl = raw[i]
        # the stored target is exactly abs(center_crop(ifft2c(kspace)))
        recon = _ifft_crop_abs(kspace, 48).numpy()
        np.testing.assert_allclose(recon, target, rtol=1e-5, atol=1e-6 * float(target.max()))
        s = ds[i]
        assert s.image.shape == s.target.shape == (48, 48)
        assert s.max_value == pytest.approx(float(attrs["max"]))
        # a full mask reproduces the target (both normalised by the image's mean/std)
        torch.testing.assert_close(s.image, s.target, rtol=0, atol=1e-4)
        with h5py.File(d / "train" / fname, "r") as hf:
            np.testing.assert_array_equal(target, hf["reconstruction_esc"][sl])


def test_undersampling_gives_aliasing_not_identity(single):
    d, _, _ = single
    ds = SliceDataset(d / "val", "singlecoil", transform=T.UnetDataTransform(
        "singlecoil", mask_func=RandomMaskFunc(center_fractions=[0.08], accelerations=[4])))
    s = ds[len(ds) // 2]
    err = float((s.image - s.target).abs().mean())
    assert 0.02 < err < 1.0


# --------------------------------------------------------------------------- multi-coil
def test_multicoil_rss_target_and_transform(multi):
    d, spec = multi
    enc = encoding_for(spec.recon_size)
    raw = SliceDataset(d / "train", "multicoil")
    assert len(raw) == spec.slices
    kspace, _, target, attrs, fname, _ = raw[0]
    assert kspace.shape == (4, enc.rows, enc.cols) and kspace.dtype == np.complex64
    with h5py.File(d / "train" / fname, "r") as hf:
        assert "reconstruction_esc" not in hf
        assert hf["kspace"].shape == (spec.slices, 4, enc.rows, enc.cols)
    rss = fastmri.rss(_ifft_crop_abs(kspace, spec.recon_size), dim=0).numpy()
    np.testing.assert_allclose(rss, target, rtol=1e-5, atol=1e-6 * float(target.max()))
    # coil images differ (smooth, distinct sensitivities), yet RSS is one knee
    coil = _ifft_crop_abs(kspace, spec.recon_size).numpy()
    assert coil.shape[0] == 4 and np.corrcoef(coil[0].ravel(), coil[2].ravel())[0, 1] < 0.99
    ds = SliceDataset(d / "train", "multicoil",
                      transform=T.UnetDataTransform("multicoil", mask_func=FULL_MASK))
    s = ds[0]
    torch.testing.assert_close(s.image, s.target, rtol=0, atol=1e-4)


def test_coil_sensitivities_do_not_change_the_knee():
    """Unit-RSS coil maps: the multicoil target of a volume is the single-coil one (up to the
    band-limit acting on each coil image)."""
    single_spec = _spec(volumes={"train": 1, "val": 1}, slices=2, recon_size=32, coils=1,
                        noise=0.0)
    multi_spec = _spec(volumes={"train": 1, "val": 1}, slices=2, recon_size=32, coils=4,
                       noise=0.0)
    _, ts, *_ = synth_volume(single_spec, 5, "val", 0, False)
    _, tm, *_ = synth_volume(multi_spec, 5, "val", 0, False)
    np.testing.assert_allclose(tm, ts, rtol=0, atol=0.03 * float(ts.max()))
    assert np.abs(tm - ts).mean() < 0.005 * float(ts.max())


# --------------------------------------------------------------------------- annotations
def test_fastmri_plus_flip_convention_round_trip(tmp_path):
    H = 320
    native = (5, 200, 30, 40)                        # row0, col0, height, width: near the top
    x, y, w, h = to_fastmri_plus(*native, frame_height=H)
    assert (x, y, w, h) == (200, 320 - 5 - 30, 40, 30)  # y counts from the bottom
    assert from_fastmri_plus(x, y, w, h, frame_height=H) == native
    path = tmp_path / "knee.csv"
    write_annotations(path, [
        dict(file="file1000001.h5", slice=14, study_level="No", x=x, y=y, width=w, height=h,
             label="Meniscus Tear"),
        dict(file="file1000002", slice=None, study_level="Yes", label="Artifact "),
    ])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1] == "file1000001,14,No,200,285,40,30,Meniscus Tear"
    assert lines[2] == "file1000002,,Yes,,,,,Artifact "
    df = read_annotations(path)
    r = df.iloc[0]
    assert (r.file, r.slice, r.x, r.y, r.width, r.height) == ("file1000001", 14, 200, 285, 40, 30)
    assert from_fastmri_plus(r.x, r.y, r.width, r.height, frame_height=H) == native
    study = df.iloc[1]
    assert study.study_level == "Yes" and study.label == "Artifact"
    assert pd.isna(study.slice) and pd.isna(study.x) and pd.isna(study.height)


def test_read_annotations_real_knee_csv_rows(tmp_path):
    path = tmp_path / "knee.csv"
    path.write_text("file,slice,study_level,x,y,width,height,label\n"
                    "file1000001,14,No,90,173,35,10,Cartilage - Partial Thickness loss/defect\n"
                    "file1000002,9,No,86,51,169,99,Joint Effusion \n")
    df = read_annotations(path)
    frames = {"file1000001.h5": (320, 320), "file1000002.h5": (320, 320)}
    # native row0 = 320 - y - height; crop = the whole frame
    assert slice_boxes(df, frames, crop=320) == {
        ("file1000001.h5", 14): [((320 - 173 - 10, 90, 10, 35), "Cartilage - Partial Thickness loss/defect")],
        ("file1000002.h5", 9): [((320 - 51 - 99, 86, 99, 169), "Joint Effusion")]}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,slice,x\nfile1,1,2\n")
    with pytest.raises(InputError, match="lacks columns"):
        read_annotations(bad)


def test_annotations_match_fastmri_annotated_dataset(single, tmp_path, monkeypatch):
    """fastMRI's own AnnotatedSliceDataset (reading our CSV from its cache path) flips the boxes
    back to the native rows our phantom reported."""
    d, rows, spec = single
    assert rows, "the lesion volumes should have produced boxes"
    monkeypatch.chdir(tmp_path)
    write_annotations(tmp_path / ".annotation_cache" / "kneeNone.csv", rows)
    ds = AnnotatedSliceDataset(d / "train", "singlecoil", "knee", "all")
    table = read_annotations(tmp_path / ".annotation_cache" / "kneeNone.csv")
    seen = 0
    for fname, sl, meta in ds.raw_samples:
        a = meta["annotation"]
        if a["label"] == "":
            continue
        m = table[(table.file == fname.stem) & (table.slice == sl)]
        native = [from_fastmri_plus(r.x, r.y, r.width, r.height, spec.recon_size) for r in m.itertuples()]
        assert (a["y"], a["x"], a["height"], a["width"]) in native
        seen += 1
    assert seen == sum(1 for r in rows if (d / "train" / f"{r['file']}.h5").exists())


def test_annotation_rows_are_well_formed(single):
    d, rows, spec = single
    names = {f.stem for f in d.rglob("*.h5")}
    labels = set(KNEE_LABELS)
    for r in rows:
        assert set(r) == set(COLUMNS)
        assert r["file"] in names and not r["file"].endswith(".h5")
        assert 0 <= r["slice"] < spec.slices and r["study_level"] == "No"
        assert r["label"] in labels
        assert r["x"] >= 0 and r["y"] >= 0 and r["width"] > 0 and r["height"] > 0
        assert r["x"] + r["width"] <= 48 and r["y"] + r["height"] <= 48


# --------------------------------------------------------------------------- lesions
def test_lesions_do_not_set_the_volume_maximum():
    """Exams and targets are min/max scaled per volume: if a fluid-bright lesion raised the maximum,
    every slice of a lesion volume would come out darker, a global cue for the classifier. Normal
    joint fluid is as bright as lesion fluid, so the maximum barely moves."""
    ratios = []
    for i in range(16):
        vols = [render_knee(np.random.default_rng([5, i]), 8, (128, 74), lesion=les, fov_shape=(64, 64))
                for les in (True, False)]
        ratios.append(np.abs(vols[0].images).max() / np.abs(vols[1].images).max())
    assert np.mean(ratios) < 1.01 and max(ratios) < 1.05, ratios


@pytest.mark.parametrize("seed", range(6))
def test_lesion_boxes_cover_the_abnormal_pixels(seed):
    R, W = 64, encoding_for(64).cols
    with_les = render_knee(np.random.default_rng([seed, 9]), 8, (2 * R, W), lesion=True,
                           fov_shape=(R, R))
    without = render_knee(np.random.default_rng([seed, 9]), 8, (2 * R, W), lesion=False,
                          fov_shape=(R, R))
    assert without.lesions == [] and with_les.lesions
    assert with_les.acquisition == without.acquisition
    r0, c0 = R // 2, (W - R) // 2
    diff = np.abs(np.abs(with_les.images) - np.abs(without.images))[:, r0:r0 + R, c0:c0 + R]
    # nothing changes outside the recon frame; the knee is the same
    full = np.abs(np.abs(with_les.images) - np.abs(without.images))
    assert full.sum() == pytest.approx(diff.sum(), rel=1e-6)
    for k in range(8):
        inside = np.zeros((R, R), bool)
        for les in with_les.lesions:
            for sl, (br, bc, bh, bw) in zip(les.slices, les.boxes):
                if sl == k:
                    box = diff[k, br:br + bh, bc:bc + bw]
                    assert box.max() > 0.15, (les.kind, k)      # clearly visible contrast
                    inside[br:br + bh, bc:bc + bw] = True
        total = diff[k].sum()
        if total > 0:
            assert diff[k][inside].sum() >= 0.9 * total     # the change lies in the boxes
    for les in with_les.lesions:
        assert list(les.slices) == sorted(les.slices) and len(les.slices) == len(les.boxes)
        assert les.slices[-1] - les.slices[0] == len(les.slices) - 1      # adjacent slices
        br, bc, bh, bw = les.box
        for b in les.boxes:
            assert br <= b[0] and bc <= b[1]
            assert b[0] + b[2] <= br + bh and b[1] + b[3] <= bc + bw
            assert b[0] >= 0 and b[1] >= 0 and b[0] + b[2] <= R and b[1] + b[3] <= R


def test_lesions_visible_in_the_written_targets(single):
    """Same volume with and without its lesion: the targets differ inside the annotated boxes."""
    d, rows, spec = single
    assert rows
    by_file = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    files = {f.stem: f for f in d.rglob("*.h5")}
    for name, rs in by_file.items():
        split = files[name].parent.name
        idx = sorted(f.stem for f in (d / split).glob("*.h5")).index(name)
        _, t_les, les, *_ = synth_volume(spec, 3, split, idx, True)
        _, t_no, no_les, *_ = synth_volume(spec, 3, split, idx, False)
        assert les and not no_les
        with h5py.File(files[name], "r") as hf:
            np.testing.assert_array_equal(hf["reconstruction_esc"][()], t_les)
        diff = np.abs(t_les - t_no) / float(t_no.max())
        for r in rs:
            row0, col0, h, w = from_fastmri_plus(r["x"], r["y"], r["width"], r["height"],
                                                 spec.recon_size)
            box = diff[r["slice"], row0:row0 + h, col0:col0 + w]
            outside = diff[r["slice"]].copy()
            outside[row0:row0 + h, col0:col0 + w] = 0
            assert box.max() > 0.1
            assert box.mean() > 3 * outside.mean()


def test_lesion_share_and_labels():
    R, W = 64, encoding_for(64).cols
    kinds = set()
    for seed in range(40):
        v = render_knee(np.random.default_rng([seed, 1]), 12, (2 * R, W), lesion=True,
                        fov_shape=(R, R))
        assert 1 <= len(v.lesions) <= 3
        assert len({les.label for les in v.lesions}) == len(v.lesions)
        for les in v.lesions:
            assert 1 <= len(les.slices) <= 12
            kinds.add(les.kind)
    assert kinds == set(LESION_KINDS)


@pytest.fixture(scope="module")
def default_boxes():
    """Every lesion box of 150 lesion volumes at the embedded default (128 frame, 16 slices)."""
    R = 128
    enc = encoding_for(R)
    rows = []
    for i in range(150):
        v = render_knee(np.random.default_rng([2026, i]), 16, enc.grid, lesion=True, fov_shape=(R, R))
        for les in v.lesions:
            rows += [dict(volume=i, label=les.label, run=len(les.slices), area=b[2] * b[3] / (R * R))
                     for b in les.boxes]
    return pd.DataFrame(rows)


def test_box_areas_match_fastmri_plus_quantiles(default_boxes):
    """As a fraction of the frame, the 10th, 50th and 90th percentile box areas are within 25% of
    fastMRI+ knee.csv's (0.18%, 0.53%, 4.66%), and about as many boxes are small."""
    area = default_boxes["area"]
    assert len(area) > 400
    for q, real in FRAME_AREA_QUANTILES.items():
        assert abs(area.quantile(q) / real - 1.0) <= 0.25, (q, area.quantile(q), real)
    small = (area * 320 * 320 < 400).mean()
    assert abs(small - SHARE_UNDER_400_PX_AT_320) < 0.1, small


def test_box_labels_follow_fastmri_plus_frequencies(default_boxes):
    share = default_boxes["label"].value_counts(normalize=True)
    assert set(share.index) <= set(KNEE_LABELS)
    for label in ("Meniscus Tear", "Cartilage - Partial Thickness loss/defect", "Joint Effusion"):
        assert abs(share[label] - KNEE_LABELS[label].share) < 0.35 * KNEE_LABELS[label].share + 0.02, \
            (label, share[label])
    assert share.index[0] == "Meniscus Tear"
    # lesions span consecutive slices, longer for the labels that do in knee.csv
    runs = default_boxes.groupby("label")["run"].median()
    assert runs["Meniscus Tear"] > runs["Cartilage - Partial Thickness loss/defect"]


# --------------------------------------------------------------------------- phantom API
def test_render_knee_api_and_determinism():
    shape, fov = (64, 38), (32, 32)
    va = render_knee(np.random.default_rng(4), 3, shape, lesion=True, fov_shape=fov)
    vb = render_knee(np.random.default_rng(4), 3, shape, lesion=True, fov_shape=fov)
    a, la = va.images, va.lesions
    assert a.shape == (3, 64, 38) and a.dtype == np.complex64
    np.testing.assert_array_equal(a, vb.images)
    assert la == vb.lesions and va.acquisition == vb.acquisition
    c = render_knee(np.random.default_rng(5), 3, shape, lesion=True, fov_shape=fov).images
    assert not np.array_equal(a, c)
    mag = np.abs(a)
    assert np.isfinite(a).all() and mag.max() > 0.5
    # the knee fits in the recon frame's columns (a 2-pixel rendering margin aside)
    c0 = (38 - 32) // 2
    assert not mag[:, :, :c0 - 2].any() and not mag[:, :, c0 + 32 + 2:].any()
    # smooth, non-trivial phase on the object
    ph = np.angle(a[1][mag[1] > 0.2 * mag.max()])
    assert ph.std() > 0.05


def test_exam_and_volume_acquisitions_agree():
    """Exams use the cheap column-only acquisition; without noise it equals the full one."""
    enc = encoding_for(48)
    v = render_knee(np.random.default_rng(8), 3, enc.grid, lesion=False, fov_shape=(48, 48))
    fov = acquire_fov(v.images, enc, 0.0, np.random.default_rng(0))
    _, full = acquire_volume(v.images, enc, 1, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(fov, full, rtol=0, atol=1e-5 * float(full.max()))
    noisy = acquire_fov(v.images, enc, 0.05, np.random.default_rng(0))
    _, noisy_full = acquire_volume(v.images, enc, 1, 0.05, np.random.default_rng(1))
    bg_a, bg_b = noisy[:, :, :2].std(), noisy_full[:, :, :2].std()
    assert bg_a == pytest.approx(bg_b, rel=0.3) and bg_a > 0


# --------------------------------------------------------------------------- determinism
def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    spec = _spec(volumes={"train": 2, "test": 1}, slices=2, recon_size=32,
                 exams={"train": 3, "valid": 2}, exam_slices=2)
    calls = []
    synthesize(tmp_path / "a", spec, seed=11, progress=calls.append)
    synthesize(tmp_path / "b", spec, seed=11, workers=2)
    synthesize(tmp_path / "c", spec, seed=12)
    assert sum(calls) == total_units(spec) == 8
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert set(da) >= {"annotations.csv", "mrnet/boxes.csv", "mrnet/train-abnormal.csv",
                       "mrnet/valid-abnormal.csv"}
    assert sum(k.startswith("fastmri/") for k in da) == 3
    assert da != dc


# --------------------------------------------------------------------------- MRNet exams
def test_mrnet_exam_layout(tmp_path):
    spec = _spec(recon_size=32, exams={"train": 8, "valid": 4}, exam_slices=3, lesion_rate=0.5)
    write_mrnet_exams(tmp_path, spec, seed=2)
    train = sorted((tmp_path / "train" / "coronal").glob("*.npy"))
    valid = sorted((tmp_path / "valid" / "coronal").glob("*.npy"))
    assert [p.stem for p in train] == [f"{i:04d}" for i in range(8)]
    assert [p.stem for p in valid] == [f"{i:04d}" for i in range(8, 12)]
    for p in train + valid:
        x = np.load(p)
        assert x.dtype == np.uint8 and x.shape == (3, 32, 32)
        assert x.min() == 0 and x.max() == 255
    labels = {}
    for split, n in (("train", 8), ("valid", 4)):
        with open(tmp_path / f"{split}-abnormal.csv") as fh:
            rows = list(csv.reader(fh))
        assert len(rows) == n and all(re.fullmatch(r"\d{4}", r[0]) and r[1] in "01"
                                      for r in rows)
        labels.update({r[0]: int(r[1]) for r in rows})
        assert abs(sum(int(r[1]) for r in rows) - n * spec.lesion_rate) <= 1
    boxes = pd.read_csv(tmp_path / "boxes.csv", dtype={"case": str})
    assert list(boxes.columns) == ["case", "split", "slice", "row0", "col0", "height", "width",
                                   "label"]
    assert set(boxes.case) == {c for c, v in labels.items() if v == 1}
    assert (boxes.row0 >= 0).all() and ((boxes.row0 + boxes.height) <= 32).all()
    assert ((boxes.col0 + boxes.width) <= 32).all() and (boxes.slice < 3).all()


def test_exam_acquisitions_name_each_written_exams_contrast(tmp_path):
    """`exam_acquisitions` gives every written exam's id and the contrast it is rendered with (its
    generator: [seed, 1, split index, index], the module's stream contract), without rendering it."""
    spec = _spec(recon_size=32, exams={"train": 12, "valid": 6}, exam_slices=2, lesion_rate=0.5)
    write_mrnet_exams(tmp_path, spec, seed=3)
    acq = exam_acquisitions(spec.exams, seed=3)
    assert sorted(acq) == sorted(p.stem for p in tmp_path.rglob("*.npy"))
    assert set(acq.values()) == {"CORPD_FBK", "CORPDFS_FBK"}
    enc = encoding_for(32)
    rendered = [render_knee(np.random.default_rng([3, 1, split_index, i]), 1, enc.grid, lesion=True,
                            fov_shape=(32, 32)).acquisition
                for split_index, n in enumerate((12, 6)) for i in range(n)]
    assert [acq[c] for c in sorted(acq)] == rendered
    # a valid exam is drawn from (split, index): the same contrast whatever the train count, its id shifted
    assert list(exam_acquisitions({"valid": 6}, seed=3).values()) == rendered[12:]


def test_exams_are_other_subjects_than_volumes(tmp_path):
    """Exams and reconstruction volumes use separate generator streams."""
    spec = _spec(volumes={"train": 1}, slices=3, recon_size=32, coils=1, noise=0.0,
                 exams={"train": 1}, exam_slices=3)
    _, target, *_ = synth_volume(spec, 0, "train", 0, False)
    write_mrnet_exams(tmp_path, spec, seed=0)
    exam = np.load(tmp_path / "train" / "coronal" / "0000.npy").astype(np.float32)
    t = (target - target.min()) / (target.max() - target.min()) * 255
    assert np.abs(exam - t).mean() > 5


# --------------------------------------------------------------------------- spec validation
@pytest.mark.parametrize("kw, name", [
    (dict(recon_size=8), "recon_size"),
    (dict(slices=0), "slices"),
    (dict(coils=1.5), "coils"),
    (dict(lesion_rate=1.5), "lesion_rate"),
    (dict(noise=-0.1), "noise"),
    (dict(volumes={"train": -1}), "volumes.train"),
    (dict(volumes={"training": 2}), "volumes"),
    (dict(exams={"test": 2}), "exams"),
    (dict(volumes={"train": 0}), "volumes"),
])
def test_spec_validation(kw, name):
    with pytest.raises(InputError, match=re.escape(f"synthetic.{name}")):
        _spec(**kw)


def test_default_spec():
    s = SyntheticSpec()
    assert s.volumes == {"train": 22, "val": 6, "test": 8} and s.recon_size == 128
    assert s.exams == {"train": 120, "valid": 40} and s.slices == 16 and s.exam_slices == 8
    assert total_units(s) == 196


def test_evaluation_splits_can_be_lesion_rich():
    from pipeline.synthetic.dataset import _fastmri_jobs
    spec = SyntheticSpec(volumes={"train": 10, "val": 8, "test": 40}, lesion_rate=0.5, eval_lesion_rate=0.9)
    lesions = {s: sum(j[4] for j in _fastmri_jobs(spec, 0) if j[2] == s) for s in ("train", "val", "test")}
    assert lesions == {"train": 5, "val": 7, "test": 36}
    plain = SyntheticSpec(volumes={"train": 10, "val": 8, "test": 40}, lesion_rate=0.5)
    assert sum(j[4] for j in _fastmri_jobs(plain, 0) if j[2] == "test") == 20
    with pytest.raises(InputError, match="synthetic.eval_lesion_rate"):
        SyntheticSpec(eval_lesion_rate=1.5)
