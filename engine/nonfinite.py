"""Where NaN and infinity come from: the first probe and step of a run that holds one, and the
weights of a model that hold them.

A NaN in a weight, or an intervention that overflows, spreads through everything after it;
what a user needs is where it started.  :func:`first_nonfinite` looks through a run's arrays
in the model's order (``embed``, ``layers.0.*``, ``layers.1.*``, ..., ``logits``) and finds the
earliest step of the first sequence that has one, and at that step the first probe in that
order.  The check reads every array once, a block of rows at a time (a sum is finite exactly
when its terms are, except when it overflows; only blocks whose sum is not finite are looked
at value by value), so it costs a fraction of the run and no large temporary.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

#: rows read at once when looking for a non-finite value (bounded by bytes too)
BLOCK_BYTES = 8 << 20

#: probe sites whose NaN values are by design (implicit attention outside its window)
NAN_BY_DESIGN = frozenset({"attn"})

#: how the notes begin (a note on a run, a warning on a model's weights)
NONFINITE_NOTE = "non-finite values first appear in "
WEIGHTS_WARNING = "warning: weights hold NaN or infinity"


@dataclass(frozen=True)
class NonFinite:
    probe: str
    sequence: int
    step: int  # within the sequence
    kind: str  # "NaN", "inf" or "-inf"

    def note(self) -> str:
        return (f"{NONFINITE_NOTE}{self.probe} at step {self.step} "
                f"(of sequence {self.sequence}): {self.kind}")


def _first_bad_row(a: np.ndarray, skip: int = 0) -> int | None:
    """The first row (token) of ``a`` holding a NaN or an infinity, or None; rows before
    ``skip`` are known to be finite."""
    if a.size == 0 or not np.issubdtype(a.dtype, np.floating):
        return None
    n = a.shape[0]
    row_bytes = max(1, a.nbytes // max(1, n))
    step = max(1, BLOCK_BYTES // row_bytes)
    for start in range(min(skip, n), n, step):
        block = a[start:start + step]
        with np.errstate(over="ignore", invalid="ignore"):
            total = block.sum()  # in its own precision: fast, and an overflow is only checked again
        if np.isfinite(total):
            continue
        rows = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        hits = np.flatnonzero(rows)
        if len(hits):
            return start + int(hits[0])
    return None


def forward_order(names, specs: Mapping | None = None) -> list[str]:
    """``names`` in the order a step computes them: layer by layer as the probe table lists
    them, and within a layer its gates first and its output (``h``, ``out``) last -- the table
    of an LSTM lists ``h`` first, though ``h_t`` is computed from ``c_t`` and the gates."""
    specs = specs or {}

    def rank(item):
        pos, name = item
        spec = specs.get(name)
        layer = getattr(spec, "layer", None)
        site = getattr(spec, "site", "")
        if layer is None:  # embed before the layers, logits (and anything else) after them
            return (-1 if name == "embed" else 2**31, 0, pos)
        within = 0 if site.startswith("gate") or site == "pre" else (2 if site in ("h", "out") else 1)
        return (layer, within, pos)

    return [name for _, name in sorted(enumerate(names), key=rank)]


def first_nonfinite(arrays: Mapping[str, np.ndarray], offsets, specs: Mapping | None = None,
                    known_finite: Mapping[str, int] | None = None) -> NonFinite | None:
    """The earliest non-finite value of a run: the first sequence that has one, its earliest
    step, and at that step the first probe in forward order (:func:`forward_order`) holding one;
    None when every value is finite.  ``known_finite``: probe -> rows already known to be
    finite (a cached re-run copies them from a run that was checked)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    order = [name for name in (specs or arrays) if name in arrays]
    order = forward_order(order + [name for name in arrays if name not in order], specs)
    best = None  # (row, rank, name)
    for rank, name in enumerate(order):
        spec = (specs or {}).get(name)
        if spec is not None and getattr(spec, "site", "") in NAN_BY_DESIGN:
            continue
        a = arrays[name]
        limit = a.shape[0] if best is None else min(a.shape[0], best[0] + 1)  # later rows cannot win
        row = _first_bad_row(a[:limit], (known_finite or {}).get(name, 0))
        if row is not None and (best is None or row < best[0]):
            best = (row, rank, name)
    if best is None:
        return None
    row, _, name = best
    seq = int(np.searchsorted(offsets, row, side="right") - 1)
    value = np.asarray(arrays[name][row]).reshape(-1)
    bad = value[~np.isfinite(value)][0]
    kind = "NaN" if np.isnan(bad) else ("inf" if bad > 0 else "-inf")
    return NonFinite(name, seq, row - int(offsets[seq]), kind)


def nonfinite_notes(arrays: Mapping[str, np.ndarray], offsets, specs: Mapping | None = None,
                    model_info: Mapping | None = None, known_finite: Mapping[str, int] | None = None) -> list[str]:
    """The notes a trace carries about non-finite values: none, or where they first appear
    (and, when the model's weights hold some, the load warning naming them)."""
    found = first_nonfinite(arrays, offsets, specs, known_finite)
    if found is None:
        return []
    load_notes = str((model_info or {}).get("notes") or "")
    return [found.note()] + [line for line in load_notes.splitlines() if line.startswith(WEIGHTS_WARNING)]


def nonfinite_weights(weights: Mapping) -> list[str]:
    """The names of the weights holding NaN or infinity, each with how many such values."""
    import torch

    out = []
    for name, w in weights.items():
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.numel() == 0:
            continue
        if torch.isfinite(w.sum()):  # a finite sum has finite terms (an overflow is counted below)
            continue
        bad = int((~torch.isfinite(w)).sum())
        if bad:
            out.append(f"{name} ({bad:,} of {w.numel():,} values)")
    return out


def weights_note(model) -> str | None:
    """A warning naming the weights of ``model`` that hold NaN or infinity, or None."""
    state = getattr(model, "state_dict", None)
    if state is None:
        return None
    bad = nonfinite_weights(state())
    if not bad:
        return None
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (f"{WEIGHTS_WARNING}: {shown}; runs will show non-finite states "
            f"(each trace's notes say where they first appear)")


def note_nonfinite_weights(model):
    """Add :func:`weights_note` to the model's load notes (``model.info()["notes"]``) when its
    weights hold NaN or infinity; the model is still usable (a broken model can be inspected)."""
    note = weights_note(model)
    info = getattr(model, "load_info", None)
    if note is not None and isinstance(info, dict):
        info["notes"] = "\n".join(filter(None, [info.get("notes", ""), note]))
    return model
