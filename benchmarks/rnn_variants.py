"""The cost of a cell variant's own step loop against torch's fused kernel: a 2,000-step run of
one 256-unit layer (64-wide embedding), probes ``layers.0.h``, on the CPU.

    .venv/bin/python benchmarks/rnn_variants.py
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402
from engine.models.stack import from_torch  # noqa: E402

CASES = (("gru", {}), ("gru", dict(reset_after=False, recurrent_activation="hard_sigmoid")),
         ("lstm", {}), ("lstm", dict(recurrent_activation="hard_sigmoid_keras3")))


def main(steps=2000, repeats=3):
    torch.manual_seed(0)
    x = np.random.default_rng(0).integers(0, 100, steps)
    for cell, options in CASES:
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](64, 256, 1)
        model = from_torch(rnn, nn.Embedding(100, 64), **options)
        engine.run(model, x[:50])
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            engine.run(model, x, probes="layers.0.h")
            best = min(best, time.perf_counter() - t)
        name = ", ".join(f"{k}={v}" for k, v in options.items()) or "standard (fused kernel)"
        print(f"{cell:4s} {name:55s} {best * 1e3:6.0f} ms  ({best / steps * 1e6:4.0f} us/step)")


if __name__ == "__main__":
    main()
