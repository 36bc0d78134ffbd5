"""Elman RNN (torch.nn.RNN conventions): h' = act(W_ih x + b_ih + W_hh h + b_hh).

``act`` is tanh or relu in torch (the fused kernel computes those); any other activation of
:mod:`engine.models.activations` (Keras's ``SimpleRNN(activation=...)``: linear, softsign ...)
runs :meth:`ElmanCell.step` in a loop, never the kernel.  A Keras SimpleRNN converts with
``weight_ih = kernel.T``, ``weight_hh = recurrent_kernel.T``, ``bias_ih = bias``,
``bias_hh = zeros``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..probes import SITE_DESCRIPTIONS
from .activations import activation, definitions
from .base import RecurrentCell

#: the nonlinearities torch's own kernel computes
TORCH_NONLINEARITIES = ("tanh", "relu")


class ElmanCell(RecurrentCell):
    family = "rnn"
    sites = ("h", "pre")
    gate_rows = 1

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
        super().__init__(w_ih.shape[1], w_hh.shape[1])
        self.act = activation(nonlinearity)
        self.nonlinearity = nonlinearity
        #: torch's own RNN: the fused kernel computes it
        self.standard = nonlinearity in TORCH_NONLINEARITIES
        # holds the weights (and runs them, for tanh and relu)
        self.module = nn.RNN(self.input_size, self.hidden_size, 1,
                             nonlinearity=nonlinearity if self.standard else "tanh", bias=b_ih is not None)
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

    def describe(self) -> str:
        """The cell's equations in words (for ``info()``)."""
        if self.standard:
            return f"Elman RNN, {self.nonlinearity} (torch.nn.RNN equations)"
        return f"Elman RNN, h_t = {self.nonlinearity}(pre_t)" + definitions(self.nonlinearity)

    def site_description(self, site: str) -> str:
        text = SITE_DESCRIPTIONS.get(site, site)
        if self.standard:
            return text
        if site == "h":
            return f"{text}; {self.describe()}"
        return text.replace("tanh/relu", self.nonlinearity) + definitions(self.nonlinearity)

    def initial_state(self, batch, dtype, device):
        return torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)

    def fused(self, x, state):
        if not self.standard:
            return self.step_loop(x, state)
        y, hn = self.module(x, state.unsqueeze(0))
        return y, hn[0]

    def input_projection(self, x):
        return F.linear(x, self.w_ih, self.b_ih)

    def _pre(self, xp, h):
        return xp + F.linear(h, self.w_hh, self.b_hh)

    def recover(self, x, y, state0, sites):
        records = {"h": y}
        if "pre" in sites:
            records["pre"] = self._pre(self.input_projection(x), self.previous_outputs(y, state0))
        return {s: records[s] for s in sites}

    def step_inputs(self, x):
        return self.input_projection(x)

    def step(self, u_t, state, edit):
        pre = edit("pre", self._pre(u_t, state))
        h = edit("h", self.act(pre))
        return h, h, {"h": h, "pre": pre}
