"""Mamba2 on a GPU (skipped without one): every probe against the float64 reference (float32
within 1e-4, float64 within 1e-10), the attention probe finite in its window, and an exact
cached re-run."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, PrefixCache, Span

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytest.importorskip("transformers")
from test_mamba2_golden import hf_model, ours, reference  # noqa: E402


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_cuda_probes_match_the_float64_reference(dtype, tol):
    hf = hf_model(60, d=16, N=4, layers=2, groups=2)
    model = ours(hf, dtype, device="cuda")
    assert model.device.type == "cuda"
    seqs = [np.random.default_rng(s).integers(0, 37, L) for s, L in enumerate([300, 77])]
    trace = engine.run(model, seqs, chunk=128)
    for s, ids in enumerate(seqs):
        for name, expected in reference(hf, ids).items():
            np.testing.assert_allclose(trace.array(name, s), expected, atol=tol, rtol=tol, err_msg=name)
    assert np.isfinite(trace.array("layers.1.attn", 0)[:256]).all()


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
