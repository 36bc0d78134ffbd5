"""DeltaNet and gated DeltaNet: instrumented linear-attention language models with the delta
rule, in the layout of ``flash-linear-attention`` (fla) folders: ``DeltaNetForCausalLM``
(``model_type`` "delta_net") and ``GatedDeltaNetForCausalLM`` (``model_type`` "gated_deltanet").

The model (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length"; Yang et al. 2025, "Gated Delta Networks"), per value head h,
with key width d_k and value width d_v::

    x_0 = embed[token]
    layer i:  n = rmsnorm(x)                                         attn_norm
              q, k, v = conv_q(W_q n), conv_k(W_k n), conv_v(W_v n)  causal depthwise convs of
                        width conv_size, each followed by silu (q and k only when
                        qk_activation is silu; else relu / elu+1 / identity after the conv)
              q, k = q / ||q||, k / ||k||                            qk_norm "l2" (eps 1e-6 inside
                        the root), or q / sum(q), k / sum(k) for "sum"
              beta = sigmoid(W_b n)                                  per value head; 1 without
                        use_beta; 2 sigmoid(W_b n) with allow_neg_eigval (gated only)
              a = exp(-exp(A_log) softplus(W_a n + dt_bias))         gated only (the "decay"),
                        per value head; 1 for DeltaNet
              S_t = a_t (I - beta_t k_t k_t^T) S_(t-1) + beta_t k_t v_t^T    S [d_k, d_v], S_(-1) = 0
              o_t = S_t^T q_t / sqrt(d_k)
              y = rmsnorm_head(o) (* silu(W_g n) with use_gate)      o_norm, per head
              x = x + W_o y
              x = x + down(silu(gate(m)) * up(m)),  m = rmsnorm(x)   mlp_norm, swiglu MLP
    logits = lm_head(rmsnorm(x))                                     model.norm

DeltaNet has as many value heads as q/k heads (d_k = hidden * expand_k / num_heads, d_v =
hidden * expand_v / num_heads); gated DeltaNet has d_k = head_dim, d_v = head_dim * expand_v,
always silu and l2 on q and k, and may give each q/k head several value heads (num_v_heads:
value head h reads q/k head h // (num_v_heads / num_heads)).  Without ``use_short_conv`` the
convolutions are left out (q, k keep their activation and v its silu).  Canonical weight names
are fla's: ``model.embeddings.weight``; per layer ``model.layers.{i}.attn_norm.weight``,
``attn.{q,k,v}_proj.weight``, ``attn.b_proj.weight`` (use_beta), ``attn.a_proj.weight``,
``attn.A_log``, ``attn.dt_bias`` (gated), ``attn.{q,k,v}_conv1d.weight`` [width, 1, conv_size]
(+ ``.bias`` with conv_bias), ``attn.g_proj.weight`` (use_gate), ``attn.o_norm.weight`` [d_v],
``attn.o_proj.weight``, ``mlp_norm.weight``, ``mlp.{gate,up,down}_proj.weight``;
``model.norm.weight``, ``lm_head.weight`` (absent when tied).  Hybrid models (fla's ``attn``
config: softmax attention in some layers) are refused.

Probe sites of layer i: ``in`` (n), ``q``, ``k`` (after activation and normalisation, without
the 1/sqrt(d_k) scale), ``v``, ``beta``, ``decay`` (gated), ``state`` (S_t per value head
[HV, d_k, d_v], recorded only when asked for), ``o`` (the delta-rule readout), ``g`` (silu of
the gate, with use_gate), ``y`` (what o_proj reads), ``mixer`` (o_proj(y), before the residual
add), ``mid`` (the residual stream after the mixer's add), ``mlp`` (the MLP's output), ``out`` (the residual stream after the block) and ``attn``:
the implicit attention ``o_i = sum_j alpha_ij v_j`` with, per value head,

    alpha_ij = beta_j k_j^T a_(j+1) (I - beta_(j+1) k_(j+1) k_(j+1)^T) ... a_i (I - beta_i k_i k_i^T) q_i / sqrt(d_k)

(0 for j > i).  Since the delta rule is linear in v, row i of alpha over a window of columns is
the readout of the same delta rule run with one-hot values e_j at the window's columns (and 0
elsewhere): :func:`delta_rule_attention` computes exactly that, only for the window's rows and
columns, so a long input never costs T^2.

How a layer runs
----------------
Chunk by chunk, every per-token quantity at once; the delta rule in the chunked form of Yang
et al. on sub-chunks of ``SUB`` steps.  With the "pseudo-values" u_t = beta_t (v_t - S'_t^T k_t),
S'_t = a_t S_(t-1), and G_t = a_0 ... a_t within the sub-chunk (G = 1 for DeltaNet):
S_t = G_t S_0 + sum_(j<=t) (G_t / G_j) k_j u_j^T, and U solves the unit lower-triangular system
(I + diag(beta) tril((G_t / G_j) K K^T, -1)) U = diag(beta) (V - diag(G) K S_0) (one
``solve_triangular`` per sub-chunk: no Python loop over steps); then
O = diag(G) Q S_0 + tril((G_t / G_j) Q K^T) U.  The ratios G_t / G_j come from a cumulative sum
of log a in float64.  The full per-step state is built only when ``state`` is asked for.  An
intervention on ``state`` at step t splits the sub-chunk there: the state after step t is
edited, o_t is read again from it, and the rest of the sub-chunk runs again from it (the steps
up to t come from the same call as in a run without the edit, so they are bit-identical).  The
prefix cache keeps S and the three convolution buffers (the last conv_size - 1 projections).

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{i}.state`` [v_heads, head_k, head_v], S as the ``state`` probe shows it, and with the
short convolutions ``layers.{i}.conv_window_q``, ``conv_window_k`` [conv_size - 1, key_dim] and
``conv_window_v`` [conv_size - 1, value_dim]: the last q, k and v projections entering them,
oldest first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..probes import ProbeSpec, layer_probe
from .deltanet_scan import SUB, delta_rule_attention, delta_rule_chunk, log_decay, state_after, states_after_each_step
from .family import FamilyConfig, FamilyModel, probe_table
from .layer_state import StatePart

#: the epsilon fla's l2norm kernel adds under the root
L2_EPS = 1e-6

NOT_EDITABLE_ATTN = "it is computed from q, k and beta after the run and feeds nothing; " \
    "intervene on q, k, v, beta or state instead"


@dataclass(frozen=True)
class DeltaNetConfig(FamilyConfig):
    d_model: int
    n_layer: int
    vocab_size: int
    num_heads: int  # of q and k
    key_dim: int  # all heads: hidden_size * expand_k (gated: num_heads * head_dim)
    value_dim: int  # all heads: hidden_size * expand_v (gated: num_v_heads * head_dim * expand_v)
    intermediate_size: int
    gated: bool = False  # the gated delta rule (fla gated_deltanet)
    num_v_heads: int = 0  # 0: num_heads; more: each q/k head serves num_v_heads / num_heads value heads
    allow_neg_eigval: bool = False  # beta = 2 sigmoid(.)
    use_beta: bool = True
    use_gate: bool = False
    use_short_conv: bool = True
    conv_size: int = 4
    conv_bias: bool = False
    qk_activation: str = "silu"
    qk_norm: str = "l2"
    norm_eps: float = 1e-6
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.qk_activation not in ("silu", "relu", "elu", "identity"):
            raise ValueError(f"qk_activation must be silu, relu, elu or identity, got {self.qk_activation!r}")
        if self.qk_norm not in ("l2", "sum"):
            raise ValueError(f"qk_norm must be 'l2' or 'sum', got {self.qk_norm!r}")
        self.require_positive("d_model", "n_layer", "vocab_size", "num_heads", "key_dim", "value_dim",
                              "intermediate_size")
        if not self.num_v_heads:
            object.__setattr__(self, "num_v_heads", self.num_heads)
        if self.key_dim % self.num_heads or self.value_dim % self.num_v_heads or self.num_v_heads % self.num_heads:
            raise ValueError(f"key_dim {self.key_dim} must be a multiple of num_heads {self.num_heads}, value_dim "
                             f"{self.value_dim} one of num_v_heads {self.num_v_heads}, and that one of num_heads")
        if self.gated and not self.use_beta:
            raise ValueError("the gated delta rule always has beta (b_proj)")
        if self.use_short_conv and self.conv_size < 1:
            raise ValueError(f"conv_size must be positive, got {self.conv_size}")

    @property
    def head_k(self) -> int:
        return self.key_dim // self.num_heads

    @property
    def head_v(self) -> int:
        return self.value_dim // self.num_v_heads

    @property
    def family(self) -> str:
        return "gated_deltanet" if self.gated else "deltanet"

    def family_tag(self) -> str:
        return self.family


def canonical_weight_shapes(cfg: DeltaNetConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of a model with this config (fla names), with its shape."""
    d, dk, dv, HV, K = cfg.d_model, cfg.key_dim, cfg.value_dim, cfg.num_v_heads, cfg.conv_size
    shapes: dict[str, tuple[int, ...]] = {"model.embeddings.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        a = p + "attn."
        shapes[p + "attn_norm.weight"] = (d,)
        shapes[a + "q_proj.weight"] = (dk, d)
        shapes[a + "k_proj.weight"] = (dk, d)
        shapes[a + "v_proj.weight"] = (dv, d)
        if cfg.use_beta:
            shapes[a + "b_proj.weight"] = (HV, d)
        if cfg.gated:
            shapes[a + "a_proj.weight"] = (HV, d)
            shapes[a + "A_log"] = (HV,)
            shapes[a + "dt_bias"] = (HV,)
        if cfg.use_short_conv:
            for name, width in (("q", dk), ("k", dk), ("v", dv)):
                shapes[a + f"{name}_conv1d.weight"] = (width, 1, K)
                if cfg.conv_bias:
                    shapes[a + f"{name}_conv1d.bias"] = (width,)
        if cfg.use_gate:
            shapes[a + "g_proj.weight"] = (dv, d)
        shapes[a + "o_norm.weight"] = (cfg.head_v,)
        shapes[a + "o_proj.weight"] = (d, dv)
        shapes[p + "mlp_norm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, d)
        shapes[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, d)
        shapes[p + "mlp.down_proj.weight"] = (d, cfg.intermediate_size)
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


# ======================================================================================
# the model
# ======================================================================================


def _working_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rms(x, w, eps):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def _qk_activation(x, kind):
    if kind == "relu":
        return F.relu(x)
    if kind == "elu":
        return F.elu(x) + 1
    return x  # silu is applied with the convolution; identity


def _qk_normalise(x, kind):
    if kind == "l2":
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + L2_EPS)
    return x / x.sum(-1, keepdim=True)


class DeltaNetModel(FamilyModel):
    """An instrumented DeltaNet language model (fla ``delta_net`` layout).  Build it with
    :func:`engine.load` or from a config and canonical weights.  ``attention_window``: see
    :class:`engine.models.mamba.AttentionWindow`."""

    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}
    weight_shapes = staticmethod(canonical_weight_shapes)

    @property
    def architecture(self) -> str:
        return self.config.family

    @property
    def scale(self) -> float:
        return 1 / math.sqrt(self.config.head_k)

    def state_units(self, head: int, keys=None, values=None) -> list[int]:
        """Flat unit indices of the ``state`` probe (head, key row, value column) for
        interventions: all keys / values of ``head`` unless given."""
        cfg = self.config
        keys = range(cfg.head_k) if keys is None else ([keys] if isinstance(keys, (int, np.integer)) else keys)
        values = range(cfg.head_v) if values is None else (
            [values] if isinstance(values, (int, np.integer)) else values)
        return [(int(head) * cfg.head_k + int(i)) * cfg.head_v + int(j) for i in keys for j in values]

    # -- probes ---------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        decay = ("decay",) if self.config.gated else ()
        gate = ("g",) if self.config.use_gate else ()
        return ("in", "q", "k", "v", "beta") + decay + ("state", "o") + gate + ("y", "mixer", "mid", "mlp", "out", "attn")

    @property
    def ATTENTION_NEEDS(self) -> frozenset:  # noqa: N802 - the attribute ChunkedLayerModel reads
        return frozenset({"q", "k", "beta", "decay"} if self.config.gated else {"q", "k", "beta"})

    def _site_shapes(self):
        cfg = self.config
        HV = cfg.num_v_heads
        return {"in": (cfg.d_model,), "q": (cfg.key_dim,), "k": (cfg.key_dim,), "v": (cfg.value_dim,),
                "beta": (HV,), "decay": (HV,), "state": (HV, cfg.head_k, cfg.head_v),
                "o": (cfg.value_dim,), "g": (cfg.value_dim,), "y": (cfg.value_dim,), "mixer": (cfg.d_model,),
                "mid": (cfg.d_model,), "mlp": (cfg.d_model,), "out": (cfg.d_model,)}

    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        proj = (lambda w: f"conv({w} in)") if cfg.use_short_conv else (lambda w: f"{w} in")  # noqa: E731
        two = "2 " if cfg.allow_neg_eigval else ""
        decayed = "decay_t " if cfg.gated else ""
        desc = {
            "in": "rmsnorm(x) (attn_norm): the input of the q, k, v, beta and gate projections",
            "q": f"query q_t = {cfg.qk_norm}-normalised {cfg.qk_activation}({proj('W_q')}), heads side by side "
                 "(without the 1/sqrt(d_k) scale" + (f"; conv: causal depthwise, width {cfg.conv_size})"
                                                     if cfg.use_short_conv else ")"),
            "k": f"key k_t = {cfg.qk_norm}-normalised {cfg.qk_activation}({proj('W_k')}), heads side by side",
            "v": f"value v_t = silu({proj('W_v')}), heads side by side",
            "beta": f"writing strength beta_t per value head: {two}sigmoid(W_b in)" if cfg.use_beta else
                    "writing strength beta_t per head (1: the model has no b_proj)",
            "decay": "forget gate decay_t = exp(-exp(A_log) softplus(W_a in + dt_bias)) per value head, "
                     "scales the state before each write",
            "state": f"fast-weight state S_t = {decayed}(I - beta_t k_t k_t^T) S_(t-1) + beta_t k_t v_t^T per value "
                     "head, head x d_k x d_v (interventions index it flattened: (head*d_k + key)*d_v + value)",
            "o": "delta-rule readout o_t = S_t^T q_t / sqrt(d_k), heads side by side",
            "g": "output gate silu(W_g in), multiplies the normalised readout",
            "y": "rmsnorm of each head's readout (o_norm)" + (" times the gate" if cfg.use_gate else "")
                 + ": the input of o_proj",
            "mixer": "mixer output o_proj(y), before the residual add (mid = x + mixer)",
            "mid": "residual stream after the mixer's add: x + mixer (x + o_proj(y)), the MLP block's input",
            "mlp": "swiglu MLP output down(silu(gate(m)) * up(m)), m = rmsnorm(mid), before the residual add",
            "out": "residual stream after the block: mid + mlp",
            "attn": f"implicit attention mean_h |alpha_ij| over heads, alpha_ij = beta_j k_j^T (prod_(m=j+1..i) "
                    f"{decayed.replace('_t', '_m')}(I - beta_m k_m k_m^T)) q_i / sqrt(d_k) (o_i = sum_j alpha_ij v_j); "
                    f"rows {r0}..{r1 - 1}, "
                    f"column m is key step {c0}+m; 0 where j > i, NaN in rows outside the window",
        }
        shapes = {**self._site_shapes(), "attn": (c1 - c0,)}
        dims = {"state": ("token", "head", "key", "value"), "beta": ("token", "head"), "decay": ("token", "head")}
        return probe_table(cfg.n_layer, self.sites, {site: (shapes[site], text) for site, text in desc.items()},
                           embed=(cfg.d_model, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores lm_head(rmsnorm(x)) (before softmax)"), dims=dims)

    # -- forward --------------------------------------------------------------------------
    def state_parts(self, layer: int):
        cfg = self.config
        K = cfg.conv_size - 1
        windows = (StatePart(1, "conv_window_q", (K, cfg.key_dim), batch_axis=1),
                   StatePart(2, "conv_window_k", (K, cfg.key_dim), batch_axis=1),
                   StatePart(3, "conv_window_v", (K, cfg.value_dim), batch_axis=1))
        state = StatePart(0, "state", (cfg.num_v_heads, cfg.head_k, cfg.head_v))
        return (state,) + (windows if cfg.use_short_conv and K > 0 else ())

    def initial_state(self, batch: int):
        cfg = self.config
        z = dict(dtype=self.dtype, device=self.device)
        S = torch.zeros(batch, cfg.num_v_heads, cfg.head_k, cfg.head_v, **z)
        K = cfg.conv_size - 1 if cfg.use_short_conv else 0
        return (S, torch.zeros(K, batch, cfg.key_dim, **z), torch.zeros(K, batch, cfg.key_dim, **z),
                torch.zeros(K, batch, cfg.value_dim, **z))

    def _embed_tokens(self, x):
        return F.embedding(x, self._w["model.embeddings.weight"])

    def _logits(self, h):
        w = self._w
        return F.linear(_rms(h, w["model.norm.weight"], self.config.norm_eps), w.get("lm_head.weight",
                                                                                  w["model.embeddings.weight"]))

    def _short_conv(self, p, name, x, buf):
        """Causal depthwise convolution of projections ``x`` [n, B, width] continuing after the
        buffer ``buf`` (the previous conv_size - 1 projections); returns (result, new buffer)."""
        cfg = self.config
        if not cfg.use_short_conv:
            return x, buf
        K = cfg.conv_size
        wc = self._w[p + f"attn.{name}_conv1d.weight"][:, 0, :]
        xc = torch.cat([buf, x])
        n = x.shape[0]
        c = xc[0:n] * wc[:, 0]
        for j in range(1, K):
            c = c + xc[j:j + n] * wc[:, j]
        bias = self._w.get(p + f"attn.{name}_conv1d.bias")
        return (c if bias is None else c + bias), xc[n:].clone()

    def _layer_chunk(self, k, x, a, state, edits, record):
        cfg = self.config
        w = self._w
        p = f"model.layers.{k}."
        n, B = x.shape[:2]
        H, HV, dk, dv = cfg.num_heads, cfg.num_v_heads, cfg.head_k, cfg.head_v
        S, buf_q, buf_k, buf_v = state

        def edit(site, val):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                    val = e.apply_all(val, a)
            return val

        hin = edit("in", _rms(x, w[p + "attn_norm.weight"], cfg.norm_eps))
        qc, buf_q = self._short_conv(p, "q", F.linear(hin, w[p + "attn.q_proj.weight"]), buf_q)
        kc, buf_k = self._short_conv(p, "k", F.linear(hin, w[p + "attn.k_proj.weight"]), buf_k)
        vc, buf_v = self._short_conv(p, "v", F.linear(hin, w[p + "attn.v_proj.weight"]), buf_v)
        if cfg.qk_activation == "silu":
            qc, kc = F.silu(qc), F.silu(kc)
        q = _qk_normalise(_qk_activation(qc.view(n, B, H, dk), cfg.qk_activation), cfg.qk_norm)
        kk = _qk_normalise(_qk_activation(kc.view(n, B, H, dk), cfg.qk_activation), cfg.qk_norm)
        q = edit("q", q.reshape(n, B, H * dk))
        kk = edit("k", kk.reshape(n, B, H * dk))
        v = edit("v", F.silu(vc))
        beta = torch.sigmoid(F.linear(hin, w[p + "attn.b_proj.weight"])) if cfg.use_beta else x.new_ones(n, B, HV)
        beta = edit("beta", 2 * beta if cfg.allow_neg_eigval else beta)
        vals = {"in": hin, "q": q, "k": kk, "v": v, "beta": beta}
        log_g = None
        if cfg.gated:
            vals["decay"] = edit("decay", self._decay(p, hin))
            log_g = log_decay(vals["decay"])

        o, S, states = self._delta_rule(q, kk, v, beta, log_g, S, a, edits.get("state", ()), "state" in record)
        o = vals["o"] = edit("o", o)
        y = _rms(o.view(n, B, HV, dv), w[p + "attn.o_norm.weight"], cfg.norm_eps).reshape(n, B, HV * dv)
        if cfg.use_gate:
            g = edit("g", F.silu(F.linear(hin, w[p + "attn.g_proj.weight"])))
            y = y * g
            vals["g"] = g
        y = edit("y", y)
        mixer = edit("mixer", F.linear(y, w[p + "attn.o_proj.weight"]))
        mid = edit("mid", x + mixer)
        mlp = edit("mlp", self._swiglu_mlp(p, _rms(mid, w[p + "mlp_norm.weight"], cfg.norm_eps)))
        vals.update({"y": y, "mixer": mixer, "mid": mid, "mlp": mlp, "out": edit("out", mid + mlp)})
        if states is not None:
            vals["state"] = states
        return vals, (S, buf_q, buf_k, buf_v)

    def _decay(self, p, hin):
        """The gated rule's decay exp(-exp(A_log) softplus(W_a in + dt_bias)), per value head."""
        w = self._w
        return torch.exp(-torch.exp(w[p + "attn.A_log"]) * F.softplus(F.linear(hin, w[p + "attn.a_proj.weight"])
                                                                        + w[p + "attn.dt_bias"]))

    def _swiglu_mlp(self, p, m):
        w = self._w
        hidden = F.silu(F.linear(m, w[p + "mlp.gate_proj.weight"])) * F.linear(m, w[p + "mlp.up_proj.weight"])
        return F.linear(hidden, w[p + "mlp.down_proj.weight"])

    def _value_heads(self, x, n, B):
        """q or k [n, B, key_dim] -> [B, num_v_heads, n, d_k]: each q/k head repeated for the value
        heads it serves (value head h reads q/k head h // (num_v_heads / num_heads))."""
        cfg = self.config
        x = x.reshape(n, B, cfg.num_heads, cfg.head_k).permute(1, 2, 0, 3)
        return x.repeat_interleave(cfg.num_v_heads // cfg.num_heads, dim=1) if cfg.num_v_heads > cfg.num_heads else x

    def _delta_rule(self, q, k, v, beta, log_g, S, a, state_edits, want_states):
        """The delta rule over a chunk of steps ``a..a+n-1`` (``q``, ``k``, ``v`` [n, B, width],
        ``beta`` and the log decays ``log_g`` (None for DeltaNet) [n, B, HV]) on sub-chunks of ``SUB`` steps,
        split where ``state`` is edited.  Returns (o [n, B, value_dim], the state after the chunk,
        the states [n, B, HV, d_k, d_v] when asked for, else None).  Half precision runs in
        float32 here (the triangular solve has no half-precision CPU kernel)."""
        cfg = self.config
        n, B = q.shape[:2]
        H, dk, dv = cfg.num_v_heads, cfg.head_k, cfg.head_v
        dtype = q.dtype
        q, k, v, beta, S = (x.to(_working_dtype(dtype)) for x in (q, k, v, beta, S))
        qh, kh = self._value_heads(q * self.scale, n, B), self._value_heads(k, n, B)
        vh = v.reshape(n, B, H, dv).permute(1, 2, 0, 3)
        bh = beta.permute(1, 2, 0)
        gh = None if log_g is None else log_g.permute(1, 2, 0)
        part = lambda x, seg: None if x is None else x[:, :, seg]  # noqa: E731
        o = q.new_empty(B, H, n, dv)
        states = q.new_empty(B, H, n, dk, dv) if want_states else None
        edit_steps = sorted({int(t) - a for e in state_edits for t in e.steps if a <= t < a + n})
        for s0 in range(0, n, SUB):  # the sub-chunk grid is fixed relative to the chunk
            s1 = min(s0 + SUB, n)
            first = s0
            while first < s1:
                # always to the end of the sub-chunk, so that the steps before an edit are
                # computed exactly as in a run without it
                seg = slice(first, s1)
                o[:, :, seg], U, S_end = delta_rule_chunk(qh[:, :, seg], kh[:, :, seg], vh[:, :, seg], bh[:, :, seg], S,
                                                          part(gh, seg))
                if states is not None:
                    states[:, :, seg] = states_after_each_step(kh[:, :, seg], U, S, part(gh, seg))
                edit_at = next((t for t in edit_steps if first <= t < s1), None)
                if edit_at is None:
                    S = S_end
                    break
                # the state after step `edit_at`, edited; its readout again; the rest from it
                flat = state_after(kh[:, :, seg], U, S, part(gh, seg), edit_at + 1 - first).reshape(B, H * dk * dv)
                for e in state_edits:
                    flat = e.apply_step(flat, a + edit_at)
                S = flat.reshape(B, H, dk, dv)
                o[:, :, edit_at] = (qh[:, :, edit_at, None, :] @ S)[:, :, 0]
                if states is not None:
                    states[:, :, edit_at] = S
                first = edit_at + 1
        o = o.permute(2, 0, 1, 3).reshape(n, B, H * dv).to(dtype)
        return o, S.to(dtype), (states.permute(2, 0, 1, 3, 4).to(dtype) if states is not None else None)

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe: the whole window again whenever one of its rows may have changed
        (so a re-run computes it exactly as a full run)."""
        cfg = self.config
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, c1 - c0), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[name][:s]
        hi = min(r1, T)
        if r0 < hi and s < hi:
            q, kk, beta = (out[layer_probe(k, site)].to(_working_dtype(self.dtype)) for site in ("q", "k", "beta"))
            qh, kh = self._value_heads(q * self.scale, T, B), self._value_heads(kk, T, B)  # [B, HV, T, d_k]
            for b in range(B):
                g = log_decay(out[layer_probe(k, "decay")][:, b]) if cfg.gated else None
                alpha = delta_rule_attention(qh[b].transpose(0, 1), kh[b].transpose(0, 1), beta[:, b], (r0, hi),
                                             (c0, c1), g)
                res[r0:hi, b] = alpha.abs().mean(-1).to(self.dtype)
        return res
