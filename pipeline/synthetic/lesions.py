"""The knee phantom's lesions: what is drawn for each (`plan_lesion`), painting one into a slice's
tissue map (`paint_lesion`), and its box on each slice (`lesion_box`).

Lesions look like fastMRI+ knee annotations (`pipeline.synthetic.fastmri_plus_knee`, measured from
`knee.csv`): a lesion-bearing volume has one to three lesions with fastMRI+ label names, drawn with
the labels' frequencies (per box row); each one's box area, as a fraction of the recon frame, is
drawn from its label's measured area distribution (log-linear between the 10th, 50th and 90th
percentiles), with the label's median aspect ratio, over a run of consecutive slices whose length
is the label's median run scaled from ~35 slices to the volume's. Each label is drawn by one of six
anatomical kinds:
- "meniscus": a fluid-bright line (horizontal or vertical tear) through the dark meniscal wedge.
- "cartilage": fluid filling a full- or partial-thickness gap in the femoral or tibial cartilage.
- "bone": subchondral marrow edema / contusion, a blob under the condyle or plateau surface,
  confined to marrow; bright on fat-suppressed PD, dark on PD.
- "effusion": joint fluid distending the medial or lateral gutter beside the femoral condyle.
- "soft_tissue": a fluid-filled cyst or strained muscle beside the joint, outside bone and fat.
- "ligament": a sprained ligament (cruciates in the notch, collaterals at the joint margins):
  a band of raised signal, between ligament and fluid.
Lesion signal never exceeds normal joint fluid (the brightest tissue), so a lesion is a local
change of contrast, not a saturated blob. Every random choice about a lesion is drawn before any
slice is rendered, from the lesions' own generator. Boxes are `(row0, col0, height, width)` in the
recon frame: the bounding boxes of where the lesion changes the tissue by more than `BOX_THRESHOLD`
of its largest change, padded by one pixel (none where it is not visible).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.synthetic.fastmri_plus_knee import KNEE_LABELS, REAL_SLICES
from pipeline.synthetic.anatomy import Subject
from pipeline.synthetic.shapes import ellipse, inside, paint, smoothstep
from pipeline.portable_math import det_exp, det_sincos

KIND_OF_LABEL = {
    "Meniscus Tear": "meniscus", "Displaced Meniscal Tissue": "meniscus",
    "Cartilage - Partial Thickness loss/defect": "cartilage",
    "Cartilage - Full Thickness loss/defect": "cartilage",
    "Bone- Subchondral edema": "bone", "Bone-Fracture/Contusion/dislocation": "bone", "Bone - Lesion": "bone",
    "Joint Effusion": "effusion",
    "Periarticular cysts": "soft_tissue", "Soft Tissue Lesion": "soft_tissue", "Muscle Strain": "soft_tissue",
    "Joint Bodies": "soft_tissue",
    "Ligament - ACL Low Grade sprain": "ligament", "Ligament - ACL High Grade Sprain": "ligament",
    "Ligament - PCL Low-Mod grade sprain": "ligament", "Ligament - PCL High Grade": "ligament",
    "Ligament - MCL Low-Mod Grade Sprain": "ligament", "Ligament - MCL High Grade sprain": "ligament",
    "LCL Complex - Low-Mod Grade Sprain": "ligament", "LCL Complex- High Grade Sprain": "ligament",
    "Patellar Retinaculum - High grade sprain": "ligament",
}
LABELS = tuple(KNEE_LABELS)
LESION_KINDS = ("meniscus", "cartilage", "bone", "effusion", "soft_tissue", "ligament")
# slice positions (anterior 0 -> posterior 1) a lesion of each kind is centred in
_SLICE_RANGE = dict(meniscus=(0.3, 0.72), cartilage=(0.3, 0.72), bone=(0.3, 0.72), effusion=(0.15, 0.6),
                    soft_tissue=(0.45, 0.85), ligament=(0.35, 0.7))
# a label's chance per lesion: its share of box rows over its run length, so rows come out at the shares
_LABEL_P = np.array([KNEE_LABELS[k].share / KNEE_LABELS[k].run for k in LABELS])
_LABEL_P /= _LABEL_P.sum()
BOX_THRESHOLD = 0.35
MIN_VISIBLE_CHANGE = 0.15  # tissue-value change (fluid ~1) under which a lesion is not boxed


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
    """Everything random about one lesion, drawn before rendering. `area` is the box area drawn
    for it as a fraction of the recon frame, `aspect` its width / height."""
    kind: str
    label: str
    prof: dict           # slice -> strength profile in (0, 1]
    side: float
    area: float
    aspect: float
    p: dict              # kind-specific parameters


# --------------------------------------------------------------------------- drawing the plans
def draw_lesion_plans(seed: int, s_pos: np.ndarray) -> list[LesionPlan]:
    """One to three lesions of different labels, from their own generator (`seed`); `s_pos` are the
    slice positions (anterior 0 -> posterior 1)."""
    lrng = np.random.default_rng(seed)
    n_les = int(lrng.choice((1, 2, 3), p=(0.4, 0.35, 0.25)))
    picks = lrng.choice(len(LABELS), size=n_les, replace=False, p=_LABEL_P)
    return [plan_lesion(lrng, LABELS[int(i)], s_pos) for i in picks]


def draw_box_area(rng: np.random.Generator, ln_area: tuple[float, float, float]) -> float:
    """A box area (fraction of the frame) from a label's 10th/50th/90th percentiles: log-linear
    between them, extended with the nearer slope to the 2nd and 98th percentiles."""
    u = float(rng.uniform(0.02, 0.98))
    lo, mid, hi = ln_area
    ln = mid + (u - 0.5) * ((mid - lo) if u < 0.5 else (hi - mid)) / 0.4
    return float(det_exp(ln))


def _run_slices(rng, label: str, s_pos: np.ndarray, kind: str) -> list[int]:
    """The consecutive slices a lesion spans: its label's median run, scaled to this volume."""
    S = len(s_pos)
    n = int(math.floor(KNEE_LABELS[label].run * S / REAL_SLICES * float(rng.uniform(0.6, 1.5)) + 0.5))
    n = min(max(n, 1), S)
    lo, hi = _SLICE_RANGE[kind]
    cand = [k for k in range(S) if lo <= s_pos[k] <= hi] or [S // 2]
    k0 = int(rng.choice(cand))
    first = max(0, min(k0 - n // 2, S - n))
    return list(range(first, first + n))


def plan_lesion(rng, label: str, s_pos) -> LesionPlan:
    """Draw everything random about one lesion of fastMRI+ label `label` (before any rendering)."""
    kind = KIND_OF_LABEL[label]
    stats = KNEE_LABELS[label]
    area = draw_box_area(rng, stats.ln_area)
    ks = _run_slices(rng, label, np.asarray(s_pos), kind)
    c = (ks[0] + ks[-1]) / 2.0
    half = (ks[-1] - ks[0]) / 2.0 + 1.0
    prof = {k: math.sqrt(max(1.0 - ((k - c) / (half + 0.4)) * ((k - c) / (half + 0.4)), 0.0))
            for k in ks}
    side = float(rng.choice([-1.0, 1.0]))
    if kind == "bone":
        p = dict(on_femur=bool(rng.random() < 0.6), dx=float(rng.uniform(-0.07, 0.07)),
                 depth=float(rng.uniform(0.3, 0.5)))
    elif kind == "cartilage":
        p = dict(full="Full" in label, on_femur=bool(rng.random() < 0.7),
                 phi=float(rng.uniform(-0.45, 0.45)), tx=float(rng.uniform(0.22, 0.36)))
    elif kind == "meniscus":
        vertical = bool(rng.random() < 0.3)
        sgn = float(rng.choice([-1.0, 1.0]))
        ang = float(rng.uniform(1.2, 1.57)) * sgn if vertical else float(rng.uniform(-0.45, 0.45))
        p = dict(ang=ang, frac=float(rng.uniform(0.3, 0.6)), off=float(rng.uniform(-0.25, 0.25)))
    elif kind == "effusion":
        p = dict(dy=float(rng.uniform(-0.1, 0.1)))
    elif kind == "soft_tissue":
        p = dict(dy=float(rng.uniform(-0.3, 0.2)), gap=float(rng.uniform(0.02, 0.08)))
    else:
        if "MCL" in label:
            side = -1.0
        elif "LCL" in label:
            side = 1.0
        p = dict(where="cruciate" if ("ACL" in label or "PCL" in label) else "collateral",
                 dx=float(rng.uniform(-0.04, 0.04)), dy=float(rng.uniform(-0.08, 0.04)))
    return LesionPlan(kind=kind, label=label, prof=prof, side=side, area=area,
                      aspect=stats.aspect, p=p)


# --------------------------------------------------------------------------- painting
def paint_lesion(plan: LesionPlan, k: int, sub: Subject, g: dict, img, X, Y, pix, t_low):
    """Paint lesion `plan` into the single-slice map `img` (1, h, w) of slice k, in place, and
    return where it shows (1, h, w): the change of tissue value relative to its largest. Where that
    is under `MIN_VISIBLE_CHANGE` (a cyst in fat on a PD image) the slice is left as it was and the
    map is zeros: a reader boxes only what is visible. `g` is the slice's geometry (`phantom_anatomy.anatomy`)."""
    before = img.copy()
    _paint(plan, k, sub, g, img, X, Y, pix, t_low)
    change = np.abs(img - before)
    peak = float(change.max())
    if peak < MIN_VISIBLE_CHANGE:           # left out: neither painted nor boxed
        np.copyto(img, before)
        return np.zeros_like(change)
    change *= 1.0 / peak
    return change


def _paint(plan: LesionPlan, k: int, sub: Subject, g: dict, img, X, Y, pix, t_low):
    prof = plan.prof[k]
    if plan.kind == "bone":
        return _bone_edema(plan, prof, sub, g, img, X, Y, pix, t_low)
    if plan.kind == "cartilage":
        return _cartilage_defect(plan, prof, sub, g, img, X, Y, pix)
    if plan.kind == "meniscus":
        return _meniscus_tear(plan, prof, sub, g, img, X, Y, pix)
    if plan.kind == "effusion":
        return _effusion(plan, prof, sub, g, img, X, Y, pix)
    if plan.kind == "soft_tissue":
        return _soft_tissue_lesion(plan, prof, sub, g, img, X, Y, pix)
    return _ligament_sprain(plan, prof, sub, g, img, X, Y, pix)


def _half_axes(plan: LesionPlan, prof: float, pix: float, grow: float = 1.0) -> tuple[float, float]:
    """Half width and height (canonical units) of a lesion whose padded box has the plan's area
    (the frame is 2 x 2 units) and aspect, shrunk towards the ends of its run of slices. `grow`
    makes up for the part the anatomy clips off (marrow, bone), measured over many volumes."""
    sc = (0.75 + 0.25 * prof) * grow
    a = math.sqrt(plan.area * plan.aspect) * sc - pix
    b = math.sqrt(plan.area / plan.aspect) * sc - pix
    return max(a, pix), max(b, pix)


def _soft_blob(X, Y, cx, cy, a, b, pix):
    """A filled ellipse with a 2-pixel soft rim."""
    return inside(ellipse(X, Y, cx, cy, a, b), 2.0 * pix)


def _bone_edema(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix, t_low):
    """A lobulated blob of marrow edema under the joint surface, confined to the marrow."""
    T, p, side = sub.tissue, plan.p, plan.side
    cyc, rcs = float(g["cyc"]), float(g["rcs"])
    a, b = _half_axes(plan, prof, pix, grow=1.25)
    if p["on_femur"]:
        cx, cy, marrow = side * sub.dc + p["dx"], cyc + rcs - b * (0.3 + p["depth"]), g["inner_f"]
    else:
        cx, cy, marrow = side * (sub.dc + p["dx"]), sub.yj + sub.tc + b * (0.3 + p["depth"]), g["inner_t"]
    w = _soft_blob(X, Y, cx, cy, a, b, pix)
    w *= marrow
    w *= np.clip(0.85 + 0.25 * t_low, 0.55, 1.0)
    if "edema" in T:
        paint(img, w, T["edema"])
    else:
        img *= 1.0 - (1.0 - T["edema_gain"]) * w
    return w


def _cartilage_defect(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix):
    """Fluid filling a full- or partial-thickness gap in the femoral or tibial cartilage; the gap's
    half length along the surface follows the drawn box (its height is the cartilage's)."""
    p, side, tc = plan.p, plan.side, sub.tc
    cyc, rcs = float(g["cyc"]), float(g["rcs"])
    rd, _ = _half_axes(plan, prof, pix)
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
    """A fluid-bright line across the dark meniscal wedge (the wedge bounds its box)."""
    p, side = plan.p, plan.side
    name = "medial" if side < 0 else "lateral"
    L, xo = float(g["L"]), float(g["xo"])
    px = side * (xo - L * p["frac"])
    py = sub.yj + p["off"] * float(g["h"])
    sang, cang = det_sincos(p["ang"])
    nx, ny = -sang, cang
    wid = max(0.036, 2.0 * pix)
    dist = np.abs((X - px) * nx + (Y - py) * ny)
    a, b = _half_axes(plan, prof, pix, grow=1.3)
    w = inside(dist - wid / 2, pix) * np.clip(g["men"][name] * 1.6, 0.0, 1.0)
    w *= _soft_blob(X, Y, px, py, a, b, pix)
    w *= 0.7 + 0.3 * prof
    paint(img, w, sub.tissue["fluid"])
    return w


def _outside_bone(g: dict):
    return g["deep"] * (1.0 - g["in_bone"])


def _effusion(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix):
    """Joint fluid distending the gutter beside the femoral condyle, above the joint line."""
    a, b = _half_axes(plan, prof, pix, grow=1.05)
    cx = plan.side * (sub.dc + float(g["rcs"]) + 0.5 * a)
    cy = sub.yj - 0.75 * b + plan.p["dy"] * b
    w = _soft_blob(X, Y, cx, cy, a, b, pix) * _outside_bone(g)
    # a little below the recesses' fluid: a large pool where the receive bias peaks must not
    # raise the volume's maximum (a global cue, see `phantom_anatomy._joint_fluid`)
    paint(img, w, 0.85 * sub.tissue["fluid"])
    return w


def _soft_tissue_lesion(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix):
    """A fluid-filled cyst (or strained muscle) beside the joint, outside bone and deep to the fat."""
    a, b = _half_axes(plan, prof, pix)
    reach = float(g["limb_w"]) - sub.fat - a - 0.02          # keep it inside the limb
    cx = plan.side * max(min(float(g["plat"]) + plan.p["gap"] + a, reach), 0.0)
    cy = sub.yj + plan.p["dy"]
    w = _soft_blob(X, Y, cx, cy, a, b, pix) * _outside_bone(g)
    w *= 0.8 + 0.2 * prof
    paint(img, w, sub.tissue["fluid"])
    return w


def _ligament_sprain(plan: LesionPlan, prof: float, sub: Subject, g: dict, img, X, Y, pix):
    """Raised signal along a sprained ligament: the cruciates in the notch or a collateral at the
    joint margin; a band between ligament and fluid signal."""
    a, b = _half_axes(plan, prof, pix)
    p = plan.p
    if p["where"] == "cruciate":
        cx, cy = p["dx"], sub.yj - 0.6 * b + p["dy"]
    else:
        cx, cy = plan.side * (float(g["xo"]) + 0.04 + 0.3 * a), sub.yj + p["dy"]
    w = _soft_blob(X, Y, cx, cy, a, b, pix) * _outside_bone(g)
    w *= 0.6 + 0.2 * prof
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
