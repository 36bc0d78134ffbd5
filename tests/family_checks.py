"""Checks every family's tests run on their own models: a cached re-run equals a run from
scratch bit for bit, whatever a user does between runs.  Each family's test builds its model
and calls these with its vocabulary."""
import re

import numpy as np
import pytest
import torch

import engine
from engine import Cancelled, Intervention, LoadError, PrefixCache, Span


def assert_traces_equal(a, b):
    assert a.probes == b.probes
    for name in a.probes:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def token_ids(T, seed=0, vocab=37):
    return np.random.default_rng(seed).integers(0, vocab, T)


def assert_edit_sessions_match_full_runs(model, vocab, edits, window=((30, 70), (10, 60)), chunk=16):
    """A user steering: interventions added, changed and removed, text extended, cut and edited,
    ``edits`` times in a random order (seed 7); every cached re-run equals a run from scratch,
    bit for bit.  ``window``: the attention window set first (None for models without one)."""
    rng = np.random.default_rng(7)
    if window is not None:
        model.attention_window = window
    sites = [s.name for s in model.probe_specs() if s.layer is not None and s.site != "attn"]
    widths = {s.name: int(np.prod(s.shape)) for s in model.probe_specs()}
    cache = PrefixCache()
    x = token_ids(90, vocab=vocab)
    ivs = []
    for _ in range(edits):
        action = rng.integers(0, 6)
        if action == 0 or not ivs:
            pos = int(rng.integers(1, len(x)))
            probe = str(rng.choice(sites))
            ivs.append(Intervention(probe, "add", float(rng.normal()),
                                    positions=[pos] if rng.random() < 0.5 else Span(pos, pos + 5),
                                    units=[int(rng.integers(0, widths[probe]))]))
        elif action == 1:
            k = int(rng.integers(0, len(ivs)))
            old = ivs[k]
            ivs[k] = Intervention(old.probe, "add", float(rng.normal()), positions=old.positions, units=old.units)
        elif action == 2:
            ivs.pop(int(rng.integers(0, len(ivs))))
        elif action == 3:
            x = np.concatenate([x, token_ids(int(rng.integers(1, 20)), seed=int(rng.integers(1000)), vocab=vocab)])
        elif action == 4 and len(x) > 40:
            x = x[: len(x) - int(rng.integers(1, 20))]
        else:
            x = x.copy()
            x[int(rng.integers(0, len(x)))] = int(rng.integers(0, vocab))
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=chunk)
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=chunk))


def assert_typing_sessions_match_full_runs(model, vocab, steps=20, window=((20, 80), (0, 70)), length=90):
    """A user steering while typing: interventions added and removed, text extended, in a fixed
    rhythm (seed 10); every cached re-run equals a run from scratch, bit for bit."""
    model.attention_window = window
    rng = np.random.default_rng(10)
    sites = [s.name for s in model.probe_specs() if s.layer is not None and s.site != "attn"]
    widths = {s.name: int(np.prod(s.shape)) for s in model.probe_specs()}
    cache = PrefixCache()
    x = rng.integers(0, vocab, length)
    ivs = []
    for step in range(steps):
        if step % 3 == 2 and ivs:
            ivs.pop(0)
        elif step % 5 == 4:
            x = np.concatenate([x, rng.integers(0, vocab, 7)])
        else:
            probe = str(rng.choice(sites))
            ivs.append(Intervention(probe, "add", float(rng.normal()), positions=Span(int(rng.integers(1, len(x)))),
                                    units=[int(rng.integers(0, widths[probe]))]))
        cached = engine.run(model, x, interventions=ivs, cache=cache, chunk=16)
        assert_traces_equal(cached, engine.run(model, x, interventions=ivs, chunk=16))


def run_counting_chunks(model, x, **kw):
    """A run and the number of (layer, chunk) pieces it computed (what its progress counts)."""
    totals = []
    trace = engine.run(model, x, progress=lambda done, total: totals.append(total), **kw)
    return trace, totals[-1]


def assert_edit_reruns_from_the_chunk_before(model, site, t, vocab=37, units=(2, 3), chunk=16):
    """An edit of ``layers.0.{site}`` at step ``t`` (>= ``chunk``) of a 2-layer model, re-run from
    the cache: both layers restart at the chunk boundary before ``t`` and compute fewer chunks than
    a full run; the result equals a full run bit for bit, keeps every step before ``t`` of the
    clean run, and a new value of the same edit re-runs exactly too."""
    x = token_ids(100, vocab=vocab)
    cache = PrefixCache()
    clean = engine.run(model, x, cache=cache, chunk=chunk)
    iv = Intervention(f"layers.0.{site}", "add", 0.3, positions=Span(t), units=list(units))
    cached, cached_chunks = run_counting_chunks(model, x, interventions=[iv], cache=cache, chunk=chunk)
    assert cache.last_starts == [(t // chunk) * chunk] * 2  # both layers restart at the chunk boundary before t
    full, full_chunks = run_counting_chunks(model, x, interventions=[iv], chunk=chunk)
    assert cached_chunks < full_chunks
    assert_traces_equal(cached, full)
    for name in clean.probes:
        np.testing.assert_array_equal(cached[name][:t], clean[name][:t], err_msg=name)
    iv2 = Intervention(f"layers.0.{site}", "add", 0.6, positions=Span(t), units=list(units))
    again = engine.run(model, x, interventions=[iv2], cache=cache, chunk=chunk)
    assert_traces_equal(again, engine.run(model, x, interventions=[iv2], chunk=chunk))


def assert_only_the_window_is_computed(model, T):
    """A 16 x 16 window of layer 0's implicit attention near the end of ``T`` steps: the ``attn``
    probe is finite in the window's rows and NaN in every row before them (nothing there is
    computed, so a long input never costs T^2)."""
    r0 = T - 100
    model.attention_window = ((r0, r0 + 16), (r0 - 10, r0 + 6))
    ids = np.random.default_rng(7).integers(0, 37, T)
    att = engine.run(model, ids, probes="layers.0.attn")["layers.0.attn"]
    assert att.shape == (T, 16) and np.isfinite(att[r0:r0 + 16]).all() and np.isnan(att[:r0]).all()


def assert_progress_and_cancel(model):
    """A 2-layer model over 50 tokens in chunks of 16 reports 4 chunks x 2 layers of progress, and
    stops with Cancelled when asked to."""
    calls = []
    engine.run(model, np.arange(50) % 37, chunk=16, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (8, 8)  # 4 chunks x 2 layers
    with pytest.raises(Cancelled):
        engine.run(model, np.arange(50) % 37, chunk=16, should_stop=lambda: True)


# -- loading ---------------------------------------------------------------------------------
def write_safetensors_folder(path, hf, edit):
    """``hf.save_pretrained(path)`` with its ``model.safetensors`` changed by ``edit(state_dict)``."""
    from safetensors.torch import load_file, save_file

    hf.save_pretrained(path)
    sd = load_file(path / "model.safetensors")
    edit(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})


def assert_bad_keys_are_named(tmp_path, hf, missing, misshapen, cut, shape_message, unexpected):
    """The ``transformers`` model ``hf`` saved three times: without tensor ``missing``, with tensor
    ``misshapen`` replaced by ``cut(tensor)``, with an extra tensor ``unexpected`` (a name with
    ``mystery`` in it).  Each load is a
    LoadError naming the tensor (the misshapen one matching ``shape_message``); a load with
    ``strict=False`` passes over the extra one and says so in its notes."""
    write_safetensors_folder(tmp_path / "a", hf, lambda sd: sd.pop(missing))
    with pytest.raises(LoadError, match="missing " + re.escape(missing)):
        engine.load(tmp_path / "a", device="cpu")

    def bad_shape(sd):
        sd[misshapen] = cut(sd[misshapen]).contiguous()

    write_safetensors_folder(tmp_path / "b", hf, bad_shape)
    with pytest.raises(LoadError, match=shape_message):
        engine.load(tmp_path / "b", device="cpu")

    def extra(sd):
        sd[unexpected] = torch.zeros(3)

    write_safetensors_folder(tmp_path / "c", hf, extra)
    with pytest.raises(LoadError, match="unexpected " + re.escape(unexpected)):
        engine.load(tmp_path / "c", device="cpu")
    model = engine.load(tmp_path / "c", device="cpu", strict=False)
    assert "mystery" in model.info()["notes"]


def assert_upper_layer_edit_reruns_it_alone(model, iv, vocab=37):
    """A 3-layer model, the edit ``iv`` of layer 2 at step 70, chunks of 16: layers 0 and 1 do not
    run again, layer 2 restarts at step 64, and the result equals a full run."""
    cache = PrefixCache()
    x = token_ids(100, vocab=vocab)
    engine.run(model, x, cache=cache, chunk=16)
    out = engine.run(model, x, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[:2] == [2**62, 2**62] and cache.last_starts[2] == 64
    assert_traces_equal(out, engine.run(model, x, interventions=[iv], chunk=16))


def assert_typing_reuses_the_prefix(model, T=120, vocab=37, seed=0):
    """70 tokens typed, then ``T``: the longer run starts at the chunk boundary 64 and equals a
    full run."""
    cache = PrefixCache()
    x = token_ids(T, seed, vocab)
    engine.run(model, x[:70], cache=cache, chunk=16)
    longer = engine.run(model, x, cache=cache, chunk=16)
    assert cache.last_start == 64
    assert_traces_equal(longer, engine.run(model, x, chunk=16))


def assert_window_change_runs_from_the_start(model, iv, vocab=37):
    """After a run over 80 tokens, a new attention window: the next run (with the edit ``iv``)
    starts from step 0 and equals a full run.  Returns the cache and the tokens, for more."""
    cache = PrefixCache()
    x = token_ids(80, vocab=vocab)
    engine.run(model, x, cache=cache, chunk=16)
    model.attention_window = ((40, 80), (30, 70))
    out = engine.run(model, x, cache=cache, chunk=16, interventions=[iv])
    assert cache.last_start == 0
    assert_traces_equal(out, engine.run(model, x, chunk=16, interventions=[iv]))
    return cache, x


def assert_batched_edit_reruns_from_the_chunk_before(model, iv, vocab=37):
    """Three sequences (100, 64 and 33 tokens), the edit ``iv`` of layer 1 at step 50: layer 0 does
    not run again, layer 1 restarts at step 48, and the result equals a full run."""
    cache = PrefixCache()
    xs = [token_ids(100, 1, vocab), token_ids(64, 2, vocab), token_ids(33, 3, vocab)]
    engine.run(model, xs, cache=cache, chunk=16)
    cached = engine.run(model, xs, interventions=[iv], cache=cache, chunk=16)
    assert cache.last_starts[1] == 48 and cache.last_starts[0] >= 100
    assert_traces_equal(cached, engine.run(model, xs, interventions=[iv], chunk=16))


# -- interventions ---------------------------------------------------------------------------
def assert_embed_and_logits_edits(model, vocab=37):
    """On a 2-layer model: the embedding zeroed at step 10 is zero there, leaves every step before
    10 of the last layer as it was and changes layer 0's output at 10; a logit set to 7 is 7
    at every step."""
    x = token_ids(30, 8, vocab)
    clean = engine.run(model, x)
    tr = engine.run(model, x, interventions=[Intervention("embed", "zero", positions=[10]),
                                             Intervention("logits", "set", 7.0, units=[3])])
    assert np.all(tr["embed"][10] == 0)
    np.testing.assert_array_equal(tr["layers.1.out"][:10], clean["layers.1.out"][:10])
    assert not np.allclose(tr["layers.0.out"][10], clean["layers.0.out"][10])
    assert np.all(tr["logits"][:, 3] == 7.0)


def batched_edit_matches_each_alone(model, iv, site, lengths=(30, 12), chunk=8, vocab=37, **tolerance):
    """The edit ``iv`` on a batch of sequences (``lengths`` tokens): layer 0's ``site`` of each
    sequence matches the sequence run alone with the same edit (``assert_allclose`` with
    ``tolerance``).  Returns the batch's trace."""
    xs = [token_ids(n, s + 1, vocab) for s, n in enumerate(lengths)]
    tr = engine.run(model, xs, interventions=[iv], chunk=chunk)
    alone = [engine.run(model, x, interventions=[iv], chunk=chunk) for x in xs]
    name = f"layers.0.{site}"
    for s in range(len(xs)):
        np.testing.assert_allclose(tr.array(name, s), alone[s][name], **tolerance)
    return tr


# -- golden ----------------------------------------------------------------------------------
def assert_outputs_match_transformers(hf, trace, seqs, layers, tol=2e-5):
    """Each sequence of ``trace`` (probes ``logits`` and ``layers.*.out``) vs the ``transformers``
    model ``hf`` run on it alone: every layer's output, read by forward hooks on the layer modules
    themselves (not through ``hidden_states``, whose entries have changed meaning between
    releases: transformers 5.25 puts Mamba2's final norm into the last one), and the logits."""
    blocks = [m for m in hf.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    assert blocks, f"no list of {layers} layer modules in {type(hf).__name__}"
    outputs = {}

    def keep(k):
        def hook(module, args, out):
            outputs[k] = (out[0] if isinstance(out, (tuple, list)) else out).detach()
        return hook

    handles = [block.register_forward_hook(keep(k)) for k, block in enumerate(blocks[0])]
    try:
        for s, ids in enumerate(seqs):
            outputs.clear()
            with torch.no_grad():
                ref = hf(torch.tensor(ids[None]), use_cache=False)
            assert sorted(outputs) == list(range(layers))
            for k in range(layers):
                torch.testing.assert_close(torch.tensor(trace.array(f"layers.{k}.out", s)), outputs[k][0],
                                           atol=tol, rtol=tol)
            torch.testing.assert_close(torch.tensor(trace.array("logits", s)), ref.logits[0], atol=tol, rtol=tol)
    finally:
        for h in handles:
            h.remove()


def assert_probes_match_reference(trace, seqs, reference, dtype, tol):
    """Each sequence of ``trace`` vs ``reference(ids)`` ({probe: float64 array}): the same probes
    (but ``attn``), in the model's dtype, each within ``tol`` (a number, or ``tol(name, expected)``
    giving ``(atol, rtol)``)."""
    for s, ids in enumerate(seqs):
        ref = reference(ids)
        got = {n: trace.array(n, s) for n in trace.probes}
        assert set(ref) == {n for n in got if not n.endswith(".attn")}
        for name, expected in ref.items():
            assert got[name].dtype == (np.float32 if dtype == torch.float32 else np.float64)
            atol, rtol = tol(name, expected) if callable(tol) else (tol, tol)
            np.testing.assert_allclose(got[name], expected, atol=atol, rtol=rtol, err_msg=name)
