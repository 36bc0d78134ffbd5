"""Reading Mamba2 checkpoints: ``transformers`` ``Mamba2ForCausalLM`` folders (and in-memory
models, :func:`from_transformers`), the original ``mamba_ssm`` layout (``config.json`` with
``ssm_cfg: {"layer": "Mamba2"}``) and bare state dicts of those layouts.  :func:`looks_like_mamba2`
recognises the files (never Mamba (1) weights), ``_config_from_files`` reads either config,
``_infer_config`` what the weights say, and :func:`load_mamba2` builds the
:class:`~engine.models.mamba2.Mamba2Model` (``looks_like`` and ``load`` are the names
:mod:`engine.loading` asks a family module for).
"""
from __future__ import annotations

import math
import re

import torch

from ..errors import LoadError
from .family import untied_if_the_file_says_so
from .family import StatedConfig, build_model, check_loaded_weights, config_from_fields, unused_note
from .mamba import _canonical_names  # file keys -> backbone.* names, found by the A_log keys
from .mamba2 import Mamba2Config, Mamba2Model, canonical_weight_shapes


def from_transformers(hf_model, **kwargs) -> Mamba2Model:
    """Wrap an in-memory ``transformers`` ``Mamba2ForCausalLM`` (weights are copied)."""
    c = hf_model.config
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"only silu convolution activations are supported, got {c.hidden_act!r}")
    sd = hf_model.state_dict()
    lo, hi = _dt_limit(getattr(c, "time_step_limit", (0.0, math.inf)))
    cfg = Mamba2Config(d_model=c.hidden_size, n_layer=c.num_hidden_layers, vocab_size=c.vocab_size,
                       n_heads=c.num_heads, head_dim=c.head_dim, d_state=c.state_size, n_groups=c.n_groups,
                       d_conv=c.conv_kernel, norm_eps=c.layer_norm_epsilon, in_proj_bias=c.use_bias,
                       out_proj_bias=c.use_bias, conv_bias=c.use_conv_bias, dt_min=lo, dt_max=hi,
                       tie_embeddings="lm_head.weight" not in sd
                       or sd["lm_head.weight"].data_ptr() == sd["backbone.embeddings.weight"].data_ptr(),
                       chunk_size=int(getattr(c, "chunk_size", 256)))
    kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
    return Mamba2Model(cfg, dict(sd), source=f"<in-memory {type(hf_model).__name__}>", **kwargs)


def _dt_limit(limit) -> tuple[float, float | None]:
    """``time_step_limit`` as (dt_min, dt_max or None); JSON writes infinity as
    ``{"__float__": "Infinity"}``."""
    def num(v):
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        return float(v)

    lo, hi = (num(v) for v in limit)
    return lo, (None if math.isinf(hi) else hi)


# ======================================================================================
# loading: Hugging Face Mamba2ForCausalLM folders (and bare state dicts of that layout)
# ======================================================================================

_DT_BIAS = re.compile(r"^(.*?)layers\.(\d+)\.mixer\.dt_bias$")
_A_LOG = re.compile(r"^(.*?)layers\.(\d+)\.mixer\.A_log$")
_HF_FIELDS = (("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"), ("vocab_size", "vocab_size"),
              ("d_state", "state_size"), ("d_conv", "conv_kernel"), ("n_heads", "num_heads"),
              ("head_dim", "head_dim"), ("n_groups", "n_groups"), ("chunk_size", "chunk_size"))


def _stated_model_types(configs: list) -> set[str]:
    return {str(d["model_type"]).lower() for _, d in configs if "model_type" in d}


def looks_like_mamba2(tensors: dict, configs: list) -> bool:
    """A Mamba2 checkpoint: a config that says so (``model_type`` "mamba2", SeqScope's family
    "mamba2", mamba_ssm's ``ssm_cfg.layer`` "Mamba2"), or, when no config names another model
    type, ``…layers.{i}.mixer.dt_bias`` tensors next to one-dimensional ``A_log``.  Never Mamba (1)
    weights (a matrix ``A_log``), whatever a config says: those are left to ``engine.models.mamba``."""
    a_logs = [v for k, v in tensors.items() if _A_LOG.match(k)]
    if any(v.ndim != 1 for v in a_logs):  # Mamba (1) weights, whatever a config says
        return False
    if any(d.get("family") == "mamba2" for _, d in configs) or "mamba2" in _stated_model_types(configs):
        return True
    if any(_mamba_ssm_layer(d) == "Mamba2" for _, d in configs):
        return True
    if _stated_model_types(configs):
        return False
    return bool(a_logs) and any(_DT_BIAS.match(k) for k in tensors)


def _config_from_files(configs: list, notes: list) -> tuple[dict, str]:
    """Mamba2Config fields stated by the configs, and which layout they came from."""
    for src, d in configs:
        if d.get("family") == "mamba2":  # SeqScope's own metadata
            return {k: v for k, v in d.items() if k in Mamba2Config.__dataclass_fields__}, "SeqScope"
        if _mamba_ssm_layer(d) == "Mamba2":
            return _mamba_ssm_fields(src, d, notes), "mamba_ssm"
        if str(d.get("model_type", "")).lower() != "mamba2":
            continue
        act = str(d.get("hidden_act", "silu"))
        if act not in ("silu", "swish"):
            raise LoadError(f"{src} gives hidden_act {act!r}; SeqScope's Mamba2 supports silu only")
        c = StatedConfig(d, src)
        out = c.sizes(_HF_FIELDS)
        out["norm_eps"] = c.number("layer_norm_epsilon", 1e-5)
        if "use_bias" in d:
            out["in_proj_bias"] = out["out_proj_bias"] = c.flag("use_bias")
        if "use_conv_bias" in d:
            out["conv_bias"] = c.flag("use_conv_bias")
        out["tie_embeddings"] = c.flag("tie_word_embeddings", False)
        if "time_step_limit" in d:
            try:
                out["dt_min"], out["dt_max"] = _dt_limit(d["time_step_limit"])
            except (TypeError, ValueError):
                raise LoadError(f"{src}: time_step_limit {d['time_step_limit']!r} is not a pair of numbers") from None
        expand, dm = c.whole("expand", None), out.get("d_model")
        if expand is not None and dm and "n_heads" in out and "head_dim" in out \
                and expand * dm != out["n_heads"] * out["head_dim"]:
            raise LoadError(f"{src}: expand * hidden_size = {expand * dm} but num_heads * head_dim = "
                            f"{out['n_heads'] * out['head_dim']}; transformers requires them equal")
        if "chunk_size" in out:
            notes.append(f"chunk_size {out['chunk_size']} from {src} is not used: SeqScope chunks its own way "
                         "(the results do not depend on it)")
        return out, "transformers Mamba2ForCausalLM"
    return {}, ""


def _mamba_ssm_layer(d: dict) -> str | None:
    """The ``ssm_cfg.layer`` of a mamba_ssm ``MambaLMHeadModel`` config (None for other configs)."""
    if "d_model" in d and "n_layer" in d and isinstance(d.get("ssm_cfg"), dict):
        return str(d["ssm_cfg"].get("layer", "Mamba1"))
    return None


def _mamba_ssm_fields(src: str, d: dict, notes: list) -> dict:
    """Mamba2Config fields from a mamba_ssm config (``d_model``, ``n_layer``, ``ssm_cfg`` …), with
    mamba_ssm's defaults; what SeqScope's Mamba2 does not have is refused in words."""
    c = StatedConfig(d, src)
    ssm = c.mapping("ssm_cfg")
    expand, d_model = ssm.whole("expand", 2), c.whole("d_model")
    refuse = [(d.get("d_intermediate"), f"d_intermediate={d.get('d_intermediate')} adds MLP blocks between the mixers"),
              (d.get("attn_layer_idx"), f"attn_layer_idx={d.get('attn_layer_idx')} adds attention layers (a hybrid)"),
              (not d.get("rms_norm", True), "rms_norm=false uses LayerNorm blocks"),
              (ssm.get("d_ssm") not in (None, expand * d_model),
               f"d_ssm={ssm.get('d_ssm')} adds a gated MLP inside the mixer"),
              (not ssm.get("rmsnorm", True), "rmsnorm=false drops the gated norm"),
              (ssm.get("norm_before_gate", False), "norm_before_gate=true normalises before the gate"),
              (ssm.get("D_has_hdim", False), "D_has_hdim=true gives D per channel")]
    for bad, why in refuse:
        if bad:
            raise LoadError(f"{src}: {why}, which SeqScope's Mamba2 does not have")
    vocab, pad = c.whole("vocab_size"), c.whole("pad_vocab_size_multiple", 1) or 1
    if vocab % pad:
        notes.append(f"vocab_size {vocab} padded to {vocab + pad - vocab % pad} (pad_vocab_size_multiple {pad})")
        vocab += pad - vocab % pad
    d_inner = expand * d_model
    headdim = ssm.whole("headdim", 64)
    if headdim <= 0:
        raise LoadError(f"{src}: ssm_cfg headdim is {headdim}, expected a positive whole number")
    try:
        dt_min, dt_max = _dt_limit(ssm.get("dt_limit", (0.0, math.inf)))
    except (TypeError, ValueError):
        raise LoadError(f"{src}: ssm_cfg dt_limit {ssm.get('dt_limit')!r} is not a pair of numbers") from None
    return {"d_model": d_model, "n_layer": c.whole("n_layer"), "vocab_size": vocab,
            "n_heads": d_inner // headdim, "head_dim": headdim, "d_state": ssm.whole("d_state", 128),
            "n_groups": ssm.whole("ngroups", 1), "d_conv": ssm.whole("d_conv", 4),
            "norm_eps": c.number("norm_epsilon", 1e-5), "gate_norm_eps": 1e-5,
            "in_proj_bias": ssm.flag("bias", False), "out_proj_bias": ssm.flag("bias", False),
            "conv_bias": ssm.flag("conv_bias", True), "dt_min": dt_min, "dt_max": dt_max,
            "tie_embeddings": c.flag("tie_embeddings", True), "chunk_size": ssm.whole("chunk_size", 256)}


def _infer_config(canon: dict, stated: dict, notes: list) -> dict:
    """Mamba2Config fields from the weights, where the configs left them out."""
    out = dict(stated)
    n = 0
    while f"backbone.layers.{n}.mixer.dt_bias" in canon:
        n += 1
    out.setdefault("n_layer", n)
    m = "backbone.layers.0.mixer."
    emb = canon.get("backbone.embeddings.weight")
    if emb is not None and emb.ndim == 2:
        out.setdefault("vocab_size", int(emb.shape[0]))
        out.setdefault("d_model", int(emb.shape[1]))
    a_log, gate_norm, cw = canon.get(m + "A_log"), canon.get(m + "norm.weight"), canon.get(m + "conv1d.weight")
    if a_log is not None and a_log.ndim == 1:
        out.setdefault("n_heads", int(a_log.shape[0]))
    if gate_norm is not None and gate_norm.ndim == 1 and out.get("n_heads"):
        out.setdefault("head_dim", int(gate_norm.shape[0]) // out["n_heads"])
    if cw is not None and cw.ndim == 3:
        out.setdefault("d_conv", int(cw.shape[-1]))
        if gate_norm is not None and "d_state" not in out:
            if "n_groups" not in out:
                notes.append("n_groups is not stated; assumed 1")
            out["d_state"] = (int(cw.shape[0]) - int(gate_norm.shape[0])) // (2 * out.get("n_groups", 1))
    out.setdefault("in_proj_bias", m + "in_proj.bias" in canon)
    out.setdefault("out_proj_bias", m + "out_proj.bias" in canon)
    out.setdefault("conv_bias", m + "conv1d.bias" in canon)
    if "lm_head.weight" not in canon:
        out["tie_embeddings"] = True
    elif "tie_embeddings" not in stated:
        lm = canon["lm_head.weight"]
        out["tie_embeddings"] = emb is not None and lm.shape == emb.shape and bool(torch.equal(lm, emb))
    return out


def load_mamba2(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> Mamba2Model:
    """Build a :class:`Mamba2Model` from a checkpoint's tensors and the configs stored with it
    (``[(where, dict)]``).  Every problem is a LoadError naming the keys involved."""
    notes: list[str] = []
    stated, layout = _config_from_files(configs, notes)
    canon, origin = _canonical_names(tensors, name)
    fields = _infer_config(canon, stated, notes)
    cfg = config_from_fields(Mamba2Config, fields, name=name, label="Mamba2", tensors=tensors)
    cfg = untied_if_the_file_says_so(cfg, "tie_embeddings", canon, "lm_head.weight", "backbone.embeddings.weight", notes)
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in canon:
        expected = {**expected, "lm_head.weight": (cfg.vocab_size, cfg.d_model)}
    what = (f"a Mamba2 model ({layout or 'layout from the weights'}: d_model={cfg.d_model}, n_layer={cfg.n_layer}, "
            f"n_heads={cfg.n_heads}, head_dim={cfg.head_dim}, d_state={cfg.d_state}, n_groups={cfg.n_groups}, "
            f"d_conv={cfg.d_conv}, vocab_size={cfg.vocab_size})")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    if unused:
        notes.append(unused_note(unused))
    weights = {cn: canon[cn] for cn in expected if cn != "lm_head.weight" or not cfg.tie_embeddings}
    model = build_model(Mamba2Model, cfg, weights, name=name, label="Mamba2", **kwargs)
    model.load_info.update({"format": fmt, "layout": layout or "inferred from the weights"})
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_mamba2
load = load_mamba2
