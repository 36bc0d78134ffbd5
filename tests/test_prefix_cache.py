"""The prefix-state cache: a re-run that starts from a kept state equals a full re-run exactly."""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine import Intervention, PrefixCache, Span
from engine.models.stack import from_torch


def token_model(cell=nn.LSTM, seed=0, layers=2, **kw):
    torch.manual_seed(seed)
    return from_torch(cell(5, 12, layers, **kw), nn.Embedding(17, 5), nn.Linear(12 * (2 if kw.get("bidirectional") else 1), 17))


def ids(T, seed=0):
    return np.random.default_rng(seed).integers(0, 17, T)


def assert_traces_equal(a, b):
    assert a.probes == b.probes
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("t", [37, 40, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(cell, t):
    model = token_model(cell)
    x = ids(100)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=8)
    iv = Intervention("layers.0.h", "add", 0.3, positions=Span(t), units=[2, 3])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=8)
    assert cache.last_starts == [t, t]  # both layers restart exactly at the edited step
    full = engine.run(model, x, interventions=[iv], chunk=8)
    assert_traces_equal(cached, full)
    for name in clean.probes:
        np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)
    # and editing the value again re-runs from the cache again, still exactly
    iv2 = Intervention("layers.0.h", "add", 0.6, positions=Span(t), units=[2, 3])
    again = engine.run(model, x, interventions=[iv2], cache=cache, chunk=8)
    assert cache.last_starts == [t, t]
    assert_traces_equal(again, engine.run(model, x, interventions=[iv2], chunk=8))


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("positions", [None, [3], Span(0)])  # every step, and edits in the first chunk
def test_an_upper_layer_edit_from_the_first_chunk_skips_the_layers_below(cell, positions):
    """The workbench's default intervention covers every position: the edited layer re-runs from
    its initial state, the layers below are not run at all, and the result is a full run's."""
    model = token_model(cell, layers=3)
    x = ids(60)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention("layers.1.h", "set", 0.5, positions=positions, units=[4])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    first = 3 if positions == [3] else 0  # an edit inside a chunk restarts exactly at its step
    assert cache.last_starts == [2**62, first, first]
    assert_traces_equal(cached, engine.run(model, x, interventions=[iv], chunk=16))


def test_typing_more_text_reuses_the_prefix():
    model = token_model()
    cache = PrefixCache()
    x = ids(120)
    engine.run(model, x[:70], cache=cache, chunk=16)
    longer = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 64
    assert_traces_equal(longer, engine.run(model, x, chunk=16))


def test_an_early_change_reruns_from_the_start_and_a_late_one_does_not():
    model = token_model()
    cache = PrefixCache()
    x = ids(100)
    engine.run(model, x, cache=cache, chunk=16)
    y = x.copy()
    y[3] = (y[3] + 1) % 17
    engine.run(model, y, cache=cache, chunk=16)
    assert cache.last_start == 0
    z = y.copy()
    z[90] = (z[90] + 1) % 17
    out = engine.run(model, z, cache=cache, chunk=16)
    assert cache.last_start == 80
    assert_traces_equal(out, engine.run(model, z, chunk=16))


def test_removing_an_intervention_reruns_from_where_it_acted():
    model = token_model(nn.GRU)
    cache = PrefixCache()
    x = ids(90)
    iv = Intervention("layers.1.gate_z", "scale", 0.5, positions=Span(50, 60))
    engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    out = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 48
    assert_traces_equal(out, engine.run(model, x, chunk=16))


def test_cache_is_not_used_when_it_cannot_be_exact():
    model = token_model()
    cache = PrefixCache()
    x = ids(80)
    engine.run(model, x, probes="layers.*.h", cache=cache, chunk=16)
    engine.run(model, x, probes="*", cache=cache, chunk=16)  # asks for probes the cache lacks
    assert cache.last_start == 0
    other = token_model(seed=1)
    engine.run(other, x, cache=cache, chunk=16)  # another model
    assert cache.last_start == 0
    bi = token_model(bidirectional=True)
    engine.run(bi, x, cache=cache, chunk=16)
    engine.run(bi, x, interventions=[Intervention("layers.0.h", "zero", positions=[70])], cache=cache, chunk=16)
    assert cache.last_start == 0  # a backward direction sees the future: no prefix to reuse


def test_batched_rerun_from_cache_equals_full_rerun():
    model = token_model()
    cache = PrefixCache()
    xs = [ids(100, 1), ids(64, 2), ids(33, 3)]
    engine.run(model, xs, cache=cache, chunk=16)
    iv = Intervention("layers.1.c", "set", 0.0, positions=Span(50), units=[1])
    cached = engine.run(model, xs, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[1] == 50 and cache.last_starts[0] >= 100  # layer 0 is not re-run
    assert_traces_equal(cached, engine.run(model, xs, interventions=[iv], chunk=16))


def test_an_edit_in_an_upper_layer_does_not_rerun_the_layers_below():
    model = token_model(layers=3)
    cache = PrefixCache()
    x = ids(100)
    engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention("layers.2.gate_o", "scale", 0.0, positions=[70], units=[0])
    out = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[:2] == [2**62, 2**62] and cache.last_starts[2] == 70
    assert_traces_equal(out, engine.run(model, x, interventions=[iv], chunk=16))


def test_without_the_cell_state_an_lstm_restarts_at_the_chunk_boundary():
    model = token_model()
    cache = PrefixCache()
    x = ids(100)
    engine.run(model, x, probes="layers.*.h", cache=cache, chunk=16)
    iv = Intervention("layers.0.h", "zero", positions=[70])
    out = engine.run(model, x, probes="layers.*.h", interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts == [64, 64]
    assert_traces_equal(out, engine.run(model, x, probes="layers.*.h", interventions=[iv], chunk=16))


def test_a_second_edit_later_in_the_same_chunk_reuses_the_first():
    model = token_model()
    cache = PrefixCache()
    x = ids(100)
    first = Intervention("layers.0.c", "add", 1.0, positions=[66], units=[0])
    engine.run(model, x, interventions=[first], cache=cache, chunk=32)
    second = Intervention("layers.1.h", "zero", positions=[75])
    out = engine.run(model, x, interventions=[first, second], cache=cache, chunk=32)
    assert cache.last_starts[0] >= 100 and cache.last_starts[1] in (64, 67, 75)
    assert_traces_equal(out, engine.run(model, x, interventions=[first, second], chunk=32))


N_EDITS = 40


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_random_edit_sessions_always_match_full_runs(cell):
    """A user steering: interventions added, changed and removed one after another, text
    extended and edited; every cached re-run must equal a run from scratch, bit for bit."""
    rng = np.random.default_rng(7)
    model = token_model(cell, layers=2)
    sites = [s.name for s in model.probe_specs() if s.layer is not None]
    cache = PrefixCache()
    x = ids(90)
    ivs = []
    for _ in range(N_EDITS):
        action = rng.integers(0, 6)
        if action == 0 or not ivs:
            pos = int(rng.integers(1, len(x)))
            ivs.append(Intervention(str(rng.choice(sites)), "add", float(rng.normal()),
                                    positions=[pos] if rng.random() < 0.5 else Span(pos, pos + 5),
                                    units=[int(rng.integers(0, 12))]))
        elif action == 1:
            k = int(rng.integers(0, len(ivs)))
            ivs[k] = Intervention(ivs[k].probe, "add", float(rng.normal()), positions=ivs[k].positions, units=ivs[k].units)
        elif action == 2:
            ivs.pop(int(rng.integers(0, len(ivs))))
        elif action == 3:
            x = np.concatenate([x, ids(int(rng.integers(1, 20)), seed=int(rng.integers(1000)))])
        elif action == 4 and len(x) > 40:
            x = x[: len(x) - int(rng.integers(1, 20))]
        else:
            x = x.copy()
            x[int(rng.integers(0, len(x)))] = int(rng.integers(0, 17))
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=16)
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=16))


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_a_rerun_resuming_inside_an_edited_stretch_equals_a_full_run(cell):
    """Edited steps take their input projections from one matmul over the whole chunk; a re-run
    that resumes at an edited step in the middle of the chunk must multiply the same rows (a
    matmul's rows can differ with the row count: one row alone often does), so it still equals
    a full run bit for bit.  Each second edit sits on the last step of a chunk."""
    torch.manual_seed(3)
    model = from_torch(cell(48, 256, 2), nn.Embedding(17, 48), nn.Linear(256, 17))
    x = ids(300, seed=5)
    steer = Intervention("layers.1.h", "set", 0.5, positions=Span(20), units=[0])
    cache = PrefixCache()
    engine.run(model, x, interventions=[steer], cache=cache, chunk=64)
    for second in (Intervention("layers.1.h", "add", 0.25, positions=[127], units=[3]),   # resumes at 127
                   Intervention("layers.0.h", "add", 0.25, positions=[191], units=[3])):  # layer 0 too
        ivs = [steer, second]
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=64)
        assert 0 < cache.last_start and cache.last_start % 64  # resumed inside a chunk
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=64))
