"""The prefix cache with DeltaNet: a re-run that starts from a kept state (S and the three
convolution buffers at a chunk boundary) equals a full run with the same edits bit for bit,
and runs only from that boundary (``cache.last_starts``) and only the layers an edit reaches."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, PrefixCache, Span
from family_checks import (assert_batched_edit_reruns_from_the_chunk_before, assert_edit_reruns_from_the_chunk_before,
                           assert_edit_sessions_match_full_runs, assert_traces_equal, assert_typing_reuses_the_prefix,
                           assert_upper_layer_edit_reruns_it_alone, assert_window_change_runs_from_the_start)
from test_deltanet_golden import build


def ids(T, seed=0):
    return np.random.default_rng(seed).integers(0, 29, T)


@pytest.fixture
def model(tmp_path):
    m, _, _ = build(tmp_path, 30, dtype=torch.float32, use_gate=True)
    m.attention_window = ((20, 60), (0, 60))
    return m


@pytest.mark.parametrize("site", ["v", "beta", "state", "out"])
@pytest.mark.parametrize("t", [37, 48, 95])  # inside a chunk, on a chunk boundary, in the last chunk
def test_intervention_rerun_from_cache_equals_full_rerun(model, site, t):
    assert_edit_reruns_from_the_chunk_before(model, site, t, vocab=29, units=(0, 1))


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
    iv = Intervention("layers.2.beta", "scale", 0.0, positions=[70], units=[0])
    assert_upper_layer_edit_reruns_it_alone(m, iv, vocab=29)


def test_typing_more_text_reuses_the_prefix(model):
    assert_typing_reuses_the_prefix(model, vocab=29)


def test_changing_the_attention_window_runs_from_the_start(model):
    assert_window_change_runs_from_the_start(model, Intervention("layers.0.y", "zero", positions=[75]), vocab=29)


def test_batched_rerun_from_cache_equals_full_rerun(model):
    iv = Intervention("layers.1.state", "set", 0.0, positions=Span(50), units=[1])
    assert_batched_edit_reruns_from_the_chunk_before(model, iv, vocab=29)


def test_random_edit_sessions_always_match_full_runs(model):
    assert_edit_sessions_match_full_runs(model, vocab=29, edits=25)


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
