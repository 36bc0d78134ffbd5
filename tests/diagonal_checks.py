"""Checks shared by the HGRN and LRU tests (any model whose layers run chunk by chunk)."""
import json

import numpy as np
import torch

import engine
from engine import Intervention, PrefixCache, Span
from family_checks import assert_traces_equal


def assert_every_probe_matches(model, reference, lengths=(300, 1, 45), vocab=23, chunk=64, tol32=3e-5):
    """A batch of sequences (the longest crossing chunk and block boundaries, one of a single
    token) vs ``reference(ids)`` -> {probe: [T, ...]} for each sequence alone: every probe but
    ``attn``, within ``tol32`` for float32 models and 1e-10 for float64."""
    seqs = [np.random.default_rng(L).integers(0, vocab, L) for L in lengths]
    trace = engine.run(model, seqs, chunk=chunk)
    tol = tol32 if model.dtype == torch.float32 else 1e-10
    for s, ids in enumerate(seqs):
        ref = reference(ids)
        assert set(ref) == {n for n in trace.probes if not n.endswith(".attn")}
        for name, expected in ref.items():
            np.testing.assert_allclose(trace.array(name, s), expected, atol=tol, rtol=tol, err_msg=name)


def assert_edit_is_causal(model, probe, vocab, t=41, T=100, chunk=64):
    """An edit at step t leaves every probe before t bit-identical and changes later logits."""
    x = np.random.default_rng(6).integers(0, vocab, T)
    clean = engine.run(model, x, chunk=chunk)
    edited = engine.run(model, x, chunk=chunk, interventions=[Intervention(probe, "add", 0.5, positions=Span(t))])
    for name in clean.probes:
        np.testing.assert_array_equal(edited[name][:t], clean[name][:t], err_msg=name)
    assert np.abs(edited["logits"][t:] - clean["logits"][t:]).max() > 1e-4


def assert_cached_rerun_is_shorter_and_exact(model, vocab):
    """A 3-layer model, an edit of layer 1 at step 45 with chunks of 16: layer 0 does not run,
    the others restart at step 32, and the result equals a full run bit for bit."""
    model.attention_window = ((20, 90), (0, 80))
    x = np.random.default_rng(11).integers(0, vocab, 100)
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=16)
    iv = Intervention("layers.1.state", "add", 0.4, positions=Span(45), units=[1, 3])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts == [2**62, 32, 32]
    assert_traces_equal(cached, engine.run(model, x, interventions=[iv], chunk=16))


def other_families(tmp_path):
    """(tensors, configs, architecture) of checkpoints of other families: a torch LSTM file and,
    when transformers is installed, a MambaForCausalLM folder; each still loads as its own."""
    out = []
    lstm = torch.nn.LSTM(8, 16, num_layers=2)
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    out.append((dict(lstm.state_dict()), [], tmp_path / "lstm.pt", "lstm"))
    try:
        import transformers
    except ImportError:
        return out
    from safetensors.torch import load_file

    cfg = transformers.MambaConfig(vocab_size=20, hidden_size=16, state_size=4, num_hidden_layers=1)
    transformers.MambaForCausalLM(cfg).save_pretrained(tmp_path / "mamba")
    configs = [("config.json", json.loads((tmp_path / "mamba" / "config.json").read_text()))]
    out.append((load_file(tmp_path / "mamba" / "model.safetensors"), configs, tmp_path / "mamba", "mamba"))
    return out


def assert_not_claimed(family, tmp_path):
    """``family.looks_like`` takes no other family's checkpoint, and those still load as theirs."""
    for tensors, configs, path, arch in other_families(tmp_path):
        assert not family.looks_like(tensors, configs), arch
        assert engine.load(path, device="cpu").architecture == arch


