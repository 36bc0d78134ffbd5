"""The prefix cache with Mamba2: a re-run that starts from a kept state (the SSM state and the
xBC conv buffer at a chunk boundary) equals a full re-run bit for bit, and does less work
(it starts at the chunk boundary before the edit, and computes fewer chunks)."""
import pytest

import engine
from engine import Intervention, PrefixCache, Span
from family_checks import (assert_batched_edit_reruns_from_the_chunk_before, assert_edit_reruns_from_the_chunk_before,
                           assert_edit_sessions_match_full_runs, assert_traces_equal, assert_typing_reuses_the_prefix,
                           assert_window_change_runs_from_the_start, token_ids as ids)

pytest.importorskip("transformers")
from test_mamba2_golden import hf_model, ours  # noqa: E402


@pytest.mark.parametrize("site", ["x", "dt", "state", "in", "out"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(site, t):
    model = ours(hf_model(30, layers=2, groups=2))
    model.attention_window = ((20, 60), (0, 60))
    assert_edit_reruns_from_the_chunk_before(model, site, t)


def test_big_chunks_of_several_ssd_blocks():
    model = ours(hf_model(36, layers=2))
    x = ids(400, 1)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=128)
    iv = Intervention("layers.1.state", "zero", positions=[300], units=model.state_units(model.head_channels(3)))
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=128)
    assert cache.last_starts == [2**62, 256]
    assert_traces_equal(cached, engine.run(model, x, interventions=[iv], chunk=128))


def test_typing_more_text_reuses_the_prefix():
    model = ours(hf_model(32, layers=2))
    assert_typing_reuses_the_prefix(model)


def test_changing_the_attention_window_runs_from_the_start():
    model = ours(hf_model(33, layers=1))
    assert_window_change_runs_from_the_start(model, Intervention("layers.0.y", "zero", positions=[75]))


def test_batched_rerun_from_cache_equals_full_rerun():
    model = ours(hf_model(34, layers=2, groups=2))
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=[1])
    assert_batched_edit_reruns_from_the_chunk_before(model, iv)


def test_random_edit_sessions_always_match_full_runs():
    assert_edit_sessions_match_full_runs(ours(hf_model(35, layers=2, groups=2)), vocab=37, edits=30)
