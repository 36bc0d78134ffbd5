"""Reading GLA / RetNet checkpoints: fla ``GLAForCausalLM`` / ``RetNetForCausalLM`` folders
(``config.json`` + weights) and bare state dicts.  :func:`looks_like` recognises the files,
``_stated_fields`` reads fla's config, ``_infer_fields`` what the weights say, and
:func:`load_linear_attention` builds the :class:`~engine.models.gla.LinearAttentionModel`
(``looks_like`` and ``load`` are the names :mod:`engine.loading` asks a family module for).
"""
from __future__ import annotations

import re

from ..errors import LoadError
from .family import StatedConfig, build_model, check_loaded_weights, config_from_fields, unused_note
from .gla import FAMILIES, LinearAttentionConfig, LinearAttentionModel, canonical_weight_shapes

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
