"""The knee phantom's drawing kit: signed distance fields (SDFs) of simple shapes, their anti-aliased
inside masks, smooth unions and steps, and painting with soft masks.

Arrays are float32 and worked on in place where possible (the phantom renders a slice in ~3 ms).
Distances are negative inside a shape. Every transcendental function goes through
`pipeline.portable_math`, so the same inputs give the same bytes on every x86-64 CPU.
"""
from __future__ import annotations

import numpy as np

from pipeline.portable_math import det_exp


def clip(a, lo, hi):
    """In-place clip."""
    return np.clip(a, lo, hi, out=a)


def smoothstep_at(x: float, a: float, b: float) -> float:
    """Scalar smoothstep."""
    t = min(max((x - a) / (b - a), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def bump_at(x: float, c: float, w: float) -> float:
    """Scalar Gaussian bump."""
    t = (x - c) / w
    return det_exp(-(t * t))


def smoothstep(x, a, b):
    """Smoothstep of an array: 0 below a, 1 above b, 3t^2 - 2t^3 between."""
    t = x - a
    t *= 1.0 / (b - a)
    clip(t, 0.0, 1.0)
    u = t * -2.0
    u += 3.0
    t *= t
    t *= u
    return t


def bump(x, c, w):
    """Gaussian bump of an array: exp(-((x - c) / w)^2)."""
    t = x - c
    t *= 1.0 / w
    t *= t
    np.negative(t, out=t)
    np.copyto(t, det_exp(t), casting="same_kind")
    return t


def inside(sdf, pix):
    """Anti-aliased inside mask of a signed distance field (1 px ramp)."""
    m = sdf * (-1.0 / pix)
    m += 0.5
    return clip(m, 0.0, 1.0)


def ellipse(X, Y, cx, cy, a, b):
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


def shaft(X, Y, cx, y_end, hx, up):
    """SDF of a vertical shaft of half width hx that ends at y_end and runs up (up=True) or down
    past the rendered rows."""
    d = np.abs(X - cx)
    d -= hx
    e = (Y - y_end) if up else (y_end - Y)
    return np.maximum(d, e)


def rounded_box(X, Y, cx, cy, hx, hy, r=0.0):
    """SDF of an axis-aligned box (half sizes hx, hy) with corners rounded by r."""
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


def capsule(X, Y, x0, y0, x1, y1, r):
    """SDF of the segment (x0, y0)-(x1, y1) thickened by r."""
    bx, by = x1 - x0, y1 - y0
    px, py = X - x0, Y - y0
    h = (px * bx + py * by) * (1.0 / (bx * bx + by * by))
    clip(h, 0.0, 1.0)
    px = px - bx * h
    py = py - by * h
    px *= px
    py *= py
    d = px + py
    np.sqrt(d, out=d)
    d -= r
    return d


def smin(a, b, k):
    """Polynomial smooth minimum (union with a fillet of size k)."""
    h = b - a
    h *= 0.5 / k
    h += 0.5
    clip(h, 0.0, 1.0)
    out = a - b
    out *= h
    out += b
    g = 1.0 - h
    g *= h
    g *= k
    out -= g
    return out


def smax(a, b, k):
    """Polynomial smooth maximum (intersection with a fillet of size k)."""
    return -smin(-a, -b, k)


def paint(img, mask, value):
    """Painter's algorithm with soft masks: img <- img + mask * (value - img), in place."""
    d = value - img
    d *= mask
    img += d
