"""The prefix cache with xLSTM: a re-run that starts from a kept state (stabilised C, n, m at a
chunk boundary) equals a full re-run bit for bit, and starts at the chunk boundary before the
first edited step (less work)."""
import pytest

import engine
from engine import Intervention, PrefixCache, Span
from family_checks import (assert_batched_edit_reruns_from_the_chunk_before, assert_edit_reruns_from_the_chunk_before,
                           assert_edit_sessions_match_full_runs, assert_traces_equal, assert_typing_reuses_the_prefix,
                           assert_upper_layer_edit_reruns_it_alone, assert_window_change_runs_from_the_start, token_ids
                           as ids)

pytest.importorskip("transformers")
from test_xlstm_golden import hf_model, ours  # noqa: E402


@pytest.mark.parametrize("site", ["gate_f", "k", "state", "normalizer", "out"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(site, t):
    model = ours(hf_model(30, layers=2))
    model.attention_window = ((20, 60), (0, 60))
    assert_edit_reruns_from_the_chunk_before(model, site, t)


def test_long_chunks_with_several_cell_blocks():
    """Chunks of 256 hold four cell blocks of 64; an edit at 200 restarts at 0, one at 300 at 256."""
    model = ours(hf_model(36, layers=2))
    x = ids(400, 9)
    cache = PrefixCache()
    for t in (200, 300):
        engine.run(model, x, cache=cache, probes=["logits", "layers.*.h", "layers.*.state"])
        iv = Intervention("layers.1.state", "scale", 0.5, positions=[t])
        cached = engine.run(model, x, interventions=[iv], cache=cache, probes=["logits", "layers.*.h", "layers.*.state"])
        # layer 0 is not re-run; layer 1 from the chunk boundary before t (0: its initial state)
        assert cache.last_starts == [2**62, 256 if t >= 256 else 0]
        assert_traces_equal(cached, engine.run(model, x, interventions=[iv], probes=["logits", "layers.*.h",
                                                                                      "layers.*.state"]))


def test_an_edit_in_an_upper_layer_does_not_rerun_the_layers_below():
    model = ours(hf_model(31, layers=3))
    iv = Intervention("layers.2.gate_i", "set", -30.0, positions=[70], units=[0])
    assert_upper_layer_edit_reruns_it_alone(model, iv)


def test_typing_more_text_reuses_the_prefix():
    model = ours(hf_model(32, layers=2))
    model.attention_window = ((50, 110), (0, 110))
    assert_typing_reuses_the_prefix(model)


def test_changing_the_attention_window_runs_from_the_start():
    model = ours(hf_model(33, layers=1))
    assert_window_change_runs_from_the_start(model, Intervention("layers.0.h", "zero", positions=[75]))


def test_batched_rerun_from_cache_equals_full_rerun():
    model = ours(hf_model(34, layers=2))
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=[1])
    assert_batched_edit_reruns_from_the_chunk_before(model, iv)


def test_random_edit_sessions_always_match_full_runs():
    assert_edit_sessions_match_full_runs(ours(hf_model(35, layers=2)), vocab=37, edits=25)
