"""The classic stack's config: one :class:`LayerSpec` per recurrent layer, and the
:class:`StackConfig` around them (embedding, head, and the uniform shorthand).

A stack's layers may differ in everything a layer has: cell (LSTM, GRU in either reset variant,
Elman with any nonlinearity), sizes, gate and candidate nonlinearities, bias, direction.  A
stack whose layers are all alike is written with the uniform fields alone (``cell``,
``num_layers``, ``hidden_size`` …, as before); a stack whose layers differ carries ``layers``, a
list of per-layer specs, in its JSON form::

    {"vocab_size": 50, "output_size": 3,
     "layers": [{"cell": "lstm", "input_size": 16, "hidden_size": 8, "bidirectional": true},
                {"cell": "gru", "input_size": 16, "hidden_size": 4, "reset_after": false,
                 "recurrent_activation": "hard_sigmoid"}]}

The uniform fields are then filled from ``layers[0]`` (give them only if they agree with it).

Direction, as Keras defines it (checked against Keras 3 in tests/test_hetero_stacks.py):

* ``bidirectional`` with ``merge_mode`` ``concat`` (forward units, then backward), ``sum``,
  ``mul`` or ``ave`` (the two directions' outputs added, multiplied, averaged: what the next
  layer reads is then ``hidden_size`` wide).  The backward direction's outputs are put back
  in time order before merging (Keras's ``Bidirectional``, torch's ``bidirectional=True``).
* ``reversed`` (Keras ``go_backwards=True``, one direction): the layer reads its input from the
  last step to the first and hands its outputs on *in the order it computed them*, so the next
  layer reads the sequence reversed (Keras's ``return_sequences=True`` output of such a layer is
  reversed in time; its last output, ``return_sequences=False``, is the state after the first
  step).  SeqScope records every probe at the token it belongs to: a state is shown at the token
  the layer read last.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from .activations import ACTIVATIONS, DEFAULT_ACTIVATION, DEFAULT_RECURRENT_ACTIVATION, check_activation
from .family import checked_fields

#: Elman cells: ``rnn_`` and the nonlinearity (torch's rnn_tanh and rnn_relu first)
ELMAN_CELLS = ("rnn_tanh", "rnn_relu") + tuple(f"rnn_{a}" for a in ACTIVATIONS if a not in ("tanh", "relu"))
CELLS = ("lstm", "gru") + ELMAN_CELLS
#: how a bidirectional layer joins its two directions (Keras ``Bidirectional(merge_mode=...)``)
MERGE_MODES = ("concat", "sum", "mul", "ave")
#: gate rows stacked in ``weight_ih`` / ``weight_hh``
GATE_ROWS = {"lstm": 4, "gru": 3}


@dataclass(frozen=True)
class LayerSpec:
    """One recurrent layer of a classic stack.

    ``cell``          one of :data:`CELLS` (``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``,
                      ``rnn_linear`` …)
    ``input_size``    features the layer reads at each step
    ``hidden_size``   units per direction
    ``bidirectional`` two directions (weights ``…_l{k}`` and ``…_l{k}_reverse``)
    ``merge_mode``    a bidirectional layer's join: concat, sum, mul, ave (see the module
                      docstring); ``concat`` for a single direction
    ``reversed``      one direction, reading the sequence from its end (Keras ``go_backwards``)
    ``bias``          ``bias_ih`` and ``bias_hh`` present
    ``proj_size``     LSTM projection (torch's ``proj_size``), 0 for none
    ``activation``, ``recurrent_activation``  LSTM/GRU nonlinearities (None: tanh, sigmoid)
    ``reset_after``   GRU: False applies the reset gate before the recurrent matmul
    """

    cell: str
    input_size: int
    hidden_size: int
    bidirectional: bool = False
    merge_mode: str = "concat"
    reversed: bool = False
    bias: bool = True
    proj_size: int = 0
    activation: str | None = None
    recurrent_activation: str | None = None
    reset_after: bool = True

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        for name in ("input_size", "hidden_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.proj_size, int) or isinstance(self.proj_size, bool) or self.proj_size < 0:
            raise ValueError(f"proj_size must be 0 or a positive integer, got {self.proj_size!r}")
        for name in ("bidirectional", "reversed", "bias", "reset_after"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.proj_size and self.cell != "lstm":
            raise ValueError("proj_size applies to LSTM only")
        if self.proj_size >= self.hidden_size and self.proj_size:
            raise ValueError(f"proj_size ({self.proj_size}) must be smaller than hidden_size ({self.hidden_size})")
        if not self.reset_after and self.cell != "gru":
            raise ValueError("reset_after=False applies to GRU only")
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {self.merge_mode!r} (Keras's "
                             "merge_mode=None, two separate outputs, has no single next layer to feed)")
        if self.merge_mode != "concat" and not self.bidirectional:
            raise ValueError(f"merge_mode {self.merge_mode!r} joins the two directions of a bidirectional layer; "
                             "this layer has one direction")
        if self.reversed and self.bidirectional:
            raise ValueError("reversed (go_backwards) applies to a layer of one direction; a bidirectional layer "
                             "already reads the sequence both ways")
        # the standard choice is stored as None, so that equal layers have equal specs
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

    # -- what follows from the fields ------------------------------------------------------------
    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """Width of one direction's output ``h`` (the projection's, with proj_size)."""
        return self.proj_size or self.hidden_size

    @property
    def output_size(self) -> int:
        """Width of what the layer hands to the next one (after merging its directions)."""
        return self.state_size * (2 if self.bidirectional and self.merge_mode == "concat" else 1)

    @property
    def gate_rows(self) -> int:
        return GATE_ROWS.get(self.cell, 1)

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

    def describe(self) -> str:
        """One line for ``info()``: ``bidirectional lstm 8+8 (sum), reads 16``."""
        size = f"{self.hidden_size}+{self.hidden_size}" if self.bidirectional else str(self.hidden_size)
        text = f"{'bidirectional ' if self.bidirectional else ''}{self.cell} {size}"
        if self.bidirectional:
            text += f" ({self.merge_mode})"
        if self.reversed:
            text += ", reversed (go_backwards: reads from the last step, hands its outputs on in that order)"
        if self.proj_size:
            text += f", projection {self.proj_size}"
        if self.cell == "gru" and not self.reset_after:
            text += ", reset gate before the matmul"
        if self.activation or self.recurrent_activation:
            text += f", gates {self.gate_activation}, candidate {self.cell_activation}"
        if not self.bias:
            text += ", no bias"
        return text + f", reads {self.input_size}"

    @classmethod
    def from_dict(cls, d) -> "LayerSpec":
        if isinstance(d, LayerSpec):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"each entry of layers must be an object of layer fields, not {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"a layer has unknown fields {unknown}; a layer has: "
                             f"{', '.join(f.name for f in fields(cls))}")
        missing = [k for k in ("cell", "input_size", "hidden_size") if k not in d]
        if missing:
            raise ValueError(f"a layer is missing {', '.join(missing)}")
        return cls(**checked_fields(cls, d))


#: the StackConfig fields that describe every layer alike (taken from ``layers[0]`` when
#: ``layers`` is given)
UNIFORM_FIELDS = ("cell", "hidden_size", "input_size", "bidirectional", "bias", "proj_size", "activation",
                  "recurrent_activation", "reset_after")


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
    #: per-layer specs when the layers differ (None: every layer as the fields above say)
    layers: tuple[LayerSpec, ...] | None = None

    def __post_init__(self):
        if self.layers is None:
            if not isinstance(self.num_layers, int) or self.num_layers < 1:
                raise ValueError(f"num_layers must be a positive integer, got {self.num_layers!r}")
            first = LayerSpec(cell=self.cell, input_size=self.input_size, hidden_size=self.hidden_size,
                              bidirectional=self.bidirectional, bias=self.bias, proj_size=self.proj_size,
                              activation=self.activation, recurrent_activation=self.recurrent_activation,
                              reset_after=self.reset_after)
            object.__setattr__(self, "activation", first.activation)
            object.__setattr__(self, "recurrent_activation", first.recurrent_activation)
            return
        specs = tuple(LayerSpec.from_dict(s) for s in self.layers)
        if not specs:
            raise ValueError("layers is empty: a stack needs at least one recurrent layer")
        if self.num_layers != len(specs):
            raise ValueError(f"num_layers is {self.num_layers} but layers lists {len(specs)}")
        first = specs[0]
        for name in UNIFORM_FIELDS:
            want = getattr(first, name)
            if name in ("activation", "recurrent_activation") and getattr(self, name) is not None:
                mine = LayerSpec(**{**asdict(first), name: getattr(self, name)}).__getattribute__(name)
            else:
                mine = getattr(self, name)
            if mine != want:
                raise ValueError(f"the config's {name} is {getattr(self, name)!r} but layers[0] says {want!r}; "
                                 "when layers is given, leave the per-layer fields to it")
        for k in range(1, len(specs)):
            if specs[k].input_size != specs[k - 1].output_size:
                raise ValueError(f"layers[{k}] reads {specs[k].input_size} features but layers[{k - 1}] gives "
                                 f"{specs[k - 1].output_size}")
        uniform = _uniform_specs(self)
        object.__setattr__(self, "layers", None if specs == uniform else specs)

    @classmethod
    def from_layers(cls, layers, *, vocab_size=None, output_size=None, head_bias=True) -> "StackConfig":
        """The config of a stack of ``layers`` (LayerSpecs or dicts of their fields)."""
        return cls.from_dict({"layers": list(layers), "vocab_size": vocab_size, "output_size": output_size,
                              "head_bias": head_bias})

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """Every layer's spec (from ``layers``, or the uniform fields)."""
        return self.layers if self.layers is not None else _uniform_specs(self)

    @property
    def cell_activation(self) -> str:
        return self.layer_specs()[0].cell_activation

    @property
    def gate_activation(self) -> str | None:
        return self.layer_specs()[0].gate_activation

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def layer_output_size(self) -> int:
        """Width the last layer hands on (what the head reads)."""
        return self.layer_specs()[-1].output_size

    def to_json(self) -> str:
        d = asdict(self)
        if d["layers"] is None:  # uniform stacks keep the JSON they always had
            del d["layers"]
        return json.dumps(d)

    @classmethod
    def from_dict(cls, d: dict) -> "StackConfig":
        """The config from a dict; a ValueError names an entry of the wrong type or range.
        With ``layers``, the uniform fields left out are taken from its first layer."""
        d = dict(d)
        layers = d.get("layers")
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise ValueError(f"layers must be a list of layer objects, not {type(layers).__name__}")
            specs = tuple(LayerSpec.from_dict(s) for s in layers)
            if not specs:
                raise ValueError("layers is empty: a stack needs at least one recurrent layer")
            for name in UNIFORM_FIELDS:
                d.setdefault(name, getattr(specs[0], name))
            d.setdefault("num_layers", len(specs))
            d["layers"] = specs
        out = checked_fields(cls, {k: v for k, v in d.items() if k != "layers"})
        if layers is not None:
            out["layers"] = d["layers"]
        return cls(**out)


def _uniform_specs(cfg: StackConfig) -> tuple[LayerSpec, ...]:
    out = []
    width = cfg.input_size
    for _ in range(cfg.num_layers):
        spec = LayerSpec(cell=cfg.cell, input_size=width, hidden_size=cfg.hidden_size,
                         bidirectional=cfg.bidirectional, bias=cfg.bias, proj_size=cfg.proj_size,
                         activation=cfg.activation, recurrent_activation=cfg.recurrent_activation,
                         reset_after=cfg.reset_after)
        out.append(spec)
        width = spec.output_size
    return tuple(out)


def canonical_weight_shapes(cfg: StackConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a model with this config has, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.vocab_size is not None:
        shapes["embed.weight"] = (cfg.vocab_size, cfg.input_size)
    for k, spec in enumerate(cfg.layer_specs()):
        rows = spec.gate_rows * spec.hidden_size
        for sfx in ("", "_reverse")[: spec.directions]:
            shapes[f"rnn.weight_ih_l{k}{sfx}"] = (rows, spec.input_size)
            shapes[f"rnn.weight_hh_l{k}{sfx}"] = (rows, spec.state_size)
            if spec.bias:
                shapes[f"rnn.bias_ih_l{k}{sfx}"] = (rows,)
                shapes[f"rnn.bias_hh_l{k}{sfx}"] = (rows,)
            if spec.proj_size:
                shapes[f"rnn.weight_hr_l{k}{sfx}"] = (spec.proj_size, spec.hidden_size)
    if cfg.output_size is not None:
        shapes["head.weight"] = (cfg.output_size, cfg.layer_output_size)
        if cfg.head_bias:
            shapes["head.bias"] = (cfg.output_size,)
    return shapes
