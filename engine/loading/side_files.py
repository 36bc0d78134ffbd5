"""Configs and vocabularies kept with a model: checkpoint entries, safetensors metadata,
``config.json``, ``vocab.json``, ``tokenizer.json`` and RWKV vocabulary files beside it, and the
config a user passes to :func:`engine.load`."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path

from .. import safe_json
from ..errors import LoadError
from ..keras_tokenizer import KerasTokenizer, looks_like_keras_tokenizer
from ..limits import display_name, open_regular
from ..models.stack import CELLS, StackConfig
from ..tokenizers import CharVocab, FileTokenizer, RwkvWorldTokenizer, tokenizer_from_dict
from .record import _CONFIG_KEYS, _Found, _short, _VOCAB_KEYS


_HINT_ALIASES = {
    "hidden_size": ("hidden_size", "hidden_dim", "n_hidden", "rnn_size", "hidden_units", "nhid", "hidden"),
    "num_layers": ("num_layers", "n_layers", "nlayers", "layers", "rnn_layers"),
    "input_size": ("input_size", "embedding_dim", "embed_dim", "emb_dim", "embed_size", "emsize", "ninp"),
    "vocab_size": ("vocab_size", "n_vocab", "ntoken", "n_tokens", "num_tokens"),
    "bidirectional": ("bidirectional",),
    "proj_size": ("proj_size",),
}


def _explicit_config(config) -> dict | None:
    if config is None:
        return None
    if isinstance(config, StackConfig):
        return asdict(config)
    if isinstance(config, (str, os.PathLike)):
        config = safe_json.read(Path(config), "config file")
    if not isinstance(config, Mapping):
        raise LoadError(f"config must be a dict, a StackConfig or a JSON file, not a {type(config).__name__}")
    allowed = {f.name for f in fields(StackConfig)} | {"key_map", "nonlinearity"}
    unknown = sorted(set(map(str, config)) - allowed)
    if unknown:
        raise LoadError(f"config has unknown entries {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    out = dict(config)
    if "cell" in out:
        if not isinstance(out["cell"], str):
            raise LoadError(f"config cell must be a name such as 'lstm', not a {type(out['cell']).__name__}")
        cell = _cell_from_text(out["cell"])
        if cell is None:
            raise LoadError(f"config cell {out['cell']!r} is not one of {', '.join(CELLS)}")
        out["cell"] = cell
    if "nonlinearity" in out and out["nonlinearity"] not in ("tanh", "relu"):
        raise LoadError(f"config nonlinearity must be 'tanh' or 'relu', not {out['nonlinearity']!r}")
    if "key_map" in out and not isinstance(out["key_map"], Mapping):
        raise LoadError("config key_map must be a dict {key in the file: canonical name}")
    return out


def _cell_from_text(s: str) -> str | None:
    """``"LSTM"``, ``"nn.GRU"``, ``"RNN_RELU"``, ``"elman"`` … as a cell name; None when the text
    names no cell (``"CharRNN"`` is a class name, not a statement about the cell)."""
    s = s.strip().lower()
    if s in CELLS:
        return s
    words = set(re.split(r"[^a-z0-9]+", s))
    if "lstm" in words:
        return "lstm"
    if "gru" in words:
        return "gru"
    if words & {"rnn", "elman", "vanilla"}:
        return "rnn_relu" if "relu" in words else "rnn_tanh"
    return None


def _stored_configs(found: _Found) -> list[tuple[str, dict]]:
    """Config dicts kept with the model (checkpoint entries, metadata, config.json)."""
    out = []
    for k in _CONFIG_KEYS:
        for where, src in (("checkpoint", found.extras), ("metadata", found.metadata)):
            v = src.get(k)
            if isinstance(v, Mapping):
                out.append((f"{where} entry {k!r}", dict(v)))
    if isinstance(found.metadata.get("torchscript_module_config"), Mapping):  # a TorchScript nn.RNN's own
        out.append(("the TorchScript archive's RNN modules", dict(found.metadata["torchscript_module_config"])))
    if found.side is not None:
        p = found.side / "config.json"
        if os.path.lexists(p):
            v = safe_json.read(p, "config file")
            if isinstance(v, Mapping):
                out.append(("config.json", dict(v)))
    return out


def _flat_items(d: Mapping, depth=0):
    for k, v in d.items():
        if isinstance(v, Mapping) and depth < 2:
            yield from _flat_items(v, depth + 1)
        else:
            yield str(k), v


def _hints(configs: list[tuple[str, dict]]) -> dict:
    """What stored configs say about the architecture: cell type, nonlinearity, sizes."""
    hints: dict = {}
    for src, d in configs:
        items = list(_flat_items(d))
        for k, v in items:
            kl = k.lower()
            if kl in ("nonlinearity", "nonlin", "activation", "rnn_nonlinearity") and str(v).lower() in ("tanh", "relu"):
                hints.setdefault("nonlinearity", (str(v).lower(), src))
            if kl in ("cell", "rnn_type", "cell_type", "model_type", "rnn_cell", "mode", "arch", "architecture",
                      "model", "rnn", "rnn_mode", "unit", "unit_type") and isinstance(v, str):
                cell = _cell_from_text(v)
                if cell is not None:
                    hints.setdefault("cell", (cell, src))
            for fname, aliases in _HINT_ALIASES.items():
                if kl in aliases and isinstance(v, (int, bool)) and fname not in hints:
                    hints[fname] = (v, src)
    return hints


def _vocab_candidates(found: _Found, configs) -> list[tuple[str, object]]:
    out = []
    for key in ("seqscope_vocab", "seqscope_tokenizer"):
        if key in found.metadata:
            out.append((f"metadata {key}", found.metadata[key]))
    for where, src in (("checkpoint", found.extras), ("metadata", found.metadata)):
        for k in _VOCAB_KEYS:
            if k in src and src[k] is not None:
                out.append((f"{where} entry {k!r}", src[k]))
    for src, d in configs:
        for k in _VOCAB_KEYS:
            if k in d and isinstance(d[k], (str, list, tuple, Mapping)):
                out.append((f"{src} entry {k!r}", d[k]))
    if found.side is not None:
        for fname in ("tokenizer.json", "vocab.json"):
            p = found.side / fname
            if os.path.lexists(p):  # reading refuses what is not a regular file, in a note
                out.append((fname, p))
        for p in sorted(found.side.glob("rwkv_vocab_*.txt")):  # the RWKV "World" vocabulary beside a .pth
            out.append((p.name, p))
        # named after the model (textgenrnn_vocab.json, a Keras Tokenizer saved as model_tokenizer.json)
        named = sorted({p for pattern in ("*_vocab.json", "*-vocab.json", "*_tokenizer.json")
                        for p in found.side.glob(pattern)})
        out += [(p.name, p) for p in named[:4]]
    return out


def _make_tokenizer(found: _Found, configs, notes: list[str]):
    for src, v in _vocab_candidates(found, configs):
        try:
            if isinstance(v, Path):
                if v.name.startswith("rwkv_vocab_"):
                    return RwkvWorldTokenizer(v), src
                if v.name == "tokenizer.json" and not _keras_tokenizer_file(v):
                    return FileTokenizer(v), src
                return _vocabulary(safe_json.read(v, "vocabulary")), src
            if src == "metadata seqscope_tokenizer":
                base = found.side
                tok = tokenizer_from_dict(v, base)
                return tok, src
            return _vocabulary(v), src
        except (ValueError, TypeError, KeyError, OSError, LoadError) as exc:
            notes.append(f"the vocabulary in {display_name(src)} could not be read ({_short(exc)}); it was not used")
    return None, None


def _vocabulary(obj):
    """A vocabulary from a JSON value: Keras's ``Tokenizer.to_json()`` (or that JSON as a string),
    else whatever :meth:`CharVocab.from_any` reads."""
    if isinstance(obj, str) and obj.lstrip().startswith("{") and '"Tokenizer"' in obj:
        obj = safe_json.loads(obj, "Keras tokenizer")
    if looks_like_keras_tokenizer(obj):
        return KerasTokenizer.from_json(obj)
    return CharVocab.from_any(obj)


def _keras_tokenizer_file(path: Path) -> bool:
    """Whether a ``tokenizer.json`` is Keras's ``Tokenizer.to_json()`` rather than a Hugging Face one."""
    try:
        with open_regular(path) as f:
            head = f.read(200)
    except OSError:
        return False
    return b'"class_name"' in head and b'"Tokenizer"' in head
