"""``seqscope``: the headless face of the engine.

    seqscope info MODEL [--config JSON]
    seqscope trace MODEL (--text TEXT | --input FILE [--input FILE ...]) [--probes GLOB ...]
                   [--intervene JSON_OR_FILE ...] [--initial-state FILE[:STEP]] [--config JSON] [--chunk N]
                   [--max-memory SIZE] -o OUT.h5
    seqscope trace MODEL --corpus PATH -o CORPUS.h5 [--probes GLOB ...] [--dtype float16] [--seq-len L]
                   [--max-tokens N] [--resume] [--split blank|line|fixed] [--glob '*.py'] [--workers N] ...
    seqscope export-lstmvis TRACE.h5 FOLDER [--probes GLOB ...] [--sequence N]

``seqscope [MODEL] [--input FILE] ...`` (no command) opens the desktop workbench; see
:func:`_start_app`.  Nothing here may import Qt: ``engine`` stays usable without it.

Errors the engine raises on purpose (``SeqScopeError``) print ``seqscope: error: <message>``
on stderr and exit with status 2, without a traceback.  Ctrl-C and SIGTERM stop a command with
one line and status 130 / 143; an output being written is then not written (its temporary is
removed, an old file under its name is unchanged).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .errors import InputError, SeqScopeError
from .interrupts import Interrupted, raising_signals
from .status_line import StatusLine

PROG = "seqscope"
CORE_COMMANDS = ("info", "trace", "export-lstmvis")
# Commands defined in modules of their own (one per group of analyses).  Each such module has
# ``COMMANDS``: {name: (add_parser(subparsers, parser_class), handler(args) -> exit status)}.
# A module not built yet is skipped.
COMMAND_MODULES = ("engine.cli_corpus_queries", "engine.cli_dynamics", "engine.cli_probing")


def _command_modules():
    import importlib
    import importlib.util
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            yield importlib.import_module(name)


COMMANDS = CORE_COMMANDS + tuple(name for m in _command_modules() for name in m.COMMANDS)


class CLIError(SeqScopeError):
    """A command-line argument that cannot be used, with the reason."""


# -- argument parsing ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors, in our format, status 2
        self.print_usage(sys.stderr)
        raise CLIError(message)


USAGE = f"""{PROG} [MODEL [--config FILE]] [--input FILE] [--project FILE] [--corpus FILE] [--probe P --unit U --step T] [--offscreen]
       {PROG} COMMAND ...   (COMMAND: {', '.join(COMMANDS)}; '{PROG} COMMAND --help' for each)"""
DESCRIPTION = """\
Inspect trained recurrent sequence models: record every internal state of a run, intervene
inside the recurrence, keep the results as HDF5 traces.  Without a COMMAND it opens the
desktop workbench window."""
WINDOW_HELP = f"""\
the window ({PROG} without a COMMAND):
  MODEL                 a checkpoint file or folder to open, on the sample input beside it when
                        it has one (default: the bundled char-LSTM on its sample)
  --config FILE         a JSON config to load MODEL with, for a file whose architecture SeqScope
                        cannot tell by itself (what engine.load(path, config=...) takes)
  --input FILE          a text or numeric (.npy/.csv) input file to open
  --project FILE        a saved SeqScope project to restore
  --corpus FILE         a corpus trace (seqscope trace --corpus) for the Corpus view, with the
                        model it was recorded from unless MODEL is given
  --probe P --unit U --step T
                        the probe, unit and step to show first
  --offscreen           run without a display, showing nothing (for scripts); otherwise a
                        display is needed (on Linux: DISPLAY or WAYLAND_DISPLAY)

examples:
  {PROG}                                          the bundled char-LSTM on its sample
  {PROG} assets/models/gru-dyck                   a bundled model on its sample
  {PROG} info assets/models/gru-dyck/model.safetensors"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog=PROG, usage=USAGE, description=DESCRIPTION, epilog=WINDOW_HELP,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    info = sub.add_parser("info", help="describe a model: architecture, sizes, vocabulary, probe points",
                          description="Describe a model: architecture, sizes, input kind, vocabulary, "
                          "parameter count and every probe point with its shape.")
    info.add_argument("model", metavar="MODEL", help="checkpoint file or folder")
    info.add_argument("--device", default="cpu", help="where to load the model (default: cpu)")
    info.add_argument("--config", metavar="JSON", help="model config as a JSON string or a JSON file, for "
                      "checkpoints that do not carry one")
    add_no_strict(info)

    tr = sub.add_parser("trace", help="run a model on inputs and write a trace file",
                        description="Run MODEL on text or input files, record the chosen probes and write "
                        "an HDF5 trace file. Several --input files become several sequences of one trace.")
    tr.add_argument("model", metavar="MODEL", help="checkpoint file or folder")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="TEXT", help="the input text (token models)")
    src.add_argument("--input", metavar="FILE", action="append",
                     help="an input file: text for token models (.npy of integer ids also works), "
                     ".npy/.csv (time x features) for numeric models; repeat for more sequences")
    from .corpus.cli_record import CORPUS_HELP, add_corpus_arguments
    src.add_argument("--corpus", metavar="PATH", help=CORPUS_HELP)
    tr.add_argument("--probes", metavar="GLOB", nargs="+", default=["*"],
                    help="probe names or globs to record, e.g. 'layers.*.c' logits (default: all)")
    tr.add_argument("--intervene", metavar="JSON_OR_FILE", action="append", default=[],
                    help="an intervention (JSON object or list) or a JSON file of them; repeatable. "
                    "E.g. '{\"probe\": \"layers.0.c\", \"op\": \"zero\", \"units\": [3]}'")
    tr.add_argument("--initial-state", metavar="FILE[:STEP]", default=None,
                    help="start from this recurrent state instead of zeros: a trace file's final state (e.g. "
                    "an encoder's trace; FILE:STEP: the state after step STEP of each of its sequences), or an "
                    ".npz/.safetensors of arrays named layers.0.h, layers.0.c, …")
    tr.add_argument("--config", metavar="JSON", help="model config as a JSON string or a JSON file")
    add_no_strict(tr)
    tr.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when there is one)")
    tr.add_argument("--chunk", metavar="N", type=int, default=None,
                    help="steps per chunk (prefix-cache granularity and progress unit)")
    tr.add_argument("--dtype", choices=("float16", "float32", "float64"), default=None,
                    help="store arrays in this precision (default: as computed, normally float32)")
    tr.add_argument("--compression", choices=("gzip", "lzf"), default=None, help="compress the arrays")
    tr.add_argument("--max-memory", metavar="SIZE", default=None,
                    help="memory the run may take, e.g. 16G or 800M (default: half the available memory, "
                    "at most 64G); a run estimated to need more is refused before it starts")
    bar = tr.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar on stderr")
    bar.add_argument("--no-progress", dest="progress", action="store_false",
                     help="never show a progress bar (default: shown for long inputs on a terminal)")
    tr.add_argument("-o", "--output", metavar="OUT.h5", required=True, help="trace file to write")
    add_corpus_arguments(tr)

    ex = sub.add_parser("export-lstmvis", help="write an LSTMVis project folder from a trace file",
                        description="Write an LSTMVis project folder (lstm.yml, states.h5, words.dict) "
                        "from a SeqScope trace file.")
    ex.add_argument("trace", metavar="TRACE.h5", help="a trace file written by 'seqscope trace'")
    ex.add_argument("folder", metavar="FOLDER", help="project folder to write (created if needed)")
    ex.add_argument("--probes", metavar="GLOB", nargs="+", default=None,
                    help="probes to export (default: every per-layer probe)")
    ex.add_argument("--sequence", metavar="N", type=int, default=None,
                    help="export only sequence N (default: all, concatenated)")
    for module in _command_modules():
        for add_parser, _handler in module.COMMANDS.values():
            add_parser(sub, _Parser)
    return p


# -- helpers ---------------------------------------------------------------------------------


def _read_json_arg(value: str, what: str):
    """A JSON argument given inline or as the path of a JSON file (a regular file of sane size,
    nested no deeper than :mod:`engine.safe_json` allows)."""
    from . import safe_json
    from .limits import display_name, is_regular_file, read_text_capped

    text = value
    stripped = value.strip()
    if not stripped.startswith(("{", "[")):
        path = Path(value)
        if not is_regular_file(path):
            shown = value if len(value) <= 80 else value[:60] + "…"
            raise CLIError(f"{what}: {shown!r} is neither JSON nor an existing file")
        try:
            text = read_text_capped(path, what)
        except SeqScopeError as exc:
            raise CLIError(f"{what}: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"{what}: cannot read {display_name(str(path))}: {exc}") from None
    try:
        return safe_json.loads(text, what)
    except SeqScopeError as exc:
        raise CLIError(str(exc)) from None


NO_STRICT_HELP = ("load what can be loaded faithfully and leave the rest out, as engine.load(..., strict=False): "
                  "tensors the model does not use, a vocabulary that does not fit (the notes say what was left)")


def add_no_strict(parser) -> None:
    parser.add_argument("--no-strict", action="store_true", help=NO_STRICT_HELP)


def _load_model(path: str, config: str | None, device: str | None = None, strict: bool = True):
    from . import load

    kwargs = {"device": device, "strict": strict}
    if config is not None:
        cfg = _read_json_arg(config, "--config")
        if not isinstance(cfg, dict):
            raise CLIError("--config must be a JSON object")
        kwargs["config"] = cfg
    return load(path, **kwargs)


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _shown(path) -> str:
    """A path as text that can be printed: bytes that are not UTF-8 in a file name show as \ufffd."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _piece_repr(p: str) -> str:
    r = repr(p)
    return r if len(r) <= 12 else r[:10] + "…'"


# -- info ----------------------------------------------------------------------------------


def describe_model(model) -> str:
    """The text ``seqscope info`` prints."""
    from .limits import display_name

    info = model.info() if hasattr(model, "info") else {}
    cfg = getattr(model, "config", None)
    try:
        cfg_dict = json.loads(info["config"]) if isinstance(info.get("config"), str) else dict(info.get("config") or {})
    except (ValueError, TypeError):
        cfg_dict = {}
    if not cfg_dict and cfg is not None and hasattr(cfg, "__dataclass_fields__"):
        cfg_dict = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    lines = []
    add = lambda k, v: lines.append(f"{k:<13} {v}")  # noqa: E731
    add("model", info.get("source") or getattr(model, "source", "") or "(in memory)")
    arch = info.get("architecture") or getattr(model, "architecture", "?")
    parts = [str(arch)]
    if "num_layers" in cfg_dict:
        parts.append(f"{cfg_dict['num_layers']} layer{'s' if cfg_dict['num_layers'] != 1 else ''}")
    if cfg_dict.get("layers"):  # layers that differ: each on its own line below
        parts.append("layers of different kinds")
    else:
        if "hidden_size" in cfg_dict:
            parts.append(f"hidden {cfg_dict['hidden_size']}")
        if cfg_dict.get("proj_size"):
            parts.append(f"projection {cfg_dict['proj_size']}")
        if cfg_dict.get("bidirectional"):
            parts.append("bidirectional")
    add("architecture", ", ".join(parts))
    if info.get("cell") and not info.get("layers"):  # the cell's equations: torch's, or a variant
        add("cell", info["cell"])
    for line in info.get("layers") or ():  # a stack whose layers differ: one line each
        add("layer", line)
    if info.get("output_order"):
        add("output order", info["output_order"])
    if getattr(model, "takes_tokens", True):
        tok = getattr(model, "tokenizer", None)
        vocab = cfg_dict.get("vocab_size") or (tok.vocab_size if tok is not None else "?")
        emb = f", embedding {cfg_dict['input_size']}" if "input_size" in cfg_dict else ""
        add("input", f"tokens: vocabulary of {vocab}{emb}")
        if tok is not None:
            n = min(24, tok.vocab_size)
            preview = " ".join(_piece_repr(tok.piece(i)) for i in range(n))
            more = f" … (+{tok.vocab_size - n})" if tok.vocab_size > n else ""
            add("vocabulary", f"{getattr(tok, 'kind', type(tok).__name__)}: {preview}{more}")
            if info.get("vocabulary"):  # where the loader found it
                add("", f"(from {display_name(str(info['vocabulary']))})")
        else:
            add("vocabulary", "none found in the file or beside it: give token ids, not text")
    else:
        add("input", f"numeric: {cfg_dict.get('input_size', '?')} features per step")
    if cfg_dict.get("output_size"):
        add("output", f"linear head, {cfg_dict['output_size']} outputs (probe 'logits')")
    add("parameters", _fmt_int(info.get("parameter_count", getattr(model, "parameter_count", 0))))
    if info.get("dtype") or info.get("device"):
        add("runs as", f"{info.get('dtype', '?')} on {info.get('device', '?')}")
    for note in str(info.get("notes") or "").splitlines():  # how the model was read, warnings
        add("note", note)
    specs = model.probe_specs()
    lines.append(f"probes ({len(specs)}):")
    width = max((len(s.name) for s in specs), default=0)
    shapes = {s.name: "[" + ", ".join(map(str, s.shape)) + "]" for s in specs}
    swidth = max((len(v) for v in shapes.values()), default=0)
    for s in specs:
        lines.append(f"  {s.name:<{width}}  {shapes[s.name]:<{swidth}}  {s.description}")
    return "\n".join(lines)


def cmd_info(args) -> int:
    model = _load_model(args.model, args.config, args.device, not args.no_strict)
    print(describe_model(model))
    return 0


# -- trace ---------------------------------------------------------------------------------


class ProgressBar(StatusLine):
    """A one-line text bar for ``run(progress=...)``, redrawn at most ten times a second."""

    def __init__(self, stream=None, label: str = "running", width: int = 30):
        super().__init__(label, stream, every=0.1)
        self.width = width
        self._start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = self._due(last=done >= total)
        if now is None:
            return
        frac = done / total if total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        self._draw(f"{self.label} [{bar}] {frac * 100:3.0f}% {now - self._start:5.1f} s")


LONG_INPUT = 20_000  # tokens: from here on a progress bar is shown on a terminal


def _read_inputs(model, files: list[str]):
    import numpy as np

    from .tokenizers import read_numeric

    seqs = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise InputError(f"no input file {name}" if not path.exists() else f"{name} is not a file")
        if not model.takes_tokens:
            seqs.append(read_numeric(path))
        elif path.suffix.lower() == ".npy":
            try:
                ids = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read token ids from {name}: {exc}") from None
            seqs.append(ids)
        else:
            try:
                seqs.append(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputError(f"{name} is not UTF-8 text (byte {exc.start}); token models read text files") from None
            except OSError as exc:
                raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    return seqs


def _read_interventions(values: list[str]):
    """Each --intervene value: inline JSON (an object or a list) or the path of a JSON file."""
    from .interventions import InterventionError, interventions_from_json, load_interventions

    out = []
    for value in values:
        try:
            if value.lstrip().startswith(("{", "[")):
                out.extend(interventions_from_json(value))
            else:
                out.extend(load_interventions(value))
        except InterventionError as exc:
            raise InterventionError(f"--intervene: {exc}") from None
    return out


def cmd_trace(args) -> int:
    from .atomic import writable_target
    from .hdf5 import TraceFileError, save_trace
    from .probes import match_probes
    from .run import DEFAULT_CHUNK, run
    from .budget import RunTooLarge, parse_size

    if args.chunk is not None and args.chunk < 1:
        raise CLIError("--chunk must be a positive number of steps")
    from .corpus.cli_record import cmd_trace_corpus, refuse_corpus_options
    if args.corpus is not None and args.initial_state is not None:
        raise CLIError("--initial-state applies to --text and --input runs; a --corpus run starts each sequence "
                       "from zeros")
    if args.corpus is not None:  # a whole corpus, streamed (engine/corpus/)
        return cmd_trace_corpus(args, lambda a: _load_model(a.model, a.config, a.device, not a.no_strict))
    refuse_corpus_options(args)
    out = Path(args.output)
    writable_target(out, "trace file", TraceFileError)  # -o /dev/null, a folder...: refused before running
    model = _load_model(args.model, args.config, args.device, not args.no_strict)
    inputs = [args.text] if args.text is not None else _read_inputs(model, args.input)
    try:
        match_probes(args.probes, [s.name for s in model.probe_specs()])
    except KeyError as exc:
        raise CLIError(str(exc.args[0])) from None
    interventions = _read_interventions(args.intervene)
    start = None
    if args.initial_state is not None:  # engine/initial_state_files.py
        from .initial_state_files import initial_state_for, split_step
        state_file, step = split_step(args.initial_state)
        start = initial_state_for(model, state_file, len(inputs), step)
    max_bytes = parse_size(args.max_memory) if args.max_memory is not None else None

    longest = max((len(x) for x in inputs), default=0)
    show = args.progress if args.progress is not None else (longest >= LONG_INPUT and sys.stderr.isatty())
    bar = ProgressBar(sys.stderr, label=f"tracing {out.name}") if show else None
    t0 = time.monotonic()
    try:
        trace = run(model, inputs, probes=args.probes, interventions=interventions,
                    chunk=args.chunk or DEFAULT_CHUNK, progress=bar, max_bytes=max_bytes, initial_state=start)
    except RunTooLarge as exc:
        raise CLIError(exc.explain("--max-memory {size}")) from None
    finally:
        if bar is not None:
            bar.close()
    save_trace(trace, out, dtype=args.dtype, compression=args.compression)
    seconds = time.monotonic() - t0
    n_iv = len(interventions)
    print(f"wrote {_shown(out)}: {trace.n_sequences} sequence{'s' if trace.n_sequences != 1 else ''}, "
          f"{_fmt_int(trace.n_tokens)} tokens, {len(trace.probes)} probe{'s' if len(trace.probes) != 1 else ''}"
          f"{f', {n_iv} intervention' + ('s' if n_iv != 1 else '') if n_iv else ''}, "
          f"{_fmt_bytes(out.stat().st_size)} in {seconds:.1f} s"
          f"{f', starting from the state in {_shown(args.initial_state)}' if start is not None else ''}")
    for note in trace.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    return 0


# -- export-lstmvis ------------------------------------------------------------------------


def cmd_export_lstmvis(args) -> int:
    from .hdf5 import export_lstmvis, load_trace

    trace = load_trace(args.trace)
    if args.sequence is not None and not 0 <= args.sequence < trace.n_sequences:
        raise CLIError(f"--sequence {args.sequence}: the trace has sequences 0..{trace.n_sequences - 1}")
    folder = export_lstmvis(trace, args.folder, probes=args.probes, sequence=args.sequence)
    print(f"wrote LSTMVis project {_shown(folder)} (lstm.yml, states.h5, words.dict) from {_shown(args.trace)}")
    return 0


HANDLERS = {"info": cmd_info, "trace": cmd_trace, "export-lstmvis": cmd_export_lstmvis}
HANDLERS.update({name: handler for m in _command_modules() for name, (_add, handler) in m.COMMANDS.items()})


# -- entry point ---------------------------------------------------------------------------


def _looks_like_path(word: str) -> bool:
    return "/" in word or os.sep in word or word.startswith(("~", ".")) or bool(Path(word).suffix)


def _not_a_command(word: str) -> str:
    """What to say about a first argument that is neither a command nor an existing path."""
    if _looks_like_path(word):
        return f"{word}: no such file or folder"
    return (f"unknown command {word!r}; commands: {', '.join(COMMANDS)}; "
            f"or give a model file or folder to open it in the window ({PROG} --help)")


def _start_app(argv: list[str]) -> int:
    """Start the desktop workbench (``seqscope`` with no command).  (Imported here lazily,
    never at module level: ``engine`` does not import Qt.)"""
    try:
        from workbench.app import main as app_main
    except ImportError:
        print(f"{PROG}: error: the window is not installed (the workbench package is missing); "
              f"the commands work: {PROG} --help", file=sys.stderr)
        return 2
    try:
        return app_main(argv)
    except SystemExit as exc:  # the window's own argument errors (already printed) and --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2


def main(argv: list[str] | None = None) -> int:
    """Run the ``seqscope`` command line; returns the exit status (0 ok, 2 error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        if argv and not argv[0].startswith("-") and not Path(argv[0]).exists():
            print(f"{PROG}: error: {_not_a_command(argv[0])}", file=sys.stderr)
            return 2
        return _start_app(argv)
    try:
        with raising_signals():  # Ctrl-C and SIGTERM unwind through every cleanup
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 0
            status = HANDLERS[args.command](args)
            sys.stdout.flush()  # a reader that stopped early (| head) is met here, not at exit
            return status
    except BrokenPipeError:  # the reader closed the pipe: nothing more to say, and no traceback
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141  # as when SIGPIPE ends a command
    except SeqScopeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except KeyboardInterrupt as exc:
        how = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
        print(f"\n{PROG}: interrupted ({how}); no partial output was left", file=sys.stderr)
        return exc.exit_status if isinstance(exc, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
