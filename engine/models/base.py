"""What every recurrent cell family provides to the layer runner (`engine.models.stack`).

A cell computes one direction of one layer.  It offers three ways through a chunk of steps:

``fused``    the fastest kernel torch has (``nn.LSTM``/``nn.GRU``/``nn.RNN``): outputs and final
             state only;
``recover``  every internal of a chunk at once from the fused outputs (gates from ``h_{t-1}``
             in one batched matmul), with no Python loop over time except where a state
             is a true recurrence (the LSTM cell state);
``step``     one step written out from the equations, with an edit hook at every probe
             site, used only at steps where an intervention acts.  What a step computes
             from its input alone (``step_inputs``, e.g. ``W_ih x_t + b``) is computed
             for a whole chunk at once, in one matmul rather than one per step.

All tensors are time-major: ``[steps, batch, width]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..interventions import BoundIntervention, InterventionError

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

    def step_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The part of ``step`` that depends on the inputs alone, for a block of steps
        ``x`` [steps, batch, input] at once (the input projection); the inputs themselves by
        default."""
        return x

    def step(self, u_t: torch.Tensor, state, edit: Edit):
        """One step from ``u_t``, this step's row of ``step_inputs`` [batch, ...]; returns
        ``(output, new_state, records)`` with ``records[site]`` [batch, width].  Computed from
        this step's values alone, so it gives the same bits wherever a run started (the caller
        makes ``u_t`` the same way in every run, see ``stack_steps._chunk_step_inputs``)."""
        raise NotImplementedError

    def to(self, dtype=None, device=None) -> "RecurrentCell":
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------
    def step_loop(self, x: torch.Tensor, state):
        """``fused`` for a cell variant torch has no kernel for (a Keras GRU with the reset gate
        before the matmul, hard-sigmoid gates ...): ``step`` over the chunk without edits.
        Never the torch kernel, which computes only the standard equations."""
        u = self.step_inputs(x)
        ys = []
        for t in range(u.shape[0]):
            y, state, _ = self.step(u[t], state, _unedited)
            ys.append(y)
        return torch.stack(ys), state

    @staticmethod
    def previous_outputs(y: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """``h_{t-1}`` for every step of a chunk: the initial state, then outputs shifted by one."""
        return torch.cat([h0.unsqueeze(0), y[:-1]], dim=0)


def _unedited(site: str, value: torch.Tensor) -> torch.Tensor:
    return value


class SequenceModel:
    """What ``engine.run`` needs from a model, whatever its family.  Subclasses set the
    attributes in ``__init__`` and implement the methods; ``engine.models.stack.RecurrentStack``
    is the reference implementation.

    Attributes: ``architecture`` (str), ``tokenizer`` (or None), ``vocab_size`` (token models)
    or ``input_size`` (numeric models), ``num_layers``, ``dtype``, ``device``, ``source``,
    ``load_info`` (dict merged into :meth:`info`).
    """

    architecture = ""
    tokenizer = None
    vocab_size: int | None = None
    input_size: int = 0
    num_layers = 0
    #: a layer that also runs backwards sees the future: no prefix can be reused
    bidirectional = False

    @property
    def takes_tokens(self) -> bool:
        return self.vocab_size is not None

    def probe_specs(self) -> list:
        raise NotImplementedError

    def info(self) -> dict:
        raise NotImplementedError

    def bind(self, interventions, lengths, sources=None):
        """Check interventions against the model and batch; returns a plan for ``forward``."""
        raise NotImplementedError

    def forward(self, x, lengths, want, plan=None, *, chunk, resume=None, keep_state=None,
                progress=None, should_stop=None) -> dict:
        """Padded, time-major batch in; ``{probe: [T, B, ...]}`` out (see RecurrentStack.forward)."""
        raise NotImplementedError

    # -- the prefix cache -----------------------------------------------------------------
    def layer_output_probe(self, layer: int) -> str:
        """The probe holding what layer ``layer`` hands to the next one."""
        raise NotImplementedError

    def state_from_arrays(self, layer: int, arrays: dict, step: int):
        """The state after ``step`` of a layer, read from a run's padded arrays, or None."""
        return None

    def starts_fresh_at(self, layer: int, step: int, plan) -> bool:
        """Whether a run with ``plan`` begins a new stretch of ``layer`` at ``step``."""
        return False

    def state_widths(self) -> dict[str, int] | None:
        """The recurrent state ``initial_state`` sets, ``{probe name: width}``; None where a
        family does not take an initial state (``engine.run`` refuses one in words)."""
        return None

    def state_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """``{probe name: shape of one sequence's part}`` of the state ``initial_state`` sets
        (``(width,)`` for the classic stacks); None where there is none."""
        widths = self.state_widths()
        return None if widths is None else {n: (w,) for n, w in widths.items()}

    def cache_key(self):
        """Settings of the model, besides its weights, that change what a run computes (e.g. a
        window of implicit attention, which scan runs): a re-run reuses the prefix cache only
        when this equals the last run's."""
        return None


@dataclass
class Resume:
    """How a re-run reuses the previous run (built by ``engine.run.PrefixCache``)."""

    starts: list[int]  # per layer: first step to compute; >= T means unchanged
    states: dict  # (layer, direction) -> state entering that layer's start
    old: dict  # the previous run's padded arrays
    logits_from: int  # first step whose logits may change
    finals: dict | None = None  # the previous run's final states {name: [B, ...]} (chunked families)


class EditPlan:
    """Interventions bound to one model and batch: per probe outside the layers (``embed``,
    ``logits``), and per (layer, direction) and site inside them."""

    def __init__(self):
        self.whole: dict[str, list[BoundIntervention]] = {}
        self.layer: dict[tuple[int, int], dict[str, list[BoundIntervention]]] = {}

    def steps_for(self, key) -> list[int]:
        sites = self.layer.get(key, {})
        return sorted({int(s) for edits in sites.values() for e in edits for s in e.steps})


def bind_layerwise(model, interventions, lengths, sources=None, not_editable: dict | None = None,
                   aliases: dict | None = None) -> EditPlan:
    """Bind interventions for a model whose layers run in one direction: each one is checked
    against the probe table and the batch.  ``not_editable`` maps a site to the reason it cannot
    be edited (e.g. an ``attn`` computed after the run).  ``aliases`` maps a site to the site
    whose value it names (RWKV's ``mixer`` is its ``att``): an edit of either is one edit of
    that value, in the order given.  A patch source shaped like a probe with several axes per
    token (``[tokens, units, state]``) is flattened to match."""
    specs = {s.name: s for s in model.probe_specs()}
    plan = EditPlan()
    for n, iv in enumerate(interventions):
        spec = specs.get(iv.probe)
        if spec is None:
            raise InterventionError(f"no probe point {iv.probe!r} in this {model.architecture} model; "
                                    f"it has: {', '.join(specs)}")
        if spec.site in (not_editable or {}):
            raise InterventionError(f"{iv.probe}: {not_editable[spec.site]}")
        width = int(np.prod(spec.shape))
        source = (sources or {}).get(n)
        if source is not None and len(spec.shape) > 1:
            source = np.asarray(source)
            if source.ndim >= 2 and source.shape[-len(spec.shape):] == spec.shape:
                source = source.reshape(*source.shape[: -len(spec.shape)], width)
        bound = BoundIntervention(iv, width, lengths, model.dtype, model.device, source)
        if spec.layer is None:
            plan.whole.setdefault(iv.probe, []).append(bound)
        else:
            site = (aliases or {}).get(spec.site, spec.site)
            plan.layer.setdefault((spec.layer, 0), {}).setdefault(site, []).append(bound)
    return plan


def stitch(old: dict, name: str, new: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """A re-run's array: the previous run's steps before ``start``, then the new ones (``new``
    holds steps ``start..T-1``; a layer that did not run at all takes the previous array)."""
    if start == 0:
        return new
    if start >= T:
        return old[name][:T]
    return torch.cat([old[name][:start], new])
