"""The prefix cache with RWKV-7: a re-run that starts from a kept state (the per-head state
matrices and both token shifts at a chunk boundary, and layer 0's values as v_first) equals a
full re-run bit for bit, and does less work."""
import pytest

import engine
from engine import Intervention, PrefixCache, Span
from engine.models.rwkv7_loading import load_rwkv7
from family_checks import (assert_batched_edit_reruns_from_the_chunk_before, assert_edit_reruns_from_the_chunk_before,
                           assert_edit_sessions_match_full_runs, assert_traces_equal, assert_typing_reuses_the_prefix,
                           assert_window_change_runs_from_the_start, run_counting_chunks, token_ids as ids)
from rwkv7_reference import random_state_dict


def model_for(seed, **kw):
    return load_rwkv7(random_state_dict(seed, **kw), [], name="test", fmt="pth", device="cpu")


@pytest.mark.parametrize("site", ["in", "state", "w", "v", "ffn_in"])
@pytest.mark.parametrize("t", [37, 64, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(site, t):
    model = model_for(30, layers=2)
    model.attention_window = ((20, 60), (0, 60))
    assert_edit_reruns_from_the_chunk_before(model, site, t, chunk=32)


def test_an_edit_in_an_upper_layer_reruns_it_alone_with_v_first_from_the_last_run():
    model = model_for(31, layers=3)
    cache = PrefixCache()
    x = ids(100)
    engine.run(model, x, probes="logits", cache=cache, chunk=16)
    iv = Intervention("layers.2.w", "scale", 0.0, positions=[70], units=[0])
    out, work = run_counting_chunks(model, x, probes="logits", interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[:2] == [2**62, 2**62] and cache.last_starts[2] == 64
    assert work == 3  # the chunks 64, 80 and 96 of layer 2
    assert_traces_equal(out, engine.run(model, x, probes="logits", interventions=[iv], chunk=16))


def test_typing_more_text_reuses_the_prefix():
    model = model_for(32, layers=2)
    assert_typing_reuses_the_prefix(model)


def test_changing_the_attention_window_runs_from_the_start():
    model = model_for(33, layers=1)
    assert_window_change_runs_from_the_start(model, Intervention("layers.0.o", "zero", positions=[75]))


def test_batched_rerun_from_cache_equals_full_rerun():
    model = model_for(34, layers=2)
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=model.state_units(1))
    assert_batched_edit_reruns_from_the_chunk_before(model, iv)


def test_random_edit_sessions_always_match_full_runs():
    assert_edit_sessions_match_full_runs(model_for(35, layers=2), vocab=37, edits=25)
