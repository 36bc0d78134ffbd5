"""The classic recurrent model: an optional embedding, a stack of LSTM/GRU/Elman layers
(optionally bidirectional), and an optional linear head.

Canonical weight names (what loaders convert to)::

    embed.weight                               [vocab, input_size]     (absent for numeric inputs)
    rnn.weight_ih_l{k}[_reverse]  rnn.weight_hh_l{k}[_reverse]
    rnn.bias_ih_l{k}[_reverse]    rnn.bias_hh_l{k}[_reverse]           (absent when bias=False)
    rnn.weight_hr_l{k}[_reverse]                                       (LSTM with proj_size)
    head.weight  head.bias                                             (absent without a head)

Cell variants (config fields; every variant keeps the weight layout above, see the cells'
module docstrings for converting Keras weights): ``activation`` and ``recurrent_activation``
name the LSTM/GRU candidate and gate nonlinearities (default tanh and sigmoid, any of
:mod:`engine.models.activations`); ``reset_after=False`` makes a GRU apply its reset gate before
the recurrent matmul (Keras ≤ 2.2); an Elman cell's nonlinearity is in its name
(``rnn_tanh``, ``rnn_relu``, ``rnn_linear``, ``rnn_softsign`` ...).  Torch's fused kernels run
only the standard cells; a variant steps through its own equations.

How a layer runs: steps are taken in chunks aligned to multiples of ``chunk`` (the prefix
cache keeps the state at every chunk boundary).  A chunk with no intervention runs the fused
torch kernel, and, when probes ask for internals, recovers them all at once.  A chunk where an
intervention acts runs the fused kernel up to the first edited step (so earlier steps are
bit-identical to a clean run) and then steps through the equations with the edits applied.
Because full runs and cached re-runs cut the sequence at the same boundaries, a re-run from
the cache reproduces a full re-run exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import Cancelled
from ..interventions import BoundIntervention, Intervention, InterventionError, check_against_width
from ..probes import ProbeSpec, layer_probe
from .activations import ACTIVATIONS, DEFAULT_ACTIVATION, DEFAULT_RECURRENT_ACTIVATION, check_activation
from .base import EditPlan, RecurrentCell, Resume, SequenceModel, stitch
from .family import checked_fields
from .gru import GRUCell
from .lstm import LSTMCell
from .rnn import ElmanCell

#: Elman cells: ``rnn_`` and the nonlinearity (torch's rnn_tanh and rnn_relu first)
ELMAN_CELLS = ("rnn_tanh", "rnn_relu") + tuple(f"rnn_{a}" for a in ACTIVATIONS if a not in ("tanh", "relu"))
CELLS = ("lstm", "gru") + ELMAN_CELLS


@dataclass(frozen=True)
class StackConfig:
    cell: str  # one of CELLS
    num_layers: int
    hidden_size: int
    input_size: int  # width fed to layer 0: embedding dim, or features of numeric inputs
    vocab_size: int | None = None  # rows of the embedding; None for numeric inputs
    bidirectional: bool = False
    bias: bool = True
    proj_size: int = 0
    output_size: int | None = None  # rows of the linear head; None without a head
    head_bias: bool = True
    # the cell variant; None means the standard one (tanh, sigmoid; see the module docstring)
    activation: str | None = None  # LSTM/GRU candidate (and LSTM output) nonlinearity
    recurrent_activation: str | None = None  # LSTM/GRU gates
    reset_after: bool = True  # GRU: False applies the reset gate before the recurrent matmul

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.proj_size and self.cell != "lstm":
            raise ValueError("proj_size applies to LSTM only")
        if not isinstance(self.reset_after, bool):
            raise ValueError(f"reset_after must be true or false, not {self.reset_after!r}")
        if not self.reset_after and self.cell != "gru":
            raise ValueError("reset_after=False applies to GRU only")
        # the standard choice is stored as None, so that equal models have equal configs
        act = None if self.activation is None else check_activation(self.activation, "activation")
        gates = (None if self.recurrent_activation is None
                 else check_activation(self.recurrent_activation, "recurrent_activation"))
        if self.cell in ELMAN_CELLS:
            if act not in (None, self.cell[4:]):
                raise ValueError(f"an Elman cell's activation is part of its name: cell 'rnn_{act}', "
                                 f"not cell {self.cell!r} with activation {act!r}")
            if gates is not None:
                raise ValueError("recurrent_activation applies to the gates of LSTM and GRU cells; "
                                 "an Elman RNN has none")
            act = None
        object.__setattr__(self, "activation", None if act == DEFAULT_ACTIVATION else act)
        object.__setattr__(self, "recurrent_activation", None if gates == DEFAULT_RECURRENT_ACTIVATION else gates)

    @property
    def cell_activation(self) -> str:
        """The candidate nonlinearity (an Elman cell's: the one in its name)."""
        if self.cell in ELMAN_CELLS:
            return self.cell[4:]
        return self.activation or DEFAULT_ACTIVATION

    @property
    def gate_activation(self) -> str | None:
        """The gates' nonlinearity (None for Elman cells, which have no gates)."""
        return None if self.cell in ELMAN_CELLS else self.recurrent_activation or DEFAULT_RECURRENT_ACTIVATION

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def layer_output_size(self) -> int:
        return (self.proj_size or self.hidden_size) * self.directions

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "StackConfig":
        """The config from a dict; a ValueError names an entry of the wrong type or range."""
        return cls(**checked_fields(cls, d))


def canonical_weight_shapes(cfg: StackConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has, with its shape."""
    rows = {"lstm": 4, "gru": 3}.get(cfg.cell, 1) * cfg.hidden_size
    out = cfg.proj_size or cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.vocab_size is not None:
        shapes["embed.weight"] = (cfg.vocab_size, cfg.input_size)
    for k in range(cfg.num_layers):
        width_in = cfg.input_size if k == 0 else cfg.layer_output_size
        for sfx in ("", "_reverse")[: cfg.directions]:
            shapes[f"rnn.weight_ih_l{k}{sfx}"] = (rows, width_in)
            shapes[f"rnn.weight_hh_l{k}{sfx}"] = (rows, out)
            if cfg.bias:
                shapes[f"rnn.bias_ih_l{k}{sfx}"] = (rows,)
                shapes[f"rnn.bias_hh_l{k}{sfx}"] = (rows,)
            if cfg.proj_size:
                shapes[f"rnn.weight_hr_l{k}{sfx}"] = (cfg.proj_size, cfg.hidden_size)
    if cfg.output_size is not None:
        shapes["head.weight"] = (cfg.output_size, cfg.layer_output_size)
        if cfg.head_bias:
            shapes["head.bias"] = (cfg.output_size,)
    return shapes


def _make_cell(cfg: StackConfig, weights: dict, layer: int, suffix: str) -> RecurrentCell:
    get = lambda name: weights.get(f"rnn.{name}_l{layer}{suffix}")  # noqa: E731
    args = (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"))
    if cfg.cell == "lstm":
        return LSTMCell(*args, w_hr=get("weight_hr"), activation_name=cfg.cell_activation,
                        recurrent_activation_name=cfg.gate_activation)
    if cfg.cell == "gru":
        return GRUCell(*args, reset_after=cfg.reset_after, activation_name=cfg.cell_activation,
                       recurrent_activation_name=cfg.gate_activation)
    return ElmanCell(*args, nonlinearity=cfg.cell_activation)


def reverse_index(lengths, T: int, device) -> torch.Tensor:
    """[T, B] index that reverses each sequence within its own length (padding stays put).
    It is its own inverse."""
    idx = torch.arange(T, device=device)[:, None].repeat(1, len(lengths))
    for b, L in enumerate(lengths):
        idx[:L, b] = torch.arange(L - 1, -1, -1, device=device)
    return idx


def _gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 0, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand_as(x))


class RecurrentStack(SequenceModel):
    """An instrumented LSTM/GRU/RNN stack.  Build with :func:`engine.load` or directly from a
    config and canonical weights."""

    def __init__(self, config: StackConfig, weights: dict[str, torch.Tensor], *, tokenizer=None,
                 source: str = "", dtype=torch.float32, device="cpu"):
        expected = canonical_weight_shapes(config)
        missing = [k for k in expected if k not in weights]
        if missing:
            raise ValueError(f"weights missing for this config: {missing}")
        bad = [f"{k}: expected {expected[k]}, got {tuple(weights[k].shape)}" for k in expected
               if tuple(weights[k].shape) != expected[k]]
        if bad:
            raise ValueError("weight shapes do not match the config: " + "; ".join(bad))
        self.config = config
        self.tokenizer = tokenizer
        self.source = str(source)
        #: how a loader read the model (format, notes); merged into :meth:`info`
        self.load_info: dict = {}
        self.architecture = config.cell
        self.dtype = dtype
        self.device = torch.device(device)
        w = {k: v.detach().to(dtype=dtype) for k, v in weights.items() if k in expected}
        self.parameter_count = int(sum(v.numel() for v in w.values()))
        self.embed = w.get("embed.weight")
        self.head_weight = w.get("head.weight")
        self.head_bias = w.get("head.bias")
        self.cells = [[_make_cell(config, w, k, sfx) for sfx in ("", "_reverse")[: config.directions]]
                      for k in range(config.num_layers)]
        self.to(device=self.device, dtype=dtype)
        self._specs = self._build_specs()

    # -- housekeeping -----------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "RecurrentStack":
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        for name in ("embed", "head_weight", "head_bias"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device=device, dtype=dtype))
        for layer in self.cells:
            for cell in layer:
                cell.to(dtype=dtype, device=device)
        self.device, self.dtype = device, dtype
        return self

    @property
    def bidirectional(self) -> bool:
        return self.config.bidirectional

    @property
    def vocab_size(self) -> int | None:
        return self.config.vocab_size

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def info(self) -> dict:
        return {
            "architecture": self.architecture,
            "source": self.source,
            "config": self.config.to_json(),
            "cell": self.cells[0][0].describe(),
            "parameter_count": self.parameter_count,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            **self.load_info,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The canonical weights (for saving a model in SeqScope's own layout)."""
        out = {}
        if self.embed is not None:
            out["embed.weight"] = self.embed
        for k, layer in enumerate(self.cells):
            for d, cell in enumerate(layer):
                sfx = "_reverse" if d else ""
                for name, p in cell.module.named_parameters():
                    out["rnn." + name.replace("_l0", f"_l{k}{sfx}")] = p.data
        if self.head_weight is not None:
            out["head.weight"] = self.head_weight
            if self.head_bias is not None:
                out["head.bias"] = self.head_bias
        return out

    # -- probes -----------------------------------------------------------------------
    def _build_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        specs = []
        if self.embed is not None:
            specs.append(ProbeSpec("embed", (cfg.input_size,), ("token", "unit"), "token embedding fed to layer 0"))
        for k, layer in enumerate(self.cells):
            cell = layer[0]
            for site in cell.sites:
                width = cell.site_width(site) * cfg.directions
                desc = cell.site_description(site)
                if cfg.bidirectional:
                    desc += f"; units 0..{width // 2 - 1} forward, {width // 2}..{width - 1} backward"
                specs.append(ProbeSpec(layer_probe(k, site), (width,), ("token", "unit"), desc,
                                       layer=k, site=site, directions=cfg.directions))
        if self.head_weight is not None:
            specs.append(ProbeSpec("logits", (cfg.output_size,), ("token", "class"),
                                   "output scores of the linear head (before softmax)"))
        return specs

    def probe_specs(self) -> list[ProbeSpec]:
        return list(self._specs)

    # -- interventions ------------------------------------------------------------------
    def bind(self, interventions, lengths, sources: dict | None = None) -> EditPlan:
        """Check interventions against this model and batch; raises InterventionError."""
        specs = {s.name: s for s in self._specs}
        plan = EditPlan()
        T = max(lengths)
        rev = reverse_index(lengths, T, self.device) if self.bidirectional else None
        for n, iv in enumerate(interventions):
            spec = specs.get(iv.probe)
            if spec is None:
                raise InterventionError(
                    f"no probe point {iv.probe!r} in this {self.architecture} model; "
                    f"it has: {', '.join(specs)}")
            source = (sources or {}).get(n)
            if spec.layer is None:
                plan.whole.setdefault(iv.probe, []).append(
                    BoundIntervention(iv, spec.width, lengths, self.dtype, self.device, source))
                continue
            check_against_width(iv, spec.width, source)  # before the split, which would drop what does not fit
            width = spec.width // spec.directions
            for d in range(spec.directions):
                part = _direction_part(iv, source, width, d, spec.directions)
                if part is None:
                    continue
                piv, psrc = part
                bound = BoundIntervention(piv, width, lengths, self.dtype, self.device, psrc)
                if d == 1:
                    bound = bound.reversed(rev)
                plan.layer.setdefault((spec.layer, d), {}).setdefault(spec.site, []).append(bound)
        return plan

    # -- the forward pass -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, lengths: list[int], want: set[str], plan: EditPlan | None = None, *,
                chunk: int = 64, resume: Resume | None = None, keep_state: Callable | None = None,
                progress: Callable | None = None, should_stop: Callable | None = None) -> dict[str, torch.Tensor]:
        """Run a padded, time-major batch: ``x`` is ``[T, B]`` token ids or ``[T, B, F]`` numeric
        inputs.  Returns ``{probe: [T, B, ...]}`` for the probes in ``want``.

        ``resume`` (from the prefix cache) says where each layer restarts and from which state;
        steps before a layer's start are taken from the previous run's arrays.
        ``keep_state((layer, direction), step, state)`` is called at every chunk boundary.
        """
        plan = plan or EditPlan()
        T = x.shape[0]
        L = len(self.cells)
        starts = [min(s, T) for s in resume.starts] if resume else [0] * L
        old = resume.old if resume else {}
        if resume and self.bidirectional:
            raise ValueError("a bidirectional model always runs from the start")

        out: dict[str, torch.Tensor] = {}
        # the input of layer 0 from the chunk boundary before its start (see _chunk_step_inputs)
        s0 = starts[0] if starts[0] >= T else (starts[0] // chunk) * chunk
        if self.embed is not None:
            below = F.embedding(x[s0:], self.embed)
            for e in plan.whole.get("embed", []):
                below = e.apply_all(below, s0)
            if "embed" in want:
                out["embed"] = stitch(old, "embed", below, s0, T)
        else:
            below = x[s0:].to(self.dtype)
        below_from, below_name = s0, "embed"
        B = below.shape[1]
        total = max(1, sum(self.config.directions * -(-(T - s) // chunk) for s in starts if s < T))
        done = [0]

        def tick():
            if should_stop is not None and should_stop():
                raise Cancelled("run cancelled")
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        # The first edited step below a layer: there the layer's input first differs from a run
        # without edits, and the layer starts a new fused stretch (so a re-run can start there).
        first_edit = min((int(e.steps[0]) for e in plan.whole.get("embed", []) if len(e.steps)), default=None)
        rev = reverse_index(lengths, T, self.device) if self.bidirectional else None
        for k, layer in enumerate(self.cells):
            name_h = layer_probe(k, "h")
            want_sites = {s for s in layer[0].sites if layer_probe(k, s) in want}
            s = starts[k]
            if s >= T:  # unchanged since the previous run
                for site in want_sites:
                    out[layer_probe(k, site)] = old[layer_probe(k, site)][:T]
                below, below_from, below_name = old[name_h][:T], 0, name_h
            else:
                # from the chunk boundary before s: an edited step projects its input a chunk at a time
                c0 = (s // chunk) * chunk
                xin = below[c0 - below_from:] if c0 >= below_from else torch.cat([old[below_name][c0:below_from], below])
                ys, recs = [], []
                for d, cell in enumerate(layer):
                    state = resume.states[(k, d)] if s else cell.initial_state(B, self.dtype, self.device)
                    keep = (lambda step, st, key=(k, d): keep_state(key, step, st)) if keep_state else None
                    breaks = [first_edit] if first_edit is not None and not self.bidirectional else []
                    xd = _gather_time(xin, rev) if d else xin
                    y, rec = _run_direction(cell, xd, s, state, chunk, want_sites, plan.layer.get((k, d), {}),
                                            keep, tick, breaks, x_from=c0)
                    if d:
                        y = _gather_time(y, rev)
                        rec = {site: _gather_time(v, rev) for site, v in rec.items()}
                    ys.append(y)
                    recs.append(rec)
                below = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
                below_from, below_name = s, name_h
                for site in want_sites:
                    new = recs[0][site] if len(recs) == 1 else torch.cat([r[site] for r in recs], dim=-1)
                    out[layer_probe(k, site)] = stitch(old, layer_probe(k, site), new, s, T)
            steps = plan.steps_for((k, 0)) + plan.steps_for((k, 1))
            if steps:
                first_edit = min(steps) if first_edit is None else min(first_edit, min(steps))
        if self.head_weight is not None and "logits" in want:
            # Chunk by chunk from a chunk boundary, so a re-run multiplies the same shapes as a
            # full run and gets the same bits.
            a0 = (min(resume.logits_from, below_from) // chunk) * chunk if resume else 0
            if a0 < T:
                h = below[a0 - below_from:] if a0 >= below_from else torch.cat([old[below_name][a0:below_from], below])
                logits = torch.cat([F.linear(h[i : i + chunk].clone(), self.head_weight, self.head_bias)
                                    for i in range(0, h.shape[0], chunk)])
                for e in plan.whole.get("logits", []):
                    logits = e.apply_all(logits, a0)
                out["logits"] = stitch(old, "logits", logits, a0, T)
            else:
                out["logits"] = old["logits"][:T]
        return out

    # -- what the prefix cache needs to know ------------------------------------------------
    def layer_output_probe(self, layer: int) -> str:
        return layer_probe(layer, "h")

    def state_from_arrays(self, layer: int, arrays: dict, step: int):
        """The state after ``step`` of a unidirectional layer, read from a run's padded arrays
        (None when they lack a part of it)."""
        h = arrays.get(layer_probe(layer, "h"))
        if h is None:
            return None
        if self.config.cell != "lstm":
            return h[step]
        c = arrays.get(layer_probe(layer, "c"))
        return None if c is None else (h[step], c[step])

    def starts_fresh_at(self, layer: int, step: int, plan: EditPlan) -> bool:
        """Whether a run with ``plan`` begins a new stretch of layer ``layer`` at ``step``: an
        edit of the layer acts there, or the first edit below it does."""
        if step in plan.steps_for((layer, 0)):
            return True
        below = [int(e.steps[0]) for e in plan.whole.get("embed", []) if len(e.steps)]
        for k in range(layer):
            below += plan.steps_for((k, 0))[:1]
        return bool(below) and min(below) == step


def _direction_part(iv: Intervention, source, width: int, d: int, directions: int):
    """The share of a (possibly bidirectional) layer intervention that acts on direction d,
    with units renumbered within that direction; None if it touches none of them."""
    if directions == 1:
        return iv, source
    lo, hi = d * width, (d + 1) * width
    units = list(range(width)) if iv.units is None else [u - lo for u in iv.units if lo <= u < hi]
    if not units:
        return None
    cols = [u + lo for u in units] if iv.units is None else [i for i, u in enumerate(iv.units) if lo <= u < hi]
    value = iv.value
    if isinstance(value, tuple):
        value = tuple(value[i] for i in cols)
    if source is not None:
        import numpy as np

        source = np.asarray(source)
        full = source.shape[-1] == 2 * width
        source = source[..., [u + lo for u in units]] if full else source[..., cols]
    part = replace(iv, units=None if iv.units is None else units, value=value)
    return part, source


def _run_direction(cell: RecurrentCell, x, start, state, chunk, want_sites, edits, keep, tick, breaks=(),
                   x_from=None):
    """One direction of one layer over steps ``start..``; ``x`` holds the inputs of steps
    ``x_from..`` (default ``start``; the chunk boundary before ``start`` lets edited steps
    project their inputs a whole chunk at a time, see :func:`_chunk_step_inputs`).

    Chunks end at multiples of ``chunk``.  Inside a chunk, a stretch without edits comes from
    one fused call from the stretch's first step to the chunk's end, whatever comes later:
    every value before a step is computed the same way whatever happens at or after it, so
    a re-run that starts at a stretch start (a chunk boundary, an edited step, a break)
    from the recorded state reproduces a full run bit for bit.
    """
    x_from = start if x_from is None else x_from
    T = x_from + x.shape[0]
    edit_steps = sorted({int(s) for es in edits.values() for e in es for s in e.steps if s >= start})
    breaks = sorted(b for b in breaks if start < b < T)
    B = x.shape[1]
    y_out = x.new_empty(T - start, B, cell.output_size)
    rec_out = {s: x.new_empty(T - start, B, cell.site_width(s)) for s in want_sites}

    def take(y, rec, n, at):
        """Keep the first ``n`` steps of ``y`` and ``rec`` as steps ``at..at+n-1``."""
        i = at - start
        y_out[i : i + n] = y[:n]
        for s in want_sites:
            rec_out[s][i : i + n] = rec[s][:n]

    a = start
    while a < T:
        b = min((a // chunk + 1) * chunk, T)
        todo = [t for t in edit_steps if a <= t < b]
        cuts = [t for t in breaks if a < t < b]
        xa = x[a - x_from : b - x_from]
        inputs = None  # the chunk's step inputs, projected once its first edited step comes
        o = a
        while o < b:
            if todo and todo[0] == o:  # edited steps, written out with their edits
                if inputs is None:
                    inputs = _chunk_step_inputs(cell, x, x_from, a, b, chunk)
                n = 1
                while n < len(todo) and todo[n] == o + n:
                    n += 1
                del todo[:n]
                y, state, rec = _edited_steps(cell, inputs[o - a : o - a + n], state, edits, o, want_sites)
                take(y, rec, n, o)
                o += n
                continue
            stop = min([b] + todo[:1] + [t for t in cuts if t > o][:1])
            # A fresh copy: the kernels' results can depend on where the data sits in memory.
            xs = xa[o - a :].clone()
            y, end_state = cell.fused(xs, state)
            sites = want_sites | (cell.state_sites if stop < b else frozenset())
            rec = cell.recover(xs, y, state, sites) if sites else {}
            take(y, rec, stop - o, o)
            state = end_state if stop == b else cell.state_at(y, rec, stop - o - 1)
            o = stop
        if keep is not None:
            keep(b, state)
        tick()
        a = b
    return y_out, rec_out


def _chunk_step_inputs(cell: RecurrentCell, x, x_from, a, b, chunk):
    """``cell.step_inputs`` of steps ``a..b-1`` (``x`` holds steps ``x_from..``).

    One matmul for the whole chunk instead of one per edited step.  A matmul's row can depend
    on how many rows it multiplies (and where they sit in memory), so the rows are always those
    of the whole chunk, from its boundary, in a fresh copy: a re-run that resumes at an edited
    step inside the chunk multiplies the same rows as the full run did, and gets the same bits.
    """
    c = (a // chunk) * chunk
    if c < x_from:  # cannot happen through RecurrentStack.forward, which passes the boundary
        raise ValueError(f"the inputs of steps {c}..{x_from - 1} are needed to re-run step {a}")
    return cell.step_inputs(x[c - x_from : b - x_from].clone())[a - c :]


def _edited_steps(cell: RecurrentCell, inputs, state, edits: dict, a: int, want_sites):
    """Steps ``a..a+n-1`` written out with their edits (``inputs`` their step inputs): in one
    compiled call where the cell has one for these edits (``edited_stretch``), else step by
    step.  The choice depends only on the model and on all of the layer's edits, never on
    where the stretch begins, so a re-run from the cache takes the same path as a full run."""
    fast = getattr(cell, "edited_stretch", None)
    done = fast(inputs, state, edits, a) if fast is not None else None
    if done is not None:
        return done
    ys, recs = [], {s: [] for s in want_sites}
    for k in range(inputs.shape[0]):
        y_t, state, rec_t = cell.step(inputs[k], state, _edit_hook(edits, a + k))
        ys.append(y_t)
        for s in want_sites:
            recs[s].append(rec_t[s])
    return torch.stack(ys), state, {s: torch.stack(v) for s, v in recs.items()}


def _edit_hook(edits: dict, t: int):
    """``edit(site, value)`` for ``cell.step`` at step ``t``: every intervention active at
    ``t`` on that site, in order; sites without one pass through untouched."""
    active = {}
    for site, es in edits.items():
        at_t = [e for e in es if e.active_at(t)]
        if at_t:
            active[site] = at_t

    def edit(site, v):
        for e in active.get(site, ()):
            v = e.apply_step(v, t)
        return v

    return edit


def from_torch(rnn, embedding=None, head=None, *, tokenizer=None, nonlinearity=None, activation=None,
               recurrent_activation=None, reset_after=True, **kwargs) -> RecurrentStack:
    """Wrap in-memory torch modules: ``rnn`` an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (sequence-first
    or batch-first, it does not matter), optional ``nn.Embedding`` before it and ``nn.Linear``
    after it.  The weights are copied; ``kwargs`` go to :class:`RecurrentStack` (dtype, device).

    ``activation``, ``recurrent_activation`` and ``reset_after`` run the module's weights as a
    cell variant torch's module does not compute (a GRU written by hand with the reset gate
    before the matmul, hard-sigmoid gates ...; see :class:`StackConfig`); for an ``nn.RNN``,
    ``nonlinearity`` (or ``activation``) may name any activation."""
    from torch import nn

    if isinstance(rnn, nn.LSTM):
        cell = "lstm"
    elif isinstance(rnn, nn.GRU):
        cell = "gru"
    elif isinstance(rnn, nn.RNN):
        cell = f"rnn_{nonlinearity or activation or rnn.nonlinearity}"
        activation = None
    else:
        raise TypeError(f"expected nn.LSTM, nn.GRU or nn.RNN, got {type(rnn).__name__}")
    cfg = StackConfig(
        cell=cell, num_layers=rnn.num_layers, hidden_size=rnn.hidden_size, input_size=rnn.input_size,
        vocab_size=None if embedding is None else embedding.num_embeddings,
        bidirectional=rnn.bidirectional, bias=rnn.bias, proj_size=getattr(rnn, "proj_size", 0),
        output_size=None if head is None else head.out_features,
        head_bias=head is not None and head.bias is not None, activation=activation,
        recurrent_activation=recurrent_activation, reset_after=reset_after)
    weights = {f"rnn.{k}": v for k, v in rnn.state_dict().items()}
    if embedding is not None:
        weights["embed.weight"] = embedding.weight
    if head is not None:
        weights["head.weight"] = head.weight
        if head.bias is not None:
            weights["head.bias"] = head.bias
    kwargs.setdefault("dtype", next(rnn.parameters()).dtype)
    return RecurrentStack(cfg, weights, tokenizer=tokenizer, source=f"<in-memory {type(rnn).__name__}>", **kwargs)
