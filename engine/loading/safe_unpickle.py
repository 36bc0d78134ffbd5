"""Reading a PyTorch checkpoint's pickle without importing or calling anything the file names.

``torch.load(weights_only=True)`` refuses any file that names a class it does not know, although
real checkpoints carry harmless ones beside plain tensors (the author's config dataclass,
``argparse.Namespace``, ``torch.torch_version.TorchVersion``, whole ``nn.Module`` objects from
``torch.save(model)``, PyTorch 0.x modules that torch 2 cannot even rebuild).  This module walks
the pickle's opcodes itself (decoded by :func:`pickletools.genops`; nothing is handed to
:mod:`pickle`), and:

* every global the pickle names (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, the ``EXT1/2/4`` codes
  of :mod:`copyreg`'s registry) becomes an inert :class:`StandIn` type that only records its
  name, except a short allowlist of SeqScope's *own* functions standing for torch's tensor
  rebuilds, storage types, ``OrderedDict`` and a few builtin containers; the real functions are
  never looked up;
* "calling" (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``INST``, ``OBJ``) a stand-in makes a
  :class:`StandIn` instance recording the arguments; ``BUILD`` records the state on it; appends
  and item assignments on it are recorded too; nothing else can be called;
* tensors are rebuilt from the archive's storages (zip: ``data/<key>`` entries; legacy: the
  storages after the pickle), every view checked against the bytes really present.

:mod:`.pickled_torch` reads the two torch layouts with it; :mod:`.recover` turns what it
returns into plain data and a state dict.
"""
from __future__ import annotations

import copyreg
import math
import pickletools
from collections import OrderedDict

import torch

from ..limits import MiB

#: the most pickle operations one checkpoint may take (a state dict costs ~15 per tensor; whole
#: modules a few hundred per layer); beyond it the walk would take seconds and memory for nothing
MAX_PICKLE_OPS = 1_000_000
#: the longest text line a protocol-0 opcode may read (module and class names, numbers)
MAX_LINE_BYTES = 1 * MiB
#: the most values a dict key or set item may hold (hashing a tuple walks all of it, in C, without
#: a depth limit: a deeply nested or self-sharing key would crash or hang the interpreter)
MAX_KEY_PARTS = 10_000
#: the most distinct globals one pickle may name
MAX_GLOBALS = 10_000
MAX_DIMS = 64

_STORAGE_DTYPES = {
    "Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128,
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class UnsafePickle(Exception):
    """The pickle does something SeqScope does not follow (an internal signal, made a LoadError)."""


# -- what the file names ------------------------------------------------------------------------
class StandIn:
    """An object of a class (or the result of a function) the file names, never imported: only
    the name, the arguments it was given and the state ``BUILD`` gave it are kept."""

    __slots__ = ("args", "kwargs", "state", "list_items", "dict_items")
    qualified = "?"

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified}>"


def _stand_in_type(qualified: str) -> type:
    # the class name is fixed: only the recorded string holds what the file says
    return type("StandInFor", (StandIn,), {"__slots__": (), "qualified": qualified, "__module__": __name__})


def _new_stand_in(cls: type, args: tuple, kwargs) -> StandIn:
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state = args, kwargs, None
    obj.list_items, obj.dict_items = [], []
    return obj


class StorageType:
    """``torch.FloatStorage`` and the like: only its dtype is used."""

    def __init__(self, qualified: str, dtype: torch.dtype):
        self.qualified, self.dtype = qualified, dtype


class Storage:
    """One storage the pickle refers to, filled from the archive after the pickle is read."""

    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: torch.Tensor | None = None  # 1-D, of dtype
        self.root: Storage | None = None  # legacy storage views: a slice of another storage
        self.offset = 0

    def flat(self) -> torch.Tensor | None:
        if self.root is not None:
            base = self.root.flat()
            return None if base is None else base[self.offset: self.offset + self.numel]
        return self.data


class PendingTensor:
    """A tensor named by the pickle, made from its storage once the storages are read."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "tensor")

    def __init__(self, dtype=None):
        self.storage = self.offset = self.size = self.stride = None
        self.dtype, self.tensor = dtype, None

    def set_view(self, storage, offset, size, stride) -> None:
        if not isinstance(storage, Storage):
            raise UnsafePickle(f"a tensor refers to {_describe(storage)} instead of a storage")
        if isinstance(size, torch.Size):
            size = tuple(size)
        sequences = isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
        if not (_is_int(offset) and offset >= 0 and sequences
                and len(size) == len(stride) <= MAX_DIMS and all(_is_int(s) and s >= 0 for s in size)
                and all(_is_int(s) and s >= 0 for s in stride)):
            raise UnsafePickle("a tensor has a malformed offset, shape or stride")
        numel = math.prod(size)
        span = 0 if numel == 0 else 1 + sum((s - 1) * st for s, st in zip(size, stride))
        if numel and offset + span > storage.numel:
            raise UnsafePickle(f"a tensor of shape {list(size)} needs {offset + span:,} elements of a storage "
                               f"that holds {storage.numel:,}")
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
        self.dtype = storage.dtype

    def materialise(self) -> None:
        if self.storage is None:
            return  # a legacy tensor type never given its storage: not a tensor
        flat = self.storage.flat()
        if flat is None:
            raise UnsafePickle(f"storage {self.storage.key} is named but its bytes are missing")
        if math.prod(self.size) == 0:
            self.tensor = torch.empty(self.size, dtype=self.storage.dtype)
        else:
            self.tensor = flat.as_strided(self.size, self.stride, self.offset)


def _describe(v) -> str:
    return f"a stand-in for {v.qualified}" if isinstance(v, StandIn) else f"a {type(v).__name__}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensorish(v) -> bool:
    return isinstance(v, (PendingTensor, torch.Tensor))


# -- the allowlist: SeqScope's own stand-ins for torch's rebuild functions ----------------------
class _Factory:
    """A function of SeqScope's own that the pickle may call in place of the one it names."""

    def __init__(self, qualified: str, fn):
        self.qualified, self.fn = qualified, fn


def _rebuild_tensor(walker, args, kwargs):
    if len(args) < 4:
        raise UnsafePickle("a tensor rebuild has too few arguments")
    t = PendingTensor()
    t.set_view(*args[:4])
    walker.pending.append(t)
    return t


def _rebuild_parameter(walker, args, kwargs):  # _rebuild_parameter(data, requires_grad, hooks[, state])
    if not args or not _tensorish(args[0]):
        raise UnsafePickle("a Parameter is rebuilt from something that is not a tensor")
    return args[0]


def _rebuild_from_type(walker, args, kwargs):  # _rebuild_from_type_v2(func, new_type, args, state)
    if len(args) < 3 or not isinstance(args[0], _Factory) or not isinstance(args[2], tuple):
        raise UnsafePickle("a tensor subclass is rebuilt in a way SeqScope does not follow")
    if args[0].fn not in (_rebuild_tensor, _rebuild_parameter):
        raise UnsafePickle(f"a tensor subclass is rebuilt through {args[0].qualified}")
    return args[0].fn(walker, args[2], None)


def _legacy_tensor_type(dtype):
    def make(walker, args, kwargs):  # torch.FloatTensor() then BUILD (storage, offset, size, stride)
        if args:
            raise UnsafePickle("a legacy tensor type is called with arguments")
        t = PendingTensor(dtype)
        walker.pending.append(t)
        return t
    return make


def _pairs_ok(v) -> bool:
    return isinstance(v, (dict, OrderedDict)) or (
        isinstance(v, (list, tuple)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in v))


def _ordered_dict(walker, args, kwargs):
    if kwargs or len(args) > 1 or (args and not _pairs_ok(args[0])):
        raise UnsafePickle("an OrderedDict is built from something that is not pairs")
    if args:
        pairs = list(args[0].items()) if isinstance(args[0], dict) else args[0]
        _hashable([p[0] for p in pairs])
    return OrderedDict(args[0]) if args else OrderedDict()


def _container(kind):
    def make(walker, args, kwargs):
        if kwargs or len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
            raise UnsafePickle(f"a {kind.__name__} is built from something that is not a collection")
        if args:
            _hashable(list(args[0]))
        return kind(args[0]) if args else kind()
    return make


def _bytearray(walker, args, kwargs):
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1", "ascii", "utf-8", "utf8"):
        return bytearray(args[0], args[1])
    raise UnsafePickle("a bytearray is built from something that is not bytes")


def _scalar_builtin(kind, allowed):
    def make(walker, args, kwargs):
        if kwargs or len(args) > 3 or not all(isinstance(a, allowed) and not isinstance(a, bool) for a in args):
            raise UnsafePickle(f"a {kind.__name__} is built from something that is not numbers")
        return kind(*args)
    return make


def _codecs_encode(walker, args, kwargs):  # NumPy arrays pickled with protocol 2 carry bytes this way
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    raise UnsafePickle("_codecs.encode is called with something other than text and latin1")


def _torch_size(walker, args, kwargs):
    if len(args) == 1 and isinstance(args[0], (list, tuple)) and all(_is_int(s) for s in args[0]):
        return tuple(args[0])
    raise UnsafePickle("a torch.Size is built from something that is not integers")


def _reconstructor(walker, args, kwargs):  # copyreg._reconstructor(cls, base, state): protocols 0 and 1
    if len(args) != 3:
        raise UnsafePickle("copyreg._reconstructor is called with the wrong arguments")
    return walker.call(args[0], (), None)


def _newobj(walker, args, kwargs):  # copyreg.__newobj__(cls, *args)
    if not args:
        raise UnsafePickle("copyreg.__newobj__ is called without a class")
    return walker.call(args[0], tuple(args[1:]), None)


def _newobj_ex(walker, args, kwargs):  # copyreg.__newobj_ex__(cls, args, kwargs)
    if len(args) != 3 or not isinstance(args[1], tuple) or not isinstance(args[2], dict):
        raise UnsafePickle("copyreg.__newobj_ex__ is called with the wrong arguments")
    return walker.call(args[0], args[1], args[2])


_FACTORIES = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._utils._rebuild_from_type_v2": _rebuild_from_type,
    "torch.nn.parameter.Parameter": _rebuild_parameter,  # PyTorch 0.4: Parameter(tensor, requires_grad)
    "torch.autograd.variable.Variable": _rebuild_parameter,  # PyTorch 0.3: Variable(data) + BUILD
    "torch.Size": _torch_size,
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": _container(set),
    "builtins.frozenset": _container(frozenset),
    "builtins.bytearray": _bytearray,
    "builtins.complex": _scalar_builtin(complex, (int, float)),
    "builtins.slice": _scalar_builtin(slice, (int, type(None))),
    "_codecs.encode": _codecs_encode,
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
}


# -- the walk ---------------------------------------------------------------------------------
class _BoundedReader:
    """A file's reads clamped to the bytes it holds, and lines to MAX_LINE_BYTES, so a size the
    pickle declares never makes Python allocate more than the file has."""

    def __init__(self, f, end: int):
        self.f, self.end = f, end

    def _left(self) -> int:
        return max(self.end - self.f.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        line = self.f.readline(min(self._left(), MAX_LINE_BYTES))
        if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise UnsafePickle(f"a text line in the pickle is longer than {MAX_LINE_BYTES:,} bytes")
        return line

    def tell(self) -> int:
        return self.f.tell()


class Walker:
    """Interprets pickle opcodes with stand-ins; one per file (its state is the file's)."""

    def __init__(self, persistent=None):
        self.persistent = persistent  # pid -> object, or None when the pickle may not use them
        self.types: dict[str, object] = {}
        self.named: dict[str, None] = {}  # every global the file named, in order
        self.pending: list[PendingTensor] = []
        self.ops = 0

    # globals and calls
    def resolve(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str) or len(module) + len(name) > 1000:
            raise UnsafePickle("a global's name is not short text")
        module = _PY2_MODULES.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self.types:
            return self.types[qualified]
        if len(self.types) >= MAX_GLOBALS:
            raise UnsafePickle(f"the pickle names more than {MAX_GLOBALS:,} globals")
        self.named[qualified] = None
        self.types[qualified] = obj = self._allowed(module, name, qualified)
        return obj

    @staticmethod
    def _allowed(module: str, name: str, qualified: str):
        if qualified in _FACTORIES:
            return _Factory(qualified, _FACTORIES[qualified])
        if module in ("torch", "torch.cuda"):
            for suffix in ("Storage", "Tensor"):
                if name.endswith(suffix) and name[: -len(suffix)] in _STORAGE_DTYPES:
                    dtype = _STORAGE_DTYPES[name[: -len(suffix)]]
                    if suffix == "Storage":
                        return StorageType(qualified, dtype)
                    return _Factory(qualified, _legacy_tensor_type(dtype))
        if qualified in ("torch.storage.UntypedStorage", "torch.UntypedStorage"):
            return StorageType(qualified, torch.uint8)
        return _stand_in_type(qualified)

    def call(self, func, args, kwargs):
        if not isinstance(args, tuple) or not (kwargs is None or isinstance(kwargs, dict)):
            raise UnsafePickle("a call's arguments are not a tuple")
        if isinstance(func, type) and issubclass(func, StandIn):
            return _new_stand_in(func, args, kwargs)
        if isinstance(func, StandIn):  # calling what a stand-in returned: recorded as well
            return _new_stand_in(self.resolve(func.qualified, "(result)"), args, kwargs)
        if isinstance(func, _Factory):
            return func.fn(self, args, kwargs)
        raise UnsafePickle(f"the pickle calls a {type(func).__name__}, which SeqScope does not call")

    def build(self, inst, state) -> None:
        if isinstance(inst, StandIn):
            if isinstance(inst.state, dict) and isinstance(state, dict):
                inst.state.update(state)
            else:
                inst.state = state
        elif isinstance(inst, PendingTensor) and inst.storage is None:
            if not isinstance(state, tuple) or len(state) < 4:
                raise UnsafePickle("a legacy tensor's state is not (storage, offset, size, stride)")
            inst.set_view(*state[:4])
        # BUILD on anything else (a tensor's requires_grad, a state dict's _metadata): nothing is set

    def persistent_id(self, pid):
        if self.persistent is None:
            raise UnsafePickle("the pickle refers to data outside it (a persistent id) in a file that holds none")
        return self.persistent(pid)

    # the opcode loop
    def load(self, f):
        """The object of the one pickle that starts at ``f``'s position (``f`` stays after STOP)."""
        stack: list = []
        marks: list[list] = []
        memo: dict = {}

        def pop_mark() -> list:
            nonlocal stack
            if not marks:
                raise UnsafePickle("the pickle closes a group it never opened")
            items, stack = stack, marks.pop()
            return items

        for op, arg, _pos in pickletools.genops(f):
            self.ops += 1
            if self.ops > MAX_PICKLE_OPS:
                raise UnsafePickle(f"the pickle holds more than {MAX_PICKLE_OPS:,} operations")
            n = op.name
            if n in _CONSTANTS:
                stack.append(bytearray(arg) if n == "BYTEARRAY8" else _CONSTANTS[n](arg))
            elif n in ("PROTO", "FRAME"):
                if n == "PROTO" and not 0 <= arg <= 5:
                    raise UnsafePickle(f"unknown pickle protocol {arg}")
            elif n == "MARK":
                marks.append(stack)
                stack = []
            elif n == "STOP":
                if len(stack) != 1 or marks:
                    raise UnsafePickle("the pickle ends with its stack unbalanced")
                return stack[0]
            elif n == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif n == "POP_MARK":
                pop_mark()
            elif n == "DUP":
                stack.append(stack[-1])
            elif n in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise UnsafePickle("the pickle refers to a memo entry it never stored")
                stack.append(memo[arg])
            elif n in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif n == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif n == "EMPTY_LIST":
                stack.append([])
            elif n == "EMPTY_TUPLE":
                stack.append(())
            elif n == "EMPTY_DICT":
                stack.append({})
            elif n == "EMPTY_SET":
                stack.append(set())
            elif n in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(n[-1])
                if len(stack) < k:
                    raise UnsafePickle("the pickle's stack is shorter than a tuple it makes")
                items = tuple(stack[-k:])
                del stack[-k:]
                stack.append(items)
            elif n in ("TUPLE", "LIST", "FROZENSET"):
                items = pop_mark()  # before naming the stack: pop_mark replaces it
                if n == "FROZENSET":
                    _hashable(items)
                stack.append(tuple(items) if n == "TUPLE" else items if n == "LIST" else frozenset(items))
            elif n == "DICT":
                items = pop_mark()
                _hashable(items[::2])
                stack.append(dict(zip(items[::2], items[1::2])))
            elif n == "APPEND":
                value = stack.pop()
                _extend(stack[-1], [value])
            elif n == "APPENDS":
                items = pop_mark()
                _extend(stack[-1], items)
            elif n == "ADDITEMS":
                items = pop_mark()
                _add(stack[-1], items)
            elif n == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _set_items(stack[-1], [key, value])
            elif n == "SETITEMS":
                items = pop_mark()
                _set_items(stack[-1], items)
            elif n == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                stack.append(self.resolve(module, name))
            elif n == "STACK_GLOBAL":
                name, module = stack.pop(), stack.pop()
                stack.append(self.resolve(module, name))
            elif n in ("EXT1", "EXT2", "EXT4"):
                # the registry's (module, name) only, resolved like any global; copyreg's cache
                # of imported objects is never consulted
                key = copyreg._inverted_registry.get(arg)
                if key is None:
                    raise UnsafePickle(f"the pickle uses extension code {arg}, which is not registered")
                stack.append(self.resolve(*key))
            elif n == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(self.call(func, args, None))
            elif n == "NEWOBJ":
                args, cls = stack.pop(), stack.pop()
                stack.append(self.call(cls, args, None))
            elif n == "NEWOBJ_EX":
                kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
                stack.append(self.call(cls, args, kwargs))
            elif n == "INST":
                module, _, name = str(arg).partition(" ")
                cls = self.resolve(module, name)
                items = pop_mark()
                stack.append(self.call(cls, tuple(items), None))
            elif n == "OBJ":
                items = pop_mark()
                if not items:
                    raise UnsafePickle("OBJ without a class")
                stack.append(self.call(items[0], tuple(items[1:]), None))
            elif n == "BUILD":
                state = stack.pop()
                self.build(stack[-1], state)
            elif n == "PERSID":
                stack.append(self.persistent_id(arg))
            elif n == "BINPERSID":
                stack.append(self.persistent_id(stack.pop()))
            else:  # NEXT_BUFFER, READONLY_BUFFER and anything new
                raise UnsafePickle(f"the pickle uses opcode {n}, which a checkpoint does not need")
        raise UnsafePickle("the pickle ends without its STOP opcode")


def _identity(v):
    return v


_CONSTANTS = {name: _identity for name in (
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8")}
_CONSTANTS.update(NONE=lambda _: None, NEWTRUE=lambda _: True, NEWFALSE=lambda _: False)


def _hashable(values) -> None:
    """Refuse keys that Python could not hash safely: too deep, or too many parts counted at
    each use (the walk stops at MAX_KEY_PARTS, so it cannot be made slow)."""
    todo = [(v, 0) for v in values]
    seen = 0
    while todo:
        v, depth = todo.pop()
        seen += 1
        if seen > MAX_KEY_PARTS * max(len(values), 1) or depth > MAX_DIMS:
            raise UnsafePickle("a dict key or set item is nested too deeply to be a checkpoint's")
        if isinstance(v, (tuple, frozenset)):
            todo.extend((x, depth + 1) for x in v)
        elif isinstance(v, (list, dict, set, bytearray)):
            raise UnsafePickle(f"a dict key or set item is a {type(v).__name__}, which cannot be one")


def _extend(target, items) -> None:
    if isinstance(target, list):
        target.extend(items)
    elif isinstance(target, StandIn):
        target.list_items.extend(items)
    else:
        raise UnsafePickle(f"the pickle appends to a {type(target).__name__}")


def _add(target, items) -> None:
    if isinstance(target, set):
        _hashable(items)
        target.update(items)
    elif isinstance(target, StandIn):
        target.list_items.extend(items)
    else:
        raise UnsafePickle(f"the pickle adds set items to a {type(target).__name__}")


def _set_items(target, items) -> None:
    if len(items) % 2:
        raise UnsafePickle("the pickle sets a key without a value")
    pairs = list(zip(items[::2], items[1::2]))
    if isinstance(target, dict):  # dict and OrderedDict: keys are data or stand-ins (hashed by identity)
        _hashable([k for k, _ in pairs])
        for k, v in pairs:
            target[k] = v
    elif isinstance(target, StandIn):
        target.dict_items.extend(pairs)
    else:
        raise UnsafePickle(f"the pickle sets items on a {type(target).__name__}")
