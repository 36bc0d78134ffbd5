"""Open a checkpoint the way users have it and build an instrumented :class:`RecurrentStack`.

Supported inputs
----------------
* **PyTorch files** (``.pt``, ``.pth``, ``.bin``, ``.ckpt``; new zip and legacy formats), read
  with ``torch.load(path, map_location="cpu", weights_only=True)``, and where that refuses a
  class the file names, with :mod:`.safe_unpickle` (every name an inert stand-in; whole pickled
  modules read as their state dicts by :mod:`.recover`): no code in the file ever runs.  A
  bare state dict, or one wrapped in a dict (``state_dict``, ``model``, ``model_state_dict``,
  ``net``, …, found by content, not by name) next to entries such as
  ``vocab``/``chars``/``stoi``/``itos``/``char2idx``/``idx2char``, ``config``/``hparams``/``args``,
  ``epoch`` and ``optimizer`` (ignored).  Any key prefix (``module.``, ``_orig_mod.``,
  ``model.encoder.``, …).
* **TorchScript archives** (``torch.jit.script(model).save``, ``torch.jit.trace(...).save``):
  their tensors only (:mod:`.torchscript_files`): ``data.pkl`` read by :mod:`.safe_unpickle`, the
  module tree walked to the state dict ``module.state_dict()`` would give; the archive's code is
  never read or run (``torch.jit.load`` is never called), so the forward is SeqScope's own for the
  architecture recognised, as the notes say.  Frozen archives (weights folded into constants)
  are refused.
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
* **Keras HDF5** files (:mod:`.keras_h5`): ``model.save("m.h5")`` of Keras 1/2/3 and Keras 1/2
  ``save_weights``, and **Keras 3** ``.keras`` archives and ``.weights.h5`` files
  (:mod:`.keras_v3`), Embedding → SimpleRNN/LSTM/GRU/CuDNN*/Bidirectional → Dense, read with
  h5py, zipfile and json (:mod:`.keras_layers`: the layers → the stack).
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
other Keras layers and layouts than those above,
TensorFlow/JAX files and frozen TorchScript archives.  Every failure is a :class:`LoadError`
with a message meant for the user.

Bounds
------
Nothing a file declares makes loading allocate beyond what the file holds, hang, or raise
anything but a LoadError: only regular files are opened (:mod:`engine.limits`), side files are
read up to a cap and JSON through one reader that checks nesting first (:mod:`engine.safe_json`),
zip entries are checked for their inflated sizes, tensors against their storages, stated layer
counts against the tensors present and config values against their types
(:mod:`engine.models.family`).

The package
-----------
``reading`` (a file or a folder: which reader), ``torch_files``, ``torchscript_files``, ``safetensors_files``,
``npz_files`` and
``keras_h5``/``keras_v3`` (one
reader per format, each returning the neutral record of ``record``), ``safe_unpickle``,
``pickled_torch`` and ``recover`` (torch pickles read without running anything), ``side_files`` (configs and
vocabularies kept with a model), ``classic_inference`` and ``classic`` (the classic recurrent
stack: names and shapes → layers, then the model), ``config_example`` (the ``config=`` a loading
error offers, built from the file's own tensors), ``saving`` (:func:`save_model`); the modern
families build themselves (``engine.models.<family>``, or ``<family>_loading`` where a family's
reading has a module of its own).
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import LoadError
from ..limits import display_name
from ..models import deltanet_loading as _deltanet
from ..models import gla_loading as _gla
from ..models import hgrn as _hgrn
from ..models import lru as _lru
from ..models import mamba as _mamba
from ..models import mamba2_loading as _mamba2
from ..models import mingru as _mingru
from ..models import recurrent_gemma_loading as _recurrent_gemma
from ..models import rwkv_loading as _rwkv
from ..models import rwkv7_loading as _rwkv7
from ..models import xlstm as _xlstm
from ..models.stack import RecurrentStack
from .classic import _build
from .reading import _read
from .record import _Found, _short
from .saving import save_model
from .side_files import _explicit_config, _make_tokenizer, _stored_configs

# the readers' entry points, importable from engine.loading as before it became a package
from .reading import _read_file, _read_folder, _sniff  # noqa: F401
from .safetensors_files import _read_safetensors  # noqa: F401
from .torch_files import _read_torch, _unwrap  # noqa: F401

__all__ = ["load", "save_model", "LoadError", "FAMILIES"]
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
    try:
        return _load(path, config=config, device=device, dtype=dtype, strict=strict)
    except LoadError:
        raise
    except RecursionError:
        raise LoadError(f"{_path_name(path)} is nested too deeply to read") from None
    except MemoryError:
        raise LoadError(f"{_path_name(path)} needs more memory than this machine has to load") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, UnicodeError,
            OSError, RuntimeError, zipfile.BadZipFile) as exc:
        # the last line of defence: whatever a malformed file provokes becomes one sentence
        raise LoadError(f"{_path_name(path)} could not be loaded: it is malformed in a way SeqScope did not "
                        f"expect ({type(exc).__name__}: {_short(exc)})") from None


def _path_name(path) -> str:
    try:
        return display_name(Path(path).name or path)
    except TypeError:
        return repr(path)


def _load(path, *, config, device, dtype, strict):
    if not isinstance(path, (str, os.PathLike)):
        raise LoadError(f"a model path must be a file or folder name, not a {type(path).__name__}")
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
    notes: list[str] = list(found.notes)
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
