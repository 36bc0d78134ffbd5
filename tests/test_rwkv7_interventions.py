"""RWKV-7 interventions act inside the recurrence: causality at every probe (steps before t
bit-identical, later steps changed), hand-checked edits (scaling the decay w, zeroing rows of
the state, adding to k, forcing the in-context rate a, editing layer 0's v, which every later
layer reads as v_first) against the float64 reference stepped with the same edit (1e-10), and
a patched state equals running the suffix from that state."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError, Span
from engine.models.rwkv7 import SITES
from engine.models.rwkv7_loading import load_rwkv7
from family_checks import batched_edit_matches_each_alone, token_ids as ids
from rwkv7_reference import float64_weights, random_state_dict, reference_rwkv7

EDITABLE = [s for s in SITES if s != "attn"]


def model_for(sd, dtype=torch.float32):
    return load_rwkv7(sd, [], name="test", fmt="pth", dtype=dtype, device="cpu")


@pytest.mark.parametrize("site", EDITABLE)
def test_steps_before_t_are_bit_identical_and_later_steps_change(site):
    model = model_for(random_state_dict(20, layers=2))
    x = ids(70)
    t = 37  # inside a chunk of 32 and a piece of 16
    clean = engine.run(model, x, chunk=32)
    units = [0, 1, 2, 4, 5] if site != "state" else model.state_units(0, [1, 2], None)
    edited = engine.run(model, x, chunk=32, interventions=[
        Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t), units=units)])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["layers.1.out"][t] - clean["layers.1.out"][t]).max() > 1e-4
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4
    if site == "state":  # o_t = S_t r_t reads the edited state, and the edit carries on
        assert np.abs(edited["layers.0.o"][t] - clean["layers.0.o"][t]).max() > 1e-4
        assert np.abs(edited["layers.0.state"][t + 1] - clean["layers.0.state"][t + 1]).max() > 1e-4


@pytest.mark.parametrize("op,value", [("zero", None), ("scale", 1e-20), ("scale", 1e4)])
def test_extreme_decay_edits_keep_earlier_steps_bit_identical(op, value):
    """Such decays end a piece of the chunked recurrence early: only from step t on."""
    model = model_for(random_state_dict(20, layers=2))
    x = ids(70)
    t = 37
    clean = engine.run(model, x, chunk=32)
    edited = engine.run(model, x, chunk=32, interventions=[
        Intervention("layers.0.w", op, value, positions=[t, t + 3, t + 4], units=[0, 1])])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
        assert np.isfinite(edited[name]).all(), name
    assert np.abs(edited["layers.0.o"][t + 1] - clean["layers.0.o"][t + 1]).max() > 1e-4


def run64(sd, x, interventions, chunk=16):
    return engine.run(model_for(sd, torch.float64), x, interventions=interventions, chunk=chunk)


def check_against_reference(sd, x, tr, overrides):
    ref = reference_rwkv7(float64_weights(sd), x, overrides=overrides)
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def edit_units(units, f):
    def apply(v):
        v[units] = f(v[units])
        return v
    return apply


def test_scaling_the_decay_matches_the_reference():
    sd = random_state_dict(21, layers=2, dtype=torch.float64)
    x = ids(40, 1)
    iv = Intervention("layers.0.w", "scale", 0.25, positions=Span(10, 14), units=[3, 7])
    tr = run64(sd, x, [iv])
    check_against_reference(sd, x, tr, {("layers.0.w", t): edit_units([3, 7], lambda v: 0.25 * v) for t in range(10, 14)})


def test_zeroing_the_decay_and_state_rows_match_the_reference():
    """w = 0 forgets a key channel at once (the chunked form keeps exact zeros); zeroing a
    head's state empties it: its next output is the current token's write alone."""
    sd = random_state_dict(22, layers=2, dtype=torch.float64)
    model = model_for(sd, torch.float64)
    x = ids(40, 2)
    ivs = [Intervention("layers.0.w", "zero", positions=[5, 6], units=[0, 9]),
           Intervention("layers.1.state", "zero", positions=[12, 25], units=model.state_units(1))]
    tr = engine.run(model, x, interventions=ivs, chunk=8)
    assert np.all(tr["layers.1.state"][[12, 25], 1] == 0) and np.any(tr["layers.1.state"][[12, 25], 0] != 0)
    assert np.all(tr["layers.1.o"][[12, 25], 8:] == 0)  # o_t = S_t r_t reads the emptied head
    v, key, r = (tr[f"layers.1.{s}"][[13, 26], 8:] for s in ("v", "k", "r"))
    np.testing.assert_allclose(tr["layers.1.o"][[13, 26], 8:], v * (key * r).sum(-1, keepdims=True), rtol=1e-12)

    def zero_head(S):
        S[1] = 0
        return S

    overrides = {("layers.0.w", t): edit_units([0, 9], lambda v: 0 * v) for t in (5, 6)}
    overrides.update({("layers.1.state", 12): zero_head, ("layers.1.state", 25): zero_head})
    check_against_reference(sd, x, tr, overrides)


def test_adding_to_k_and_forcing_the_learning_rate_match_the_reference():
    sd = random_state_dict(23, layers=1, dtype=torch.float64)
    x = ids(33, 3)
    ivs = [Intervention("layers.0.k", "add", [1.0, -2.0], positions=[4, 20], units=[0, 3]),
           Intervention("layers.0.a", "set", 1.0, positions=Span(8, 12))]
    tr = run64(sd, x, ivs)
    overrides = {("layers.0.k", t): edit_units([0, 3], lambda v: v + [1.0, -2.0]) for t in (4, 20)}
    overrides.update({("layers.0.a", t): edit_units(slice(None), lambda v: 0 * v + 1.0) for t in range(8, 12)})
    check_against_reference(sd, x, tr, overrides)


def test_layer0_v_edits_reach_later_layers_through_v_first():
    sd = random_state_dict(24, layers=3, dtype=torch.float64)
    x = ids(30, 4)
    iv = Intervention("layers.0.v", "set", 3.0, positions=[11], units=[2, 5])
    tr = run64(sd, x, [iv])
    check_against_reference(sd, x, tr, {("layers.0.v", 11): edit_units([2, 5], lambda v: 0 * v + 3.0)})
    clean = run64(sd, x, [])
    assert np.abs(tr["layers.2.v"][11] - clean["layers.2.v"][11]).max() > 1e-6


def test_patching_the_whole_state_equals_running_the_suffix_from_that_state():
    sd = random_state_dict(25, layers=1, dtype=torch.float64)
    model = model_for(sd, torch.float64)
    w = float64_weights(sd)
    a, b = ids(60, 4), ids(60, 5)
    t = 29
    src = engine.run(model, a, chunk=16)
    patched = engine.run(model, b, chunk=16,
                         interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    np.testing.assert_array_equal(patched["layers.0.state"][t], src["layers.0.state"][t])
    # the suffix t+1.. run by the reference from (patched state, b's token shifts)
    state0 = {0: (src["layers.0.state"][t], patched["layers.0.in"][t], patched["layers.0.ffn_in"][t])}
    ref = reference_rwkv7(w, b[t + 1:], state0=state0, start_layer_input=patched["embed"][t + 1:])
    for site in ("state", "o", "att", "out", "logits"):
        name = site if site == "logits" else f"layers.0.{site}"
        np.testing.assert_allclose(patched[name][t + 1:], ref[name], atol=1e-10, rtol=1e-10, err_msg=site)
    # with run A's inputs after t and the token shifts patched too, layer 0 follows run A from
    # t + 1 on: the state and the two token shifts are the whole recurrent state
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    ivs = [Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t]),
           Intervention("layers.0.in", "patch", src["layers.0.in"], positions=[t]),
           Intervention("layers.0.ffn_in", "patch", src["layers.0.ffn_in"], positions=[t])]
    follow = engine.run(model, c, chunk=16, interventions=ivs)
    for site in ("state", "o", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-12, rtol=1e-12, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def test_several_state_edits_in_one_piece():
    sd = random_state_dict(26, layers=1, dtype=torch.float64)
    model = model_for(sd, torch.float64)
    x = ids(50, 6)
    units = model.state_units(0, None, [1, 2])
    ivs = [Intervention("layers.0.state", "scale", 0.5, positions=[17, 18, 23, 31], units=units)]
    tr = engine.run(model, x, interventions=ivs, chunk=32)

    def halve(S):
        S[0, :, 1:3] *= 0.5
        return S

    check_against_reference(sd, x, tr, {("layers.0.state", t): halve for t in (17, 18, 23, 31)})


def test_state_units_and_the_traces_four_dimensional_patch():
    model = model_for(random_state_dict(27, layers=1))
    assert model.state_units(1, 2, 3) == [64 + 2 * 8 + 3]
    assert model.state_units([0, 1], [0], [0, 1]) == [0, 1, 64, 65]
    src = engine.run(model, ids(20, 6))
    tr = engine.run(model, ids(20, 7), interventions=[
        Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[8], units=model.state_units(1))])
    got, want = tr["layers.0.state"][8], src["layers.0.state"][8]
    np.testing.assert_array_equal(got[1], want[1])
    assert not np.allclose(got[0], want[0])


def test_batched_sequences_each_edited_at_their_own_positions():
    model = model_for(random_state_dict(28, layers=1))
    iv = Intervention("layers.0.state", "scale", 0.0, positions=[5, 20], units=model.state_units(0))
    tr = batched_edit_matches_each_alone(model, iv, "o", atol=1e-5, rtol=1e-5)
    for s in range(2):
        assert np.all(tr.array("layers.0.state", s)[5, 0] == 0)


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.0.attn", "zero"), "computed from r, w, k, kk and a"),
    (Intervention("layers.0.h", "zero"), "no probe point"),
    (Intervention("layers.0.k", "zero", units=[16]), "units \\[16\\] do not exist"),
    (Intervention("layers.0.state", "zero", units=[128]), "units \\[128\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    model = model_for(random_state_dict(29, layers=1))
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])
