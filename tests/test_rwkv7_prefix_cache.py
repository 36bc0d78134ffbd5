"""The prefix cache with RWKV-7: a re-run that starts from a kept state (the per-head state
matrices and both token shifts at a chunk boundary, and layer 0's values as v_first) equals a
full re-run bit for bit, and does less work."""
import numpy as np
import pytest

import engine
from engine import Intervention, PrefixCache, Span
from engine.models.rwkv7 import load_rwkv7
from rwkv7_reference import random_state_dict


def ids(T, seed=0):
    return np.random.default_rng(seed).integers(0, 37, T)


def model_for(seed, **kw):
    return load_rwkv7(random_state_dict(seed, **kw), [], name="test", fmt="pth", device="cpu")


def assert_traces_equal(a, b):
    assert a.probes == b.probes
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def counting_run(model, x, **kw):
    """A run and the number of (layer, chunk) steps it computed."""
    ticks = []
    tr = engine.run(model, x, progress=lambda done, total: ticks.append(total), **kw)
    return tr, ticks[-1]


@pytest.mark.parametrize("site", ["in", "state", "w", "v", "ffn_in"])
@pytest.mark.parametrize("t", [37, 64, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(site, t):
    model = model_for(30, layers=2)
    model.attention_window = ((20, 60), (0, 60))
    x = ids(100)
    cache = PrefixCache()
    clean, full_work = counting_run(model, x, cache=cache, chunk=32)
    iv = Intervention(f"layers.0.{site}", "add", 0.3, positions=Span(t), units=[2, 3])
    cached, work = counting_run(model, x, interventions=[iv], cache=cache, chunk=32)
    assert cache.last_starts == [(t // 32) * 32] * 2  # both layers restart at the chunk boundary before t
    assert work < full_work
    full = engine.run(model, x, interventions=[iv], chunk=32)
    assert_traces_equal(cached, full)
    for name in clean.probes:
        np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)
    iv2 = Intervention(f"layers.0.{site}", "add", 0.6, positions=Span(t), units=[2, 3])
    again = engine.run(model, x, interventions=[iv2], cache=cache, chunk=32)
    assert_traces_equal(again, engine.run(model, x, interventions=[iv2], chunk=32))


def test_an_edit_in_an_upper_layer_reruns_it_alone_with_v_first_from_the_last_run():
    model = model_for(31, layers=3)
    cache = PrefixCache()
    x = ids(100)
    engine.run(model, x, probes="logits", cache=cache, chunk=16)
    iv = Intervention("layers.2.w", "scale", 0.0, positions=[70], units=[0])
    out, work = counting_run(model, x, probes="logits", interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[:2] == [2**62, 2**62] and cache.last_starts[2] == 64
    assert work == 3  # the chunks 64, 80 and 96 of layer 2
    assert_traces_equal(out, engine.run(model, x, probes="logits", interventions=[iv], chunk=16))


def test_typing_more_text_reuses_the_prefix():
    model = model_for(32, layers=2)
    cache = PrefixCache()
    x = ids(120)
    engine.run(model, x[:70], cache=cache, chunk=16)
    longer = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 64
    assert_traces_equal(longer, engine.run(model, x, chunk=16))


def test_changing_the_attention_window_runs_from_the_start():
    model = model_for(33, layers=1)
    cache = PrefixCache()
    x = ids(80)
    engine.run(model, x, cache=cache, chunk=16)
    model.attention_window = ((40, 80), (30, 70))
    iv = Intervention("layers.0.o", "zero", positions=[75])
    out = engine.run(model, x, cache=cache, chunk=16, interventions=[iv])
    assert cache.last_start == 0
    assert_traces_equal(out, engine.run(model, x, chunk=16, interventions=[iv]))


def test_batched_rerun_from_cache_equals_full_rerun():
    model = model_for(34, layers=2)
    cache = PrefixCache()
    xs = [ids(100, 1), ids(64, 2), ids(33, 3)]
    engine.run(model, xs, cache=cache, chunk=16)
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=model.state_units(1))
    cached = engine.run(model, xs, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[1] == 48 and cache.last_starts[0] >= 100
    assert_traces_equal(cached, engine.run(model, xs, interventions=[iv], chunk=16))


def test_random_edit_sessions_always_match_full_runs():
    """A user steering: interventions added, changed and removed, text extended, cut and
    edited; every cached re-run must equal a run from scratch, bit for bit."""
    rng = np.random.default_rng(7)
    model = model_for(35, layers=2)
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
            ivs[k] = Intervention(ivs[k].probe, "add", float(rng.normal()), positions=ivs[k].positions,
                                  units=ivs[k].units)
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
