"""LSTM (torch.nn.LSTM conventions, with optional projection ``proj_size``).

    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f c + i g                             h' = o tanh(c')   (then h' = W_hr h' with proj_size)

Weight rows are stacked in the order i, f, g, o, exactly as in ``nn.LSTM``.

Keras (and hand-written cells) may name other nonlinearities: ``recurrent_activation`` takes
the place of σ in the three gates, ``activation`` the place of both tanh (the candidate ``g``
and the output's ``tanh(c')``), any of :mod:`engine.models.activations`.  Such a cell runs
:meth:`LSTMCell.step` in a loop, never torch's fused kernel nor the compiled stretch of
:mod:`lstm_stretch`, which compute only σ and tanh.  A Keras LSTM converts with
``weight_ih = kernel.T``, ``weight_hh = recurrent_kernel.T`` (gates i, f, c, o: the same order),
``bias_ih = bias``, ``bias_hh = zeros``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..probes import SITE_DESCRIPTIONS
from . import lstm_stretch
from .activations import DEFAULT_ACTIVATION, DEFAULT_RECURRENT_ACTIVATION, activation, definitions
from .base import RecurrentCell

GATES = ("gate_i", "gate_f", "gate_g", "gate_o")


class LSTMCell(RecurrentCell):
    family = "lstm"
    sites = ("h", "c", "gate_i", "gate_f", "gate_g", "gate_o")
    gate_rows = 4

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, *,
                 activation_name: str = DEFAULT_ACTIVATION,
                 recurrent_activation_name: str = DEFAULT_RECURRENT_ACTIVATION):
        hidden = w_hh.shape[1] if w_hr is None else w_hr.shape[1]
        super().__init__(w_ih.shape[1], hidden)
        self.activation_name = activation_name
        self.recurrent_activation_name = recurrent_activation_name
        self.act = activation(activation_name)
        self.gate_act = activation(recurrent_activation_name)
        #: torch's own LSTM: the fused kernel (and the compiled stretch) compute it
        self.standard = activation_name == "tanh" and recurrent_activation_name == "sigmoid"
        proj = 0 if w_hr is None else w_hr.shape[0]
        self.module = nn.LSTM(self.input_size, hidden, 1, bias=b_ih is not None, proj_size=proj)
        self.module.requires_grad_(False)
        self.module.to(dtype=w_ih.dtype)
        with torch.no_grad():
            self.module.weight_ih_l0.copy_(w_ih)
            self.module.weight_hh_l0.copy_(w_hh)
            if b_ih is not None:
                self.module.bias_ih_l0.copy_(b_ih)
                self.module.bias_hh_l0.copy_(b_hh)
            if w_hr is not None:
                self.module.weight_hr_l0.copy_(w_hr)
        self.to()

    # parameters, read from the module so `to()` moves them all at once
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

    @property
    def w_hr(self):
        return getattr(self.module, "weight_hr_l0", None)

    @property
    def output_size(self) -> int:
        return self.module.proj_size or self.hidden_size

    def to(self, dtype=None, device=None):
        self.module.to(device=device, dtype=dtype)
        self._joint = _joint_weights(self.w_ih, self.w_hh, self.b_ih, self.b_hh)
        weight, bias = self._joint
        order = torch.cat([torch.arange(0, 2 * self.hidden_size), torch.arange(3 * self.hidden_size, 4 * self.hidden_size),
                           torch.arange(2 * self.hidden_size, 3 * self.hidden_size)]).to(weight.device)
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if bias is None else bias
        # for step(): rows reordered i, f, o, g (one sigmoid for three gates); the input part
        # [4H, input] applied a chunk at a time, the hidden part transposed for addmm
        w_x, w_h = weight[order].split([self.input_size, weight.shape[1] - self.input_size], dim=1)
        self._step_weights = (w_x.contiguous(), bias[order], w_h.T.contiguous(), self.w_hr)
        return self

    def describe(self) -> str:
        """The cell's equations in words (for ``info()``)."""
        if self.standard:
            return "LSTM (torch.nn.LSTM equations)"
        g, a = self.recurrent_activation_name, self.activation_name
        return f"LSTM, gates i, f, o {g}, candidate g_t and h_t = o_t {a}(c_t)" + definitions(g, a)

    def site_description(self, site: str) -> str:
        if self.standard or site == "c":
            return SITE_DESCRIPTIONS.get(site, site)
        if site == "h":
            return f"{SITE_DESCRIPTIONS['h']}; {self.describe()}"
        fn = self.activation_name if site == "gate_g" else self.recurrent_activation_name
        return SITE_DESCRIPTIONS[site].replace("sigmoid(", f"{fn}(").replace("tanh(", f"{fn}(") + definitions(fn)

    def initial_state(self, batch, dtype, device):
        h = torch.zeros(batch, self.output_size, dtype=dtype, device=device)
        c = torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)
        return (h, c)

    def fused(self, x, state):
        if not self.standard:
            return self.step_loop(x, state)
        h, c = state
        y, (hn, cn) = self.module(x, (h.unsqueeze(0), c.unsqueeze(0)))
        return y, (hn[0], cn[0])

    def input_projection(self, x):
        return F.linear(x, self.w_ih, self.b_ih)

    def _hidden_projection(self, h):
        return F.linear(h, self.w_hh, self.b_hh)

    def recover(self, x, y, state0, sites):
        if not sites - {"h"}:
            return {"h": y} if sites else {}
        h0, c0 = state0
        # all gates of the chunk in one matmul: [x_t, h_(t-1)] @ [W_ih, W_hh]^T
        pre = F.linear(torch.cat([x, self.previous_outputs(y, h0)], dim=-1), *self._joint)
        i, f, g, o = pre.chunk(4, dim=-1)
        i, f, g, o = self.gate_act(i), self.gate_act(f), self.act(g), self.gate_act(o)
        # The cell state is a true recurrence: one fused multiply-add per step.
        ig = i * g
        c = torch.empty_like(ig)
        prev = c0
        for t in range(ig.shape[0]):
            prev = torch.addcmul(ig[t], f[t], prev, out=c[t])
        records = {"h": y, "c": c, "gate_i": i, "gate_f": f, "gate_g": g, "gate_o": o}
        return {s: records[s] for s in sites}

    state_sites = frozenset({"c"})

    def state_at(self, y, records, i):
        return (y[i], records["c"][i])

    def step_inputs(self, x):
        """``W_ih x + b_ih + b_hh`` with gate rows ordered i, f, o, g (as ``step`` reads them)."""
        w_x, bias = self._step_weights[:2]
        return F.linear(x, w_x, bias)

    def edited_stretch(self, inputs, state, edits, a):
        """Steps ``a..`` with their edits in one compiled loop, or None (see lstm_stretch,
        which computes σ and tanh only)."""
        if not self.standard:
            return None
        return lstm_stretch.run(self, inputs, state, edits, a)

    def step(self, u_t, state, edit):
        h, c = state
        _, _, w_h, w_hr = self._step_weights  # attributes read once: a module's are slow to look up
        pre = torch.addmm(u_t, h, w_h)  # u_t from step_inputs: rows i, f, o, g
        H = self.hidden_size
        i, f, o = self.gate_act(pre[:, : 3 * H]).chunk(3, dim=-1)
        i = edit("gate_i", i)
        f = edit("gate_f", f)
        g = edit("gate_g", self.act(pre[:, 3 * H :]))
        o = edit("gate_o", o)
        c = edit("c", torch.addcmul(i * g, f, c))
        h = o * self.act(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        h = edit("h", h)
        records = {"h": h, "c": c, "gate_i": i, "gate_f": f, "gate_g": g, "gate_o": o}
        return h, (h, c), records


def _joint_weights(w_ih, w_hh, b_ih, b_hh):
    """``[W_ih, W_hh]`` side by side and ``b_ih + b_hh``: one matmul gives every gate."""
    bias = None if b_ih is None else b_ih + b_hh
    return torch.cat([w_ih, w_hh], dim=1), bias
