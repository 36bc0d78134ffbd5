"""The differentiable forward (engine.analysis.differentiable) on every chunked family: its
output equals engine.run's (float64, 1e-10), and its gradient with respect to the input vectors
equals a central finite difference along a random direction (float64, step 1e-7, relative 1e-5)
— the gradient really flows through each family's own forward pass, its torch scan included.
The models are the families' own test builders (tiny random weights)."""
import tempfile

import numpy as np
import pytest
import torch

import engine
from engine.analysis.differentiable import DifferentiableForward

F64 = torch.float64


def builders():
    import test_deltanet_golden as dn
    import test_gla_golden as gla
    import test_hgrn as hgrn
    import test_lru as lru
    import test_mamba2_golden as m2
    import test_mamba_golden as m1
    import test_mingru as mingru
    import test_recurrent_gemma_golden as rg
    import test_rwkv7_golden as r7
    import test_rwkv_golden as r4
    import test_xlstm_golden as xl
    from engine.models.recurrent_gemma_loading import from_transformers as rg_from

    return {
        "mamba": lambda: m1.ours(m1.hf_model(), scan="numba", dtype=F64),
        "mamba2": lambda: m2.ours(m2.hf_model(), dtype=F64),
        "rwkv": lambda: r4.ours(r4.hf_model(), scan="numba", dtype=F64),
        "rwkv7": lambda: r7.model_for(r7.state_dict_for(r7.CASES[0], F64), F64),
        "xlstm": lambda: xl.ours(xl.hf_model(), dtype=F64),
        "hgrn": lambda: hgrn.make(dtype=F64)[0],
        "lru": lambda: lru.make(dtype=F64)[0],
        "mingru": lambda: mingru.make(dtype=F64, scan="numba")[0],
        "recurrent_gemma": lambda: rg_from(rg.hf_model(), dtype=F64),
        "gla": lambda: gla.build("gla", dtype=F64, tmp=tempfile.mkdtemp())[0],
        "retnet": lambda: gla.build("retnet", dtype=F64, tmp=tempfile.mkdtemp())[0],
        "deltanet": lambda: dn.build(tempfile.mkdtemp(), dtype=F64)[0],
    }


FAMILIES = ["mamba", "mamba2", "rwkv", "rwkv7", "xlstm", "hgrn", "lru", "mingru", "recurrent_gemma", "gla", "retnet", "deltanet"]


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_flows_through_the_family_forward(family):
    pytest.importorskip("transformers")
    model = builders()[family]()
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]) % model.vocab_size
    fwd = DifferentiableForward(model)
    x = fwd.input_vectors(ids)[:, None]
    out = fwd(x, {"logits"})["logits"]
    np.testing.assert_allclose(out[:, 0].detach().numpy(), engine.run(model, ids, probes=["logits"])["logits"],
                               atol=1e-10, rtol=1e-10)
    step, token = 10, 2
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fwd(leaf, {"logits"})["logits"][step, 0, token], leaf)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    eps = 1e-7  # small: the xLSTM normaliser max(|n.q|, exp(-m)) has kinks near this input
    with torch.no_grad():
        f = lambda z: fwd(z, {"logits"})["logits"][step, 0, token]  # noqa: E731
        numeric = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    assert float((g * v).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-8)
    assert torch.all(g[step + 1:] == 0)  # later tokens cannot matter
