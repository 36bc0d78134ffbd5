"""xLSTM interventions act inside the recurrence: causality at every editable probe, hand-checked
edits (clamping the forget gate open, zeroing one head's memory, adding to k, setting the
normaliser, shutting the input gate) against the float64 reference stepped with the same edit,
and a patched state equals running the suffix from that state."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError, Span
from family_checks import batched_edit_matches_each_alone, token_ids as ids
from xlstm_reference import float64_weights, reference_xlstm

transformers = pytest.importorskip("transformers")
from test_xlstm_golden import hf_model, ours, ref_kwargs  # noqa: E402

SITES = ["in", "q", "k", "v", "gate_i", "gate_f", "gate_o", "state", "normalizer", "m", "h", "mix", "out"]


@pytest.mark.parametrize("site", SITES)
def test_steps_before_t_are_bit_identical_and_later_steps_change(site):
    model = ours(hf_model(20, layers=2))
    x = ids(70)
    t = 27  # inside a chunk of 16 (some units only: the multihead norm removes a shift of a whole head)
    clean = engine.run(model, x, chunk=16)
    # n is kept unstabilised and grows like exp(m): a change that matters is a factor, not +0.5
    op, value = ("scale", 3.0) if site == "normalizer" else ("add", 0.5)
    edited = engine.run(model, x, chunk=16,
                        interventions=[Intervention(f"layers.0.{site}", op, value, positions=Span(t), units=[1, 2])])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["layers.1.out"][t:] - clean["layers.1.out"][t:]).max() > 1e-4
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4


def check_against_reference(hf, x, interventions, overrides, layers=2, chunk=8):
    tr = engine.run(ours(hf, torch.float64), x, interventions=interventions, chunk=chunk)
    ref = reference_xlstm(float64_weights(hf.state_dict()), x, layers, overrides=overrides, **ref_kwargs(hf))
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)
    return tr


def test_clamping_the_forget_gate_open_matches_the_reference():
    hf = hf_model(21, layers=2)
    x = ids(30, 1)
    iv = Intervention("layers.0.gate_f", "set", 0.0, positions=Span(10, 14), units=[1, 3])  # log f = 0: f = 1

    def clamp(v):
        v[[1, 3]] = 0.0
        return v

    tr = check_against_reference(hf, x, [iv], {("layers.0.gate_f", t): clamp for t in range(10, 14)})
    assert np.all(tr["layers.0.gate_f"][10:14, [1, 3]] == 0.0)


def test_zeroing_one_heads_memory_matches_the_reference():
    hf = hf_model(22, layers=2)
    model = ours(hf, torch.float64)
    x = ids(40, 2)
    iv = Intervention("layers.1.state", "zero", positions=[12, 25], units=model.state_units(2))

    def zero(v):
        v[2] = 0
        return v

    tr = check_against_reference(hf, x, [iv], {("layers.1.state", 12): zero, ("layers.1.state", 25): zero})
    assert np.all(tr["layers.1.state"][[12, 25], 2] == 0)
    assert np.any(tr["layers.1.state"][[12, 25], 1] != 0)


def test_adding_to_k_setting_the_normalizer_and_shutting_the_input_gate_match_the_reference():
    hf = hf_model(23, layers=2)
    x = ids(33, 3)
    ivs = [Intervention("layers.0.k", "add", [1.0, -2.0], positions=[4, 20], units=[0, 9]),
           Intervention("layers.1.normalizer", "set", 3.0, positions=[7], units=[5]),
           Intervention("layers.1.gate_i", "set", -40.0, positions=Span(15, 19))]

    def add(v):
        v[[0, 9]] += [1.0, -2.0]
        return v

    def set3(v):
        v[1, 1] = 3.0  # unit 5 of [heads 4, d_qk 4]
        return v

    def shut(v):
        v[:] = -40.0
        return v

    overrides = {("layers.0.k", 4): add, ("layers.0.k", 20): add, ("layers.1.normalizer", 7): set3,
                 **{("layers.1.gate_i", t): shut for t in range(15, 19)}}
    check_against_reference(hf, x, ivs, overrides)


def test_patching_the_whole_state_equals_running_the_suffix_from_that_state():
    hf = hf_model(24, layers=2)
    model = ours(hf, torch.float64)
    w = float64_weights(hf.state_dict())
    a, b = ids(60, 4), ids(60, 5)
    t = 29
    src = engine.run(model, a, chunk=16)
    patches = [Intervention(f"layers.0.{site}", "patch", src[f"layers.0.{site}"], positions=[t])
               for site in ("state", "normalizer")]
    patched = engine.run(model, b, chunk=16, interventions=patches)
    for site in ("state", "normalizer"):
        np.testing.assert_array_equal(patched[f"layers.0.{site}"][t], src[f"layers.0.{site}"][t])
    # the suffix t+1.. of layer 0, run by the reference from (patched C and n, b's own m)
    state0 = {0: (src["layers.0.state"][t], src["layers.0.normalizer"][t], patched["layers.0.m"][t])}
    ref = reference_xlstm(w, b[t + 1:], 1, state0=state0, start_layer_input=patched["embed"][t + 1:], **ref_kwargs(hf))
    for site in ("state", "normalizer", "m", "h", "out"):
        np.testing.assert_allclose(patched[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"],
                                   atol=1e-10, rtol=1e-10, err_msg=site)
    # with m patched too and run A's inputs after t, layer 0 follows run A from t + 1 on
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    ivs = patches + [Intervention("layers.0.m", "patch", src["layers.0.m"], positions=[t])]
    follow = engine.run(model, c, chunk=16, interventions=ivs)
    for site in ("state", "normalizer", "m", "h", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-12, rtol=1e-10, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def test_a_state_patch_accepts_the_traces_four_dimensional_array_and_flat_units():
    model = ours(hf_model(25, layers=1))
    src = engine.run(model, ids(20, 6))
    units = model.state_units(1, keys=[0, 2], values=3)
    tr = engine.run(model, ids(20, 7), interventions=[
        Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[8], units=units)])
    got, want = tr["layers.0.state"][8], src["layers.0.state"][8]
    np.testing.assert_array_equal(got[1, [0, 2], 3], want[1, [0, 2], 3])
    assert not np.allclose(got[2], want[2])


def test_batched_sequences_each_edited_at_their_own_positions():
    model = ours(hf_model(27, layers=1))
    iv = Intervention("layers.0.state", "scale", 0.0, positions=[5, 20])
    tr = batched_edit_matches_each_alone(model, iv, "h", atol=1e-5, rtol=1e-5)
    for s in range(2):
        assert np.all(tr.array("layers.0.state", s)[5] == 0)


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.0.attn", "zero"), "computed from q, k and the gates"),
    (Intervention("layers.0.c", "zero"), "no probe point"),
    (Intervention("layers.0.gate_f", "zero", units=[4]), "units \\[4\\] do not exist"),
    (Intervention("layers.0.state", "zero", units=[128]), "units \\[128\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    model = ours(hf_model(28, layers=1))
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])
