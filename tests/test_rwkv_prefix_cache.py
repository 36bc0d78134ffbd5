"""The prefix cache with RWKV-4: a re-run that starts from a kept state (the WKV (num, den, max)
and both token shifts at a chunk boundary) equals a full re-run exactly."""
import pytest

import engine
from engine import Intervention, Span
from engine.models.rwkv import numba_available
from family_checks import (assert_batched_edit_reruns_from_the_chunk_before, assert_edit_reruns_from_the_chunk_before,
                           assert_edit_sessions_match_full_runs, assert_typing_reuses_the_prefix,
                           assert_upper_layer_edit_reruns_it_alone, assert_window_change_runs_from_the_start)

pytest.importorskip("transformers")
from test_rwkv_golden import hf_model, ours  # noqa: E402

SCANS = ["torch"] + (["numba"] if numba_available() else [])


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("site", ["att_in", "state", "w", "ffn_in"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(scan, site, t):
    model = ours(hf_model(30, layers=2), scan)
    model.attention_window = ((20, 60), (0, 60))
    assert_edit_reruns_from_the_chunk_before(model, site, t)


def test_an_edit_in_an_upper_layer_does_not_rerun_the_layers_below():
    model = ours(hf_model(31, layers=3), SCANS[-1])
    assert_upper_layer_edit_reruns_it_alone(model, Intervention("layers.2.w", "scale", 0.0, positions=[70], units=[0]))


def test_typing_more_text_reuses_the_prefix():
    model = ours(hf_model(32, layers=2), SCANS[-1])
    assert_typing_reuses_the_prefix(model)


def test_changing_the_attention_window_or_the_scan_runs_from_the_start():
    model = ours(hf_model(33, layers=1))
    cache, x = assert_window_change_runs_from_the_start(model, Intervention("layers.0.wkv", "zero", positions=[75]))
    if numba_available():
        model.scan = "torch" if model.scan == "numba" else "numba"
        engine.run(model, x, cache=cache, chunk=16)
        assert cache.last_start == 0


def test_batched_rerun_from_cache_equals_full_rerun():
    model = ours(hf_model(34, layers=2), SCANS[-1])
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=model.state_units(1, ["num", "den"]))
    assert_batched_edit_reruns_from_the_chunk_before(model, iv)


@pytest.mark.parametrize("scan", SCANS)
def test_random_edit_sessions_always_match_full_runs(scan):
    assert_edit_sessions_match_full_runs(ours(hf_model(35, layers=2), scan), vocab=37, edits=30)
