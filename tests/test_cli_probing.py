"""seqscope probe-fit / attribute / compare: the numbers equal the engine functions' (JSON), the
steering intervention they print is accepted by `seqscope trace --intervene`, and bad arguments
give one plain line and status 2."""
import json
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.analysis.attribution import integrated_gradients, parse_target
from engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
DYCK = str(ROOT / "assets" / "models" / "gru-dyck")
SAMPLE = str(ROOT / "assets" / "models" / "gru-dyck" / "sample.txt")


def out_of(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_probe_fit_json_and_the_steering_it_prints(capsys, tmp_path):
    rc, out, _ = out_of(capsys, ["probe-fit", DYCK, "--input", SAMPLE, "--regex", r"\(\(", "--json", "--steer", "1.5:20"])
    assert rc == 0
    d = json.loads(out)
    assert d["best"] == "layers.0.h" and d["probes"][0]["metric"] == "accuracy" and d["probes"][0]["test"] > 0.8
    assert "held out by position" in d["split"]
    steer = d["steering"]
    assert steer["op"] == "add" and steer["positions"] == {"start": 20, "stop": None}
    assert np.linalg.norm(steer["value"]) == pytest.approx(1.5, rel=1e-6)
    rc, _, err = out_of(capsys, ["trace", DYCK, "--input", SAMPLE, "--intervene", json.dumps(steer),
                                 "-o", str(tmp_path / "s.h5")])
    assert rc == 0, err


def test_attribute_json_equals_the_engine(capsys):
    text = "(([])[(("
    rc, out, _ = out_of(capsys, ["attribute", DYCK, "--text", text, "--target", "logit:6:)", "--json", "--steps", "8"])
    assert rc == 0
    d = json.loads(out)
    model = engine.load(DYCK)
    want = integrated_gradients(model, text, parse_target("logit:6:)", model), steps=8)
    np.testing.assert_allclose(d["scores"], want.scores, atol=1e-6)
    assert d["completeness_gap"] == pytest.approx(want.completeness_gap, abs=1e-9)


def test_compare_writes_the_difference(capsys, tmp_path):
    a, b, o = (str(tmp_path / n) for n in ("a.h5", "b.h5", "d.h5"))
    assert main(["trace", DYCK, "--text", "(([]))", "-o", a]) == 0
    assert main(["trace", DYCK, "--text", "(([]))", "-o", b, "--intervene",
                 '{"probe": "layers.0.h", "op": "zero", "positions": [2]}']) == 0
    capsys.readouterr()
    rc, out, _ = out_of(capsys, ["compare", a, b, "-o", o, "--json"])
    assert rc == 0
    d = json.loads(out)
    rows = {r["probe"]: r for r in d["probes"]}
    assert rows["embed"]["max_abs"] == 0 and rows["layers.0.h"]["max_abs"] > 0
    diff = engine.load_trace(o)
    np.testing.assert_array_equal(diff["logits"], engine.load_trace(a)["logits"] - engine.load_trace(b)["logits"])


@pytest.mark.parametrize("argv, words", [
    (["attribute", DYCK, "--text", "(()", "--target", "logit:9:1"], "steps 0..2"),
    (["attribute", DYCK, "--text", "(()", "--target", "logits"], "logit:STEP:TOKEN"),
    (["probe-fit", DYCK, "--text", "(()", "--regex", "("], "valid regular expression"),
    (["probe-fit", DYCK, "--text", "(()", "--regex", "x", "--probe", "layers.*.zz"], "matches no probe"),
    (["probe-fit", DYCK, "--text", "(()()", "--regex", r"\(", "--steer", "x"], "ALPHA:STEP"),
    (["compare", "nope-a.h5", "nope-b.h5", "-o", "d.h5"], "no trace file"),
])
def test_plain_errors(capsys, argv, words):
    rc, _, err = out_of(capsys, argv)
    assert rc == 2
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
