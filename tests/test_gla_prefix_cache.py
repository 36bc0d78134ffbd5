"""The prefix cache with GLA / RetNet: a re-run that starts from a kept state (S and the
short-convolution buffers at a chunk boundary) equals a full re-run bit for bit, and runs fewer
chunks."""
import pytest

from engine import Intervention
from family_checks import (assert_edit_reruns_from_the_chunk_before, assert_edit_sessions_match_full_runs,
                           assert_typing_reuses_the_prefix, assert_upper_layer_edit_reruns_it_alone,
                           assert_window_change_runs_from_the_start)
from test_gla_golden import build


@pytest.mark.parametrize("family", ["gla", "retnet"])
@pytest.mark.parametrize("site", ["in", "state", "k", "out"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(family, site, t):
    model, _, _ = build(family, seed=30, use_short_conv=True)
    model.attention_window = ((20, 60), (0, 60))
    assert_edit_reruns_from_the_chunk_before(model, site, t)


def test_an_edit_in_an_upper_layer_does_not_rerun_the_layers_below():
    model, _, _ = build("gla", seed=31, layers=3)
    iv = Intervention("layers.2.gate", "scale", 0.0, positions=[70], units=[0])
    assert_upper_layer_edit_reruns_it_alone(model, iv)


@pytest.mark.parametrize("family", ["gla", "retnet"])
def test_typing_more_text_reuses_the_prefix(family):
    model, _, _ = build(family, seed=32, use_short_conv=True)
    assert_typing_reuses_the_prefix(model, T=150)


def test_changing_the_attention_window_runs_from_the_start():
    model, _, _ = build("retnet", seed=33)
    assert_window_change_runs_from_the_start(model, Intervention("layers.0.o", "zero", positions=[75]))


@pytest.mark.parametrize("family", ["gla", "retnet"])
def test_random_edit_sessions_always_match_full_runs(family):
    model, _, _ = build(family, seed=35, use_short_conv=True)
    assert_edit_sessions_match_full_runs(model, vocab=37, edits=25)
