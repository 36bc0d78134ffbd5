"""GLA / RetNet interventions act inside the recurrence: causality at every editable probe,
hand-checked edits (scaling the gate, zeroing a head's state, adding to k, setting v) against
the float64 reference stepped with the same edit, and a patched state equals running the suffix
from that state.  Tolerances: float64 runs vs the reference within 1e-10."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError, Span
from family_checks import batched_edit_matches_each_alone
from gla_reference import float64_weights, reference_lm
from test_gla_golden import build, ids

FAMILIES = ["gla", "retnet"]


def editable_sites(model):
    return [s for s in model.sites if s != "attn"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("t", [27, 90])  # inside the first sub-chunk, inside the second
def test_steps_before_t_are_bit_identical_and_later_steps_change(family, t):
    model, _, _ = build(family, seed=20, use_short_conv=True)
    x = ids(140)
    clean = engine.run(model, x, chunk=128)
    for site in editable_sites(model):
        edited = engine.run(model, x, chunk=128, interventions=[
            Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t), units=[0, 1, 2, 4, 5])])
        for name in clean.probes:
            np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=f"{site}: {name}")
        # every site acts at step t already (an edited state S_t is the one o_t reads)
        assert np.abs(edited["layers.1.out"][t] - clean["layers.1.out"][t]).max() > 1e-4, site
        assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4, site


def check_against_reference(sd, cfg, x, tr, overrides):
    ref = reference_lm(float64_weights(sd), cfg, x, overrides=overrides)
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_scaling_the_gate_and_adding_to_k_match_the_reference():
    model, sd, cfg = build("gla", seed=21, dtype=torch.float64, use_short_conv=True)
    x = ids(100, 1)
    ivs = [Intervention("layers.0.gate", "scale", 0.25, positions=Span(10, 80), units=[3, 7]),
           Intervention("layers.1.k", "add", [1.0, -2.0], positions=[4, 70], units=[0, 3])]
    tr = engine.run(model, x, interventions=ivs, chunk=32)

    def scale(v):
        v[[3, 7]] *= 0.25
        return v

    def add(v):
        v[[0, 3]] += [1.0, -2.0]
        return v

    overrides = {("layers.0.gate", t): scale for t in range(10, 80)}
    overrides.update({("layers.1.k", 4): add, ("layers.1.k", 70): add})
    check_against_reference(sd, cfg, x, tr, overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_a_heads_state_and_setting_v_match_the_reference(family):
    model, sd, cfg = build(family, seed=22, dtype=torch.float64)
    c = model.config
    x = ids(90, 2)
    ivs = [Intervention("layers.1.state", "zero", positions=[12, 70], units=model.state_units(1)),
           Intervention("layers.0.v", "set", 3.0, positions=Span(30, 34), units=[2])]
    tr = engine.run(model, x, interventions=ivs, chunk=64)
    K, V = c.head_k, c.head_v
    st = tr["layers.1.state"]
    assert np.all(st[[12, 70], K:2 * K] == 0) and np.any(st[[12, 70], :K] != 0)
    # an emptied head's next output reads only the current token: o = (q/sqrt(K)) . k  v
    q, k, v = (tr[f"layers.1.{s}"][13] for s in "qkv")
    kv_head = 1 // c.groups
    want = (q[K:2 * K] * K ** -0.5 @ k[kv_head * K:(kv_head + 1) * K]) * v[kv_head * V:(kv_head + 1) * V]
    np.testing.assert_allclose(tr["layers.1.o"][13, V:2 * V], want, rtol=1e-12)

    def zero(s):
        s[K:2 * K] = 0
        return s

    def set3(v):
        v[2] = 3.0
        return v

    overrides = {("layers.1.state", 12): zero, ("layers.1.state", 70): zero}
    overrides.update({("layers.0.v", t): set3 for t in range(30, 34)})
    check_against_reference(sd, cfg, x, tr, overrides)


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_the_whole_state_equals_running_the_suffix_from_that_state(family):
    model, sd, cfg = build(family, seed=24, dtype=torch.float64)
    a, b = ids(100, 4), ids(100, 5)
    t = 70
    src = engine.run(model, a, chunk=32)
    patched = engine.run(model, b, chunk=32,
                         interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    np.testing.assert_array_equal(patched["layers.0.state"][t], src["layers.0.state"][t])
    # the suffix t+1.. of layer 0, run by the reference from the patched state
    ref = reference_lm(float64_weights(sd), {**cfg, "num_hidden_layers": 1}, b[t + 1:],
                       state0={0: src["layers.0.state"][t]}, start_layer_input=patched["embed"][t + 1:],
                       start_position=t + 1)
    for site in ("state", "o", "mixer", "out", "q"):
        np.testing.assert_allclose(patched[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"],
                                   atol=1e-10, rtol=1e-10, err_msg=site)
    # with run A's tokens after t, layer 0 follows run A from t + 1 on: the state is all it carries
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    follow = engine.run(model, c, chunk=32, interventions=[
        Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    for site in ("state", "o", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-11, rtol=1e-11, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def test_batched_sequences_each_edited_at_their_own_positions():
    model, _, _ = build("gla", seed=27, dtype=torch.float64)
    iv = Intervention("layers.0.state", "scale", 0.0, positions=[5, 20], units=model.state_units(0))
    tr = batched_edit_matches_each_alone(model, iv, "o", lengths=(70, 25), chunk=16, atol=1e-12)
    for s in range(2):
        assert np.all(tr.array("layers.0.state", s)[[5, 20], :model.config.head_k] == 0)


def test_state_units_index_the_flattened_state():
    model, _, _ = build("retnet", seed=28)
    c = model.config
    K, V = c.head_k, c.head_v
    assert model.state_units(0, 0, 0) == [0]
    assert model.state_units(1, 2, [0, 3]) == [(K + 2) * V, (K + 2) * V + 3]
    assert len(model.state_units(1)) == K * V


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.0.attn", "zero"), "computed from q, k"),
    (Intervention("layers.0.h", "zero"), "no probe point"),
    (Intervention("layers.0.gate", "zero"), "no probe point"),  # RetNet's decay is fixed
    (Intervention("layers.0.k", "zero", units=[32]), "units \\[32\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    model, _, _ = build("retnet", seed=29)
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])
