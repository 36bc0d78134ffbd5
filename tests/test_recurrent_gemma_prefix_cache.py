"""The prefix cache with RecurrentGemma: a re-run from a kept state (RG-LRU state and conv
buffer, or the attention layers' last keys and values) equals a full re-run bit for bit, and
runs fewer steps."""
import numpy as np
import pytest

import engine
from engine import Intervention, PrefixCache, Span
from engine.models.recurrent_gemma import from_transformers

pytest.importorskip("transformers")
from test_recurrent_gemma_golden import SCANS, hf_model  # noqa: E402


def assert_traces_equal(a, b):
    assert a.probes == b.probes
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("probe", ["layers.0.state", "layers.0.gate_i", "layers.1.v", "layers.1.k"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(scan, probe, t):
    model = from_transformers(hf_model("kv2-w64", 4), scan=scan)  # window 64 > chunk 16: keys span chunks
    model.attention_window = ((20, 80), (0, 70))
    x = np.random.default_rng(0).integers(0, 37, 100)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention(probe, "add", 0.3, positions=[t], units=[2, 3])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    layer = int(probe.split(".")[1])
    assert cache.last_starts == [2**62] * layer + [(t // 16) * 16] * (4 - layer)  # less work: from the chunk of t
    assert_traces_equal(cached, engine.run(model, x, interventions=[iv], chunk=16))
    for name in clean.probes:
        np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)
    iv2 = Intervention(probe, "add", 0.6, positions=[t], units=[2, 3])
    again = engine.run(model, x, interventions=[iv2], cache=cache, chunk=16)
    assert_traces_equal(again, engine.run(model, x, interventions=[iv2], chunk=16))


@pytest.mark.parametrize("scan", SCANS)
def test_a_random_session_of_edits_and_typing(scan):
    model = from_transformers(hf_model("mqa-w8", 5), scan=scan)
    model.attention_window = ((10, 70), (0, 60))
    rng = np.random.default_rng(10)
    sites = [s.name for s in model.probe_specs() if s.layer is not None and s.site != "attn"]
    widths = {s.name: s.width for s in model.probe_specs()}
    cache = PrefixCache()
    x = rng.integers(0, 37, 80)
    ivs = []
    for step in range(16):
        if step % 3 == 2 and ivs:
            ivs.pop(0)
        elif step % 5 == 4:
            x = np.concatenate([x, rng.integers(0, 37, 7)])
        else:
            probe = str(rng.choice(sites))
            ivs.append(Intervention(probe, "add", float(rng.normal()), positions=Span(int(rng.integers(1, len(x)))),
                                    units=[int(rng.integers(0, widths[probe]))]))
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=16)
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=16))


def test_typing_more_text_reuses_the_prefix():
    model = from_transformers(hf_model("mqa-w8", 6))
    cache = PrefixCache()
    x = np.random.default_rng(1).integers(0, 37, 120)
    engine.run(model, x[:70], cache=cache, chunk=16)
    longer = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 64
    assert_traces_equal(longer, engine.run(model, x, chunk=16))
