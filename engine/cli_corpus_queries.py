"""``seqscope top | correlate | match``: ask a corpus trace what a unit does (engine.corpus).

    seqscope top CORPUS.h5 --probe P --unit U [-k 20] [--min] [--json]
    seqscope correlate CORPUS.h5 --probe P (--regex R | --token-class C | --labels FILE) [-n 20] [--json]
    seqscope match CORPUS.h5 --probe P --sequence S --span A:B [--threshold 0.3] [--off-before]
                   [--off-after] [-n 50] [--json]
"""
from __future__ import annotations

import json
import sys

from .errors import SeqScopeError


class QueryArgumentError(SeqScopeError):
    """A query argument that cannot be used."""


def _shown(text: str | None, width: int, keep_end: bool = False) -> str:
    """One line of context: control characters made visible, cut to ``width`` (keeping the end
    of text that comes before a hit)."""
    if text is None:
        return ""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if len(out) <= width:
        return out
    return "…" + out[len(out) - width + 1:] if keep_end else out[:width - 1] + "…"


def _progress(args):
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    from .cli import ProgressBar

    return ProgressBar(sys.stderr, label=args.command)


def _with_bar(args, fn):
    bar = _progress(args)
    try:
        return fn(bar)
    finally:
        if bar is not None:
            bar.close()


# -- top ---------------------------------------------------------------------------------------


def add_top(sub, parser_class):
    p = sub.add_parser("top", help="a unit's strongest positions across a corpus trace, with context",
                       description="The K tokens of the corpus where the unit is largest (--min: smallest), "
                       "exact, with the text (or numeric window) around each. Ties: smaller position first. "
                       "Answered from the file's /summary when it has one, else by streaming the unit's column.")
    p.add_argument("corpus", metavar="CORPUS.h5", help="a corpus trace (seqscope trace --corpus, or any trace file)")
    p.add_argument("--probe", required=True, help="probe name, e.g. layers.0.h")
    p.add_argument("--unit", required=True, type=int, help="unit index (multi-axis probes: flattened in C order)")
    p.add_argument("-k", type=int, default=20, help="how many positions (default 20)")
    p.add_argument("--min", action="store_true", help="the most negative positions instead")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def cmd_top(args) -> int:
    from .corpus.top import top

    result = _with_bar(args, lambda bar: top(args.corpus, args.probe, args.unit, args.k, lowest=args.min,
                                             progress=bar))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    how = "smallest" if args.min else "largest"
    src = "from the summary" if result.from_summary else "streamed"
    print(f"{args.probe} unit {args.unit}: the {len(result.hits)} {how} of {result.n_tokens:,} tokens ({src})")
    for h in result.hits:
        where = f"seq {h.sequence} step {h.step}"
        if h.token is not None:
            ctx = f"{_shown(h.before, 30, True):>30}[{_shown(h.token, 6)}]{_shown(h.after, 12)}"
        else:
            ctx = " ".join(f"{x:.3g}" for x in (h.inputs or [[]])[h.step - h.window_start][:6])
        print(f"{h.rank:>4}  {h.value:+.4f}  {where:<24} {ctx}")
    return 0


# -- correlate ---------------------------------------------------------------------------------


def add_correlate(sub, parser_class):
    p = sub.add_parser("correlate", help="every unit ranked by correlation and AUC with a feature over a corpus",
                       description="Score every unit of the probe against a feature of the corpus: Pearson's r "
                       "(from exact sums) and, for a 0/1 feature, the AUC; both streamed over the whole corpus. "
                       "A regex marks the tokens with a character inside a match, per sequence.")
    p.add_argument("corpus", metavar="CORPUS.h5", help="a corpus trace")
    p.add_argument("--probe", required=True, help="probe name, e.g. layers.0.h")
    f = p.add_mutually_exclusive_group(required=True)
    f.add_argument("--regex", metavar="R", help="tokens inside a match of this regular expression, e.g. "
                   "'\"[^\"\\n]*\"'")
    f.add_argument("--token-class", metavar="C",
                   help="letter, digit, space, punctuation, newline, upper or lower")
    f.add_argument("--labels", metavar="FILE", help="one number per token: .npy or a text file of numbers")
    p.add_argument("-n", type=int, default=20, help="units to list (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def cmd_correlate(args) -> int:
    from .corpus.correlate import correlate

    if args.n < 1:
        raise QueryArgumentError("-n must be a positive number of units")
    result = _with_bar(args, lambda bar: correlate(args.corpus, args.probe, regex=args.regex,
                                                   token_class=args.token_class, labels=args.labels, progress=bar))
    if args.json:
        print(json.dumps(result.to_dict(args.n)))
        return 0
    pos = f", {result.positives:,} of them inside" if result.positives is not None else ""
    print(f"{args.probe} against {result.feature}: {result.n_tokens:,} tokens{pos}")
    by_r = result.ranking("r", args.n)
    by_auc = result.ranking("auc", args.n) if result.auc is not None else []
    print(f"{'by |r|':>18}" + (f"{'by |AUC - 0.5|':>30}" if len(by_auc) else ""))
    for i, u in enumerate(by_r):
        line = f"{i + 1:>4}  unit {u:>5}  r {result.r[u]:+.4f}"
        if len(by_auc):
            a = by_auc[i]
            line += f"      unit {a:>5}  AUC {result.auc[a]:.4f}"
        print(line)
    return 0


# -- match -------------------------------------------------------------------------------------


def _span(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise QueryArgumentError(f"--span {text!r}: give A:B, the steps A to B-1 of the sequence (e.g. 10:14)")
    return a, b


def add_match(sub, parser_class):
    p = sub.add_parser("match", help="LSTMVis select-and-match: spans where the units on over a selection are on",
                       description="Select steps A:B of sequence S: the units on (>= threshold) at every step "
                       "there (and off just before/after, if asked). Then every span of the corpus where those "
                       "units are on together, ranked as LSTMVis ranks them: most selected units on, then "
                       "fewest other units on, then longest; exact over the whole corpus.")
    p.add_argument("corpus", metavar="CORPUS.h5", help="a corpus trace")
    p.add_argument("--probe", required=True, help="probe name, e.g. layers.0.c")
    p.add_argument("--sequence", required=True, type=int, help="the sequence of the selection")
    p.add_argument("--span", required=True, metavar="A:B", help="its steps A to B-1")
    p.add_argument("--threshold", type=float, default=0.3, help="a unit is on at values >= this (default 0.3)")
    p.add_argument("--off-before", action="store_true", help="units must be off just before the span")
    p.add_argument("--off-after", action="store_true", help="units must be off just after the span")
    p.add_argument("-n", type=int, default=50, help="spans to list (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def cmd_match(args) -> int:
    from .corpus.match import match

    span = _span(args.span)
    if args.n < 1:
        raise QueryArgumentError("-n must be a positive number of spans")
    result = _with_bar(args, lambda bar: match(args.corpus, args.probe, args.sequence, span, args.threshold,
                                               off_before=args.off_before, off_after=args.off_after, limit=args.n,
                                               progress=bar))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    units = ", ".join(map(str, result.units[:20])) + (" …" if len(result.units) > 20 else "")
    print(f"{args.probe}: {len(result.units)} unit(s) on over sequence {args.sequence} {span[0]}:{span[1]}: {units}")
    print(f"{len(result.spans)} best of {result.candidates:,} spans scored (rank: selected units on, other units "
          f"on, length)")
    for s in result.spans:
        mark = " (the selection)" if s.contains_selection else ""
        text = f"{_shown(s.before, 20, True):>20}[{_shown(s.text, 40)}]{_shown(s.after, 12)}" if s.text is not None else ""
        print(f"{s.rank:>4}  {s.intersection:>3}/{len(result.units)} on, union {s.union:>4}, len {s.length:>4}  "
              f"seq {s.sequence} step {s.step}{mark}  {text}")
    return 0


COMMANDS = {"top": (add_top, cmd_top), "correlate": (add_correlate, cmd_correlate), "match": (add_match, cmd_match)}
