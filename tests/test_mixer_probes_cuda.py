"""The branch and stream probes (``mixer``, ``mid``, ``mlp``) on a GPU (skipped without one): the
same torch code runs there.  Per family: every new probe equals the CPU run's (float32, within
1e-4 absolute + relative, the other CUDA tests' tolerance), an edit at ``mixer`` leaves the
steps before it bit-identical to the clean CUDA run and moves the stream after its add by the
edit (within 1e-5), and a cached re-run equals a full run bit for bit."""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, PrefixCache
from family_checks import assert_traces_equal
from test_mixer_probes import CHAINS, build, ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("family", list(CHAINS))
def test_cuda_branch_and_stream_probes(family, tmp_path):
    cpu = build(family, tmp_path)
    x, t, k = ids(cpu, 60), 37, 1
    sites = [f"layers.{k}.{s}" for pair in CHAINS[family] for s in pair] + ["logits"]
    on_cpu = engine.run(cpu, x, chunk=16)
    model = build(family, tmp_path).to(device="cuda")
    assert model.device.type == "cuda"
    clean = engine.run(model, x, chunk=16)
    for name in sites:
        np.testing.assert_allclose(clean[name], on_cpu[name], atol=1e-4, rtol=1e-4, err_msg=name)
    delta = np.random.default_rng(5).normal(size=model.probe_specs()[0].shape).astype(np.float32)
    iv = Intervention(f"layers.{k}.mixer", "add", delta, positions=[t])
    cache = PrefixCache()
    engine.run(model, x, chunk=16, cache=cache)
    cached = engine.run(model, x, chunk=16, cache=cache, interventions=[iv])
    edited = engine.run(model, x, chunk=16, interventions=[iv])
    assert_traces_equal(cached, edited)
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    after = dict(CHAINS[family])["mixer"]
    np.testing.assert_allclose(edited[f"layers.{k}.{after}"][t] - clean[f"layers.{k}.{after}"][t], delta,
                               atol=1e-5, rtol=1e-5)
    assert np.abs(edited["logits"][t + 1:] - clean["logits"][t + 1:]).max() > 1e-4
