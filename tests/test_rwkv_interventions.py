"""RWKV-4 interventions act inside the recurrence: causality at every probe, hand-checked edits
(scaling the decay w, zeroing a state channel, adding to k, removing the bonus u) against the
float64 reference stepped with the same edit, and a patched state equals running the suffix
from that state."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError, Span
from engine.models.rwkv import numba_available
from family_checks import assert_embed_and_logits_edits, batched_edit_matches_each_alone, token_ids as ids
from rwkv_reference import float64_weights, reference_rwkv

transformers = pytest.importorskip("transformers")
from test_rwkv_golden import hf_model, ours  # noqa: E402

SCANS = ["torch"] + (["numba"] if numba_available() else [])
SITES = ["att_in", "r", "k", "v", "w", "u", "state", "wkv", "att", "ffn_in", "ffn_k", "ffn_r", "ffn", "out"]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("site", SITES)
def test_steps_before_t_are_bit_identical_and_later_steps_change(site, scan):
    model = ours(hf_model(20, layers=2), scan)
    x = ids(70)
    t = 27  # inside a chunk of 16
    clean = engine.run(model, x, chunk=16)
    # a few units: a shift of every unit of the residual stream is invisible to LayerNorm
    edited = engine.run(model, x, chunk=16, interventions=[
        Intervention(f"layers.0.{site}", "add", 0.5, positions=Span(t), units=[0, 1, 2, 4, 5])])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    # w_t and the state after step t act from step t + 1 on; everything else at t already
    first = t + 1 if site in ("w", "state") else t
    assert np.abs(edited["layers.1.out"][first:first + 1] - clean["layers.1.out"][first:first + 1]).max() > 1e-4
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4
    if site in ("w", "state"):
        np.testing.assert_array_equal(edited["layers.0.wkv"][t], clean["layers.0.wkv"][t])


def run64(hf, x, interventions, chunk=8, scan="torch"):
    return engine.run(ours(hf, scan, torch.float64), x, interventions=interventions, chunk=chunk)


def check_against_reference(hf, x, tr, layers, overrides):
    ref = reference_rwkv(float64_weights(hf.state_dict()), x, layers, overrides=overrides)
    for name, expected in ref.items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("scan", SCANS)
def test_scaling_the_decay_matches_the_reference(scan):
    hf = hf_model(21, layers=2)
    x = ids(30, 1)
    iv = Intervention("layers.0.w", "scale", 0.25, positions=Span(10, 14), units=[3, 7])
    tr = run64(hf, x, [iv], scan=scan)
    w0 = tr["layers.0.w"][0]
    np.testing.assert_array_equal(tr["layers.0.w"][10:14, [3, 7]], np.broadcast_to(0.25 * w0[[3, 7]], (4, 2)))
    np.testing.assert_array_equal(tr["layers.0.w"][14], w0)

    def scale(v):
        v[[3, 7]] *= 0.25
        return v

    check_against_reference(hf, x, tr, 2, {("layers.0.w", t): scale for t in range(10, 14)})


@pytest.mark.parametrize("scan", SCANS)
def test_zeroing_a_state_channel_matches_the_reference(scan):
    hf = hf_model(22, layers=2)
    model = ours(hf, scan, torch.float64)
    x = ids(40, 2)
    iv = Intervention("layers.1.state", "zero", positions=[12, 25], units=model.state_units(5, ["num", "den"]))
    tr = engine.run(model, x, interventions=[iv], chunk=8)
    assert np.all(tr["layers.1.state"][[12, 25], 5, :2] == 0) and np.all(tr["layers.1.state"][[12, 25], 5, 2] != 0)
    assert np.any(tr["layers.1.state"][[12, 25], 6] != 0)
    # an emptied channel's next output is the next value itself (only the current token is left)
    np.testing.assert_allclose(tr["layers.1.wkv"][[13, 26], 5], tr["layers.1.v"][[13, 26], 5], rtol=1e-12)

    def zero(v):
        v[5, :2] = 0
        return v

    check_against_reference(hf, x, tr, 2, {("layers.1.state", 12): zero, ("layers.1.state", 25): zero})


@pytest.mark.parametrize("scan", SCANS)
def test_adding_to_k_and_removing_the_bonus_match_the_reference(scan):
    hf = hf_model(23, layers=1)
    x = ids(33, 3)
    ivs = [Intervention("layers.0.k", "add", [1.0, -2.0], positions=[4, 20], units=[0, 3]),
           Intervention("layers.0.u", "set", -30.0, positions=Span(8, 12))]
    tr = run64(hf, x, ivs, scan=scan)

    def add(v):
        v[[0, 3]] += [1.0, -2.0]
        return v

    def unbonus(v):
        v[:] = -30.0
        return v

    overrides = {("layers.0.k", 4): add, ("layers.0.k", 20): add}
    overrides.update({("layers.0.u", t): unbonus for t in range(8, 12)})
    check_against_reference(hf, x, tr, 1, overrides)


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
    # the suffix t+1.. of layer 0, run by the reference from (patched state, b's token shifts)
    state0 = {0: (src["layers.0.state"][t], patched["layers.0.att_in"][t], patched["layers.0.ffn_in"][t])}
    ref = reference_rwkv(w, b[t + 1:], 1, state0=state0, start_layer_input=patched["embed"][t + 1:])
    for site in ("state", "wkv", "att", "out", "k"):
        np.testing.assert_allclose(patched[f"layers.0.{site}"][t + 1:], ref[f"layers.0.{site}"],
                                   atol=1e-10, rtol=1e-10, err_msg=site)
    # and when the inputs after t are run A's, with the token shifts patched too, layer 0 follows
    # run A from t + 1 on: state + previous att_in + previous ffn_in are the whole recurrent state
    c = np.concatenate([b[:t + 1], a[t + 1:]])
    ivs = [Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t]),
           Intervention("layers.0.att_in", "patch", src["layers.0.att_in"], positions=[t]),
           Intervention("layers.0.ffn_in", "patch", src["layers.0.ffn_in"], positions=[t])]
    follow = engine.run(model, c, chunk=16, interventions=ivs)
    for site in ("state", "wkv", "out"):
        np.testing.assert_allclose(follow[f"layers.0.{site}"][t + 1:], src[f"layers.0.{site}"][t + 1:],
                                   atol=1e-12, rtol=1e-12, err_msg=site)
    assert np.abs(follow["layers.0.out"][:t] - src["layers.0.out"][:t]).max() > 1e-3


def test_a_state_patch_accepts_the_traces_three_dimensional_array_and_flat_units():
    model = ours(hf_model(25, layers=1))
    src = engine.run(model, ids(20, 6))
    tr = engine.run(model, ids(20, 7), interventions=[
        Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[8],
                     units=model.state_units([2, 3], "num"))])
    got, want = tr["layers.0.state"][8], src["layers.0.state"][8]
    np.testing.assert_array_equal(got[[2, 3], 0], want[[2, 3], 0])
    assert not np.allclose(got[4], want[4])
    assert model.state_units(1) == [3, 4, 5] and model.state_units([0, 2], [0, 1]) == [0, 1, 6, 7]


def test_embed_and_logits_interventions():
    model = ours(hf_model(26, layers=2), SCANS[-1])
    assert_embed_and_logits_edits(model)


def test_batched_sequences_each_edited_at_their_own_positions():
    model = ours(hf_model(27, layers=1), SCANS[-1])
    iv = Intervention("layers.0.state", "scale", 0.0, positions=[5, 20], units=model.state_units(range(16), [0, 1]))
    tr = batched_edit_matches_each_alone(model, iv, "wkv", atol=1e-6)
    for s in range(2):
        assert np.all(tr.array("layers.0.state", s)[5, :, :2] == 0)


@pytest.mark.parametrize("iv,message", [
    (Intervention("layers.0.attn", "zero"), "computed from k, w, u"),
    (Intervention("layers.0.h", "zero"), "no probe point"),
    (Intervention("layers.0.k", "zero", units=[16]), "units \\[16\\] do not exist"),
    (Intervention("layers.0.state", "zero", units=[48]), "units \\[48\\] do not exist"),
])
def test_bad_interventions_are_refused_in_words(iv, message):
    model = ours(hf_model(28, layers=1))
    with pytest.raises(InterventionError, match=message):
        engine.run(model, ids(10), interventions=[iv])
