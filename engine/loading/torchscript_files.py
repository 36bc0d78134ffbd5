"""TorchScript archives (``torch.jit.save``, ``torch.jit.script(model).save(...)``,
``torch.jit.trace(...).save(...)``): their tensors only.  The code the archive holds (``code/``,
the model's forward in TorchScript) is never read, compiled or run, and ``torch.jit.load`` is
never called: ``data.pkl``, the pickle of the module tree, is read by :mod:`.safe_unpickle`
(every ``__torch__.…`` class an inert stand-in; storages from the archive's ``data/`` entries),
and the tree is walked to the flat ``{dotted.name: tensor}`` dict ``module.state_dict()`` would
give: each module's tensor attributes in the order stored (parameters, then buffers, as
registered), then its submodules under ``name.``; tensors kept in lists and dicts after them, so
that a model which does not use them says so.  That record is then loaded like any state dict: the architecture is recognised from the names and shapes, and SeqScope computes its
forward itself, as the notes say."""
from __future__ import annotations

import io
import math
import os
import zipfile
from collections import OrderedDict

from .. import safe_json
from ..errors import LoadError
from ..limits import (MAX_SIDE_FILE_BYTES, check_tensor_storage, check_zip_entries, display_name, open_regular,
                      read_zip_entry)
from .pickled_torch import _Storages, read_torch_safely
from .record import _CONFIG_KEYS, _Found, _short, _VOCAB_KEYS, is_torchscript_names, zip_errors
from .recover import MAX_DEPTH, _fields, _is_factory_name
from .safe_unpickle import _BoundedReader, PendingTensor, StandIn, UnsafePickle, Walker
from .torch_files import _pickle_globals

#: TorchScript's own helpers that wrap typed lists and dicts (``restore_type_tag(value, "Dict[str, int]")``,
#: ``build_intlist([...])``): their first argument is the value
_TYPED_VALUES = ("torch.jit._pickle.restore_type_tag", "torch.jit._pickle.build_intlist",
                 "torch.jit._pickle.build_doublelist", "torch.jit._pickle.build_boollist")
#: the most modules and attributes one archive's tree may hold, counted at each use (a module shared
#: by two parents is walked under both names, as ``state_dict()`` lists it; sharing cannot make it 2**40)
MAX_TREE_ENTRIES = 200_000
#: the most values one plain attribute (a vocabulary, a config) may hold, counted at each use
MAX_PLAIN_VALUES = 1_000_000
#: where the record keeps what the archive's torch.nn modules say of themselves (read by side_files)
MODULE_CONFIG = "torchscript_module_config"
_ELMAN_CLASSES = ("torch.nn.modules.rnn.RNN", "torch.nn.modules.rnn.RNNCell")
NOTE = ("a TorchScript archive (torch.jit.save): its tensors were read without importing or running anything "
        "from it; its code (the forward) was not read, so SeqScope computes the forward of the architecture it "
        "recognised from the tensors' names and shapes")


def is_torchscript(path) -> bool:
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            return is_torchscript_names(z.namelist())
    except Exception:  # not a readable zip: the torch reader says what is wrong
        return False


def read_torchscript(path) -> _Found:
    """The tensors of a TorchScript archive as a state dict, with a note saying what was read."""
    name = display_name(path.name)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        with zip_errors(name):
            with zipfile.ZipFile(f) as z:
                infos = z.infolist()
                check_zip_entries(infos, size, name, advice="which no torch.jit.save writes")
                has_data = any(i.filename.endswith("data.pkl") and i.filename.count("/") <= 1 for i in infos)
                if not has_data and any(i.filename.endswith("model.json") for i in infos):
                    raise LoadError(f"{name} is a TorchScript archive in the format of PyTorch 1.0 to 1.2 (model.json), "
                                    "which SeqScope does not read: re-save its weights with a newer PyTorch, with "
                                    "torch.save(model.state_dict(), 'model.pt')")
                if not has_data:
                    raise LoadError(f"{name} is a TorchScript archive without its data.pkl (the module and its "
                                    "weights): the file is truncated or corrupted")
                constants = _constant_tensors(z, infos, name)
                _refuse_quantized(z, infos, name)
                extra_files, extra_notes = _extra_json(z, infos, name)
        obj, walker = read_torch_safely(f, "zip", name)
    tensors, extras, kinds, nonlinearities = _module_tensors(obj, name)
    if not tensors:
        if constants:
            raise LoadError(f"{name} is a TorchScript archive whose weights were folded into its code as "
                            f"{constants} constant tensor(s) (torch.jit.freeze or optimize_for_inference), which "
                            "SeqScope does not read: save the weights of the model before freezing, with "
                            "torch.save(model.state_dict(), 'model.pt')")
        raise LoadError(f"{name} is a TorchScript archive whose modules hold no tensors (a model without weights, or "
                        "one that keeps them in a form SeqScope does not read); save the weights with "
                        "torch.save(model.state_dict(), 'model.pt')")
    for key, t in tensors.items():
        check_tensor_storage(key, t, name)
    for key, value in extra_files.items():
        extras.setdefault(key, value)
    shown = ", ".join(kinds[:8]) + (f" and {len(kinds) - 8} more" if len(kinds) > 8 else "")
    notes = [NOTE + (f"; its modules: {shown}" if shown else "")]
    foreign = [q for q in walker.named if not q.startswith(("__torch__.", "torch.jit._pickle."))
               and not _is_factory_name(q) and not q.endswith(".(result)")]
    if foreign:
        notes.append("its data.pkl also names " + ", ".join(foreign[:12]) + (" and more" if len(foreign) > 12 else "")
                     + ", which TorchScript itself does not write; stood in for, never imported or run")
    notes += extra_notes
    if constants:
        notes.append(f"its code also holds {constants} constant tensor(s) of more than one element (constants.pkl), "
                     "which SeqScope does not read: if the forward uses them as weights, this model is not that one")
    metadata = {}
    if len(set(nonlinearities.values())) == 1:  # the Elman layers' own nonlinearity, which shapes cannot tell
        metadata[MODULE_CONFIG] = {"nonlinearity": next(iter(nonlinearities.values()))}
    elif nonlinearities:
        said = ", ".join(f"{k or 'the top module'} {v}" for k, v in nonlinearities.items())
        notes.append(f"its Elman RNN modules use different nonlinearities ({said}): pass config= with one entry per "
                     "layer in \"layers\" (cell rnn_tanh or rnn_relu)")
    return _Found(name=name, fmt="torchscript", tensors=tensors, extras=extras, metadata=metadata, notes=notes)


def _module_tensors(top, name: str):
    """``state_dict()`` of a TorchScript module tree read with stand-ins: its tensors by dotted
    name, the top module's plain attributes (a vocabulary, a config) and the classes met."""
    if not _is_script_object(top):
        raise LoadError(f"{name} is a TorchScript archive whose data.pkl does not hold a module; it is corrupted "
                        "or of a kind SeqScope does not read")
    out: OrderedDict = OrderedDict()
    kinds: dict[str, None] = {}
    visits = [0]
    held: list = []  # (name, value) of attributes that are not tensors or modules: lists, dicts, other state
    nonlinearities: dict[str, str] = {}  # the nn.RNN / nn.RNNCell modules' nonlinearity, by module name

    def count(n: int) -> None:
        visits[0] += n
        if visits[0] > MAX_TREE_ENTRIES:
            raise LoadError(f"{name} holds more than {MAX_TREE_ENTRIES:,} modules and attributes (counting shared ones "
                            "at each use); it is not a checkpoint SeqScope can read")

    def walk(obj: StandIn, prefix: str, depth: int, path: set) -> None:
        if depth > MAX_DEPTH or id(obj) in path:
            return
        fields = _fields(obj) or {}
        count(1 + len(fields))
        kinds[obj.qualified] = None
        if _class_name(obj.qualified) in _ELMAN_CLASSES and fields.get("nonlinearity") in ("tanh", "relu"):
            nonlinearities[prefix.rstrip(".")] = fields["nonlinearity"]
        path.add(id(obj))
        for key, value in fields.items():
            if not isinstance(key, str):
                continue
            if isinstance(value, PendingTensor) and value.tensor is not None:
                out[prefix + key] = value
            elif _is_script_object(value):
                walk(value, f"{prefix}{key}.", depth + 1, path)
            elif isinstance(value, (list, tuple, dict, StandIn)):
                held.append((prefix + key, value))
        path.discard(id(obj))

    walk(top, "", 0, set())
    # tensors inside lists, dicts and objects of a state of their own, after the modules' own: a
    # list of the module's own parameters (an RNN's _flat_weights) adds nothing; any other tensor
    # is named (``cells.0``, ``table.key``) so that a model that does not use it says so
    named = {id(t) for t in out.values()}
    for key, value in held:
        for suffix, t in _held_tensors(value, count):
            if id(t) not in named:
                named.add(id(t))
                out[key + suffix] = t
    out = OrderedDict((k, t.tensor) for k, t in out.items())
    extras = {}
    for key, value in (_fields(top) or {}).items():
        plain = _plain(value)
        if isinstance(key, str) and not key.startswith("_") and key != "training" and plain is not None:
            extras[key] = plain
    return out, extras, list(dict.fromkeys(_class_name(q) for q in kinds)), nonlinearities


def _held_tensors(value, count, suffix: str = "", depth: int = 0):
    """``(suffix, PendingTensor)`` for each tensor in a list, tuple or dict (keys text or
    numbers), TorchScript's typed wrappers around them and objects whose state is not a dict."""
    count(1)
    if depth > 16:
        return
    if isinstance(value, PendingTensor):
        if value.tensor is not None:
            yield suffix, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _held_tensors(item, count, f"{suffix}.{i}", depth + 1)
    elif isinstance(value, dict):
        for k, item in value.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                yield from _held_tensors(item, count, f"{suffix}.{k}", depth + 1)
    elif isinstance(value, StandIn) and value.qualified.startswith("torch.jit._pickle.") and value.args:
        yield from _held_tensors(value.args[0], count, suffix, depth + 1)
    elif isinstance(value, StandIn) and value.qualified.startswith("__torch__."):
        yield from _held_tensors(value.state, count, suffix, depth + 1)


def _is_script_object(v) -> bool:
    return isinstance(v, StandIn) and v.qualified.startswith("__torch__.") and isinstance(_fields(v), dict)


def _class_name(qualified: str) -> str:
    """``__torch__.torch.nn.modules.rnn.___torch_mangle_9.LSTMCell`` → ``torch.nn.modules.rnn.LSTMCell``."""
    parts = [p for p in qualified.split(".")[1:] if not p.startswith("___torch_mangle_")]
    return ".".join(parts) or qualified


def _plain(v, budget: list[int] | None = None, depth: int = 0):
    """A value made of text, numbers, lists and dicts (TorchScript's typed wrappers unwrapped), or
    None when it holds anything else, or more than MAX_PLAIN_VALUES values counted at each use (a
    list that holds one list many times over is cheap to pickle and huge to walk)."""
    budget = [MAX_PLAIN_VALUES] if budget is None else budget
    budget[0] -= 1
    if depth > 16 or budget[0] < 0:
        return None
    if isinstance(v, StandIn) and v.qualified in _TYPED_VALUES and v.args:
        return _plain(v.args[0], budget, depth + 1)
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        items = [_plain(x, budget, depth + 1) for x in v]
        return None if any(x is None for x in items) else items
    if isinstance(v, dict):
        items = {k: _plain(x, budget, depth + 1) for k, x in v.items()}
        ok = all(isinstance(k, (str, int)) and x is not None for k, x in items.items())
        return items if ok else None
    return None


def _extra_json(z: zipfile.ZipFile, infos, name: str) -> tuple[dict, list[str]]:
    """The archive's extra files (``torch.jit.save(..., _extra_files={"vocab.json": ...})``) that
    are JSON named like a vocabulary or a config (``vocab.json``, ``config.json``), by stem."""
    out: dict = {}
    notes: list[str] = []
    for info in infos:
        parts = info.filename.split("/")
        stem = parts[-1][: -len(".json")].lower() if parts[-1].lower().endswith(".json") else ""
        if len(parts) != 3 or parts[1] != "extra" or stem not in _VOCAB_KEYS + _CONFIG_KEYS or stem in out:
            continue
        shown = display_name(parts[-1])
        try:
            text = read_zip_entry(z, info, name, limit=MAX_SIDE_FILE_BYTES).decode("utf-8-sig")
            out[stem] = safe_json.loads(text, f"{name}'s extra file {shown}")
        except (LoadError, UnicodeDecodeError) as exc:
            notes.append(f"its extra file {shown} was not read ({_short(exc)})")
            continue
        notes.append(f"its extra file {shown} read as its {stem}")
    return out, notes


def _refuse_quantized(z: zipfile.ZipFile, infos, name: str) -> None:
    """A quantized model's tensors (``torch.QInt8Storage``, ``_rebuild_qtensor``), named before
    the pickle is walked, so that the refusal says what they are."""
    entry = next(i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") <= 1)
    quantized = [g for g in _pickle_globals(read_zip_entry(z, entry, name))
                 if g.startswith("torch.Q") or g.startswith("torch._utils._rebuild_qtensor")]
    if quantized:
        raise LoadError(f"{name} is a TorchScript archive of a quantized model (it holds "
                        f"{', '.join(dict.fromkeys(quantized))}), which SeqScope does not read: load the weights of "
                        "the model before quantization, saved with torch.save(model.state_dict(), 'model.pt')")


def _constant_tensors(z: zipfile.ZipFile, infos, name: str) -> int:
    """How many tensors of more than one element ``constants.pkl`` names (the weights of a frozen
    module live there, folded into the code); read with stand-ins, the storages never loaded."""
    entry = next((i for i in infos if i.filename.endswith("constants.pkl") and i.filename.count("/") <= 1), None)
    if entry is None:
        return 0
    data = read_zip_entry(z, entry, name)
    walker = Walker(_Storages())
    try:
        walker.load(_BoundedReader(io.BytesIO(data), len(data)))
    except LoadError:
        raise
    except (UnsafePickle, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            UnicodeError, EOFError, RecursionError) as exc:
        raise LoadError(f"{name} is a TorchScript archive whose constants.pkl cannot be read ({str(exc)[:200]}); "
                        "nothing in it was imported or run") from None
    return sum(1 for t in walker.pending if t.size is not None and math.prod(t.size) > 1)
