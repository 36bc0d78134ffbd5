"""Reading RWKV-4 checkpoints: ``transformers`` ``RwkvForCausalLM`` folders (and in-memory models,
:func:`from_transformers`) and BlinkDL's original RWKV-4 ``.pth`` files, whose names are renamed as
``transformers``' conversion script does.  :func:`looks_like_rwkv` recognises the files (refusing
RWKV-5/6 in words, leaving RWKV-7 to :mod:`engine.models.rwkv7_loading`), ``_config_from_files``
reads the config, ``_infer_config`` what the weights say, and :func:`load_rwkv` builds the
:class:`~engine.models.rwkv.RwkvModel` (``looks_like`` and ``load`` are the names
:mod:`engine.loading` asks a family module for).
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import LoadError
from .family import untied_if_the_file_says_so
from .family import StatedConfig, build_model, check_loaded_weights, config_from_fields, names_under, unused_note
from .rwkv import RwkvConfig, RwkvModel, canonical_weight_shapes


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
    from .rwkv7_loading import looks_like_rwkv7

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
