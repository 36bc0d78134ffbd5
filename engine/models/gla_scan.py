"""The GLA / RetNet recurrence and its implicit attention, as :mod:`engine.models.gla`'s layers
run them: the short causal convolution (:func:`_short_conv`), the chunked recurrence over one
chunk with state edits (:func:`_recurrence`: sub-chunks of ``SUB`` steps, GLA's per-channel
decays in blocks of ``BLK`` rows) and :func:`linear_attention` (the ``attn`` probe, in row tiles
of ``TILE``).  Tensors in, tensors out: nothing here knows the model or its config.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SUB = 64  #: steps per sub-chunk of the chunked recurrence
BLK = 8  #: rows per block inside a sub-chunk (GLA's pairwise sums)
TILE = 32  #: rows per tile of the implicit attention


# ======================================================================================
# the pieces of a layer
# ======================================================================================


def _short_conv(x, buf, weight, bias):
    """fla's ``ShortConvolution``: a causal depthwise convolution over time, then SiLU.  ``x``
    [n, B, D], ``buf`` the K-1 inputs before it [K-1, B, D], ``weight`` [D, K].  Returns (y, the
    new buffer)."""
    K = weight.shape[1]
    xc = torch.cat([buf, x])
    n = x.shape[0]
    y = xc[0:n] * weight[:, 0]
    for j in range(1, K):
        y = y + xc[j:j + n] * weight[:, j]
    if bias is not None:
        y = y + bias
    return F.silu(y), xc[n:].clone()


def _recurrence(q, k, v, log_a, S, a, state_edits, want_states):
    """``S_t = diag(exp(log_a_t)) S_(t-1) + k_t^T v_t``, ``o_t = q_t S_t`` over one chunk (q
    already scaled).  ``q``, ``k`` [n, B, H, K], ``v`` [n, B, H, V], ``log_a`` [n, B|1, H, K|1],
    ``S`` [B, H, K, V].  An edit of the state at step t replaces S_t, then recomputes o_t and
    runs on from t + 1.  Returns (o [n, B, H, V], S after the chunk, states [n, B, H, K, V] or
    None)."""
    n, B = q.shape[:2]
    q, k, v, log_a = (x.permute(1, 2, 0, 3) for x in (q, k, v, log_a))  # [B, H, n, .]
    o = q.new_empty(B, q.shape[1], n, v.shape[-1])
    states = q.new_empty(B, q.shape[1], n, k.shape[-1], v.shape[-1]) if want_states else None
    steps = sorted({int(t) - a for e in state_edits for t in e.steps if a <= t < a + n})
    start = 0
    for t in steps + [n]:
        seg = slice(start, n)
        o_seg, S_end, st = _chunked_scan(q[:, :, seg], k[:, :, seg], v[:, :, seg], log_a[:, :, seg], S, want_states)
        if t == n:
            o[:, :, start:] = o_seg
            if want_states:
                states[:, :, start:] = st
            S = S_end
            break
        o[:, :, start:t] = o_seg[:, :, :t - start]
        if want_states:
            states[:, :, start:t] = st[:, :, :t - start]
        step = slice(start, t + 1)
        _, S_t, _ = _chunked_scan(q[:, :, step], k[:, :, step], v[:, :, step], log_a[:, :, step], S, False)
        flat = S_t.reshape(B, -1)
        for e in state_edits:
            flat = e.apply_step(flat, a + t)
        S = flat.reshape(S_t.shape)
        o[:, :, t] = (q[:, :, t, None, :] @ S)[:, :, 0]
        if want_states:
            states[:, :, t] = S
        start = t + 1
    states = states.permute(2, 0, 1, 3, 4) if want_states else None
    return o.permute(2, 0, 1, 3), S, states


def _chunked_scan(q, k, v, log_a, S, want_states):
    """The recurrence over ``n`` steps in sub-chunks of ``SUB`` (tensors [B, H, n, .]).  Inside a
    sub-chunk with cumulative log decay b (inclusive): ``o_i = (q_i e^(b_i)) S_0 + sum_(j<=i) A_ij
    v_j`` with ``A_ij = sum_c q_ic k_jc e^(b_ic - b_jc)``; then ``S = e^(b_last) S_0 + sum_j (k_j
    e^(b_last - b_j))^T v_j``.  Every exponent is <= 0 for decays <= 1.  Every step's state
    (``want_states``) comes from a loop over the steps."""
    o = q.new_empty(*q.shape[:3], v.shape[-1])
    states = _states_by_steps(k, v, log_a, S) if want_states else None
    intra = _intra_scalar if log_a.shape[-1] == 1 else _intra_gated
    for s in range(0, q.shape[2], SUB):
        e = min(s + SUB, q.shape[2])
        qc, kc, vc = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e]
        b = torch.cumsum(log_a[:, :, s:e], 2)  # [B|1, H, C, K|1]
        o[:, :, s:e] = (qc * torch.exp(b)) @ S + intra(qc, kc, b) @ vc
        last = b[:, :, -1:]
        S = torch.exp(last).transpose(-1, -2) * S + (kc * torch.exp(last - b)).transpose(-1, -2) @ vc
    return o, S, states


def _intra_scalar(q, k, b):
    """``A_ij = (q_i . k_j) e^(b_i - b_j)`` for j <= i (one decay per head: b [., H, C, 1])."""
    C = q.shape[2]
    future = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    return (q @ k.transpose(-1, -2)) * torch.exp((b - b.transpose(-1, -2)).masked_fill(future, float("-inf")))


def _intra_gated(q, k, b):
    """``A_ij = sum_c q_ic k_jc e^(b_ic - b_jc)`` for j <= i (a decay per key channel), in blocks
    of ``BLK`` rows: columns before a block factorise through the cumulative decay just before
    it (``q_i e^(b_i - ref)`` times ``k_j e^(ref - b_j)``, both exponents <= 0: one matmul);
    columns inside the block are summed pairwise."""
    B, H, C, K = q.shape
    nb = -(-C // BLK)
    pad = nb * BLK - C
    if pad:  # zero queries and keys, no decay: rows and columns that are cut off again
        q, k = F.pad(q, (0, 0, 0, pad)), F.pad(k, (0, 0, 0, pad))
        b = torch.cat([b, b[:, :, -1:].expand(-1, -1, pad, -1)], 2)
    qb, kb, bb = (x.reshape(B, H, nb, BLK, K) for x in (q, k, b))
    ref = F.pad(bb[:, :, :-1, -1:], (0, 0, 0, 0, 1, 0))  # [B, H, nb, 1, K]: b just before each block
    cols = torch.arange(nb * BLK, device=q.device)
    not_before = cols[None, :] >= (torch.arange(nb, device=q.device) * BLK)[:, None]  # [nb, C]
    k_ref = k[:, :, None] * torch.exp((ref - b[:, :, None]).masked_fill(not_before[..., None], float("-inf")))
    A = (qb * torch.exp(bb - ref)) @ k_ref.transpose(-1, -2)  # [B, H, nb, BLK, C]
    future = torch.ones(BLK, BLK, dtype=torch.bool, device=q.device).triu(1)
    diff = (bb[..., :, None, :] - bb[..., None, :, :]).masked_fill(future[..., None], float("-inf"))
    inside = (qb[..., :, None, :] * kb[..., None, :, :] * torch.exp(diff)).sum(-1)  # [B, H, nb, BLK, BLK]
    A = A.reshape(B, H, nb, BLK, nb, BLK)
    A.diagonal(0, 2, 4).add_(inside.permute(0, 1, 3, 4, 2))
    return A.reshape(B, H, nb * BLK, nb * BLK)[:, :, :C, :C]


def _states_by_steps(k, v, log_a, S):
    """Every step's state ``S_t = diag(e^(log_a_t)) S_(t-1) + k_t^T v_t``, [B, H, n, K, V]."""
    out = k.new_empty(*k.shape[:3], k.shape[-1], v.shape[-1])
    a = torch.exp(log_a)[..., None]  # [B|1, H, n, K|1, 1]
    for t in range(k.shape[2]):
        S = a[:, :, t] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = S
    return out


# ======================================================================================
# implicit attention
# ======================================================================================


def linear_attention(q, k, log_a, rows, cols, *, reduce="mean_abs", tile: int = TILE) -> torch.Tensor:
    """Implicit attention of one sequence of one GLA / RetNet layer.

    ``q``, ``k`` [T, H, K] (per query head, as the recurrence sees them, q not yet scaled),
    ``log_a`` the log decays: [T, H, K] (GLA's gate) or [H, 1] (RetNet's fixed per-head decay).
    ``alpha_ij = sum_c (q_ic / sqrt(K)) k_jc exp(sum_(m=j+1..i) log_a_mc)`` for j <= i, 0 for
    j > i, so that ``o_i = sum_j alpha_ij v_j`` (per head, from a zero state).  Returns
    ``[r1-r0, c1-c0]`` (``reduce="mean_abs"``: the mean of ``|alpha|`` over heads) or
    ``[r1-r0, c1-c0, H]`` (``reduce=None``).  The log decays are summed in float64."""
    if reduce not in ("mean_abs", None):
        raise ValueError(f"reduce must be 'mean_abs' or None, got {reduce!r}")
    q, k, log_a = (torch.as_tensor(x) for x in (q, k, log_a))
    dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    T, H, K = q.shape
    q = q.to(dtype) * K ** -0.5
    k = k.to(dtype)
    r0, r1 = (int(x) for x in rows)
    c0, c1 = (int(x) for x in cols)
    out = q.new_zeros((r1 - r0, c1 - c0) if reduce else (r1 - r0, c1 - c0, H))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0 or c0 >= r1c:
        return out
    scalar = log_a.ndim == 2
    if scalar:
        steps = torch.arange(T, dtype=torch.float64, device=q.device)
        G = steps[:, None, None] * log_a.double()[None]  # [T, H, 1]: sum of the decays up to step t
    else:
        G = torch.cumsum(log_a[:r1c].double(), 0)
    for i0 in range(r0, r1c, tile):
        i1 = min(i0 + tile, r1c)
        j1 = min(c1c, i1)
        if j1 <= c0:
            continue
        ii = torch.arange(i0, i1, device=q.device)[:, None]
        jj = torch.arange(c0, j1, device=q.device)[None, :]
        E = (G[i0:i1][:, None] - G[c0:j1][None]).masked_fill((jj > ii)[..., None, None], float("-inf"))
        alpha = (q[i0:i1][:, None] * k[c0:j1][None] * torch.exp(E).to(dtype)).sum(-1)  # [L, J, H]
        if reduce:
            out[i0 - r0:i1 - r0, :j1 - c0] = alpha.abs().mean(-1)
        else:
            out[i0 - r0:i1 - r0, :j1 - c0] = alpha
    return out
