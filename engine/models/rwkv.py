"""RWKV (version 4): an instrumented RNN language model in the layout of ``transformers``'
``RwkvForCausalLM`` (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era").

The model (H hidden width, A attention width, F feed-forward width)::

    x_0 = pre_ln(embed[token])                                  (pre_ln: a LayerNorm in block 0)
    layer i:  a_t  = ln1(x_t)                                   time mixing ("attention")
              r_t  = sigmoid(W_r (mu_r a_t + (1 - mu_r) a_(t-1)))
              k_t  = W_k (mu_k a_t + (1 - mu_k) a_(t-1))
              v_t  = W_v (mu_v a_t + (1 - mu_v) a_(t-1))        (a_(-1) = 0: the token shift)
              wkv_t = (N_(t-1) + e^(u + k_t) v_t) / (D_(t-1) + e^(u + k_t))
              N_t = e^w N_(t-1) + e^(k_t) v_t,  D_t = e^w D_(t-1) + e^(k_t)      per channel
              x'_t = x_t + W_o (r_t * wkv_t)                   W_o (r_t * wkv_t): "att" (= "mixer"); x'_t: "mid"
              f_t  = ln2(x'_t)                                  channel mixing (feed-forward)
              out_t = x'_t + sigmoid(W_r' (mu_r' f_t + (1 - mu_r') f_(t-1)))
                             * W_v' relu(W_k' (mu_k' f_t + (1 - mu_k') f_(t-1)))^2     (f_(-1) = 0)
    logits = head(ln_out(out of the last layer))

with decay ``w = -exp(time_decay)`` and bonus ``u = time_first`` (per channel).  The WKV state
is kept as ``transformers`` and the RWKV authors keep it, scaled for stability: ``(num, den,
max)`` with ``N = num * e^max`` and ``D = den * e^max``; the state a re-run needs is that
triple plus the previous ``a`` and ``f`` of every layer (the token shifts).

Canonical weight names are those of ``RwkvForCausalLM`` (``rwkv.blocks.{i}.attention.*``,
``rwkv.blocks.{i}.feed_forward.*``, ``rwkv.embeddings.weight``, ``rwkv.ln_out``, ``head``); the
loader also reads the original BlinkDL RWKV-4 ``.pth`` names (``emb``, ``blocks.0.ln0``,
``att.time_mix_k``, ``ffn.*``) and renames them as ``transformers``' conversion script does.

``rescale_every``: in ``eval()`` ``transformers`` divides the residual stream by 2 every
``rescale_every`` blocks (and the output weights to match), a float16 overflow guard that
changes the results only through the LayerNorm epsilons.  SeqScope computes the model the
weights define (``rescale_every = 0``); the loader notes the setting.  ``ln_out`` uses
``nn.LayerNorm``'s default epsilon 1e-5 whatever ``layer_norm_epsilon`` says, as in
``transformers``.

How a layer runs
----------------
As Mamba's (``engine.models.mamba``): chunks aligned to multiples of ``chunk``; inside a chunk
every per-token quantity comes from batched matmuls over the chunk's rows (interventions on
those sites applied to the whole chunk at once, each before what is computed from it), and
only the WKV recurrence loops over time: a compiled ``numba`` loop on the CPU (the fast path)
or a torch loop over steps (the reference, the GPU path and the half-precision path, which
runs the recurrence in float32 as ``transformers`` does).  An intervention on ``state`` at
step t splits the recurrence after step t.  A step's value never depends on anything at or
after it, and the chunk grid is the same for every run, so a re-run from a state kept at a
chunk boundary equals a full re-run bit for bit.

Implicit attention (probe ``attn``): for channel c, ``wkv_i = sum_(j<=i) alpha_ij v_j`` with
``alpha_ij = e^(w_(j+1) + ... + w_(i-1) + k_j) / Z_i`` for j < i, ``alpha_ii = e^(u_i + k_i) /
Z_i``, ``Z_i = D_(i-1) + e^(u_i + k_i)``: a normalised attention per channel (each row sums to
1).  Computed for a window of rows and columns (:attr:`RwkvModel.attention_window`), reduced by
the mean over channels for display (:func:`wkv_attention`).

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{k}.state`` [d_att, 3], (num, den, max) as the ``state`` probe shows it (a zero state
has max = -1e38), and the token shifts' inputs ``layers.{k}.last_att_in`` and
``layers.{k}.last_ffn_in`` [d_model]: the ``att_in`` and ``ffn_in`` values of the last step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..probes import ProbeSpec, layer_probe
from .family import FamilyConfig, ScannedFamilyModel, probe_table
from .state_forms import RwkvStates
from .family import numba_available  # noqa: F401 - imported from here by tests and benchmarks
from .rwkv_scan import EMPTY_MAX, TILE, _scan_numba, _scan_torch, wkv_attention, wkv_log_normaliser

SITES = ("att_in", "r", "k", "v", "w", "u", "state", "wkv", "att", "mixer", "mid", "ffn_in", "ffn_k", "ffn_r", "ffn",
         "mlp", "out", "attn")
#: the names every family shares for RWKV's own (see engine.probes.RESIDUAL_SITES)
SITE_ALIASES = {"mixer": "att", "mlp": "ffn"}
#: the state's components, in the order of the ``state`` probe's last axis
STATE_PARTS = ("num", "den", "max")
LN_OUT_EPS = 1e-5  # nn.LayerNorm's default, which transformers' ln_out keeps


@dataclass(frozen=True)
class RwkvConfig(FamilyConfig):
    FAMILY = "rwkv"

    d_model: int  # hidden_size
    n_layer: int
    vocab_size: int
    d_att: int = 0  # attention_hidden_size; 0: d_model
    d_ffn: int = 0  # intermediate_size; 0: 4 * d_model
    norm_eps: float = 1e-5  # layer_norm_epsilon (pre_ln, ln1, ln2)
    tie_embeddings: bool = False  # head shares the embedding matrix

    def __post_init__(self):
        if not self.d_att:
            object.__setattr__(self, "d_att", self.d_model)
        if not self.d_ffn:
            object.__setattr__(self, "d_ffn", 4 * self.d_model)
        self.require_positive("d_model", "n_layer", "vocab_size", "d_att", "d_ffn")


def canonical_weight_shapes(cfg: RwkvConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has (``RwkvForCausalLM`` names), with its shape."""
    H, A, Fd = cfg.d_model, cfg.d_att, cfg.d_ffn
    shapes: dict[str, tuple[int, ...]] = {"rwkv.embeddings.weight": (cfg.vocab_size, H)}
    for i in range(cfg.n_layer):
        p = f"rwkv.blocks.{i}."
        if i == 0:
            shapes[p + "pre_ln.weight"] = (H,)
            shapes[p + "pre_ln.bias"] = (H,)
        for ln in ("ln1", "ln2"):
            shapes[p + ln + ".weight"] = (H,)
            shapes[p + ln + ".bias"] = (H,)
        a = p + "attention."
        shapes[a + "time_decay"] = (A,)
        shapes[a + "time_first"] = (A,)
        for m in ("key", "value", "receptance"):
            shapes[a + f"time_mix_{m}"] = (1, 1, H)
            shapes[a + f"{m}.weight"] = (A, H)
        shapes[a + "output.weight"] = (H, A)
        f = p + "feed_forward."
        shapes[f + "time_mix_key"] = (1, 1, H)
        shapes[f + "time_mix_receptance"] = (1, 1, H)
        shapes[f + "key.weight"] = (Fd, H)
        shapes[f + "receptance.weight"] = (H, H)
        shapes[f + "value.weight"] = (H, Fd)
    shapes["rwkv.ln_out.weight"] = (H,)
    shapes["rwkv.ln_out.bias"] = (H,)
    if not cfg.tie_embeddings:
        shapes["head.weight"] = (cfg.vocab_size, H)
    return shapes


#: why interventions on ``attn`` are refused
NOT_EDITABLE_ATTN = "it is computed from k, w, u and the state after the run and feeds nothing; " \
    "intervene on k, w, u or state instead"


class _Layer:
    """One block's weights, in the model's dtype and device (``w`` and ``u`` in the dtype the
    recurrence runs in)."""

    def __init__(self, wt: dict, i: int, scan_dtype):
        p = f"rwkv.blocks.{i}."
        a, f = p + "attention.", p + "feed_forward."
        self.pre_ln = (wt[p + "pre_ln.weight"], wt[p + "pre_ln.bias"]) if i == 0 else None
        self.ln1 = (wt[p + "ln1.weight"], wt[p + "ln1.bias"])
        self.ln2 = (wt[p + "ln2.weight"], wt[p + "ln2.bias"])
        self.mix_k, self.mix_v, self.mix_r = (wt[a + f"time_mix_{m}"].reshape(-1) for m in ("key", "value", "receptance"))
        self.Wk, self.Wv, self.Wr, self.Wo = (wt[a + f"{m}.weight"] for m in ("key", "value", "receptance", "output"))
        self.w = -torch.exp(wt[a + "time_decay"].to(scan_dtype))
        self.u = wt[a + "time_first"].to(scan_dtype)
        self.fmix_k, self.fmix_r = (wt[f + f"time_mix_{m}"].reshape(-1) for m in ("key", "receptance"))
        self.Fk, self.Fr, self.Fv = (wt[f + f"{m}.weight"] for m in ("key", "receptance", "value"))


class RwkvModel(RwkvStates, ScannedFamilyModel):
    """An instrumented RWKV-4 language model.  Build with :func:`engine.load`,
    :func:`from_transformers`, or from a config and canonical weights.

    ``scan``: ``"numba"`` (compiled CPU loop), ``"torch"`` (a loop over steps: the reference,
    and the path on GPUs and in half precision) or ``"auto"`` (numba on a CPU, unless it cannot be imported).
    ``attention_window``: which rows and columns the ``attn`` probe holds (see
    :class:`engine.models.mamba.AttentionWindow`).
    """

    architecture = "rwkv"
    SITES = SITES
    SITE_ALIASES = SITE_ALIASES
    ATTENTION_NEEDS = frozenset({"k", "w", "u", "state"})
    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}

    weight_shapes = staticmethod(canonical_weight_shapes)

    def _prepare(self):
        self.embed = self._w["rwkv.embeddings.weight"]
        self.head = self._w.get("head.weight", self.embed)
        self.ln_out = (self._w["rwkv.ln_out.weight"], self._w["rwkv.ln_out.bias"])
        self.layers = [_Layer(self._w, i, self.scan_dtype) for i in range(self.config.n_layer)]

    @property
    def scan_dtype(self):
        """The dtype the WKV recurrence runs in: float32 for half-precision models."""
        return self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32

    def decay(self, layer: int) -> torch.Tensor:
        """The per-channel decay ``w = -exp(time_decay)`` of a layer, [d_att]."""
        return self.layers[layer].w

    def bonus(self, layer: int) -> torch.Tensor:
        """The per-channel bonus ``u = time_first`` of a layer, [d_att]."""
        return self.layers[layer].u

    def state_units(self, channels, parts=None) -> list[int]:
        """Unit indices of the ``state`` probe (flattened ``channel * 3 + part``, parts 0 num,
        1 den, 2 max) for ``channels`` and, optionally, only some ``parts`` (indices or names):
        for interventions.  Zeroing ``num`` and ``den`` of a channel empties its memory."""
        channels = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
        if parts is None:
            parts = range(3)
        elif isinstance(parts, (int, np.integer, str)):
            parts = [parts]
        idx = [STATE_PARTS.index(p) if isinstance(p, str) else int(p) for p in parts]
        return [int(c) * 3 + p for c in channels for p in idx]

    # -- probes -----------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        H, A, Fd = cfg.d_model, cfg.d_att, cfg.d_ffn
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        desc = {
            "att_in": (H, "a_t = ln1(x_t): the time-mixing input (and, at step t+1, its token-shift input a_(t-1))"),
            "r": (A, "receptance r_t = sigmoid(W_r (mu_r a_t + (1 - mu_r) a_(t-1)))"),
            "k": (A, "key k_t = W_k (mu_k a_t + (1 - mu_k) a_(t-1)); token j enters the state with weight e^(k_j)"),
            "v": (A, "value v_t = W_v (mu_v a_t + (1 - mu_v) a_(t-1))"),
            "w": (A, "decay w = -exp(time_decay), the same at every step unless edited; w_t is applied when "
                     "step t updates the state (N_t = e^(w_t) N_(t-1) + e^(k_t) v_t), so it first acts on wkv_(t+1)"),
            "u": (A, "bonus u = time_first, the same at every step unless edited: the current token's extra "
                     "log-weight in wkv_t"),
            "state": ((A, 3), "WKV state after step t per channel, as (num, den, max): numerator N_t = num e^max "
                              "= sum_(j<=t) e^(w_(j+1)+...+w_t + k_j) v_j, denominator D_t = den e^max (interventions "
                              "index it flattened: unit = channel*3 + part; zero num and den to empty a channel)"),
            "wkv": (A, "wkv_t = (N_(t-1) + e^(u + k_t) v_t) / (D_(t-1) + e^(u + k_t)): the time-mixing "
                       "recurrence's output, a weighted mean of past and current values"),
            "att": (H, "time-mixing output W_o (r_t * wkv_t), before its residual add (mid = x_t + att_t)"),
            "mixer": (H, "the mixer output, before the residual add: another name of att (the same values, the "
                         "same edits), shared with the other families"),
            "mid": (H, "residual stream after the time-mixing add, x_t + att_t (x_t after pre_ln in layer 0): "
                       "the channel-mixing block's input"),
            "ffn_in": (H, "f_t = ln2(x_t + att_t): the channel-mixing input (and, at step t+1, its token-shift input)"),
            "ffn_k": (Fd, "channel-mixing hidden activation relu(W_k' (mu_k' f_t + (1 - mu_k') f_(t-1)))^2"),
            "ffn_r": (H, "channel-mixing receptance sigmoid(W_r' (mu_r' f_t + (1 - mu_r') f_(t-1)))"),
            "ffn": (H, "channel-mixing output ffn_r * W_v' ffn_k, before its residual add (out = mid + ffn)"),
            "mlp": (H, "the feed-forward output, before the residual add: another name of ffn (the same values, "
                       "the same edits), shared with the other families"),
            "out": (H, "residual stream after the block: mid + ffn_t = x_t + att_t + ffn_t"),
            "attn": (c1 - c0, f"implicit attention mean_c alpha_ij over channels, alpha_ij = e^(w_(j+1)+...+w_(i-1) "
                              f"+ k_j) / Z_i for j < i and e^(u_i + k_i) / Z_i for j = i, Z_i = D_(i-1) + e^(u_i + k_i) "
                              f"(so wkv_i = sum_j alpha_ij v_j and each channel's row sums to 1); rows {r0}..{r1 - 1}, "
                              f"column m is key step {c0}+m; 0 where j > i, NaN in rows outside the window"),
        }
        return probe_table(cfg.n_layer, SITES, desc, embed=(H, "token embedding (layer 0 applies pre_ln to it)"),
                           logits=(cfg.vocab_size, "next-token scores head(ln_out(x)) (before softmax)"),
                           dims={"state": ("token", "unit", "state")})

    # -- interventions ------------------------------------------------------------------
    # -- the forward pass -----------------------------------------------------------------
    def initial_state(self, batch: int):
        A, H = self.config.d_att, self.config.d_model
        S = torch.zeros(3, batch, A, dtype=self.scan_dtype, device=self.device)
        S[2] = EMPTY_MAX
        zeros = torch.zeros(batch, H, dtype=self.dtype, device=self.device)
        return S, zeros, zeros.clone()

    def _ln(self, h, wb, eps=None):
        """LayerNorm over the last axis, written out: ``F.layer_norm`` hands even a few rows to
        the thread pool, which on a busy machine waits a scheduler tick (~8 ms) per call."""
        mu = h.mean(-1, keepdim=True)
        d = h - mu
        var = (d * d).mean(-1, keepdim=True)
        return d * torch.rsqrt(var + (self.config.norm_eps if eps is None else eps)) * wb[0] + wb[1]

    def _logits(self, h):
        return F.linear(self._ln(h, self.ln_out, LN_OUT_EPS), self.head)

    def _embed_tokens(self, x):
        return F.embedding(x, self.embed)

    def _site_shapes(self):
        cfg = self.config
        H, A = cfg.d_model, cfg.d_att
        return {"att_in": (H,), "r": (A,), "k": (A,), "v": (A,), "w": (A,), "u": (A,), "state": (A, 3),
                "wkv": (A,), "att": (H,), "mid": (H,), "ffn_in": (H,), "ffn_k": (cfg.d_ffn,), "ffn_r": (H,),
                "ffn": (H,), "out": (H,)}

    def _layer_chunk(self, k: int, h, a: int, state, edits, record):
        """Steps ``a..a+n-1`` of layer ``k``: every per-token quantity at once, then the recurrence."""
        lay = self.layers[k]
        n, B = h.shape[0], h.shape[1]
        A = self.config.d_att
        S, a_prev, f_prev = state

        def active(site):
            return [e for e in edits.get(site, ()) if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n]

        def edit(site, v):
            for e in active(site):
                v = e.apply_all(v, a)
            return v

        if lay.pre_ln is not None:
            h = self._ln(h, lay.pre_ln)
        att_in = edit("att_in", self._ln(h, lay.ln1))
        prev = torch.cat([a_prev[None], att_in[:-1]])
        key = edit("k", F.linear(att_in * lay.mix_k + prev * (1 - lay.mix_k), lay.Wk))
        value = edit("v", F.linear(att_in * lay.mix_v + prev * (1 - lay.mix_v), lay.Wv))
        rec = edit("r", torch.sigmoid(F.linear(att_in * lay.mix_r + prev * (1 - lay.mix_r), lay.Wr)))
        vals = {"att_in": att_in, "r": rec, "k": key, "v": value}
        # w and u are per channel; they become per token only where an edit makes them so
        w_t, u_t = lay.w, lay.u
        if active("w"):
            w_t = edit("w", lay.w.expand(n, B, A))
        if active("u"):
            u_t = edit("u", lay.u.expand(n, B, A))
        vals["w"], vals["u"] = w_t, u_t

        sd = self.scan_dtype
        wkv = torch.empty(n, B, A, dtype=sd, device=h.device)
        want_state = "state" in record
        states = torch.empty(n, B, A, 3, dtype=sd, device=h.device) if want_state else None
        state_edits = edits.get("state", ())
        steps = sorted({int(t) - a for e in state_edits for t in e.steps if a <= t < a + n})
        S = S.clone().contiguous()
        ks, vs = key.to(sd).contiguous(), value.to(sd).contiguous()
        ws = (w_t if w_t.ndim == 3 else w_t.expand(1, 1, A)).to(sd).contiguous()
        us = (u_t if u_t.ndim == 3 else u_t.expand(1, 1, A)).to(sd).contiguous()
        scan = _scan_numba if self.scan == "numba" else _scan_torch
        o = 0
        for t in steps + [n]:
            stop = min(t + 1, n)
            if stop > o:
                sl = slice(o, stop)
                scan(ws[sl] if ws.shape[0] > 1 else ws, us[sl] if us.shape[0] > 1 else us, ks[sl], vs[sl], S,
                     wkv[sl], None if states is None else states[sl])
            if t == n:
                break
            flat = S.permute(1, 2, 0).reshape(B, A * 3)  # an edit of the state after step t
            for e in state_edits:
                flat = e.apply_step(flat, a + t)
            S = flat.reshape(B, A, 3).permute(2, 0, 1).contiguous()
            if states is not None:
                states[t] = S.permute(1, 2, 0)
            o = t + 1
        wkv = edit("wkv", wkv.to(h.dtype))
        att = edit("att", F.linear(rec * wkv, lay.Wo))
        h2 = edit("mid", h + att)
        ffn_in = edit("ffn_in", self._ln(h2, lay.ln2))
        prev = torch.cat([f_prev[None], ffn_in[:-1]])
        fk = edit("ffn_k", torch.square(torch.relu(F.linear(ffn_in * lay.fmix_k + prev * (1 - lay.fmix_k), lay.Fk))))
        fr = edit("ffn_r", torch.sigmoid(F.linear(ffn_in * lay.fmix_r + prev * (1 - lay.fmix_r), lay.Fr)))
        ffn = edit("ffn", fr * F.linear(fk, lay.Fv))
        out = edit("out", h2 + ffn)
        vals.update({"wkv": wkv, "att": att, "mid": h2, "ffn_in": ffn_in, "ffn_k": fk, "ffn_r": fr, "ffn": ffn, "out": out})
        if states is not None:
            vals["state"] = states
        return vals, (S, att_in[-1].clone(), ffn_in[-1].clone())

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
            w, u, key, st = (out[layer_probe(k, site)] for site in ("w", "u", "k", "state"))
            first = r0 + max(0, (s - r0) // TILE) * TILE
            for b in range(B):
                logz = wkv_log_normaliser(st[:, b], u[:, b], key[:, b], rows=(first, hi))
                att = wkv_attention(w[:, b], u[:, b], key[:, b], logz, (r0, hi), cols, from_row=s)
                res[first:hi, b] = att[first - r0:].to(self.dtype)
        return res
