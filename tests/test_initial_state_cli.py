"""``seqscope trace --initial-state FILE`` and :mod:`engine.initial_state_files`: a trace file's
final state, an .npz and a .safetensors of state arrays, each against ``engine.run(...,
initial_state=...)`` given the same arrays (exact: the same model, the same arrays, the same
code path); a continuation against one run over the concatenated text; and refusals of files that
do not fit, that are damaged or that are hostile: one line, exit status 2, no traceback."""
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.cli import main
from engine.initial_state_files import InitialStateError, initial_state_for, read_initial_state

CHARS = "abcdefgh \n.()"
V, E, H = len(CHARS), 5, 12
ROOT = Path(__file__).resolve().parents[1]
#: a float32 run continued from a float32 state against one float32 run over the concatenation:
#: the same equations, but the input projections are computed over other spans of steps (measured
#: 4e-7 here, 2e-6 on the bundled char-LSTM's logits)
TOL_CONTINUED = 1e-5
#: one sequence of a float32 batch of two against it run alone (other matmul shapes; measured 3e-8)
TOL_BATCH = 1e-6


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    """A 2-layer char-LSTM saved as people save one (a state dict and its vocabulary)."""
    torch.manual_seed(0)
    net = torch.nn.ModuleDict({"embedding": torch.nn.Embedding(V, E), "lstm": torch.nn.LSTM(E, H, 2),
                               "fc": torch.nn.Linear(H, V)})
    path = tmp_path_factory.mktemp("models") / "char_lstm.pt"
    torch.save({"state_dict": net.state_dict(), "vocab": CHARS}, path)
    return path, engine.load(path, device="cpu")


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def trace_cli(capsys, path, *args):
    status, out, err = run_cli(capsys, "trace", path, *args)
    assert status == 0, err
    return out


def assert_same_trace(got, want):
    assert list(got.probes) == list(want.probes)
    for name in want.probes:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name, arr in want.initial_state.items():
        np.testing.assert_array_equal(got.initial_state[name], arr, err_msg=name)


# -- the three kinds of file -----------------------------------------------------------------


def test_an_encoder_trace_file_seeds_the_decoder_as_engine_run_does(capsys, char_model, tmp_path):
    path, model = char_model
    trace_cli(capsys, path, "--text", "abc(de", "-o", tmp_path / "enc.h5")
    out = trace_cli(capsys, path, "--text", "fgh).", "--initial-state", tmp_path / "enc.h5", "-o", tmp_path / "dec.h5")
    assert "starting from the state in" in out and "enc.h5" in out
    want = engine.run(model, "fgh).", initial_state=engine.run(model, "abc(de"))
    got = engine.load_trace(tmp_path / "dec.h5")
    assert_same_trace(got, want)
    # the decoder's file records where it started: the encoder file's final state, bit for bit
    enc_final = engine.load_trace(tmp_path / "enc.h5").final_state
    assert got.initial_state.keys() == enc_final.keys() == {"layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c"}
    for name, arr in enc_final.items():
        np.testing.assert_array_equal(got.initial_state[name], arr)
    # the notebook reads the same thing
    state = read_initial_state(tmp_path / "enc.h5")
    assert {k: v.shape for k, v in state.items()} == {k: (1, H) for k in enc_final}


def test_continuing_across_two_chunks_equals_one_run_over_both(capsys, char_model, tmp_path):
    path, model = char_model
    first, second = "ab(cd.e", "f)gh a\nb"
    trace_cli(capsys, path, "--text", first, "-o", tmp_path / "one.h5")
    trace_cli(capsys, path, "--text", second, "--initial-state", tmp_path / "one.h5", "-o", tmp_path / "two.h5")
    whole = engine.run(model, first + second)  # the reference: one run from zeros over both chunks
    two = engine.load_trace(tmp_path / "two.h5")
    for name in ("layers.0.c", "layers.1.h", "layers.1.gate_f", "logits"):
        np.testing.assert_allclose(two[name], whole[name][len(first):], atol=TOL_CONTINUED, rtol=0, err_msg=name)
    assert not np.allclose(two["layers.1.h"], engine.run(model, second)["layers.1.h"], atol=1e-3)  # not zeros


def state_arrays(seed=1, rows=None):
    rng = np.random.default_rng(seed)
    shape = (H,) if rows is None else (rows, H)
    return {f"layers.{k}.{p}": rng.normal(size=shape).astype(np.float32) for k in range(2) for p in "hc"}


def test_an_npz_of_state_arrays(capsys, char_model, tmp_path):
    path, model = char_model
    state = state_arrays()
    np.savez(tmp_path / "start.npz", **state)
    trace_cli(capsys, path, "--text", "abc", "--probes", "*", "--initial-state",
              tmp_path / "start.npz", "-o", tmp_path / "t.h5")
    assert_same_trace(engine.load_trace(tmp_path / "t.h5"), engine.run(model, "abc", initial_state=state))


def test_a_safetensors_of_state_arrays_one_row_per_sequence(capsys, char_model, tmp_path):
    from safetensors.numpy import save_file

    path, model = char_model
    state = state_arrays(seed=2, rows=2)
    save_file(state, str(tmp_path / "start.safetensors"))
    (tmp_path / "a.txt").write_text("abc.", encoding="utf-8")
    (tmp_path / "b.txt").write_text("(hg)ef", encoding="utf-8")
    trace_cli(capsys, path, "--input", tmp_path / "a.txt", "--input", tmp_path / "b.txt",
              "--initial-state", tmp_path / "start.safetensors", "-o", tmp_path / "t.h5")
    got = engine.load_trace(tmp_path / "t.h5")
    assert_same_trace(got, engine.run(model, ["abc.", "(hg)ef"], initial_state=state))
    # each sequence started from its own row: sequence 1 against a run of it alone from row 1
    alone = engine.run(model, "(hg)ef", initial_state={k: v[1] for k, v in state.items()})
    np.testing.assert_allclose(got.array("layers.1.h", 1), alone["layers.1.h"], atol=TOL_BATCH, rtol=0)
    other_row = engine.run(model, "(hg)ef", initial_state={k: v[0] for k, v in state.items()})
    assert np.abs(got.array("layers.1.h", 1) - other_row["layers.1.h"]).max() > 1e-3


def test_a_trace_of_several_sequences_seeds_as_many(capsys, char_model, tmp_path):
    path, model = char_model
    for name, text in (("a", "ab"), ("b", "cde"), ("c", "f"), ("d", "gh.")):
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    trace_cli(capsys, path, "--input", tmp_path / "a.txt", "--input", tmp_path / "b.txt", "-o", tmp_path / "enc.h5")
    trace_cli(capsys, path, "--input", tmp_path / "c.txt", "--input", tmp_path / "d.txt",
              "--initial-state", tmp_path / "enc.h5", "-o", tmp_path / "dec.h5")
    want = engine.run(model, ["f", "gh."], initial_state=engine.run(model, ["ab", "cde"]))
    assert_same_trace(engine.load_trace(tmp_path / "dec.h5"), want)
    status, _, err = run_cli(capsys, "trace", path, "--text", "abc", "--initial-state", tmp_path / "enc.h5",
                             "-o", tmp_path / "x.h5")
    assert status == 2 and "holds the final states of 2 sequences and this run has 1" in err


# -- FILE:STEP: the state after a step ------------------------------------------------------------


def test_the_state_after_a_step_of_a_trace_file(capsys, char_model, tmp_path):
    path, model = char_model
    for name, text in (("a", "abc(de)f"), ("b", "gh.ab")):
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    trace_cli(capsys, path, "--input", tmp_path / "a.txt", "--input", tmp_path / "b.txt", "-o", tmp_path / "w.h5")
    whole = engine.load_trace(tmp_path / "w.h5")
    trace_cli(capsys, path, "--input", tmp_path / "b.txt", "--input", tmp_path / "a.txt",
              "--initial-state", f"{tmp_path / 'w.h5'}:3", "-o", tmp_path / "c.h5")
    cont = engine.load_trace(tmp_path / "c.h5")
    for name in whole.final_state:  # each sequence starts from its own row at step 3, bit for bit
        for k in range(2):
            np.testing.assert_array_equal(cont.initial_state[name][k], whole.array(name, k)[3], err_msg=name)
    # continuing sequence 0 from its step 3 over what followed step 3 equals the whole run's steps 4..
    rest = engine.run(model, "de)f", initial_state={n: a[0] for n, a in cont.initial_state.items()})
    np.testing.assert_allclose(rest["logits"], whole.array("logits", 0)[4:], atol=TOL_CONTINUED, rtol=0)
    # the last step of a one-sequence trace is its final state
    trace_cli(capsys, path, "--text", "abc(de)f", "-o", tmp_path / "one.h5")
    trace_cli(capsys, path, "--text", "gh", "--initial-state", f"{tmp_path / 'one.h5'}:7", "-o", tmp_path / "s.h5")
    trace_cli(capsys, path, "--text", "gh", "--initial-state", tmp_path / "one.h5", "-o", tmp_path / "f.h5")
    assert_same_trace(engine.load_trace(tmp_path / "s.h5"), engine.load_trace(tmp_path / "f.h5"))


def test_a_file_whose_name_ends_in_a_colon_and_digits_is_that_file(tmp_path):
    from engine.initial_state_files import split_step

    assert split_step("runs/enc.h5:12") == ("runs/enc.h5", 12)
    assert split_step("enc.h5") == ("enc.h5", None) and split_step("enc.h5:x") == ("enc.h5:x", None)
    (tmp_path / "odd.h5:3").write_bytes(b"")
    assert split_step(str(tmp_path / "odd.h5:3")) == (str(tmp_path / "odd.h5:3"), None)


def test_steps_that_cannot_be_continued_from_are_refused(capsys, char_model, tmp_path):
    path, model = char_model
    engine.save_trace(engine.run(model, ["abcd", "ef"]), tmp_path / "w.h5")
    engine.save_trace(engine.run(model, "abcd"), tmp_path / "half.h5", dtype="float16")
    np.savez(tmp_path / "s.npz", **state_arrays())
    bidir = tmp_path / "bi.pt"
    torch.manual_seed(3)
    torch.save({f"lstm.{k}": v for k, v in torch.nn.LSTM(2, 3, bidirectional=True).state_dict().items()}, bidir)
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    engine.save_trace(engine.run(engine.load(bidir), np.zeros((4, 2), np.float32)), tmp_path / "bi.h5")
    cases = [
        (path, "w.h5:2", "w.h5:2: its sequence 1 has 2 steps (0..1); name a step every sequence reached"),
        (path, "s.npz:1", "s.npz:1: a step can be named only for a trace file"),
        (path, "half.h5:1", "half.h5 stores layers.0.h as float16, rounded from the run's float32"),
        (bidir, "bi.h5:1", "this model has a layer that reads its input last to first"),
    ]
    for model_path, spec, words in cases:
        status, _, err = run_cli(capsys, "trace", model_path, "--input" if model_path == bidir else "--text",
                                 tmp_path / "x.npy" if model_path == bidir else "ab",
                                 "--initial-state", f"{tmp_path}/{spec}", "-o", tmp_path / "o.h5")
        assert status == 2 and words in err and err.count("\n") == 1, err
    with pytest.raises(InitialStateError, match="is bidirectional, and a backward direction's state"):
        read_initial_state(tmp_path / "bi.h5", step=1)  # from Python, without a model to ask
    with pytest.raises(InitialStateError, match="the step must be a whole number, 0 for the first step, not -1"):
        read_initial_state(tmp_path / "w.h5", step=-1)
    with h5py.File(tmp_path / "w.h5", "a") as f:
        del f["probes/layers.1.c"]
    with pytest.raises(InitialStateError, match="did not record the probe layers.1.c at each step"):
        read_initial_state(tmp_path / "w.h5", step=0)


# -- refusals ----------------------------------------------------------------------------------


def write_trace_without_final_state(tmp_path, model):
    engine.save_trace(engine.run(model, "abc"), tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:  # as files written before final states were kept
        del f["final_state"]
    return tmp_path / "old.h5"


def write_truncated_trace(tmp_path, model):
    engine.save_trace(engine.run(model, "abcdef"), tmp_path / "full.h5")
    data = (tmp_path / "full.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.h5"


class Marker:
    """Unpickling this would create a file: proof that nothing in the archive is unpickled."""

    def __init__(self, where):
        self.where = str(where)

    def __reduce__(self):
        return (Path.touch, (Path(self.where),))


def write_hostile_npz(tmp_path, _model):
    """An .npz whose entry is an object array, its data a pickle that creates a marker file."""
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = Marker(tmp_path / "MARKER"), 1.0
    np.savez(tmp_path / "evil.npz", **{"layers.0.h": arr})
    with zipfile.ZipFile(tmp_path / "evil.npz") as z:  # the pickle is really in there
        assert b"touch" in z.read("layers.0.h.npy")
    return tmp_path / "evil.npz"


def write_npz(state):
    def write(tmp_path, _model):
        np.savez(tmp_path / "s.npz", **state)
        return tmp_path / "s.npz"
    return write


def write_gate_only_trace(tmp_path, model):
    engine.save_trace(engine.run(model, "abc", probes="layers.*.gate_f"), tmp_path / "gates.h5")
    return tmp_path / "gates.h5"


def write_first_layer_trace(tmp_path, model):
    engine.save_trace(engine.run(model, "abc", probes=["layers.0.h", "layers.0.c"]), tmp_path / "part.h5")
    return tmp_path / "part.h5"


def write_bytes(name, data):
    def write(tmp_path, _model):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name
    return write


@pytest.mark.parametrize("make, words", [
    (write_npz({"layers.2.h": np.zeros(H, np.float32)}),
     "s.npz holds layers.2.h, which this model's state does not have; its state is layers.0.h [12], layers.0.c [12]"),
    (write_npz({"layers.0.hidden": np.zeros(H, np.float32)}), "holds layers.0.hidden, which this model's state"),
    (write_npz({"layers.0.h": np.zeros(7, np.float32), "layers.0.c": np.zeros(7, np.float32)}),
     "s.npz does not fit this model: initial_state['layers.0.h'] has shape [7]; it should be [12] (the same state "
     "for every sequence) or [1, 12]"),
    (write_npz({"layers.0.h": np.zeros((3, H), np.float32), "layers.0.c": np.zeros((3, H), np.float32)}),
     "has shape [3, 12]; it should be [12]"),
    (write_npz({"layers.1.h": np.zeros(H, np.float32)}), "gives layers.1.h but not layers.1.c"),
    (write_npz({"layers.0.h": np.full(H, np.nan), "layers.0.c": np.zeros(H)}), "holds NaN or infinity"),
    (write_npz({"chars": np.array(list("abc")), "layers.0.h": np.zeros(H, np.float32)}), "s.npz holds text (chars); an initial-state file holds only"),
    (write_trace_without_final_state, "old.h5 holds no final state: it was written before SeqScope kept one"),
    (write_gate_only_trace, "gates.h5 holds no final state"),
    (write_first_layer_trace, "part.h5 holds no final state for layers.1.h, layers.1.c, which this model's state has"),
    (write_hostile_npz, "the array holds object, not numbers"),
    (write_truncated_trace, "cut.h5 is not a SeqScope trace file: it is not HDF5, or it is damaged"),
    (write_bytes("notes.txt", b"layers.0.h = 1, 2, 3\n"), "notes.txt is not an initial-state file: give a SeqScope"),
    (write_bytes("cut.npz", b"PK\x03\x04\x14\x00\x00\x00"), "cut.npz"),
    (write_bytes("bad.safetensors", b"\xff" * 8 + b'{"a": 1}'), "bad.safetensors could not be read as safetensors"),
    (write_bytes("keras.h5", b""), "keras.h5 is not an initial-state file"),
    (lambda tmp_path, _m: tmp_path / "missing.h5", "missing.h5: no such file"),
    (lambda tmp_path, _m: tmp_path, "is a folder, not a regular file"),
])
def test_files_that_cannot_be_used_are_refused_in_one_line(capsys, char_model, tmp_path, make, words):
    path, model = char_model
    state_file = make(tmp_path, model)
    status, out, err = run_cli(capsys, "trace", path, "--text", "abc", "--initial-state", state_file,
                               "-o", tmp_path / "out.h5")
    assert status == 2
    assert err.startswith("seqscope: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "MARKER").exists()
    with pytest.raises(engine.SeqScopeError):  # the same refusal from Python
        initial_state_for(model, state_file, 1)


def test_a_keras_hdf5_file_is_not_a_trace(capsys, char_model, tmp_path):
    path, _ = char_model
    with h5py.File(tmp_path / "weights.h5", "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f["model_weights/lstm/kernel"] = np.zeros((3, 4))
    status, _, err = run_cli(capsys, "trace", path, "--text", "a", "--initial-state", tmp_path / "weights.h5",
                             "-o", tmp_path / "o.h5")
    assert status == 2 and "is an HDF5 file but not a SeqScope trace" in err


def test_another_familys_state_names_and_a_corpus_run_refuse_it(capsys, char_model, tmp_path):
    np.savez(tmp_path / "s.npz", **{"layers.0.h": np.zeros(64, np.float32)})
    mamba = ROOT / "assets" / "models" / "selective-ssm-recall"
    status, _, err = run_cli(capsys, "trace", mamba, "--text", "ab", "--initial-state", tmp_path / "s.npz",
                             "-o", tmp_path / "o.h5")
    assert status == 2 and "holds layers.0.h, which this model's state does not have; its state is layers.0.state " \
        "[128, 16], layers.0.conv_window [3, 128]" in err
    (tmp_path / "corpus.txt").write_text("abc\n\nde\n", encoding="utf-8")
    status, _, err = run_cli(capsys, "trace", char_model[0], "--corpus", tmp_path / "corpus.txt",
                             "--initial-state", tmp_path / "s.npz", "-o", tmp_path / "c.h5")
    assert status == 2 and "--initial-state applies to --text and --input runs" in err


def test_the_same_checks_from_python(char_model, tmp_path):
    _, model = char_model
    np.savez(tmp_path / "s.npz", **state_arrays(rows=3))
    assert initial_state_for(model, tmp_path / "s.npz", 3)["layers.1.c"].shape == (3, H)
    with pytest.raises(InitialStateError, match=r"it should be \[12\] \(the same state for every sequence\) "
                                                r"or \[2, 12\]"):
        initial_state_for(model, tmp_path / "s.npz", 2)
    with pytest.raises(engine.SeqScopeError, match="not an initial-state file"):
        read_initial_state(ROOT / "README.md")
