"""PyTorch checkpoints (zip and legacy pickle formats): read only through ``torch.load(...,
weights_only=True)`` after the zip's entries are checked (no zip bombs, no TorchScript), every
tensor checked against its storage, and the state dict found inside whatever was saved."""
from __future__ import annotations

import os
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .. import safe_json
from ..errors import LoadError
from ..limits import (MAX_PICKLE_BYTES, check_tensor_storage, check_zip_entries, display_name, open_regular,
                      read_capped, read_zip_entry)
from .record import _CELL_KEY, _Found, _RNN_KEY, _short, is_torchscript_names, zip_errors
from .recover import recover
from .pickled_torch import read_torch_safely


_NOT_MODEL = re.compile(r"optim|sched|scaler|grad|loss|metric|callback|histor|lr_", re.I)
_PREFERRED_CONTAINERS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network",
                         "module", "weights", "params", "model_weights")


def _read_torch(path: Path, kind: str) -> _Found:
    name = display_name(path.name)
    pickle_bytes = None
    with open_regular(path) as f:  # torch reads the open file: any file name works, and only this file
        if kind == "zip":
            pickle_bytes = _check_torch_zip(f, name)
            f.seek(0)
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not for our users
                warnings.simplefilter("ignore")
                with torch.serialization.safe_globals(_data_globals()):
                    obj = torch.load(f, map_location="cpu", weights_only=True)
        except LoadError:
            raise
        except Exception as exc:  # torch's own messages are long and about torch; say what matters
            if not _refused_by_weights_only(exc):
                raise _torch_load_error(path, exc, pickle_bytes) from None
            # classes torch's safe loader does not know: read again with stand-ins for them
            found = _read_with_stand_ins(f, kind, name, lambda: _torch_load_error(path, exc, pickle_bytes))
        else:
            found = _unwrap(obj, name)
    for key, t in found.tensors.items():
        check_tensor_storage(key, t, name)
    return found


def _refused_by_weights_only(exc: Exception) -> bool:
    msg = str(exc)
    return "Weights only load failed" in msg or "Unsupported operand" in msg


def _read_with_stand_ins(f, kind: str, name: str, torch_error) -> _Found:
    """The checkpoint read by :mod:`.safe_unpickle` (nothing imported or run), its stand-ins
    turned into plain data by :mod:`.recover`; what was stood in for goes into the notes.  A file
    torch refused as corrupted (not for the classes it names) keeps torch's verdict."""
    try:
        obj, walker = read_torch_safely(f, kind, name)
        rec = recover(obj, list(walker.named), name)
    except LoadError:
        error = torch_error()  # built only here: for a legacy file it reads the file again
        if "pickled Python code" not in str(error):
            raise error from None
        raise
    shown = _listing(rec.stood_in)
    if rec.tensors == 0 and not shown:
        raise LoadError(f"{name} holds no tensors (read without running anything from it): it is not a checkpoint "
                        "of model weights")
    if rec.tensors == 0:
        raise LoadError(f"{name} contains pickled Python code and no weights: it refers to {shown or 'no names'}, "
                        "and SeqScope, which never imports or runs anything a file names, found no tensors in it to "
                        "load. Nothing in the file was run. Save the weights with torch.save(model.state_dict(), "
                        "'model.pt') or safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    found = _unwrap(rec.obj, name)
    notes = []
    if rec.modules:
        notes.append(f"a whole pickled module ({_listing(rec.modules)}) was read as its state dict")
    if shown:
        notes.append(f"read without importing or running anything from the file; stood in for: {shown}")
    found.notes[:0] = notes
    return found


def _listing(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _check_torch_zip(f, name: str) -> bytes:
    """Look inside a PyTorch zip checkpoint before torch does: refuse TorchScript archives, zips
    without data.pkl, entries that inflate far beyond their size (zip bombs) and corrupted entry
    names; return data.pkl's bytes (read with a cap)."""
    size = os.fstat(f.fileno()).st_size
    try:
        is_zip = zipfile.is_zipfile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # e.g. a zip "spanning several disks"
        raise LoadError(f"{name} is truncated or corrupted: {_short(exc)}") from None
    if not is_zip:
        raise LoadError(f"{name} is truncated or corrupted: it starts like a PyTorch zip checkpoint but its "
                        "zip directory (at the end of the file) is missing; the save or the download was "
                        "probably interrupted")
    f.seek(0)
    with zip_errors(name):
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if is_torchscript_names(names):  # never handed to torch.load, which would run its code
                raise LoadError(f"{name} is a TorchScript archive (torch.jit.save), which holds code; SeqScope "
                                "reads its tensors through its TorchScript reader only, never through torch.load")
            check_zip_entries(infos, size, name)
            pkl = [i for i in infos if i.filename.endswith("data.pkl")]
            if not pkl:
                raise LoadError(f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
            return read_zip_entry(z, pkl[0], name)


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
    name = display_name(path.name)
    msg = str(exc)
    # a name cut short ("torc.") means the pickle itself is cut short, not that it holds code
    refs = [r for r in re.findall(r"GLOBAL ([\w.]+)", msg) if re.fullmatch(r"\w+(\.\w+)+", r)]
    if not refs and ("Weights only load failed" in msg or "Unsupported operand" in msg):
        if pickle_bytes is None:
            try:
                pickle_bytes = read_capped(path, "checkpoint", MAX_PICKLE_BYTES)
            except LoadError:
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
    if safe_json.object_depth(obj) > safe_json.MAX_DEPTH:
        raise LoadError(f"{name} holds entries nested more than {safe_json.MAX_DEPTH} levels deep; it is not a "
                        "checkpoint SeqScope can read")
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
