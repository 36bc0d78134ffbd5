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
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .family import untied_if_the_file_says_so
from .family import (FamilyConfig, ScannedFamilyModel, StatedConfig, build_model, check_loaded_weights,
                     config_from_fields, names_under, probe_table, unused_note)
from .family import numba_available  # noqa: F401 - imported from here by tests and benchmarks
from .family import run_parallel_numba

SITES = ("att_in", "r", "k", "v", "w", "u", "state", "wkv", "att", "mixer", "mid", "ffn_in", "ffn_k", "ffn_r", "ffn",
         "mlp", "out", "attn")
#: the names every family shares for RWKV's own (see engine.probes.RESIDUAL_SITES)
SITE_ALIASES = {"mixer": "att", "mlp": "ffn"}
#: the state's components, in the order of the ``state`` probe's last axis
STATE_PARTS = ("num", "den", "max")
#: the running max of an empty state (as ``transformers``): e^(max - anything finite) is 0
EMPTY_MAX = -1e38
#: rows per tile of the implicit attention (a row is computed alike whichever rows were asked for)
TILE = 32
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


class RwkvModel(ScannedFamilyModel):
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

    # -- what the prefix cache needs to know ------------------------------------------------

# ======================================================================================
# the WKV recurrence over a stretch of steps: S [3, B, A] = (num, den, max) updated in place
# ======================================================================================


def _scan_torch(w, u, k, v, S, out, states):
    """The reference, step by step as ``transformers``' ``rwkv_linear_attention_cpu``.  ``w``,
    ``u`` are [n, B, A] or [1, 1, A]; ``k``, ``v``, ``out`` [n, B, A]; ``states`` [n, B, A, 3]."""
    num, den, mx = S[0].clone(), S[1].clone(), S[2].clone()  # copies: S is written below (a gradient reads them)
    for t in range(k.shape[0]):
        wt, ut = w[t if w.shape[0] > 1 else 0], u[t if u.shape[0] > 1 else 0]
        kt, vt = k[t], v[t]
        q = torch.maximum(mx, kt + ut)
        e1 = torch.exp(mx - q)
        e2 = torch.exp(kt + ut - q)
        out[t] = (e1 * num + e2 * vt) / (e1 * den + e2)
        q = torch.maximum(mx + wt, kt)
        e1 = torch.exp(mx + wt - q)
        e2 = torch.exp(kt - q)
        num = e1 * num + e2 * vt
        den = e1 * den + e2
        mx = q
        if states is not None:
            states[t] = torch.stack([num, den, mx], -1)
    S[0], S[1], S[2] = num, den, mx


BLK = 64  #: channels per job of the compiled loop


def _numba_kernels():
    """(serial, parallel) drivers of one compiled block function
    (:mod:`engine.models.numba_kernels`): both do the same scalar operations in the same order
    for every (sequence, channel), so they give the same bits."""
    from .numba_kernels import wkv_parallel, wkv_serial

    return wkv_serial, wkv_parallel


def _scan_numba(w, u, k, v, S, out, states):
    """The same steps in a compiled loop, one job per (sequence, block of channels): in parallel
    when torch may use several threads and there are several jobs, else on this thread (a
    parallel launch costs a scheduler tick on a busy machine)."""
    import numba

    serial, parallel = _numba_kernels()
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    jobs = k.shape[1] * -(-k.shape[2] // BLK)
    # out and states are slices along the leading axis of contiguous tensors: written in place
    st = states.numpy() if states is not None else np.empty((1, 1, 1, 1), dtype=k.numpy().dtype)
    args = (w.numpy(), u.numpy(), k.numpy(), v.numpy(), S.numpy(), out.numpy(), st, states is not None, BLK)
    if threads > 1 and jobs > 1:
        run_parallel_numba(parallel, threads, *args)
    else:
        serial(*args)


# ======================================================================================
# implicit attention
# ======================================================================================


def wkv_log_normaliser(states, u, k, rows=None, state0=None) -> torch.Tensor:
    """``log Z_i = log(D_(i-1) + e^(u_i + k_i))`` per step and channel, from the WKV states
    after each step (``states`` [T, A, 3] as the ``state`` probe holds them), the bonus ``u``
    and keys ``k`` ([T, A], or [A] for ``u``).  ``state0`` [A, 3]: the state before step 0
    (default empty).  ``rows=(i0, i1)``: only those steps are computed (others are NaN)."""
    states, u, k = (torch.as_tensor(x) for x in (states, u, k))
    T, A = k.shape
    i0, i1 = rows if rows is not None else (0, T)
    i0, i1 = max(0, int(i0)), min(T, int(i1))
    out = torch.full((T, A), float("nan"), dtype=k.dtype, device=k.device)
    if i1 <= i0:
        return out
    if state0 is None:
        state0 = torch.stack([torch.zeros(A, dtype=k.dtype), torch.zeros(A, dtype=k.dtype),
                              torch.full((A,), EMPTY_MAX, dtype=k.dtype)], -1).to(k.device)
    if i0 == 0:
        before = torch.cat([state0[None].to(states.dtype), states[:i1 - 1]])
    else:
        before = states[i0 - 1:i1 - 1]
    before = before.to(k.dtype)
    uk = (u[i0:i1] if u.ndim == 2 else u) + k[i0:i1]
    den, mx = before[..., 1], before[..., 2]
    q = torch.maximum(mx, uk)
    out[i0:i1] = q + torch.log(torch.exp(mx - q) * den + torch.exp(uk - q))
    return out


def wkv_attention(w, u, k, logz, rows, cols, *, reduce="mean", tile: int = TILE, from_row: int | None = None):
    """Implicit attention of one sequence of one RWKV-4 layer.

    ``w`` (decay, negative), ``u`` (bonus), ``k`` (keys) and ``logz`` (:func:`wkv_log_normaliser`)
    are [T, A] (``w``/``u`` may be [A]).  For channel c, ``alpha_ij = exp(w_(j+1) + ... + w_(i-1)
    + k_j - log Z_i)`` for j < i, ``exp(u_i + k_i - log Z_i)`` for j = i, 0 for j > i, so that
    ``wkv_i = sum_j alpha_ij v_j`` and each row sums to 1 over j = 0..i.  ``rows=(r0, r1)``,
    ``cols=(c0, c1)`` select the window (clipped to the sequence).  Returns ``[r1-r0, c1-c0]``
    (``reduce="mean"``: the mean over channels) or ``[r1-r0, c1-c0, A]`` (``reduce=None``).

    Rows are taken in tiles of ``tile`` starting at ``r0``.  Columns before a tile's first row
    i0 factorise through step i0 - 1: ``alpha_ij = P_i Q_j`` with ``P_i = exp(W(i0-1..i-1) -
    log Z_i + M)`` and ``Q_j = exp(W(j..i0-1) + k_j - M)`` (W the sums of w over the steps
    between, <= 0; M the largest exponent of Q), so that part is one matmul over channels;
    columns inside the tile are summed directly.  Sums of w are float64 cumulative sums.
    ``from_row`` skips tiles that end at or before it (their rows are left 0)."""
    if reduce not in ("mean", None):
        raise ValueError(f"reduce must be 'mean' or None, got {reduce!r}")
    k = torch.as_tensor(k)
    dtype = k.dtype if k.dtype in (torch.float32, torch.float64) else torch.float32
    k = k.to(dtype)
    T, A = k.shape
    w = torch.as_tensor(w).to(dtype)
    u = torch.as_tensor(u).to(dtype)
    w = w.expand(T, A) if w.ndim == 1 else w
    u = u.expand(T, A) if u.ndim == 1 else u
    logz = torch.as_tensor(logz).to(dtype)
    r0, r1 = (int(v) for v in rows)
    c0, c1 = (int(v) for v in cols)
    R, W = r1 - r0, c1 - c0
    out = k.new_zeros((R, W) if reduce else (R, W, A))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0 or c0 >= r1c:
        return out
    lo = min(r0, c0)
    # G[m - lo + 1] = sum of w over lo..m (float64), G[0] = 0
    G = torch.cat([w.new_zeros(1, A, dtype=torch.float64), torch.cumsum(w[lo:r1c].double(), 0)])
    first = r0 if from_row is None else r0 + max(0, (int(from_row) - r0) // tile) * tile
    for i0 in range(first, r1c, tile):
        i1 = min(i0 + tile, r1c)
        j1 = min(c1c, i0)
        if j1 > c0:  # columns before the tile, through step i0 - 1
            gp = G[i0 - lo]  # sum of w over lo..i0-1
            eq = (gp - G[c0 - lo + 1:j1 - lo + 1]).to(dtype) + k[c0:j1]  # [J, A]
            M = eq.max(0).values
            Q = torch.exp(eq - M)
            P = torch.exp((G[i0 - lo:i1 - lo] - gp).to(dtype) - logz[i0:i1] + M)  # [L, A]
            if reduce == "mean":
                out[i0 - r0:i1 - r0, :j1 - c0] = (P @ Q.T) / A
            else:
                out[i0 - r0:i1 - r0, :j1 - c0] = P[:, None, :] * Q[None, :, :]
        jl, jh = max(c0, i0), min(c1c, i1)
        if jh > jl:  # columns inside the tile: exponents summed directly
            ii = torch.arange(i0, i1, device=k.device)[:, None]
            jj = torch.arange(jl, jh, device=k.device)[None, :]
            E = (G[i0 - lo:i1 - lo][:, None, :] - G[jl - lo + 1:jh - lo + 1][None, :, :]).to(dtype) \
                + k[jl:jh][None] - logz[i0:i1][:, None]
            E = E.masked_fill((jj >= ii)[..., None], float("-inf"))
            diag = (jj == ii)
            if diag.any():
                d_i, d_j = diag.nonzero(as_tuple=True)
                E[d_i, d_j] = u[i0 + d_i] + k[i0 + d_i] - logz[i0 + d_i]
            alpha = torch.exp(E)
            out[i0 - r0:i1 - r0, jl - c0:jh - c0] = alpha.mean(-1) if reduce == "mean" else alpha
    return out


def attention_from_trace(trace, layer: int, rows, cols, *, sequence: int = 0, reduce="mean"):
    """Implicit attention of ``layer`` for one sequence of a trace that captured
    ``layers.{layer}.k``, ``.w``, ``.u`` and ``.state``.  Returns a NumPy array."""
    name = f"layers.{layer}."
    try:
        w, u, k, st = (torch.as_tensor(trace.array(name + s, sequence)) for s in ("w", "u", "k", "state"))
    except KeyError as exc:
        raise KeyError(f"the trace must hold {name}k, {name}w, {name}u and {name}state: {exc}") from None
    logz = wkv_log_normaliser(st, u, k)
    return wkv_attention(w, u, k, logz, rows, cols, reduce=reduce).numpy()


def from_transformers(hf_model, **kwargs) -> RwkvModel:
    """Wrap an in-memory ``transformers`` ``RwkvForCausalLM`` (weights are copied).  Weights that
    ``transformers`` rescaled in place for inference (``eval()`` with ``rescale_every > 0`` after
    a forward) are scaled back."""
    c = hf_model.config
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    r = int(getattr(c, "rescale_every", 0) or 0)
    if r > 0 and getattr(getattr(hf_model, "rwkv", None), "layers_are_rescaled", False):
        for i in range(c.num_hidden_layers):
            for name in ("attention.output.weight", "feed_forward.value.weight"):
                sd[f"rwkv.blocks.{i}.{name}"] = sd[f"rwkv.blocks.{i}.{name}"] * (2 ** (i // r))
    tie = "head.weight" not in sd or hf_model.head.weight.data_ptr() == hf_model.rwkv.embeddings.weight.data_ptr()
    cfg = RwkvConfig(d_model=c.hidden_size, n_layer=c.num_hidden_layers, vocab_size=c.vocab_size,
                     d_att=c.attention_hidden_size or c.hidden_size, d_ffn=c.intermediate_size or 4 * c.hidden_size,
                     norm_eps=c.layer_norm_epsilon, tie_embeddings=tie)
    if tie:
        sd.pop("head.weight", None)
    kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
    return RwkvModel(cfg, sd, source=f"<in-memory {type(hf_model).__name__}>", **kwargs)


# ======================================================================================
# loading: transformers RwkvForCausalLM folders and BlinkDL's RWKV-4 .pth names
# ======================================================================================

_HF_KEY = re.compile(r"^(.*?)blocks\.(\d+)\.attention\.time_first$")
_BLINK_KEY = re.compile(r"^(.*?)blocks\.(\d+)\.att\.time_first$")
_LATER = re.compile(r"blocks\.\d+\.att\.(time_faaaa|x_r|w0|r_k|ln_x)")
_OTHER_RWKV = {"rwkv5": "RWKV-5", "rwkv6": "RWKV-6", "rwkv7": "RWKV-7", "rwkv6qwen2": "RWKV-6 (Qwen2)"}


def looks_like_rwkv(tensors: dict, configs: list) -> bool:
    """An RWKV checkpoint: ``…blocks.{i}.attention.time_first`` (transformers) or
    ``blocks.{i}.att.time_first`` (BlinkDL RWKV-4) tensors, an RWKV-5/6 file's tensors
    (refused in words), or a config with ``model_type`` "rwkv" or a later version.  RWKV-7
    ``.pth`` files are not claimed: ``engine.models.rwkv7`` reads them."""
    from .rwkv7 import looks_like_rwkv7

    if looks_like_rwkv7(tensors, []):
        return False
    if any(_HF_KEY.match(k) or _BLINK_KEY.match(k) or _LATER.search(k) for k in tensors):
        return True
    return any(str(d.get("model_type", "")).lower() in ("rwkv", *_OTHER_RWKV) for _, d in configs)


def _config_from_files(name: str, configs: list, notes: list) -> tuple[dict, str]:
    for src, d in configs:
        if d.get("family") == "rwkv":  # SeqScope's own metadata
            return {k: v for k, v in d.items() if k in RwkvConfig.__dataclass_fields__}, "SeqScope"
        mt = str(d.get("model_type", "")).lower()
        if mt in _OTHER_RWKV:
            raise LoadError(f"{src} says model_type {mt!r} ({_OTHER_RWKV[mt]}), a folder layout SeqScope does not read: "
                            "it reads RWKV-4 (transformers RwkvForCausalLM folders and BlinkDL .pth) and RWKV-7 "
                            "(BlinkDL .pth files)" + ("; load the BlinkDL .pth of this model instead" if mt == "rwkv7"
                                                      else f"; {_OTHER_RWKV[mt]} is not supported yet"))
        if mt == "rwkv":
            c = StatedConfig(d, src)
            out = {"norm_eps": c.number("layer_norm_epsilon", 1e-5)}
            out.update(c.sizes((("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"),
                                ("vocab_size", "vocab_size"))))
            for ours, theirs in (("d_att", "attention_hidden_size"), ("d_ffn", "intermediate_size")):
                if d.get(theirs) is not None:  # null: derived from hidden_size
                    out[ours] = c.whole(theirs)
            if "tie_word_embeddings" in d:
                out["tie_embeddings"] = c.flag("tie_word_embeddings")
            r = d.get("rescale_every", 6)  # transformers' default when the key is absent
            if isinstance(r, int) and r > 0:
                notes.append(f"rescale_every={r}: transformers halves the residual stream every {r} blocks in "
                             "eval() (a float16 guard); SeqScope computes the unscaled model, which differs from it "
                             "only through the LayerNorm epsilons")
            return out, "transformers RwkvForCausalLM"
    return {}, ""


def _blink_name(rest: str) -> str:
    """A BlinkDL RWKV-4 key (prefix removed) → its ``RwkvForCausalLM`` name, as transformers'
    ``convert_rwkv_checkpoint_to_hf.py`` renames it."""
    if rest.startswith("head."):
        return rest
    if rest.startswith("emb."):
        rest = "embeddings." + rest[len("emb."):]
    rest = re.sub(r"^blocks\.0\.ln0\.", "blocks.0.pre_ln.", rest)
    rest = re.sub(r"^blocks\.(\d+)\.att\.", r"blocks.\1.attention.", rest)
    rest = re.sub(r"^blocks\.(\d+)\.ffn\.", r"blocks.\1.feed_forward.", rest)
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        if rest.endswith(f".time_mix_{short}"):
            rest = rest[: -len(short)] + long
    return "rwkv." + rest


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict, str]:
    """File keys → ``RwkvForCausalLM`` names whatever the prefix; (canonical → tensor,
    canonical → file key, layout)."""
    if any(_LATER.search(k) for k in tensors):
        raise LoadError(f"{name} holds the weights of RWKV-5 or RWKV-6 (tensors such as att.time_faaaa), which "
                        "SeqScope does not read yet; it reads RWKV-4 and RWKV-7 (BlinkDL .pth) checkpoints")
    hf = {m.group(1) for k in tensors if (m := _HF_KEY.match(k))}
    blink = {m.group(1) for k in tensors if (m := _BLINK_KEY.match(k))}
    if len(hf) + len(blink) != 1:
        found = ", ".join(repr(p) for p in sorted(hf | blink)) or "none"
        raise LoadError(f"{name}: expected RWKV-4 layer weights named …blocks.{{i}}.attention.time_first "
                        f"(transformers) or blocks.{{i}}.att.time_first (BlinkDL) under one prefix (found prefixes: "
                        f"{found})")
    if hf:  # the prefix is "rwkv." in RwkvForCausalLM files, "" in RwkvModel files
        return (*names_under(tensors, hf.pop(), "rwkv.", "head."), "transformers RwkvForCausalLM")
    canon, origin = {}, {}
    prefix = blink.pop()
    for k, v in tensors.items():
        cn = _blink_name(k[len(prefix):]) if k.startswith(prefix) else k
        canon[cn], origin[cn] = v, k
    return canon, origin, "BlinkDL RWKV-4"


def _infer_config(canon: dict, stated: dict) -> dict:
    out = dict(stated)
    n = 0
    while f"rwkv.blocks.{n}.attention.time_first" in canon:
        n += 1
    out.setdefault("n_layer", n)
    emb = canon.get("rwkv.embeddings.weight")
    if emb is not None and emb.ndim == 2:
        out.setdefault("vocab_size", int(emb.shape[0]))
        out.setdefault("d_model", int(emb.shape[1]))
    tf = canon.get("rwkv.blocks.0.attention.time_first")
    if tf is not None and tf.ndim >= 1:
        out.setdefault("d_att", int(tf.numel()))
    fk = canon.get("rwkv.blocks.0.feed_forward.key.weight")
    if fk is not None and fk.ndim == 2:
        out.setdefault("d_ffn", int(fk.shape[0]))
    if "head.weight" not in canon:  # a head that is not saved is the embedding, unless the config says not
        out.setdefault("tie_embeddings", True)
    return out


def load_rwkv(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> RwkvModel:
    """Build a :class:`RwkvModel` from a checkpoint's tensors and the configs stored with it
    (``[(where, dict)]``).  Every problem is a LoadError naming the keys involved."""
    notes: list[str] = []
    stated, layout = _config_from_files(name, configs, notes)
    canon, origin, key_layout = _canonical_names(tensors, name)
    layout = layout or key_layout
    fields = _infer_config(canon, stated)
    cfg = config_from_fields(RwkvConfig, fields, name=name, label="RWKV", tensors=tensors)
    expected = canonical_weight_shapes(cfg)
    # BlinkDL files may keep the time-mix vectors flat, and time_decay/time_first as [1, 1, A]
    for cn, shape in expected.items():
        t = canon.get(cn)
        if t is not None and tuple(t.shape) != shape and ".time_" in cn and t.numel() == int(np.prod(shape)):
            canon[cn] = t.reshape(shape)
    cfg = untied_if_the_file_says_so(cfg, "tie_embeddings", canon, "head.weight", "rwkv.embeddings.weight", notes)
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_embeddings and "head.weight" in canon:
        e = canon.get("rwkv.embeddings.weight")
        expected = {**expected, "head.weight": tuple(e.shape) if e is not None else (cfg.vocab_size, cfg.d_model)}
    what = (f"an RWKV-4 model ({layout}: hidden_size={cfg.d_model}, num_hidden_layers={cfg.n_layer}, "
            f"attention_hidden_size={cfg.d_att}, intermediate_size={cfg.d_ffn}, vocab_size={cfg.vocab_size})")
    no_head = ("(the config does not tie the head to the embeddings; a transformers RwkvModel folder has no "
               "language-model head)")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict, hints={"head.weight": no_head})
    if unused:
        notes.append(unused_note(unused))
    weights = {cn: canon[cn] for cn in expected}
    if cfg.tie_embeddings:
        weights.pop("head.weight", None)
    model = build_model(RwkvModel, cfg, weights, name=name, label="RWKV", **kwargs)
    model.load_info.update({"format": fmt, "layout": layout})
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_rwkv
load = load_rwkv
