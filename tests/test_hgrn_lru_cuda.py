"""HGRN and LRU on a GPU (skipped without one): the same torch code runs there; every probe
against the float64 references (float32 within 1e-4, float64 within 1e-10) and an exact
cached re-run."""
import pytest
import torch

import test_hgrn
import test_lru
from diagonal_checks import assert_cached_rerun_is_shorter_and_exact, assert_every_probe_matches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FAMILIES = {"hgrn": (test_hgrn, {"conv": 3}), "lru": (test_lru, {})}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_probes_match_the_float64_reference(family, dtype):
    module, kw = FAMILIES[family]
    model, w, cfg = module.make(**kw, dtype=dtype, device="cuda")
    assert model.device.type == "cuda"
    assert_every_probe_matches(model, lambda ids: module.reference(w, ids, cfg), tol32=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_cached_rerun_equals_full_rerun(family):
    module, kw = FAMILIES[family]
    assert_cached_rerun_is_shorter_and_exact(module.make(**kw, layers=3, device="cuda")[0], 23)
