"""The classic recurrent model: an optional embedding, a stack of LSTM/GRU/Elman layers
(each of its own cell, size and direction, see :mod:`engine.models.stack_config`), and an
optional linear head.

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

Directions: every probe is recorded at the token it belongs to.  A direction that reads the
tokens from last to first (the backward half of a bidirectional layer; a ``reversed`` layer,
Keras ``go_backwards``; or any layer above a reversed one, which receives the sequence in
reversed order) runs on the time-reversed input and its records are put back in token order.
Such a model sees the future, so the prefix cache re-runs it from the start.  A bidirectional
layer whose ``merge_mode`` is not concat records both directions in ``h`` and what it hands on
in the probe ``layers.{k}.merged``.

How a layer runs: steps are taken in chunks aligned to multiples of ``chunk`` (the prefix
cache keeps the state at every chunk boundary).  A chunk with no intervention runs the fused
torch kernel, and, when probes ask for internals, recovers them all at once.  A chunk where an
intervention acts runs the fused kernel up to the first edited step (so earlier steps are
bit-identical to a clean run) and then steps through the equations with the edits applied.
Because full runs and cached re-runs cut the sequence at the same boundaries, a re-run from
the cache reproduces a full re-run exactly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import Cancelled
from ..interventions import BoundIntervention, InterventionError, check_against_width
from ..probes import ProbeSpec, layer_probe
from .base import EditPlan, RecurrentCell, Resume, SequenceModel, stitch
from .gru import GRUCell
from .lstm import LSTMCell
from .rnn import ElmanCell
from .stack_config import (CELLS, ELMAN_CELLS, MERGE_MODES, LayerSpec, StackConfig,  # noqa: F401 (re-exported)
                           canonical_weight_shapes)
from .stack_steps import direction_part, gather_time, reverse_index, run_direction

#: the probe site of a bidirectional layer's merged output (merge modes other than concat)
MERGED = "merged"
MERGE_TEXT = {"sum": "forward h + backward h", "mul": "forward h * backward h",
              "ave": "(forward h + backward h) / 2"}


def _make_cell(spec: LayerSpec, weights: dict, layer: int, suffix: str) -> RecurrentCell:
    get = lambda name: weights.get(f"rnn.{name}_l{layer}{suffix}")  # noqa: E731
    args = (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"))
    if spec.cell == "lstm":
        return LSTMCell(*args, w_hr=get("weight_hr"), activation_name=spec.cell_activation,
                        recurrent_activation_name=spec.gate_activation)
    if spec.cell == "gru":
        return GRUCell(*args, reset_after=spec.reset_after, activation_name=spec.cell_activation,
                       recurrent_activation_name=spec.gate_activation)
    return ElmanCell(*args, nonlinearity=spec.cell_activation)


def token_directions(specs) -> tuple[list[tuple[bool, ...]], bool]:
    """For each layer, whether each of its directions reads the tokens from last to first; and
    whether the stack's output sequence is in reversed token order (after an odd number of
    reversed layers, as Keras hands it to the head)."""
    flipped = False  # the order in which the layer receives the sequence
    out = []
    for spec in specs:
        first = flipped != spec.reversed
        out.append((first, not first)[: spec.directions])
        flipped = flipped != spec.reversed
    return out, flipped


def merge(ys: list[torch.Tensor], mode: str) -> torch.Tensor:
    """A layer's directions joined as Keras's ``Bidirectional(merge_mode=mode)`` joins them."""
    if len(ys) == 1:
        return ys[0]
    if mode == "concat":
        return torch.cat(ys, dim=-1)
    if mode == "sum":
        return ys[0] + ys[1]
    if mode == "mul":
        return ys[0] * ys[1]
    return (ys[0] + ys[1]) / 2


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
        self.layer_specs = config.layer_specs()
        self.tokenizer = tokenizer
        self.source = str(source)
        #: how a loader read the model (format, notes); merged into :meth:`info`
        self.load_info: dict = {}
        self.architecture = "+".join(dict.fromkeys(s.cell for s in self.layer_specs))
        self.dtype = dtype
        self.device = torch.device(device)
        #: per layer, whether each direction reads the tokens last to first
        self.backward, self.output_reversed = token_directions(self.layer_specs)
        w = {k: v.detach().to(dtype=dtype) for k, v in weights.items() if k in expected}
        self.parameter_count = int(sum(v.numel() for v in w.values()))
        self.embed = w.get("embed.weight")
        self.head_weight = w.get("head.weight")
        self.head_bias = w.get("head.bias")
        self.cells = [[_make_cell(spec, w, k, sfx) for sfx in ("", "_reverse")[: spec.directions]]
                      for k, spec in enumerate(self.layer_specs)]
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
        """Whether some direction reads the tokens last to first (it sees the future)."""
        return any(any(dirs) for dirs in self.backward)

    @property
    def vocab_size(self) -> int | None:
        return self.config.vocab_size

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def num_layers(self) -> int:
        return len(self.layer_specs)

    def info(self) -> dict:
        out = {
            "architecture": self.architecture,
            "source": self.source,
            "config": self.config.to_json(),
            "cell": self.cells[0][0].describe(),
            "parameter_count": self.parameter_count,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            **self.load_info,
        }
        if self.config.layers is not None:  # layers that differ: one line each
            out["layers"] = [f"{k}: {spec.describe()}; {self.cells[k][0].describe()}"
                             for k, spec in enumerate(self.layer_specs)]
        if self.output_reversed:
            out["output_order"] = ("reversed: the last recurrent layer hands its outputs on from the last token to "
                                   "the first (go_backwards); SeqScope records each at its token, so Keras's last "
                                   "output (return_sequences=False) is the one at the first token")
        return out

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
        for k, (spec, layer) in enumerate(zip(self.layer_specs, self.cells)):
            cell = layer[0]
            for site in cell.sites:
                width = cell.site_width(site) * spec.directions
                desc = cell.site_description(site) + self._direction_text(k, width)
                specs.append(ProbeSpec(layer_probe(k, site), (width,), ("token", "unit"), desc,
                                       layer=k, site=site, directions=spec.directions))
            if spec.bidirectional and spec.merge_mode != "concat":
                specs.append(ProbeSpec(layer_probe(k, MERGED), (spec.output_size,), ("token", "unit"),
                                       f"what the layer hands on: {MERGE_TEXT[spec.merge_mode]} (merge_mode "
                                       f"{spec.merge_mode})", layer=k, site=MERGED))
        if self.head_weight is not None:
            specs.append(ProbeSpec("logits", (cfg.output_size,), ("token", "class"),
                                   "output scores of the linear head (before softmax)"))
        return specs

    def _direction_text(self, k: int, width: int) -> str:
        dirs = self.backward[k]
        word = lambda back: "reading the tokens last to first" if back else "reading the tokens in order"  # noqa: E731
        if len(dirs) == 2:
            return (f"; units 0..{width // 2 - 1} forward ({word(dirs[0])}), {width // 2}..{width - 1} backward "
                    f"({word(dirs[1])})")
        return f"; {word(True)}" if dirs[0] else ""

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
            if spec.layer is None or spec.site == MERGED:
                plan.whole.setdefault(iv.probe, []).append(
                    BoundIntervention(iv, spec.width, lengths, self.dtype, self.device, source))
                continue
            check_against_width(iv, spec.width, source)  # before the split, which would drop what does not fit
            width = spec.width // spec.directions
            for d in range(spec.directions):
                part = direction_part(iv, source, width, d, spec.directions)
                if part is None:
                    continue
                piv, psrc = part
                bound = BoundIntervention(piv, width, lengths, self.dtype, self.device, psrc)
                if self.backward[spec.layer][d]:
                    bound = bound.reversed(rev)
                plan.layer.setdefault((spec.layer, d), {}).setdefault(spec.site, []).append(bound)
        return plan

    # -- the forward pass -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, lengths: list[int], want: set[str], plan: EditPlan | None = None, *,
                chunk: int = 64, resume: Resume | None = None, keep_state: Callable | None = None,
                progress: Callable | None = None, should_stop: Callable | None = None,
                initial_state: dict | None = None) -> dict[str, torch.Tensor]:
        """Run a padded, time-major batch: ``x`` is ``[T, B]`` token ids or ``[T, B, F]`` numeric
        inputs.  Returns ``{probe: [T, B, ...]}`` for the probes in ``want``.

        ``resume`` (from the prefix cache) says where each layer restarts and from which state;
        steps before a layer's start are taken from the previous run's arrays.
        ``keep_state((layer, direction), step, state)`` is called at every chunk boundary.
        ``initial_state`` maps ``(layer, direction)`` to the state that direction starts from
        (see :meth:`split_initial_state`; zeros where absent).
        """
        plan = plan or EditPlan()
        initial_state = initial_state or {}
        T = x.shape[0]
        L = len(self.cells)
        starts = [min(s, T) for s in resume.starts] if resume else [0] * L
        old = resume.old if resume else {}
        if resume and self.bidirectional:
            raise ValueError("a model with a backward direction always runs from the start")

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
        total = max(1, sum(len(layer) * -(-(T - s) // chunk) for s, layer in zip(starts, self.cells) if s < T))
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
        for k, (spec, layer) in enumerate(zip(self.layer_specs, self.cells)):
            name_out = self.layer_output_probe(k)
            want_sites = {s for s in layer[0].sites if layer_probe(k, s) in want}
            s = starts[k]
            if s >= T:  # unchanged since the previous run
                for site in want_sites:
                    out[layer_probe(k, site)] = old[layer_probe(k, site)][:T]
                below, below_from, below_name = old[name_out][:T], 0, name_out
            else:
                # from the chunk boundary before s: an edited step projects its input a chunk at a time
                c0 = (s // chunk) * chunk
                xin = below[c0 - below_from:] if c0 >= below_from else torch.cat([old[below_name][c0:below_from], below])
                ys, recs = [], []
                for d, cell in enumerate(layer):
                    back = self.backward[k][d]
                    state = resume.states[(k, d)] if s else initial_state.get((k, d))
                    if state is None:
                        state = cell.initial_state(B, self.dtype, self.device)
                    keep = (lambda step, st, key=(k, d): keep_state(key, step, st)) if keep_state else None
                    breaks = [first_edit] if first_edit is not None and not self.bidirectional else []
                    xd = gather_time(xin, rev) if back else xin
                    y, rec = run_direction(cell, xd, s, state, chunk, want_sites, plan.layer.get((k, d), {}),
                                           keep, tick, breaks, x_from=c0)
                    if back:
                        y = gather_time(y, rev)
                        rec = {site: gather_time(v, rev) for site, v in rec.items()}
                    ys.append(y)
                    recs.append(rec)
                for site in want_sites:
                    new = recs[0][site] if len(recs) == 1 else torch.cat([r[site] for r in recs], dim=-1)
                    out[layer_probe(k, site)] = stitch(old, layer_probe(k, site), new, s, T)
                below = merge(ys, spec.merge_mode)
                if name_out != layer_probe(k, "h"):  # a merged output: its own probe, its own edits
                    for e in plan.whole.get(name_out, []):
                        below = e.apply_all(below, s)
                    if name_out in want:
                        out[name_out] = stitch(old, name_out, below, s, T)
                below_from, below_name = s, name_out
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
        spec = self.layer_specs[layer]
        return layer_probe(layer, MERGED if spec.bidirectional and spec.merge_mode != "concat" else "h")

    def state_from_arrays(self, layer: int, arrays: dict, step: int):
        """The state after ``step`` of a unidirectional layer, read from a run's padded arrays
        (None when they lack a part of it)."""
        h = arrays.get(layer_probe(layer, "h"))
        if h is None:
            return None
        if self.layer_specs[layer].cell != "lstm":
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

    # -- initial and final states -------------------------------------------------------------
    def state_widths(self) -> dict[str, int]:
        """The recurrent state of every layer, by probe name, with its width (all directions,
        forward first): ``layers.{k}.h`` and, for an LSTM, ``layers.{k}.c``."""
        out = {}
        for k, spec in enumerate(self.layer_specs):
            out[layer_probe(k, "h")] = spec.state_size * spec.directions
            if spec.cell == "lstm":
                out[layer_probe(k, "c")] = spec.hidden_size * spec.directions
        return out

    def split_initial_state(self, arrays: dict[str, torch.Tensor]) -> dict:
        """``{probe name: [B, width]}`` (checked against :meth:`state_widths`) as the per
        ``(layer, direction)`` states :meth:`forward` starts from."""
        out = {}
        for k, spec in enumerate(self.layer_specs):
            h = arrays.get(layer_probe(k, "h"))
            if h is None:
                continue
            c = arrays.get(layer_probe(k, "c"))
            for d in range(spec.directions):
                hd = h[:, d * spec.state_size:(d + 1) * spec.state_size].to(self.dtype).contiguous()
                if spec.cell == "lstm":
                    cd = c[:, d * spec.hidden_size:(d + 1) * spec.hidden_size].to(self.dtype).contiguous()
                    out[(k, d)] = (hd, cd)
                else:
                    out[(k, d)] = hd
        return out

    def final_state(self, padded: dict[str, torch.Tensor], lengths: list[int]) -> dict[str, torch.Tensor]:
        """The state each layer ends in, ``{probe name: [B, width]}``, read from a run's padded
        arrays: a direction's last state is at the last token it read (the sequence's last
        token, or its first for a direction reading last to first).  Layers whose state probes
        were not recorded are left out."""
        out = {}
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        first = torch.zeros_like(last)
        for k, spec in enumerate(self.layer_specs):
            names = [n for n in self.state_widths() if n.startswith(layer_probe(k, ""))]
            if not all(n in padded for n in names):
                continue
            for name in names:
                arr = padded[name]
                width = arr.shape[-1] // spec.directions
                parts = []
                for d in range(spec.directions):
                    at = first if self.backward[k][d] else last
                    part = arr[:, :, d * width:(d + 1) * width]
                    parts.append(part[at, torch.arange(len(lengths), device=self.device)])
                out[name] = torch.cat(parts, dim=-1)
        return out

def from_torch(rnn, embedding=None, head=None, *, tokenizer=None, nonlinearity=None, activation=None,
               recurrent_activation=None, reset_after=True, **kwargs) -> RecurrentStack:
    """Wrap in-memory torch modules: ``rnn`` an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (sequence-first
    or batch-first, it does not matter), or a list of them run one after another (a model with
    ``self.lstm1 = nn.LSTM(...)``, ``self.gru2 = nn.GRU(...)`` of other sizes); optional
    ``nn.Embedding`` before and ``nn.Linear`` after.  The weights are copied; ``kwargs`` go to
    :class:`RecurrentStack` (dtype, device).

    ``activation``, ``recurrent_activation`` and ``reset_after`` run the module's weights as a
    cell variant torch's module does not compute (a GRU written by hand with the reset gate
    before the matmul, hard-sigmoid gates ...; see :class:`StackConfig`); for an ``nn.RNN``,
    ``nonlinearity`` (or ``activation``) may name any activation."""
    modules = list(rnn) if isinstance(rnn, (list, tuple)) else [rnn]
    if not modules:
        raise TypeError("expected nn.LSTM, nn.GRU or nn.RNN modules, got an empty list")
    from torch import nn

    if not reset_after and not any(isinstance(m, nn.GRU) for m in modules):
        raise ValueError("reset_after=False applies to GRU only")
    if recurrent_activation is not None and all(isinstance(m, nn.RNN) for m in modules):
        raise ValueError("recurrent_activation applies to the gates of LSTM and GRU cells; an Elman RNN has none")
    specs, weights, k0 = [], {}, 0
    for module in modules:
        for spec in _torch_layer_specs(module, nonlinearity, activation, recurrent_activation, reset_after):
            specs.append(spec)
        for name, v in module.state_dict().items():
            base, _, layer = name.rpartition("_l")
            num, _, rev = layer.partition("_")
            weights[f"rnn.{base}_l{int(num) + k0}{'_' + rev if rev else ''}"] = v
        k0 += module.num_layers
    cfg = StackConfig.from_layers(
        specs, vocab_size=None if embedding is None else embedding.num_embeddings,
        output_size=None if head is None else head.out_features,
        head_bias=head is not None and head.bias is not None)
    if embedding is not None:
        weights["embed.weight"] = embedding.weight
    if head is not None:
        weights["head.weight"] = head.weight
        if head.bias is not None:
            weights["head.bias"] = head.bias
    kwargs.setdefault("dtype", next(modules[0].parameters()).dtype)
    what = "+".join(type(m).__name__ for m in modules)
    return RecurrentStack(cfg, weights, tokenizer=tokenizer, source=f"<in-memory {what}>", **kwargs)


def _torch_layer_specs(rnn, nonlinearity, activation, recurrent_activation, reset_after) -> list[LayerSpec]:
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
    out = []
    width = rnn.input_size
    for _ in range(rnn.num_layers):
        spec = LayerSpec(cell=cell, input_size=width, hidden_size=rnn.hidden_size, bidirectional=rnn.bidirectional,
                         bias=rnn.bias, proj_size=getattr(rnn, "proj_size", 0), activation=activation,
                         recurrent_activation=recurrent_activation if cell in ("lstm", "gru") else None,
                         reset_after=reset_after if cell == "gru" else True)
        out.append(spec)
        width = spec.output_size
    return out
