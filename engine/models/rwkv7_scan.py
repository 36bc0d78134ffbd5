"""The RWKV-7 state recurrence (the generalized delta rule) in its chunked form and its implicit
attention, as :mod:`engine.models.rwkv7`'s layers run them (its docstring's "How a layer runs"):
pieces of at most ``SUB`` steps reduced to two matmuls each (:class:`_Piece`, :func:`wkv7_pieces`,
ended early by :func:`_piece_bounds` where edited decays would overflow), state edits inside a
piece (:func:`_run_piece`), and :func:`delta_rule_attention` (the ``attn`` probe, ``ATTN_BLOCK``
steps at a time; :func:`attention_from_trace` from a saved trace).  Tensors in, tensors out:
nothing here knows the model.
"""
from __future__ import annotations

import json

import torch

#: steps per piece of the chunked recurrence
SUB = 16
#: the largest spread of summed log decays inside a piece: factors e^(+-30) keep float32 far
#: from overflow
LOG_SPREAD = 30.0
#: steps of the implicit attention computed at once
ATTN_BLOCK = 256


# ======================================================================================
# the chunked recurrence
# ======================================================================================


class _Piece:
    """A stretch of m steps of the recurrence, reduced so that from any state S_0 before it
    the outputs are ``o = R S_0^T + O`` and the state after it ``S_0 P + U`` (all batched over
    the leading axes).  Inputs [..., m, N]: receptance r, log decay, key k, value v, removal
    direction al (= -kk) and write direction be (= kk a).

    With ``L_t`` the sum of log w over the piece's steps after its first one, through t, every
    decay between two steps of the piece is ``e^(L_t - L_j)``, and it factorises as ``e^(L_t)
    e^(-L_j)``: the pairwise sums become matmuls.  The factors stay finite because a piece
    never lets the ``L_t`` spread by more than ``LOG_SPREAD`` (:func:`_piece_bounds`); the first
    step's own decay (which may be 0) only multiplies ``S_0``."""

    def __init__(self, r, log_w, k, v, al, be):
        w_first = torch.exp(log_w[..., :1, :])
        L = torch.cumsum(torch.cat([torch.zeros_like(log_w[..., :1, :]), log_w[..., 1:, :]], -2).double(), -2)
        up, down = torch.exp(L).to(r.dtype), torch.exp(-L).to(r.dtype)
        through = w_first * up  # prod of w over the piece's steps through t
        before = torch.cat([torch.ones_like(through[..., :1, :]), through[..., :-1, :]], -2)  # through t - 1
        up_before = torch.cat([torch.ones_like(up[..., :1, :]), up[..., :-1, :]], -2)
        tail = torch.exp(L[..., -1:, :] - L).to(r.dtype)  # from after step j to the end of the piece
        k_down, be_down = k * down, be * down
        # c_t = S_(t-1) al_t solves (I - Mb) c = (al * before) S_0^T + Mk v
        a_up = al * up_before
        Mk = torch.tril(a_up @ k_down.transpose(-1, -2), -1)
        Mb = torch.tril(a_up @ be_down.transpose(-1, -2), -1)
        eye = torch.eye(Mb.shape[-1], dtype=Mb.dtype, device=Mb.device)
        Nk = k.shape[-1]
        X = torch.linalg.solve_triangular(eye - Mb, torch.cat([al * before, Mk @ v], -1), upper=False,
                                          unitriangular=True)
        self.Wa, self.cv = X[..., :Nk], X[..., Nk:]  # c = Wa S_0^T + cv
        r_up = r * up
        Qk = torch.tril(r_up @ k_down.transpose(-1, -2))
        Qb = torch.tril(r_up @ be_down.transpose(-1, -2))
        self.R = r * through + Qb @ self.Wa
        self.O = Qk @ v + Qb @ self.cv
        bt = be * tail
        self.P = torch.diag_embed(through[..., -1, :]) + self.Wa.transpose(-1, -2) @ bt
        self.U = v.transpose(-1, -2) @ (k * tail) + self.cv.transpose(-1, -2) @ bt
        self.through, self.up, self.k_down, self.be_down, self.v = through, up, k_down, be_down, v

    def outputs(self, S0):
        return self.R @ S0.transpose(-1, -2) + self.O

    def end_state(self, S0):
        return S0 @ self.P + self.U

    def states(self, S0):
        """S_t after every step, [..., m, N_v, N_k]: S_0 diag(prod w) + (sum_(j<=t) v_j^T k_j
        e^(-L_j) + c_j^T be_j e^(-L_j)) diag(e^(L_t))."""
        c = self.Wa @ S0.transpose(-1, -2) + self.cv
        writes = self.v[..., :, None] * self.k_down[..., None, :] + c[..., :, None] * self.be_down[..., None, :]
        return S0[..., None, :, :] * self.through[..., :, None, :] + torch.cumsum(writes, -3) * self.up[..., :, None, :]

    def take(self, p):
        """Piece ``p`` of a batch of pieces (the axis before the steps)."""
        one = object.__new__(_Piece)
        for name, t in vars(self).items():
            setattr(one, name, t[:, :, p])
        return one


def _piece_bounds(log_w, sub):
    """Pieces ``(p, q)`` of at most ``sub`` steps covering ``log_w``'s steps (axis 2).  A piece
    ends early before a step where the sums of log w after its first step would spread by more
    than ``LOG_SPREAD`` in some channel (only edited decays get there: natural ones have
    |log w| < 0.61).  A bound depends only on the steps before it, so an edit at step t moves
    none before t."""
    n = log_w.shape[2]
    bounds, p = [], 0
    while p < n:
        q = min(p + sub, n)
        if q - p > 1:
            sums = torch.cumsum(log_w[:, :, p + 1:q].double(), 2)
            spread = torch.cummax(sums.clamp(min=0), 2).values - torch.cummin(sums.clamp(max=0), 2).values
            bad = ~(spread <= LOG_SPREAD).flatten(3).permute(2, 0, 1, 3).flatten(1).all(1)  # NaN is bad too
            if bad.any():
                q = p + 1 + int(bad.nonzero()[0])
        bounds.append((p, q))
        p = q
    return bounds


def _gather_pieces(x, bounds, sub):
    """[B, H, n, N] -> [B, H, pieces, sub, N], each piece zero-padded at its end (padded steps
    have decay 1 and no key, value or removal: they change nothing before them)."""
    parts = []
    for p, q in bounds:
        part = x[:, :, p:q]
        if q - p < sub:
            part = torch.cat([part, part.new_zeros(*part.shape[:2], sub - (q - p), part.shape[3])], 2)
        parts.append(part)
    return torch.stack(parts, 2)


def wkv7_pieces(S, r, log_w, k, v, al, be, *, want_states=False, state_edits=(), start=0, sub=SUB):
    """The recurrence over n steps in pieces of at most ``sub``: ``S`` [B, H, N_v, N_k] the
    state before, ``r``, ``log_w``, ``k``, ``al``, ``be`` [B, H, n, N_k], ``v`` [B, H, n, N_v].
    Returns ``(o [B, H, n, N_v], state after, states [B, H, n, N_v, N_k] or None)``.
    ``state_edits`` (bound interventions, steps counted from ``start``) edit the state after
    their steps."""
    B, H, n, _ = r.shape
    Nv = v.shape[-1]
    bounds = _piece_bounds(log_w, sub)
    inputs = (r, log_w, k, v, al, be)
    pieces = _Piece(*(_gather_pieces(t, bounds, sub) for t in inputs))
    o = v.new_empty(B, H, n, Nv)
    states = v.new_empty(B, H, n, Nv, S.shape[-1]) if want_states else None
    steps = sorted({int(t) - start for e in state_edits for t in e.steps if start <= t < start + n})
    for i, (p0, p1) in enumerate(bounds):
        S = _run_piece(S, pieces.take(i), p0, p1, [t for t in steps if p0 <= t < p1], inputs, o, states,
                       state_edits, start)
    return o, S, states


def _run_piece(S, piece, p0, p1, steps, inputs, o, states, state_edits, start):
    """Steps ``p0..p1-1`` from ``S``; an edit of the state after step ``t`` (in ``steps``)
    restarts the rest of the piece from the edited state."""
    m = p1 - p0
    o[:, :, p0:p1] = piece.outputs(S)[:, :, :m]
    end = piece.end_state(S)
    if states is None and not steps:
        return end
    # per-step states from their closed form, row by row as in any run; what is carried on
    # is ``end`` whether or not states are recorded (they agree to rounding)
    St = piece.states(S)[:, :, :m]
    if states is not None:
        states[:, :, p0:p1] = St
    if not steps:
        return end
    t = steps[0]
    B, H, Nv, Nk = S.shape
    flat = St[:, :, t - p0].reshape(B, H * Nv * Nk)
    for e in state_edits:
        flat = e.apply_step(flat, start + t)
    S = flat.reshape(B, H, Nv, Nk).contiguous()
    o[:, :, t] = (S @ inputs[0][:, :, t, :, None])[..., 0]  # o_t = S_t r_t reads the edited state
    if states is not None:
        states[:, :, t] = S
    if t + 1 == p1:
        return S
    rest = _Piece(*(x[:, :, t + 1:p1] for x in inputs))
    return _run_piece(S, rest, t + 1, p1, steps[1:], inputs, o, states, state_edits, start)


# ======================================================================================
# implicit attention
# ======================================================================================


def delta_rule_attention(r, w, k, kk, a, n_head: int, rows, cols, *, block: int = ATTN_BLOCK):
    """Implicit attention of RWKV-7 layers, per head: ``alpha[i, j, h] = k_j A_(j+1) ... A_i r_i^T``
    restricted to head h, with ``A_t = diag(w_t) - kk_t^T (kk_t a_t)``, so that the recurrence
    output is ``o_i = sum_(j<=i) alpha_ij v_j`` (from an empty state).  ``r``, ``w``, ``k``,
    ``kk``, ``a`` are the probes' values, [T, C] (one sequence) or [T, B, C].  Returns
    [r1-r0, c1-c0, H] (or [r1-r0, B, c1-c0, H]) for ``rows=(r0, r1)``, ``cols=(c0, c1)``
    (0 where j > i or beyond the sequence).

    The recurrence is run from the window's first column to its last row with one one-hot
    value per column (zero initial state, nothing before c0 is needed), ``block`` steps at a
    time: its outputs are the attention rows."""
    single = torch.as_tensor(r).ndim == 2
    r, w, k, kk, a = (torch.as_tensor(x) for x in (r, w, k, kk, a))
    if single:
        r, w, k, kk, a = (x[:, None] for x in (r, w, k, kk, a))
    dtype = r.dtype if r.dtype in (torch.float32, torch.float64) else torch.float32
    T, B, C = r.shape
    H = n_head
    N = C // H
    r0, r1 = (int(x) for x in rows)
    c0, c1 = (int(x) for x in cols)
    W = c1 - c0
    res = torch.zeros(r1 - r0, B, W, H, dtype=dtype, device=r.device)
    hi, c1c = min(r1, T), min(c1, T)
    if c0 < hi:
        S = torch.zeros(B, H, W, N, dtype=dtype, device=r.device)
        heads = lambda x, s, e: x[s:e].to(dtype).view(e - s, B, H, N).permute(1, 2, 0, 3)  # noqa: E731
        for s in range(c0, hi, block):
            e = min(s + block, hi)
            onehot = torch.zeros(e - s, W, dtype=dtype, device=r.device)
            j = torch.arange(s, min(e, c1c), device=r.device)
            onehot[j - s, j - c0] = 1
            values = onehot.expand(B, H, e - s, W)
            kk_ = heads(kk, s, e)
            o, S, _ = wkv7_pieces(S, heads(r, s, e), torch.log(heads(w, s, e)), heads(k, s, e), values, -kk_,
                                  kk_ * heads(a, s, e))
            lo = max(s, r0)
            if lo < e:  # o [B, H, steps, W] -> rows [steps, B, W, H]
                res[lo - r0:e - r0] = o[:, :, lo - s:].permute(2, 0, 3, 1)
    return res[:, 0] if single else res


def attention_from_trace(trace, layer: int, rows, cols, *, sequence: int = 0, n_head: int | None = None,
                         reduce="mean_abs"):
    """Implicit attention of ``layer`` for one sequence of a trace that captured
    ``layers.{layer}.r``, ``.w``, ``.k``, ``.kk`` and ``.a``: [rows, cols] (the mean over heads
    of |alpha|, as the ``attn`` probe) or, with ``reduce=None``, [rows, cols, heads].  A NumPy
    array.  ``n_head`` defaults to the state probe's or the model config's."""
    name = f"layers.{layer}."
    try:
        r, w, k, kk, a = (torch.tensor(trace.array(name + s, sequence)) for s in ("r", "w", "k", "kk", "a"))
    except KeyError as exc:
        raise KeyError(f"the trace must hold {name}r, w, k, kk and a: {exc}") from None
    if n_head is None:
        cfg = json.loads(trace.model_info["config"])
        n_head = cfg["d_model"] // cfg["head_size"]
    alpha = delta_rule_attention(r, w, k, kk, a, n_head, rows, cols)
    return (alpha.abs().mean(-1) if reduce == "mean_abs" else alpha).numpy()
