"""GRU: torch.nn.GRU's equations, and the variants Keras and hand-written cells use.

The standard cell (``reset_after=True``, gates ``sigmoid``, candidate ``tanh``; torch's GRU,
cuDNN's, Keras ≥ 2.3's default)::

    r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
    h' = (1 - z) ⊙ n + z ⊙ h

The reset-before variant (``reset_after=False``: Cho et al. 2014, Keras ≤ 2.2's default, ONNX's
``linear_before_reset=0``) applies the reset gate to ``h`` *before* the recurrent matmul::

    n = act(W_in x + b_in + W_hn (r ⊙ h) + b_hn)

``σ`` may be any ``recurrent_activation`` and ``tanh`` any ``activation`` of
:mod:`engine.models.activations`.  The update is the same in every variant (Keras writes it
``h' = z ⊙ h + (1 - z) ⊙ n``).

Canonical weights (every variant has torch's layout; the config says which equations apply):
``weight_ih`` [3H, in] and ``weight_hh`` [3H, H] with rows stacked **r, z, n**; ``bias_ih``,
``bias_hh`` [3H] (both absent when bias=False).  Converting a Keras GRU (gates stacked z, r, h,
kernels stored input × units):

    weight_ih = kernel.T with its row blocks reordered (r, z, h)  (kernel [in, 3H])
    weight_hh = recurrent_kernel.T, likewise                      (recurrent_kernel [H, 3H])
    reset_after=True:  bias [2, 3H] -> bias_ih = bias[0], bias_hh = bias[1] (each reordered)
    reset_after=False: bias [3H]    -> bias_ih = bias (reordered), bias_hh = zeros

(``b_hn`` outside the reset product adds to ``b_in``, so one bias loses nothing.)

The standard cell runs torch's fused kernel; every variant runs :meth:`step` in a loop
(``RecurrentCell.step_loop``), never the kernel, which cannot compute it.  Every internal
depends only on ``h_{t-1}``, so recovering the gates after a chunk needs no loop over time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..probes import SITE_DESCRIPTIONS
from .activations import DEFAULT_ACTIVATION, DEFAULT_RECURRENT_ACTIVATION, activation, definitions
from .base import RecurrentCell


class GRUCell(RecurrentCell):
    family = "gru"
    sites = ("h", "gate_r", "gate_z", "gate_n")
    gate_rows = 3

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after: bool = True,
                 activation_name: str = DEFAULT_ACTIVATION,
                 recurrent_activation_name: str = DEFAULT_RECURRENT_ACTIVATION):
        super().__init__(w_ih.shape[1], w_hh.shape[1])
        self.reset_after = bool(reset_after)
        self.activation_name = activation_name
        self.recurrent_activation_name = recurrent_activation_name
        self.act = activation(activation_name)
        self.gate_act = activation(recurrent_activation_name)
        #: torch's own GRU: the fused kernel computes it
        self.standard = (self.reset_after and activation_name == "tanh" and recurrent_activation_name == "sigmoid")
        # holds the weights (and runs them, for the standard cell)
        self.module = nn.GRU(self.input_size, self.hidden_size, 1, bias=b_ih is not None)
        self.module.requires_grad_(False)
        self.module.to(dtype=w_ih.dtype)
        with torch.no_grad():
            self.module.weight_ih_l0.copy_(w_ih)
            self.module.weight_hh_l0.copy_(w_hh)
            if b_ih is not None:
                self.module.bias_ih_l0.copy_(b_ih)
                self.module.bias_hh_l0.copy_(b_hh)
        self.to()

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
        # reset-before: the r, z rows of W_hh apply to h, the n rows to r ⊙ h
        H = self.hidden_size
        b = self.b_hh
        self._hh_rz = (self.w_hh[: 2 * H], None if b is None else b[: 2 * H])
        self._hh_n = (self.w_hh[2 * H :], None if b is None else b[2 * H :])
        return self

    def describe(self) -> str:
        """The cell's equations in words (for ``info()``)."""
        if self.standard:
            return "GRU (torch.nn.GRU equations)"
        where = ("reset gate applied after the recurrent matmul (reset_after=True)" if self.reset_after else
                 "reset gate applied to h before the recurrent matmul (reset_after=False, Cho et al. 2014)")
        return (f"GRU, {where}; gates {self.recurrent_activation_name}, candidate {self.activation_name}"
                + definitions(self.recurrent_activation_name, self.activation_name))

    def site_description(self, site: str) -> str:
        if self.standard:
            return SITE_DESCRIPTIONS.get(site, site)
        if site == "h":
            return f"{SITE_DESCRIPTIONS['h']}; {self.describe()}"
        g, a = self.recurrent_activation_name, self.activation_name
        if site == "gate_r":
            text = f"GRU reset gate r_t = {g}(W_ir x_t + b_ir + W_hr h_(t-1) + b_hr)"
        elif site == "gate_z":
            text = (f"GRU update gate z_t = {g}(W_iz x_t + b_iz + W_hz h_(t-1) + b_hz); "
                    "h_t = (1 - z_t) n_t + z_t h_(t-1)")
        elif self.reset_after:
            text = f"GRU new-state candidate n_t = {a}(W_in x_t + b_in + r_t (W_hn h_(t-1) + b_hn))"
        else:
            text = (f"GRU new-state candidate n_t = {a}(W_in x_t + b_in + W_hn (r_t h_(t-1)) + b_hn), the reset "
                    "gate applied before the matmul (Keras reset_after=False)")
        return text + definitions(g if site != "gate_n" else a)

    def initial_state(self, batch, dtype, device):
        return torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)

    def fused(self, x, state):
        if not self.standard:
            return self.step_loop(x, state)
        y, hn = self.module(x, state.unsqueeze(0))
        return y, hn[0]

    def input_projection(self, x):
        return F.linear(x, self.w_ih, self.b_ih)

    def _gates(self, xp, h):
        """``r``, ``z``, the input part of the candidate and what ``_candidate`` needs of ``h``."""
        xr, xz, xn = xp.chunk(3, dim=-1)
        if self.reset_after:
            hr, hz, hn = F.linear(h, self.w_hh, self.b_hh).chunk(3, dim=-1)
        else:
            hr, hz = F.linear(h, *self._hh_rz).chunk(2, dim=-1)
            hn = h
        return self.gate_act(xr + hr), self.gate_act(xz + hz), xn, hn

    def _candidate(self, xn, r, hn):
        if self.reset_after:
            return self.act(xn + r * hn)  # hn = W_hn h + b_hn
        return self.act(xn + F.linear(r * hn, *self._hh_n))  # hn = h

    def recover(self, x, y, state0, sites):
        records = {"h": y}
        if sites - {"h"}:
            r, z, xn, hn = self._gates(self.input_projection(x), self.previous_outputs(y, state0))
            records.update(gate_r=r, gate_z=z, gate_n=self._candidate(xn, r, hn))
        return {s: records[s] for s in sites}

    def step_inputs(self, x):
        return self.input_projection(x)

    def step(self, u_t, state, edit):
        r, z, xn, hn = self._gates(u_t, state)
        r = edit("gate_r", r)
        z = edit("gate_z", z)
        n = edit("gate_n", self._candidate(xn, r, hn))
        h = edit("h", (1 - z) * n + z * state)
        return h, h, {"h": h, "gate_r": r, "gate_z": z, "gate_n": n}
