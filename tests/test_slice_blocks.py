"""prepare and undersample, a shard per job over worker processes: the same bytes whatever the
read size and the number of workers, and as writing every array through pipeline.stores.zarr_store's
ShardedWriter; the zero-filled transform's pieces (work arrays kept between volumes, odd sizes),
the statistics, the finiteness check, the lazy ordered map."""
from __future__ import annotations

import json
from pathlib import Path

import fastmri
import numpy as np
import pytest
import zarr
from fastmri.data import transforms as T

from pipeline import slice_stores
from pipeline.io.fastmri import all_finite
from pipeline.kspace import Workspace, ZeroFilled, instance_stats, zero_filled
from pipeline.parallel import ordered_map
from pipeline.slice_stores import MaskSpec, build_slices_store, build_undersampled_store, scan
from pipeline.stores.zarr_store import DIGEST, ShardedWriter, open_store, read_rows


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _build(raw: Path, out: Path, challenge: str, crop: int, workers: int) -> dict[str, bytes]:
    scans = scan(raw, challenge, crop)
    build_slices_store(out / "s.zarr", scans, raw_dir="raw", challenge=challenge, crop=crop, workers=workers)
    build_undersampled_store(out / "u.zarr", scans, raw_dir="raw", challenge=challenge, crop=crop,
                             mask=MaskSpec("random", 4, 0.08), workers=workers)
    return _files(out)


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_stores_identical_whatever_the_reads_and_workers(tiny_fastmri, tiny_fastmri_multicoil, tmp_path,
                                                         monkeypatch, challenge):
    raw = tiny_fastmri if challenge == "singlecoil" else tiny_fastmri_multicoil
    ref = _build(raw, tmp_path / "ref", challenge, 24, workers=1)
    monkeypatch.setattr(slice_stores, "READ_BYTES", 1)            # k-space read one slice at a time
    assert _build(raw, tmp_path / "small", challenge, 24, workers=2) == ref
    monkeypatch.setattr(slice_stores, "READ_BYTES", 1 << 30)      # a whole volume at a time
    assert _build(raw, tmp_path / "large", challenge, 24, workers=3) == ref


def test_stores_equal_writing_everything_through_sharded_writer(full_size_fastmri, tmp_path, monkeypatch):
    """Several shards per split (crop 320: 40 slices a shard, here made 1 by a 1-slice shard size):
    the workers' shards, the per-slice arrays and the content digests are what pipeline.stores.zarr_store's
    ShardedWriter writes for the same rows."""
    raw = full_size_fastmri / "singlecoil"
    monkeypatch.setattr(slice_stores, "shard_slices", lambda row_bytes: 1)
    scans = scan(raw, "singlecoil", 320)
    build_undersampled_store(tmp_path / "u.zarr", scans, raw_dir="raw", challenge="singlecoil", crop=320,
                             mask=MaskSpec("random", 4, 0.08), workers=2)
    got = open_store(tmp_path / "u.zarr", kind="undersampled")
    ref_root = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w")
    for split in ("train", "val", "test"):
        g = got[split]
        arrays = {k: (g[k].shape[1:], g[k].dtype if g[k].dtype.kind != "T" else str)
                  for k in ("volume", "slice", "image", "mean", "std", "mask")}
        w = ShardedWriter(ref_root.create_group(split), g["image"].shape[0], arrays, shard=1)
        w.append(**{k: read_rows(g[k]) for k in arrays})
        w.close()
        ref = ref_root[split]
        for k in arrays:
            assert g[k].shards == ref[k].shards and g[k].chunks == ref[k].chunks
            assert g[k].attrs[DIGEST] == ref[k].attrs[DIGEST], k
            ref_dir, got_dir = tmp_path / "ref.zarr" / split / k, tmp_path / "u.zarr" / split / k
            files = sorted(f.relative_to(ref_dir) for f in ref_dir.rglob("*") if f.is_file() and f.name != "zarr.json")
            assert files and files == sorted(f.relative_to(got_dir) for f in got_dir.rglob("*")
                                             if f.is_file() and f.name != "zarr.json")
            assert all((got_dir / f).read_bytes() == (ref_dir / f).read_bytes() for f in files), k
            assert json.loads((got_dir / "zarr.json").read_text()) == json.loads((ref_dir / "zarr.json").read_text())


def test_shard_jobs_cover_the_split_in_shards():
    from pipeline.io.fastmri import VolumeInfo
    infos = [VolumeInfo(Path(f"f{i}.h5"), "singlecoil", n, (n, 8, 8), (8, 8), 1.0, None) for i, n in
             enumerate([5, 3, 9, 1])]
    jobs = list(slice_stores._shard_jobs(infos, 4))
    assert [(a, b) for a, b, _ in jobs] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 18)]
    rows = [(info.name, s) for _, _, parts in jobs for info, a, b in parts for s in range(a, b)]
    assert rows == [(i.name, s) for i in infos for s in range(i.n_slices)]
    assert all(sum(b - a for _, a, b in parts) == end - first for first, end, parts in jobs)


def _reference(k: np.ndarray, mask: np.ndarray, crop: int) -> np.ndarray:
    x = T.to_tensor(k * mask)
    image = fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(x), (crop, crop)))
    if k.ndim == 4:
        image = fastmri.rss(image, dim=1)
    return image.numpy()


@pytest.mark.parametrize("shape", [(2, 64, 40), (2, 65, 40), (2, 64, 41), (2, 65, 41), (2, 3, 64, 40),
                                   (2, 3, 65, 41)])
@pytest.mark.parametrize("crop", [32, 21])
def test_zero_filled_matches_fastmri_at_odd_and_even_sizes(shape, crop):
    rng = np.random.default_rng(sum(shape) + crop)
    k = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    mask = rng.random(shape[-1]) < 0.3
    mask[shape[-1] // 2 - 2:shape[-1] // 2 + 2] = True
    ref = _reference(k, mask, crop)
    got = zero_filled(k, mask, crop)
    assert got.dtype == np.float32 and got.shape == (shape[0], crop, crop)
    np.testing.assert_allclose(got, ref, atol=1e-5 * ref.max(), rtol=0)


def test_kept_work_arrays_give_the_same_bytes_as_fresh_ones():
    rng = np.random.default_rng(3)
    work = Workspace()
    for i, (cols, step) in enumerate([(40, 1), (40, 3), (44, 2), (40, 1)]):
        k = (rng.standard_normal((5, 64, cols)) + 1j * rng.standard_normal((5, 64, cols))).astype(np.complex64)
        mask = rng.random(cols) < 0.25 + 0.1 * i     # another mask each time: old columns cleared
        kept = ZeroFilled((64, cols), mask, 32, workspace=work, step=step)
        blocks = np.concatenate([kept(k[:2]), kept(k[2:])])
        np.testing.assert_array_equal(blocks, zero_filled(k, mask, 32))


def test_instance_stats_as_numpy_in_float64():
    rng = np.random.default_rng(4)
    images = rng.random((3, 20, 20), dtype=np.float32) * 5
    mean, std = instance_stats(images)
    flat = images.reshape(3, -1).astype(np.float64)
    np.testing.assert_array_equal(mean, flat.mean(1).astype(np.float32))
    np.testing.assert_array_equal(std, flat.std(1, ddof=1).astype(np.float32))


def test_all_finite():
    x = np.ones((4, 10), np.float32)
    assert all_finite(x)
    big = np.full((4, 10), 3e38, np.float32)           # the sum overflows, every element is finite
    assert all_finite(big)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[2, 7] = bad
        assert not all_finite(y)
    z = x.copy()
    z[0, 0], z[3, 9] = np.inf, -np.inf                 # inf - inf: NaN sum
    assert not all_finite(z)


def test_ordered_map_takes_items_lazily():
    taken = []

    def items():
        for i in range(20):
            taken.append(i)
            yield i

    out = ordered_map(abs, items(), 2)
    assert next(out) == 0
    assert len(taken) <= 2 * 2 + 1                     # not the whole list up front
    assert [0] + list(out) == list(range(20))
    assert list(ordered_map(abs, iter([-4]), 2)) == [4]
    assert list(ordered_map(abs, iter([]), 2)) == []
