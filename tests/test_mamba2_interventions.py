"""Mamba2 interventions act inside the recurrence: causality at every probe (bit-identical
before the edited step, changed after it), hand-checked edits (clamping dt, zeroing a state
channel, adding to B, patching the whole state) against the float64 reference stepped with the
same edit (tolerance 1e-10), and a patched state equals running the suffix from that state."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError, Span
from family_checks import assert_embed_and_logits_edits, batched_edit_matches_each_alone, token_ids as ids

transformers = pytest.importorskip("transformers")
from test_mamba2_golden import hf_model, ours, reference  # noqa: E402

SITES = ["in", "z", "x", "B", "C", "dt", "state", "y", "gated", "out"]


@pytest.mark.parametrize("chunk", [16, 256])
@pytest.mark.parametrize("site", SITES)
def test_steps_before_t_are_bit_identical_and_later_steps_change(site, chunk):
    model = ours(hf_model(20, layers=2, groups=2))
    model.attention_window = ((0, 100), (0, 100))
    x = ids(100)
    t = 27  # inside a chunk of 16 and inside an SSD block
    clean = engine.run(model, x, chunk=chunk)
    edited = engine.run(model, x, chunk=chunk,
                        interventions=[Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t))])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["layers.1.out"][t:] - clean["layers.1.out"][t:]).max() > 1e-4
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4


def run64(hf, x, interventions, chunk=8):
    return engine.run(ours(hf, torch.float64), x, interventions=interventions, chunk=chunk)


def assert_matches(trace, ref):
    for name, expected in ref.items():
        np.testing.assert_allclose(trace[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_clamping_dt_matches_the_reference():
    hf = hf_model(21, layers=2, groups=2)
    x = ids(30, 1)
    iv = Intervention("layers.0.dt", "set", 0.5, positions=Span(10, 14), units=[3, 7])
    tr = run64(hf, x, [iv])
    assert np.all(tr["layers.0.dt"][10:14, [3, 7]] == 0.5)

    def clamp(v):
        v[[3, 7]] = 0.5
        return v

    assert_matches(tr, reference(hf, x, overrides={("layers.0.dt", t): clamp for t in range(10, 14)}))


@pytest.mark.parametrize("chunk", [8, 64])
def test_zeroing_a_state_channel_matches_the_reference(chunk):
    hf = hf_model(22, layers=2)
    model = ours(hf, torch.float64)
    x = ids(40, 2)
    iv = Intervention("layers.1.state", "zero", positions=[12, 25], units=model.state_units(5))
    tr = engine.run(model, x, interventions=[iv], chunk=chunk)
    assert np.all(tr["layers.1.state"][[12, 25], 5] == 0)
    assert np.any(tr["layers.1.state"][[12, 25], 6] != 0)

    def zero(v):  # channel 5 = head 1, row 1 (head_dim 4)
        v[1, 1] = 0
        return v

    assert_matches(tr, reference(hf, x, overrides={("layers.1.state", 12): zero, ("layers.1.state", 25): zero}))


def test_zeroing_a_whole_head_matches_the_reference():
    hf = hf_model(22, layers=1)
    model = ours(hf, torch.float64)
    x = ids(70, 3)
    iv = Intervention("layers.0.state", "zero", positions=Span(30, 32), units=model.state_units(model.head_channels(2)))
    tr = engine.run(model, x, interventions=[iv], chunk=64)

    def zero(v):
        v[2] = 0
        return v

    assert_matches(tr, reference(hf, x, overrides={("layers.0.state", t): zero for t in (30, 31)}))


def test_adding_to_B_matches_the_reference():
    hf = hf_model(23, layers=1, groups=2)
    x = ids(33, 3)
    iv = Intervention("layers.0.B", "add", [1.0, -2.0], positions=[4, 20], units=[0, 7])
    tr = run64(hf, x, [iv])

    def add(v):
        v[[0, 7]] += [1.0, -2.0]
        return v

    assert_matches(tr, reference(hf, x, overrides={("layers.0.B", 4): add, ("layers.0.B", 20): add}))


def test_patching_the_whole_state_equals_running_the_suffix_from_that_state():
    hf = hf_model(24, layers=2, groups=2)
    model = ours(hf, torch.float64)
    a, b = ids(90, 4), ids(90, 5)
    t = 29
    src = engine.run(model, a, chunk=64)
    patched = engine.run(model, b, chunk=64,
                         interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    np.testing.assert_array_equal(patched["layers.0.state"][t], src["layers.0.state"][t])
    # the suffix t+1.. of layer 0, run by the reference from (patched state, b's own conv buffer)
    K, H, P = 4, 8, 4
    w = hf.state_dict()
    m = "backbone.layers.0.mixer."
    n = torch.tensor(patched["layers.0.in"][t - K + 2:t + 1])
    xbc = (n @ w[m + "in_proj.weight"].double().T)[:, 32:32 + 48].numpy()
    state0 = {0: (src["layers.0.state"][t].reshape(H, P, -1), xbc)}
    ref = reference_suffix(hf, b[t + 1:], state0, patched["embed"][t + 1:])
    for site in ("state", "y", "out", "x", "dt"):
        np.testing.assert_allclose(patched[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"],
                                   atol=1e-10, rtol=1e-10, err_msg=site)
    # with the inputs after t those of run A and the conv buffer patched too (through `in`),
    # layer 0 follows run A from t + 1 on
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    ivs = [Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t]),
           Intervention("layers.0.in", "patch", src["layers.0.in"], positions=Span(t - K + 2, t + 1))]
    follow = engine.run(model, c, chunk=64, interventions=ivs)
    for site in ("state", "y", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-12, rtol=1e-12, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def reference_suffix(hf, x, state0, embeds):
    from mamba2_reference import float64_weights, reference_mamba2

    c = hf.config
    return reference_mamba2(float64_weights(hf.state_dict()), x, 1, n_groups=c.n_groups, state0=state0,
                            start_layer_input=embeds)


def test_a_state_patch_accepts_the_traces_three_dimensional_array_and_flat_units():
    model = ours(hf_model(25, layers=1))
    src = engine.run(model, ids(20, 6))
    units = model.state_units([2, 3], 1)
    tr = engine.run(model, ids(20, 7), interventions=[
        Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[8], units=units)])
    got, want = tr["layers.0.state"][8], src["layers.0.state"][8]
    np.testing.assert_array_equal(got[[2, 3], 1], want[[2, 3], 1])
    assert not np.allclose(got[4], want[4])


def test_embed_and_logits_interventions():
    model = ours(hf_model(26, layers=2))
    assert_embed_and_logits_edits(model)


def test_batched_sequences_each_edited_at_their_own_positions():
    model = ours(hf_model(27, layers=1))
    iv = Intervention("layers.0.state", "scale", 0.0, positions=[5, 20])
    tr = batched_edit_matches_each_alone(model, iv, "y", atol=1e-6)
    for s in range(2):
        assert np.all(tr.array("layers.0.state", s)[5] == 0)


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.0.attn", "zero"), "computed from dt, B and C"),
    (Intervention("layers.0.h", "zero"), "no probe point"),
    (Intervention("layers.0.dt", "zero", units=[8]), "units \\[8\\] do not exist"),
    (Intervention("layers.0.state", "zero", units=[128]), "units \\[128\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    model = ours(hf_model(28, layers=1))
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])
