"""``seqscope stats | timescales | jacobian | fixed-points``: the numbers the engine functions give,
as text and as JSON, and one plain line (status 2) for what cannot be done."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import engine
from engine.analysis import decay_spectrum as DS
from engine.analysis import fixed_points as FP
from engine.analysis import state_step as SS
from engine.analysis import unit_stats as U
from engine.cli import main

GRU = "assets/models/gru-dyck"
LSTM = "assets/models/lstm-timeseries"


def run_cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_stats_json_equals_the_engine_summary(capsys, tmp_path):
    model = engine.load(GRU)
    tr = engine.run(model, ["(([]))\n[()]\n", "(((\n"])
    path = engine.save_trace(tr, tmp_path / "t.h5")
    rc, out, _ = run_cli(capsys, "stats", str(path), "--json")
    assert rc == 0
    assert json.loads(out) == json.loads(json.dumps(U.summarize(path)))
    rc, out, _ = run_cli(capsys, "stats", str(path), "--probes", "layers.0.gate_*")
    assert rc == 0 and "layers.0.gate_z" in out and "layers.0.h " not in out and "gate saturation" in out


def test_timescales_json_equals_the_decay_spectrum(capsys):
    rc, out, _ = run_cli(capsys, "timescales", LSTM, "--input", f"{LSTM}/sample.csv", "--json")
    assert rc == 0
    got = json.loads(out)["layers"]
    model = engine.load(LSTM)
    tr = engine.run(model, engine.tokenizers.read_numeric(f"{LSTM}/sample.csv"), probes=DS.needed_probes(model))
    [spec] = DS.decay_spectrum(model, tr)
    np.testing.assert_allclose(got[0]["tau"], spec.tau, rtol=1e-12)
    assert sum(got[0]["histogram"]["counts"]) == 32
    rc, out, _ = run_cli(capsys, "timescales", GRU, "--text", "(([]))\n", "--autocorrelation")
    assert rc == 0 and "autocorrelation of layers.0.h" in out


def test_timescales_of_an_elman_rnn_fall_back_to_autocorrelation_with_a_note(capsys, tmp_path):
    from torch import nn

    from engine.loading import save_model
    from engine.models.stack import from_torch

    torch.manual_seed(0)
    path = save_model(from_torch(nn.RNN(2, 4)), tmp_path / "rnn.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32))
    rc, out, _ = run_cli(capsys, "timescales", str(path), "--input", str(tmp_path / "x.npy"))
    assert rc == 0 and "no decay gate" in out and "autocorrelation of layers.0.h" in out


def test_fixed_points_json_equals_the_engine_search(capsys):
    rc, out, _ = run_cli(capsys, "fixed-points", LSTM, "--input", f"{LSTM}/sample.csv", "--constant", "zero",
                         "--max-starts", "64", "--json")
    assert rc == 0
    got = json.loads(out)
    assert sorted(p["stability"] for p in got["points"]) == ["saddle", "stable", "stable"]
    model = engine.load(LSTM)
    step = SS.state_step(model, 0)
    tr = engine.run(model, engine.tokenizers.read_numeric(f"{LSTM}/sample.csv"), probes=step.needed())
    for p in got["points"]:  # each reported point is a fixed point of the model's own step
        s = np.array(p["state"])
        with torch.no_grad():
            np.testing.assert_allclose(step(torch.tensor(s), torch.zeros(3)).numpy(), s, atol=1e-9)
    assert got["starts"] == 64 and FP.Q_FIXED == got["settings"]["q_fixed"]
    assert tr.n_tokens == 559


def test_jacobian_text_and_json(capsys):
    rc, out, _ = run_cli(capsys, "jacobian", GRU, "--text", "(([[]]))\n", "--json")
    assert rc == 0
    got = json.loads(out)
    assert got["steps"] == list(range(9)) and len(got["spectral_radius"]) == 9
    rc, out, _ = run_cli(capsys, "jacobian", GRU, "--text", "(([[]]))\n")
    assert rc == 0 and "spectral radius: min" in out


@pytest.mark.parametrize("args,words", [
    (("fixed-points", GRU, "--text", "(()", "--layer", "3"), "layers 0..0"),
    (("fixed-points", GRU, "--text", "(()", "--constant", "token:x"), "not one token"),
    (("fixed-points", GRU, "--text", "(()", "--constant", "step:x"), "whole number"),
    (("jacobian", GRU, "--text", "(()", "--sequence", "4"), "sequences 0..0"),
    (("timescales", GRU, "--text", "(()", "--bins", "0"), "--bins"),
    (("stats", "no/such/trace.h5"), "no trace file"),
    (("stats", LSTM + "/sample.csv"), "not a SeqScope trace"),
])
def test_errors_are_one_line_with_status_2(capsys, args, words):
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2 and err.startswith("seqscope: error: ") and words in err and "Traceback" not in err, err


def test_a_trace_without_the_probes_needed_is_refused_with_the_way_out(capsys, tmp_path):
    model = engine.load(GRU)
    path = engine.save_trace(engine.run(model, "(())\n", probes=["layers.0.h"]), tmp_path / "h.h5")
    rc, _, err = run_cli(capsys, "timescales", GRU, "--trace", str(path))
    assert rc == 2 and "did not record layers.0.gate_z" in err and "--probes layers.0.gate_z" in err
