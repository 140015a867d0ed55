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

Lesions (in `lesion=True` volumes, one or two of different kinds, each over 4-6 adjacent slices of
the central part of the volume; fewer slices only where the anatomy it sits in is absent):
- "edema": subchondral bone-marrow edema, a lobulated blob under the femoral condyle or tibial
  plateau surface, confined to marrow; bright on fat-suppressed PD, dark on PD.
- "cartilage": fluid filling a full- or partial-thickness gap in the femoral or tibial cartilage.
- "meniscus": a fluid-bright line (horizontal or vertical tear) through the dark meniscal wedge.
Lesions (`Lesion`) carry fastMRI+ knee label names and per-slice boxes `(row0, col0, height, width)`
in the recon frame (native orientation, row 0 = top, the central `fov_shape` crop of the grid).
Boxes are the bounding boxes of the rendered lesion itself (weight > 0.35), padded by one pixel.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.portable_math import det_exp, det_sincos

# fastMRI+ knee.csv label names (microsoft/fastmri-plus Annotations/knee.csv)
LABEL_EDEMA = "Bone- Subchondral edema"
LABEL_CARTILAGE_PARTIAL = "Cartilage - Partial Thickness loss/defect"
LABEL_CARTILAGE_FULL = "Cartilage - Full Thickness loss/defect"
LABEL_MENISCUS = "Meniscus Tear"
LESION_KINDS = ("edema", "cartilage", "meniscus")

ACQ_PD = "CORPD_FBK"
ACQ_PDFS = "CORPDFS_FBK"

# tissue values (relative magnitude) for proton density without / with fat suppression
_TISSUES = {
    ACQ_PD: dict(fat=0.92, marrow=0.80, muscle=0.36, cartilage=0.52, fluid=0.86, cortex=0.035,
                 meniscus=0.045, ligament=0.07, cruciate=0.20, edema_gain=0.25),
    ACQ_PDFS: dict(fat=0.16, marrow=0.20, muscle=0.34, cartilage=0.56, fluid=1.00, cortex=0.03,
                   meniscus=0.04, ligament=0.06, cruciate=0.22, edema=0.85),
}
_BOX_THRESHOLD = 0.35


@dataclass(frozen=True)
class Lesion:
    """A lesion of one volume. `box` is the union of the per-slice `boxes` (aligned with `slices`),
    all `(row0, col0, height, width)` in the recon frame (native orientation, row 0 = top)."""
    kind: str
    label: str
    slices: tuple[int, ...]
    box: tuple[int, int, int, int]
    boxes: tuple[tuple[int, int, int, int], ...] = field(default=())


# --------------------------------------------------------------------------- small helpers
def _clip(a, lo, hi):
    """In-place clip."""
    return np.clip(a, lo, hi, out=a)


def _ss(x: float, a: float, b: float) -> float:
    """Scalar smoothstep."""
    t = min(max((x - a) / (b - a), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bp(x: float, c: float, w: float) -> float:
    """Scalar Gaussian bump."""
    t = (x - c) / w
    return det_exp(-(t * t))


def _sstep(x, a, b):
    t = x - a
    t *= 1.0 / (b - a)
    _clip(t, 0.0, 1.0)
    u = t * -2.0
    u += 3.0
    t *= t
    t *= u
    return t


def _bump(x, c, w):
    t = x - c
    t *= 1.0 / w
    t *= t
    np.negative(t, out=t)
    np.copyto(t, det_exp(t), casting="same_kind")
    return t


def _soft(sdf, pix):
    """Anti-aliased inside mask of a signed distance field (1 px ramp)."""
    m = sdf * (-1.0 / pix)
    m += 0.5
    return _clip(m, 0.0, 1.0)


def _ellipse(X, Y, cx, cy, a, b):
    """Approximate signed distance to an ellipse (exact for circles)."""
    m = min(a, b) if np.ndim(a) == 0 and np.ndim(b) == 0 else np.minimum(a, b)
    dx = (X - cx) * (1.0 / a)
    dx *= dx
    dy = (Y - cy) * (1.0 / b)
    dy *= dy
    d = dx + dy
    np.sqrt(d, out=d)
    d -= 1.0
    return d * m if np.ndim(m) else _imul(d, m)


def _imul(a, v):
    a *= v
    return a


def _shaft(X, Y, cx, y_end, hx, up):
    """SDF of a vertical shaft of half width hx that ends at y_end and runs up (up=True) or down
    past the rendered rows."""
    d = np.abs(X - cx)
    d -= hx
    e = (Y - y_end) if up else (y_end - Y)
    return np.maximum(d, e)


def _box(X, Y, cx, cy, hx, hy, r=0.0):
    qx = np.abs(X - cx) - (hx - r)
    qy = np.abs(Y - cy) - (hy - r)
    inside = np.clip(np.maximum(qx, qy), None, 0.0)
    ox = np.clip(qx, 0.0, None)
    ox *= ox
    oy = np.clip(qy, 0.0, None)
    oy *= oy
    d = ox + oy
    np.sqrt(d, out=d)
    d += inside
    d -= r
    return d


def _capsule(X, Y, x0, y0, x1, y1, r):
    bx, by = x1 - x0, y1 - y0
    px, py = X - x0, Y - y0
    h = (px * bx + py * by) * (1.0 / (bx * bx + by * by))
    _clip(h, 0.0, 1.0)
    px = px - bx * h
    py = py - by * h
    px *= px
    py *= py
    d = px + py
    np.sqrt(d, out=d)
    d -= r
    return d


def _smin(a, b, k):
    """Polynomial smooth minimum (union with a fillet of size k)."""
    h = b - a
    h *= 0.5 / k
    h += 0.5
    _clip(h, 0.0, 1.0)
    out = a - b
    out *= h
    out += b
    g = 1.0 - h
    g *= h
    g *= k
    out -= g
    return out


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _paint(img, mask, value):
    """Painter's algorithm with soft masks: img <- img + mask * (value - img), in place."""
    d = value - img
    d *= mask
    img += d


def _upsample(c, axis, n_out):
    """Linear interpolation of a periodic coarse grid along `axis` to n_out samples."""
    n_in = c.shape[axis]
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(pos).astype(np.intp)
    w = (pos - i0).astype(np.float32)
    shape = [1] * c.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    a = np.take(c, i0 % n_in, axis=axis)
    b = np.take(c, (i0 + 1) % n_in, axis=axis)
    b -= a
    b *= w
    a += b
    return a


@functools.lru_cache(maxsize=32)
def _gauss_kernel(shape, sz, sy, sx):
    """Separable Gaussian transfer function on an rfftn grid (sigmas in samples), read-only."""
    def g(freq, sig):
        return det_exp(-2.0 * (np.pi * np.pi) * (sig * freq) ** 2).astype(np.float32)
    k = (g(np.fft.fftfreq(shape[0]), sz)[:, None, None] * g(np.fft.fftfreq(shape[1]), sy)[
        None, :, None] * g(np.fft.rfftfreq(shape[2]), sx)[None, None, :])
    k.flags.writeable = False
    return k


def _textures(rng, S, H, W):
    """Three unit-variance random textures (S, H, W), smooth across slices: fine isotropic (grain,
    trabecular bone), vertically elongated (muscle fibres) and low frequency (heterogeneity).
    Drawn directly as filtered white spectra (Gaussian kernels, sigma in pixels)."""
    def spectrum(shape):
        z = rng.standard_normal(shape + (2,), dtype=np.float32)
        return z.view(np.complex64)[..., 0]

    kernel = _gauss_kernel
    def unit(t):
        t = t.astype(np.float32, copy=False)
        t /= max(float(t[:, ::2, ::2].std()), 1e-6)
        return t

    shape = (S, H, W)
    z = spectrum((S, H, W // 2 + 1))
    fine = unit(np.fft.irfftn(z * kernel(shape, 0.8, 0.9, 0.9), s=shape, axes=(0, 1, 2)))
    fib = unit(np.fft.irfftn(z * kernel(shape, 0.8, 4.5, 0.8), s=shape, axes=(0, 1, 2)))
    f = 4
    cshape = (S, -(-H // f), -(-W // f))
    zc = spectrum((S, cshape[1], cshape[2] // 2 + 1))
    coarse = np.fft.irfftn(zc * kernel(cshape, 1.5, 7.0 / f, 7.0 / f), s=cshape, axes=(0, 1, 2))
    low = _upsample(_upsample(coarse.astype(np.float32), 1, H), 2, W)
    return [fine, fib, unit(low)]


# --------------------------------------------------------------------------- subject draw
@dataclass(frozen=True)
class _Subject:
    acquisition: str
    tissue: dict
    scale: float
    cx: float
    cy: float
    angle: float
    side: float          # +1: lateral on the image right, -1: mirrored (other knee)
    yj: float            # joint line
    tc: float            # cartilage thickness
    cortex: float
    rc: float            # condyle radius
    dc: float            # condyle centre offset from midline
    plateau: float       # tibial plateau half width
    limb: float          # limb half width
    fat: float           # subcutaneous fat thickness
    men_len: float
    men_h: float
    joint_ry: float
    septa: tuple
    bias: tuple
    phase: tuple
    s0: float
    s1: float
    effusion: float = 1.0  # size of the physiological joint fluid in the recesses


def _draw_subject(rng: np.random.Generator) -> _Subject:
    acq = ACQ_PD if rng.random() < 0.5 else ACQ_PDFS
    tissue = {k: v * float(rng.uniform(0.9, 1.1)) if k not in ("edema_gain",) else v
              for k, v in _TISSUES[acq].items()}
    rc = float(rng.uniform(0.22, 0.27))
    dc = float(rng.uniform(0.25, 0.29))
    septa = tuple((float(rng.uniform(-0.55, 0.55)), float(rng.uniform(-0.3, 0.3)),
                   float(rng.uniform(-0.3, 0.3))) for _ in range(2))
    return _Subject(
        acquisition=acq,
        tissue=tissue,
        scale=float(rng.uniform(0.9, 1.04)),
        cx=float(rng.uniform(-0.05, 0.05)),
        cy=float(rng.uniform(-0.06, 0.06)),
        angle=float(rng.uniform(-0.10, 0.10)),
        side=float(rng.choice([-1.0, 1.0])),
        yj=float(rng.uniform(0.0, 0.12)),
        tc=float(rng.uniform(0.036, 0.05)),
        cortex=float(rng.uniform(0.024, 0.034)),
        rc=rc,
        dc=dc,
        plateau=float(dc + rc + rng.uniform(0.0, 0.04)),
        limb=float(rng.uniform(0.74, 0.82)),
        fat=float(rng.uniform(0.04, 0.10)),
        men_len=float(rng.uniform(0.18, 0.24)),
        men_h=float(rng.uniform(0.12, 0.15)),
        joint_ry=float(rng.uniform(0.28, 0.38)),
        septa=septa,
        bias=tuple(float(v) for v in rng.uniform(-0.12, 0.12, size=4)),
        phase=tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=5)),
        s0=float(rng.uniform(0.0, 0.08)),
        s1=float(rng.uniform(0.92, 1.0)),
    )


# --------------------------------------------------------------------------- anatomy
def _precompute(sub: _Subject, X, Y, pix) -> dict:
    """Slice-independent pieces of the anatomy (functions of the in-plane coordinates only)."""
    yj = sub.yj
    dY = Y - yj
    AX = np.abs(X)
    sd_limb0 = AX - 0.05 * _bump(Y, yj, 0.45)                      # knee bulge
    fat_t = sub.fat * (1.0 + 0.35 * (X < 0).astype(np.float32) * _bump(Y, yj, 0.5))
    septa = np.zeros(np.broadcast_shapes(X.shape, Y.shape), np.float32)
    for a, b, c in sub.septa:                   # intermuscular fat planes (gently curved)
        sd = np.abs(X - a - b * dY - c * dY * dY) - 0.008
        septa = np.maximum(septa, _soft(sd, pix))
    septa *= 0.8
    # row windows (Y grows with the row index; the in-plane rotation is small)
    ymin, ymax = Y.min(axis=(0, 2)), Y.max(axis=(0, 2))

    def window(rows):
        idx = np.flatnonzero(rows)
        return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)

    wj = window((ymax >= yj - 0.55) & (ymin <= yj + 0.55))        # joint-level structures
    wf = window(ymin <= yj + 0.15)                                   # femur
    wt = window(ymax >= yj - 0.2)                                    # tibia
    cru = _soft(_capsule(X[:, wj], Y[:, wj], -0.035, yj - 0.13, 0.035, yj + sub.tc + 0.02,
                         0.028), pix)
    return dict(AX=AX, dY=dY, sd_limb0=sd_limb0, sd_limb_fat=sd_limb0 + fat_t, septa=septa,
                cru=cru, cond_f=_sstep(AX[:, wj], 0.08, 0.11), wj=wj, wf=wf, wt=wt)


def _anatomy(sub: _Subject, X, Y, s, pix, tex, pre):
    """Render the lesion-free tissue-value map of one slice at position s (1, h, w) and return it
    with the geometry the lesions need."""
    T = sub.tissue
    yj, tc, rc, dc = sub.yj, sub.tc, sub.rc, sub.dc
    t_fine, t_fib, t_low = tex
    s = float(s)
    AX = pre["AX"]

    # slice profiles (anterior s=0 -> posterior s=1)
    p_mid = _ss(s, 0.12, 0.3) * (1.0 - _ss(s, 0.72, 0.88))         # shafts
    p_meta = 1.0 - _ss(s, 0.7, 0.9)                                 # femoral metaphysis
    q_bone = 0.5 + 0.5 * _ss(s, 0.0, 0.26)                          # anterior shrink
    notch = _ss(s, 0.18, 0.55) + 0.9 * _ss(s, 0.72, 0.97)          # notch depth
    rcs = rc * (0.88 + 0.12 * _bp(s, 0.55, 0.4)) * (1.0 - 0.25 * _ss(s, 0.85, 1.0))
    plat = sub.plateau * (0.82 + 0.18 * _bp(s, 0.5, 0.4))
    p_fib = _ss(s, 0.55, 0.72)
    p_pat = 1.0 - _ss(s, 0.08, 0.2)
    limb_w = sub.limb * (0.9 + 0.1 * _bp(s, 0.5, 0.45))

    # limb outline, subcutaneous fat, muscle (thigh above, leg below the joint)
    fat_val = t_fine * (0.04 * T["fat"])
    fat_val += T["fat"]
    img = _soft(pre["sd_limb0"] - limb_w, pix)
    img *= fat_val
    joint_zone = _ellipse(X, Y, 0.0, yj + 0.02, 1.15, sub.joint_ry * (1.0 - 0.5 * _ss(
        s, 0.6, 0.85)))
    muscle_zone = _soft(pre["sd_limb_fat"] - limb_w, pix)
    muscle_zone *= _soft(np.negative(joint_zone, out=joint_zone), 3.0 * pix)
    mus_val = t_fib * (0.08 * T["muscle"])
    mus_val += t_fine * (0.03 * T["muscle"])
    mus_val += T["muscle"]
    _paint(img, muscle_zone, mus_val)
    _paint(img, pre["septa"] * muscle_zone, fat_val)

    # bones: signed distance fields (femur/tibia shrink towards the joint anteriorly), each
    # evaluated on its row window only (elsewhere: far outside)
    wf, wt, wj = pre["wf"], pre["wt"], pre["wj"]
    shape = img.shape
    iq = 1.0 / q_bone
    cyc = yj - tc - rcs                                             # condyle centre height
    Xb, Yf = X[:, wf] * iq, Y[:, wf] * iq + (yj - tc) * (1.0 - iq)
    fw = _smin(_ellipse(Xb, Yf, -dc, cyc, rcs, rcs), _ellipse(Xb, Yf, dc, cyc, rcs, rcs), 0.05)
    if p_meta > 1e-3:
        fw = _smin(fw, _ellipse(Xb, Yf, 0.0, cyc - 0.14, dc + rcs - 0.04, 0.3)
                   + 0.5 * (1.0 - p_meta), 0.12)
    if p_mid > 1e-3:
        fw = _smin(fw, _shaft(Xb, Yf, 0.0, yj - 0.4, 0.21, True) + 0.35 * (1.0 - p_mid), 0.3)
    notch_w = _ellipse(Xb, Yf, 0.0, yj - tc, 0.06 + 0.03 * notch, 0.02 + 0.26 * notch)
    fw = _smax(fw, -notch_w, 0.03)
    fw *= q_bone
    f = np.ones(shape, np.float32)
    f[:, wf] = fw
    sd_notch = np.ones(shape, np.float32)
    sd_notch[:, wf] = notch_w
    Xb, Yt = X[:, wt] * iq, Y[:, wt] * iq + (yj + tc) * (1.0 - iq)
    tw = _box(Xb, Yt, 0.0, yj + tc + 0.18, plat, 0.18, 0.08)
    if p_mid > 1e-3:
        tw = _smin(tw, _shaft(Xb, Yt, 0.0, yj + 0.4, 0.2, False) + 0.35 * (1.0 - p_mid), 0.35)
        spines = _smin(_ellipse(Xb, Yt, -0.045, yj + tc, 0.032, 0.055),
                       _ellipse(Xb, Yt, 0.045, yj + tc, 0.032, 0.055), 0.01)
        tw = _smin(tw, spines + 0.2 * (1.0 - p_mid), 0.015)
    tw *= q_bone
    t = np.ones(shape, np.float32)
    t[:, wt] = tw
    bones = np.minimum(f, t)
    if p_fib > 1e-3:
        fib = _smin(_ellipse(X[:, wt], Y[:, wt], plat + 0.03, yj + 0.46, 0.09, 0.11),
                    _shaft(X[:, wt], Y[:, wt], plat + 0.04, yj + 0.46, 0.05, False), 0.08)
        fib += 0.25 * (1.0 - p_fib)
        np.minimum(bones[:, wt], fib, out=bones[:, wt])
    if p_pat > 1e-3:
        pat = _ellipse(X[:, wf], Y[:, wf], 0.0, yj - 0.42, 0.22, 0.17) + 0.24 * (1.0 - p_pat)
        np.minimum(bones[:, wf], pat, out=bones[:, wf])

    # fat halo around bones, then cortex and marrow
    _paint(img, _soft(bones - 0.035, 2.0 * pix) * (1.0 - 0.6 * muscle_zone), fat_val)
    in_f, in_t = _soft(f, pix), _soft(t, pix)
    in_bone = _soft(bones, pix)
    _paint(img, in_bone, T["cortex"])
    marrow_val = t_fine * (0.06 * T["marrow"])
    marrow_val += t_low * (0.06 * T["marrow"])
    marrow_val += T["marrow"]
    inner_f = _soft(f + sub.cortex, pix)
    inner_t = _soft(t + sub.cortex, pix)
    marrow = _soft(bones + sub.cortex, pix)
    _paint(img, marrow, marrow_val)

    # joint-level structures, on the joint row window
    Xj, Yj, AXj, imj = X[:, wj], Y[:, wj], AX[:, wj], img[:, wj]
    fj, tj, in_fj, in_tj = f[:, wj], t[:, wj], in_f[:, wj], in_t[:, wj]
    # articular cartilage: bands just outside the joint surfaces
    band_fj = _soft(fj - tc, pix)
    band_fj -= in_fj
    band_fj *= _sstep(Yj, cyc - 0.02, cyc + 0.06)
    band_fj *= _sstep(sd_notch[:, wj], 0.0, 0.03)
    band_tj = _soft(tj - tc, pix)
    band_tj -= in_tj
    band_tj *= 1.0 - _sstep(Yj, yj + tc + 0.03, yj + tc + 0.07)
    band_tj *= pre["cond_f"]
    band_tj *= 1.0 - _sstep(AXj, plat - 0.05, plat - 0.01)
    cart_val = t_fine[:, wj] * (0.05 * T["cartilage"])
    cart_val += T["cartilage"]
    _paint(imj, band_fj, cart_val)
    _paint(imj, band_tj, cart_val)
    band_f = np.zeros(shape, np.float32)
    band_f[:, wj] = band_fj
    band_t = np.zeros(shape, np.float32)
    band_t[:, wj] = band_tj

    # cruciate ligaments in the notch
    p_cru = _bp(s, 0.52, 0.17)
    outside_bone = (1.0 - in_fj) * (1.0 - in_tj)
    if p_cru > 0.02:
        _paint(imj, pre["cru"] * (p_cru * _sstep(-sd_notch[:, wj], 0.0, 0.01)) * (1.0 - in_tj),
               T["cruciate"])

    # menisci: wedges at the medial and lateral joint margins, apex pointing inwards
    p_men = _ss(s, 0.1, 0.2) * (1.0 - _ss(s, 0.9, 1.0))
    L = sub.men_len * (1.0 + 0.5 * (1.0 - _bp(s, 0.5, 0.3)))
    h = sub.men_h
    xo = plat + 0.02
    nrm = math.sqrt((h / 2) * (h / 2) + L * L)
    dYl = pre["dY"][:, wj] * (L / nrm)
    men = {}
    for name, sg in (("medial", -1.0), ("lateral", 1.0)):
        U = Xj * sg
        base = (U - (xo - L)) * (-(h / 2) / nrm)
        sd = np.maximum(np.maximum(base - dYl, base + dYl), U - xo)
        sd += 0.25 * (1.0 - p_men)
        mj = _soft(sd, pix) * outside_bone
        _paint(imj, mj, T["meniscus"])
        men[name] = np.zeros(shape, np.float32)
        men[name][:, wj] = mj

    # collateral ligaments
    in_bj = in_bone[:, wj]
    p_mcl = _bp(s, 0.5, 0.22)
    if p_mcl > 0.02:
        mcl = _smin(_capsule(Xj, Yj, -(dc + rcs + 0.03), yj - 0.32, -(xo + 0.035), yj, 0.016),
                    _capsule(Xj, Yj, -(xo + 0.035), yj, -plat, yj + 0.42, 0.016), 0.02)
        _paint(imj, _soft(mcl, pix) * (1.0 - in_bj) * p_mcl, T["ligament"])
    p_lcl = _bp(s, 0.68, 0.16)
    if p_lcl > 0.02:
        lcl = _capsule(Xj, Yj, dc + rcs + 0.02, yj - 0.24, plat + 0.07, yj + 0.38, 0.017)
        _paint(imj, _soft(lcl, pix) * (1.0 - in_bj) * p_lcl, T["ligament"])

    # physiological joint fluid in the medial and lateral recesses beyond the menisci. It is the
    # brightest tissue on fat-suppressed images, as in real knees; without it a fluid-bright lesion
    # would set the volume's maximum and, through per-volume min/max scaling, darken every slice
    # of lesion volumes: a global cue a classifier learns instead of the lesion.
    if p_men > 0.02:
        e = sub.effusion
        for sg in (-1.0, 1.0):
            rec = _ellipse(Xj, Yj, sg * (xo + 0.045), yj, 0.035 * e, 0.08 * e)
            _paint(imj, _soft(rec, pix) * (1.0 - in_bj) * p_men, T["fluid"])

    geom = dict(f=f, t=t, inner_f=inner_f, inner_t=inner_t, band_f=band_f,
                band_t=band_t, men=men, cyc=cyc, rcs=rcs, plat=plat, xo=xo, L=L, h=h)
    return img, geom


# --------------------------------------------------------------------------- lesions
@dataclass(frozen=True)
class _Plan:
    kind: str
    label: str
    prof: dict           # slice -> strength profile in (0, 1]
    side: float
    p: dict              # kind-specific parameters


def _plan_lesion(rng, kind, s_pos, lo=0.3, hi=0.72) -> _Plan:
    """Draw everything random about one lesion (before any rendering)."""
    S = len(s_pos)
    cand = [k for k in range(S) if lo <= s_pos[k] <= hi] or [S // 2]
    k0 = int(rng.choice(cand))
    n = min(int(rng.integers(4, 7)), S)
    first = max(0, min(k0 - n // 2, S - n))
    ks = list(range(first, first + n))
    c = (ks[0] + ks[-1]) / 2.0
    half = (ks[-1] - ks[0]) / 2.0 + 1.0
    prof = {k: math.sqrt(max(1.0 - ((k - c) / (half + 0.4)) * ((k - c) / (half + 0.4)), 0.0))
            for k in ks}
    side = float(rng.choice([-1.0, 1.0]))
    if kind == "edema":
        p = dict(on_femur=bool(rng.random() < 0.6), a=float(rng.uniform(0.14, 0.21)),
                 b=float(rng.uniform(0.09, 0.14)), dx=float(rng.uniform(-0.07, 0.07)),
                 depth=float(rng.uniform(0.35, 0.6)), ty=float(rng.uniform(0.08, 0.14)))
        label = LABEL_EDEMA
    elif kind == "cartilage":
        p = dict(full=bool(rng.random() < 0.7), on_femur=bool(rng.random() < 0.7),
                 phi=float(rng.uniform(-0.45, 0.45)), rd=float(rng.uniform(0.085, 0.12)),
                 tx=float(rng.uniform(0.22, 0.36)))
        label = LABEL_CARTILAGE_FULL if p["full"] else LABEL_CARTILAGE_PARTIAL
    elif kind == "meniscus":
        vertical = bool(rng.random() < 0.3)
        sgn = float(rng.choice([-1.0, 1.0]))
        ang = float(rng.uniform(1.2, 1.57)) * sgn if vertical else float(rng.uniform(-0.45, 0.45))
        p = dict(ang=ang, frac=float(rng.uniform(0.3, 0.6)), off=float(rng.uniform(-0.25, 0.25)))
        label = LABEL_MENISCUS
    else:
        raise ValueError(f"unknown lesion kind {kind!r}")
    return _Plan(kind=kind, label=label, prof=prof, side=side, p=p)


def _apply_lesion(plan: _Plan, k: int, sub: _Subject, g: dict, img, X, Y, pix, t_low):
    """Paint lesion `plan` into the single-slice map `img` (1, h, w) of slice k, in place, and
    return its weight map (1, h, w)."""
    T = sub.tissue
    yj, tc, side, p = sub.yj, sub.tc, plan.side, plan.p
    prof = plan.prof[k]
    cyc, rcs = float(g["cyc"]), float(g["rcs"])
    if plan.kind == "edema":
        sc = 0.55 + 0.45 * prof
        if p["on_femur"]:
            cx, cy, marrow = side * sub.dc + p["dx"], cyc + rcs * p["depth"], g["inner_f"]
        else:
            cx, cy, marrow = side * (sub.dc + p["dx"]), yj + tc + p["ty"], g["inner_t"]
        e = _ellipse(X, Y, cx, cy, p["a"] * sc, p["b"] * sc)
        w = np.clip(1.0 - e / (0.05 * sc), 0.0, 1.0)
        w *= np.sqrt(w)                                                       # soft rim: ^1.5
        w *= marrow
        w *= np.clip(0.85 + 0.25 * t_low, 0.55, 1.0)
        if "edema" in T:
            _paint(img, w, T["edema"])
        else:
            img *= 1.0 - (1.0 - T["edema_gain"]) * w
        return w
    if plan.kind == "cartilage":
        rd = p["rd"] * (0.6 + 0.4 * prof)
        if p["on_femur"]:
            sphi, cphi = det_sincos(p["phi"])
            px = side * sub.dc + rcs * sphi
            py = cyc + (rcs + tc * 0.5) * cphi
            sd, band = g["f"], g["band_f"]
        else:
            px, py = side * p["tx"], yj + tc * 0.5
            sd, band = g["t"], g["band_t"]
        disk = _soft(_ellipse(X, Y, px, py, rd, rd), pix)
        lo = -0.006 if p["full"] else tc * 0.3
        depth_mask = _soft(lo - sd, pix) * _soft(sd - tc - 0.012, pix)
        w = disk * depth_mask * np.maximum(np.sqrt(np.sqrt(np.maximum(band, 0.0))),
                                           _sstep(band, 0.05, 0.3))
        _paint(img, w, T["fluid"])
        return w
    # meniscus tear: a fluid-bright line across the dark wedge
    name = "medial" if side < 0 else "lateral"
    L, xo = float(g["L"]), float(g["xo"])
    px = side * (xo - L * p["frac"])
    py = yj + p["off"] * float(g["h"])
    sang, cang = det_sincos(p["ang"])
    nx, ny = -sang, cang
    wid = max(0.036, 2.0 * pix)
    dist = np.abs((X - px) * nx + (Y - py) * ny)
    w = _soft(dist - wid / 2, pix) * np.clip(g["men"][name] * 1.6, 0.0, 1.0)
    w *= 0.7 + 0.3 * prof
    _paint(img, w, T["fluid"])
    return w


def _bbox(w, frame):
    m = w > _BOX_THRESHOLD
    if not m.any():
        return None
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, frame[0])
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, frame[1])
    if r1 <= r0 or c1 <= c0:
        return None
    return (r0, c0, r1 - r0, c1 - c0)


# --------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class KneeVolume:
    images: np.ndarray          # complex64 (slices, rows, cols), noise-free
    lesions: list[Lesion]
    acquisition: str            # "CORPD_FBK" or "CORPDFS_FBK": the contrast drawn


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
    sub = _draw_subject(rng)
    tex_seed, lesion_seed = (int(v) for v in rng.integers(0, 2**63 - 1, size=2))
    # its own stream, so the other draws (anatomy, textures, lesions) do not depend on it
    sub = dataclasses.replace(sub, effusion=float(np.random.default_rng([tex_seed, 7]).uniform(0.8, 1.25)))
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

    s_pos = np.linspace(sub.s0, sub.s1, S) if S > 1 else np.array([0.5])
    tex = _textures(np.random.default_rng(tex_seed), S, rb - ra, cb - ca)

    plans: list[_Plan] = []
    if lesion:
        lrng = np.random.default_rng(lesion_seed)
        n_les = 1 if lrng.random() < 0.5 else 2
        for kind in lrng.choice(LESION_KINDS, size=n_les, replace=False):
            plans.append(_plan_lesion(lrng, str(kind), s_pos))
    boxes: list[dict] = [dict() for _ in plans]

    b1, b2, b3, b4 = sub.bias
    bias = np.clip(1.0 + b1 * X + b2 * Y + b3 * X * Y + b4 * 0.5 * (X * X + Y * Y), 0.6, 1.4)
    ph = sub.phase
    phase0 = (ph[0] * np.pi + ph[1] * 1.2 * X + ph[2] * 1.2 * Y
              + ph[3] * 0.8 * (X * X + Y * Y)).astype(np.float32)[0].astype(np.float64)
    pre = _precompute(sub, X, Y, pix)

    out = np.zeros((S, H, W), np.complex64)
    fr0, fc0 = r0 - ra, c0 - ca
    for k in range(S):
        sk = float(s_pos[k])
        tk = [t[k:k + 1] for t in tex]
        img, geom = _anatomy(sub, X, Y, sk, pix, tk, pre)
        for j, plan in enumerate(plans):
            if k in plan.prof:
                w = _apply_lesion(plan, k, sub, geom, img, X, Y, pix, tk[2])
                b = _bbox(w[0, fr0:fr0 + Fh, fc0:fc0 + Fw], (Fh, Fw))
                if b is not None:
                    boxes[j][k] = b
        # global grain, low-frequency heterogeneity and receive bias
        g = tk[0] * 0.025
        g += 1.0
        g += 0.04 * tk[2]
        g *= bias
        img *= g
        np.clip(img, 0.0, None, out=img)
        # smooth phase: phase0 plus a drift across slices
        sn, cs = det_sincos(phase0 + ph[4] * 0.3 * (float(s_pos[k]) - 0.5))
        o = out[k, ra:rb, ca:cb]
        np.multiply(cs.astype(np.float32), img[0], out=o.real)
        np.multiply(sn.astype(np.float32), img[0], out=o.imag)

    lesions: list[Lesion] = []
    for plan, per in zip(plans, boxes):
        if not per:
            continue
        ks = sorted(per)
        bs = [per[k] for k in ks]
        r_lo, c_lo = min(b[0] for b in bs), min(b[1] for b in bs)
        r_hi, c_hi = max(b[0] + b[2] for b in bs), max(b[1] + b[3] for b in bs)
        lesions.append(Lesion(kind=plan.kind, label=plan.label, slices=tuple(ks),
                              box=(r_lo, c_lo, r_hi - r_lo, c_hi - c_lo), boxes=tuple(bs)))

    # the limb continues above and below the FOV rows, fading out towards the grid edge
    if ra > 0:
        fade = _sstep(np.arange(ra, dtype=np.float32), 0.0, float(ra))[None, :, None]
        out[:, :ra] = out[:, ra:ra + 1] * fade
    if rb < H:
        n = H - rb
        fade = 1.0 - _sstep(np.arange(n, dtype=np.float32) + 1.0, 0.0, float(n))
        out[:, rb:] = out[:, rb - 1:rb] * fade[None, :, None]
    return KneeVolume(images=out, lesions=lesions, acquisition=sub.acquisition)
