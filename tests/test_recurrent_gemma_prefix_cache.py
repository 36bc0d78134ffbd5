"""The prefix cache with RecurrentGemma: a re-run from a kept state (RG-LRU state and conv
buffer, or the attention layers' last keys and values) equals a full re-run bit for bit, and
runs fewer steps."""
import numpy as np
import pytest

import engine
from engine import Intervention, PrefixCache
from engine.models.recurrent_gemma_loading import from_transformers
from family_checks import assert_traces_equal, assert_typing_reuses_the_prefix, assert_typing_sessions_match_full_runs

pytest.importorskip("transformers")
from test_recurrent_gemma_golden import SCANS, hf_model  # noqa: E402


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
    assert_typing_sessions_match_full_runs(model, vocab=37, steps=16, window=((10, 70), (0, 60)), length=80)


def test_typing_more_text_reuses_the_prefix():
    assert_typing_reuses_the_prefix(from_transformers(hf_model("mqa-w8", 6)), seed=1)
