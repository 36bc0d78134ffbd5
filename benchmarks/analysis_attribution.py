"""Attribution and probe fitting, measured side by side in one process:

  (a) integrated gradients, 32 steps, over 1,000 tokens  ÷  one forward pass (engine.run) over
      the same tokens, on the bundled char-LSTM (2 layers x 256);
  (b) gradient x input (with every layer's state) over the same tokens  ÷  that forward pass;
  (c) fitting a logistic probe (layers.0.h, 64 units) over a corpus trace of N tokens (the
      bundled Dyck GRU on generated Dyck-2 words, default N = 1,000,000)  ÷  reading that
      trace file back (engine.load_trace).

    .venv/bin/python benchmarks/analysis_attribution.py           # N = 1,000,000 tokens
    .venv/bin/python benchmarks/analysis_attribution.py --quick   # N = 100,000 tokens

``bench_attribution()`` returns the lines it prints (benchmarks/analysis.py calls it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "assets" / "train"))

import engine  # noqa: E402
from engine.analysis.attribution import Target, gradient_x_input, integrated_gradients  # noqa: E402
from engine.analysis.linear_probe import fit_probes, make_feature  # noqa: E402

MODELS = ROOT / "assets" / "models"


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _attribution_lines(repeats: int) -> list[str]:
    model = engine.load(MODELS / "char-lstm-python")
    text = (MODELS / "char-lstm-python" / "sample.py").read_text()[:1000]
    target = Target("logit", "logits", int(model.tokenizer.encode("e")[0][0]), len(text) - 1)
    forward = lambda: engine.run(model, text, probes=["logits"])  # noqa: E731
    ig = lambda: integrated_gradients(model, text, target, steps=32)  # noqa: E731
    grad = lambda: gradient_x_input(model, text, target)  # noqa: E731
    forward()  # warm up every path once
    t_f, t_ig, t_g = (_median_time(f, repeats) for f in (forward, ig, grad))
    gap = ig().completeness_gap
    return [
        f"(a) integrated gradients, 32 steps, 1,000 tokens, char-LSTM: {t_ig * 1e3:.0f} ms ÷ one forward pass "
        f"{t_f * 1e3:.1f} ms = {t_ig / t_f:.1f}x (completeness gap {100 * gap:.2f} %)",
        f"(b) gradient x input with every layer's state, 1,000 tokens: {t_g * 1e3:.0f} ms ÷ forward = {t_g / t_f:.1f}x",
    ]


def _probe_lines(n_tokens: int) -> list[str]:
    import numpy as np
    import synthetic_tasks

    model = engine.load(MODELS / "gru-dyck")
    rng = np.random.default_rng(0)
    texts, total = [], 0
    while total < n_tokens:  # sequences of about 4,000 characters of Dyck-2 words
        words = []
        while sum(len(w) + 1 for w in words) < 4000:
            words.append(synthetic_tasks.dyck_word(rng))
        text = "\n".join(words)[: n_tokens - total]
        texts.append(text)
        total += len(text)
    trace = engine.run(model, texts, probes=["layers.0.h"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.h5"
        engine.save_trace(trace, path)
        del trace
        t0 = time.perf_counter()
        loaded = engine.load_trace(path)
        t_read = time.perf_counter() - t0
    feature = make_feature(loaded, regex=r"\(")
    t0 = time.perf_counter()
    res = fit_probes(loaded, feature, "layers.0.h")
    t_fit = time.perf_counter() - t0
    return [f"(c) logistic probe on layers.0.h (64 units) over a corpus trace of {loaded.n_tokens:,} tokens "
            f"({len(texts)} sequences): fit {t_fit:.2f} s ÷ reading the trace file {t_read:.2f} s = "
            f"{t_fit / t_read:.1f}x (held-out accuracy {res.best.test_score:.3f})"]


def bench_attribution(quick: bool = False) -> list[str]:
    """The benchmark's result lines (``quick``: a 100,000-token corpus, fewer repeats)."""
    return _attribution_lines(3 if quick else 5) + _probe_lines(100_000 if quick else 1_000_000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a 100,000-token corpus and fewer repeats")
    args = p.parse_args(argv)
    for line in bench_attribution(args.quick):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
