"""Opening what the user named: a file (its format told by its first bytes, never its suffix) or
a folder in the Hugging Face layout (one weights file, or shards listed by an index)."""
from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .. import safe_json
from ..errors import LoadError
from ..limits import display_name, is_regular_file, open_regular, os_error_text, require_regular, stat_path
from .record import _CONFIG_KEYS, _Found, _json_kind, _VOCAB_KEYS, TORCH_SUFFIXES
from .keras_h5 import read_keras_h5 as _read_keras_h5
from .keras_v3 import is_keras_archive, keras_config_beside, read_keras3_weights, read_keras_archive, uses_keras3_layout
from .npz_files import _read_npz, is_npz
from .safetensors_files import _read_safetensors
from .torch_files import _read_torch
from .torchscript_files import is_torchscript, read_torchscript


def _read(path: Path) -> _Found:
    st = stat_path(path)
    if st is None:
        raise LoadError(f"no such file or folder: {display_name(path)}")
    if stat.S_ISDIR(st.st_mode):
        return _read_folder(path)
    require_regular(path)
    if path.name == "config.json" or (path.suffix.lower() == ".json" and path.name.endswith(".index.json")):
        return _read_folder(path.parent, weights=None if path.name == "config.json" else path)
    return _read_file(path)


def _read_file(path: Path, side: Path | None = None) -> _Found:
    kind = _sniff(path)
    if kind == "safetensors":
        found = _read_safetensors(path)
        found.side = side or path.parent
    elif kind == "npz":
        found = _read_npz(path)
        own = any(k in found.extras for k in _VOCAB_KEYS)
        found.side = side or (None if own else path.parent)
    elif kind == "hdf5":
        if uses_keras3_layout(path):  # a Keras 3 .weights.h5 (its config may lie beside it)
            found = read_keras3_weights(path, keras_config_beside(path))
        else:
            found = _read_keras_h5(path)
        found.side = side or path.parent
    elif kind == "keras":
        found = read_keras_archive(path)
        found.side = side or path.parent
    elif kind in ("zip", "pickle", "torchscript"):  # a TorchScript archive: its tensors only, its code never run
        found = read_torchscript(path) if kind == "torchscript" else _read_torch(path, kind)
        # files beside a .pt are used only when the checkpoint itself carries no vocab/config
        own = any(k in found.extras for k in _VOCAB_KEYS + _CONFIG_KEYS)
        found.side = side or (None if own else path.parent)
    else:
        raise AssertionError(kind)
    return found


_LEGACY_MAGIC_TEXT = b"L119547037146038801333356L\n."  # torch's magic number as a protocol 0/1 pickle


#: the first four bytes of GGML-family files (magic numbers written little-endian)
_GGML_MAGICS = {b"GGUF": "GGUF", b"lmgg": "GGML", b"fmgg": "GGML (ggmf)", b"tjgg": "GGML (ggjt)",
                b"algg": "GGML (ggla)"}


def _sniff(path: Path) -> str:
    name = display_name(path.name)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(32)
    except OSError as exc:
        raise LoadError(f"cannot read {name}: {os_error_text(exc)}") from None
    if size == 0:
        raise LoadError(f"{name} is empty (0 bytes): the save or the download did not complete")
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        if is_npz(path):  # every entry an .npy: whatever the entries' folders are called
            return "npz"
        return "torchscript" if is_torchscript(path) else "keras" if is_keras_archive(path) else "zip"
    # safetensors before the pickle byte: a header length whose low byte is 0x80 starts with it too
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n:
            if 8 + n > size:
                raise LoadError(f"{name} is truncated: its safetensors header says {n} bytes of header, "
                                f"but the file has only {size} bytes")
            return "safetensors"
    if head[:1] == b"\x80" or head.startswith(_LEGACY_MAGIC_TEXT):  # torch.save with pickle_protocol 0 or 1
        return "pickle"
    if head[:4] == b"\x89HDF":
        return "hdf5"  # Keras weights; a SeqScope trace is refused by the Keras reader
    if head[:4] in _GGML_MAGICS:
        raise LoadError(f"{name} is a {_GGML_MAGICS[head[:4]]} file (the format of llama.cpp / rwkv.cpp), "
                        "which SeqScope does not read: load the PyTorch .pth / .safetensors weights it was "
                        "converted from")
    if _looks_like_onnx(head):
        raise LoadError(f"{name} looks like an ONNX model (a computation graph), which SeqScope does not read: load "
                        "the PyTorch .pt / .safetensors weights it was exported from")
    if head[:6] == b"\x93NUMPY":
        raise LoadError(f"{name} is a NumPy array file, not a model checkpoint")
    if head.lstrip()[:1] in (b"{", b"["):
        raise LoadError(f"{name} is a JSON/text file, not model weights: give the weights file "
                        "(.pt/.pth/.bin/.safetensors) or the folder that holds it")
    raise LoadError(f"{name} is not a PyTorch checkpoint or safetensors file: its contents match no known "
                    f"format (it starts with bytes {head[:8].hex(' ')}); the file may be corrupted or of "
                    "another kind")


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto's first bytes: field 1 (ir_version, a small varint), then one of its
    other fields (producer name or version, domain, graph, opset imports)."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] in (0x12, 0x1A, 0x22, 0x3A, 0x42)


def _read_folder(folder: Path, weights: Path | None = None) -> _Found:
    name = display_name(folder.name or str(folder))
    if weights is None:
        for cand in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json", "model.weights.h5"):  # the last: an unzipped .keras
            if os.path.lexists(folder / cand):  # a named pipe here is refused when opened, not passed over
                weights = folder / cand
                break
    if weights is None:
        try:
            entries = list(folder.iterdir())
        except OSError as exc:
            raise LoadError(f"cannot list folder {name}: {os_error_text(exc)}") from None
        files = sorted(p for p in entries if is_regular_file(p)
                       and p.suffix.lower() in (".safetensors",) + TORCH_SUFFIXES)
        if len(files) == 1:
            weights = files[0]
        elif files:
            raise LoadError(f"folder {name} holds several weight files "
                            f"({', '.join(display_name(p.name) for p in files)}): "
                            "give the one to open")
        else:
            raise LoadError(f"folder {name} holds no model weights: expected model.safetensors or "
                            "pytorch_model.bin (with config.json), or a .pt/.pth/.bin/.ckpt/.safetensors file")
    if weights.name.endswith(".index.json"):
        return _read_sharded(folder, weights)
    found = _read_file(weights, side=folder)
    found.name = f"{name}/{display_name(weights.name)}"
    return found


def _read_sharded(folder: Path, index: Path) -> _Found:
    iname = display_name(index.name)
    weight_map = safe_json.read_mapping(index, "shard index").get("weight_map")
    if not isinstance(weight_map, Mapping) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LoadError(f"{iname} is not a shard index: its weight_map must be an object "
                        f"{{tensor name: shard file name}}, not {_json_kind(weight_map)}")
    tensors: dict = {}
    meta: dict = {}
    fmt = "safetensors"
    for shard in dict.fromkeys(weight_map.values()):
        p = folder / shard
        if not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise LoadError(f"{iname} names shard {display_name(shard)!r}, which is not a file name in the folder")
        if not os.path.lexists(p):
            raise LoadError(f"{iname} names shard {display_name(shard)}, which is not in {display_name(folder.name)}")
        part = _read_file(p, side=folder)
        fmt = part.fmt
        tensors.update(part.tensors)
        meta.update(part.metadata)
    return _Found(name=f"{display_name(folder.name)}/{iname}", fmt=fmt, tensors=tensors, metadata=meta, side=folder)
