"""The (gated) delta rule in its chunked form and its implicit attention, as
:mod:`engine.models.deltanet`'s layers run them (its docstring's "How a layer runs"):
:func:`delta_rule_chunk` (steps at once: one triangular solve), the states after some or every
step, and :func:`delta_rule_attention` (the ``attn`` probe: the rule run with one-hot values).
Tensors in, tensors out: nothing here knows the model or its config.
"""
from __future__ import annotations

import torch

#: steps of one triangular solve of the delta rule
SUB = 64


# ======================================================================================
# the delta rule, chunked
# ======================================================================================


def delta_rule_chunk(q, k, v, beta, S, g=None):
    """Steps of the delta rule at once.  ``q``, ``k`` [B, H, n, d_k] (q already scaled), ``v``
    [B, H, n, d_v], ``beta`` [B, H, n], ``S`` [B, H, d_k, d_v] the state before the first step,
    ``g`` [B, H, n] the log decays of the gated delta rule (None: DeltaNet, no decay).
    Returns ``(o [B, H, n, d_v], U [B, H, n, d_v], S after the last step)``, U the pseudo-values
    u_t = beta_t (v_t - S'_t^T k_t) with S'_t = exp(g_t) S_(t-1), so that
    S_t = G_t S + sum_(j<=t) (G_t / G_j) k_j u_j^T, G_t = exp(g_0 + ... + g_t)."""
    b = beta[..., None]
    kk, qk, kS, qS = k @ k.transpose(-1, -2), q @ k.transpose(-1, -2), k @ S, q @ S
    if g is None:
        kk, qk = torch.tril(kk, -1), torch.tril(qk)
    else:
        D, G = decay_ratios(g, k.dtype)
        kk, qk = torch.tril(kk * D, -1), qk * D
        kS, qS = kS * G[..., None], qS * G[..., None]
    U = torch.linalg.solve_triangular(kk * b, b * (v - kS), upper=False, unitriangular=True)
    return qS + qk @ U, U, state_after(k, U, S, g, k.shape[-2])


def decay_ratios(g, dtype):
    """``(D, G)`` for log decays ``g`` [..., n]: D[t, j] = G_t / G_j for j <= t (0 above the
    diagonal) and G_t = exp(g_0 + ... + g_t), from a cumulative sum in float64."""
    c = torch.cumsum(g.double(), -1)
    n = g.shape[-1]
    above = torch.ones(n, n, dtype=torch.bool, device=g.device).triu(1)
    D = torch.exp((c[..., :, None] - c[..., None, :]).masked_fill(above, float("-inf")))
    return D.to(dtype), torch.exp(c).to(dtype)


def log_decay(decay):
    """log(decay) in float64 for :func:`decay_ratios`; a decay of 0 (an edit) forgets all."""
    return torch.log(decay.double()).clamp_min(-1e4)


def state_after(k, U, S, g, m):
    """The state after the first ``m`` steps of a :func:`delta_rule_chunk` call."""
    k, U = k[..., :m, :], U[..., :m, :]
    if g is None:
        return S + k.transpose(-1, -2) @ U
    c = torch.cumsum(g[..., :m].double(), -1)
    to_end = torch.exp(c[..., -1:] - c).to(k.dtype)
    return torch.exp(c[..., -1]).to(k.dtype)[..., None, None] * S + (k * to_end[..., None]).transpose(-1, -2) @ U


def states_after_each_step(k, U, S, g=None):
    """S_t for every step of a :func:`delta_rule_chunk` call: [B, H, n, d_k, d_v]."""
    if g is None:
        return S[:, :, None] + torch.cumsum(k[..., :, None] * U[..., None, :], dim=2)
    D, G = decay_ratios(g, k.dtype)
    return G[..., None, None] * S[:, :, None] + torch.einsum("bhtj,bhjk,bhjv->bhtkv", D, k, U)


def delta_rule_attention(q, k, beta, rows, cols, g=None) -> torch.Tensor:
    """Implicit attention of the (gated) delta rule from a zero state, for one sequence: ``q``,
    ``k`` [T, H, d_k] (q scaled), ``beta`` and the log decays ``g`` [T, H].  Returns alpha
    [rows, cols, H] for the half-open ranges ``rows`` and ``cols`` (0 for j > i and outside T),
    with o_i = sum_j alpha_ij v_j.  Runs the delta rule with one-hot values at the window's
    columns over steps c0..r1-1 only."""
    T, H, _ = q.shape
    (r0, r1), (c0, c1) = rows, cols
    out = q.new_zeros(r1 - r0, c1 - c0, H)
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0 or r1c <= c0:
        return out
    width = c1c - c0
    S = q.new_zeros(1, H, q.shape[-1], width)
    for a in range(c0, r1c, SUB):  # sub-chunks on a grid from c0
        b = min(a + SUB, r1c)
        onehot = q.new_zeros(b - a, width)
        j = torch.arange(a, min(b, c1c))
        onehot[j - a, j - c0] = 1
        qa, ka = (x[a:b].permute(1, 0, 2)[None] for x in (q, k))
        ga = None if g is None else g[a:b].T[None]
        o, _, S = delta_rule_chunk(qa, ka, onehot.expand(1, H, b - a, width), beta[a:b].T[None], S, ga)
        lo, hi = max(a, r0), b
        if lo < hi:
            out[lo - r0:hi - r0, :width] = o[0, :, lo - a:hi - a].permute(1, 2, 0)
    return out
