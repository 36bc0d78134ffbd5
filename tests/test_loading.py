"""engine.load against files written the way people write them with plain PyTorch, and
against bad files.  Every good file must reproduce the original module's outputs exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.errors import LoadError
from engine.loading import load, save_model
from engine.models.stack import StackConfig
from engine.tokenizers import CharVocab, FileTokenizer

from torch_modules import CHARS, T, V, CellStack, CharRNN, check_exact, ids_for, make, t



# -- PyTorch state dicts -----------------------------------------------------------------


def test_bare_state_dict_char_lstm(tmp_path):
    m = make(CharRNN)
    p = tmp_path / "char_lstm.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    cfg = model.config
    assert (cfg.cell, cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.vocab_size, cfg.output_size) == (
        "lstm", 2, 16, 8, V, V)
    assert model.tokenizer is None
    assert model.info()["format"] == "pytorch"
    trace = check_exact(model, m, ids_for(), last_layer=1)
    # layer 0 as well: a one-layer nn.LSTM with the file's first-layer weights
    first = nn.LSTM(8, 16, 1)
    first.load_state_dict({k.replace("rnn.", ""): v for k, v in m.state_dict().items() if k.endswith("_l0")})
    with torch.no_grad():
        y0, _ = first(m.embedding(ids_for())[:, None])
    assert torch.equal(t(trace["layers.0.h"]), y0[:, 0])
    assert isinstance(engine.load(p, device="cpu").config, StackConfig)  # the public entry point


def test_checkpoint_dict_with_vocab_config_epoch_optimizer(tmp_path):
    m = make(CharRNN, seed=3)
    opt = torch.optim.Adam(m.parameters())
    m(ids_for()[None])[0].sum().backward()
    opt.step()  # the optimizer now holds tensors shaped like the parameters: they must be ignored
    m.eval()
    stoi = {c: i for i, c in enumerate(CHARS)}
    p = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, "model_state_dict": m.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "stoi": stoi, "config": {"hidden_size": 16, "n_layers": 2, "rnn_type": "LSTM"}, "loss": 1.25}, p)
    model = load(p, device="cpu")
    assert isinstance(model.tokenizer, CharVocab)
    assert model.tokenizer.pieces == CHARS
    text = "bad cafe jig"
    ids = torch.tensor([stoi[c] for c in text])
    trace = check_exact(model, m, ids, last_layer=1)
    by_text = engine.run(model, text)
    assert np.array_equal(by_text["logits"], trace["logits"])
    assert by_text.text() == text
    assert model.info()["weights_from"] == "model_state_dict"


@pytest.mark.parametrize("prefix,container,suffix", [
    ("module.", None, ".pt"),  # DataParallel
    ("_orig_mod.", "state_dict", ".ckpt"),  # torch.compile, Lightning-style wrapper
    ("model.encoder.", "net", ".bin"),
    ("module._orig_mod.", "model", ".pth"),
])
def test_prefixes_and_wrappers(tmp_path, prefix, container, suffix):
    m = make(CharRNN, seed=4)
    sd = {prefix + k: v for k, v in m.state_dict().items()}
    obj = sd if container is None else {container: sd, "itos": {i: c for i, c in enumerate(CHARS)}, "epoch": 1}
    p = tmp_path / ("weights" + suffix)
    torch.save(obj, p)
    model = load(p, device="cpu")
    check_exact(model, m, ids_for(), last_layer=1)
    if container is not None:
        assert model.tokenizer.pieces == CHARS


def test_gru(tmp_path):
    m = make(CharRNN, seed=5, kind=nn.GRU, layers=3)
    p = tmp_path / "gru.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert model.config.cell == "gru" and model.config.num_layers == 3
    check_exact(model, m, ids_for(), last_layer=2)


def test_rnn_relu_from_stored_config_and_tanh_assumed(tmp_path):
    m = make(CharRNN, seed=6, kind=nn.RNN, nonlinearity="relu")
    with_cfg = tmp_path / "rnn_relu.pt"
    torch.save({"state_dict": m.state_dict(), "hparams": {"nonlinearity": "relu", "hidden": 16}}, with_cfg)
    model = load(with_cfg, device="cpu")
    assert model.config.cell == "rnn_relu"
    assert model.info()["nonlinearity"] == "relu"
    check_exact(model, m, ids_for(), last_layer=1)

    bare = tmp_path / "rnn_bare.pt"
    torch.save(m.state_dict(), bare)
    assumed = load(bare, device="cpu")
    assert assumed.config.cell == "rnn_tanh"
    info = assumed.info()
    assert info["nonlinearity"] == "tanh (assumed)"
    assert "cannot tell tanh from relu" in info["notes"]
    # and the assumption matters: tanh gives other numbers than the relu model
    trace = engine.run(assumed, ids_for().numpy())
    with torch.no_grad():
        logits, _ = m(ids_for()[None])
    assert not torch.equal(t(trace["logits"]), logits[0])
    # an explicit config settles it
    fixed = load(bare, config={"nonlinearity": "relu"}, device="cpu")
    assert fixed.config.cell == "rnn_relu"
    check_exact(fixed, m, ids_for(), last_layer=1)


def test_bidirectional_lstm(tmp_path):
    m = make(CharRNN, seed=7, bidirectional=True)
    p = tmp_path / "bilstm.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert model.config.bidirectional and model.config.output_size == V
    check_exact(model, m, ids_for(), last_layer=1)


def test_lstm_with_projection(tmp_path):
    m = make(CharRNN, seed=8, hidden=16, proj_size=6)
    p = tmp_path / "proj.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert model.config.proj_size == 6 and model.config.hidden_size == 16
    check_exact(model, m, ids_for(), last_layer=1)


def test_numeric_input_lstm_without_embedding(tmp_path):
    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 10, 2, batch_first=True)
            self.out = nn.Linear(10, 1)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.out(y), y

    m = make(Regressor, seed=9)
    p = tmp_path / "regressor.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert not model.takes_tokens and model.config.vocab_size is None and model.config.input_size == 3
    x = torch.randn(T, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, y = m(x[None])
    trace = engine.run(model, x.numpy())
    assert torch.equal(t(trace["logits"]), out[0])
    assert torch.equal(t(trace["layers.1.h"]), y[0])


def test_without_bias(tmp_path):
    m = make(CharRNN, seed=10, bias=False)
    p = tmp_path / "nobias.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert model.config.bias is False and model.config.head_bias is False
    check_exact(model, m, ids_for(), last_layer=1)


def test_no_head(tmp_path):
    m = make(CharRNN, seed=11, head=False, kind=nn.GRU)
    p = tmp_path / "nohead.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert model.config.output_size is None
    check_exact(model, m, ids_for(), last_layer=1)


@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell])
def test_cell_stack(tmp_path, cell):
    m = make(CellStack, seed=12, cell=cell)
    p = tmp_path / "cells.pt"
    torch.save(m.state_dict(), p)
    model = load(p, device="cpu")
    assert model.config.cell == ("lstm" if cell is nn.LSTMCell else "gru") and model.config.num_layers == 2
    assert set(model.state_dict()) >= {"rnn.weight_ih_l1", "rnn.bias_hh_l1", "embed.weight", "head.weight"}
    ids = ids_for()
    with torch.no_grad():
        logits, y = m(ids)
    trace = engine.run(model, ids.numpy())
    # the cell loop and the fused layer compute the same equations; the input projection is one
    # matmul over all steps in nn.LSTM and one per step in the loop, which may round differently
    torch.testing.assert_close(t(trace["layers.1.h"]), y, rtol=0, atol=1e-6)
    torch.testing.assert_close(t(trace["logits"]), logits, rtol=0, atol=1e-5)


def test_key_map_for_custom_names(tmp_path):
    m = make(CharRNN, seed=13, layers=1)
    sd = m.state_dict()
    names = {"embedding.weight": "E", "rnn.weight_ih_l0": "W_x", "rnn.weight_hh_l0": "W_h",
             "rnn.bias_ih_l0": "b_x", "rnn.bias_hh_l0": "b_h", "fc.weight": "W_y", "fc.bias": "b_y"}
    p = tmp_path / "custom.pt"
    torch.save({names[k]: v for k, v in sd.items()}, p)
    with pytest.raises(LoadError):
        load(p, device="cpu")
    key_map = {new: ("embed.weight" if old.startswith("embedding") else "head." + old.split(".")[1]
                     if old.startswith("fc") else old) for old, new in names.items()}
    model = load(p, config={"key_map": key_map}, device="cpu")
    check_exact(model, m, ids_for(), last_layer=0)


# -- safetensors and folders ------------------------------------------------------------


def test_safetensors_with_metadata(tmp_path):
    from safetensors.torch import save_file

    m = make(CharRNN, seed=14, kind=nn.RNN, nonlinearity="relu")
    p = tmp_path / "model.safetensors"
    save_file(m.state_dict(), p, metadata={"config": json.dumps({"nonlinearity": "relu", "num_layers": 2}),
                                           "vocab": json.dumps(CHARS)})
    model = load(p, device="cpu")
    assert model.info()["format"] == "safetensors"
    assert model.config.cell == "rnn_relu"
    assert model.tokenizer.pieces == CHARS
    check_exact(model, m, ids_for(), last_layer=1)


def test_safetensors_with_config_json_beside(tmp_path):
    from safetensors.torch import save_file

    m = make(CharRNN, seed=15, kind=nn.GRU)
    save_file(m.state_dict(), tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"cell": "gru", "hidden_size": 16}))
    (tmp_path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(CHARS)}))
    model = load(tmp_path / "weights.safetensors", device="cpu")
    assert model.tokenizer.pieces == CHARS
    check_exact(model, m, ids_for(), last_layer=1)


def _char_tokenizer_json(path: Path, chars):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=chars[-1]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.save(str(path))


def test_hf_folder_with_tokenizer_json(tmp_path):
    from safetensors.torch import save_file

    chars = CHARS[:-1] + ["[UNK]"]
    m = make(CharRNN, seed=16)
    folder = tmp_path / "hf_model"
    folder.mkdir()
    save_file(m.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "lstm", "hidden_size": 16, "num_layers": 2,
                                                     "vocab_size": V}))
    _char_tokenizer_json(folder / "tokenizer.json", chars)
    model = load(folder, device="cpu")
    assert isinstance(model.tokenizer, FileTokenizer) and model.tokenizer.vocab_size == V
    text = "jab bead"
    trace = engine.run(model, text)
    ids = torch.tensor([chars.index(c) if c in chars else V - 1 for c in text])  # space -> [UNK]
    assert trace.tokens.tolist() == ids.tolist()
    with torch.no_grad():
        logits, _ = m(ids[None])
    assert torch.equal(t(trace["logits"]), logits[0])


def test_hf_folder_with_pytorch_model_bin(tmp_path):
    m = make(CharRNN, seed=17, kind=nn.GRU)
    torch.save(m.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"rnn_type": "gru"}))
    model = load(tmp_path, device="cpu")
    check_exact(model, m, ids_for(), last_layer=1)


def test_save_model_round_trip(tmp_path):
    m = make(CharRNN, seed=18, kind=nn.RNN, nonlinearity="relu", bidirectional=True)
    p = tmp_path / "ck.pt"
    torch.save({"model": m.state_dict(), "chars": "".join(CHARS), "args": {"nonlinearity": "relu"}}, p)
    first = load(p, device="cpu")
    out = save_model(first, tmp_path / "out" / "seqscope.safetensors")
    assert out.is_file() and not [f for f in out.parent.iterdir() if f.name.endswith(".tmp")]
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["seqscope_config"])["cell"] == "rnn_relu"
    assert json.loads(meta["seqscope_vocab"])["pieces"] == CHARS
    again = load(out, device="cpu")
    assert again.config == first.config
    assert again.tokenizer.pieces == CHARS
    assert again.info()["nonlinearity"] == "relu"
    ids = ids_for().numpy()
    a, b = engine.run(first, ids), engine.run(again, ids)
    for name in a.arrays:
        assert np.array_equal(a[name], b[name]), name
    check_exact(again, m, ids_for(), last_layer=1)


def test_device_default_and_move(tmp_path):
    m = make(CharRNN, seed=19, layers=1)
    p = tmp_path / "m.pt"
    torch.save(m.state_dict(), p)
    model = load(p)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model.to("cpu")
    assert model.device.type == "cpu"
    check_exact(model, m, ids_for(), last_layer=0)
    as64 = load(p, device="cpu", dtype=torch.float64)
    assert engine.run(as64, ids_for().numpy())["logits"].dtype == np.float64


def test_one_hot_model_with_vocab(tmp_path):
    """No embedding, input width = vocabulary size: token ids go in as one-hot rows."""

    class OneHot(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(V, 9, 1, batch_first=True)
            self.decoder = nn.Linear(9, V)

        def forward(self, ids):
            y, _ = self.rnn(nn.functional.one_hot(ids, V).float())
            return self.decoder(y), y

    m = make(OneHot, seed=20)
    p = tmp_path / "onehot.pt"
    torch.save({"state_dict": m.state_dict(), "vocab": CHARS}, p)
    model = load(p, device="cpu")
    assert model.takes_tokens and model.config.vocab_size == V
    assert "one-hot" in model.info()["notes"]
    check_exact(model, m, ids_for(), last_layer=0)
