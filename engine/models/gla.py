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
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .family import (FamilyConfig, FamilyModel, StatedConfig, build_model, check_loaded_weights, config_from_fields,
                     probe_table, unused_note)

FAMILIES = ("gla", "retnet")
FEATURE_MAPS = {None: None, "relu": F.relu, "sigmoid": torch.sigmoid, "swish": F.silu, "silu": F.silu}
SUB = 64  #: steps per sub-chunk of the chunked recurrence
BLK = 8  #: rows per block inside a sub-chunk (GLA's pairwise sums)
TILE = 32  #: rows per tile of the implicit attention
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


# ======================================================================================
# loading: fla GLAForCausalLM / RetNetForCausalLM folders
# ======================================================================================

_GLA_KEY = re.compile(r"^(.*?)layers\.(\d+)\.attn\.gk_proj\.0\.weight$")
_LAYER_KEY = re.compile(r"^(.*?)layers\.(\d+)\.attn\.q_proj\.weight$")


def _fla_config(configs: list) -> tuple[str, dict] | None:
    for src, d in configs:
        if str(d.get("model_type", "")).lower() in FAMILIES or str(d.get("family", "")).lower() in FAMILIES:
            return src, d
    return None


def looks_like(tensors: dict, configs: list) -> bool:
    """A GLA checkpoint (``…layers.{i}.attn.gk_proj.0.weight`` tensors) or a config whose
    ``model_type`` is "gla" or "retnet"."""
    return _fla_config(configs) is not None or any(_GLA_KEY.match(k) for k in tensors)


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict]:
    """File keys -> fla ``…ForCausalLM`` names, whatever the prefix (``model.`` in fla's files, none
    in a bare ``GLAModel``)."""
    prefixes = {m.group(1) for k in tensors if (m := _LAYER_KEY.match(k))}
    if len(prefixes) != 1:
        raise LoadError(f"{name}: expected fla layer weights named …layers.{{i}}.attn.q_proj.weight under one "
                        f"prefix (found prefixes: {', '.join(repr(p) for p in sorted(prefixes)) or 'none'})")
    prefix = prefixes.pop()
    canon, origin = {}, {}
    for k, v in tensors.items():
        cn = "model." + k[len(prefix):] if k.startswith(prefix) and not k.endswith("lm_head.weight") else k
        if k.endswith("lm_head.weight"):
            cn = "lm_head.weight"
        canon[cn], origin[cn] = v, k
    return canon, origin


def _stated_fields(src: str, d: dict, name: str) -> dict:
    """Our config fields from an fla ``config.json`` (or SeqScope's own ``family`` dict)."""
    if str(d.get("family", "")).lower() in FAMILIES:
        return {k: v for k, v in d.items() if k in LinearAttentionConfig.__dataclass_fields__}
    family = str(d["model_type"]).lower()
    if d.get("attn"):
        raise LoadError(f"{src} of {name} describes a hybrid model with softmax-attention layers ({d['attn']}); "
                        "SeqScope reads pure GLA / RetNet models so far")
    act = d.get("hidden_act", "swish")
    if act not in ("swish", "silu"):
        raise LoadError(f"{src} of {name}: hidden_act {act!r} is not supported (only swish)")
    c = StatedConfig(d, src)
    out = {"family": family, "fuse_norm": c.flag("fuse_norm", True),
           "use_output_gate": c.flag("use_output_gate", True),
           "elementwise_affine": c.flag("elementwise_affine", True),
           "feature_map": d.get("feature_map"), "norm_eps": c.number("norm_eps", 1e-6),
           "tie_embeddings": c.flag("tie_word_embeddings", False)}
    out.update(c.sizes((("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"), ("vocab_size", "vocab_size"),
                        ("num_heads", "num_heads"))))
    if d.get("num_kv_heads") is not None:  # null: as many as num_heads
        out["num_kv_heads"] = c.whole("num_kv_heads")
    if family == "gla":
        out["clamp_min"] = c.number("clamp_min", None, nullable=True)
        out["gate_logit_normalizer"] = c.number("gate_logit_normalizer", 16)
        if d.get("use_short_conv"):
            out["conv_size"] = c.whole("conv_size", 4)
    return out


def _infer_fields(canon: dict, stated: dict) -> dict:
    """What the weights say (sizes, convolutions, gate rank), under what the config states."""
    out = dict(stated)
    n = 0
    while f"model.layers.{n}.attn.q_proj.weight" in canon:
        n += 1
    out.setdefault("n_layer", n)
    out.setdefault("family", "gla" if "model.layers.0.attn.gk_proj.0.weight" in canon else "retnet")
    shape = lambda key: tuple(canon[key].shape) if key in canon else None  # noqa: E731
    emb = shape("model.embeddings.weight")
    if emb and len(emb) == 2:
        out.setdefault("vocab_size", emb[0])
        out.setdefault("d_model", emb[1])
    a = "model.layers.0.attn."
    for ours, key in (("key_dim", "q_proj.weight"), ("value_dim", "o_proj.weight")):
        s = shape(a + key)
        if s and len(s) == 2:
            out[ours] = s[0] if ours == "key_dim" else s[1]
    s = shape(a + "gk_proj.0.weight")
    if s and len(s) == 2:
        out["gate_rank"] = s[0]
    s = shape("model.layers.0.mlp.gate_proj.weight")
    if s and len(s) == 2:
        out["d_ffn"] = s[0]
    s = shape(a + "q_conv1d.weight")
    if s and len(s) == 3:
        out["conv_size"] = s[2]
        out["conv_bias"] = a + "q_conv1d.bias" in canon
    out.setdefault("use_output_gate", a + "g_proj.weight" in canon)
    if "lm_head.weight" not in canon:
        out.setdefault("tie_embeddings", True)
    if "num_heads" not in out:
        raise LoadError("the number of heads is not stated (config.json num_heads) and cannot be read from the weights")
    if out.get("num_kv_heads") is None:
        out["num_kv_heads"] = 0
    return out


def load_linear_attention(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True,
                          **kwargs) -> LinearAttentionModel:
    """A :class:`LinearAttentionModel` from an fla checkpoint's tensors and the configs stored
    with it (``[(where, dict)]``).  Every problem is a LoadError naming the keys involved."""
    found = _fla_config(configs)
    stated = _stated_fields(*found, name) if found else {}
    canon, origin = _canonical_names(tensors, name)
    try:
        fields = _infer_fields(canon, stated)
    except LoadError as exc:
        raise LoadError(f"{name}: {exc}") from None
    family = fields.get("family", "gla")
    cfg = config_from_fields(LinearAttentionConfig, fields, name=name, label=family, tensors=tensors)
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in canon:
        expected["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)
    what = (f"an fla {'GLA' if family == 'gla' else 'RetNet'} model (hidden_size={cfg.d_model}, "
            f"num_hidden_layers={cfg.n_layer}, num_heads={cfg.num_heads}, num_kv_heads={cfg.num_kv_heads}, "
            f"key_dim={cfg.key_dim}, value_dim={cfg.value_dim}, short_conv={cfg.conv_size or 'no'})")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    weights = {cn: canon[cn] for cn in expected}
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    model = build_model(LinearAttentionModel, cfg, weights, name=name, label=family, **kwargs)
    model.load_info.update({"format": fmt, "layout": f"flash-linear-attention {family}"})
    if unused:
        model.load_info["notes"] = unused_note(unused)
    return model


#: the names engine.loading looks for in a family module
load = load_linear_attention
