"""minGRU and minLSTM ("Were RNNs All We Needed?", Feng et al. 2024): an instrumented language
model in the layout of the ``minGRU-pytorch`` package's ``minLM``.

The model::

    x_0 = embed[token]
    layer i:  x = x + pw_conv(dw_conv(x))             only with convolutions ("conv"; x after: "after_conv")
              n = rmsnorm(x)
              minGRU:  h~, z = split(W n);  h~ = g(h~);  z = sigmoid(z)
                       h_t = (1 - z_t) h_(t-1) + z_t h~_t
              minLSTM: h~, f, i = split(W n); h~ = g(h~); f' = f / (f + i), i' = i / (f + i)
                       (f, i sigmoids);  h_t = f'_t h_(t-1) + i'_t h~_t
              x = x + to_out(h)                     (to_out is the identity when not expanded)
                                                    to_out(h): "mixer"; x after: "mid"
              x = x + ff(rmsnorm(x))                Linear, GELU, Linear ("mlp"; x after: "out")
    logits = to_logits(rmsnorm(x))

with ``g(v) = v + 0.5`` for ``v >= 0`` and ``sigmoid(v)`` below, ``h_0 = 0`` and RMSNorm's
epsilon that of torch's ``nn.RMSNorm`` (the dtype's machine epsilon).

Canonical weight names (SeqScope's layout for this family) are the ``minLM`` state-dict names:
``token_emb.weight``; per layer ``layers.{i}.0.net.0.weight/bias`` (depthwise conv, optional),
``layers.{i}.0.net.1.weight/bias`` (pointwise conv), ``layers.{i}.1.weight`` (norm),
``layers.{i}.2.to_hidden_and_gate.weight`` (minGRU) or ``layers.{i}.2.to_hidden_and_f_i_gate.weight``
(minLSTM), ``layers.{i}.2.to_out.weight`` (optional), ``layers.{i}.3.weight`` (norm),
``layers.{i}.4.0.weight/bias``, ``layers.{i}.4.2.weight/bias`` (feed-forward); ``norm.weight``,
``to_logits.weight``.  A ``.safetensors`` file with these names (and ``config.json`` or
metadata ``seqscope_config`` with ``{"family": "mingru"|"minlstm", ...}``, optional) or a
``torch.save(minLM.state_dict())`` file loads with :func:`engine.load`.

Runs like Mamba (``engine.models.mamba``): per chunk, every per-token quantity at once
(interventions on ``h_tilde`` and the gates applied to the whole chunk), then the elementwise
recurrence (a compiled numba loop on the CPU, else a torch loop), split at the
steps where ``h`` is edited.  The prefix cache keeps ``h`` and the conv buffer.

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{i}.h`` [d_inner] and, with convolutions, ``layers.{i}.conv_window`` [conv_kernel - 1,
d_model]: the last inputs of the depthwise convolution (the stream x), oldest first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .layer_state import StatePart
from .family import (FamilyConfig, ScannedFamilyModel, build_model, check_loaded_weights, config_from_fields,
                     probe_table, unused_note)


@dataclass(frozen=True)
class MinRNNConfig(FamilyConfig):
    cell: str  # "mingru" or "minlstm"
    d_model: int
    n_layer: int
    vocab_size: int
    d_inner: int
    ff_inner: int
    proj_out: bool = False  # to_out present (expansion != 1)
    conv_kernel: int = 0  # 0: no convolutions

    def __post_init__(self):
        if self.cell not in ("mingru", "minlstm"):
            raise ValueError(f"cell must be 'mingru' or 'minlstm', got {self.cell!r}")
        if not self.proj_out and self.d_inner != self.d_model:
            raise ValueError("without to_out, d_inner must equal d_model")

    @property
    def gates(self) -> tuple[str, ...]:
        return ("gate_z",) if self.cell == "mingru" else ("gate_f", "gate_i")

    def family_tag(self) -> str:
        return self.cell


def canonical_weight_shapes(cfg: MinRNNConfig) -> dict[str, tuple[int, ...]]:
    d, di, V = cfg.d_model, cfg.d_inner, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"token_emb.weight": (V, d)}
    rows = (2 if cfg.cell == "mingru" else 3) * di
    name = "to_hidden_and_gate" if cfg.cell == "mingru" else "to_hidden_and_f_i_gate"
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        if cfg.conv_kernel:
            shapes[p + "0.net.0.weight"] = (d, 1, cfg.conv_kernel)
            shapes[p + "0.net.0.bias"] = (d,)
            shapes[p + "0.net.1.weight"] = (d, d, 1)
            shapes[p + "0.net.1.bias"] = (d,)
        shapes[p + "1.weight"] = (d,)
        shapes[p + f"2.{name}.weight"] = (rows, d)
        if cfg.proj_out:
            shapes[p + "2.to_out.weight"] = (d, di)
        shapes[p + "3.weight"] = (d,)
        shapes[p + "4.0.weight"] = (cfg.ff_inner, d)
        shapes[p + "4.0.bias"] = (cfg.ff_inner,)
        shapes[p + "4.2.weight"] = (d, cfg.ff_inner)
        shapes[p + "4.2.bias"] = (d,)
    shapes["norm.weight"] = (d,)
    shapes["to_logits.weight"] = (V, d)
    return shapes


def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


#: why interventions on ``attn`` are refused
NOT_EDITABLE_ATTN = "it is computed from the gates after the run and feeds nothing; " \
    "intervene on the gates, h_tilde or h instead"


class MinRNNModel(ScannedFamilyModel):
    """An instrumented minGRU / minLSTM language model (``minLM`` layout)."""

    weight_shapes = staticmethod(canonical_weight_shapes)

    @property
    def architecture(self) -> str:
        return self.config.cell

    # -- probes ---------------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        di, d = cfg.d_inner, cfg.d_model
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        w = "z_j" if cfg.cell == "mingru" else "i'_j"
        a = "(1 - z_k)" if cfg.cell == "mingru" else "f'_k"
        desc = {
            "conv": (d, "causal convolution branch pw_conv(dw_conv(x)), before its residual add "
                        "(after_conv = x + conv)"),
            "after_conv": (d, "residual stream after the convolution branch's add, x + conv: the recurrence "
                              "block's input"),
            "h_tilde": (di, "candidate state h~_t = g(W_h rmsnorm(x)), g(v) = v + 0.5 (v >= 0) or sigmoid(v)"),
            "gate_z": (di, "minGRU update gate z_t = sigmoid(W_z rmsnorm(x)); h_t = (1 - z_t) h_(t-1) + z_t h~_t"),
            "gate_f": (di, "minLSTM normalised forget gate f'_t = f_t / (f_t + i_t); h_t = f'_t h_(t-1) + i'_t h~_t"),
            "gate_i": (di, "minLSTM normalised input gate i'_t = i_t / (f_t + i_t)"),
            "h": (di, "hidden state h_t (the recurrence), before to_out"),
            "mixer": (d, "recurrence branch output " + ("to_out(h_t)" if cfg.proj_out else "h_t (to_out is the "
                         "identity), as a value of the residual branch: an edit here leaves the recurrence alone")
                      + ", before the residual add (mid = input + mixer)"),
            "mid": (d, "residual stream after the recurrence branch's add: the feed-forward block's input"),
            "mlp": (d, "feed-forward output Linear(GELU(Linear(rmsnorm(mid)))), before the residual add"),
            "out": (d, "residual stream after the block: mid + mlp"),
            "attn": (c1 - c0, f"implicit attention mean_c alpha_ij over channels, alpha_ij = {w} prod_(k=j+1..i) {a} "
                              f"(h_i = sum_j alpha_ij h~_j); rows {r0}..{r1 - 1}, column m is key step {c0}+m; "
                              "0 where j > i, NaN in rows outside the window"),
        }
        return probe_table(cfg.n_layer, self.sites, desc, embed=(d, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores to_logits(rmsnorm(x)) (before softmax)"))

    NOT_EDITABLE = {"attn": NOT_EDITABLE_ATTN}

    @property
    def ATTENTION_NEEDS(self) -> frozenset:  # noqa: N802 - the attribute ChunkedLayerModel reads
        return frozenset({"h_tilde", *self.config.gates})

    @property
    def sites(self) -> tuple[str, ...]:
        return ((("conv", "after_conv") if self.config.conv_kernel else ()) + ("h_tilde",) + self.config.gates
                + ("h", "mixer", "mid", "mlp", "out", "attn"))

    # -- forward ----------------------------------------------------------------------------
    def initial_state(self, batch: int):
        cfg = self.config
        h = torch.zeros(batch, cfg.d_inner, dtype=self.dtype, device=self.device)
        conv = torch.zeros(max(cfg.conv_kernel - 1, 0), batch, cfg.d_model, dtype=self.dtype, device=self.device)
        return h, conv

    def state_parts(self, layer: int):
        cfg = self.config
        window = (StatePart(1, "conv_window", (cfg.conv_kernel - 1, cfg.d_model), batch_axis=1),)
        return (StatePart(0, "h", (cfg.d_inner,)),) + (window if cfg.conv_kernel > 1 else ())

    @staticmethod
    def _norm(x, w):
        return F.rms_norm(x, (x.shape[-1],), w, None)

    def _embed_tokens(self, x):
        return F.embedding(x, self._w["token_emb.weight"])

    def _logits(self, h):
        return F.linear(self._norm(h, self._w["norm.weight"]), self._w["to_logits.weight"])

    def _site_shapes(self):
        cfg = self.config
        wide = ("conv", "after_conv", "mixer", "mid", "mlp", "out")
        return {s: (cfg.d_model if s in wide else cfg.d_inner,) for s in self.sites}

    def _layer_chunk(self, k, h, a, state, edits, record):
        vals, hs, buf = self._chunk(k, h, a, *state, edits)
        return vals, (hs, buf)

    def _chunk(self, k, x, a, h, buf, edits):
        cfg = self.config
        w = self._w
        p = f"layers.{k}."
        n, B = x.shape[:2]
        di = cfg.d_inner

        def edit(site, v):
            for e in edits.get(site, ()):
                if len(e.steps) and e.steps[-1] >= a and e.steps[0] < a + n:
                    v = e.apply_all(v, a)
            return v

        vals = {}
        new_buf = buf
        if cfg.conv_kernel:
            K = cfg.conv_kernel
            xc = torch.cat([buf, x]) if K > 1 else x
            dw = w[p + "0.net.0.weight"][:, 0, :]
            c = xc[0:n] * dw[:, 0]
            for j in range(1, K):
                c = c + xc[j:j + n] * dw[:, j]
            c = F.linear(c + w[p + "0.net.0.bias"], w[p + "0.net.1.weight"][:, :, 0], w[p + "0.net.1.bias"])
            c = edit("conv", c)
            vals["conv"] = c
            new_buf = xc[n:].clone() if K > 1 else buf
            x = vals["after_conv"] = edit("after_conv", x + c)
        proj = F.linear(self._norm(x, w[p + "1.weight"]),
                        w[p + ("2.to_hidden_and_gate.weight" if cfg.cell == "mingru" else "2.to_hidden_and_f_i_gate.weight")])
        ht = edit("h_tilde", _g(proj[..., :di]))
        if cfg.cell == "mingru":
            z = edit("gate_z", torch.sigmoid(proj[..., di:]))
            coef, inp = 1 - z, z * ht
            vals["gate_z"] = z
        else:
            f, i = torch.sigmoid(proj[..., di:2 * di]), torch.sigmoid(proj[..., 2 * di:])
            fsum = f + i
            fp = edit("gate_f", f / fsum)
            ip = edit("gate_i", i / fsum)
            coef, inp = fp, ip * ht
            vals["gate_f"], vals["gate_i"] = fp, ip
        vals["h_tilde"] = ht
        coef, inp = coef.contiguous(), inp.contiguous()
        hs = torch.empty(n, B, di, dtype=x.dtype, device=x.device)
        h_edits = edits.get("h", ())
        steps = sorted({int(t) - a for e in h_edits for t in e.steps if a <= t < a + n})
        h = h.clone().contiguous()
        scan = _scan_numba if self.scan == "numba" else _scan_torch
        o = 0
        for t in steps + [n]:
            stop = min(t + 1, n)
            if stop > o:
                h = scan(coef[o:stop], inp[o:stop], h, hs[o:stop])
            if t == n:
                break
            for e in h_edits:
                h = e.apply_step(h, a + t)
            h = h.contiguous()
            hs[t] = h
            o = t + 1
        vals["h"] = hs
        y = vals["mixer"] = edit("mixer", F.linear(hs, w[p + "2.to_out.weight"]) if cfg.proj_out else hs)
        x = vals["mid"] = edit("mid", x + y)
        ff = F.linear(F.gelu(F.linear(self._norm(x, w[p + "3.weight"]), w[p + "4.0.weight"], w[p + "4.0.bias"])),
                      w[p + "4.2.weight"], w[p + "4.2.bias"])
        ff = vals["mlp"] = edit("mlp", ff)
        vals["out"] = edit("out", x + ff)
        return vals, h, new_buf

    def _attention(self, k, out, old, s, T, B):
        """The ``attn`` probe: the whole window is recomputed whenever a row of it may have
        changed (rows are built one from the previous, so all of them are computed alike)."""
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        name = layer_probe(k, "attn")
        res = torch.full((T, B, c1 - c0), float("nan"), dtype=self.dtype, device=self.device)
        if s:
            res[:s] = old[name][:s]
        hi = min(r1, T)
        if r0 < hi and s < hi:
            if self.config.cell == "mingru":
                z = out[layer_probe(k, "gate_z")]
                coef, weight = 1 - z, z
            else:
                coef, weight = out[layer_probe(k, "gate_f")], out[layer_probe(k, "gate_i")]
            for b in range(B):
                res[r0:hi, b] = gated_attention(coef[:, b], weight[:, b], (r0, hi), (c0, c1))
        return res


def gated_attention(coef, weight, rows, cols, reduce="mean") -> torch.Tensor:
    """Implicit attention of a gated diagonal recurrence ``h_t = a_t h_(t-1) + w_t v_t``:
    ``alpha_ij = w_j prod_(k=j+1..i) a_k`` (so ``h_i = sum_j alpha_ij v_j`` from a zero state).
    ``coef`` (a) and ``weight`` (w) are [T, channels].  Returns [rows, cols] (mean over
    channels; the terms are non-negative for minGRU/minLSTM) or [rows, cols, channels]
    (``reduce=None``).  Built row by row: row i = a_i * row (i-1), plus w_i on the diagonal."""
    coef, weight = torch.as_tensor(coef), torch.as_tensor(weight)
    T, D = coef.shape
    r0, r1 = rows
    c0, c1 = cols
    out = coef.new_zeros((r1 - r0, c1 - c0) if reduce else (r1 - r0, c1 - c0, D))
    r1c, c1c = min(r1, T), min(c1, T)
    if r1c <= r0 or c1c <= c0:
        return out
    # the row just before r0: row[j] = w_j prod_(k=j+1..r0-1) a_k for the columns j < r0
    row = coef.new_zeros(c1c - c0, D)
    jtop = min(c1c, r0)
    if jtop > c0:
        P = torch.prod(coef[jtop:r0], 0) if jtop < r0 else coef.new_ones(D)
        for j in range(jtop - 1, c0 - 1, -1):
            row[j - c0] = weight[j] * P
            P = P * coef[j]
    for i in range(r0, r1c):
        row = row * coef[i]
        if c0 <= i < c1c:
            row[i - c0] = weight[i]
        out[i - r0, :c1c - c0] = row.mean(-1) if reduce else row
    return out


# ======================================================================================
# the recurrence h_t = coef_t * h_(t-1) + inp_t over a stretch of steps
# ======================================================================================


def _scan_torch(coef, inp, h, hs):
    for t in range(coef.shape[0]):
        h = coef[t] * h + inp[t]
        hs[t] = h
    return h


def _scan_numba(coef, inp, h, hs):
    from .numba_kernels import linear_recurrence

    linear_recurrence(coef.numpy(), inp.numpy(), h.numpy(), hs.numpy())
    return h


# ======================================================================================
# loading
# ======================================================================================

_CELL_KEY = re.compile(r"^(.*?)layers\.(\d+)\.2\.(to_hidden_and_gate|to_hidden_and_f_i_gate)\.weight$")


def looks_like_minrnn(tensors: dict) -> bool:
    return any(_CELL_KEY.match(k) for k in tensors)


def load_minrnn(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> MinRNNModel:
    """A :class:`MinRNNModel` from a ``minLM`` state dict (any prefix); LoadErrors name the keys."""
    matches = [m for k in tensors if (m := _CELL_KEY.match(k))]
    prefixes = {m.group(1) for m in matches}
    kinds = {m.group(3) for m in matches}
    if len(prefixes) != 1 or len(kinds) != 1:
        raise LoadError(f"{name}: minGRU/minLSTM layers under several prefixes or of both kinds "
                        f"({sorted(prefixes)}, {sorted(kinds)})")
    prefix = prefixes.pop()
    cell = "mingru" if kinds.pop() == "to_hidden_and_gate" else "minlstm"
    canon = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}
    origin = {(k[len(prefix):] if k.startswith(prefix) else k): k for k in tensors}
    n = 0
    while any(k.startswith(f"layers.{n}.") for k in canon):
        n += 1
    gate = canon[f"layers.0.2.to_hidden_and_{'gate' if cell == 'mingru' else 'f_i_gate'}.weight"]
    emb = canon.get("token_emb.weight")
    ff = canon.get("layers.0.4.0.weight")
    dw = canon.get("layers.0.0.net.0.weight")
    fields = {"cell": cell, "n_layer": n, "d_model": int(gate.shape[1]),
              "d_inner": int(gate.shape[0]) // (2 if cell == "mingru" else 3),
              "vocab_size": int(emb.shape[0]) if emb is not None and emb.ndim == 2 else 0,
              "ff_inner": int(ff.shape[0]) if ff is not None and ff.ndim == 2 else 0,
              "proj_out": "layers.0.2.to_out.weight" in canon,
              "conv_kernel": int(dw.shape[-1]) if dw is not None and dw.ndim == 3 else 0}
    for src, d in configs:  # a stated config (SeqScope metadata or config.json) wins where it says more
        if str(d.get("family", "")).lower() in ("mingru", "minlstm"):
            fields.update({k: v for k, v in d.items() if k in MinRNNConfig.__dataclass_fields__})
    cfg = config_from_fields(MinRNNConfig, fields, name=name, label=cell, tensors=tensors)
    expected = canonical_weight_shapes(cfg)
    what = f"a {cell} language model (minLM layout: d_model={cfg.d_model}, n_layer={cfg.n_layer}, d_inner={cfg.d_inner})"
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    model = build_model(MinRNNModel, cfg, {cn: canon[cn] for cn in expected}, name=name, label=cell, **kwargs)
    model.load_info.update({"format": fmt, "layout": "minGRU-pytorch minLM"})
    if unused:
        model.load_info["notes"] = unused_note(unused)
    return model


def from_minlm(lm, **kwargs) -> MinRNNModel:
    """Wrap an in-memory ``minGRU_pytorch.minLM`` (weights are copied)."""
    kwargs.setdefault("dtype", next(lm.parameters()).dtype)
    return load_minrnn(dict(lm.state_dict()), [], name=f"<in-memory {type(lm).__name__}>", fmt="in-memory",
                       source=f"<in-memory {type(lm).__name__}>", **kwargs)



#: the names engine.loading looks for in a family module
looks_like = lambda tensors, configs: looks_like_minrnn(tensors)  # noqa: E731
load = load_minrnn
