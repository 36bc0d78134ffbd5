"""``engine.run(..., initial_state=...)`` (issue 11 item 7): from arrays or from another trace's
final state, against torch's ``nn.LSTM``/``nn.GRU``/``nn.RNN`` run with ``h0``/``c0``; an
encoder–decoder; the trace and its HDF5 file; the prefix cache and interventions; refusals."""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine import InputError, Intervention, PrefixCache, Span
from engine.models.stack import from_torch

#: float64 model against float64 torch: the same equations, other summation orders
TOL64 = 1e-12
#: float32 model against float32 torch (the same fused kernels; measured 6e-8)
TOL32 = 1e-6


def torch_state(kind, h0, c0):
    return (h0, c0) if kind is nn.LSTM else h0


def as_initial_state(kind, layers, dirs, h0, c0=None, seq=None):
    """torch's ``[layers * directions, batch, hidden]`` h0/c0 as SeqScope's dict (a layer's
    directions side by side, forward first); ``seq`` picks one sequence of the batch."""
    out = {}
    for k in range(layers):
        for name, v in (("h", h0), ("c", c0)):
            if v is None:
                continue
            parts = [v[k * dirs + d] for d in range(dirs)]
            arr = torch.cat(parts, dim=-1)
            out[f"layers.{k}.{name}"] = arr if seq is None else arr[seq]
    return out


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_initial_state_matches_torch_h0_c0(kind, bidirectional):
    torch.manual_seed(0)
    rnn = kind(3, 5, 2, bidirectional=bidirectional).double()
    model = from_torch(rnn)
    dirs = 2 if bidirectional else 1
    x = torch.randn(2, 7, 3, dtype=torch.float64)  # two sequences of different lengths: 7 and 4
    h0 = torch.randn(2 * dirs, 2, 5, dtype=torch.float64)
    c0 = torch.randn(2 * dirs, 2, 5, dtype=torch.float64) if kind is nn.LSTM else None
    state = as_initial_state(kind, 2, dirs, h0, c0)  # [2 sequences, width] each
    t = engine.run(model, [x[0].numpy(), x[1, :4].numpy()], initial_state=state)
    final = engine.final_state(t)
    for b, L in enumerate((7, 4)):
        with torch.no_grad():
            y, hn = rnn(x[b, :L, None], torch_state(kind, h0[:, b:b + 1].contiguous(),
                                                    None if c0 is None else c0[:, b:b + 1].contiguous()))
        np.testing.assert_allclose(t.array("layers.1.h", b), y[:, 0].numpy(), atol=TOL64)
        hn, cn = hn if kind is nn.LSTM else (hn, None)
        want = as_initial_state(kind, 2, dirs, hn[:, 0:1], None if cn is None else cn[:, 0:1])
        for name, v in want.items():  # the final state is torch's h_n (and c_n)
            np.testing.assert_allclose(final[name][b], v[0].numpy(), atol=TOL64, err_msg=name)
        for name, v in as_initial_state(kind, 2, dirs, h0, c0, seq=b).items():
            np.testing.assert_array_equal(t.initial_state[name][b], v.numpy())


def test_float32_state_for_every_sequence():
    """A ``[width]`` state applies to every sequence; float32 against float32 torch."""
    torch.manual_seed(1)
    rnn = nn.GRU(4, 6)
    model = from_torch(rnn)
    h0 = torch.randn(6)
    xs = [torch.randn(5, 4), torch.randn(8, 4)]
    t = engine.run(model, [x.numpy() for x in xs], initial_state={"layers.0.h": h0.numpy()})
    for b, x in enumerate(xs):
        with torch.no_grad():
            y, _ = rnn(x[:, None], h0[None, None])
        np.testing.assert_allclose(t.array("layers.0.h", b), y[:, 0].numpy(), atol=TOL32)
    assert t.initial_state["layers.0.h"].shape == (2, 6) and t.initial_state["layers.0.h"].dtype == np.float32


def test_a_layer_left_out_starts_from_zeros_and_is_recorded_as_zeros():
    torch.manual_seed(2)
    rnn = nn.LSTM(3, 4, 2).double()
    model = from_torch(rnn)
    x = torch.randn(6, 3, dtype=torch.float64)
    h1, c1 = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    t = engine.run(model, x.numpy(), initial_state={"layers.1.h": h1, "layers.1.c": c1})
    h0 = torch.stack([torch.zeros(4, dtype=torch.float64), h1])[:, None]
    c0 = torch.stack([torch.zeros(4, dtype=torch.float64), c1])[:, None]
    with torch.no_grad():
        y, _ = rnn(x[:, None], (h0, c0))
    np.testing.assert_allclose(t["layers.1.h"], y[:, 0].numpy(), atol=TOL64)
    assert not t.initial_state["layers.0.c"].any()


# -- encoder–decoder ----------------------------------------------------------------------------


def test_decoder_from_the_encoder_trace_equals_running_the_concatenation():
    torch.manual_seed(3)
    model = from_torch(nn.LSTM(4, 6, 2), nn.Embedding(11, 4), nn.Linear(6, 11), dtype=torch.float64)
    ids = np.random.default_rng(3).integers(0, 11, 20)
    whole = engine.run(model, ids)
    enc = engine.run(model, ids[:12])
    dec = engine.run(model, ids[12:], initial_state=enc)
    for name in ("layers.0.c", "layers.1.h", "logits"):
        np.testing.assert_allclose(dec[name], whole[name][12:], atol=TOL64, err_msg=name)
    # engine.final_state(trace) is the same thing as a dict
    again = engine.run(model, ids[12:], initial_state=engine.final_state(enc))
    np.testing.assert_array_equal(again["logits"], dec["logits"])


def test_a_separate_decoder_from_the_encoder_state_matches_torch():
    """A GRU encoder and a GRU decoder of the same size (other weights), as in seq2seq."""
    torch.manual_seed(4)
    enc_rnn, dec_rnn = nn.GRU(3, 5).double(), nn.GRU(2, 5).double()
    head = nn.Linear(5, 2).double()
    src, tgt = torch.randn(9, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    with torch.no_grad():
        _, hn = enc_rnn(src[:, None])
        y, _ = dec_rnn(tgt[:, None], hn)
        want = head(y[:, 0])
    encoder, decoder = from_torch(enc_rnn), from_torch(dec_rnn, head=head)
    t = engine.run(decoder, tgt.numpy(), initial_state=engine.run(encoder, src.numpy(), probes="layers.0.h"))
    np.testing.assert_allclose(t["logits"], want.numpy(), atol=TOL64)


def test_hdf5_round_trip_keeps_both_states(tmp_path):
    torch.manual_seed(5)
    model = from_torch(nn.LSTM(3, 4, bidirectional=True))
    xs = [np.random.default_rng(s).normal(size=(n, 3)).astype(np.float32) for s, n in ((0, 5), (1, 3))]
    state = {"layers.0.h": np.arange(8, dtype=np.float32) / 10, "layers.0.c": np.ones(8, dtype=np.float32)}
    t = engine.run(model, xs, initial_state=state)
    path = tmp_path / "t.h5"
    engine.save_trace(t, path)
    back = engine.load_trace(path)
    for which in ("initial_state", "final_state"):
        mine, theirs = getattr(t, which), getattr(back, which)
        assert mine.keys() == theirs.keys() == {"layers.0.h", "layers.0.c"}
        for name in mine:
            np.testing.assert_array_equal(theirs[name], mine[name])
    assert back.initial_state["layers.0.h"].shape == (2, 8)
    # a trace read back from its file seeds the next run like the trace itself
    np.testing.assert_array_equal(engine.run(model, xs, initial_state=back)["layers.0.h"],
                                  engine.run(model, xs, initial_state=t)["layers.0.h"])
    # a trace run from zeros writes no /initial_state
    engine.save_trace(engine.run(model, xs), tmp_path / "z.h5")
    assert engine.load_trace(tmp_path / "z.h5").initial_state is None


def test_a_damaged_state_group_is_refused_in_words(tmp_path):
    import h5py

    model = from_torch(nn.GRU(2, 3))
    path = tmp_path / "t.h5"
    engine.save_trace(engine.run(model, np.ones((4, 2)), initial_state={"layers.0.h": np.ones(3)}), path)
    with h5py.File(path, "a") as f:
        del f["initial_state/layers.0.h"]
        f["initial_state/layers.0.h"] = np.ones((5, 3))
    with pytest.raises(engine.LoadError, match="5 rows for 1 sequences"):
        engine.load_trace(path)


# -- the prefix cache and interventions -------------------------------------------------------


def test_prefix_cache_with_an_initial_state_equals_full_runs():
    torch.manual_seed(6)
    model = from_torch(nn.LSTM(3, 6, 2))
    x = np.random.default_rng(6).normal(size=(40, 3)).astype(np.float32)
    s1 = {"layers.0.h": np.full(6, 0.3, np.float32), "layers.0.c": np.full(6, -0.2, np.float32)}
    cache = PrefixCache()
    engine.run(model, x, cache=cache, chunk=8, initial_state=s1)
    iv = Intervention("layers.1.h", "add", 0.5, positions=Span(21), units=[0])
    cached = engine.run(model, x, interventions=[iv], cache=cache, chunk=8, initial_state=s1)
    assert cache.last_start == 21
    full = engine.run(model, x, interventions=[iv], chunk=8, initial_state=s1)
    for name in full.probes:
        np.testing.assert_array_equal(cached[name], full[name], err_msg=name)
    # another initial state: nothing of the last run can be reused
    s2 = {**s1, "layers.0.h": np.full(6, -0.3, np.float32)}
    changed = engine.run(model, x, interventions=[iv], cache=cache, chunk=8, initial_state=s2)
    assert cache.last_start == 0
    np.testing.assert_array_equal(changed["layers.1.h"],
                                  engine.run(model, x, interventions=[iv], chunk=8, initial_state=s2)["layers.1.h"])
    # and from zeros again
    engine.run(model, x, cache=cache, chunk=8)
    assert cache.last_start == 0


def test_an_edit_with_an_initial_state_matches_a_step_by_step_torch_reference():
    torch.manual_seed(7)
    cell_rnn = nn.RNN(3, 4).double()
    model = from_torch(cell_rnn)
    x = torch.randn(6, 3, dtype=torch.float64)
    h0 = torch.randn(4, dtype=torch.float64)
    iv = Intervention("layers.0.h", "set", 0.25, positions=[0, 3], units=[1])
    t = engine.run(model, x.numpy(), interventions=[iv], initial_state={"layers.0.h": h0})
    h, ys = h0, []
    with torch.no_grad():
        for step in range(6):
            h = torch.tanh(x[step] @ cell_rnn.weight_ih_l0.T + cell_rnn.bias_ih_l0 + h @ cell_rnn.weight_hh_l0.T
                           + cell_rnn.bias_hh_l0)
            if step in (0, 3):
                h = h.clone()
                h[1] = 0.25
            ys.append(h)
    np.testing.assert_allclose(t["layers.0.h"], torch.stack(ys).numpy(), atol=TOL64)


# -- refusals ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm2():
    torch.manual_seed(8)
    return from_torch(nn.LSTM(3, 4, 2))


@pytest.mark.parametrize("state, words", [
    ({"layers.0.h": np.zeros(5), "layers.0.c": np.zeros(4)}, "should be [4] (the same state for every sequence) or [2, 4]"),
    ({"layers.0.h": np.zeros((3, 4)), "layers.0.c": np.zeros((3, 4))}, "[2, 4] (one row for each of the 2 sequences)"),
    ({"layers.0.h": np.zeros(4)}, "gives layers.0.h but not layers.0.c"),
    ({"layers.2.h": np.zeros(4)}, "names layers.2.h, which this model's state does not have"),
    ({"layers.0.gate_i": np.zeros(4)}, "its state is layers.0.h [4], layers.0.c [4]"),
    ({"layers.0.h": np.array([0, np.nan, 0, 0]), "layers.0.c": np.zeros(4)}, "NaN or infinity"),
    ({"layers.0.h": np.array(["a"] * 4), "layers.0.c": np.zeros(4)}, "should hold numbers"),
    ([np.zeros(4)], "must be a dict {probe name: array} or a Trace, not a list"),
])
def test_bad_initial_states_are_refused_in_words(lstm2, state, words):
    xs = [np.zeros((3, 3), np.float32), np.zeros((2, 3), np.float32)]
    with pytest.raises(InputError) as info:
        engine.run(lstm2, xs, initial_state=state)
    assert words in str(info.value)


def test_a_trace_without_the_state_probes_is_refused(lstm2):
    x = np.zeros((3, 3), np.float32)
    no_state = engine.run(lstm2, x, probes="layers.*.gate_f")
    with pytest.raises(InputError, match="holds no final state: record the state probes"):
        engine.final_state(no_state)
    partial = engine.run(lstm2, x, probes=["layers.0.h", "layers.0.c", "layers.1.h"])
    with pytest.raises(InputError, match="no final state for layers.1.h, layers.1.c"):
        engine.run(lstm2, x, initial_state=partial)
    other = from_torch(nn.LSTM(3, 5))  # a state of another size
    with pytest.raises(InputError, match="names layers.1.h"):
        engine.run(other, x, initial_state=engine.final_state(engine.run(lstm2, x)))


def test_families_without_an_initial_state_refuse_it():
    from stateless_model import stateless_model  # the families that take one: tests/test_family_initial_state.py

    with pytest.raises(InputError, match="this recurrent_gemma model always starts from its zero state: initial "
                                         "states are for the classic LSTM/GRU/RNN stacks and the HGRN"):
        engine.run(stateless_model(), [1, 2, 3], initial_state={"layers.0.h": np.zeros(4)})
