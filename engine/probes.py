"""Probe points: the stable names of a model's internals, and what each one holds.

A probe name is a string a user can type, keep in a file and find in an HDF5 trace:
``embed``, ``layers.{i}.{site}`` and ``logits``.  Every model publishes a table of
:class:`ProbeSpec` so that views and files never guess the meaning of an axis.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Sequence

# One sentence per site, shown in the probe tree and stored as an HDF5 attribute.
SITE_DESCRIPTIONS = {
    "h": "hidden state h_t (the layer's output at each step)",
    "c": "LSTM cell state c_t",
    "gate_i": "LSTM input gate i_t = sigmoid(W_ii x_t + b_ii + W_hi h_(t-1) + b_hi)",
    "gate_f": "LSTM forget gate f_t = sigmoid(W_if x_t + b_if + W_hf h_(t-1) + b_hf)",
    "gate_g": "LSTM cell candidate g_t = tanh(W_ig x_t + b_ig + W_hg h_(t-1) + b_hg)",
    "gate_o": "LSTM output gate o_t = sigmoid(W_io x_t + b_io + W_ho h_(t-1) + b_ho)",
    "gate_r": "GRU reset gate r_t = sigmoid(W_ir x_t + b_ir + W_hr h_(t-1) + b_hr)",
    "gate_z": "GRU update gate z_t = sigmoid(W_iz x_t + b_iz + W_hz h_(t-1) + b_hz); h_t = (1 - z_t) n_t + z_t h_(t-1)",
    "gate_n": "GRU new-state candidate n_t = tanh(W_in x_t + b_in + r_t (W_hn h_(t-1) + b_hn))",
    "pre": "Elman RNN pre-activation W_ih x_t + b_ih + W_hh h_(t-1) + b_hh, before tanh/relu",
}

# The sites every family built of residual blocks shares (issue 13 item 7): each branch's output
# before its residual add, and the residual stream after each add.  A family whose own names
# came first keeps them and has these as other names of the same arrays (RWKV's ``att`` and
# ``ffn``, xLSTM's ``mix``); README.md has the table per family.
RESIDUAL_SITES = {
    "mixer": "the token-mixing branch's output (SSM, recurrence, time mixing or attention), before its residual add",
    "mid": "the residual stream after the mixer's add, before the feed-forward branch (blocks with two adds)",
    "mlp": "the feed-forward (MLP, channel-mixing) branch's output, before its residual add",
    "out": "the residual stream after the block: what the next layer reads",
}


@dataclass(frozen=True)
class ProbeSpec:
    """What one probe point holds, per token.

    ``shape`` excludes the token axis: a probe over ``units`` units has shape ``(units,)``.
    ``dims`` names every axis including the leading token axis, e.g. ``("token", "unit")``.
    """

    name: str
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    description: str
    layer: int | None = None
    site: str = ""
    directions: int = 1

    @property
    def width(self) -> int:
        """Number of units along the last axis."""
        return self.shape[-1] if self.shape else 1


def layer_probe(layer: int, site: str) -> str:
    return f"layers.{layer}.{site}"


def parse_probe(name: str) -> tuple[int | None, str]:
    """``"layers.1.gate_f"`` -> ``(1, "gate_f")``; ``"embed"`` -> ``(None, "embed")``."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None, name


def match_probes(patterns: str | Iterable[str] | None, names: Sequence[str]) -> list[str]:
    """Names matching any glob in ``patterns``, in table order.

    ``None`` means no probes; ``"*"`` means all.  A pattern that matches nothing is an
    error, so a typo never silently captures nothing.
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = pattern if len(pattern) <= 80 else pattern[:60] + f"… ({len(pattern):,} characters)"
            raise KeyError(
                f"probe pattern {shown!r} matches no probe point of this model; "
                f"it has: {', '.join(names)}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]
