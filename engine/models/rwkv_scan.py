"""The RWKV-4 WKV recurrence and its implicit attention, as :mod:`engine.models.rwkv`'s layers
run them: the recurrence over a stretch of steps on the scaled state ``(num, den, max)``, as a
torch loop (:func:`_scan_torch`, the reference) or a compiled ``numba`` loop (:func:`_scan_numba`,
jobs of ``BLK`` channels), and the ``attn`` probe (:func:`wkv_log_normaliser`,
:func:`wkv_attention` in row tiles of ``TILE``; :func:`attention_from_trace` from a saved trace).
Tensors in, tensors out: nothing here knows the model or its config.
"""
from __future__ import annotations

import numpy as np
import torch

from .family import run_parallel_numba

#: the running max of an empty state (as ``transformers``): e^(max - anything finite) is 0
EMPTY_MAX = -1e38
#: rows per tile of the implicit attention (a row is computed alike whichever rows were asked for)
TILE = 32


# ======================================================================================
# the WKV recurrence over a stretch of steps: S [3, B, A] = (num, den, max) updated in place
# ======================================================================================


def _scan_torch(w, u, k, v, S, out, states):
    """The reference, step by step as ``transformers``' ``rwkv_linear_attention_cpu``.  ``w``,
    ``u`` are [n, B, A] or [1, 1, A]; ``k``, ``v``, ``out`` [n, B, A]; ``states`` [n, B, A, 3]."""
    num, den, mx = S[0].clone(), S[1].clone(), S[2].clone()  # copies: S is written below (a gradient reads them)
    for t in range(k.shape[0]):
        wt, ut = w[t if w.shape[0] > 1 else 0], u[t if u.shape[0] > 1 else 0]
        kt, vt = k[t], v[t]
        q = torch.maximum(mx, kt + ut)
        e1 = torch.exp(mx - q)
        e2 = torch.exp(kt + ut - q)
        out[t] = (e1 * num + e2 * vt) / (e1 * den + e2)
        q = torch.maximum(mx + wt, kt)
        e1 = torch.exp(mx + wt - q)
        e2 = torch.exp(kt - q)
        num = e1 * num + e2 * vt
        den = e1 * den + e2
        mx = q
        if states is not None:
            states[t] = torch.stack([num, den, mx], -1)
    S[0], S[1], S[2] = num, den, mx


BLK = 64  #: channels per job of the compiled loop


def _numba_kernels():
    """(serial, parallel) drivers of one compiled block function
    (:mod:`engine.models.numba_kernels`): both do the same scalar operations in the same order
    for every (sequence, channel), so they give the same bits."""
    from .numba_kernels import wkv_parallel, wkv_serial

    return wkv_serial, wkv_parallel


def _scan_numba(w, u, k, v, S, out, states):
    """The same steps in a compiled loop, one job per (sequence, block of channels): in parallel
    when torch may use several threads and there are several jobs, else on this thread (a
    parallel launch costs a scheduler tick on a busy machine)."""
    import numba

    serial, parallel = _numba_kernels()
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    jobs = k.shape[1] * -(-k.shape[2] // BLK)
    # out and states are slices along the leading axis of contiguous tensors: written in place
    st = states.numpy() if states is not None else np.empty((1, 1, 1, 1), dtype=k.numpy().dtype)
    args = (w.numpy(), u.numpy(), k.numpy(), v.numpy(), S.numpy(), out.numpy(), st, states is not None, BLK)
    if threads > 1 and jobs > 1:
        run_parallel_numba(parallel, threads, *args)
    else:
        serial(*args)


# ======================================================================================
# implicit attention
# ======================================================================================


def wkv_log_normaliser(states, u, k, rows=None, state0=None) -> torch.Tensor:
    """``log Z_i = log(D_(i-1) + e^(u_i + k_i))`` per step and channel, from the WKV states
    after each step (``states`` [T, A, 3] as the ``state`` probe holds them), the bonus ``u``
    and keys ``k`` ([T, A], or [A] for ``u``).  ``state0`` [A, 3]: the state before step 0
    (default empty).  ``rows=(i0, i1)``: only those steps are computed (others are NaN)."""
    states, u, k = (torch.as_tensor(x) for x in (states, u, k))
    T, A = k.shape
    i0, i1 = rows if rows is not None else (0, T)
    i0, i1 = max(0, int(i0)), min(T, int(i1))
    out = torch.full((T, A), float("nan"), dtype=k.dtype, device=k.device)
    if i1 <= i0:
        return out
    if state0 is None:
        state0 = torch.stack([torch.zeros(A, dtype=k.dtype), torch.zeros(A, dtype=k.dtype),
                              torch.full((A,), EMPTY_MAX, dtype=k.dtype)], -1).to(k.device)
    if i0 == 0:
        before = torch.cat([state0[None].to(states.dtype), states[:i1 - 1]])
    else:
        before = states[i0 - 1:i1 - 1]
    before = before.to(k.dtype)
    uk = (u[i0:i1] if u.ndim == 2 else u) + k[i0:i1]
    den, mx = before[..., 1], before[..., 2]
    q = torch.maximum(mx, uk)
    out[i0:i1] = q + torch.log(torch.exp(mx - q) * den + torch.exp(uk - q))
    return out


def wkv_attention(w, u, k, logz, rows, cols, *, reduce="mean", tile: int = TILE, from_row: int | None = None):
    """Implicit attention of one sequence of one RWKV-4 layer.

    ``w`` (decay, negative), ``u`` (bonus), ``k`` (keys) and ``logz`` (:func:`wkv_log_normaliser`)
    are [T, A] (``w``/``u`` may be [A]).  For channel c, ``alpha_ij = exp(w_(j+1) + ... + w_(i-1)
    + k_j - log Z_i)`` for j < i, ``exp(u_i + k_i - log Z_i)`` for j = i, 0 for j > i, so that
    ``wkv_i = sum_j alpha_ij v_j`` and each row sums to 1 over j = 0..i.  ``rows=(r0, r1)``,
    ``cols=(c0, c1)`` select the window (clipped to the sequence).  Returns ``[r1-r0, c1-c0]``
    (``reduce="mean"``: the mean over channels) or ``[r1-r0, c1-c0, A]`` (``reduce=None``).

    Rows are taken in tiles of ``tile`` starting at ``r0``.  Columns before a tile's first row
    i0 factorise through step i0 - 1: ``alpha_ij = P_i Q_j`` with ``P_i = exp(W(i0-1..i-1) -
    log Z_i + M)`` and ``Q_j = exp(W(j..i0-1) + k_j - M)`` (W the sums of w over the steps
    between, <= 0; M the largest exponent of Q), so that part is one matmul over channels;
    columns inside the tile are summed directly.  Sums of w are float64 cumulative sums.
    ``from_row`` skips tiles that end at or before it (their rows are left 0)."""
    if reduce not in ("mean", None):
        raise ValueError(f"reduce must be 'mean' or None, got {reduce!r}")
    k = torch.as_tensor(k)
    dtype = k.dtype if k.dtype in (torch.float32, torch.float64) else torch.float32
    k = k.to(dtype)
    T, A = k.shape
    w = torch.as_tensor(w).to(dtype)
    u = torch.as_tensor(u).to(dtype)
    w = w.expand(T, A) if w.ndim == 1 else w
    u = u.expand(T, A) if u.ndim == 1 else u
    logz = torch.as_tensor(logz).to(dtype)
    r0, r1 = (int(v) for v in rows)
    c0, c1 = (int(v) for v in cols)
    R, W = r1 - r0, c1 - c0
    out = k.new_zeros((R, W) if reduce else (R, W, A))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0 or c0 >= r1c:
        return out
    lo = min(r0, c0)
    # G[m - lo + 1] = sum of w over lo..m (float64), G[0] = 0
    G = torch.cat([w.new_zeros(1, A, dtype=torch.float64), torch.cumsum(w[lo:r1c].double(), 0)])
    first = r0 if from_row is None else r0 + max(0, (int(from_row) - r0) // tile) * tile
    for i0 in range(first, r1c, tile):
        i1 = min(i0 + tile, r1c)
        j1 = min(c1c, i0)
        if j1 > c0:  # columns before the tile, through step i0 - 1
            gp = G[i0 - lo]  # sum of w over lo..i0-1
            eq = (gp - G[c0 - lo + 1:j1 - lo + 1]).to(dtype) + k[c0:j1]  # [J, A]
            M = eq.max(0).values
            Q = torch.exp(eq - M)
            P = torch.exp((G[i0 - lo:i1 - lo] - gp).to(dtype) - logz[i0:i1] + M)  # [L, A]
            if reduce == "mean":
                out[i0 - r0:i1 - r0, :j1 - c0] = (P @ Q.T) / A
            else:
                out[i0 - r0:i1 - r0, :j1 - c0] = P[:, None, :] * Q[None, :, :]
        jl, jh = max(c0, i0), min(c1c, i1)
        if jh > jl:  # columns inside the tile: exponents summed directly
            ii = torch.arange(i0, i1, device=k.device)[:, None]
            jj = torch.arange(jl, jh, device=k.device)[None, :]
            E = (G[i0 - lo:i1 - lo][:, None, :] - G[jl - lo + 1:jh - lo + 1][None, :, :]).to(dtype) \
                + k[jl:jh][None] - logz[i0:i1][:, None]
            E = E.masked_fill((jj >= ii)[..., None], float("-inf"))
            diag = (jj == ii)
            if diag.any():
                d_i, d_j = diag.nonzero(as_tuple=True)
                E[d_i, d_j] = u[i0 + d_i] + k[i0 + d_i] - logz[i0 + d_i]
            alpha = torch.exp(E)
            out[i0 - r0:i1 - r0, jl - c0:jh - c0] = alpha.mean(-1) if reduce == "mean" else alpha
    return out


def attention_from_trace(trace, layer: int, rows, cols, *, sequence: int = 0, reduce="mean"):
    """Implicit attention of ``layer`` for one sequence of a trace that captured
    ``layers.{layer}.k``, ``.w``, ``.u`` and ``.state``.  Returns a NumPy array."""
    name = f"layers.{layer}."
    try:
        w, u, k, st = (torch.as_tensor(trace.array(name + s, sequence)) for s in ("w", "u", "k", "state"))
    except KeyError as exc:
        raise KeyError(f"the trace must hold {name}k, {name}w, {name}u and {name}state: {exc}") from None
    logz = wkv_log_normaliser(st, u, k)
    return wkv_attention(w, u, k, logz, rows, cols, reduce=reduce).numpy()
