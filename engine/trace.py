"""Trace: what one run recorded.  Immutable arrays plus metadata, no reference to the model."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .interventions import Intervention
from .probes import ProbeSpec


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable:
        a.flags.writeable = False
    return a


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class Trace:
    """Every requested probe for every token of every input sequence.

    Sequences are concatenated along the token axis: sequence ``s`` is tokens
    ``offsets[s]:offsets[s+1]`` of ``tokens`` and of every array.
    """

    tokens: np.ndarray  # int32 [N]; for numeric inputs, 0..L-1 within each sequence
    offsets: np.ndarray  # int64 [S+1]
    arrays: Mapping[str, np.ndarray]  # probe name -> [N, ...]
    specs: Mapping[str, ProbeSpec]
    token_text: tuple[str, ...] | None = None  # one string per token, None for numeric inputs
    inputs: np.ndarray | None = None  # [N, F] for numeric inputs (float32, or float64 as given)
    model_info: Mapping = field(default_factory=dict)
    interventions: tuple[Intervention, ...] = ()
    created: str = field(default_factory=now_iso)
    #: plain sentences about this run a reader should know (characters read as the unknown
    #: token, non-finite values ...); stored in trace files as the root attribute ``notes``
    notes: tuple[str, ...] = ()
    #: the recurrent state the run started from, ``{name: [sequences, *shape]}`` (None:
    #: zeros), and the state it ended in; see :mod:`engine.initial_state`
    initial_state: Mapping[str, np.ndarray] | None = None
    final_state: Mapping[str, np.ndarray] | None = None

    def __post_init__(self):
        object.__setattr__(self, "tokens", _frozen(np.asarray(self.tokens, dtype=np.int32)))
        object.__setattr__(self, "offsets", _frozen(np.asarray(self.offsets, dtype=np.int64)))
        object.__setattr__(self, "arrays", {k: _frozen(v) for k, v in self.arrays.items()})
        object.__setattr__(self, "specs", dict(self.specs))
        object.__setattr__(self, "interventions", tuple(self.interventions))
        if isinstance(self.notes, str) or not all(isinstance(n, str) for n in self.notes):
            raise ValueError("notes must be a list of strings")
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.inputs is not None:
            inputs = np.asarray(self.inputs)
            if inputs.dtype not in (np.float32, np.float64):
                inputs = inputs.astype(np.float32)
            object.__setattr__(self, "inputs", _frozen(inputs))
        if self.token_text is not None:
            object.__setattr__(self, "token_text", tuple(self.token_text))
        n = len(self.tokens)
        if len(self.offsets) < 1 or self.offsets[0] != 0 or self.offsets[-1] != n or np.any(np.diff(self.offsets) < 0):
            raise ValueError(f"offsets {self.offsets.tolist()} do not describe {n} tokens")
        for name, a in self.arrays.items():
            if a.shape[0] != n:
                raise ValueError(f"array {name} has {a.shape[0]} rows for {n} tokens")
        if self.token_text is not None and len(self.token_text) != n:
            raise ValueError("token_text must have one entry per token")
        for which in ("initial_state", "final_state"):
            state = getattr(self, which)
            if state is not None:
                state = {k: _frozen(v) for k, v in state.items()}
                if any(v.ndim < 2 or v.shape[0] != self.n_sequences for v in state.values()):
                    raise ValueError(f"{which} must hold one row per sequence ([sequences, *shape] arrays)")
                object.__setattr__(self, which, state)

    # -- shape ---------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_sequences(self) -> int:
        return len(self.offsets) - 1

    @property
    def probes(self) -> list[str]:
        return list(self.arrays)

    @property
    def logits(self) -> np.ndarray | None:
        return self.arrays.get("logits")

    def sequence_slice(self, s: int) -> slice:
        if not 0 <= s < self.n_sequences:
            raise IndexError(f"sequence {s} out of range (trace has {self.n_sequences})")
        return slice(int(self.offsets[s]), int(self.offsets[s + 1]))

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"probe {name!r} was not captured; this trace has: {', '.join(self.arrays)}") from None

    def array(self, name: str, sequence: int | None = None) -> np.ndarray:
        """One probe's values, for all tokens or for one sequence."""
        a = self[name]
        return a if sequence is None else a[self.sequence_slice(sequence)]

    def text(self, sequence: int = 0) -> str:
        if self.token_text is None:
            return ""
        return "".join(self.token_text[self.sequence_slice(sequence)])

    def __repr__(self) -> str:
        probes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.arrays.items())
        return f"Trace({self.n_tokens} tokens in {self.n_sequences} sequence(s); {probes})"
