"""HGRN and LRU speed, side by side in one process: SeqScope's forward pass with the
parallel prefix scan of ``engine.models.diagonal`` against the same model with the recurrence as a plain
per-step torch loop (what fla's ``naive_recurrent_hgrn`` does), and the cost of the probes.

    nice .venv/bin/python benchmarks/diagonal.py [--T 1024] [--threads 1]

Models: 4 layers, d_model 256 (HGRN: d_inner 256, GatedMLP 512, short conv 4; LRU: d_state
256), vocabulary 1024, batch 1, random weights.  Median of interleaved repeats, wall time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine.models import diagonal  # noqa: E402
from engine.models.hgrn import HGRNConfig, HGRNModel  # noqa: E402
from engine.models.hgrn import canonical_weight_shapes as hgrn_shapes  # noqa: E402
from engine.models.lru import LRUConfig, LRUModel  # noqa: E402
from engine.models.lru import canonical_weight_shapes as lru_shapes  # noqa: E402

BLOCK_SCAN = diagonal.diagonal_scan


def loop_scan(a, v, h, powers=None):
    """The reference recurrence, one step at a time."""
    lam = a if a is not None else powers.complex(2)[1].expand_as(v)
    out = torch.empty_like(v)
    for t in range(v.shape[0]):
        h = lam[t] * h + v[t]
        out[t] = h
    return out


def models():
    torch.manual_seed(0)
    hc = HGRNConfig(d_model=256, n_layer=4, vocab_size=1024, d_inner=256, ff_inner=512, conv_size=4)
    hw = {k: torch.randn(s) * 0.05 for k, s in hgrn_shapes(hc).items()}
    lc = LRUConfig(d_model=256, d_state=256, n_layer=4, vocab_size=1024)
    lw = {k: torch.randn(s) * 0.05 for k, s in lru_shapes(lc).items()}
    for k in range(4):
        lw[f"layers.{k}.lru.nu_log"] = torch.log(-torch.log(0.5 + 0.49 * torch.rand(256)))
    return {"hgrn": HGRNModel(hc, hw), "lru": LRUModel(lc, lw)}


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ids = np.random.default_rng(0).integers(0, 1024, args.T)
    for name, model in models().items():
        def run(probes, scan):
            diagonal.diagonal_scan = scan
            try:
                return engine.run(model, ids, probes=probes)
            finally:
                diagonal.diagonal_scan = BLOCK_SCAN
        per_token = [s.name for s in model.probe_specs() if s.site != "attn"]
        cases = {"bare": ("logits", BLOCK_SCAN), "bare-loop": ("logits", loop_scan),
                 "probes": (per_token, BLOCK_SCAN), "attn": (["logits", "layers.*.attn"], BLOCK_SCAN)}
        for probes, scan in cases.values():  # warm up
            run(probes, scan)
        times = {c: [] for c in cases}
        for _ in range(args.reps):
            for c, (probes, scan) in cases.items():
                times[c].append(timed(lambda: run(probes, scan), 1))
        med = {c: statistics.median(v) for c, v in times.items()}
        print(f"{name} T={args.T}: " + ", ".join(f"{c} {1000 * v:.0f} ms" for c, v in med.items())
              + f"; loop/bare {med['bare-loop'] / med['bare']:.2f}, probes/bare {med['probes'] / med['bare']:.2f}")


if __name__ == "__main__":
    main()
