"""``run()``: inputs in, a :class:`Trace` out.  Batching, device, capture, and the
prefix-state cache that makes re-runs after an edit fast.

The prefix cache
----------------
A recurrent model's state at step ``t`` summarises everything before ``t``.  A
:class:`PrefixCache` keeps, for the last run it saw, the state of every layer at every
chunk boundary and the captured arrays.  When the next run has the same model and batch and
changes nothing before step ``d`` (same tokens, same interventions up to there), it starts
at the last boundary ``s <= d``, copies steps ``< s`` from the previous run, and computes
only the rest.  Because both runs cut the sequence at the same boundaries, the result equals
a full re-run exactly.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import initial_state as _initial
from .budget import check_budget, estimate_run_bytes, gpu_budget_for, resolve_budget
from .errors import InputError, SeqScopeError
from .interventions import Intervention, InterventionError, PatchSource
from .models.base import Resume
from .nonfinite import NONFINITE_NOTE, nonfinite_notes
from .probes import match_probes
from .trace import Trace

DEFAULT_CHUNK = 256  # steps between kept states; also the longest fused kernel call


@dataclass
class Sequence_:
    """One input sequence, ready to batch: token ids or numeric rows."""

    ids: np.ndarray | None = None  # int64 [L]
    values: np.ndarray | None = None  # float32/float64 [L, F]
    text: list[str] | None = None  # one string per token
    note: str | None = None  # what the trace's notes should say about this input

    def __len__(self):
        return len(self.ids) if self.ids is not None else len(self.values)

    def data(self) -> np.ndarray:
        return self.ids if self.ids is not None else self.values


def prepare_inputs(model, inputs) -> list[Sequence_]:
    """Accept text, token ids or a numeric array, or a list of any of them (one per sequence)."""
    if isinstance(inputs, (str, np.ndarray, torch.Tensor)) or _is_flat_ids(inputs):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise InputError("the input is empty: give text, token ids or a numeric array")
    seqs = [_one_sequence(model, x, n) for n, x in enumerate(inputs)]
    return seqs


def _is_flat_ids(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, (int, np.integer)) for v in x)


def _one_sequence(model, x, n: int) -> Sequence_:
    where = f"input {n}" if n else "the input"
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, str):
        if not model.takes_tokens:
            raise InputError("this model reads numeric sequences, not text; give a time x features array")
        if model.tokenizer is None:
            raise InputError("this model came without a vocabulary; give token ids instead of text")
        if not x:
            raise InputError(f"{where} is empty text: nothing to run")
        ids, pieces = model.tokenizer.encode(x)
        if len(ids) == 0:
            raise InputError(f"{where} produced no tokens")
        unknown = getattr(model.tokenizer, "unknown_note", None)
        note = unknown(x) if unknown is not None else None
        return Sequence_(ids=ids, text=pieces, note=f"input {n}: {note}" if note and n else note)
    arr = np.asarray(x)
    if arr.size == 0:
        raise InputError(f"{where} is empty: nothing to run")
    if model.takes_tokens:
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{where}: this model reads token ids (a 1-D integer array), got {arr.dtype} {arr.shape}")
        vocab = model.vocab_size
        bad = arr[(arr < 0) | (arr >= vocab)]
        if bad.size:
            raise InputError(f"{where}: token ids must be 0..{vocab - 1}; found {sorted(set(bad.tolist()))[:5]}")
        text = None
        if model.tokenizer is not None:
            text = [model.tokenizer.piece(int(i)) for i in arr]
        return Sequence_(ids=arr.astype(np.int64), text=text)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{where}: numeric input must be a time x features array, got {arr.dtype} {arr.shape}")
    F = model.input_size
    if arr.shape[1] != F:
        raise InputError(f"{where} has {arr.shape[1]} features per step; this model reads {F}")
    bad = ~np.isfinite(arr)
    if bad.any():
        t, f = np.argwhere(bad)[0]
        raise InputError(f"{where} has a non-finite value ({arr[t, f]}) at step {t}, feature {f}")
    return Sequence_(values=arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32))


# -- the prefix cache --------------------------------------------------------------------


@dataclass
class _LastRun:
    model: weakref.ref
    dtype: torch.dtype
    chunk: int
    sequences: list[np.ndarray]
    interventions: tuple[Intervention, ...]
    padded: dict[str, torch.Tensor]  # probe -> [T, B, ...]
    states: dict[tuple[int, int], dict[int, object]]  # (layer, direction) -> {chunk boundary: state}
    key: object = None  # model.cache_key() of that run
    initial: dict | None = None  # the initial state it started from (None: zeros)
    finals: dict | None = None  # each sequence's final state, chunked families: {name: [B, ...]}


class PrefixCache:
    """Keeps the last run's arrays and its states at chunk boundaries; pass the same cache to
    successive :func:`run` calls (the workbench's session holds one).

    A re-run restarts each layer at the first step where it can differ from the last run: at
    that very step when the new run starts a fresh stretch there (the slider case: an edit
    first acting at step t) and the last run recorded the state before it, otherwise at the
    chunk boundary before it.  Layers that cannot differ are not run at all.
    ``last_starts`` tells where each layer of the latest run began (empty for a full run)."""

    def __init__(self):
        self._last: _LastRun | None = None
        self.last_starts: list[int] = []
        #: probes of the last run known to hold only finite values (a re-run checks only its new rows)
        self.finite: frozenset = frozenset()

    @property
    def last_start(self) -> int:
        """The earliest step the latest run computed (0 for a full run)."""
        return min(self.last_starts) if self.last_starts else 0

    def clear(self):
        self._last = None
        self.last_starts = []
        self.finite = frozenset()

    def resume_for(self, model, seqs, interventions, want, plan, chunk, initial=None):
        """A ``Resume`` for a new run, or None when it must run from the start."""
        from .probes import parse_probe

        last = self._last
        if (last is None or last.model() is not model or last.dtype != model.dtype or last.chunk != chunk
                or last.key != model.cache_key() or not _initial.same_state(last.initial, initial)
                or model.bidirectional or len(last.sequences) != len(seqs) or not want <= set(last.padded)):
            return None
        n_layers = model.num_layers
        if any(model.layer_output_probe(k) not in last.padded for k in range(n_layers)):
            return None
        T = max(len(s) for s in seqs)
        never = 2**62
        d_tokens = min(_first_changed_token(old, new.data()) for old, new in zip(last.sequences, seqs))
        T_last = max(len(s) for s in last.sequences)
        if T != T_last:  # a batch's last chunk ends at T: its values change when T does
            d_tokens = min(d_tokens, (min(T, T_last) // chunk) * chunk)
        changed = _changed_interventions(last.interventions, tuple(interventions))
        if changed is None:
            return None
        if _keeps_finals(model):  # a sequence's final state is kept only at the length it had
            if last.finals is None:
                return None
            d_tokens = min([d_tokens] + [len(new) - 1 for old, new in zip(last.sequences, seqs)
                                          if len(old) != len(new)])
        first_change = [d_tokens] * n_layers
        logits_from = d_tokens
        for iv in changed:
            layer, _ = parse_probe(iv.probe)
            lowest = 0 if layer is None and iv.probe != "logits" else (n_layers if layer is None else layer)
            for k in range(lowest, n_layers):
                first_change[k] = min(first_change[k], iv.first_position)
            logits_from = min(logits_from, iv.first_position)
        starts, states = [], {}
        for k, d in enumerate(first_change):
            if d >= T:
                starts.append(never)
                continue
            state = None
            if d % chunk and model.starts_fresh_at(k, d, plan):
                # inside a chunk, a fresh stretch starts from the recorded outputs of step d - 1
                state = model.state_from_arrays(k, last.padded, d - 1)
            if state is None:  # at the chunk boundary before d, from the state kept there
                d = (d // chunk) * chunk
                state = last.states.get((k, 0), {}).get(d) if d else None
            if d == 0:  # from the initial state: the layers below, if unchanged, are still skipped
                starts.append(0)
                continue
            if state is None:
                return None
            starts.append(d)
            states[(k, 0)] = state
        return Resume(starts=starts, states=states, old=last.padded, logits_from=min(logits_from, T),
                      finals=last.finals)

    def store(self, model, seqs, interventions, chunk, padded, states, initial=None, finals=None):
        self._last = _LastRun(weakref.ref(model), model.dtype, chunk, [s.data() for s in seqs],
                              tuple(interventions), padded, states, model.cache_key(), initial,
                              finals=finals)


def _keeps_finals(model) -> bool:
    """Whether ``model``'s forward fills in each sequence's final state (the chunked families
    that take an initial state; the classic stacks read it from their state probes)."""
    return hasattr(model, "named_state") and model.state_shapes() is not None


def _first_changed_token(old: np.ndarray, new: np.ndarray) -> int:
    """The first position where ``new`` differs from ``old``; "never" when ``new`` is ``old``
    or a prefix of it (steps past a sequence's end are never read)."""
    n = min(len(old), len(new))
    diff = np.flatnonzero(np.any((old[:n] != new[:n]).reshape(n, -1), axis=1))
    if len(diff):
        return int(diff[0])
    return 2**62 if len(new) <= len(old) else len(old)


def _changed_interventions(old: tuple, new: tuple):
    """Interventions in one list and not the other (and every patch read from a file, whose
    content may have changed); None when shared ones changed order, which matters at a
    shared probe."""
    kept_old = [iv for iv in old if iv in new]
    kept_new = [iv for iv in new if iv in old]
    if kept_old != kept_new:
        return None
    changed = [iv for iv in old if iv not in new] + [iv for iv in new if iv not in old]
    changed += [iv for iv in new if isinstance(iv.value, PatchSource) and iv not in changed]
    return changed


# -- run ---------------------------------------------------------------------------------


def _resolve_sources(interventions: Sequence[Intervention]) -> dict[int, np.ndarray]:
    sources = {}
    for n, iv in enumerate(interventions):
        if iv.op != "patch":
            continue
        if isinstance(iv.value, np.ndarray):
            sources[n] = iv.value
            continue
        from .hdf5 import load_trace  # only when a patch names a file

        src = iv.value
        try:
            other = load_trace(src.file)
        except SeqScopeError as exc:
            raise InterventionError(f"patch for {iv.probe}: {exc}") from None
        probe = src.probe or iv.probe
        if probe not in other.arrays:
            raise InterventionError(f"patch source {src.file} has no probe {probe!r}")
        if src.sequence >= other.n_sequences:
            raise InterventionError(f"patch source {src.file} has {other.n_sequences} sequence(s); "
                                    f"there is no sequence {src.sequence}")
        sources[n] = other.array(probe, src.sequence)
    return sources


def padded_inputs(model, seqs) -> torch.Tensor:
    """The sequences' ids (or numeric rows) side by side, [T, B] (or [T, B, features]), zero past
    each one's end, on the model's device."""
    T, B = max(len(s) for s in seqs), len(seqs)
    if model.takes_tokens:
        x = torch.zeros(T, B, dtype=torch.long)
        for b, s in enumerate(seqs):
            x[: len(s), b] = torch.as_tensor(s.ids)
    else:
        x = torch.zeros(T, B, model.input_size, dtype=model.dtype)
        for b, s in enumerate(seqs):
            x[: len(s), b] = torch.as_tensor(s.values, dtype=model.dtype)
    return x.to(model.device)


@contextmanager
def _exact_cuda(device):
    """On a GPU: full float32 precision (no TF32, which cuDNN and cuBLAS may use by default and
    which costs about three decimal digits) and deterministic cuDNN kernels, so that a re-run
    gives the same bits.  Torch keeps these flags process-wide; they are restored on exit."""
    if torch.device(device).type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def run(model, inputs, probes="*", interventions: Sequence[Intervention] = (), *,
        cache: PrefixCache | None = None, chunk: int = DEFAULT_CHUNK,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None, max_bytes=None, initial_state=None) -> Trace:
    """Run ``model`` on ``inputs`` and record the probes matching ``probes`` (globs).

    ``inputs``: text, token ids, a numeric ``[time, features]`` array, or a list of them
    (one sequence each).  ``interventions`` apply inside the recurrence.  ``cache``: a
    :class:`PrefixCache` reused across calls.  ``progress(done, total)`` is called as
    chunks finish; ``should_stop()`` returning true cancels the run (raises ``Cancelled``).

    ``max_bytes``: the memory the run may take (bytes, or a size such as ``"16G"``; default:
    half the available memory, at most 64 GB; ``math.inf``: no limit).  The run's memory is
    estimated first (:func:`engine.budget.estimate_run_bytes`); past the budget it raises
    :class:`~engine.budget.RunTooLarge` (an ``InputError``) before allocating anything.

    Non-finite values in the recorded arrays are reported in the trace's ``notes``: the probe
    and step where they first appear.

    ``initial_state``: the recurrent state to start from instead of zeros, a dict
    ``{"layers.0.h": array, "layers.0.c": array, ...}`` or a Trace to continue from its final
    state (see :mod:`engine.initial_state`); recorded in ``trace.initial_state``.
    """
    seqs = prepare_inputs(model, inputs)
    start, initial = ({}, None) if initial_state is None else _initial.prepare(model, initial_state, len(seqs))
    spec_table = {s.name: s for s in model.probe_specs()}
    names = match_probes(probes, list(spec_table)) if probes is not None else []
    want = set(names)
    interventions = tuple(interventions)
    lengths = [len(s) for s in seqs]
    B = len(seqs)
    device = model.device
    if cache is not None:  # every layer's output lets a re-run skip the layers an edit cannot reach
        want = want | {model.layer_output_probe(k) for k in range(model.num_layers)}
    _check_memory(model, lengths, want, chunk, cache, max_bytes)

    x = padded_inputs(model, seqs)

    plan = model.bind(interventions, lengths, _resolve_sources(interventions))
    resume = cache.resume_for(model, seqs, interventions, want, plan, chunk, initial) if cache is not None else None
    states: dict = {}
    if resume is not None:  # boundary states before each layer's start stay valid
        for key, kept in cache._last.states.items():
            states[key] = {step: st for step, st in kept.items() if step <= resume.starts[key[0]]}

    def keep_state(key, step, state):
        states.setdefault(key, {})[step] = state

    finals = {} if _keeps_finals(model) else None
    with torch.no_grad(), _exact_cuda(device):
        out = model.forward(x, lengths, want, plan, chunk=chunk, resume=resume,
                            keep_state=keep_state if cache is not None else None,
                            progress=progress, should_stop=should_stop,
                            **({"initial_state": start} if start else {}),
                            **({"final_state": finals} if finals is not None else {}))
    known_finite = {}  # probe -> rows copied from a previous run that held only finite values
    if cache is not None and resume is not None and B == 1:
        kept = (min(resume.starts + [resume.logits_from]) // chunk) * chunk
        known_finite = {name: kept for name in names if name in cache.finite}
    ended = finals if finals is not None else model.final_state(out, lengths) if hasattr(model, "final_state") else None
    final = {n: (v if v.dtype in (torch.float32, torch.float64) else v.float()).cpu().numpy()
             for n, v in ended.items()} if ended is not None else None
    trace = _make_trace(model, seqs, names, spec_table, out, interventions, known_finite, initial, final or None)
    if cache is not None:
        cache.store(model, seqs, interventions, chunk, out, states, initial, finals)
        cache.last_starts = list(resume.starts) if resume is not None else []
        cache.finite = frozenset() if any(n.startswith(NONFINITE_NOTE) for n in trace.notes) else frozenset(names)
    return trace


def _check_memory(model, lengths, want, chunk, cache, max_bytes) -> None:
    """Refuse, before allocating, a run whose estimated memory is past ``max_bytes`` (and, on a
    GPU with the default budget, past the GPU's free memory: the forward pass runs there)."""
    budget, source = resolve_budget(max_bytes)
    if math.isinf(budget):
        return
    order = [s.name for s in model.probe_specs() if s.name in want]
    estimate = estimate_run_bytes(model, sum(lengths), order, lengths=lengths, chunk=chunk, cache=cache)
    check_budget(estimate, budget, budget_source=source)
    if max_bytes is None and torch.device(model.device).type == "cuda":
        gpu_budget, gpu_source = gpu_budget_for(model.device)
        check_budget(estimate, gpu_budget, budget_source=gpu_source)


def _make_trace(model, seqs, names, spec_table, padded, interventions, known_finite=None, initial=None,
                final=None) -> Trace:
    lengths = [len(s) for s in seqs]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {}
    for name in names:
        t = padded[name]
        if t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        if len(lengths) == 1:
            whole = t[: lengths[0], 0]
        else:  # sequence-major, then each sequence's real steps one after another
            by_seq = t.transpose(0, 1).contiguous()
            if min(lengths) == by_seq.shape[1]:
                whole = by_seq.reshape(-1, *by_seq.shape[2:])
            else:
                whole = torch.cat([by_seq[b, :L] for b, L in enumerate(lengths)])
        arrays[name] = whole.cpu().numpy()
    if model.takes_tokens:
        tokens = np.concatenate([s.ids for s in seqs])
        text = None
        if all(s.text is not None for s in seqs):
            text = [p for s in seqs for p in s.text]
        inputs = None
    else:
        tokens = np.concatenate([np.arange(L) for L in lengths])
        text = None
        inputs = np.concatenate([s.values for s in seqs])
    info = model.info()
    return Trace(tokens=tokens, offsets=offsets, arrays=arrays, specs={n: spec_table[n] for n in names},
                 token_text=text, inputs=inputs, model_info=info, interventions=interventions,
                 notes=[s.note for s in seqs if s.note] + _initial.attention_notes(initial, names)
                 + nonfinite_notes(arrays, offsets, spec_table, info, known_finite),
                 initial_state=initial, final_state=final)
