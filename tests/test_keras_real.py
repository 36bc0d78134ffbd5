"""Keras weight files as their authors published them (tests/data/real/, sources and licences in
SOURCES.md there), loaded by SeqScope and compared step by step with a float64 loop written from
Keras's documented LSTM equations (z = x W + h U + b; i, f, c̃, o = z's four blocks; c = f c + i
act(c̃)... with the file's own activations), within 1e-9 (SeqScope in float64 on the files'
float32 weights, the loop in float64)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import engine

REAL = Path(__file__).parent / "data" / "real"
TOL = 1e-9


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid_keras2(x):
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def _lstm(x, kernel, rec, bias, gate):
    """Keras's LSTM over x [T, F]: every step's h (float64)."""
    u = rec.shape[0]
    h, c, out = np.zeros(u), np.zeros(u), []
    for xt in x:
        z = xt @ kernel + h @ rec + bias
        i, f, g, o = gate(z[:u]), gate(z[u:2 * u]), np.tanh(z[2 * u:3 * u]), gate(z[3 * u:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.asarray(out)


def _from_cudnn(kernel, rec, bias):
    """A CuDNNLSTM's weights as Keras 2 converts them for its LSTM (keras/engine/saving.py,
    ``_convert_rnn_weights``): per gate ``k.T.reshape(k.shape, order='F')`` and ``r.T``, the
    input and recurrent biases summed."""
    k = np.hstack([g.T.reshape(g.shape, order="F") for g in np.hsplit(kernel, 4)])
    r = np.hstack([g.T for g in np.hsplit(rec, 4)])
    return k, r, bias[: bias.size // 2] + bias[bias.size // 2:]


def _datasets(path):
    import h5py

    """``{"<layer>/<weight>": float64 array}`` of a Keras 1/2 file (``model_weights`` of a
    model.save file, the root of a save_weights one)."""
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        out = {}
        root.visititems(lambda n, o: out.__setitem__(n.split("/")[0] + "/" + n.split("/")[-1].split(":")[0],
                                                     np.asarray(o, dtype=np.float64)) if hasattr(o, "shape") else None)
    return out


def test_textgenrnn_cudnn_lstm_weights_and_vocabulary(tmp_path):
    """textgenrnn 2.0.0's bundled model: Keras 2.1.5 save_weights of Embedding(465, 100) → two
    CuDNNLSTM(128) → concatenation → attention → Dense; its vocabulary {char: 1..464} beside it."""
    path = REAL / "keras_textgenrnn" / "textgenrnn_weights.hdf5"
    model = engine.load(path, device="cpu", dtype=torch.float64)
    cfg = model.config
    assert (cfg.cell, cfg.num_layers, cfg.hidden_size, cfg.vocab_size, cfg.output_size) == ("lstm", 2, 128, 465, None)
    notes = model.info()["notes"]
    assert "CuDNNLSTM" in notes and "records no logits" in notes and "'attention'" in notes
    assert model.load_info["vocabulary"] == "textgenrnn_vocab.json"
    text = "Hello, world! Neural networks write text."
    trace = engine.run(model, text)
    assert trace.logits is None
    w = _datasets(path)
    vocab = json.loads((path.parent / "textgenrnn_vocab.json").read_text())  # {char: 1..464}, as textgenrnn encodes
    ids = [vocab[c] for c in text]
    np.testing.assert_array_equal(trace.tokens, ids)
    x = w["embedding/embeddings"][ids]
    for k, name in enumerate(("rnn_1", "rnn_2")):
        kernel, rec, bias = _from_cudnn(w[f"{name}/kernel"], w[f"{name}/recurrent_kernel"], w[f"{name}/bias"])
        x = _lstm(x, kernel, rec, bias, _sigmoid)  # cuDNN's gates: the logistic sigmoid
        np.testing.assert_allclose(trace[f"layers.{k}.h"], x, atol=TOL, rtol=TOL)


def test_chars2vec_keras22_lstm_uses_that_versions_hard_sigmoid():
    """chars2vec 0.1.7's eng_50 model: Keras 2.2.0 save_weights of one-hot characters (59) → LSTM(50,
    return_sequences) → LSTM(50), trained with Keras 2.2's default recurrent_activation hard_sigmoid."""
    path = REAL / "keras_chars2vec_eng_50" / "weights.h5"
    model = engine.load(path, device="cpu", dtype=torch.float64)
    cfg = model.config
    assert (cfg.cell, cfg.num_layers, cfg.hidden_size, cfg.input_size, cfg.vocab_size) == ("lstm", 2, 50, 59, None)
    assert cfg.recurrent_activation == "hard_sigmoid" and "Keras 2.2.0" in model.info()["notes"]
    rng = np.random.default_rng(0)
    x = np.eye(59)[rng.integers(0, 59, size=9)]  # a 9-character word, one-hot as chars2vec feeds it
    trace = engine.run(model, x)
    w = _datasets(path)
    h = x
    for k, name in enumerate(("lstm_1", "lstm_2")):
        h = _lstm(h, w[f"{name}/kernel"], w[f"{name}/recurrent_kernel"], w[f"{name}/bias"], _hard_sigmoid_keras2)
        np.testing.assert_allclose(trace[f"layers.{k}.h"], h, atol=TOL, rtol=TOL)
    sigmoid_h = _lstm(x, w["lstm_1/kernel"], w["lstm_1/recurrent_kernel"], w["lstm_1/bias"], _sigmoid)
    assert np.abs(sigmoid_h - trace["layers.0.h"]).max() > 1e-2  # the activation matters: it is not a guess


def test_ethnicolr_census_classifier_model_save_file():
    """ethnicolr 0.9.6's census 2010 last-name model: a Keras 2.5 model.save file of Embedding(977,
    32) → LSTM(128, return_sequences=False) → Dense(4, softmax); Keras's output is the head on the
    last step, which is the trace's last step (as the notes say)."""
    path = REAL / "keras_ethnicolr_census2010" / "census2010_ln_lstm.h5"
    model = engine.load(path, device="cpu", dtype=torch.float64)
    cfg = model.config
    assert (cfg.cell, cfg.num_layers, cfg.hidden_size, cfg.vocab_size, cfg.output_size) == ("lstm", 1, 128, 977, 4)
    assert "those at the last step are Keras's output" in model.info()["notes"]
    ids = np.random.default_rng(1).integers(1, 977, size=12)
    trace = engine.run(model, ids)
    w = _datasets(path)
    h = _lstm(w["embedding/embeddings"][ids], w["lstm/kernel"], w["lstm/recurrent_kernel"], w["lstm/bias"], _sigmoid)
    np.testing.assert_allclose(trace["layers.0.h"], h, atol=TOL, rtol=TOL)
    logits = h[-1] @ w["dense/kernel"] + w["dense/bias"]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = torch.softmax(torch.from_numpy(np.asarray(trace["logits"])[-1]), -1).numpy()
    np.testing.assert_allclose(got, probs, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", ["keras_textgenrnn/textgenrnn_weights.hdf5", "keras_chars2vec_eng_50/weights.h5",
                                  "keras_ethnicolr_census2010/census2010_ln_lstm.h5"])
def test_the_committed_files_are_the_published_ones(name):
    import hashlib

    sources = (REAL / "SOURCES.md").read_text()
    digest = hashlib.sha256((REAL / name).read_bytes()).hexdigest()
    assert digest in sources


FETCHED = Path(__file__).parent / "data" / "fetched"  # bash packaging/fetch_real_keras.sh


@pytest.mark.skipif(not (FETCHED / "ethnicolr_nc_voter_name_race_lstm.h5").exists(),
                    reason="fetched by packaging/fetch_real_keras.sh (7.9 MB, not committed)")
def test_ethnicolr_convolution_before_the_lstm_is_refused_in_words():
    """ethnicolr 0.9.6's NC voter model: Embedding → Conv1D → MaxPooling1D → LSTM → Dense (Keras
    2.2.4 model.save): the convolution changes what the LSTM reads, so the file is refused by name."""
    with pytest.raises(engine.errors.LoadError, match="'conv1d_1' is a Keras Conv1D layer before the recurrent "
                                                      "layers, which SeqScope does not read") as info:
        engine.load(FETCHED / "ethnicolr_nc_voter_name_race_lstm.h5", device="cpu")
    assert "\n" not in str(info.value)
