"""Keras 1/2 HDF5 weight files (read with h5py; Keras is never imported): how a Keras
Embedding → SimpleRNN/LSTM/GRU (or CuDNNLSTM/CuDNNGRU, or any of them in a Bidirectional with
merge_mode "concat") stack → Dense head becomes SeqScope's classic stack.  The recurrent layers
must be of one kind and size (SeqScope's stack is uniform so far); anything else is refused by name.

Layouts read: ``model.save("m.h5")`` (weights under ``/model_weights/<layer>/…``, each layer's
config in the root's ``model_config`` JSON; Keras 3 writes this legacy layout too) and Keras 1/2
``save_weights("w.h5")`` (``/<layer>/…`` with ``layer_names``/``weight_names`` attributes and no
config: the architecture then comes from the weights' shapes and Keras's defaults, said in the
notes, and ``config=`` overrides it).  Keras 3's own ``.weights.h5`` layout (``/layers/<name>/vars``)
is refused in words.

Keras's semantics, turned into torch's layout (see :mod:`engine.models.gru` for the GRU):

* kernels are stored input × units, so every matrix is transposed;
* LSTM gates i, f, c, o are torch's i, f, g, o; its one bias is ``bias_ih`` (``bias_hh`` zero);
* GRU gates z, r, h become r, z, n; ``reset_after=True`` keeps a bias of shape (2, 3u) (input
  and recurrent rows → ``bias_ih``/``bias_hh``), ``reset_after=False`` one bias (3u,) → ``bias_ih``;
* ``hard_sigmoid`` is Keras 2's clip(0.2x + 0.5) in Keras 1/2 files and Keras 3's clip(x/6 + 0.5)
  in files whose ``keras_version`` is 3.x;
* a CuDNNLSTM/CuDNNGRU keeps its kernels in cuDNN's per-gate layout (converted as Keras 2 converts
  them) and two biases (input, recurrent); a CuDNNGRU is a reset_after=True GRU;
* the Dense head's activation (softmax, sigmoid, …) is not applied: SeqScope records logits.

The result is a :class:`_Found` with canonical names (``embed.weight``, ``rnn.weight_ih_l0``, …,
``head.weight``) and the exact config in ``metadata["seqscope_config"]``, built by
:func:`engine.loading.classic._build` like any other classic stack.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import safe_json
from ..errors import LoadError
from ..limits import display_name
from ..models.activations import check_activation
from .record import _Found, _short

TRACE_FORMAT = "seqscope-trace"
RECURRENT = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3, "CuDNNLSTM": 4, "CuDNNGRU": 3}
IGNORED = ("InputLayer", "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout")
MAX_LAYERS = 10_000


def is_keras_h5(path) -> bool:
    """Whether ``path`` starts with HDF5's signature (Keras weights or a SeqScope trace)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x89HDF"
    except OSError:
        return False


def read_keras_h5(path: Path) -> _Found:
    import h5py

    name = display_name(path.name)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise LoadError(f"{name} is an HDF5 file that cannot be opened: it is truncated or damaged "
                        f"({_short(exc)})") from None
    try:
        with f:
            size = path.stat().st_size
            return _Reader(f, name, size).read()
    except LoadError:
        raise
    except (KeyError, OSError, ValueError, TypeError, RuntimeError, IndexError, AttributeError,
            UnicodeError) as exc:
        raise LoadError(f"{name} is a Keras HDF5 file that could not be read (damaged?): {_short(exc)}") from None


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _text(v.item())
    return str(v)


def _names(attr) -> list[str]:
    if attr is None:
        return []
    return [_text(x) for x in np.asarray(attr).reshape(-1).tolist()] if np.asarray(attr).size else []


class _Reader:
    def __init__(self, f, name: str, size: int):
        self.f, self.name, self.size = f, name, size
        self.notes: list[str] = []

    def fail(self, text: str):
        raise LoadError(f"{self.name}: {text}")

    # -- the file's layout -----------------------------------------------------------------------
    def read(self) -> _Found:
        f = self.f
        if _text(f.attrs.get("format", "")) == TRACE_FORMAT:
            raise LoadError(f"{self.name} is a SeqScope trace, not a model: open it as a trace "
                            "(engine.load_trace, or the window's File ▸ Open trace)")
        if "layers" in f and "vars" in f and "layer_names" not in f.attrs:
            raise LoadError(f"{self.name} is a Keras 3 .weights.h5 file, which SeqScope does not read yet (it holds "
                            "no architecture): save the model with model.save('model.h5') and open that")
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise LoadError(f"{self.name} is an HDF5 file but neither Keras weights (no layer_names attribute) "
                            "nor a SeqScope trace")
        version = _text(f.attrs.get("keras_version", root.attrs.get("keras_version", "")))
        self.keras3 = version.split(".")[0] == "3"
        self.version = version
        configs = self._layer_configs()
        layer_names = _names(root.attrs["layer_names"])
        if len(layer_names) > MAX_LAYERS:
            self.fail(f"it lists {len(layer_names):,} layers, more than SeqScope reads")
        layers = []  # (class name or None, layer name, config or None, {weight name: array})
        if configs is not None:
            for cls, cfg in configs:
                lname = str(cfg.get("name", ""))
                self._check_class(cls, lname)
                weights = self._weights(root, lname) if lname in root else {}
                layers.append((cls, lname, cfg, weights))
            missing = [n for n in layer_names if n not in {ln for _, ln, _, _ in layers}
                       and self._weights(root, n)]
            if missing:
                self.fail(f"it holds weights for layer {missing[0]!r}, which its model_config does not describe")
        else:
            self.notes.append("a Keras save_weights file (no model_config): the architecture was inferred from "
                              "the weights' shapes and Keras's defaults (activation tanh, recurrent_activation "
                              "sigmoid); a model trained with other activations (Keras ≤ 2.2 LSTMs and GRUs used "
                              "hard_sigmoid) needs config={'recurrent_activation': ...}")
            for lname in layer_names:
                layers.append((None, lname, None, self._weights(root, lname)))
        tensors, config = self._assemble(layers)
        fmt = "keras-h5" + (f" (Keras {version})" if version else "")
        return _Found(name=self.name, fmt=fmt, tensors=tensors, metadata={"seqscope_config": config},
                      notes=self.notes)

    def _layer_configs(self):
        raw = self.f.attrs.get("model_config")
        if raw is None:
            return None
        model = safe_json.loads(_text(raw), f"{self.name}'s model_config")
        if not isinstance(model, dict):
            self.fail("its model_config is not a JSON object")
        cls = model.get("class_name")
        body = model.get("config")
        layers = body.get("layers") if isinstance(body, dict) else body  # Keras 2.0/2.1 Sequential: a list
        if not isinstance(layers, list):
            self.fail(f"its model_config ({cls}) lists no layers")
        out = []
        for entry in layers:
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                self.fail("its model_config holds a layer that is not an object with a config")
            out.append((str(entry.get("class_name")), entry["config"]))
        return out

    def _weights(self, root, lname: str) -> dict[str, np.ndarray]:
        g = root[lname]
        out = {}
        for wn in _names(g.attrs.get("weight_names")):
            if wn not in g:
                self.fail(f"layer {lname!r} lists weight {wn!r}, which the file does not hold")
            parts = wn.split("/")
            short = parts[-1].split(":")[0]
            # a Bidirectional layer's weights: forward_<inner>/… then backward_<inner>/…
            side = next((p.split("_")[0] for p in parts[:-1] if p.startswith(("forward_", "backward_"))), None)
            key = f"{side}/{short}" if side else short
            if key in out:
                self.fail(f"layer {lname!r} holds two weights named {key!r}")
            out[key] = self._array(g[wn], f"weight {wn!r} of layer {lname!r}")
        return out

    def _array(self, ds, where: str) -> np.ndarray:
        if not hasattr(ds, "shape") or ds.dtype.kind != "f":
            self.fail(f"{where} is not an array of floating-point numbers")
        if ds.ndim > 2:
            self.fail(f"{where} has {ds.ndim} dimensions; Keras recurrent models' weights have at most 2")
        if ds.is_virtual or ds.external:
            self.fail(f"{where} keeps its data in other files")
        declared = math.prod(int(n) for n in ds.shape) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        filtered = ds.id.get_create_plist().get_nfilters() > 0
        if declared and (stored > self.size or (not filtered and stored < declared)
                         or (filtered and declared > stored * 1100)):
            self.fail(f"{where} is declared {list(ds.shape)} ({declared:,} bytes) but the file holds "
                      f"{stored:,} bytes of it: the file is truncated or damaged")
        data = ds[...]
        return np.ascontiguousarray(data.astype(data.dtype.newbyteorder("=")) if not data.dtype.isnative else data)

    # -- layers → the classic stack --------------------------------------------------------------
    def _assemble(self, layers):
        tensors: dict[str, torch.Tensor] = {}
        cfg: dict = {}
        recurrent = []  # (layer name, options)
        head = None
        embed_seen = False
        for cls, lname, lcfg, weights in layers:
            cls = cls or self._guess_class(lname, weights)
            self._check_class(cls, lname)
            if cls in IGNORED:
                if weights:
                    self.fail(f"layer {lname!r} ({cls}) holds weights, which SeqScope does not expect")
                continue
            if cls == "Activation" and head is not None and not weights:  # Dense then Activation("softmax")
                act = (lcfg or {}).get("activation")
                self.notes.append(f"the Activation layer {lname!r} after the head applies "
                                  f"{act if isinstance(act, str) else 'a function'}; SeqScope records the logits "
                                  "before it")
                continue
            if head is not None:
                self.fail(f"layer {lname!r} ({cls}) comes after the Dense head; SeqScope reads models that end "
                          "in one Dense layer")
            if cls == "Embedding":
                if embed_seen or recurrent:
                    self.fail(f"layer {lname!r} is an Embedding that is not the first layer")
                emb = self._need(weights, lname, "embeddings", 2)
                tensors["embed.weight"] = torch.from_numpy(emb)
                cfg.update(vocab_size=emb.shape[0], input_size=emb.shape[1])
                embed_seen = True
                if lcfg and lcfg.get("mask_zero"):
                    self.notes.append(f"the Embedding {lname!r} has mask_zero=True: Keras skips steps whose id "
                                      "is 0 (padding), SeqScope runs every step, so give inputs without id 0")
            elif cls in RECURRENT:
                recurrent.append((lname, self._recurrent(cls, lname, lcfg, weights, len(recurrent), tensors)))
            elif cls == "Bidirectional":
                recurrent.append((lname, self._bidirectional(lname, lcfg, weights, len(recurrent), tensors)))
            elif cls in ("Dense", "TimeDistributed"):
                if cls == "TimeDistributed":  # TimeDistributed(Dense): the same Dense at every step
                    inner = (lcfg or {}).get("layer")
                    if lcfg is not None and (not isinstance(inner, dict) or inner.get("class_name") != "Dense"):
                        self.fail(f"layer {lname!r} is a TimeDistributed around "
                                  f"{inner.get('class_name') if isinstance(inner, dict) else 'an unknown layer'}; "
                                  "SeqScope reads TimeDistributed(Dense) only")
                    lcfg = inner.get("config") if isinstance(inner, dict) and isinstance(inner.get("config"), dict) \
                        else None
                if not recurrent:
                    self.fail(f"layer {lname!r} is a Dense layer before any recurrent layer; SeqScope reads "
                              "Embedding → recurrent layers → one Dense head")
                head = self._head(lname, lcfg, weights, tensors, cfg)
            else:  # an Activation before the head: it would change what the next layer reads
                self.fail(f"layer {lname!r} is a Keras {cls} layer before the head, which SeqScope does not read "
                          "(an Activation is read only after the Dense head)")
        if not recurrent:
            self.fail("it holds no SimpleRNN, LSTM or GRU layer")
        first = recurrent[0][1]
        for lname, opts in recurrent[1:]:
            differ = [k for k in ("cell", "units", "bias", "activation", "recurrent_activation", "reset_after",
                                  "bidirectional")
                      if opts[k] != first[k]]
            if differ:
                self.fail(f"its recurrent layers differ ({recurrent[0][0]!r} and {lname!r} differ in "
                          f"{', '.join(differ)}); SeqScope reads stacks of recurrent layers of one kind and "
                          "size so far")
        if not embed_seen:
            cfg["input_size"] = first["input"]
        elif first["input"] != cfg["input_size"]:
            self.fail(f"layer {recurrent[0][0]!r} reads {first['input']} features but the Embedding gives "
                      f"{cfg['input_size']}")
        for k, (lname, opts) in enumerate(recurrent[1:], start=1):
            width = first["units"] * (2 if first["bidirectional"] else 1)
            if opts["input"] != width:
                self.fail(f"layer {lname!r} reads {opts['input']} features but the layer before it gives {width}")
        cell = first["cell"]
        cfg.update(cell=cell, num_layers=len(recurrent), hidden_size=first["units"], bias=first["bias"],
                   bidirectional=first["bidirectional"])
        if not cell.startswith("rnn_"):
            cfg.update(activation=first["activation"], recurrent_activation=first["recurrent_activation"])
        if cell == "gru":
            cfg["reset_after"] = first["reset_after"]
        last_name, last = recurrent[-1]
        if head is not None and last["return_sequences"] is False:
            self.notes.append(f"the last recurrent layer ({last_name!r}) has return_sequences=False: Keras gives "
                              "only the last step's output, SeqScope records every step (the last step's logits "
                              "are Keras's output)")
        elif last["return_sequences"] is False:
            self.notes.append(f"the last recurrent layer ({last_name!r}) has return_sequences=False; SeqScope "
                              "records every step, the last one being Keras's output")
        return tensors, cfg

    def _check_class(self, cls: str, lname: str) -> None:
        known = ("Embedding", "Dense", "Bidirectional", "Activation", "TimeDistributed")
        if cls not in RECURRENT and cls not in IGNORED and cls not in known:
            self.fail(f"layer {lname!r} is a Keras {cls} layer, which SeqScope does not read (it reads "
                      "Embedding, SimpleRNN, LSTM, GRU, CuDNNLSTM, CuDNNGRU, Bidirectional (concat), one Dense head, "
                      "and ignores InputLayer and Dropout)")

    def _guess_class(self, lname: str, weights) -> str:
        if not weights:
            return "Dropout" if "dropout" in lname.lower() else "InputLayer"
        low = lname.lower()
        if low.startswith("cu_dnn") or low.startswith("cudnn"):
            return "CuDNNGRU" if "gru" in low else "CuDNNLSTM"
        if low.startswith("bidirectional"):
            return "Bidirectional"
        if "embeddings" in weights:
            return "Embedding"
        if "recurrent_kernel" in weights and "kernel" in weights:
            units = weights["recurrent_kernel"].shape[0]
            cols = weights["kernel"].shape[-1]
            kind = {units: "SimpleRNN", 3 * units: "GRU", 4 * units: "LSTM"}.get(cols)
            if kind is None:
                self.fail(f"layer {lname!r} has a kernel of {cols} columns for {units} units: not a SimpleRNN, "
                          "GRU or LSTM")
            return kind
        for prefix, kind in (("simple_rnn", "SimpleRNN"), ("lstm", "LSTM"), ("gru", "GRU")):
            if low.startswith(prefix):  # named as Keras names it, with a weight missing: say which
                return kind
        if set(weights) <= {"kernel", "bias"} and "kernel" in weights:
            return "Dense"
        self.fail(f"layer {lname!r} holds weights {sorted(weights)}, which are not those of an Embedding, "
                  "SimpleRNN, LSTM, GRU or Dense layer (Keras 1's per-gate W_i/U_i weights are not read)")

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
        if mode != "concat":
            self.fail(f"layer {lname!r} is a Bidirectional with merge_mode={mode!r}; SeqScope reads merge_mode "
                      "'concat' only (its bidirectional layers concatenate the two directions)")
        halves = {side: {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith(side + "/")}
                  for side in ("forward", "backward")}
        if not halves["forward"] or not halves["backward"] or len(weights) != sum(map(len, halves.values())):
            self.fail(f"layer {lname!r} is a Bidirectional whose weights are not split into forward_… and "
                      "backward_… layers")
        inner = lcfg.get("layer") if isinstance(lcfg.get("layer"), dict) else None
        cls = (str(inner.get("class_name")) if inner
               else self._guess_class(f"forward half of {lname}", halves["forward"]))
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
        if inner_cfg:
            inner_cfg = {k: v for k, v in inner_cfg.items() if k != "go_backwards"}  # the wrapper runs it backwards
        fwd = self._recurrent(cls, lname, inner_cfg, halves["forward"], index, tensors)
        bwd = self._recurrent(cls, lname, inner_cfg, halves["backward"], index, tensors, suffix="_reverse")
        if any(fwd[k] != bwd[k] for k in ("units", "input", "bias", "reset_after")):
            self.fail(f"layer {lname!r}'s forward and backward layers differ in size")
        fwd["bidirectional"] = True
        fwd["return_sequences"] = inner_cfg.get("return_sequences") if inner_cfg is not None else None
        return fwd

    def _recurrent(self, cls, lname, lcfg, weights, index, tensors, suffix="") -> dict:
        lcfg = lcfg or {}
        for flag in ("go_backwards", "time_major"):
            if lcfg.get(flag):
                self.fail(f"layer {lname!r} has {flag}=True, which SeqScope does not read yet")
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
                    bidirectional=False,
                    recurrent_activation=rec_act, reset_after=reset_after,
                    return_sequences=lcfg.get("return_sequences") if lcfg else None)

    def _head(self, lname, lcfg, weights, tensors, cfg) -> str:
        kernel = self._need(weights, lname, "kernel", 2)
        bias = weights.get("bias")
        if bias is not None and bias.shape != (kernel.shape[1],):
            self.fail(f"layer {lname!r}'s bias is {list(bias.shape)}, its kernel {list(kernel.shape)} needs "
                      f"[{kernel.shape[1]}]")
        tensors["head.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        if bias is not None:
            tensors["head.bias"] = torch.from_numpy(bias)
        cfg.update(output_size=kernel.shape[1], head_bias=bias is not None)
        act = (lcfg or {}).get("activation", "linear")
        if act not in ("linear", None):
            self.notes.append(f"the Dense head {lname!r} applies {act if isinstance(act, str) else 'a custom function'}"
                              " after its matmul; SeqScope records the logits before it")
        return lname
