"""The CUDA path: the same checks as on the CPU, run on a GPU when there is one (skipped in CI,
which has none).  Tolerances are looser than on the CPU: cuDNN and cuBLAS sum in other orders
(float32 within 1e-4 of the float64 reference; float64 within 1e-10)."""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine import Intervention, PrefixCache, Span
from engine.models.stack import from_torch
from reference import float64_weights, reference_stack

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_cuda_probes_match_the_float64_reference(cell, dtype, tol):
    torch.manual_seed(0)
    rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[cell](6, 16, 2).to(dtype)
    model = from_torch(rnn, device="cuda")
    assert model.device.type == "cuda"
    xs = [np.random.default_rng(s).standard_normal((L, 6)) for s, L in enumerate([300, 77])]
    trace = engine.run(model, [x.astype(np.float64 if dtype == torch.float64 else np.float32) for x in xs], chunk=64)
    for s, x in enumerate(xs):
        ref = reference_stack(cell, float64_weights(rnn), x, 2)
        for name, expected in ref.items():
            np.testing.assert_allclose(trace.array(name, s), expected, atol=tol, rtol=tol, err_msg=name)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_cuda_cached_rerun_equals_full_rerun(cell):
    torch.manual_seed(1)
    model = from_torch(cell(6, 32, 2), nn.Embedding(20, 6), nn.Linear(32, 20), device="cuda")
    x = np.random.default_rng(0).integers(0, 20, 500)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=64)
    for value in (0.5, -1.0, 2.0):
        iv = Intervention("layers.0.h", "add", value, positions=Span(333), units=[3])
        cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=64)
        assert cache.last_starts == [333, 333]
        full = engine.run(model, x, interventions=[iv], chunk=64)
        for name in full.probes:
            np.testing.assert_array_equal(cached[name], full[name], err_msg=name)
            np.testing.assert_array_equal(cached[name][:333], clean[name][:333], err_msg=name)


def test_loaded_checkpoint_runs_on_cuda_and_matches_cpu(tmp_path):
    torch.manual_seed(2)
    emb, rnn, head = nn.Embedding(30, 8), nn.LSTM(8, 24, 2), nn.Linear(24, 30)
    path = tmp_path / "m.pt"
    torch.save({**{f"emb.{k}": v for k, v in emb.state_dict().items()},
                **{f"rnn.{k}": v for k, v in rnn.state_dict().items()},
                **{f"fc.{k}": v for k, v in head.state_dict().items()}}, path)
    gpu = engine.load(path)  # CUDA by default when there is one
    cpu = engine.load(path, device="cpu")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    ids = np.random.default_rng(1).integers(0, 30, 200)
    a, b = engine.run(gpu, ids), engine.run(cpu, ids)
    for name in a.probes:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, rtol=1e-4, err_msg=name)
