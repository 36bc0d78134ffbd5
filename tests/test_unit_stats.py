"""Unit statistics (engine.analysis.unit_stats): against numpy on the whole array, the same from a
trace file read a few rows at a time as from memory, and the thresholds as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis import unit_stats as U
from engine.analysis.trace_source import TraceSource
from engine.hdf5_read import TraceLoadError
from engine.models.stack import from_torch
from engine.probes import ProbeSpec
from engine.trace import Trace


def lstm_trace(lengths=(40, 25, 60)):
    torch.manual_seed(0)
    model = from_torch(nn.LSTM(3, 6), dtype=torch.float32)
    rng = np.random.default_rng(0)
    return engine.run(model, [rng.standard_normal((n, 3)).astype(np.float32) * 2 for n in lengths])


def synthetic_trace(x: np.ndarray, site="h", arch="lstm", offsets=None):
    n = len(x)
    spec = ProbeSpec(f"layers.0.{site}", x.shape[1:], ("token",) + ("unit",) * (x.ndim - 1), "", layer=0, site=site)
    return Trace(tokens=np.zeros(n, dtype=np.int32), offsets=offsets if offsets is not None else [0, n],
                 arrays={spec.name: x}, specs={spec.name: spec}, model_info={"architecture": arch, "config": "{}"})


def test_statistics_equal_numpy_and_a_file_read_in_small_blocks_equals_memory(tmp_path):
    tr = lstm_trace()
    path = engine.save_trace(tr, tmp_path / "t.h5")
    for probe in ("layers.0.h", "layers.0.c", "layers.0.gate_f"):
        x = tr[probe].astype(np.float64)
        mem = U.unit_stats(tr, probe)
        disk = U.unit_stats(path, probe, rows=7)  # blocks that cut across sequences
        np.testing.assert_allclose(mem.mean, x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mem.std, x.std(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mem.sparsity, (np.abs(x) <= 0.01).mean(0))
        for field in ("mean", "std", "min", "max", "sparsity"):
            np.testing.assert_allclose(getattr(disk, field), getattr(mem, field), rtol=1e-9, atol=1e-12)
    assert mem.value_range == (0.0, 1.0)
    np.testing.assert_allclose(mem.saturated_fraction, ((x <= 0.02) | (x >= 0.98)).mean(0))
    assert U.unit_stats(tr, "layers.0.c").value_range is None  # the cell state is unbounded


def test_dead_and_saturated_units_by_the_stated_thresholds():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, size=(200, 4))
    x[:, 1] = 0.3  # dead: constant
    x[:, 2] = np.where(rng.random(200) < 0.95, 0.995, 0.0)  # saturated: 95 % within 2 % of the bound 1
    x[:, 3] = np.where(rng.random(200) < 0.5, -0.999, 0.2)  # at a bound half of the time: not saturated
    s = U.unit_stats(synthetic_trace(x, "h", "rnn_tanh"), "layers.0.h")
    assert s.dead.tolist() == [False, True, False, False]
    assert s.value_range == (-1.0, 1.0)
    assert s.saturated.tolist() == [False, False, True, False]
    assert s.summary()["saturated_units"] == [2] and s.summary()["dead_units"] == [1]
    relu = U.unit_stats(synthetic_trace(x, "h", "rnn_relu"), "layers.0.h")
    assert relu.saturated is None  # relu has no upper bound


def test_value_ranges_follow_the_cell_variant():
    assert U.value_range("lstm", "gate_f") == (0.0, 1.0)
    assert U.value_range("lstm", "gate_g", {"activation": "relu"}) is None
    assert U.value_range("gru", "gate_z", {"recurrent_activation": "hard_sigmoid"}) == (0.0, 1.0)
    assert U.value_range("lstm", "h", {"proj_size": 3}) is None
    assert U.value_range("xlstm", "gate_f") is None  # a log forget gate, <= 0
    assert U.value_range("hgrn", "f") == (0.0, 1.0)


def test_gate_saturation_per_layer_counts_the_lowest_and_highest_tenths():
    tr = lstm_trace()
    gates = U.gate_saturation(tr)
    assert [g.site for g in gates] == ["gate_f", "gate_g", "gate_i", "gate_o"]
    for g in gates:
        x = tr[g.probe]
        assert g.left == pytest.approx((x < g.low).mean()) and g.right == pytest.approx((x > g.high).mean())
    g_site = next(g for g in gates if g.site == "gate_g")
    assert (g_site.low, g_site.high) == pytest.approx((-0.8, 0.8))


def test_state_profile_norm_by_position_and_windowed_effective_rank():
    tr = lstm_trace((40, 25, 60))
    p = U.state_profile(tr, "layers.0.c", window=10)
    x = tr["layers.0.c"].astype(np.float64)
    offs = tr.offsets
    pos = np.concatenate([np.arange(b - a) for a, b in zip(offs[:-1], offs[1:])])
    for t in (0, 24, 30, 59):
        assert p.norm[t] == pytest.approx(np.linalg.norm(x[pos == t], axis=1).mean())
    assert p.count[:25].tolist() == [3] * 25 and p.count[40:].tolist() == [1] * 20
    rows = x[(pos >= 20) & (pos < 30)]
    sv = np.linalg.svd(rows - rows.mean(0), compute_uv=False)
    q = sv / sv.sum()
    assert p.effective_rank[2] == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-6)
    assert p.rank_kind == "states in the window"


def test_effective_rank_of_known_matrices_and_of_a_matrix_state_per_token():
    assert U.effective_rank([1, 1, 1, 1]) == pytest.approx(4)
    assert U.effective_rank([1, 0, 0]) == pytest.approx(1)
    assert U.effective_rank([0, 0]) == 0
    rng = np.random.default_rng(0)
    rank1 = np.einsum("ti,tj->tij", rng.standard_normal((12, 5)), rng.standard_normal((12, 3)))
    p = U.state_profile(synthetic_trace(rank1, "state", "mamba"), "layers.0.state", window=4)
    assert p.rank_kind == "matrix per token"
    np.testing.assert_allclose(p.effective_rank, 1.0, atol=1e-6)  # each token's state has rank 1


def test_summary_of_a_corpus_file_and_bad_files(tmp_path):
    tr = lstm_trace()
    path = engine.save_trace(tr, tmp_path / "corpus.h5")
    summary = U.summarize(path, rows=16)
    assert summary["tokens"] == 125 and summary["sequences"] == 3
    assert {p["probe"] for p in summary["probes"]} == {n for n in tr.probes if n != "logits"}
    assert {p["probe"] for p in summary["state_profiles"]} == {"layers.0.h", "layers.0.c"}
    (tmp_path / "no.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(TraceLoadError, match="not a SeqScope trace"):
        TraceSource(tmp_path / "no.h5")
    with TraceSource(path) as src, pytest.raises(KeyError, match="not in this trace"):
        src.row_shape("layers.9.h")
