"""What a reader makes of a file: the neutral record (:class:`_Found`: tensors, side metadata,
notes) that every reader returns, and the small helpers the readers share."""
from __future__ import annotations

import contextlib
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LoadError


#: .jit and .ptl: TorchScript archives (silero-vad names its so; .ptl: PyTorch Mobile's)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".jit", ".ptl")
_RNN_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d{1,6})(_reverse)?$")
_CELL_KEY = re.compile(r"^(weight|bias)_(ih|hh)$")
_VOCAB_KEYS = ("vocab", "chars", "stoi", "itos", "char2idx", "idx2char", "char_to_idx", "idx_to_char",
               "char2id", "id2char", "char_to_ix", "ix_to_char", "char_to_id", "id_to_char", "vocabulary",
               "alphabet", "characters", "char_list", "vocab_mapping", "char_indices", "char_to_index",
               "word_index", "token_to_id")
_CONFIG_KEYS = ("config", "model_config", "hparams", "hyper_parameters", "hyperparameters", "hyperparams",
                "args", "model_args", "cfg", "opt", "params", "settings")


def is_torchscript_names(names) -> bool:
    """Whether a zip's entry names are those of a TorchScript archive (``<archive>/constants.pkl``,
    ``<archive>/code/…``); ``torch.save`` writes neither, whatever the archive's name."""
    for n in names:
        parts = n.split("/")
        if len(parts) >= 2 and (parts[1] == "constants.pkl" or (parts[1] == "code" and len(parts) > 2)):
            return True
    return False


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


def _short(exc, limit: int = 240, last: bool = False) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if last:
        lines = [ln for ln in lines if not ln.startswith("Check the documentation")] or lines
    text = (lines[-1] if last else lines[0]) if lines else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _json_kind(v) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
            type(None): "missing or null"}.get(type(v), f"a {type(v).__name__}")


@contextlib.contextmanager
def zip_errors(name: str):
    """Whatever reading a damaged zip archive raises (a torch checkpoint, an ``.npz``), as one
    LoadError sentence about ``name``; SeqScope's own LoadErrors pass through."""
    try:
        yield
    except LoadError:
        raise
    except UnicodeDecodeError:
        raise LoadError(f"{name} is corrupted: a name in its zip directory is not valid text") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError, zlib.error) as exc:
        raise LoadError(f"{name} is truncated or corrupted: {_short(exc)}") from None
