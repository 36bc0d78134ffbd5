"""Corpus queries (engine.corpus.top / correlate / match) against brute force on the full arrays.

Every query streams the file in blocks (made tiny here, so that a corpus of ~900 tokens is read
in dozens of blocks and row ranges); the references read whole arrays and compute the answer
the plain way.  Equality is exact (==) unless a tolerance is stated.  Files: float32 and
float16 probes, with and without /summary, and stitched from shards by virtual datasets.
"""
from __future__ import annotations

import math
from fractions import Fraction

import h5py
import numpy as np
import pytest

import engine.corpus.match as match_mod
import engine.corpus.reader as reader_mod
from engine.analysis.neurons import regex_feature
from engine.corpus.correlate import correlate, feature
from engine.corpus.match import match
from engine.corpus.reader import CorpusQueryError, CorpusReader
from engine.corpus.top import top

from corpus_helpers import synthetic_trace, write_corpus, write_stitched


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(reader_mod, "BLOCK_BYTES", 8 * 24 * 37)  # ~37 rows of 24 units per block
    monkeypatch.setattr(match_mod, "RANGE_ROWS", 50)


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


@pytest.fixture(scope="module")
def files(trace, tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return {
        "f32": write_corpus(trace, d / "f32.h5"),
        "f32+summary": write_corpus(trace, d / "f32s.h5", summary=True, k=16),
        "f16": write_corpus(trace, d / "f16.h5", dtype="float16"),
        "f16+summary": write_corpus(trace, d / "f16s.h5", dtype="float16", summary=True, k=16),
        "stitched": write_stitched(trace, d / "vds", [3, 5]),
    }


def stored(path, probe):
    with h5py.File(path, "r") as f:
        a = f["probes"][probe][...]
    return a.reshape(len(a), -1)


KINDS = ["f32", "f32+summary", "f16", "f16+summary", "stitched"]


# -- top ---------------------------------------------------------------------------------------


def brute_top(values, k, lowest):
    v = values.astype(np.float64)
    pos = np.flatnonzero(np.isfinite(v))
    key = v[pos] if lowest else -v[pos]
    order = np.lexsort((pos, key))[:k]  # best value first, ties: smaller position first
    return pos[order].tolist(), v[pos[order]].tolist()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lowest", [False, True])
def test_top_equals_brute_force(files, kind, lowest):
    path = files[kind]
    full = stored(path, "layers.0.h")
    for unit in (0, 1, 4, 5, 7):  # smooth, ties (eighths), NaN/inf, constant (all tied), ties
        for k in (1, 5, 16, 40):
            r = top(path, "layers.0.h", unit, k, lowest=lowest)
            want = brute_top(full[:, unit], k, lowest)
            assert ([h.position for h in r.hits], [h.value for h in r.hits]) == want, (unit, k)
            assert r.from_summary == ("summary" in kind and k <= 16)


def test_top_summary_and_streaming_agree_on_ties(files):
    """Unit 5 is constant: every token ties, so the k smallest positions are the answer, both
    from the summary and streamed (the documented tie rule)."""
    a = top(files["f32+summary"], "layers.0.h", 5, 10)
    b = top(files["f32+summary"], "layers.0.h", 5, 10, use_summary=False)
    assert a.from_summary and not b.from_summary
    assert [h.position for h in a.hits] == [h.position for h in b.hits] == list(range(10))


def test_top_multi_axis_probe_and_context(files, trace):
    full = stored(files["f32"], "layers.0.state")
    r = top(files["f32"], "layers.0.state", 7, 3)  # unit 7 = [1, 3]
    assert [h.position for h in r.hits] == brute_top(full[:, 7], 3, False)[0]
    h = r.hits[0]
    s = h.sequence
    a, b = int(trace.offsets[s]), int(trace.offsets[s + 1])
    assert a + h.step == h.position
    assert h.token == trace.token_text[h.position]
    assert h.before == "".join(trace.token_text[max(a, h.position - 30):h.position])
    assert h.after == "".join(trace.token_text[h.position + 1:min(b, h.position + 11)])
    assert h.window == trace.arrays["layers.0.state"].reshape(trace.n_tokens, -1)[
        a + h.window_start:a + h.window_start + len(h.window), 7].astype(np.float64).tolist()


def test_stale_summary_is_ignored(files, tmp_path):
    """A summary of fewer tokens than the file holds (an interrupted run) is not used."""
    import shutil

    p = tmp_path / "stale.h5"
    shutil.copy(files["f32+summary"], p)
    with h5py.File(p, "a") as f:
        f["summary/layers.0.h/count"][0] -= 1
    with CorpusReader(p) as r:
        assert r.summary("layers.0.h") is None
        assert r.summary("layers.0.state") is not None
    assert not top(p, "layers.0.h", 0, 3).from_summary


# -- correlate ---------------------------------------------------------------------------------


def exact_r(x, f):
    ok = np.isfinite(x)
    xs = [Fraction(v) for v in x[ok].astype(np.float64).tolist()]
    fs = [Fraction(v) for v in f[ok].astype(np.float64).tolist()]
    n = len(xs)
    sx, sf = sum(xs), sum(fs)
    cov = n * sum(a * b for a, b in zip(xs, fs)) - sx * sf
    vx = n * sum(a * a for a in xs) - sx * sx
    vf = n * sum(b * b for b in fs) - sf * sf
    if vx == 0 or vf == 0:
        return math.nan
    return math.copysign(math.sqrt(float(cov * cov / (vx * vf))), cov) if cov else 0.0


def brute_auc(x, positive):
    ok = np.isfinite(x)
    p, q = x[ok & positive].astype(np.float64), x[ok & ~positive].astype(np.float64)
    greater = int((p[:, None] > q[None, :]).sum())
    equal = int((p[:, None] == q[None, :]).sum())
    return float(Fraction(2 * greater + equal, 2 * len(p) * len(q)))


def check_correlation(path, result, f):
    full = stored(path, "layers.0.h").astype(np.float64)
    for u in range(full.shape[1]):
        want = exact_r(full[:, u], f)
        got = result.r[u]
        assert (math.isnan(want) and math.isnan(got)) or got == want, u
        ok = np.isfinite(full[:, u])
        if np.ptp(full[ok, u]) > 0:  # numpy's float64 route agrees to rounding
            assert abs(got - np.corrcoef(full[ok, u], f[ok])[0, 1]) < 1e-12
        if result.auc is not None:
            assert result.auc[u] == brute_auc(full[:, u], f == 1), u


@pytest.mark.parametrize("kind", ["f32", "f16", "f16+summary", "stitched"])
def test_correlate_regex_exact(files, trace, kind):
    path = files[kind]
    pattern = '"[^"\\n]*"'
    result = correlate(path, "layers.0.h", regex=pattern)
    f = regex_feature(trace.token_text, pattern, trace.offsets)
    assert result.positives == int(f.sum()) > 0
    check_correlation(path, result, f)
    assert np.isnan(result.r[5])  # the constant unit
    order = result.ranking("r")
    assert order[-1] == 5 and all(abs(result.r[a]) >= abs(result.r[b]) for a, b in zip(order[:-2], order[1:-1]))


def test_correlate_labels_and_classes(files, trace, tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(-3, 7, trace.n_tokens).astype(np.float32) / 4
    np.save(tmp_path / "l.npy", labels)
    (tmp_path / "l.txt").write_text("\n".join(f"{x:g}" for x in labels))
    for name in ("l.npy", "l.txt"):
        res = correlate(files["f32"], "layers.0.h", labels=tmp_path / name)
        assert res.auc is None
        check_correlation(files["f32"], res, labels)
    res = correlate(files["f16"], "layers.0.h", token_class="digit")
    f = np.array([c.isdigit() for c in trace.token_text], np.float32)
    check_correlation(files["f16"], res, f)


def test_token_classes(files):
    with CorpusReader(files["f32"]) as r:
        text = r.texts(0, r.n_tokens)
        for cls, pred in [("letter", str.isalpha), ("space", lambda c: c == " "), ("newline", lambda c: c == "\n"),
                          ("upper", str.isupper), ("lower", str.islower),
                          ("punctuation", lambda c: not c.isalnum() and not c.isspace())]:
            got = feature(r, token_class=cls).values
            assert got.tolist() == [float(pred(c)) for c in text], cls


def test_bad_features(files, tmp_path):
    with pytest.raises(CorpusQueryError, match="not a valid regular expression"):
        correlate(files["f32"], "layers.0.h", regex="(")
    with pytest.raises(CorpusQueryError, match="unknown token class"):
        correlate(files["f32"], "layers.0.h", token_class="vowel")
    (tmp_path / "short.txt").write_text("1 0 1")
    with pytest.raises(CorpusQueryError, match="3 labels for a corpus of 881 tokens"):
        correlate(files["f32"], "layers.0.h", labels=tmp_path / "short.txt")
    np.save(tmp_path / "third.npy", np.full(881, 1 / 3))
    with pytest.raises(CorpusQueryError, match="float32 cannot represent exactly"):
        correlate(files["f32"], "layers.0.h", labels=tmp_path / "third.npy")


# -- match -------------------------------------------------------------------------------------


def brute_match(full, offsets, seq, a, b, thr, off_before, off_after):
    """Every candidate span, scored, sorted: a plain loop over the full array."""
    on = full.astype(np.float64) >= thr
    s0 = int(offsets[seq])
    sel = on[s0 + a:s0 + b].all(axis=0)
    if off_before and a > 0:
        sel &= ~on[s0 + a - 1]
    if off_after and s0 + b < offsets[seq + 1]:
        sel &= ~on[s0 + b]
    cells = np.flatnonzero(sel)
    count = on[:, cells].sum(axis=1)
    spans = set()
    for level in range(len(cells), 0, -1):
        for q in range(len(offsets) - 1):
            t, end = int(offsets[q]), int(offsets[q + 1])
            while t < end:
                if count[t] >= level:
                    u = t
                    while u < end and count[u] >= level:
                        u += 1
                    if u - t >= 2:
                        spans.add((t, u, q))
                    t = u
                else:
                    t += 1
    rows = []
    for t, u, q in spans:
        active = on[t:u].all(axis=0)
        if off_before and t > offsets[q]:
            active &= ~on[t - 1]
        if off_after and u < offsets[q + 1]:
            active &= ~on[u]
        inter = int(active[cells].sum())
        union = int((active | sel).sum())
        rows.append((-inter, union, -(u - t), t))
    return cells.tolist(), [(t, -ml, -i, un) for i, un, ml, t in sorted(rows)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("off", [(False, False), (True, False), (False, True), (True, True)])
def test_match_equals_brute_force(files, trace, kind, off):
    path = files[kind]
    full = stored(path, "layers.0.h")
    for seq, (a, b), thr in [(3, (10, 14), 0.3), (5, (100, 103), 0.5), (7, (0, 2), 0.0), (5, (0, 1), -0.5)]:
        try:
            cells, want = brute_match(full, trace.offsets, seq, a, b, thr, *off)
        except ValueError:
            continue
        if not cells:
            with pytest.raises(CorpusQueryError, match="no unit"):
                match(path, "layers.0.h", seq, (a, b), thr, off_before=off[0], off_after=off[1])
            continue
        r = match(path, "layers.0.h", seq, (a, b), thr, off_before=off[0], off_after=off[1], limit=None)
        assert r.units == cells
        got = [(s.position, s.length, s.intersection, s.union) for s in r.spans]
        assert got == want
        for limit in (1, 7, 30):
            r = match(path, "layers.0.h", seq, (a, b), thr, off_before=off[0], off_after=off[1], limit=limit)
            assert [(s.position, s.length, s.intersection, s.union) for s in r.spans] == want[:limit]


def test_match_spans_stay_in_sequences_and_flag_the_selection(files, trace):
    r = match(files["f32"], "layers.0.h", 3, (10, 14), 0.3, limit=None)
    for s in r.spans:
        q = s.sequence
        assert trace.offsets[q] <= s.position and s.position + s.length <= trace.offsets[q + 1]
        body = "".join(trace.token_text[s.position:s.position + min(s.length, match_mod.MAX_SPAN_TEXT)])
        assert s.text == body + ("…" if s.length > match_mod.MAX_SPAN_TEXT else "")
    g = int(trace.offsets[3])
    holding = [s.position <= g + 10 and s.position + s.length >= g + 14 for s in r.spans]
    assert [s.contains_selection for s in r.spans] == holding and any(holding)
    assert r.spans[0].contains_selection  # the selection's own run: every selected unit on, no other


def test_match_errors(files):
    with pytest.raises(CorpusQueryError, match="sequence 99 is not in this corpus"):
        match(files["f32"], "layers.0.h", 99, (0, 2))
    with pytest.raises(CorpusQueryError, match="span 5:400 is not inside sequence 3"):
        match(files["f32"], "layers.0.h", 3, (5, 400))
    with pytest.raises(CorpusQueryError, match="no probe 'layers.9.h'"):
        match(files["f32"], "layers.9.h", 3, (5, 7))
    with pytest.raises(CorpusQueryError, match="no unit of layers.0.h is >= 5"):
        match(files["f32"], "layers.0.h", 3, (5, 7), threshold=5)


def test_missing_shard_is_refused(files, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(files["stitched"].parent, d)
    (d / "corpus.h5.shards" / "0001.h5").unlink()
    with pytest.raises(CorpusQueryError, match="0001.h5 is missing"):
        top(d / "corpus.h5", "layers.0.h", 0, 3)


def test_not_a_corpus(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(CorpusQueryError, match="not an HDF5 trace file"):
        top(tmp_path / "x.h5", "layers.0.h", 0)
    with pytest.raises(CorpusQueryError, match="no corpus trace"):
        top(tmp_path / "none.h5", "layers.0.h", 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_chunk_scan_counts_like_numpy(tmp_path, dtype):
    """The in-place chunk reader decides "on" exactly as a float64 comparison does: at and between
    representable values, for -0, NaN and ±inf, and in a last, partial chunk row."""
    from engine.corpus.chunk_scan import count_on

    rng = np.random.default_rng(5)
    a = (rng.standard_normal((103, 11)) * 0.5).astype(dtype)
    a[::9, 3] = np.array(0.3, dtype)  # exactly the float nearest 0.3
    a[1, :] = [-0.0, 0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 65504 if dtype == np.float16 else 3e38, 0.3, 0.25, 2.0]
    p = tmp_path / "c.h5"
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("x", data=a, chunks=(7, 3))
        units = np.array([0, 1, 2, 3, 4, 7, 8, 10])
        for thr in (0.3, float(np.array(0.3, dtype)), 0.0, -0.0, 1e-9, -1e-9, 2.0, 1e300, -1e300, 0.25):
            got = np.zeros(len(a), np.uint16)
            assert count_on(p, ds, units, thr, got)
            want = (a[:, units].astype(np.float64) >= thr).sum(axis=1)
            assert got.tolist() == want.tolist(), thr
        g = f.create_dataset("z", data=a, chunks=(7, 3), compression="gzip")
        assert not count_on(p, g, units, 0.3, np.zeros(len(a), np.uint16))  # compressed: h5py's path
