"""LRU (SeqScope layout): every probe and the logits vs a complex128 step-by-step loop written
from the paper's recurrence (``tests/lru_reference.py``), the implicit attention reproducing
the output, interventions inside the recurrence (complex sites edited through their re/im
units), exact cached re-runs, saving with ``save_lru`` and loading.

Tolerances: vs the reference 1e-4 (float32 models, up to 300 steps, |lambda| up to 0.99) and 1e-10 (float64);
attention identity 1e-8 (float64); cached re-runs and causality bit for bit.
"""
import json

import numpy as np
import pytest
import torch

import engine
from diagonal_checks import assert_cached_rerun_is_shorter_and_exact, assert_edit_is_causal, \
    assert_every_probe_matches, assert_not_claimed
from engine import Intervention, LoadError, Span
from engine.models import hgrn, lru
from family_checks import assert_typing_sessions_match_full_runs
from engine.models.lru import LRUConfig, LRUModel, canonical_weight_shapes, lru_attention, save_lru
from lru_reference import reference


def random_weights(cfg: LRUConfig, seed=0) -> dict:
    """The paper's initialisation (ring of radius 0.5..0.99, phases up to pi, gamma
    normalising the input), random everything else."""
    g = torch.Generator().manual_seed(seed)
    w = {k: torch.randn(s, generator=g, dtype=torch.float64) * 0.4 for k, s in canonical_weight_shapes(cfg).items()}
    N = cfg.d_state
    for k in range(cfg.n_layer):
        p = f"layers.{k}."
        r = 0.5 + 0.49 * torch.rand(N, generator=g, dtype=torch.float64)
        w[p + "lru.nu_log"] = torch.log(-torch.log(r))
        w[p + "lru.theta_log"] = torch.log(torch.pi * torch.rand(N, generator=g, dtype=torch.float64))
        w[p + "lru.gamma_log"] = 0.5 * torch.log(1 - r ** 2)
        w[p + "norm.weight"] = 1 + 0.1 * torch.randn(cfg.d_model, generator=g, dtype=torch.float64)
    w["norm_f.weight"] = 1 + 0.1 * torch.randn(cfg.d_model, generator=g, dtype=torch.float64)
    return w


def make(d=12, N=10, layers=2, vocab=23, seed=0, dtype=torch.float32, device="cpu"):
    cfg = LRUConfig(d_model=d, d_state=N, n_layer=layers, vocab_size=vocab)
    w = random_weights(cfg, seed)
    return LRUModel(cfg, w, dtype=dtype, device=device), {k: v.numpy() for k, v in w.items()}, cfg


CASES = {"d12-N10": {}, "d8-N16-3layers": {"d": 8, "N": 16, "layers": 3}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_every_probe_matches_the_complex128_reference(case, dtype):
    model, w, cfg = make(**CASES[case], dtype=dtype)
    # float32: the states of channels with |lambda| near 1 sum ~1/(1 - |lambda|) terms
    assert_every_probe_matches(model, lambda ids: reference(w, ids, cfg), tol32=1e-4)


def test_attention_reproduces_the_output_in_float64():
    model, w, cfg = make(dtype=torch.float64)
    T = 90
    ids = np.random.default_rng(5).integers(0, 23, T)
    trace = engine.run(model, ids, chunk=32)
    for k in range(cfg.n_layer):
        bu = torch.view_as_complex(torch.tensor(trace[f"layers.{k}.Bu"]))
        s = torch.view_as_complex(torch.tensor(trace[f"layers.{k}.state"]))
        u, y = torch.tensor(trace[f"layers.{k}.in"]), torch.tensor(trace[f"layers.{k}.y"])
        D, C, log_lam, powers = torch.tensor(w[f"layers.{k}.lru.D"]), model.C(k), model._log_lam[k], model._powers[k]
        c = lru_attention(bu, powers, C, (0, T), (0, T), reduce=None)  # [T, T, d]
        torch.testing.assert_close(c.sum(1) + D * u, y, atol=1e-8, rtol=1e-8)
        # a sub-window: its columns, the later columns, and the state before its first column
        (r0, r1), (c0, c1) = (30, 70), (10, 60)
        part = lru_attention(bu, powers, C, (r0, r1), (c0, c1), reduce=None)
        torch.testing.assert_close(part, c[r0:r1, c0:c1], atol=1e-14, rtol=1e-12)
        i = torch.arange(r0, r1)
        before = torch.exp((i - c0 + 1)[:, None] * log_lam) * s[c0 - 1]  # lambda^(i-c0+1) s_(c0-1)
        rest = (before @ C.T).real + c[r0:r1, c1:].sum(1)
        torch.testing.assert_close(part.sum(1) + rest + D * u[r0:r1], y[r0:r1], atol=1e-8, rtol=1e-8)
    model.attention_window = ((10, 40), (5, 30))
    att = engine.run(model, ids, chunk=32, probes="layers.1.attn")["layers.1.attn"]
    assert att.shape == (T, 25) and np.isnan(att[:10]).all() and np.isnan(att[40:]).all()
    np.testing.assert_allclose(att[10:40], c[10:40, 5:30].abs().mean(-1).numpy(), atol=1e-14)
    assert (att[10, 6:] == 0).all() and att[10, 5] > 0  # row i = 10: keys after step 10 are 0


@pytest.mark.parametrize("site", ["in", "Bu", "state", "y", "mixer", "out"])
def test_steps_before_t_are_bit_identical_and_later_steps_change(site):
    assert_edit_is_causal(make()[0], f"layers.0.{site}", 23)


def test_editing_the_input_and_the_state_matches_the_reference():
    model, w, cfg = make(dtype=torch.float64)
    x = np.random.default_rng(7).integers(0, 23, 80)
    ivs = [Intervention("layers.0.Bu", "set", 2.0, positions=[12], units=model.state_units(3, parts=(0,))),
           Intervention("layers.1.state", "zero", positions=Span(40, 43), units=model.state_units([2, 5])),
           Intervention("layers.1.y", "scale", -1.0, positions=[50])]

    def real_part(v):
        v[3, 0] = 2.0
        return v

    def zero(v):
        v[[2, 5]] = 0
        return v

    ov = {("layers.0.Bu", 12): real_part, ("layers.1.y", 50): lambda v: -v,
          **{("layers.1.state", t): zero for t in range(40, 43)}}
    tr = engine.run(model, x, interventions=ivs, chunk=32)
    for name, expected in reference(w, x, cfg, overrides=ov).items():
        np.testing.assert_allclose(tr[name], expected, atol=1e-10, rtol=1e-10, err_msg=name)


def test_patched_state_equals_running_the_suffix_from_that_state():
    model, w, cfg = make(layers=1, dtype=torch.float64)
    a, b = (np.random.default_rng(s).integers(0, 23, 70) for s in (8, 9))
    t = 37
    src = engine.run(model, a, chunk=32)
    tr = engine.run(model, b, chunk=32,
                    interventions=[Intervention("layers.0.state", "patch", src["layers.0.state"], positions=[t])])
    s_t = src["layers.0.state"][t]
    ref = reference(w, None, cfg, state0={0: s_t[:, 0] + 1j * s_t[:, 1]}, start=tr["embed"][t + 1:])
    for site in ("state", "y", "out", "logits"):
        name = site if site == "logits" else f"layers.0.{site}"
        np.testing.assert_allclose(tr[name][t + 1:], ref[name], atol=1e-10, rtol=1e-10, err_msg=name)


# -- the prefix cache -------------------------------------------------------------------------


def test_a_cached_rerun_starts_at_the_chunk_before_the_edit_and_equals_a_full_run():
    assert_cached_rerun_is_shorter_and_exact(make(layers=3)[0], 23)


def test_random_edit_sessions_always_match_full_runs():
    assert_typing_sessions_match_full_runs(make()[0], 23)


# -- saving and loading ---------------------------------------------------------------------------


def test_save_lru_writes_a_file_that_loads(tmp_path):
    cfg = LRUConfig(d_model=12, d_state=10, n_layer=2, vocab_size=23)
    weights = {k: v.float() for k, v in random_weights(cfg).items()}
    path = save_lru(tmp_path / "lru.safetensors", cfg, weights)
    model = engine.load(path, device="cpu")
    assert isinstance(model, LRUModel) and model.config == cfg and model.info()["layout"] == "SeqScope LRU"
    ids = np.random.default_rng(0).integers(0, 23, 50)
    direct = LRUModel(cfg, weights)
    np.testing.assert_array_equal(engine.run(model, ids)["logits"], engine.run(direct, ids)["logits"])
    with pytest.raises(ValueError, match="weight shapes"):
        save_lru(tmp_path / "bad.safetensors", cfg, {**weights, "layers.0.lru.D": torch.zeros(3)})


def test_a_folder_with_config_json_loads(tmp_path):
    from safetensors.torch import save_file

    model, w, cfg = make(N=6)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"family": "lru", "d_model": 12, "d_state": 6, "n_layer": 2,
                                                      "vocab_size": 23, "norm_eps": 1e-5}))
    again = engine.load(tmp_path, device="cpu")
    assert again.config == cfg
    ids = np.arange(30) % 23
    np.testing.assert_array_equal(engine.run(again, ids)["logits"], engine.run(model, ids)["logits"])


def test_wrong_or_missing_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    model, w, cfg = make()
    p = save_lru(tmp_path / "m.safetensors", cfg, model.state_dict())
    sd = load_file(p)
    sd.pop("layers.1.lru.C_im")
    sd["layers.0.lru.B_re"] = torch.zeros(10, 7)
    save_file(sd, tmp_path / "bad.safetensors", metadata={"seqscope_config": cfg.to_json()})
    with pytest.raises(LoadError, match=r"missing layers\.1\.lru\.C_im") as err:
        engine.load(tmp_path / "bad.safetensors", device="cpu")
    assert "layers.0.lru.B_re is [10, 7], expected [10, 12]" in str(err.value)
    sd = {**load_file(p), "layers.0.lru.extra": torch.zeros(2)}
    save_file(sd, tmp_path / "extra.safetensors")
    with pytest.raises(LoadError, match=r"unexpected layers\.0\.lru\.extra"):
        engine.load(tmp_path / "extra.safetensors", device="cpu")
    assert engine.load(tmp_path / "extra.safetensors", device="cpu", strict=False).config == cfg


def test_other_families_are_not_claimed(tmp_path):
    assert_not_claimed(lru, tmp_path)
    sd = make()[0].state_dict()
    assert lru.looks_like(sd, []) and not hgrn.looks_like(sd, [])
