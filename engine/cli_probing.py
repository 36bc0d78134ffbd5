"""``seqscope probe-fit``, ``seqscope attribute`` and ``seqscope compare``: linear probes (and the
steering intervention along one), attribution of an output to earlier tokens and states, and
the difference of two trace files.  (Registered in ``engine.cli.COMMAND_MODULES``; the helpers
of ``engine.cli`` are imported when a command runs.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .errors import SeqScopeError


class ProbingCLIError(SeqScopeError):
    """A command-line argument of these commands that cannot be used, with the reason."""


def _add_input(p, what: str):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="TEXT", help=f"the input text ({what})")
    src.add_argument("--input", metavar="FILE", action="append",
                     help="an input file (text, .npy ids, or .npy/.csv numbers for numeric models); repeat for "
                     "more sequences")
    p.add_argument("--device", default="cpu", help="where to run (default: cpu)")
    p.add_argument("--config", metavar="JSON", help="model config as a JSON string or a JSON file")
    from .cli import add_no_strict

    add_no_strict(p)


def _model_and_inputs(args):
    from .cli import _load_model, _read_inputs

    model = _load_model(args.model, args.config, args.device, not args.no_strict)
    inputs = [args.text] if args.text is not None else _read_inputs(model, args.input)
    return model, inputs


# -- probe-fit --------------------------------------------------------------------------------


def add_probe_fit(sub, parser_class):
    p = sub.add_parser("probe-fit", help="fit a linear probe for a feature on each layer; print held-out scores",
                       description="Run MODEL on the input, fit a ridge (numeric feature) or logistic (0/1 or "
                       "class feature) probe on each probe point matching --probe, and print the held-out "
                       "score per probe point (accuracy, or R^2 for numbers). With --steer ALPHA:STEP, print the "
                       "best probe's steering intervention (add ALPHA x its unit direction from STEP on) as JSON "
                       "for 'seqscope trace --intervene'.")
    p.add_argument("model", metavar="MODEL", help="checkpoint file or folder")
    _add_input(p, "token models")
    p.add_argument("--probe", metavar="GLOB", default="layers.*.h",
                   help="probe points to fit, e.g. layers.*.h (default) or layers.1.c")
    feat = p.add_mutually_exclusive_group(required=True)
    feat.add_argument("--regex", metavar="R", help="1 for tokens inside a match of R over the text, else 0")
    feat.add_argument("--token-class", metavar="C", help="letter, digit, space, punctuation or newline")
    feat.add_argument("--column", metavar="N", type=int, help="column N of a numeric input")
    feat.add_argument("--labels", metavar="FILE", help="one number per token: a .npy file or a text file, one a line")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty per token on standardised units (1e-3)")
    p.add_argument("--steer", metavar="ALPHA:STEP", help="print the best probe's steering intervention")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _read_labels(path: str, n: int) -> np.ndarray:
    from .limits import read_text_capped

    f = Path(path)
    if not f.is_file():
        raise ProbingCLIError(f"--labels: no file {path}")
    try:
        if f.suffix.lower() == ".npy":
            return np.load(f, allow_pickle=False)
        values = [line.strip() for line in read_text_capped(f, "labels file").splitlines() if line.strip()]
        return np.array([float(v) for v in values])
    except (OSError, ValueError) as exc:
        raise ProbingCLIError(f"--labels {path}: not a list of numbers ({str(exc).splitlines()[0][:120]})") from None


def cmd_probe_fit(args) -> int:
    from .analysis.linear_probe import fit_probes, make_feature
    from .run import run

    if args.l2 < 0 or not np.isfinite(args.l2):
        raise ProbingCLIError("--l2 must be a finite number >= 0")
    model, inputs = _model_and_inputs(args)
    try:
        trace = run(model, inputs, probes=args.probe)
    except KeyError as exc:
        raise ProbingCLIError(str(exc.args[0])) from None
    labels = _read_labels(args.labels, trace.n_tokens) if args.labels else None
    feature = make_feature(trace, regex=args.regex, token_class=args.token_class, column=args.column, labels=labels)
    result = fit_probes(trace, feature, args.probe, l2=args.l2)
    steer = None
    if args.steer:
        try:
            alpha, step = args.steer.split(":")
            steer = result.steering(float(alpha), int(step))
        except ValueError:
            raise ProbingCLIError(f"--steer {args.steer!r}: write ALPHA:STEP, e.g. 2.0:40") from None
    if args.json:
        d = result.to_dict()
        if steer is not None:
            d["steering"] = steer.to_dict()
        print(json.dumps(d, indent=2))
        return 0
    best = result.best
    print(f"feature {feature.name} ({feature.kind}) on {trace.n_tokens:,} tokens; {result.split}")
    for f in result.fits:
        mark = "  <- best" if f is best else ""
        print(f"  {f.probe:<16} {f.kind:<8} held-out {f.metric} {f.test_score:.4f}  (train {f.train_score:.4f}){mark}")
    if steer is not None:
        print(json.dumps(steer.to_dict()))
    return 0


# -- attribute --------------------------------------------------------------------------------


def add_attribute(sub, parser_class):
    p = sub.add_parser("attribute", help="attribute an output to the earlier tokens (and states) of an input",
                       description="Attribute one output of MODEL on the input to every earlier token: "
                       "integrated gradients (ig, from the zero embedding), gradient x input (grad, also per "
                       "layer's state) or activation patching (patch: zero each earlier step's state).")
    p.add_argument("model", metavar="MODEL", help="checkpoint file or folder")
    _add_input(p, "token models")
    p.add_argument("--target", required=True, metavar="T",
                   help="logit:STEP:TOKEN (a token id or its text) or unit:PROBE:UNIT:STEP")
    p.add_argument("--method", choices=("ig", "grad", "patch"), default="ig", help="(default: ig)")
    p.add_argument("--steps", type=int, default=32, help="integration steps for ig (default: 32)")
    p.add_argument("--top", type=int, default=10, help="tokens to list, largest |score| first (default: 10)")
    p.add_argument("--json", action="store_true", help="print every score as JSON")
    return p


def cmd_attribute(args) -> int:
    from .analysis.attribution import parse_target
    from .analysis.patching import attribute

    model, inputs = _model_and_inputs(args)
    if len(inputs) != 1:
        raise ProbingCLIError("attribute reads one sequence: give --text or one --input")
    target = parse_target(args.target, model)
    res = attribute(model, inputs[0], target, args.method, steps=args.steps)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    print(f"{res.method} attribution of {target.describe()} (value {res.output:+.4f})")
    if res.baseline is not None:
        print(f"baseline (zero input) {res.baseline:+.4f}; scores sum {res.scores.sum():+.4f}; completeness gap "
              f"{100 * res.completeness_gap:.2f} %")
    for note in res.notes:
        print(f"note: {note}")
    for t in np.argsort(-np.abs(res.scores))[:max(args.top, 0)]:
        print(f"  step {t:>5}  {json.dumps(res.tokens[t]):<8} {res.scores[t]:+.5f}")
    return 0


# -- compare ----------------------------------------------------------------------------------


def add_compare(sub, parser_class):
    p = sub.add_parser("compare", help="compare two trace files and write their difference",
                       description="Align two traces of the same input (two models with the same probe names, two "
                       "checkpoints, or clean vs steered) by token and write a trace whose probes hold A - B.")
    p.add_argument("a", metavar="A.h5")
    p.add_argument("b", metavar="B.h5")
    p.add_argument("-o", "--output", metavar="DIFF.h5", required=True, help="the difference trace to write")
    p.add_argument("--json", action="store_true", help="print the per-probe summary as JSON")
    return p


def cmd_compare(args) -> int:
    from .analysis.compare import write_difference

    cmp, out = write_difference(args.a, args.b, args.output)
    rows = cmp.summary()
    if args.json:
        print(json.dumps({"output": str(out), "alignment": cmp.alignment.how, "probes": rows,
                          "skipped": cmp.skipped}, indent=2))
        return 0
    print(f"wrote {out}: {len(rows)} probes, A - B, {cmp.alignment.describe()}")
    for r in rows:
        print(f"  {r['probe']:<16} max |A-B| {r['max_abs']:.4g} at token {r['at_token']}, unit {r['at_unit']}; "
              f"rms {r['rms']:.4g}")
    for p, why in cmp.skipped.items():
        print(f"seqscope: note: {p} not compared: {why}", file=sys.stderr)
    return 0


COMMANDS = {
    "probe-fit": (add_probe_fit, cmd_probe_fit),
    "attribute": (add_attribute, cmd_attribute),
    "compare": (add_compare, cmd_compare),
}
