"""Golden tests: every probe of our LSTM/GRU/RNN against torch's own modules and against an
independent float64 step-by-step reference (tests/reference.py).

Tolerances: outputs and states vs torch within 1e-5 (float32) and 1e-10 (float64); every
internal vs the float64 reference within 1e-5 (float32 models) and 1e-10 (float64 models).
Chunks are kept short (chunk=8) so sequences cross several chunk boundaries.
"""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.models.stack import from_torch
from reference import float64_weights, reference_stack

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_rnn(cell, F, H, layers, bidirectional, bias=True, proj=0, dtype=torch.float32):
    kw = dict(num_layers=layers, bidirectional=bidirectional, bias=bias)
    if cell == "lstm":
        m = nn.LSTM(F, H, proj_size=proj, **kw)
    elif cell == "gru":
        m = nn.GRU(F, H, **kw)
    else:
        m = nn.RNN(F, H, nonlinearity=cell.split("_")[1], **kw)
    return m.to(dtype).eval()


CASES = [
    # cell, F, H, layers, bidirectional, bias, proj, lengths
    ("lstm", 5, 12, 1, False, True, 0, [37]),
    ("lstm", 5, 12, 2, False, True, 0, [37, 20, 9]),
    ("lstm", 4, 10, 3, False, False, 0, [25, 25]),
    ("lstm", 5, 12, 2, True, True, 0, [30, 17]),
    ("lstm", 5, 12, 2, False, True, 6, [33, 5]),
    ("lstm", 5, 12, 2, True, True, 6, [21]),
    ("gru", 5, 12, 1, False, True, 0, [40]),
    ("gru", 5, 12, 2, True, True, 0, [31, 16, 3]),
    ("gru", 4, 9, 3, False, False, 0, [26]),
    ("rnn_tanh", 5, 12, 2, False, True, 0, [35, 12]),
    ("rnn_relu", 5, 12, 2, True, True, 0, [29]),
    ("rnn_tanh", 5, 12, 1, False, False, 0, [1, 8]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-L{c[3]}{'-bi' if c[4] else ''}"
                         f"{'-nobias' if not c[5] else ''}{'-proj' if c[6] else ''}-B{len(c[7])}")
def test_stack_matches_torch_and_reference(case, dtype):
    cell, F, H, layers, bi, bias, proj, lengths = case
    torch.manual_seed(CASES.index(case))
    rnn = make_rnn(cell, F, H, layers, bi, bias, proj, dtype)
    model = from_torch(rnn, nonlinearity=cell.split("_")[1] if cell.startswith("rnn") else None)
    xs = [torch.randn(L, F, dtype=dtype) for L in lengths]
    trace = engine.run(model, [x.numpy() for x in xs], chunk=8)
    tol = TOL[dtype]
    dirs = 2 if bi else 1
    W = proj or H
    weights64 = float64_weights(rnn)
    for s, x in enumerate(xs):
        ours = {name: torch.tensor(trace.array(name, s)) for name in trace.probes}
        assert all(v.dtype == dtype for v in ours.values())
        with torch.no_grad():
            y, hx = rnn(x[:, None])  # [L, 1, D]
        hn, cn = hx if cell == "lstm" else (hx, None)
        torch.testing.assert_close(ours[f"layers.{layers - 1}.h"], y[:, 0], atol=tol, rtol=tol)
        for k in range(layers):
            h_k = ours[f"layers.{k}.h"]
            torch.testing.assert_close(h_k[-1, :W], hn[k * dirs, 0], atol=tol, rtol=tol)
            if bi:
                torch.testing.assert_close(h_k[0, W:], hn[k * dirs + 1, 0], atol=tol, rtol=tol)
            if cell == "lstm":
                c_k = ours[f"layers.{k}.c"]
                torch.testing.assert_close(c_k[-1, :H], cn[k * dirs, 0], atol=tol, rtol=tol)
                if bi:
                    torch.testing.assert_close(c_k[0, H:], cn[k * dirs + 1, 0], atol=tol, rtol=tol)
        ref = reference_stack(cell, weights64, x.double().numpy(), layers, bidirectional=bi)
        assert set(ref) == set(ours)
        for name, expected in ref.items():
            torch.testing.assert_close(ours[name].double(), torch.from_numpy(expected), atol=tol, rtol=tol,
                                       msg=lambda m, name=name: f"{name}: {m}")


def test_token_model_with_embedding_and_head_matches_modules():
    torch.manual_seed(1)
    emb, lstm, head = nn.Embedding(13, 6), nn.LSTM(6, 16, 2), nn.Linear(16, 13)
    model = from_torch(lstm, emb, head)
    ids = torch.randint(0, 13, (70,))
    trace = engine.run(model, ids.numpy(), chunk=16)
    with torch.no_grad():
        e = emb(ids)
        y, _ = lstm(e[:, None])
        logits = head(y[:, 0])
    torch.testing.assert_close(torch.tensor(trace["embed"]), e, atol=0, rtol=0)
    torch.testing.assert_close(torch.tensor(trace["logits"]), logits, atol=1e-5, rtol=1e-5)


def test_probe_globs_select_and_unrequested_probes_are_absent():
    torch.manual_seed(2)
    model = from_torch(nn.LSTM(3, 8, 2))
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    trace = engine.run(model, x, probes="layers.*.gate_f")
    assert trace.probes == ["layers.0.gate_f", "layers.1.gate_f"]
    full = engine.run(model, x)
    np.testing.assert_array_equal(trace["layers.1.gate_f"], full["layers.1.gate_f"])
    with pytest.raises(KeyError, match="matches no probe"):
        engine.run(model, x, probes="layers.*.gate_q")


def test_probe_specs_describe_shapes_and_dims():
    model = from_torch(nn.LSTM(3, 8, 2, bidirectional=True, proj_size=4), nn.Embedding(7, 3), nn.Linear(8, 7))
    specs = {s.name: s for s in model.probe_specs()}
    assert specs["layers.1.h"].shape == (8,)  # 2 directions x proj 4
    assert specs["layers.1.c"].shape == (16,)  # 2 directions x hidden 8
    assert specs["layers.0.gate_f"].dims == ("token", "unit")
    assert specs["logits"].shape == (7,) and specs["embed"].shape == (3,)
    assert "backward" in specs["layers.0.h"].description
