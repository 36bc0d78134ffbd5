"""Every branch of a residual block and the stream after each of its adds is a probe (issue 13
item 7): ``mixer`` (the token-mixing branch's output before its residual add), ``mid`` (the
stream after that add, in blocks with a second branch), ``mlp`` (the feed-forward branch's output
before its add), ``out`` (the stream after the block, as before), for every family built of
residual blocks.  ``CHAINS`` below is the table README.md shows.

Checked here, per family, on tiny random models:
- the probe table has the sites of the table, described as a branch "before the residual add"
  and a "residual stream after" (the other names of RWKV and xLSTM name the same arrays);
- each stream after an add equals the stream before it plus the branch's output, bit for bit
  (float32 addition rounds alike in torch and numpy);
- an edit at ``mixer`` at step t leaves every probe before t bit-identical, moves the stream
  after its add at t by exactly the edit (the edited branch plus the unchanged input, bit for
  bit), reaches the next layer at t and later steps, and a cached re-run equals a full run;
- against the reference implementations' modules, hooked with torch forward hooks (float32
  both, within 2e-5 absolute + relative, the golden tests' tolerance): ``transformers``' Mamba
  and Mamba2 ``mixer.out_proj``, RWKV's ``attention`` and ``feed_forward`` and ``ln2``'s input,
  xLSTM's ``mlstm_layer``, ``ffn`` and ``norm_ffn``'s input (RecurrentGemma's temporal block,
  MLP block and ``channel_pre_norm`` input are in tests/test_recurrent_gemma_golden.py; the
  float64 references of every family, tests/*_reference.py, record the new sites too, so each
  family's golden test compares them);
- the nnsight-style case: a vector added at layer 1's mixer output of a tiny
  ``MambaForCausalLM`` at one step through SeqScope gives the logits of the same edit made by a
  forward hook on ``mixer.out_proj`` (within 2e-5), as do an ablation (zeroing) and a scaling
  there; these differ from the same edits at ``out``, which also take the residual stream (an
  added vector reaches the stream alike at both, the block having one add).
"""
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, Span
from engine.probes import RESIDUAL_SITES
from family_checks import assert_edit_reruns_from_the_chunk_before

transformers = pytest.importorskip("transformers")
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()

TWO_ADDS = (("mixer", "mid"), ("mlp", "out"))
#: per family: (branch, residual stream after its add), in the order the block adds them; the
#: stream before the first add is the layer's input (the layer below's ``out``)
CHAINS = {
    "mamba": (("mixer", "out"),),
    "mamba2": (("mixer", "out"),),
    "lru": (("mixer", "out"),),
    "rwkv": TWO_ADDS,
    "rwkv7": TWO_ADDS,
    "gla": TWO_ADDS,
    "retnet": TWO_ADDS,
    "deltanet": TWO_ADDS,
    "hgrn": TWO_ADDS,
    "mingru": TWO_ADDS,
    "minlstm-conv": (("conv", "after_conv"),) + TWO_ADDS,
    "xlstm": TWO_ADDS,
    "recurrent_gemma": TWO_ADDS,
}
#: the family's own earlier names of the same arrays
ALIASES = {"rwkv": {"mixer": "att", "mlp": "ffn"}, "rwkv7": {"mixer": "att", "mlp": "ffn"}, "xlstm": {"mixer": "mix"}}


def build(family, tmp_path, layers=3):
    """A tiny float32 model of ``family`` with random weights (each family's own test builder;
    RecurrentGemma's has 3 layers: recurrent, recurrent, attention)."""
    if family in ("mamba", "mamba2", "rwkv", "xlstm"):
        import importlib

        golden = importlib.import_module(f"test_{family}_golden")
        return golden.ours(golden.hf_model(seed=1, layers=layers))
    if family == "rwkv7":
        from rwkv7_reference import random_state_dict
        from test_rwkv7_golden import model_for
        return model_for(random_state_dict(1, layers=layers))
    if family in ("gla", "retnet"):
        from test_gla_golden import build as build_gla
        return build_gla(family, seed=1, tmp=tmp_path, layers=layers)[0]
    if family == "deltanet":
        from test_deltanet_golden import build as build_deltanet
        return build_deltanet(tmp_path, seed=1, dtype=torch.float32, num_hidden_layers=layers)[0]
    if family in ("hgrn", "lru"):
        from importlib import import_module
        return import_module(f"test_{family}").make(seed=1, layers=layers)[0]
    if family in ("mingru", "minlstm-conv"):
        from test_mingru import make
        return make(layers=layers, seed=1)[0] if family == "mingru" else make("minlstm", conv=3, layers=layers, seed=1)[0]
    if family == "recurrent_gemma":
        from engine.models.recurrent_gemma_loading import from_transformers
        from test_recurrent_gemma_golden import hf_model
        return from_transformers(hf_model("mqa-w8", seed=1))  # recurrent, recurrent, attention
    raise AssertionError(family)


def ids(model, T=40, seed=3):
    return np.random.default_rng(seed).integers(0, model.vocab_size, T)


def layer_input(trace, k):
    return trace[f"layers.{k - 1}.out"]


@pytest.mark.parametrize("family", list(CHAINS))
def test_the_probe_table_says_which_is_the_branch_and_which_the_stream(family, tmp_path):
    model = build(family, tmp_path)
    specs = {s.name: s for s in model.probe_specs()}
    for k in range(model.num_layers):
        for branch, after in CHAINS[family]:
            b, s = specs[f"layers.{k}.{branch}"], specs[f"layers.{k}.{after}"]
            assert "before" in b.description and "residual add" in b.description, b.description
            assert "residual stream after" in s.description, s.description
            assert b.shape == s.shape == specs["embed"].shape
        for alias, own in ALIASES.get(family, {}).items():
            assert "another name of " + own in specs[f"layers.{k}.{alias}"].description
    assert set(RESIDUAL_SITES) <= {site for chain in CHAINS.values() for pair in chain for site in pair}


def test_the_readme_shows_the_same_table():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("### Branch outputs and the residual stream")[1].split("\n## ")[0]
    for site, meaning in RESIDUAL_SITES.items():
        assert f"| `{site}` | {meaning.split(' (')[0]}" in section
    shown = set(re.findall(r"`(\w+)`(?: \(= `\w+`\))? → `(\w+)`", section))
    assert shown == {pair for chain in CHAINS.values() for pair in chain}


@pytest.mark.parametrize("family", list(CHAINS))
def test_each_stream_is_the_stream_before_plus_the_branch_exactly(family, tmp_path):
    model = build(family, tmp_path)
    trace = engine.run(model, ids(model), chunk=16)
    for k in range(1, model.num_layers):  # layer 0's input may be normed first (RWKV's pre_ln)
        before = layer_input(trace, k)
        for branch, after in CHAINS[family]:
            np.testing.assert_array_equal(trace[f"layers.{k}.{after}"], before + trace[f"layers.{k}.{branch}"])
            before = trace[f"layers.{k}.{after}"]
        for alias, own in ALIASES.get(family, {}).items():
            np.testing.assert_array_equal(trace[f"layers.{k}.{alias}"], trace[f"layers.{k}.{own}"])


@pytest.mark.parametrize("family", list(CHAINS))
def test_an_edit_at_the_mixer_acts_from_its_step_on(family, tmp_path):
    model = build(family, tmp_path)
    x, t, k = ids(model, 60), 37, 1
    delta = np.random.default_rng(5).normal(size=model.probe_specs()[0].shape).astype(np.float32)
    clean = engine.run(model, x, chunk=16)
    iv = Intervention(f"layers.{k}.mixer", "add", delta, positions=[t])
    edited = engine.run(model, x, chunk=16, interventions=[iv])
    for name in clean.probes:  # nothing before t moves
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    # at t: the branch moves by the edit, and the stream after its add by exactly that
    np.testing.assert_array_equal(edited[f"layers.{k}.mixer"][t], clean[f"layers.{k}.mixer"][t] + delta)
    pairs = list(CHAINS[family])
    i = [branch for branch, _ in pairs].index("mixer")
    before = clean[f"layers.{k - 1}.out"] if i == 0 else clean[f"layers.{k}.{pairs[i - 1][1]}"]
    np.testing.assert_array_equal(edited[f"layers.{k}.{pairs[i][1]}"][t], before[t] + edited[f"layers.{k}.mixer"][t])
    above = f"layers.{k + 1}.out"
    assert np.abs(edited[above][t] - clean[above][t]).max() > 1e-4  # the next layer, at t
    assert np.abs(edited[above][t + 1:] - clean[above][t + 1:]).max() > 1e-4  # and later, through its state
    assert np.abs(edited["logits"][t + 1:] - clean["logits"][t + 1:]).max() > 1e-4
    own = ALIASES.get(family, {}).get("mixer")
    if own:  # the family's own name is the same place
        same = engine.run(model, x, chunk=16, interventions=[Intervention(f"layers.{k}.{own}", "add", delta,
                                                                         positions=[t])])
        np.testing.assert_array_equal(same["logits"], edited["logits"])


@pytest.mark.parametrize("family", ["mamba", "rwkv", "hgrn", "minlstm-conv", "xlstm"])
@pytest.mark.parametrize("site", ["mixer", "mid"])
def test_a_cached_rerun_after_an_edit_at_the_new_probes_equals_a_full_run(family, site, tmp_path):
    model = build(family, tmp_path, layers=2)
    if site == "mid" and site not in model.sites:
        site = "out"
    model.attention_window = ((20, 60), (0, 50))
    assert_edit_reruns_from_the_chunk_before(model, site, 37, vocab=model.vocab_size)


# -- against the reference modules, read by forward hooks ----------------------------------------
def hooked(hf, family):
    """(module, probe site, what to take from the hook's (args, output)) per layer of ``hf``."""
    out0 = lambda a, o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    arg0 = lambda a, o: a[0]  # noqa: E731
    if family in ("mamba", "mamba2"):
        return [[(layer.mixer.out_proj, "mixer", out0)] for layer in hf.backbone.layers]
    if family == "rwkv":
        return [[(b.attention, "mixer", out0), (b.ln2, "mid", arg0), (b.feed_forward, "mlp", out0)]
                for b in hf.rwkv.blocks]
    if family == "xlstm":
        return [[(b.mlstm_layer, "mixer", out0), (b.norm_ffn, "mid", arg0), (b.ffn, "mlp", out0)]
                for b in hf.backbone.blocks]
    raise AssertionError(family)


@pytest.mark.parametrize("family", ["mamba", "mamba2", "rwkv", "xlstm"])
def test_the_new_probes_equal_the_reference_modules_read_by_hooks(family):
    import importlib

    golden = importlib.import_module(f"test_{family}_golden")
    hf = golden.hf_model(seed=2)
    model = golden.ours(hf)
    x = ids(model, 50, seed=4)
    got, handles = {}, []
    for k, sites in enumerate(hooked(hf, family)):
        for module, site, take in sites:
            keep = lambda m, a, o, name=f"layers.{k}.{site}", take=take: got.__setitem__(name, take(a, o)[0].detach())  # noqa: E731
            handles.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            hf(torch.tensor(x)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    trace = engine.run(model, x, chunk=16)
    assert len(got) == model.num_layers * len(hooked(hf, family)[0])
    for name, expected in got.items():
        torch.testing.assert_close(torch.tensor(trace[name]), expected, atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")


def test_a_steering_vector_at_the_mamba_mixer_equals_a_hook_on_out_proj():
    """The issue's side-by-side: the same edit made through SeqScope and by a torch forward hook
    on ``transformers``' ``mixer.out_proj`` (what nnsight edits)."""
    from test_mamba_golden import hf_model, ours

    hf = hf_model(seed=3, d=16, layers=3)
    model = ours(hf)
    x, t, k = ids(model, 30, seed=6), 12, 1
    vec = torch.randn(16, generator=torch.Generator().manual_seed(7))

    def hf_logits(edit):
        def hook(module, args, out):
            out = out.clone()
            out[:, t] = edit(out[:, t])
            return out
        handle = hf.backbone.layers[k].mixer.out_proj.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return hf(torch.tensor(x)[None], use_cache=False).logits[0].numpy()
        finally:
            handle.remove()

    def ours_logits(probe, op, value=None):
        value = None if value is None else (value.numpy() if value.ndim else float(value))
        iv = Intervention(f"layers.{k}.{probe}", op, value, positions=[t])
        return engine.run(model, x, interventions=[iv], chunk=16)["logits"]

    clean = engine.run(model, x, chunk=16)["logits"]
    steered = ours_logits("mixer", "add", vec)
    np.testing.assert_allclose(steered, hf_logits(lambda v: v + vec), atol=2e-5, rtol=2e-5)
    assert np.abs(steered - clean).max() > 1e-2
    # an added vector reaches the stream alike at the mixer and at `out` (one add in a Mamba block);
    # an ablation or a scaling does not: at `out` it also takes the residual stream
    np.testing.assert_allclose(ours_logits("out", "add", vec), steered, atol=1e-6, rtol=1e-6)
    for op, value, edit in (("zero", None, torch.zeros_like), ("scale", torch.tensor(3.0), lambda v: v * 3)):
        at_mixer = ours_logits("mixer", op, value)
        np.testing.assert_allclose(at_mixer, hf_logits(edit), atol=2e-5, rtol=2e-5)
        assert np.abs(at_mixer - clean).max() > 1e-2
        assert np.abs(ours_logits("out", op, value) - at_mixer).max() > 1e-2
