"""The knee phantom's anatomy: a subject's draw, its textures, and the lesion-free tissue map of a slice.

A subject (`Subject`, `draw_subject`) fixes contrast (proton density with or without fat
suppression), tissue values, size, position, rotation, laterality and tissue thicknesses. A slice
at position `s` (anterior 0 -> posterior 1) is drawn by `anatomy` in the canonical frame (see
`pipeline.synthetic.phantom`), painter's-algorithm style from the outside in:
1. soft tissue: the limb outline with subcutaneous fat, muscle above and below the joint, the fat
   planes between muscles;
2. bones: femur (condyles, metaphysis, shaft, intercondylar notch), tibia (plateau, shaft,
   spines), fibular head, patella, each a signed distance field on its own row window; a fat halo
   around them, cortex and marrow inside;
3. the joint: articular cartilage on both joint surfaces, cruciate ligaments in the notch, the two
   menisci, the collateral ligaments and physiological fluid in the recesses.
How much of each structure a slice shows comes from `slice_profile` (the patella anteriorly, the
shafts in the middle slices, the fibular head posteriorly, ...). The geometry the lesions are drawn
in (bone and cartilage distance fields, menisci) is returned with the map.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline.synthetic.shapes import (bump, bump_at, capsule, ellipse, inside, paint, rounded_box, shaft, smax,
                                       smin, smoothstep, smoothstep_at)
from pipeline.portable_math import det_exp

ACQ_PD = "CORPD_FBK"
ACQ_PDFS = "CORPDFS_FBK"

# tissue values (relative magnitude) for proton density without / with fat suppression
TISSUES = {
    ACQ_PD: dict(fat=0.92, marrow=0.80, muscle=0.36, cartilage=0.52, fluid=0.86, cortex=0.035,
                 meniscus=0.045, ligament=0.07, cruciate=0.20, edema_gain=0.25),
    ACQ_PDFS: dict(fat=0.16, marrow=0.20, muscle=0.34, cartilage=0.56, fluid=1.00, cortex=0.03,
                   meniscus=0.04, ligament=0.06, cruciate=0.22, edema=0.85),
}


# --------------------------------------------------------------------------- subject
@dataclass(frozen=True)
class Subject:
    """Everything random about one knee (drawn by `draw_subject`), in the canonical frame."""
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


def draw_subject(rng: np.random.Generator) -> Subject:
    """Contrast, tissue values, size, pose and thicknesses of one knee (the effusion is drawn
    apart, see `pipeline.synthetic.phantom.render_knee`)."""
    acq = ACQ_PD if rng.random() < 0.5 else ACQ_PDFS
    tissue = {k: v * float(rng.uniform(0.9, 1.1)) if k not in ("edema_gain",) else v
              for k, v in TISSUES[acq].items()}
    rc = float(rng.uniform(0.22, 0.27))
    dc = float(rng.uniform(0.25, 0.29))
    septa = tuple((float(rng.uniform(-0.55, 0.55)), float(rng.uniform(-0.3, 0.3)),
                   float(rng.uniform(-0.3, 0.3))) for _ in range(2))
    return Subject(
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


# --------------------------------------------------------------------------- textures
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


def textures(rng, S, H, W):
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


# --------------------------------------------------------------------------- a slice
def precompute(sub: Subject, X, Y, pix) -> dict:
    """Slice-independent pieces of the anatomy (functions of the in-plane coordinates only)."""
    yj = sub.yj
    dY = Y - yj
    AX = np.abs(X)
    sd_limb0 = AX - 0.05 * bump(Y, yj, 0.45)                      # knee bulge
    fat_t = sub.fat * (1.0 + 0.35 * (X < 0).astype(np.float32) * bump(Y, yj, 0.5))
    septa = np.zeros(np.broadcast_shapes(X.shape, Y.shape), np.float32)
    for a, b, c in sub.septa:                   # intermuscular fat planes (gently curved)
        sd = np.abs(X - a - b * dY - c * dY * dY) - 0.008
        septa = np.maximum(septa, inside(sd, pix))
    septa *= 0.8
    # row windows (Y grows with the row index; the in-plane rotation is small)
    ymin, ymax = Y.min(axis=(0, 2)), Y.max(axis=(0, 2))

    def window(rows):
        idx = np.flatnonzero(rows)
        return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)

    wj = window((ymax >= yj - 0.55) & (ymin <= yj + 0.55))        # joint-level structures
    wf = window(ymin <= yj + 0.15)                                   # femur
    wt = window(ymax >= yj - 0.2)                                    # tibia
    cru = inside(capsule(X[:, wj], Y[:, wj], -0.035, yj - 0.13, 0.035, yj + sub.tc + 0.02,
                         0.028), pix)
    return dict(AX=AX, dY=dY, sd_limb0=sd_limb0, sd_limb_fat=sd_limb0 + fat_t, septa=septa,
                cru=cru, cond_f=smoothstep(AX[:, wj], 0.08, 0.11), wj=wj, wf=wf, wt=wt)


@dataclass(frozen=True)
class SliceProfile:
    """How much of each structure the slice at position s shows (anterior s=0 -> posterior s=1),
    and the sizes that change across slices."""
    p_mid: float        # femoral and tibial shafts
    p_meta: float       # femoral metaphysis
    q_bone: float       # femur and tibia shrink towards the joint anteriorly
    notch: float        # intercondylar notch depth
    rcs: float          # condyle radius
    plat: float         # tibial plateau half width
    p_fib: float        # fibular head
    p_pat: float        # patella
    limb_w: float       # limb half width
    joint_ry: float     # vertical half size of the joint zone free of muscle
    p_cru: float        # cruciate ligaments
    p_men: float        # menisci (and the fluid in the recesses)
    men_len: float      # meniscus length
    men_x: float        # outer edge of the menisci
    p_mcl: float        # medial collateral ligament
    p_lcl: float        # lateral collateral ligament


def slice_profile(sub: Subject, s: float) -> SliceProfile:
    plat = sub.plateau * (0.82 + 0.18 * bump_at(s, 0.5, 0.4))
    return SliceProfile(
        p_mid=smoothstep_at(s, 0.12, 0.3) * (1.0 - smoothstep_at(s, 0.72, 0.88)),
        p_meta=1.0 - smoothstep_at(s, 0.7, 0.9),
        q_bone=0.5 + 0.5 * smoothstep_at(s, 0.0, 0.26),
        notch=smoothstep_at(s, 0.18, 0.55) + 0.9 * smoothstep_at(s, 0.72, 0.97),
        rcs=sub.rc * (0.88 + 0.12 * bump_at(s, 0.55, 0.4)) * (1.0 - 0.25 * smoothstep_at(s, 0.85, 1.0)),
        plat=plat,
        p_fib=smoothstep_at(s, 0.55, 0.72),
        p_pat=1.0 - smoothstep_at(s, 0.08, 0.2),
        limb_w=sub.limb * (0.9 + 0.1 * bump_at(s, 0.5, 0.45)),
        joint_ry=sub.joint_ry * (1.0 - 0.5 * smoothstep_at(s, 0.6, 0.85)),
        p_cru=bump_at(s, 0.52, 0.17),
        p_men=smoothstep_at(s, 0.1, 0.2) * (1.0 - smoothstep_at(s, 0.9, 1.0)),
        men_len=sub.men_len * (1.0 + 0.5 * (1.0 - bump_at(s, 0.5, 0.3))),
        men_x=plat + 0.02,
        p_mcl=bump_at(s, 0.5, 0.22),
        p_lcl=bump_at(s, 0.68, 0.16),
    )


@dataclass
class _Canvas:
    """One slice being drawn: its coordinates (1, h, w), profile and textures, and the tissue map."""
    sub: Subject
    X: np.ndarray
    Y: np.ndarray
    pix: float                       # one pixel in canonical units (the width of soft edges)
    prof: SliceProfile
    tex: list                        # fine, fibre and low-frequency textures of the slice
    pre: dict                        # `precompute`
    img: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.img.shape


@dataclass(frozen=True)
class _Bones:
    f: np.ndarray        # femur SDF
    t: np.ndarray        # tibia SDF
    notch: np.ndarray    # intercondylar notch SDF
    union: np.ndarray    # femur, tibia, fibula and patella
    cyc: float           # height of the condyle centres


@dataclass(frozen=True)
class _BoneMasks:
    in_f: np.ndarray     # inside the femur (cortex included)
    in_t: np.ndarray
    in_bone: np.ndarray  # inside any bone
    inner_f: np.ndarray  # femoral marrow
    inner_t: np.ndarray  # tibial marrow


def _on_rows(values: np.ndarray, rows: slice, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """`values` of a row window placed in a full slice filled with `fill`."""
    out = np.full(shape, fill, np.float32)
    out[:, rows] = values
    return out


def anatomy(sub: Subject, X, Y, s, pix, tex, pre):
    """Render the lesion-free tissue-value map of one slice at position s (1, h, w) and return it
    with the geometry the lesions need."""
    c = _Canvas(sub, X, Y, pix, slice_profile(sub, float(s)), tex, pre)
    fat_val, muscle_zone, deep = _soft_tissue(c)
    bones = _bones(c)
    masks = _bone_tissue(c, bones, fat_val, muscle_zone)
    band_f, band_t = _cartilage(c, bones, masks)
    _cruciates(c, bones, masks)
    men = _menisci(c, masks)
    _collaterals(c, masks)
    _joint_fluid(c, masks)
    p = c.prof
    geom = dict(f=bones.f, t=bones.t, inner_f=masks.inner_f, inner_t=masks.inner_t, band_f=band_f,
                band_t=band_t, men=men, cyc=bones.cyc, rcs=p.rcs, plat=p.plat, xo=p.men_x, L=p.men_len,
                h=sub.men_h, in_bone=masks.in_bone, limb_w=p.limb_w, deep=deep)
    return c.img, geom


def _soft_tissue(c: _Canvas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Limb outline with subcutaneous fat, muscle (thigh above, leg below the joint) and the fat
    planes between muscles: starts `c.img`. Returns the fat values, the muscle zone and the tissue
    deep to the subcutaneous fat (where soft-tissue lesions may lie)."""
    T, p = c.sub.tissue, c.prof
    t_fine, t_fib, _ = c.tex
    fat_val = t_fine * (0.04 * T["fat"])
    fat_val += T["fat"]
    c.img = inside(c.pre["sd_limb0"] - p.limb_w, c.pix)
    c.img *= fat_val
    joint_zone = ellipse(c.X, c.Y, 0.0, c.sub.yj + 0.02, 1.15, p.joint_ry)
    deep = inside(c.pre["sd_limb_fat"] - p.limb_w, c.pix)          # deep to the subcutaneous fat
    muscle_zone = deep * inside(np.negative(joint_zone, out=joint_zone), 3.0 * c.pix)
    mus_val = t_fib * (0.08 * T["muscle"])
    mus_val += t_fine * (0.03 * T["muscle"])
    mus_val += T["muscle"]
    paint(c.img, muscle_zone, mus_val)
    paint(c.img, c.pre["septa"] * muscle_zone, fat_val)
    return fat_val, muscle_zone, deep


def _bones(c: _Canvas) -> _Bones:
    """Bone SDFs (femur/tibia shrink towards the joint anteriorly), each evaluated on its row
    window only (elsewhere: 1, far outside)."""
    f, notch, cyc = _femur(c)
    t = _tibia(c)
    union = np.minimum(f, t)
    p, yj, X, Y, wf, wt = c.prof, c.sub.yj, c.X, c.Y, c.pre["wf"], c.pre["wt"]
    if p.p_fib > 1e-3:
        fib = smin(ellipse(X[:, wt], Y[:, wt], p.plat + 0.03, yj + 0.46, 0.09, 0.11),
                   shaft(X[:, wt], Y[:, wt], p.plat + 0.04, yj + 0.46, 0.05, False), 0.08)
        fib += 0.25 * (1.0 - p.p_fib)
        np.minimum(union[:, wt], fib, out=union[:, wt])
    if p.p_pat > 1e-3:
        pat = ellipse(X[:, wf], Y[:, wf], 0.0, yj - 0.42, 0.22, 0.17) + 0.24 * (1.0 - p.p_pat)
        np.minimum(union[:, wf], pat, out=union[:, wf])
    return _Bones(f, t, notch, union, cyc)


def _femur(c: _Canvas) -> tuple[np.ndarray, np.ndarray, float]:
    """Femur SDF (two condyles, metaphysis, shaft, less the intercondylar notch), the notch's SDF,
    and the condyle centres' height."""
    sub, p, wf = c.sub, c.prof, c.pre["wf"]
    yj, tc, dc, rcs = sub.yj, sub.tc, sub.dc, p.rcs
    iq = 1.0 / p.q_bone
    cyc = yj - tc - rcs
    Xb, Yf = c.X[:, wf] * iq, c.Y[:, wf] * iq + (yj - tc) * (1.0 - iq)
    fw = smin(ellipse(Xb, Yf, -dc, cyc, rcs, rcs), ellipse(Xb, Yf, dc, cyc, rcs, rcs), 0.05)
    if p.p_meta > 1e-3:
        fw = smin(fw, ellipse(Xb, Yf, 0.0, cyc - 0.14, dc + rcs - 0.04, 0.3)
                  + 0.5 * (1.0 - p.p_meta), 0.12)
    if p.p_mid > 1e-3:
        fw = smin(fw, shaft(Xb, Yf, 0.0, yj - 0.4, 0.21, True) + 0.35 * (1.0 - p.p_mid), 0.3)
    notch_w = ellipse(Xb, Yf, 0.0, yj - tc, 0.06 + 0.03 * p.notch, 0.02 + 0.26 * p.notch)
    fw = smax(fw, -notch_w, 0.03)
    fw *= p.q_bone
    return _on_rows(fw, wf, c.shape, 1.0), _on_rows(notch_w, wf, c.shape, 1.0), cyc


def _tibia(c: _Canvas) -> np.ndarray:
    """Tibia SDF: the plateau, the shaft and the tibial spines."""
    sub, p, wt = c.sub, c.prof, c.pre["wt"]
    yj, tc = sub.yj, sub.tc
    iq = 1.0 / p.q_bone
    Xb, Yt = c.X[:, wt] * iq, c.Y[:, wt] * iq + (yj + tc) * (1.0 - iq)
    tw = rounded_box(Xb, Yt, 0.0, yj + tc + 0.18, p.plat, 0.18, 0.08)
    if p.p_mid > 1e-3:
        tw = smin(tw, shaft(Xb, Yt, 0.0, yj + 0.4, 0.2, False) + 0.35 * (1.0 - p.p_mid), 0.35)
        spines = smin(ellipse(Xb, Yt, -0.045, yj + tc, 0.032, 0.055),
                      ellipse(Xb, Yt, 0.045, yj + tc, 0.032, 0.055), 0.01)
        tw = smin(tw, spines + 0.2 * (1.0 - p.p_mid), 0.015)
    tw *= p.q_bone
    return _on_rows(tw, wt, c.shape, 1.0)


def _bone_tissue(c: _Canvas, bones: _Bones, fat_val: np.ndarray, muscle_zone: np.ndarray) -> _BoneMasks:
    """A fat halo around the bones, then cortex and marrow."""
    T, pix, t_fine, t_low = c.sub.tissue, c.pix, c.tex[0], c.tex[2]
    paint(c.img, inside(bones.union - 0.035, 2.0 * pix) * (1.0 - 0.6 * muscle_zone), fat_val)
    in_f, in_t = inside(bones.f, pix), inside(bones.t, pix)
    in_bone = inside(bones.union, pix)
    paint(c.img, in_bone, T["cortex"])
    marrow_val = t_fine * (0.06 * T["marrow"])
    marrow_val += t_low * (0.06 * T["marrow"])
    marrow_val += T["marrow"]
    inner_f = inside(bones.f + c.sub.cortex, pix)
    inner_t = inside(bones.t + c.sub.cortex, pix)
    marrow = inside(bones.union + c.sub.cortex, pix)
    paint(c.img, marrow, marrow_val)
    return _BoneMasks(in_f, in_t, in_bone, inner_f, inner_t)


# joint-level structures, drawn on the joint row window `pre["wj"]` only

def _cartilage(c: _Canvas, bones: _Bones, m: _BoneMasks) -> tuple[np.ndarray, np.ndarray]:
    """Articular cartilage: bands just outside the femoral and tibial joint surfaces. Returns the
    two bands (full slice)."""
    sub, p, wj, pix = c.sub, c.prof, c.pre["wj"], c.pix
    T, yj, tc, cyc = sub.tissue, sub.yj, sub.tc, bones.cyc
    Yj, AXj, imj = c.Y[:, wj], c.pre["AX"][:, wj], c.img[:, wj]
    band_fj = inside(bones.f[:, wj] - tc, pix)
    band_fj -= m.in_f[:, wj]
    band_fj *= smoothstep(Yj, cyc - 0.02, cyc + 0.06)
    band_fj *= smoothstep(bones.notch[:, wj], 0.0, 0.03)
    band_tj = inside(bones.t[:, wj] - tc, pix)
    band_tj -= m.in_t[:, wj]
    band_tj *= 1.0 - smoothstep(Yj, yj + tc + 0.03, yj + tc + 0.07)
    band_tj *= c.pre["cond_f"]
    band_tj *= 1.0 - smoothstep(AXj, p.plat - 0.05, p.plat - 0.01)
    cart_val = c.tex[0][:, wj] * (0.05 * T["cartilage"])
    cart_val += T["cartilage"]
    paint(imj, band_fj, cart_val)
    paint(imj, band_tj, cart_val)
    return _on_rows(band_fj, wj, c.shape, 0.0), _on_rows(band_tj, wj, c.shape, 0.0)


def _cruciates(c: _Canvas, bones: _Bones, m: _BoneMasks) -> None:
    """Cruciate ligaments in the notch."""
    p_cru, wj = c.prof.p_cru, c.pre["wj"]
    if p_cru > 0.02:
        paint(c.img[:, wj], c.pre["cru"] * (p_cru * smoothstep(-bones.notch[:, wj], 0.0, 0.01))
              * (1.0 - m.in_t[:, wj]), c.sub.tissue["cruciate"])


def _menisci(c: _Canvas, m: _BoneMasks) -> dict[str, np.ndarray]:
    """Menisci: wedges at the medial and lateral joint margins, apex pointing inwards. Returns
    each one's mask (full slice)."""
    sub, p, wj = c.sub, c.prof, c.pre["wj"]
    L, h, xo = p.men_len, sub.men_h, p.men_x
    Xj, imj = c.X[:, wj], c.img[:, wj]
    outside_bone = (1.0 - m.in_f[:, wj]) * (1.0 - m.in_t[:, wj])
    nrm = math.sqrt((h / 2) * (h / 2) + L * L)
    dYl = c.pre["dY"][:, wj] * (L / nrm)
    men = {}
    for name, sg in (("medial", -1.0), ("lateral", 1.0)):
        U = Xj * sg
        base = (U - (xo - L)) * (-(h / 2) / nrm)
        sd = np.maximum(np.maximum(base - dYl, base + dYl), U - xo)
        sd += 0.25 * (1.0 - p.p_men)
        mj = inside(sd, c.pix) * outside_bone
        paint(imj, mj, sub.tissue["meniscus"])
        men[name] = _on_rows(mj, wj, c.shape, 0.0)
    return men


def _collaterals(c: _Canvas, m: _BoneMasks) -> None:
    """The medial and lateral collateral ligaments."""
    sub, p, wj, pix = c.sub, c.prof, c.pre["wj"], c.pix
    yj, dc, rcs, plat, xo = sub.yj, sub.dc, p.rcs, p.plat, p.men_x
    Xj, Yj, imj, in_bj = c.X[:, wj], c.Y[:, wj], c.img[:, wj], m.in_bone[:, wj]
    if p.p_mcl > 0.02:
        mcl = smin(capsule(Xj, Yj, -(dc + rcs + 0.03), yj - 0.32, -(xo + 0.035), yj, 0.016),
                   capsule(Xj, Yj, -(xo + 0.035), yj, -plat, yj + 0.42, 0.016), 0.02)
        paint(imj, inside(mcl, pix) * (1.0 - in_bj) * p.p_mcl, sub.tissue["ligament"])
    if p.p_lcl > 0.02:
        lcl = capsule(Xj, Yj, dc + rcs + 0.02, yj - 0.24, plat + 0.07, yj + 0.38, 0.017)
        paint(imj, inside(lcl, pix) * (1.0 - in_bj) * p.p_lcl, sub.tissue["ligament"])


def _joint_fluid(c: _Canvas, m: _BoneMasks) -> None:
    """Physiological joint fluid in the medial and lateral recesses beyond the menisci. It is the
    brightest tissue on fat-suppressed images, as in real knees; without it a fluid-bright lesion
    would set the volume's maximum and, through per-volume min/max scaling, darken every slice
    of lesion volumes: a global cue a classifier learns instead of the lesion."""
    sub, p, wj = c.sub, c.prof, c.pre["wj"]
    if p.p_men > 0.02:
        Xj, Yj, imj, in_bj = c.X[:, wj], c.Y[:, wj], c.img[:, wj], m.in_bone[:, wj]
        e = sub.effusion
        for sg in (-1.0, 1.0):
            rec = ellipse(Xj, Yj, sg * (p.men_x + 0.045), sub.yj, 0.035 * e, 0.08 * e)
            paint(imj, inside(rec, c.pix) * (1.0 - in_bj) * p.p_men, sub.tissue["fluid"])
