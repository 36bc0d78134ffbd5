"""Griffin / RecurrentGemma (De et al. 2024; Botev et al. 2024): an instrumented language model
in the layout of ``transformers``' ``RecurrentGemmaForCausalLM``.

The model::

    x_0 = embed[token] * sqrt(d)               (sqrt(d) rounded to bfloat16, as transformers does)
    layer i:  n = rmsnorm(x)                   rmsnorm(v) = v / sqrt(mean(v^2) + eps) * (1 + w)
              recurrent layers (RG-LRU):
                  y   = gelu(linear_y(n))                      the output gate branch
                  u   = conv1d(linear_x(n))                    causal, depthwise, width conv1d_width
                  r_t = sigmoid(blockdiag_r(u_t)),  i_t = sigmoid(blockdiag_i(u_t))
                                                               one (width/heads)^2 block per head
                  a_t = sigma(Lambda)^(8 r_t) = exp(-8 r_t softplus(Lambda))
                  h_t = a_t h_(t-1) + sqrt(1 - a_t^2) (i_t u_t)
                        at position 0 the state resets: a_0 = 0 and the factor sqrt(1 - a_0^2) is 1
                  m   = h * y;   x = x + linear_out(m)     m: "mix"; linear_out(m): "mixer"; x: "mid"
              local-attention layers (every third by default, per ``block_types``):
                  q, k, v = q_proj(n), k_proj(n), v_proj(n)   multi-query: few k/v heads
                  rotary embedding on the first half of each head (partial_rotary_factor)
                  o_t = sum over the last attention_window_size steps of softmax(q_t.k_s / sqrt(hd)) v_s
                  x = x + o_proj(o)                        o_proj(o): "mixer"; x: "mid"
              x = x + down(gelu(gate(rmsnorm(x))) * up(rmsnorm(x)))   the MLP block ("mlp"; x: "out")
    logits = cap * tanh(lm_head(rmsnorm(x)) / cap)               soft cap, 30 by default

Canonical weight names are those of ``RecurrentGemmaForCausalLM``: ``model.embed_tokens.weight``,
``model.final_norm.weight``, ``lm_head.weight`` (absent when tied); per layer
``model.layers.{i}.temporal_pre_norm.weight``, ``channel_pre_norm.weight``,
``mlp_block.{gate_proj, up_proj, down_proj}.{weight, bias}`` and either
``temporal_block.{linear_y, linear_x, linear_out}.{weight, bias}``, ``temporal_block.conv_1d.{weight
(lru, 1, K), bias}``, ``temporal_block.rg_lru.{recurrent_param (lru), input_gate_weight (heads, bw,
bw), input_gate_bias (heads, bw), recurrent_gate_weight, recurrent_gate_bias}`` or
``temporal_block.{q_proj, k_proj, v_proj}.weight`` (+ bias with attention_bias),
``temporal_block.o_proj.{weight, bias}``.  A folder written by ``save_pretrained`` (or a bare
``RecurrentGemmaModel``) loads with :func:`engine.load`.

Probe sites: recurrent layers ``in`` (normed input), ``y_branch``, ``x_branch`` (linear_x),
``conv``, ``gate_r``, ``gate_i``, ``a`` (decay), ``state`` (h), ``mix`` (h * y), ``mixer``, ``mid``,
``mlp``, ``out``, ``attn``
(implicit attention ``alpha_ij = (prod_(k=j+1..i) a_k) sqrt(1 - a_j^2) i_j`` per channel, so that
``h_i = sum_j alpha_ij u_j``); attention layers ``in``, ``q``, ``k`` (after the rotary embedding),
``v``, ``o`` (attention output of every head, before o_proj), ``mixer``, ``mid``, ``mlp``, ``out``,
``attn`` (the softmax attention, mean over heads).  In both kinds, ``mixer`` is the temporal
block's output before its residual add (``linear_out(mix)`` or ``o_proj(o)``), ``mid`` the
stream after that add, ``mlp`` the MLP block's output before its add, ``out`` the stream after it.  ``attn`` is computed for :attr:`attention_window` only.

Runs like the other chunked families (``engine.models.chunked``): per chunk every per-token
quantity at once, edits applied to the whole chunk before what is computed from them; the
recurrence is a compiled numba loop on the CPU or, elsewhere, a closed form over blocks of
``BLOCK`` steps (products of decays by a cumulative product, no loop over steps), split at the
steps where ``state`` is edited.  A layer's state at a chunk boundary is ``(h, conv buffer,
keys, values)``: a recurrent layer uses the first two (h and the last conv1d_width - 1 values of
``x_branch``), an attention layer the last two (its last attention_window_size - 1 keys and
values; the position is the step itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..probes import ProbeSpec, layer_probe
from .family import FamilyConfig, ScannedFamilyModel
from .mingru import _scan_numba, gated_attention
from .recurrent_gemma_scan import local_attention, local_attention_weights, rotate, scan_blocks

RECURRENT_SITES = ("in", "y_branch", "x_branch", "conv", "gate_r", "gate_i", "a", "state", "mix", "mixer", "mid",
                   "mlp", "out", "attn")
ATTENTION_SITES = ("in", "q", "k", "v", "o", "mixer", "mid", "mlp", "out", "attn")
#: the exponent c of a_t = sigma(Lambda)^(c r_t)
C_EXPONENT = 8.0
ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}


@dataclass(frozen=True)
class RecurrentGemmaConfig(FamilyConfig):
    """The fields of ``transformers``' ``RecurrentGemmaConfig`` that change what a run computes
    (``block_types`` cycles over the layers as there)."""
    FAMILY = "recurrent_gemma"
    LAYERS_FIELD = "num_hidden_layers"

    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    intermediate_size: int  # the MLP's gate and up projections each have intermediate_size // 2 rows
    num_attention_heads: int
    num_key_value_heads: int
    lru_width: int
    attention_window_size: int = 2048
    conv1d_width: int = 4
    block_types: tuple = ("recurrent", "recurrent", "attention")
    rms_norm_eps: float = 1e-6
    logits_soft_cap: float = 30.0
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    hidden_activation: str = "gelu_pytorch_tanh"
    attention_bias: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        object.__setattr__(self, "block_types", tuple(self.block_types))
        self.require_positive("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                              "num_attention_heads", "num_key_value_heads", "lru_width", "attention_window_size",
                              "conv1d_width")
        if not self.block_types or set(self.block_types) - {"recurrent", "attention"}:
            raise ValueError(f"block_types must list 'recurrent' and 'attention', got {list(self.block_types)}")
        if self.hidden_size % self.num_attention_heads or self.lru_width % self.num_attention_heads:
            raise ValueError("hidden_size and lru_width must be multiples of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"hidden_activation {self.hidden_activation!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def block_width(self) -> int:
        return self.lru_width // self.num_attention_heads

    def kind(self, layer: int) -> str:
        return self.block_types[layer % len(self.block_types)]


def canonical_weight_shapes(cfg: RecurrentGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (``RecurrentGemmaForCausalLM`` names)."""
    d, w, V, H, bw = cfg.hidden_size, cfg.lru_width, cfg.vocab_size, cfg.num_attention_heads, cfg.block_width
    f, hd, kv = cfg.intermediate_size // 2, cfg.head_dim, cfg.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, d)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "temporal_pre_norm.weight"] = (d,)
        t = p + "temporal_block."
        if cfg.kind(i) == "recurrent":
            for lin in ("linear_y", "linear_x"):
                shapes[t + lin + ".weight"], shapes[t + lin + ".bias"] = (w, d), (w,)
            shapes[t + "linear_out.weight"], shapes[t + "linear_out.bias"] = (d, w), (d,)
            shapes[t + "conv_1d.weight"], shapes[t + "conv_1d.bias"] = (w, 1, cfg.conv1d_width), (w,)
            shapes[t + "rg_lru.recurrent_param"] = (w,)
            for gate in ("input_gate", "recurrent_gate"):
                shapes[t + f"rg_lru.{gate}_weight"], shapes[t + f"rg_lru.{gate}_bias"] = (H, bw, bw), (H, bw)
        else:
            for proj, rows in (("q_proj", H * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
                shapes[t + proj + ".weight"] = (rows, d)
                if cfg.attention_bias:
                    shapes[t + proj + ".bias"] = (rows,)
            shapes[t + "o_proj.weight"], shapes[t + "o_proj.bias"] = (d, H * hd), (d,)
        shapes[p + "channel_pre_norm.weight"] = (d,)
        m = p + "mlp_block."
        shapes[m + "gate_proj.weight"], shapes[m + "gate_proj.bias"] = (f, d), (f,)
        shapes[m + "up_proj.weight"], shapes[m + "up_proj.bias"] = (f, d), (f,)
        shapes[m + "down_proj.weight"], shapes[m + "down_proj.bias"] = (d, f), (d,)
    shapes["model.final_norm.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, d)
    return shapes


#: why interventions on ``attn`` are refused
NOT_EDITABLE_ATTN = "it is computed after the run from the gates (recurrent layers) or from q and k " \
    "(attention layers) and feeds nothing; intervene on a, gate_i, state, q, k, v or o instead"


def embedding_scale(hidden_size: int) -> float:
    """``sqrt(hidden_size)`` as ``transformers`` applies it: a bfloat16 buffer."""
    return float(torch.tensor(hidden_size ** 0.5, dtype=torch.bfloat16))


def input_scale(decay: torch.Tensor, first: int) -> torch.Tensor:
    """``sqrt(1 - a_t^2)``, the RG-LRU's normalisation of its input, for steps ``first..``
    (decay [steps, ...]); 1 at position 0, where the state resets, and 0 where an edit made
    ``|a_t| > 1``."""
    scale = torch.sqrt((1 - decay * decay).clamp(min=0))
    if first == 0:  # out of place: a gradient (engine.analysis.differentiable) reads the sqrt
        scale = torch.cat([torch.ones_like(scale[:1]), scale[1:]])
    return scale


class RecurrentGemmaModel(ScannedFamilyModel):
    """An instrumented RecurrentGemma (Griffin) language model.  Build with :func:`engine.load`,
    :func:`from_transformers`, or from a config and canonical weights.

    ``scan``: ``"numba"`` (compiled CPU loop, needs ``numba``), ``"torch"`` (closed form over
    blocks of steps: the GPU path) or ``"auto"`` (numba on a CPU, unless it cannot be imported).
    ``attention_window``: see :class:`engine.models.mamba.AttentionWindow`.
    """

    architecture = "recurrent_gemma"
    #: every site of either kind of layer, in display order
    SITES = ("in", "y_branch", "x_branch", "conv", "gate_r", "gate_i", "a", "state", "q", "k", "v", "mix", "o", "mixer",
             "mid", "mlp", "out", "attn")
    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}

    weight_shapes = staticmethod(canonical_weight_shapes)

    @property
    def input_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def layer_kind(self, layer: int) -> str:
        """``"recurrent"`` or ``"attention"``."""
        return self.config.kind(layer)

    # -- probes ---------------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        d, w, H, hd, kv = cfg.hidden_size, cfg.lru_width, cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        where = f"rows {r0}..{r1 - 1}, column m is key step {c0}+m; 0 where j > i, NaN in rows outside the window"
        desc = {
            "in": (d, "input of the temporal block: rmsnorm(x) * (1 + w) of the residual stream"),
            "y_branch": (w, "output gate branch y = gelu(linear_y(in)); mix = state * y"),
            "x_branch": (w, "linear_x(in), the input of the causal convolution"),
            "conv": (w, "u = conv1d(x_branch), causal and depthwise: the RG-LRU's input"),
            "gate_r": (w, "recurrence gate r_t = sigmoid(blockdiag(u_t) + b), one block per head"),
            "gate_i": (w, "input gate i_t = sigmoid(blockdiag(u_t) + b), one block per head"),
            "a": (w, "decay a_t = exp(-8 r_t softplus(Lambda)) (0 at position 0, where the state resets); "
                     "the input is scaled by sqrt(1 - a_t^2) (0 if an edit makes |a_t| > 1)"),
            "state": (w, "RG-LRU state h_t = a_t h_(t-1) + sqrt(1 - a_t^2) i_t u_t"),
            "mix": (w, "h_t * y_t, the input of linear_out (the block's output before the residual add is mixer)"),
            "q": (H * hd, f"queries q_proj(in) after the rotary embedding; head h is units {hd}h..{hd}h+{hd - 1}"),
            "k": (kv * hd, f"keys k_proj(in) after the rotary embedding ({kv} key/value head(s) of {hd})"),
            "v": (kv * hd, f"values v_proj(in) ({kv} key/value head(s) of {hd})"),
            "o": (H * hd, f"local attention output of every head (window {cfg.attention_window_size} steps), "
                          "the input of o_proj"),
            "mid": (d, "residual stream after the temporal block's add, x + mixer: the MLP block's input"),
            "mlp": (d, "MLP block output down(gelu(gate(n)) * up(n)), n = rmsnorm(mid) (channel_pre_norm), before "
                       "the residual add"),
            "out": (d, "residual stream after the layer: mid + mlp"),
        }
        attn = {"recurrent": "implicit attention mean_c alpha_ij over channels, alpha_ij = "
                             "(prod_(k=j+1..i) a_k) sqrt(1 - a_j^2) i_j (h_i = sum_j alpha_ij u_j); " + where,
                "attention": f"softmax attention of step i on key step j, mean over the {H} heads "
                             f"(0 outside the local window of {cfg.attention_window_size} steps); " + where}
        mixer = {"recurrent": "temporal block output linear_out(mix), before the residual add (mid = x + mixer)",
                 "attention": "temporal block output o_proj(o), before the residual add (mid = x + mixer)"}
        specs = [ProbeSpec("embed", (d,), ("token", "unit"), "token embedding times sqrt(hidden_size), fed to layer 0")]
        for k in range(cfg.num_hidden_layers):
            kind = cfg.kind(k)
            for site in RECURRENT_SITES if kind == "recurrent" else ATTENTION_SITES:
                if site == "attn":
                    specs.append(ProbeSpec(layer_probe(k, site), (c1 - c0,), ("token", "key"), attn[kind],
                                           layer=k, site=site))
                elif site == "mixer":
                    specs.append(ProbeSpec(layer_probe(k, site), (d,), ("token", "unit"), f"{kind} layer: {mixer[kind]}",
                                           layer=k, site=site))
                else:
                    width, text = desc[site]
                    specs.append(ProbeSpec(layer_probe(k, site), (width,), ("token", "unit"),
                                           f"{kind} layer: {text}", layer=k, site=site))
        specs.append(ProbeSpec("logits", (cfg.vocab_size,), ("token", "class"),
                               f"next-token scores {cfg.logits_soft_cap:g} tanh(lm_head(rmsnorm(x)) / "
                               f"{cfg.logits_soft_cap:g}) (before softmax)"))
        return specs

    def _attention_needs(self, k: int) -> frozenset:
        return frozenset({"a", "gate_i"} if self.layer_kind(k) == "recurrent" else {"q", "k"})

    def _site_shapes(self):
        cfg = self.config
        d, w, hd = cfg.hidden_size, cfg.lru_width, cfg.head_dim
        shapes = {s: (w,) for s in RECURRENT_SITES}
        shapes.update({"in": (d,), "mixer": (d,), "mid": (d,), "mlp": (d,), "out": (d,), "q": (cfg.num_attention_heads * hd,), "o": (cfg.num_attention_heads * hd,),
                       "k": (cfg.num_key_value_heads * hd,), "v": (cfg.num_key_value_heads * hd,)})
        return shapes

    # -- forward ----------------------------------------------------------------------------
    def initial_state(self, batch: int):
        """``(h, conv buffer, keys, values)``: zeros, and no keys or values yet."""
        cfg = self.config
        z = dict(dtype=self.dtype, device=self.device)
        kv = cfg.num_key_value_heads * cfg.head_dim
        return (torch.zeros(batch, cfg.lru_width, **z), torch.zeros(cfg.conv1d_width - 1, batch, cfg.lru_width, **z),
                torch.zeros(0, batch, kv, **z), torch.zeros(0, batch, kv, **z))

    def _norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps) * (1 + w)

    def _gelu(self, x):
        return F.gelu(x, approximate=ACTIVATIONS[self.config.hidden_activation])

    def _embed_tokens(self, x):
        return F.embedding(x, self._w["model.embed_tokens.weight"]) * embedding_scale(self.config.hidden_size)

    def _logits(self, h):
        cap = self.config.logits_soft_cap
        head = self._w.get("lm_head.weight", self._w["model.embed_tokens.weight"])
        return torch.tanh(F.linear(self._norm(h, self._w["model.final_norm.weight"]), head) / cap) * cap

    def _linear(self, x, name):
        return F.linear(x, self._w[name + ".weight"], self._w.get(name + ".bias"))

    def _layer_chunk(self, k, h, a, state, edits, record):
        def edit(site, v):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + h.shape[0]:
                    v = e.apply_all(v, a)
            return v

        p = f"model.layers.{k}."
        vals = {"in": edit("in", self._norm(h, self._w[p + "temporal_pre_norm.weight"]))}
        if self.layer_kind(k) == "recurrent":
            mixed, lru, buf = self._recurrent_block(p + "temporal_block.", vals, a, *state[:2], edit, edits.get("state", ()))
            state = (lru, buf, *state[2:])
        else:
            mixed, keys, values = self._attention_block(p + "temporal_block.", vals, a, *state[2:], edit)
            state = (*state[:2], keys, values)
        vals["mixer"] = mixed = edit("mixer", mixed)
        vals["mid"] = r = edit("mid", h + mixed)
        n = self._norm(r, self._w[p + "channel_pre_norm.weight"])
        m = p + "mlp_block."
        ff = self._linear(self._gelu(self._linear(n, m + "gate_proj")) * self._linear(n, m + "up_proj"), m + "down_proj")
        vals["mlp"] = ff = edit("mlp", ff)
        vals["out"] = edit("out", r + ff)
        return vals, state

    def _recurrent_block(self, t, vals, a, lru, buf, edit, state_edits):
        """The RG-LRU block on a chunk: fills ``vals``; returns (its output, h, conv buffer)."""
        cfg = self.config
        w = self._w
        x = vals["in"]
        n = x.shape[0]
        vals["y_branch"] = y = edit("y_branch", self._gelu(self._linear(x, t + "linear_y")))
        vals["x_branch"] = xb = edit("x_branch", self._linear(x, t + "linear_x"))
        xc = torch.cat([buf, xb])  # [K-1+n, B, width]
        kernel = w[t + "conv_1d.weight"][:, 0, :]
        u = xc[0:n] * kernel[:, 0]
        for j in range(1, cfg.conv1d_width):
            u = u + xc[j:j + n] * kernel[:, j]
        vals["conv"] = u = edit("conv", u + w[t + "conv_1d.bias"])
        new_buf = xc[n:].clone()
        vals["gate_r"] = r = edit("gate_r", torch.sigmoid(self._block_diagonal(u, t + "rg_lru.recurrent_gate")))
        vals["gate_i"] = i = edit("gate_i", torch.sigmoid(self._block_diagonal(u, t + "rg_lru.input_gate")))
        decay = torch.exp(-C_EXPONENT * r * F.softplus(w[t + "rg_lru.recurrent_param"]))
        if a == 0:  # the reset at the first position (out of place: a gradient reads the exp)
            decay = torch.cat([torch.zeros_like(decay[:1]), decay[1:]])
        vals["a"] = decay = edit("a", decay)
        inp = (u * i) * input_scale(decay, a)
        vals["state"], lru = self._recurrence(decay, inp, lru, state_edits, a)
        vals["mix"] = mix = edit("mix", vals["state"] * y)
        return self._linear(mix, t + "linear_out"), lru, new_buf

    def _block_diagonal(self, u, name):
        H, bw = self.config.num_attention_heads, self.config.block_width
        heads = u.reshape(*u.shape[:-1], H, bw)
        out = torch.einsum("...hi,hij->...hj", heads, self._w[name + "_weight"]) + self._w[name + "_bias"]
        return out.reshape(u.shape)

    def _recurrence(self, decay, inp, h, state_edits, a):
        """``h_t = decay_t h_(t-1) + inp_t`` over the chunk, split after each edited step."""
        n = decay.shape[0]
        hs = torch.empty_like(inp)
        decay, inp = decay.contiguous(), inp.contiguous()
        scan = _scan_numba if self.scan == "numba" else scan_blocks
        steps = sorted({int(s) - a for e in state_edits for s in e.steps if a <= s < a + n})
        h = h.clone().contiguous()
        o = 0
        for t in steps + [n]:
            stop = min(t + 1, n)
            if stop > o:
                h = scan(decay[o:stop], inp[o:stop], h, hs[o:stop])
            if t == n:
                break
            for e in state_edits:
                h = e.apply_step(h, a + t)
            hs[t] = h = h.contiguous()
            o = t + 1
        return hs, h

    def _attention_block(self, t, vals, a, keys, values, edit):
        """Local multi-query attention on a chunk: fills ``vals``; returns (its output, the
        last ``attention_window_size - 1`` keys and values)."""
        cfg = self.config
        x = vals["in"]
        n, B = x.shape[:2]
        cos, sin = self._rotary(a, n)
        vals["q"] = q = edit("q", rotate(self._linear(x, t + "q_proj"), cos, sin, cfg.head_dim))
        vals["k"] = k = edit("k", rotate(self._linear(x, t + "k_proj"), cos, sin, cfg.head_dim))
        vals["v"] = v = edit("v", self._linear(x, t + "v_proj"))
        keys, values = torch.cat([keys, k]), torch.cat([values, v])
        weights = local_attention_weights(q, keys, a, a + n - keys.shape[0], cfg)  # [B, H, n, keys]
        H, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        vh = values.reshape(-1, B, kv, 1, hd).expand(-1, B, kv, H // kv, hd).reshape(-1, B, H, hd)
        o = torch.einsum("bhnm,mbhd->nbhd", weights, vh).reshape(n, B, H * hd)
        vals["o"] = o = edit("o", o)
        first_kept = max(0, keys.shape[0] - (cfg.attention_window_size - 1))
        return self._linear(o, t + "o_proj"), keys[first_kept:].clone(), values[first_kept:].clone()

    def _rotary(self, a, n):
        """cos and sin of the rotary embedding for positions ``a..a+n-1``: [n, 1, rotary_dim]."""
        rot = self.config.rotary_dim
        inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, rot, 2, dtype=self.dtype, device=self.device) / rot))
        freqs = torch.arange(a, a + n, dtype=self.dtype, device=self.device)[:, None] * inv
        emb = torch.cat([freqs, freqs], -1)[:, None, :]
        return emb.cos(), emb.sin()

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe of layer ``k``: the whole window is recomputed whenever one of its
        rows may have changed."""
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        res = torch.full((T, B, c1 - c0), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[layer_probe(k, "attn")][:s]
        hi = min(r1, T)
        if r0 >= hi or s >= hi:
            return res
        if self.layer_kind(k) == "recurrent":
            decay, gate = out[layer_probe(k, "a")], out[layer_probe(k, "gate_i")]
            weight = input_scale(decay, 0) * gate
            for b in range(B):
                res[r0:hi, b] = gated_attention(decay[:, b], weight[:, b], (r0, hi), (c0, c1))
        else:
            q, keys = out[layer_probe(k, "q")], out[layer_probe(k, "k")]
            res[r0:hi] = local_attention(q, keys, (r0, hi), (c0, c1), self.config).permute(1, 0, 2)
        return res
