"""``engine.corpus.match`` against LSTMVis's own match algorithm on an exported project.

``lstmvis_query_similar_activations`` below re-implements, in numpy and line by line,
``LSTMDataHandler.query_similar_activations`` of LSTMVis (HendrikStrobelt/LSTMVis,
``lstmdata/data_handler.py``, with ``helper_functions.rle`` and ``threshold_discrete``), as its
server calls it for the match view (``lstm_server.py``: ``add_histograms=True``, mode
``fast``, ``no_of_results`` 50).  Facts of that code the re-implementation keeps:

- states are read raw (its cache of clipped matrices is only filled on request), so the
  threshold ``t`` is compared with the raw states as ``arctanh(t)`` (in float64);
- candidates: for n = |cells| .. 1, runs of "at least n selected cells on" of length >= 2 in the
  one long concatenated sequence, first 500,000 steps, until 1,000 candidates; a candidate at
  the very start or end of the states is skipped;
- score: cells on at every step of the run (and off just before/after when constrained),
  intersected and united with the selection; sorted by (-intersection, union, -length), stable
  over candidates ordered by a constraint score, the first 50 returned.

(LSTMVis itself fails with an IndexError when constrained on the right and a run reaches the
last step; the cases here avoid that.)

SeqScope's match runs inside each sequence, so a span LSTMVis finds that touches or crosses a
boundary between two of the exported sequences is not one of ours; every other span LSTMVis
returns must be among ours, with the same (intersection, union, length) — and the test checks
that such spans are most of what LSTMVis returns.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import engine
from engine.cli import main as cli_main
from engine.corpus.match import match

MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "char-lstm-python"


# -- LSTMVis, re-implemented -----------------------------------------------------------------


def rle(inarray):
    ia = np.array(inarray)
    n = len(ia)
    if n == 0:
        return None, None, None
    y = np.array(ia[1:] != ia[:-1])
    i = np.append(np.where(y), n - 1)
    z = np.diff(np.append(-1, i))
    p = np.cumsum(np.append(0, z))[:-1]
    return z, p, ia[i]


def threshold_discrete(arr, threshold, below, above):
    all_below_positions = arr < threshold
    arr[:] = above
    arr[all_below_positions] = below


def lstmvis_query_similar_activations(cell_states, cells, activation_threshold=.3, phrase_length=0,
                                      constrain_left=False, constrain_right=False, no_of_results=50):
    """LSTMVis's query_similar_activations, data_transform 'tanh', query_mode 'fast', with the
    states matrix not cached (as its server runs it)."""
    activation_threshold_corrected = np.arctanh(activation_threshold)
    cut_off = 2
    num_of_cells_per_sum = 5
    maximal_length = int(5e5)
    num_candidates = 1000

    cs_cand = None
    no_slices = int(np.ceil(len(cells) * 1. / num_of_cells_per_sum))
    for c in range(0, no_slices):
        cell_range = cells[c * num_of_cells_per_sum:min((c + 1) * num_of_cells_per_sum, len(cells))]
        c_discrete = cell_states[:maximal_length, cell_range]
        threshold_discrete(c_discrete, activation_threshold_corrected, 0, 1)
        c_batch = np.sum(c_discrete, axis=1)
        cs_cand = c_batch if cs_cand is None else cs_cand + c_batch

    test_cell_number = len(cells)
    test_discrete = np.copy(cs_cand)
    collect_all_candidates = {}
    while test_cell_number > 0 and len(collect_all_candidates) < num_candidates:
        if test_cell_number != len(cells):
            test_discrete[test_discrete > test_cell_number] = test_cell_number
        length, positions, value = rle(test_discrete)
        if phrase_length > 0:
            indices = np.argwhere((value == test_cell_number) & (length == phrase_length))
        else:
            indices = np.argwhere((value == test_cell_number) & (length >= cut_off))
        if constrain_left and not constrain_right:
            len_pos = set(zip(length[indices].flatten().tolist(), positions[indices].flatten().tolist(),
                              (test_cell_number - value[indices - 1]).flatten().astype(int).tolist()))
        elif not constrain_left and constrain_right:
            len_pos = set(zip(length[indices].flatten().tolist(), positions[indices].flatten().tolist(),
                              (test_cell_number - value[indices + 1]).flatten().astype(int).tolist()))
        elif constrain_left and constrain_right:
            len_pos = set(zip(length[indices].flatten().tolist(), positions[indices].flatten().tolist(),
                              (test_cell_number - value[indices + 1] - value[indices - 1]).flatten().astype(
                                  int).tolist()))
        else:
            len_pos = set(zip(length[indices].flatten().tolist(), positions[indices].flatten().tolist(),
                              np.zeros(len(indices)).astype(int).tolist()))
        for lp in len_pos:
            key = '{0}_{1}'.format(lp[0], lp[1])
            collect_all_candidates[key] = collect_all_candidates.get(key, lp)
        test_cell_number -= 1

    all_candidates = list(collect_all_candidates.values())
    all_candidates.sort(key=lambda kk: kk[2], reverse=True)
    all_candidates = all_candidates[:num_candidates]
    cell_count = len(cells)
    res = []
    max_pos = cell_states.shape[0]
    for cand in all_candidates:
        ml, pos = cand[0], cand[1]
        if pos < 1 or pos + ml + 1 > max_pos:
            continue
        cs = np.array(cell_states[pos - 1:pos + ml + 1, :])
        threshold_discrete(cs, activation_threshold_corrected, -1, 1)
        mask = np.ones(ml + 2)
        mask[0] = -1 if constrain_left else 0
        mask[ml + 1] = -1 if constrain_right else 0
        cs_sum = np.dot(mask, cs)
        test_pattern_length = ml + (1 if constrain_left else 0) + (1 if constrain_right else 0)
        all_active_cells = np.where(cs_sum == test_pattern_length)[0]
        intersect = np.intersect1d(all_active_cells, cells)
        union = np.union1d(all_active_cells, cells)
        res.append({'pos': pos, 'factors': [pos, 0, ml, float(len(intersect)) / float(len(union)),
                                            cell_count - len(intersect), len(union), len(intersect)]})
    if phrase_length > 1:
        res = [x for x in res if x['factors'][2] == phrase_length]
    res.sort(key=lambda elem: (-elem['factors'][6], elem['factors'][5], -elem['factors'][2]))
    return res[:no_of_results]


# -- the comparison --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("lstmvis")
    model = engine.load(MODEL)
    texts = [(MODEL / "sample.py").read_text()] + [p.read_text() for p in sorted((MODEL / "heldout").glob("*.py"))]
    trace = engine.run(model, texts, probes=["layers.0.c", "layers.1.c"])
    engine.save_trace(trace, d / "corpus.h5")
    assert cli_main(["export-lstmvis", str(d / "corpus.h5"), str(d / "project")]) == 0
    return d / "corpus.h5", d / "project", trace.offsets


CASES = [  # probe, sequence, span, LSTMVis threshold, constrain left, right
    ("layers.0.c", 0, (200, 204), 0.3, False, False),
    ("layers.0.c", 1, (500, 503), 0.3, True, False),
    ("layers.1.c", 2, (1000, 1006), 0.5, False, False),
    ("layers.0.c", 1, (300, 303), 0.5, True, True),
    ("layers.0.c", 2, (77, 79), 0.2, False, True),
]


@pytest.mark.parametrize("probe, seq, span, t, left, right", CASES)
def test_every_lstmvis_span_is_ours_with_its_keys(project, probe, seq, span, t, left, right):
    corpus, folder, offsets = project
    theta = float(np.arctanh(t))  # LSTMVis compares raw states with arctanh(t)
    ours = match(corpus, probe, seq, span, theta, off_before=left, off_after=right, limit=None)
    keyed = {(s.position, s.length): (s.intersection, s.union) for s in ours.spans}
    with h5py.File(folder / "states.h5", "r") as f:
        states = f[probe.replace(".", "_")][...]
    theirs = lstmvis_query_similar_activations(states, ours.units, t, constrain_left=left, constrain_right=right)
    assert len(theirs) == 50
    checked = 0
    for r in theirs:
        pos, ml = r["pos"], r["factors"][2]
        q = int(np.searchsorted(offsets, pos, side="right")) - 1
        if not (offsets[q] < pos and pos + ml < offsets[q + 1]):
            continue  # touches or crosses a boundary between exported sequences
        assert keyed.get((pos, ml)) == (r["factors"][6], r["factors"][5]), r
        checked += 1
    assert checked >= 45
    # and ranked the same: LSTMVis's keys, in its order, are ours in ours
    ranked = sorted(keyed.items(), key=lambda kv: (-kv[1][0], kv[1][1], -kv[0][1], kv[0][0]))
    rank = {k: i for i, (k, _) in enumerate(ranked)}
    inside = [(r["pos"], r["factors"][2]) for r in theirs if (r["pos"], r["factors"][2]) in rank]
    keys = [(-keyed[k][0], keyed[k][1], -k[1]) for k in inside]
    assert keys == sorted(keys)
