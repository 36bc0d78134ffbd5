"""The safe unpickler (engine/loading/safe_unpickle.py, pickled_torch.py, recover.py): nothing a
checkpoint names is ever imported or called, on every opcode route, in both torch layouts;
random and mutated pickles never run, hang or exhaust memory; and what real checkpoints carry
(config dataclasses, TorchVersion, whole modules, PyTorch 0.4 module pickles) is recovered."""
from __future__ import annotations

import argparse
import copyreg
import dataclasses
import io
import os
import pickle
import pickletools
import struct
import sys
import tempfile
import time
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import engine
from engine.errors import LoadError
from engine.loading import load
from engine.loading.pickled_torch import read_torch_safely
from engine.loading.recover import StoodIn, recover
from torch04_pickles import torch04_save

CHARS = list("abcdefghij ")
V = len(CHARS)


class CharRNN(nn.Module):
    """Defined here, so torch's weights-only loader refuses a torch.save(model) of it."""

    def __init__(self, kind=nn.LSTM, **kw):
        super().__init__()
        self.embedding = nn.Embedding(V, 8)
        self.rnn = kind(8, 16, 2, batch_first=True, **kw)
        self.fc = nn.Linear(16, V)
        self.chars = CHARS

    def forward(self, ids):
        y, _ = self.rnn(self.embedding(ids))
        return self.fc(y), y


@dataclasses.dataclass
class TrainConfig:
    """An author's config class, pickled beside the weights."""

    cell: str = "rnn"
    nonlinearity: str = "relu"
    hidden_size: int = 16
    lr: float = 3e-4


class Trap:
    """Touches a file when built through __new__ with arguments or given a state: a pickle
    that reaches either would leave the marker."""

    def __new__(cls, *args, **kwargs):
        if args:
            Path(args[0]).touch()
        return object.__new__(cls)

    def __setstate__(self, state):
        Path(state).touch()


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return CharRNN(**kw).eval()


def ids_for(n=29, seed=1):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def check_outputs(model, module, atol=1e-6):
    ids = ids_for()
    with torch.no_grad():
        logits, y = module(ids[None])
    trace = engine.run(model, ids.numpy())
    assert np.allclose(trace["layers.1.h"], y[0].numpy(), atol=atol, rtol=0)
    assert np.allclose(trace["logits"], logits[0].numpy(), atol=atol, rtol=0)


# -- hand-assembled pickles ----------------------------------------------------------------------
def s(text: str) -> bytes:  # BINUNICODE
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def glob(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


MARK, TUPLE, TUPLE1, REDUCE, BUILD, OBJ = b"(", b"t", b"\x85", b"R", b"b", b"o"
NEWOBJ, NEWOBJ_EX, STACK_GLOBAL, BINPERSID = b"\x81", b"\x92", b"\x93", b"Q"
EMPTY_TUPLE, EMPTY_DICT, SETITEMS, STOP, PROTO2 = b")", b"}", b"u", b".", b"\x80\x02"
EXT_CODES = {"EXT1": 0xF1, "EXT2": 0x1F2, "EXT4": 0x10003}
EXT_TARGETS = {"EXT1": ("os", "system"), "EXT2": ("subprocess", "call"), "EXT4": ("builtins", "exec")}


def routes(marker: Path) -> dict[str, bytes]:
    """Opcode sequences that each push one value and, unpickled for real, create ``marker``."""
    m = str(marker)
    cmd = s(f"touch '{m}'")
    trap = glob(Trap.__module__, Trap.__qualname__)
    code = s(f"open({m!r}, 'w').close()")
    call_args = MARK + MARK + s("touch") + s(m) + b"l" + TUPLE
    return {
        "GLOBAL+REDUCE os.system": glob("os", "system") + MARK + cmd + TUPLE + REDUCE,
        "GLOBAL+REDUCE builtins.exec": glob("builtins", "exec") + MARK + code + TUPLE + REDUCE,
        "GLOBAL+REDUCE subprocess.call": glob("subprocess", "call") + call_args + REDUCE,
        "STACK_GLOBAL+REDUCE": s("os") + s("system") + STACK_GLOBAL + MARK + cmd + TUPLE + REDUCE,
        "BUILD __setstate__": trap + EMPTY_TUPLE + NEWOBJ + s(m) + BUILD,
        "INST": MARK + cmd + b"i" + b"os\nsystem\n",
        "OBJ": MARK + glob("os", "system") + cmd + OBJ,
        "NEWOBJ": trap + MARK + s(m) + TUPLE + NEWOBJ,
        "NEWOBJ_EX": trap + MARK + s(m) + TUPLE + EMPTY_DICT + NEWOBJ_EX,
        "EXT1": b"\x82" + bytes([EXT_CODES["EXT1"]]) + MARK + cmd + TUPLE + REDUCE,
        "EXT2": b"\x83" + struct.pack("<H", EXT_CODES["EXT2"]) + call_args + REDUCE,
        "EXT4": b"\x84" + struct.pack("<i", EXT_CODES["EXT4"]) + MARK + code + TUPLE + REDUCE,
        "BINPERSID of a call": glob("os", "system") + MARK + cmd + TUPLE + REDUCE + TUPLE1 + BINPERSID,
        "persistent module id holding a call": MARK + s("module") + glob("os", "system") + MARK + cmd + TUPLE
        + REDUCE + s("evil.py") + s("source") + TUPLE + BINPERSID,
        "tensor rebuilt from a call": glob("torch._utils", "_rebuild_tensor_v2") + MARK + glob("os", "system")
        + MARK + cmd + TUPLE + REDUCE + b"K\x00" + MARK + b"K\x02" + TUPLE + MARK + b"K\x01" + TUPLE
        + b"\x89" + TUPLE + REDUCE,
    }


@pytest.fixture
def extensions():
    """The EXT routes need codes in copyreg's registry (as a hostile environment might have)."""
    for op, (module, name) in EXT_TARGETS.items():
        copyreg.add_extension(module, name, EXT_CODES[op])
    try:
        yield
    finally:
        for op, (module, name) in EXT_TARGETS.items():
            copyreg.remove_extension(module, name, EXT_CODES[op])
        copyreg.clear_extension_cache()


def data_pickle(route: bytes, body: bytes) -> bytes:
    """{"evil": <route>, "weights": <a state dict's pickle body>}: the evil value comes first, so
    a real unpickler runs it before it ever reaches the storages."""
    return PROTO2 + EMPTY_DICT + MARK + s("evil") + route + s("weights") + body + SETITEMS + STOP


def pickle_body(data: bytes) -> bytes:
    assert data[:2] == PROTO2 and data[-1:] == STOP
    return data[2:-1]


def zip_checkpoint(sd) -> tuple[bytes, callable]:
    """A torch zip checkpoint of ``sd``, and a function that swaps its data.pkl."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    pkl = next(n for n in src.namelist() if n.endswith("data.pkl"))

    def with_pickle(new: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for info in src.infolist():
                z.writestr(info.filename, new if info.filename == pkl else src.read(info.filename))
        return out.getvalue()

    return pickle_body(src.read(pkl)), with_pickle


def legacy_checkpoint(sd) -> tuple[bytes, callable]:
    """A torch legacy checkpoint of ``sd``, and a function that swaps its object pickle."""
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, system info
        for _op in pickletools.genops(f):
            pass
    start = f.tell()
    for _op in pickletools.genops(f):
        pass
    end = f.tell()
    return pickle_body(raw[start:end]), lambda new: raw[:start] + new + raw[end:]


LAYOUTS = {"zip": zip_checkpoint, "legacy": legacy_checkpoint}


def really_runs(data: bytes, marker: Path) -> bool:
    """The control: Python's own unpickler does run the route."""
    up = pickle.Unpickler(io.BytesIO(data))
    up.persistent_load = lambda pid: None
    try:
        up.load()
    except Exception:
        pass
    ran = marker.exists()
    if ran:
        marker.unlink()
    return ran


# -- every opcode route, both layouts --------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_opcode_route_is_stood_in_for_never_run(tmp_path, layout, extensions):
    marker = tmp_path / "PWNED"
    m = make(seed=3)
    body, build_file = LAYOUTS[layout](m.state_dict())
    for route, ops in routes(marker).items():
        data = data_pickle(ops, body)
        assert really_runs(data, marker), f"{route}: the control pickle does not run, so the test proves nothing"
        path = tmp_path / f"{layout}-{route.replace(' ', '_').replace('.', '_')}.pt"
        path.write_bytes(build_file(data))
        try:
            model = load(path, device="cpu")
        except LoadError as exc:
            assert "nothing in it was imported or run" in str(exc) and "os.system" in str(exc), (route, exc)
            assert not marker.exists(), route
            assert route.startswith(("BINPERSID", "persistent", "tensor")), f"{route}: {exc}"
            continue
        assert not marker.exists(), route
        notes = model.info()["notes"]
        assert "stood in for:" in notes and "read without importing or running anything" in notes, route
        named = {"GLOBAL+REDUCE builtins.exec": "builtins.exec", "EXT4": "builtins.exec",
                 "GLOBAL+REDUCE subprocess.call": "subprocess.call", "EXT2": "subprocess.call",
                 "BUILD __setstate__": "Trap", "NEWOBJ": "Trap", "NEWOBJ_EX": "Trap"}.get(route, "os.system")
        assert named in notes, (route, notes)
        check_outputs(model, m, atol=0)


def test_pickle_of_nothing_but_code_is_refused_in_words(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    path.write_bytes(PROTO2 + routes(marker)["GLOBAL+REDUCE os.system"] + STOP)
    with pytest.raises(LoadError) as info:
        load(path, device="cpu")
    msg = str(info.value)
    assert "os.system" in msg and "Nothing in the file was run" in msg and "no weights" in msg
    assert not marker.exists()


def test_what_torch_refuses_as_corrupted_stays_refused(tmp_path):
    """The fallback is for classes torch does not know, not for damaged files."""
    m = make(seed=4)
    p = tmp_path / "cut.pt"
    torch.save({"config": TrainConfig(), "model": m.state_dict()}, p, _use_new_zipfile_serialization=False)
    p.write_bytes(p.read_bytes()[:-300])
    with pytest.raises(LoadError, match="truncated"):
        load(p, device="cpu")


# -- sizes the file declares ---------------------------------------------------------------------
def walk(data: bytes, kind: str = "pickle"):
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        f.write(data)
        f.flush()
        with open(f.name, "rb") as g:
            obj, walker = read_torch_safely(g, kind, "x.pt")
    return recover(obj, list(walker.named))


_PAIRS = b"".join(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86\x940" for i in range(40))


@pytest.mark.parametrize("data", [
    PROTO2 + b"\x8e" + struct.pack("<Q", 1 << 60) + b"abc",  # BINBYTES8 of 2**60 bytes
    PROTO2 + b"\x8d" + struct.pack("<Q", 1 << 40) + b"abc",  # BINUNICODE8
    PROTO2 + b"\x8b" + struct.pack("<i", 1 << 30) + b"\x01",  # LONG4 of a GiB
    PROTO2 + b"\x95" + struct.pack("<Q", 1 << 50) + b".",  # FRAME
    PROTO2 + b"c" + b"o" * (3 << 20),  # a GLOBAL line without end
    # a pair of references to a pair of references … (2**40 leaves), as a value and as a dict key
    PROTO2 + b"]\x940" + _PAIRS + b"h\x28.",
    PROTO2 + b"}" + b")\x940" + _PAIRS + b"h\x28K\x01s.",
    PROTO2 + b"}" + b")" + b"\x85" * 50_000 + b"K\x01s.",  # a key 50,000 tuples deep (hashing deeper ones crashes)
    PROTO2 + b"(" * 100_000 + b".",  # marks never closed

])
def test_declared_sizes_never_allocate_or_hang(data):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        walk(data)
    except LoadError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 64 << 20


def test_storage_and_view_bounds(tmp_path):
    body, build = legacy_checkpoint({"w": torch.zeros(4)})
    # a tensor view past its storage, and a storage longer than the file
    for old, new in ((b"K\x04\x85", b"K\x09\x85"), (b"K\x04N", b"J\x00\x00\x00\x10N")):
        assert old in body
        data = build(PROTO2 + body.replace(old, new, 1) + STOP)
        p = tmp_path / "bad.pt"
        p.write_bytes(data)
        with pytest.raises(LoadError):
            with open(p, "rb") as f:
                read_torch_safely(f, "pickle", "bad.pt")


# -- fuzzing ----------------------------------------------------------------------------------------
def _bounded(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except LoadError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 3, "took too long"
    assert peak < 128 << 20, f"allocated {peak:,} bytes"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.sampled_from([b"", PROTO2, b"\x80\x04"]))
def test_random_pickles_never_run_hang_or_exhaust_memory(data, head):
    with tempfile.TemporaryDirectory() as d:
        marker = Path(d) / "PWNED"
        _bounded(lambda: walk(head + data))
        assert not marker.exists()


def _soup_tokens(marker: Path) -> list[bytes]:
    m = str(marker)
    return [glob("os", "system"), glob("builtins", "exec"), glob(Trap.__module__, Trap.__qualname__),
            glob("torch._utils", "_rebuild_tensor_v2"), glob("collections", "OrderedDict"),
            glob("copyreg", "_reconstructor"),
            glob("copyreg", "__newobj__"), glob("builtins", "set"), glob("torch", "FloatStorage"),
            s(f"touch '{m}'"), s(m), s(f"open({m!r}, 'w').close()"), s("os"), s("system"), s("storage"), s("0"),
            MARK, TUPLE, TUPLE1, b"\x86", REDUCE, BUILD, NEWOBJ, NEWOBJ_EX, OBJ, b"ios\nsystem\n", STACK_GLOBAL,
            EMPTY_DICT, EMPTY_TUPLE, b"]", b"\x8f", b"a", b"e", b"\x90", b"\x91", b"s", SETITEMS, b"l", b"d",
            b"\x94", b"h\x00", b"h\x01", b"h\x02", b"q\x00", b"0", b"1", b"2", BINPERSID, b"K\x01", b"K\x00",
            b"N", b"\x88", b"\x89", b"\x82\xf1", b"\x83\xf2\x01", b"\x84\x03\x00\x01\x00"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_opcode_soup_never_runs(extensions, data):
    """Pickles assembled from the opcodes that call things, in random orders: whatever the
    walker makes of them, nothing runs."""
    marker = _FUZZ_DIR / "SOUP"
    tokens = _soup_tokens(marker)
    picks = data.draw(st.lists(st.integers(0, len(tokens) - 1), min_size=1, max_size=40))
    _bounded(lambda: walk(PROTO2 + b"".join(tokens[i] for i in picks) + STOP))
    assert not marker.exists()


_SEEDS: dict = {}


def _seed_files(marker: Path):
    """Each route spliced into a small checkpoint, in both layouts (built once)."""
    if str(marker) not in _SEEDS:
        sd = {"w": torch.arange(6.0).reshape(2, 3)}
        out = []
        for layout, make_file in LAYOUTS.items():
            body, build = make_file(sd)
            out += [(layout, build, data_pickle(ops, body)) for ops in routes(marker).values()]
        _SEEDS[str(marker)] = out
    return _SEEDS[str(marker)]


_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="seqscope-fuzz-"))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_checkpoints_never_run_hang_or_exhaust_memory(data):
    marker = _FUZZ_DIR / "PWNED"
    seeds = _seed_files(marker)
    layout, build, pkl = seeds[data.draw(st.integers(0, len(seeds) - 1))]
    pkl = bytearray(pkl)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(pkl) - 1))
        how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if how == "flip":
            pkl[at] = data.draw(st.integers(0, 255))
        elif how == "insert":
            pkl[at:at] = data.draw(st.binary(min_size=1, max_size=9))
        else:
            del pkl[at: at + data.draw(st.integers(1, 9))]
    path = _FUZZ_DIR / f"mutated-{layout}.pt"
    path.write_bytes(build(bytes(pkl)))

    def read_safely():
        with open(path, "rb") as f:
            obj, walker = read_torch_safely(f, "zip" if layout == "zip" else "pickle", path.name)
        recover(obj, list(walker.named))

    _bounded(read_safely)  # the safe reader itself: bounded in time and memory
    assert not marker.exists()
    t0 = time.perf_counter()
    try:  # and the whole load (torch.load first; its C unpickler's allocations are torch's own)
        load(path, device="cpu")
    except LoadError:
        pass
    assert time.perf_counter() - t0 < 3
    assert not marker.exists()


# -- recovering what real checkpoints carry ----------------------------------------------------------
@pytest.mark.parametrize("legacy, protocol", [(False, 2), (True, 2), (True, 1), (False, 4), (True, 5)])
def test_training_checkpoint_with_config_class_and_torch_version(tmp_path, legacy, protocol):
    """Also in the pickle protocols torch.save can be asked for (1: copyreg._reconstructor and a
    text magic number; 4/5: frames, STACK_GLOBAL, MEMOIZE).  Protocol 0 writes persistent ids as
    text, which torch itself cannot read back."""
    m = make(seed=5, kind=nn.RNN, nonlinearity="relu")
    p = tmp_path / "train.pt"
    torch.save({"config": TrainConfig(), "torch_version": torch.__version__, "epoch": 3,
                "args": argparse.Namespace(seq_len=50), "model": m.state_dict()}, p,
               _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    with pytest.raises(Exception):  # torch's own safe loader refuses it: what this is about
        torch.load(p, weights_only=True)
    model = load(p, device="cpu")
    notes = model.info()["notes"]
    assert f"stood in for: {TrainConfig.__module__}.TrainConfig, torch.torch_version.TorchVersion" in notes
    # the config's fields were read: relu (not the assumed tanh) came from the dataclass
    assert model.config.cell == "rnn_relu" and "assumed" not in model.info()["nonlinearity"]
    check_outputs(model, m, atol=0)


def test_recovered_values_are_plain(tmp_path):
    p = tmp_path / "train.pt"
    torch.save({"config": TrainConfig(), "torch_version": torch.__version__, "loss": np.float32(1.5),
                "vocab": np.array(CHARS), "hook": Trap(), "w": torch.ones(2)}, p)
    with open(p, "rb") as f:
        obj, walker = read_torch_safely(f, "zip", "train.pt")
    rec = recover(obj, list(walker.named))
    assert rec.obj["config"] == dataclasses.asdict(TrainConfig())
    assert rec.obj["torch_version"] == torch.__version__ and type(rec.obj["torch_version"]) is str
    assert rec.obj["loss"] == 1.5 and rec.obj["vocab"] == CHARS
    assert isinstance(rec.obj["hook"], StoodIn) and rec.obj["hook"].qualified.endswith("Trap")
    assert torch.equal(rec.obj["w"], torch.ones(2)) and rec.tensors == 1
    assert "numpy.core.multiarray._reconstruct" not in rec.stood_in  # data, not stood in for


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Linear(4, 2, bias=False)))
        self.rnn = nn.GRU(2, 5, 2, bidirectional=True)
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_parameter("unused", None)
        self.tied = self.body[0]  # the same module twice: named under both, as state_dict() does


@pytest.mark.parametrize("legacy", [False, True])
def test_whole_module_names_are_exactly_state_dict_names(tmp_path, legacy):
    torch.manual_seed(6)
    m = Nested()
    p = tmp_path / "nested.pt"
    torch.save(m, p, _use_new_zipfile_serialization=not legacy)
    with open(p, "rb") as f:
        obj, walker = read_torch_safely(f, "pickle" if legacy else "zip", "nested.pt")
    rec = recover(obj, list(walker.named))
    got, want = rec.obj["state_dict"], m.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert rec.modules == [f"{Nested.__module__}.Nested"]


@pytest.mark.parametrize("legacy", [False, True])
def test_whole_char_rnn_module_loads_and_runs_like_itself(tmp_path, legacy):
    m = make(seed=7)
    p = tmp_path / "char_rnn.pt"
    torch.save(m, p, _use_new_zipfile_serialization=not legacy)
    model = load(p, device="cpu")
    notes = model.info()["notes"]
    assert "whole pickled module" in notes and "CharRNN" in notes
    assert model.tokenizer is not None and model.tokenizer.pieces == CHARS  # its .chars attribute
    check_outputs(model, m)


# -- a PyTorch 0.4 whole-module pickle, written as torch 0.4 wrote it (tests/torch04_pickles.py) -----
def test_pytorch_04_whole_module_pickle_is_recovered(tmp_path):
    m = make(seed=8)
    p = tmp_path / "char_rnn_0.4.pt"
    torch04_save(m, p)
    with open(p, "rb") as f:
        obj, walker = read_torch_safely(f, "pickle", p.name)
    rec = recover(obj, list(walker.named))
    assert list(rec.obj["state_dict"]) == list(m.state_dict())  # torch 2 names, in torch 2's order
    assert "torch.nn.backends.thnn.THNNFunctionBackend" in rec.stood_in
    model = load(p, device="cpu")
    assert "__main__.CharRNN" in model.info()["notes"]
    check_outputs(model, m)


def test_no_module_of_the_file_was_imported(tmp_path):
    """Reading names modules that are not imported (the stand-ins never look anything up)."""
    p = tmp_path / "m.pt"
    body, build = zip_checkpoint({"w": torch.zeros(2)})
    name = "seqscope_never_imported_module"
    p.write_bytes(build(data_pickle(glob(name, "Thing") + EMPTY_TUPLE + REDUCE, body)))
    with open(p, "rb") as f:
        read_torch_safely(f, "zip", "m.pt")
    assert name not in sys.modules
    assert not os.path.exists(name)
