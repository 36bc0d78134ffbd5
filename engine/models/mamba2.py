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

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{i}.state`` [d_inner, N], S as the ``state`` probe shows it, and
``layers.{i}.conv_window`` [d_conv - 1, conv_dim]: the last inputs of the convolution (the
in-projection's x, B and C parts before it, conv_dim = d_inner + 2 G N), oldest first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..probes import ProbeSpec, layer_probe
from .family import FamilyConfig, FamilyModel, probe_table
from .layer_state import StatePart
from .mamba import MambaModel
from .mamba2_scan import TILE, _per_head, ssd_attention, ssd_block

SITES = ("in", "z", "x", "B", "C", "dt", "state", "y", "gated", "mixer", "out", "attn")
#: steps per SSD block (the L x L products inside a chunk)
BLOCK = 64


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

    def state_parts(self, layer: int):
        cfg = self.config
        window = (StatePart(1, "conv_window", (cfg.d_conv - 1, cfg.conv_dim), batch_axis=1),)
        return (StatePart(0, "state", (cfg.d_inner, cfg.d_state)),) + (window if cfg.d_conv > 1 else ())

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
