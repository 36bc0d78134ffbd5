"""A small pickle assembler for the corpus: PyTorch-style state dicts whose tensors declare any
size, stride, offset and storage length (lying shapes, stride-0 views), and pickles that would
run code (a marker file appears if they ever do) through each opcode route an unpickler has.

Written opcode by opcode so nothing here is ever unpickled or run while the corpus is built.
"""
from __future__ import annotations

import struct


class Pickle:
    """Protocol-2 (or 4) opcodes appended in order; ``bytes()`` ends the stream with STOP."""

    def __init__(self, protocol: int = 2):
        self.out = bytearray(b"\x80" + bytes([protocol]))

    def op(self, code: bytes) -> "Pickle":
        self.out += code
        return self

    def mark(self):
        return self.op(b"(")

    def tuple(self):
        return self.op(b"t")

    def str(self, s: str):
        data = s.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(data)) + data
        return self

    def short_str(self, s: str):  # SHORT_BINUNICODE (protocol 4), for STACK_GLOBAL
        data = s.encode("utf-8")
        self.out += b"\x8c" + bytes([len(data)]) + data
        return self

    def int(self, n: int):
        if -(2**31) <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)
        else:  # LONG1: little-endian two's complement
            nbytes = (n.bit_length() + 8) // 8
            self.out += b"\x8a" + bytes([nbytes]) + n.to_bytes(nbytes, "little", signed=True)
        return self

    def float(self, x: float):
        self.out += b"G" + struct.pack(">d", x)
        return self

    def ints(self, values):
        self.mark()
        for v in values:
            self.int(v)
        return self.tuple()

    def glob(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        return self

    def reduce(self):
        return self.op(b"R")

    def stop(self) -> bytes:
        return bytes(self.out + b".")


def tensor(p: Pickle, key: str, numel: int, size, stride, offset: int = 0, storage: str = "FloatStorage",
           legacy: bool = False):
    """Push ``torch._utils._rebuild_tensor_v2`` of storage ``key`` (declared ``numel`` elements)
    viewed with ``size``/``stride``/``offset``, as ``torch.save`` writes it (``legacy``: the
    pre-zip format's persistent id, which ends with a view field)."""
    p.glob("torch._utils", "_rebuild_tensor_v2").mark()
    p.mark().str("storage").glob("torch", storage).str(key).str("cpu").int(numel)
    if legacy:
        p.op(b"N")
    p.tuple().op(b"Q")
    p.int(offset).ints(size).ints(stride).op(b"\x89")
    p.glob("collections", "OrderedDict").op(b")").reduce()
    p.tuple().reduce()


def state_dict(entries, protocol: int = 2, wrap: dict | None = None, legacy: bool = False) -> bytes:
    """A pickled dict ``{name: tensor}``; ``entries`` are ``(name, key, numel, size, stride, offset)``.
    ``wrap``: plain entries beside the state dict (``{"vocab": "abc"}``), the tensors going under
    ``state_dict``."""
    p = Pickle(protocol)
    p.op(b"}")
    if wrap is not None:
        p.mark()
        for k, v in wrap.items():
            p.str(k)
            _plain(p, v)
        p.str("state_dict").op(b"}")
    p.mark()
    for name, key, numel, size, stride, offset in entries:
        p.str(name)
        tensor(p, key, numel, size, stride, offset, legacy=legacy)
    p.op(b"u")
    if wrap is not None:
        p.op(b"u")
    return p.stop()


def _plain(p: Pickle, v) -> None:
    if isinstance(v, str):
        p.str(v)
    elif isinstance(v, bool):
        p.op(b"\x88" if v else b"\x89")
    elif isinstance(v, int):
        p.int(v)
    elif isinstance(v, float):
        p.float(v)
    elif v is None:
        p.op(b"N")
    elif isinstance(v, dict):
        p.op(b"}").mark()
        for k, x in v.items():
            p.str(str(k))
            _plain(p, x)
        p.op(b"u")
    elif isinstance(v, (list, tuple)):
        p.op(b"]").mark()
        for x in v:
            _plain(p, x)
        p.op(b"e")
    else:
        raise TypeError(type(v))


# -- pickles that would run code ---------------------------------------------------------------

#: the routes by which an unpickler can be made to call something
CODE_ROUTES = ("global_reduce", "stack_global_reduce", "inst", "obj", "newobj", "build", "persid",
               "numpy_object_array", "nested_in_state_dict")


def _open_marker_call(p: Pickle, marker: str, stack_global: bool = False) -> None:
    """Push ``builtins.open(marker, "w")``: the call creates the marker file if it ever runs."""
    if stack_global:
        p.short_str("builtins").short_str("open").op(b"\x93")
    else:
        p.glob("builtins", "open")
    p.mark().str(marker).str("w").tuple().reduce()


def code_pickle(route: str, marker: str) -> bytes:
    """A pickle that creates ``marker`` when an unrestricted unpickler reads it."""
    if route == "global_reduce":
        p = Pickle(2)
        _open_marker_call(p, marker)
        return p.stop()
    if route == "stack_global_reduce":
        p = Pickle(4)
        _open_marker_call(p, marker, stack_global=True)
        return p.stop()
    if route == "inst":  # INST module\nname\n with the arguments after a MARK: klass(*args)
        p = Pickle(2)
        p.mark().str(marker).str("w")
        p.out += b"ibuiltins\nopen\n"
        return p.stop()
    if route == "obj":  # MARK callable args OBJ: callable(*args)
        p = Pickle(2)
        p.mark().glob("builtins", "open").str(marker).str("w").op(b"o")
        return p.stop()
    if route == "newobj":  # cls.__new__(cls, *args) whose argument is itself a call
        p = Pickle(2)
        p.glob("collections", "OrderedDict").mark()
        _open_marker_call(p, marker)
        p.tuple().op(b"\x81")
        return p.stop()
    if route == "build":  # state for BUILD (__setstate__ / __dict__.update) holding a call
        p = Pickle(2)
        p.glob("argparse", "Namespace").op(b")").reduce()
        p.op(b"}").str("x")
        _open_marker_call(p, marker)
        p.op(b"s").op(b"b")
        return p.stop()
    if route == "persid":  # a persistent id (torch's storage record) whose type is a call
        p = Pickle(2)
        p.op(b"}").str("w")
        p.glob("torch._utils", "_rebuild_tensor_v2").mark()
        p.mark().str("storage")
        _open_marker_call(p, marker)
        p.str("0").str("cpu").int(4).tuple().op(b"Q")
        p.int(0).ints([4]).ints([1]).op(b"\x89").glob("collections", "OrderedDict").op(b")").reduce()
        p.tuple().reduce().op(b"s")
        return p.stop()
    if route == "numpy_object_array":  # an object array (allowed globals) whose element is a call
        p = Pickle(2)
        p.op(b"}").str("vocab")
        p.glob("numpy.core.multiarray", "_reconstruct").mark().glob("numpy", "ndarray").ints([0])
        p.out += b"C\x01b"  # SHORT_BINBYTES b'b'
        p.tuple().reduce()
        p.mark().int(1).ints([1])
        p.glob("numpy", "dtype").mark().str("O8").op(b"\x89").op(b"\x88").tuple().reduce()
        p.mark().int(3).str("|").op(b"N").op(b"N").op(b"N").int(-1).int(-1).int(63).tuple().op(b"b")
        p.op(b"\x89").op(b"]").mark()
        _open_marker_call(p, marker)
        p.op(b"e").tuple().op(b"b").op(b"s")
        return p.stop()
    if route == "nested_in_state_dict":  # a normal-looking checkpoint with the call in 'config'
        p = Pickle(2)
        p.op(b"}").mark().str("config")
        _open_marker_call(p, marker)
        p.str("state_dict").op(b"}").mark()
        p.str("rnn.weight_ih_l0")
        tensor(p, "0", 4, [4, 1], [1, 1])
        p.op(b"u").op(b"u")
        return p.stop()
    raise ValueError(route)
