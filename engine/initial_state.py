"""Initial and final recurrent states: running a model from a state other than zeros (the
decoder of an encoder–decoder, a continuation of an earlier run) and reading the state a run
ended in.

A state is a dict keyed by probe names, one entry per part of each layer's recurrent state:
``layers.{k}.h`` (and ``layers.{k}.c`` for an LSTM layer), each ``[width]`` (the same state
for every sequence) or ``[sequences, width]`` (one row per sequence).  A bidirectional layer's
width holds both directions, forward first, as its probes do; its backward direction starts
from its half at the sequence's last token.  Layers left out start from zeros; an LSTM layer
needs both its ``h`` and its ``c``.

``engine.run(model, inputs, initial_state=...)`` takes such a dict or a :class:`Trace`, whose
final state it continues from (:func:`final_state`).  The trace records the state it started
from (``trace.initial_state``, every layer, zeros included) and the state it ended in
(``trace.final_state``: each layer whose state probes were recorded; a direction's final state
is at the last token it read).  Trace files keep both (``/initial_state/<name>`` and
``/final_state/<name>``, ``[sequences, width]``).

The classic LSTM/GRU/RNN stacks take an initial state; other families are refused in words.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .trace import Trace


def final_state(trace: Trace) -> dict[str, np.ndarray]:
    """The state ``trace``'s run ended in, ``{probe name: [sequences, width]}``, ready to pass
    as ``initial_state`` to the next run."""
    state = dict(trace.final_state or {})
    if not state:
        raise InputError("this trace holds no final state: record the state probes in the run "
                         "(probes 'layers.*.h' and, for LSTM layers, 'layers.*.c'; the default '*' records them)")
    return state


def prepare(model, initial_state, n_sequences: int):
    """``initial_state`` (a dict of arrays or a Trace) checked against ``model`` for a batch of
    ``n_sequences``: returns ``(for_forward, record)``, the per ``(layer, direction)`` tensors
    :meth:`forward` starts from and ``{name: [sequences, width]}`` arrays for the trace."""
    widths = model.state_widths() if hasattr(model, "state_widths") else None
    if widths is None:
        raise InputError(f"initial_state is supported for the classic LSTM/GRU/RNN stacks; this "
                         f"{getattr(model, 'architecture', 'model')} model always starts from its zero state")
    if isinstance(initial_state, Trace):
        arrays = final_state(initial_state)
        missing = [n for n in widths if n not in arrays]
        if missing:
            raise InputError(f"the trace given as initial_state holds no final state for {', '.join(missing)}: "
                             "record those probes in its run")
        source = "the trace's final state"
    elif isinstance(initial_state, dict):
        arrays = initial_state
        source = "initial_state"
    else:
        raise InputError(f"initial_state must be a dict {{probe name: array}} or a Trace, not a "
                         f"{type(initial_state).__name__}")
    unknown = [str(n) for n in arrays if n not in widths]
    if unknown:
        raise InputError(f"{source} names {', '.join(unknown[:5])}, which this model's state does not have; "
                         f"its state is {', '.join(f'{n} [{w}]' for n, w in widths.items())}")
    record, given = {}, {}
    for name, width in widths.items():
        if name not in arrays:
            record[name] = np.zeros((n_sequences, width), dtype=np.float64)
            continue
        given[name] = record[name] = _rows(arrays[name], name, width, n_sequences, source)
    for name in widths:  # an LSTM layer's h without its c (or c without h) is half a state
        if name.endswith(".c") or name.endswith(".h"):
            other = name[:-1] + ("c" if name.endswith(".h") else "h")
            if other in widths and (name in given) != (other in given):
                raise InputError(f"{source} gives {name} but not {other}: an LSTM layer's state is both")
    dtype, device = model.dtype, model.device
    tensors = {n: torch.as_tensor(a, dtype=dtype, device=device) for n, a in given.items()}
    out_dtype = np.float64 if dtype == torch.float64 else np.float32
    record = {n: a.astype(out_dtype) for n, a in record.items()}
    return model.split_initial_state(tensors), record


def _rows(value, name: str, width: int, n: int, source: str) -> np.ndarray:
    """``value`` as ``[n, width]`` float64, or an InputError saying what is wrong with it."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}[{name!r}] is not an array of numbers") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise InputError(f"{source}[{name!r}] should hold numbers, not {a.dtype}")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != width or a.shape[0] not in (1, n):
        raise InputError(f"{source}[{name!r}] has shape {list(np.shape(value))}; it should be [{width}] (the same "
                         f"state for every sequence) or [{n}, {width}] (one row for each of the {n} sequence"
                         f"{'s' if n != 1 else ''})")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{source}[{name!r}] holds NaN or infinity")
    return np.repeat(a, n, axis=0) if a.shape[0] == 1 and n > 1 else a


def same_state(a: dict | None, b: dict | None) -> bool:
    """Whether two recorded initial states are equal (the prefix cache reuses a run only then)."""
    a, b = a or {}, b or {}
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
