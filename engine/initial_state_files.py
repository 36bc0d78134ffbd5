"""Initial states from files: what ``seqscope trace --initial-state FILE`` and the window's
Run ▸ Start from a trace's final state… read, usable from a notebook too.

A FILE is one of

- a SeqScope trace file (HDF5, written by ``seqscope trace -o`` or :func:`engine.save_trace`):
  its ``/final_state``, the state each of its sequences ended in (only that group and the
  sequence offsets are read, checked like the rest of a trace: :func:`engine.hdf5_read.load_state`);
- a NumPy ``.npz`` (``np.savez(path, **engine.final_state(trace))``) or a ``.safetensors`` file
  holding arrays named like the state probes, ``layers.0.h``, ``layers.0.c``, … (or another
  family's parts, ``model.state_shapes()``) — each ``[width]`` / ``[*shape]`` (one state for
  every sequence) or ``[sequences, width]`` / ``[sequences, *shape]``.  Every ``.npy`` header
  is checked before its data is read: numbers only, never objects (no pickle is ever loaded).

The kind is told by the file's first bytes, not its name.  :func:`read_initial_state` returns the
arrays; :func:`initial_state_for` also checks them against a model and a number of sequences,
with refusals that name the file, what it holds and what the model needs.

    >>> state = read_initial_state("encoder.h5")                   # {name: [sequences, width]}
    >>> trace = engine.run(decoder, text, initial_state=state)
"""
from __future__ import annotations

import os

import numpy as np

from .errors import InputError, SeqScopeError
from .limits import display_name, open_regular

#: a state is a few kilobytes per sequence; an .npz or .safetensors file of more is not one
MAX_STATE_FILE_BYTES = 1 << 30
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
KINDS = "a SeqScope trace file (.h5), a NumPy .npz or a .safetensors file of arrays named layers.0.h, layers.0.c, …"


class InitialStateError(SeqScopeError):
    """An initial-state file that cannot be used for this run, with the reason and the way out."""


def file_kind(path) -> str:
    """``"trace"``, ``"npz"`` or ``"safetensors"``, from the file's first bytes; a folder or a
    pipe is a LoadError, another format an InitialStateError."""
    with open_regular(path, "initial-state file") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if head.startswith(HDF5_MAGIC):
        return "trace"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if str(path).lower().endswith(".safetensors"):
        return "safetensors"  # its reader says what is wrong with it
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"  # an 8-byte header length, then the JSON header
    raise InitialStateError(f"{display_name(path)} is not an initial-state file: give {KINDS}")


def split_step(spec: str) -> tuple[str, int | None]:
    """``"enc.h5:12"`` as ``("enc.h5", 12)``, ``"enc.h5"`` as ``("enc.h5", None)``; a file
    whose own name ends in ``:12`` is that file."""
    path, sep, tail = str(spec).rpartition(":")
    if sep and path and tail.isascii() and tail.isdigit() and not os.path.lexists(spec):
        return path, int(tail)
    return str(spec), None


def read_initial_state(path, step: int | None = None) -> dict[str, np.ndarray]:
    """The state arrays ``path`` holds, ``{name: array}``: a trace file's ``/final_state``
    (``[sequences, width]`` each), or with ``step`` the state each of its sequences was in after
    that step (0 is the first), read from the state probes it recorded.  A damaged, hostile or
    foreign file is a SeqScopeError in one sentence; nothing in it is ever executed."""
    kind = file_kind(path)
    if kind == "trace":
        return _trace_state(path, step)
    if step is not None:
        raise InitialStateError(f"{display_name(path)}:{step}: a step can be named only for a trace file, whose "
                                f"state probes hold the state after each step; this is a .{kind} file")
    size = os.stat(path).st_size
    if size > MAX_STATE_FILE_BYTES:
        raise InitialStateError(f"{display_name(path)} is {size:,} bytes, more than the {MAX_STATE_FILE_BYTES:,} a "
                                "file of initial states may hold; save only the states (layers.*.h, layers.*.c)")
    return _arrays(path, kind)


def _arrays(path, kind: str) -> dict[str, np.ndarray]:
    """The numeric arrays of an .npz or .safetensors file, read by the checkpoint readers
    (headers checked, sizes bounded, numbers only)."""
    from pathlib import Path

    from .loading.npz_files import _read_npz
    from .loading.safetensors_files import _read_safetensors

    found = _read_npz(Path(path)) if kind == "npz" else _read_safetensors(Path(path))
    if found.extras:  # text arrays: a vocabulary, not a state
        raise InitialStateError(f"{display_name(path)} holds text ({', '.join(sorted(found.extras)[:3])}); an "
                                "initial-state file holds only the state arrays, layers.0.h, layers.0.c, …")
    out = {}
    for name, t in found.tensors.items():
        if t.is_floating_point() and t.dtype.itemsize < 4:  # bfloat16 has no NumPy type
            t = t.float()
        out[name] = t.numpy()
    return out


def _trace_state(path, step: int | None) -> dict[str, np.ndarray]:
    from .hdf5_read import trace_reader

    with trace_reader(path) as reader:
        offsets = reader.array("sequences/offsets", "iu", (1,)).astype(np.int64)
        final = reader.state("final_state", len(offsets) - 1)
        if not final:
            raise InitialStateError(
                f"{display_name(path)} holds no final state: it was written before SeqScope kept one, or its run "
                "recorded no state probes; trace it again with the default --probes '*' (or with layers.*.h and "
                "layers.*.c among them)")
        return final if step is None else _after_step(reader, display_name(path), offsets, final, step)


def _after_step(reader, name: str, offsets: np.ndarray, final: dict, step: int) -> dict[str, np.ndarray]:
    """The rows of the state probes at ``step`` of each sequence (the probes the final state was
    read from, so a layer's h and c are the very arrays the run carried on with)."""
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise InitialStateError(f"{name}: the step must be a whole number, 0 for the first step, not {step!r}")
    lengths = np.diff(offsets)
    if lengths.size and step >= lengths.min():
        k = int(np.argmin(lengths))
        raise InitialStateError(f"{name}:{step}: its sequence {k} has {int(lengths[k])} steps (0..{int(lengths[k]) - 1})"
                                f"; name a step every sequence reached")
    rows = (offsets[:-1] + step).tolist()
    out = {}
    for probe, last in final.items():
        ds = reader.obj(f"probes/{probe}", "dataset", optional=True)
        if ds is None:
            raise InitialStateError(f"{name} did not record the probe {probe} at each step, only its final state: "
                                    "trace it with the state probes (the default --probes '*') to start after a step")
        if ds.dtype.kind != "f" or ds.ndim != 2 or ds.shape != (int(offsets[-1]), last.shape[1]):
            reader.fail(f"probes/{probe} ({ds.dtype}, {tuple(ds.shape)}) does not fit its final state")
        if ds.dtype.itemsize < last.dtype.itemsize:
            raise InitialStateError(f"{name} stores {probe} as {ds.dtype}, rounded from the run's {last.dtype}: a "
                                    "state after a step would not be the run's; trace it without --dtype")
        if reader.attr(ds, "directions", int, 1) != 1:
            raise InitialStateError(f"{name}:{step}: {probe} is bidirectional, and a backward direction's state "
                                    "after a step is no place to continue from; start from its final state instead")
        reader.check_stored(ds, f"probes/{probe}")
        out[probe] = np.asarray(ds[rows, :], dtype=last.dtype) if rows else last[:0]
    return out


def initial_state_for(model, path, n_sequences: int, step: int | None = None) -> dict[str, np.ndarray]:
    """The state in ``path`` (after ``step`` of a trace file; by default its final state)
    checked against ``model`` for a run of ``n_sequences``: the arrays to pass as
    ``engine.run(..., initial_state=...)``, or an :class:`InitialStateError` that says what the
    file holds and what the model needs."""
    from .initial_state import describe_shapes, no_state_reason, state_shapes

    name = display_name(path) + (f":{step}" if step is not None else "")
    shapes = state_shapes(model)
    if shapes is None:
        raise InitialStateError(no_state_reason(model))
    if step is not None and any(any(dirs) for dirs in getattr(model, "backward", ())):
        raise InitialStateError(f"{name}: this model has a layer that reads its input last to first, so the "
                                "state after a step is no place to continue from; start from the final state")
    if step is not None and hasattr(model, "named_state"):  # a convolution window is no probe
        raise InitialStateError(f"{name}: a step can be named only for the classic LSTM/GRU/RNN stacks, whose state "
                                f"probes hold the whole state; for this {model.architecture} model trace the first "
                                f"{step + 1} steps and start from that trace's final state")
    kind = file_kind(path)
    state = read_initial_state(path, step)
    expected = describe_shapes(shapes)
    if kind == "trace":
        missing = [n for n in shapes if n not in state]
        if missing:
            raise InitialStateError(
                f"{name} holds no final state for {', '.join(missing[:4])}, which this model's state has "
                f"({expected}): trace it with this model and those probes recorded")
        rows = {len(a) for a in state.values()}
        if len(rows) == 1 and rows.pop() not in (1, n_sequences):
            count = len(next(iter(state.values())))
            raise InitialStateError(
                f"{name} holds the final states of {count} sequences and this run has {n_sequences}: give one "
                f"input per sequence of that trace, in the same order (or a trace of one sequence, whose state "
                f"every sequence starts from)")
    unknown = [n for n in state if n not in shapes]
    if unknown:
        raise InitialStateError(f"{name} holds {', '.join(unknown[:4])}, which this model's state does not have; "
                                f"its state is {expected}")
    check_fits(model, state, n_sequences, name)
    return state


def check_fits(model, state: dict, n_sequences: int, name: str) -> None:
    """Whether ``engine.run`` would take ``state`` for ``n_sequences`` (its shapes, the halves
    of an LSTM's state, its values), as an :class:`InitialStateError` naming ``name``."""
    from .initial_state import prepare

    try:
        prepare(model, state, n_sequences)
    except InputError as exc:
        raise InitialStateError(f"{name} does not fit this model: {exc}") from None


__all__ = ["InitialStateError", "read_initial_state", "initial_state_for", "check_fits", "file_kind", "split_step"]
