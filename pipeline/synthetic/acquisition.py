"""The synthetic acquisition: k-space geometry, coil sensitivities, noise, and the ISMRMRD header.

As the public fastMRI knee files (`fastmri.data.SliceDataset` reads them):
- `kspace` complex64, single-coil (slices, 2R, C), multi-coil (slices, coils, 2R, C), with R the
  recon size, the readout (rows) oversampled 2x and C = the even number nearest R*368/320 phase-
  encode columns (640 x 368 for R = 320, 256 x 148 for R = 128). Centered orthonormal 2-D FFT of
  the image (`fastmri.fft2c`: ifftshift -> fft2(norm="ortho") -> fftshift).
- Only the central A = even(0.9 C) columns are acquired (332 of 368, 134 of 148); the others are
  zero, and the header's `encodingLimits/kspace_encoding_step_1` says so: minimum 0, maximum A-1,
  center A//2, so fastMRI's `padding_left = C//2 - center` and `padding_right = padding_left +
  maximum + 1` bound the acquired columns.
- Noise: complex Gaussian added to every k-space sample before the unacquired columns are zeroed
  (so: on the acquired samples), E|n|^2 = sigma^2 (sigma/sqrt(2) per real and imaginary part),
  sigma = `noise` * RMS of the fully sampled noise-free k-space of the volume (all slices,
  coils, rows, columns). With the orthonormal FFT (Parseval) that RMS equals the RMS of the
  image grid, and sigma is also the image-domain noise standard deviation per pixel (per coil).
- The target (`reconstruction_esc`, single-coil) = abs(center_crop(ifft2c(kspace))) of the stored
  k-space, so a fully sampled zero-filled reconstruction reproduces it exactly. Multi-coil
  (`reconstruction_rss`): rss over coils of abs(center_crop(ifft2c(kspace))); the coil
  sensitivities are smooth Gaussian profiles around the knee, normalised to unit root-sum-of-
  squares at every pixel.
- `ismrmrd_header`: ISMRMRD XML (namespace http://www.ismrm.org/ISMRMRD) with encodedSpace
  (matrix 2R x C x 1, FOV 280 x 140*C/R x 4.5 mm for a 140 mm recon FOV) and reconSpace (R x R x 1,
  140 x 140 x 3 mm), encodingLimits, trajectory, parallelImaging, sequenceParameters.
MRNet-style exams (`acquire_fov`) go through the same band-limit and noise, computed with 1-D column
FFTs on the recon rows only (equivalent). Products, magnitudes and transcendental functions go
through `pipeline.portable_math`: the same bytes on every x86-64 CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from pipeline.kspace import center_crop, fft2c, ifft2c
from pipeline.portable_math import det_abs, det_cmul, det_exp, det_sincos

RECON_FOV_MM = 140.0
_ACQ_FRACTION = 332.0 / 368.0


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Encoding:
    """k-space geometry for a recon size R, scaled from fastMRI knee (640 x 368 for 320)."""
    recon: int
    rows: int
    cols: int
    acquired: int

    @property
    def center(self) -> int:           # encodingLimits/kspace_encoding_step_1/center
        return self.acquired // 2

    @property
    def maximum(self) -> int:          # encodingLimits/kspace_encoding_step_1/maximum
        return self.acquired - 1

    @property
    def padding_left(self) -> int:     # as fastMRI's SliceDataset computes it
        return self.cols // 2 - self.center

    @property
    def padding_right(self) -> int:
        return self.padding_left + self.maximum + 1

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.cols


def _even(x: float) -> int:
    return 2 * int(round(x / 2.0))


def encoding_for(recon_size: int) -> Encoding:
    cols = max(_even(recon_size * 368.0 / 320.0), recon_size + (recon_size % 2))
    acquired = min(max(_even(cols * _ACQ_FRACTION), 2), cols)
    return Encoding(recon=int(recon_size), rows=2 * int(recon_size), cols=cols, acquired=acquired)


def coil_maps(rng: np.random.Generator, n_coils: int, grid: tuple[int, int], recon: int
              ) -> np.ndarray:
    """Smooth complex coil sensitivities (n_coils, rows, cols), unit RSS at every pixel: Gaussian
    profiles centred on a ring around the knee, each with a smooth phase."""
    H, W = grid
    y = ((np.arange(H) + 0.5) - H / 2.0)[:, None] / (recon / 2.0)
    x = ((np.arange(W) + 0.5) - W / 2.0)[None, :] / (recon / 2.0)
    maps = np.empty((n_coils, H, W), np.complex64)
    rot = rng.uniform(0, 2 * np.pi)
    for c in range(n_coils):
        a = rot + 2 * np.pi * c / n_coils + rng.uniform(-0.2, 0.2)
        ring = rng.uniform(1.0, 1.3)
        sa, ca = det_sincos(a)
        cx, cy = ring * ca, 0.6 * ring * sa
        width = rng.uniform(0.7, 1.0)
        mag = det_exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width * width))
        ph = rng.uniform(-np.pi, np.pi) + rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y
        sn, cs = det_sincos(ph)
        maps[c].real = mag * cs
        maps[c].imag = mag * sn
    rss = np.sqrt((maps.real * maps.real + maps.imag * maps.imag).sum(axis=0))
    maps.real /= np.maximum(rss, 1e-6)[None].astype(np.float32)
    maps.imag /= np.maximum(rss, 1e-6)[None].astype(np.float32)
    return maps


# --------------------------------------------------------------------------- ISMRMRD header
@dataclass(frozen=True)
class _Scan:
    """What a header says about the scanner and sequence, drawn at random."""
    field_t: float
    system: str
    larmor: int
    fat_suppressed: bool
    tr: float
    te: float
    measurement_id: str


def _draw_scan(rng: np.random.Generator, acquisition: str) -> _Scan:
    field_t = float(rng.choice([1.494, 2.89362]))
    system = "Aera" if field_t < 2 else str(rng.choice(["Skyra", "Prisma_fit", "Biograph_mMR"]))
    larmor = int(round(42.577478 * 1e6 * field_t))
    fs = acquisition == "CORPDFS_FBK"
    tr = float(rng.uniform(2750, 3600)) if not fs else float(rng.uniform(2850, 4000))
    te = float(rng.uniform(25, 34))
    mid = f"{rng.integers(10000, 99999)}_{rng.integers(10**8, 10**9)}_{rng.integers(10**8, 10**9)}"
    return _Scan(field_t, system, larmor, fs, tr, te, mid)


def ismrmrd_header(enc: Encoding, n_slices: int, n_coils: int, acquisition: str,
                   rng: np.random.Generator) -> bytes:
    """ISMRMRD XML header with the structure of the public fastMRI knee headers."""
    scan = _draw_scan(rng, acquisition)
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'xsi:schemaLocation="http://www.ismrm.org/ISMRMRD ismrmrd.xsd">\n'
        "  <studyInformation>\n    <studyTime>00:00:00</studyTime>\n  </studyInformation>\n"
        + _measurement_xml(scan) + _system_xml(scan, n_coils) + _encoding_xml(enc, n_slices)
        + _sequence_xml(scan)
        + "</ismrmrdHeader>\n"
    )
    return xml.encode("utf-8")


def _measurement_xml(scan: _Scan) -> str:
    return (
        "  <measurementInformation>\n"
        f"    <measurementID>{scan.measurement_id}</measurementID>\n"
        "    <patientPosition>FFS</patientPosition>\n"
        f"    <protocolName>{'COR PD FS' if scan.fat_suppressed else 'COR PD'}</protocolName>\n"
        "    <frameOfReferenceUID>synthetic</frameOfReferenceUID>\n"
        "  </measurementInformation>\n"
    )


def _system_xml(scan: _Scan, n_coils: int) -> str:
    coil_labels = "".join(
        f"    <coilLabel>\n      <coilNumber>{c}</coilNumber>\n"
        f"      <coilName>Knee_{c + 1}</coilName>\n    </coilLabel>\n" for c in range(n_coils))
    return (
        "  <acquisitionSystemInformation>\n"
        "    <systemVendor>SIEMENS</systemVendor>\n"
        f"    <systemModel>{scan.system}</systemModel>\n"
        f"    <systemFieldStrength_T>{scan.field_t}</systemFieldStrength_T>\n"
        "    <relativeReceiverNoiseBandwidth>0.793</relativeReceiverNoiseBandwidth>\n"
        f"    <receiverChannels>{n_coils}</receiverChannels>\n"
        f"{coil_labels}"
        "    <institutionName>roirecon synthetic</institutionName>\n"
        "  </acquisitionSystemInformation>\n"
        "  <experimentalConditions>\n"
        f"    <H1resonanceFrequency_Hz>{scan.larmor}</H1resonanceFrequency_Hz>\n"
        "  </experimentalConditions>\n"
    )


def _limits_xml(name: str, mx: int, ctr: int, mn: int = 0) -> str:
    return (f"      <{name}>\n        <minimum>{mn}</minimum>\n"
            f"        <maximum>{mx}</maximum>\n        <center>{ctr}</center>\n"
            f"      </{name}>\n")


def _encoding_xml(enc: Encoding, n_slices: int) -> str:
    enc_fov_y = RECON_FOV_MM * enc.cols / enc.recon
    limits = [("kspace_encoding_step_1", enc.maximum, enc.center), ("kspace_encoding_step_2", 0, 0),
              ("average", 0, 0), ("slice", n_slices - 1, n_slices // 2), ("contrast", 0, 0), ("phase", 0, 0),
              ("repetition", 0, 0), ("set", 0, 0), ("segment", 0, 0)]
    return (
        "  <encoding>\n"
        "    <encodedSpace>\n"
        f"      <matrixSize>\n        <x>{enc.rows}</x>\n        <y>{enc.cols}</y>\n"
        "        <z>1</z>\n      </matrixSize>\n"
        f"      <fieldOfView_mm>\n        <x>{2 * RECON_FOV_MM:g}</x>\n"
        f"        <y>{enc_fov_y:g}</y>\n        <z>4.5</z>\n      </fieldOfView_mm>\n"
        "    </encodedSpace>\n"
        "    <reconSpace>\n"
        f"      <matrixSize>\n        <x>{enc.recon}</x>\n        <y>{enc.recon}</y>\n"
        "        <z>1</z>\n      </matrixSize>\n"
        f"      <fieldOfView_mm>\n        <x>{RECON_FOV_MM:g}</x>\n"
        f"        <y>{RECON_FOV_MM:g}</y>\n        <z>3</z>\n      </fieldOfView_mm>\n"
        "    </reconSpace>\n"
        "    <encodingLimits>\n"
        + "".join(_limits_xml(*lim) for lim in limits)
        + "    </encodingLimits>\n"
        "    <trajectory>cartesian</trajectory>\n"
        "    <parallelImaging>\n"
        "      <accelerationFactor>\n"
        "        <kspace_encoding_step_1>1</kspace_encoding_step_1>\n"
        "        <kspace_encoding_step_2>1</kspace_encoding_step_2>\n"
        "      </accelerationFactor>\n"
        "      <calibrationMode>other</calibrationMode>\n"
        "    </parallelImaging>\n"
        "  </encoding>\n"
    )


def _sequence_xml(scan: _Scan) -> str:
    return (
        "  <sequenceParameters>\n"
        f"    <TR>{scan.tr:.1f}</TR>\n    <TE>{scan.te:.2f}</TE>\n    <TI>100</TI>\n"
        "    <flipAngle_deg>140</flipAngle_deg>\n"
        "    <sequence_type>TurboSpinEcho</sequence_type>\n"
        "    <echo_spacing>12.5</echo_spacing>\n"
        "  </sequenceParameters>\n"
    )


# --------------------------------------------------------------------------- acquiring
def _noise_sigma(x: np.ndarray, noise: float) -> float:
    """sigma = noise * RMS of the fully sampled noise-free k-space of `x` (all its samples),
    computed in the image domain (Parseval, orthonormal FFT). A numpy float64 sum, not BLAS
    (OpenBLAS's vdot rounds differently on different CPUs)."""
    re, im = x.real.astype(np.float64), x.imag.astype(np.float64)
    energy = float(np.sum(re * re)) + float(np.sum(im * im))
    return float(noise) * math.sqrt(energy / max(x.size, 1))


def _add_noise(k: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    if sigma > 0:
        n = rng.standard_normal(k.shape + (2,), dtype=np.float32)
        n *= np.float32(sigma / math.sqrt(2.0))
        k += n.view(np.complex64)[..., 0]


def acquire_volume(images: np.ndarray, enc: Encoding, coils: int, noise: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """images (S, rows, cols) complex64 -> (kspace, target). kspace (S, rows, cols) or
    (S, coils, rows, cols) complex64; target float32 (S, R, R)."""
    if coils > 1:
        maps = coil_maps(rng, coils, enc.grid, enc.recon)
        x = det_cmul(images[:, None], maps[None])
    else:
        x = images
    sigma = _noise_sigma(x, noise)
    k = fft2c(x).astype(np.complex64, copy=False)
    _add_noise(k, sigma, rng)
    k[..., :enc.padding_left] = 0
    k[..., enc.padding_right:] = 0
    img = det_abs(center_crop(ifft2c(k), (enc.recon, enc.recon)))
    if coils > 1:
        img = np.sqrt((img ** 2).sum(axis=1))
    return k, img.astype(np.float32, copy=False)


def _unacquired(enc: Encoding) -> slice:
    """The zero (not acquired) phase-encode columns in standard (unshifted) FFT order: one
    contiguous run around the Nyquist frequency."""
    return slice(enc.acquired - enc.center, enc.cols - enc.center)


def acquire_fov(images: np.ndarray, enc: Encoding, noise: float, rng: np.random.Generator
                 ) -> np.ndarray:
    """Magnitude recon (S, R, R) of a single-coil acquisition, distributed exactly as
    `acquire_volume`'s target but computed with 1-D column FFTs on the recon rows only: the
    column mask is a column filter (commutes with the row transform and with the centering
    shifts) and white k-space noise is white image noise along the rows."""
    sigma = _noise_sigma(images, noise)
    k = sfft.fft(center_crop(images, (enc.recon, images.shape[-1])), norm="ortho", axis=-1)
    _add_noise(k, sigma, rng)
    k[..., _unacquired(enc)] = 0
    x = sfft.ifft(k, norm="ortho", axis=-1)
    return det_abs(center_crop(x, (enc.recon, enc.recon)))
