"""engine.load against bad files: pickles with code, truncated and random bytes, shapes and keys
that do not fit, a vocabulary larger than the embedding.  Each is loaded faithfully or refused
in one sentence that says why and what to do."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import LoadError
from engine.loading import load

from torch_modules import CHARS, V, CharRNN, check_exact, ids_for, make


# -- bad files ---------------------------------------------------------------------------


class Payload:
    """Unpickling this would run a shell command."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_never_run(tmp_path):
    """Code a pickle names is stood in for, never run: the weights beside it load (the notes say
    what was stood in for); a pickle with nothing but code is refused in words.  Every opcode
    route is tested in tests/test_safe_unpickle.py."""
    marker = tmp_path / "PWNED"
    Payload.marker = str(marker)
    m = make(CharRNN, seed=23)
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": m.state_dict(), "hook": Payload()}, p)
    model = load(p, device="cpu")
    assert not marker.exists()
    assert "stood in for: posix.system" in model.info()["notes"]
    check_exact(model, m, ids_for(), last_layer=1)

    # NumPy values are accepted as data, and code hidden inside an object array is not run
    hidden = tmp_path / "evil_in_array.pt"
    torch.save({"state_dict": m.state_dict(), "loss": np.float32(1.0),
                "vocab": np.array([Payload()], dtype=object)}, hidden)
    model = load(hidden, device="cpu")
    assert not marker.exists()
    assert "posix.system" in model.info()["notes"] and "vocabulary" in model.info()["notes"]
    assert model.tokenizer is None

    raw = tmp_path / "evil_raw.pkl.pt"  # plain pickle.dump, protocol 4
    import pickle

    raw.write_bytes(pickle.dumps(Payload(), protocol=4))
    with pytest.raises(LoadError) as info:
        load(raw, device="cpu")
    msg = str(info.value)
    assert "pickled Python code" in msg and "posix.system" in msg and "Nothing in the file was run" in msg
    assert "state_dict()" in msg and "safetensors" in msg  # how to re-save
    assert not marker.exists()


def test_numpy_values_and_namespace_args_are_data(tmp_path):
    """Real checkpoints carry a NumPy loss, a NumPy vocabulary, argparse args: not code."""
    import argparse

    m = make(CharRNN, seed=27, kind=nn.RNN, nonlinearity="relu")
    p = tmp_path / "train.pt"
    torch.save({"model": m.state_dict(), "loss": np.float32(1.5), "step": np.int64(300),
                "vocab": np.array(CHARS), "args": argparse.Namespace(model="rnn_relu", hidden_size=16)}, p)
    model = load(p, device="cpu")
    assert model.tokenizer.pieces == CHARS
    assert model.config.cell == "rnn_relu"
    check_exact(model, m, ids_for(), last_layer=1)


def test_whole_model_pickle_is_read_as_its_state_dict(tmp_path):
    m = make(CharRNN, seed=21)
    p = tmp_path / "whole.pt"
    torch.save(m, p)
    model = load(p, device="cpu")
    assert "CharRNN" in model.info()["notes"] and "state dict" in model.info()["notes"]
    check_exact(model, m, ids_for(), last_layer=1)


def test_truncated_pt(tmp_path):
    m = make(CharRNN, seed=22)
    p = tmp_path / "full.pt"
    torch.save(m.state_dict(), p)
    data = p.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="truncated"):
        load(cut, device="cpu")
    legacy = tmp_path / "legacy.pt"
    torch.save(m.state_dict(), legacy, _use_new_zipfile_serialization=False)
    cut2 = tmp_path / "legacy_cut.pt"
    cut2.write_bytes(legacy.read_bytes()[:200])
    with pytest.raises(LoadError, match="truncated"):
        load(cut2, device="cpu")
    # the legacy format itself loads
    check_exact(load(legacy, device="cpu"), m, ids_for(), last_layer=1)


def test_truncated_safetensors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "model.safetensors"
    save_file(make(CharRNN, seed=23).state_dict(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(LoadError, match="truncated"):
        load(p, device="cpu")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    data = bytearray(rng.bytes(4096))
    data[0] = 0x37  # not a pickle opcode, not a zip/safetensors header
    p = tmp_path / "noise.pt"
    p.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="not a PyTorch checkpoint or safetensors file"):
        load(p, device="cpu")
    data[0] = 0x80  # looks like a pickle; the rest is noise
    p.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="not a readable PyTorch checkpoint: the data is corrupted"):
        load(p, device="cpu")


def test_empty_and_missing(tmp_path):
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        load(p, device="cpu")
    with pytest.raises(LoadError, match="no such file"):
        load(tmp_path / "nope.pt", device="cpu")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hi")
    with pytest.raises(LoadError, match="no model weights"):
        load(tmp_path / "folder", device="cpu")


def test_shape_mismatch_with_explicit_config(tmp_path):
    m = make(CharRNN, seed=24, hidden=64)
    p = tmp_path / "m.pt"
    torch.save(m.state_dict(), p)
    with pytest.raises(LoadError) as info:
        load(p, config={"hidden_size": 32}, device="cpu")
    msg = str(info.value)
    assert "shape mismatch" in msg
    assert "rnn.weight_hh_l0" in msg and "[256, 64]" in msg and "[128, 32]" in msg
    assert "'hidden_size': 32" in msg and "hidden_size=64" in msg
    with pytest.raises(LoadError, match="unknown entries hiden_size"):
        load(p, config={"hiden_size": 64}, device="cpu")
    # a complete, correct StackConfig works
    cfg = load(p, device="cpu").config
    check_exact(load(p, config=cfg, device="cpu"), m, ids_for(), last_layer=1)


def test_unknown_keys(tmp_path):
    p = tmp_path / "mystery.pt"
    g = torch.Generator().manual_seed(0)
    torch.save({"foo.kernel": torch.randn(8, 4, generator=g), "foo.recurrent_kernel": torch.randn(8, 8, generator=g),
                "bar": torch.randn(8, generator=g)}, p)
    with pytest.raises(LoadError) as info:
        load(p, device="cpu")
    msg = str(info.value)
    assert "cannot work out the architecture" in msg
    assert "foo.kernel [8, 4]" in msg and "foo.recurrent_kernel" in msg  # what was found
    assert "weight_ih_l0" in msg and "torch.nn.LSTM" in msg  # what was expected
    assert "unused" in msg.lower()
    assert "engine.load(path, config=" in msg and "--config config.json" in msg


def test_many_keys_are_abbreviated(tmp_path):
    p = tmp_path / "many.pt"
    torch.save({f"block{k}.w": torch.zeros(2, 2) for k in range(40)}, p)
    with pytest.raises(LoadError, match=r"and 28 more"):
        load(p, device="cpu")


def test_extra_layer_is_an_error_when_strict(tmp_path):
    class WithNorm(CharRNN):  # a norm as wide as the input might act before the LSTM
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)

    m = make(WithNorm, seed=25)
    p = tmp_path / "norm.pt"
    torch.save(m.state_dict(), p)
    with pytest.raises(LoadError) as info:
        load(p, device="cpu")
    msg = str(info.value)
    assert "left unused" in msg and "norm.weight [8]" in msg and "norm.bias" in msg and "strict=False" in msg
    loose = load(p, device="cpu", strict=False)
    assert "norm.weight" in loose.info()["notes"]


def test_vocab_larger_than_embedding(tmp_path):
    m = make(CharRNN, seed=26)
    p = tmp_path / "m.pt"
    torch.save({"model": m.state_dict(), "vocab": CHARS + ["x", "y"]}, p)
    with pytest.raises(LoadError, match=f"has {V + 2} entries but the embedding has only {V} rows"):
        load(p, device="cpu")
    assert load(p, device="cpu", strict=False).tokenizer is None


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(LoadError, match="not a state dict"):
        load(p, device="cpu")
    j = tmp_path / "x.pt"
    j.write_text('{"a": 1}')
    with pytest.raises(LoadError, match="JSON"):
        load(j, device="cpu")
