"""``seqscope trace MODEL --corpus PATH -o corpus.h5 ...``: the command-line face of corpus recording
(:mod:`engine.corpus.record`, and :mod:`engine.corpus.scale_out` with ``--workers``/``--ray-address``).
``engine/cli.py``'s trace command adds these arguments and hands a ``--corpus`` run to :func:`cmd_trace_corpus`."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from ..errors import SeqScopeError
from ..interrupts import Interrupted
from ..status_line import StatusLine

CORPUS_HELP = ("a corpus to record: a folder of files (see --glob), a large text file (see --split), "
               "JSON Lines or Parquet with a text column, or numeric .npy sequences (a 3-D array or a "
               "folder of 2-D arrays); streams into a corpus trace with per-unit summaries")


class CorpusCLIError(SeqScopeError):
    """A corpus-recording option that cannot be used, with the reason."""


def add_corpus_arguments(tr) -> None:
    """The corpus options of ``seqscope trace`` (``--corpus`` itself sits with --text/--input)."""
    g = tr.add_argument_group("corpus recording (with --corpus)")
    g.add_argument("--seq-len", metavar="L", type=int, default=None,
                   help="cut longer sequences into pieces of L tokens (default: one sequence per document)")
    g.add_argument("--max-tokens", metavar="N", type=int, default=None, help="stop after N tokens")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted recording (OUT.h5.partial, or the shards of a Ray run)")
    g.add_argument("--split", choices=("blank", "line", "fixed"), default=None,
                   help="how a large text file is cut into documents: at blank lines (default), each line, "
                   "or pieces of --fixed-chars characters")
    g.add_argument("--fixed-chars", metavar="N", type=int, default=4096, help="piece length for --split fixed")
    g.add_argument("--glob", metavar="PATTERN", default=None,
                   help="which files of a corpus folder to read, e.g. '*.py' (searched recursively)")
    g.add_argument("--text-column", metavar="NAME", default="text",
                   help="the text field of JSON Lines / Parquet corpora (default: text)")
    g.add_argument("--top-k", metavar="K", type=int, default=64,
                   help="top and bottom positions kept per unit in the summaries (default 64)")
    g.add_argument("--workers", metavar="N", type=int, default=None,
                   help="record with N Ray workers on this machine (needs ray: pip install seqscope[cluster])")
    g.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="record on an existing Ray cluster (e.g. ray://head:10001 or auto)")


class CorpusProgressLine(StatusLine):
    """One status line on stderr: tokens, tokens/s, how far, the time left."""

    def __init__(self, label: str, stream=None):
        super().__init__(label, stream, every=0.2)

    def __call__(self, state) -> None:
        if self._due() is None:
            return
        parts = [f"{state.tokens:,} tokens", f"{state.sequences:,} sequences", f"{state.rate:,.0f} tokens/s"]
        if state.fraction is not None:
            parts.append(f"~{state.fraction * 100:.0f}%")
        left = state.seconds_left
        if left is not None:
            parts.append(f"~{_duration(left)} left")
        self._draw(f"{self.label}: " + ", ".join(parts) + "   ")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


CORPUS_ONLY = {"seq_len": None, "max_tokens": None, "resume": False, "split": None, "fixed_chars": 4096, "glob": None,
               "text_column": "text", "top_k": 64, "workers": None, "ray_address": None}


def refuse_corpus_options(args) -> None:
    """Corpus options given without --corpus are refused, never ignored."""
    given = [f"--{k.replace('_', '-')}" for k, default in CORPUS_ONLY.items() if getattr(args, k) != default]
    if given:
        raise CorpusCLIError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to a corpus "
                             f"recording (--corpus PATH)")


def options_from_args(args):
    from .record import RecordOptions

    if args.intervene:
        raise CorpusCLIError("--intervene does not apply to a corpus recording; record the corpus without it")
    if args.max_memory is not None:
        raise CorpusCLIError("--max-memory does not apply to a corpus recording: it streams in bounded memory")
    if args.top_k < 1:
        raise CorpusCLIError("--top-k must be at least 1")
    for name in ("seq_len", "max_tokens", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CorpusCLIError(f"--{name.replace('_', '-')} must be a positive number")
    probes = args.probes
    return RecordOptions(probes=probes, dtype=args.dtype or "float32", compression=args.compression,
                         seq_len=args.seq_len, max_tokens=args.max_tokens, k=args.top_k,
                         chunk=args.chunk or RecordOptions.chunk)


def cmd_trace_corpus(args, load_model) -> int:
    """``seqscope trace --corpus``: ``load_model(args)`` gives the model (the CLI's own loader)."""
    from .record import PARTIAL_SUFFIX, record
    from .sources import Corpus
    from .tracefile import read_progress

    opts = options_from_args(args)
    corpus = Corpus(args.corpus, split=args.split, glob=args.glob, text_column=args.text_column,
                    fixed_chars=args.fixed_chars)
    out = Path(args.output)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = CorpusProgressLine(f"recording {out.name}") if show else None
    ray = args.workers is not None or args.ray_address is not None
    try:
        if ray:
            from .scale_out import record_ray

            result = record_ray(args.model, corpus, out, opts, workers=args.workers, address=args.ray_address,
                                resume=args.resume, progress=bar, config=args.config, device=args.device)
        else:
            model = load_model(args)
            result = record(model, corpus, out, opts, resume=args.resume, progress=bar)
    except KeyboardInterrupt as exc:
        if bar is not None:
            bar.close()
        how = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
        partial = out.with_name(out.name + PARTIAL_SUFFIX)
        where = out.with_name(out.name + ".shards") if ray else partial
        done = ""
        if not ray and partial.exists():
            info = read_progress(partial) or {}
            done = f"{int(info.get('sequences_done', 0)):,} sequences ({int(info.get('tokens_done', 0)):,} tokens) " \
                   f"are recorded in {partial.name}, a valid trace; "
        elif ray and where.exists():
            done = f"the finished shards are in {where.name}/; "
        print(f"\nseqscope: interrupted ({how}); {done}run the same command with --resume to finish",
              file=sys.stderr)
        return exc.exit_status if isinstance(exc, Interrupted) else 130
    if bar is not None:
        bar.close()
    size = out.stat().st_size / 2**20
    rate = result.tokens / result.seconds if result.seconds else 0.0
    print(f"wrote {out}: {result.sequences:,} sequences, {result.tokens:,} tokens, {size:,.1f} MB "
          f"in {result.seconds:.1f} s ({rate:,.0f} tokens/s)" if result.seconds else
          f"{out} is complete: {result.sequences:,} sequences, {result.tokens:,} tokens; nothing to resume")
    for note in result.notes:
        if not note.startswith("already complete"):
            print(f"seqscope: note: {note}", file=sys.stderr)
    return 0


__all__ = ["add_corpus_arguments", "cmd_trace_corpus", "refuse_corpus_options", "CORPUS_HELP", "CorpusCLIError"]
