"""xLSTM (mLSTM blocks, Beck et al. 2024): an instrumented language model in the layout of
``transformers``' ``xLSTMForCausalLM`` (the xLSTM-7B architecture).

The model::

    x_0 = embed[token]
    layer i:  u = rmsnorm(x)                                   norm_mlstm
              q, k, v = W_q u, W_k u, W_v u                    split into H heads (d_qk, d_v per head)
              i~ = softcap(W_i u + b_i)                        log input gate, per head (i_t = exp(i~_t))
              log f = logsigmoid(softcap(W_f u + b_f))         log forget gate, per head
              o = sigmoid(W_o u)                               output gate, per channel
              per head, from C_0 = 0, n_0 = 0, m_0 = 0:
                  m_t = max(log f_t + m_(t-1), i~_t)                       the stabiliser
                  C_t = f_t C_(t-1) + i_t k_t v_t^T        n_t = f_t n_(t-1) + i_t k_t
                  h_t = C_t^T q'_t / (max(|n_t . q'_t|, 1) + eps exp(m_t))     q' = q / sqrt(d_qk)
              x = x + W_out (o * multihead_layernorm(h))               W_out (...): "mix" (= "mixer"); x: "mid"
              x = x + W_down (silu(W_gate g) * W_up g),  g = rmsnorm(x)         norm_ffn ("mlp"; x: "out")
    logits = softcap_30(lm_head(rmsnorm(x)))                   out_norm

``softcap_c(z) = c tanh(z / c)`` (gates: ``gate_soft_cap``, 15 by default; logits:
``output_logit_soft_cap``, 30; either may be off).  The layer stores ``exp(-m_t) C_t``,
``exp(-m_t) n_t`` and ``m_t`` (the stabilised state of ``transformers`` and the paper's
appendix); the ``state`` and ``normalizer`` probes show the unstabilised ``C_t`` and ``n_t`` of
the equations above (finite while ``m_t`` stays below ~88 in float32, always when the gates are
soft-capped).

Canonical weight names are those of ``xLSTMForCausalLM`` with ``weight_mode="single"``:
``backbone.embeddings.weight``; per block ``backbone.blocks.{i}.norm_mlstm.weight``,
``mlstm_layer.{q, k, v, ogate_preact}.weight``, ``mlstm_layer.{igate_preact, fgate_preact}.weight/bias``,
``mlstm_layer.multihead_norm.weight``, ``mlstm_layer.out_proj.weight``, ``norm_ffn.weight``,
``ffn.{proj_up_gate, proj_up, proj_down}.weight`` (and ``.bias`` on all of these, norms included,
when ``use_bias``); ``backbone.out_norm.weight``; ``lm_head.weight`` (when absent, the head is the
embedding matrix; ``transformers``' xLSTM ignores ``tie_word_embeddings`` and always saves it).  Folders
written with ``weight_mode="fused"`` (``qkv_opreact``, ``ifgate_preact``, ``proj_up_gate_z``) are
split into these names on loading.

Probe sites per layer: ``in`` (rmsnorm(x), the mixer's input), ``q``, ``k``, ``v``, ``gate_i``
(the log input gate i~, after the soft cap), ``gate_f`` (the log forget gate, <= 0), ``gate_o``,
``state`` (C per head, [heads, d_qk, d_v], only when asked), ``normalizer`` (n per head), ``m``
(the stabiliser), ``h`` (before the multihead norm and the output gate), ``mix`` (the block's
mLSTM branch, before the residual add; also named ``mixer``, as in the other families), ``mid``
(the stream after that add), ``mlp`` (the feed-forward output, before its add), ``out`` (the
residual stream after the block) and
``attn`` (implicit attention over a window).  Every site but ``attn`` takes interventions;
``state`` and ``normalizer`` are edited in the unstabilised scale of the probes, and an edit of
``m`` sets the scale the state is kept in (h depends on m only through ``eps exp(m)``), so a
patch of all three reproduces another run's state exactly.

How a layer runs: per engine chunk, every per-token quantity at once; the recurrence in the
chunkwise-parallel form, ``SUB`` steps at a time (within a block: cumulative sums of log f, a
masked [SUB, SUB] matrix of decays per head, two matmuls; across blocks: the stabilised state).
An edit of ``state``, ``normalizer`` or ``m`` at step t takes the block's state at t in closed form,
edits it, recomputes h_t from it and starts the next block at t + 1; the steps before t are
the very numbers an unedited run computes.  The block grid is fixed relative to the chunk, so
a re-run from a state kept at a chunk boundary (C, n, m stabilised) equals a full run bit for bit.

Initial and final states (``engine.run(..., initial_state=...)``): ``layers.{k}.state``,
``normalizer`` and ``m``, as the probes show them (:class:`~.state_forms.XlstmStates`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .state_forms import XlstmStates
from .family import (FamilyConfig, FamilyModel, StatedConfig, build_model, check_loaded_weights, config_from_fields,
                     probe_table, unused_note)

SITES = ("in", "q", "k", "v", "gate_i", "gate_f", "gate_o", "state", "normalizer", "m", "h", "mix", "mixer", "mid",
         "mlp", "out", "attn")
#: the name every family shares for xLSTM's own (see engine.probes.RESIDUAL_SITES)
SITE_ALIASES = {"mixer": "mix"}
#: steps of the recurrence computed at once in the parallel form
SUB = 64
#: query rows of the implicit attention computed at once (bounds its memory)
ATTN_TILE = 16


@dataclass(frozen=True)
class XLSTMConfig(FamilyConfig):
    FAMILY = "xlstm"

    d_model: int
    n_layer: int
    vocab_size: int
    num_heads: int
    qk_dim: int
    v_dim: int
    ffn_dim: int
    use_bias: bool = False
    norm_eps: float = 1e-6
    eps: float = 1e-6  # added to the denominator of h
    gate_soft_cap: float | None = 15.0
    logit_soft_cap: float | None = 30.0
    tie_embeddings: bool = False

    def __post_init__(self):
        self.require_positive("d_model", "n_layer", "vocab_size", "num_heads", "qk_dim", "v_dim", "ffn_dim")
        for name in ("qk_dim", "v_dim"):
            if getattr(self, name) % self.num_heads:
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of num_heads={self.num_heads}")

    @property
    def dk(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def dv(self) -> int:
        return self.v_dim // self.num_heads


def canonical_weight_shapes(cfg: XLSTMConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (``xLSTMForCausalLM`` names), with its shape."""
    d, H, qk, vd, ff = cfg.d_model, cfg.num_heads, cfg.qk_dim, cfg.v_dim, cfg.ffn_dim
    shapes: dict[str, tuple[int, ...]] = {"backbone.embeddings.weight": (cfg.vocab_size, d)}

    def linear(name, rows, cols, bias=cfg.use_bias):
        shapes[name + ".weight"] = (rows, cols)
        if bias:
            shapes[name + ".bias"] = (rows,)

    def norm(name, width):
        shapes[name + ".weight"] = (width,)
        if cfg.use_bias:
            shapes[name + ".bias"] = (width,)

    for i in range(cfg.n_layer):
        p = f"backbone.blocks.{i}."
        m = p + "mlstm_layer."
        norm(p + "norm_mlstm", d)
        linear(m + "q", qk, d)
        linear(m + "k", qk, d)
        linear(m + "v", vd, d)
        linear(m + "ogate_preact", vd, d)
        linear(m + "igate_preact", H, d, bias=True)
        linear(m + "fgate_preact", H, d, bias=True)
        norm(m + "multihead_norm", vd)
        linear(m + "out_proj", d, vd)
        norm(p + "norm_ffn", d)
        linear(p + "ffn.proj_up_gate", ff, d)
        linear(p + "ffn.proj_up", ff, d)
        linear(p + "ffn.proj_down", d, ff)
    shapes["backbone.out_norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


#: why some sites take no intervention
NOT_EDITABLE = {
    "attn": "it is computed from q, k and the gates after the run and feeds nothing; "
            "intervene on q, k, v, gate_i, gate_f, state or normalizer instead",
}


class _Layer:
    """One block's weights, in the model's dtype and device (biases None when absent)."""

    def __init__(self, w: dict, p: str):
        m = p + "mlstm_layer."
        g = lambda name: (w[name + ".weight"], w.get(name + ".bias"))  # noqa: E731
        self.norm_mlstm = g(p + "norm_mlstm")
        self.q, self.k, self.v = g(m + "q"), g(m + "k"), g(m + "v")
        self.ogate, self.igate, self.fgate = g(m + "ogate_preact"), g(m + "igate_preact"), g(m + "fgate_preact")
        self.mh_norm = g(m + "multihead_norm")
        self.out_proj = g(m + "out_proj")
        self.norm_ffn = g(p + "norm_ffn")
        self.up_gate, self.up, self.down = g(p + "ffn.proj_up_gate"), g(p + "ffn.proj_up"), g(p + "ffn.proj_down")


class XLSTMModel(XlstmStates, FamilyModel):
    """An instrumented xLSTM (mLSTM) language model.  Build with :func:`engine.load` or from a
    config and canonical weights.  ``attention_window``: see ``engine.models.mamba.AttentionWindow``."""

    architecture = "xlstm"
    SITES = SITES
    SITE_ALIASES = SITE_ALIASES
    ATTENTION_NEEDS = frozenset({"q", "k", "gate_i", "gate_f", "normalizer", "m"})
    NOT_EDITABLE = NOT_EDITABLE

    weight_shapes = staticmethod(canonical_weight_shapes)

    def _prepare(self):
        w = self._w
        self.embed = w["backbone.embeddings.weight"]
        self.head = w.get("lm_head.weight", self.embed)
        self.out_norm = w["backbone.out_norm.weight"]
        self.layers = [_Layer(w, f"backbone.blocks.{i}.") for i in range(self.config.n_layer)]

    @property
    def state_dtype(self):
        """The recurrence runs in at least float32 (as transformers' inference_state_dtype)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    # -- probes -----------------------------------------------------------------------
    def _site_shapes(self):
        cfg = self.config
        H, dk, dv = cfg.num_heads, cfg.dk, cfg.dv
        return {"in": (cfg.d_model,), "q": (cfg.qk_dim,), "k": (cfg.qk_dim,), "v": (cfg.v_dim,),
                "gate_i": (H,), "gate_f": (H,), "gate_o": (cfg.v_dim,), "state": (H, dk, dv),
                "normalizer": (H, dk), "m": (H,), "h": (cfg.v_dim,), "mix": (cfg.d_model,), "mid": (cfg.d_model,), "mlp": (cfg.d_model,),
                "out": (cfg.d_model,)}

    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        desc = {
            "in": "rmsnorm(x) (norm_mlstm): the input of q, k, v and the gates",
            "q": f"query W_q in, {cfg.num_heads} heads of {cfg.dk} (scaled by 1/sqrt({cfg.dk}) inside the cell)",
            "k": f"key W_k in, {cfg.num_heads} heads of {cfg.dk}",
            "v": f"value W_v in, {cfg.num_heads} heads of {cfg.dv}",
            "gate_i": "log input gate i~ = softcap(W_i in + b_i) per head (the input gate is exp(i~))",
            "gate_f": "log forget gate log f = logsigmoid(softcap(W_f in + b_f)) per head, <= 0 "
                      "(0: keep everything; very negative: forget)",
            "gate_o": "output gate o = sigmoid(W_o in), per channel",
            "state": "memory C_t = f_t C_(t-1) + i_t k_t v_t^T per head (head x key x value), unstabilised "
                     "(interventions index it flattened: unit = (head*d_qk + key)*d_v + value)",
            "normalizer": "normaliser n_t = f_t n_(t-1) + i_t k_t per head (head x key), unstabilised",
            "m": "stabiliser m_t = max(log f_t + m_(t-1), i~_t) per head: the stored state is exp(-m) C; "
                 "h depends on it only through eps exp(m) (an edit sets the scale the edited state is kept in)",
            "h": "cell output C_t^T q'_t / (max(|n_t.q'_t|, 1) + eps exp(m_t)), before the "
                 "multihead norm and the output gate",
            "mix": "the mLSTM branch W_out (o * multihead_layernorm(h)), before the residual add (mid = x + mix)",
            "mixer": "the mixer output, before the residual add: another name of mix (the same values, the same "
                     "edits), shared with the other families",
            "mid": "residual stream after the mLSTM branch's add, x + mix: the feed-forward block's input",
            "mlp": "feed-forward output W_down (silu(W_gate g) * W_up g), g = rmsnorm(mid) (norm_ffn), before the "
                   "residual add",
            "out": "residual stream after the block: mid + mlp",
            "attn": f"implicit attention mean over heads of |alpha_ij|, alpha_ij = q'_i.k_j exp(sum_(k=j+1..i) "
                    f"log f_k + i~_j - m_i) / (max(|n_i.q'_i| exp(-m_i), exp(-m_i)) + eps), so that "
                    f"h_i = sum_j alpha_ij v_j; rows {r0}..{r1 - 1}, column m is key step {c0}+m; "
                    "0 where j > i, NaN in rows outside the window",
        }
        dims = {"gate_i": ("token", "head"), "gate_f": ("token", "head"), "m": ("token", "head"),
                "state": ("token", "head", "key", "value"), "normalizer": ("token", "head", "key")}
        shapes = {**self._site_shapes(), "attn": (c1 - c0,), "mixer": (cfg.d_model,)}
        cap = f"{cfg.logit_soft_cap} tanh(z / {cfg.logit_soft_cap}) of " if cfg.logit_soft_cap else ""
        return probe_table(cfg.n_layer, SITES, {site: (shapes[site], text) for site, text in desc.items()},
                           embed=(cfg.d_model, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, f"next-token scores {cap}lm_head(out_norm(x)) (before softmax)"),
                           dims=dims)

    def state_units(self, head: int, keys=None, values=None) -> list[int]:
        """Unit indices of the ``state`` probe (flattened) for one head and, optionally, some of
        its key and value rows: for interventions."""
        dk, dv = self.config.dk, self.config.dv
        keys = range(dk) if keys is None else ([keys] if isinstance(keys, int) else keys)
        values = range(dv) if values is None else ([values] if isinstance(values, int) else values)
        return [(head * dk + int(a)) * dv + int(b) for a in keys for b in values]

    # -- the forward pass -------------------------------------------------------------------
    def initial_state(self, batch: int):
        cfg = self.config
        z = dict(dtype=self.state_dtype, device=self.device)
        return (torch.zeros(batch, cfg.num_heads, cfg.dk, cfg.dv, **z), torch.zeros(batch, cfg.num_heads, cfg.dk, **z),
                torch.zeros(batch, cfg.num_heads, **z))

    def _rms(self, x, wb):
        w, b = wb
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.norm_eps) * w
        return y if b is None else y + b

    def _embed_tokens(self, x):
        return F.embedding(x, self.embed)

    def _logits(self, h):
        return soft_cap(F.linear(self._rms(h, (self.out_norm, None)), self.head), self.config.logit_soft_cap)

    def _layer_chunk(self, k, h, a, state, edits, record):
        cfg = self.config
        lay = self.layers[k]
        n, B = h.shape[:2]
        H = cfg.num_heads

        def edit(site, v):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                    v = e.apply_all(v, a)
            return v

        vals = {"in": edit("in", self._rms(h, lay.norm_mlstm))}
        u = vals["in"]
        for site, wb in (("q", lay.q), ("k", lay.k), ("v", lay.v)):
            vals[site] = edit(site, F.linear(u, *wb))
        vals["gate_i"] = edit("gate_i", soft_cap(F.linear(u, *lay.igate), cfg.gate_soft_cap))
        vals["gate_f"] = edit("gate_f", F.logsigmoid(soft_cap(F.linear(u, *lay.fgate), cfg.gate_soft_cap)))
        vals["gate_o"] = edit("gate_o", torch.sigmoid(F.linear(u, *lay.ogate)))
        cell, state = self._cell(vals, state, a, edits, record)
        vals.update(cell)
        hh = vals["h"] = edit("h", vals["h"])
        normed = F.layer_norm(hh.reshape(n, B, H, cfg.dv), (cfg.dv,), eps=cfg.norm_eps).reshape(n, B, cfg.v_dim)
        normed = normed * lay.mh_norm[0] + (lay.mh_norm[1] if lay.mh_norm[1] is not None else 0)
        vals["mix"] = edit("mix", F.linear(vals["gate_o"] * normed, *lay.out_proj))
        x = vals["mid"] = edit("mid", h + vals["mix"])
        f = self._rms(x, lay.norm_ffn)
        ff = vals["mlp"] = edit("mlp", F.linear(F.silu(F.linear(f, *lay.up_gate)) * F.linear(f, *lay.up), *lay.down))
        vals["out"] = edit("out", x + ff)
        return vals, state

    def _cell(self, vals, state, a, edits, record):
        """The mLSTM recurrence over one chunk, ``SUB`` steps at a time; edits of ``state``,
        ``normalizer`` and ``m`` split a block after the edited step."""
        cfg = self.config
        n, B = vals["q"].shape[:2]
        H, dk, dv = cfg.num_heads, cfg.dk, cfg.dv
        sd = self.state_dtype
        heads = lambda t, d: t.to(sd).reshape(n, B, H, d).permute(1, 2, 0, 3)  # noqa: E731  [B, H, n, d]
        q, k, v = heads(vals["q"], dk), heads(vals["k"], dk), heads(vals["v"], dv)
        li, lf = vals["gate_i"].to(sd).permute(1, 2, 0), vals["gate_f"].to(sd).permute(1, 2, 0)  # [B, H, n]
        C, N, M = state
        want_states = "state" in record
        state_edits = {s: edits.get(s, ()) for s in ("m", "state", "normalizer")}
        steps = sorted({int(t) - a for es in state_edits.values() for e in es for t in e.steps if a <= t < a + n})
        hs, ns, ms, cs = [], [], [], []  # per stretch of steps, [B, H, steps, ...]
        edited = {}  # step -> the edited (unstabilised) state after it, recorded as given
        for p in range(0, n, SUB):
            end = min(p + SUB, n)
            o = p
            for t in [t for t in steps if p <= t < end] + [end]:
                blk = _block(q[:, :, o:end], k[:, :, o:end], v[:, :, o:end], li[:, :, o:end], lf[:, :, o:end],
                             C, N, M, cfg.eps, upto=t - o, want_states=want_states)
                C, N, M = blk.C, blk.N, blk.M
                hs.append(blk.h[:, :, :t + 1 - o])
                ns.append(blk.n[:, :, :t + 1 - o])
                ms.append(blk.m[:, :, :t + 1 - o])
                if want_states:
                    cs.append(blk.states[:, :, :t + 1 - o])
                if t == end:
                    break
                C, N, M, edited[t] = _edit_state(C, N, M, state_edits, a + t)
                hs[-1][:, :, -1] = _readout(q[:, :, t], C, N, M, cfg.eps)
                ms[-1][:, :, -1] = M
                o = t + 1
                if o == end:
                    break
        m = torch.cat(ms, 2)  # [B, H, n]
        grow = torch.exp(m)
        out = {"h": torch.cat(hs, 2).permute(2, 0, 1, 3).reshape(n, B, H * dv).to(self.dtype),
               "normalizer": (torch.cat(ns, 2) * grow[..., None]).permute(2, 0, 1, 3),
               "m": m.permute(2, 0, 1)}
        if want_states:
            out["state"] = (torch.cat(cs, 2) * grow[..., None, None]).permute(2, 0, 1, 3, 4)
        for t, (Cu, Nu) in edited.items():
            out["normalizer"][t] = Nu
            if want_states:
                out["state"][t] = Cu
        return out, (C.contiguous(), N.contiguous(), M.contiguous())

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe of layer ``k``: rows before ``s`` from the previous run (same
        window), the rows from ``s`` on computed (each row on its own, so alike in every run)."""
        (r0, r1), cols = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, self._window.width), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[name][:s]
        hi = min(r1, T)
        arr = {n: out[layer_probe(k, n)] for n in self.ATTENTION_NEEDS}
        for i0 in range(max(r0, s), hi, ATTN_TILE):  # tiles only bound the memory: rows are independent
            i1 = min(i0 + ATTN_TILE, hi)
            for b in range(B):
                att = mlstm_attention(*(arr[n][:, b] for n in ("q", "k", "gate_i", "gate_f", "normalizer", "m")),
                                      (i0, i1), cols, eps=self.config.eps)
                res[i0:i1, b] = att.abs().mean(-1).to(self.dtype)
        return res


def _edit_state(C, N, M, edits: dict, step: int):
    """The stabilised state after ``step`` with the edits of ``m``, ``state`` and ``normalizer``
    applied (the last two in the unstabilised scale of the probes; an edited m sets the scale
    the state is kept in).  Returns ``(C, N, M, (C unstabilised, N unstabilised))``."""
    B, H, dk, dv = C.shape
    Cu = C * torch.exp(M)[..., None, None]
    Nu = N * torch.exp(M)[..., None]
    for e in edits["m"]:
        M = e.apply_step(M, step)
    for e in edits["state"]:
        Cu = e.apply_step(Cu.reshape(B, -1), step).reshape(B, H, dk, dv)
    for e in edits["normalizer"]:
        Nu = e.apply_step(Nu.reshape(B, -1), step).reshape(B, H, dk)
    shrink = torch.exp(-M)
    return Cu * shrink[..., None, None], Nu * shrink[..., None], M, (Cu, Nu)


class _Block:
    """What :func:`_block` returns: per step h, n (stabilised), m, states (when asked), and the
    stabilised state (C, N, M) after its last step (or after step ``upto``)."""

    __slots__ = ("h", "n", "m", "states", "C", "N", "M")


def _block(q, k, v, li, lf, C, N, M, eps, upto, want_states) -> _Block:
    """Steps of the mLSTM recurrence at once (the chunkwise-parallel form): ``q``, ``k`` [B, H,
    L, d_qk], ``v`` [B, H, L, d_v], ``li``, ``lf`` (log gates) [B, H, L], from the stabilised
    state ``C`` [B, H, d_qk, d_v], ``N`` [B, H, d_qk], ``M`` [B, H].  The state returned is the
    one after step ``upto`` (< L; the last step when ``upto >= L``)."""
    L, dk = q.shape[2], q.shape[3]
    scale = dk ** -0.5
    b = lf.cumsum(-1)  # sum of log f over the block's steps 0..t
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    logD = torch.where(causal, b[..., :, None] - b[..., None, :] + li[..., None, :], float("-inf"))
    from_state = b + M[..., None]  # log weight of the incoming state at each step, before stabilising
    m = torch.maximum(from_state, logD.max(-1).values)
    D = torch.exp(logD - m[..., None])  # [B, H, L, L]: i_j prod_(j<k<=t) f_k, stabilised
    carry = torch.exp(from_state - m)  # [B, H, L]
    qs = q * scale
    S = (qs @ k.transpose(-1, -2)) * D
    num = carry[..., None] * (qs @ C) + S @ v
    den = carry * (qs @ N[..., None])[..., 0] + S.sum(-1)
    out = _Block()
    out.h = num / (torch.maximum(den.abs(), torch.exp(-m)) + eps)[..., None]
    out.n = carry[..., None] * N[:, :, None] + D @ k  # [B, H, L, d_qk]
    out.m = m
    last = min(upto, L - 1)
    out.M = m[..., last]
    out.N = out.n[:, :, last]
    out.C = carry[..., last, None, None] * C + (k * D[..., last, :, None]).transpose(-1, -2) @ v
    out.states = None
    if want_states:
        B_, H = q.shape[:2]
        kv = (k[..., :, None] * v[..., None, :]).reshape(B_, H, L, -1)  # [B, H, L, d_qk*d_v]
        out.states = (carry[..., None, None] * C[:, :, None] + (D @ kv).reshape(B_, H, L, dk, -1))
    return out


def _readout(q, C, N, M, eps):
    """h of one step from its stabilised state: ``q`` [B, H, d_qk]."""
    qs = q * q.shape[-1] ** -0.5
    num = (qs[:, :, None, :] @ C)[:, :, 0]
    den = (qs * N).sum(-1)
    return num / (torch.maximum(den.abs(), torch.exp(-M)) + eps)[..., None]


def mlstm_attention(q, k, gate_i, gate_f, normalizer, m, rows, cols, eps=1e-6) -> torch.Tensor:
    """Implicit attention of one mLSTM layer and sequence, per head, in float64:
    ``alpha_ij = q'_i.k_j exp(sum_(k=j+1..i) log f_k + i~_j - m_i) / den_i`` with
    ``den_i = max(|q'_i.n_i| exp(-m_i), exp(-m_i)) + eps`` (``n_i`` unstabilised), so that from a
    zero state ``h_i = sum_j alpha_ij v_j`` (per head).  Inputs are the probes of one sequence:
    ``q``, ``k`` [T, H*d_qk], ``gate_i``, ``gate_f``, ``m`` [T, H], ``normalizer`` [T, H, d_qk].
    Returns [rows, cols, H]: 0 where j > i, and for rows or columns past T."""
    T, H = gate_i.shape
    r0, r1 = rows
    c0, c1 = cols
    out = torch.zeros(r1 - r0, c1 - c0, H, dtype=torch.float64, device=q.device)
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0:
        return out
    f64 = lambda t: torch.as_tensor(t).to(torch.float64)  # noqa: E731
    dk = q.shape[-1] // H
    qs = f64(q[r0:r1c]).reshape(-1, H, dk) * dk ** -0.5
    kk = f64(k[c0:c1c]).reshape(-1, H, dk)
    g = torch.cumsum(f64(gate_f), 0)  # sum of log f over steps 0..t
    mi = f64(m[r0:r1c])
    logw = g[r0:r1c, None, :] - g[None, c0:c1c, :] + f64(gate_i[c0:c1c])[None] - mi[:, None, :]
    i_idx = torch.arange(r0, r1c, device=q.device)[:, None]
    j_idx = torch.arange(c0, c1c, device=q.device)[None, :]
    w = torch.where((j_idx <= i_idx)[..., None], torch.exp(logw), torch.zeros_like(logw))
    scores = (qs[:, None] * kk[None]).sum(-1)  # elementwise: a row's numbers do not depend on the other rows
    stab = torch.exp(-mi)
    den = torch.maximum((qs * f64(normalizer[r0:r1c])).sum(-1).abs() * stab, stab) + eps
    out[:r1c - r0, :c1c - c0] = scores * w / den[:, None, :]
    return out


def from_transformers(hf_model, **kwargs) -> XLSTMModel:
    """Wrap an in-memory ``transformers`` ``xLSTMForCausalLM`` (weights are copied)."""
    sd = dict(hf_model.state_dict())
    kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
    return load_xlstm(sd, [("config", hf_model.config.to_dict())], name=f"<in-memory {type(hf_model).__name__}>",
                      fmt="in-memory", source=f"<in-memory {type(hf_model).__name__}>", **kwargs)


# ======================================================================================
# loading: transformers xLSTMForCausalLM folders
# ======================================================================================

_MLSTM_KEY = re.compile(r"^(.*?)blocks\.(\d+)\.mlstm_layer\.(igate_preact|ifgate_preact)\.weight$")


def looks_like_xlstm(tensors: dict, configs: list) -> bool:
    """An xLSTM checkpoint: ``…blocks.{i}.mlstm_layer.igate_preact`` (or fused ``ifgate_preact``)
    tensors, or a config with ``model_type`` "xlstm"."""
    if any(_MLSTM_KEY.match(k) for k in tensors):
        return True
    return any(str(d.get("model_type", "")).lower() == "xlstm" or d.get("family") == "xlstm" for _, d in configs)


def _unfuse(canon: dict, origin: dict, H: int) -> None:
    """``weight_mode="fused"`` tensors split into the ``single`` names, in place."""
    for key in [k for k in canon if ".mlstm_layer.qkv_opreact." in k or ".mlstm_layer.ifgate_preact." in k
                or ".ffn.proj_up_gate_z." in k]:
        t = canon.pop(key)
        src = origin.pop(key)
        base, kind = key.rsplit(".", 1)
        owner, fused = base.rsplit(".", 1)
        if fused == "qkv_opreact":
            vd = canon.get(owner.replace("mlstm_layer", "mlstm_layer.out_proj") + ".weight")
            v_dim = int(vd.shape[1]) if vd is not None else 0
            qk = (t.shape[0] - 2 * v_dim) // 2
            parts = zip(("q", "k", "v", "ogate_preact"), torch.split(t, [qk, qk, v_dim, v_dim]))
        elif fused == "ifgate_preact":
            parts = zip(("igate_preact", "fgate_preact"), torch.split(t, [H, H]))
        else:
            parts = zip(("proj_up_gate", "proj_up"), torch.chunk(t, 2))
        for name, part in parts:
            canon[f"{owner}.{name}.{kind}"] = part
            origin[f"{owner}.{name}.{kind}"] = src


def _config_fields(configs: list) -> dict:
    """XLSTMConfig fields stated by config.json (``transformers``) or SeqScope's metadata."""
    for src, d in configs:
        if d.get("family") == "xlstm":
            return {k: v for k, v in d.items() if k in XLSTMConfig.__dataclass_fields__}
        if str(d.get("model_type", "")).lower() == "xlstm":
            c = StatedConfig(d, src)
            out = {"use_bias": c.flag("use_bias", False), "norm_eps": c.number("norm_eps", 1e-6),
                   "eps": c.number("eps", 1e-6), "gate_soft_cap": c.number("gate_soft_cap", 15.0, nullable=True),
                   "logit_soft_cap": c.number("output_logit_soft_cap", 30.0, nullable=True)}
            # tie_word_embeddings is not read: transformers' xLSTM always has its own lm_head
            # transformers builds num_blocks blocks; num_hidden_layers is kept beside it (default 32)
            # and unused, so it counts only where num_blocks is absent
            layers_key = "num_blocks" if "num_blocks" in d else "num_hidden_layers"
            out.update(c.sizes((("d_model", "hidden_size"), ("n_layer", layers_key),
                                ("vocab_size", "vocab_size"), ("num_heads", "num_heads"))))
            if "d_model" in out:  # as xLSTMLayer sizes them (not the cache's rounded qk_dim)
                out["qk_dim"] = c.scaled("qk_dim_factor", out["d_model"], 0.5)
                out["v_dim"] = c.scaled("v_dim_factor", out["d_model"], 1.0)
            return out
    return {}


def _infer_config(canon: dict, stated: dict) -> dict:
    """XLSTMConfig fields from the weights, where the config left them out."""
    out = dict(stated)
    n = 0
    while f"backbone.blocks.{n}.mlstm_layer.igate_preact.weight" in canon:
        n += 1
    out.setdefault("n_layer", n)
    shape = lambda k, i: int(canon[k].shape[i]) if k in canon and canon[k].ndim > i else None  # noqa: E731
    p = "backbone.blocks.0."
    guesses = {"vocab_size": shape("backbone.embeddings.weight", 0), "d_model": shape("backbone.embeddings.weight", 1),
               "num_heads": shape(p + "mlstm_layer.igate_preact.weight", 0), "qk_dim": shape(p + "mlstm_layer.q.weight", 0),
               "v_dim": shape(p + "mlstm_layer.v.weight", 0), "ffn_dim": shape(p + "ffn.proj_up.weight", 0)}
    for key, value in guesses.items():
        if value is not None:
            out.setdefault(key, value)
    out.setdefault("use_bias", p + "mlstm_layer.q.bias" in canon)
    out["tie_embeddings"] = "lm_head.weight" not in canon
    return out


def load_xlstm(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> XLSTMModel:
    """An :class:`XLSTMModel` from a checkpoint's tensors and configs (``[(where, dict)]``);
    every problem is a LoadError naming the keys involved."""
    prefixes = {m.group(1) for k in tensors if (m := _MLSTM_KEY.match(k))}
    if len(prefixes) > 1:
        raise LoadError(f"{name}: xLSTM blocks under several prefixes ({', '.join(sorted(prefixes))})")
    prefix = prefixes.pop() if prefixes else "backbone."
    outer = prefix[: -len("backbone.")] if prefix.endswith("backbone.") else ""
    canon, origin = {}, {}
    for k, v in tensors.items():
        if k.startswith(outer) and k[len(outer):].startswith("lm_head."):
            cn = k[len(outer):]
        elif k.startswith(prefix):
            cn = "backbone." + k[len(prefix):]
        else:
            cn = k
        canon[cn], origin[cn] = v, k
    stated = _config_fields(configs)
    ifg = canon.get("backbone.blocks.0.mlstm_layer.ifgate_preact.weight")
    _unfuse(canon, origin, stated.get("num_heads") or (int(ifg.shape[0]) // 2 if ifg is not None else 0))
    fields = _infer_config(canon, stated)
    cfg = config_from_fields(XLSTMConfig, fields, name=name, label="xLSTM", tensors=tensors)
    expected = canonical_weight_shapes(cfg)
    what = (f"an xLSTM model (xLSTMForCausalLM layout: d_model={cfg.d_model}, n_layer={cfg.n_layer}, "
            f"num_heads={cfg.num_heads}, qk_dim={cfg.qk_dim}, v_dim={cfg.v_dim}, ffn_dim={cfg.ffn_dim}, "
            f"vocab_size={cfg.vocab_size})")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    model = build_model(XLSTMModel, cfg, {cn: canon[cn] for cn in expected}, name=name, label="xLSTM", **kwargs)
    model.load_info.update({"format": fmt, "layout": "transformers xLSTMForCausalLM"})
    if unused:
        model.load_info["notes"] = unused_note(unused)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_xlstm
load = load_xlstm
