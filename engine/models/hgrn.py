"""HGRN ("Hierarchically Gated Recurrent Neural Network", Qin et al. 2023): an instrumented
language model in the layout of flash-linear-attention's ``HGRNForCausalLM``.

The model::

    x_0 = embed[token]
    lb  = cumsum(softmax(lower_bounds, over layers)) - softmax(...)[0]    lb[0] = 0
    layer k:  u = rmsnorm(x)                                  attn_norm
              i = silu(conv_i(i_proj u))                      conv_* only with use_short_conv
              f = lb_k + (1 - lb_k) sigmoid(conv_f(f_proj u)) forget gate with its lower bound
              g = silu(g_proj u)
              h_t = f_t h_(t-1) + (1 - f_t) i_t               elementwise, h_0 = 0
              o = rmsnorm(h) * g                              g_norm (weight optional)
              x = x + o_proj o                                o_proj o: "mixer"; x after: "mid"
              x = x + down(silu(gate(rmsnorm(x))) * up(rmsnorm(x)))    mlp_norm, GatedMLP ("mlp"; x: "out")
    logits = lm_head(rmsnorm(x))                              model.norm

``conv_*`` is fla's ``ShortConvolution`` (causal depthwise, kernel ``conv_size``, no bias, no
activation); every norm is an RMSNorm with ``norm_eps``.  Without ``use_lower_bound`` the
lower bound is 0 in every layer.

Canonical weight names are fla's: ``model.embeddings.weight``, ``model.lower_bounds``
[layers, hidden] (optional); per layer ``model.layers.{k}.attn_norm.weight``,
``attn.{i_proj,f_proj,g_proj,o_proj}.weight``, ``attn.{i_conv1d,f_conv1d}.weight``
[d_inner, 1, conv_size] (optional), ``attn.g_norm.weight`` (optional), ``mlp_norm.weight``,
``mlp.{gate_proj,up_proj,down_proj}.weight``; ``model.norm.weight``, ``lm_head.weight``
(absent when tied).  A folder with ``config.json`` (``model_type: "hgrn"``) and
``model.safetensors`` (or ``pytorch_model.bin``), as ``save_pretrained`` writes it, loads
with :func:`engine.load`; so does ``engine.loading.save_model``'s file.

Probe sites per layer: ``in`` (u), ``i``, ``f``, ``g``, ``state`` (h), ``o`` (before o_proj),
``mixer`` (o_proj o, before the residual add), ``mid`` (the stream after it), ``mlp`` (the
GatedMLP's output, before its add), ``out`` (the block's output), ``attn`` (implicit attention: ``alpha_ij = (1 - f_j)
prod_(k=j+1..i) f_k`` per channel, so ``h_i = sum_j alpha_ij i_j``; shown as the mean over
channels, for the window of :attr:`attention_window` only).

Runs chunk by chunk (``engine.models.chunked``): every per-token quantity of a chunk at once,
interventions applied to the whole chunk, then the recurrence by :mod:`.diagonal`'s parallel
prefix scan (log2(chunk) elementwise passes, no loop over steps), cut where the state is
edited.  The prefix cache keeps ``h`` and the two conv buffers.

Initial and final states (``engine.run(..., initial_state=...)``, :mod:`engine.initial_state`):
``layers.{k}.state`` [d_inner] (h) and, with a short convolution, ``layers.{k}.conv_window_i`` and
``layers.{k}.conv_window_f`` [conv_size - 1, d_inner]: the last inputs of ``conv_i`` and
``conv_f`` (``i_proj u`` and ``f_proj u``), oldest first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import LoadError
from ..probes import ProbeSpec, layer_probe
from .diagonal import DiagonalRecurrenceModel, edits_in_chunk, scan_split_at_edits
from .layer_state import StatePart
from .family import (FamilyConfig, StatedConfig, build_model, check_loaded_weights, config_from_fields, probe_table,
                     unused_note)
from .mingru import gated_attention

SITES = ("in", "i", "f", "g", "state", "o", "mixer", "mid", "mlp", "out", "attn")


@dataclass(frozen=True)
class HGRNConfig(FamilyConfig):
    FAMILY = "hgrn"

    d_model: int
    n_layer: int
    vocab_size: int
    d_inner: int  # hidden_size * expand_ratio
    ff_inner: int  # the GatedMLP's intermediate_size
    conv_size: int = 0  # 0: no short convolutions
    lower_bound: bool = True
    norm_eps: float = 1e-6
    gate_norm_weight: bool = True  # elementwise_affine of g_norm
    tie_embeddings: bool = False

    def __post_init__(self):
        self.require_positive("d_model", "n_layer", "vocab_size", "d_inner", "ff_inner")
        if self.lower_bound and self.d_inner != self.d_model:
            raise ValueError("the lower bounds are per hidden unit: with use_lower_bound, expand_ratio must be 1")


def canonical_weight_shapes(cfg: HGRNConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of a model with this config (fla names) with its shape."""
    d, di, ff = cfg.d_model, cfg.d_inner, cfg.ff_inner
    shapes: dict[str, tuple[int, ...]] = {"model.embeddings.weight": (cfg.vocab_size, d)}
    if cfg.lower_bound:
        shapes["model.lower_bounds"] = (cfg.n_layer, d)
    for k in range(cfg.n_layer):
        p = f"model.layers.{k}."
        shapes[p + "attn_norm.weight"] = (d,)
        for proj in ("i_proj", "f_proj", "g_proj"):
            shapes[p + f"attn.{proj}.weight"] = (di, d)
        if cfg.conv_size:
            shapes[p + "attn.i_conv1d.weight"] = (di, 1, cfg.conv_size)
            shapes[p + "attn.f_conv1d.weight"] = (di, 1, cfg.conv_size)
        if cfg.gate_norm_weight:
            shapes[p + "attn.g_norm.weight"] = (di,)
        shapes[p + "attn.o_proj.weight"] = (d, di)
        shapes[p + "mlp_norm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (ff, d)
        shapes[p + "mlp.up_proj.weight"] = (ff, d)
        shapes[p + "mlp.down_proj.weight"] = (d, ff)
    shapes["model.norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def lower_bounds(raw: torch.Tensor) -> torch.Tensor:
    """Per-layer lower bounds of the forget gate from the learned ``model.lower_bounds``
    [layers, hidden]: a cumulative softmax over layers, shifted so that layer 0's is 0."""
    p = raw.softmax(0)
    return p.cumsum(0) - p[0]


def causal_conv(x: torch.Tensor, buf: torch.Tensor, w: torch.Tensor):
    """Depthwise causal convolution of ``x`` [n, B, D] continuing the buffer ``buf`` [K-1, B, D]
    (the K-1 inputs before the chunk); ``w`` [D, 1, K].  Returns (output, the new buffer)."""
    K = w.shape[-1]
    xc = torch.cat([buf, x])
    n = x.shape[0]
    y = xc[0:n] * w[:, 0, 0]
    for j in range(1, K):
        y = y + xc[j:j + n] * w[:, 0, j]
    return y, xc[n:].clone()


class HGRNModel(DiagonalRecurrenceModel):
    """An instrumented HGRN language model (flash-linear-attention layout)."""

    architecture = "hgrn"
    SITES = SITES
    ATTENTION_NEEDS = frozenset({"f"})
    weight_shapes = staticmethod(canonical_weight_shapes)

    def _prepare(self):
        cfg = self.config
        if cfg.lower_bound:
            self._lb = lower_bounds(self._w["model.lower_bounds"])
        else:
            self._lb = torch.zeros(cfg.n_layer, cfg.d_inner, dtype=self.dtype, device=self.device)
        self._head = self._w.get("lm_head.weight", self._w["model.embeddings.weight"])

    # -- probes -------------------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        d, di = cfg.d_model, cfg.d_inner
        (r0, r1), (c0, c1) = self._window.rows, self._window.cols
        conv = " after the short convolution" if cfg.conv_size else ""
        desc = {
            "in": (d, "the mixer's input u = rmsnorm(x) (attn_norm)"),
            "i": (di, f"input i_t = silu(i_proj u){conv}; enters the state as (1 - f_t) i_t"),
            "f": (di, f"forget gate f_t = lb + (1 - lb) sigmoid(f_proj u{conv}), lb this layer's lower bound"),
            "g": (di, "output gate silu(g_proj u)"),
            "state": (di, "recurrent state h_t = f_t h_(t-1) + (1 - f_t) i_t"),
            "o": (di, "gated output rmsnorm(h_t) * g_t (g_norm), before o_proj"),
            "mixer": (d, "mixer output o_proj(o_t), before the residual add (mid = x + mixer)"),
            "mid": (d, "residual stream after the mixer's add, x + mixer: the GatedMLP block's input"),
            "mlp": (d, "GatedMLP output down(silu(gate(n)) * up(n)), n = rmsnorm(mid) (mlp_norm), before the "
                       "residual add"),
            "out": (d, "residual stream after the block: mid + mlp"),
            "attn": (c1 - c0, f"implicit attention mean_c alpha_ij over channels, alpha_ij = (1 - f_j) "
                              f"prod_(k=j+1..i) f_k (h_i = sum_j alpha_ij i_j); rows {r0}..{r1 - 1}, column m is "
                              f"key step {c0}+m; 0 where j > i, NaN in rows outside the window"),
        }
        return probe_table(cfg.n_layer, SITES, desc, embed=(d, "token embedding fed to layer 0"),
                           logits=(cfg.vocab_size, "next-token scores lm_head(rmsnorm(x)) (before softmax)"))

    # -- forward --------------------------------------------------------------------------------
    def initial_state(self, batch: int):
        cfg = self.config
        h = torch.zeros(batch, cfg.d_inner, dtype=self.dtype, device=self.device)
        buf = torch.zeros(max(cfg.conv_size - 1, 0), batch, cfg.d_inner, dtype=self.dtype, device=self.device)
        return h, buf, buf.clone()

    def state_parts(self, layer: int):
        cfg = self.config
        window = (cfg.conv_size - 1, cfg.d_inner)
        convs = (StatePart(1, "conv_window_i", window, batch_axis=1), StatePart(2, "conv_window_f", window, batch_axis=1))
        return (StatePart(0, "state", (cfg.d_inner,)),) + (convs if cfg.conv_size > 1 else ())

    def _norm(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.config.norm_eps)

    def _embed_tokens(self, x):
        return F.embedding(x, self._w["model.embeddings.weight"])

    def _logits(self, h):
        return F.linear(self._norm(h, self._w["model.norm.weight"]), self._head)

    def _site_shapes(self):
        cfg = self.config
        wide = ("in", "mixer", "mid", "mlp", "out")
        return {s: (cfg.d_model if s in wide else cfg.d_inner,) for s in SITES if s != "attn"}

    def _layer_chunk(self, k, x, a, state, edits, record):
        cfg, w = self.config, self._w
        p = f"model.layers.{k}."
        h, buf_i, buf_f = state
        edit = edits_in_chunk(edits, a, x.shape[0])
        u = edit("in", self._norm(x, w[p + "attn_norm.weight"]))
        ir, fr = F.linear(u, w[p + "attn.i_proj.weight"]), F.linear(u, w[p + "attn.f_proj.weight"])
        if cfg.conv_size:
            ir, buf_i = causal_conv(ir, buf_i, w[p + "attn.i_conv1d.weight"])
            fr, buf_f = causal_conv(fr, buf_f, w[p + "attn.f_conv1d.weight"])
        i = edit("i", F.silu(ir))
        lb = self._lb[k]
        f = edit("f", lb + (1 - lb) * torch.sigmoid(fr))
        g = edit("g", F.silu(F.linear(u, w[p + "attn.g_proj.weight"])))
        hs = scan_split_at_edits(f.contiguous(), ((1 - f) * i).contiguous(), h, a, edits.get("state", ()))
        o = edit("o", F.rms_norm(hs, (cfg.d_inner,), w.get(p + "attn.g_norm.weight"), cfg.norm_eps) * g)
        mixer = edit("mixer", F.linear(o, w[p + "attn.o_proj.weight"]))
        x = edit("mid", x + mixer)
        m = self._norm(x, w[p + "mlp_norm.weight"])
        ff = F.linear(F.silu(F.linear(m, w[p + "mlp.gate_proj.weight"])) * F.linear(m, w[p + "mlp.up_proj.weight"]),
                      w[p + "mlp.down_proj.weight"])
        ff = edit("mlp", ff)
        out = edit("out", x + ff)
        vals = {"in": u, "i": i, "f": f, "g": g, "state": hs, "o": o, "mixer": mixer, "mid": x, "mlp": ff, "out": out}
        return vals, (hs[-1].clone(), buf_i, buf_f)

    def _attention(self, k, out, old, s, T, B):
        f = out[layer_probe(k, "f")]
        return self._attention_rows(k, out, old, s, T, B,
                                    lambda b, rows, cols: gated_attention(f[:, b], 1 - f[:, b], rows, cols))


# ======================================================================================
# loading: flash-linear-attention HGRNForCausalLM folders, SeqScope's own file
# ======================================================================================

_F_PROJ = re.compile(r"^(.*?)layers\.(\d+)\.attn\.f_proj\.weight$")


def _hgrn_prefixes(tensors: dict) -> set[str]:
    """Prefixes under which the tensors hold HGRN layers (``i_proj``, ``f_proj`` and ``g_proj``;
    HGRN2 and other fla models with a ``q_proj`` are not HGRN)."""
    out = set()
    for k in tensors:
        m = _F_PROJ.match(k)
        if m:
            stem = f"{m.group(1)}layers.{m.group(2)}.attn."
            if stem + "i_proj.weight" in tensors and stem + "g_proj.weight" in tensors \
                    and stem + "q_proj.weight" not in tensors:
                out.add(m.group(1))
    return out


def looks_like(tensors: dict, configs: list) -> bool:
    """An HGRN checkpoint: its layer weights, or a config saying ``model_type: "hgrn"``."""
    if any(str(d.get("model_type", "")).lower() == "hgrn" or d.get("family") == "hgrn" for _, d in configs):
        return True
    return bool(_hgrn_prefixes(tensors))


def _config_from_files(configs: list, name: str) -> dict:
    """HGRNConfig fields stated by SeqScope metadata or fla's config.json."""
    for src, d in configs:
        if d.get("family") == "hgrn":
            return {k: v for k, v in d.items() if k in HGRNConfig.__dataclass_fields__}
        if str(d.get("model_type", "")).lower() != "hgrn":
            continue
        if d.get("attn"):
            raise LoadError(f"{src}: attn={d['attn']} mixes softmax-attention layers into the model; SeqScope "
                            "reads pure HGRN models only")
        act = str(d.get("hidden_act", "swish"))
        if act not in ("swish", "silu"):
            raise LoadError(f"{src} gives hidden_act {act!r}; SeqScope's HGRN supports the swish GatedMLP only")
        c = StatedConfig(d, src)
        out = c.sizes((("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"), ("vocab_size", "vocab_size")))
        if "norm_eps" in d:
            out["norm_eps"] = c.number("norm_eps")
        if "d_model" in out:
            out["d_inner"] = c.scaled("expand_ratio", out["d_model"], 1)
            if d.get("intermediate_size") is None:  # GatedMLP: 2/3 of hidden_ratio * hidden, to a multiple of 256
                inter = c.scaled("hidden_ratio", out["d_model"] * 2, 4) // 3
                inter = 256 * ((inter + 255) // 256)
            else:
                inter = c.whole("intermediate_size")
            out["ff_inner"] = inter
        out["conv_size"] = c.whole("conv_size", 4) if c.flag("use_short_conv", False) else 0
        out["lower_bound"] = c.flag("use_lower_bound", True)
        out["gate_norm_weight"] = c.flag("elementwise_affine", True)
        out["tie_embeddings"] = c.flag("tie_word_embeddings", False)
        return out
    return {}


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict]:
    """File keys -> fla's ``HGRNForCausalLM`` names (the model body under ``model.``, whatever
    its prefix in the file).  Returns (canonical -> tensor, canonical -> file key)."""
    prefixes = _hgrn_prefixes(tensors)
    if len(prefixes) != 1:
        raise LoadError(f"{name}: expected HGRN layer weights named …layers.{{k}}.attn.{{i,f,g}}_proj.weight under "
                        f"one prefix (found prefixes: {', '.join(sorted(prefixes)) or 'none'})")
    prefix = prefixes.pop()
    canon, origin = {}, {}
    for k, v in tensors.items():
        cn = "model." + k[len(prefix):] if k.startswith(prefix) and not k.startswith("lm_head.") else k
        canon[cn], origin[cn] = v, k
    return canon, origin


def _infer_config(canon: dict, stated: dict) -> dict:
    """HGRNConfig fields from the weights, where the configs left them out."""
    out = dict(stated)
    n = 0
    while f"model.layers.{n}.attn.f_proj.weight" in canon:
        n += 1
    out.setdefault("n_layer", n)
    emb = canon.get("model.embeddings.weight")
    if emb is not None and emb.ndim == 2:
        out.setdefault("vocab_size", int(emb.shape[0]))
        out.setdefault("d_model", int(emb.shape[1]))
    fw = canon.get("model.layers.0.attn.f_proj.weight")
    if fw is not None and fw.ndim == 2:
        out.setdefault("d_inner", int(fw.shape[0]))
    gw = canon.get("model.layers.0.mlp.gate_proj.weight")
    if gw is not None and gw.ndim == 2:
        out.setdefault("ff_inner", int(gw.shape[0]))
    cw = canon.get("model.layers.0.attn.i_conv1d.weight")
    out.setdefault("conv_size", int(cw.shape[-1]) if cw is not None and cw.ndim == 3 else 0)
    out.setdefault("lower_bound", "model.lower_bounds" in canon)
    out.setdefault("gate_norm_weight", "model.layers.0.attn.g_norm.weight" in canon)
    out.setdefault("tie_embeddings", "lm_head.weight" not in canon)
    return out


def load(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> HGRNModel:
    """An :class:`HGRNModel` from a checkpoint's tensors and its stored configs; every problem
    is a LoadError naming the keys involved."""
    stated = _config_from_files(configs, name)
    canon, origin = _canonical_names(tensors, name)
    cfg = config_from_fields(HGRNConfig, _infer_config(canon, stated), name=name, label="HGRN", tensors=tensors)
    what = (f"an HGRN model (flash-linear-attention layout: hidden_size={cfg.d_model}, layers={cfg.n_layer}, "
            f"d_inner={cfg.d_inner}, intermediate_size={cfg.ff_inner}, conv_size={cfg.conv_size}, "
            f"vocab_size={cfg.vocab_size})")
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in canon:
        expected["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)  # a tied copy saved anyway
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    model = build_model(HGRNModel, cfg, {cn: canon[cn] for cn in expected}, name=name, label="HGRN", **kwargs)
    model.load_info.update({"format": fmt, "layout": "flash-linear-attention HGRNForCausalLM"})
    if unused:
        model.load_info["notes"] = unused_note(unused)
    return model
