"""The prefix cache with xLSTM: a re-run that starts from a kept state (stabilised C, n, m at a
chunk boundary) equals a full re-run bit for bit, and starts at the chunk boundary before the
first edited step (less work)."""
import numpy as np
import pytest

import engine
from engine import Intervention, PrefixCache, Span

pytest.importorskip("transformers")
from test_xlstm_golden import hf_model, ours  # noqa: E402


def ids(T, seed=0):
    return np.random.default_rng(seed).integers(0, 37, T)


def assert_traces_equal(a, b):
    assert a.probes == b.probes
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("site", ["gate_f", "k", "state", "normalizer", "out"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(site, t):
    model = ours(hf_model(30, layers=2))
    model.attention_window = ((20, 60), (0, 60))
    x = ids(100)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention(f"layers.0.{site}", "add", 0.3, positions=Span(t), units=[2, 3])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts == [(t // 16) * 16] * 2  # both layers restart at the chunk boundary before t
    full = engine.run(model, x, interventions=[iv], chunk=16)
    assert_traces_equal(cached, full)
    for name in clean.probes:
        np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)
    iv2 = Intervention(f"layers.0.{site}", "add", 0.6, positions=Span(t), units=[2, 3])
    again = engine.run(model, x, interventions=[iv2], cache=cache, chunk=16)
    assert_traces_equal(again, engine.run(model, x, interventions=[iv2], chunk=16))


def test_long_chunks_with_several_cell_blocks():
    """Chunks of 256 hold four cell blocks of 64; an edit at 200 restarts at 0, one at 300 at 256."""
    model = ours(hf_model(36, layers=2))
    x = ids(400, 9)
    cache = PrefixCache()
    for t in (200, 300):
        engine.run(model, x, cache=cache, probes=["logits", "layers.*.h", "layers.*.state"])
        iv = Intervention("layers.1.state", "scale", 0.5, positions=[t])
        cached = engine.run(model, x, interventions=[iv], cache=cache, probes=["logits", "layers.*.h", "layers.*.state"])
        assert cache.last_starts == ([2**62, 256] if t >= 256 else [])  # [] : a full run
        assert_traces_equal(cached, engine.run(model, x, interventions=[iv], probes=["logits", "layers.*.h",
                                                                                      "layers.*.state"]))


def test_an_edit_in_an_upper_layer_does_not_rerun_the_layers_below():
    model = ours(hf_model(31, layers=3))
    cache = PrefixCache()
    x = ids(100)
    engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention("layers.2.gate_i", "set", -30.0, positions=[70], units=[0])
    out = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[:2] == [2**62, 2**62] and cache.last_starts[2] == 64
    assert_traces_equal(out, engine.run(model, x, interventions=[iv], chunk=16))


def test_typing_more_text_reuses_the_prefix():
    model = ours(hf_model(32, layers=2))
    model.attention_window = ((50, 110), (0, 110))
    cache = PrefixCache()
    x = ids(120)
    engine.run(model, x[:70], cache=cache, chunk=16)
    longer = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 64
    assert_traces_equal(longer, engine.run(model, x, chunk=16))


def test_changing_the_attention_window_runs_from_the_start():
    model = ours(hf_model(33, layers=1))
    cache = PrefixCache()
    x = ids(80)
    engine.run(model, x, cache=cache, chunk=16)
    model.attention_window = ((40, 80), (30, 70))
    iv = Intervention("layers.0.h", "zero", positions=[75])
    out = engine.run(model, x, cache=cache, chunk=16, interventions=[iv])
    assert cache.last_start == 0
    assert_traces_equal(out, engine.run(model, x, chunk=16, interventions=[iv]))


def test_batched_rerun_from_cache_equals_full_rerun():
    model = ours(hf_model(34, layers=2))
    cache = PrefixCache()
    xs = [ids(100, 1), ids(64, 2), ids(33, 3)]
    engine.run(model, xs, cache=cache, chunk=16)
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=[1])
    cached = engine.run(model, xs, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[1] == 48 and cache.last_starts[0] >= 100
    assert_traces_equal(cached, engine.run(model, xs, interventions=[iv], chunk=16))


N_EDITS = 25


def test_random_edit_sessions_always_match_full_runs():
    """A user steering: interventions added, changed and removed, text extended and edited;
    every cached re-run must equal a run from scratch, bit for bit."""
    rng = np.random.default_rng(7)
    model = ours(hf_model(35, layers=2))
    model.attention_window = ((30, 70), (10, 60))
    sites = [s.name for s in model.probe_specs() if s.layer is not None and s.site != "attn"]
    widths = {s.name: int(np.prod(s.shape)) for s in model.probe_specs()}
    cache = PrefixCache()
    x = ids(90)
    ivs = []
    for _ in range(N_EDITS):
        action = rng.integers(0, 6)
        if action == 0 or not ivs:
            pos = int(rng.integers(1, len(x)))
            probe = str(rng.choice(sites))
            ivs.append(Intervention(probe, "add", float(rng.normal()),
                                    positions=[pos] if rng.random() < 0.5 else Span(pos, pos + 5),
                                    units=[int(rng.integers(0, widths[probe]))]))
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
            x[int(rng.integers(0, len(x)))] = int(rng.integers(0, 37))
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=16)
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=16))
