"""Keras 1/2 HDF5 weight files (read with h5py; Keras is never imported), turned into
:class:`.keras_layers.KerasLayer` lists; :mod:`.keras_layers` makes SeqScope's classic stack of them
(Keras's semantics are described there).

Layouts read: ``model.save("m.h5")`` (weights under ``/model_weights/<layer>/…``, each layer's
config in the root's ``model_config`` JSON; Keras 3 writes this legacy layout too) and Keras 1/2
``save_weights("w.h5")`` (``/<layer>/…`` with ``layer_names``/``weight_names`` attributes and no
config: the layers' kinds then come from their names and weights' shapes, the activations are the
defaults of the Keras version that wrote the file, said in the notes, and ``config=`` overrides
them).  Keras 3's own ``.weights.h5`` layout (``/layers/<name>/vars``) is read by :mod:`.keras_v3`.

The result is a :class:`_Found` with canonical names (``embed.weight``, ``rnn.weight_ih_l0``, …,
``head.weight``) and the exact config in ``metadata["seqscope_config"]``, built by
:func:`engine.loading.classic._build` like any other classic stack.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from .. import safe_json
from ..errors import LoadError
from ..limits import display_name
from .keras_layers import UNKNOWN, KerasLayer, assemble, model_layers, reads_weights, recurrent_kind
from .record import _Found, _short

TRACE_FORMAT = "seqscope-trace"
MAX_LAYERS = 10_000


def is_keras_h5(path) -> bool:
    """Whether ``path`` starts with HDF5's signature (Keras weights or a SeqScope trace)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x89HDF"
    except OSError:
        return False


def read_keras_h5(path: Path) -> _Found:
    name = display_name(path.name)
    f = open_h5(path, name)
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


def h5_array(ds, where: str, file_size: int, fail) -> np.ndarray:
    """A Keras weight dataset's values, after checking that it is a plain float array of at most 2
    dimensions whose data the file really holds (a dataset declared huge but never written, or
    kept in other files, is refused through ``fail(text)`` before anything is read)."""
    if not hasattr(ds, "shape") or ds.dtype.kind != "f":
        fail(f"{where} is not an array of floating-point numbers")
    if ds.ndim > 2:
        fail(f"{where} has {ds.ndim} dimensions; Keras recurrent models' weights have at most 2")
    if ds.is_virtual or ds.external:
        fail(f"{where} keeps its data in other files")
    declared = math.prod(int(n) for n in ds.shape) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    if declared and (stored > file_size or (not filtered and stored < declared)
                     or (filtered and declared > stored * 1100)):
        fail(f"{where} is declared {list(ds.shape)} ({declared:,} bytes) but the file holds "
             f"{stored:,} bytes of it: the file is truncated or damaged")
    data = ds[...]
    return np.ascontiguousarray(data.astype(data.dtype.newbyteorder("=")) if not data.dtype.isnative else data)


def open_h5(path_or_file, name: str):
    """An h5py File opened read-only, or a LoadError saying the file is damaged."""
    import h5py

    try:
        return h5py.File(path_or_file, "r")
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise LoadError(f"{name} is an HDF5 file that cannot be opened: it is truncated or damaged "
                        f"({_short(exc)})") from None


def _default_recurrent_activation(version: str) -> str:
    """The LSTM/GRU ``recurrent_activation`` Keras ``version`` used when a model named none:
    ``hard_sigmoid`` (Keras 2's clip(0.2x + 0.5)) up to Keras 2.2, ``sigmoid`` from Keras 2.3 on."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return "sigmoid"
    return "hard_sigmoid" if (major, minor) < (2, 3) else "sigmoid"


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
        layers = []
        if configs is not None:
            for cls, cfg in configs:
                lname = str(cfg.get("name", ""))
                weights = self._weights(root, lname) if lname in root and reads_weights(cls) else {}
                layers.append(KerasLayer(cls, lname, cfg, weights))
            described = {layer.name for layer in layers}
            missing = [n for n in layer_names if n not in described and self._weights(root, n)]
            if missing:
                self.fail(f"it holds weights for layer {missing[0]!r}, which its model_config does not describe")
        else:
            gates = _default_recurrent_activation(version)
            note = ("a Keras save_weights file (no model_config): the architecture was inferred from the weights' "
                    "shapes, the activations are the defaults of the Keras that wrote it (Keras "
                    f"{version or 'of unknown version'}: activation tanh, LSTM/GRU recurrent_activation {gates}); a "
                    "model that set others needs config={'recurrent_activation': ...}")
            self.notes.append(note)
            for lname in layer_names:
                weights = self._weights(root, lname)
                cls = self._guess_class(lname, weights)
                cfg = {"recurrent_activation": gates} if cls in ("LSTM", "GRU") else None
                if cls == "Bidirectional":  # the wrapped layer's kind, from the forward half's weights
                    forward = {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith("forward/")}
                    inner = self._guess_class(f"forward half of {lname}", forward)
                    cfg = {"layer": {"class_name": inner, "config": {"recurrent_activation": gates}
                                     if inner in ("LSTM", "GRU") else {}}}
                layers.append(KerasLayer(cls, lname, cfg, weights))
            if not any(layer.cls in ("LSTM", "GRU", "Bidirectional") for layer in layers):  # CuDNN layers: fixed
                self.notes[self.notes.index(note)] = ("a Keras save_weights file (no model_config): the architecture "
                                                      "was inferred from the weights' shapes and names")
        tensors, config = assemble(layers, name=self.name, keras3=self.keras3, notes=self.notes)
        fmt = "keras-h5" + (f" (Keras {version})" if version else "")
        return _Found(name=self.name, fmt=fmt, tensors=tensors,
                      metadata={"seqscope_config": config, "seqscope_exact": True},
                      notes=self.notes)

    def _layer_configs(self):
        raw = self.f.attrs.get("model_config")
        if raw is None:
            return None
        model = safe_json.loads(_text(raw), f"{self.name}'s model_config")
        return model_layers(model, self.name, "model_config")

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
        return h5_array(ds, where, self.size, self.fail)

    def _guess_class(self, lname: str, weights) -> str:
        """A layer's class from its name and weights, for files without a model_config; a layer
        without weights is inert only when its name says so (a pooling or a concatenation has
        none either), else UNKNOWN."""
        low = lname.lower()
        if not weights:
            named = {"dropout": "Dropout", "input": "InputLayer", "masking": "Masking"}
            return next((cls for word, cls in named.items() if word in low), UNKNOWN)
        if low.startswith("cu_dnn") or low.startswith("cudnn"):
            return "CuDNNGRU" if "gru" in low else "CuDNNLSTM"
        if low.startswith("bidirectional"):
            return "Bidirectional"
        if "embeddings" in weights:
            return "Embedding"
        if "recurrent_kernel" in weights and "kernel" in weights:
            kind = recurrent_kind(lname, weights, self.fail)
            bias = weights.get("bias")
            # a CuDNN layer under another name (textgenrnn's rnn_1): two biases, 2 × gates × units
            if bias is not None and bias.shape == (2 * weights["kernel"].shape[-1],) and kind != "SimpleRNN":
                return "CuDNN" + kind
            return kind
        for prefix, kind in (("simple_rnn", "SimpleRNN"), ("lstm", "LSTM"), ("gru", "GRU")):
            if low.startswith(prefix):  # named as Keras names it, with a weight missing: say which
                return kind
        if set(weights) <= {"kernel", "bias"} and "kernel" in weights:
            return "Dense"
        if any(k.startswith(("W_", "U_")) for k in weights):
            self.fail(f"layer {lname!r} holds weights {sorted(weights)}: Keras 1's per-gate W_i/U_i weights are "
                      "not read; re-save the model with Keras 2 or 3")
        return UNKNOWN

