"""Reading DeltaNet and gated DeltaNet checkpoints: fla ``DeltaNetForCausalLM`` /
``GatedDeltaNetForCausalLM`` folders (``config.json`` + weights) and bare state dicts of that
layout.  :func:`looks_like_deltanet` recognises the files (not those of fla's other families),
``_stated_config`` reads fla's config, ``_inferred_config`` what the weights say, and
:func:`load_deltanet` builds the :class:`~engine.models.deltanet.DeltaNetModel` (``looks_like``
and ``load`` are the names :mod:`engine.loading` asks a family module for).
"""
from __future__ import annotations

import re

from ..errors import LoadError
from .deltanet import DeltaNetConfig, DeltaNetModel, canonical_weight_shapes
from .family import StatedConfig, build_model, check_loaded_weights, config_from_fields, names_under, unused_note

_Q_PROJ = re.compile(r"^(.*?)layers\.(\d+)\.attn\.q_proj\.weight$")
#: tensors of other fla families with the same q/k/v names (GLA, HGRN, ...)
_OTHER_FLA = ("attn.gk_proj", "attn.g_norm_swish_gate", "attn.f_proj", "attn.i_proj")
_GATED = ("attn.A_log", "attn.a_proj.weight", "attn.dt_bias")
MODEL_TYPES = {"delta_net": False, "gated_deltanet": True}  # -> gated


def looks_like_deltanet(tensors: dict, configs: list) -> bool:
    """An fla (gated) DeltaNet checkpoint: ``config.json`` with ``model_type`` "delta_net" or
    "gated_deltanet", or (with no model_type stated) ``…layers.{i}.attn.q_proj.weight`` next to
    ``attn.o_norm.weight`` and convolutions, ``b_proj`` or the gated rule's ``A_log``,
    ``a_proj`` and ``dt_bias``, and none of the tensors of fla's other families."""
    for _, d in configs:
        if "model_type" in d:
            return str(d["model_type"]).lower() in MODEL_TYPES
        if str(d.get("family", "")).lower() in ("deltanet", "gated_deltanet"):
            return True
    if not any(_Q_PROJ.match(k) for k in tensors):
        return False
    keys = list(tensors)
    if any(marker in key for key in keys for marker in _OTHER_FLA):
        return False
    has = lambda suffix: any(key.endswith(suffix) for key in keys)  # noqa: E731
    gated = [has(marker) for marker in _GATED]
    if any(gated) and not all(gated):
        return False
    return has("attn.o_norm.weight") and (has("attn.k_conv1d.weight") or has("attn.b_proj.weight"))


def _stated_config(configs: list, name: str) -> dict:
    """DeltaNetConfig fields stated by fla's config.json (or SeqScope metadata)."""
    for src, d in configs:
        if str(d.get("family", "")).lower() in ("deltanet", "gated_deltanet"):
            return {k: v for k, v in d.items() if k in DeltaNetConfig.__dataclass_fields__}
        model_type = str(d.get("model_type", "")).lower()
        if model_type not in MODEL_TYPES:
            continue
        gated = MODEL_TYPES[model_type]
        if d.get("attn"):
            layers = d["attn"].get("layers") if isinstance(d["attn"], dict) else d["attn"]
            raise LoadError(f"{src}: 'attn' puts softmax attention in layers {layers} (a hybrid "
                            "model); SeqScope reads pure (gated) DeltaNet models only")
        act = str(d.get("hidden_act", "swish"))
        if act not in ("swish", "silu"):
            raise LoadError(f"{src} gives hidden_act {act!r}; SeqScope's DeltaNet supports the swish (swiglu) MLP only")
        c = StatedConfig(d, src)
        out = {"gated": gated}
        out.update(c.sizes((("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"), ("vocab_size", "vocab_size"),
                            ("num_heads", "num_heads"), ("conv_size", "conv_size"))))
        for ours, theirs in (("num_v_heads", "num_v_heads"), ("intermediate_size", "intermediate_size")):
            if d.get(theirs) is not None:  # null: derived from the other sizes
                out[ours] = c.whole(theirs)
        for ours, theirs in (("use_beta", "use_beta"), ("use_gate", "use_gate"), ("use_short_conv", "use_short_conv"),
                             ("tie_embeddings", "tie_word_embeddings")):
            if theirs in d:
                out[ours] = c.flag(theirs)
        if gated:  # DeltaNetConfig in fla does not pass allow_neg_eigval to its layers; GatedDeltaNetConfig does
            out.update(use_beta=True, allow_neg_eigval=c.flag("allow_neg_eigval", False))
            out.setdefault("use_gate", True)
        for key in ("qk_activation", "qk_norm"):
            if key in d and not gated:
                out[key] = str(d[key])
        if "norm_eps" in d:
            out["norm_eps"] = c.number("norm_eps")
        hid = out.get("d_model")
        if gated and d.get("head_dim") is not None and "num_heads" in out:
            out["key_dim"] = out["num_heads"] * c.whole("head_dim")
            head_v = c.scaled("expand_v", c.whole("head_dim"), 2.0)
            out["value_dim"] = out.get("num_v_heads", out["num_heads"]) * head_v
        elif hid and not gated:
            out["key_dim"] = c.scaled("expand_k", hid, 1.0)
            out["value_dim"] = c.scaled("expand_v", hid, 1.0)
        if hid and "intermediate_size" not in out:  # fla's GatedMLP: 2/3 * hidden_ratio * hidden, to a multiple of 256
            inter = c.scaled("hidden_ratio", hid * 2, 4) // 3
            out["intermediate_size"] = 256 * ((inter + 255) // 256)
        return out
    return {}


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict]:
    """File keys -> fla names whatever the prefix (``model.``, none, ``module.model.``)."""
    prefixes = {m.group(1) for k in tensors if (m := _Q_PROJ.match(k))}
    if len(prefixes) != 1:
        raise LoadError(f"{name}: expected DeltaNet layer weights named …layers.{{i}}.attn.q_proj.weight under one "
                        f"prefix (found prefixes: {', '.join(sorted(prefixes)) or 'none'})")
    return names_under(tensors, prefixes.pop(), "model.", "lm_head.")


def _inferred_config(canon: dict, stated: dict) -> dict:
    """DeltaNetConfig fields from the weights, where the config left them out."""
    out = dict(stated)
    n = 0
    while f"model.layers.{n}.attn.q_proj.weight" in canon:
        n += 1
    out.setdefault("n_layer", n)
    a = "model.layers.0.attn."
    shape = lambda key, i: int(canon[key].shape[i]) if key in canon and canon[key].ndim > i else None  # noqa: E731
    for field, key, i in (("d_model", a + "q_proj.weight", 1), ("key_dim", a + "q_proj.weight", 0),
                          ("value_dim", a + "v_proj.weight", 0), ("vocab_size", "model.embeddings.weight", 0),
                          ("intermediate_size", "model.layers.0.mlp.gate_proj.weight", 0),
                          ("conv_size", a + "q_conv1d.weight", 2)):
        if shape(key, i) is not None:
            out.setdefault(field, shape(key, i))
    out.setdefault("gated", a + "A_log" in canon)
    heads = shape(a + "b_proj.weight", 0) or shape(a + "A_log", 0)  # value heads
    if not heads and shape(a + "o_norm.weight", 0) and out.get("value_dim"):
        heads = out["value_dim"] // shape(a + "o_norm.weight", 0)
    if heads:
        out.setdefault("num_heads", heads)  # without a config: no grouped value heads
    out.setdefault("use_beta", a + "b_proj.weight" in canon)
    out.setdefault("use_gate", a + "g_proj.weight" in canon)
    out.setdefault("use_short_conv", a + "q_conv1d.weight" in canon)
    out["conv_bias"] = a + "q_conv1d.bias" in canon  # fla's config does not state it
    out.setdefault("tie_embeddings", "lm_head.weight" not in canon)
    return out


def load_deltanet(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True,
                  **kwargs) -> DeltaNetModel:
    """A :class:`DeltaNetModel` from a checkpoint's tensors and the configs stored with it
    (``[(where, dict)]``); every problem is a LoadError naming the keys involved."""
    stated = _stated_config(configs, name)
    canon, origin = _canonical_names(tensors, name)
    cfg = config_from_fields(DeltaNetConfig, _inferred_config(canon, stated), name=name, label="(gated) DeltaNet",
                             tensors=tensors)
    expected = canonical_weight_shapes(cfg)
    what = (f"a {cfg.family} model (fla layout: d_model={cfg.d_model}, n_layer={cfg.n_layer}, "
            f"num_heads={cfg.num_heads}, key_dim={cfg.key_dim}, value_dim={cfg.value_dim})")
    tied_head = ["lm_head.weight"] if cfg.tie_embeddings else []
    unused = check_loaded_weights(name, what, expected, canon, origin, strict, ignored=tied_head)
    model = build_model(DeltaNetModel, cfg, {cn: canon[cn] for cn in expected}, name=name, label="DeltaNet",
                        **kwargs)
    model.load_info.update({"format": fmt, "layout": "fla " + ("GatedDeltaNetForCausalLM" if cfg.gated
                                                              else "DeltaNetForCausalLM")})
    notes = [unused_note(unused)] if unused else []
    if "num_heads" not in stated:
        notes.append(f"no config states num_heads: {cfg.num_heads} taken from the weights (one per beta), so "
                     f"d_k = {cfg.head_k}; give config.json if the model groups value heads (num_v_heads)")
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_deltanet
load = load_deltanet
