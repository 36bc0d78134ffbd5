"""The probe tree lists the branch and stream probes (``mixer``, ``mid``, ``mlp``) of every
layer, each with its description as the tooltip; selecting ``mixer`` shows it, and a steer
added there changes the outputs from its step on only."""
import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("transformers")
from PySide6.QtCore import Qt  # noqa: E402

from engine import Intervention  # noqa: E402

WAIT = 30000
IDS = " ".join(str(i) for i in np.random.default_rng(1).integers(0, 37, 50))


def tree_items(tree):
    """probe name -> item, over every group of the tree."""
    items = {}
    for g in range(tree.topLevelItemCount()):
        group = tree.topLevelItem(g)
        for i in range(group.childCount()):
            items[group.child(i).data(0, Qt.UserRole)] = group.child(i)
    return items


def test_the_probe_tree_shows_which_probe_is_the_branch_and_which_the_stream(qtbot, window):
    from test_rwkv_golden import hf_model, ours

    model = ours(hf_model(seed=4))
    s = window.session
    s.text = IDS
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.set_model(model, "rwkv")
    view = window.views["Probes"]
    items = tree_items(view.tree)
    specs = {spec.name: spec for spec in model.probe_specs()}
    assert set(items) == set(specs)
    for k in range(model.num_layers):
        for site, words in (("mixer", "before the residual add"), ("mid", "residual stream after the time-mixing"),
                            ("mlp", "before the residual add"), ("out", "residual stream after the block")):
            item = items[f"layers.{k}.{site}"]
            assert item.toolTip(0) == specs[f"layers.{k}.{site}"].description and words in item.toolTip(0)
            assert item.text(1) == f"{model.config.d_model} unit"
    view.tree.setCurrentItem(items["layers.1.mixer"])
    assert s.probe == "layers.1.mixer" and window.last_error is None
    clean = s.trace["logits"].copy()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):
        s.add_intervention(Intervention("layers.1.mixer", "add", 2.0, [20], [0]))
    np.testing.assert_array_equal(s.trace["logits"][:20], clean[:20])
    assert not np.allclose(s.trace["logits"][20:], clean[20:])
    assert window.last_error is None
