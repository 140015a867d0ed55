"""The stores equal what fastMRI's own loaders and transforms give on the same files."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import fastmri
from fastmri.data import SliceDataset
from fastmri.data import transforms as T

from pipeline.kspace import INTEGER_ACCELERATION_MASKS, MASK_TYPES, mask_function, volume_mask, zero_filled
from pipeline.slice_stores import MaskSpec, build_slices_store, build_undersampled_store, scan
from pipeline.stores.zarr_store import open_store


def _reference_image(kspace: np.ndarray, mask_func, fname: str, crop: int, challenge: str):
    """fastMRI's reference chain: apply_mask -> ifft2c -> complex_center_crop -> complex_abs (-> rss)."""
    masked, mask, _ = T.apply_mask(T.to_tensor(kspace), mask_func, seed=tuple(map(ord, fname)))
    image = T.complex_center_crop(fastmri.ifft2c(masked), (crop, crop))
    image = fastmri.complex_abs(image)
    if challenge == "multicoil":
        image = fastmri.rss(image)
    return image.numpy(), mask.numpy().reshape(-1).astype(bool)


@pytest.mark.parametrize("challenge", ["singlecoil", "multicoil"])
def test_stores_equal_fastmri_unet_transform(full_size_fastmri, tmp_path, challenge):
    root = full_size_fastmri / challenge
    spec = MaskSpec("random", 4, 0.08)
    scans = scan(root, challenge, 320)
    build_undersampled_store(tmp_path / "u.zarr", scans, raw_dir=str(root), challenge=challenge, crop=320, mask=spec)
    build_slices_store(tmp_path / "s.zarr", scans, raw_dir=str(root), challenge=challenge, crop=320)
    u, s = open_store(tmp_path / "u.zarr", kind="undersampled"), open_store(tmp_path / "s.zarr", kind="slices")
    mask_func = mask_function("random", 4, 0.08)
    for split in ("train", "val", "test"):
        ds = SliceDataset(root / split, challenge, transform=T.UnetDataTransform(challenge, mask_func=mask_func))
        assert len(ds) == u[split]["image"].shape[0] == s[split]["target"].shape[0]
        for i in range(len(ds)):
            sample = ds[i]
            fname, slice_num = sample.fname, sample.slice_num
            assert u[split]["volume"][i] == fname and int(u[split]["slice"][i]) == slice_num
            image = u[split]["image"][i]
            mean, std = u[split]["mean"][i], u[split]["std"][i]
            np.testing.assert_allclose(mean, sample.mean.item(), rtol=1e-5)
            np.testing.assert_allclose(std, sample.std.item(), rtol=1e-5)
            normed = np.clip((image - mean) / (std + 1e-11), -6, 6)
            np.testing.assert_allclose(normed, sample.image.numpy(), atol=2e-4)
            target = s[split]["target"][i]
            normed_target = np.clip((target - mean) / (std + 1e-11), -6, 6)
            np.testing.assert_allclose(normed_target, sample.target.numpy(), atol=2e-4)
            # Un-normalised image and mask against fastMRI's transform chain on the raw k-space.
            with h5py.File(ds.raw_samples[i].fname, "r") as f:
                k = f["kspace"][slice_num]
            ref_image, ref_mask = _reference_image(k, mask_func, fname, 320, challenge)
            scale = ref_image.max()
            np.testing.assert_allclose(image, ref_image, atol=1e-5 * scale, rtol=0)
            np.testing.assert_array_equal(u[split]["mask"][i][: ref_mask.size], ref_mask)


@pytest.mark.parametrize("mask_type", MASK_TYPES)
@pytest.mark.parametrize("acceleration", [4, 8])
def test_masks_and_zero_filled_match_fastmri(mask_type, acceleration):
    rng = np.random.default_rng(1)
    k = (rng.standard_normal((2, 640, 368)) + 1j * rng.standard_normal((2, 640, 368))).astype(np.complex64)
    fname = "file1000123.h5"
    mask = volume_mask(mask_function(mask_type, acceleration, 0.08), fname, k.shape)
    for s in range(2):
        ref_image, ref_mask = _reference_image(k[s], mask_function(mask_type, acceleration, 0.08), fname, 320, "singlecoil")
        np.testing.assert_array_equal(mask, ref_mask)
        got = zero_filled(k[s:s + 1], mask, 320)[0]
        np.testing.assert_allclose(got, ref_image, atol=1e-5 * ref_image.max(), rtol=0)
    # One mask per volume, seeded by its file name: the same name gives the same mask, other volumes
    # get other masks (fastMRI draws the random columns, or the equispaced offset, per volume).
    func = mask_function(mask_type, acceleration, 0.08)
    np.testing.assert_array_equal(volume_mask(func, fname, k.shape), mask)
    assert len({volume_mask(func, f"file{1000000 + i}.h5", k.shape).tobytes() for i in range(8)}) > 1
    # The centre fraction is fully sampled; the other columns at 1 in `acceleration` (equispaced and
    # magic masks add the centre to acceleration-spaced lines, the others count it in).
    low = round(368 * 0.08)
    assert mask[(368 - low + 1) // 2:][:low].all()
    expected = 368 / acceleration + (low * (1 - 1 / acceleration) if mask_type in INTEGER_ACCELERATION_MASKS else 0)
    assert abs(int(mask.sum()) - expected) <= 0.1 * expected


def test_zero_filled_multicoil_is_rss_of_coils():
    rng = np.random.default_rng(2)
    k = (rng.standard_normal((1, 3, 64, 40)) + 1j * rng.standard_normal((1, 3, 64, 40))).astype(np.complex64)
    mask = np.zeros(40, bool)
    mask[::3] = True
    per_coil = np.stack([zero_filled(k[:, c], mask, 32) for c in range(3)], axis=1)
    np.testing.assert_allclose(zero_filled(k, mask, 32), np.sqrt((per_coil ** 2).sum(1)), rtol=1e-5)
    full = zero_filled(k[:, 0], np.ones(40, bool), 32)
    ref = fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(T.to_tensor(k[0, 0])), (32, 32))).numpy()
    np.testing.assert_allclose(full[0], ref, atol=1e-5 * ref.max())
