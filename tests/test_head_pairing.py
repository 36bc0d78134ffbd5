"""A head's bias is paired with its weight by the name stem (fc_w/fc_b, W_out/b_out, out_w/out_b),
not only by the words weight/bias, so the logits are never those of a head without its bias; and
an explicit key_map that names no head gets none."""
import numpy as np
import pytest
import torch

import engine
from engine.errors import LoadError


def lstm_with_head(seed=0, vocab=9, hidden=10):
    torch.manual_seed(seed)
    rnn = torch.nn.LSTM(vocab, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, vocab)
    with torch.no_grad():
        head.bias.normal_(0, 1.0)  # a bias that matters: dropping it moves every logit
    return rnn, head


def expected_logits(rnn, head, x):
    with torch.no_grad():
        return head(rnn(torch.tensor(x[None]))[0])[0].numpy()


@pytest.mark.parametrize("weight, bias", [("fc_w", "fc_b"), ("W_out", "b_out"), ("out_w", "out_b"),
                                          ("decoder.W", "decoder.b"), ("fc.weight", "fc.bias")])
def test_the_head_bias_is_found_by_its_stem(tmp_path, weight, bias):
    rnn, head = lstm_with_head()
    state = {f"rnn.{k}": v for k, v in rnn.state_dict().items()}
    state[weight], state[bias] = head.weight.detach().clone(), head.bias.detach().clone()
    torch.save(state, tmp_path / "m.pt")
    model = engine.load(tmp_path / "m.pt", device="cpu")  # strict: every tensor used
    assert model.config.head_bias
    x = np.random.default_rng(0).normal(size=(30, 9)).astype(np.float32)
    np.testing.assert_allclose(engine.run(model, x, probes="logits")["logits"], expected_logits(rnn, head, x),
                               atol=1e-5, rtol=1e-5)


def test_a_key_map_that_names_no_head_gets_none(tmp_path):
    rnn, head = lstm_with_head(1)
    state = {"enc.w_ih": rnn.weight_ih_l0, "enc.w_hh": rnn.weight_hh_l0, "enc.b_ih": rnn.bias_ih_l0,
             "enc.b_hh": rnn.bias_hh_l0, "fc.weight": head.weight, "fc.bias": head.bias}
    torch.save({k: v.detach().clone() for k, v in state.items()}, tmp_path / "m.pt")
    key_map = {"enc.w_ih": "rnn.weight_ih_l0", "enc.w_hh": "rnn.weight_hh_l0",
               "enc.b_ih": "rnn.bias_ih_l0", "enc.b_hh": "rnn.bias_hh_l0"}
    with pytest.raises(LoadError, match="fc.weight"):  # strict: the head's tensors are left unused
        engine.load(tmp_path / "m.pt", config={"key_map": key_map, "cell": "lstm"}, device="cpu")
    model = engine.load(tmp_path / "m.pt", config={"key_map": key_map, "cell": "lstm"}, device="cpu", strict=False)
    assert "logits" not in {s.name for s in model.probe_specs()}
    named = dict(key_map, **{"fc.weight": "head.weight", "fc.bias": "head.bias"})
    model = engine.load(tmp_path / "m.pt", config={"key_map": named, "cell": "lstm"}, device="cpu")
    x = np.random.default_rng(1).normal(size=(12, 9)).astype(np.float32)
    np.testing.assert_allclose(engine.run(model, x, probes="logits")["logits"], expected_logits(rnn, head, x),
                               atol=1e-5, rtol=1e-5)
