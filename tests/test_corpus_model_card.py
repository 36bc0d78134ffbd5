"""The corpus tools find what the char-LSTM's card claims, on code it was not trained on.

The card (assets/models/char-lstm-python/README.md, evidence.json) names ``layers.0.h`` unit 121
as its inside-a-string unit (r = -0.47 on held-out standard-library files).  Here the model is
recorded (engine.corpus.record, float16) over Python source of installed third-party packages
(click, jinja2, attrs, idna, h5py: not the standard library it was trained on), and
``correlate`` with the regex ``"[^"\\n]*"`` must rank unit 121 among the top 3 units by |r| and
by |AUC - 1/2|.  The normal suite runs ~12,000 characters; ``-m slow`` runs ~300,000
(measured: unit 121 first by both, r = -0.20, AUC = 0.24).
"""
from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.corpus.correlate import correlate
from engine.corpus.record import RecordOptions, record
from engine.corpus.sources import Corpus

from corpus_helpers import third_party_python

MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "char-lstm-python"
STRING_UNIT = 121
STRING_REGEX = '"[^"\\n]*"'


def check_string_unit(tmp_path, budget: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    chars = third_party_python(src, budget)
    assert chars > budget * 0.8
    out = tmp_path / "corpus.h5"
    record(engine.load(MODEL), Corpus(src), out, RecordOptions(probes=["layers.0.h"], dtype="float16"))
    result = correlate(out, "layers.0.h", regex=STRING_REGEX)
    assert result.positives > chars * 0.02  # double-quoted strings: 4.9 % of the 300 KB corpus
    assert STRING_UNIT in result.ranking("r", 3).tolist(), result.to_dict(5)["by_r"]
    assert STRING_UNIT in result.ranking("auc", 3).tolist(), result.to_dict(5)["by_auc"]
    assert result.r[STRING_UNIT] < 0 and result.auc[STRING_UNIT] < 0.5  # it goes negative inside strings


def test_string_unit_small(tmp_path):
    check_string_unit(tmp_path, 12_000)


@pytest.mark.slow
def test_string_unit_few_hundred_kb(tmp_path):
    check_string_unit(tmp_path, 300_000)
