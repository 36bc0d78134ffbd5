"""The LSTM cell path's implicit attention reproduces the cell state exactly (float64)."""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine import Intervention
from engine.analysis.cell_attention import cell_attention
from engine.models.stack import from_torch


@pytest.fixture
def trace64():
    torch.manual_seed(0)
    model = from_torch(nn.LSTM(5, 12, 2).double())
    x = np.random.default_rng(0).standard_normal((120, 5))
    return model, x, engine.run(model, x, chunk=32)


@pytest.mark.parametrize("layer", [0, 1])
def test_sum_of_alpha_times_candidates_is_the_cell_state(trace64, layer):
    _, _, tr = trace64
    gi, gf, gg, c = (tr[f"layers.{layer}.{s}"] for s in ("gate_i", "gate_f", "gate_g", "c"))
    alpha = cell_attention(gi, gf, rows=(0, 120), cols=(0, 120), reduce=None)  # [i, j, unit]
    np.testing.assert_allclose(np.einsum("iju,ju->iu", alpha, gg), c, atol=1e-8, rtol=0)
    # a window of rows and columns: partial sums over the window's columns
    win = cell_attention(gi, gf, rows=(80, 100), cols=(40, 100), reduce=None)
    np.testing.assert_allclose(win, alpha[80:100, 40:100], atol=1e-12)
    assert np.all(alpha[np.triu_indices(120, 1)] == 0)  # causal


def test_mean_abs_reduction_and_unit_selection(trace64):
    _, _, tr = trace64
    gi, gf = tr["layers.0.gate_i"], tr["layers.0.gate_f"]
    full = cell_attention(gi, gf, rows=(0, 50), cols=(0, 50), reduce=None)
    np.testing.assert_allclose(cell_attention(gi, gf, (0, 50), (0, 50)), np.abs(full).mean(-1), atol=1e-12)
    np.testing.assert_allclose(cell_attention(gi, gf, (0, 50), (0, 50), units=[3], reduce=None)[..., 0],
                               full[..., 3], atol=1e-12)


def test_an_ablated_forget_gate_cuts_every_older_path(trace64):
    model, x, _ = trace64
    tr = engine.run(model, x, interventions=[Intervention("layers.0.gate_f", "zero", positions=[60])])
    gi, gf, gg, c = (tr[f"layers.0.{s}"] for s in ("gate_i", "gate_f", "gate_g", "c"))
    alpha = cell_attention(gi, gf, (0, 120), (0, 120), reduce=None)
    assert np.all(alpha[60:, :60] == 0)  # nothing written before step 60 survives it
    np.testing.assert_allclose(np.einsum("iju,ju->iu", alpha, gg), c, atol=1e-8, rtol=0)


def test_nearly_closed_forget_gates_do_not_overflow_and_stay_exact():
    """Forget gates of 1e-4 over 128 steps: L[i] - L[j] for j > i reached ~1200, and exp of it
    overflowed ("RuntimeWarning: overflow encountered in exp") before being masked to 0."""
    import warnings

    rng = np.random.default_rng(1)
    T, U = 128, 3
    gi = rng.uniform(0.1, 0.9, (T, U))
    gf = np.full((T, U), 1e-4)
    gf[:, 1] = rng.uniform(0.5, 1.0, T)  # an ordinary unit beside the closed ones
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alpha = cell_attention(gi, gf, (0, T), (0, T), reduce=None)
        mean = cell_attention(gi, gf, (0, T), (0, T))
    assert np.isfinite(alpha).all() and np.isfinite(mean).all()
    assert np.all(alpha[np.triu_indices(T, 1)] == 0)
    # exact where it matters: each entry is i_j * prod f over (j, i]
    for i, j in [(5, 5), (9, 3), (127, 100), (127, 0)]:
        np.testing.assert_allclose(alpha[i, j], gi[j] * np.prod(gf[j + 1:i + 1], axis=0), rtol=1e-9, atol=0)
