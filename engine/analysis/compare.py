"""Compare two traces: two models with the same probe names, two checkpoints of one training run,
or a clean run and a steered one.

The traces must read the same input.  :func:`align` pairs their tokens:

- the same tokens and sequences: token i with token i;
- the same text cut into different tokens (two vocabularies): aligned by character offsets,
  each token of ``a`` paired with the token of ``b`` that holds its last character (b's values
  are repeated or skipped to follow a's tokens);
- the same numeric input rows: row i with row i.

Anything else is refused in words, naming the first sequence and position where they differ.
:func:`compare` keeps the probes both traces have with the same width per token, and gives
``a``, ``b`` (on a's tokens) and ``a - b``.  :func:`difference_trace` is a trace of the same
schema whose probes hold ``a - b``; :func:`write_difference` writes it with the engine's trace
writer, the model attributes naming both files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SeqScopeError
from ..trace import Trace


class CompareError(SeqScopeError):
    """Two traces that cannot be compared, with the reason."""


@dataclass(frozen=True)
class Alignment:
    index: np.ndarray  # [N_a]: for each token of a, its token in b
    how: str  # "tokens", "characters" or "inputs"

    def describe(self) -> str:
        return {"tokens": "aligned token by token (same tokens)",
                "characters": "aligned by character offsets (same text, different tokens)",
                "inputs": "aligned step by step (same numeric input)"}[self.how]


def _sequences_text(t: Trace) -> list[str]:
    return [t.text(s) for s in range(t.n_sequences)]


def align(a: Trace, b: Trace) -> Alignment:
    if a.n_sequences != b.n_sequences:
        raise CompareError(f"the traces hold {a.n_sequences} and {b.n_sequences} sequences: comparing needs the "
                           f"same input in both")
    same_offsets = np.array_equal(a.offsets, b.offsets)
    if (a.inputs is None) != (b.inputs is None):
        raise CompareError("one trace read text and the other a numeric input: they cannot be aligned")
    if a.inputs is not None:
        if not same_offsets or a.inputs.shape != b.inputs.shape or not np.array_equal(a.inputs, b.inputs):
            raise CompareError(f"the numeric inputs differ{_first_row_difference(a, b)}: comparing needs the same input")
        return Alignment(np.arange(a.n_tokens), "inputs")
    if same_offsets and np.array_equal(a.tokens, b.tokens) and (
            a.token_text is None or b.token_text is None or a.token_text == b.token_text):
        return Alignment(np.arange(a.n_tokens), "tokens")
    if a.token_text is None or b.token_text is None:
        raise CompareError("the traces' token ids differ and one has no token text to align them by: "
                           "comparing needs the same input")
    ta, tb = _sequences_text(a), _sequences_text(b)
    for s, (x, y) in enumerate(zip(ta, tb)):
        if x != y:
            at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            raise CompareError(f"the texts differ in sequence {s} at character {at} ({x[at:at + 12]!r} vs "
                               f"{y[at:at + 12]!r}): comparing needs the same input")
    index = np.empty(a.n_tokens, dtype=np.int64)
    for s in range(a.n_sequences):
        sa, sb = a.sequence_slice(s), b.sequence_slice(s)
        ends_a = np.cumsum([len(p) for p in a.token_text[sa]])
        ends_b = np.cumsum([len(p) for p in b.token_text[sb]])
        # the b token holding a's last character (character ends_a - 1): the first b end > it
        j = np.searchsorted(ends_b, np.maximum(ends_a - 1, 0), side="right")
        index[sa] = sb.start + np.minimum(j, max(len(ends_b) - 1, 0))
    return Alignment(index, "characters")


def _first_row_difference(a: Trace, b: Trace) -> str:
    if a.inputs.shape != b.inputs.shape:
        return f" (shapes {a.inputs.shape} and {b.inputs.shape})"
    rows = np.flatnonzero(np.any(a.inputs != b.inputs, axis=1))
    return f" (first at row {rows[0]})" if len(rows) else ""


@dataclass(frozen=True)
class Comparison:
    a: Trace
    b: Trace
    alignment: Alignment
    probes: tuple[str, ...]
    skipped: dict  # probe -> why it is not compared

    def values(self, probe: str) -> tuple[np.ndarray, np.ndarray]:
        """a's and b's values of ``probe`` on a's tokens."""
        return self.a[probe], self.b[probe][self.alignment.index]

    def difference(self, probe: str) -> np.ndarray:
        va, vb = self.values(probe)
        return va.astype(np.float32) - vb.astype(np.float32)

    def summary(self) -> list[dict]:
        """Per probe: the largest |a - b| and where, and the root mean square difference."""
        out = []
        for p in self.probes:
            d = self.difference(p).reshape(self.a.n_tokens, -1)
            flat = int(np.argmax(np.abs(d))) if d.size else 0
            out.append({"probe": p, "max_abs": float(np.abs(d).max()) if d.size else 0.0,
                        "at_token": flat // max(d.shape[1], 1), "at_unit": flat % max(d.shape[1], 1),
                        "rms": float(np.sqrt(np.mean(d.astype(np.float64) ** 2))) if d.size else 0.0})
        return out


def compare(a: Trace, b: Trace) -> Comparison:
    alignment = align(a, b)
    probes, skipped = [], {}
    for p in a.probes:
        if p not in b.arrays:
            skipped[p] = "only in the first trace"
        elif a[p].shape[1:] != b[p].shape[1:]:
            skipped[p] = f"shaped {list(a[p].shape[1:])} and {list(b[p].shape[1:])} per token"
        else:
            probes.append(p)
    for p in b.probes:
        if p not in a.arrays:
            skipped[p] = "only in the second trace"
    if not probes:
        raise CompareError("the traces share no probe of the same shape: " +
                           "; ".join(f"{p} {why}" for p, why in list(skipped.items())[:4]))
    return Comparison(a, b, alignment, tuple(probes), skipped)


def difference_trace(cmp: Comparison, name_a: str = "a", name_b: str = "b") -> Trace:
    """A trace on a's tokens whose probes hold ``a - b``."""
    a = cmp.a
    info = dict(a.model_info)
    info.update(difference_of=f"{name_a} - {name_b}", trace_a=name_a, trace_b=name_b,
                alignment=cmp.alignment.how)
    notes = list(a.notes) + [f"a difference trace: every probe is {name_a} minus {name_b}, "
                             f"{cmp.alignment.describe()}"]
    return Trace(tokens=a.tokens, offsets=a.offsets, arrays={p: cmp.difference(p) for p in cmp.probes},
                 specs={p: a.specs[p] for p in cmp.probes if p in a.specs}, token_text=a.token_text,
                 inputs=a.inputs, model_info=info, interventions=a.interventions, notes=notes)


def write_difference(path_a, path_b, out) -> tuple[Comparison, Path]:
    """Read two trace files, compare them and write the difference trace to ``out``."""
    from ..hdf5 import load_trace, save_trace

    a, b = load_trace(path_a), load_trace(path_b)
    cmp = compare(a, b)
    return cmp, save_trace(difference_trace(cmp, str(path_a), str(path_b)), out)
