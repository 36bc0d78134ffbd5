"""The prefix cache with DeltaNet: a re-run that starts from a kept state (S and the three
convolution buffers at a chunk boundary) equals a full run with the same edits bit for bit,
and runs only from that boundary (``cache.last_starts``) and only the layers an edit reaches."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, PrefixCache, Span
from test_deltanet_golden import build


def ids(T, seed=0):
    return np.random.default_rng(seed).integers(0, 29, T)


def assert_traces_equal(a, b):
    assert a.probes == b.probes
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture
def model(tmp_path):
    m, _, _ = build(tmp_path, 30, dtype=torch.float32, use_gate=True)
    m.attention_window = ((20, 60), (0, 60))
    return m


@pytest.mark.parametrize("site", ["v", "beta", "state", "out"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(model, site, t):
    x = ids(100)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention(f"layers.0.{site}", "add", 0.3, positions=Span(t), units=[0, 1])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts == [(t // 16) * 16] * 2  # both layers restart at the chunk boundary before t
    full = engine.run(model, x, interventions=[iv], chunk=16)
    assert_traces_equal(cached, full)
    for name in clean.probes:
        np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)
    iv2 = Intervention(f"layers.0.{site}", "add", 0.6, positions=Span(t), units=[0, 1])
    again = engine.run(model, x, interventions=[iv2], cache=cache, chunk=16)
    assert_traces_equal(again, engine.run(model, x, interventions=[iv2], chunk=16))


def test_a_long_input_reruns_only_the_last_chunks(tmp_path):
    """T = 600 with the default-sized chunks of 256 (sub-chunks of 64 inside): an edit at 530
    re-runs steps 512.. only."""
    m, _, _ = build(tmp_path, 36, dtype=torch.float32)
    x = ids(600, 3)
    cache = PrefixCache()
    engine.run(m, x, cache=cache, chunk=256)
    iv = Intervention("layers.0.k", "scale", 0.0, positions=[530])
    cached = engine.run(m, x, interventions=[iv], cache=cache, chunk=256)
    assert cache.last_starts == [512, 512]
    assert_traces_equal(cached, engine.run(m, x, interventions=[iv], chunk=256))


def test_an_edit_in_an_upper_layer_does_not_rerun_the_layers_below(tmp_path):
    m, _, _ = build(tmp_path, 31, dtype=torch.float32, num_hidden_layers=3)
    cache = PrefixCache()
    x = ids(100)
    engine.run(m, x, cache=cache, chunk=16)
    iv = Intervention("layers.2.beta", "scale", 0.0, positions=[70], units=[0])
    out = engine.run(m, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[:2] == [2**62, 2**62] and cache.last_starts[2] == 64
    assert_traces_equal(out, engine.run(m, x, interventions=[iv], chunk=16))


def test_typing_more_text_reuses_the_prefix(model):
    cache = PrefixCache()
    x = ids(120)
    engine.run(model, x[:70], cache=cache, chunk=16)
    longer = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 64
    assert_traces_equal(longer, engine.run(model, x, chunk=16))


def test_changing_the_attention_window_runs_from_the_start(model):
    cache = PrefixCache()
    x = ids(80)
    engine.run(model, x, cache=cache, chunk=16)
    model.attention_window = ((40, 80), (30, 70))
    iv = Intervention("layers.0.y", "zero", positions=[75])
    out = engine.run(model, x, cache=cache, chunk=16, interventions=[iv])
    assert cache.last_start == 0
    assert_traces_equal(out, engine.run(model, x, chunk=16, interventions=[iv]))


def test_batched_rerun_from_cache_equals_full_rerun(model):
    cache = PrefixCache()
    xs = [ids(100, 1), ids(64, 2), ids(33, 3)]
    engine.run(model, xs, cache=cache, chunk=16)
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=[1])
    cached = engine.run(model, xs, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[1] == 48 and cache.last_starts[0] >= 100
    assert_traces_equal(cached, engine.run(model, xs, interventions=[iv], chunk=16))


def test_random_edit_sessions_always_match_full_runs(model):
    """A user steering: interventions added, changed and removed, text extended and edited;
    every cached re-run must equal a run from scratch, bit for bit."""
    rng = np.random.default_rng(7)
    model.attention_window = ((30, 70), (10, 60))
    sites = [s.name for s in model.probe_specs() if s.layer is not None and s.site != "attn"]
    widths = {s.name: int(np.prod(s.shape)) for s in model.probe_specs()}
    cache = PrefixCache()
    x = ids(90)
    ivs = []
    for _ in range(25):
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
            x[int(rng.integers(0, len(x)))] = int(rng.integers(0, 29))
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=16)
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=16))


@pytest.mark.parametrize("site", ["decay", "state"])
def test_gated_rerun_from_cache_equals_full_rerun(tmp_path, site):
    m, _, _ = build(tmp_path, 37, dtype=torch.float32, gated=True, num_v_heads=4)
    m.attention_window = ((20, 90), (0, 90))
    x = ids(100, 4)
    cache = PrefixCache()
    engine.run(m, x, cache=cache, chunk=32)
    iv = Intervention(f"layers.0.{site}", "scale", 0.5, positions=Span(50), units=[2])
    cached = engine.run(m, x, interventions=[iv], cache=cache, chunk=32)
    assert cache.last_starts == [32, 32]
    assert_traces_equal(cached, engine.run(m, x, interventions=[iv], chunk=32))
