"""Undersampling masks and zero-filled reconstructions, following fastMRI exactly.

Masks come from `fastmri.data.subsample`, seeded per volume from the file name as fastMRI's
`UnetDataTransform` does, so a volume gets the same mask here as in fastMRI's own loaders.

The zero-filled image is `abs(center_crop(ifft2c(kspace * mask)))` (RSS over coils). It is
computed as two 1-D centred inverse FFTs with the crop in between: the readout transform only
runs over the sampled columns and only the cropped rows go through the phase-encode transform.
That is the same linear map as fastMRI's full 2-D transform, with far less arithmetic.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from fastmri.data import subsample

from pipeline.errors import InputError
from pipeline.portable_math import det_abs  # np.abs of complex data depends on the CPU's SIMD level

MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
# fastMRI spaces these masks by an integer number of lines (range(offset, n, acceleration))
INTEGER_ACCELERATION_MASKS = ("equispaced", "magic")


def mask_function(mask_type: str, acceleration: float, center_fraction: float) -> subsample.MaskFunc:
    if mask_type not in MASK_TYPES:
        raise InputError(f"mask.type: unknown mask type {mask_type!r}, expected one of {', '.join(MASK_TYPES)}")
    if (not isinstance(acceleration, (int, float)) or isinstance(acceleration, bool)
            or not math.isfinite(acceleration) or not acceleration > 1):
        raise InputError(f"mask.acceleration: must be a finite number greater than 1, got {acceleration!r}")
    if mask_type in INTEGER_ACCELERATION_MASKS and not float(acceleration).is_integer():
        raise InputError(f"mask.acceleration: {mask_type} masks need an integer acceleration, got {acceleration!r}")
    if not 0 < center_fraction < 1:
        raise InputError(f"mask.center_fraction: must be in (0, 1), got {center_fraction!r}")
    acc = int(acceleration) if float(acceleration).is_integer() else float(acceleration)
    return subsample.create_mask_for_mask_type(mask_type, [center_fraction], [acc])


def volume_mask(mask_func: subsample.MaskFunc, fname: str, kspace_shape: tuple[int, ...]) -> np.ndarray:
    """The 1-D column mask fastMRI applies to every slice of file `fname` (bool, (cols,))."""
    shape = (1,) * (len(kspace_shape) - 3) + tuple(kspace_shape[-2:]) + (2,)
    mask, _ = mask_func(shape, None, tuple(map(ord, fname)))
    return mask.numpy().reshape(-1).astype(bool)


def check_crop(crop: int, image_shape: tuple[int, int], where: str) -> None:
    if crop > min(image_shape):
        raise InputError(f"data.crop: {crop} is larger than the image ({image_shape[0]}x{image_shape[1]}) of {where}")


@lru_cache(maxsize=8)
def _row_slice(n: int, c: int) -> slice:
    s = (n - c) // 2
    return slice(s, s + c)


def ifftc_1d(x: np.ndarray, axis: int) -> np.ndarray:
    """fastMRI's centred orthonormal inverse FFT along one axis."""
    x = sfft.ifftshift(x, axes=axis)
    x = sfft.ifft(x, axis=axis, norm="ortho", overwrite_x=True)
    return sfft.fftshift(x, axes=axis)


@lru_cache(maxsize=16)
def _alternating(n: int) -> np.ndarray:
    return np.where(np.arange(n) % 2, -1, 1).astype(np.float32)


def zero_filled(kspace: np.ndarray, mask: np.ndarray, crop: int) -> np.ndarray:
    """abs(center_crop(ifft2c(kspace*mask), crop)), RSS over coils for 4-D k-space.

    kspace: complex (slices, [coils,] rows, cols); mask: bool (cols,). Returns float32 (slices, crop, crop).
    """
    rows, cols = kspace.shape[-2:]
    sel = np.flatnonzero(mask)
    r, c = _row_slice(rows, crop), _row_slice(cols, crop)
    sub = np.take(kspace, sel, axis=-1).astype(np.complex64, copy=False)
    if rows % 2 == 0 and cols % 2 == 0:
        # For even n, fftshift(ifft(ifftshift(x)))[j] = (-1)^(j - n/2) * ifft(x * (-1)^k)[j]:
        # alternating input signs replace both shifts, and the output signs vanish under abs().
        signs = _alternating(rows)[:, None] * _alternating(cols)[sel][None, :]
        sub.real *= signs               # real and imaginary parts apart: numpy's complex multiply
        sub.imag *= signs               # is CPU-dependent (FMA), see `_abs`
        transform = lambda x, axis: sfft.ifft(x, axis=axis, norm="ortho", overwrite_x=True)  # noqa: E731
    else:
        transform = ifftc_1d
    # Readout transform over the sampled columns only, then keep the cropped rows.
    sub = transform(sub, -2)[..., r, :]
    # Phase-encode transform of the cropped rows; unsampled columns stay zero.
    full = np.zeros(sub.shape[:-1] + (cols,), dtype=np.complex64)
    full[..., sel] = sub
    mag = det_abs(transform(full, -1)[..., c])
    if kspace.ndim == 4:
        mag = np.sqrt(np.sum(mag * mag, axis=1))
    return mag.astype(np.float32, copy=False)


def center_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """fastMRI `center_crop` on the last two axes."""
    h, w = image.shape[-2:]
    return image[..., _row_slice(h, crop), _row_slice(w, crop)]


def instance_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice mean and std as fastMRI's `normalize_instance` (torch std: unbiased)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return flat.mean(axis=1).astype(np.float32), flat.std(axis=1, ddof=1).astype(np.float32)
