"""Mamba interventions act inside the recurrence: causality at every probe, hand-checked edits
(clamping dt, zeroing a state channel, adding to B, patching the whole state) against the
float64 reference stepped with the same edit, and a patched state equals running the suffix
from that state."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError, Span
from engine.models.mamba import numba_available
from family_checks import assert_embed_and_logits_edits, batched_edit_matches_each_alone, token_ids as ids
from mamba_reference import float64_weights, reference_mamba

transformers = pytest.importorskip("transformers")
from test_mamba_golden import hf_model, ours  # noqa: E402

SCANS = ["torch"] + (["numba"] if numba_available() else [])
SITES = ["in", "conv", "dt", "B", "C", "state", "gate", "y", "mixer", "out"]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("site", SITES)
def test_steps_before_t_are_bit_identical_and_later_steps_change(site, scan):
    model = ours(hf_model(20, layers=2), scan)
    x = ids(70)
    t = 27  # inside a chunk of 16
    clean = engine.run(model, x, chunk=16)
    edited = engine.run(model, x, chunk=16,
                        interventions=[Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t))])
    for name in clean.probes:
        a, b = edited[name][:t], clean[name][:t]
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert np.abs(edited["layers.1.out"][t:] - clean["layers.1.out"][t:]).max() > 1e-4
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4


def run64(hf, x, interventions, chunk=8, scan="torch"):
    return engine.run(ours(hf, scan, torch.float64), x, interventions=interventions, chunk=chunk)


@pytest.mark.parametrize("scan", SCANS)
def test_clamping_dt_matches_the_reference(scan):
    hf = hf_model(21, layers=2)
    x = ids(30, 1)
    iv = Intervention("layers.0.dt", "set", 0.5, positions=Span(10, 14), units=[3, 7])
    tr = run64(hf, x, [iv], scan=scan)
    assert np.all(tr["layers.0.dt"][10:14, [3, 7]] == 0.5)

    def clamp(v):
        v[[3, 7]] = 0.5
        return v

    ref = reference_mamba(float64_weights(hf.state_dict()), x, 2,
                          overrides={("layers.0.dt", t): clamp for t in range(10, 14)})
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("scan", SCANS)
def test_zeroing_a_state_channel_matches_the_reference(scan):
    hf = hf_model(22, layers=2)
    model = ours(hf, scan, torch.float64)
    x = ids(40, 2)
    iv = Intervention("layers.1.state", "zero", positions=[12, 25], units=model.state_units(5))
    tr = engine.run(model, x, interventions=[iv], chunk=8)
    assert np.all(tr["layers.1.state"][[12, 25], 5] == 0)
    assert np.any(tr["layers.1.state"][[12, 25], 6] != 0)

    def zero(v):
        v[5] = 0
        return v

    ref = reference_mamba(float64_weights(hf.state_dict()), x, 2,
                          overrides={("layers.1.state", 12): zero, ("layers.1.state", 25): zero})
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("scan", SCANS)
def test_adding_to_B_matches_the_reference(scan):
    hf = hf_model(23, layers=1)
    x = ids(33, 3)
    iv = Intervention("layers.0.B", "add", [1.0, -2.0], positions=[4, 20], units=[0, 3])
    tr = run64(hf, x, [iv], scan=scan)

    def add(v):
        v[[0, 3]] += [1.0, -2.0]
        return v

    ref = reference_mamba(float64_weights(hf.state_dict()), x, 1,
                          overrides={("layers.0.B", 4): add, ("layers.0.B", 20): add})
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("scan", SCANS)
def test_patching_the_whole_state_equals_running_the_suffix_from_that_state(scan):
    hf = hf_model(24, layers=2)
    model = ours(hf, scan, torch.float64)
    w = float64_weights(hf.state_dict())
    a, b = ids(60, 4), ids(60, 5)
    t = 29
    src = engine.run(model, a, chunk=16)
    patched = engine.run(model, b, chunk=16,
                         interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    np.testing.assert_array_equal(patched["layers.0.state"][t], src["layers.0.state"][t])
    # the suffix t+1.. of layer 0, run by the reference from (patched state, b's conv buffer)
    K = 4
    state0 = {0: (src["layers.0.state"][t], patched["layers.0.in"][t - K + 2:t + 1])}
    ref = reference_mamba(w, b[t + 1:], 1, state0=state0, start_layer_input=patched["embed"][t + 1:])
    for site in ("state", "y", "out", "conv", "dt"):
        np.testing.assert_allclose(patched[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"],
                                   atol=1e-10, rtol=1e-10, err_msg=site)
    # and when the inputs after t are the same as run A's, with the conv buffer patched too,
    # layer 0 follows run A from t + 1 on
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    ivs = [Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t]),
           Intervention("layers.0.in", "patch", src["layers.0.in"], positions=Span(t - K + 2, t + 1))]
    follow = engine.run(model, c, chunk=16, interventions=ivs)
    for site in ("state", "y", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-12, rtol=1e-12, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def test_a_state_patch_accepts_the_traces_three_dimensional_array_and_flat_units():
    model = ours(hf_model(25, layers=1))
    src = engine.run(model, ids(20, 6))
    tr = engine.run(model, ids(20, 7), interventions=[
        Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[8], units=model.state_units([2, 3], 1))])
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
    (Intervention("layers.0.B", "zero", units=[4]), "units \\[4\\] do not exist"),
    (Intervention("layers.0.state", "zero", units=[128]), "units \\[128\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    model = ours(hf_model(28, layers=1))
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])
