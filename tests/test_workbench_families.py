"""Every family in the workbench: a small random model of each opens (token ids typed, since
these have no vocabulary), every view draws without an error, and an intervention at step t
changes the outputs from t on only.  The engine's own tests check the numbers; this checks that
the views cope with each family's probe table (sites, shapes, attention, per-head states)."""
import numpy as np
import pytest
import torch

pytest.importorskip("pytestqt")
pytest.importorskip("transformers")
from PySide6.QtWidgets import QApplication  # noqa: E402

import engine  # noqa: E402
from engine import Intervention  # noqa: E402

WAIT = 30000
IDS = " ".join(str(i) for i in np.random.default_rng(0).integers(0, 20, 70))


def mamba2(tmp_path):
    from test_mamba2_golden import hf_model, ours

    return ours(hf_model())


def recurrent_gemma(tmp_path):
    from engine.models.recurrent_gemma_loading import from_transformers
    from test_recurrent_gemma_golden import hf_model

    return from_transformers(hf_model())


def xlstm(tmp_path):
    from test_xlstm_golden import hf_model, ours

    return ours(hf_model())


def gla(tmp_path):
    from test_gla_golden import build

    return build("gla", tmp=tmp_path / "gla")[0]


def retnet(tmp_path):
    from test_gla_golden import build

    return build("retnet", tmp=tmp_path / "retnet")[0]


def deltanet(tmp_path):
    from test_deltanet_golden import build

    return build(tmp_path, dtype=torch.float32)[0]


def hgrn(tmp_path):
    from test_hgrn import make

    return make()[0]


def lru(tmp_path):
    from test_lru import make

    return make()[0]


def rwkv7(tmp_path):
    from rwkv7_reference import random_state_dict

    torch.save(random_state_dict(0), tmp_path / "m.pth")
    return engine.load(tmp_path / "m.pth", device="cpu")


def mixed_stack(tmp_path):  # classic layers that differ: a bidirectional LSTM (sum) feeding a GRU
    from engine.models.stack import LayerSpec, RecurrentStack, StackConfig, canonical_weight_shapes

    torch.manual_seed(12)
    cfg = StackConfig.from_layers([LayerSpec("lstm", 5, 6, bidirectional=True, merge_mode="sum"),
                                   LayerSpec("gru", 6, 4)], vocab_size=20, output_size=20)
    return RecurrentStack(cfg, {k: torch.randn(s) * 0.5 for k, s in canonical_weight_shapes(cfg).items()})


FAMILIES = [mamba2, recurrent_gemma, xlstm, gla, retnet, deltanet, hgrn, lru, rwkv7, mixed_stack]


@pytest.mark.parametrize("build", FAMILIES, ids=lambda f: f.__name__)
def test_family_opens_draws_every_view_and_steers(qtbot, window, tmp_path, build):
    model = build(tmp_path)
    assert model.tokenizer is None and model.vocab_size >= 20
    s = window.session
    s.text = IDS
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_model(model, build.__name__)
    assert s.trace.n_tokens == 70 and window.last_error is None
    for title, dock in window.docks.items():  # raise every tab: each view draws its part
        dock.raise_()
        view = window.views[title]
        if hasattr(view, "flush"):
            view.flush()
        QApplication.processEvents()
        assert not view.grab().isNull()
        assert window.last_error is None, f"{title}: {window.last_error}"
    heat = window.views["Neuron heatmap"]
    assert heat.image.image is not None and heat.image.image.shape[1] == 70
    clean = s.trace["logits"].copy()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.add_intervention(Intervention(s.probe, "add", 3.0, [30], [0]))  # one unit: a norm ignores a uniform shift
    steered = s.trace["logits"]
    np.testing.assert_array_equal(steered[:30], clean[:30])
    assert not np.allclose(steered[30:], clean[30:])
    assert window.last_error is None


def test_text_for_a_model_without_vocabulary_must_be_token_ids(qtbot, window, tmp_path):
    s = window.session
    s.text = "hello"
    s.set_model(hgrn(tmp_path), "hgrn")
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=WAIT)
    assert "token ids" in window.last_error and "'hello'" in window.last_error
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_text("3, 4 5")
    np.testing.assert_array_equal(s.trace.tokens, [3, 4, 5])


def test_token_ids_name_the_part_that_is_not_one():
    from workbench.session import token_ids_from_text

    np.testing.assert_array_equal(token_ids_from_text(" 3,4\n5 "), [3, 4, 5])
    for text, bad in (("3 x 5", "'x'"), ("3 ² 5", "'²'"), ("1.5", "'1.5'")):
        err = token_ids_from_text(text)
        assert isinstance(err, engine.errors.InputError) and bad in str(err)
    assert "type token ids" in str(token_ids_from_text("  "))
