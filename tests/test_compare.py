"""Comparing two traces (engine.analysis.compare): aligned by token, by character offsets or by
numeric rows, refused in words otherwise; the difference trace written with the engine's writer
reads back with probes = a - b (exactly, float32) and names both files."""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis.compare import CompareError, align, compare, difference_trace, write_difference
from engine.models.stack import from_torch
from engine.tokenizers import CharVocab


def model(seed, vocab="abc d\n", H=6):
    torch.manual_seed(seed)
    tok = CharVocab(list(vocab))
    return from_torch(nn.GRU(4, H), nn.Embedding(len(vocab), 4), nn.Linear(H, len(vocab)), tokenizer=tok)


def test_clean_vs_steered_difference_file(tmp_path):
    m = model(0)
    text = "abc dab\ncab"
    a = engine.run(m, text)
    b = engine.run(m, text, interventions=[engine.Intervention("layers.0.h", "add", 1.0, positions=[4])])
    engine.save_trace(a, tmp_path / "a.h5")
    engine.save_trace(b, tmp_path / "b.h5")
    cmp, out = write_difference(tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "diff.h5")
    d = engine.load_trace(out)
    assert set(d.probes) == set(a.probes)
    for p in a.probes:
        np.testing.assert_array_equal(d[p], a[p] - b[p])
    assert np.all(d["logits"][:4] == 0) and np.any(d["logits"][4:] != 0)
    assert d.model_info["trace_a"].endswith("a.h5") and d.model_info["trace_b"].endswith("b.h5")
    assert d.token_text == a.token_text
    rows = {r["probe"]: r for r in cmp.summary()}
    assert rows["layers.0.h"]["at_token"] == 4


def test_two_models_and_different_tokenisations():
    a = engine.run(model(0), "ab cd")
    b = engine.run(model(1, H=5), "ab cd")
    cmp = compare(a, b)
    assert "layers.0.h" in cmp.skipped and "logits" in cmp.probes  # widths 6 and 5; same head width
    # the same text cut into other tokens: each token of a takes b's token holding its last character
    from engine.trace import Trace

    c = Trace(tokens=np.array([0, 1, 2]), offsets=np.array([0, 3]), token_text=("ab", " c", "d"),
              arrays={"logits": np.arange(3, dtype=np.float32)[:, None].repeat(6, 1)}, specs={})
    al = align(a, c)
    assert al.how == "characters"
    np.testing.assert_array_equal(al.index, [0, 0, 1, 1, 2])


def test_refusals_in_words():
    a = engine.run(model(0), "ab cd")
    with pytest.raises(CompareError, match="texts differ in sequence 0 at character 3"):
        compare(a, engine.run(model(0), "ab dd"))
    with pytest.raises(CompareError, match="1 and 2 sequences"):
        compare(a, engine.run(model(0), ["ab cd", "a"]))
    torch.manual_seed(0)
    num = from_torch(nn.GRU(2, 3), head=nn.Linear(3, 2))
    x = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(CompareError, match="numeric input"):
        compare(a, engine.run(num, x))
    y = x.copy()
    y[3, 1] = 1
    with pytest.raises(CompareError, match="first at row 3"):
        compare(engine.run(num, x), engine.run(num, y))
    assert difference_trace(compare(engine.run(num, x), engine.run(num, x))).probes
