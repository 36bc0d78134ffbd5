"""Linear probes (engine.analysis.linear_probe) and steering along their direction.

Known answers: a feature planted along a random direction of a real LSTM's states is found with
>= 0.99 held-out accuracy; steering ``add alpha*w`` at the top layer's h from step t changes the
head's logits at step t by exactly ``alpha * W_head w`` (float32, 1e-5) and nothing before t;
the bundled Dyck GRU's depth counters (README: layers.0.h units 5 and 7) are the best one-unit
ridge probes for the nesting depth, and the full 64-unit ridge probe reaches R^2 >= 0.95 held out.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.analysis.linear_probe import (Feature, ProbeError, fit_probes, held_out, make_feature, unit_scores)
from engine.models.stack import from_torch

ROOT = Path(__file__).resolve().parents[1]


def lstm_model(seed=0, H=16):
    torch.manual_seed(seed)
    return from_torch(nn.LSTM(6, H, num_layers=2), nn.Embedding(13, 6), nn.Linear(H, 13))


def test_a_planted_direction_is_found_and_steering_moves_the_logits_by_hand():
    model = lstm_model()
    ids = np.random.default_rng(0).integers(0, 13, 2000)
    trace = engine.run(model, ids)
    u = np.random.default_rng(1).normal(size=16)
    h = trace["layers.1.h"]
    labels = (h @ u > np.median(h @ u)).astype(np.int64)
    res = fit_probes(trace, make_feature(trace, labels=labels), "layers.*.h", l2=1e-6)
    assert res.best.probe == "layers.1.h"
    assert res.best.test_score >= 0.99
    assert "position" in res.split
    cos = abs(res.best.direction @ u) / np.linalg.norm(u)
    assert cos > 0.95  # the probe points along the planted direction

    alpha, t = 2.5, 40
    iv = res.steering(alpha, t)
    assert iv.probe == "layers.1.h" and iv.op == "add" and iv.positions.start == t
    short = ids[:80]
    clean, steered = engine.run(model, short), engine.run(model, short, interventions=[iv])
    W = model.head_weight.numpy()
    np.testing.assert_allclose(steered["logits"][t] - clean["logits"][t], alpha * W @ res.best.direction,
                               atol=1e-5)
    np.testing.assert_array_equal(steered["logits"][:t], clean["logits"][:t])


def test_ridge_recovers_a_numeric_feature_and_classes_get_softmax():
    model = lstm_model(seed=2)
    trace = engine.run(model, [np.random.default_rng(s).integers(0, 13, 400) for s in range(6)])
    h = trace["layers.0.h"]
    y = h @ np.arange(16) + 0.5
    res = fit_probes(trace, make_feature(trace, labels=y), "layers.0.h", l2=1e-9)
    assert res.best.kind == "ridge" and res.best.test_score > 0.999
    assert "by sequence" in res.split
    np.testing.assert_allclose(res.best.weights, np.arange(16), atol=1e-3)
    classes = np.digitize(h[:, 3], np.quantile(h[:, 3], [0.33, 0.66]))
    res = fit_probes(trace, make_feature(trace, labels=classes), "layers.0.h")
    assert res.best.direction.shape == (3, 16) and res.best.test_score > 0.9
    with pytest.raises(ProbeError, match="choose one"):
        res.steering(1.0, 0)
    assert res.steering(1.0, 0, cls=2).value == pytest.approx(tuple(res.best.direction[2]))


def test_held_out_split_is_stated():
    test, text = held_out([0, 100], 100)
    assert test.sum() == 20 and test[40:50].all() and test[90:].all() and "blocks 5 and 10" in text
    test, text = held_out([0, 10, 20, 30, 40, 50, 60], 60)
    assert test[40:50].all() and test.sum() == 10 and "every fifth" in text


def test_features_and_refusals():
    model = engine.load(ROOT / "assets" / "models" / "gru-dyck")
    trace = engine.run(model, "(([])[])\n((()))\n")
    f = make_feature(trace, regex=r"\(")
    assert f.kind == "binary" and f.values.sum() == 5
    assert make_feature(trace, token_class="newline").values.sum() == 2
    with pytest.raises(ProbeError, match="exactly one"):
        make_feature(trace)
    with pytest.raises(ProbeError, match="numeric input"):
        make_feature(trace, column=0)
    with pytest.raises(ProbeError, match="same value"):
        make_feature(trace, regex="z")
    with pytest.raises(ProbeError, match="one number per token"):
        make_feature(trace, labels=[1, 0])
    with pytest.raises(ProbeError, match="valid regular expression"):
        make_feature(trace, regex="(")


def test_dyck_depth_counter_is_the_best_linear_direction_for_depth():
    """The card's depth counters, layers.0.h units 5 and 7, are the best one-unit probes of the
    nesting depth (held-out R^2 of each unit alone, by sequence, 12 evaluation sequences), and
    the 64-unit ridge probe reaches R^2 >= 0.95 held out."""
    sys.path.insert(0, str(ROOT / "assets" / "train"))
    import features
    import gru_dyck

    model = engine.load(ROOT / "assets" / "models" / "gru-dyck")
    texts = gru_dyck.eval_texts()[:12]
    trace = engine.run(model, texts, probes=["layers.0.h"])
    depth = Feature("depth", np.concatenate([features.dyck_depth(t) for t in texts]).astype(np.float64), "numeric")
    res = fit_probes(trace, depth, "layers.0.h")
    assert res.best.test_score >= 0.95
    test, _ = held_out(trace.offsets, trace.n_tokens)
    scores = unit_scores(trace["layers.0.h"], depth, test)
    assert set(np.argsort(-scores)[:2].tolist()) == {5, 7}
