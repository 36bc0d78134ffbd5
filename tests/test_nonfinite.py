"""NaN and infinity are never silent: a run says where they first appear (probe and step) in the
trace's notes, which trace files keep, `seqscope trace` prints and the window's status bar
shows; weights holding them are named when the model is loaded."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import engine
from engine import Intervention, InterventionError
from engine import nonfinite as nonfinite_mod
from engine.cli import main
from engine.hdf5 import TraceFileError, load_trace, save_trace
from engine.loading import save_model
from engine.models.stack import RecurrentStack, StackConfig
from engine.nonfinite import first_nonfinite, forward_order
from engine.tokenizers import CharVocab

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
CHARS = list("abcdefgh \n.()")
TEXT = "abc (def) hag.\n" * 3


def make_model(cell="lstm", poison=None, seed=0):
    """A small char model; ``poison``: (weight name, index, value) written into one weight."""
    torch.manual_seed(seed)
    V, E, H = len(CHARS), 6, 16
    emb = torch.nn.Embedding(V, E)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](E, H, 2)
    head = torch.nn.Linear(H, V)
    w = {"embed.weight": emb.weight.detach().clone(), "head.weight": head.weight.detach().clone(),
         "head.bias": head.bias.detach().clone()}
    w.update({"rnn." + k: v.detach().clone() for k, v in rnn.state_dict().items()})
    if poison is not None:
        name, index, value = poison
        w[name][index] = value
    cfg = StackConfig(cell, 2, H, E, vocab_size=V, output_size=V)
    return RecurrentStack(cfg, w, tokenizer=CharVocab(CHARS), source="tiny")


@pytest.fixture(scope="module")
def model():
    return make_model()


# -- where it first appears ----------------------------------------------------------------


def test_a_clean_run_has_no_notes(model):
    trace = engine.run(model, TEXT)
    assert trace.notes == ()


def overflow(probe, step, unit):
    """Two finite additions that overflow float32 at ``probe``'s ``unit`` at ``step`` (non-finite
    intervention values themselves are refused)."""
    return [Intervention(probe, "add", 3e38, positions=[step], units=[unit])] * 2


def test_an_overflowing_intervention_is_located_at_its_probe_and_step(model):
    # two finite additions overflow float32 at step 12: c is infinite there, and stays so
    big = 3e38
    ivs = [Intervention("layers.0.c", "add", big, positions=[12], units=[3]),
           Intervention("layers.0.c", "add", big, positions=[12], units=[3])]
    trace = engine.run(model, TEXT, interventions=ivs)
    assert np.isinf(trace["layers.0.c"][12, 3]) and np.isfinite(trace["layers.0.c"][:12]).all()
    assert trace.notes == ("non-finite values first appear in layers.0.c at step 12 (of sequence 0): inf",)


def test_a_nan_intervention_value_is_located_or_refused(model):
    try:
        iv = Intervention("layers.1.gate_f", "set", float("nan"), positions=[7], units=[0])
        trace = engine.run(model, TEXT, interventions=ivs)
    except InterventionError:  # refusing a NaN value outright is as good
        return
    assert trace.notes[0] == "non-finite values first appear in layers.1.gate_f at step 7 (of sequence 0): NaN"


def test_the_first_sequence_holding_one_is_named_with_its_own_step(model):
    x = [TEXT[:10], TEXT[:30], TEXT[:20]]
    bad = engine.run(model, x, interventions=overflow("embed", 4, 0))
    # the batch edits every sequence at its step 4: sequence 0 holds the first one
    assert bad.notes[0].startswith("non-finite values first appear in embed at step 4 (of sequence 0)")
    # an overflow in sequence 1 only (its own step 9, token 19 of the trace)
    arrays = {"embed": np.zeros((60, 3), np.float32), "layers.0.h": np.zeros((60, 2), np.float32)}
    arrays["layers.0.h"][19, 1] = -np.inf
    arrays["layers.0.h"][45, 0] = np.nan
    found = first_nonfinite(arrays, [0, 10, 40, 60])
    assert (found.probe, found.sequence, found.step, found.kind) == ("layers.0.h", 1, 9, "-inf")


def test_at_the_same_step_the_probe_computed_first_is_named():
    specs = {s.name: s for s in make_model().probe_specs()}
    order = forward_order(list(specs), specs)
    assert order[0] == "embed" and order[-1] == "logits"
    layer0 = [n for n in order if n.startswith("layers.0.")]
    assert layer0[:4] == ["layers.0.gate_i", "layers.0.gate_f", "layers.0.gate_g", "layers.0.gate_o"]
    assert layer0[4:] == ["layers.0.c", "layers.0.h"]
    assert order.index("layers.0.h") < order.index("layers.1.gate_i")
    # a NaN at the same step in c and h and layer 1: c is named
    arrays = {n: np.zeros((5, 16), np.float32) for n in specs}
    for n in ("layers.0.h", "layers.0.c", "layers.1.gate_i"):
        arrays[n][2, 0] = np.nan
    assert first_nonfinite(arrays, [0, 5], specs).probe == "layers.0.c"


def test_an_overflowing_sum_of_finite_values_is_not_reported(monkeypatch):
    monkeypatch.setattr(nonfinite_mod, "BLOCK_BYTES", 64)  # many blocks
    a = np.full((50, 4), 1e308)  # finite, but their sum overflows
    assert first_nonfinite({"x": a}, [0, 50]) is None
    a[33, 2] = np.nan
    found = first_nonfinite({"x": a}, [0, 50])
    assert (found.step, found.kind) == (33, "NaN")


def test_implicit_attention_is_nan_outside_its_window_by_design_and_not_reported():
    mamba = engine.load(MODELS / "selective-ssm-recall", device="cpu")
    mamba.scan = "torch"
    mamba.attention_window = ((10, 20), (0, 20))
    trace = engine.run(mamba, np.arange(40) % mamba.vocab_size)
    assert np.isnan(trace["layers.0.attn"][0]).all()  # a row outside the window
    assert trace.notes == ()


# -- weights ---------------------------------------------------------------------------------


def test_weights_holding_nan_are_named_at_load_and_the_model_still_runs(tmp_path):
    broken = make_model(poison=("rnn.weight_hh_l1", (5, 7), float("nan")))
    path = save_model(broken, tmp_path / "broken.safetensors")
    model = engine.load(path, device="cpu")
    notes = model.info()["notes"]
    assert "warning: weights hold NaN or infinity: rnn.weight_hh_l1 (1 of 1,024 values)" in notes
    trace = engine.run(model, TEXT)
    # h_(t-1) = 0 times NaN: row 5 of W_hh (gate_i unit 5) is NaN from the first step
    assert trace.notes[0] == "non-finite values first appear in layers.1.gate_i at step 0 (of sequence 0): NaN"
    assert trace.notes[1].startswith("warning: weights hold NaN or infinity: rnn.weight_hh_l1")
    clean = engine.load(save_model(make_model(), tmp_path / "clean.safetensors"), device="cpu")
    assert "NaN" not in str(clean.info().get("notes") or "")


def test_seqscope_info_shows_the_warning(tmp_path, capsys):
    path = save_model(make_model(poison=("head.bias", 3, float("inf"))), tmp_path / "broken.safetensors")
    assert main(["info", str(path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "warning: weights hold NaN or infinity: head.bias (1 of 13 values)" in out


# -- where the notes go ------------------------------------------------------------------------


def test_notes_survive_a_trace_file(model, tmp_path):
    ivs = overflow("layers.0.c", 12, 3)
    trace = engine.run(model, TEXT, interventions=ivs)
    path = save_trace(trace, tmp_path / "t.h5")
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["notes"]) == list(trace.notes)
    assert load_trace(path).notes == trace.notes
    # a file from before notes existed reads as none; a damaged attribute is one sentence
    with h5py.File(path, "a") as f:
        del f.attrs["notes"]
    assert load_trace(path).notes == ()
    with h5py.File(path, "a") as f:
        f.attrs["notes"] = json.dumps({"not": "a list"})
    with pytest.raises(TraceFileError, match="notes"):
        load_trace(path)


def test_seqscope_trace_prints_where_non_finite_values_first_appear(tmp_path, capsys):
    src = save_model(make_model(), tmp_path / "m.safetensors")
    ivs = json.dumps([{"probe": "layers.0.c", "op": "add", "value": 3e38, "positions": [12], "units": [3]}] * 2)
    out = tmp_path / "t.h5"
    rc = main(["trace", str(src), "--text", TEXT, "--intervene", ivs, "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and out.exists()
    assert ("seqscope: note: non-finite values first appear in layers.0.c at step 12 (of sequence 0): inf"
            in captured.err.splitlines())
    assert load_trace(out).notes[0].startswith("non-finite values first appear in layers.0.c at step 12")
    rc = main(["trace", str(src), "--text", TEXT, "-o", str(out), "--device", "cpu"])
    assert rc == 0 and "note" not in capsys.readouterr().err


def test_the_status_bar_says_where_non_finite_values_first_appear(qtbot, window, tmp_path):
    pytest.importorskip("pytestqt")
    path = save_model(make_model(), tmp_path / "m.safetensors")
    s = window.session
    s.text = TEXT
    with qtbot.waitSignal(s.trace_changed, timeout=20000):
        window.open_model(str(path))
    assert s.trace_notes() == []
    assert "non-finite" not in status_bar_text(window)
    ivs = overflow("layers.0.c", 12, 3)
    with qtbot.waitSignal(s.trace_changed, timeout=20000):
        s.set_interventions(ivs)
    assert s.trace_notes() == ["non-finite values first appear in layers.0.c at step 12 (of sequence 0): inf"]
    assert "non-finite values first appear in layers.0.c at step 12" in status_bar_text(window)


def status_bar_text(window) -> str:
    """Everything the status bar says: its message and its labels."""
    from PySide6.QtWidgets import QLabel

    bar = window.statusBar()
    return " | ".join([bar.currentMessage()] + [label.text() for label in bar.findChildren(QLabel)])


def test_a_cached_rerun_checks_its_new_rows_and_finds_what_they_hold(model, monkeypatch):
    text = TEXT * 10  # 150 tokens, chunks of 32
    cache = engine.PrefixCache()
    assert engine.run(model, text, cache=cache, chunk=32).notes == ()
    assert "layers.0.c" in cache.finite
    checked = []
    real = nonfinite_mod._first_bad_row
    monkeypatch.setattr(nonfinite_mod, "_first_bad_row", lambda a, skip=0: checked.append(skip) or real(a, skip))
    ivs = overflow("layers.1.c", 100, 1)
    trace = engine.run(model, text, interventions=ivs, cache=cache, chunk=32)
    assert trace.notes == ("non-finite values first appear in layers.1.c at step 100 (of sequence 0): inf",)
    assert max(checked) == 96  # rows before the edit's chunk came from the checked run
    assert cache.finite == frozenset()
    # the next re-run cannot lean on a run that held one: it checks every row, and finds it again
    checked.clear()
    trace = engine.run(model, text + "a", interventions=ivs, cache=cache, chunk=32)
    assert max(checked) == 0 and trace.notes[0].startswith("non-finite values first appear in layers.1.c at step 100")
    # and the same edit run from scratch says the same
    assert engine.run(model, text, interventions=ivs, chunk=32).notes == trace.notes


def test_weights_are_named_exactly_even_when_their_sum_overflows():
    from engine.nonfinite import nonfinite_weights

    weights = {"big": torch.full((10,), 3e38), "ids": torch.tensor([1, 2]), "empty": torch.zeros(0),
               "w": torch.tensor([[1.0, float("nan")], [float("-inf"), 2.0]])}
    assert nonfinite_weights(weights) == ["w (2 of 4 values)"]
