"""Named states of the families that keep their state in another form than their probes show
it (:mod:`engine.models.layer_state`): a mixin per family, placed before the model's base class,
that names the parts and converts between the two forms.

- RWKV-4 keeps (num, den, max) first, ``[3, B, d_att]``; its ``state`` probe shows ``[d_att, 3]``.
- xLSTM keeps C and n stabilised (``exp(-m)`` times the values its ``state`` and ``normalizer``
  probes show, unstabilised).
"""
from __future__ import annotations

import torch

from ..probes import layer_probe
from .layer_state import StatePart


class RwkvStates:
    """``layers.{k}.state`` [d_att, 3] (num, den, max), ``last_att_in`` and ``last_ffn_in`` [d_model]."""

    def state_parts(self, layer: int):
        A, H = self.config.d_att, self.config.d_model
        return (StatePart(0, "state", (A, 3), batch_axis=1), StatePart(1, "last_att_in", (H,)),
                StatePart(2, "last_ffn_in", (H,)))

    def named_state(self, layer: int, state: tuple) -> dict:
        out = super().named_state(layer, state)
        out[layer_probe(layer, "state")] = state[0].permute(1, 2, 0)  # [3, B, A] as [B, A, 3]
        return out

    def split_initial_state(self, arrays: dict) -> dict:
        arrays = {n: a.transpose(-1, -2) if n.endswith(".state") else a for n, a in arrays.items()}
        return super().split_initial_state(arrays)


class XlstmStates:
    """``layers.{k}.state`` [heads, d_qk, d_v] and ``normalizer`` [heads, d_qk] unstabilised, ``m`` [heads]."""

    def state_parts(self, layer: int):
        H, dk, dv = self.config.num_heads, self.config.dk, self.config.dv
        return StatePart(0, "state", (H, dk, dv)), StatePart(1, "normalizer", (H, dk)), StatePart(2, "m", (H,))

    def named_state(self, layer: int, state: tuple) -> dict:
        out = super().named_state(layer, state)
        return _rescaled(out, layer, torch.exp(out[layer_probe(layer, "m")]))

    def split_initial_state(self, arrays: dict) -> dict:
        arrays = dict(arrays)
        for k in range(self.num_layers):  # all three parts or none (engine.initial_state.prepare)
            if layer_probe(k, "m") in arrays:
                arrays = _rescaled(arrays, k, torch.exp(-arrays[layer_probe(k, "m")]))
        return super().split_initial_state(arrays)


def _rescaled(arrays: dict, layer: int, factor: torch.Tensor) -> dict:
    """``arrays`` with layer ``layer``'s ``state`` and ``normalizer`` times ``factor`` [B, heads]."""
    state, normalizer = layer_probe(layer, "state"), layer_probe(layer, "normalizer")
    return {**arrays, state: arrays[state] * factor[..., None, None], normalizer: arrays[normalizer] * factor[..., None]}
