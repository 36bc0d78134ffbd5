"""Exact sums of float32 values, their squares and their products with a feature, per unit.

Float sums depend on the order the numbers are added in; a corpus streamed in blocks and the
same arrays summed whole would give different last bits, and correlations computed from sums
of millions of values lose digits to cancellation.  Here nothing is rounded until the end:

A finite float32 ``x`` is ``±M · 2^(e-150)`` with an integer mantissa ``M < 2^24`` and the
biased exponent ``e`` (1..254; subnormals use e = 1).  Per unit and per exponent, the integers
``±M`` are added in an int64 table, as are ``M²`` (< 2^48, split into two 24-bit halves) and
``±M·Mf`` for the feature ``f`` (a float32 too), at exponent ``2e`` and ``e + e_f``.  Every
addend is below 2^24, so a table entry cannot overflow before 2^39 tokens.  The value of a sum
is then the exact rational ``Σ_e T[e] · 2^(e - bias)``, which :func:`exact_value` returns as a
:class:`fractions.Fraction`; it does not depend on block sizes or order.

Non-finite values are counted per unit and left out (with the feature values of those tokens,
so that each unit's sums cover the same tokens).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from .compiled import njit

LINEAR_BIAS = 150  # value of T[e] is T[e] * 2**(e - 150)
SQUARE_BIAS = 300  # for squares and products: (H[e] * 2**24 + L[e]) * 2**(e - 300)
LOW = (1 << 24) - 1


@njit(nogil=True, cache=True)
def _split(bits):  # pragma: no cover - compiled
    """(sign ±1, mantissa M, exponent e) of float32 bit patterns: value = sign·M·2^(e-150);
    e = 255 marks NaN/inf."""
    n = bits.shape[0]
    sign = np.empty(n, np.int64)
    mant = np.empty(n, np.int64)
    expo = np.empty(n, np.int64)
    for t in range(n):
        b = bits[t]
        e = np.int64((b >> 23) & 0xFF)
        m = np.int64(b & 0x7FFFFF)
        if e == 0:
            e = 1
        elif e != 255:
            m |= 0x800000
        sign[t] = 1 - 2 * np.int64(b >> 31)
        mant[t] = m
        expo[t] = e
    return sign, mant, expo


@njit(nogil=True, cache=True, inline="always")
def _decode(b, half):  # pragma: no cover - compiled
    """(sign ±1, M, e) of a float32 bit pattern, or of a float16 one (``half``) mapped onto the
    float32 scale: value = sign·M·2^(e-150), M < 2^24; e = 255 marks NaN/inf."""
    if half:
        e = np.int64((b >> 10) & 0x1F)
        m = np.int64(b & 0x3FF)
        sg = 1 - 2 * np.int64((b >> 15) & 1)
        if e == 31:
            return sg, m, np.int64(255)
        if e == 0:
            e = 1
        else:
            m |= 0x400
        return sg, m << 13, e + 112
    e = np.int64((b >> 23) & 0xFF)
    m = np.int64(b & 0x7FFFFF)
    sg = 1 - 2 * np.int64((b >> 31) & 1)
    if e == 0:
        e = 1
    elif e != 255:
        m |= 0x800000
    return sg, m, e


@njit(nogil=True, cache=True)
def accumulate(xbits, half, fbits, s1, s2h, s2l, ph, pl, nonfinite, xf1, xf2h, xf2l):  # pragma: no cover
    """Fold a block in.  ``xbits``: [n, units] bit patterns (uint32 of float32, or uint16 of
    float16 with ``half``); ``fbits``: uint32 [n] (the feature, float32).  Tables: s1 [U, 256],
    s2h/s2l/ph/pl [U, 512] int64; ``nonfinite`` [U]; xf1 [U, 256], xf2h/xf2l [U, 512]: the
    feature's sums over the tokens left out."""
    n, U = xbits.shape
    for t in range(n):
        fs, fm, fe = _decode(fbits[t], False)
        fq = fm * fm
        for u in range(U):
            sg, m, e = _decode(xbits[t, u], half)
            if e == 255:  # NaN or inf: left out, with the feature of this token
                nonfinite[u] += 1
                xf1[u, fe] += fs * fm
                xf2h[u, 2 * fe] += fq >> 24
                xf2l[u, 2 * fe] += fq & 0xFFFFFF
                continue
            s1[u, e] += sg * m
            q = m * m
            s2h[u, 2 * e] += q >> 24
            s2l[u, 2 * e] += q & 0xFFFFFF
            p = m * fm
            sp = sg * fs
            ph[u, e + fe] += sp * (p >> 24)
            pl[u, e + fe] += sp * (p & 0xFFFFFF)


class _Tables:
    """The int64 tables of :func:`accumulate` for ``units`` units."""

    NAMES = ("s1", "s2h", "s2l", "ph", "pl", "nonfinite", "xf1", "xf2h", "xf2l")

    def __init__(self, units: int):
        for name in self.NAMES:
            shape = (units,) if name == "nonfinite" else (units, 256 if name in ("s1", "xf1") else 512)
            setattr(self, name, np.zeros(shape, np.int64))

    def fold(self, xbits: np.ndarray, fbits: np.ndarray) -> None:
        accumulate(xbits, xbits.dtype == np.uint16, fbits, *(getattr(self, name) for name in self.NAMES))


class ExactSums:
    """Per-unit exact Σx, Σx², Σx·f and the feature's Σf, Σf² over the same tokens."""

    def __init__(self, units: int):
        self.units = units
        self.tables = _Tables(units)
        self.feature = _Tables(1)  # the feature alone: its Σf (s1) and Σf² (s2) over all tokens
        self.tokens = 0

    @property
    def nonfinite(self) -> np.ndarray:
        return self.tables.nonfinite

    def update(self, block: np.ndarray, feature: np.ndarray) -> None:
        """``block``: [n, units] float16 or float32 (anything else is cast to float32);
        ``feature``: [n] float32."""
        block = np.asarray(block)
        if block.dtype == np.float16:
            x = np.ascontiguousarray(block).view(np.uint16)
        else:
            x = np.ascontiguousarray(block, dtype=np.float32).view(np.uint32)
        f = np.ascontiguousarray(feature, dtype=np.float32).view(np.uint32)
        self.tables.fold(x, f)
        self.feature.fold(f.reshape(-1, 1), np.zeros(len(f), np.uint32))
        self.tokens += len(f)

    def values(self, u: int) -> dict:
        """Exact n, Σx, Σx², Σxf, Σf, Σf² of unit ``u`` over its finite tokens (Fractions; n an int)."""
        t, g = self.tables, self.feature
        return {"n": self.tokens - int(t.nonfinite[u]),
                "x": exact_value(t.s1[u], None, LINEAR_BIAS),
                "xx": exact_value(t.s2h[u], t.s2l[u], SQUARE_BIAS),
                "xf": exact_value(t.ph[u], t.pl[u], SQUARE_BIAS),
                "f": exact_value(g.s1[0], None, LINEAR_BIAS) - exact_value(t.xf1[u], None, LINEAR_BIAS),
                "ff": exact_value(g.s2h[0], g.s2l[0], SQUARE_BIAS) - exact_value(t.xf2h[u], t.xf2l[u], SQUARE_BIAS)}


def exact_value(high: np.ndarray, low: np.ndarray | None, bias: int) -> Fraction:
    """Σ_e (high[e]·2^24 + low[e]) · 2^(e - bias), or Σ_e high[e] · 2^(e - bias) without ``low``."""
    total = 0
    idx = np.flatnonzero(high if low is None else (high != 0) | (low != 0))
    for e in idx.tolist():
        term = int(high[e]) if low is None else (int(high[e]) << 24) + int(low[e])
        total += term << e
    return Fraction(total, 1 << bias)


__all__ = ["ExactSums", "exact_value", "accumulate"]
