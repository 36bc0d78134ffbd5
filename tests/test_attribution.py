"""Attribution through the engine's own differentiable forward pass (engine.analysis.attribution,
.differentiable, .patching).

References: torch.autograd through nn.LSTM / nn.GRU (gradients with respect to the embeddings
and to h_t, the latter by re-running the torch module from a leaf h_t), and through transformers'
MambaForCausalLM (tiny random config, ``inputs_embeds`` as the leaf).  Tolerances, float32 on
both sides: 2e-5 absolute + 1e-4 relative for the torch modules, 1e-4 + 1e-3 for Mamba (a
different summation order over 5 layers of products).  Integrated gradients: completeness within
1 % (LSTM, GRU: 32 midpoint steps; Mamba: 64 Gauss-Legendre nodes).  Patching: equal to brute-force re-runs without a cache within 1e-6.
"""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis.attribution import Target, gradient_x_input, integrated_gradients, parse_target
from engine.analysis.differentiable import AttributionError
from engine.analysis.patching import attribute, patching_attribution
from engine.models.stack import from_torch

ROOT = Path(__file__).resolve().parents[1]


def torch_stack(cls, seed=0, vocab=11, E=5, H=7, layers=2):
    torch.manual_seed(seed)
    emb, rnn, head = nn.Embedding(vocab, E), cls(E, H, num_layers=layers), nn.Linear(H, vocab)
    return emb, rnn, head, from_torch(rnn, emb, head)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_gradients_equal_torch_autograd_through_the_torch_module(cls):
    emb, rnn, head, model = torch_stack(cls)
    ids = np.array([1, 4, 2, 9, 3, 7, 5, 0])
    step, token = 6, 3
    got = gradient_x_input(model, ids, Target("logit", "logits", token, step))

    x = emb(torch.tensor(ids[:step + 1]))[:, None].detach().requires_grad_(True)
    y, _ = rnn(x)
    (g,) = torch.autograd.grad(head(y)[step, 0, token], x)
    want = (g * x.detach())[:, 0].numpy()
    np.testing.assert_allclose(got.per_feature, want, atol=2e-5, rtol=1e-4)
    assert got.output == pytest.approx(float(head(y)[step, 0, token].detach()), abs=1e-5)

    # gradient x state of the top layer at every step t: re-run the module from a leaf h_t
    top = f"layers.{rnn.num_layers - 1}.h"
    for t in range(step):
        xt = x.detach()
        _, hc = rnn(xt[:t + 1])
        h = hc if cls is nn.GRU else hc[0]
        leaf = h[-1:].detach().requires_grad_(True)
        h0 = torch.cat([h[:-1].detach(), leaf])
        state = h0 if cls is nn.GRU else (h0, hc[1].detach())
        y2, _ = rnn(xt[t + 1:], state)
        (gh,) = torch.autograd.grad(head(y2)[step - t - 1, 0, token], leaf)
        assert got.states[top][t] == pytest.approx(float((gh * leaf.detach()).sum()), abs=2e-5, rel=1e-4)


def test_gradients_equal_torch_autograd_through_transformers_mamba():
    transformers = pytest.importorskip("transformers")
    from engine.models.mamba import from_transformers

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=23, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2,
                                   conv_kernel=4)
    hf = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("dt_proj.bias"):
                p.add_(torch.randn_like(p))
    model = from_transformers(hf)  # its default scan (numba on a CPU) is swapped for the torch loop
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    step, token = 8, 7
    got = gradient_x_input(model, ids, Target("logit", "logits", token, step), states=False)
    e = hf.backbone.embeddings(torch.tensor(ids[None, :step + 1])).detach().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf(inputs_embeds=e).logits[0, step, token]
    (g,) = torch.autograd.grad(out, e)
    np.testing.assert_allclose(got.per_feature, (g * e.detach())[0].numpy(), atol=1e-4, rtol=1e-3)
    # the zero baseline sits at RMSNorm's singular point: 64 Gauss-Legendre nodes reach 1 %
    ig = integrated_gradients(model, ids, Target("logit", "logits", token, step), steps=64, rule="gauss-legendre")
    assert ig.completeness_gap < 0.01


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_integrated_gradients_are_complete(cls):
    *_, model = torch_stack(cls, seed=3, H=16)
    ids = np.random.default_rng(0).integers(0, 11, 40)
    ig = integrated_gradients(model, ids, Target("logit", "logits", 2, 35), steps=32, batch=8)
    assert ig.completeness_gap < 0.01
    assert ig.scores.shape == (36,)
    # a unit of a probe as the target, too
    ig = integrated_gradients(model, ids, parse_target("unit:layers.0.h:3:20", model), steps=32)
    assert ig.completeness_gap < 0.01


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_patching_equals_brute_force_reruns(cls):
    *_, model = torch_stack(cls, seed=1)
    ids = np.random.default_rng(1).integers(0, 11, 30)
    target = Target("logit", "logits", 4, 25)
    got = patching_attribution(model, ids, target)
    probes = [f"layers.{k}.{s}" for k in range(2) for s in ("h", "c") if s == "h" or cls is nn.LSTM]
    clean = engine.run(model, ids[:26])["logits"][25, 4]
    for t in range(26):
        tr = engine.run(model, ids[:26], interventions=[engine.Intervention(p, "zero", positions=[t]) for p in probes])
        assert got.scores[t] == pytest.approx(tr["logits"][25, 4] - clean, abs=1e-6)
    assert np.abs(got.scores).max() > 0


def test_rwkv_runs_through_the_differentiable_forward():
    transformers = pytest.importorskip("transformers")
    from engine.models.rwkv_loading import from_transformers as rwkv_from

    torch.manual_seed(0)
    hf = transformers.RwkvForCausalLM(transformers.RwkvConfig(vocab_size=17, hidden_size=8, num_hidden_layers=2,
                                                              attention_hidden_size=8, intermediate_size=16))
    model = rwkv_from(hf)
    ids = np.arange(12) % 17
    ig = attribute(model, ids, "logit:10:3", "ig", steps=16)
    assert np.isfinite(ig.scores).all() and ig.scores.shape == (11,)
    assert attribute(model, ids, "logit:10:3", "grad").states  # states of every layer


def test_ig_on_a_norm_first_model_spaces_its_nodes_where_f_changes():
    """RWKV applies a LayerNorm to the embedding: f(a x) = f(x) but within ~sqrt(eps)/|x| of the
    zero baseline.  Evenly spaced nodes miss that sliver (the gap grows with the steps); the
    automatic rule sees f(x/4) = f(x) and spaces the nodes geometrically: completeness within 2 %
    and scores that no longer move with the steps (1e-2)."""
    transformers = pytest.importorskip("transformers")
    from engine.models.rwkv_loading import from_transformers as rwkv_from

    torch.manual_seed(0)
    hf = transformers.RwkvForCausalLM(transformers.RwkvConfig(vocab_size=17, hidden_size=8, num_hidden_layers=2,
                                                              attention_hidden_size=8, intermediate_size=16))
    model = rwkv_from(hf)
    ids, target = np.arange(11) % 17, Target("logit", "logits", 3, 10)
    even = integrated_gradients(model, ids, target, steps=64, rule="midpoint")
    assert even.completeness_gap > 0.2  # the failure the automatic rule avoids
    ig64 = integrated_gradients(model, ids, target, steps=64)
    ig128 = integrated_gradients(model, ids, target, steps=128)
    assert ig64.completeness_gap < 0.02 and ig128.completeness_gap < 0.02
    assert "geometrically" in " ".join(ig64.notes)
    np.testing.assert_allclose(ig64.scores, ig128.scores, atol=1e-2)
    lstm = integrated_gradients(torch_stack(nn.LSTM, seed=1)[-1], ids % 11, Target("logit", "logits", 2, 10), steps=8)
    assert not lstm.notes  # not scale-invariant: the midpoint rule


def test_char_lstm_string_unit_is_attributed_to_the_opening_quote():
    """The card's string unit (layers.0.h unit 121): inside the sample's first string literal,
    4, 7, 10 and 13 characters after its opening quote, gradient x input puts the largest |score|
    on that quote (the text from the start of sample.py up to the unit's step)."""
    card = ROOT / "assets" / "models" / "char-lstm-python"
    model = engine.load(card)
    text = (card / "sample.py").read_text()
    q = re.search(r"'[^'\n]{14,}'", text).start()
    for off in (4, 7, 10, 13):
        a = gradient_x_input(model, text[:q + off + 1], Target("unit", "layers.0.h", 121, q + off), states=False)
        assert int(np.argmax(np.abs(a.scores))) == q, (off, a.tokens[int(np.argmax(np.abs(a.scores)))])


def test_plain_refusals():
    *_, model = torch_stack(nn.GRU)
    with pytest.raises(AttributionError, match="logit:STEP:TOKEN"):
        parse_target("logits 3", model)
    with pytest.raises(AttributionError, match="0..10"):
        parse_target("logit:2:99", model)
    with pytest.raises(AttributionError, match="steps 0..4"):
        gradient_x_input(model, [1, 2, 3, 4, 5], Target("logit", "logits", 1, 9))
    with pytest.raises(AttributionError, match="no probe"):
        parse_target("unit:layers.7.h:0:1", model)
    with pytest.raises(AttributionError, match="method"):
        attribute(model, [1, 2, 3], "logit:1:1", "shap")
    torch.manual_seed(0)
    bi = from_torch(nn.GRU(5, 4, bidirectional=True), nn.Embedding(11, 5), nn.Linear(8, 11))
    with pytest.raises(AttributionError, match="bidirectional"):
        patching_attribution(bi, [1, 2, 3], Target("logit", "logits", 1, 2))
    assert gradient_x_input(bi, [1, 2, 3], Target("logit", "logits", 1, 2)).scores.shape == (3,)


def test_numeric_inputs_are_attributed_like_embeddings():
    torch.manual_seed(4)
    rnn, head = nn.GRU(3, 5), nn.Linear(5, 2)
    model = from_torch(rnn, head=head)
    x = np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32)
    got = gradient_x_input(model, x, Target("logit", "logits", 1, 9))
    xt = torch.tensor(x[:10])[:, None].requires_grad_(True)
    (g,) = torch.autograd.grad(head(rnn(xt)[0])[9, 0, 1], xt)
    np.testing.assert_allclose(got.per_feature, (g * xt.detach())[:, 0].numpy(), atol=2e-5, rtol=1e-4)
    assert got.tokens == tuple(str(t) for t in range(10))
    assert integrated_gradients(model, x, Target("logit", "logits", 1, 9)).completeness_gap < 0.01
