"""The Mamba2 (SSD) scan in its block form and its implicit attention, as
:mod:`engine.models.mamba2`'s layers run them: :func:`ssd_block` (one block of steps at once,
with every step's state, ``STATE_SUB`` steps at a time, when asked for) and :func:`ssd_attention`
(the ``attn`` probe, in row tiles of ``TILE``).  Tensors in, tensors out: nothing here knows the
model or its config.
"""
from __future__ import annotations

import math

import torch

#: steps per stretch when every step's state is formed (the ``state`` probe)
STATE_SUB = 16
#: rows per tile of the implicit attention (a row is computed alike whichever rows were asked for)
TILE = 64


# ======================================================================================
# the SSD block and the implicit attention
# ======================================================================================


def _per_head(v, H):
    """[..., G, N] -> [..., H, N]: head h reads group h // (H / G)."""
    return v.repeat_interleave(H // v.shape[-2], dim=-2)


def ssd_block(A, x, dt, Bm, Cm, S0, want_states=False, outputs=True):
    """One block of the SSD scan, all steps at once.  ``A`` [H]; ``x`` [L, B, H, P]; ``dt``
    [L, B, H]; ``Bm``, ``Cm`` [L, B, G, N]; ``S0`` [B, H, P, N] the state before the block.
    With ``cs_i = sum_(k<=i) dt_k A`` (the log-decay from the block's start, in float64)::

        y_i = sum_(j<=i) (C_i . B_j) exp(cs_i - cs_j) dt_j x_j + exp(cs_i) S0 C_i
        S_i = exp(cs_i) S0 + sum_(j<=i) exp(cs_i - cs_j) dt_j x_j B_j^T

    Returns (y [L, B, H, P] or None, S after the block, S_i for every step [L, B, H, P, N] or
    None).  Row i of y depends on the steps up to i only, bit for bit."""
    L, nb, H, P = x.shape
    dtype = x.dtype
    xh = x.permute(1, 2, 0, 3)  # [B, H, L, P]
    Bh = _per_head(Bm, H).permute(1, 2, 0, 3)  # [B, H, L, N]
    dth = dt.permute(1, 2, 0)  # [B, H, L]
    cs = torch.cumsum(dth.double() * A.double()[:, None], -1)  # [B, H, L]
    last = cs[..., -1:]
    xdt = xh * dth[..., None]
    # the state after the block: exp(cs_L) S0 + sum_j exp(cs_L - cs_j) dt_j x_j B_j^T
    w_end = torch.exp((last - cs).to(dtype))
    S_end = torch.exp(last.to(dtype))[..., None] * S0 + (xdt * w_end[..., None]).transpose(-1, -2) @ Bh
    if not outputs:
        return None, S_end, None
    Ch = _per_head(Cm, H).permute(1, 2, 0, 3)
    decay = _decay_matrix(cs, dtype)
    into = torch.exp(cs.to(dtype))[..., None]  # exp(cs_i): decay of S0 up to step i
    y = (Ch @ Bh.transpose(-1, -2) * decay) @ xdt + (Ch @ S0.transpose(-1, -2)) * into
    states = _every_state(cs, xdt, Bh, S0) if want_states else None
    return y.permute(2, 0, 1, 3), S_end, states


def _decay_matrix(cs, dtype):
    """``exp(cs_i - cs_j)`` for j <= i and 0 above the diagonal: [..., L] -> [..., L, L]."""
    L = cs.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=cs.device).tril()
    return torch.exp((cs[..., :, None] - cs[..., None, :]).masked_fill(~causal, -math.inf).to(dtype))


def _every_state(cs, xdt, Bh, S0, sub: int = STATE_SUB):
    """``S_i`` after every step of a block, [L, B, H, P, N], ``sub`` steps at a time (each from
    the state before it: a [sub, sub] product per stretch, not [L, L])."""
    nb, H, L, P = xdt.shape
    N = Bh.shape[-1]
    out = []
    S = S0
    for o in range(0, L, sub):
        e = min(o + sub, L)
        c = cs[..., o:e] - (cs[..., o - 1:o] if o else 0)  # log-decay from the stretch's start
        dBx = (xdt[..., o:e, :, None] * Bh[..., o:e, None, :]).reshape(nb, H, e - o, P * N)
        st = (_decay_matrix(c, xdt.dtype) @ dBx).reshape(nb, H, e - o, P, N)
        st = st + torch.exp(c.to(xdt.dtype))[..., None, None] * S[:, :, None]
        out.append(st)
        S = st[:, :, -1]
    return torch.cat(out, 2).permute(2, 0, 1, 3, 4)


def ssd_attention(dt, B, C, A, rows, cols, *, groups: int = 1, reduce="mean_abs", tile: int = TILE,
                  from_row: int | None = None):
    """Implicit attention of one sequence of one Mamba2 layer: ``alpha_ij^h = (C_i . B_j)
    exp(A_h (S_i - S_j)) dt_j^h`` with ``S_i = sum_(k<=i) dt_k`` (kept in float64), so that the
    layer's ``y_i = sum_(j<=i) alpha_ij^h x_j + D_h x_i`` per head.

    ``dt`` [T, H]; ``B``, ``C`` [T, G, N], or [T, G * N] (group-major) with ``groups=G``; ``A`` [H].  ``rows=(r0, r1)``
    and ``cols=(c0, c1)`` select the window (clipped to the sequence); only it is computed,
    ``tile`` rows at a time (tiles start at ``r0``; ``from_row`` skips those ending at or before
    it, leaving them 0).  Returns [r1-r0, c1-c0] (``reduce="mean_abs"``: mean over heads of
    ``|alpha|``) or [r1-r0, c1-c0, H] (``reduce=None``); 0 where j > i or past the end."""
    if reduce not in ("mean_abs", None):
        raise ValueError(f"reduce must be 'mean_abs' or None, got {reduce!r}")
    dt, B, C, A = (torch.as_tensor(v) for v in (dt, B, C, A))
    T, H = dt.shape
    dtype = dt.dtype
    G = B.shape[1] if B.ndim == 3 else groups
    B, C = (v.reshape(T, G, -1).to(dtype) for v in (B, C))
    A = A.to(dtype)
    r0, r1 = (int(v) for v in rows)
    c0, c1 = (int(v) for v in cols)
    out = dt.new_zeros((r1 - r0, c1 - c0) if reduce else (r1 - r0, c1 - c0, H))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0 or c0 >= r1c:
        return out
    S = torch.cumsum(dt[:r1c].double(), 0)  # [T', H]
    first = r0 if from_row is None else r0 + max(0, (int(from_row) - r0) // tile) * tile
    for i0 in range(first, r1c, tile):
        i1 = min(i0 + tile, r1c)
        j1 = min(c1c, i1)
        if j1 <= c0:
            continue
        seg = S[i0:i1, None, :] - S[None, c0:j1, :]  # [Li, J, H], >= 0 where j <= i
        causal = torch.arange(i0, i1, device=dt.device)[:, None] >= torch.arange(c0, j1, device=dt.device)[None, :]
        decay = torch.exp((seg * A.double()).masked_fill(~causal[..., None], -math.inf).to(dtype))
        cb = torch.einsum("ign,jgn->ijg", C[i0:i1], B[c0:j1])
        alpha = _per_head(cb[..., None], H)[..., 0] * decay * dt[None, c0:j1]
        part = alpha.abs().mean(-1) if reduce else alpha
        out[i0 - r0:i1 - r0, :j1 - c0] = part
    return out
