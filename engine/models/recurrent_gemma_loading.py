"""Reading RecurrentGemma checkpoints: ``transformers`` ``RecurrentGemmaForCausalLM`` folders
written by ``save_pretrained`` (or a bare ``RecurrentGemmaModel``), and in-memory models
(:func:`from_transformers`).  :func:`looks_like_recurrent_gemma` recognises the files,
``_config_from_files`` reads the config, ``_infer_config`` what the weights say, and
:func:`load_recurrent_gemma` builds the :class:`~engine.models.recurrent_gemma.RecurrentGemmaModel`
(``looks_like`` and ``load`` are the names :mod:`engine.loading` asks a family module for).
"""
from __future__ import annotations

import re

import torch

from ..errors import LoadError
from .family import untied_if_the_file_says_so
from .family import (StatedConfig, build_model, check_loaded_weights, checked_fields, config_from_fields, names_under,
                     unused_note)
from .recurrent_gemma import RecurrentGemmaConfig, RecurrentGemmaModel, canonical_weight_shapes

_TEMPORAL = re.compile(r"^(.*?)layers\.(\d+)\.temporal_block\.(rg_lru\.recurrent_param|q_proj\.weight)$")


def looks_like_recurrent_gemma(tensors: dict, configs: list) -> bool:
    """A RecurrentGemma checkpoint: ``…layers.{i}.temporal_block.rg_lru…`` or ``…q_proj``
    tensors, or a config with ``model_type`` "recurrent_gemma"."""
    if any(_TEMPORAL.match(k) for k in tensors):
        return True
    return any(str(d.get("model_type", "")).lower() == "recurrent_gemma" or d.get("family") == "recurrent_gemma"
               for _, d in configs)


def _checked(src: str, out: dict) -> dict:
    """Stated fields checked by type before the weights' inference divides by any of them."""
    try:
        out = checked_fields(RecurrentGemmaConfig, out)
    except ValueError as exc:
        raise LoadError(f"{src}: {exc}") from None
    for key in ("hidden_size", "num_attention_heads"):
        if out.get(key) == 0:
            raise LoadError(f"{src}: {key} is 0, expected a positive whole number")
    return out


def _config_from_files(configs: list) -> tuple[dict, str]:
    for src, d in configs:
        if d.get("family") == "recurrent_gemma":
            return _checked(src, {k: v for k, v in d.items() if k in RecurrentGemmaConfig.__dataclass_fields__}), \
                "SeqScope"
        if str(d.get("model_type", "")).lower() == "recurrent_gemma":
            c = StatedConfig(d, src)
            out = {k: d[k] for k in RecurrentGemmaConfig.__dataclass_fields__ if d.get(k) is not None}
            rope = c.mapping("rope_parameters") if d.get("rope_parameters") is not None else StatedConfig({}, src)
            for key in ("rope_theta", "partial_rotary_factor"):  # transformers 5 keeps them in rope_parameters
                if key in rope:
                    out[key] = rope.number(key)
            if d.get("final_logit_softcapping") and "logits_soft_cap" not in out:
                out["logits_soft_cap"] = c.number("final_logit_softcapping")
            out = _checked(src, out)
            if out.get("lru_width") is None and "hidden_size" in out:
                out["lru_width"] = out["hidden_size"]
            if out.get("num_key_value_heads") is None and "num_attention_heads" in out:
                out["num_key_value_heads"] = out["num_attention_heads"]
            return out, "transformers RecurrentGemmaForCausalLM"
    return {}, ""


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict]:
    """File keys -> ``RecurrentGemmaForCausalLM`` names whatever the prefix (``model.``, none);
    returns (canonical -> tensor, canonical -> file key)."""
    prefixes = {m.group(1) for k in tensors if (m := _TEMPORAL.match(k))}
    if len(prefixes) != 1:
        raise LoadError(f"{name}: expected RecurrentGemma layers named …layers.{{i}}.temporal_block.* under one "
                        f"prefix (found prefixes: {', '.join(sorted(prefixes)) or 'none'})")
    return names_under(tensors, prefixes.pop(), "model.", "lm_head.")


def _infer_config(canon: dict, stated: dict, notes: list) -> dict:
    """Config fields from the weights where the config files left them out."""
    out = dict(stated)
    kinds = []
    while any(k.startswith(f"model.layers.{len(kinds)}.") for k in canon):
        i = len(kinds)
        kinds.append("attention" if f"model.layers.{i}.temporal_block.q_proj.weight" in canon else "recurrent")
    out.setdefault("num_hidden_layers", len(kinds))
    out.setdefault("block_types", tuple(kinds) or ("recurrent",))

    def shape(key):
        v = canon.get(key)
        return tuple(v.shape) if v is not None else None

    emb = shape("model.embed_tokens.weight")
    if emb and len(emb) == 2:
        out.setdefault("vocab_size", emb[0])
        out.setdefault("hidden_size", emb[1])
    rec = next((i for i, kd in enumerate(kinds) if kd == "recurrent"), None)
    att = next((i for i, kd in enumerate(kinds) if kd == "attention"), None)
    if rec is not None:
        t = f"model.layers.{rec}.temporal_block."
        if (s := shape(t + "rg_lru.recurrent_param")) and len(s) == 1:
            out.setdefault("lru_width", s[0])
        if (s := shape(t + "rg_lru.input_gate_weight")) and len(s) == 3:
            out.setdefault("num_attention_heads", s[0])
        if (s := shape(t + "conv_1d.weight")) and len(s) == 3:
            out.setdefault("conv1d_width", s[2])
    if att is not None and "hidden_size" in out:
        t = f"model.layers.{att}.temporal_block."
        q, kk = shape(t + "q_proj.weight"), shape(t + "k_proj.weight")
        out.setdefault("attention_bias", t + "q_proj.bias" in canon)
        if "num_attention_heads" in out and q and kk:
            hd = out["hidden_size"] // out["num_attention_heads"]
            if hd == 0:
                raise LoadError(f"the config gives num_attention_heads={out['num_attention_heads']}, more heads than "
                                f"hidden_size={out['hidden_size']} has units")
            out.setdefault("num_key_value_heads", max(1, kk[0] // hd))
        if "attention_window_size" not in out:
            notes.append("no config states attention_window_size; the default 2048 was used")
    out.setdefault("lru_width", out.get("hidden_size", 0))
    out.setdefault("num_key_value_heads", out.get("num_attention_heads", 1))
    if (s := shape("model.layers.0.mlp_block.gate_proj.weight")) and len(s) == 2:
        out.setdefault("intermediate_size", 2 * s[0])
    if "lm_head.weight" not in canon:
        out["tie_word_embeddings"] = True
    elif "tie_word_embeddings" not in stated:
        lm, e = canon["lm_head.weight"], canon.get("model.embed_tokens.weight")
        out["tie_word_embeddings"] = e is not None and lm.shape == e.shape and bool(torch.equal(lm, e))
    return out


def load_recurrent_gemma(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True,
                         **kwargs) -> RecurrentGemmaModel:
    """A :class:`RecurrentGemmaModel` from a checkpoint's tensors and its configs
    (``[(where, dict)]``); every problem is a LoadError naming the keys involved."""
    notes: list[str] = []
    stated, layout = _config_from_files(configs)
    canon, origin = _canonical_names(tensors, name)
    fields = _infer_config(canon, stated, notes)
    cfg = config_from_fields(RecurrentGemmaConfig, fields, name=name, label="RecurrentGemma", tensors=tensors)
    cfg = untied_if_the_file_says_so(cfg, "tie_word_embeddings", canon, "lm_head.weight", "model.embed_tokens.weight",
                                     notes)
    expected = canonical_weight_shapes(cfg)
    if cfg.tie_word_embeddings and "lm_head.weight" in canon:  # a tied head saved anyway: equal to the embedding
        expected = {**expected, "lm_head.weight": (cfg.vocab_size, cfg.hidden_size)}
    what = (f"a RecurrentGemma model ({layout or 'layout from the weights'}: hidden_size={cfg.hidden_size}, "
            f"layers={cfg.num_hidden_layers} {list(cfg.block_types)[:cfg.num_hidden_layers]}, "
            f"lru_width={cfg.lru_width}, heads={cfg.num_attention_heads})")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict)
    if unused:
        notes.append(unused_note(unused))
    weights = {cn: canon[cn] for cn in expected if not (cn == "lm_head.weight" and cfg.tie_word_embeddings)}
    model = build_model(RecurrentGemmaModel, cfg, weights, name=name, label="RecurrentGemma", **kwargs)
    model.load_info.update({"format": fmt, "layout": layout or "inferred from the weights"})
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


def from_transformers(hf_model, **kwargs) -> RecurrentGemmaModel:
    """Wrap an in-memory ``transformers`` ``RecurrentGemmaForCausalLM`` (weights are copied)."""
    kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
    c = hf_model.config.to_dict()
    c["model_type"] = "recurrent_gemma"
    return load_recurrent_gemma(dict(hf_model.state_dict()), [("config", c)], name=f"<in-memory {type(hf_model).__name__}>",
                                fmt="in-memory", source=f"<in-memory {type(hf_model).__name__}>", **kwargs)


#: the names engine.loading looks for in a family module
looks_like = looks_like_recurrent_gemma
load = load_recurrent_gemma
