"""GRU (torch.nn.GRU conventions).

    r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r (W_hn h + b_hn))
    h' = (1 - z) n + z h

Weight rows are stacked r, z, n as in ``nn.GRU``.  Every internal depends only on
``h_{t-1}``, so recovery after the fused kernel needs no loop over time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import RecurrentCell


class GRUCell(RecurrentCell):
    family = "gru"
    sites = ("h", "gate_r", "gate_z", "gate_n")
    gate_rows = 3

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None):
        super().__init__(w_ih.shape[1], w_hh.shape[1])
        self.module = nn.GRU(self.input_size, self.hidden_size, 1, bias=b_ih is not None)
        self.module.requires_grad_(False)
        self.module.to(dtype=w_ih.dtype)
        with torch.no_grad():
            self.module.weight_ih_l0.copy_(w_ih)
            self.module.weight_hh_l0.copy_(w_hh)
            if b_ih is not None:
                self.module.bias_ih_l0.copy_(b_ih)
                self.module.bias_hh_l0.copy_(b_hh)

    @property
    def w_ih(self):
        return self.module.weight_ih_l0

    @property
    def w_hh(self):
        return self.module.weight_hh_l0

    @property
    def b_ih(self):
        return getattr(self.module, "bias_ih_l0", None)

    @property
    def b_hh(self):
        return getattr(self.module, "bias_hh_l0", None)

    def to(self, dtype=None, device=None):
        self.module.to(device=device, dtype=dtype)
        return self

    def initial_state(self, batch, dtype, device):
        return torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)

    def fused(self, x, state):
        y, hn = self.module(x, state.unsqueeze(0))
        return y, hn[0]

    def input_projection(self, x):
        return F.linear(x, self.w_ih, self.b_ih)

    def _hidden_projection(self, h):
        return F.linear(h, self.w_hh, self.b_hh)

    def _gates(self, xp, hp):
        xr, xz, xn = xp.chunk(3, dim=-1)
        hr, hz, hn = hp.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        return r, z, xn, hn

    def recover(self, x, y, state0, sites):
        records = {"h": y}
        if sites - {"h"}:
            hp = self._hidden_projection(self.previous_outputs(y, state0))
            r, z, xn, hn = self._gates(self.input_projection(x), hp)
            records.update(gate_r=r, gate_z=z, gate_n=torch.tanh(xn + r * hn))
        return {s: records[s] for s in sites}

    def step_inputs(self, x):
        return self.input_projection(x)

    def step(self, u_t, state, edit):
        r, z, xn, hn = self._gates(u_t, self._hidden_projection(state))
        r = edit("gate_r", r)
        z = edit("gate_z", z)
        n = edit("gate_n", torch.tanh(xn + r * hn))
        h = edit("h", (1 - z) * n + z * state)
        return h, h, {"h": h, "gate_r": r, "gate_z": z, "gate_n": n}
