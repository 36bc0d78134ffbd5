"""Implicit attention of selective state-space layers (Mamba): the exact matrix that maps a
layer's scan inputs to its scan outputs.

For one channel ``c`` of a Mamba layer the recurrence is ``s_i = exp(dt_i A_c) s_(i-1) +
dt_i B_i u_i`` and ``y_i = C_i . s_i + D_c u_i``.  Unrolled from a zero state,

    y_i = sum_(j <= i) alpha_ij u_j + D_c u_i,
    alpha_ij = C_i . (prod_(k=j+1..i) exp(dt_k A_c)) (dt_j B_j)
             = sum_n C_i[n] exp(A_c[n] (S_i - S_j)) dt_j B_j[n],    S_i = sum_(k<=i) dt_k,

with ``alpha_ij = 0`` for ``j > i`` ("The Hidden Attention of Mamba Models", Ali et al.
2024).  ``alpha`` is per channel; for display it is reduced over channels by the mean of
``|alpha|`` (``reduce="mean_abs"``), documented in the probe description.

``reduce="weighted"`` sums ``|alpha_ij,c| row_weight[i, c] col_weight[j, c]`` over channels
instead.  With ``col_weight = |u|`` (the scan input), ``row_weight = |gate| * ||W_out[:, c]||``
(the output gate and the norm of out_proj's column) it is how much of step j's input reaches
the layer's output at step i, channel by channel: an upper bound of the norm of that
contribution, which mean |alpha| cannot tell apart from channels whose input is near zero
(:func:`contribution_attention`).

Only a window of rows ``[r0, r1)`` and columns ``[c0, c1)`` is ever computed, so long inputs
never cost T^2.  How: rows are taken in tiles of ``tile`` rows starting at ``i0``.  Columns
before the tile use the factorisation through step ``i0``,
``exp(A(S_i - S_j)) = exp(A(S_i - S_i0)) exp(A(S_i0 - S_j))`` with both exponents <= 0 (no
overflow), so that part is one batched matmul over the state axis; the column factors are
carried from tile to tile by one decay factor per tile.  Columns inside the tile come from a
running product of ``exp(dt_k A)`` row by row.  Everything is exact up to rounding; cumulative
sums of ``dt`` are kept in float64.
"""
from __future__ import annotations

import numpy as np
import torch

REDUCTIONS = ("mean_abs", "weighted", None)
TILE = 64  #: rows per tile: a row is computed alike whichever tiles were asked for
LEAF = 8  #: rows per leaf inside a tile, whose own columns are summed directly


def _tensor(v) -> torch.Tensor:
    """A tensor of ``v``; arrays are copied (a trace's arrays are read-only views)."""
    return v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))


def selective_scan_attention(dt, B, C, A, rows, cols, *, reduce="mean_abs", tile: int = TILE,
                             from_row: int | None = None, row_weight=None, col_weight=None) -> torch.Tensor:
    """Implicit attention of one sequence of one Mamba layer.

    ``dt`` [T, d_inner] (after softplus), ``B``/``C`` [T, d_state], ``A`` [d_inner, d_state]
    (negative: ``-exp(A_log)``); torch tensors or arrays.  ``rows=(r0, r1)``, ``cols=(c0, c1)``
    select the window (clipped to the sequence).  Returns ``[r1-r0, c1-c0]`` (``reduce=
    "mean_abs"``: mean over channels of ``|alpha|``) or ``[r1-r0, c1-c0, d_inner]``
    (``reduce=None``), in the dtype of ``dt`` (float64 stays float64).  Entries with ``j > i``
    are 0; rows or columns past the end of the sequence are 0 too.

    Row tiles start at ``r0 + k * tile`` and each is computed from the inputs alone, so a row's
    value does not depend on which rows were asked for: ``from_row`` skips the tiles that end
    at or before it (their rows are left 0), which is how a re-run recomputes only what changed.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if (reduce == "weighted") != (row_weight is not None and col_weight is not None):
        raise ValueError('row_weight and col_weight [T, d_inner] go with reduce="weighted", and only with it')
    dt, B, C, A = (_tensor(v) for v in (dt, B, C, A))
    dtype = dt.dtype if dt.dtype in (torch.float32, torch.float64) else torch.float32
    dt, B, C, A = (v.to(dtype) for v in (dt, B, C, A))
    T, D = dt.shape
    if reduce == "weighted":
        row_weight, col_weight = (_tensor(v).to(dtype) for v in (row_weight, col_weight))

    def reduced(blk, i0, j0):
        """A block [L, J, D] of alpha for rows i0.., columns j0.., reduced as asked."""
        if reduce == "mean_abs":
            return blk.abs().mean(-1)
        if reduce == "weighted":
            L, J = blk.shape[:2]
            return torch.einsum("ijc,ic,jc->ij", blk.abs(), row_weight[i0:i0 + L], col_weight[j0:j0 + J])
        return blk
    r0, r1 = (int(v) for v in rows)
    c0, c1 = (int(v) for v in cols)
    R, W = r1 - r0, c1 - c0
    out = dt.new_zeros((R, W) if reduce else (R, W, D))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0 or c0 >= r1c:
        return out
    lo = min(r0, c0)
    S = torch.cumsum(dt[lo:r1c].double(), 0)  # S[k - lo] = sum of dt over lo..k, in float64

    first = r0 if from_row is None else r0 + max(0, (int(from_row) - r0) // tile) * tile
    leaf = max(1, min(LEAF, tile))

    def factorised(i0, i1, j0, j1):
        """Rows i0..i1-1, columns j0..j1-1 (all j < i0): through step i0, one matmul per channel."""
        if j1 <= j0:
            return
        # channel-major: Q[c, j] = exp(A_c (S_i0 - S_j)) dt_j B_j, P[c, i] = C_i exp(A_c (S_i - S_i0)),
        # all exponents <= 0
        seg_q = (S[i0 - lo] - S[j0 - lo:j1 - lo]).to(dtype).T  # [D, J]
        Q = torch.exp(A[:, None, :] * seg_q[:, :, None]) * (dt[j0:j1].T[:, :, None] * B[None, j0:j1])
        seg_p = (S[i0 - lo:i1 - lo] - S[i0 - lo]).to(dtype).T  # [D, L]
        P = C[None, i0:i1] * torch.exp(A[:, None, :] * seg_p[:, :, None])
        blk = torch.bmm(P, Q.transpose(1, 2))  # [D, L, J]: per channel [L, N] @ [N, J]
        L, J = blk.shape[1:]
        out[i0 - r0:i0 - r0 + L, j0 - c0:j0 - c0 + J] = reduced(blk.permute(1, 2, 0), i0, j0)

    for i0 in range(first, r1c, tile):
        i1 = min(i0 + tile, r1c)
        factorised(i0, i1, c0, min(c1c, i0))  # columns before the tile
        for s0 in range(i0, i1, leaf):  # inside the tile: leaves of `leaf` rows
            s1 = min(s0 + leaf, i1)
            factorised(s0, s1, max(c0, i0), min(c1c, s0))
            jlo = max(c0, s0)
            if jlo >= min(c1c, s1):
                continue
            run = None  # the leaf's own columns: a running product of exp(dt_k A), row by row
            for i in range(jlo, s1):
                if run is not None:
                    run = run * torch.exp(dt[i, :, None] * A)
                if i < c1c:
                    new = (dt[i, :, None] * B[i, None, :])[None]
                    run = new if run is None else torch.cat([run, new])
                row = reduced((run * C[i][None, None, :]).sum(-1)[None], i, jlo)
                out[i - r0:i - r0 + 1, jlo - c0:jlo - c0 + row.shape[1]] = row
    return out


def scan_from_attention(alpha, u, D_skip) -> torch.Tensor:
    """``y_i = sum_j alpha_ij u_j + D u_i`` for a full per-channel window starting at 0:
    ``alpha`` [T, T, d_inner], ``u`` [T, d_inner], ``D_skip`` [d_inner]; the ungated scan output.
    Used to check that the attention reproduces the layer."""
    alpha, u, D_skip = (_tensor(v) for v in (alpha, u, D_skip))
    return torch.einsum("ijc,jc->ic", alpha, u) + D_skip * u


def attention_from_trace(trace, model, layer: int, rows, cols, *, sequence: int = 0, reduce="mean_abs"):
    """Implicit attention of ``layer`` for one sequence of a trace that captured
    ``layers.{layer}.dt``, ``.B`` and ``.C`` (``A`` comes from the model).  Returns a NumPy array."""
    name = f"layers.{layer}."
    try:
        dt, B, C = (trace.array(name + s, sequence) for s in ("dt", "B", "C"))
    except KeyError as exc:
        raise KeyError(f"the trace must hold {name}dt, {name}B and {name}C: {exc}") from None
    A = model.A(layer).to(torch.float64 if dt.dtype == np.float64 else torch.float32).cpu()
    return selective_scan_attention(dt, B, C, A, rows, cols, reduce=reduce).numpy()


def contribution_attention(trace, model, layer: int, rows, cols, *, sequence: int = 0):
    """How much of each step's input reaches the output of Mamba layer ``layer`` at each later
    step: ``sum_c |alpha_ij,c| |u_j,c| |gate_i,c| ||W_out[:, c]||`` (see the module docstring),
    for one sequence of a trace that captured the layer's ``dt``, ``B``, ``C``, ``conv`` (u)
    and ``gate``.  Returns a NumPy array [rows, cols]."""
    name = f"layers.{layer}."
    try:
        dt, B, C, u, gate = (trace.array(name + s, sequence) for s in ("dt", "B", "C", "conv", "gate"))
    except KeyError as exc:
        raise KeyError(f"the trace must hold {name}dt, .B, .C, .conv and .gate: {exc}") from None
    dtype = torch.float64 if dt.dtype == np.float64 else torch.float32
    A = model.A(layer).to(dtype).cpu()
    out_norm = model.out_proj_weight(layer).to(dtype).cpu().norm(dim=0)  # [d_inner]
    row_w = torch.as_tensor(np.abs(gate)).to(dtype) * out_norm
    col_w = torch.as_tensor(np.abs(u)).to(dtype)
    return selective_scan_attention(dt, B, C, A, rows, cols, reduce="weighted", row_weight=row_w,
                                    col_weight=col_w).numpy()


__all__ = ["selective_scan_attention", "scan_from_attention", "attention_from_trace", "contribution_attention",
           "REDUCTIONS"]
