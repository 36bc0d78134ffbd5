"""RWKV-4 on a GPU (skipped without one): the torch WKV loop runs there; every probe against
the float64 reference (float32 within 1e-4, float64 within 1e-10), the attention identity, an
exact cached re-run, and a bfloat16 model (recurrence in float32) close to the float32 one."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, PrefixCache, Span
from rwkv_reference import float64_weights, reference_rwkv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytest.importorskip("transformers")
from test_rwkv_golden import hf_model, ours, per_channel_attention  # noqa: E402


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_cuda_probes_match_the_float64_reference(dtype, tol):
    hf = hf_model(60, d=16, layers=2, att=12, ffn=40)
    model = ours(hf, "auto", dtype, device="cuda")
    assert model.device.type == "cuda" and model.scan == "torch"
    seqs = [np.random.default_rng(s).integers(0, 37, L) for s, L in enumerate([300, 77])]
    trace = engine.run(model, seqs, chunk=64)
    w = float64_weights(hf.state_dict())
    for s, ids in enumerate(seqs):
        ref = reference_rwkv(w, ids, 2)
        for name, expected in ref.items():
            t = 5 * tol if name.endswith(".state") else tol
            np.testing.assert_allclose(trace.array(name, s), expected, atol=t, rtol=t, err_msg=name)
    assert np.isfinite(trace.array("layers.1.attn", 0)[:256]).all()
    if dtype == torch.float64:
        T = 77
        alpha = per_channel_attention(trace, 1, (0, T), (0, T), s=1)
        wkv = torch.einsum("ijc,jc->ic", alpha, torch.tensor(trace.array("layers.1.v", 1)))
        torch.testing.assert_close(wkv, torch.tensor(trace.array("layers.1.wkv", 1)), atol=1e-8, rtol=1e-8)


def test_cuda_cached_rerun_equals_full_rerun():
    model = ours(hf_model(61, layers=2), "auto", device="cuda")
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


def test_cuda_bfloat16_runs_the_recurrence_in_float32():
    hf = hf_model(62, layers=2)
    half = ours(hf, "auto", torch.bfloat16, device="cuda")
    assert half.scan_dtype == torch.float32
    x = np.random.default_rng(1).integers(0, 37, 200)
    tr = engine.run(half, x, probes=["logits", "layers.*.state"])
    full = engine.run(ours(hf, "auto", device="cuda"), x, probes="logits")
    assert np.abs(tr["logits"] - full["logits"]).max() < 0.1 * np.abs(full["logits"]).max()
