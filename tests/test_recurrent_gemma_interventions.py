"""RecurrentGemma: the ``attn`` probes reproduce the layers' outputs (float64, within 1e-8),
interventions act inside the recurrence and the attention (steps before t bit-identical,
later steps changed, edited runs equal the float64 loop with the same edits to 1e-10), and a
state patched at step t equals running the suffix from that state."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, Span
from engine.models.mingru import gated_attention
from engine.models.recurrent_gemma import input_scale
from engine.models.recurrent_gemma_loading import from_transformers
from engine.models.recurrent_gemma_scan import local_attention
from recurrent_gemma_reference import reference

pytest.importorskip("transformers")
from test_recurrent_gemma_golden import SCANS, hf_model, weights64  # noqa: E402


def model64(case="mqa-w8", seed=0, **kw):
    hf = hf_model(case, seed)
    return from_transformers(hf, dtype=torch.float64, **kw), weights64(hf)


@pytest.mark.parametrize("case", ["mqa-w8", "kv2-w64"])
def test_attention_reproduces_the_layer_outputs_in_float64(case):
    model, w = model64(case)
    cfg = model.config
    T = 90
    ids = np.random.default_rng(5).integers(0, 37, T)
    trace = engine.run(model, ids, chunk=32)
    for k in range(cfg.num_hidden_layers):
        p = f"layers.{k}."
        if cfg.kind(k) == "recurrent":
            a = torch.tensor(trace[p + "a"])
            weight = input_scale(a, 0) * torch.tensor(trace[p + "gate_i"])
            alpha = gated_attention(a, weight, (0, T), (0, T), reduce=None)  # [i, j, channel]
            h = torch.einsum("ijc,jc->ic", alpha, torch.tensor(trace[p + "conv"]))
            torch.testing.assert_close(h, torch.tensor(trace[p + "state"]), atol=1e-8, rtol=1e-8)
        else:
            H, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            q, keys = (torch.tensor(trace[p + s])[:, None] for s in ("q", "k"))
            alpha = local_attention(q, keys, (0, T), (0, T), cfg, reduce=None)[0]  # [head, i, j]
            v = torch.tensor(trace[p + "v"]).reshape(T, kv, hd).repeat_interleave(H // kv, 1)
            o = torch.einsum("hij,jhd->ihd", alpha, v).reshape(T, H * hd)
            torch.testing.assert_close(o, torch.tensor(trace[p + "o"]), atol=1e-8, rtol=1e-8)
            assert (alpha.sum(-1) - 1).abs().max() < 1e-12
            i, j = np.nonzero(alpha[0].numpy())
            assert (i - j).max() == min(cfg.attention_window_size, T) - 1 and (i - j).min() == 0
        # the probe over a sub-window: the same rows and columns, NaN outside its rows
        model.attention_window = ((20, 60), (5, 40))
        att = engine.run(model, ids, chunk=32, probes=p + "attn")[p + "attn"]
        assert np.isnan(att[:20]).all() and np.isnan(att[60:]).all()
        full = alpha.mean(-1) if cfg.kind(k) == "recurrent" else alpha.mean(0)
        np.testing.assert_allclose(att[20:60], full[20:60, 5:40].numpy(), atol=1e-14)
        model.attention_window = ((0, 256), (0, 256))


SITES = ["in", "y_branch", "x_branch", "conv", "gate_r", "gate_i", "a", "state", "mix", "out"]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("probe", [f"layers.0.{s}" for s in SITES] + [f"layers.2.{s}" for s in ("q", "k", "v", "o")])
def test_steps_before_t_are_bit_identical_and_later_steps_change(probe, scan):
    model = from_transformers(hf_model("mqa-w8", 1), scan=scan)
    x = np.random.default_rng(6).integers(0, 37, 90)
    t = 37
    clean = engine.run(model, x, chunk=16)
    edited = engine.run(model, x, chunk=16, interventions=[Intervention(probe, "add", 0.5, positions=Span(t))])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["logits"][t] - clean["logits"][t]).max() > 1e-4
    if probe.startswith("layers.0."):  # through the recurrence (layer 2 is the last, with a window of 8)
        assert np.abs(edited["logits"][t + 20:] - clean["logits"][t + 20:]).max() > 1e-4


def test_edits_match_the_float64_loop_with_the_same_edits():
    model, w = model64("mqa-w8", 2)
    x = np.random.default_rng(7).integers(0, 37, 40)
    ivs = [Intervention("layers.0.gate_r", "set", 0.0, positions=[12], units=[0, 4]),
           Intervention("layers.0.a", "scale", 0.5, positions=Span(15, 18)),
           Intervention("layers.1.state", "zero", positions=Span(20, 23), units=[2]),
           Intervention("layers.2.k", "add", 1.0, positions=[25], units=[1]),
           Intervention("layers.2.v", "set", 0.0, positions=[26])]
    tr = engine.run(model, x, interventions=ivs, chunk=8)

    def at(units, f):
        def edit(v):
            idx = slice(None) if units is None else units
            v[idx] = f(v[idx])
            return v
        return edit

    ov = {("layers.0.gate_r", 12): at([0, 4], lambda v: 0.0), ("layers.2.k", 25): at([1], lambda v: v + 1),
          ("layers.2.v", 26): at(None, lambda v: 0.0),
          **{("layers.0.a", t): at(None, lambda v: 0.5 * v) for t in range(15, 18)},
          **{("layers.1.state", t): at([2], lambda v: 0.0) for t in range(20, 23)}}
    ref = reference(w, x, model.config, overrides=ov)
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_patched_state_equals_running_the_suffix_from_that_state():
    model, w = model64("mqa-w8", 3)
    cfg = model.config
    a, b = (np.random.default_rng(s).integers(0, 37, 60) for s in (8, 9))
    t = 29
    src = engine.run(model, a, chunk=16)
    tr = engine.run(model, b, chunk=16, interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"],
                                                                    positions=[t])])
    # the state after step t: h from the source run, conv buffer from this run's x_branch
    state0 = {0: {"h": src["layers.0.state"][t], "conv": tr["layers.0.x_branch"][t - 2:t + 1]},
              1: {"h": tr["layers.1.state"][t], "conv": tr["layers.1.x_branch"][t - 2:t + 1]},
              2: {"keys": list(tr["layers.2.k"][t - 6:t + 1]), "values": list(tr["layers.2.v"][t - 6:t + 1])}}
    ref = reference(w, None, cfg, state0=state0, start=tr["embed"][t + 1:], pos0=t + 1)
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name][t + 1:], expected, atol=1e-10, rtol=1e-10, err_msg=name)
    assert np.abs(tr["layers.0.state"][t + 1:] - engine.run(model, b, chunk=16)["layers.0.state"][t + 1:]).max() > 1e-3


def test_attn_cannot_be_edited_and_sites_of_the_other_kind_do_not_exist():
    model = from_transformers(hf_model("mqa-w8"))
    x = np.arange(20) % 37
    for iv, words in [(Intervention("layers.0.attn", "zero"), "computed after the run"),
                      (Intervention("layers.2.state", "zero"), "no probe point"),
                      (Intervention("layers.0.q", "zero"), "no probe point")]:
        with pytest.raises(engine.interventions.InterventionError, match=words):
            engine.run(model, x, interventions=[iv])
