"""Corpus queries (seqscope top / match / correlate) over a large corpus trace, each beside a
brute-force comparator run in the same process: the whole array read into memory and the answer
computed from it with numpy (what a notebook, or LSTMVis, does).

    .venv/bin/python benchmarks/corpus_queries.py [--corpus FILE] [--chars 500000] [--tokens 5000000]

Without an existing ``--corpus``, it is made: the bundled char-LSTM is recorded
(engine.corpus.record, ``layers.0.h``, float16) over ``--chars`` characters of Python source from
installed third-party packages, and that recording is repeated (same layout, chunks and
summaries as the recorder writes) until the file holds ``--tokens`` tokens.  Targets (issue 12):
``top`` of one unit <= 0.5 s and ``match`` <= 2 s over >= 5M tokens.

``bench_queries(path)`` returns the seconds of each query and of its comparator, and checks that
both give the same answer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine.corpus.correlate import correlate, regex_values  # noqa: E402
from engine.corpus.match import match, runs_at_level  # noqa: E402
from engine.corpus.reader import CorpusReader  # noqa: E402
from engine.corpus.top import top  # noqa: E402

PROBE = "layers.0.h"
UNIT = 121  # the char-LSTM's string unit
REGEX = '"[^"\\n]*"'


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- comparators: the whole array in memory ---------------------------------------------------


def brute_top(path, probe, unit, k):
    with CorpusReader(path) as r:
        col = r.probe(probe)[:, unit].astype(np.float64)
    pos = np.flatnonzero(np.isfinite(col))
    order = np.lexsort((pos, -col[pos]))[:k]
    return pos[order].tolist()


def brute_match(full, offsets, units, threshold, limit):
    """The same ranking from the whole matrix in memory, each candidate scored by slicing it."""
    on_sel = full[:, units] >= np.float64(threshold)
    count = on_sel.sum(axis=1)
    seen, rows = set(), []
    for level in range(len(units), 0, -1):
        s, e = runs_at_level(count, level, offsets, 2)
        for a, b in zip(s.tolist(), e.tolist()):
            if (a, b) in seen:
                continue
            seen.add((a, b))
            active = (full[a:b] >= np.float64(threshold)).all(axis=0)
            inter = int(active[units].sum())
            rows.append((-inter, int(active.sum()) - inter + len(units), -(b - a), a))
        if sum(1 for x in rows if -x[0] >= level) >= limit:
            break
    return [(a, -ml) for _, _, ml, a in sorted(rows)[:limit]]


def brute_pearson(full, f):
    from engine.analysis.neurons import pearson

    return pearson(full, f)


def pick_selection(path, probe, unit, threshold):
    """A short span around the unit's strongest token where a few units are on."""
    with CorpusReader(path) as r:
        p = int(r.summary(probe).top_pos[unit, 0]) if r.summary(probe) is not None else int(
            top(r, probe, unit, 1).hits[0].position)
        seq, step = (int(x[0]) for x in r.locate([p]))
        length = int(r.offsets[seq + 1] - r.offsets[seq])
    a = max(0, min(step - 1, length - 3))
    return seq, (a, a + 3), threshold


def bench_queries(path, probe: str = PROBE, unit: int = UNIT, threshold: float = 0.3, repeats: int = 3) -> dict:
    """Seconds of top (from the summary and streamed), match and correlate over ``path``, each
    with its comparator's seconds; answers checked equal."""
    out = {}
    with CorpusReader(path) as r:
        out["tokens"], out["sequences"], out["units"] = r.n_tokens, r.n_sequences, r.n_units(probe)
        out["dtype"] = str(r.stored_dtype(probe))
    best = lambda fn: min((timed(fn) for _ in range(repeats)), key=lambda x: x[0])  # noqa: E731
    t, res = best(lambda: top(path, probe, unit, 20))
    out["top_summary_s"] = t
    t2, res2 = best(lambda: top(path, probe, unit, 20, use_summary=False))
    out["top_streamed_s"] = t2
    tb, want = best(lambda: brute_top(path, probe, unit, 20))
    out["top_brute_s"] = tb
    assert [h.position for h in res.hits] == [h.position for h in res2.hits] == want
    out["top_from_summary"] = res.from_summary

    seq, span, thr = pick_selection(path, probe, unit, threshold)
    t, m = best(lambda: match(path, probe, seq, span, thr, limit=50))
    out["match_s"], out["match_units"], out["match_candidates"] = t, len(m.units), m.candidates
    out["match_selection"] = [seq, *span]
    tl, full = timed(lambda: CorpusReader(path).probe(probe)[...].reshape(out["tokens"], -1))
    with CorpusReader(path) as r:
        offsets = r.offsets
    tm, want = timed(lambda: brute_match(full, offsets, np.array(m.units), thr, 50))
    out["load_whole_probe_s"], out["match_brute_s"] = tl, tl + tm
    assert [(s.position, s.length) for s in m.spans] == want

    tc, c = timed(lambda: correlate(path, probe, regex=REGEX))
    out["correlate_s"] = tc
    with CorpusReader(path) as r:
        tf, f = timed(lambda: regex_values(r, REGEX))
    tp, r_brute = timed(lambda: brute_pearson(full, f))
    out["correlate_brute_s"] = tl + tf + tp  # float64 Pearson only, no AUC
    out["correlate_max_abs_diff_r"] = float(np.nanmax(np.abs(c.r - r_brute)))
    out["string_unit_rank_by_r"] = int(np.flatnonzero(c.ranking("r") == unit)[0]) + 1
    del full
    return out


# -- making the corpus ------------------------------------------------------------------------


def record_corpus(out: Path, chars: int, tokens: int) -> None:
    import engine
    from corpus_helpers import third_party_python
    from engine.corpus.record import RecordOptions, record
    from engine.corpus.sources import Corpus, Sequence
    from engine.corpus.tracefile import CorpusFile

    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    got = third_party_python(work / "src", chars)
    model = engine.load(ROOT / "assets" / "models" / "char-lstm-python")
    t0 = time.perf_counter()
    base = work / "base.h5"
    res = record(model, Corpus(work / "src"), base, RecordOptions(probes=[PROBE], dtype="float16"))
    print(f"recorded {res.tokens:,} tokens ({got:,} characters) in {time.perf_counter() - t0:.0f} s "
          f"({res.tokens / (time.perf_counter() - t0):,.0f} tokens/s)")
    specs = [s for s in model.probe_specs() if s.name == PROBE]
    partial = out.with_name(out.name + ".partial")
    with CorpusReader(base) as src:
        dst = CorpusFile.create(partial, model_info=src.model_info(), specs=specs, dtype=np.float16,
                                compression=None, text_kind="fixed", features=None, options={"tiled": True},
                                k=64, bins=128)
        try:
            names = src.sequence_names() or [str(i) for i in range(src.n_sequences)]
            index = 0
            while dst.tokens_done < tokens:
                for s0 in range(0, src.n_sequences, 64):
                    s1 = min(src.n_sequences, s0 + 64)
                    a, b = int(src.offsets[s0]), int(src.offsets[s1])
                    ids, texts = src.token_ids(a, b), src.texts(a, b)
                    seqs = []
                    for q in range(s0, s1):
                        i, j = int(src.offsets[q]) - a, int(src.offsets[q + 1]) - a
                        seqs.append(Sequence(index, names[q], ids[i:j].astype(np.int64), texts[i:j]))
                        index += 1
                    dst.append(seqs, {PROBE: src.rows(PROBE, a, b).reshape(b - a, *specs[0].shape)})
                    if dst.tokens_done >= tokens:
                        break
                dst.commit()
                print(f"  {dst.tokens_done:,} tokens", flush=True)
            dst.commit(complete=True)
        finally:
            dst.close()
    os.replace(partial, out)
    shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/seqscope-bench/corpus-queries.h5"))
    ap.add_argument("--chars", type=int, default=500_000, help="characters recorded with the model")
    ap.add_argument("--tokens", type=int, default=5_000_000, help="tokens in the corpus (the recording repeated)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.corpus.exists():
        args.corpus.parent.mkdir(parents=True, exist_ok=True)
        record_corpus(args.corpus, args.chars, args.tokens)
    out = bench_queries(args.corpus, repeats=args.repeats)
    print(json.dumps(out, indent=1))
    print(f"top (summary) {out['top_summary_s']:.3f} s, streamed {out['top_streamed_s']:.2f} s, brute force "
          f"{out['top_brute_s']:.2f} s (target <= 0.5 s)")
    print(f"match {out['match_s']:.2f} s vs brute force {out['match_brute_s']:.2f} s (target <= 2 s)")
    print(f"correlate {out['correlate_s']:.1f} s (exact, with AUC) vs brute force {out['correlate_brute_s']:.1f} s "
          f"(float64 Pearson only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
