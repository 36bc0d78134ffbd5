"""Capture cost, measured side by side in one process: SeqScope's instrumented forward pass
against bare torch kernels and against a naive per-step loop, and a steering re-run from the
prefix cache against a full re-run.

    .venv/bin/python benchmarks/capture.py            # all sizes of issue #3 (a few minutes)
    .venv/bin/python benchmarks/capture.py --quick    # T=1024, batch 1 only

For each cell (2 layers, hidden 512, 512 input features) and each (T, batch) it prints the
median wall time of each contender over interleaved repeats, and the ratios:

  (a) capture / bare      our forward with every probe recorded  ÷  bare nn.LSTM / nn.GRU
  (b) naive / capture     a per-step Python loop that records the gates  ÷  our capture
  (c) rerun / full        one slider move (an intervention at step 0.9·T changes value)
                          re-run from the prefix cache  ÷  the same run from scratch
  (d) typing / full       one token appended, re-run from the cache  ÷  from scratch
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine.models.stack import from_torch  # noqa: E402
from engine.run import DEFAULT_CHUNK  # noqa: E402

HIDDEN = FEATURES = 512
LAYERS = 2


def naive_capture(rnn, x):
    """What one writes without SeqScope: a Python loop over time recording every gate."""
    T, B, _ = x.shape
    H = rnn.hidden_size
    inp = x
    rec = {}
    for k in range(LAYERS):
        W_ih, W_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        outs, gates = [], []
        for t in range(T):
            gi = inp[t] @ W_ih.T + b_ih
            gh = h @ W_hh.T + b_hh
            if isinstance(rnn, nn.LSTM):
                i, f, g, o = (gi + gh).chunk(4, -1)
                i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                c = f * c + i * g
                h = o * c.tanh()
                gates.append(torch.stack([i, f, g, o, c]))
            else:
                r, z, n = gi.chunk(3, -1)
                hr, hz, hn = gh.chunk(3, -1)
                r, z = (r + hr).sigmoid(), (z + hz).sigmoid()
                n = (n + r * hn).tanh()
                h = (1 - z) * n + z * h
                gates.append(torch.stack([r, z, n]))
            outs.append(h)
        inp = torch.stack(outs)
        rec[k] = (inp, torch.stack(gates))
    return rec


def median_times(contenders: dict, repeats: int) -> dict:
    """Run each contender once to warm up, then ``repeats`` rounds, interleaved."""
    for f in contenders.values():
        f()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, f in contenders.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def synced(f, device):
    if device.type != "cuda":
        return f

    def g():
        f()
        torch.cuda.synchronize()

    return g


def bench(cell_cls, T, B, repeats, chunk, device):
    torch.manual_seed(0)
    rnn = cell_cls(FEATURES, HIDDEN, LAYERS).eval()
    model = from_torch(rnn, device=device)
    x = torch.randn(T, B, FEATURES)
    seqs = [x[:, b].numpy() for b in range(B)]
    rnn, x = rnn.to(device), x.to(device)
    t_slider = int(0.9 * T)
    cache = engine.PrefixCache()
    engine.run(model, seqs, cache=cache, chunk=chunk)
    moves = iter(range(10**9))

    def slider(value):
        return [engine.Intervention("layers.0.h", "add", value, positions=[t_slider], units=[0])]

    def rerun_cached():
        engine.run(model, seqs, interventions=slider(0.01 * next(moves)), cache=cache, chunk=chunk)

    def rerun_full():
        engine.run(model, seqs, interventions=slider(0.5), chunk=chunk)

    grown = torch.cat([x.cpu(), torch.randn(1, B, FEATURES)]).numpy()
    typing_cache = engine.PrefixCache()
    typed = iter(range(10**9))

    def typing_cached():  # alternate between the original and one more step
        n = next(typed)
        inp = seqs if n % 2 == 0 else [grown[:, b] for b in range(B)]
        engine.run(model, inp, cache=typing_cache, chunk=chunk)

    with torch.no_grad():
        contenders = {
            "bare": lambda: rnn(x),
            "capture": lambda: engine.run(model, seqs, chunk=chunk),
            "naive": lambda: naive_capture(rnn, x),
            "rerun_full": rerun_full,
            "rerun_cached": rerun_cached,
        }
        if T * B <= 4096 * 1:
            contenders["typing_cached"] = typing_cached
        t = median_times({k: synced(f, device) for k, f in contenders.items()}, repeats)
    row = (f"{cell_cls.__name__:5s} T={T:5d} B={B:3d} | bare {t['bare'] * 1e3:8.1f} ms  capture "
           f"{t['capture'] * 1e3:8.1f} ms  naive {t['naive'] * 1e3:8.1f} ms  slider re-run "
           f"{t['rerun_cached'] * 1e3:7.1f} ms | (a) capture/bare {t['capture'] / t['bare']:5.2f}x  "
           f"(b) naive/capture {t['naive'] / t['capture']:5.2f}x  (c) rerun/full "
           f"{t['rerun_cached'] / t['rerun_full']:5.3f}")
    if "typing_cached" in t:
        row += f"  (d) typing/full {t['typing_cached'] / t['capture']:5.3f}"
    print(row, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T=1024, batch 1 only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, chunk {args.chunk}, "
          f"{LAYERS} layers x hidden {HIDDEN}, {FEATURES} input features; medians of {args.repeats}")
    sizes = [(1024, 1)] if args.quick else [(1024, 1), (1024, 32), (4096, 1), (4096, 32)]
    for cell in (nn.LSTM, nn.GRU):
        for T, B in sizes:
            big = T * B > 4096 * 8
            bench(cell, T, B, max(1, args.repeats // 2) if big else args.repeats, args.chunk, device)


if __name__ == "__main__":
    main()
