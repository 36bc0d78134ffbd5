"""``seqscope stats | timescales | jacobian | fixed-points``: unit statistics, timescales and
dynamics from the command line (``engine.analysis.unit_stats``, ``timescales``,
``decay_spectrum``, ``jacobian``, ``fixed_points``).

    seqscope stats TRACE.h5 [--probes GLOB ...] [--json]
    seqscope timescales MODEL (--text TEXT | --input FILE ... | --trace TRACE.h5) [--autocorrelation] [--json]
    seqscope jacobian MODEL --layer K (--text TEXT | --input FILE ...) [--max-steps N] [--json]
    seqscope fixed-points MODEL --layer K (--text TEXT | --input FILE ...) [--constant mean|zero|step:T|token:X]
                          [--max-starts N] [--json]

(``engine.cli`` imports this module while it is itself being imported, so its helpers are
imported here inside the handlers.)
"""
from __future__ import annotations

import json
import math

import numpy as np

from .errors import SeqScopeError


class AnalysisArgumentError(SeqScopeError):
    """An analysis asked for something the model or trace cannot give, with the reason."""


# -- shared arguments ------------------------------------------------------------------------------


def _model_and_input(p, *, trace_too: bool = False):
    p.add_argument("model", metavar="MODEL", help="checkpoint file or folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="TEXT", help="the input text (token models)")
    src.add_argument("--input", metavar="FILE", action="append",
                     help="an input file (text, .npy ids, or .npy/.csv numeric); repeat for more sequences")
    if trace_too:
        src.add_argument("--trace", metavar="TRACE.h5", help="a trace file of this model holding the probes needed")
    p.add_argument("--config", metavar="JSON", help="model config as a JSON string or a JSON file")
    from .cli import add_no_strict

    add_no_strict(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _run(args, probes):
    from . import cli
    from .run import run

    model = cli._load_model(args.model, args.config, "cpu", not getattr(args, "no_strict", False))
    if getattr(args, "trace", None):
        from .hdf5 import load_trace

        trace = load_trace(args.trace)
        missing = [p for p in probes(model) if p not in trace.arrays]
        if missing:
            raise AnalysisArgumentError(f"{args.trace} did not record {', '.join(missing)}; record them with "
                                        f"seqscope trace --probes {' '.join(missing)}")
        return model, trace
    inputs = [args.text] if args.text is not None else cli._read_inputs(model, args.input)
    return model, run(model, inputs, probes=probes(model) or None)


def _print_json(obj):
    print(json.dumps(obj, indent=1, default=_plain))


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v).__name__)


def _num(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.3g}"


# -- stats -------------------------------------------------------------------------------------------


def add_stats(sub, parser_class):
    p = sub.add_parser("stats", help="unit statistics of a trace file: dead and saturated units, gate "
                       "saturation, the state's norm and effective rank along the position",
                       description="Per-unit mean, std and sparsity, dead units (std <= 1e-4) and saturated "
                       "units (>= 90%% of steps within 2%% of a bound of a bounded probe), gate saturation per "
                       "layer (values in the lowest and highest tenth of the gate's range), and each state "
                       "probe's norm and effective rank along the position. Reads the file in blocks: corpus "
                       "traces of any length work.")
    p.add_argument("trace", metavar="TRACE.h5", help="a trace file (one run or a corpus)")
    p.add_argument("--probes", metavar="GLOB", nargs="+", default=None, help="probes to describe (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_stats(args) -> int:
    from .analysis import unit_stats as U
    from .analysis.trace_source import TraceSource
    from .probes import match_probes

    with TraceSource(args.trace) as src:
        names = None
        if args.probes:
            try:
                names = match_probes(args.probes, src.probes)
            except KeyError as exc:
                raise AnalysisArgumentError(str(exc.args[0])) from None
        summary = U.summarize(src, names)
    if args.json:
        _print_json(summary)
        return 0
    print(f"{args.trace}: {summary['architecture'] or 'model ?'}, {summary['tokens']:,} tokens in "
          f"{summary['sequences']:,} sequence(s)")
    print(f"{'probe':<24} {'units':>6} {'dead':>5} {'saturated':>10} {'sparsity':>9}")
    for p in summary["probes"]:
        sat = str(len(p["saturated_units"])) if "saturated_units" in p else "—"
        print(f"{p['probe']:<24} {p['units']:>6} {len(p['dead_units']):>5} {sat:>10} {p['mean_sparsity']:>9.3f}")
    if summary["gate_saturation"]:
        print("gate saturation (fraction of values in the lowest / highest tenth of the range):")
        for g in summary["gate_saturation"]:
            print(f"  {g['probe']:<22} low {g['left']:.3f}  high {g['right']:.3f}")
    if summary["state_profiles"]:
        print("the state along the position:")
    for s in summary["state_profiles"]:
        ranks = [r for r in s["effective_rank"] if r is not None]
        rank = f"effective rank {ranks[0]:.2f} -> {ranks[-1]:.2f} ({s['rank_kind']}, windows of {s['window']})" \
            if ranks else s["note"] or "effective rank: too few tokens"
        print(f"  {s['probe']:<22} norm {s['norm_first']:.3g} at position 0 -> {s['norm_last']:.3g} at the last; "
              f"{rank}")
    return 0


# -- timescales --------------------------------------------------------------------------------------


def add_timescales(sub, parser_class):
    p = sub.add_parser("timescales", help="per-layer timescales in steps: the decay spectrum of gated and "
                       "linear recurrences, or the units' autocorrelation times",
                       description="The decay spectrum of each layer, tau = -1/<log a_t> in steps, from the "
                       "weights and the gates recorded on the input (Mamba exp(dt A), LRU |lambda|, RWKV w, "
                       "RG-LRU a, HGRN f, xLSTM/GLA forget gates, DeltaNet/RetNet decays, the LSTM forget "
                       "gate, the GRU update gate); with --autocorrelation, the autocorrelation decay time "
                       "of every unit of each layer's state instead.")
    _model_and_input(p, trace_too=True)
    p.add_argument("--autocorrelation", action="store_true",
                   help="the autocorrelation decay time of each layer's state units (any family)")
    p.add_argument("--bins", type=int, default=12, help="log-spaced histogram bins (default 12)")


def _state_probe(model, layer: int) -> str | None:
    names = {s.name: s for s in model.probe_specs()}
    for site in ("c", "h", "state"):
        name = f"layers.{layer}.{site}"
        if name in names:
            return name
    return None


def cmd_timescales(args) -> int:
    from .analysis import decay_spectrum as DS
    from .analysis import timescales as TS

    if args.bins < 1 or args.bins > 200:
        raise AnalysisArgumentError("--bins must be between 1 and 200")
    auto = args.autocorrelation
    note = ""
    if not auto:
        from . import cli

        model = cli._load_model(args.model, args.config, "cpu", not getattr(args, "no_strict", False))
        try:
            DS.needed_probes(model)
        except DS.NoDecay as exc:
            auto, note = True, f"{exc}; showing autocorrelation times"
    if auto:
        def wanted(m):
            return [p for p in (_state_probe(m, k) for k in range(m.num_layers)) if p is not None]
        model, trace = _run(args, wanted)
        rows = []
        for name in wanted(model):
            tau = TS.autocorrelation_timescales(trace[name], trace.offsets)
            rows.append((int(name.split(".")[1]), tau, f"autocorrelation of {name}", "unit"))
    else:
        model, trace = _run(args, DS.needed_probes)
        rows = [(s.layer, s.tau, s.source, s.entries) for s in DS.decay_spectrum(model, trace)]
    out = []
    for layer, tau, source, entries in rows:
        edges, counts, n_inf = TS.log_histogram(tau, bins=args.bins)
        finite = tau[np.isfinite(tau)]
        out.append({"layer": layer, "source": source, "entries": entries, "count": int(tau.size),
                    "never_decay": n_inf, "undefined": int(np.count_nonzero(np.isnan(tau))),
                    "median": float(np.median(finite)) if finite.size else None,
                    "max": float(finite.max()) if finite.size else None,
                    "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}, "tau": tau.tolist()})
    if args.json:
        _print_json({"model": args.model, "note": note, "layers": out})
        return 0
    if note:
        print(f"note: {note}")
    for r in out:
        print(f"layer {r['layer']}: {r['count']} {r['entries']}s, tau from {r['source']}: median {_num(r['median'])}, "
              f"max {_num(r['max'])} steps" + (f", {r['never_decay']} never decay" if r["never_decay"] else ""))
        counts = r["histogram"]["counts"]
        top = max(counts) or 1
        for lo, hi, c in zip(r["histogram"]["edges"], r["histogram"]["edges"][1:], counts):
            print(f"  {lo:9.3g} – {hi:<9.3g} {'#' * int(round(30 * c / top)):<30} {c}")
    return 0


# -- jacobian ----------------------------------------------------------------------------------------


def add_jacobian(sub, parser_class):
    p = sub.add_parser("jacobian", help="eigenvalues of the state update's Jacobian along an input: the "
                       "spectral radius at every step",
                       description="The Jacobian dF/ds of a layer's state update at every state the run "
                       "visited (LSTM, GRU, Elman RNN, and the diagonal families, where it is diag(decay)), "
                       "and the modulus of its largest eigenvalue along the input.")
    _model_and_input(p)
    p.add_argument("--layer", type=int, default=0, help="the layer (default 0)")
    p.add_argument("--sequence", type=int, default=0, help="which input sequence (default 0)")
    p.add_argument("--max-steps", type=int, default=512, help="steps examined, evenly spaced (default 512)")


def _step_and_trace(args):
    from .analysis import state_step as SS

    def needed(m):
        return SS.state_step(m, args.layer).needed()
    model, trace = _run(args, needed)
    if not 0 <= args.sequence < trace.n_sequences:
        raise AnalysisArgumentError(f"--sequence {args.sequence}: the input has sequences 0..{trace.n_sequences - 1}")
    return model, trace, SS.state_step(model, args.layer)


def cmd_jacobian(args) -> int:
    from .analysis import jacobian as JA

    if args.max_steps < 1:
        raise AnalysisArgumentError("--max-steps must be at least 1")
    _, trace, step = _step_and_trace(args)
    sp = JA.spectra_along(step, trace, args.sequence, max_steps=args.max_steps)
    r = sp.spectral_radius
    if args.json:
        _print_json({"layer": args.layer, "sequence": args.sequence, "steps": sp.steps.tolist(),
                     "spectral_radius": r.tolist(),
                     "top_eigenvalues": [[[float(e.real), float(e.imag)] for e in row[:4]] for row in sp.eigenvalues]})
        return 0
    print(f"layer {args.layer}, sequence {args.sequence}: {len(sp.steps)} steps, state of {step.state_size}")
    print(f"spectral radius: min {r.min():.4f}, median {np.median(r):.4f}, max {r.max():.4f} "
          f"(at step {int(sp.steps[np.argmax(r)])}); above 1 at {int(np.count_nonzero(r > 1))} steps")
    return 0


# -- fixed points ------------------------------------------------------------------------------------


def add_fixed_points(sub, parser_class):
    p = sub.add_parser("fixed-points", help="fixed and slow points of a layer under a constant input, with "
                       "their stability",
                       description="Minimise q = 1/2 |F(s, u) - s|^2 from the states the run visited (Sussillo & "
                       "Barak 2013) with the input held constant; report the distinct fixed (q <= 1e-14) and "
                       "slow (q <= 1e-6) points and their stability from the Jacobian's eigenvalues "
                       "(stable / marginal / saddle / unstable).")
    _model_and_input(p)
    p.add_argument("--layer", type=int, default=0, help="the layer (default 0)")
    p.add_argument("--sequence", type=int, default=None, help="search from this sequence's states (default: all)")
    p.add_argument("--constant", default="mean", metavar="HOW",
                   help="the constant input: mean (of the step inputs, default), zero, step:T (the input of step "
                   "T) or token:X (token X's embedding, layer 0 of token models)")
    p.add_argument("--max-starts", type=int, default=256, help="starting states, evenly spaced (default 256)")


def cmd_fixed_points(args) -> int:
    from .analysis import fixed_points as FP
    from .analysis.jacobian import choose_steps

    if args.max_starts < 1:
        raise AnalysisArgumentError("--max-starts must be at least 1")
    if args.sequence is None:
        args.sequence, seq = 0, None
    else:
        seq = args.sequence
    model, trace, step = _step_and_trace(args)
    u = FP.constant_input(step, trace, model, args.constant, seq)
    states = step.states(trace, seq)
    starts = states[choose_steps(len(states), args.max_starts)]
    res = FP.find_fixed_points(step, u, starts)
    if args.json:
        _print_json({"layer": args.layer, "constant": args.constant, "starts": res.n_starts,
                     "settings": res.settings, "points": [p.to_dict() for p in res.points]})
        return 0
    print(f"layer {args.layer}, constant input {args.constant}: {len(res.points)} point(s) from {res.n_starts} starts")
    for k, p in enumerate(res.points):
        print(f"  {k}: {p.kind:<5} {p.stability:<8} q {p.q:.1e}  spectral radius {np.abs(p.eigenvalues[0]):.4f}  "
              f"unstable directions {p.n_unstable}  |s| {np.linalg.norm(p.state):.3f}")
    return 0


COMMANDS = {
    "stats": (add_stats, cmd_stats),
    "timescales": (add_timescales, cmd_timescales),
    "jacobian": (add_jacobian, cmd_jacobian),
    "fixed-points": (add_fixed_points, cmd_fixed_points),
}
