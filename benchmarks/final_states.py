"""What finding each sequence's final state costs the chunked families (engine.run always does).

    nice .venv/bin/python benchmarks/final_states.py [--repeats 5] [--batch 16]

A sequence that ends inside a chunk runs that chunk's first part once more, alone
(engine.models.chunked): at most one extra chunk of work per layer.  Measured on the bundled
Mamba (probes: logits only), the forward pass with the final states against the same pass
without them, side by side: a batch of one sequence (it ends with the last chunk: nothing
extra), and a batch of ``--batch`` sequences of lengths spread over 100..1000 (most end inside
a chunk).  Prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import engine
from engine.run import padded_inputs, prepare_inputs

ROOT = Path(__file__).resolve().parents[1]


def timed(model, seqs, finals: bool, repeats: int) -> float:
    x = padded_inputs(model, seqs)
    lengths = [len(s) for s in seqs]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model.forward(x, lengths, {"logits"}, chunk=256, **({"final_state": {}} if finals else {}))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    model = engine.load(ROOT / "assets" / "models" / "selective-ssm-recall")
    rng = np.random.default_rng(0)
    vocab = model.vocab_size
    cases = {"1 sequence of 1000": [rng.integers(0, vocab, 1000)],
             f"{args.batch} sequences of 100..1000": [rng.integers(0, vocab, int(n))
                                                      for n in rng.integers(100, 1001, args.batch)]}
    for name, ids in cases.items():
        seqs = prepare_inputs(model, list(ids))
        timed(model, seqs, True, 1)  # warm up (numba)
        without, with_ = timed(model, seqs, False, args.repeats), timed(model, seqs, True, args.repeats)
        print(f"{name:32s} without {without:7.3f} s   with final states {with_:7.3f} s   ratio {with_ / without:.2f}")


if __name__ == "__main__":
    main()
