"""The nonlinearities a classic recurrent cell may use, by name, each with its exact definition.

Keras lets a layer name its ``activation`` (the candidate / cell nonlinearity, ``tanh`` by
default) and its ``recurrent_activation`` (the gates, ``sigmoid`` by default); hand-written
torch cells do the same.  These are the ones SeqScope computes.  The two hard sigmoids have
different definitions in Keras 2 and Keras 3, so each has its own name and neither is ever
taken for the other:

``hard_sigmoid``         clip(0.2 x + 0.5, 0, 1)   Keras 1/2 (and tf.keras) ``hard_sigmoid``
``hard_sigmoid_keras3``  clip(x / 6 + 0.5, 0, 1)   Keras 3 ``hard_sigmoid``, ``torch.nn.Hardsigmoid``

The others: ``tanh``, ``sigmoid`` (1 / (1 + e^-x)), ``relu`` (max(x, 0)), ``linear`` (x),
``softsign`` (x / (1 + |x|)), ``softplus`` (log(1 + e^x)), ``elu`` (x, or e^x - 1 below 0),
``selu`` (torch's and Keras 3's constants), ``exponential`` (e^x), ``silu`` (x sigmoid(x), Keras's
``swish``).  Any other name is refused with a LoadError that names it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import LoadError

Activation = Callable[[torch.Tensor], torch.Tensor]


def _hard_sigmoid_keras2(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x * 0.2 + 0.5, 0.0, 1.0)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # log(1 + e^x) without torch's linear cut-off above 20 (F.softplus's threshold)
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


#: name -> (function, its definition for probe descriptions; "" where the name says it all)
ACTIVATIONS: dict[str, tuple[Activation, str]] = {
    "tanh": (torch.tanh, ""),
    "sigmoid": (torch.sigmoid, ""),
    "hard_sigmoid": (_hard_sigmoid_keras2, "clip(0.2 x + 0.5, 0, 1), Keras 2's hard sigmoid"),
    "hard_sigmoid_keras3": (F.hardsigmoid, "clip(x/6 + 0.5, 0, 1), Keras 3's hard sigmoid"),
    "relu": (torch.relu, ""),
    "linear": (lambda x: x, "x"),
    "softsign": (F.softsign, "x / (1 + |x|)"),
    "softplus": (_softplus, "log(1 + e^x)"),
    "elu": (F.elu, "x for x > 0, e^x - 1 below"),
    "selu": (F.selu, "scale elu(x, alpha), torch's constants"),
    "exponential": (torch.exp, "e^x"),
    "silu": (F.silu, "x sigmoid(x), Keras's swish"),
}

#: what ``activation`` / ``recurrent_activation`` mean when a config leaves them out
DEFAULT_ACTIVATION = "tanh"
DEFAULT_RECURRENT_ACTIVATION = "sigmoid"


def check_activation(name, role: str) -> str:
    """``name`` if SeqScope computes it; a LoadError naming it (and ``role``, e.g.
    ``"recurrent_activation"``) otherwise."""
    if isinstance(name, str) and name in ACTIVATIONS:
        return name
    raise LoadError(f"{role} {name!r} is not an activation SeqScope computes; it knows: "
                    f"{', '.join(ACTIVATIONS)} (hard_sigmoid is Keras 2's clip(0.2x + 0.5), "
                    "hard_sigmoid_keras3 is Keras 3's clip(x/6 + 0.5))")


def activation(name: str) -> Activation:
    """The function called ``name`` (see the module docstring)."""
    return ACTIVATIONS[check_activation(name, "activation")][0]


def definitions(*names: str) -> str:
    """``"; hard_sigmoid(x) = clip(0.2 x + 0.5, 0, 1), Keras 2's hard sigmoid"`` for the names
    that need one (for probe descriptions), "" when none does."""
    parts = [f"{n}(x) = {ACTIVATIONS[check_activation(n, 'activation')][1]}"
             for n in dict.fromkeys(names) if ACTIVATIONS[check_activation(n, "activation")][1]]
    return "".join("; " + p for p in parts)
