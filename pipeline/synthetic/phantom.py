"""Knee-like coronal MRI phantom: femur, tibia, fibula, patella, cartilage, menisci, ligaments,
muscle and fat, with lesions of known geometry. numpy only, deterministic (the same bytes on every
x86-64 CPU: see pipeline/portable_math.py), fast (~3 ms a slice at 128 x 128): signed distance fields
with 1-pixel anti-aliased edges, rendered slice by slice.

Geometry is defined in a *canonical* frame in units of half the recon field of view (FOV): X runs
from the medial (-) to the lateral (+) side, Y from proximal/top (-) to distal/bottom (+); the knee
joint line lies near Y = 0. A subject draws size, position, in-plane rotation, laterality (left or
right knee), tissue contrast (proton density with or without fat suppression), tissue thicknesses
and a bias field from the `numpy.random.Generator`; across the slices of a volume (anterior ->
posterior, slice position `s` in [0, 1]) the anatomy changes smoothly: the patella shows in the
anterior slices, femoral and tibial shafts in the middle ones, the intercondylar notch deepens until
the condyles separate posteriorly, the fibular head and gastrocnemius appear posteriorly.

Only the recon FOV rows (plus a small margin) are rendered. Outside them the limb continues
straight (the first/last rendered rows repeated, fading to zero at the grid edge): in fastMRI knee
data the oversampled readout runs along the rows and both k-space masking and undersampling act on
columns only, so rows outside the FOV never influence anything inside it.

Textures: fine grain / trabecular bone, vertically elongated muscle fibres and a low-frequency
heterogeneity (filtered noise, correlated across slices), a smooth receive bias and a smooth phase.

Lesions (in `lesion=True` volumes, one to three with different fastMRI+ knee labels, drawn to
match fastMRI+ knee.csv's label frequencies, box sizes and slice runs: `pipeline.synthetic.lesions`)
carry per-slice boxes `(row0, col0, height, width)` in the recon frame (native orientation, row 0 =
top, the central `fov_shape` crop of the grid).

The parts: `pipeline.synthetic.anatomy` (the subject and the lesion-free tissue map of a slice),
`pipeline.synthetic.lesions` (lesions and their boxes), `pipeline.synthetic.shapes` (the drawing kit);
this module puts a volume together. The acquisition (k-space, noise, coils, header) is
`pipeline.synthetic.acquisition`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.anatomy import Subject, anatomy, draw_subject, precompute, textures
from pipeline.synthetic.lesions import Lesion, LesionPlan, collect_lesions, draw_lesion_plans, lesion_box, paint_lesion
from pipeline.synthetic.shapes import smoothstep
from pipeline.portable_math import det_sincos


@dataclass(frozen=True)
class KneeVolume:
    images: np.ndarray          # complex64 (slices, rows, cols), noise-free
    lesions: list[Lesion]
    acquisition: str            # "CORPD_FBK" or "CORPDFS_FBK": the contrast drawn


@dataclass(frozen=True)
class _Grid:
    """Where a knee is drawn: the full grid H x W, the recon frame (fastMRI's centre crop, Fh x Fw at
    r0, c0), the rendered rows ra:rb and columns ca:cb (the frame and a 2-pixel margin), and their
    canonical coordinates X, Y (1, rows, cols) with `pix`, one pixel in canonical units."""
    H: int
    W: int
    Fh: int
    Fw: int
    r0: int
    c0: int
    ra: int
    rb: int
    ca: int
    cb: int
    X: np.ndarray
    Y: np.ndarray
    pix: float


def render_knee(rng: np.random.Generator, n_slices: int, shape: tuple[int, int], *,
                lesion: bool, fov_shape: tuple[int, int] | None = None) -> KneeVolume:
    """Noise-free complex64 images (n_slices, *shape) of one knee, its lesions and contrast.

    `shape` is the full image grid (rows, cols); `fov_shape` the central region (fastMRI's center
    crop: offset `(shape - fov_shape) // 2`) that holds the knee: the recon frame, in which the
    lesion boxes are given. Magnitudes are relative (fat/fluid ~1); the phase is smooth.
    The anatomy depends only on the generator state, not on `lesion`: the same state with
    `lesion=False` gives the same knee without lesions. Slices are rendered one at a time (the
    working set stays in cache).
    """
    H, W = (int(v) for v in shape)
    Fh, Fw = (H, W) if fov_shape is None else (int(v) for v in fov_shape)
    if n_slices < 1 or min(H, W) < 8 or not (0 < Fh <= H and 0 < Fw <= W):
        raise ValueError(f"bad phantom geometry: n_slices={n_slices}, shape={shape}, "
                         f"fov_shape={fov_shape}")
    S = int(n_slices)
    sub = draw_subject(rng)
    tex_seed, lesion_seed = (int(v) for v in rng.integers(0, 2**63 - 1, size=2))
    # its own stream, so the other draws (anatomy, textures, lesions) do not depend on it
    sub = dataclasses.replace(sub, effusion=float(np.random.default_rng([tex_seed, 7]).uniform(0.8, 1.25)))
    grid = _grid(sub, H, W, Fh, Fw)
    s_pos = np.linspace(sub.s0, sub.s1, S) if S > 1 else np.array([0.5])
    tex = textures(np.random.default_rng(tex_seed), S, grid.rb - grid.ra, grid.cb - grid.ca)
    plans = draw_lesion_plans(lesion_seed, s_pos) if lesion else []
    out, boxes = _render_slices(sub, grid, s_pos, tex, plans)
    _continue_limb(out, grid.ra, grid.rb)
    return KneeVolume(images=out, lesions=collect_lesions(plans, boxes), acquisition=sub.acquisition)


def _grid(sub: Subject, H: int, W: int, Fh: int, Fw: int) -> _Grid:
    """The rendered part of the grid and its canonical coordinates: centred on the subject's
    position, rotated by its angle, mirrored for the other knee, scaled by its size."""
    r0, c0 = (H - Fh) // 2, (W - Fw) // 2
    margin = 2
    ra, rb = max(0, r0 - margin), min(H, r0 + Fh + margin)
    ca, cb = max(0, c0 - margin), min(W, c0 + Fw + margin)
    rows = np.arange(ra, rb, dtype=np.float32)
    cols = np.arange(ca, cb, dtype=np.float32)
    y = ((rows + 0.5) - (r0 + Fh / 2.0)) / (Fh / 2.0)
    x = ((cols + 0.5) - (c0 + Fw / 2.0)) / (Fw / 2.0)
    xx, yy = x[None, None, :] - sub.cx, y[None, :, None] - sub.cy
    sa_, ca_ = det_sincos(sub.angle)
    X = ((xx * ca_ + yy * sa_) * (sub.side / sub.scale)).astype(np.float32)
    Y = ((yy * ca_ - xx * sa_) * (1.0 / sub.scale)).astype(np.float32)
    pix = 2.0 / min(Fh, Fw) / sub.scale
    return _Grid(H, W, Fh, Fw, r0, c0, ra, rb, ca, cb, X, Y, pix)


def _render_slices(sub: Subject, grid: _Grid, s_pos: np.ndarray, tex: list, plans: list[LesionPlan]
                   ) -> tuple[np.ndarray, list[dict]]:
    """Every slice (complex64, the full grid; zero outside the rendered rows and columns) and each
    lesion's boxes {slice: box}."""
    X, Y = grid.X, grid.Y
    bias, phase0 = _bias_and_phase(sub, X, Y)
    pre = precompute(sub, X, Y, grid.pix)
    out = np.zeros((len(s_pos), grid.H, grid.W), np.complex64)
    boxes: list[dict] = [dict() for _ in plans]
    for k in range(len(s_pos)):
        sk = float(s_pos[k])
        tk = [t[k:k + 1] for t in tex]
        img, geom = anatomy(sub, X, Y, sk, grid.pix, tk, pre)
        for j, plan in enumerate(plans):
            if k in plan.prof:
                b = _add_lesion(plan, k, sub, geom, img, grid, tk[2])
                if b is not None:
                    boxes[j][k] = b
        _shade(img, tk, bias)
        # smooth phase: phase0 plus a drift across slices
        _to_complex(out[k, grid.ra:grid.rb, grid.ca:grid.cb], img[0], phase0 + sub.phase[4] * 0.3 * (sk - 0.5))
    return out, boxes


def _add_lesion(plan: LesionPlan, k: int, sub: Subject, geom: dict, img: np.ndarray, grid: _Grid,
                t_low: np.ndarray):
    """Paint a lesion into slice k's map; its box there in the recon frame (None if too faint)."""
    w = paint_lesion(plan, k, sub, geom, img, grid.X, grid.Y, grid.pix, t_low)
    fr0, fc0 = grid.r0 - grid.ra, grid.c0 - grid.ca
    return lesion_box(w[0, fr0:fr0 + grid.Fh, fc0:fc0 + grid.Fw], (grid.Fh, grid.Fw))


def _bias_and_phase(sub: Subject, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smooth receive bias (float32, (1, h, w)) and the smooth phase of the mid slice (float64, (h, w))."""
    b1, b2, b3, b4 = sub.bias
    bias = np.clip(1.0 + b1 * X + b2 * Y + b3 * X * Y + b4 * 0.5 * (X * X + Y * Y), 0.6, 1.4)
    ph = sub.phase
    phase0 = (ph[0] * np.pi + ph[1] * 1.2 * X + ph[2] * 1.2 * Y
              + ph[3] * 0.8 * (X * X + Y * Y)).astype(np.float32)[0].astype(np.float64)
    return bias, phase0


def _shade(img: np.ndarray, tex: list, bias: np.ndarray) -> None:
    """Global grain, low-frequency heterogeneity and receive bias, in place; no negative values."""
    g = tex[0] * 0.025
    g += 1.0
    g += 0.04 * tex[2]
    g *= bias
    img *= g
    np.clip(img, 0.0, None, out=img)


def _to_complex(out: np.ndarray, magnitude: np.ndarray, phase: np.ndarray) -> None:
    """out (complex64) = magnitude * exp(i phase)."""
    sn, cs = det_sincos(phase)
    np.multiply(cs.astype(np.float32), magnitude, out=out.real)
    np.multiply(sn.astype(np.float32), magnitude, out=out.imag)


def _continue_limb(out: np.ndarray, ra: int, rb: int) -> None:
    """The limb continues above and below the rendered rows, fading out towards the grid edge."""
    H = out.shape[1]
    if ra > 0:
        fade = smoothstep(np.arange(ra, dtype=np.float32), 0.0, float(ra))[None, :, None]
        out[:, :ra] = out[:, ra:ra + 1] * fade
    if rb < H:
        n = H - rb
        fade = 1.0 - smoothstep(np.arange(n, dtype=np.float32) + 1.0, 0.0, float(n))
        out[:, rb:] = out[:, rb - 1:rb] * fade[None, :, None]
