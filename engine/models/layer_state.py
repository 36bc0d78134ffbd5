"""Named initial and final states of the chunked families (:mod:`engine.models.chunked`).

A chunked layer's state is a tuple of tensors (``initial_state(B)``).  A family that takes an
initial state names each part of it with a :class:`StatePart`: the probe-like name
``layers.{k}.{site}``, one sequence's shape, and how the tensor in the tuple is laid out
(the batch on axis 0, or on axis 1 for a convolution window ``[K-1, B, width]``; a complex
state shown as ``[..., 2]``, real and imaginary part).  This module turns user arrays
``{name: [B, *shape]}`` into the tuples the forward starts from, and the tuples a layer
reached into the same arrays, and picks each sequence's final state at its own last step.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..probes import layer_probe


@dataclass(frozen=True)
class StatePart:
    """One part of a layer's state: element ``index`` of the state tuple, named
    ``layers.{k}.{site}``, ``shape`` for one sequence."""

    index: int
    site: str
    shape: tuple  # the element's values for one sequence, in this shape (e.g. heads and head_dim as one axis)
    batch_axis: int = 0  # 1 for a convolution window [K-1, B, width] (oldest step first)
    complex: bool = False  # a complex tensor [B, ...] shown as [..., 2] (re, im)


class LayerStates:
    """Initial and final states by name, for :class:`~engine.models.chunked.ChunkedLayerModel`.
    A family lists its parts in :meth:`state_parts`; without parts it always starts from zeros."""

    def state_parts(self, layer: int) -> tuple[StatePart, ...]:
        """The named parts of layer ``layer``'s state (none: the family takes no initial state)."""
        return ()

    def state_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """``{name: shape of one sequence's part}`` for every layer, or None without parts."""
        shapes = {layer_probe(k, p.site): tuple(p.shape) for k in range(self.num_layers) for p in self.state_parts(k)}
        return shapes or None

    def state_widths(self) -> dict[str, int] | None:
        """:meth:`state_shapes` with each part's number of values (its width when it is a vector)."""
        shapes = self.state_shapes()
        return None if shapes is None else {n: math.prod(s) for n, s in shapes.items()}

    def split_initial_state(self, arrays: dict[str, torch.Tensor]) -> dict:
        """``{name: [B, *shape]}`` (checked by :func:`engine.initial_state.prepare`) as the
        per ``(layer, 0)`` state tuples the forward starts from; parts not given are the
        family's own starting values."""
        out = {}
        for k in range(self.num_layers):
            given = {p: arrays[layer_probe(k, p.site)] for p in self.state_parts(k) if layer_probe(k, p.site) in arrays}
            if not given:
                continue
            state = list(self.initial_state(next(iter(given.values())).shape[0]))
            for p, t in given.items():
                state[p.index] = _into_layout(p, t, state[p.index])
            out[(k, 0)] = tuple(state)
        return out

    def named_state(self, layer: int, state: tuple) -> dict[str, torch.Tensor]:
        """A layer's state tuple as ``{name: [B, *shape]}``."""
        out = {}
        for p in self.state_parts(layer):
            t = state[p.index]
            if p.batch_axis:
                t = t.movedim(p.batch_axis, 0)
            if p.complex:
                t = torch.view_as_real(t)
            out[layer_probe(layer, p.site)] = t.reshape(t.shape[0], *p.shape)
        return out

    def layer_final_state(self, layer: int, lengths, start: int, reached: dict, old: dict | None) -> dict:
        """Each sequence's final state in layer ``layer``, ``{name: [B, *shape]}``: the state
        after its own last step, from ``reached`` (:meth:`_run_layer`'s) for sequences longer
        than ``start`` (where this run began the layer), else from ``old`` (the previous run's
        final states, which the prefix cache keeps)."""
        named = {key: self.named_state(layer, st) for key, st in reached.items()}
        out = {}
        for p in self.state_parts(layer):
            name = layer_probe(layer, p.site)
            rows = []
            for b, L in enumerate(lengths):
                if L <= start:
                    if old is None or name not in old:  # the prefix cache never starts past such an end
                        raise RuntimeError(f"no final state of {name} for sequence {b}")
                    rows.append(old[name][b])
                else:
                    rows.append(named[b][name][0])
            out[name] = torch.stack(rows).clone()
        return out

    @contextmanager
    def sequences_alone(self, cols: list[int]):
        """While a chunk runs for the sequences ``cols`` of the batch alone: a family that keeps
        values of the whole batch beside the layer state (RWKV-7's ``v_first``) narrows them."""
        yield

    def state_batch_axes(self) -> list[int | None]:
        """Where the batch is in each tensor of a layer's state (None: a tensor without one)."""
        one, two = self.initial_state(1), self.initial_state(2)  # the batch is the axis whose size differs
        return [next((i for i, (m, n) in enumerate(zip(x.shape, y.shape)) if m != n), None) for x, y in zip(one, two)]

    @staticmethod
    def state_columns(state: tuple, cols: list[int], axes: list) -> tuple:
        """A layer's state for the sequences ``cols`` of the batch alone (``axes``: :meth:`state_batch_axes`)."""
        return tuple(t if axis is None else t.index_select(axis, torch.tensor(cols, device=t.device))
                     for t, axis in zip(state, axes))


def _into_layout(p: StatePart, t: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """A user array [B, *shape] as the tuple element ``template`` is laid out."""
    layout = tuple(template.movedim(p.batch_axis, 0).shape[1:])  # e.g. [heads, head_dim, d_state] for [d_inner, d_state]
    if p.complex:
        real = torch.float64 if template.dtype == torch.complex128 else torch.float32
        t = torch.view_as_complex(t.to(real).reshape(t.shape[0], *layout, 2).contiguous())
    else:
        t = t.reshape(t.shape[0], *layout)
    if p.batch_axis:
        t = t.movedim(0, p.batch_axis)
    return t.to(dtype=template.dtype, device=template.device).contiguous()


def ending_inside(ends: dict, a: int, b: int) -> list[int]:
    """The sequences of ``ends`` (``{sequence: length}``) whose last step lies in ``a..b-2``:
    they end inside the chunk ``a..b-1``, before its last step."""
    return [col for col, L in ends.items() if a < L < b]


def columns_of(edits: dict, cols: list[int]) -> dict:
    """A layer's bound interventions (``{site: [BoundIntervention]}``) for the sequences ``cols`` alone."""
    return {site: [e.columns(cols) for e in bound] for site, bound in edits.items()}
