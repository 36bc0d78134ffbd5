"""What every recurrent cell family provides to the layer runner (`engine.models.stack`).

A cell computes one direction of one layer.  It offers three ways through a chunk of steps:

``fused``    the fastest kernel torch has (``nn.LSTM``/``nn.GRU``/``nn.RNN``): outputs and final
             state only;
``recover``  every internal of a chunk at once from the fused outputs (gates from ``h_{t-1}``
             in one batched matmul), with no Python loop over time except where a state
             is a true recurrence (the LSTM cell state);
``step``     one step written out from the equations, with an edit hook at every probe
             site, used only at steps where an intervention acts.

All tensors are time-major: ``[steps, batch, width]``.
"""
from __future__ import annotations

from typing import Callable

import torch

Edit = Callable[[str, torch.Tensor], torch.Tensor]


class RecurrentCell:
    family = ""
    #: probe sites this cell records, in display order
    sites: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int):
        self.input_size = input_size
        self.hidden_size = hidden_size

    # -- shapes -----------------------------------------------------------------
    @property
    def output_size(self) -> int:
        return self.hidden_size

    def site_width(self, site: str) -> int:
        return self.output_size if site == "h" else self.hidden_size

    # -- the three paths --------------------------------------------------------
    def initial_state(self, batch: int, dtype, device):
        raise NotImplementedError

    def fused(self, x: torch.Tensor, state):
        raise NotImplementedError

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    #: sites ``state_at`` needs besides the output (the LSTM cell state)
    state_sites: frozenset = frozenset()

    def recover(self, x: torch.Tensor, y: torch.Tensor, state0, sites: set[str]) -> dict:
        """Internals of a chunk that ``fused`` ran on inputs ``x`` from ``state0`` giving ``y``:
        ``records[site]`` is ``[steps, batch, width]``."""
        raise NotImplementedError

    def state_at(self, y: torch.Tensor, records: dict, i: int):
        """The recurrent state after step ``i`` of a recovered chunk."""
        return y[i]

    def step(self, x_t: torch.Tensor, state, edit: Edit):
        """One step from input ``x_t`` [batch, input]; returns ``(output, new_state, records)``
        with ``records[site]`` [batch, width].  Computed from this step's values alone, so it
        gives the same bits wherever a run started."""
        raise NotImplementedError

    def to(self, dtype=None, device=None) -> "RecurrentCell":
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------
    @staticmethod
    def previous_outputs(y: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """``h_{t-1}`` for every step of a chunk: the initial state, then outputs shifted by one."""
        return torch.cat([h0.unsqueeze(0), y[:-1]], dim=0)
