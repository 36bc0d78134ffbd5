"""Independent float64 references: the LSTM/GRU/RNN equations of the torch docs, one step at a
time, written without any engine code.  ``overrides`` lets a test edit a value at a site and
step by hand (to check interventions).

The cell variants Keras uses are here too: any activation (``ACTIVATIONS``, each written from its
definition in the Keras and torch docs), and the GRU with the reset gate applied before the
recurrent matmul (``reset_after=False``)."""
from __future__ import annotations

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),  # Keras 2
    "hard_sigmoid_keras3": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),  # Keras 3, torch Hardsigmoid
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softplus": lambda x: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "exponential": np.exp,
    "silu": lambda x: x * _sigmoid(x),
}


def reference_layer(cell: str, x: np.ndarray, p: dict, reverse=False, overrides=None, *, activation="tanh",
                    recurrent_activation="sigmoid", reset_after=True):
    """One direction of one layer on one sequence.

    x: [T, in] float64; p: weight_ih, weight_hh, bias_ih, bias_hh (or None), weight_hr (or None).
    overrides: {(site, t): function(value) -> value}.  Returns {site: [T, width]}.
    ``activation`` (LSTM/GRU candidate, LSTM output), ``recurrent_activation`` (gates) and
    ``reset_after`` (GRU) give the Keras variants; an Elman cell ``rnn_<name>`` uses ``<name>``.
    """
    act, gate = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]
    overrides = overrides or {}
    T = x.shape[0]
    order = range(T - 1, -1, -1) if reverse else range(T)
    W_ih, W_hh = p["weight_ih"], p["weight_hh"]
    b_ih = p.get("bias_ih")
    b_hh = p.get("bias_hh")
    b_ih = np.zeros(W_ih.shape[0]) if b_ih is None else b_ih
    b_hh = np.zeros(W_hh.shape[0]) if b_hh is None else b_hh
    W_hr = p.get("weight_hr")
    H = W_hh.shape[0] // {"lstm": 4, "gru": 3}.get(cell, 1)
    out_w = W_hr.shape[0] if W_hr is not None else H
    h = np.zeros(out_w)
    c = np.zeros(H)
    rec: dict[str, list] = {}

    def site(name, t, value):
        f = overrides.get((name, t))
        value = f(value.copy()) if f else value
        rec.setdefault(name, [None] * T)[t] = value
        return value

    for t in order:
        gi = W_ih @ x[t] + b_ih
        gh = W_hh @ h + b_hh
        if cell == "lstm":
            i = site("gate_i", t, gate(gi[:H] + gh[:H]))
            f = site("gate_f", t, gate(gi[H:2 * H] + gh[H:2 * H]))
            g = site("gate_g", t, act(gi[2 * H:3 * H] + gh[2 * H:3 * H]))
            o = site("gate_o", t, gate(gi[3 * H:] + gh[3 * H:]))
            c = site("c", t, f * c + i * g)
            h = o * act(c)
            if W_hr is not None:
                h = W_hr @ h
            h = site("h", t, h)
        elif cell == "gru":
            r = site("gate_r", t, gate(gi[:H] + gh[:H]))
            z = site("gate_z", t, gate(gi[H:2 * H] + gh[H:2 * H]))
            if reset_after:
                n = site("gate_n", t, act(gi[2 * H:] + r * gh[2 * H:]))
            else:  # the reset gate scales h before the recurrent matmul
                n = site("gate_n", t, act(gi[2 * H:] + W_hh[2 * H:] @ (r * h) + b_hh[2 * H:]))
            h = site("h", t, (1 - z) * n + z * h)
        else:
            pre = site("pre", t, gi + gh)
            h = site("h", t, ACTIVATIONS[cell[len("rnn_"):]](pre))
    return {k: np.stack(v) for k, v in rec.items()}


def reference_stack(cell: str, weights: dict, x: np.ndarray, num_layers: int, bidirectional=False,
                    overrides=None, **variant):
    """A whole stack on one sequence; weights use torch's names (``weight_ih_l0_reverse`` …),
    as float64 numpy arrays.  overrides: {(probe, t): f} with probe ``layers.{k}.{site}``
    (forward direction only).  ``variant``: reference_layer's activation, recurrent_activation,
    reset_after.  Returns {probe: [T, width]} with directions concatenated."""
    out = {}
    inp = x
    for k in range(num_layers):
        recs = []
        for d in range(2 if bidirectional else 1):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            p = {n: weights.get(n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
            ov = {}
            if d == 0 and overrides:
                ov = {(probe.split(".")[-1], t): f for (probe, t), f in overrides.items()
                      if probe.startswith(f"layers.{k}.")}
            recs.append(reference_layer(cell, inp, p, reverse=bool(d), overrides=ov, **variant))
        for site in recs[0]:
            out[f"layers.{k}.{site}"] = np.concatenate([r[site] for r in recs], axis=-1)
        inp = out[f"layers.{k}.h"]
    return out


def float64_weights(module) -> dict:
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
