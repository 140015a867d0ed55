"""The knee phantom's lesions: what is drawn for each (`plan_lesion`), painting one into a slice's
tissue map (`paint_lesion`), and its box on each slice (`lesion_box`).

A lesion-bearing volume has one or two lesions of different kinds, each over 4-6 adjacent slices of
the central part of the volume (fewer only where the anatomy it sits in is absent):
- "edema": subchondral bone-marrow edema, a lobulated blob under the femoral condyle or tibial
  plateau surface, confined to marrow; bright on fat-suppressed PD, dark on PD.
- "cartilage": fluid filling a full- or partial-thickness gap in the femoral or tibial cartilage.
- "meniscus": a fluid-bright line (horizontal or vertical tear) through the dark meniscal wedge.
Every random choice about a lesion is drawn before any slice is rendered, from the lesions' own
generator. Lesions carry fastMRI+ knee label names and per-slice boxes `(row0, col0, height,
width)` in the recon frame: the bounding boxes of the rendered lesion itself (weight >
`BOX_THRESHOLD`), padded by one pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.phantom_anatomy import Subject
from pipeline.phantom_shapes import ellipse, inside, paint, smoothstep
from pipeline.portable_math import det_sincos

# fastMRI+ knee.csv label names (microsoft/fastmri-plus Annotations/knee.csv)
LABEL_EDEMA = "Bone- Subchondral edema"
LABEL_CARTILAGE_PARTIAL = "Cartilage - Partial Thickness loss/defect"
LABEL_CARTILAGE_FULL = "Cartilage - Full Thickness loss/defect"
LABEL_MENISCUS = "Meniscus Tear"
LESION_KINDS = ("edema", "cartilage", "meniscus")
BOX_THRESHOLD = 0.35


@dataclass(frozen=True)
class Lesion:
    """A lesion of one volume. `box` is the union of the per-slice `boxes` (aligned with `slices`),
    all `(row0, col0, height, width)` in the recon frame (native orientation, row 0 = top)."""
    kind: str
    label: str
    slices: tuple[int, ...]
    box: tuple[int, int, int, int]
    boxes: tuple[tuple[int, int, int, int], ...] = field(default=())


@dataclass(frozen=True)
class LesionPlan:
    """Everything random about one lesion, drawn before rendering."""
    kind: str
    label: str
    prof: dict           # slice -> strength profile in (0, 1]
    side: float
    p: dict              # kind-specific parameters


# --------------------------------------------------------------------------- drawing the plans
def draw_lesion_plans(seed: int, s_pos: np.ndarray) -> list[LesionPlan]:
    """One or two lesions of different kinds, from their own generator (`seed`); `s_pos` are the
    slice positions (anterior 0 -> posterior 1)."""
    lrng = np.random.default_rng(seed)
    n_les = 1 if lrng.random() < 0.5 else 2
    return [plan_lesion(lrng, str(kind), s_pos) for kind in lrng.choice(LESION_KINDS, size=n_les, replace=False)]


def plan_lesion(rng, kind, s_pos, lo=0.3, hi=0.72) -> LesionPlan:
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
    return LesionPlan(kind=kind, label=label, prof=prof, side=side, p=p)


# --------------------------------------------------------------------------- painting
def paint_lesion(plan: LesionPlan, k: int, sub: Subject, g: dict, img, X, Y, pix, t_low):
    """Paint lesion `plan` into the single-slice map `img` (1, h, w) of slice k, in place, and
    return its weight map (1, h, w). `g` is the slice's geometry (`phantom_anatomy.anatomy`)."""
    prof = plan.prof[k]
    if plan.kind == "edema":
        return _edema(plan, prof, sub, g, img, X, Y, t_low)
    if plan.kind == "cartilage":
        return _cartilage_defect(plan, prof, sub, g, img, X, Y, pix)
    return _meniscus_tear(plan, prof, sub, g, img, X, Y, pix)


def _edema(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, t_low):
    """A lobulated blob of marrow edema under the joint surface, confined to the marrow."""
    T, p, side = sub.tissue, plan.p, plan.side
    cyc, rcs = float(g["cyc"]), float(g["rcs"])
    sc = 0.55 + 0.45 * prof
    if p["on_femur"]:
        cx, cy, marrow = side * sub.dc + p["dx"], cyc + rcs * p["depth"], g["inner_f"]
    else:
        cx, cy, marrow = side * (sub.dc + p["dx"]), sub.yj + sub.tc + p["ty"], g["inner_t"]
    e = ellipse(X, Y, cx, cy, p["a"] * sc, p["b"] * sc)
    w = np.clip(1.0 - e / (0.05 * sc), 0.0, 1.0)
    w *= np.sqrt(w)                                                       # soft rim: ^1.5
    w *= marrow
    w *= np.clip(0.85 + 0.25 * t_low, 0.55, 1.0)
    if "edema" in T:
        paint(img, w, T["edema"])
    else:
        img *= 1.0 - (1.0 - T["edema_gain"]) * w
    return w


def _cartilage_defect(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix):
    """Fluid filling a full- or partial-thickness gap in the femoral or tibial cartilage."""
    p, side, tc = plan.p, plan.side, sub.tc
    cyc, rcs = float(g["cyc"]), float(g["rcs"])
    rd = p["rd"] * (0.6 + 0.4 * prof)
    if p["on_femur"]:
        sphi, cphi = det_sincos(p["phi"])
        px = side * sub.dc + rcs * sphi
        py = cyc + (rcs + tc * 0.5) * cphi
        sd, band = g["f"], g["band_f"]
    else:
        px, py = side * p["tx"], sub.yj + tc * 0.5
        sd, band = g["t"], g["band_t"]
    disk = inside(ellipse(X, Y, px, py, rd, rd), pix)
    lo = -0.006 if p["full"] else tc * 0.3
    depth_mask = inside(lo - sd, pix) * inside(sd - tc - 0.012, pix)
    w = disk * depth_mask * np.maximum(np.sqrt(np.sqrt(np.maximum(band, 0.0))),
                                       smoothstep(band, 0.05, 0.3))
    paint(img, w, sub.tissue["fluid"])
    return w


def _meniscus_tear(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix):
    """A fluid-bright line across the dark meniscal wedge."""
    p, side = plan.p, plan.side
    name = "medial" if side < 0 else "lateral"
    L, xo = float(g["L"]), float(g["xo"])
    px = side * (xo - L * p["frac"])
    py = sub.yj + p["off"] * float(g["h"])
    sang, cang = det_sincos(p["ang"])
    nx, ny = -sang, cang
    wid = max(0.036, 2.0 * pix)
    dist = np.abs((X - px) * nx + (Y - py) * ny)
    w = inside(dist - wid / 2, pix) * np.clip(g["men"][name] * 1.6, 0.0, 1.0)
    w *= 0.7 + 0.3 * prof
    paint(img, w, sub.tissue["fluid"])
    return w


# --------------------------------------------------------------------------- boxes
def lesion_box(w, frame):
    """The bounding box (row0, col0, height, width) of a lesion's weight map `w` (in a frame of shape
    `frame`) where it exceeds `BOX_THRESHOLD`, padded by one pixel and clipped; None when empty."""
    m = w > BOX_THRESHOLD
    if not m.any():
        return None
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, frame[0])
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, frame[1])
    if r1 <= r0 or c1 <= c0:
        return None
    return (r0, c0, r1 - r0, c1 - c0)


def collect_lesions(plans: list[LesionPlan], boxes: list[dict[int, tuple]]) -> list[Lesion]:
    """`Lesion`s from the plans and their boxes per slice ({slice: box}); a lesion that left no box
    on any slice is left out."""
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
    return lesions
