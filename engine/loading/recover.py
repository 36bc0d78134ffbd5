"""From what :mod:`.safe_unpickle` read (plain data, tensors and stand-ins) to plain data: a
whole pickled ``nn.Module`` becomes its state dict (named exactly as ``module.state_dict()``
names it), an object of the author's class (a config dataclass, ``argparse.Namespace``) the
dict of its fields, ``TorchVersion`` its text, NumPy arrays of floats tensors (a pickle of NumPy weights),
other NumPy arrays and scalars their values; anything
else the file named stays an inert :class:`StoodIn` marker.  Nothing is imported or called."""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LoadError
from .safe_unpickle import _FACTORIES, PendingTensor, StandIn, Storage, StorageType, _Factory

#: the most values the recovered data may hold counted as a tree (shared entries counted at each
#: use), so that a pickle of lists sharing lists cannot make anything downstream walk 2^n nodes
MAX_RECOVERED_NODES = 1_000_000
MAX_DEPTH = 64
_NUMPY_ARRAY = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
_NUMPY_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
_NUMPY_DTYPE = ("numpy.dtype",)
#: names that are data or pickling machinery rather than something the file stands in for
_QUIET = set(_NUMPY_ARRAY + _NUMPY_SCALAR + _NUMPY_DTYPE) | {"numpy.ndarray", "builtins.object"}
_TORCH_TYPES = re.compile(r"torch(\.cuda)?\.\w+(Storage|Tensor)|torch(\.storage)?\.UntypedStorage")
_DTYPE_CODE = re.compile(r"[biufcSUMm]\d{0,3}(\[\w+\])?")


@dataclass(frozen=True)
class StoodIn:
    """What remains of an object of a class the file named and SeqScope did not import."""

    qualified: str

    def __repr__(self) -> str:
        return f"<{self.qualified}: stood in for, not run>"


@dataclass
class Recovered:
    obj: object  # plain data: dicts, lists, tensors, numbers, text, StoodIn markers
    tensors: int  # how many tensors it holds
    stood_in: list[str]  # the globals the file named that were stood in for
    modules: list[str]  # the classes of the whole modules read as state dicts


def recover(obj, named, name: str = "the checkpoint") -> Recovered:
    """Plain data from an object read by :func:`read_torch_safely` (``named``: the globals the
    file named, in order; ``name``: the file, for messages)."""
    if _tree_size(obj) > MAX_RECOVERED_NODES:
        raise LoadError(f"{name} holds more than {MAX_RECOVERED_NODES:,} values (counting shared ones at "
                        "each use); it is not a checkpoint SeqScope can read")
    r = _Recovery(name)
    plain = r.top(obj)
    stood_in = [q for q in named if q not in _QUIET and not _is_factory_name(q) and not q.endswith(".(result)")]
    return Recovered(plain, r.tensors, stood_in, list(dict.fromkeys(r.modules)))


def _children(x) -> list:
    if isinstance(x, dict):
        return list(x.keys()) + list(x.values())
    if isinstance(x, (list, tuple, set, frozenset)):
        return list(x)
    if isinstance(x, StandIn):
        return [x.args, x.kwargs, x.state, x.list_items, x.dict_items]
    return []


def _tree_size(root) -> int:
    """How many values ``root`` holds counted as a tree (shared values at each use), computed
    once per distinct object, so a pickle of pairs of pairs … is measured, not walked; stops
    counting past MAX_RECOVERED_NODES."""
    cap = MAX_RECOVERED_NODES + 1
    size: dict[int, int] = {}
    todo = [(root, False)]
    while todo:
        x, done = todo.pop()
        if id(x) in size and not done:
            continue
        kids = _children(x)
        if not done:
            size[id(x)] = 1  # provisional: a cycle back to x counts it once
            todo.append((x, True))
            todo.extend((k, False) for k in kids if id(k) not in size)
        else:
            size[id(x)] = min(cap, 1 + sum(size.get(id(k), 1) for k in kids))
    return size.get(id(root), 1)


def _is_factory_name(q: str) -> bool:
    return q in _FACTORIES or bool(_TORCH_TYPES.fullmatch(q))


class _Recovery:
    def __init__(self, name: str):
        self.name = name
        self.nodes = 0
        self.tensors = 0
        self.modules: list[str] = []
        self.path: set[int] = set()  # ids on the way down: a cycle ends there

    def top(self, obj):
        if _is_module(obj):  # torch.save(model): its state dict, with its plain attributes beside
            out = OrderedDict(state_dict=self.module_state(obj))
            for k, v in _fields(obj).items():
                if isinstance(k, str) and not k.startswith("_") and k not in out and k != "training":
                    value = self.plain(v, 1)
                    if _is_plain(value):
                        out[k] = value
            return out
        return self.plain(obj, 0)

    def count(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_RECOVERED_NODES:
            raise LoadError(f"{self.name} holds more than {MAX_RECOVERED_NODES:,} values (counting shared ones at "
                            "each use); it is not a checkpoint SeqScope can read")
        if depth > MAX_DEPTH:
            raise LoadError(f"{self.name} holds entries nested more than {MAX_DEPTH} levels deep")

    def plain(self, x, depth: int):
        self.count(depth)
        if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
            return x
        if isinstance(x, bytearray):
            return bytes(x)
        if isinstance(x, PendingTensor):
            if x.tensor is None:
                return None
            self.tensors += 1
            return x.tensor
        if isinstance(x, torch.Tensor):
            self.tensors += 1
            return x
        if isinstance(x, (Storage, StorageType, _Factory)):
            return StoodIn(getattr(x, "qualified", None) or f"storage {x.key}")
        if isinstance(x, type) and issubclass(x, StandIn):
            return StoodIn(x.qualified)
        if id(x) in self.path:
            return None  # a cycle
        self.path.add(id(x))
        try:
            return self._container(x, depth)
        finally:
            self.path.discard(id(x))

    def _container(self, x, depth: int):
        if isinstance(x, dict):
            out = OrderedDict() if isinstance(x, OrderedDict) else {}
            for k, v in x.items():
                out[self.key(k)] = self.plain(v, depth + 1)
            return out
        if isinstance(x, (list, tuple)):
            items = [self.plain(v, depth + 1) for v in x]
            return items if isinstance(x, list) else tuple(items)
        if isinstance(x, (set, frozenset)):
            return [self.plain(v, depth + 1) for v in x]
        if isinstance(x, StandIn):
            return self.stand_in(x, depth)
        return StoodIn(type(x).__name__)

    def key(self, k):
        if k is None or isinstance(k, (bool, int, float, str, bytes)):
            return k
        if isinstance(k, tuple):
            return tuple(self.key(v) for v in k)
        return repr(k)

    def stand_in(self, x: StandIn, depth: int):
        q = x.qualified
        if q in _NUMPY_ARRAY:
            return _numpy_array(x, self, depth)
        if q in _NUMPY_SCALAR:
            return _numpy_scalar(x)
        if q == "torch.torch_version.TorchVersion" and len(x.args) == 1 and isinstance(x.args[0], str):
            return x.args[0]
        if _is_module(x):
            return self.module_state(x)
        state = _fields(x)
        if state is not None or x.dict_items or (x.kwargs and not x.args):
            out = {}
            for k, v in list((x.kwargs or {}).items()) + list(x.dict_items) + list((state or {}).items()):
                value = self.plain(v, depth + 1)
                if _is_data(value):  # the fields that are values; what stood in for code is left out
                    out[self.key(k)] = value
            return out
        if x.list_items and not x.args:
            return [self.plain(v, depth + 1) for v in x.list_items]
        return StoodIn(q)

    def module_state(self, m: StandIn, prefix: str = "", out=None, depth: int = 0):
        """``module.state_dict()`` of a pickled module, from its recorded ``__dict__``:
        parameters, then persistent buffers, then each child's under ``name.``."""
        out = OrderedDict() if out is None else out
        if depth == 0:
            self.modules.append(m.qualified)
        if id(m) in self.path or depth > MAX_DEPTH:
            return out
        self.path.add(id(m))
        try:
            state = _fields(m)
            skip = state.get("_non_persistent_buffers_set") or ()
            skip = set(skip) if isinstance(skip, (set, frozenset, list, tuple)) else set()
            for group in ("_parameters", "_buffers"):
                entries = state.get(group)
                for k, v in _items(entries):
                    self.count(depth)
                    if group == "_buffers" and k in skip:
                        continue
                    value = self.plain(v, depth + 1) if isinstance(v, (PendingTensor, torch.Tensor)) else None
                    if isinstance(value, torch.Tensor):
                        out[f"{prefix}{k}"] = value
            for k, child in _items(state.get("_modules")):
                if _is_module(child):
                    self.module_state(child, f"{prefix}{k}.", out, depth + 1)
        finally:
            self.path.discard(id(m))
        return out


def _fields(x: StandIn) -> dict | None:
    """The attributes BUILD gave a stand-in: a ``__dict__``, or ``(__dict__, slots)``."""
    st = x.state
    if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)) \
            and (st[1] is None or isinstance(st[1], dict)):
        merged = dict(st[0] or {})
        merged.update(st[1] or {})
        return merged
    return st if isinstance(st, dict) else None


def _items(entries):
    if isinstance(entries, dict):
        return [(k, v) for k, v in entries.items() if isinstance(k, str)]
    if isinstance(entries, StandIn):  # a dict subclass the file named (its items recorded)
        return [(k, v) for k, v in entries.dict_items if isinstance(k, str)]
    return []


def _is_module(x) -> bool:
    if not isinstance(x, StandIn):
        return False
    state = _fields(x)
    return state is not None and "_parameters" in state and "_modules" in state


def _is_plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_plain(i) for i in v)
    if isinstance(v, dict):
        return all(_is_plain(i) for i in v.values())
    return False


def _is_data(v) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_data(i) for i in v)
    if isinstance(v, dict):
        return all(_is_data(i) for i in v.values())
    return _is_plain(v)


def _numpy_dtype(x) -> np.dtype | None:
    """A NumPy dtype from its pickled stand-in: ``dtype(code, align, copy)`` + BUILD state whose
    second entry is the byte order.  Only number, text and date codes: never objects."""
    if not isinstance(x, StandIn) or x.qualified not in _NUMPY_DTYPE or not x.args or not isinstance(x.args[0], str):
        return None
    code = x.args[0]
    if code == "O":
        return np.dtype(object)  # the array's items are then pickled values: used as they are
    if not _DTYPE_CODE.fullmatch(code):
        return None
    order = x.state[1] if isinstance(x.state, tuple) and len(x.state) > 1 else "|"
    order = order if order in ("<", ">", "|", "=") else "|"
    try:
        return np.dtype(order + code if order in "<>" else code)
    except TypeError:
        return None


def _numpy_array(x: StandIn, r: _Recovery, depth: int):
    # _reconstruct(ndarray, (0,), b'b') then BUILD (version, shape, dtype, is_fortran, data)
    st = x.state
    if not (isinstance(st, tuple) and len(st) == 5 and isinstance(st[1], tuple)):
        return StoodIn(x.qualified)
    shape, dtype, fortran, data = st[1], _numpy_dtype(st[2]), st[3], st[4]
    if dtype is None or not all(isinstance(s, int) and s >= 0 for s in shape):
        return StoodIn(x.qualified)
    n = math.prod(shape)
    if dtype == np.dtype(object):
        items = data if isinstance(data, list) else []
        return [r.plain(v, depth + 1) for v in items] if len(items) == n else StoodIn(x.qualified)
    if isinstance(data, str):
        data = data.encode("latin-1", "replace")
    if not isinstance(data, (bytes, bytearray)) or len(data) != n * dtype.itemsize:
        return StoodIn(x.qualified)
    arr = np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8) and arr.ndim >= 1:  # weights: a tensor
        r.tensors += 1
        return torch.from_numpy(np.ascontiguousarray(arr).astype(dtype.newbyteorder("="), copy=True))
    return arr.tolist()


def _numpy_scalar(x: StandIn):
    if len(x.args) != 2:
        return StoodIn(x.qualified)
    dtype, data = _numpy_dtype(x.args[0]), x.args[1]
    if isinstance(data, str):
        data = data.encode("latin-1", "replace")
    if dtype is None or dtype == np.dtype(object) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        return StoodIn(x.qualified)
    return np.frombuffer(data, dtype=dtype)[0].item()
