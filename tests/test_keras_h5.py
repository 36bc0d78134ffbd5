"""Keras HDF5 weight files (engine/loading/keras_h5.py): Keras 3 models saved with
``model.save("m.h5")`` (the legacy layout Keras 1/2 wrote too) and Keras 2 ``save_weights``
files rebuilt with h5py, loaded by SeqScope without Keras and compared step by step with Keras's
own outputs (float32 both sides: within 1e-5); and the files it must refuse in one sentence."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError

from keras_import import import_keras

TOL = 1e-5  # float32 on both sides


@pytest.fixture(scope="module")
def keras():
    return import_keras()


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in ws])


def _keras_outputs(keras, model, x):
    """Every recurrent layer's per-step output and the head's pre-activation logits."""
    out = {}
    rec = [layer for layer in model.layers if layer.__class__.__name__ in ("LSTM", "GRU", "SimpleRNN")]
    for k, layer in enumerate(rec):
        if layer.return_sequences:
            out[f"layers.{k}.h"] = np.asarray(keras.Model(model.inputs[0], layer.output)(x).detach())[0]
    dense = getattr(model.layers[-1], "layer", model.layers[-1])  # TimeDistributed(Dense): the Dense
    assert dense.__class__.__name__ == "Dense"
    probs = np.asarray(model(x).detach())[0]
    kernel, bias = dense.get_weights()
    h = out.get(f"layers.{len(rec) - 1}.h")
    if h is not None:
        out["logits"] = h @ kernel + bias
    out["output"] = probs if rec[-1].return_sequences else probs[None]
    return out


def _check(keras, model, x, tmp_path, name="m.h5"):
    _randomize(model, 3)
    path = tmp_path / name
    model.save(path)
    expected = _keras_outputs(keras, model, x)
    loaded = engine.load(path, device="cpu")
    trace = engine.run(loaded, x[0])
    for key, want in expected.items():
        if key == "output":  # the model's own output: the head's activation applied to SeqScope's logits
            got = np.asarray(trace["logits"], dtype=np.float64)
            if getattr(model.layers[-1], "layer", model.layers[-1]).get_config()["activation"] == "softmax":
                got = torch.softmax(torch.from_numpy(got), -1).numpy()
            if want.shape[0] == 1:  # return_sequences=False: Keras's output is the last step's
                got = got[-1:]
            np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
        else:
            np.testing.assert_allclose(trace[key], want, atol=TOL, rtol=TOL)
    return loaded


def _tokens(T=12, V=11, seed=0):
    return np.random.default_rng(seed).integers(1, V, size=(1, T)).astype("int32")


def test_embedding_lstm_dense_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.LSTM(6, return_sequences=True), L.Dropout(0.3), L.Dense(11, activation="softmax")])
    loaded = _check(keras, model, _tokens(), tmp_path)
    assert loaded.config.cell == "lstm" and loaded.config.vocab_size == 11 and loaded.config.output_size == 11
    info = loaded.info()
    assert "keras-h5" in str(info.get("format")) and "softmax" in info.get("notes", "")


def test_gru_reset_before_with_keras3_hard_sigmoid_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.GRU(5, reset_after=False, recurrent_activation="hard_sigmoid",
                                    return_sequences=True), L.Dense(11)])
    loaded = _check(keras, model, _tokens(seed=1), tmp_path)
    # a Keras 3 file's hard_sigmoid is Keras 3's clip(x/6 + 0.5), not Keras 2's
    assert loaded.config.reset_after is False and loaded.config.recurrent_activation == "hard_sigmoid_keras3"
    # the same file as Keras 2 wrote it: its hard_sigmoid is clip(0.2x + 0.5), checked against a float64 loop
    with h5py.File(tmp_path / "m.h5", "a") as f:
        f.attrs["keras_version"] = b"2.2.4"
        f["model_weights"].attrs["keras_version"] = b"2.2.4"
    keras2 = engine.load(tmp_path / "m.h5", device="cpu")
    assert keras2.config.recurrent_activation == "hard_sigmoid"
    emb, (kernel, rec, bias) = model.layers[0].get_weights(), model.layers[1].get_weights()
    ids = _tokens(seed=1)[0]
    want = _gru_reference(emb[0][ids].astype(np.float64), kernel.astype(np.float64), rec.astype(np.float64),
                          bias.astype(np.float64), 5)
    np.testing.assert_allclose(engine.run(keras2, ids)["layers.0.h"], want, atol=TOL, rtol=TOL)


def test_gru_reset_after_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.GRU(5, return_sequences=True), L.Dense(11, activation="softmax")])
    loaded = _check(keras, model, _tokens(seed=2), tmp_path)
    assert loaded.config.reset_after is True


def test_simple_rnn_relu_on_numeric_inputs_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 3)), L.SimpleRNN(7, activation="relu", return_sequences=True),
                              L.Dense(2)])
    x = np.random.default_rng(4).standard_normal((1, 15, 3)).astype("float32")
    loaded = _check(keras, model, x, tmp_path)
    assert loaded.config.cell == "rnn_relu" and loaded.config.vocab_size is None


def test_two_layer_lstm_with_last_step_output_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.LSTM(6, return_sequences=True), L.LSTM(6), L.Dense(3, activation="softmax")])
    loaded = _check(keras, model, _tokens(seed=5), tmp_path)
    assert loaded.config.num_layers == 2
    assert "return_sequences=False" in loaded.info()["notes"]


def test_layers_of_different_sizes_load(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.LSTM(6, return_sequences=True), L.LSTM(4, return_sequences=True), L.Dense(3)])
    loaded = _check(keras, model, _tokens(seed=12), tmp_path)
    assert [s.hidden_size for s in loaded.config.layer_specs()] == [6, 4]


def test_unsupported_layers_and_merge_modes_are_refused_by_name(keras, tmp_path):
    L = keras.layers
    conv = keras.Sequential([keras.Input((None, 3)), L.Conv1D(4, 2), L.LSTM(4)])
    conv.save(tmp_path / "conv.h5")
    with pytest.raises(LoadError, match="Conv1D layer before the recurrent layers, which SeqScope does not read"):
        engine.load(tmp_path / "conv.h5", device="cpu")
    bi = keras.Sequential([keras.Input((None, 3)), L.Bidirectional(L.LSTM(4), merge_mode="sum")])
    bi.save(tmp_path / "bi.h5")
    with h5py.File(tmp_path / "bi.h5", "a") as f:  # merge_mode None: two outputs, no one sequence to read on
        f.attrs["model_config"] = f.attrs["model_config"].replace('"merge_mode": "sum"', '"merge_mode": null')
    with pytest.raises(LoadError, match="merge_mode=None.*hands on two outputs"):
        engine.load(tmp_path / "bi.h5", device="cpu")


# -- Keras 2 save_weights files, written with h5py in Keras 2's layout ---------------------------
def _keras2_save_weights(path, layers, keras_version="2.2.4"):
    """``layers``: [(name, {weight: array})] as Keras 2's ``save_weights`` writes them."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n, _ in layers]
        f.attrs["keras_version"] = keras_version.encode()
        f.attrs["backend"] = b"tensorflow"
        for lname, weights in layers:
            g = f.create_group(lname)
            g.attrs["weight_names"] = [f"{lname}/{w}:0".encode() for w in weights]
            for w, arr in weights.items():
                g.create_dataset(f"{lname}/{w}:0", data=arr)


def _gru_reference(x, kernel, rec, bias, H):
    """Keras 2's GRU (reset_after=False, hard_sigmoid = clip(0.2x + 0.5)) in float64 NumPy."""
    hs = lambda v: np.clip(0.2 * v + 0.5, 0, 1)  # noqa: E731
    h = np.zeros(H)
    out = []
    for xt in x:
        xz, xr, xh = np.split(xt @ kernel + bias, 3)
        z = hs(xz + h @ rec[:, :H])
        r = hs(xr + h @ rec[:, H:2 * H])
        n = np.tanh(xh + (r * h) @ rec[:, 2 * H:])
        h = z * h + (1 - z) * n
        out.append(h)
    return np.array(out)


def test_a_keras2_save_weights_gru_loads_with_the_config_given(tmp_path):
    rng = np.random.default_rng(7)
    V, E, H = 9, 3, 5
    emb = rng.normal(size=(V, E)).astype("float32")
    kernel, rec = rng.normal(size=(E, 3 * H)), rng.normal(scale=0.5, size=(H, 3 * H))
    bias = rng.normal(size=(3 * H,))
    head_k, head_b = rng.normal(size=(H, V)), rng.normal(size=(V,))
    layers = [("embedding_1", {"embeddings": emb}),
              ("gru_1", {"kernel": kernel.astype("float32"), "recurrent_kernel": rec.astype("float32"),
                         "bias": bias.astype("float32")}),
              ("dropout_1", {}),
              ("dense_1", {"kernel": head_k.astype("float32"), "bias": head_b.astype("float32")})]
    _keras2_save_weights(tmp_path / "w.h5", layers)
    ids = rng.integers(0, V, size=20)
    want_h = _gru_reference(emb[ids].astype(np.float64), kernel.astype("float32").astype(np.float64),
                            rec.astype("float32").astype(np.float64), bias.astype("float32").astype(np.float64), H)
    # Keras 2.2.4 wrote it: its default recurrent_activation (hard_sigmoid) is assumed, and said
    model = engine.load(tmp_path / "w.h5", device="cpu")
    assert model.config.reset_after is False and "recurrent_activation hard_sigmoid" in model.info()["notes"]
    other = engine.load(tmp_path / "w.h5", device="cpu", config={"recurrent_activation": "sigmoid"})
    assert np.abs(engine.run(other, ids)["layers.0.h"] - want_h).max() > 1e-2  # what config= says stands
    with h5py.File(tmp_path / "w.h5", "a") as f:
        f.attrs["keras_version"] = b"2.3.1"  # from Keras 2.3 on the default is sigmoid
    assert engine.load(tmp_path / "w.h5", device="cpu").config.recurrent_activation is None
    trace = engine.run(model, ids)
    np.testing.assert_allclose(trace["layers.0.h"], want_h, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(trace["logits"], want_h @ head_k.astype("float32") + head_b.astype("float32"),
                               atol=1e-4, rtol=1e-4)


# -- bad files -----------------------------------------------------------------------------------
def _small_lstm_file(path, **override):
    rng = np.random.default_rng(0)
    weights = {"kernel": rng.normal(size=(3, 16)).astype("float32"),
               "recurrent_kernel": rng.normal(size=(4, 16)).astype("float32"),
               "bias": np.zeros(16, "float32")}
    weights.update(override)
    _keras2_save_weights(path, [("lstm_1", {k: v for k, v in weights.items() if v is not None})])


def test_a_keras2_save_weights_lstm_loads(tmp_path):
    _small_lstm_file(tmp_path / "w.h5")
    model = engine.load(tmp_path / "w.h5", device="cpu")
    assert model.config.cell == "lstm" and model.config.hidden_size == 4 and model.config.input_size == 3


@pytest.mark.parametrize("make, message", [
    (lambda p: _small_lstm_file(p, bias=np.zeros(12, "float32")), r"bias is \[12\], a LSTM needs \[16\]"),
    (lambda p: _small_lstm_file(p, recurrent_kernel=None), "has no 'recurrent_kernel' weight"),
    (lambda p: _small_lstm_file(p, kernel=np.zeros((3, 15), "float32")), "kernel of 15 columns for 4 units"),
], ids=["wrong-bias", "missing-weight", "wrong-kernel"])
def test_bad_weights_are_refused_in_one_sentence(tmp_path, make, message):
    make(tmp_path / "w.h5")
    with pytest.raises(LoadError, match=message) as info:
        engine.load(tmp_path / "w.h5", device="cpu")
    assert "\n" not in str(info.value)


def test_a_listed_weight_the_file_lacks_is_refused(tmp_path):
    _small_lstm_file(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "a") as f:
        del f["lstm_1/lstm_1/bias:0"]
    with pytest.raises(LoadError, match="lists weight 'lstm_1/bias:0', which the file does not hold"):
        engine.load(tmp_path / "w.h5", device="cpu")


def test_a_truncated_file_is_refused(tmp_path):
    _small_lstm_file(tmp_path / "w.h5")
    data = (tmp_path / "w.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="truncated or damaged"):
        engine.load(tmp_path / "cut.h5", device="cpu")


def test_a_seqscope_trace_is_refused_as_a_trace(tmp_path):
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.attrs["format"] = "seqscope-trace"
    with pytest.raises(LoadError, match="is a SeqScope trace, not a model"):
        engine.load(tmp_path / "t.h5", device="cpu")


def test_an_unrelated_hdf5_file_is_refused(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(LoadError, match="neither Keras weights"):
        engine.load(tmp_path / "x.h5", device="cpu")


# -- CuDNNLSTM / CuDNNGRU (Keras 2): written from a Keras 3 layer with Keras 2's own conversion --------
def _to_cudnn(kernel, rec, gates):
    """Keras 2's conversion of an LSTM/GRU's kernels to a CuDNN layer's (``transpose_input(False)``
    per gate for the input kernel, a transpose per gate for the recurrent one)."""
    k = np.hstack([g.T.reshape(g.shape, order="C") for g in np.split(kernel, gates, axis=1)])
    r = np.hstack([g.T for g in np.split(rec, gates, axis=1)])
    return k, r


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_keras2_cudnn_layer_matches_the_keras_layer_it_converts_to(keras, tmp_path, kind):
    import json

    F, H, T = 3, 4, 18
    rng = np.random.default_rng(8)
    layer = getattr(keras.layers, kind)(H, return_sequences=True, **({"reset_after": True} if kind == "GRU" else {}))
    layer.build((1, T, F))
    layer.set_weights([rng.normal(scale=0.6, size=w.shape).astype("float32") for w in layer.weights])
    x = rng.standard_normal((1, T, F)).astype("float32")
    want = np.asarray(layer(torch.from_numpy(x)).detach())[0]
    kernel, rec, bias = layer.get_weights()
    gates = 4 if kind == "LSTM" else 3
    ck, cr = _to_cudnn(kernel, rec, gates)
    if kind == "LSTM":  # any split of the one bias into cuDNN's input and recurrent biases
        b_in = rng.normal(size=bias.shape).astype("float32")
        cb = np.concatenate([b_in, bias - b_in])
    else:
        cb = bias.reshape(-1)  # (2, 3u): input row, then recurrent row
    lname = f"cu_dnn{kind.lower()}_1"
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": f"CuDNN{kind}", "config": {"name": lname, "units": H, "return_sequences": True,
                                                  "go_backwards": False, "stateful": False}}]}}
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["model_config"] = json.dumps(config).encode()
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [lname.encode()]
        lg = g.create_group(lname)
        lg.attrs["weight_names"] = [f"{lname}/{w}:0".encode() for w in ("kernel", "recurrent_kernel", "bias")]
        for w, arr in (("kernel", ck), ("recurrent_kernel", cr), ("bias", cb)):
            lg.create_dataset(f"{lname}/{w}:0", data=arr)
    model = engine.load(tmp_path / "c.h5", device="cpu")
    assert f"CuDNN{kind}" in model.info()["notes"]
    np.testing.assert_allclose(engine.run(model, x[0])["layers.0.h"], want, atol=TOL, rtol=TOL)


def test_bidirectional_two_layer_gru_classifier_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.Bidirectional(L.GRU(5, return_sequences=True)),
                              L.Bidirectional(L.GRU(5, return_sequences=True)), L.Dense(3, activation="softmax")])
    x = _tokens(seed=9)
    _randomize(model, 3)
    model.save(tmp_path / "m.h5")
    want_h = np.asarray(keras.Model(model.inputs[0], model.layers[1].output)(x).detach())[0]
    want = np.asarray(model(x).detach())[0]
    loaded = engine.load(tmp_path / "m.h5", device="cpu")
    assert loaded.config.bidirectional and loaded.config.num_layers == 2
    trace = engine.run(loaded, x[0])
    # SeqScope's bidirectional h is [forward, backward], as Keras's concat
    np.testing.assert_allclose(trace["layers.0.h"], want_h, atol=TOL, rtol=TOL)
    probs = torch.softmax(torch.from_numpy(np.asarray(trace["logits"], dtype=np.float64)), -1).numpy()
    np.testing.assert_allclose(probs, want, atol=TOL, rtol=TOL)


def test_a_time_distributed_dense_head_matches_keras(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.SimpleRNN(6, return_sequences=True),
                              L.TimeDistributed(L.Dense(11, activation="softmax"))])
    loaded = _check(keras, model, _tokens(seed=10), tmp_path)
    assert loaded.config.output_size == 11 and "softmax" in loaded.info()["notes"]
    wrapped = keras.Sequential([keras.Input((None, 2)), L.LSTM(3, return_sequences=True),
                                L.TimeDistributed(L.Dense(2)), L.TimeDistributed(L.Dense(2))])
    wrapped.save(tmp_path / "two.h5")  # two Dense layers are not one linear head: the core loads, no logits
    core = engine.load(tmp_path / "two.h5", device="cpu")
    assert core.config.output_size is None and "records no logits" in core.info()["notes"]
    assert engine.run(core, np.zeros((4, 2), dtype=np.float32)).logits is None


def test_an_unwritten_dataset_is_refused_before_it_is_read(tmp_path):
    _small_lstm_file(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "a") as f:
        del f["lstm_1/lstm_1/kernel:0"]
        f["lstm_1/lstm_1"].create_dataset("kernel:0", shape=(3, 400_000_000), dtype="float32")  # 4.8 GB, never written
    with pytest.raises(LoadError, match=r"declared \[3, 400000000\] .* holds 0 bytes of it"):
        engine.load(tmp_path / "w.h5", device="cpu")


@pytest.mark.parametrize("config, message", [
    (b"{not json", "model_config is not valid JSON"),
    (b'{"class_name": "Sequential", "config": {"layers": 3}}', "lists no layers"),
    (b'{"class_name": "Sequential", "config": {"layers": [{"class_name": "LSTM", "config": {"name": "lstm_1", '
     b'"units": 4, "recurrent_activation": "mish"}}]}}', "'mish' is not an activation"),
    (b'{"class_name": "Sequential", "config": {"layers": [{"class_name": "LSTM", "config": {"name": "lstm_1", '
     b'"units": 5}}]}}', "says 5 units"),
    (b'{"class_name": "Sequential", "config": {"layers": [{"class_name": "Sequential", "config": {"name": "inner"}}]}}',
     "layer 'inner' is a nested Keras model \\(Sequential\\)"),
], ids=["not-json", "no-layers", "unknown-activation", "wrong-units", "nested-model"])
def test_a_bad_model_config_is_refused_in_one_sentence(tmp_path, config, message):
    _small_lstm_file(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "a") as f:
        f.attrs["model_config"] = config
    with pytest.raises(LoadError, match=message) as info:
        engine.load(tmp_path / "w.h5", device="cpu")
    assert "\n" not in str(info.value)


def test_an_activation_layer_after_the_head_is_noted_and_before_it_refused(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 5)), L.LSTM(6, return_sequences=True), L.Dense(5),
                              L.Activation("softmax")])  # Keras 2's lstm_text_generation example, one-hot inputs
    x = np.random.default_rng(11).standard_normal((1, 9, 5)).astype("float32")
    _randomize(model, 3)
    model.save(tmp_path / "m.h5")
    loaded = engine.load(tmp_path / "m.h5", device="cpu")
    assert "Activation layer" in loaded.info()["notes"]
    probs = torch.softmax(torch.from_numpy(np.asarray(engine.run(loaded, x[0])["logits"], dtype=np.float64)), -1)
    np.testing.assert_allclose(probs.numpy(), np.asarray(model(x).detach())[0], atol=TOL, rtol=TOL)
    inside = keras.Sequential([keras.Input((None, 5)), L.LSTM(6, return_sequences=True), L.Activation("relu"),
                               L.Dense(5)])
    inside.save(tmp_path / "inside.h5")  # an Activation before the Dense: the core loads, no logits
    core = engine.load(tmp_path / "inside.h5", device="cpu")
    assert core.config.output_size is None and "followed by an Activation layer" in core.info()["notes"]
    between = keras.Sequential([keras.Input((None, 5)), L.LSTM(6, return_sequences=True), L.Activation("relu"),
                                L.LSTM(6, return_sequences=True)])
    between.save(tmp_path / "between.h5")
    with pytest.raises(LoadError, match=r"reads the output of layer '\w+' \(Activation\), which SeqScope does not compute"):
        engine.load(tmp_path / "between.h5", device="cpu")
