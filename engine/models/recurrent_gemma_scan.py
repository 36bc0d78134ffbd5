"""The pieces of a RecurrentGemma layer that work on tensors alone, as
:mod:`engine.models.recurrent_gemma`'s layers run them: the rotary embedding (:func:`rotate`),
the local multi-query attention (:func:`local_attention_weights`; :func:`local_attention` for the
``attn`` probe) and the RG-LRU recurrence in closed form over blocks of ``BLOCK`` steps
(:func:`scan_blocks`, the path off the CPU; on the CPU a compiled loop runs it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .recurrent_gemma import RecurrentGemmaConfig

#: steps whose decay products the torch scan forms at once ([BLOCK, BLOCK, batch, width])
BLOCK = 16


# ======================================================================================
# local attention and the rotary embedding
# ======================================================================================


def rotate(x, cos, sin, head_dim):
    """The rotary embedding on the first ``rotary_dim`` units of every head of ``x`` [n, B,
    heads * head_dim] (pairs ``(j, j + rotary_dim / 2)``, as ``transformers``' rotate_half)."""
    n, B, width = x.shape
    heads = x.reshape(n, B, width // head_dim, head_dim)
    rot = cos.shape[-1]
    r, rest = heads[..., :rot], heads[..., rot:]
    half = torch.cat([-r[..., rot // 2:], r[..., :rot // 2]], -1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([r * c + half * s, rest], -1).reshape(n, B, width)


def local_attention_weights(q, keys, q_first: int, k_first: int, cfg: RecurrentGemmaConfig) -> torch.Tensor:
    """Softmax weights [B, heads, queries, keys] of queries ``q`` [n, B, heads * hd] at
    positions ``q_first..`` on ``keys`` [m, B, kv_heads * hd] at positions ``k_first..``: query
    step i sees key step j when ``i - attention_window_size < j <= i``."""
    H, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    n, B, m = q.shape[0], q.shape[1], keys.shape[0]
    qh = q.reshape(n, B, kv, H // kv, hd)
    kh = keys.reshape(m, B, kv, hd)
    scores = torch.einsum("nbkgd,mbkd->bkgnm", qh, kh).reshape(B, H, n, m) * hd ** -0.5
    i = torch.arange(q_first, q_first + n, device=q.device)[:, None]
    j = torch.arange(k_first, k_first + m, device=q.device)[None, :]
    visible = (j <= i) & (j > i - cfg.attention_window_size)
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)


def local_attention(q, keys, rows, cols, cfg: RecurrentGemmaConfig, reduce="mean") -> torch.Tensor:
    """The attention of query steps ``rows`` on key steps ``cols`` (half-open ranges), from a
    layer's ``q`` [T, B, heads * hd] and ``k`` [T, B, kv_heads * hd] probes: [B, rows, cols]
    (mean over heads) or [B, heads, rows, cols] (``reduce=None``); 0 where j is not visible."""
    T, B = q.shape[:2]
    (r0, r1), (c0, c1) = rows, cols
    H = cfg.num_attention_heads
    out = q.new_zeros((B, r1 - r0, c1 - c0) if reduce else (B, H, r1 - r0, c1 - c0))
    r1c = min(r1, T)
    lo = max(0, r0 - cfg.attention_window_size + 1)  # the first key any row can see
    if r1c <= r0:
        return out
    wts = local_attention_weights(q[r0:r1c], keys[lo:r1c], r0, lo, cfg)  # [B, H, rows, lo..r1c)
    a, b = max(c0, lo), min(c1, r1c)
    if a < b:
        part = wts[..., a - lo:b - lo]
        if reduce:
            out[:, :r1c - r0, a - c0:b - c0] = part.mean(1)
        else:
            out[:, :, :r1c - r0, a - c0:b - c0] = part
    return out


# ======================================================================================
# the recurrence h_t = coef_t h_(t-1) + inp_t in closed form over blocks of steps
# ======================================================================================


def scan_blocks(coef, inp, h, hs, block: int = BLOCK):
    """``hs[t] = coef_t hs[t-1] + inp_t`` from ``h`` (returns the last state), ``block`` steps
    at a time: ``h_t = P_t0 h + sum_(s<=t) P_ts inp_s`` with ``P_ts = prod_(k=s+1..t) coef_k``
    formed by a cumulative product (exact for any coefficients, zeros included: no logarithms
    and no division).  Terms with s > t are selected away, not multiplied by 0, so a NaN or inf
    that an edit put at step s never reaches an earlier step."""
    n = coef.shape[0]
    for p in range(0, n, block):
        c, u = coef[p:p + block], inp[p:p + block]
        m = c.shape[0]
        tri = torch.ones(m, m, dtype=torch.bool, device=c.device)
        after, upto = tri.tril(-1)[:, :, None, None], tri.tril()[:, :, None, None]  # s < t, s <= t
        P = torch.where(after, c[:, None], torch.ones_like(c[:1, None])).cumprod(0)  # [t, s, ...]
        hs[p:p + m] = torch.where(upto, P * u[None], 0).sum(1) + c.cumprod(0) * h
        h = hs[p + m - 1].clone()
    return h
