"""Undersampling masks and zero-filled reconstructions, following fastMRI exactly.

Masks come from `fastmri.data.subsample`, seeded per volume from the file name as fastMRI's
`UnetDataTransform` does, so a volume gets the same mask here as in fastMRI's own loaders.

The zero-filled image is `abs(center_crop(ifft2c(kspace * mask)))` (RSS over coils). It is
computed as two 1-D inverse FFTs with the crop in between, the same linear map as fastMRI's full
2-D transform with about a third of the arithmetic:
- the readout (row) transform runs over the sampled columns only (the others are zero),
- only the cropped rows go through the phase-encode (column) transform, whose input is zero
  outside the sampled columns, and only the cropped columns are kept.
The centring shifts cost nothing on even axes (fastMRI's k-space is 640 x 368, 372, ...): the
input `ifftshift` only multiplies the output by (-1)^j, which the magnitude removes, and the output
`fftshift` is the same as flipping the sign of every other input sample (exact), which is done on
the sampled columns only. Odd axes are shifted by index. The magnitude is computed as fastMRI's
`complex_abs` does, `sqrt(re^2 + im^2)` in float32 (RSS: `sqrt(sum over coils of re^2 + im^2)`):
IEEE-exact operations, each a separate numpy call, so the same bytes on every x86-64 CPU, as are the
FFTs (pocketfft, compiled for the baseline, no runtime dispatch).

`ZeroFilled` keeps its work buffers between blocks of slices, so a volume is processed a few
slices at a time without new allocations; every slice's result is independent of the block it
was computed in.

`fft2c`, `ifft2c` and `center_crop` are fastMRI's centred orthonormal 2-D transforms and centre
crop on numpy arrays (the synthetic acquisition uses them); the centring shifts are a checkerboard
sign pattern on even axes, again exact and the same bytes on every CPU.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft as sfft

from pipeline.errors import BadValue
from pipeline.portable_math import det_rmul

if TYPE_CHECKING:  # fastmri imports torch: only the stages that draw masks pay for it
    from fastmri.data import subsample

MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
# fastMRI spaces these masks by an integer number of lines (range(offset, n, acceleration))
INTEGER_ACCELERATION_MASKS = ("equispaced", "magic")


def mask_function(mask_type: str, acceleration: float, center_fraction: float) -> subsample.MaskFunc:
    """fastMRI's mask function for one type, acceleration and centre fraction. The values are taken
    as they are (fastMRI's own mask functions check nothing either): `check_mask` says whether
    fastMRI can build such a mask."""
    from fastmri.data import subsample

    acc = int(acceleration) if float(acceleration).is_integer() else float(acceleration)
    return subsample.create_mask_for_mask_type(mask_type, [center_fraction], [acc])


def check_mask(mask_type: str, acceleration: float, center_fraction: float) -> None:
    """Refuse a mask fastMRI cannot build, for settings read from a file: a BadValue naming `type`,
    `acceleration` or `center_fraction`."""
    if mask_type not in MASK_TYPES:
        raise BadValue("type", f"unknown mask type {mask_type!r}, expected one of {', '.join(MASK_TYPES)}")
    if (not isinstance(acceleration, (int, float)) or isinstance(acceleration, bool)
            or not math.isfinite(acceleration) or not acceleration > 1):
        raise BadValue("acceleration", f"must be a finite number greater than 1, got {acceleration!r}")
    if mask_type in INTEGER_ACCELERATION_MASKS and not float(acceleration).is_integer():
        raise BadValue("acceleration", f"{mask_type} masks need an integer acceleration, got {acceleration!r}")
    if not 0 < center_fraction < 1:
        raise BadValue("center_fraction", f"must be in (0, 1), got {center_fraction!r}")


def volume_mask(mask_func: subsample.MaskFunc, fname: str, kspace_shape: tuple[int, ...]) -> np.ndarray:
    """The 1-D column mask fastMRI applies to every slice of file `fname` (bool, (cols,))."""
    shape = (1,) * (len(kspace_shape) - 3) + tuple(kspace_shape[-2:]) + (2,)
    mask, _ = mask_func(shape, None, tuple(map(ord, fname)))
    return mask.numpy().reshape(-1).astype(bool)


def check_crop(crop: int, image_shape: tuple[int, int], where: str) -> None:
    if crop > min(image_shape):
        raise BadValue("crop", f"{crop} is larger than the image ({image_shape[0]}x{image_shape[1]}) of {where}")


# --------------------------------------------------------------------------- centred FFT and crop
@lru_cache(maxsize=8)
def center_slice(n: int, c: int) -> slice:
    """The central `c` of `n` samples, as fastMRI's `center_crop`: offset `(n - c) // 2`."""
    s = (n - c) // 2
    return slice(s, s + c)


def center_crop(x: np.ndarray, shape: int | tuple[int, int]) -> np.ndarray:
    """fastMRI `center_crop` of the last two axes to `shape` (rows, cols), or a square of side `shape`."""
    rows, cols = (shape, shape) if isinstance(shape, int) else shape
    h, w = x.shape[-2:]
    return x[..., center_slice(h, rows), center_slice(w, cols)]


@lru_cache(maxsize=16)
def _checker(n: int, m: int) -> np.ndarray:
    c = np.where((np.arange(n)[:, None] + np.arange(m)[None, :]) % 2 == 0, 1.0, -1.0)
    c = c.astype(np.float32)
    c.flags.writeable = False
    return c


def _centered(x: np.ndarray, inverse: bool) -> np.ndarray:
    """fftshift(f(ifftshift(x))) for even sizes, via checkerboard modulation instead of rolls:
    with (-1)^(m+n) on the input and (-1)^(k+l+N/2+M/2) on the output."""
    n, m = x.shape[-2:]
    if n % 2 or m % 2:
        f = sfft.ifft2 if inverse else sfft.fft2
        return sfft.fftshift(f(sfft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    c = _checker(n, m)
    y = det_rmul(np.array(x, dtype=np.result_type(x.dtype, np.complex64)), c)
    y = (sfft.ifft2 if inverse else sfft.fft2)(y, norm="ortho", overwrite_x=True)
    return det_rmul(y, c if (n // 2 + m // 2) % 2 == 0 else -c)


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centered orthonormal 2-D FFT over the last two axes (as fastmri.fft2c)."""
    return _centered(x, inverse=False)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centered orthonormal 2-D inverse FFT over the last two axes (as fastmri.ifft2c)."""
    return _centered(k, inverse=True)


# --------------------------------------------------------------------------- zero-filled images
def _crop_runs(n: int, crop: int) -> list[tuple[slice, slice]]:
    """Where the centre crop of a centred inverse FFT lies in the plain one's output, as
    (crop, source) pairs of slices: fftshift(y)[i] = y[(i - n//2) mod n] (at most two runs)."""
    start = center_slice(n, crop).start
    src = (np.arange(start, start + crop) - n // 2) % n
    runs, i = [], 0
    while i < crop:
        j = i + 1
        while j < crop and src[j] == src[j - 1] + 1:
            j += 1
        runs.append((slice(i, j), slice(int(src[i]), int(src[j - 1]) + 1)))
        i = j
    return runs


class Workspace:
    """Work arrays kept between calls (one per process or thread: not shared between threads).
    Each is handed out as a prefix (first axis) of a kept one when that is large enough."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}
        self._written: dict[str, np.ndarray] = {}

    def _get(self, name: str, shape: tuple[int, ...], dtype, new) -> tuple[np.ndarray, bool]:
        b = self._arrays.get(name)
        if b is None or b.shape[1:] != shape[1:] or b.shape[0] < shape[0] or b.dtype != dtype:
            b = self._arrays[name] = new(shape, dtype)
            self._written.pop(name, None)
            return b, True
        return b, False

    def empty(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        return self._get(name, shape, dtype, np.empty)[0][: shape[0]]

    def zeros_but(self, name: str, shape: tuple[int, ...], dtype, columns: np.ndarray) -> np.ndarray:
        """An array that is zero outside `columns` of its last axis (those are the caller's to fill):
        of a kept one, only the columns that the previous user filled are cleared."""
        b, new = self._get(name, shape, dtype, np.zeros)
        if not new:
            old = self._written.get(name)
            if old is None:
                b[...] = 0
            elif not np.array_equal(old, columns):
                b[..., old] = 0
        self._written[name] = columns
        return b[: shape[0]]


class ZeroFilled:
    """`abs(center_crop(ifft2c(kspace * mask), crop))` (RSS over coils) for blocks of slices of
    k-space shaped (rows, cols) under one column mask. `workspace`: work arrays to reuse (a
    `Workspace` kept by the caller across volumes), or a new one. Images go through `step` at a
    time, so the work arrays stay in the CPU's caches; a slice's result does not depend on the
    block it comes in."""

    def __init__(self, shape: tuple[int, int], mask: np.ndarray, crop: int, workspace: Workspace | None = None,
                 step: int = 1):
        rows, cols = (int(n) for n in shape)
        mask = np.asarray(mask, bool).reshape(-1)
        if mask.size != cols:
            raise ValueError(f"mask has {mask.size} columns, k-space {cols}")
        self.rows, self.cols, self.crop = rows, cols, crop
        self.sel = np.flatnonzero(mask)
        # ifftshift of the input: on an even axis it only multiplies the output by (-1)^j, which
        # the magnitude removes; on an odd one the sampled columns move by index, the rows roll.
        self.pos = self.sel if cols % 2 == 0 else (self.sel - cols // 2) % cols
        self.row_runs = _crop_runs(rows, crop)   # fftshift and crop of the output, by index
        self.col_runs = _crop_runs(cols, crop)
        self.work = workspace if workspace is not None else Workspace()
        self.step = step

    def __call__(self, kspace: np.ndarray) -> np.ndarray:
        """kspace: complex (slices, [coils,] rows, cols). Returns float32 (slices, crop, crop)."""
        if kspace.shape[-2:] != (self.rows, self.cols) or kspace.ndim not in (3, 4):
            raise ValueError(f"k-space of shape {kspace.shape}, expected (slices, [coils,] {self.rows}, {self.cols})")
        slices, coils = kspace.shape[0], (kspace.shape[1] if kspace.ndim == 4 else 1)
        k = kspace.reshape((slices * coils, self.rows, self.cols))
        out = np.empty((slices, self.crop, self.crop), np.float32)
        for i in range(0, len(k), self.step):
            sq = self._squared(k[i:i + self.step])
            if coils == 1:
                np.sqrt(sq, out=out[i:i + len(sq)])
                continue
            for j, image in enumerate(sq, start=i):    # RSS: coil by coil, in order
                s, c = divmod(j, coils)
                if c == 0:
                    out[s] = image
                else:
                    out[s] += image
                if c == coils - 1:
                    np.sqrt(out[s], out=out[s])
        return out

    def _squared(self, k: np.ndarray) -> np.ndarray:
        """|crop(centred 2-D inverse FFT)|^2 of images k (n, rows, cols), float32 (n, crop, crop)."""
        n, crop, w, nsel = len(k), self.crop, self.work, self.sel.size
        # The sampled columns only, as complex64 as fastMRI. Copies go through int64 views of the
        # complex64 data: bit-exact, and numpy's fancy indexing is 3x faster on them.
        sub = w.empty("sub", (n, self.rows, nsel), np.complex64)
        np.take(k.astype(np.complex64, copy=False).view(np.int64), self.sel, axis=-1, mode="wrap",
                out=sub.view(np.int64))                 # mode="wrap": numpy needs no buffer
        if self.rows % 2:
            sub = np.roll(sub, -(self.rows // 2), axis=-2)
        y = sfft.ifft(sub, axis=-2, norm="ortho", overwrite_x=True).view(np.int64)
        # phase-encode input: the cropped rows at the sampled columns, zero elsewhere
        full = w.zeros_but("full", (n, crop, self.cols), np.complex64, self.pos)
        full_i = full.view(np.int64)
        for dst, src in self.row_runs:
            full_i[:, dst, self.pos] = y[:, src, :]
        z = np.fft.ifft(full, axis=-1, norm="ortho", out=w.empty("z", full.shape, np.complex64))
        # re*re + im*im in float32 as fastMRI's complex_abs, each op correctly rounded (no FMA)
        sq2 = w.empty("sq2", (n, crop, 2 * crop), np.float32)
        sq = w.empty("sq", (n, crop, crop), np.float32)
        for dst, src in self.col_runs:
            parts = z[..., src].view(np.float32)        # re, im, re, im, ...
            d2 = sq2[..., 2 * dst.start:2 * dst.stop]
            np.multiply(parts, parts, out=d2)
            np.add(d2[..., 0::2], d2[..., 1::2], out=sq[..., dst])
        return sq


def zero_filled(kspace: np.ndarray, mask: np.ndarray, crop: int) -> np.ndarray:
    """abs(center_crop(ifft2c(kspace*mask), crop)), RSS over coils for 4-D k-space.

    kspace: complex (slices, [coils,] rows, cols); mask: bool (cols,). Returns float32 (slices, crop, crop).
    """
    return ZeroFilled(kspace.shape[-2:], mask, crop)(kspace)


def instance_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice mean and std as fastMRI's `normalize_instance` (torch std: unbiased), in float64
    (two passes of numpy's pairwise sums: the same bytes on every CPU), one slice at a time."""
    flat = images.reshape(len(images), -1)
    mean = np.empty(len(flat), np.float64)
    var = np.empty(len(flat), np.float64)
    x = np.empty(flat.shape[1], np.float64)
    for i, row in enumerate(flat):
        x[...] = row
        mean[i] = np.add.reduce(x) / x.size
        x -= mean[i]
        np.multiply(x, x, out=x)
        var[i] = np.add.reduce(x) / (x.size - 1)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)
