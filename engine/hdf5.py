"""Trace files (HDF5) and LSTMVis project export.

Layout of a trace file (DESIGN.md §3, ``schema_version`` 1)::

    /                     attrs: format="seqscope-trace", schema_version=1, seqscope_version, created,
                                 interventions (JSON list of Intervention.to_dict()),
                                 notes (JSON list of sentences about the run; may be absent)
    /model                attrs: architecture, source, config (JSON string), parameter_count,
                                 and any other model_info entry (dtype, device, ...)
    /tokens/ids           int32   [N]      all sequences concatenated
    /tokens/text          utf-8   [N]      absent for numeric inputs
    /sequences/offsets    int64   [S+1]    sequence s is tokens offsets[s]:offsets[s+1]
    /inputs/values        float32 [N, F]   numeric inputs, when the input was numeric
    /probes/<probe name>  float   [N, ...] chunked along tokens; attrs: name, dims, description,
                                           shape, layer, site, directions
    /logits               float   [N, V]   optional; same attrs as a probe
    /initial_state/<name> float   [S, W]   optional: the recurrent state the run started from
                                           (``layers.0.h``, ``layers.0.c`` …; engine.initial_state;
                                           [S, *shape] for a part such as Mamba's ``layers.0.ssm``)
    /final_state/<name>   float   [S, W]   optional: the state each sequence ended in

Arrays keep the dtype they have in the trace (float32 normally; a float64 trace stays
float64) unless ``save_trace(dtype=...)`` asks for another (float16 for smaller files).

Probe names keep their dots (``/probes/layers.0.h``): dots are ordinary characters in HDF5
names.  ``/probes`` carries an attr ``order`` (JSON list) so the probes, ``logits`` included,
come back in the order they were captured.

Token texts are stored verbatim.  HDF5 strings cannot hold a NUL character (nor can UTF-8 hold
a lone surrogate), so when a token has one, every text is stored ``unicode_escape``-d and the
dataset's attr ``encoding`` says so; the reader undoes it.

Writing is atomic and safe (:mod:`engine.atomic`, :mod:`engine.hdf5_writer`): the file is written
under a short temporary name in the target's folder, synced, then renamed onto the target.  A
failure (a full disk, Ctrl-C, SIGTERM, a bug) removes the temporary and leaves whatever was at the
target untouched; HDF5 never sees a failed write, so a full disk is one sentence, not a crash.
Only a regular file is ever replaced.  An LSTMVis folder is replaced as a whole.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np

from .atomic import replacing_folder, write_text
from .errors import SeqScopeError
from .hdf5_writer import write_hdf5
from .probes import ProbeSpec, match_probes, parse_probe
from .trace import Trace

FORMAT = "seqscope-trace"
SCHEMA_VERSION = 1
CHUNK_ROWS = 4096  # at most this many tokens per HDF5 chunk
CHUNK_BYTES = 1 << 20  # and at most about this many bytes
FLOAT_DTYPES = ("float16", "float32", "float64")


class TraceFileError(SeqScopeError):
    """A trace file could not be written or read; the message says which file and why."""


# -- helpers ---------------------------------------------------------------------------


def _version() -> str:
    from . import __version__

    return __version__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _chunk_rows(n: int, row_shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    return max(1, min(n, CHUNK_ROWS, CHUNK_BYTES // row_bytes))


def _encode_texts(texts) -> tuple[list[str], str | None]:
    def plain(s: str) -> bool:
        if "\x00" in s:
            return False
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    if all(plain(s) for s in texts):
        return list(texts), None
    return [s.encode("unicode_escape").decode("ascii") for s in texts], "unicode_escape"


def _spec_for(name: str, trace: Trace, arr: np.ndarray) -> ProbeSpec:
    spec = trace.specs.get(name)
    if spec is not None:
        return spec
    layer, site = parse_probe(name)
    dims = ("token",) + tuple(f"dim{k}" for k in range(1, arr.ndim))
    return ProbeSpec(name, tuple(arr.shape[1:]), dims, "", layer=layer, site=site if layer is not None else "")


def _write_spec_attrs(ds, spec: ProbeSpec) -> None:
    ds.attrs["name"] = spec.name
    ds.attrs["dims"] = [str(d) for d in spec.dims]
    ds.attrs["description"] = spec.description
    ds.attrs["shape"] = np.asarray(spec.shape, dtype=np.int64)
    ds.attrs["layer"] = -1 if spec.layer is None else int(spec.layer)
    ds.attrs["site"] = spec.site
    ds.attrs["directions"] = int(spec.directions)


def write_model_attrs(model, model_info) -> None:
    """The attrs of ``/model`` (``model``: the h5py group) from a trace's ``model_info``."""
    info = dict(model_info)
    encoded = []
    for key in ("architecture", "source", "config", "parameter_count"):
        info.setdefault(key, "" if key != "parameter_count" else 0)
    for key, value in info.items():
        if isinstance(value, (bool, np.bool_)):
            model.attrs[key] = json.dumps(bool(value))
            encoded.append(key)
        elif isinstance(value, (int, np.integer)):
            model.attrs[key] = np.int64(value)
        elif isinstance(value, (float, np.floating)):
            model.attrs[key] = np.float64(value)
        elif isinstance(value, str):
            model.attrs[key] = value
        else:  # dicts, lists, None: JSON, and remembered so they come back as they were
            model.attrs[key] = json.dumps(value, default=str)
            encoded.append(key)
    model.attrs["json_encoded"] = json.dumps(encoded)


# -- save ------------------------------------------------------------------------------


def save_trace(trace: Trace, path, *, probes=None, dtype=None, compression=None) -> Path:
    """Write ``trace`` to an HDF5 trace file at ``path`` (atomically; see the module doc).

    ``probes``: globs choosing which probes to keep (default: all, ``logits`` included).
    ``dtype``: ``"float16"``/``"float32"``/``"float64"`` for the probe arrays and logits
    (default: as in the trace).  ``compression``: ``None``, ``"gzip"``, ``"lzf"`` or a gzip
    level 0-9.
    """
    import h5py

    if not isinstance(trace, Trace):
        raise TypeError(f"save_trace needs a Trace, got {type(trace).__name__}")
    if probes is None:
        names = list(trace.arrays)
    else:
        try:
            names = match_probes(probes, list(trace.arrays))
        except KeyError as exc:
            raise TraceFileError(str(exc.args[0])) from None
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.name not in FLOAT_DTYPES:
            raise TraceFileError(f"trace arrays are stored as {', '.join(FLOAT_DTYPES)}, not {dtype}")
    comp = {}
    if compression is not None:
        if isinstance(compression, bool) or (isinstance(compression, int) and not 0 <= compression <= 9):
            raise TraceFileError(f"compression must be None, 'gzip', 'lzf' or a gzip level 0-9, got {compression!r}")
        if isinstance(compression, int):
            comp = {"compression": "gzip", "compression_opts": compression}
        elif compression in ("gzip", "lzf"):
            comp = {"compression": compression}
        else:
            raise TraceFileError(f"compression must be None, 'gzip', 'lzf' or a gzip level 0-9, got {compression!r}")
    interventions_json = json.dumps([iv.to_dict() for iv in trace.interventions])
    n = trace.n_tokens

    def fill(f, check):
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["seqscope_version"] = _version()
        f.attrs["created"] = trace.created or _now()
        f.attrs["interventions"] = interventions_json
        f.attrs["notes"] = json.dumps(list(trace.notes))

        write_model_attrs(f.create_group("model"), trace.model_info)
        check()

        tokens = f.create_group("tokens")
        tokens.create_dataset("ids", data=np.asarray(trace.tokens, dtype=np.int32))
        if trace.token_text is not None:
            texts, encoding = _encode_texts(trace.token_text)
            ds = tokens.create_dataset("text", data=np.array(texts, dtype=object) if texts else None,
                                       shape=(len(texts),), dtype=h5py.string_dtype("utf-8"))
            ds.attrs["encoding"] = encoding or "utf-8"
        f.create_group("sequences").create_dataset("offsets", data=np.asarray(trace.offsets, dtype=np.int64))
        if trace.inputs is not None:
            f.create_group("inputs").create_dataset("values", data=np.asarray(trace.inputs, dtype=np.float32))
        check()

        group = f.create_group("probes", track_order=True)
        group.attrs["order"] = json.dumps(names)
        for name in names:
            arr = trace.arrays[name]
            out_dtype = dtype if dtype is not None else arr.dtype
            if out_dtype.name not in FLOAT_DTYPES:
                out_dtype = np.dtype(np.float32)
            where = f if name == "logits" else group
            rows = _chunk_rows(n, arr.shape[1:], out_dtype.itemsize)
            ds = where.create_dataset(name, shape=arr.shape, dtype=out_dtype,
                                      chunks=(rows,) + tuple(arr.shape[1:]) if n else None,
                                      **(comp if n else {}))
            row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * out_dtype.itemsize)
            step = max(rows, (4 * CHUNK_BYTES) // row_bytes // rows * rows)  # ~4 MiB per write (and check)
            for start in range(0, n, step):
                stop = min(n, start + step)
                ds[start:stop] = arr[start:stop].astype(out_dtype, copy=False)
                check()  # a full disk or a Ctrl-C stops the write here
            _write_spec_attrs(ds, _spec_for(name, trace, arr))
            check()
        for which in ("initial_state", "final_state"):
            state = getattr(trace, which)
            if state:
                g = f.create_group(which, track_order=True)
                for name, arr in state.items():
                    g.create_dataset(name, data=arr)
        check()

    return write_hdf5(path, fill, "trace file", TraceFileError)


# -- load ------------------------------------------------------------------------------
# Reading checks every object before it reads it; that lives in engine/hdf5_read.py.


def check_trace_file(f, path) -> None:
    """Refuse files that are not SeqScope traces or come from a newer schema."""
    from .hdf5_read import check_trace_file as check

    check(f, path)


def load_trace(path) -> Trace:
    """Read a trace file written by :func:`save_trace`; a damaged or foreign file is a
    ``TraceLoadError`` (a ``TraceFileError`` and a ``LoadError``) in one sentence."""
    from .hdf5_read import load_trace as load

    return load(path)


# -- LSTMVis export --------------------------------------------------------------------

_STAND_INS = {"\n": "<nl>", "\t": "<tab>", " ": "<space>", "\r": "<cr>"}


def lstmvis_word(text: str) -> str:
    """A token's text as one visible LSTMVis dictionary word: no whitespace, nothing invisible."""
    if text == "":
        return "<empty>"
    out = []
    for ch in text:
        if ch in _STAND_INS:
            out.append(_STAND_INS[ch])
        elif ch.isspace() or not ch.isprintable():
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out)


def _yaml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _yaml(obj, indent: int = 0) -> list[str]:
    """A tiny YAML emitter for dicts, lists and scalars (enough for lstm.yml)."""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.extend(_yaml(v, indent + 1))
            elif isinstance(v, (dict, list)):  # empty
                lines.append(f"{pad}{k}: {'{}' if isinstance(v, dict) else '[]'}")
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and v:
                sub = _yaml(v, indent + 1)
                lines.append(f"{pad}- " + sub[0].lstrip())
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
    else:
        lines.append(pad + _yaml_scalar(obj))
    return lines


LSTMVIS_FILES = ("lstm.yml", "states.h5", "words.dict")  # what an export folder holds


def _lstmvis_path(name: str) -> str:
    return name.replace(".", "_").replace("/", "_")


def export_lstmvis(trace, folder, *, probes=None, sequence: int | None = None) -> Path:
    """Write an LSTMVis project folder: ``lstm.yml``, ``states.h5`` (one tokens x cells float32
    dataset per probe plus the word ids) and ``words.dict``.

    ``trace``: a :class:`Trace` or a trace file path.  ``probes``: globs (default: every
    per-layer probe; ``embed`` and ``logits`` only when asked for).  Probes with more than one
    axis per token are flattened to cells.  ``sequence``: export one sequence (default: all of
    them, concatenated, as LSTMVis reads one long sequence).  Cell states ``c`` are declared
    as LSTMVis ``state``, hidden states ``h`` as ``output``, anything else as ``state``.
    Token models use their token ids as word ids; numeric inputs use the step index.

    The folder is written as a whole: built in a temporary folder beside it and swapped in when
    complete, so a failure leaves an old export as it was.  A folder that holds anything but an
    export's three files is refused, not replaced.
    """
    if isinstance(trace, (str, os.PathLike)):
        trace = load_trace(trace)
    folder = Path(folder)
    try:
        is_file = folder.exists() and not folder.is_dir()
    except (OSError, ValueError):  # a name too long, a NUL: replacing_folder below says so in words
        is_file = False
    if is_file:
        raise TraceFileError(f"cannot export to {folder}: it is a file, not a folder")
    available = list(trace.arrays)
    if probes is None:
        names = [n for n in available if (trace.specs.get(n) and trace.specs[n].layer is not None)
                 or parse_probe(n)[0] is not None]
        if not names:
            names = [n for n in available if n != "logits"] or available
    else:
        try:
            names = match_probes(probes, available)
        except KeyError as exc:
            raise TraceFileError(str(exc.args[0])) from None
    if not names:
        raise TraceFileError("the trace has no probes to export; run with probes such as 'layers.*.h'")
    rows = slice(None) if sequence is None else trace.sequence_slice(sequence)

    states = {}
    for name in names:
        a = np.asarray(trace.arrays[name][rows])
        a = a.reshape(a.shape[0], -1).astype(np.float32)
        bad = ~np.isfinite(a)
        if bad.any():
            t, c = np.argwhere(bad)[0]
            raise TraceFileError(
                f"probe {name} has a non-finite value ({a[t, c]}) at token {t}, cell {c}; LSTMVis cannot "
                f"show NaN or inf states (its server takes tanh and sends JSON)")
        states[name] = a

    ids = np.asarray(trace.tokens[rows], dtype=np.int64)
    if trace.inputs is not None:  # numeric inputs: the word of step t is "t<t>"
        words = {i: f"t{i}" for i in np.unique(ids).tolist()}
    elif trace.token_text is not None:
        words = {}
        for i, text in zip(ids.tolist(), trace.token_text[rows]):
            words.setdefault(i, lstmvis_word(text))
    else:
        words = {i: f"<{i}>" for i in np.unique(ids).tolist()}
    seen, dict_lines = {}, []
    for i in sorted(words):
        w = words[i]
        if w in seen:  # two ids with the same visible word: keep both findable
            w = f"{w}<{i}>"
        seen[w] = i
        dict_lines.append(f"{w} {i}")

    info = trace.model_info
    arch = info.get("architecture", "model")
    source = Path(str(info.get("source", ""))).name
    types = []
    for name in names:
        spec = trace.specs.get(name)
        layer, site = parse_probe(name)
        site = spec.site if spec is not None and spec.site else site
        if layer is None:
            layer_no = 0 if name == "embed" else max((parse_probe(n)[0] or 0) for n in available) + 2
        else:
            layer_no = layer + 1  # LSTMVis counts layers from 1
        types.append({"type": "output" if site == "h" else "state", "layer": layer_no, "path": _lstmvis_path(name)})
    seq_note = f"sequence {sequence}" if sequence is not None else f"{trace.n_sequences} sequence(s)"
    config = {
        "name": f"SeqScope {arch}" + (f" ({source})" if source else ""),
        "description": (f"SeqScope trace of a {arch} model{f' from {source}' if source else ''}: {seq_note}, "
                        f"{len(ids)} tokens, created {trace.created}; probes " + ", ".join(names)),
        "files": {"states": "states.h5", "words_dict": "words.dict"},
        "word_sequence": {"file": "states", "path": "word_ids", "dict_file": "words_dict"},
        "states": {"file": "states", "types": types},
    }

    def fill_states(f, check):
        f.create_dataset("word_ids", data=ids.astype(np.int64))
        check()
        for name, a in states.items():
            ds = f.create_dataset(_lstmvis_path(name), data=a,
                                  chunks=(_chunk_rows(len(a), a.shape[1:], 4),) + a.shape[1:] if len(a) else None)
            ds.attrs["probe"] = name
            check()

    yml = "# LSTMVis project written by SeqScope " + _version() + "\n" + "\n".join(_yaml(config)) + "\n"
    with replacing_folder(folder, "LSTMVis project", owned=LSTMVIS_FILES, error=TraceFileError) as tmp:
        write_hdf5(tmp / "states.h5", fill_states, "LSTMVis states file")
        write_text(tmp / "words.dict", "\n".join(dict_lines) + "\n", "LSTMVis dictionary")
        write_text(tmp / "lstm.yml", yml, "LSTMVis config")
    return folder


__all__ = ["save_trace", "load_trace", "export_lstmvis", "TraceFileError", "FORMAT", "SCHEMA_VERSION",
           "lstmvis_word", "check_trace_file"]
