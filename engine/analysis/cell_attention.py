"""Implicit attention of an LSTM's cell path (and of any gated linear recurrence of the form
``c_t = f_t * c_(t-1) + i_t * g_t``).

Unrolled from a zero state, every unit ``u`` of the cell state is a weighted sum of the
candidates written so far::

    c_i[u] = sum_(j <= i) alpha_ij[u] g_j[u],      alpha_ij[u] = i_j[u] * prod_(k=j+1..i) f_k[u]

so ``alpha`` says how much of what step ``j`` wrote is still in the cell at step ``i`` ("Gated
RNNs discover attention", Zucchet et al. 2023, and the LSTM case in the SeqScope issue on
modern recurrences).  It is exact: ``sum_j alpha_ij g_j`` reproduces ``c_i`` (a test checks it).

Only a window of rows and columns is computed, from the recorded gates of a trace; the products
are taken in log space as differences of cumulative sums of ``log f`` in float64, so long
windows neither underflow step by step nor cost a loop over time.
"""
from __future__ import annotations

import numpy as np

REDUCTIONS = ("mean_abs", None)
MAX_EXPONENT = 700.0  # exp(700) ~ 1e304, just inside float64


def cell_attention(gate_i: np.ndarray, gate_f: np.ndarray, rows, cols, *, units=None,
                   reduce: str | None = "mean_abs") -> np.ndarray:
    """``alpha`` for query steps ``rows=(r0, r1)`` and key steps ``cols=(c0, c1)`` of one
    sequence.  ``gate_i``, ``gate_f``: [T, units] (one direction).  ``units`` selects units
    (default all).  Returns ``[r1-r0, c1-c0]`` (mean of |alpha| over the units) or
    ``[r1-r0, c1-c0, units]`` (``reduce=None``), float64; entries with ``j > i`` and rows or
    columns past the sequence are 0."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    gi = np.asarray(gate_i, dtype=np.float64)
    gf = np.asarray(gate_f, dtype=np.float64)
    if units is not None:
        gi, gf = gi[:, units], gf[:, units]
    if gi.ndim == 1:
        gi, gf = gi[:, None], gf[:, None]
    T, U = gi.shape
    r0, r1 = (int(v) for v in rows)
    c0, c1 = (int(v) for v in cols)
    out = np.zeros((r1 - r0, c1 - c0) if reduce else (r1 - r0, c1 - c0, U))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0:
        return out
    # prod_(k=j+1..i) f_k = exp(L[i] - L[j]) with L[t] = sum_(k <= t) log f_k, except that it is
    # 0 when a forget gate in (j, i] is exactly 0 (an ablation): Z counts those zeros.
    # The exponent is set to -inf before exp wherever alpha is 0 by definition (j > i, where
    # L[i] - L[j] is a large positive number that would overflow, and across a zero gate), so
    # exp gives those 0 exactly and never overflows; a product above float64's range (forget
    # "gates" set above 1 by an intervention, over hundreds of steps) is capped at ~1e304.
    zero = gf <= 0.0
    L = np.cumsum(np.log(np.where(zero, 1.0, gf)), axis=0)
    Z = np.cumsum(zero, axis=0)
    exponent = L[r0:r1c, None, :] - L[None, c0:c1c, :]  # [R, W, U]
    exponent[(Z[r0:r1c, None, :] - Z[None, c0:c1c, :]) > 0] = -np.inf
    i_idx = np.arange(r0, r1c)[:, None]
    j_idx = np.arange(c0, c1c)[None, :]
    exponent[j_idx > i_idx] = -np.inf
    alpha = gi[None, c0:c1c, :] * np.exp(np.minimum(exponent, MAX_EXPONENT))
    if reduce == "mean_abs":
        out[: r1c - r0, : c1c - c0] = np.abs(alpha).mean(axis=-1)
    else:
        out[: r1c - r0, : c1c - c0] = alpha
    return out
