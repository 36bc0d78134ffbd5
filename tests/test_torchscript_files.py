"""TorchScript archives (engine/loading/torchscript_files.py): the tensors of a torch.jit.script /
torch.jit.trace archive are read without torch.jit.load and without running or importing anything
the archive names, and load like a state dict.  Each model is compared with the torch module it
was saved from (float32 on both sides, atol 1e-5); tampered archives create no marker file."""
from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.errors import LoadError
from test_safe_unpickle import extensions, really_runs, routes  # noqa: F401  (extensions: a fixture)

ATOL = 1e-5
#: torch.jit.script / trace / freeze warn that they are deprecated; they still write the archives users have
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


class CharLSTM(nn.Module):
    def __init__(self, buffer: bool = False):
        super().__init__()
        self.chars: List[str] = list("abcdefg ")
        self.emb = nn.Embedding(8, 5)
        self.rnn = nn.LSTM(5, 6, num_layers=2)
        self.head = nn.Linear(6, 8)
        if buffer:
            self.register_buffer("scale", torch.ones(3))

    def forward(self, ids):
        y, _ = self.rnn(self.emb(ids)[:, None])
        return self.head(y[:, 0]), y[:, 0]


class BiGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4, bidirectional=True, batch_first=True)

    def forward(self, x):
        return self.gru(x[None])[0][0]


class CellStack(nn.Module):
    """Two LSTMCells in a ModuleList and a head, stepped by hand as many real models do."""

    def __init__(self):
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(3, 6), nn.LSTMCell(6, 6)])
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = [torch.zeros(1, 6), torch.zeros(1, 6)]
        c = [torch.zeros(1, 6), torch.zeros(1, 6)]
        ys, hs = [], []
        for t in range(x.shape[0]):
            inp = x[t:t + 1]
            i = 0
            for cell in self.cells:
                h[i], c[i] = cell(inp, (h[i], c[i]))
                inp = h[i]
                i += 1
            ys.append(self.out(inp))
            hs.append(inp)
        return torch.cat(ys), torch.cat(hs)


def _made(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return module.eval()


def _save_script(module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


@pytest.fixture
def no_torchscript_runtime(monkeypatch):
    """Any route into TorchScript's loader (or torch.load, which hands TorchScript zips to it) fails."""
    def refuse(*a, **k):
        pytest.fail("the TorchScript runtime was asked to load the archive")
    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module_from_buffer", refuse)


def _check_char_lstm(model, module, ids):
    trace = engine.run(model, ids, probes=["layers.1.h", "logits"])
    with torch.no_grad():
        logits, y = module(torch.as_tensor(ids))
    np.testing.assert_allclose(np.asarray(trace["layers.1.h"]).reshape(len(ids), 6), y.numpy(), atol=ATOL)
    np.testing.assert_allclose(trace["logits"], logits.numpy(), atol=ATOL)


@pytest.mark.parametrize("how", ["script", "trace", "lite"])
def test_embedding_lstm_head_loads_exactly_with_its_vocabulary(tmp_path, how, no_torchscript_runtime):
    """Scripted, traced, and scripted for PyTorch Mobile's lite interpreter (a .ptl with bytecode.pkl)."""
    module = _made(CharLSTM(), 0)
    ids = np.array([0, 3, 7, 1, 1, 5, 2, 6, 4])
    path = tmp_path / f"{how}.pt"
    if how == "script":
        torch.jit.script(module).save(str(path))
    elif how == "lite":
        torch.jit.script(module)._save_for_lite_interpreter(str(path))
    else:
        torch.jit.trace(module, torch.as_tensor(ids)).save(str(path))
    model = engine.load(path, device="cpu")  # strict: every tensor in the archive is used
    assert (model.config.cell, model.config.num_layers, model.config.vocab_size) == ("lstm", 2, 8)
    assert model.config.output_size == 8
    notes = model.load_info["notes"]
    assert "TorchScript archive" in notes and "its code (the forward) was not read" in notes
    assert "torch.nn.modules.rnn.LSTM" in notes
    assert model.load_info["format"] == "torchscript"
    _check_char_lstm(model, module, ids)
    if how != "trace":  # the module's own chars attribute is the vocabulary (traced modules drop it)
        assert model.tokenizer is not None
        trace = engine.run(model, "fed cab", probes=["logits"])
        with torch.no_grad():
            logits, _ = module(torch.as_tensor(["abcdefg ".index(ch) for ch in "fed cab"]))
        np.testing.assert_allclose(trace["logits"], logits.numpy(), atol=ATOL)


def test_bidirectional_gru_with_numeric_inputs(tmp_path, no_torchscript_runtime):
    """Also as a folder holding one ``.jit`` file (silero-vad names its archive so)."""
    module = _made(BiGRU(), 1)
    _save_script(module, tmp_path / "bi.jit")
    model = engine.load(tmp_path, device="cpu")
    assert (model.config.cell, model.config.bidirectional, model.config.input_size) == ("gru", True, 3)
    x = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    trace = engine.run(model, x, probes=["layers.0.h"])
    with torch.no_grad():
        h = module(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(11, 8), h.numpy(), atol=ATOL)


def test_lstm_cell_stack_in_a_module_list(tmp_path, no_torchscript_runtime):
    module = _made(CellStack(), 2)
    model = engine.load(_save_script(module, tmp_path / "cells.pt"), device="cpu")
    assert (model.config.cell, model.config.num_layers, model.config.output_size) == ("lstm", 2, 2)
    x = np.random.default_rng(1).normal(size=(13, 3)).astype(np.float32)
    trace = engine.run(model, x, probes=["layers.1.h", "logits"])
    with torch.no_grad():
        out, h = module(torch.from_numpy(x))
    np.testing.assert_allclose(np.asarray(trace["layers.1.h"]).reshape(13, 6), h.numpy(), atol=ATOL)
    np.testing.assert_allclose(trace["logits"], out.numpy(), atol=ATOL)


def test_a_tensor_the_model_does_not_use_is_refused_under_strict(tmp_path):
    module = _made(CharLSTM(buffer=True), 3)
    path = _save_script(module, tmp_path / "extra.pt")
    with pytest.raises(LoadError, match=r"1 tensor in the file would be left unused: scale \[3\]"):
        engine.load(path, device="cpu")
    model = engine.load(path, device="cpu", strict=False)
    assert "unused tensors (strict=False): scale [3]" in model.load_info["notes"]
    _check_char_lstm(model, module, np.array([1, 2, 3, 4]))


def test_a_frozen_module_whose_weights_are_constants_is_refused_in_words(tmp_path, no_torchscript_runtime):
    path = tmp_path / "frozen.pt"
    torch.jit.freeze(torch.jit.script(_made(CellStack(), 4))).save(str(path))
    with pytest.raises(LoadError, match=r"frozen\.pt is a TorchScript archive whose weights were folded into its "
                                        r"code as \d+ constant tensor\(s\) \(torch\.jit\.freeze"):
        engine.load(path, device="cpu")


def _rewritten(path: Path, out: Path, change) -> Path:
    """A copy of the archive at ``path`` with each entry's bytes passed through ``change(name, data)``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info.filename)))
    return out


def _with_attribute(data: bytes, ops: bytes) -> bytes:
    """data.pkl with an attribute ``evil`` holding ``ops``, set first on the top module (before any
    tensor is rebuilt, so a real unpickler would reach it)."""
    first_mark = next(pos for op, _arg, pos in pickletools.genops(data) if op.name == "MARK")
    key = "evil".encode()
    return data[:first_mark + 1] + b"X" + len(key).to_bytes(4, "little") + key + ops + data[first_mark + 1:]


def test_tampered_archives_run_nothing(tmp_path, no_torchscript_runtime, extensions):  # noqa: F811
    """data.pkl given every opcode route to code (os.system, builtins.exec, posix.system …) and
    code/ rewritten to call os.system: no marker file, and each archive loads exactly or is
    refused in one sentence."""
    module = _made(CharLSTM(), 5)
    clean = _save_script(module, tmp_path / "clean.pt")
    marker = tmp_path / "PWNED"
    evil_code = f"import os\nos.system('touch {marker}')\n".encode()
    posix = b"cposix\nsystem\n(X" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() + b"tR"
    all_routes = dict(routes(marker), **{"GLOBAL+REDUCE posix.system": posix})
    for route, ops in all_routes.items():
        assert really_runs(b"\x80\x02" + ops + b".", marker), f"{route}: the control does not run"

        def change(name, data, ops=ops):
            if name.endswith("/data.pkl"):
                return _with_attribute(data, ops)
            return evil_code if "/code/" in name and name.endswith(".py") else data

        path = _rewritten(clean, tmp_path / f"evil-{len(list(tmp_path.iterdir()))}.pt", change)
        try:
            model = engine.load(path, device="cpu")
        except LoadError as exc:
            assert "nothing in it was imported or run" in str(exc), (route, exc)
            assert "\n" not in str(exc)
        else:
            assert "which TorchScript itself does not write; stood in for, never imported or run" in \
                model.load_info["notes"], route
            _check_char_lstm(model, module, np.array([6, 5, 4, 0]))
        assert not marker.exists(), route


def test_an_archive_of_no_module_or_no_tensors_or_of_pytorch_1_0_is_refused(tmp_path):
    clean = _save_script(_made(BiGRU(), 6), tmp_path / "clean.pt")
    not_a_module = _rewritten(clean, tmp_path / "list.pt",
                              lambda n, d: b"\x80\x02]q\x00." if n.endswith("/data.pkl") else d)
    with pytest.raises(LoadError, match=r"list\.pt is a TorchScript archive whose data\.pkl does not hold a module"):
        engine.load(not_a_module, device="cpu")
    old = tmp_path / "old.pt"
    with zipfile.ZipFile(old, "w") as z:  # PyTorch 1.0's layout: model.json, code/, tensors/
        for entry in ("old/model.json", "old/code/old.py", "old/tensors/0"):
            z.writestr(entry, b"{}")
    with pytest.raises(LoadError, match=r"old\.pt is a TorchScript archive in the format of PyTorch 1\.0 to 1\.2"):
        engine.load(old, device="cpu")
    torch.jit.script(nn.ReLU()).save(str(tmp_path / "relu.pt"))
    with pytest.raises(LoadError, match=r"relu\.pt is a TorchScript archive whose modules hold no tensors"):
        engine.load(tmp_path / "relu.pt", device="cpu")


def _script_object_pickle(levels: int, per_level: int, attribute: str) -> bytes:
    """data.pkl of ``__torch__`` objects each holding the one below ``per_level`` times: cheap to
    pickle (the memo shares them), per_level**levels paths to walk."""
    def text(t: str) -> bytes:
        return b"X" + len(t.encode()).to_bytes(4, "little") + t.encode()

    out = b"\x80\x02" + b"c__torch__\nM\n)\x81}b" + b"q\x00"  # level 0: an object of nothing
    for k in range(1, levels + 1):
        refs = b"".join(text(f"{attribute}{j}") + b"h" + bytes([k - 1]) for j in range(per_level))
        out += b"0c__torch__\nM\n)\x81}(" + refs + b"ub" + b"q" + bytes([k])  # POP the level below, then this
    return out + b"."


@pytest.mark.parametrize("shape", ["modules", "lists"])
def test_shared_objects_are_not_walked_exponentially(tmp_path, shape):
    """40 levels of objects sharing the level below, twice (2**40 paths): refused in one sentence,
    in bounded time, whether they are modules or lists (both walked for tensors)."""
    clean = _save_script(_made(BiGRU(), 7), tmp_path / "clean.pt")
    if shape == "modules":
        data = _script_object_pickle(40, 2, "m")
    else:  # the top module's attribute: a list holding one list twice, 40 deep
        nested = b"]q\x00" + b"".join(b"0(h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"lq" + bytes([k])
                                      for k in range(1, 41))
        data = b"\x80\x02c__torch__\nM\n)\x81}(X\x05\x00\x00\x00vocab" + nested + b"ub."
    path = _rewritten(clean, tmp_path / f"{shape}.pt", lambda n, d: data if n.endswith("/data.pkl") else d)
    with pytest.raises(LoadError, match=rf"{shape}\.pt holds more than 200,000 modules and attributes \(counting "
                                        r"shared ones at each use\)"):
        engine.load(path, device="cpu")


class WithTensorList(nn.Module):
    """A GRU whose module also keeps a list of tensors of its own (not parameters)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 4)
        self.table: List[torch.Tensor] = [torch.ones(2, 2), torch.zeros(5)]

    def forward(self, x):
        return self.gru(x)[0] + self.table[0].sum()


def test_tensors_in_a_list_attribute_are_accounted_for_not_skipped(tmp_path):
    """The GRU's own _flat_weights list (its parameters again) adds nothing; the module's table does."""
    path = _save_script(_made(WithTensorList(), 8), tmp_path / "table.pt")
    with pytest.raises(LoadError, match=r"2 tensors in the file would be left unused: table\.0 \[2, 2\], "
                                        r"table\.1 \[5\]"):
        engine.load(path, device="cpu")


def test_a_quantized_archive_is_refused_in_words(tmp_path):
    path = tmp_path / "quantized.pt"
    module = torch.ao.quantization.quantize_dynamic(_made(CharLSTM(), 9), {nn.Linear}, dtype=torch.qint8)
    torch.jit.script(module).save(str(path))
    with pytest.raises(LoadError, match=r"quantized\.pt is a TorchScript archive of a quantized model \(it holds "
                                        r"torch\._utils\._rebuild_qtensor, torch\.QInt8Storage\)"):
        engine.load(path, device="cpu")


@pytest.mark.parametrize("stem", ["code", "constants", "data", "npz"])
def test_a_checkpoint_named_like_an_archive_entry_is_no_torchscript(tmp_path, stem):
    """torch.save names the zip's folder after the file: code.pt holds code/data.pkl, not code; an
    .npz may hold arrays under a folder named code."""
    module = _made(CharLSTM(), 10)
    if stem == "npz":
        path = tmp_path / "weights.npz"
        np.savez(path, **{f"m/code/{k}": v.numpy() for k, v in module.state_dict().items()})
    else:
        path = tmp_path / f"{stem}.pt"
        torch.save(module.state_dict(), path)
    model = engine.load(path, device="cpu")
    assert model.load_info["format"] == ("npz" if stem == "npz" else "pytorch")
    assert "TorchScript" not in model.load_info.get("notes", "")
    _check_char_lstm(model, module, np.array([2, 4, 6]))


class ReluRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 5, 2, nonlinearity="relu")

    def forward(self, x):
        return self.rnn(x[:, None])[0][:, 0]


class CellLoop(nn.Module):
    """Two GRUCells or two relu RNNCells, stepped by hand."""

    def __init__(self, kind: str):
        super().__init__()
        make = (lambda i: nn.GRUCell(i, 4)) if kind == "gru" else (lambda i: nn.RNNCell(i, 4, nonlinearity="relu"))
        self.cells = nn.ModuleList([make(3), make(4)])

    def forward(self, x):
        h = [torch.zeros(1, 4), torch.zeros(1, 4)]
        hs = []
        for t in range(x.shape[0]):
            inp = x[t:t + 1]
            i = 0
            for cell in self.cells:
                h[i] = cell(inp, h[i])
                inp = h[i]
                i += 1
            hs.append(inp)
        return torch.cat(hs)


@pytest.mark.parametrize("kind", ["rnn", "gru_cells", "relu_cells"])
def test_elman_relu_and_gru_cell_stacks(tmp_path, kind, no_torchscript_runtime):
    """An nn.RNN's relu, which its weights cannot show, is read from the archive's module; an
    nn.RNNCell's is compiled into the code, which is not read: assumed tanh, said, and given."""
    module = _made({"rnn": ReluRNN, "gru_cells": lambda: CellLoop("gru"),
                    "relu_cells": lambda: CellLoop("relu")}[kind](), 11)
    path = _save_script(module, tmp_path / f"{kind}.pt")
    model = engine.load(path, device="cpu")
    if kind == "relu_cells":
        assert model.config.cell == "rnn_tanh" and "nonlinearity tanh (assumed" in model.load_info["notes"]
        model = engine.load(path, device="cpu", config={"nonlinearity": "relu"})
    cell = {"rnn": "rnn_relu", "gru_cells": "gru", "relu_cells": "rnn_relu"}[kind]
    assert (model.config.cell, model.config.num_layers) == (cell, 2)
    if kind == "rnn":
        assert "Elman RNN nonlinearity relu (from the TorchScript archive's RNN modules)" in model.load_info["notes"]
    x = np.random.default_rng(2).normal(size=(9, 3)).astype(np.float32)
    trace = engine.run(model, x, probes=["layers.1.h"])
    with torch.no_grad():
        h = module(torch.from_numpy(x))
    width = h.shape[1]
    np.testing.assert_allclose(np.asarray(trace["layers.1.h"]).reshape(9, width), h.numpy(), atol=ATOL)


def test_elman_modules_of_different_nonlinearities_are_named_in_the_notes(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnns = nn.ModuleList([nn.RNN(3, 4), nn.RNN(4, 4, nonlinearity="relu")])

        def forward(self, x):
            for rnn in self.rnns:
                x = rnn(x)[0]
            return x

    model = engine.load(_save_script(_made(Two(), 12), tmp_path / "two.pt"), device="cpu")
    assert "Elman RNN modules use different nonlinearities (rnns.0 tanh, rnns.1 relu)" in model.load_info["notes"]


def test_a_vocabulary_saved_as_an_extra_file_is_attached(tmp_path):
    """torch.jit.save(..., _extra_files={"vocab.json": ...}): traced modules keep no attributes,
    so that is where a vocabulary goes; a config.json that is not JSON is noted, not fatal."""
    import json

    module = _made(CharLSTM(), 13)
    path = tmp_path / "traced.pt"
    torch.jit.trace(module, torch.tensor([0, 1, 2])).save(
        str(path), _extra_files={"vocab.json": json.dumps(list("abcdefg ")), "config.json": "{not json"})
    model = engine.load(path, device="cpu")
    notes = model.load_info["notes"]
    assert "its extra file vocab.json read as its vocab" in notes
    assert "its extra file config.json was not read (traced.pt's extra file config.json is not valid JSON" in notes
    trace = engine.run(model, "bad egg", probes=["logits"])
    with torch.no_grad():
        logits, _ = module(torch.as_tensor(["abcdefg ".index(ch) for ch in "bad egg"]))
    np.testing.assert_allclose(trace["logits"], logits.numpy(), atol=ATOL)
