"""Building the classic recurrent stack (embedding → LSTM/GRU/Elman layers → linear head) from a
file's record: the inferred config checked against what the user and the file state, and
messages that say what was found and what was expected."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields

import torch

from ..errors import LoadError
from ..limits import check_declared_layers
from ..models.stack import RecurrentStack, StackConfig, canonical_weight_shapes
from ..tokenizers import CharVocab
from .config_example import config_help
from .classic_inference import _canonicalize, _common_prefix, _infer_config, _InferenceError, overlay_config
from .record import _Found, _short
from .saving import NAME_ENTRIES
from .side_files import _hints, _make_tokenizer, _stored_configs


EXPECTED_NAMES = (
    "torch.nn.LSTM/GRU/RNN parameter names under any prefix: rnn.weight_ih_l0 [gates*hidden, input], "
    "rnn.weight_hh_l0 [gates*hidden, hidden], rnn.bias_ih_l0, rnn.bias_hh_l0 (optional), "
    "…_l1 for more layers, …_l0_reverse when bidirectional, rnn.weight_hr_l0 with proj_size "
    "(gates: 4 LSTM, 3 GRU, 1 RNN); or LSTMCell/GRUCell/RNNCell stacks such as "
    "cells.0.weight_ih, cells.0.weight_hh"
)
#: an identity embedding for one-hot inputs is built up to this many elements (64 MB in float32),
#: or up to as many as the file's own tensors hold
MAX_ONE_HOT_ELEMENTS = 4096 * 4096


def _build(found: _Found, explicit: dict | None, *, device, dtype, strict: bool, source: str) -> RecurrentStack:
    notes = list(found.notes)
    explicit = dict(explicit or {})
    key_map = {str(k): str(v) for k, v in (explicit.pop("key_map", None) or {}).items()}
    configs = _stored_configs(found)
    stored_full = found.metadata.get("seqscope_config")
    hints = _hints(configs)
    if isinstance(stored_full, Mapping):
        stored_layers = stored_full.get("layers") if isinstance(stored_full.get("layers"), list) else []
        elman = [str(c) for c in [stored_full.get("cell", "")] + [lay.get("cell", "") for lay in stored_layers
                                                                  if isinstance(lay, Mapping)]
                 if str(c).startswith("rnn_")]
        if elman:
            hints["nonlinearity"] = (elman[0].split("_")[1], "the file's seqscope_config")

    tensors = found.tensors
    back = {k: k for k in tensors}  # name used below -> key in the file
    if key_map:
        prefix = _common_prefix(tensors)
        resolved = {}
        for fk, cn in key_map.items():
            real = fk if fk in tensors else prefix + fk if prefix + fk in tensors else None
            if real is None:
                raise LoadError(f"config key_map names {fk!r}, which is not in {found.name}; it has: "
                                f"{_list_keys(tensors)}")
            resolved[real] = cn
        tensors = {resolved.get(k, k): v for k, v in found.tensors.items()}
        back = {resolved.get(k, k): k for k in found.tensors}

    canon, origin, failure, head_parts = {}, {}, None, []
    # a reader that read the architecture itself (Keras) gives canonical names and the exact config
    exact = found.metadata.get("seqscope_exact") is True and not key_map
    try:
        if exact:
            canon, origin = dict(tensors), {k: k for k in tensors}
        else:
            canon, origin, head_parts = _canonicalize(tensors, notes)
    except _InferenceError as exc:
        failure = str(exc)
        canon, origin = {}, {}
    if key_map and not any(cn.startswith("head.") for cn in key_map.values()):
        for cn in ("head.weight", "head.bias"):  # a key_map that names no head asks for none
            canon.pop(cn, None)
            origin.pop(cn, None)
    for cn in key_map.values():  # names given explicitly always stand
        canon[cn] = tensors[cn]
        origin[cn] = cn
    for cn in list(key_map.values()):  # a key_map naming one bias of a layer: the other is zero
        other = cn.replace("bias_ih", "bias_hh") if "bias_ih" in cn else cn.replace("bias_hh", "bias_ih")
        if cn.startswith("rnn.bias_") and other not in canon:
            canon[other] = torch.zeros_like(tensors[cn])
            origin[other] = "(zeros: the key_map names one bias)"
            notes.append(f"{other} is zero: the key_map names only {cn} for that layer")
    if failure is not None and "rnn.weight_ih_l0" in canon and "rnn.weight_hh_l0" in canon:
        failure = None

    inferred: dict = {}
    if failure is None and not exact:
        try:
            inferred = _infer_config(canon, hints, explicit, notes)
        except _InferenceError as exc:
            failure = str(exc)
    base = dict(inferred)
    if isinstance(stored_full, Mapping):
        base = overlay_config(base, {k: v for k, v in stored_full.items() if k in {f.name for f in fields(StackConfig)}})
    cfg_dict = overlay_config(base, {k: v for k, v in explicit.items() if k != "nonlinearity"})
    nonlin = explicit.get("nonlinearity")
    cells = [str(lay.get("cell", "")) if isinstance(lay, Mapping) else "" for lay in cfg_dict.get("layers") or ()]
    if nonlin and not cells and cfg_dict.get("cell", "").startswith("rnn_"):
        cfg_dict["cell"] = f"rnn_{nonlin}"
    elif nonlin and (cfg_dict.get("cell") in ("lstm", "gru") if not cells else
                     not any(c.startswith("rnn_") for c in cells)):
        raise LoadError(f"config gives nonlinearity={nonlin!r}, which applies to Elman RNNs only, but the model "
                        f"has {' and '.join(dict.fromkeys(cells)) if cells else 'a ' + cfg_dict['cell']} layers")

    required = ("cell", "num_layers", "hidden_size", "input_size")
    if failure is not None and not all(k in cfg_dict for k in required) and not cfg_dict.get("layers"):
        raise LoadError(_inference_message(found, failure, tensors, back))
    if failure is not None:
        if not canon:
            raise LoadError(_inference_message(found, failure, tensors, back, config_given=True))
        where = "the config passed to load" if explicit else "the config stored in the file"
        notes.append(f"architecture taken from {where} ({failure})")

    try:
        cfg = StackConfig.from_dict(cfg_dict)
        missing_fields = [k for k in required if k not in cfg_dict and not cfg_dict.get("layers")]
        if missing_fields:
            raise ValueError(f"missing {', '.join(missing_fields)}")
    except (TypeError, ValueError) as exc:
        raise LoadError(f"the model config is not valid: {exc}") from None
    # before anything loops over the layers: a stated count the file cannot hold is refused now
    check_declared_layers(cfg.num_layers, len(found.tensors), found.name, "num_layers")

    # one-hot inputs: a stored vocabulary as wide as the first layer's input and no embedding
    tokenizer, vocab_src = _make_tokenizer(found, configs, notes)
    if (tokenizer is not None and cfg.vocab_size is None and "embed.weight" not in canon
            and tokenizer.vocab_size == cfg.input_size and "vocab_size" not in explicit
            and _one_hot_too_wide(cfg.input_size, found, notes)):
        tokenizer = None
    if (tokenizer is not None and cfg.vocab_size is None and "embed.weight" not in canon
            and tokenizer.vocab_size == cfg.input_size and "vocab_size" not in explicit):
        canon["embed.weight"] = torch.eye(cfg.input_size, dtype=canon["rnn.weight_ih_l0"].dtype)
        origin["embed.weight"] = "(identity: one-hot inputs)"
        cfg = StackConfig.from_dict({**asdict(cfg), "vocab_size": cfg.input_size})
        notes.append(f"the model reads one-hot vectors of its {cfg.input_size}-entry vocabulary; token ids go "
                     "through an identity embedding")

    expected = canonical_weight_shapes(cfg)
    file_key = lambda cn: back.get(origin.get(cn, cn), origin.get(cn, cn))  # noqa: E731
    missing = [cn for cn in expected if cn not in canon]
    named = lambda cn: cn if file_key(cn) == cn else f"{cn} (file key {file_key(cn)})"  # noqa: E731
    bad = [f"{named(cn)} is {list(canon[cn].shape)}, the config needs {list(expected[cn])}"
           for cn in expected if cn in canon and tuple(canon[cn].shape) != expected[cn]]
    if bad or missing:
        parts = []
        if bad:
            parts.append("shape mismatch: " + "; ".join(bad[:8]) + (f"; and {len(bad) - 8} more" if len(bad) > 8 else ""))
        if missing:
            parts.append("no weights for " + ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        stated = {k: v for k, v in cfg_dict.items() if k in explicit or (isinstance(stored_full, Mapping) and k in stored_full)}
        raise LoadError(f"{found.name} does not fit the model config ({_cfg_text(cfg)}): " + ". ".join(parts)
                        + (f". The config given says {stated}; the weights say {_cfg_text_dict(inferred)}"
                           if stated and inferred else "")
                        + ". Check the config, or leave out what the weights can tell")

    used_file_keys = {back.get(origin[cn], origin[cn]) for cn in expected if cn in origin}
    if "head.weight" not in expected:  # a head that is not one linear layer: read, not computed
        used_file_keys |= {back.get(k, k) for k in head_parts}
    unused = [k for k, v in found.tensors.items() if k not in used_file_keys and v.is_floating_point()]
    if unused:
        listing = ", ".join(f"{k} {list(found.tensors[k].shape)}" for k in unused[:12])
        listing += f", and {len(unused) - 12} more" if len(unused) > 12 else ""
        if strict:
            raise LoadError(
                f"{found.name}: {len(unused)} tensor{'s' if len(unused) > 1 else ''} in the file would be left unused: "
                f"{listing}. They may be a layer SeqScope's model (embedding → {cfg.cell} stack → one linear head) "
                "does not have, and skipping them would give wrong numbers. If they are not part of the forward "
                "pass, load with strict=False (seqscope: --no-strict); if they belong to the model under other names, "
                + config_help(found.tensors, known=_known_config(cfg, expected, file_key)))
        notes.append(f"unused tensors (strict=False): {listing}")
    skipped = [k for k, v in found.tensors.items() if k not in used_file_keys and not v.is_floating_point()]
    if skipped:
        notes.append("non-float tensors ignored: " + ", ".join(skipped[:8]))

    if tokenizer is not None and cfg.vocab_size is not None:
        n = tokenizer.vocab_size
        if n > cfg.vocab_size:
            msg = (f"the vocabulary from {vocab_src} has {n} entries but the embedding has only {cfg.vocab_size} "
                   "rows, so some token ids would fall outside it; the vocabulary probably belongs to another model")
            if strict:
                raise LoadError(msg + " (load with strict=False, seqscope --no-strict, to drop the vocabulary and use token ids)")
            notes.append(msg + "; the vocabulary was dropped")
            tokenizer = None
        elif n < cfg.vocab_size:
            notes.append(f"the vocabulary from {vocab_src} has {n} entries, the embedding {cfg.vocab_size} rows: "
                         f"ids {n}..{cfg.vocab_size - 1} have no text")
    elif tokenizer is not None and cfg.vocab_size is None:
        notes.append(f"a vocabulary was found ({vocab_src}) but the model reads numeric inputs; it was not attached")
        tokenizer = None
    if isinstance(tokenizer, CharVocab) and tokenizer.multi_character:
        notes.append("the vocabulary has entries longer than one character: text is matched character by "
                     "character, so give token ids for word-level vocabularies")
    elif isinstance(tokenizer, CharVocab) and tokenizer.specials:
        notes.append(f"the vocabulary's special entries ({', '.join(tokenizer.specials[:6])}) are never read from "
                     "text" + (f"; characters not in it are read as {tokenizer.unknown}" if tokenizer.unknown else ""))

    weights = {cn: canon[cn] for cn in expected}
    try:
        model = RecurrentStack(cfg, weights, tokenizer=tokenizer, source=source, dtype=dtype, device=device)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise LoadError(f"{found.name}: could not build the model: {_short(exc)}") from None
    _attach_info(model, found, cfg, notes, vocab_src)
    return model


def _known_config(cfg: StackConfig, expected, file_key) -> dict:
    """The config this file was read with, as ``config=`` would state it (the fields that differ
    from their defaults, and the key_map from the file's keys)."""
    defaults = {f.name: f.default for f in fields(StackConfig)}
    out = {k: v for k, v in asdict(cfg).items() if k not in defaults or v != defaults[k]}
    renamed = {file_key(cn): cn for cn in expected if file_key(cn) != cn and not file_key(cn).startswith("(")}
    if renamed:
        out["key_map"] = renamed
    return out


def _one_hot_too_wide(width: int, found: _Found, notes: list[str]) -> bool:
    """Whether an identity embedding for one-hot inputs of ``width`` would take more memory than
    is reasonable for the file (it grows as width²: 40,000 entries would be 6.4 GB from a file of
    a few MB); when it would, the model reads numeric inputs and a note says why."""
    held = sum(t.numel() for t in found.tensors.values())
    if width * width <= max(MAX_ONE_HOT_ELEMENTS, held):
        return False
    notes.append(f"the vocabulary has {width:,} entries and the model reads one-hot vectors of that width; an "
                 f"identity embedding for them would take {width * width * 4 / 1e9:.1f} GB, so the vocabulary was "
                 "not attached: give one-hot vectors as numeric inputs")
    return True


def _attach_info(model: RecurrentStack, found: _Found, cfg: StackConfig, notes: list[str], vocab_src):
    """Record how the model was read: shown by ``model.info()`` and kept in trace files."""
    extra = {"format": found.fmt}
    if found.container:
        extra["weights_from"] = found.container
    if cfg.cell.startswith("rnn_"):
        assumed = any("nonlinearity" in n and "assumed" in n for n in notes)
        extra["nonlinearity"] = cfg.cell.split("_")[1] + (" (assumed)" if assumed else "")
    if vocab_src:
        extra["vocabulary"] = str(vocab_src) if model.tokenizer is not None else ""
    extra.update(_stored_names(found, notes))
    if notes:
        extra["notes"] = "\n".join(notes)
    model.load_info.update(extra)


def _stored_names(found: _Found, notes: list[str]) -> dict:
    """The output and input names the file's metadata gives (``NAME_ENTRIES``), checked."""
    out = {}
    for entry, key in NAME_ENTRIES.items():
        names = found.metadata.get(entry)
        if names is None:
            continue
        if isinstance(names, list) and names and all(isinstance(n, str) and len(n) <= 200 for n in names) \
                and len(names) <= 100_000:
            out[key] = names
        else:
            notes.append(f"the metadata entry {entry} is not a list of names; it was ignored")
    return out


def _inference_message(found: _Found, failure: str, tensors, back, config_given=False) -> str:
    lines = [f"cannot work out the architecture of {found.name}: {failure}.",
             f"Found {len(tensors)} tensor{'s' if len(tensors) != 1 else ''}"
             + (f" (in {found.container})" if found.container else "") + f": {_list_keys(tensors, back)}.",
             f"Expected {EXPECTED_NAMES}.",
             f"Left unused: {_list_keys(tensors, back)}." if tensors else "",
             ("The config passed to load states the architecture, but the file's names could not be matched "
              "to it: add a key_map, e.g. " if config_given else "To load it anyway, ") + config_help(tensors, back) + "."]
    return " ".join(x for x in lines if x)


def _list_keys(tensors: dict, back: dict | None = None, limit: int = 12) -> str:
    keys = list(tensors)
    shown = ", ".join(f"{(back or {}).get(k, k)} {list(tensors[k].shape)}" for k in keys[:limit])
    if len(keys) > limit:
        shown += f", … and {len(keys) - limit} more"
    return shown or "(none)"


def _cfg_text(cfg: StackConfig) -> str:
    return _cfg_text_dict(asdict(cfg))


def _cfg_text_dict(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())
