"""Portable math: the same bytes on every x86-64 CPU.

The data must be the same bytes on every x86-64 CPU, but numpy's SIMD kernels (exp, sin, cos,
log, power, complex abs and complex multiply), glibc libm's FMA variants (math.exp, scalar
np.exp, Python's float **) and OpenBLAS (vdot, linalg.norm) all round differently depending on
the instruction set they dispatch to. So transcendental functions are evaluated here from
IEEE-exact operations only (+, -, *, /, sqrt, floor, ldexp: correctly rounded on every CPU),
each a separate numpy call (no FMA contraction), in float64 (~1 ulp), and complex products and
magnitudes are written out in real arithmetic. FFTs (pocketfft in numpy and scipy, compiled
for the baseline, no runtime dispatch) and numpy's add-reductions are already identical.
"""
from __future__ import annotations

import math

import numpy as np

_LN2_HI = 6.93147180369123816490e-01      # fdlibm's split of ln 2 (k * _LN2_HI exact)
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_PIO2_HI = 1.57079632673412561417e+00     # first 33 bits of pi/2 (k * _PIO2_HI exact)
_PIO2_LO = 6.07710050650619224932e-11
_INV_PIO2 = 6.36619772367581382433e-01
_EXP_C = tuple(1.0 / math.factorial(n) for n in range(14))          # exact: factorials < 2^53
_SIN_C = tuple((-1.0) ** j / math.factorial(2 * j + 1) for j in range(9))
_COS_C = tuple((-1.0) ** j / math.factorial(2 * j) for j in range(10))


def _scalar_or(a, like):
    return float(a) if np.ndim(like) == 0 else a


def det_exp(x):
    """exp(x) in float64 (relative error ~2e-16), bit-identical on every CPU. Float or array."""
    x0 = np.asarray(x, np.float64)
    xc = np.clip(x0, -708.0, 709.0)
    k = np.floor(xc * _INV_LN2 + 0.5)
    r = xc - k * _LN2_HI
    r = r - k * _LN2_LO                                # |r| <= 0.347: Taylor to r^13
    p = np.full_like(r, _EXP_C[13])
    for c in _EXP_C[12::-1]:
        p = p * r + c
    out = np.ldexp(p, k.astype(np.int32))
    out = np.where(x0 < -708.0, 0.0, out)
    return _scalar_or(out, x)


def det_sincos(x):
    """(sin(x), cos(x)) in float64 (error ~1e-16 for |x| < 1e5), bit-identical on every CPU."""
    x0 = np.asarray(x, np.float64)
    k = np.floor(x0 * _INV_PIO2 + 0.5)
    r = x0 - k * _PIO2_HI
    r = r - k * _PIO2_LO                               # |r| <= pi/4
    r2 = r * r
    s = np.full_like(r, _SIN_C[8])
    for c in _SIN_C[7::-1]:
        s = s * r2 + c
    s = s * r
    c_ = np.full_like(r, _COS_C[9])
    for c in _COS_C[8::-1]:
        c_ = c_ * r2 + c
    q = np.mod(k, 4.0)
    sin = np.where(q == 0, s, np.where(q == 1, c_, np.where(q == 2, -s, -c_)))
    cos = np.where(q == 0, c_, np.where(q == 1, -s, np.where(q == 2, -c_, s)))
    return _scalar_or(sin, x), _scalar_or(cos, x)


def det_abs(z: np.ndarray) -> np.ndarray:
    """|z| of a complex array as float32, computed in float64 (not numpy's SIMD hypot)."""
    re = z.real.astype(np.float64)
    im = z.imag.astype(np.float64)
    re *= re
    im *= im
    re += im
    return np.sqrt(re, out=re).astype(np.float32)


def det_cmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b of complex64 arrays (broadcast), in real arithmetic (numpy's SIMD complex multiply
    uses FMA where the CPU has it)."""
    ar, ai, br, bi = a.real, a.imag, b.real, b.imag
    out = np.empty(np.broadcast_shapes(a.shape, b.shape), np.complex64)
    np.subtract(ar * br, ai * bi, out=out.real)
    np.add(ar * bi, ai * br, out=out.imag)
    return out


def det_rmul(z: np.ndarray, r) -> np.ndarray:
    """z *= r in place for complex z and real r (numpy would promote r to complex)."""
    z.real *= r
    z.imag *= r
    return z
