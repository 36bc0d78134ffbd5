"""RWKV-7 ("Goose"): an instrumented RNN language model in the layout of BlinkDL's ``.pth``
files, as the ``rwkv`` package reads them (Peng et al. 2025, "RWKV-7 Goose with Expressive
Dynamic State Evolution").

The model (C channels in H heads of N, so C = H N; F feed-forward width)::

    x_0 = ln0(emb[token])
    layer i:  x_t = ln1(h_t)                                    time mixing
              mix(mu) = x_t + (x_(t-1) - x_t) mu                (x_(-1) = 0: the token shift)
              r = W_r mix(x_r)        k0 = W_k mix(x_k)        v0' = W_v mix(x_v)
              w = exp(-e^(-1/2) sigmoid(w0 + tanh(mix(x_w) w1) w2))      decay, in (0.545, 1)
              a = sigmoid(a0 + mix(x_a) a1 a2)                  in-context learning rate
              g = sigmoid(mix(x_g) g1) g2                       output gate
              kk = normalize_per_head(k0 * k_k)                 removal key (unit length per head)
              k = k0 * (1 + (a - 1) * k_a)
              v = v0' in layer 0 (it is v_first), else v0' + (v_first - v0') sigmoid(v0 + mix(x_v) v1 v2)
              per head, S [N values x N keys]:
              S_t = S_(t-1) (diag(w_t) - kk_t^T (kk_t * a_t)) + v_t^T k_t
              o_t = S_t r_t
              y_t = ln_x(o_t) + (sum_head r_t * k_t * r_k) v_t     ln_x: GroupNorm(H), eps 64e-5
              h'_t = h_t + W_o (y_t * g_t)                     W_o (y_t * g_t): "att" (= "mixer"); h'_t: "mid"
              f_t = ln2(h'_t)                                   channel mixing
              out_t = h'_t + W_v' relu(W_k' (f_t + (f_(t-1) - f_t) x_k'))^2
    logits = head(ln_out(out of the last layer))

LayerNorms have epsilon 1e-5.  The state a re-run needs at step t is, per layer, S_t and the
two token shifts (x_t, f_t); ``v_first`` is layer 0's ``v`` at the same token (not a state).

Canonical weight names are the ``.pth`` names: ``emb.weight``, ``blocks.0.ln0.*``,
``blocks.{i}.ln1/ln2.*``, ``blocks.{i}.att.{x_r, x_w, x_k, x_v, x_a, x_g (1,1,C), w0 (1,1,C),
w1 (C,Dw), w2 (Dw,C), a0, a1, a2, v0, v1, v2 (layers >= 1 only), g1 (C,Dg), g2 (Dg,C), k_k, k_a
(1,1,C), r_k (H,N), receptance/key/value/output.weight (C,C), ln_x.weight/bias (C)}``,
``blocks.{i}.ffn.{x_k (1,1,C), key.weight (F,C), value.weight (C,F)}``, ``ln_out.*``,
``head.weight (V,C)``.  There is no config file: every size comes from the shapes.

Probe sites per layer: ``in`` (x), ``r``, ``w``, ``k``, ``kk``, ``a``, ``v``, ``g``, ``state``
(S_t, [H, N, N], only when asked for), ``o``, ``att`` (W_o (y * g)), ``ffn_in`` (f), ``ffn_k``,
``ffn``, ``out``, and ``attn``: the implicit attention.

How a layer runs
----------------
Chunks of the engine's grid (multiples of ``chunk``); in a chunk every per-token quantity comes
from batched matmuls (interventions applied to whole chunks, each before what is computed from
it), then the state recurrence in the chunked form of the generalized delta rule, with no loop
over steps: the chunk is cut into pieces of ``SUB`` steps; inside a piece everything is closed
form (decays between steps as ``e^(L_t) e^(-L_j)`` from a cumulative sum L of log w, so the
pairwise sums are matmuls, and one unit-triangular solve for the removal terms ``c_t = S_(t-1)
kk_t``), which reduces a piece to ``o = R S_0^T + O`` and ``S_end = S_0 P + U``; only these two
matmuls run piece after piece (:class:`_Piece`, :func:`wkv7_pieces`).  A piece ends early where
edited decays would make those factors overflow (:func:`_piece_bounds`).  Per-step states
are built (a cumulative sum of the writes, O(N^2) per step) only when the ``state`` probe is
asked for or a state edit needs one.  An intervention on ``state`` at step t takes the piece's
state after t, edits it, recomputes ``o_t = S_t r_t`` from it and runs the rest of the piece as
a new piece.  A step's value never depends on anything after it (pieces have a fixed padded
size, their bounds depend only on earlier steps), so steps before an edit are bit-identical to
a run without it; the piece grid follows the chunk grid, so a re-run from a state kept at a
chunk boundary equals a full re-run bit for bit.

Implicit attention (probe ``attn``): the recurrence is linear in the values, so per head
``o_i = sum_(j<=i) alpha_ij v_j`` with ``alpha_ij = k_j A_(j+1) ... A_i r_i^T`` (A_t = diag(w_t)
- kk_t^T (kk_t * a_t)).  :func:`delta_rule_attention` runs the same chunked recurrence with one
one-hot value per key column of the window (from the window's first column to its last row
only, so a long input never costs T^2); the probe holds the mean over heads of |alpha_ij|.

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{i}.state`` [H, N, N], S as the ``state`` probe shows it, and the token shifts'
inputs ``layers.{i}.last_in`` and ``layers.{i}.last_ffn_in`` [C]: the ``in`` and ``ffn_in``
values of the last step (the x_(t-1) and f_(t-1) of the next one).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..probes import ProbeSpec, layer_probe
from .family import FamilyConfig, FamilyModel, probe_table
from .layer_state import StatePart
from .rwkv7_scan import delta_rule_attention, wkv7_pieces

SITES = ("in", "r", "w", "k", "kk", "a", "v", "g", "state", "o", "att", "mixer", "mid", "ffn_in", "ffn_k", "ffn",
         "mlp", "out", "attn")
#: the names every family shares for RWKV's own (see engine.probes.RESIDUAL_SITES)
SITE_ALIASES = {"mixer": "att", "mlp": "ffn"}
#: -log w = DECAY_SCALE * sigmoid(...): e^(-1/2), as the training code's -softplus(-z) - 0.5
DECAY_SCALE = math.exp(-0.5)
NORM_EPS = 1e-5  # ln0, ln1, ln2, ln_out
LN_X_EPS = 64e-5  # the GroupNorm after the recurrence
NOT_EDITABLE_ATTN = "it is computed from r, w, k, kk and a after the run and feeds nothing; " \
    "intervene on those or on state instead"


@dataclass(frozen=True)
class Rwkv7Config(FamilyConfig):
    FAMILY = "rwkv7"

    d_model: int  # C
    n_layer: int
    vocab_size: int
    head_size: int  # N; heads H = d_model // head_size
    d_ffn: int
    d_decay: int  # rank of w1/w2
    d_aaa: int  # rank of a1/a2
    d_mv: int  # rank of v1/v2 (0 with a single layer)
    d_gate: int  # rank of g1/g2

    def __post_init__(self):
        self.require_positive("d_model", "n_layer", "vocab_size", "head_size", "d_ffn", "d_decay", "d_aaa", "d_gate")
        if self.d_model % self.head_size:
            raise ValueError(f"d_model {self.d_model} is not a multiple of head_size {self.head_size}")
        if self.n_layer > 1 and self.d_mv <= 0:
            raise ValueError("d_mv must be positive when there are several layers")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size


def _vector(C):
    return (1, 1, C)


def canonical_weight_shapes(cfg: Rwkv7Config) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (``.pth`` names), with its shape."""
    C, V, Fd = cfg.d_model, cfg.vocab_size, cfg.d_ffn
    shapes: dict[str, tuple[int, ...]] = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            shapes[p + ln + ".weight"] = (C,)
            shapes[p + ln + ".bias"] = (C,)
        a = p + "att."
        for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            shapes[a + m] = _vector(C)
        loras = [("w", cfg.d_decay), ("a", cfg.d_aaa), ("g", cfg.d_gate)] + ([("v", cfg.d_mv)] if i else [])
        for m, rank in loras:
            shapes[a + m + "1"] = (C, rank)
            shapes[a + m + "2"] = (rank, C)
        if i:
            shapes[a + "v0"] = _vector(C)
        shapes[a + "r_k"] = (cfg.n_head, cfg.head_size)
        for m in ("receptance", "key", "value", "output"):
            shapes[a + m + ".weight"] = (C, C)
        shapes[a + "ln_x.weight"] = (C,)
        shapes[a + "ln_x.bias"] = (C,)
        f = p + "ffn."
        shapes[f + "x_k"] = _vector(C)
        shapes[f + "key.weight"] = (Fd, C)
        shapes[f + "value.weight"] = (C, Fd)
    shapes["ln_out.weight"] = (C,)
    shapes["ln_out.bias"] = (C,)
    shapes["head.weight"] = (V, C)
    return shapes


class _Layer:
    """One layer's weights, vectors flattened to [C]."""

    def __init__(self, w: dict, i: int):
        p, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        flat = lambda name: w[name].reshape(-1)  # noqa: E731
        self.ln0 = (w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"]) if i == 0 else None
        self.ln1 = (w[p + "ln1.weight"], w[p + "ln1.bias"])
        self.ln2 = (w[p + "ln2.weight"], w[p + "ln2.bias"])
        self.mix = {m: flat(a + "x_" + m) for m in "rwkvag"}
        self.w0, self.w1, self.w2 = flat(a + "w0"), w[a + "w1"], w[a + "w2"]
        self.a0, self.a1, self.a2 = flat(a + "a0"), w[a + "a1"], w[a + "a2"]
        self.g1, self.g2 = w[a + "g1"], w[a + "g2"]
        self.v_lora = (flat(a + "v0"), w[a + "v1"], w[a + "v2"]) if i else None
        self.k_k, self.k_a, self.r_k = flat(a + "k_k"), flat(a + "k_a"), flat(a + "r_k")
        self.Wr, self.Wk, self.Wv, self.Wo = (w[a + m + ".weight"] for m in ("receptance", "key", "value", "output"))
        self.ln_x = (w[a + "ln_x.weight"], w[a + "ln_x.bias"])
        self.ffn_mix, self.Fk, self.Fv = flat(f + "x_k"), w[f + "key.weight"], w[f + "value.weight"]


class Rwkv7Model(FamilyModel):
    """An instrumented RWKV-7 language model.  Build with :func:`engine.load` (a ``.pth`` file)
    or from a config and canonical weights.  ``attention_window``: see :class:`engine.models.mamba.AttentionWindow`.

    A run keeps layer 0's ``v`` (``v_first``, read by every later layer) on the model while it
    runs, so one model runs one forward pass at a time (as the workbench's single runner does)."""

    architecture = "rwkv7"
    SITES = SITES
    SITE_ALIASES = SITE_ALIASES
    ATTENTION_NEEDS = frozenset({"r", "w", "k", "kk", "a"})
    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}

    weight_shapes = staticmethod(canonical_weight_shapes)
    #: layer 0's ``v`` while a run is in progress
    _v_first = None

    def _prepare(self):
        w = self._w
        self.embed, self.head = w["emb.weight"], w["head.weight"]
        self.ln_out = (w["ln_out.weight"], w["ln_out.bias"])
        self.layers = [_Layer(w, i) for i in range(self.config.n_layer)]

    @property
    def scan_dtype(self):
        """The dtype of the recurrence: float32 for half-precision models, as the ``rwkv`` package."""
        return self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32

    def state_units(self, heads, values=None, keys=None) -> list[int]:
        """Unit indices of the ``state`` probe (flattened ``(head * N + value) * N + key``) for
        ``heads`` and, optionally, only some value rows / key columns: for interventions."""
        N = self.config.head_size

        def as_list(x):
            return list(range(N)) if x is None else [int(x)] if isinstance(x, int) else [int(i) for i in x]

        return [(h * N + i) * N + j for h in as_list(heads) for i in as_list(values) for j in as_list(keys)]

    # -- probes ---------------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        C, H, N = cfg.d_model, cfg.n_head, cfg.head_size
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        desc = {
            "in": (C, "x_t = ln1(h_t): the time-mixing input (and, at step t+1, its token-shift input)"),
            "r": (C, "receptance r_t = W_r mix(x_r): reads the state, o_t = S_t r_t"),
            "w": (C, "decay w_t = exp(-e^(-1/2) sigmoid(w0 + tanh(mix(x_w) w1) w2)), per key channel, in (0.545, 1)"),
            "k": (C, "key k_t = k0_t (1 + (a_t - 1) k_a) written into the state as v_t^T k_t (k0 = W_k mix(x_k))"),
            "kk": (C, "removal key kk_t = k0_t k_k normalised to unit length per head: the state loses "
                      "S_(t-1) kk_t^T (kk_t a_t)"),
            "a": (C, "in-context learning rate a_t = sigmoid(a0 + mix(x_a) a1 a2): how much of the old value "
                     "along kk_t is removed"),
            "v": (C, "value v_t = W_v mix(x_v) (layer 0: v_first), later layers mixed towards v_first by "
                     "sigmoid(v0 + mix(x_v) v1 v2)"),
            "g": (C, "output gate g_t = sigmoid(mix(x_g) g1) g2"),
            "state": ((H, N, N), "state S_t after step t per head, [value, key]: S_t = S_(t-1) (diag(w_t) - "
                                 "kk_t^T (kk_t a_t)) + v_t^T k_t (interventions index it flattened: unit = "
                                 "(head*N + value)*N + key)"),
            "o": (C, "recurrence output o_t = S_t r_t per head, before the ln_x GroupNorm"),
            "att": (C, "time-mixing output W_o ((ln_x(o_t) + (sum_head r k r_k) v_t) g_t), before its residual "
                       "add (mid = h_t + att_t)"),
            "mixer": (C, "the mixer output, before the residual add: another name of att (the same values, the "
                         "same edits), shared with the other families"),
            "mid": (C, "residual stream after the time-mixing add, h_t + att_t (h_t after ln0 in layer 0): the "
                       "channel-mixing block's input"),
            "ffn_in": (C, "f_t = ln2(h_t + att_t): the channel-mixing input (and its token-shift input)"),
            "ffn_k": (cfg.d_ffn, "channel-mixing hidden activation relu(W_k' (f_t + (f_(t-1) - f_t) x_k'))^2"),
            "ffn": (C, "channel-mixing output W_v' ffn_k, before its residual add (out = mid + ffn)"),
            "mlp": (C, "the feed-forward output, before the residual add: another name of ffn (the same values, "
                       "the same edits), shared with the other families"),
            "out": (C, "residual stream after the block: mid + ffn_t = h_t + att_t + ffn_t"),
            "attn": (c1 - c0, f"implicit attention mean over heads of |alpha_ij|, alpha_ij = k_j A_(j+1)...A_i "
                              f"r_i^T with A_t = diag(w_t) - kk_t^T (kk_t a_t) (so o_i = sum_j alpha_ij v_j per "
                              f"head); rows {r0}..{r1 - 1}, column m is key step {c0}+m; 0 where j > i, NaN in "
                              "rows outside the window"),
        }
        return probe_table(cfg.n_layer, SITES, desc, embed=(C, "token embedding (layer 0 applies ln0 to it)"),
                           logits=(cfg.vocab_size, "next-token scores head(ln_out(x)) (before softmax)"),
                           dims={"state": ("token", "head", "value", "key")})

    # -- the forward pass -----------------------------------------------------------------
    def forward(self, x, lengths, want, plan=None, *, resume=None, **kwargs):
        """As :meth:`ChunkedLayerModel.forward`; layer 0's ``v`` is always recorded (later
        layers read it as ``v_first``, and a re-run that skips layer 0 takes it from the
        previous run's arrays)."""
        T, B = x.shape[0], x.shape[1]
        v0 = layer_probe(0, "v")
        self._v_first = torch.empty(T, B, self.config.d_model, dtype=self.dtype, device=self.device)
        if resume is not None and v0 in resume.old:
            old = resume.old[v0][:T]
            self._v_first[:old.shape[0]] = old
        try:
            return super().forward(x, lengths, set(want) | {v0}, plan, resume=resume, **kwargs)
        finally:
            self._v_first = None

    @contextmanager
    def sequences_alone(self, cols):
        whole = self._v_first
        self._v_first = whole[:, cols].clone()  # written by layer 0, read by the layers above
        try:
            yield
        finally:
            self._v_first = whole

    def state_parts(self, layer: int):
        C, H, N = self.config.d_model, self.config.n_head, self.config.head_size
        return StatePart(0, "state", (H, N, N)), StatePart(1, "last_in", (C,)), StatePart(2, "last_ffn_in", (C,))

    def initial_state(self, batch: int):
        C, H, N = self.config.d_model, self.config.n_head, self.config.head_size
        S = torch.zeros(batch, H, N, N, dtype=self.scan_dtype, device=self.device)
        zeros = torch.zeros(batch, C, dtype=self.dtype, device=self.device)
        return S, zeros, zeros.clone()

    @staticmethod
    def _ln(h, wb, eps=NORM_EPS):
        return F.layer_norm(h, (h.shape[-1],), wb[0], wb[1], eps)

    def _logits(self, h):
        return F.linear(self._ln(h, self.ln_out), self.head)

    def _embed_tokens(self, x):
        return F.embedding(x, self.embed)

    def _site_shapes(self):
        cfg = self.config
        C = cfg.d_model
        shapes = {s: (C,) for s in SITES if s != "attn" and s not in SITE_ALIASES}
        shapes["state"] = (cfg.n_head, cfg.head_size, cfg.head_size)
        shapes["ffn_k"] = (cfg.d_ffn,)
        return shapes

    def _layer_chunk(self, k: int, h, a: int, state, edits, record):
        """Steps ``a..a+n-1`` of layer ``k``: every per-token quantity at once, then the
        chunked recurrence."""
        lay = self.layers[k]
        n, B = h.shape[0], h.shape[1]
        H, N = self.config.n_head, self.config.head_size
        S, x_prev, f_prev = state

        def active(site):
            return [e for e in edits.get(site, ()) if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n]

        def edit(site, v):
            for e in active(site):
                v = e.apply_all(v, a)
            return v

        if lay.ln0 is not None:
            h = self._ln(h, lay.ln0)
        x = edit("in", self._ln(h, lay.ln1))
        shift = torch.cat([x_prev[None], x[:-1]]) - x

        def mix(m):
            return x + shift * lay.mix[m]

        r = edit("r", F.linear(mix("r"), lay.Wr))
        z = lay.w0 + torch.tanh(mix("w") @ lay.w1) @ lay.w2
        log_w = -DECAY_SCALE * torch.sigmoid(z)
        w = torch.exp(log_w)
        if active("w"):  # log w again only where an edit changed w (elsewhere it keeps its bits)
            edited = edit("w", w)
            log_w = torch.where(edited != w, torch.log(edited), log_w)
            w = edited
        k0 = F.linear(mix("k"), lay.Wk)
        iclr = edit("a", torch.sigmoid(lay.a0 + (mix("a") @ lay.a1) @ lay.a2))
        g = edit("g", torch.sigmoid(mix("g") @ lay.g1) @ lay.g2)
        kk = edit("kk", F.normalize((k0 * lay.k_k).view(n, B, H, N), dim=-1).view(n, B, H * N))
        key = edit("k", k0 * (1 + (iclr - 1) * lay.k_a))
        v = F.linear(mix("v"), lay.Wv)
        if lay.v_lora is None:
            v = edit("v", v)
            self._v_first[a:a + n] = v
        else:
            v0, v1, v2 = lay.v_lora
            v = edit("v", v + (self._v_first[a:a + n] - v) * torch.sigmoid(v0 + (mix("v") @ v1) @ v2))

        sd = self.scan_dtype
        heads = lambda t: t.to(sd).view(n, B, H, N).permute(1, 2, 0, 3)  # noqa: E731  [B, H, n, N]
        o, S, states = wkv7_pieces(S, heads(r), heads(log_w), heads(key), heads(v), heads(-kk), heads(kk * iclr),
                                   want_states="state" in record, state_edits=edits.get("state", ()), start=a)
        o = edit("o", o.permute(2, 0, 1, 3).reshape(n, B, H * N).to(h.dtype))
        y = F.group_norm(o.reshape(n * B, H * N), H, lay.ln_x[0], lay.ln_x[1], LN_X_EPS).view(n, B, H * N)
        bonus = (r * key * lay.r_k).view(n, B, H, N).sum(-1, keepdim=True)
        y = y + (bonus * v.view(n, B, H, N)).view(n, B, H * N)
        att = edit("att", F.linear(y * g, lay.Wo))
        h2 = edit("mid", h + att)
        f = edit("ffn_in", self._ln(h2, lay.ln2))
        fshift = torch.cat([f_prev[None], f[:-1]]) - f
        fk = edit("ffn_k", torch.square(torch.relu(F.linear(f + fshift * lay.ffn_mix, lay.Fk))))
        ffn = edit("ffn", F.linear(fk, lay.Fv))
        out = edit("out", h2 + ffn)
        vals = {"in": x, "r": r, "w": w, "k": key, "kk": kk, "a": iclr, "v": v, "g": g, "o": o, "att": att,
                "mid": h2, "ffn_in": f, "ffn_k": fk, "ffn": ffn, "out": out}
        if states is not None:
            vals["state"] = states.permute(2, 0, 1, 3, 4)
        return vals, (S, x[-1].clone(), f[-1].clone())

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe of layer ``k``: the whole window again whenever a row of it may
        have changed (each row is computed the same way in any run), else the previous run's."""
        (r0, r1), cols = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, self._window.width), float("nan"), dtype=self.dtype, device=self.device)
        hi = min(r1, T)
        if s and s >= hi:
            res[:s] = old[name][:s]
            return res
        if r0 < hi:
            r, w, key, kk, iclr = (out[layer_probe(k, site)] for site in ("r", "w", "k", "kk", "a"))
            alpha = delta_rule_attention(r, w, key, kk, iclr, self.config.n_head, (r0, hi), cols)
            res[r0:hi] = alpha.abs().mean(-1).to(self.dtype)
        return res
