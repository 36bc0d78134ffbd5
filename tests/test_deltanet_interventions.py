"""DeltaNet interventions act inside the recurrence: causality at every editable probe,
hand-checked edits (clamping beta, zeroing a head's state, adding to k, scaling v, editing the
gate) against the float64 reference stepped with the same edit, state edits on sub-chunk
boundaries, and a patched state equals running the suffix from that state.  Float64 models;
agreement with the reference within 1e-10."""
import numpy as np
import pytest
import torch

import engine
from deltanet_reference import reference_deltanet
from engine import Intervention, InterventionError, Span
from family_checks import assert_embed_and_logits_edits, batched_edit_matches_each_alone
from test_deltanet_golden import build


def ids(T, seed=0, vocab=29):
    return np.random.default_rng(seed).integers(0, vocab, T)


EDITABLE = ["in", "q", "k", "v", "beta", "state", "o", "g", "y", "mixer", "mid", "mlp", "out"]


@pytest.mark.parametrize("chunk,t", [(16, 27), (128, 100)])  # inside a chunk; inside its second sub-chunk
@pytest.mark.parametrize("site", EDITABLE)
def test_steps_before_t_are_bit_identical_and_later_steps_change(tmp_path, site, chunk, t):
    model, _, _ = build(tmp_path, 20, dtype=torch.float32, use_gate=True)
    x = ids(140)
    clean = engine.run(model, x, chunk=chunk)
    edited = engine.run(model, x, chunk=chunk, interventions=[Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t))])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["layers.1.out"][t:] - clean["layers.1.out"][t:]).max() > 1e-4
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4


def check(tr, ref, tol=1e-10):
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name].reshape(expected.shape), expected, atol=tol, rtol=tol, err_msg=name)


def test_clamping_beta_to_zero_skips_the_writes(tmp_path):
    model, cfg, w = build(tmp_path, 21, use_gate=True)
    x = ids(40, 1)
    tr = engine.run(model, x, chunk=16, interventions=[Intervention("layers.0.beta", "set", 0.0, positions=Span(10, 20),
                                                                    units=[1])])
    st = tr["layers.0.state"]
    np.testing.assert_allclose(st[10:20, 1], np.broadcast_to(st[9, 1], st[10:20, 1].shape), atol=1e-14)  # head 1 frozen
    assert not np.allclose(st[10:20, 0], st[9, 0])

    def clamp(v):
        v[1] = 0.0
        return v

    check(tr, reference_deltanet(w, cfg, x, overrides={("layers.0.beta", t): clamp for t in range(10, 20)}))


@pytest.mark.parametrize("chunk", [16, 128])
def test_zeroing_a_heads_state_matches_the_reference(tmp_path, chunk):
    """Positions inside a sub-chunk, on its last step (63) and its first (64), with chunk 128."""
    model, cfg, w = build(tmp_path, 22)
    x = ids(100, 2)
    positions = [12, 63, 64, 90]
    iv = Intervention("layers.1.state", "zero", positions=positions, units=model.state_units(0))
    tr = engine.run(model, x, interventions=[iv], chunk=chunk)
    assert np.all(tr["layers.1.state"][positions, 0] == 0)
    assert np.all(tr["layers.1.state"][positions, 1] != 0)

    def zero(v):
        v[0] = 0
        return v

    check(tr, reference_deltanet(w, cfg, x, overrides={("layers.1.state", t): zero for t in positions}))


def test_setting_single_state_entries_uses_flat_units(tmp_path):
    model, cfg, w = build(tmp_path, 23)
    x = ids(30, 3)
    units = model.state_units(1, keys=[2], values=[0, 5])
    tr = engine.run(model, x, interventions=[Intervention("layers.0.state", "set", 3.0, positions=[7], units=units)])
    assert np.all(tr["layers.0.state"][7, 1, 2, [0, 5]] == 3.0)

    def put(v):
        v[1, 2, [0, 5]] = 3.0
        return v

    check(tr, reference_deltanet(w, cfg, x, overrides={("layers.0.state", 7): put}))


def test_adding_to_k_scaling_v_and_editing_the_gate_match_the_reference(tmp_path):
    model, cfg, w = build(tmp_path, 24, use_gate=True, num_heads=4, hidden_size=16)
    x = ids(50, 4)
    ivs = [Intervention("layers.0.k", "add", [0.5, -1.0], positions=[4, 30], units=[0, 5]),
           Intervention("layers.1.v", "scale", 2.0, positions=Span(20, 25)),
           Intervention("layers.1.g", "zero", positions=[33], units=[3])]
    tr = engine.run(model, x, interventions=ivs, chunk=16)

    def add(v):
        v[[0, 5]] += [0.5, -1.0]
        return v

    def double(v):
        return v * 2.0

    def gate(v):
        v[3] = 0
        return v

    overrides = {("layers.0.k", 4): add, ("layers.0.k", 30): add, ("layers.1.g", 33): gate,
                 **{("layers.1.v", t): double for t in range(20, 25)}}
    check(tr, reference_deltanet(w, cfg, x, overrides=overrides))


def test_patching_the_whole_state_equals_running_the_suffix_from_that_state(tmp_path):
    model, cfg, w = build(tmp_path, 25)
    a, b = ids(60, 5), ids(60, 6)
    t, K = 29, cfg["conv_size"]
    src = engine.run(model, a, chunk=16)
    patched = engine.run(model, b, chunk=16,
                         interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    np.testing.assert_array_equal(patched["layers.0.state"][t], src["layers.0.state"][t])
    # the suffix t+1.. of layer 0, run by the reference from (patched state, b's conv histories)
    n = patched["layers.0.in"][t - K + 2:t + 1]
    hist = tuple(n @ w[f"model.layers.0.attn.{c}_proj.weight"].T for c in "qkv")
    ref = reference_deltanet(w, {**cfg, "num_hidden_layers": 1}, None, state0={0: (src["layers.0.state"][t], hist)},
                             start_layer_input=patched["embed"][t + 1:])
    for site in ("q", "k", "v", "state", "o", "y", "out"):
        np.testing.assert_allclose(patched[f"layers.0.{site}"][t + 1:].reshape(ref[f"layers.0.{site}"].shape),
                                   ref[f"layers.0.{site}"], atol=1e-10, rtol=1e-10, err_msg=site)
    # with the inputs after t those of run A and the conv histories patched too (through `in`),
    # layer 0 follows run A from t + 1 on: S and the convolutions' last inputs are all the state
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    ivs = [Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t]),
           Intervention("layers.0.in", "patch", src["layers.0.in"], positions=Span(t - K + 2, t + 1))]
    follow = engine.run(model, c, chunk=16, interventions=ivs)
    for site in ("state", "o", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-12, rtol=1e-12, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def test_batched_sequences_each_edited_at_their_own_positions(tmp_path):
    model, _, _ = build(tmp_path, 26, dtype=torch.float32)
    iv = Intervention("layers.0.state", "scale", 0.0, positions=[5, 20])
    tr = batched_edit_matches_each_alone(model, iv, "o", vocab=29, atol=1e-6)
    for s in range(2):
        assert np.all(tr.array("layers.0.state", s)[5] == 0)


def test_embed_and_logits_interventions(tmp_path):
    model, _, _ = build(tmp_path, 27, dtype=torch.float32)
    assert_embed_and_logits_edits(model, vocab=29)


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.0.attn", "zero"), "computed from q, k and beta"),
    (Intervention("layers.0.g", "zero"), "no probe point"),  # no gate in this model
    (Intervention("layers.0.beta", "zero", units=[2]), "units \\[2\\] do not exist"),
    (Intervention("layers.0.state", "zero", units=[128]), "units \\[128\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(tmp_path, iv, message):
    model, _, _ = build(tmp_path, 28, dtype=torch.float32)
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])


# -- gated DeltaNet -----------------------------------------------------------------------------


@pytest.mark.parametrize("site", ["decay", "beta", "state", "v"])
def test_gated_steps_before_t_are_bit_identical_and_later_steps_change(tmp_path, site):
    model, _, _ = build(tmp_path, 29, dtype=torch.float32, gated=True, num_v_heads=4)
    x = ids(140)
    clean = engine.run(model, x, chunk=128)
    edited = engine.run(model, x, chunk=128, interventions=[Intervention(f"layers.0.{site}", "scale", 0.5,
                                                                         positions=Span(100))])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:100], clean[name][:100], err_msg=name)
    assert np.abs(edited["logits"][100:] - clean["logits"][100:]).max() > 1e-4


def test_gated_decay_edits_match_the_reference(tmp_path):
    """A decay of 0 wipes the state before the write; 1 keeps all of it."""
    model, cfg, w = build(tmp_path, 30, gated=True, num_v_heads=4)
    x = ids(90, 9)
    ivs = [Intervention("layers.0.decay", "set", 0.0, positions=[20, 70], units=[1]),
           Intervention("layers.1.decay", "set", 1.0, positions=Span(30, 40)),
           Intervention("layers.1.state", "add", 0.25, positions=[66], units=model.state_units(3))]
    tr = engine.run(model, x, interventions=ivs, chunk=32)

    def wipe(v):
        v[1] = 0.0
        return v

    def keep(v):
        return np.ones_like(v)

    def add(v):
        v[3] += 0.25
        return v

    overrides = {("layers.0.decay", 20): wipe, ("layers.0.decay", 70): wipe, ("layers.1.state", 66): add,
                 **{("layers.1.decay", t): keep for t in range(30, 40)}}
    check(tr, reference_deltanet(w, cfg, x, overrides=overrides))
