"""The scan shared by the diagonal (elementwise) linear recurrences, HGRN and LRU::

    h_t = a_t * h_(t-1) + v_t          per channel; real (HGRN) or complex (LRU)

with ``a_t`` data dependent ([n, B, D]) or one constant per channel (its powers, :class:`Powers`).

No loop over steps: the pairs (a_t, v_t) are combined by a parallel prefix scan (Hillis and
Steele): in pass k = 1, 2, 4, ... every step t >= k takes in the pair k steps back,

    v_t <- v_t + a_t v_(t-k),    a_t <- a_t a_(t-k),

so after ceil(log2 n) elementwise passes ``v_t`` is the state reached from zero and ``a_t`` the
product a_0 ... a_t, and ``h_t = v_t + a_t h_(-1)``.  Products, not sums of logarithms: gates
that are zero or negative (after an intervention) stay exact.  A step's value comes from
elementwise operations on the steps at or before it only, in an order that does not depend
on how far the stretch goes on: a run cut at an edited state, or re-run from a cached state,
computes the steps it shares with a full run bit for bit.  For a constant ``a`` the factors
are its powers, each computed directly as ``exp(m log a)`` once per model (:class:`Powers`).
"""
from __future__ import annotations

import torch

from .family import FamilyModel


def diagonal_scan(a, v: torch.Tensor, h: torch.Tensor, powers: "Powers | None" = None) -> torch.Tensor:
    """``h_t = a_t h_(t-1) + v_t`` over the steps of ``v`` [n, B, D], from ``h`` [B, D].

    ``a`` is [n, B, D], or None with ``powers`` (:class:`Powers`) for a constant coefficient.
    Returns every ``h_t``, [n, B, D].  Products and sums are separate operations (never fused
    into one rounding), so every element rounds alike however long the stretch."""
    if a is None:
        return _constant_scan(v, h, powers)
    n = v.shape[0]
    k = 1
    while k < n:
        v = torch.cat([v[:k], v[k:] + a[k:] * v[:-k]])
        a = torch.cat([a[:k], a[k:] * a[:-k]])
        k *= 2
    return v + a * h


class Powers:
    """The powers ``a^m = exp(m log a)`` of a constant per-channel coefficient, m = 0, 1, ...,
    as real and imaginary tables [M, D], each entry computed directly from ``log a`` [D]
    (complex).  Grown on demand by appending: an entry, once computed, is never recomputed, so
    every run of a model uses the same bits."""

    def __init__(self, log_a: torch.Tensor, size: int = 257):
        self.log_a = log_a
        self.re = self.im = log_a.real.new_empty(0, log_a.shape[0])
        self.upto(size - 1)

    def upto(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables holding at least the powers 0..n."""
        M = self.re.shape[0]
        if n >= M:
            m = torch.arange(M, max(n + 1, 2 * M), dtype=self.re.dtype, device=self.re.device)[:, None]
            mag, ang = torch.exp(m * self.log_a.real), m * self.log_a.imag
            self.re = torch.cat([self.re, mag * torch.cos(ang)])
            self.im = torch.cat([self.im, mag * torch.sin(ang)])
        return self.re, self.im

    def complex(self, n: int) -> torch.Tensor:
        """The powers 0..n-1 as one complex tensor [n, D]."""
        re, im = self.upto(n)
        return torch.complex(re[:n], im[:n])


def _constant_scan(v, h, powers: Powers):
    """:func:`diagonal_scan` for a constant complex coefficient, in real arithmetic on the
    real and imaginary parts (torch's complex kernels are several times slower on a CPU)."""
    n = v.shape[0]
    pr, pi = powers.upto(n)
    vr, vi = v.real.contiguous(), v.imag.contiguous()
    k = 1
    while k < n:
        fr, fi = pr[k], pi[k]
        vr, vi = (torch.cat([vr[:k], vr[k:] + fr * vr[:-k] - fi * vi[:-k]]),
                  torch.cat([vi[:k], vi[k:] + fr * vi[:-k] + fi * vr[:-k]]))
        k *= 2
    ar, ai = pr[1:n + 1, None, :], pi[1:n + 1, None, :]  # a^(t+1), for the entering state
    return torch.complex(vr + ar * h.real - ai * h.imag, vi + ar * h.imag + ai * h.real)


def scan_split_at_edits(a, v, h, a0: int, state_edits, powers=None, flat=None, unflat=None) -> torch.Tensor:
    """:func:`diagonal_scan` over a chunk whose first step is ``a0``, cut after every step where
    an intervention edits the state: steps up to t run, the state after t is edited (and
    recorded so), the scan goes on from it.  ``flat``/``unflat`` turn a state [B, D] into the
    probe's flat units [B, width] and back (complex states show re and im)."""
    n = v.shape[0]
    hs = v.new_empty(v.shape)
    steps = sorted({int(t) - a0 for e in state_edits for t in e.steps if a0 <= t < a0 + n})
    o = 0
    for t in steps + [n]:
        stop = min(t + 1, n)
        if stop > o:
            hs[o:stop] = diagonal_scan(None if a is None else a[o:stop], v[o:stop], h, powers)
            h = hs[stop - 1]
        if t == n:
            break
        x = flat(h) if flat else h
        for e in state_edits:
            x = e.apply_step(x, a0 + t)
        h = unflat(x) if unflat else x
        hs[t] = h
        o = t + 1
    return hs


def edits_in_chunk(edits: dict, a: int, n: int):
    """``edit(site, v)``: the interventions on ``site`` applied to a chunk's values [n, B, ...]
    holding steps ``a..a+n-1``."""
    def edit(site, v):
        for e in edits.get(site, ()):
            if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                v = e.apply_all(v, a)
        return v
    return edit


class DiagonalRecurrenceModel(FamilyModel):
    """What HGRN and LRU models share besides the scan: the refusal to edit ``attn`` and its rows
    computed within the window (the housekeeping is :class:`FamilyModel`'s)."""

    NOT_EDITABLE = {"attn": "it is computed from the recorded gates after the run and feeds nothing; "
                            "intervene on the sites it is computed from instead"}

    def _attention_rows(self, k, out, old, s, T, B, rows_of_sequence):
        """The ``attn`` probe of layer ``k``: NaN outside the window's rows, the rows before
        ``s`` from the previous run, the window's rows computed by ``rows_of_sequence(b, (r0,
        hi), cols)`` -> [hi - r0, cols] for sequence b (the whole window each time, so a
        re-run computes it exactly as a full run does)."""
        from ..probes import layer_probe

        (r0, r1), cols = self._window.rows, self._window.cols
        res = torch.full((T, B, self._window.width), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[layer_probe(k, "attn")][:s]
        hi = min(r1, T)
        if r0 < hi and s < hi:
            for b in range(B):
                res[r0:hi, b] = rows_of_sequence(b, (r0, hi), cols)
        return res
