"""A loading error ends with a config example built from the file's own tensors (its names and
shapes), which, pasted as ``config=``, loads THAT file (issue 11 item 8).  Checked on two files
whose names SeqScope cannot read by itself: the loaded model's outputs are compared with the
torch computation the file was written from (float32 both sides, atol 1e-5)."""
import ast
import json

import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError


def _pasted_config(message: str) -> dict:
    """The dict after ``config=`` in the message, read as Python (as a user pasting it would)."""
    start = message.index("config=") + len("config=")
    depth = 0
    for end, ch in enumerate(message[start:], start):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            break
    return ast.literal_eval(message[start:end + 1])


def _error(path) -> str:
    with pytest.raises(LoadError) as info:
        engine.load(path, device="cpu")
    return str(info.value)


def test_a_hand_written_lstm_char_model_gets_a_config_that_loads_it(tmp_path):
    V, E, H = 7, 5, 6
    g = torch.Generator().manual_seed(0)
    state = {"emb_table": torch.randn(V, E, generator=g), "Wx": torch.randn(4 * H, E, generator=g) * 0.4,
             "Wh": torch.randn(4 * H, H, generator=g) * 0.4, "b": torch.randn(4 * H, generator=g) * 0.1,
             "out_w": torch.randn(V, H, generator=g), "out_b": torch.randn(V, generator=g)}
    torch.save(state, tmp_path / "lstm.pt")
    message = _error(tmp_path / "lstm.pt")
    cfg = _pasted_config(message)
    assert cfg == {"cell": "lstm", "num_layers": 1, "hidden_size": H, "input_size": E, "vocab_size": V,
                   "output_size": V, "key_map": {"Wx": "rnn.weight_ih_l0", "Wh": "rnn.weight_hh_l0",
                                                 "b": "rnn.bias_ih_l0", "emb_table": "embed.weight",
                                                 "out_w": "head.weight", "out_b": "head.bias"}}
    assert "gates in the order i, f, g, o" in message
    model = engine.load(tmp_path / "lstm.pt", config=cfg, device="cpu")
    ids = [3, 0, 6, 2, 2, 5]
    trace = engine.run(model, np.array(ids), probes=["layers.0.h", "logits"])
    # the LSTM this file was written for, step by step in torch (gates i, f, g, o; one bias)
    h, c, hs = torch.zeros(H), torch.zeros(H), []
    for t in ids:
        i, f, gg, o = (state["Wx"] @ state["emb_table"][t] + state["Wh"] @ h + state["b"]).chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    hs = torch.stack(hs)
    np.testing.assert_allclose(np.asarray(trace["layers.0.h"]).reshape(len(ids), H), hs.numpy(), atol=1e-5)
    np.testing.assert_allclose(trace["logits"], (hs @ state["out_w"].T + state["out_b"]).numpy(), atol=1e-5)


def test_a_renamed_two_layer_gru_regressor_gets_a_config_that_loads_it_also_from_the_cli(tmp_path, capsys):
    from engine.cli import main

    torch.manual_seed(1)
    gru, head = torch.nn.GRU(5, 6, num_layers=2), torch.nn.Linear(6, 2)
    names = {"weight_ih": "input_weights", "weight_hh": "hidden_weights", "bias_ih": "input_bias",
             "bias_hh": "hidden_bias"}
    state = {}
    for k in range(2):
        for torch_name, mine in names.items():
            state[f"rnn_cells.{k}.{mine}"] = getattr(gru, f"{torch_name}_l{k}").detach().clone()
    state["proj.w"], state["proj.b"] = head.weight.detach().clone(), head.bias.detach().clone()
    torch.save({"params": state, "epoch": 3}, tmp_path / "gru.pt")
    message = _error(tmp_path / "gru.pt")
    cfg = _pasted_config(message)
    assert {k: v for k, v in cfg.items() if k != "key_map"} == {
        "cell": "gru", "num_layers": 2, "hidden_size": 6, "input_size": 5, "output_size": 2}
    assert cfg["key_map"]["rnn_cells.1.input_weights"] == "rnn.weight_ih_l1"
    assert cfg["key_map"]["rnn_cells.1.hidden_weights"] == "rnn.weight_hh_l1"
    assert cfg["key_map"]["proj.b"] == "head.bias" and len(cfg["key_map"]) == 10
    assert "--config config.json holding the same" in message
    (tmp_path / "config.json.txt").write_text(json.dumps(cfg))  # no booleans: JSON as printed
    assert main(["info", str(tmp_path / "gru.pt"), "--config", str(tmp_path / "config.json.txt")]) == 0
    assert "gru" in capsys.readouterr().out
    model = engine.load(tmp_path / "gru.pt", config=cfg, device="cpu")
    x = np.random.default_rng(2).normal(size=(9, 5)).astype(np.float32)
    trace = engine.run(model, x, probes=["logits"])
    with torch.no_grad():
        expected = head(gru(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(trace["logits"], expected, atol=1e-5)


def test_the_two_examples_differ_and_name_no_placeholder(tmp_path):
    torch.save({"a.W": torch.zeros(12, 3), "a.U": torch.zeros(12, 3)}, tmp_path / "one.pt")
    torch.save({"x.kernel": torch.zeros(9, 4), "x.recurrent": torch.zeros(9, 3)}, tmp_path / "two.pt")
    one, two = (_pasted_config(_error(tmp_path / n)) for n in ("one.pt", "two.pt"))
    assert one == {"cell": "lstm", "num_layers": 1, "hidden_size": 3, "input_size": 3, "bias": False,
                   "key_map": {"a.W": "rnn.weight_ih_l0", "a.U": "rnn.weight_hh_l0"}}
    assert two["cell"] == "gru" and two["input_size"] == 4 and two["key_map"]["x.recurrent"] == "rnn.weight_hh_l0"


def test_an_encoder_decoder_is_not_offered_as_one_stack(tmp_path):
    """g2p_en's layout (enc_emb, enc GRU, dec_emb, dec GRU, fc): the decoder is a second network
    that starts from the encoder's state, not a layer on top of it; stacking them would load
    without a word and compute something the model never does."""
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    state = {"enc_emb": r(9, 4), "enc_w_ih": r(18, 4), "enc_w_hh": r(18, 6), "enc_b_ih": r(18), "enc_b_hh": r(18),
             "dec_emb": r(7, 6), "dec_w_ih": r(18, 6), "dec_w_hh": r(18, 6), "dec_b_ih": r(18), "dec_b_hh": r(18),
             "fc_w": r(7, 6), "fc_b": r(7)}
    torch.save(state, tmp_path / "g2p.pt")
    message = _error(tmp_path / "g2p.pt")
    cfg = _pasted_config(message)
    assert cfg["num_layers"] == 1 and set(cfg["key_map"]) == {"enc_emb", "enc_w_ih", "enc_w_hh", "enc_b_ih", "enc_b_hh"}
    assert "another recurrent network too (dec_w_ih, dec_w_hh, dec_b_ih, dec_b_hh)" in message
    model = engine.load(tmp_path / "g2p.pt", config=cfg, strict=False, device="cpu")
    assert model.config.num_layers == 1 and model.config.output_size is None


def test_a_file_without_recurrent_shapes_gets_the_form_not_a_guess(tmp_path):
    torch.save({"emb.weight": torch.zeros(20, 8), "conv.weight": torch.zeros(16, 8, 3), "fc.weight": torch.zeros(2, 16)},
               tmp_path / "cnn.pt")
    message = _error(tmp_path / "cnn.pt")
    assert "no two matrices in this file have the shapes of a recurrent layer" in message
    assert set(_pasted_config(message)["key_map"]) == {"<key in the file>", "<another key>"}
