"""Keras layers → SeqScope's classic stack: what both Keras readers share (:mod:`.keras_h5` for
Keras 1/2 HDF5 files, :mod:`.keras_v3` for Keras 3 ``.keras`` / ``.weights.h5``).  A reader
turns its file into a list of :class:`KerasLayer` (class name, layer name, the layer's config
when the file has one, its weights under Keras's names: ``embeddings``, ``kernel``,
``recurrent_kernel``, ``bias``, and ``forward/…`` / ``backward/…`` inside a Bidirectional);
:func:`assemble` checks them and returns torch-layout tensors and the exact stack config.

Keras's semantics, turned into torch's layout (see :mod:`engine.models.gru` for the GRU):

* kernels are stored input × units, so every matrix is transposed;
* LSTM gates i, f, c, o are torch's i, f, g, o; its one bias is ``bias_ih`` (``bias_hh`` zero);
* GRU gates z, r, h become r, z, n; ``reset_after=True`` keeps a bias of shape (2, 3u) (input
  and recurrent rows → ``bias_ih``/``bias_hh``), ``reset_after=False`` one bias (3u,) → ``bias_ih``;
* ``hard_sigmoid`` is Keras 2's clip(0.2x + 0.5) in Keras 1/2 files and Keras 3's clip(x/6 + 0.5)
  in Keras 3 files;
* a CuDNNLSTM/CuDNNGRU keeps its kernels in cuDNN's per-gate layout (converted as Keras 2 converts
  them) and two biases (input, recurrent); a CuDNNGRU is a reset_after=True GRU;
* layers may differ in cell, size and direction (one :class:`engine.models.stack_config.LayerSpec`
  each): a Bidirectional's ``merge_mode`` (concat, sum, mul, ave) and ``go_backwards`` (a
  ``reversed`` layer: it reads from the last step and hands its outputs on in that order) mean
  what they mean in Keras; SeqScope records every state at its token;
* the Dense head's activation (softmax, sigmoid, …) is not applied: SeqScope records logits;
* what follows the recurrent layers and is not one Dense layer at each step (a second Dense, a
  pooling, a convolution, an attention layer) is not approximated: the recurrent core loads and
  the trace holds no logits, as the notes say.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import LoadError
from ..models.activations import check_activation
from ..models.stack_config import MERGE_MODES
from .record import _short

RECURRENT = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3, "CuDNNLSTM": 4, "CuDNNGRU": 3}
#: layers that compute nothing at inference (a Masking layer is noted: Keras skips masked steps)
INERT = ("InputLayer", "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
         "Masking")
HEAD_WRAPPERS = ("Dense", "TimeDistributed")
READ = ("Embedding", "Bidirectional", "Activation") + HEAD_WRAPPERS
#: the class of a layer in a file that does not name it and whose weights do not tell it
UNKNOWN = "unnamed kind"
#: Keras's names for activations SeqScope knows under another name
ALIASES = {"swish": "silu"}


@dataclass
class KerasLayer:
    cls: str  # Keras class name
    name: str  # the layer's name, for messages
    config: dict | None  # the layer's config, None when the file holds weights only
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def reads_weights(cls: str) -> bool:
    """Whether SeqScope reads the weights of a layer of class ``cls`` (others are not read at all:
    a layer it does not compute is refused before the recurrent layers, and after them ends the
    model at the recurrent core)."""
    return cls in RECURRENT or cls in READ or cls in INERT


def model_layers(model, name: str, what: str) -> list[tuple[str, dict]]:
    """``[(class name, layer config)]`` of a Keras model config (``model.to_json()``: a
    Sequential, or a Functional model whose layers form one chain from its input to its output);
    a LoadError for anything else."""
    def fail(text):
        raise LoadError(f"{name}: {text}")

    if not isinstance(model, dict):
        fail(f"its {what} is not a JSON object")
    cls = model.get("class_name")
    body = model.get("config")
    layers = body.get("layers") if isinstance(body, dict) else body  # Keras 2.0/2.1 Sequential: a list
    if not isinstance(layers, list):
        fail(f"its {what} ({_short(cls, 60)}) lists no layers")
    out = []
    for entry in layers:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            fail(f"its {what} holds a layer that is not an object with a config")
        out.append((str(entry.get("class_name")), entry["config"]))
        if out[-1][0] in ("Sequential", "Functional", "Model") or "layers" in entry["config"]:
            fail(f"layer {_short(entry['config'].get('name'), 60)!r} is a nested Keras model ({out[-1][0]}), which "
                 "SeqScope does not read: save the inner model on its own, or rebuild the model as one Sequential")
    if isinstance(body, dict) and "input_layers" in body:  # a Functional model: one chain, or refused
        previous = None
        for entry, (lcls, lcfg) in zip(layers, out):
            sources = _inbound(entry.get("inbound_nodes"))
            lname = lcfg.get("name")
            if lcls == "InputLayer" and previous is None and not sources:
                previous = lname
                continue
            if previous is None or sources != [previous]:
                fail(f"its {what} is a model whose layers are not one chain (layer {_short(lname, 60)!r} reads "
                     f"{', '.join(map(str, sources)) or 'no layer'}); SeqScope reads one input → layers → one output")
            previous = lname
    return out


def _inbound(nodes, depth: int = 0) -> list[str]:
    """The names of the layers a Functional layer reads: Keras 3's ``keras_history`` entries or
    Keras 2's ``[name, node, tensor, kwargs]`` lists."""
    found: list[str] = []
    if depth > 8:
        return found
    if isinstance(nodes, dict):
        history = nodes.get("keras_history") if isinstance(nodes.get("keras_history"), list) else None
        if history and isinstance(history[0], str):
            return [history[0]]
        for v in nodes.values():
            found += _inbound(v, depth + 1)
    elif isinstance(nodes, list):
        if len(nodes) >= 3 and isinstance(nodes[0], str) and isinstance(nodes[1], int):
            return [nodes[0]]
        for v in nodes:
            found += _inbound(v, depth + 1)
    return found


def recurrent_kind(lname: str, weights, fail) -> str:
    """SimpleRNN, GRU or LSTM, told by the kernel's columns per unit (1, 3 or 4), for files that
    do not name a layer's class."""
    units = weights["recurrent_kernel"].shape[0]
    cols = weights["kernel"].shape[-1]
    kind = {units: "SimpleRNN", 3 * units: "GRU", 4 * units: "LSTM"}.get(cols)
    if kind is None:
        fail(f"layer {lname!r} has a kernel of {cols} columns for {units} units: not a SimpleRNN, GRU or LSTM")
    return kind


def _what(cls: str) -> str:
    if cls == UNKNOWN:
        return "a layer whose kind the file does not name"
    return "an Activation layer" if cls == "Activation" else f"a Keras {cls} layer"


def supported_text() -> str:
    return ("Embedding, SimpleRNN, LSTM, GRU, CuDNNLSTM, CuDNNGRU, Bidirectional, one Dense head, "
            "and ignores InputLayer, Masking and Dropout")


def assemble(layers: list[KerasLayer], *, name: str, keras3: bool, notes: list[str]):
    """The layers as canonical tensors (``embed.weight``, ``rnn.weight_ih_l0``, …, ``head.weight``)
    and a stack config; a LoadError naming the layer that SeqScope cannot read faithfully."""
    return _Assembler(name, keras3, notes).run(layers)


class _Assembler:
    def __init__(self, name: str, keras3: bool, notes: list[str]):
        self.name, self.keras3, self.notes = name, keras3, notes

    def fail(self, text: str):
        raise LoadError(f"{self.name}: {text}")

    def run(self, layers: list[KerasLayer]):
        tensors: dict[str, torch.Tensor] = {}
        cfg: dict = {}
        recurrent = []  # (layer name, options)
        embed_seen = False
        rest: list[KerasLayer] = []  # the layers after the last recurrent one
        for layer in layers:
            cls, lname, lcfg, weights = layer.cls, layer.name, layer.config, layer.weights
            if cls in INERT:
                if weights:
                    self.fail(f"layer {lname!r} ({cls}) holds weights, which SeqScope does not expect")
                if cls == "Masking":
                    self.notes.append(f"the Masking layer {lname!r}: Keras skips the steps whose features all "
                                      f"equal {(lcfg or {}).get('mask_value', 0.0)}, SeqScope runs every step")
                continue
            if cls in RECURRENT or cls == "Bidirectional":
                if rest:
                    self.fail(f"layer {lname!r} ({cls}) reads the output of layer {rest[0].name!r} "
                              f"({rest[0].cls}), which SeqScope does not compute between recurrent layers")
                read = self._bidirectional if cls == "Bidirectional" else self._recurrent
                args = (lname, lcfg, weights, len(recurrent), tensors)
                recurrent.append((lname, read(*args) if cls == "Bidirectional" else read(cls, *args)))
            elif recurrent:
                rest.append(layer)
            elif cls == "Embedding":
                if embed_seen:
                    self.fail(f"layer {lname!r} is a second Embedding")
                emb = self._need(weights, lname, "embeddings", 2)
                tensors["embed.weight"] = torch.from_numpy(emb)
                cfg.update(vocab_size=emb.shape[0], input_size=emb.shape[1])
                embed_seen = True
                if lcfg and lcfg.get("mask_zero"):
                    self.notes.append(f"the Embedding {lname!r} has mask_zero=True: Keras skips steps whose id "
                                      "is 0 (padding), SeqScope runs every step, so give inputs without id 0")
            else:
                what = _what(cls)
                self.fail(f"layer {lname!r} is {what} before the recurrent layers, which SeqScope does not read "
                          f"(it changes what they read; SeqScope reads {supported_text()})")
        if not recurrent:
            self.fail("it holds no SimpleRNN, LSTM or GRU layer")
        last_name, last = recurrent[-1]
        if last["bidirectional"] and last["return_sequences"] is False and rest:
            self.notes.append(f"the last layer ({last_name!r}) is a Bidirectional with return_sequences=False: Keras's "
                              "next layers read its forward half's last step together with its backward half's "
                              "first step, which is no step of the trace, so SeqScope loaded the recurrent layers "
                              "without what follows them (no logits)")
            rest = []
        head = self._head(rest, tensors, cfg)
        self._stack(recurrent, cfg, embed_seen)
        self._last_step_note(recurrent, head)
        return tensors, cfg

    # -- the stack as a whole ------------------------------------------------------------------
    def _stack(self, recurrent, cfg, embed_seen) -> None:
        """The recurrent layers as SeqScope's stack: the uniform fields when every layer is alike,
        else one spec per layer (:class:`engine.models.stack_config.LayerSpec`)."""
        specs = []
        for k, (lname, opts) in enumerate(recurrent):
            width = cfg["input_size"] if k == 0 and embed_seen else None
            if k > 0:
                width = specs[-1]["hidden_size"] * (2 if specs[-1]["bidirectional"]
                                                   and specs[-1]["merge_mode"] == "concat" else 1)
            if width is not None and opts["input"] != width:
                what = "the Embedding" if k == 0 else "the layer before it"
                self.fail(f"layer {lname!r} reads {opts['input']} features but {what} gives {width}")
            spec = dict(cell=opts["cell"], input_size=opts["input"], hidden_size=opts["units"],
                        bidirectional=opts["bidirectional"], merge_mode=opts["merge_mode"],
                        reversed=opts["reversed"], bias=opts["bias"])
            if not opts["cell"].startswith("rnn_"):
                spec.update(activation=opts["activation"], recurrent_activation=opts["recurrent_activation"])
            if opts["cell"] == "gru":
                spec["reset_after"] = opts["reset_after"]
            specs.append(spec)
        if not embed_seen:
            cfg["input_size"] = specs[0]["input_size"]
        last = specs[-1]
        width = last["hidden_size"] * (2 if last["bidirectional"] and last["merge_mode"] == "concat" else 1)
        if cfg.get("head_input") not in (None, width):
            self.fail(f"the Dense head reads {cfg['head_input']} features but the last recurrent layer gives {width}")
        cfg.pop("head_input", None)
        first = specs[0]
        uniform = all({**s, "input_size": 0} == {**first, "input_size": 0} for s in specs[1:]) \
            and first["merge_mode"] == "concat" and not first["reversed"]
        cfg.update(num_layers=len(specs), **{k: v for k, v in first.items() if k not in ("merge_mode", "reversed")})
        if not uniform:
            cfg["layers"] = specs

    def _last_step_note(self, recurrent, head) -> None:
        last_name, opts = recurrent[-1]
        if opts["return_sequences"] is not False:
            return
        if opts["bidirectional"]:
            self.notes.append(f"the last layer ({last_name!r}) is a Bidirectional with return_sequences=False: Keras's "
                              "output is its forward half at the last step and its backward half at the first step")
            return
        # the last layer's final step: the first token when it reads the tokens backwards
        backwards = sum(bool(o["reversed"]) for _, o in recurrent) % 2 == 1
        where = "the first token (it reads the tokens from the last one)" if backwards else "the last step"
        if head is not None:
            self.notes.append(f"the last recurrent layer ({last_name!r}) has return_sequences=False: Keras applies "
                              f"the head to its final step only; SeqScope records logits at every step, and those "
                              f"at {where} are Keras's output")
        else:
            self.notes.append(f"the last recurrent layer ({last_name!r}) has return_sequences=False; SeqScope "
                              f"records every step, the one at {where} being Keras's output")

    # -- the head --------------------------------------------------------------------------------
    def _head(self, rest: list[KerasLayer], tensors, cfg):
        """The Dense (or TimeDistributed(Dense)) layer after the recurrent ones, possibly with
        Dropout before it and an Activation after it; None when there is none, or when what follows
        the recurrent layers is more than that (then no logits, said in the notes)."""
        rest = [layer for layer in rest if layer.cls not in INERT or layer.weights]
        if not rest:
            return None
        dense, after = rest[0], rest[1:]
        lcfg = dense.config
        if dense.cls == "TimeDistributed":  # TimeDistributed(Dense): the same Dense at every step
            inner = (lcfg or {}).get("layer")
            inner_cls = inner.get("class_name") if isinstance(inner, dict) else None
            if lcfg is not None and inner_cls != "Dense":
                return self._no_head(rest, f"a TimeDistributed around {inner_cls or 'an unknown layer'}")
            lcfg = inner.get("config") if isinstance(inner, dict) and isinstance(inner.get("config"), dict) else None
        elif dense.cls != "Dense":
            return self._no_head(rest, _what(dense.cls))
        activations = []
        for layer in after:
            act = (layer.config or {}).get("activation")
            if layer.cls != "Activation" or layer.weights:
                return self._no_head(rest, f"a Dense layer followed by {_what(layer.cls)} ({layer.name!r})")
            activations.append((layer.name, act))
        kernel = self._need(dense.weights, dense.name, "kernel", 2)
        bias = dense.weights.get("bias")
        if bias is not None and bias.shape != (kernel.shape[1],):
            self.fail(f"layer {dense.name!r}'s bias is {list(bias.shape)}, its kernel {list(kernel.shape)} needs "
                      f"[{kernel.shape[1]}]")
        if lcfg is not None and lcfg.get("use_bias", True) != (bias is not None):
            self.fail(f"layer {dense.name!r} has use_bias={lcfg.get('use_bias', True)} but "
                      f"{'no' if bias is None else 'a'} bias weight")
        tensors["head.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        if bias is not None:
            tensors["head.bias"] = torch.from_numpy(bias)
        cfg.update(output_size=kernel.shape[1], head_bias=bias is not None, head_input=kernel.shape[0])
        act = (lcfg or {}).get("activation", "linear")
        if act not in ("linear", None):
            self.notes.append(f"the Dense head {dense.name!r} applies "
                              f"{act if isinstance(act, str) else 'a custom function'} after its matmul; SeqScope "
                              "records the logits before it")
        for lname, act in activations:  # Dense then Activation("softmax"), as Keras 2's examples wrote it
            self.notes.append(f"the Activation layer {lname!r} after the head applies "
                              f"{act if isinstance(act, str) else 'a function'}; SeqScope records the logits "
                              "before it")
        return dense.name

    def _no_head(self, rest: list[KerasLayer], what: str):
        names = ", ".join(f"{layer.name!r} ({layer.cls})" for layer in rest)
        self.notes.append(f"the recurrent layers are followed by {what}, which is not one linear layer at each step: "
                          f"SeqScope loaded the recurrent core only and records no logits (not loaded: {names})")
        return None

    # -- one layer -------------------------------------------------------------------------------
    def _need(self, weights, lname: str, key: str, ndim: int) -> np.ndarray:
        if key not in weights:
            self.fail(f"layer {lname!r} has no {key!r} weight (it holds {sorted(weights) or 'none'})")
        arr = weights[key]
        if arr.ndim != ndim:
            self.fail(f"layer {lname!r}'s {key} has shape {list(arr.shape)}, expected {ndim} dimensions")
        return arr

    def _activation(self, name, lname: str, role: str) -> str:
        if not isinstance(name, str):
            self.fail(f"layer {lname!r} has a custom {role} ({_short(name, 80)}), which SeqScope cannot compute")
        name = ALIASES.get(name, name)
        if name == "hard_sigmoid" and self.keras3:
            return "hard_sigmoid_keras3"
        try:
            return check_activation(name, f"layer {lname!r}'s {role}")
        except LoadError as exc:
            self.fail(str(exc))

    def _from_cudnn(self, cls, lname, kernel, rec, weights):
        """A CuDNNLSTM/CuDNNGRU's weights in Keras's LSTM/GRU layout (as Keras 2 converts them when
        loading such a file into an LSTM/GRU): per gate, ``kernel_g.T.reshape(kernel_g.shape,
        order="F")`` and ``recurrent_g.T``; the bias (2 × gates × units,) is the input and the
        recurrent bias, kept apart (a CuDNNGRU is a reset_after=True GRU)."""
        gates = RECURRENT[cls]
        units = rec.shape[0]
        if rec.shape != (units, gates * units) or kernel.shape[1] != gates * units:
            self.fail(f"layer {lname!r} (CuDNN{cls} of {units} units) has kernel {list(kernel.shape)} and "
                      f"recurrent_kernel {list(rec.shape)}; it needs [input, {gates * units}] and "
                      f"[{units}, {gates * units}]")
        kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.split(kernel, gates, axis=1)])
        rec = np.hstack([k.T for k in np.split(rec, gates, axis=1)])
        weights = dict(weights)
        bias = weights.get("bias")
        if bias is not None:
            if bias.shape != (2 * gates * units,):
                self.fail(f"layer {lname!r}'s bias is {list(bias.shape)}; a CuDNN{cls} of {units} units keeps "
                          f"two biases, [{2 * gates * units}] in all")
            weights["bias"] = bias.reshape(2, gates * units)
        self.notes.append(f"layer {lname!r} is a CuDNN{cls}: its kernels were read in cuDNN's per-gate layout "
                          "and its two biases kept apart (tanh and sigmoid, as cuDNN computes)")
        return kernel, rec, weights

    def _bidirectional(self, lname, lcfg, weights, index, tensors) -> dict:
        """A Bidirectional wrapper with merge_mode "concat": torch's bidirectional layer (forward
        features first, then backward, each in time order)."""
        lcfg = lcfg or {}
        mode = lcfg.get("merge_mode", "concat")
        if mode not in MERGE_MODES:
            self.fail(f"layer {lname!r} is a Bidirectional with merge_mode={_short(mode, 40)!r}; SeqScope reads the "
                      f"merge modes {', '.join(MERGE_MODES)} (merge_mode=None hands on two outputs, not one sequence)")
        halves = {side: {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith(side + "/")}
                  for side in ("forward", "backward")}
        if not halves["forward"] or not halves["backward"] or len(weights) != sum(map(len, halves.values())):
            self.fail(f"layer {lname!r} is a Bidirectional whose weights are not split into a forward and a "
                      "backward layer")
        inner = lcfg.get("layer") if isinstance(lcfg.get("layer"), dict) else None
        cls = str(inner.get("class_name")) if inner else None
        if cls not in RECURRENT:
            self.fail(f"layer {lname!r} is a Bidirectional around a {cls}; SeqScope reads SimpleRNN, LSTM and GRU")
        inner_cfg = inner.get("config") if inner and isinstance(inner.get("config"), dict) else None
        back = lcfg.get("backward_layer")
        if isinstance(back, dict) and isinstance(back.get("config"), dict):
            bcfg = back["config"]
            same = all(bcfg.get(k) == (inner_cfg or {}).get(k) for k in
                       ("units", "activation", "recurrent_activation", "use_bias", "reset_after"))
            if not same or not bcfg.get("go_backwards") or back.get("class_name") != cls:
                self.fail(f"layer {lname!r} is a Bidirectional whose backward layer differs from its forward one; "
                          "SeqScope reads mirrored pairs only")
        if inner_cfg and inner_cfg.get("go_backwards"):
            self.fail(f"layer {lname!r} is a Bidirectional whose forward layer has go_backwards=True; SeqScope reads "
                      "Bidirectional wrappers of forward layers")
        fwd = self._recurrent(cls, lname, inner_cfg, halves["forward"], index, tensors)
        bwd = self._recurrent(cls, lname, inner_cfg, halves["backward"], index, tensors, suffix="_reverse")
        if any(fwd[k] != bwd[k] for k in ("units", "input", "bias", "reset_after")):
            self.fail(f"layer {lname!r}'s forward and backward layers differ in size")
        fwd["bidirectional"], fwd["merge_mode"] = True, mode
        fwd["return_sequences"] = inner_cfg.get("return_sequences") if inner_cfg is not None else None
        return fwd

    def _recurrent(self, cls, lname, lcfg, weights, index, tensors, suffix="") -> dict:
        lcfg = lcfg or {}
        if lcfg.get("time_major"):
            self.fail(f"layer {lname!r} has time_major=True, which SeqScope does not read")
        if lcfg.get("stateful"):
            self.notes.append(f"layer {lname!r} is stateful in Keras; SeqScope starts every run from zero state")
        kernel = self._need(weights, lname, "kernel", 2)
        rec = self._need(weights, lname, "recurrent_kernel", 2)
        units = rec.shape[0]
        cudnn = cls.startswith("CuDNN")
        if cudnn:
            cls = cls[len("CuDNN"):]
            kernel, rec, weights = self._from_cudnn(cls, lname, kernel, rec, weights)
        if lcfg.get("units") is not None and lcfg["units"] != units:
            self.fail(f"layer {lname!r}'s config says {lcfg['units']} units but its recurrent_kernel is "
                      f"{list(rec.shape)}")
        gates = RECURRENT[cls]
        if rec.shape != (units, gates * units) or kernel.shape[1] != gates * units:
            self.fail(f"layer {lname!r} ({cls} of {units} units) has kernel {list(kernel.shape)} and recurrent_kernel "
                      f"{list(rec.shape)}; a {cls} needs [input, {gates * units}] and [{units}, {gates * units}]")
        bias = weights.get("bias")
        use_bias = lcfg.get("use_bias", bias is not None)
        if use_bias and bias is None:
            self.fail(f"layer {lname!r} has use_bias=True but no bias weight")
        if not use_bias and bias is not None:
            self.fail(f"layer {lname!r} has use_bias=False but holds a bias")
        reset_after = None
        if cls == "GRU":
            reset_after = bool(lcfg.get("reset_after", bias is not None and bias.ndim == 2)) if lcfg \
                else bool(bias is not None and bias.ndim == 2)
        if cudnn:
            reset_after = True if cls == "GRU" else None
        want_bias = (2, gates * units) if reset_after or cudnn else (gates * units,)
        if bias is not None and bias.shape != want_bias:
            self.fail(f"layer {lname!r}'s bias is {list(bias.shape)}, a {cls}"
                      + (f" with reset_after={reset_after}" if cls == "GRU" else "") + f" needs {list(want_bias)}")
        act = self._activation(lcfg.get("activation", "tanh"), lname, "activation")
        rec_act = None if cls == "SimpleRNN" else self._activation(lcfg.get("recurrent_activation", "sigmoid"),
                                                                  lname, "recurrent_activation")
        order = np.arange(gates * units)
        if cls == "GRU":  # z, r, h -> r, z, n
            order = np.concatenate([np.arange(units, 2 * units), np.arange(units), np.arange(2 * units, 3 * units)])
        put = lambda key, arr: tensors.__setitem__(f"rnn.{key}_l{index}{suffix}", torch.from_numpy(  # noqa: E731
            np.ascontiguousarray(arr)))
        put("weight_ih", kernel[:, order].T)
        put("weight_hh", rec[:, order].T)
        if bias is not None:
            b_ih, b_hh = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros_like(bias))
            put("bias_ih", b_ih[order])
            put("bias_hh", b_hh[order])
        cell = f"rnn_{act}" if cls == "SimpleRNN" else cls.lower()
        return dict(cell=cell, units=units, input=kernel.shape[0], bias=bool(use_bias), activation=act,
                    bidirectional=False, merge_mode="concat", reversed=bool(lcfg.get("go_backwards")),
                    recurrent_activation=rec_act, reset_after=reset_after,
                    return_sequences=lcfg.get("return_sequences") if lcfg else None)
