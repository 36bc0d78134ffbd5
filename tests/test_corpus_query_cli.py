"""``seqscope top | correlate | match``: JSON that equals the engine's answer, readable text,
and one-line errors (status 2) for a wrong probe, unit, sequence, span or feature."""
from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.corpus.correlate import correlate
from engine.corpus.match import match
from engine.corpus.top import top

from corpus_helpers import synthetic_trace, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(synthetic_trace(), tmp_path_factory.mktemp("cli") / "c.h5", summary=True)


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_top_json_and_text(corpus, capsys):
    status, out, _ = run(capsys, "top", corpus, "--probe", "layers.0.h", "--unit", 3, "-k", 7, "--min", "--json")
    assert status == 0
    assert json.loads(out) == json.loads(json.dumps(top(corpus, "layers.0.h", 3, 7, lowest=True).to_dict()))
    status, out, _ = run(capsys, "top", corpus, "--probe", "layers.0.h", "--unit", 3, "-k", 3)
    lines = out.splitlines()
    assert status == 0 and "the 3 largest of 881 tokens (from the summary)" in lines[0] and len(lines) == 4
    assert lines[1].split()[:2] == ["1", "+0.9973"]


def test_correlate_json(corpus, capsys):
    status, out, _ = run(capsys, "correlate", corpus, "--probe", "layers.0.h", "--regex", '"[^"\\n]*"', "-n", 4,
                         "--json")
    got = json.loads(out)
    want = correlate(corpus, "layers.0.h", regex='"[^"\\n]*"')
    assert status == 0 and [r["unit"] for r in got["by_r"]] == want.ranking("r", 4).tolist()
    assert [r["unit"] for r in got["by_auc"]] == want.ranking("auc", 4).tolist()
    status, out, _ = run(capsys, "correlate", corpus, "--probe", "layers.0.h", "--token-class", "digit", "-n", 2)
    assert status == 0 and len(out.splitlines()) == 4 and "AUC" in out


def test_match_json_and_text(corpus, capsys):
    status, out, _ = run(capsys, "match", corpus, "--probe", "layers.0.h", "--sequence", 3, "--span", "10:14",
                         "--threshold", 0.5, "-n", 5, "--json")
    want = match(corpus, "layers.0.h", 3, (10, 14), 0.5, limit=5)
    assert status == 0 and json.loads(out) == json.loads(json.dumps(want.to_dict()))
    status, out, _ = run(capsys, "match", corpus, "--probe", "layers.0.h", "--sequence", 3, "--span", "10:14")
    assert status == 0 and "6 unit(s) on over sequence 3 10:14: 8, 9, 11, 14, 21, 23" in out


@pytest.mark.parametrize("argv, message", [
    (["top", "{c}", "--probe", "layers.7.h", "--unit", "0"], "the corpus has no probe 'layers.7.h'"),
    (["top", "{c}", "--probe", "layers.0.h", "--unit", "24"], "probe layers.0.h has units 0..23; there is no unit 24"),
    (["top", "{c}", "--probe", "layers.0.h", "--unit", "1", "-k", "0"], "-k must be a positive number"),
    (["match", "{c}", "--probe", "layers.0.h", "--sequence", "8", "--span", "0:2"], "sequence 8 is not in this corpus"),
    (["match", "{c}", "--probe", "layers.0.h", "--sequence", "1", "--span", "0:2"], "span 0:2 is not inside sequence 1"),
    (["match", "{c}", "--probe", "layers.0.h", "--sequence", "3", "--span", "x"], "give A:B"),
    (["correlate", "{c}", "--probe", "layers.0.h", "--token-class", "vowel"], "unknown token class 'vowel'"),
    (["correlate", "{c}", "--probe", "layers.0.h", "--labels", "/nonexistent.npy"], "no labels file"),
    (["top", "/nonexistent.h5", "--probe", "layers.0.h", "--unit", "0"], "no corpus trace at /nonexistent.h5"),
])
def test_errors_are_one_sentence(corpus, capsys, argv, message):
    status, out, err = run(capsys, *[a.format(c=corpus) for a in argv])
    assert status == 2 and out == ""
    assert err.startswith("seqscope: error: ") and message in err and len(err.strip().splitlines()) == 1
