"""engine.corpus.summary: streaming per-unit statistics against brute force on the whole array.

Reference: numpy over the full array (a float64 mean/variance, searchsorted into the documented
edges for the histogram, a lexsort by (-value, position) for the top-k).  Exact for counts,
min/max, histograms and top-k; mean and variance within 1e-9 relative (float64 rounding).
"""
import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.corpus.summary import EMIN, Summary, SummaryError, summarize

VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 0.25, 3.0, -7.5, 1e-9, 100.0, np.nan, np.inf, -np.inf, 0.1, -0.3])


def brute(x: np.ndarray, k: int, bins: int):
    """Every statistic of the module doc, straight from the definition."""
    x = x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float64)
    out = {k_: [] for k_ in ("count", "mean", "var", "min", "max", "hist", "edges", "top", "bottom")}
    for u in range(x.shape[1]):
        col = x[:, u]
        fin = np.isfinite(col)
        v, p = col[fin], np.flatnonzero(fin)
        out["count"].append(len(v))
        out["mean"].append(v.mean() if len(v) else np.nan)
        out["var"].append(v.var() if len(v) else np.nan)
        out["min"].append(v.min() if len(v) else np.nan)
        out["max"].append(v.max() if len(v) else np.nan)
        e = EMIN
        while len(v) and np.abs(v).max() >= 2.0 ** e:
            e += 1
        edges = np.linspace(-(2.0 ** e), 2.0 ** e, bins + 1)
        out["edges"].append(edges)
        out["hist"].append(np.bincount(np.searchsorted(edges, v, side="right") - 1, minlength=bins))
        order = np.lexsort((p, -v))[:k]
        out["top"].append(list(zip(p[order].tolist(), v[order].tolist())))
        order = np.lexsort((p, v))[:k]
        out["bottom"].append(list(zip(p[order].tolist(), v[order].tolist())))
    return out


def check(s: Summary, ref: dict, k: int):
    np.testing.assert_array_equal(s.count, ref["count"])
    np.testing.assert_allclose(s.mean, ref["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s.variance, ref["var"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(s.min, ref["min"])
    np.testing.assert_array_equal(s.max, ref["max"])
    np.testing.assert_array_equal(s.hist_edges, np.array(ref["edges"]))
    np.testing.assert_array_equal(s.hist, np.array(ref["hist"]))
    for u in range(s.units):
        n = len(ref["top"][u])
        assert list(zip(s.top_pos[u, :n].tolist(), s.top_val[u, :n].tolist())) == ref["top"][u]
        assert list(zip(s.bottom_pos[u, :n].tolist(), s.bottom_val[u, :n].tolist())) == ref["bottom"][u]
        assert np.all(s.top_pos[u, n:] == -1) and np.all(np.isnan(s.top_val[u, n:]))


@st.composite
def arrays_and_cuts(draw):
    n = draw(st.integers(0, 40))
    units = draw(st.integers(1, 3))
    vals = draw(st.lists(VALUES, min_size=n * units, max_size=n * units))
    x = np.array(vals, dtype=np.float32).reshape(n, units)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return x, [0] + cuts + [n]


@settings(max_examples=60, deadline=None)
@given(arrays_and_cuts(), st.sampled_from([1, 3, 8]), st.sampled_from([4, 8, 64]))
def test_streaming_equals_brute_force(data, k, bins):
    x, cuts = data
    s = Summary(x.shape[1:], k=k, bins=bins)
    for a, b in zip(cuts, cuts[1:]):
        s.update(x[a:b], a)
    check(s, brute(x, k, bins), k)
    assert s.nonfinite.sum() == (~np.isfinite(x)).sum()


@settings(max_examples=60, deadline=None)
@given(arrays_and_cuts(), st.sampled_from([1, 4]), st.sampled_from([4, 16]), st.booleans())
def test_merge_equals_concatenation(data, k, bins, swap):
    """Pieces summarised separately (positions shifted as a shard's are), merged in any order."""
    x, cuts = data
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        parts.append(summarize(x[a:b], k=k, bins=bins).shifted(a) if b > a else Summary(x.shape[1:], k=k, bins=bins))
    if swap:
        parts.reverse()
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    check(merged, brute(x, k, bins), k)


def test_ties_keep_the_smaller_positions_and_big_values_widen_the_range():
    x = np.array([[2.0], [5.0], [5.0], [1.0], [5.0], [0.0], [5.0]], np.float32)
    s = Summary((1,), k=2, bins=8)
    s.update(x[:3], 0)
    s.update(x[3:], 3)
    assert s.top_pos[0].tolist() == [1, 2]  # the four 5.0 tie: the first two positions win
    assert s.bottom_pos[0].tolist() == [5, 3]
    assert s.hist_edges[0, -1] == 8.0  # 5 < 8 = 2**3
    s.update(np.array([[-1000.0]], np.float32), 7)
    assert s.hist_edges[0, -1] == 1024.0 and s.hist.sum() == 8


def test_multi_axis_units_and_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3, 4)).astype(np.float16)
    s = summarize(x, k=5, bins=16)
    assert s.units == 12
    ref = brute(x.astype(np.float32), 5, 16)
    check(s, ref, 5)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        s.write(f, "probe")
        s.write(f, "probe")  # overwriting in place
    with h5py.File(tmp_path / "s.h5", "r") as f:
        back = Summary.read(f["probe"])
        assert f["probe"].attrs["k"] == 5 and sorted(f["probe"]) == sorted(s.arrays())
    check(back, ref, 5)
    assert back.unit_shape == (3, 4)


def test_bad_parameters_are_refused():
    with pytest.raises(SummaryError, match="power of two"):
        Summary((3,), bins=100)
    with pytest.raises(SummaryError, match="too large"):
        Summary((1024, 128))
