"""Keras 3 files (engine/loading/keras_v3.py): models built with Keras 3 in float64, saved as
``.keras`` archives, ``.weights.h5`` files (alone, with the model's ``config.json`` beside them,
and unzipped ``.keras`` folders) and the legacy ``.h5``, loaded by SeqScope without Keras and
compared with Keras's own forward: every recurrent layer's output at every step, the logits
(against the last recurrent layer's Keras output times the Dense weights) and the model's own
output, within 1e-6.  SeqScope runs in float64 on the float64 weights; Keras 3's torch backend
computes its matmuls in float32 even under floatx float64 (its ``result_type(torch.float64,
torch.float64)`` is float32), so Keras's side carries float32 rounding (~1e-7 here); a wrong gate
order, activation or reversal is off by 1e-2 or more.  Then the files that must be refused in one
sentence."""
from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError

from keras_import import import_keras

TOL = 1e-6  # SeqScope in float64; Keras's matmuls in float32 (see above)
LAYOUTS = ("keras", "weights", "weights+config", "folder", "h5")


@pytest.fixture(scope="module")
def keras():
    keras = import_keras()
    before = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield keras
    keras.config.set_floatx(before)


def _randomize(model, seed=3):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.normal(scale=0.5, size=w.shape) for w in ws])


def _save(model, tmp_path, layout):
    """The model saved in ``layout``; the path SeqScope opens."""
    if layout == "keras":
        model.save(tmp_path / "m.keras")
        return tmp_path / "m.keras"
    if layout == "h5":
        model.save(tmp_path / "m.h5")
        return tmp_path / "m.h5"
    if layout == "folder":  # an unzipped .keras archive: config.json, metadata.json, model.weights.h5
        model.save(tmp_path / "m.keras")
        with zipfile.ZipFile(tmp_path / "m.keras") as z:
            z.extractall(tmp_path / "unzipped")
        return tmp_path / "unzipped"
    model.save_weights(tmp_path / "m.weights.h5")
    if layout == "weights+config":
        (tmp_path / "config.json").write_text(model.to_json())
    return tmp_path / "m.weights.h5"


def _recurrent(model):
    return [layer for layer in model.layers if layer.__class__.__name__ in ("SimpleRNN", "LSTM", "GRU", "Bidirectional")]


def _check(keras, model, x, tmp_path, layout, *, logits=True):
    """Load ``model`` saved in ``layout`` and compare every recurrent layer's outputs and the model's
    output with Keras's; return the loaded model."""
    _randomize(model)
    loaded = engine.load(_save(model, tmp_path, layout), device="cpu", dtype=torch.float64)
    trace = engine.run(loaded, x[0])
    flipped = False  # Keras hands a go_backwards layer's outputs on in the order it computed them
    for k, layer in enumerate(_recurrent(model)):
        want = np.asarray(keras.Model(model.inputs[0], layer.output)(x).detach())[0]
        flipped = flipped != bool(getattr(layer, "go_backwards", False))
        merged = f"layers.{k}.merged" in trace.arrays  # a Bidirectional whose merge_mode is not concat
        got = np.asarray(trace[f"layers.{k}.merged" if merged else f"layers.{k}.h"])
        got = got[::-1] if flipped else got  # SeqScope records each state at its token
        if want.ndim == 1:  # return_sequences=False: the last step (a Bidirectional's backward half: the first)
            half = got.shape[1] // 2
            got = np.concatenate([got[-1, :half], got[0, half:]]) if layer.__class__.__name__ == "Bidirectional" \
                else got[-1]
        np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
    if logits is None:  # logits that Keras's output is not among (see the caller)
        assert trace.logits is not None
        return loaded
    if not logits:
        assert trace.logits is None and loaded.config.output_size is None
        return loaded
    got = np.asarray(trace["logits"], dtype=np.float64)
    got = np.ascontiguousarray(got[::-1]) if flipped else got
    dense = getattr(model.layers[-1], "layer", model.layers[-1])  # TimeDistributed(Dense): the Dense
    h = np.asarray(keras.Model(model.inputs[0], model.layers[-2].output)(x).detach())[0]
    weights = dense.get_weights()
    want = h @ weights[0] + (weights[1] if len(weights) > 1 else 0)
    np.testing.assert_allclose(got if want.ndim == 2 else got[-1], want, atol=TOL, rtol=TOL)
    out = np.asarray(model(x).detach())[0]
    if dense.get_config().get("activation") == "softmax":
        got = torch.softmax(torch.from_numpy(got), -1).numpy()
    np.testing.assert_allclose(got if out.ndim == 2 else got[-1], out, atol=TOL, rtol=TOL)
    return loaded


def _tokens(T=10, V=11, seed=0):
    return np.random.default_rng(seed).integers(1, V, size=(1, T)).astype("int32")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_embedding_lstm_dense_in_every_layout(keras, tmp_path, layout):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4), L.Dropout(0.2),
                              L.LSTM(6, return_sequences=True), L.LSTM(6, return_sequences=True),
                              L.Dense(11, activation="softmax")])
    loaded = _check(keras, model, _tokens(), tmp_path, layout)
    assert (loaded.config.cell, loaded.config.num_layers, loaded.config.vocab_size) == ("lstm", 2, 11)
    notes = loaded.info().get("notes", "")
    assert ("softmax" in notes) == (layout != "weights")  # weights alone do not say the head's activation
    assert ("without the model's config" in notes) == (layout == "weights")


@pytest.mark.parametrize("layout", ("keras", "weights+config"))
def test_gru_reset_before_with_named_activations(keras, tmp_path, layout):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.GRU(5, reset_after=False, activation="softsign", recurrent_activation="hard_sigmoid",
                                    return_sequences=True), L.Dense(7)])
    loaded = _check(keras, model, _tokens(seed=1), tmp_path, layout)
    # Keras 3's hard_sigmoid is clip(x/6 + 0.5): a Keras 3 file never reads as Keras 2's
    assert loaded.config.reset_after is False and loaded.config.recurrent_activation == "hard_sigmoid_keras3"
    assert loaded.config.activation == "softsign"


@pytest.mark.parametrize("layout", ("keras", "weights"))
def test_gru_reset_after_without_bias(keras, tmp_path, layout):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.GRU(5, use_bias=False, return_sequences=True), L.Dense(3, use_bias=False)])
    loaded = _check(keras, model, _tokens(seed=2), tmp_path, layout)
    assert loaded.config.bias is False and loaded.config.head_bias is False


@pytest.mark.parametrize("layout", ("keras", "weights"))
def test_simple_rnn_on_numeric_inputs_with_masking(keras, tmp_path, layout):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 3)), L.Masking(mask_value=-99.0),
                              L.SimpleRNN(7, activation="relu" if layout == "keras" else "tanh",
                                          return_sequences=True), L.Dense(2)])
    x = np.random.default_rng(4).standard_normal((1, 12, 3))
    loaded = _check(keras, model, x, tmp_path, layout)
    assert loaded.config.cell == ("rnn_relu" if layout == "keras" else "rnn_tanh")
    assert "Masking" in loaded.info()["notes"]


@pytest.mark.parametrize("layout", ("keras", "weights", "h5"))
def test_bidirectional_classifier_with_last_step_output(keras, tmp_path, layout):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.Bidirectional(L.LSTM(5, return_sequences=True)),
                              L.Bidirectional(L.LSTM(5)), L.Dense(3, activation="softmax")])
    # Keras's head reads the forward half's last step with the backward half's first: no step of the trace
    # (weights alone do not say return_sequences: the head loads, and the notes say what that means)
    loaded = _check(keras, model, _tokens(seed=5), tmp_path, layout, logits=None if layout == "weights" else False)
    assert loaded.config.bidirectional and loaded.config.num_layers == 2
    notes = loaded.info()["notes"]
    assert ("which is no step of the trace" in notes) == (layout != "weights")
    assert ("which no step's logits are" in notes) == (layout == "weights")


@pytest.mark.parametrize("layout", ("keras", "weights+config", "h5"))
def test_a_stack_of_different_layers_directions_and_merge_modes(keras, tmp_path, layout):
    """A bidirectional LSTM of 8+8 feeding a GRU of 4 that reads backwards (go_backwards), then a
    bidirectional SimpleRNN whose directions are averaged, then the head."""
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.Bidirectional(L.LSTM(8, return_sequences=True)),
                              L.GRU(4, reset_after=False, go_backwards=True, return_sequences=True),
                              L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="ave"),
                              L.Dense(5, activation="softmax")])
    loaded = _check(keras, model, _tokens(seed=11), tmp_path, layout)
    specs = loaded.config.layer_specs()
    assert [(s.cell, s.hidden_size, s.bidirectional, s.merge_mode, s.reversed) for s in specs] == [
        ("lstm", 8, True, "concat", False), ("gru", 4, False, "concat", True), ("rnn_tanh", 3, True, "ave", False)]
    assert specs[1].reset_after is False


@pytest.mark.parametrize("mode", ("sum", "mul", "concat"))
def test_bidirectional_merge_modes(keras, tmp_path, mode):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 3)), L.Bidirectional(L.GRU(4, return_sequences=True),
                                                                       merge_mode=mode),
                              L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode=mode), L.Dense(2)])
    loaded = _check(keras, model, np.random.default_rng(12).standard_normal((1, 8, 3)), tmp_path, "keras")
    assert [s.merge_mode for s in loaded.config.layer_specs()] == [mode, mode]


def test_a_backwards_last_layer_with_last_step_output(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.LSTM(5, go_backwards=True), L.Dense(3, activation="softmax")])
    loaded = _check(keras, model, _tokens(seed=13), tmp_path, "keras")  # Keras's output: SeqScope's first token
    assert "those at the first token (it reads the tokens from the last one) are Keras's output" in \
        loaded.info()["notes"]


def test_functional_chain_with_time_distributed_head(keras, tmp_path):
    L = keras.layers
    i = keras.Input((None,), dtype="int32")
    h = L.GRU(6, return_sequences=True, name="zz")(L.Embedding(11, 4, name="emb")(i))
    h = L.GRU(6, return_sequences=True, name="aa")(h)
    model = keras.Model(i, L.TimeDistributed(L.Dense(5, activation="softmax"))(h))
    for layout in ("keras", "weights"):
        loaded = _check(keras, model, _tokens(seed=6), tmp_path, layout)
        assert loaded.config.num_layers == 2 and loaded.config.output_size == 5


@pytest.mark.parametrize("layout", ("keras", "h5"))
def test_what_is_not_one_linear_head_loads_the_core_without_logits(keras, tmp_path, layout):
    L = keras.layers
    two = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                            L.LSTM(6, return_sequences=True), L.Dense(8, activation="relu"), L.Dense(3)])
    loaded = _check(keras, two, _tokens(seed=7), tmp_path, layout, logits=False)
    assert "records no logits" in loaded.info()["notes"]
    pooled = keras.Sequential([keras.Input((None, 3)), L.GRU(4, return_sequences=True),
                               L.GlobalAveragePooling1D(), L.Dense(2)])
    loaded = _check(keras, pooled, np.random.default_rng(8).standard_normal((1, 9, 3)), tmp_path, layout,
                    logits=False)
    assert "GlobalAveragePooling1D" in loaded.info()["notes"]


def test_a_layer_before_the_recurrent_ones_is_refused(keras, tmp_path):
    L = keras.layers
    conv = keras.Sequential([keras.Input((None, 3)), L.Conv1D(4, 2), L.LSTM(4)])
    with pytest.raises(LoadError, match="Conv1D layer before the recurrent layers, which SeqScope does not read"):
        engine.load(_save(conv, tmp_path, "keras"), device="cpu")
    with pytest.raises(LoadError, match="layer group 'conv1d'.*cannot place without the model's config"):
        engine.load(_save(conv, tmp_path, "weights"), device="cpu")


# -- files that are refused ----------------------------------------------------------------------
def _small(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(11, 4),
                              L.LSTM(6, return_sequences=True), L.Dense(11)])
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for n, data in members.items():
            z.writestr(n, data)
    return path


def _one_line(path, message):
    with pytest.raises(LoadError, match=message) as info:
        engine.load(path, device="cpu")
    assert "\n" not in str(info.value)


def test_a_truncated_archive_is_refused(keras, tmp_path):
    _small(keras, tmp_path)
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    _one_line(tmp_path / "cut.keras", "truncated|corrupted")


def test_a_config_lying_about_sizes_is_refused(keras, tmp_path):
    members = _small(keras, tmp_path)
    config = json.loads(members["config.json"])
    config["config"]["layers"][2]["config"]["units"] = 600_000_000
    members["config.json"] = json.dumps(config).encode()
    _one_line(_rezip(tmp_path / "lie.keras", members), "config says 600000000 units but its recurrent_kernel is")


def test_weights_of_another_model_are_refused(keras, tmp_path):
    members = _small(keras, tmp_path)
    config = json.loads(members["config.json"])
    config["config"]["layers"][2]["config"]["name"] = "other"
    members["config.json"] = json.dumps(config).encode()
    _one_line(_rezip(tmp_path / "other.keras", members), "belongs to layer 'lstm.*', but the archive's config.json "
                                                         "puts layer 'other' there")


def test_a_member_outside_the_archive_is_refused(keras, tmp_path):
    members = _small(keras, tmp_path)
    members["../x"] = b"hello"
    _one_line(_rezip(tmp_path / "escape.keras", members), r"member '\.\./x' is a path outside the archive")


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(keras, tmp_path):
    members = _small(keras, tmp_path)
    members["model.weights.h5"] = b"\0" * (40 << 20)  # 40 MB of zeros deflate to ~40 kB
    _one_line(_rezip(tmp_path / "bomb.keras", members, zipfile.ZIP_DEFLATED), "would inflate from")


def test_an_unwritten_dataset_in_an_archive_is_refused_unread(keras, tmp_path):
    members = _small(keras, tmp_path)
    (tmp_path / "w.h5").write_bytes(members["model.weights.h5"])
    with h5py.File(tmp_path / "w.h5", "a") as f:
        del f["layers/lstm/cell/vars/0"]
        f["layers/lstm/cell/vars"].create_dataset("0", shape=(4, 400_000_000), dtype="float32")  # 6.4 GB, unwritten
    members["model.weights.h5"] = (tmp_path / "w.h5").read_bytes()
    _one_line(_rezip(tmp_path / "huge.keras", members), r"declared \[4, 400000000\]")


def test_a_branching_functional_model_is_refused(keras, tmp_path):
    L = keras.layers
    i = keras.Input((None, 3))
    model = keras.Model(i, L.Add()([L.LSTM(4, return_sequences=True)(i), L.LSTM(4, return_sequences=True)(i)]))
    _one_line(_save(model, tmp_path, "keras"), "not one chain")


def test_weights_only_with_an_ambiguous_order_are_refused(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, 4)), L.GRU(4, return_sequences=True),
                              L.LSTM(4, return_sequences=True), L.GRU(4, return_sequences=True)])
    _one_line(_save(model, tmp_path, "weights"), "more than one order of its recurrent layers")


def test_functional_configs_of_keras_2_and_3_are_read_as_one_chain():
    """``inbound_nodes`` as Keras 2 wrote them (``[[["name", 0, 0, {}]]]``) and as Keras 3 does
    (``keras_history``): a chain is read in order, a layer reading another than the one before is refused."""
    from engine.loading.keras_layers import model_layers

    def model(inbound):
        layers = [{"class_name": "InputLayer", "config": {"name": "in"}, "inbound_nodes": []}]
        for name, source in (("emb", "in"), ("lstm", "emb"), ("dense", "lstm")):
            layers.append({"class_name": "X", "config": {"name": name}, "inbound_nodes": inbound(source)})
        return {"class_name": "Functional", "config": {"layers": layers, "input_layers": [["in", 0, 0]]}}

    keras2 = model(lambda src: [[[src, 0, 0, {}]]])
    keras3 = model(lambda src: [{"args": [{"class_name": "__keras_tensor__",
                                           "config": {"keras_history": [src, 0, 0]}}], "kwargs": {}}])
    for config in (keras2, keras3):
        assert [c["name"] for _, c in model_layers(config, "m", "model_config")] == ["in", "emb", "lstm", "dense"]
    keras2["config"]["layers"][3]["inbound_nodes"] = [[["emb", 0, 0, {}]]]  # the head reads the embedding
    with pytest.raises(LoadError, match="not one chain \\(layer 'dense' reads emb\\)"):
        model_layers(keras2, "m", "model_config")
