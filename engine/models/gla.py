"""Gated linear attention (GLA, Yang et al. 2023) and retention (RetNet, Sun et al. 2023): one
instrumented language model for both, in the layout of ``flash-linear-attention`` (``fla``)'s
``GLAForCausalLM`` and ``RetNetForCausalLM``.  The two share everything but the decay.

The model (H heads, K = head_k_dim, V = head_v_dim; Hkv <= H key/value heads, each shared by
H / Hkv query heads)::

    x_0 = embeddings[token]
    layer i:  u_t = rmsnorm(x_t) * attn_norm                                   ("in")
              q_t = phi(c_q(W_q u)),  k_t = phi(c_k(W_k u)),  v_t = c_v(W_v u)   per head
                  c_*: optional short causal depthwise convolution + SiLU (use_short_conv)
                  phi: optional feature map (feature_map)
                  RetNet: q_t, k_t rotated by rotary embeddings at position t (halves, base 10000)
              decay, per head h (a K-vector of log decays):
                  GLA:    log a_t = max(logsigmoid(W_gk2 W_gk1 u_t + b_gk) / 16, clamp_min)  ("gate")
                  RetNet: log a = log(1 - 2^(-5 - h)), the same at every step (not a probe)
              S_t = diag(a_t) S_(t-1) + k_t^T v_t                 S: K x V per head ("state")
              o_t = (q_t / sqrt(K)) S_t                                                  ("o")
              y_t = rmsnorm_V(o_t) * g_norm * swish(W_g u_t)   per head ("g" = W_g u_t;
                    without the output gate: rmsnorm_V(o_t) * g_norm)
              x'_t = x_t + W_o y_t                              (W_o y_t: "mixer"; x'_t: "mid")
              m_t = W_down(silu(W_gate n_t) * W_up n_t),  n_t = rmsnorm(x'_t) * mlp_norm  ("mlp")
              out_t = x'_t + m_t                                                         ("out")
    logits = lm_head(rmsnorm(x_L) * norm)

RMSNorm is ``x / sqrt(mean(x^2) + norm_eps) * w`` everywhere (fla's fused norms and
``nn.RMSNorm`` compute the same).  Implicit attention ("attn"): from a zero state,
``o_i = sum_(j<=i) alpha_ij v_j`` per head with ``alpha_ij = (q_i / sqrt(K)) . (prod_(m=j+1..i) a_m
* k_j)`` (GLA: per key channel; RetNet: ``(q_i . k_j) gamma_h^(i-j) / sqrt(K)``).  The probe holds
the mean of ``|alpha_ij|`` over heads for a window of rows and columns
(:attr:`LinearAttentionModel.attention_window`); :func:`linear_attention` gives every head.

Canonical weight names are fla's: ``model.embeddings.weight``; per layer ``model.layers.{i}.``
``attn_norm.weight``, ``attn.{q,k,v,o}_proj.weight``, ``attn.g_proj.weight`` (output gate),
``attn.g_norm_swish_gate.weight`` (fused norm and gate; ``attn.g_norm.weight`` when not fused
or without the gate; absent when ``elementwise_affine`` is false), ``attn.{q,k,v}_conv1d.weight``
(+ ``.bias``) with short convolutions, GLA's ``attn.gk_proj.0.weight``, ``attn.gk_proj.1.weight``,
``attn.gk_proj.1.bias``, ``mlp_norm.weight``, ``mlp.{gate,up,down}_proj.weight``;
``model.norm.weight``, ``lm_head.weight`` (absent when tied).  A folder written by fla's
``save_pretrained`` (``config.json`` with ``model_type`` "gla" or "retnet") loads with
:func:`engine.load`.  Not supported: hybrid models with softmax-attention layers (``attn`` in
the config), and feature maps other than relu / sigmoid / swish.

How a layer runs: per chunk (aligned to multiples of ``chunk``), every per-token quantity comes
from batched matmuls over the chunk's rows; the recurrence runs in the chunked form (as fla's
chunk kernels), no loop over steps: sub-chunks of ``SUB`` steps carry the past through the state
S; inside a sub-chunk ``q_i . k_j`` is weighted by the decay between the steps, ``exp(b_i - b_j)``
(b the cumulative log decay): a matmul for RetNet's per-head decay; for GLA's per-channel decay
a matmul for the columns before each block of ``BLK`` rows (factorised through the decay just
before the block, every exponent <= 0) and pairwise sums inside the block.  Every step's state is
formed (by a loop over steps) only when the ``state`` probe is asked for.  An edit of ``state``
at step t replaces ``S_t`` (and so ``o_t`` and everything after); the chunk then runs on from
t + 1.  A step never depends on anything after it and the chunk grid is the same for every run,
so a re-run from a state kept at a chunk boundary (S and the short-convolution buffers) equals a
full run bit for bit.  Measured on this CPU (one thread, B=2, H=4, T=2048, K=64, V=128): the GLA
recurrence in 0.10 s, fla's ``naive_recurrent_gla`` loop 0.16 s; a 4-layer d=256 model 5.9k
tokens/s (GLA) and 6.5k (RetNet) with logits only.

Initial and final states of GLA (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{i}.state`` [H*K, V], S as the ``state`` probe shows it, and with short convolutions
``layers.{i}.conv_window_q``, ``conv_window_k``, ``conv_window_v`` [conv_size - 1, width]: the last
q, k and v projections entering them, oldest first.  RetNet takes none: its rotary positions
count from the start of a run, so a state alone does not say where a run goes on.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..probes import ProbeSpec, layer_probe
from .family import FamilyConfig, FamilyModel, probe_table
from .layer_state import StatePart
from .gla_scan import TILE, _recurrence, _short_conv, linear_attention

FAMILIES = ("gla", "retnet")
FEATURE_MAPS = {None: None, "relu": F.relu, "sigmoid": torch.sigmoid, "swish": F.silu, "silu": F.silu}
ROTARY_BASE = 10000.0

#: why interventions on ``attn`` are refused
NOT_EDITABLE_ATTN = "it is computed from q, k and the decays after the run and feeds nothing; " \
    "intervene on q, k, v, gate or state instead"


@dataclass(frozen=True)
class LinearAttentionConfig(FamilyConfig):
    family: str  # "gla" or "retnet"
    d_model: int  # hidden_size
    n_layer: int  # num_hidden_layers
    vocab_size: int
    num_heads: int
    key_dim: int  # hidden_size * expand_k (all query heads)
    value_dim: int  # hidden_size * expand_v
    d_ffn: int  # the MLP's intermediate_size
    num_kv_heads: int = 0  # 0: num_heads
    gate_rank: int = 16  # GLA's gate_low_rank_dim
    use_output_gate: bool = True
    fuse_norm: bool = True  # fla's fuse_norm: names the output norm g_norm_swish_gate
    elementwise_affine: bool = True  # the output norm has a weight
    feature_map: str | None = None
    conv_size: int = 0  # 0: no short convolutions
    conv_bias: bool = False
    norm_eps: float = 1e-6
    gate_logit_normalizer: float = 16.0
    clamp_min: float | None = None
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be 'gla' or 'retnet', got {self.family!r}")
        if not self.num_kv_heads:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        self.require_positive("d_model", "n_layer", "vocab_size", "num_heads", "key_dim", "value_dim", "d_ffn")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.key_dim % self.num_heads or self.value_dim % self.num_heads:
            raise ValueError(f"key_dim {self.key_dim} and value_dim {self.value_dim} must be multiples of "
                             f"num_heads {self.num_heads}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map {self.feature_map!r} is not supported (only relu, sigmoid, swish)")
        if self.family == "retnet" and self.head_k % 2:
            raise ValueError(f"RetNet's rotary embedding needs an even head_k_dim, got {self.head_k}")

    @property
    def groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def head_k(self) -> int:
        return self.key_dim // self.num_heads

    @property
    def head_v(self) -> int:
        return self.value_dim // self.num_heads

    @property
    def kv_key_dim(self) -> int:
        return self.key_dim // self.groups

    @property
    def kv_value_dim(self) -> int:
        return self.value_dim // self.groups

    @property
    def out_norm_name(self) -> str:
        return "g_norm_swish_gate" if self.fuse_norm and self.use_output_gate else "g_norm"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def canonical_weight_shapes(cfg: LinearAttentionConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (fla names), with its shape."""
    d, V = cfg.d_model, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embeddings.weight": (V, d)}
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        a = p + "attn."
        shapes[p + "attn_norm.weight"] = (d,)
        shapes[a + "q_proj.weight"] = (cfg.key_dim, d)
        shapes[a + "k_proj.weight"] = (cfg.kv_key_dim, d)
        shapes[a + "v_proj.weight"] = (cfg.kv_value_dim, d)
        if cfg.use_output_gate:
            shapes[a + "g_proj.weight"] = (cfg.value_dim, d)
        if cfg.conv_size:
            for m, width in (("q", cfg.key_dim), ("k", cfg.kv_key_dim), ("v", cfg.kv_value_dim)):
                shapes[a + f"{m}_conv1d.weight"] = (width, 1, cfg.conv_size)
                if cfg.conv_bias:
                    shapes[a + f"{m}_conv1d.bias"] = (width,)
        if cfg.family == "gla":
            shapes[a + "gk_proj.0.weight"] = (cfg.gate_rank, d)
            shapes[a + "gk_proj.1.weight"] = (cfg.kv_key_dim, cfg.gate_rank)
            shapes[a + "gk_proj.1.bias"] = (cfg.kv_key_dim,)
        shapes[a + "o_proj.weight"] = (d, cfg.value_dim)
        if cfg.elementwise_affine:
            shapes[a + cfg.out_norm_name + ".weight"] = (cfg.head_v,)
        shapes[p + "mlp_norm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (cfg.d_ffn, d)
        shapes[p + "mlp.up_proj.weight"] = (cfg.d_ffn, d)
        shapes[p + "mlp.down_proj.weight"] = (d, cfg.d_ffn)
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def retention_log_decay(num_heads: int, dtype=torch.float64) -> torch.Tensor:
    """RetNet's fixed per-head log decay ``log(1 - 2^(-5 - h))``, [num_heads]."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(dtype)


def rotary_tables(positions: torch.Tensor, dim: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, dim/2] of fla's ``RotaryEmbedding(dim)`` at ``positions`` (computed in
    float32 as fla does, in float64 for float64 models)."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, dim, 2, dtype=work) / dim))
    freqs = torch.outer(positions.to(work), inv_freq.to(positions.device))
    return torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last axis (GPT-NeoX style); ``x`` [n, B, heads, dim],
    ``cos``/``sin`` [n, dim/2]."""
    x1, x2 = x.chunk(2, -1)
    c, s = cos[:, None, None, :], sin[:, None, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


class _Layer:
    """One block's weights."""

    def __init__(self, w: dict, i: int, cfg: LinearAttentionConfig):
        p = f"model.layers.{i}."
        a = p + "attn."
        self.attn_norm, self.mlp_norm = w[p + "attn_norm.weight"], w[p + "mlp_norm.weight"]
        self.Wq, self.Wk, self.Wv, self.Wo = (w[a + f"{m}_proj.weight"] for m in "qkvo")
        self.Wg = w.get(a + "g_proj.weight")
        self.conv = {m: (w[a + f"{m}_conv1d.weight"][:, 0, :], w.get(a + f"{m}_conv1d.bias"))
                     for m in "qkv"} if cfg.conv_size else {}
        self.gk = (w[a + "gk_proj.0.weight"], w[a + "gk_proj.1.weight"], w[a + "gk_proj.1.bias"]) \
            if cfg.family == "gla" else None
        self.out_norm = w.get(a + cfg.out_norm_name + ".weight")
        self.Wgate, self.Wup, self.Wdown = (w[p + f"mlp.{m}_proj.weight"] for m in ("gate", "up", "down"))


class LinearAttentionModel(FamilyModel):
    """An instrumented GLA or RetNet language model (fla layout).  Build with :func:`engine.load`
    or from a config and canonical weights."""

    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}
    weight_shapes = staticmethod(canonical_weight_shapes)

    @property
    def architecture(self) -> str:
        return self.config.family

    def _prepare(self):
        self.embed = self._w["model.embeddings.weight"]
        self.head = self._w.get("lm_head.weight", self.embed)
        self.layers = [_Layer(self._w, i, self.config) for i in range(self.config.n_layer)]
        self._log_decay = retention_log_decay(self.config.num_heads, self.scan_dtype).to(self.device)

    @property
    def scan_dtype(self):
        """The dtype the recurrence runs in: float32 for half-precision models."""
        return self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32

    def log_decay(self, layer: int | None = None) -> torch.Tensor:
        """RetNet's per-head log decay ``log gamma_h`` [num_heads] (the same in every layer)."""
        return self._log_decay

    def state_units(self, heads, keys=None, values=None) -> list[int]:
        """Flat unit indices of the ``state`` probe (``(head * K + key) * V + value``) for
        interventions: all keys / values of the given heads unless narrowed."""
        cfg = self.config
        as_list = lambda v, n: list(range(n)) if v is None else ([int(v)] if isinstance(v, int) else list(v))  # noqa: E731
        return [(h * cfg.head_k + c) * cfg.head_v + d for h in as_list(heads, cfg.num_heads)
                for c in as_list(keys, cfg.head_k) for d in as_list(values, cfg.head_v)]

    # -- probes ---------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        cfg = self.config
        return (("in", "q", "k", "v") + (("gate",) if cfg.family == "gla" else ()) + ("state", "o")
                + (("g",) if cfg.use_output_gate else ()) + ("mixer", "mid", "mlp", "out", "attn"))

    @property
    def ATTENTION_NEEDS(self) -> frozenset:  # noqa: N802 - the attribute ChunkedLayerModel reads
        return frozenset({"q", "k"} | ({"gate"} if self.config.family == "gla" else set()))

    def _site_shapes(self) -> dict:
        cfg = self.config
        return {"in": (cfg.d_model,), "q": (cfg.key_dim,), "k": (cfg.kv_key_dim,), "v": (cfg.kv_value_dim,),
                "gate": (cfg.kv_key_dim,), "state": (cfg.num_heads * cfg.head_k, cfg.head_v),
                "o": (cfg.value_dim,), "g": (cfg.value_dim,), "mixer": (cfg.d_model,), "mid": (cfg.d_model,),
                "mlp": (cfg.d_model,), "out": (cfg.d_model,)}

    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        H, K, V = cfg.num_heads, cfg.head_k, cfg.head_v
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        decay = ("a_t = exp(gate_t), per key channel" if cfg.family == "gla" else
                 "gamma_h = 1 - 2^(-5-h), fixed per head h")
        pos = ", rotated by rotary embeddings at position t" if cfg.family == "retnet" else ""
        kv = f" ({cfg.num_kv_heads} key/value heads, each shared by {cfg.groups} query heads)" if cfg.groups > 1 else ""
        desc = {
            "in": "u_t = rmsnorm(x_t) * attn_norm: the input of the attention block",
            "q": f"query q_t per head ({H} x {K}, flattened h*{K}+c){pos}; o_t = (q_t / sqrt({K})) S_t",
            "k": f"key k_t per head{kv}{pos}; step t writes k_t^T v_t into the state",
            "v": f"value v_t per head{kv}",
            "gate": "log decay per key channel, log a_t = max(logsigmoid(gk_proj(u_t)) / "
                    f"{cfg.gate_logit_normalizer:g}, clamp_min={cfg.clamp_min}); S_t = diag(a_t) S_(t-1) + k_t^T v_t",
            "state": f"state S_t per head after step t, ({H}*{K}) x {V}: row h*{K}+c, column value channel; "
                     f"S_t = decay S_(t-1) + k_t^T v_t with decay {decay} (interventions index it flattened, "
                     "see state_units)",
            "o": f"recurrence output o_t = (q_t / sqrt({K})) S_t per head ({H} x {V}), before the norm and gate",
            "g": "output gate g_t = g_proj(u_t); the block multiplies rmsnorm(o_t) by swish(g_t)",
            "mixer": "attention block output o_proj(rmsnorm(o_t) * g_norm" + (" * swish(g_t)" if cfg.use_output_gate
                                                                             else "") + "), before the residual add (mid = x_t + mixer_t)",
            "mid": "residual stream after the attention block's add, x_t + mixer_t: the MLP block's input",
            "mlp": "MLP output down(silu(gate(n_t)) * up(n_t)), n_t = rmsnorm(mid_t) * mlp_norm, before the "
                   "residual add",
            "out": "residual stream after the block: mid_t + mlp_t = x_t + mixer_t + mlp_t",
            "attn": f"implicit attention mean_h |alpha_ij| over heads, alpha_ij = (q_i / sqrt({K})) . "
                    f"(prod_(m=j+1..i) a_m * k_j) (o_i = sum_j alpha_ij v_j from a zero state; decay {decay}); "
                    f"rows {r0}..{r1 - 1}, column m is key step {c0}+m; 0 where j > i, NaN in rows outside the window",
        }
        shapes = self._site_shapes()
        shapes["attn"] = (c1 - c0,)
        return probe_table(cfg.n_layer, self.sites, {site: (shapes[site], text) for site, text in desc.items()},
                           embed=(cfg.d_model, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores lm_head(rmsnorm(x) * norm) (before softmax)"),
                           dims={"state": ("token", "unit", "state")})

    # -- the forward pass -----------------------------------------------------------------
    def state_parts(self, layer: int):
        cfg = self.config
        if cfg.family != "gla":
            return ()
        K = cfg.conv_size - 1
        windows = tuple(StatePart(i + 1, f"conv_window_{m}", (K, width), batch_axis=1)
                        for i, (m, width) in enumerate(zip("qkv", (cfg.key_dim, cfg.kv_key_dim, cfg.kv_value_dim))))
        state = StatePart(0, "state", (cfg.num_heads * cfg.head_k, cfg.head_v))
        return (state,) + (windows if cfg.conv_size and K > 0 else ())

    def initial_state(self, batch: int):
        cfg = self.config
        S = torch.zeros(batch, cfg.num_heads, cfg.head_k, cfg.head_v, dtype=self.scan_dtype, device=self.device)
        K = max(cfg.conv_size - 1, 0)
        bufs = tuple(torch.zeros(K, batch, width, dtype=self.dtype, device=self.device)
                     for width in (cfg.key_dim, cfg.kv_key_dim, cfg.kv_value_dim)) if cfg.conv_size else ()
        return (S,) + bufs

    def _norm(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.config.norm_eps)

    def _embed_tokens(self, x):
        return F.embedding(x, self.embed)

    def _logits(self, h):
        return F.linear(self._norm(h, self._w["model.norm.weight"]), self.head)

    def _heads(self, x, size):
        """[n, B, heads*size] -> [n, B, num_heads, size], key/value heads repeated for their groups."""
        x = x.reshape(*x.shape[:2], -1, size)
        return x.repeat_interleave(self.config.groups, 2) if x.shape[2] != self.config.num_heads else x

    def _layer_chunk(self, k, h, a, state, edits, record):
        cfg = self.config
        lay = self.layers[k]
        n, B = h.shape[:2]
        S, bufs = state[0], state[1:]

        def edit(site, v):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                    v = e.apply_all(v, a)
            return v

        u = edit("in", self._norm(h, lay.attn_norm))
        proj = [F.linear(u, lay.Wq), F.linear(u, lay.Wk), F.linear(u, lay.Wv)]
        new_bufs = ()
        if cfg.conv_size:
            proj, new_bufs = zip(*(_short_conv(x, buf, *lay.conv[m]) for x, buf, m in zip(proj, bufs, "qkv")))
        q, key, v = proj
        phi = FEATURE_MAPS[cfg.feature_map]
        if phi is not None:
            q, key = phi(q), phi(key)
        if cfg.family == "retnet":
            cos, sin = rotary_tables(torch.arange(a, a + n, device=h.device), cfg.head_k, h.dtype)
            q = apply_rotary(q.reshape(n, B, -1, cfg.head_k), cos, sin).reshape(n, B, -1)
            key = apply_rotary(key.reshape(n, B, -1, cfg.head_k), cos, sin).reshape(n, B, -1)
        q, key, v = edit("q", q), edit("k", key), edit("v", v)
        vals = {"in": u, "q": q, "k": key, "v": v}
        sd = self.scan_dtype
        if cfg.family == "gla":
            w0, w1, b1 = lay.gk
            gate = F.logsigmoid(F.linear(F.linear(u, w0), w1, b1)) / cfg.gate_logit_normalizer
            if cfg.clamp_min is not None:
                gate = torch.clamp_min(gate, cfg.clamp_min)
            gate = edit("gate", gate)
            vals["gate"] = gate
            log_a = self._heads(gate, cfg.head_k).to(sd)
        else:
            log_a = self._log_decay[None, None, :, None].expand(n, 1, -1, 1)
        qh = self._heads(q, cfg.head_k).to(sd) * cfg.head_k ** -0.5
        o, S, states = _recurrence(qh, self._heads(key, cfg.head_k).to(sd), self._heads(v, cfg.head_v).to(sd),
                                   log_a, S, a, edits.get("state", ()), "state" in record)
        if states is not None:
            vals["state"] = states.reshape(n, B, -1, cfg.head_v)
        o = edit("o", o.reshape(n, B, -1).to(h.dtype))
        y = F.rms_norm(o.reshape(n, B, cfg.num_heads, cfg.head_v), (cfg.head_v,), lay.out_norm, cfg.norm_eps)
        y = y.reshape(n, B, -1)
        if cfg.use_output_gate:
            g = edit("g", F.linear(u, lay.Wg))
            vals["g"] = g
            y = y * F.silu(g)
        mixer = edit("mixer", F.linear(y, lay.Wo))
        h2 = edit("mid", h + mixer)
        m = self._norm(h2, lay.mlp_norm)
        mlp = edit("mlp", F.linear(F.silu(F.linear(m, lay.Wgate)) * F.linear(m, lay.Wup), lay.Wdown))
        out = edit("out", h2 + mlp)
        vals.update({"o": o, "mixer": mixer, "mid": h2, "mlp": mlp, "out": out})
        return vals, (S,) + tuple(new_bufs)

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe of layer ``k``: rows before ``s`` from the previous run, whole row
        tiles from the one holding ``s`` on recomputed."""
        cfg = self.config
        (r0, r1), cols = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, self._window.width), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[name][:s]
        hi = min(r1, T)
        if max(r0, s) >= hi:
            return res
        first = r0 + max(0, (s - r0) // TILE) * TILE
        q = out[layer_probe(k, "q")]
        key = out[layer_probe(k, "k")]
        for b in range(B):
            qh = self._heads(q[:hi, b:b + 1], cfg.head_k)[:, 0]
            kh = self._heads(key[:hi, b:b + 1], cfg.head_k)[:, 0]
            if cfg.family == "gla":
                log_a = self._heads(out[layer_probe(k, "gate")][:hi, b:b + 1], cfg.head_k)[:, 0]
            else:
                log_a = self._log_decay[:, None]
            att = linear_attention(qh, kh, log_a, (first, hi), cols)
            res[first:hi, b] = att.to(self.dtype)
        return res


def attention_from_trace(trace, model: LinearAttentionModel, layer: int, rows, cols, *, sequence: int = 0,
                         reduce="mean_abs"):
    """Implicit attention of ``layer`` for one sequence of a trace that captured
    ``layers.{layer}.q``, ``.k`` (and ``.gate`` for GLA).  Returns a NumPy array."""
    cfg = model.config
    name = f"layers.{layer}."
    q = torch.tensor(trace.array(name + "q", sequence))
    k = torch.tensor(trace.array(name + "k", sequence))
    T = q.shape[0]
    heads = lambda x, size: x.reshape(T, -1, size).repeat_interleave(cfg.num_heads * size // x.shape[1], 1)  # noqa: E731
    if cfg.family == "gla":
        log_a = heads(torch.tensor(trace.array(name + "gate", sequence)), cfg.head_k)
    else:
        log_a = retention_log_decay(cfg.num_heads)[:, None]
    return linear_attention(heads(q, cfg.head_k), heads(k, cfg.head_k), log_a, rows, cols, reduce=reduce).numpy()
