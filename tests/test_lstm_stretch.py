"""Edited LSTM steps in one compiled call (engine/models/lstm_stretch.py) compute what the
step-by-step path computes, are chosen the same way for full runs and cached re-runs, and
leave the edits they cannot do (patch) to the step-by-step path."""
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("numba")

import engine  # noqa: E402
from engine import Intervention, PrefixCache, Span  # noqa: E402
from engine.models import lstm_stretch  # noqa: E402
from engine.models.stack import from_torch  # noqa: E402

EDITS = [
    Intervention("layers.1.c", "set", 0.7, positions=Span(10, 40), units=[3]),
    Intervention("layers.0.h", "add", [0.5, -0.25], positions=[12, 13, 30], units=[1, 2]),
    Intervention("layers.1.gate_f", "scale", 0.5, positions=Span(20)),
    Intervention("layers.0.gate_i", "zero", positions=None, units=[0]),
    Intervention("layers.1.gate_g", "set", 0.1, positions=[5], units=[4, 5, 6]),
    Intervention("layers.1.gate_o", "add", 0.2, positions=Span(50, 55)),
]


def model(dtype):
    torch.manual_seed(3)
    return from_torch(nn.LSTM(6, 12, 2), nn.Embedding(19, 6), nn.Linear(12, 19), dtype=dtype)


COMPILED = lstm_stretch.run


def runs_through(monkeypatch, compiled: bool):
    """Count the calls of the compiled path; with ``compiled=False`` it declines every stretch."""
    calls = []

    def counted(*args):
        result = COMPILED(*args) if compiled else None
        calls.append(result is not None)
        return result

    monkeypatch.setattr(lstm_stretch, "run", counted)
    return calls


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_the_compiled_stretch_matches_the_step_by_step_path(monkeypatch, dtype, tol):
    m, x = model(dtype), np.random.default_rng(1).integers(0, 19, (2, 70))
    calls = runs_through(monkeypatch, compiled=False)
    slow = engine.run(m, list(x), interventions=EDITS, chunk=16)
    calls = runs_through(monkeypatch, compiled=True)
    fast = engine.run(m, list(x), interventions=EDITS, chunk=16)
    assert calls and all(calls), "the compiled stretch was not used"
    for name in slow.probes:
        np.testing.assert_allclose(fast[name], slow[name], atol=tol, rtol=tol, err_msg=name)
    assert np.all(fast["layers.1.c"][10:40, 3] == np.float64(0.7).astype(fast["layers.1.c"].dtype))


def test_a_cached_rerun_through_the_compiled_stretch_equals_a_full_run():
    m, x = model(torch.float32), np.random.default_rng(2).integers(0, 19, 90)
    cache = PrefixCache()
    engine.run(m, x, cache=cache, chunk=16)
    for value in (0.3, -0.4, 1.1):  # a slider dragged over an edit that covers every position
        ivs = EDITS[:3] + [Intervention("layers.1.c", "set", value, positions=None, units=[7])]
        cached = engine.run(m, x, interventions=ivs, cache=cache, chunk=16)
        full = engine.run(m, x, interventions=ivs, chunk=16)
        for name in full.probes:
            np.testing.assert_array_equal(cached[name], full[name], err_msg=name)
    # resuming inside an edited stretch (a new edit at step 33) still equals a full run
    ivs = ivs + [Intervention("layers.1.h", "add", 0.5, positions=[33], units=[2])]
    cached = engine.run(m, x, interventions=ivs, cache=cache, chunk=16)
    assert min(cache.last_starts) == 33
    full = engine.run(m, x, interventions=ivs, chunk=16)
    for name in full.probes:
        np.testing.assert_array_equal(cached[name], full[name], err_msg=name)


def test_patches_and_projections_take_the_step_by_step_path():
    from engine.interventions import BoundIntervention

    patch = Intervention("layers.1.h", "patch", np.zeros((10, 12), np.float32), positions=[4])
    bound_patch = BoundIntervention(patch, 12, [10], torch.float32, "cpu", source=patch.value)
    bound_set = BoundIntervention(Intervention("layers.1.h", "set", 1.0, positions=[4]), 12, [10], torch.float32, "cpu")
    assert lstm_stretch.edit_table({"h": [bound_set]}, 0, 10, 12, np.float32) is not None
    assert lstm_stretch.edit_table({"h": [bound_set, bound_patch]}, 0, 10, 12, np.float32) is None
    m = model(torch.float32)
    x = np.random.default_rng(3).integers(0, 19, 10)
    trace = engine.run(m, x, interventions=[patch], chunk=16)  # the step-by-step path does patches
    assert np.all(trace["layers.1.h"][4] == 0)
    proj = from_torch(nn.LSTM(6, 12, 1, proj_size=5), nn.Embedding(19, 6), nn.Linear(5, 19))
    cell = proj.cells[0][0]
    state = cell.initial_state(1, torch.float32, "cpu")
    assert lstm_stretch.run(cell, torch.zeros(3, 1, 48), state, {"c": [bound_set]}, 0) is None
    steps = engine.run(proj, x, interventions=[Intervention("layers.0.c", "set", 0.5, positions=Span(3))], chunk=16)
    assert np.all(steps["layers.0.c"][3:] == np.float32(0.5))
