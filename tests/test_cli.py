"""The ``seqscope`` command line: info, trace (text, files, numeric inputs, probes,
interventions, progress), export-lstmvis, and errors as one plain line with status 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import engine
from engine.cli import main
from engine.hdf5 import load_trace

CHARS = "abcdefgh \n.é"
V, E, H = len(CHARS), 6, 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # tiny models: with the machine's other cores busy, torch's thread pool costs 100x
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    """A char-LSTM checkpoint as people save them: a wrapped state dict and a vocab entry."""
    torch.manual_seed(0)
    emb, lstm, fc = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, 2), torch.nn.Linear(H, V)
    sd = {"embedding.weight": emb.weight.detach()}
    sd.update({f"lstm.{k}": v for k, v in lstm.state_dict().items()})
    sd.update({"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()})
    path = tmp_path_factory.mktemp("models") / "char_lstm.pt"
    torch.save({"state_dict": sd, "vocab": CHARS, "epoch": 3}, path)
    n_params = sum(v.numel() for v in sd.values())
    return path, n_params


@pytest.fixture(scope="module")
def numeric_model(tmp_path_factory):
    torch.manual_seed(1)
    gru = torch.nn.GRU(3, H, 1)
    path = tmp_path_factory.mktemp("models") / "sensor_gru.pt"
    torch.save({f"gru.{k}": v for k, v in gru.state_dict().items()}, path)
    return path


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_and_unknown_commands(capsys):
    rc, out, err = run_cli(capsys, "--help")
    assert rc == 0
    for cmd in ("info", "trace", "export-lstmvis"):
        assert cmd in out
    rc, out, err = run_cli(capsys, "no-such-command")
    assert rc == 2 and "unknown command 'no-such-command'" in err


def test_help_says_how_to_open_the_window(capsys):
    from workbench.app import build_parser

    rc, out, err = run_cli(capsys, "--help")
    assert rc == 0
    assert "seqscope [MODEL [--config FILE]] [--input FILE] [--project FILE] [--corpus FILE] [--probe P --unit U --step T] [--offscreen]" in out
    window_part = out[out.index("the window"):]
    options = [o for a in build_parser()._actions if a.help != "==SUPPRESS==" for o in a.option_strings]
    assert "--offscreen" in options and "--project" in options
    for option in options:  # every option the window takes is in the help, none is made up
        if option not in ("-h", "--help"):
            assert option in window_part, option


def test_a_path_that_does_not_exist_is_named(capsys):
    for path in ("/no/such/model.pt", "model.pt", "models/gru"):
        rc, out, err = run_cli(capsys, path)
        assert rc == 2 and out == ""
        assert err.strip() == f"seqscope: error: {path}: no such file or folder", err
    rc, out, err = run_cli(capsys, "trce")  # a word, not a path: a mistyped command
    assert rc == 2 and "unknown command 'trce'" in err and "info, trace, export-lstmvis" in err


def test_an_existing_path_opens_the_window(capsys, monkeypatch, tmp_path):
    import workbench.app

    started = []
    monkeypatch.setattr(workbench.app, "main", lambda argv: started.append(argv) or 0)
    model = ROOT / "assets" / "models" / "gru-dyck"
    assert run_cli(capsys, model, "--unit", "5")[0] == 0
    assert run_cli(capsys)[0] == 0
    assert run_cli(capsys, "--offscreen")[0] == 0
    assert started == [[str(model), "--unit", "5"], [], ["--offscreen"]]


def test_info(capsys, char_model):
    path, n_params = char_model
    rc, out, err = run_cli(capsys, "info", path)
    assert rc == 0, err
    assert str(path) in out
    assert "lstm, 2 layers, hidden 16" in out
    assert f"tokens: vocabulary of {V}" in out
    assert "'a' 'b'" in out and "'\\n'" in out  # a preview of the pieces
    assert f"{n_params:,}" in out
    assert f"probes ({2 * 6 + 2}):" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("layers.1.gate_f"))
    assert "[16]" in line and "forget gate" in line
    assert any(l.strip().startswith("logits") and f"[{V}]" in l for l in out.splitlines())


def test_trace_text_matches_engine(capsys, char_model, tmp_path):
    path, _ = char_model
    text = "abc\nhe.é ga"
    out_file = tmp_path / "t.h5"
    rc, out, err = run_cli(capsys, "trace", path, "--text", text, "--device", "cpu", "-o", out_file)
    assert rc == 0, err
    assert out.startswith(f"wrote {out_file}: 1 sequence, {len(text)} tokens, 14 probes")
    tr = load_trace(out_file)
    assert tr.text(0) == text and tr.token_text == tuple(text)
    assert tr.tokens.tolist() == [CHARS.index(c) for c in text]
    ref = engine.run(engine.load(path, device="cpu"), text)
    assert tr.probes == ref.probes
    for k in ref.arrays:
        np.testing.assert_array_equal(tr[k], ref[k])
    assert tr.model_info["architecture"] == "lstm" and tr.model_info["source"] == str(path)


def test_trace_files_probes_and_intervention(capsys, char_model, tmp_path):
    path, _ = char_model
    (tmp_path / "a.txt").write_text("abcabc\n\nfee", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("h.é\nab ".encode("utf-8"))
    clean = tmp_path / "clean.h5"
    rc, out, err = run_cli(capsys, "trace", path, "--input", tmp_path / "a.txt", "--input", tmp_path / "b.txt",
                           "--probes", "layers.*.c", "logits", "--chunk", "4", "-o", clean)
    assert rc == 0, err
    assert "2 sequences, 18 tokens, 3 probes" in out
    tr = load_trace(clean)
    assert tr.offsets.tolist() == [0, 11, 18]
    assert tr.text(0) == "abcabc\n\nfee" and tr.text(1) == "h.é\nab "
    assert tr.probes == ["layers.0.c", "layers.1.c", "logits"]

    iv = {"probe": "layers.0.c", "op": "zero", "positions": {"start": 5, "stop": None}, "units": [3]}
    edited = tmp_path / "edited.h5"
    rc, out, err = run_cli(capsys, "trace", path, "--input", tmp_path / "a.txt", "--input", tmp_path / "b.txt",
                           "--probes", "layers.*.c", "logits", "--chunk", "4", "--intervene", json.dumps(iv),
                           "-o", edited)
    assert rc == 0, err
    assert "1 intervention" in out
    tr2 = load_trace(edited)
    assert tr2.interventions == (engine.Intervention.from_dict(iv),)
    for s in range(2):
        sl = tr.sequence_slice(s)
        a, b = tr["layers.1.c"][sl], tr2["layers.1.c"][sl]
        np.testing.assert_array_equal(a[:5], b[:5])  # before the edit: untouched
        assert np.abs(a[5:] - b[5:]).max() > 1e-4  # after it: changed downstream
        assert np.all(tr2["layers.0.c"][sl][5:, 3] == 0)

    # the same intervention from a file (a list), and with a float16 file
    ivfile = tmp_path / "iv.json"
    ivfile.write_text(json.dumps([iv]))
    f16 = tmp_path / "f16.h5"
    rc, out, err = run_cli(capsys, "trace", path, "--input", tmp_path / "a.txt", "--input", tmp_path / "b.txt",
                           "--probes", "layers.*.c", "logits", "--chunk", "4", "--intervene", ivfile,
                           "--dtype", "float16", "-o", f16)
    assert rc == 0, err
    tr3 = load_trace(f16)
    assert tr3.interventions == tr2.interventions and tr3["logits"].dtype == np.float16
    np.testing.assert_allclose(tr3["logits"], tr2["logits"], atol=1e-2)


def test_trace_numeric_inputs(capsys, numeric_model, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((15, 3)).astype(np.float32)
    b = rng.standard_normal((7, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.savetxt(tmp_path / "b.csv", b, delimiter=",", header="x,y,z", comments="")
    out_file = tmp_path / "n.h5"
    rc, out, err = run_cli(capsys, "trace", numeric_model, "--input", tmp_path / "a.npy",
                           "--input", tmp_path / "b.csv", "--progress", "--device", "cpu", "-o", out_file)
    assert rc == 0, err
    assert "100%" in err  # forced progress bar
    tr = load_trace(out_file)
    assert tr.token_text is None and tr.offsets.tolist() == [0, 15, 22]
    np.testing.assert_allclose(tr.inputs, np.concatenate([a, b]), rtol=1e-6)
    ref = engine.run(engine.load(numeric_model, device="cpu"), [a, b])
    np.testing.assert_array_equal(tr["layers.0.h"], ref["layers.0.h"])
    with h5py.File(out_file, "r") as f:
        assert "text" not in f["tokens"] and f["inputs/values"].shape == (22, 3)

    rc, out, err = run_cli(capsys, "info", numeric_model)
    assert rc == 0 and "numeric: 3 features per step" in out and "gru, 1 layer, hidden 16" in out
    rc, out, err = run_cli(capsys, "trace", numeric_model, "--text", "abc", "-o", tmp_path / "x.h5")
    assert rc == 2 and "numeric" in err and not (tmp_path / "x.h5").exists()


def test_errors_exit_2_with_a_message(capsys, char_model, tmp_path):
    path, _ = char_model
    cases = [
        (["info", tmp_path / "missing.pt"], "missing.pt"),
        (["trace", path, "--text", "abc", "--probes", "layers.7.*", "-o", tmp_path / "o.h5"], "matches no probe"),
        (["trace", path, "--text", "xyz", "-o", tmp_path / "o.h5"], "vocabulary lacks"),
        (["trace", path, "--text", "abc", "--intervene", '{"probe": "layers.0.q", "op": "zero"}',
          "-o", tmp_path / "o.h5"], "no probe point 'layers.0.q'"),
        (["trace", path, "--text", "abc", "--intervene", "{not json", "-o", tmp_path / "o.h5"], "not valid JSON"),
        (["trace", path, "--input", tmp_path / "nope.txt", "-o", tmp_path / "o.h5"], "no input file"),
        (["trace", path, "--text", "abc", "-o", tmp_path / "no_dir" / "o.h5"], "does not exist"),
        (["trace", path, "--text", "abc"], "required: -o/--output"),
        (["export-lstmvis", tmp_path / "missing.h5", tmp_path / "proj"], "no trace file"),
    ]
    for args, message in cases:
        rc, out, err = run_cli(capsys, *args)
        assert rc == 2, (args, out, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("seqscope: error: ") and message in last, (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 20)
    rc, out, err = run_cli(capsys, "info", bad)
    assert rc == 2 and err.startswith("seqscope: error: ") and "Traceback" not in err


def test_export_lstmvis(capsys, char_model, tmp_path):
    path, _ = char_model
    trace_file = tmp_path / "t.h5"
    assert run_cli(capsys, "trace", path, "--text", "abc\nabc", "-o", trace_file)[0] == 0
    rc, out, err = run_cli(capsys, "export-lstmvis", trace_file, tmp_path / "proj", "--probes", "layers.1.*")
    assert rc == 0, err
    assert "wrote LSTMVis project" in out
    assert (tmp_path / "proj" / "lstm.yml").is_file()
    words = (tmp_path / "proj" / "words.dict").read_text(encoding="utf-8").split("\n")
    assert "<nl> 9" in words
    with h5py.File(tmp_path / "proj" / "states.h5", "r") as f:
        assert sorted(f) == ["layers_1_c", "layers_1_gate_f", "layers_1_gate_g", "layers_1_gate_i",
                             "layers_1_gate_o", "layers_1_h", "word_ids"]
        assert f["layers_1_h"].shape == (7, H)
    rc, out, err = run_cli(capsys, "export-lstmvis", trace_file, tmp_path / "p2", "--sequence", "3")
    assert rc == 2 and "sequences 0..0" in err


def test_subprocess(char_model, tmp_path):
    path, _ = char_model
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out_file = tmp_path / "s.h5"
    r = subprocess.run([sys.executable, "-m", "engine.cli", "trace", str(path), "--text", "head\n" * 3,
                        "--probes", "layers.0.h", "-o", str(out_file)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out_file}: 1 sequence, 15 tokens, 1 probe,")
    assert load_trace(out_file)["layers.0.h"].shape == (15, H)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "info", str(tmp_path / "nothing.pt")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("seqscope: error: ") and "Traceback" not in r.stderr


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """``seqscope info MODEL | head -1``: the pipe closes before the output ends. The command
    ends quietly (status 141, as after SIGPIPE), without 'Exception ignored … BrokenPipeError'."""
    code = ("import sys\nfrom engine.cli import main\n"
            "class Closed:\n"
            "    def write(self, s): raise BrokenPipeError(32, 'Broken pipe')\n"
            "    def flush(self): raise BrokenPipeError(32, 'Broken pipe')\n"
            "    def fileno(self): return sys.__stdout__.fileno()\n"
            "sys.stdout = Closed()\n"
            "status = main(['info', 'assets/models/gru-dyck'])\n"
            "sys.stdout = sys.__stdout__\n"
            "sys.exit(status)\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 141 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_no_strict_takes_the_way_out_the_refusal_names(tmp_path, capsys):
    """A file with a tensor the model does not use is refused, and the refusal names --no-strict;
    with it, info and trace load the model and say what was left out."""
    from model_files import gru_with_an_unused_tensor

    path = tmp_path / "m.pt"
    rnn, emb, head = gru_with_an_unused_tensor(path)
    rc, out, err = run_cli(capsys, "info", path)
    assert rc == 2 and "--no-strict" in err and "extra.scale" in err
    rc, out, err = run_cli(capsys, "info", path, "--no-strict")
    assert rc == 0 and "extra.scale" in out
    np.save(tmp_path / "ids.npy", np.array([1, 2, 3]))
    rc, out, err = run_cli(capsys, "trace", path, "--no-strict", "--input", tmp_path / "ids.npy", "-o", tmp_path / "t.h5")
    assert rc == 0 and (tmp_path / "t.h5").exists()
    with torch.no_grad():
        want = head(rnn(emb(torch.tensor([1, 2, 3]))[:, None])[0][:, 0]).numpy()
    np.testing.assert_allclose(engine.load_trace(tmp_path / "t.h5")["logits"].reshape(3, 9), want, atol=1e-5)
