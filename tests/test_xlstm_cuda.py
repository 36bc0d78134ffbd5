"""xLSTM on a GPU (skipped without one): every probe against the float64 reference (float32
with the tolerances of the CPU golden test, float64 within 1e-10), the attention identity, and
an exact cached re-run."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, PrefixCache, Span
from xlstm_reference import float64_weights, reference_xlstm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytest.importorskip("transformers")
from test_xlstm_golden import float32_tolerance, hf_model, ours, per_head_attention, ref_kwargs  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_cuda_probes_match_the_float64_reference(dtype):
    hf = hf_model(60, layers=2)
    model = ours(hf, dtype, device="cuda")
    assert model.device.type == "cuda"
    seqs = [np.random.default_rng(s).integers(0, 37, L) for s, L in enumerate([300, 77])]
    trace = engine.run(model, seqs, chunk=128)
    w = float64_weights(hf.state_dict())
    for s, ids in enumerate(seqs):
        ref = reference_xlstm(w, ids, 2, **ref_kwargs(hf))
        for name, expected in ref.items():
            atol, rtol = float32_tolerance(name, expected) if dtype == torch.float32 else (1e-10, 1e-10)
            np.testing.assert_allclose(trace.array(name, s), expected, atol=atol, rtol=rtol, err_msg=name)
    assert np.isfinite(trace.array("layers.1.attn", 0)[:256]).all()
    if dtype == torch.float64:
        T = 77
        alpha = per_head_attention(trace, 1, (0, T), (0, T), s=1)
        v = torch.tensor(trace.array("layers.1.v", 1)).reshape(T, 4, 8)
        h = torch.tensor(trace.array("layers.1.h", 1)).reshape(T, 4, 8)
        torch.testing.assert_close(torch.einsum("ijh,jhd->ihd", alpha, v), h, atol=1e-8, rtol=1e-8)


def test_cuda_cached_rerun_equals_full_rerun():
    model = ours(hf_model(61, layers=2), device="cuda")
    model.attention_window = ((20, 90), (0, 90))
    x = np.random.default_rng(0).integers(0, 37, 100)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention("layers.0.state", "add", 0.3, positions=Span(37), units=[2, 3])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts == [32, 32]
    full = engine.run(model, x, interventions=[iv], chunk=16)
    for name in full.probes:
        np.testing.assert_array_equal(cached[name], full[name], err_msg=name)
