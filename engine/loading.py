"""Open a checkpoint the way users have it and build an instrumented :class:`RecurrentStack`.

Supported inputs
----------------
* **PyTorch files** (``.pt``, ``.pth``, ``.bin``, ``.ckpt``; new zip and legacy formats), read
  only with ``torch.load(path, map_location="cpu", weights_only=True)``: no code in the file
  ever runs.  A bare state dict, or one wrapped in a dict (``state_dict``, ``model``,
  ``model_state_dict``, ``net``, …, found by content, not by name) next to entries such as
  ``vocab``/``chars``/``stoi``/``itos``/``char2idx``/``idx2char``, ``config``/``hparams``/``args``,
  ``epoch`` and ``optimizer`` (ignored).  Any key prefix (``module.``, ``_orig_mod.``,
  ``model.encoder.``, …).
* **safetensors** files, with the config and vocabulary in the file's metadata (JSON strings)
  or in ``config.json`` / ``vocab.json`` / ``tokenizer.json`` beside the file.
* **Folders** in the Hugging Face layout: ``config.json`` + ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``) or ``pytorch_model.bin``; ``tokenizer.json`` is used
  through :class:`FileTokenizer`, ``vocab.json`` through :meth:`CharVocab.from_any`; an RWKV
  "World" vocabulary file (``rwkv_vocab_*.txt``) beside a ``.pth`` through
  :class:`RwkvWorldTokenizer`.
* **The modern families**, each built by its module in ``engine.models`` (tried in the order
  of :data:`FAMILIES`, each recognising its own files by config and key names): Mamba (1)
  (``transformers`` ``MambaForCausalLM`` folders and the original ``mamba_ssm`` layout),
  Mamba2 (``Mamba2ForCausalLM`` and ``mamba_ssm`` Mamba2 folders), minGRU / minLSTM
  (``minGRU-pytorch``'s ``minLM`` state dicts), RWKV-4 (``RwkvForCausalLM`` folders, BlinkDL
  ``.pth``), RWKV-7 (BlinkDL ``.pth``), RecurrentGemma / Griffin (``RecurrentGemmaForCausalLM``), xLSTM
  (``xLSTMForCausalLM``), the ``flash-linear-attention`` folders of GLA, RetNet, HGRN, DeltaNet
  and gated DeltaNet, and LRU in SeqScope's documented layout.
* **SeqScope's own layout** (:func:`save_model`): a ``.safetensors`` file with canonical weight
  names and ``seqscope_config`` / ``seqscope_vocab`` metadata.

Architecture
------------
Inferred from parameter names and shapes: ``torch.nn.LSTM``/``GRU``/``RNN`` parameters
(``weight_ih_l{k}``, ``weight_hh_l{k}``, optional biases, ``_reverse``, ``weight_hr_l{k}``),
several such modules chained in file order (``rnns.0``, ``rnns.1``), or stacks of
``nn.LSTMCell``/``GRUCell``/``RNNCell`` (``cells.0.weight_ih``); the cell type from the row
multiple of the hidden size (4H LSTM, 3H GRU, H Elman RNN, whose tanh/relu comes from a
stored config or is assumed tanh, as the model info says); an embedding before the stack
(or none: numeric inputs); a linear head after it (or none).  ``config=`` overrides any of
it, and its ``key_map`` names file keys explicitly.

Not supported: layers other than embedding → recurrent stack → one linear head (extra
tensors are reported, not skipped, under ``strict=True``), layers of different sizes,
Keras/TensorFlow/JAX files, TorchScript archives and whole pickled models (re-save the state
dict).  Every failure is a :class:`LoadError` with a message meant for the user.
"""
from __future__ import annotations

import json
import os
import pickletools
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .errors import LoadError
from .models import deltanet as _deltanet
from .models import gla as _gla
from .models import hgrn as _hgrn
from .models import lru as _lru
from .models import mamba as _mamba
from .models import mamba2 as _mamba2
from .models import mingru as _mingru
from .models import recurrent_gemma as _recurrent_gemma
from .models import rwkv as _rwkv
from .models import rwkv7 as _rwkv7
from .models import xlstm as _xlstm
from .models.stack import CELLS, RecurrentStack, StackConfig, canonical_weight_shapes
from .tokenizers import CharVocab, FileTokenizer, RwkvWorldTokenizer, tokenizer_from_dict

__all__ = ["load", "save_model", "LoadError"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CONFIG_HELP = (
    'pass the architecture explicitly: engine.load(path, config={"cell": "lstm", "num_layers": 2, '
    '"hidden_size": 128, "input_size": 64, "vocab_size": 65, "output_size": 65, '
    '"key_map": {"<key in the file>": "rnn.weight_ih_l0", ...}}), or on the command line '
    "--config config.json holding the same"
)
EXPECTED_NAMES = (
    "torch.nn.LSTM/GRU/RNN parameter names under any prefix: rnn.weight_ih_l0 [gates*hidden, input], "
    "rnn.weight_hh_l0 [gates*hidden, hidden], rnn.bias_ih_l0, rnn.bias_hh_l0 (optional), "
    "…_l1 for more layers, …_l0_reverse when bidirectional, rnn.weight_hr_l0 with proj_size "
    "(gates: 4 LSTM, 3 GRU, 1 RNN); or LSTMCell/GRUCell/RNNCell stacks such as "
    "cells.0.weight_ih, cells.0.weight_hh"
)

_RNN_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")
_CELL_KEY = re.compile(r"^(weight|bias)_(ih|hh)$")
_EMBED_HINT = re.compile(r"emb|^encoder$|wte|tok|lookup|lut", re.I)
_HEAD_HINT = re.compile(r"fc|decoder|head|out|linear|proj|classif|logit|dense|readout|final|pred", re.I)
_NOT_MODEL = re.compile(r"optim|sched|scaler|grad|loss|metric|callback|histor|lr_", re.I)
_VOCAB_KEYS = ("vocab", "chars", "stoi", "itos", "char2idx", "idx2char", "char_to_idx", "idx_to_char",
               "char2id", "id2char", "char_to_ix", "ix_to_char", "char_to_id", "id_to_char", "vocabulary",
               "alphabet", "characters", "char_list")
_CONFIG_KEYS = ("config", "model_config", "hparams", "hyper_parameters", "hyperparameters", "hyperparams",
                "args", "model_args", "cfg", "opt", "params", "settings")
_PREFERRED_CONTAINERS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network",
                         "module", "weights", "params", "model_weights")
_HINT_ALIASES = {
    "hidden_size": ("hidden_size", "hidden_dim", "n_hidden", "rnn_size", "hidden_units", "nhid", "hidden"),
    "num_layers": ("num_layers", "n_layers", "nlayers", "layers", "rnn_layers"),
    "input_size": ("input_size", "embedding_dim", "embed_dim", "emb_dim", "embed_size", "emsize", "ninp"),
    "vocab_size": ("vocab_size", "n_vocab", "ntoken", "n_tokens", "num_tokens"),
    "bidirectional": ("bidirectional",),
    "proj_size": ("proj_size",),
}


@dataclass
class _Found:
    """What one file or folder holds, before any architecture is inferred."""

    name: str  # for messages
    fmt: str  # "pytorch", "safetensors", ...
    tensors: dict[str, torch.Tensor]  # in file order
    container: str = ""  # where in the checkpoint the state dict was
    extras: dict = field(default_factory=dict)  # non-tensor entries of the checkpoint
    metadata: dict = field(default_factory=dict)  # safetensors metadata (decoded)
    side: Path | None = None  # folder to look for config.json/vocab.json/tokenizer.json
    notes: list[str] = field(default_factory=list)


# ======================================================================================
# public API
# ======================================================================================

#: the families with loaders of their own (``looks_like``/``load``), asked in this order before
#: the classic RNN stack's inference; Mamba2 before Mamba (Mamba's test would take its A_log too),
#: RWKV-7 before RWKV-4
FAMILIES = (
    _mamba2,
    _mamba,
    _mingru,
    _rwkv7,
    _rwkv,
    _recurrent_gemma,
    _gla,
    _hgrn,
    _lru,
    _xlstm,
    _deltanet,
)


def load(path, *, config=None, device=None, dtype=torch.float32, strict=True) -> RecurrentStack:
    """Open a checkpoint file or folder and build an instrumented model (a
    :class:`RecurrentStack`, or the family's own model class for the modern families).

    ``config``: a dict (StackConfig fields, plus ``nonlinearity`` and ``key_map``: file key →
    canonical name), a :class:`StackConfig`, or the path of a JSON file holding such a dict;
    what it states overrides inference.  ``device``: default ``"cuda"`` when available, else
    ``"cpu"``.  ``strict``: tensors in the file the model does not use are an error (they may be
    a layer that would otherwise be skipped silently); with ``strict=False`` they are listed in
    the model info instead.  Raises :class:`LoadError`.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if config is None:  # the families with their own loaders read their own configs
        found = _read(Path(path))
        configs = _stored_configs(found)
        if isinstance(found.metadata.get("seqscope_config"), Mapping):
            configs.insert(0, ("metadata seqscope_config", dict(found.metadata["seqscope_config"])))
        for family in FAMILIES:
            if family.looks_like(found.tensors, configs):
                return _build_family(family, found, configs, device=device, dtype=dtype, strict=strict,
                                     source=str(path))
    explicit = _explicit_config(config)
    found = found if config is None else _read(Path(path))
    model = _build(found, explicit, device=device, dtype=dtype, strict=strict, source=str(path))
    return model


def _build_family(family, found: _Found, configs, *, device, dtype, strict, source):
    """A model of a family with its own loader (``looks_like``/``load`` in its module)."""
    notes: list[str] = []
    tokenizer, vocab_src = _make_tokenizer(found, configs, notes)
    model = family.load(found.tensors, configs, name=found.name, fmt=found.fmt, strict=strict,
                        source=source, dtype=dtype, device=device)
    if tokenizer is not None and tokenizer.vocab_size > model.vocab_size:
        notes.append(f"the vocabulary from {vocab_src} has {tokenizer.vocab_size} entries, more than the "
                     f"{model.vocab_size} embedding rows; it was not attached")
        tokenizer = None
    model.tokenizer = tokenizer
    if vocab_src and tokenizer is not None:
        model.load_info["vocabulary"] = str(vocab_src)
    if notes:
        model.load_info["notes"] = "\n".join(filter(None, [model.load_info.get("notes", "")] + notes))
    return model


def save_model(model: RecurrentStack, path) -> Path:
    """Write ``model`` in SeqScope's own layout: one ``.safetensors`` file with canonical weight
    names and metadata ``seqscope_config`` (StackConfig JSON) and ``seqscope_vocab`` (the char
    vocabulary, when the model has one).  A ``tokenizer.json`` tokenizer is recorded by path
    only (``seqscope_tokenizer``): keep the file beside the model.  Written to a temporary
    file in the same folder and renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"save_model writes .safetensors files, not {path.suffix or 'a file without suffix'}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "seqscope_config": model.config.to_json()}
    tok = model.tokenizer
    if isinstance(tok, CharVocab):
        meta["seqscope_vocab"] = json.dumps(tok.to_dict())
    elif isinstance(tok, FileTokenizer):
        meta["seqscope_tokenizer"] = json.dumps(tok.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ======================================================================================
# reading files
# ======================================================================================


def _read(path: Path) -> _Found:
    if not path.exists():
        raise LoadError(f"no such file or folder: {path}")
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise LoadError(f"{path} is not a regular file or folder")
    if path.name == "config.json" or (path.suffix.lower() == ".json" and path.name.endswith(".index.json")):
        return _read_folder(path.parent, weights=None if path.name == "config.json" else path)
    return _read_file(path)


def _read_file(path: Path, side: Path | None = None) -> _Found:
    kind = _sniff(path)
    if kind == "safetensors":
        found = _read_safetensors(path)
        found.side = side or path.parent
    elif kind in ("zip", "pickle"):
        found = _read_torch(path, kind)
        # files beside a .pt are used only when the checkpoint itself carries no vocab/config
        own = any(k in found.extras for k in _VOCAB_KEYS + _CONFIG_KEYS)
        found.side = side or (None if own else path.parent)
    else:
        raise AssertionError(kind)
    return found


def _sniff(path: Path) -> str:
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise LoadError(f"cannot read {name}: {exc.strerror or exc}") from None
    if size == 0:
        raise LoadError(f"{name} is empty (0 bytes): the save or the download did not complete")
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    # safetensors before the pickle byte: a header length whose low byte is 0x80 starts with it too
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n:
            if 8 + n > size:
                raise LoadError(f"{name} is truncated: its safetensors header says {n} bytes of header, "
                                f"but the file has only {size} bytes")
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    if head[:4] == b"\x89HDF":
        raise LoadError(f"{name} is an HDF5 file (Keras weights or a SeqScope trace?), not model weights "
                        "SeqScope can read: give a PyTorch state dict (.pt/.pth/.bin) or a .safetensors file")
    if head[:6] == b"\x93NUMPY":
        raise LoadError(f"{name} is a NumPy array file, not a model checkpoint")
    if head.lstrip()[:1] in (b"{", b"["):
        raise LoadError(f"{name} is a JSON/text file, not model weights: give the weights file "
                        "(.pt/.pth/.bin/.safetensors) or the folder that holds it")
    raise LoadError(f"{name} is not a PyTorch checkpoint or safetensors file: its contents match no known "
                    f"format (it starts with bytes {head[:8].hex(' ')}); the file may be corrupted or of "
                    "another kind")


# -- PyTorch ---------------------------------------------------------------------------


def _read_torch(path: Path, kind: str) -> _Found:
    name = path.name
    pickle_bytes = None
    if kind == "zip":
        if not zipfile.is_zipfile(path):
            raise LoadError(f"{name} is truncated or corrupted: it starts like a PyTorch zip checkpoint but its "
                            "zip directory (at the end of the file) is missing; the save or the download was "
                            "probably interrupted")
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                    raise LoadError(f"{name} is a TorchScript archive (torch.jit.save), which holds code. SeqScope "
                                    "reads weights only: re-save with torch.save(model.state_dict(), 'model.pt') "
                                    "or safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
                pkl = [n for n in names if n.endswith("data.pkl")]
                if not pkl:
                    raise LoadError(f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
                pickle_bytes = z.read(pkl[0])
        except LoadError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise LoadError(f"{name} is truncated or corrupted: {exc}") from None
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for our users
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_data_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own messages are long and about torch; say what matters
        raise _torch_load_error(path, exc, pickle_bytes) from None
    return _unwrap(obj, name)


def _data_globals() -> list:
    """Plain-data classes that real checkpoints carry beside the weights and torch's safe loader
    refuses by default: NumPy scalars and arrays (a loss value, a vocabulary) and
    ``argparse.Namespace`` (the training ``args``).  Building them runs no code from the file;
    anything they contain still goes through the same restricted unpickler."""
    import argparse

    out: list = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return out
    core = getattr(np, "_core", None) or np.core
    for fn in (core.multiarray._reconstruct, core.multiarray.scalar):
        out.append(fn)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out.append((fn, f"{mod}.{fn.__name__}"))
    out += [np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [c for c in vars(dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    return out


def _torch_load_error(path: Path, exc: Exception, pickle_bytes: bytes | None) -> LoadError:
    name = path.name
    msg = str(exc)
    # a name cut short ("torc.") means the pickle itself is cut short, not that it holds code
    refs = [r for r in re.findall(r"GLOBAL ([\w.]+)", msg) if re.fullmatch(r"\w+(\.\w+)+", r)]
    if not refs and ("Weights only load failed" in msg or "Unsupported operand" in msg):
        if pickle_bytes is None:
            try:
                pickle_bytes = path.read_bytes()
            except OSError:
                pickle_bytes = b""
        refs = [g for g in _pickle_globals(pickle_bytes) if not _safe_global(g)]
    if refs:
        shown = ", ".join(dict.fromkeys(refs))
        return LoadError(
            f"{name} contains pickled Python code (it refers to {shown}), which SeqScope refuses to run for "
            "safety: loading it would execute whatever code the file names. This is what torch.save(model) "
            "or saving custom objects produces. If you trust the file, re-save only the weights: in Python, "
            "load it with torch.load(path, weights_only=False), then torch.save(model.state_dict(), "
            "'model.pt') (a state dict; plain dicts, lists and strings such as a vocabulary may go beside "
            "it) or safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    partial = [r for r in re.findall(r"GLOBAL (\S+)", msg) if not re.fullmatch(r"\w+(\.\w+)+", r)]
    if (isinstance(exc, EOFError) or partial or "central directory" in msg or "unexpected eof" in msg.lower()
            or "ran out of input" in msg.lower()):
        detail = "a name in it is cut short" if partial else (_short(exc) or "end of file")
        return LoadError(f"{name} is truncated or corrupted: the data ends early ({detail}); "
                         "the save or the download was probably interrupted")
    if "Weights only load failed" in msg or "Unsupported operand" in msg or "pickle" in type(exc).__module__:
        return LoadError(f"{name} is not a readable PyTorch checkpoint: the data is corrupted or of another "
                         f"kind ({_short(exc, last=True)})")
    return LoadError(f"{name} is corrupted or truncated: torch could not read it ({type(exc).__name__}: "
                     f"{_short(exc) or 'no details'})")


def _pickle_globals(data: bytes) -> list[str]:
    """Names of the Python objects a pickle refers to, read statically (nothing is run).
    Stops quietly at the first byte that is not a pickle opcode."""
    out: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            n = op.name
            if n in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                     "BINSTRING", "STRING"):
                strings.append(str(arg))
            elif n in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[int(arg)] = strings[-1]
            elif n == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif n in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                strings.append(memo[int(arg)])
            elif n in ("GLOBAL", "INST"):
                out.append(str(arg).replace(" ", "."))
            elif n == "STACK_GLOBAL" and len(strings) >= 2:
                out.append(f"{strings[-2]}.{strings[-1]}")
            if n == "STOP":
                break
    except Exception:
        pass
    return out


def _safe_global(g: str) -> bool:
    return g.startswith(("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set",
                         "builtins.frozenset", "builtins.bytearray", "numpy.core.multiarray._reconstruct",
                         "numpy.dtype", "numpy.ndarray"))


def _unwrap(obj, name: str) -> _Found:
    """Find the state dict inside whatever was saved, and the entries around it."""
    if isinstance(obj, torch.Tensor):
        raise LoadError(f"{name} holds a single tensor of shape {list(obj.shape)}, not a state dict of named weights")
    if not isinstance(obj, Mapping):
        raise LoadError(f"{name} holds a {type(obj).__name__}, not a state dict (a dict of named tensors): save "
                        "with torch.save(model.state_dict(), path)")
    candidates = list(_containers(obj, ""))
    with_rnn = [c for c in candidates if any(_is_recurrent_key(k) for k, v in c[1].items() if _is_tensor(v))]
    pool = with_rnn or [c for c in candidates if any(_is_tensor(v) for v in c[1].values())]
    notes = []
    if pool:
        def rank(c):
            path, d = c
            last = path.rsplit(".", 1)[-1]
            pref = _PREFERRED_CONTAINERS.index(last) if last in _PREFERRED_CONTAINERS else len(_PREFERRED_CONTAINERS)
            return (-sum(_is_tensor(v) for v in d.values()), pref, path.count("."))
        pool.sort(key=rank)
        path, d = pool[0]
        tensors = {str(k): v for k, v in d.items() if _is_tensor(v)}
        if with_rnn and len(with_rnn) > 1:
            rest = [p or "(top level)" for p, _ in with_rnn if p != path]
            notes.append(f"weights taken from {path or 'the top level'}; also found weights in {', '.join(rest)}")
    else:
        flat = _flatten_tensors(obj)
        if not flat:
            keys = ", ".join(map(str, list(obj)[:12]))
            raise LoadError(f"{name} holds no tensors: it is a dict with entries {keys or '(none)'}")
        path, tensors = "", flat
    extras = {}
    scopes = [obj]
    if path:  # entries next to the state dict at every level above it
        node = obj
        for part in path.split(".")[:-1]:
            node = node.get(part) if isinstance(node, Mapping) else None
            if isinstance(node, Mapping):
                scopes.append(node)
    for scope in scopes:
        for k, v in scope.items():
            if not _is_tensor(v) and not (isinstance(v, Mapping) and _looks_like_state(v)):
                extras.setdefault(str(k), _plain(v))
    return _Found(name=name, fmt="pytorch", tensors=tensors, container=path, extras=extras, notes=notes)


def _plain(v):
    """NumPy values and Namespaces as plain Python (for vocabularies and configs)."""
    import argparse

    if isinstance(v, argparse.Namespace):
        return {k: _plain(x) for k, x in vars(v).items()}
    if type(v).__module__ == "numpy":
        return v.tolist() if hasattr(v, "tolist") else v
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()} if not _looks_like_state(v) else v
    return v


def _containers(d: Mapping, path: str, depth: int = 0):
    yield path, d
    if depth >= 4:
        return
    for k, v in d.items():
        if isinstance(v, Mapping) and not _NOT_MODEL.search(str(k)):
            yield from _containers(v, f"{path}.{k}" if path else str(k), depth + 1)


def _flatten_tensors(d: Mapping, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if _is_tensor(v):
            out[key] = v
        elif isinstance(v, Mapping) and depth < 6 and not _NOT_MODEL.search(str(k)):
            out.update(_flatten_tensors(v, key + ".", depth + 1))
    return out


def _looks_like_state(d: Mapping) -> bool:
    return any(_is_tensor(v) for v in d.values()) or any(isinstance(v, Mapping) and _looks_like_state(v)
                                                          for v in d.values())


def _is_tensor(v) -> bool:
    return isinstance(v, torch.Tensor)


def _is_recurrent_key(k) -> bool:
    last = str(k).rsplit(".", 1)[-1]
    return bool(_RNN_KEY.match(last) or _CELL_KEY.match(last))


# -- safetensors -------------------------------------------------------------------------


def _read_safetensors(path: Path, name: str | None = None) -> _Found:
    from safetensors import safe_open

    name = name or path.name
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise LoadError(f"{name} could not be read as safetensors: the file is truncated or corrupted "
                        f"({_short(exc)})") from None
    decoded = {}
    for k, v in meta.items():
        try:
            decoded[k] = json.loads(v)
        except (TypeError, ValueError):
            decoded[k] = v
    return _Found(name=name, fmt="safetensors", tensors=tensors, metadata=decoded)


# -- folders -------------------------------------------------------------------------------


def _read_folder(folder: Path, weights: Path | None = None) -> _Found:
    name = folder.name or str(folder)
    if weights is None:
        for cand in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"):
            if (folder / cand).is_file():
                weights = folder / cand
                break
    if weights is None:
        files = sorted(p for p in folder.iterdir() if p.is_file()
                       and p.suffix.lower() in (".safetensors",) + TORCH_SUFFIXES)
        if len(files) == 1:
            weights = files[0]
        elif files:
            raise LoadError(f"folder {name} holds several weight files ({', '.join(p.name for p in files)}): "
                            "give the one to open")
        else:
            raise LoadError(f"folder {name} holds no model weights: expected model.safetensors or "
                            "pytorch_model.bin (with config.json), or a .pt/.pth/.bin/.ckpt/.safetensors file")
    if weights.name.endswith(".index.json"):
        return _read_sharded(folder, weights)
    found = _read_file(weights, side=folder)
    found.name = f"{name}/{weights.name}"
    return found


def _read_sharded(folder: Path, index: Path) -> _Found:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"{index.name} is not a readable shard index: {_short(exc)}") from None
    tensors: dict = {}
    meta: dict = {}
    fmt = "safetensors"
    for shard in dict.fromkeys(weight_map.values()):
        p = folder / shard
        if not p.is_file():
            raise LoadError(f"{index.name} names shard {shard}, which is not in {folder.name}")
        part = _read_file(p, side=folder)
        fmt = part.fmt
        tensors.update(part.tensors)
        meta.update(part.metadata)
    return _Found(name=f"{folder.name}/{index.name}", fmt=fmt, tensors=tensors, metadata=meta, side=folder)


# ======================================================================================
# configs and vocabularies stored with the model
# ======================================================================================


def _explicit_config(config) -> dict | None:
    if config is None:
        return None
    if isinstance(config, StackConfig):
        return asdict(config)
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        try:
            config = json.loads(p.read_text())
        except OSError as exc:
            raise LoadError(f"cannot read config file {p}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise LoadError(f"config file {p} is not valid JSON: {exc}") from None
    if not isinstance(config, Mapping):
        raise LoadError(f"config must be a dict, a StackConfig or a JSON file, not a {type(config).__name__}")
    allowed = {f.name for f in fields(StackConfig)} | {"key_map", "nonlinearity"}
    unknown = sorted(set(map(str, config)) - allowed)
    if unknown:
        raise LoadError(f"config has unknown entries {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    out = dict(config)
    if "cell" in out:
        cell = _cell_from_text(str(out["cell"]))
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
    if found.side is not None:
        p = found.side / "config.json"
        if p.is_file():
            try:
                v = json.loads(p.read_text())
            except (OSError, ValueError) as exc:
                raise LoadError(f"config.json beside the weights is not valid JSON: {_short(exc)}") from None
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
            if p.is_file():
                out.append((fname, p))
        for p in sorted(found.side.glob("rwkv_vocab_*.txt")):  # the RWKV "World" vocabulary beside a .pth
            out.append((p.name, p))
    return out


def _make_tokenizer(found: _Found, configs, notes: list[str]):
    for src, v in _vocab_candidates(found, configs):
        try:
            if isinstance(v, Path):
                if v.name == "tokenizer.json":
                    return FileTokenizer(v), src
                if v.name.startswith("rwkv_vocab_"):
                    return RwkvWorldTokenizer(v), src
                return CharVocab.from_any(json.loads(v.read_text())), src
            if src == "metadata seqscope_tokenizer":
                base = found.side
                tok = tokenizer_from_dict(v, base)
                return tok, src
            return CharVocab.from_any(v), src
        except (ValueError, TypeError, KeyError, OSError) as exc:
            notes.append(f"the vocabulary in {src} could not be read ({_short(exc)}); it was not used")
    return None, None


# ======================================================================================
# architecture inference
# ======================================================================================


@dataclass
class _Layer:
    keys: dict[str, str]  # canonical suffix ("weight_ih", "bias_hh", ... with "_reverse") -> file key
    source: str  # module prefix, for messages


def _module_name(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _common_prefix(keys) -> str:
    keys = list(keys)
    if not keys:
        return ""
    split = [k.split(".")[:-1] for k in keys]
    pre = split[0]
    for s in split[1:]:
        n = 0
        while n < min(len(pre), len(s)) and pre[n] == s[n]:
            n += 1
        pre = pre[:n]
    return ".".join(pre) + "." if pre else ""


def _find_layers(tensors: dict[str, torch.Tensor]) -> tuple[list[_Layer], list[str]]:
    """Recurrent layers in order, as canonical-suffix -> file-key maps; and notes."""
    notes: list[str] = []
    modules: dict[str, dict[tuple[int, str], dict[str, str]]] = {}  # prefix -> (layer, sfx) -> {param: key}
    cells: dict[str, dict[str, str]] = {}
    for key in tensors:
        prefix, _, last = key.rpartition(".")
        m = _RNN_KEY.match(last)
        if m:
            kind, which, layer, rev = m.groups()
            modules.setdefault(prefix, {}).setdefault((int(layer), rev or ""), {})[f"{kind}_{which}"] = key
            continue
        m = _CELL_KEY.match(last)
        if m:
            cells.setdefault(prefix, {})[last] = key
    if modules and cells:
        raise _InferenceError(
            "the file mixes torch.nn.LSTM-style layers (" + ", ".join(p or "(top level)" for p in modules)
            + ") with single cells (" + ", ".join(p or "(top level)" for p in cells) + "); SeqScope cannot tell "
            "how they connect")
    layers: list[_Layer] = []
    if modules:
        for prefix, entries in modules.items():
            n = max(k for k, _ in entries) + 1
            for k in range(n):
                for sfx in ("", "_reverse"):
                    if (k, sfx) in entries:
                        continue
                    if sfx == "" or any(s for _, s in entries):
                        raise _InferenceError(f"{prefix or 'the recurrent module'} has no parameters for layer {k}"
                                              f"{' (reverse direction)' if sfx else ''}")
            for k in range(n):
                keys = {}
                for sfx in ("", "_reverse"):
                    for param, key in entries.get((k, sfx), {}).items():
                        keys[param + sfx] = key
                layers.append(_Layer(keys, prefix))
        if len(modules) > 1:
            notes.append("recurrent modules " + ", ".join(p or "(top level)" for p in modules)
                         + " were joined into one stack in file order")
    elif cells:
        def index(prefix):
            m = re.search(r"(\d+)(?!.*\d)", prefix)
            return int(m.group(1)) if m else None
        idx = {p: index(p) for p in cells}
        if len(cells) > 1 and (None in idx.values() or len(set(idx.values())) != len(idx)):
            raise _InferenceError("found several recurrent cells (" + ", ".join(cells) + ") but cannot tell their "
                                  "order from their names (expected numbered cells such as cells.0, cells.1)")
        order = sorted(cells, key=lambda p: idx[p] or 0)
        for p in order:
            layers.append(_Layer(dict(cells[p]), p))
        if len(order) > 1 or order[0]:
            notes.append(f"{'a stack of' if len(order) > 1 else 'a single'} recurrent cell"
                         f"{'s' if len(order) > 1 else ''} ({', '.join(order)}) converted to torch.nn layers")
    for n, layer in enumerate(layers):
        for need in ("weight_ih", "weight_hh"):
            if need not in layer.keys:
                raise _InferenceError(f"{layer.source or 'layer'} (layer {n}) has no {need}")
    return layers, notes


class _InferenceError(Exception):
    pass


def _canonicalize(tensors: dict[str, torch.Tensor], notes: list[str]):
    """Map file keys to canonical names.  Returns ``(canon, used)``: canonical name -> tensor,
    and canonical name -> file key."""
    layers, layer_notes = _find_layers(tensors)
    notes.extend(layer_notes)
    if not layers:
        raise _InferenceError("no recurrent layer found")
    canon: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for k, layer in enumerate(layers):
        for param, key in layer.keys.items():
            sfx = "_reverse" if param.endswith("_reverse") else ""
            base = param[: -len("_reverse")] if sfx else param
            name = f"rnn.{base}_l{k}{sfx}"
            canon[name] = tensors[key]
            origin[name] = key
    dirs = 2 if "rnn.weight_ih_l0_reverse" in canon else 1
    in_w = canon["rnn.weight_ih_l0"].shape[1] if canon["rnn.weight_ih_l0"].ndim == 2 else None
    last = canon[f"rnn.weight_hh_l{len(layers) - 1}"]
    out_w = last.shape[1] * dirs if last.ndim == 2 else None

    rnn_keys = set(origin.values())
    order = {k: i for i, k in enumerate(tensors)}
    first_rnn = min(order[k] for k in rnn_keys)
    last_rnn = max(order[k] for k in rnn_keys)
    prefix = _common_prefix(tensors)

    def rel(k):
        return k[len(prefix):] if k.startswith(prefix) else k

    def bias_of(k, rows):
        if not k.endswith("weight"):
            return None
        b = k[: -len("weight")] + "bias"
        t = tensors.get(b)
        return b if t is not None and t.ndim == 1 and t.shape[0] == rows else None

    free = [k for k, t in tensors.items() if k not in rnn_keys and t.ndim == 2 and t.is_floating_point()]

    def embed_score(k):
        t = tensors[k]
        if in_w is None or t.shape[1] != in_w:
            return None
        mod = _module_name(rel(k)) if rel(k).endswith("weight") else rel(k)
        s = 100 if rel(k) == "embed.weight" else 0
        s += 10 if _EMBED_HINT.search(mod) else 0
        s -= 10 if _HEAD_HINT.search(mod) and not _EMBED_HINT.search(mod) else 0
        s += 3 if order[k] < first_rnn else -3
        s -= 5 if bias_of(k, t.shape[0]) else 0
        return s

    def head_score(k):
        t = tensors[k]
        if out_w is None or t.shape[1] != out_w:
            return None
        mod = _module_name(rel(k))
        s = 100 if rel(k) == "head.weight" else 0
        s += 10 if _HEAD_HINT.search(mod) else 0
        s -= 10 if _EMBED_HINT.search(mod) and not _HEAD_HINT.search(mod) else 0
        s += 3 if order[k] > last_rnn else -3
        s += 2 if bias_of(k, t.shape[0]) else 0
        return s

    def best(score, exclude=()):
        scored = [(score(k), -order[k], k) for k in free if k not in exclude]
        scored = [x for x in scored if x[0] is not None and x[0] > 0]
        return max(scored)[2] if scored else None

    emb = best(embed_score)
    if emb is not None:
        canon["embed.weight"] = tensors[emb]
        origin["embed.weight"] = emb
    head = best(head_score, exclude={emb})
    if head is not None:
        canon["head.weight"] = tensors[head]
        origin["head.weight"] = head
        b = bias_of(head, tensors[head].shape[0])
        if b is not None:
            canon["head.bias"] = tensors[b]
            origin["head.bias"] = b
    return canon, origin


def _infer_config(canon: dict[str, torch.Tensor], hints: dict, explicit: dict, notes: list[str]) -> dict:
    """StackConfig fields from canonical weights (the weights decide; hints fill what they cannot)."""
    n_layers = 0
    while f"rnn.weight_ih_l{n_layers}" in canon:
        n_layers += 1
    w_ih, w_hh = canon["rnn.weight_ih_l0"], canon["rnn.weight_hh_l0"]
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise _InferenceError(f"the first layer's weights are not matrices (weight_ih {list(w_ih.shape)}, "
                              f"weight_hh {list(w_hh.shape)})")
    w_hr = canon.get("rnn.weight_hr_l0")
    proj = int(w_hr.shape[0]) if w_hr is not None else 0
    hidden = int(w_hr.shape[1]) if w_hr is not None else int(w_hh.shape[1])
    rows = int(w_hh.shape[0])
    if rows % hidden:
        raise _InferenceError(f"weight_hh_l0 has {rows} rows, not a multiple of the hidden size {hidden}")
    gates = rows // hidden
    by_gates = {4: "lstm", 3: "gru", 1: "rnn"}
    if gates not in by_gates:
        raise _InferenceError(f"weight_hh_l0 has {rows} rows = {gates} x hidden {hidden}; expected 4 x (LSTM), "
                              "3 x (GRU) or 1 x (RNN)")
    family = by_gates[gates]
    if proj and family != "lstm":
        raise _InferenceError("weight_hr (a projection) is present, but the layer is not an LSTM")
    cell = "lstm" if family == "lstm" else "gru" if family == "gru" else None
    if cell is None:
        nonlin, why = None, ""
        if explicit.get("nonlinearity"):
            nonlin, why = explicit["nonlinearity"], "from the config passed to load"
        elif str(explicit.get("cell", "")).startswith("rnn_"):  # rnn_tanh, rnn_relu, rnn_linear ...
            nonlin, why = explicit["cell"].split("_")[1], "from the config passed to load"
        elif "nonlinearity" in hints:
            nonlin, src = hints["nonlinearity"]
            why = f"from {src}"
        elif "cell" in hints and hints["cell"][0].startswith("rnn_") and hints["cell"][0] == "rnn_relu":
            nonlin, why = "relu", f"from {hints['cell'][1]}"
        if nonlin is None:
            nonlin = "tanh"
            why = ("assumed: the weights cannot tell tanh from relu; if the model used relu, pass "
                   "config={'nonlinearity': 'relu'}")
        cell = f"rnn_{nonlin}"
        notes.append(f"Elman RNN nonlinearity {nonlin} ({why})")
    hint_cell = hints.get("cell")
    if hint_cell and hint_cell[0].split("_")[0] != cell.split("_")[0]:
        notes.append(f"{hint_cell[1]} says the cell is {hint_cell[0]}, but the weights are those of a {cell}; "
                     "the weights were followed")
    bidi = "rnn.weight_ih_l0_reverse" in canon
    emb = canon.get("embed.weight")
    head = canon.get("head.weight")
    cfg = {
        "cell": cell, "num_layers": n_layers, "hidden_size": hidden, "input_size": int(w_ih.shape[1]),
        "vocab_size": int(emb.shape[0]) if emb is not None else None, "bidirectional": bidi,
        "bias": "rnn.bias_ih_l0" in canon, "proj_size": proj,
        "output_size": int(head.shape[0]) if head is not None else None,
        "head_bias": "head.bias" in canon if head is not None else True,
    }
    # every layer must match the first one (StackConfig has one size for all)
    for k in range(1, n_layers):
        hh = canon.get(f"rnn.weight_hh_l{k}")
        hr = canon.get(f"rnn.weight_hr_l{k}")
        h_k = int(hr.shape[1]) if hr is not None else int(hh.shape[1]) if hh is not None and hh.ndim == 2 else None
        if h_k != hidden or hh is None or hh.shape[0] != rows:
            raise _InferenceError(f"layer {k} differs from layer 0 (weight_hh {list(hh.shape) if hh is not None else '-'}"
                                  f" vs {list(w_hh.shape)}); SeqScope's stack needs every layer the same cell and size")
    for fname, (v, src) in hints.items():
        if fname in cfg and fname != "cell" and cfg[fname] is not None and v != cfg[fname] and fname not in explicit:
            notes.append(f"{src} gives {fname}={v!r}, but the weights say {cfg[fname]!r}; the weights were followed")
    return cfg


# ======================================================================================
# building the model
# ======================================================================================


def _build(found: _Found, explicit: dict | None, *, device, dtype, strict: bool, source: str) -> RecurrentStack:
    notes = list(found.notes)
    explicit = dict(explicit or {})
    key_map = {str(k): str(v) for k, v in (explicit.pop("key_map", None) or {}).items()}
    configs = _stored_configs(found)
    stored_full = found.metadata.get("seqscope_config")
    hints = _hints(configs)
    if isinstance(stored_full, Mapping) and str(stored_full.get("cell", "")).startswith("rnn_"):
        hints["nonlinearity"] = (stored_full["cell"].split("_")[1], "the file's seqscope_config")

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

    canon, origin, failure = {}, {}, None
    try:
        canon, origin = _canonicalize(tensors, notes)
    except _InferenceError as exc:
        failure = str(exc)
        canon, origin = {}, {}
    for cn in key_map.values():  # names given explicitly always stand
        canon[cn] = tensors[cn]
        origin[cn] = cn
    if failure is not None and "rnn.weight_ih_l0" in canon and "rnn.weight_hh_l0" in canon:
        failure = None

    inferred: dict = {}
    if failure is None:
        try:
            inferred = _infer_config(canon, hints, explicit, notes)
        except _InferenceError as exc:
            failure = str(exc)
    base = dict(inferred)
    if isinstance(stored_full, Mapping):
        base.update({k: v for k, v in stored_full.items() if k in {f.name for f in fields(StackConfig)}})
    cfg_dict = dict(base)
    cfg_dict.update({k: v for k, v in explicit.items() if k != "nonlinearity"})
    nonlin = explicit.get("nonlinearity")
    if nonlin and cfg_dict.get("cell", "").startswith("rnn_"):
        cfg_dict["cell"] = f"rnn_{nonlin}"
    elif nonlin and cfg_dict.get("cell") in ("lstm", "gru"):
        raise LoadError(f"config gives nonlinearity={nonlin!r}, which applies to Elman RNNs only, but the model "
                        f"is a {cfg_dict['cell']}")

    required = ("cell", "num_layers", "hidden_size", "input_size")
    if failure is not None and not all(k in cfg_dict for k in required):
        raise LoadError(_inference_message(found, failure, tensors, back))
    if failure is not None:
        if not canon:
            raise LoadError(_inference_message(found, failure, tensors, back, config_given=True))
        notes.append(f"architecture taken from the config passed to load ({failure})")

    try:
        cfg = StackConfig.from_dict(cfg_dict)
        missing_fields = [k for k in required if k not in cfg_dict]
        if missing_fields:
            raise ValueError(f"missing {', '.join(missing_fields)}")
    except (TypeError, ValueError) as exc:
        raise LoadError(f"the model config is not valid: {exc}") from None

    # one-hot inputs: a stored vocabulary as wide as the first layer's input and no embedding
    tokenizer, vocab_src = _make_tokenizer(found, configs, notes)
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
    unused = [k for k, v in found.tensors.items() if k not in used_file_keys and v.is_floating_point()]
    if unused:
        listing = ", ".join(f"{k} {list(found.tensors[k].shape)}" for k in unused[:12])
        listing += f", and {len(unused) - 12} more" if len(unused) > 12 else ""
        if strict:
            raise LoadError(
                f"{found.name}: {len(unused)} tensor{'s' if len(unused) > 1 else ''} in the file would be left unused: "
                f"{listing}. They may be a layer SeqScope's model (embedding → {cfg.cell} stack → one linear head) "
                "does not have, and skipping them would give wrong numbers. If they are not part of the forward "
                "pass, load with strict=False; if they belong to the model under other names, "
                + CONFIG_HELP)
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
                raise LoadError(msg + " (load with strict=False to drop the vocabulary and use token ids)")
            notes.append(msg + "; the vocabulary was dropped")
            tokenizer = None
        elif n < cfg.vocab_size:
            notes.append(f"the vocabulary from {vocab_src} has {n} entries, the embedding {cfg.vocab_size} rows: "
                         f"ids {n}..{cfg.vocab_size - 1} have no text")
    elif tokenizer is not None and cfg.vocab_size is None:
        notes.append(f"a vocabulary was found ({vocab_src}) but the model reads numeric inputs; it was not attached")
        tokenizer = None
    if isinstance(tokenizer, CharVocab) and any(len(p) != 1 for p in tokenizer.pieces):
        notes.append("the vocabulary has entries longer than one character: text is matched character by "
                     "character, so give token ids for word-level vocabularies")

    weights = {cn: canon[cn] for cn in expected}
    try:
        model = RecurrentStack(cfg, weights, tokenizer=tokenizer, source=source, dtype=dtype, device=device)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise LoadError(f"{found.name}: could not build the model: {_short(exc)}") from None
    _attach_info(model, found, cfg, notes, vocab_src)
    return model


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
    if notes:
        extra["notes"] = "\n".join(notes)
    model.load_info.update(extra)


def _inference_message(found: _Found, failure: str, tensors, back, config_given=False) -> str:
    lines = [f"cannot work out the architecture of {found.name}: {failure}.",
             f"Found {len(tensors)} tensor{'s' if len(tensors) != 1 else ''}"
             + (f" (in {found.container})" if found.container else "") + f": {_list_keys(tensors, back)}.",
             f"Expected {EXPECTED_NAMES}.",
             f"Left unused: {_list_keys(tensors, back)}." if tensors else "",
             ("The config passed to load states the architecture, but the file's names could not be matched "
              "to it: add a key_map, e.g. " if config_given else "To load it anyway, ") + CONFIG_HELP + "."]
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


def _short(exc, limit: int = 240, last: bool = False) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if last:
        lines = [ln for ln in lines if not ln.startswith("Check the documentation")] or lines
    text = (lines[-1] if last else lines[0]) if lines else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
