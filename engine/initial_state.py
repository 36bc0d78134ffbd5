"""Initial and final recurrent states: running a model from a state other than zeros (the
decoder of an encoder–decoder, a continuation of an earlier run) and reading the state a run
ended in.

A state is a dict keyed by probe-like names, one entry per part of each layer's recurrent
state, each ``[*shape]`` (the same state for every sequence) or ``[sequences, *shape]`` (one
per sequence); ``model.state_shapes()`` lists the parts with their shapes.  The classic stacks:
``layers.{k}.h`` (and ``layers.{k}.c`` for an LSTM layer), each ``[width]``; a bidirectional
layer's width holds both directions, forward first, as its probes do; its backward direction
starts from its half at the sequence's last token.  The chunked families name their parts in
``state_parts`` (:mod:`engine.models.layer_state`; each family's module docstring lists them):
``layers.{k}.state`` (or ``.h``) as that probe shows it, a short convolution's last inputs
``layers.{k}.conv_window…`` ``[K-1, width]`` oldest first, RWKV's token-shift inputs
``layers.{k}.last_…``, xLSTM's ``normalizer`` and ``m``; a part of several dimensions may also
be given flattened (as a project file keeps it).  Layers left out start from their own zero
state; a layer's state is all its parts (an LSTM's h and c) or none.

``engine.run(model, inputs, initial_state=...)`` takes such a dict or a :class:`Trace`, whose
final state it continues from (:func:`final_state`).  The trace records the state it started
from (``trace.initial_state``, every layer, zeros included) and the state it ended in
(``trace.final_state``: for the classic stacks each layer whose state probes were recorded, for
the chunked families every layer; each sequence's state after its own last token; a backward
direction's at the first).  Trace files keep both (``/initial_state/<name>`` and
``/final_state/<name>``, ``[sequences, *shape]``).  The prefix cache reuses a run only when it
started from the same state.

Families that take no initial state (RetNet and RecurrentGemma: their rotary positions count
from a run's start) are refused in words that name those that do (:data:`STATE_FAMILIES`).
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


#: the families besides the classic LSTM/GRU/RNN stacks that take an initial state
STATE_FAMILIES = "HGRN, LRU, minGRU/minLSTM, Mamba, Mamba2, GLA, (gated) DeltaNet, RWKV-4, RWKV-7 and xLSTM"


def no_state_reason(model) -> str:
    """Why ``model`` takes no initial state, in one sentence."""
    return (f"this {getattr(model, 'architecture', '')} model always starts from its zero state: initial states "
            f"are for the classic LSTM/GRU/RNN stacks and the {STATE_FAMILIES} models")


def state_shapes(model) -> dict[str, tuple[int, ...]] | None:
    """``{name: shape of one sequence's part}`` of ``model``'s state, or None where it takes none."""
    return model.state_shapes() if hasattr(model, "state_shapes") else None


def prepare(model, initial_state, n_sequences: int):
    """``initial_state`` (a dict of arrays or a Trace) checked against ``model`` for a batch of
    ``n_sequences``: returns ``(for_forward, record)``, the per ``(layer, direction)`` states
    :meth:`forward` starts from and ``{name: [sequences, *shape]}`` arrays for the trace."""
    shapes = state_shapes(model)
    if shapes is None:
        raise InputError(f"initial_state is not supported here: {no_state_reason(model)}")
    if isinstance(initial_state, Trace):
        arrays = final_state(initial_state)
        missing = [n for n in shapes if n not in arrays]
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
    unknown = [str(n) for n in arrays if n not in shapes]
    if unknown:
        raise InputError(f"{source} names {', '.join(unknown[:5])}, which this model's state does not have; "
                         f"its state is {describe_shapes(shapes)}")
    given = {name: _rows(arrays[name], name, shape, n_sequences, source)
             for name, shape in shapes.items() if name in arrays}
    for name in shapes:  # a layer's state is all its parts (an LSTM's h and c) or none of them
        layer = name.rsplit(".", 1)[0] + "."
        others = [n for n in shapes if n.startswith(layer) and n != name]
        lacking = [n for n in others if n not in given]
        if name in given and lacking:
            what = "an LSTM layer's state is both" if not hasattr(model, "named_state") \
                else f"a layer's state is all of {', '.join([name] + others)}"
            raise InputError(f"{source} gives {name} but not {', '.join(lacking)}: {what}")
    zeros = _own_start(model, n_sequences)
    record = {n: given[n] if n in given else zeros.get(n, np.zeros((n_sequences,) + s)) for n, s in shapes.items()}
    dtype, device = model.dtype, model.device
    tensors = {n: torch.as_tensor(a, dtype=dtype, device=device) for n, a in given.items()}
    out_dtype = np.float64 if dtype == torch.float64 else np.float32
    record = {n: a.astype(out_dtype) for n, a in record.items()}
    return model.split_initial_state(tensors), record


def describe_shapes(shapes: dict) -> str:
    """``layers.0.h [4], layers.0.ssm [8, 4]`` …"""
    return ", ".join(f"{n} [{', '.join(str(d) for d in s)}]" for n, s in shapes.items())


def _own_start(model, n: int) -> dict[str, np.ndarray]:
    """The state a chunked family starts from by itself, by name (zeros, or RWKV's own values)."""
    if not hasattr(model, "named_state"):
        return {}
    out = {}
    for k in range(model.num_layers):
        out.update({name: t.detach().cpu().double().numpy() for name, t in
                    model.named_state(k, model.initial_state(n)).items()})
    return out


def _rows(value, name: str, shape: tuple, n: int, source: str) -> np.ndarray:
    """``value`` as ``[n, *shape]`` float64, or an InputError saying what is wrong with it.  Taken:
    ``shape`` (the same state for every sequence), ``[n, *shape]``, and (a state of several
    dimensions) its values flattened, as a project file keeps them."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}[{name!r}] is not an array of numbers") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise InputError(f"{source}[{name!r}] should hold numbers, not {a.dtype}")
    shape = tuple(shape)
    if len(shape) > 1 and a.ndim == 1 and a.size == int(np.prod(shape)):
        a = a.reshape(shape)
    if a.ndim == len(shape):
        a = a[None]
    if a.shape[1:] != shape or a.shape[0] not in (1, n):
        dims = ", ".join(str(d) for d in shape)
        raise InputError(f"{source}[{name!r}] has shape {list(np.shape(value))}; it should be [{dims}] (the same "
                         f"state for every sequence) or [{n}, {dims}] (one row for each of the {n} sequence"
                         f"{'s' if n != 1 else ''})")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{source}[{name!r}] holds NaN or infinity")
    return np.repeat(a, n, axis=0) if a.shape[0] == 1 and n > 1 else a


def attention_notes(initial: dict | None, probes) -> list[str]:
    """The trace's note that implicit attention leaves out a state other than zeros."""
    if initial is None or not any(np.any(a) for a in initial.values()) or not any(p.endswith(".attn") for p in probes):
        return []
    return ["the run started from a state other than zeros: the implicit attention (attn) weighs this run's inputs "
            "only, and the initial state's share of each output is not in it"]


def same_state(a: dict | None, b: dict | None) -> bool:
    """Whether two recorded initial states are equal (the prefix cache reuses a run only then)."""
    a, b = a or {}, b or {}
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
