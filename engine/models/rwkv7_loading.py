"""Reading RWKV-7 checkpoints: BlinkDL's ``.pth`` files, whatever the key prefix (there is no
config file: every size comes from the shapes).  :func:`looks_like_rwkv7` recognises the files,
``_infer_config`` reads the sizes from the weights, and :func:`load_rwkv7` builds the
:class:`~engine.models.rwkv7.Rwkv7Model` (``looks_like`` and ``load`` are the names
:mod:`engine.loading` asks a family module for).
"""
from __future__ import annotations

import re

from ..errors import LoadError
from .family import build_model, check_loaded_weights, config_from_fields, unused_note
from .rwkv7 import Rwkv7Config, Rwkv7Model, canonical_weight_shapes

#: tensors only RWKV-7 has (RWKV-4/5/6 have none of them)
_V7_KEY = re.compile(r"^(.*?)blocks\.(\d+)\.att\.(r_k|k_k|w0)$")
#: present in some files for layer 0, where v_first makes them unused
_LAYER0_V = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def looks_like_rwkv7(tensors: dict, configs: list) -> bool:
    """An RWKV-7 checkpoint: ``blocks.{i}.att.r_k`` / ``k_k`` / ``w0`` tensors (whatever the
    prefix), or SeqScope's own config with family "rwkv7"."""
    if any(_V7_KEY.match(k) for k in tensors):
        return True
    return any(d.get("family") == "rwkv7" for _, d in configs)


def _canonical_names(tensors: dict, name: str) -> tuple[dict, dict]:
    prefixes = {m.group(1) for k in tensors if (m := _V7_KEY.match(k))}
    if len(prefixes) != 1:
        found = ", ".join(repr(p) for p in sorted(prefixes)) or "none"
        raise LoadError(f"{name}: expected RWKV-7 layer weights named blocks.{{i}}.att.r_k (and k_k, w0) under one "
                        f"prefix (found prefixes: {found})")
    prefix = prefixes.pop()
    canon, origin = {}, {}
    for k, v in tensors.items():
        cn = k[len(prefix):] if k.startswith(prefix) else k
        canon[cn], origin[cn] = v, k
    return canon, origin


def _infer_config(canon: dict, stated: dict) -> dict:
    out = dict(stated)
    n = 0
    while f"blocks.{n}.att.r_k" in canon:
        n += 1
    out.setdefault("n_layer", n)

    def dim(key, axis):
        t = canon.get(key)
        return int(t.shape[axis]) if t is not None and t.ndim == 2 else None

    for field, key, axis in (("vocab_size", "emb.weight", 0), ("d_model", "emb.weight", 1),
                             ("head_size", "blocks.0.att.r_k", 1), ("d_ffn", "blocks.0.ffn.key.weight", 0),
                             ("d_decay", "blocks.0.att.w1", 1), ("d_aaa", "blocks.0.att.a1", 1),
                             ("d_gate", "blocks.0.att.g1", 1), ("d_mv", "blocks.1.att.v1", 1)):
        value = dim(key, axis)
        if value is not None:
            out.setdefault(field, value)
    out.setdefault("d_mv", 0)
    return out


def load_rwkv7(tensors: dict, configs: list, *, name: str, fmt: str, strict: bool = True, **kwargs) -> Rwkv7Model:
    """Build a :class:`Rwkv7Model` from a checkpoint's tensors (``.pth`` names, any common
    prefix).  Every problem is a LoadError naming the keys involved."""
    notes: list[str] = []
    stated = next(({k: v for k, v in d.items() if k in Rwkv7Config.__dataclass_fields__}
                   for _, d in configs if d.get("family") == "rwkv7"), {})
    canon, origin = _canonical_names(tensors, name)
    fields = _infer_config(canon, stated)
    cfg = config_from_fields(Rwkv7Config, fields, name=name, label="RWKV-7", tensors=tensors)
    expected = canonical_weight_shapes(cfg)
    for cn, shape in expected.items():  # vectors may be saved flat, or [1, 1, C] as trained
        t = canon.get(cn)
        if t is not None and len(shape) == 3 and tuple(t.shape) != shape and t.numel() == shape[-1]:
            canon[cn] = t.reshape(shape)
    ignored = [cn for cn in _LAYER0_V if cn in canon]
    if ignored:
        notes.append("layer 0's " + ", ".join(origin.get(cn, cn) for cn in ignored)
                     + " are unused (layer 0's v is v_first)")
    what = (f"an RWKV-7 model (n_embd={cfg.d_model}, heads={cfg.n_head} x {cfg.head_size}, n_layer={cfg.n_layer}, "
            f"ffn={cfg.d_ffn}, vocab_size={cfg.vocab_size})")
    unused = check_loaded_weights(name, what, expected, canon, origin, strict, ignored=ignored)
    if unused:
        notes.append(unused_note(unused))
    model = build_model(Rwkv7Model, cfg, {cn: canon[cn] for cn in expected}, name=name, label="RWKV-7", **kwargs)
    model.load_info.update({"format": fmt, "layout": "BlinkDL RWKV-7"})
    if notes:
        model.load_info["notes"] = "\n".join(notes)
    return model


#: the names engine.loading looks for in a family module
looks_like = looks_like_rwkv7
load = load_rwkv7
