"""Bad and hostile TorchScript archives (``torch.jit.save``'s layout, written byte by byte): a
valid one whose code/ would run ``os.system``, cut and bit-flipped copies, data.pkl given each
route to running code, a frozen archive (weights only as constants), zip bombs in entries SeqScope
never reads, a data.pkl that holds no module and one whose modules share each other 2**40 ways."""
from __future__ import annotations

import io
import random
import zipfile

from .containers import deflate_zeros, zip_with_raw_entry
from .corpus import Corpus
from .gen_checkpoints import lstm_arrays, pt_entries, truncations_and_flips
from .pickles import CODE_ROUTES, Pickle, code_pickle, tensor

CONSTANTS_NONE = b"\x80\x02)."  # constants.pkl of an archive whose code uses no tensor constants


def _module(p: Pickle, qualified: str, attributes) -> None:
    """Push a ``__torch__`` object (NEWOBJ) and BUILD it with ``{name: value}``; each value is
    pushed by a function of ``p``."""
    module, _, name = qualified.rpartition(".")
    p.glob(module, name).op(b")").op(b"\x81").op(b"}").mark()
    for key, push in attributes:
        p.str(key)
        push(p)
    p.op(b"u").op(b"b")


def script_pickle(arrays, first=None) -> tuple[bytes, dict[str, bytes]]:
    """data.pkl of ``__torch__.Model`` holding one submodule per name prefix (``rnn.…`` → an
    ``LSTM`` object), and the storages; ``first``: opcodes of an attribute ``evil`` set first."""
    entries, storages = pt_entries(arrays)
    groups: dict[str, list] = {}
    for entry in entries:
        head, _, rest = entry[0].partition(".")
        groups.setdefault(head, []).append((rest,) + entry[1:])
    kinds = {"embedding": "torch.nn.modules.sparse.Embedding", "rnn": "torch.nn.modules.rnn.LSTM",
             "fc": "torch.nn.modules.linear.Linear"}

    def tensor_of(key, numel, size, stride, offset):
        return lambda p: tensor(p, key, numel, size, stride, offset)

    def submodule(head, items):
        return lambda p: _module(p, f"__torch__.{kinds.get(head, 'Block')}",
                                 [("training", lambda q: q.op(b"\x89"))]
                                 + [(rest, tensor_of(*spec)) for rest, *spec in items])

    attributes = [("evil", lambda p: p.op(first))] if first is not None else []
    attributes += [("training", lambda p: p.op(b"\x89"))]
    attributes += [(head, submodule(head, items)) for head, items in groups.items()]
    p = Pickle(2)
    _module(p, "__torch__.Model", attributes)
    return p.stop(), storages


def shared_modules_pickle(levels: int = 40) -> bytes:
    """``__torch__`` objects each holding the one below twice: 2**levels paths to walk."""
    p = Pickle(2)
    _module(p, "__torch__.Leaf", [])
    p.op(b"q\x00")
    for k in range(1, levels + 1):
        p.op(b"0")  # the level below stays in the memo only
        _module(p, "__torch__.Node", [(name, lambda q, k=k: q.op(b"h" + bytes([k - 1]))) for name in ("a", "b")])
        p.op(b"q" + bytes([k]))
    return p.stop()


def archive(data_pkl: bytes, storages: dict[str, bytes], constants: bytes = CONSTANTS_NONE,
            constant_storages: dict[str, bytes] | None = None, code: bytes = b"") -> bytes:
    """A TorchScript zip (entries stored, as torch writes them) under the prefix ``model/``."""
    entries = [("data.pkl", data_pkl), ("code/__torch__.py", code), ("constants.pkl", constants),
               ("version", b"3\n"), ("byteorder", b"little")]
    entries += [(f"data/{k}", v) for k, v in storages.items()]
    entries += [(f"constants/{k}", v) for k, v in (constant_storages or {}).items()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(f"model/{name}", date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _body(pickle_bytes: bytes) -> bytes:
    """A one-value pickle's opcodes without PROTO and STOP (protocol 2 or 4 framing dropped)."""
    assert pickle_bytes[:1] == b"\x80" and pickle_bytes[-1:] == b"."
    return pickle_bytes[2:-1]


def build_torchscript(c: Corpus, rng: random.Random) -> None:
    arrays = lstm_arrays(5)
    evil_code = f"import os\nos.system('touch {c.marker('torchscript-code')}')\n".encode()
    data_pkl, storages = script_pickle(arrays)
    good = archive(data_pkl, storages, code=evil_code)
    c.add("torchscript/valid", "valid", "torchscript", "load", c.write("torchscript/valid.pt", good), expect="ok")
    truncations_and_flips(c, rng, "torchscript", ".pt", good, n_cuts=4, n_flips=6)
    for route in CODE_ROUTES:  # the route's whole value as the top module's first attribute
        ops = _body(code_pickle(route, c.marker(f"torchscript-{route}")))
        blob = archive(*script_pickle(arrays, first=ops), code=evil_code)
        c.add(f"torchscript/code-{route}", "code", "torchscript", "load",
              c.write(f"torchscript/code-{route}.pt", blob))
    frozen = archive(_frozen_pickle(), {}, constants=_constants_pickle(arrays),
                     constant_storages=pt_entries(arrays)[1], code=evil_code)
    c.add("torchscript/frozen", "valid", "torchscript", "load", c.write("torchscript/frozen.pt", frozen),
          expect="error")
    c.add("torchscript/not-a-module", "wrong-type", "torchscript", "load",
          c.write("torchscript/not-a-module.pt", archive(b"\x80\x02]q\x00.", {})), expect="error")
    c.add("torchscript/shared-2-to-the-40", "nesting", "torchscript", "load",
          c.write("torchscript/shared.pt", archive(shared_modules_pickle(), {})), expect="error")
    stream, crc = deflate_zeros(512)
    for entry in ("code/__torch__.py", "constants.pkl"):
        stored = [(f"model/{n}", d) for n, d in [("data.pkl", data_pkl), ("version", b"3\n")]
                  + [(f"data/{k}", v) for k, v in storages.items()]]
        blob = zip_with_raw_entry(stored, f"model/{entry}", stream, crc, 512 << 20)
        label = entry.replace("/", "-")
        c.add(f"torchscript/bomb-{label}", "zip-bomb", "torchscript", "load",
              c.write(f"torchscript/bomb-{label}.pt", blob), expect="error")


def _frozen_pickle() -> bytes:
    """data.pkl of a frozen module: no attribute but ``training``."""
    p = Pickle(2)
    _module(p, "__torch__.Model", [("training", lambda q: q.op(b"\x89"))])
    return p.stop()


def _constants_pickle(arrays) -> bytes:
    """constants.pkl: a tuple of the weights (storages under constants/)."""
    entries, _ = pt_entries(arrays)
    p = Pickle(2)
    p.mark()
    for _name, key, numel, size, stride, offset in entries:
        tensor(p, key, numel, size, stride, offset)
    p.tuple()
    return p.stop()
