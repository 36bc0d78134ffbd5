"""Mamba2 (SSD): an instrumented state-space language model in the layout of ``transformers``'
``Mamba2ForCausalLM`` (Dao & Gu 2024, "Transformers are SSMs").

The model (d_inner = H heads x P head_dim, G groups of B/C, N state size, K conv width)::

    x_0 = embed[token]
    layer i:  n = rmsnorm(x)                            the block norm: the mixer's input
              z, xBC, dt_raw = split(in_proj(n))        d_inner, d_inner + 2 G N, H
              x, B, C = split(silu(causal_conv(xBC)))   depthwise, kernel K, over time
              dt = clamp(softplus(dt_raw + dt_bias), time_step_limit)          per head
              S_t = exp(dt_t A_h) S_(t-1) + dt_t x_t B_t^T   per head [P, N], A_h = -exp(A_log_h)
              y = S_t C_t + D_h x_t                     (head h reads B, C of group h // (H/G))
              g = rmsnorm_G(y * silu(z)) * norm.weight  RMSNorm over each of the G groups of d_inner
              x = x + out_proj(g)                 out_proj(g): probe "mixer"; x after: "out"
    logits = lm_head(norm_f(x))

Canonical weight names are those of ``Mamba2ForCausalLM``: ``backbone.embeddings.weight``,
``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.{in_proj.weight [d_inner +
conv_dim + H, d], conv1d.weight [conv_dim, 1, K], conv1d.bias, dt_bias [H], A_log [H], D [H],
norm.weight [d_inner], out_proj.weight [d, d_inner]}`` (``conv_dim = d_inner + 2 G N``; biases
of in_proj/out_proj when ``use_bias``), ``backbone.norm_f.weight``, ``lm_head.weight`` (absent
when tied).  ``save_pretrained`` folders load with :func:`engine.load`, and so does the original
``mamba_ssm`` layout (``config.json`` with ``d_model``, ``n_layer``, ``ssm_cfg: {"layer": "Mamba2",
...}`` + ``pytorch_model.bin``; ``backbone.embedding``; the gated norm's epsilon fixed at 1e-5); the config's
``chunk_size`` is recorded but not used (SeqScope chunks its own way; the numbers do not depend
on it).  ``n_groups`` cannot be read from the weights alone: without a config, G = 1 is assumed.

Probe sites of layer i (``layers.{i}.<site>``)
---------------------------------------------
``in`` (n, d_model), ``z`` (gate before silu, d_inner), ``x`` / ``B`` / ``C`` (after the conv and
silu; B and C are [G * N], group-major), ``dt`` (per head), ``state`` (S_t after step t as
[d_inner, N]: channel c = h * P + p is row p of head h's state), ``y`` (scan output with the D
skip, before the gated norm), ``gated`` (out_proj's input), ``mixer`` (out_proj(gated), before
the residual add), ``out`` (the residual stream after it) and ``attn``, the implicit attention
of the SSD form:

    y_i = sum_(j <= i) alpha_ij^h x_j + D_h x_i,   alpha_ij^h = (C_i . B_j) exp(A_h (dt_(j+1) + ... + dt_i)) dt_j

per head; the probe holds mean_h |alpha_ij^h| for a window of rows and columns only
(:attr:`Mamba2Model.attention_window`; :func:`ssd_attention` gives the per-head values).

How a layer runs
----------------
Chunk by chunk (the chunk grid of ``engine.run``): every per-token quantity at once from
batched matmuls (interventions on ``in``, ``z``, ``x``, ``B``, ``C``, ``dt``, ``y``, ``gated``,
``out`` applied to the whole chunk, each before what is computed from it), then the scan in
the SSD block form: blocks of ``BLOCK`` steps on a grid fixed relative to the chunk, each an
L x L masked "attention" product plus the contribution of the state entering the block; the
state is carried from block to block (:func:`ssd_block`).  No loop over steps.  The per-step
states [T, d_inner, N] are formed only when the ``state`` probe is asked for.  An intervention
on ``state`` at step t: the block holding t runs as usual (its steps up to t are those of the
unedited run), the state after t is formed, edited, ``y_t`` is recomputed from it, and the
next block starts at t + 1.  The state a re-run needs at a chunk boundary is (S [B, H, P, N],
the last K - 1 rows of xBC).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .family import untied_if_the_file_says_so
from .family import (FamilyConfig, FamilyModel, StatedConfig, build_model, check_loaded_weights, config_from_fields,
                     probe_table, unused_note)
from .mamba import MambaModel
from .mamba import _canonical_names  # file keys -> backbone.* names, found by the A_log keys

SITES = ("in", "z", "x", "B", "C", "dt", "state", "y", "gated", "mixer", "out", "attn")
#: steps per SSD block (the L x L products inside a chunk)
BLOCK = 64
#: steps per stretch when every step's state is formed (the ``state`` probe)
STATE_SUB = 16
#: rows per tile of the implicit attention (a row is computed alike whichever rows were asked for)
TILE = 64


@dataclass(frozen=True)
class Mamba2Config(FamilyConfig):
    FAMILY = "mamba2"

    d_model: int
    n_layer: int
    vocab_size: int
    n_heads: int
    head_dim: int
    d_state: int = 128
    n_groups: int = 1
    d_conv: int = 4
    norm_eps: float = 1e-5
    gate_norm_eps: float | None = None  # the gated norm's epsilon when it differs (mamba_ssm: 1e-5)
    in_proj_bias: bool = False
    out_proj_bias: bool = False
    conv_bias: bool = True
    dt_min: float = 0.0  # time_step_limit: dt is clamped to [dt_min, dt_max]
    dt_max: float | None = None  # None: no upper limit
    tie_embeddings: bool = False
    chunk_size: int = 256  # the file's chunk size; recorded only

    def __post_init__(self):
        self.require_positive("d_model", "n_layer", "vocab_size", "n_heads", "head_dim", "d_state", "n_groups", "d_conv")
        if self.n_heads % self.n_groups:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_groups ({self.n_groups})")

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state


def canonical_weight_shapes(cfg: Mamba2Config) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (``Mamba2ForCausalLM`` names), with its shape."""
    d, di, H = cfg.d_model, cfg.d_inner, cfg.n_heads
    shapes: dict[str, tuple[int, ...]] = {"backbone.embeddings.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        shapes[p + "norm.weight"] = (d,)
        shapes[m + "in_proj.weight"] = (di + cfg.conv_dim + H, d)
        if cfg.in_proj_bias:
            shapes[m + "in_proj.bias"] = (di + cfg.conv_dim + H,)
        shapes[m + "conv1d.weight"] = (cfg.conv_dim, 1, cfg.d_conv)
        if cfg.conv_bias:
            shapes[m + "conv1d.bias"] = (cfg.conv_dim,)
        shapes[m + "dt_bias"] = (H,)
        shapes[m + "A_log"] = (H,)
        shapes[m + "D"] = (H,)
        shapes[m + "norm.weight"] = (di,)
        shapes[m + "out_proj.weight"] = (d, di)
        if cfg.out_proj_bias:
            shapes[m + "out_proj.bias"] = (d,)
    shapes["backbone.norm_f.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


#: why interventions on ``attn`` are refused
NOT_EDITABLE_ATTN = "it is computed from dt, B and C after the run and feeds nothing; " \
    "intervene on dt, B, C or state instead"


class _Layer:
    """One layer's weights, in the model's dtype and device."""

    def __init__(self, w: dict, p: str, scan_dtype):
        m = p + "mixer."
        self.norm_w = w[p + "norm.weight"]
        self.in_w, self.in_b = w[m + "in_proj.weight"], w.get(m + "in_proj.bias")
        self.conv_w = w[m + "conv1d.weight"][:, 0, :]  # [conv_dim, K]
        self.conv_b = w.get(m + "conv1d.bias")
        self.dt_bias = w[m + "dt_bias"]
        self.A = -torch.exp(w[m + "A_log"].to(scan_dtype))  # [H], in the scan's dtype
        self.D = w[m + "D"]
        self.gate_norm_w = w[m + "norm.weight"]
        self.out_w, self.out_b = w[m + "out_proj.weight"], w.get(m + "out_proj.bias")


class Mamba2Model(FamilyModel):
    """An instrumented Mamba2 language model.  Build with :func:`engine.load`, from a config
    and canonical weights, or with :func:`from_transformers`.  ``attention_window``: see
    :class:`engine.models.mamba.AttentionWindow`."""

    architecture = "mamba2"
    SITES = SITES
    ATTENTION_NEEDS = frozenset({"dt", "B", "C"})
    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}

    weight_shapes = staticmethod(canonical_weight_shapes)

    def _prepare(self):
        w = self._w
        self.embed = w["backbone.embeddings.weight"]
        self.head = w.get("lm_head.weight", self.embed)
        self.norm_f_w = w["backbone.norm_f.weight"]
        self.layers = [_Layer(w, f"backbone.layers.{i}.", self.scan_dtype) for i in range(self.config.n_layer)]

    @property
    def scan_dtype(self):
        """The scan runs in float32 for half-precision models (as ``transformers`` does)."""
        return torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype

    def A(self, layer: int) -> torch.Tensor:
        """The per-head decay rate ``A = -exp(A_log)`` of a layer, [n_heads]."""
        return self.layers[layer].A

    def head_channels(self, head: int) -> list[int]:
        """The d_inner channels (units of ``x``, ``y``, ``z`` and rows of ``state``) of a head."""
        P = self.config.head_dim
        return list(range(head * P, (head + 1) * P))

    #: unit indices of the ``state`` probe (flattened ``channel * d_state + state``), as Mamba's
    state_units = MambaModel.state_units

    # -- probes -----------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        d, di, N, H, P, G = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.n_heads, cfg.head_dim, cfg.n_groups
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        group = f"group g at units g*{N}..g*{N}+{N - 1}; head h reads group h // {H // G}"
        desc = {
            "in": (d, "n = rmsnorm(x): the mixer's input (in_proj reads it)"),
            "z": (di, "gate z from in_proj(n), before silu; g = rmsnorm(y * silu(z))"),
            "x": (di, f"x = silu(causal conv(xBC)): the scan's input, head h = unit // {P}"),
            "B": (G * N, f"input matrix B_t = silu(causal conv(xBC)); the state takes dt x B^T ({group})"),
            "C": (G * N, f"output matrix C_t = silu(causal conv(xBC)); y = S C + D x ({group})"),
            "dt": (H, "step size dt = clamp(softplus(dt_raw + dt_bias), time_step_limit), per head"),
            "state": ((di, N), f"SSM state after step t, S_t = exp(dt A_h) S_(t-1) + dt x_t B_t^T, row c = h*{P} + p "
                               f"of head h (interventions index it flattened: unit = channel*{N} + state)"),
            "y": (di, "scan output S_t C_t + D_h x_t, before the gated norm"),
            "gated": (di, f"gated RMSNorm rmsnorm(y * silu(z)) * weight over {G} group(s): out_proj's input"),
            "mixer": (d, "mixer output out_proj(gated), before the residual add (out = input + mixer)"),
            "out": (d, "residual stream after the block: input + mixer (input + out_proj(gated))"),
            "attn": (c1 - c0, f"implicit attention mean_h |alpha_ij^h| over the {H} heads, alpha_ij^h = (C_i . B_j) "
                              f"exp(A_h (dt_(j+1) + ... + dt_i)) dt_j (y_i = sum_j alpha_ij^h x_j + D_h x_i); rows "
                              f"{r0}..{r1 - 1}, column m is key step {c0}+m; 0 where j > i, NaN in rows outside the "
                              "window"),
        }
        dims = {"B": ("token", "state"), "C": ("token", "state"), "dt": ("token", "head"),
                "state": ("token", "unit", "state")}
        return probe_table(cfg.n_layer, SITES, desc, embed=(d, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores lm_head(norm_f(x)) (before softmax)"), dims=dims)

    # -- the forward pass -----------------------------------------------------------------
    def initial_state(self, batch: int):
        cfg = self.config
        S = torch.zeros(batch, cfg.n_heads, cfg.head_dim, cfg.d_state, dtype=self.scan_dtype, device=self.device)
        conv = torch.zeros(cfg.d_conv - 1, batch, cfg.conv_dim, dtype=self.dtype, device=self.device)
        return S, conv

    def _rms(self, h, w):
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.config.norm_eps))

    def _logits(self, h):
        return F.linear(self._rms(h, self.norm_f_w), self.head)

    def _embed_tokens(self, x):
        return F.embedding(x, self.embed)

    def _site_shapes(self):
        cfg = self.config
        di, GN = cfg.d_inner, cfg.n_groups * cfg.d_state
        return {"in": (cfg.d_model,), "z": (di,), "x": (di,), "B": (GN,), "C": (GN,), "dt": (cfg.n_heads,),
                "state": (di, cfg.d_state), "y": (di,), "gated": (di,), "mixer": (cfg.d_model,),
                "out": (cfg.d_model,)}

    def _layer_chunk(self, k, h, a, state, edits, record):
        """Steps ``a..a+n-1`` of layer ``k``: every per-token quantity at once, then the scan."""
        cfg = self.config
        lay = self.layers[k]
        n, nb = h.shape[:2]
        di, H, P, N, G = cfg.d_inner, cfg.n_heads, cfg.head_dim, cfg.d_state, cfg.n_groups
        GN = G * N
        S, buf = state

        def edit(site, v):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                    v = e.apply_all(v, a)
            return v

        inp = edit("in", self._rms(h, lay.norm_w))
        proj = F.linear(inp, lay.in_w, lay.in_b)
        z = edit("z", proj[..., :di])
        conv, new_buf = self._causal_conv(lay, proj[..., di:di + cfg.conv_dim], buf)
        x = edit("x", conv[..., :di])
        Bm = edit("B", conv[..., di:di + GN])
        Cm = edit("C", conv[..., di + GN:])
        dt = F.softplus(proj[..., di + cfg.conv_dim:] + lay.dt_bias).clamp(cfg.dt_min, cfg.dt_max)
        dt = edit("dt", dt)
        xh = x.reshape(n, nb, H, P)
        sd = self.scan_dtype
        Bg, Cg = Bm.reshape(n, nb, G, N).to(sd), Cm.reshape(n, nb, G, N).to(sd)
        ys, S, states = self._scan(lay.A, xh.to(sd), dt.to(sd), Bg, Cg, S, a, edits.get("state", ()), "state" in record)
        y = edit("y", (ys.to(x.dtype) + xh * lay.D[:, None]).reshape(n, nb, di))
        gated = edit("gated", self._gated_norm(y, z, lay.gate_norm_w))
        mixer = edit("mixer", F.linear(gated, lay.out_w, lay.out_b))
        out = edit("out", h + mixer)
        vals = {"in": inp, "z": z, "x": x, "B": Bm, "C": Cm, "dt": dt, "y": y, "gated": gated, "mixer": mixer,
                "out": out}
        if states is not None:
            vals["state"] = states.reshape(n, nb, di, N)
        return vals, (S, new_buf)

    def _causal_conv(self, lay, xbc, buf):
        """``silu(depthwise causal conv(xBC))`` over a chunk's rows [n, B, conv_dim], continuing
        from ``buf``, the K - 1 rows before them.  Returns (result, the buffer after the chunk)."""
        n, K = xbc.shape[0], self.config.d_conv
        xc = torch.cat([buf, xbc]) if K > 1 else xbc  # [K-1+n, B, conv_dim]
        conv = xc[0:n] * lay.conv_w[:, 0]
        for j in range(1, K):
            conv = conv + xc[j:j + n] * lay.conv_w[:, j]
        if lay.conv_b is not None:
            conv = conv + lay.conv_b
        return F.silu(conv), (xc[n:].clone() if K > 1 else buf)

    def _gated_norm(self, y, z, w):
        """``rmsnorm(y * silu(z)) * w`` with the mean square taken over each of the G groups."""
        g = y * F.silu(z)
        G = self.config.n_groups
        gg = g.reshape(*g.shape[:-1], G, -1)
        eps = self.config.norm_eps if self.config.gate_norm_eps is None else self.config.gate_norm_eps
        gg = gg * torch.rsqrt(gg.pow(2).mean(-1, keepdim=True) + eps)
        return w * gg.reshape(g.shape)

    def _scan(self, A, x, dt, Bm, Cm, S, a, state_edits, want_states):
        """The SSD scan over one chunk: blocks of ``BLOCK`` steps on a grid fixed relative to the
        chunk; after a step whose state is edited, the next block starts at the step after it.
        Returns (ys [n, B, H, P] without the D skip, state after the chunk, states or None)."""
        n, nb, H, P = x.shape
        N = Bm.shape[-1]
        ys = x.new_empty(n, nb, H, P)
        states = x.new_empty(n, nb, H, P, N) if want_states else None
        edit_steps = sorted({int(t) - a for e in state_edits for t in e.steps if a <= t < a + n})
        o = 0
        while o < n:
            e = min((o // BLOCK + 1) * BLOCK, n)
            blk = slice(o, e)
            yb, S_end, sb = ssd_block(A, x[blk], dt[blk], Bm[blk], Cm[blk], S, want_states)
            t = next((t for t in edit_steps if o <= t < e), None)
            stop = e if t is None else t + 1
            ys[o:stop] = yb[:stop - o]
            if states is not None:
                states[o:stop] = sb[:stop - o]
            if t is None:
                S, o = S_end, e
                continue
            # the state after step t, edited; y_t from it; the next block starts at t + 1
            _, S_t, _ = ssd_block(A, x[o:t + 1], dt[o:t + 1], Bm[o:t + 1], Cm[o:t + 1], S, False, outputs=False)
            flat = S_t.reshape(nb, H * P * N)
            for ed in state_edits:
                flat = ed.apply_step(flat, a + t)
            S = flat.reshape(nb, H, P, N).contiguous()
            ys[t] = torch.einsum("bhpn,bhn->bhp", S, _per_head(Cm[t], H))
            if states is not None:
                states[t] = S
            o = t + 1
        return ys, S, states

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe of layer ``k``: rows before ``s`` from the previous run (same
        window: the prefix cache checks :meth:`cache_key`), whole row tiles from the one
        holding ``s`` on computed."""
        (r0, r1), cols = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, self._window.width), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[name][:s]
        hi = min(r1, T)
        if max(r0, s) < hi:
            dt, Bm, Cm = (out[layer_probe(k, site)] for site in ("dt", "B", "C"))
            first = r0 + max(0, (s - r0) // TILE) * TILE
            for b in range(B):
                att = ssd_attention(dt[:, b], Bm[:, b], Cm[:, b], self.layers[k].A, (r0, hi), cols,
                                    groups=self.config.n_groups, from_row=s)
                res[first:hi, b] = att[first - r0:]
        return res


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


def attention_from_trace(trace, model: Mamba2Model, layer: int, rows, cols, *, sequence: int = 0,
                         reduce="mean_abs"):
    """Implicit attention of ``layer`` for one sequence of a trace that captured
    ``layers.{layer}.dt``, ``.B`` and ``.C`` (``A`` and the group count come from the model).
    Returns a NumPy array (see :func:`ssd_attention`)."""
    name = f"layers.{layer}."
    try:
        dt, B, C = (torch.tensor(trace.array(name + s, sequence)) for s in ("dt", "B", "C"))
    except KeyError as exc:
        raise KeyError(f"the trace must hold {name}dt, {name}B and {name}C: {exc}") from None
    A = model.A(layer).to(dt.dtype).cpu()
    return ssd_attention(dt, B, C, A, rows, cols, groups=model.config.n_groups, reduce=reduce).numpy()


def from_transformers(hf_model, **kwargs) -> Mamba2Model:
    """Wrap an in-memory ``transformers`` ``Mamba2ForCausalLM`` (weights are copied)."""
    c = hf_model.config
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"only silu convolution activations are supported, got {c.hidden_act!r}")
    sd = hf_model.state_dict()
    lo, hi = _dt_limit(getattr(c, "time_step_limit", (0.0, math.inf)))
    cfg = Mamba2Config(d_model=c.hidden_size, n_layer=c.num_hidden_layers, vocab_size=c.vocab_size,
                       n_heads=c.num_heads, head_dim=c.head_dim, d_state=c.state_size, n_groups=c.n_groups,
                       d_conv=c.conv_kernel, norm_eps=c.layer_norm_epsilon, in_proj_bias=c.use_bias,
                       out_proj_bias=c.use_bias, conv_bias=c.use_conv_bias, dt_min=lo, dt_max=hi,
                       tie_embeddings="lm_head.weight" not in sd
                       or sd["lm_head.weight"].data_ptr() == sd["backbone.embeddings.weight"].data_ptr(),
                       chunk_size=int(getattr(c, "chunk_size", 256)))
    kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
    return Mamba2Model(cfg, dict(sd), source=f"<in-memory {type(hf_model).__name__}>", **kwargs)


def _dt_limit(limit) -> tuple[float, float | None]:
    """``time_step_limit`` as (dt_min, dt_max or None); JSON writes infinity as
    ``{"__float__": "Infinity"}``."""
    def num(v):
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        return float(v)

    lo, hi = (num(v) for v in limit)
    return lo, (None if math.isinf(hi) else hi)


# ======================================================================================
# loading: Hugging Face Mamba2ForCausalLM folders (and bare state dicts of that layout)
# ======================================================================================

_DT_BIAS = re.compile(r"^(.*?)layers\.(\d+)\.mixer\.dt_bias$")
_A_LOG = re.compile(r"^(.*?)layers\.(\d+)\.mixer\.A_log$")
_HF_FIELDS = (("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"), ("vocab_size", "vocab_size"),
              ("d_state", "state_size"), ("d_conv", "conv_kernel"), ("n_heads", "num_heads"),
              ("head_dim", "head_dim"), ("n_groups", "n_groups"), ("chunk_size", "chunk_size"))


def _stated_model_types(configs: list) -> set[str]:
    return {str(d["model_type"]).lower() for _, d in configs if "model_type" in d}


def looks_like_mamba2(tensors: dict, configs: list) -> bool:
    """A Mamba2 checkpoint: a config that says so (``model_type`` "mamba2", SeqScope's family
    "mamba2", mamba_ssm's ``ssm_cfg.layer`` "Mamba2"), or, when no config names another model
    type, ``…layers.{i}.mixer.dt_bias`` tensors next to one-dimensional ``A_log``.  Never Mamba (1)
    weights (a matrix ``A_log``), whatever a config says: those are left to ``engine.models.mamba``."""
    a_logs = [v for k, v in tensors.items() if _A_LOG.match(k)]
    if any(v.ndim != 1 for v in a_logs):  # Mamba (1) weights, whatever a config says
        return False
    if any(d.get("family") == "mamba2" for _, d in configs) or "mamba2" in _stated_model_types(configs):
        return True
    if any(_mamba_ssm_layer(d) == "Mamba2" for _, d in configs):
        return True
    if _stated_model_types(configs):
        return False
    return bool(a_logs) and any(_DT_BIAS.match(k) for k in tensors)


def _config_from_files(configs: list, notes: list) -> tuple[dict, str]:
    """Mamba2Config fields stated by the configs, and which layout they came from."""
    for src, d in configs:
        if d.get("family") == "mamba2":  # SeqScope's own metadata
            return {k: v for k, v in d.items() if k in Mamba2Config.__dataclass_fields__}, "SeqScope"
        if _mamba_ssm_layer(d) == "Mamba2":
            return _mamba_ssm_fields(src, d, notes), "mamba_ssm"
        if str(d.get("model_type", "")).lower() != "mamba2":
            continue
        act = str(d.get("hidden_act", "silu"))
        if act not in ("silu", "swish"):
            raise LoadError(f"{src} gives hidden_act {act!r}; SeqScope's Mamba2 supports silu only")
        c = StatedConfig(d, src)
        out = c.sizes(_HF_FIELDS)
        out["norm_eps"] = c.number("layer_norm_epsilon", 1e-5)
        if "use_bias" in d:
            out["in_proj_bias"] = out["out_proj_bias"] = c.flag("use_bias")
        if "use_conv_bias" in d:
            out["conv_bias"] = c.flag("use_conv_bias")
        out["tie_embeddings"] = c.flag("tie_word_embeddings", False)
        if "time_step_limit" in d:
            try:
                out["dt_min"], out["dt_max"] = _dt_limit(d["time_step_limit"])
            except (TypeError, ValueError):
                raise LoadError(f"{src}: time_step_limit {d['time_step_limit']!r} is not a pair of numbers") from None
        expand, dm = c.whole("expand", None), out.get("d_model")
        if expand is not None and dm and "n_heads" in out and "head_dim" in out \
                and expand * dm != out["n_heads"] * out["head_dim"]:
            raise LoadError(f"{src}: expand * hidden_size = {expand * dm} but num_heads * head_dim = "
                            f"{out['n_heads'] * out['head_dim']}; transformers requires them equal")
        if "chunk_size" in out:
            notes.append(f"chunk_size {out['chunk_size']} from {src} is not used: SeqScope chunks its own way "
                         "(the results do not depend on it)")
        return out, "transformers Mamba2ForCausalLM"
    return {}, ""


def _mamba_ssm_layer(d: dict) -> str | None:
    """The ``ssm_cfg.layer`` of a mamba_ssm ``MambaLMHeadModel`` config (None for other configs)."""
    if "d_model" in d and "n_layer" in d and isinstance(d.get("ssm_cfg"), dict):
        return str(d["ssm_cfg"].get("layer", "Mamba1"))
    return None


def _mamba_ssm_fields(src: str, d: dict, notes: list) -> dict:
    """Mamba2Config fields from a mamba_ssm config (``d_model``, ``n_layer``, ``ssm_cfg`` …), with
    mamba_ssm's defaults; what SeqScope's Mamba2 does not have is refused in words."""
    c = StatedConfig(d, src)
    ssm = c.mapping("ssm_cfg")
    expand, d_model = ssm.whole("expand", 2), c.whole("d_model")
    refuse = [(d.get("d_intermediate"), f"d_intermediate={d.get('d_intermediate')} adds MLP blocks between the mixers"),
              (d.get("attn_layer_idx"), f"attn_layer_idx={d.get('attn_layer_idx')} adds attention layers (a hybrid)"),
              (not d.get("rms_norm", True), "rms_norm=false uses LayerNorm blocks"),
              (ssm.get("d_ssm") not in (None, expand * d_model),
               f"d_ssm={ssm.get('d_ssm')} adds a gated MLP inside the mixer"),
              (not ssm.get("rmsnorm", True), "rmsnorm=false drops the gated norm"),
              (ssm.get("norm_before_gate", False), "norm_before_gate=true normalises before the gate"),
              (ssm.get("D_has_hdim", False), "D_has_hdim=true gives D per channel")]
    for bad, why in refuse:
        if bad:
            raise LoadError(f"{src}: {why}, which SeqScope's Mamba2 does not have")
    vocab, pad = c.whole("vocab_size"), c.whole("pad_vocab_size_multiple", 1) or 1
    if vocab % pad:
        notes.append(f"vocab_size {vocab} padded to {vocab + pad - vocab % pad} (pad_vocab_size_multiple {pad})")
        vocab += pad - vocab % pad
    d_inner = expand * d_model
    headdim = ssm.whole("headdim", 64)
    if headdim <= 0:
        raise LoadError(f"{src}: ssm_cfg headdim is {headdim}, expected a positive whole number")
    try:
        dt_min, dt_max = _dt_limit(ssm.get("dt_limit", (0.0, math.inf)))
    except (TypeError, ValueError):
        raise LoadError(f"{src}: ssm_cfg dt_limit {ssm.get('dt_limit')!r} is not a pair of numbers") from None
    return {"d_model": d_model, "n_layer": c.whole("n_layer"), "vocab_size": vocab,
            "n_heads": d_inner // headdim, "head_dim": headdim, "d_state": ssm.whole("d_state", 128),
            "n_groups": ssm.whole("ngroups", 1), "d_conv": ssm.whole("d_conv", 4),
            "norm_eps": c.number("norm_epsilon", 1e-5), "gate_norm_eps": 1e-5,
            "in_proj_bias": ssm.flag("bias", False), "out_proj_bias": ssm.flag("bias", False),
            "conv_bias": ssm.flag("conv_bias", True), "dt_min": dt_min, "dt_max": dt_max,
            "tie_embeddings": c.flag("tie_embeddings", True), "chunk_size": ssm.whole("chunk_size", 256)}


def _infer_config(canon: dict, stated: dict, notes: list) -> dict:
    """Mamba2Config fields from the weights, where the configs left them out."""
    out = dict(stated)
    n = 0
    while f"backbone.layers.{n}.mixer.dt_bias" in canon:
        n += 1
    out.setdefault("n_layer", n)
    m = "backbone.layers.0.mixer."
    emb = canon.get("backbone.embeddings.weight")
    if emb is not None and emb.ndim == 2:
        out.setdefault("vocab_size", int(emb.shape[0]))
        out.setdefault("d_model", int(emb.shape[1]))
    a_log, gate_norm, cw = canon.get(m + "A_log"), canon.get(m + "norm.weight"), canon.get(m + "conv1d.weight")
    if a_log is not None and a_log.ndim == 1:
        out.setdefault("n_heads", int(a_log.shape[0]))
    if gate_norm is not None and gate_norm.ndim == 1 and out.get("n_heads"):
        out.setdefault("head_dim", int(gate_norm.shape[0]) // out["n_heads"])
    if cw is not None and cw.ndim == 3:
        out.setdefault("d_conv", int(cw.shape[-1]))
        if gate_norm is not None and "d_state" not in out:
            if "n_groups" not in out:
                notes.append("n_groups is not stated; assumed 1")
            out["d_state"] = (int(cw.shape[0]) - int(gate_norm.shape[0])) // (2 * out.get("n_groups", 1))
    out.setdefault("in_proj_bias", m + "in_proj.bias" in canon)
    out.setdefault("out_proj_bias", m + "out_proj.bias" in canon)
    out.setdefault("conv_bias", m + "conv1d.bias" in canon)
    if "lm_head.weight" not in canon:
        out["tie_embeddings"] = True
    elif "tie_embeddings" not in stated:
        lm = canon["lm_head.weight"]
        out["tie_embeddings"] = emb is not None and lm.shape == emb.shape and bool(torch.equal(lm, emb))
    return out


def load_mamba2(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> Mamba2Model:
    """Build a :class:`Mamba2Model` from a checkpoint's tensors and the configs stored with it
    (``[(where, dict)]``).  Every problem is a LoadError naming the keys involved."""
    notes: list[str] = []
    stated, layout = _config_from_files(configs, notes)
    canon, origin = _canonical_names(tensors, name)
    fields = _infer_config(canon, stated, notes)
    cfg = config_from_fields(Mamba2Config, fields, name=name, label="Mamba2", tensors=tensors)
    cfg = untied_if_the_file_says_so(cfg, "tie_embeddings", canon, "lm_head.weight", "backbone.embeddings.weight", notes)
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in canon:
        expected = {**expected, "lm_head.weight": (cfg.vocab_size, cfg.d_model)}
    what = (f"a Mamba2 model ({layout or 'layout from the weights'}: d_model={cfg.d_model}, n_layer={cfg.n_layer}, "
            f"n_heads={cfg.n_heads}, head_dim={cfg.head_dim}, d_state={cfg.d_state}, n_groups={cfg.n_groups}, "
            f"d_conv={cfg.d_conv}, vocab_size={cfg.vocab_size})")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    if unused:
        notes.append(unused_note(unused))
    weights = {cn: canon[cn] for cn in expected if cn != "lm_head.weight" or not cfg.tie_embeddings}
    model = build_model(Mamba2Model, cfg, weights, name=name, label="Mamba2", **kwargs)
    model.load_info.update({"format": fmt, "layout": layout or "inferred from the weights"})
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_mamba2
load = load_mamba2
