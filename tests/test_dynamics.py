"""Dynamics (engine.analysis.state_step, jacobian, fixed_points): checked against torch's own
modules, the engine's forward pass, and systems whose fixed points are known by hand.

- one step of every family's state update reproduces the next recorded state of a run;
- Jacobians equal torch.autograd through ``nn.LSTM`` / ``nn.GRU`` single steps: 1e-12 in
  float64, 1e-5 for float32 modules (our step computes in float64 from the float32 weights);
- a 2-D Elman network built with a known stable fixed point and a known saddle finds both
  (and the third, mirror point) with the right stability, at the positions a bisection finds;
- the bundled delayed-match LSTM has two point attractors in its delay period, one per sample
  sign, with a saddle between them.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis import fixed_points as FP
from engine.analysis import jacobian as JA
from engine.analysis import state_step as SS
from engine.models.stack import from_torch
from engine.tokenizers import read_numeric

# -- one step reproduces the run --------------------------------------------------------------


def _classic_model(kind, dtype=torch.float64, layers=2, **kw):
    torch.manual_seed(3)
    mod = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](4, 6, layers, **kw).to(dtype)
    emb = nn.Embedding(9, 4).to(dtype)
    return mod, from_torch(mod, emb, dtype=dtype)


CLASSIC = [("lstm", {}), ("lstm", {"proj_size": 3}), ("gru", {}), ("rnn", {}), ("rnn", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("kind,kw", CLASSIC, ids=lambda c: str(c))
def test_a_classic_step_reproduces_the_next_recorded_state(kind, kw):
    _, model = _classic_model(kind, **kw)
    tr = engine.run(model, [np.arange(30) % 9, np.arange(12) % 5])
    for layer in range(2):
        step = SS.state_step(model, layer)
        for seq in range(2):
            with torch.no_grad():
                got = step(torch.as_tensor(step.previous_states(tr, seq)), torch.as_tensor(step.inputs(tr, seq)))
            np.testing.assert_allclose(got.numpy(), step.states(tr, seq), atol=1e-12)


def test_keras_style_variants_step_through_their_own_equations():
    torch.manual_seed(0)
    gru = nn.GRU(3, 5).double()
    model = from_torch(gru, reset_after=False, recurrent_activation="hard_sigmoid", dtype=torch.float64)
    x = np.random.default_rng(0).standard_normal((25, 3))
    tr = engine.run(model, x)
    step = SS.state_step(model, 0)
    with torch.no_grad():
        got = step(torch.as_tensor(step.previous_states(tr)), torch.as_tensor(step.inputs(tr)))
    np.testing.assert_allclose(got.numpy(), step.states(tr), atol=1e-12)


def _diagonal_models(tmp_path):
    from test_hgrn import make as hgrn
    from test_mamba_golden import hf_model, ours
    from test_mingru import make as mingru
    from test_recurrent_gemma_golden import hf_model as rg

    from engine.models.recurrent_gemma_loading import from_transformers

    return {"mamba": ours(hf_model(seed=1), dtype=torch.float64), "hgrn": hgrn(dtype=torch.float64)[0],
            "mingru": mingru(dtype=torch.float64)[0], "minlstm": mingru("minlstm", dtype=torch.float64)[0],
            "recurrent_gemma": from_transformers(rg(), dtype=torch.float64)}


def test_a_diagonal_step_reproduces_the_next_recorded_state(tmp_path):
    for name, model in _diagonal_models(tmp_path).items():
        tr = engine.run(model, [np.arange(20) % 7, np.arange(9) % 4])
        layers = [k for k in range(model.num_layers)
                  if name != "recurrent_gemma" or model.config.kind(k) == "recurrent"]
        for layer in layers:
            step = SS.state_step(model, layer)
            for seq in range(2):
                with torch.no_grad():
                    got = step(torch.as_tensor(step.previous_states(tr, seq)), torch.as_tensor(step.inputs(tr, seq)))
                np.testing.assert_allclose(got.numpy(), step.states(tr, seq), atol=1e-10, err_msg=f"{name} {layer}")
            # the Jacobian is diag(decay): the same from autograd and from the decays
            u = step.inputs(tr, 0)[3]
            s = step.states(tr, 0)[2]
            auto = torch.autograd.functional.jacobian(lambda v: step(v, torch.as_tensor(u)), torch.as_tensor(s))
            np.testing.assert_allclose(JA.jacobian(step, s, u), auto.numpy(), atol=1e-14)


def test_families_without_a_single_step_and_bidirectional_layers_are_refused():
    from test_lru import make

    with pytest.raises(SS.NoStateStep, match="not written as a single step"):
        SS.state_step(make()[0], 0)
    _, bi = _classic_model("gru", bidirectional=True)
    with pytest.raises(SS.NoStateStep, match="bidirectional"):
        SS.state_step(bi, 0)
    _, model = _classic_model("gru")
    with pytest.raises(SS.NoStateStep, match="layers 0..1"):
        SS.state_step(model, 2)


# -- Jacobians against torch.autograd through nn.LSTM / nn.GRU --------------------------------------


def _torch_jacobian(mod, x, state):
    """d(state after one step) / d(state before), through the torch module itself."""
    if isinstance(mod, nn.LSTM):
        H = mod.hidden_size
        P = mod.proj_size or H

        def f(s):
            _, (h, c) = mod(x.view(1, 1, -1), (s[:P].view(1, 1, -1), s[P:].view(1, 1, -1)))
            return torch.cat([h.view(-1), c.view(-1)])
    else:
        def f(s):
            _, h = mod(x.view(1, 1, -1), s.view(1, 1, -1))
            return h.view(-1)
    return torch.autograd.functional.jacobian(f, state)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("kind,kw", [("lstm", {}), ("lstm", {"proj_size": 4}), ("gru", {})], ids=str)
def test_jacobians_equal_torch_autograd_through_the_torch_module(kind, kw, dtype, tol):
    torch.manual_seed(1)
    mod = (nn.LSTM if kind == "lstm" else nn.GRU)(5, 7, **kw).to(dtype)
    model = from_torch(mod, dtype=dtype)
    step = SS.state_step(model, 0)
    rng = np.random.default_rng(2)
    for _ in range(3):
        s = rng.standard_normal(step.state_size) * 0.8
        x = rng.standard_normal(5)
        ref = _torch_jacobian(mod, torch.tensor(x, dtype=dtype), torch.tensor(s, dtype=dtype))
        np.testing.assert_allclose(JA.jacobian(step, s, x), ref.double().numpy(), atol=tol, rtol=0)


def test_spectra_along_a_run_are_the_eigenvalues_of_each_steps_jacobian():
    _, model = _classic_model("gru", layers=1)
    tr = engine.run(model, np.arange(40) % 9)
    step = SS.state_step(model, 0)
    sp = JA.spectra_along(step, tr, 0, max_steps=10)
    assert len(sp.steps) == 10 and sp.steps[0] == 0 and sp.steps[-1] == 39
    prev, u = step.previous_states(tr, 0), step.inputs(tr, 0)
    for k, t in enumerate(sp.steps):
        ev = np.linalg.eigvals(JA.jacobian(step, prev[t], u[t]))
        np.testing.assert_allclose(sp.spectral_radius[k], np.abs(ev).max(), rtol=1e-12)


# -- fixed points: a 2-D Elman network with known answers -----------------------------------------


def _bisect(g, lo, hi, n=200):
    for _ in range(n):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.sign(g(mid)) == np.sign(g(lo)) else (lo, mid)
    return 0.5 * (lo + hi)


def test_a_2d_elman_network_with_a_known_stable_point_and_saddle():
    """h' = tanh(W h + w x) with W = diag(2, 0.5) and a constant input x = 0.1 (w = [1, 0]).
    Along h1, h = tanh(2h + 0.1) has three roots (found here by bisection): the middle one
    unstable (slope 2 (1 - h^2) > 1), the outer ones stable; along h2 the only root is 0 (slope
    0.5).  So the plane holds two stable points and one saddle between them."""
    rnn = nn.RNN(1, 2, bias=False).double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
        rnn.weight_ih_l0.copy_(torch.tensor([[1.0], [0.0]]))
    model = from_torch(rnn, dtype=torch.float64)
    step = SS.state_step(model, 0)
    g = lambda h: np.tanh(2 * h + 0.1) - h  # noqa: E731
    roots = [_bisect(g, -1.0, -0.5), _bisect(g, -0.5, 0.3), _bisect(g, 0.5, 1.0)]
    slopes = [2 * (1 - np.tanh(2 * r + 0.1) ** 2) for r in roots]
    assert slopes[0] < 1 and slopes[1] > 1 and slopes[2] < 1
    # starts: a cloud of visited-like states over the plane
    starts = np.random.default_rng(0).uniform(-1, 1, size=(60, 2))
    res = FP.find_fixed_points(step, [0.1], starts)
    fixed = sorted(res.of_kind("fixed"), key=lambda p: p.state[0])
    assert len(fixed) == 3
    for p, r, slope in zip(fixed, roots, slopes):
        np.testing.assert_allclose(p.state, [r, 0.0], atol=1e-10)
        np.testing.assert_allclose(sorted(np.abs(p.eigenvalues)), sorted([slope, 0.5]), atol=1e-8)
    assert [p.stability for p in fixed] == ["stable", "saddle", "stable"]
    assert fixed[1].n_unstable == 1


def test_classification_of_eigenvalues():
    assert FP.classify([0.5, 0.2]) == ("stable", 0, 0)
    assert FP.classify([1.0005, 0.2]) == ("marginal", 0, 1)
    assert FP.classify([1.5, 0.2]) == ("saddle", 1, 0)
    assert FP.classify([1.5, -2.0]) == ("unstable", 2, 0)


def test_a_diagonal_familys_fixed_point_is_closed_form():
    from test_hgrn import make

    model = make(dtype=torch.float64)[0]
    tr = engine.run(model, np.arange(30) % 7)
    step = SS.state_step(model, 0)
    u = FP.constant_input(step, tr, model, "mean")
    res = FP.find_fixed_points(step, u, step.states(tr))
    [p] = res.points
    with torch.no_grad():
        np.testing.assert_allclose(step(torch.as_tensor(p.state), torch.as_tensor(u)).numpy(), p.state, atol=1e-12)
    assert p.stability == "stable"


def test_constant_inputs_and_bad_requests():
    from engine.tokenizers import CharVocab

    torch.manual_seed(0)
    emb, gru = nn.Embedding(3, 4).double(), nn.GRU(4, 5).double()
    model = from_torch(gru, emb, tokenizer=CharVocab(["(", ")", "\n"]), dtype=torch.float64)
    tr = engine.run(model, "(()\n")
    step = SS.state_step(model, 0)
    np.testing.assert_allclose(FP.constant_input(step, tr, model, "token:)"), emb.weight[1].detach().numpy())
    np.testing.assert_allclose(FP.constant_input(step, tr, model, "step:2"), emb.weight[1].detach().numpy())
    np.testing.assert_allclose(FP.constant_input(step, tr, model, "zero"), np.zeros(4))
    for bad, words in [("token:x", "not one token"), ("step:9", "outside the input"), ("nope", "unknown constant")]:
        with pytest.raises(FP.FixedPointError, match=words):
            FP.constant_input(step, tr, model, bad)
    with pytest.raises(FP.FixedPointError, match="takes 4"):
        FP.find_fixed_points(step, np.zeros(3), step.states(tr))


def test_a_search_can_be_cancelled():
    _, model = _classic_model("gru", layers=1)
    tr = engine.run(model, np.arange(20) % 9)
    step = SS.state_step(model, 0)
    with pytest.raises(engine.Cancelled):
        FP.find_fixed_points(step, np.zeros(4), step.states(tr), should_stop=lambda: True)


# -- the bundled delayed-match LSTM ------------------------------------------------------------------

MODEL = "assets/models/lstm-timeseries"
MEMORY_CELLS = [1, 2, 4, 5, 9, 15, 16, 18, 23, 24, 25, 30]


def test_the_delayed_match_lstm_has_one_point_attractor_per_sample_sign_in_the_delay():
    """In the delay the input is noise around zero: with the input held at 0, the search from
    the delay-period states finds two stable fixed points and one saddle (one unstable direction)
    between them.  The two stable points differ mostly in the memory cells (>= 75 % of the
    squared difference of c; measured 84 %), the saddle's unstable direction points from one to
    the other (|cos| >= 0.8; measured 0.88), and at the end of every delay of the card's sample
    the state is nearer the attractor of its trial's sample sign: a point attractor per sign,
    not a line attractor."""
    model = engine.load(MODEL)
    tr = engine.run(model, read_numeric(f"{MODEL}/sample.csv"), probes=["layers.0.h", "layers.0.c"])
    trials = json.load(open(f"{MODEL}/sample_trials.json"))["trials"]
    step = SS.state_step(model, 0)
    states = step.states(tr)
    delay = np.concatenate([np.arange(t["delay_start"], t["test_start"]) for t in trials])
    res = FP.find_fixed_points(step, np.zeros(3), states[delay][::4])
    kinds = sorted((p.kind, p.stability) for p in res.points)
    assert kinds == [("fixed", "saddle"), ("fixed", "stable"), ("fixed", "stable")]
    stable = [p for p in res.points if p.stability == "stable"]
    saddle = next(p for p in res.points if p.stability == "saddle")
    assert saddle.n_unstable == 1
    diff = stable[0].state - stable[1].state
    dc = diff[32:]
    assert (dc[MEMORY_CELLS] ** 2).sum() / (dc ** 2).sum() >= 0.75
    ev, vec = np.linalg.eig(JA.jacobian(step, saddle.state, np.zeros(3)))
    v = np.real(vec[:, np.argmax(np.abs(ev))])
    assert abs(v @ diff) / np.linalg.norm(v) / np.linalg.norm(diff) >= 0.8
    nearest = {}
    for t in trials:
        end = states[t["test_start"] - 1]
        k = int(np.argmin([np.linalg.norm(end - p.state) for p in stable]))
        nearest.setdefault(t["sample"], set()).add(k)
    assert nearest[1] | nearest[-1] == {0, 1} and len(nearest[1]) == len(nearest[-1]) == 1
