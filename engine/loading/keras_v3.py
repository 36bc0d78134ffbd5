"""Keras 3 files (read with zipfile, json and h5py; Keras is never imported): ``model.save("m.keras")``
archives and ``model.save_weights("m.weights.h5")`` files, turned into :class:`.keras_layers.KerasLayer`
lists and from there into SeqScope's classic stack like the Keras 1/2 files of :mod:`.keras_h5`.

A ``.keras`` archive is a zip of ``metadata.json`` (``keras_version``), ``config.json`` (the model:
``{"class_name": "Sequential"|"Functional", "config": {"layers": [...]}}``) and ``model.weights.h5``.
The weights file (the same layout as a ``.weights.h5``) keeps each layer's arrays in a group named
after its *class*, not its name: ``layers/<snake_case class>[_<k>]/vars/<i>`` with ``_1``, ``_2`` …
for the second, third … layer of a class in the model's ``layers`` order (a Sequential's layers
without its InputLayer; a Functional model's with it).  A recurrent layer keeps its arrays in its
cell (``layers/lstm/cell/vars/0`` kernel, ``/1`` recurrent kernel, ``/2`` bias), a Bidirectional
in ``forward_layer/cell/vars`` and ``backward_layer/cell/vars``, a TimeDistributed in
``layer/vars``; an Embedding's ``vars/0`` is its table, a Dense's ``vars/0``/``vars/1`` its kernel
and bias.  Each ``vars`` group of Keras ≥ 3.x records the layer's name (``name`` attribute), which
is checked against the config.  Keras 2.13–2.15 wrote the same layout under
``_layer_checkpoint_dependencies``.

A ``.weights.h5`` alone holds no architecture: the config is taken from a Keras ``config.json``
beside it (an unzipped ``.keras`` archive, or ``model.to_json()``), said in the notes; without one,
the layers' kinds come from the group names, their order from the kernels' sizes (refused where
two orders fit) and the activations are Keras's defaults, as the notes say.

Bounds: the archive's members are checked before anything is read (names, sizes against the
archive, inflation ratios), JSON through :mod:`engine.safe_json`, arrays through
:func:`.keras_h5.h5_array` (a dataset declared larger than what the file holds is refused unread).
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

from .. import safe_json
from ..errors import LoadError
from ..limits import MiB, check_zip_entries, display_name, open_regular, read_zip_entry
from .keras_h5 import h5_array, open_h5
from .keras_layers import INERT, RECURRENT, KerasLayer, assemble, model_layers, reads_weights, recurrent_kind
from .record import _Found, _short, zip_errors

ROOTS = ("layers", "_layer_checkpoint_dependencies")
#: what a .keras archive may hold; anything else (a path with ``..``, an absolute name) is refused
MEMBERS = ("metadata.json", "config.json", "model.weights.h5")
MAX_JSON_BYTES = 16 * MiB
MAX_GROUPS = 10_000
#: Keras class → the group name Keras 3 gives its first layer (``naming.to_snake_case``)
KNOWN = ("Embedding", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "Dense", "TimeDistributed", "Activation") + INERT


def snake_case(cls: str) -> str:
    """Keras's ``to_snake_case`` of a class name: ``SimpleRNN`` → ``simple_rnn``, ``Conv1D`` → ``conv1d``."""
    name = re.sub(r"\W+", "", cls)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


CLASS_OF_GROUP = {snake_case(c): c for c in KNOWN}


def is_keras_archive(path) -> bool:
    """Whether ``path`` is a zip holding a Keras ``config.json`` and ``model.weights.h5`` (or another
    Keras weights member), i.e. a ``.keras`` archive."""
    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            names = set(z.namelist())
    except Exception:  # not a readable zip: the torch reader says what is wrong
        return False
    return "config.json" in names and ("metadata.json" in names or any(n.startswith("model.weights") for n in names))


def uses_keras3_layout(path) -> bool:
    """Whether the HDF5 file ``path`` has Keras 3's weights layout (``layers/…/vars``, no
    ``layer_names`` attribute), i.e. is a ``.weights.h5`` rather than a Keras 1/2 file."""
    try:
        with open_h5(path, display_name(Path(path).name)) as f:
            return any(r in f for r in ROOTS) and "layer_names" not in f.attrs and "model_weights" not in f
    except LoadError:
        return False  # the Keras 1/2 reader says what is wrong with it


# -- the .keras archive ------------------------------------------------------------------------
def read_keras_archive(path: Path) -> _Found:
    name = display_name(path.name)
    with zip_errors(name):
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            with zipfile.ZipFile(fh) as z:
                infos = z.infolist()
                for info in infos:
                    parts = info.filename.replace("\\", "/").split("/")
                    if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                        raise LoadError(f"{name} is refused: its member {display_name(info.filename)!r} is a path "
                                        "outside the archive, which no Keras save writes")
                check_zip_entries(infos, size, name, advice="which no Keras save writes")
                members = {i.filename: i for i in infos}
                if "model.weights.h5" not in members:
                    other = sorted(n for n in members if n.startswith("model.weights"))
                    raise LoadError(f"{name} is a Keras archive without model.weights.h5"
                                    + (f" (it holds {', '.join(map(display_name, other))}: sharded or .npz "
                                       "weights, which SeqScope does not read; re-save with model.save('m.keras'))"
                                       if other else ": the save did not complete"))
                meta = _json_member(z, members.get("metadata.json"), name)
                config = _json_member(z, members["config.json"], name)
                weights = read_zip_entry(z, members["model.weights.h5"], name,
                                         limit=max(int(members["model.weights.h5"].file_size), 1))
    version = str(meta.get("keras_version", "")) if isinstance(meta, dict) else ""
    found = _read_weights(io.BytesIO(weights), len(weights), name, config, version,
                          source="the archive's config.json")
    found.fmt = "keras" + (f" (Keras {version})" if version else "")
    return found


def _json_member(z, info, name: str):
    if info is None:
        return None
    data = read_zip_entry(z, info, name, limit=MAX_JSON_BYTES)
    return safe_json.loads(data, f"{name}'s {info.filename}")


# -- a .weights.h5 file ------------------------------------------------------------------------
def read_keras3_weights(path: Path, side_config=None) -> _Found:
    """A Keras 3 ``.weights.h5`` file, with the model config ``side_config`` (a ``(source, dict)``
    pair) when one was found beside it."""
    name = display_name(path.name)
    config, source = (side_config[1], side_config[0]) if side_config else (None, None)
    version = str(config.get("keras_version", "")) if isinstance(config, dict) else ""
    found = _read_weights(path, path.stat().st_size, name, config, version, source=source)
    found.fmt = "keras-weights-h5" + (f" (Keras {version})" if version else "")
    return found


def keras_config_beside(path: Path):
    """``(source, model config)`` from a ``config.json`` beside ``path`` that holds a Keras model
    (``class_name`` Sequential/Functional/Model and a ``config``), else None."""
    p = path.parent / "config.json"
    if not os.path.lexists(p):
        return None
    cfg = safe_json.read(p, "config file")
    if isinstance(cfg, dict) and cfg.get("class_name") in ("Sequential", "Functional", "Model") \
            and isinstance(cfg.get("config"), (dict, list)):
        return "config.json beside it", cfg
    return None


def _read_weights(file, size: int, name: str, config, version: str, *, source) -> _Found:
    f = open_h5(file, name)
    try:
        with f:
            return _WeightsReader(f, name, size, version).read(config, source)
    except LoadError:
        raise
    except (KeyError, OSError, ValueError, TypeError, RuntimeError, IndexError, AttributeError,
            UnicodeError) as exc:
        raise LoadError(f"{name} holds Keras weights that could not be read (damaged?): {_short(exc)}") from None


class _WeightsReader:
    def __init__(self, f, name: str, size: int, version: str):
        self.f, self.name, self.size = f, name, size
        self.version = version
        self.keras3 = not version or version.split(".")[0] == "3"
        self.notes: list[str] = []
        root = next((r for r in ROOTS if r in f), None)
        if root is None or not hasattr(f[root], "keys"):
            raise LoadError(f"{name} holds no Keras layers group ('layers'): it is not a Keras 3 weights file")
        self.root = f[root]
        self.groups = list(self.root.keys())
        if len(self.groups) > MAX_GROUPS:
            self.fail(f"it holds {len(self.groups):,} layer groups, more than SeqScope reads")

    def fail(self, text: str):
        raise LoadError(f"{self.name}: {text}")

    def read(self, config, source) -> _Found:
        if config is not None:
            layers = self._with_config(config, source)
        else:
            layers = self._without_config()
        if not self.version and any(isinstance(layer.config, dict) and "hard_sigmoid" in str(layer.config)
                                    for layer in layers):
            self.notes.append("the file does not say which Keras wrote it: hard_sigmoid was read as Keras 3's "
                              "clip(x/6 + 0.5)")
        tensors, cfg = assemble(layers, name=self.name, keras3=self.keras3, notes=self.notes)
        return _Found(name=self.name, fmt="keras", tensors=tensors,
                      metadata={"seqscope_config": cfg, "seqscope_exact": True},
                      notes=self.notes)

    # -- with the model's config: groups named as Keras names them -------------------------------
    def _with_config(self, config, source) -> list[KerasLayer]:
        entries = model_layers(config, self.name, source)
        functional = isinstance(config.get("config"), dict) and "input_layers" in config["config"]
        used: dict[str, int] = {}
        layers, claimed = [], set()
        for cls, lcfg in entries:
            if cls == "InputLayer" and not functional:
                continue  # a Sequential's layers (and so its groups) leave out its InputLayer
            group = snake_case(cls)
            if group in used:
                used[group] += 1
                group = f"{group}_{used[group]}"
            else:
                used[group] = 0
            lname = str(lcfg.get("name", group))
            weights = {}
            if group in self.root:
                claimed.add(group)
                recorded = self.root[group].get("vars")
                recorded = _attr_text(recorded.attrs.get("name")) if recorded is not None else None
                if recorded is not None and recorded != lname:
                    self.fail(f"its weights group {group!r} belongs to layer {recorded!r}, but {source} puts layer "
                              f"{lname!r} there: the weights and the config are of different models")
                if reads_weights(cls):
                    weights = self._layer_weights(self.root[group], cls, lname, lcfg)
            layers.append(KerasLayer(cls, lname, lcfg, weights))
        extra = [g for g in self.groups if g not in claimed and self._holds_arrays(self.root[g])]
        if extra:
            self.fail(f"it holds weights in group {extra[0]!r}, which {source} does not describe")
        if source and source != "the archive's config.json":
            self.notes.append(f"the architecture was read from {source}")
        return layers

    # -- without a config: the groups' names and the arrays' sizes --------------------------------
    def _without_config(self) -> list[KerasLayer]:
        by_kind: dict[str, list[tuple[int, str]]] = {}
        for group in self.groups:
            m = re.fullmatch(r"(.+?)(?:_(\d+))?", group)
            cls = CLASS_OF_GROUP.get(m.group(1))
            if cls is None or cls == "Activation":
                self.fail(f"it holds a layer group {group!r}, whose layer SeqScope cannot place without the model's "
                          "config: put the config.json of the model's .keras archive (or model.to_json()) beside it, "
                          "or open the .keras file")
            by_kind.setdefault(cls, []).append((int(m.group(2) or 0), group))
        layers = {}
        for cls, groups in by_kind.items():
            for _, group in sorted(groups):
                if cls in INERT:
                    if cls == "Masking":
                        self.notes.append("a Masking layer: Keras skips the steps whose features all equal its "
                                          "mask_value, SeqScope runs every step")
                    if self._holds_arrays(self.root[group]):
                        self.fail(f"its group {group!r} ({cls}) holds weights, which SeqScope does not expect")
                    continue
                weights = self._layer_weights(self.root[group], cls, group, None)
                lcfg = None
                if cls == "Bidirectional":
                    forward = {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith("forward/")}
                    if "kernel" not in forward or "recurrent_kernel" not in forward:
                        self.fail(f"its group {group!r} is a Bidirectional without a forward recurrent layer")
                    lcfg = {"layer": {"class_name": recurrent_kind(group, forward, self.fail)}}
                if cls == "GRU" and "bias" not in weights:  # the bias's shape would have told
                    lcfg = {"reset_after": True}
                    self.notes.append(f"the GRU {group!r} has no bias, which would tell reset_after: Keras 3's "
                                      "default reset_after=True was assumed")
                layers.setdefault(cls, []).append(KerasLayer(cls, group, lcfg, weights))
        ordered = _order(layers, self.fail)
        recurrent = [layer for layer in ordered if layer.cls in RECURRENT or layer.cls == "Bidirectional"]
        if recurrent[-1].cls == "Bidirectional" and ordered[-1] is not recurrent[-1]:
            self.notes.append(f"whether the Bidirectional {recurrent[-1].name!r} returns sequences is not in the file: "
                              "if it does not, Keras's head reads its forward half's last step with its backward half's "
                              "first, which no step's logits are")
        self.notes.append("a Keras 3 .weights.h5 file without the model's config: the layers' kinds come from the "
                          "file's group names, their order from their sizes; what weights do not show is Keras's "
                          "default (activations tanh and sigmoid, layers reading forwards, Bidirectional layers "
                          "concatenating): put the model's config.json beside it if the model set others")
        return ordered

    # -- one layer's arrays --------------------------------------------------------------------
    def _vars(self, group, where: str, names: tuple[str, ...], optional: int = 0) -> dict:
        """``group/vars/0``, ``/1`` … as ``{names[i]: array}``; the last ``optional`` names may be absent."""
        v = group.get("vars") if hasattr(group, "get") else None
        keys = sorted(v.keys(), key=lambda k: (len(k), k)) if v is not None and hasattr(v, "keys") else []
        if keys != [str(i) for i in range(len(keys))] or not len(names) - optional <= len(keys) <= len(names):
            self.fail(f"{where} holds arrays {keys or 'none'}; SeqScope expects {len(names)} "
                      f"({', '.join(names)}) numbered from 0")
        return {n: h5_array(v[k], f"array {k} of {where}", self.size, self.fail) for n, k in zip(names, keys)}

    def _layer_weights(self, group, cls: str, lname: str, lcfg) -> dict:
        where = f"layer {lname!r}"
        use_bias = 1 if (lcfg or {}).get("use_bias", True) else 0
        if cls in RECURRENT:
            return self._cell(group, where, lcfg)
        if cls == "Bidirectional":
            out = {}
            inner = (lcfg or {}).get("layer")
            inner_cfg = inner.get("config") if isinstance(inner, dict) else None
            for side in ("forward", "backward"):
                sub = group.get(f"{side}_layer")
                if sub is None:
                    self.fail(f"{where} is a Bidirectional whose weights have no {side}_layer group")
                out.update({f"{side}/{k}": a for k, a in self._cell(sub, f"the {side} half of {where}",
                                                                    inner_cfg).items()})
            return out
        if cls == "Embedding":
            return self._vars(group, where, ("embeddings",))
        if cls == "Dense":
            return self._vars(group, where, ("kernel", "bias")[:1 + use_bias], optional=0 if lcfg else 1)
        if cls == "TimeDistributed":
            inner = (lcfg or {}).get("layer")
            if isinstance(inner, dict) and inner.get("class_name") != "Dense":
                return {}  # not read: what follows the recurrent core ends it (see keras_layers)
            inner_cfg = inner.get("config") if isinstance(inner, dict) else None
            sub = group.get("layer")
            if sub is None:
                self.fail(f"{where} is a TimeDistributed without its inner layer's group")
            bias = 1 if (inner_cfg or {}).get("use_bias", True) else 0
            return self._vars(sub, where, ("kernel", "bias")[:1 + bias], optional=0 if inner_cfg else 1)
        return self._vars(group, where, (), 0) if self._holds_arrays(group) else {}

    def _cell(self, group, where: str, lcfg) -> dict:
        cell = group.get("cell") if hasattr(group, "get") else None
        if cell is None:
            self.fail(f"{where} is a recurrent layer whose weights have no cell group")
        if self._holds_arrays_directly(group):
            self.fail(f"{where} holds arrays outside its cell, which SeqScope does not expect")
        use_bias = 1 if (lcfg or {}).get("use_bias", True) else 0
        return self._vars(cell, where, ("kernel", "recurrent_kernel", "bias")[:2 + use_bias],
                          optional=0 if lcfg else 1)

    def _holds_arrays_directly(self, group) -> bool:
        v = group.get("vars")
        return v is not None and hasattr(v, "keys") and len(v.keys()) > 0

    def _holds_arrays(self, group) -> bool:
        found = []

        def visit(_, obj):
            if hasattr(obj, "shape"):
                found.append(1)
                return True  # stop at the first array
            return None

        group.visititems(visit)
        return bool(found)


def _attr_text(v):
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


MAX_ORDERINGS = 100_000


def _order(layers: dict[str, list[KerasLayer]], fail) -> list[KerasLayer]:
    """The layers of a weights-only file in the model's order: the Embedding first, the Dense (or
    TimeDistributed) head last, and the recurrent layers (each class in the order of its groups'
    numbers, as Keras numbers them) interleaved in the one way whose sizes chain; refused when none
    or several fit."""
    embeds = layers.get("Embedding", [])
    heads = layers.get("Dense", []) + layers.get("TimeDistributed", [])
    if len(embeds) > 1 or len(heads) > 1:
        fail("it holds several Embedding or Dense layers, whose order SeqScope cannot tell without the model's "
             "config: put the model's config.json beside it, or open the .keras file")
    queues = [q for c, q in layers.items() if c in RECURRENT or c == "Bidirectional"]
    if not queues:
        fail("it holds no SimpleRNN, LSTM or GRU layer")
    start = embeds[0].weights["embeddings"].shape[1] if embeds else None
    found: list[list[KerasLayer]] = []
    steps = [0]

    def io(layer):
        w = layer.weights
        if layer.cls == "Bidirectional":
            return w["forward/kernel"].shape[0], 2 * w["forward/recurrent_kernel"].shape[0]
        return w["kernel"].shape[0], w["recurrent_kernel"].shape[0]

    def walk(pos, width, path):
        steps[0] += 1
        if len(found) > 1 or steps[0] > MAX_ORDERINGS:
            return
        if all(p == len(q) for p, q in zip(pos, queues)):
            found.append(list(path))
            return
        for k, q in enumerate(queues):
            if pos[k] < len(q):
                layer = q[pos[k]]
                n_in, n_out = io(layer)
                if width is None or n_in == width:
                    walk(pos[:k] + (pos[k] + 1,) + pos[k + 1:], n_out, path + [layer])

    walk(tuple(0 for _ in queues), start, [])
    if len(found) != 1 or steps[0] > MAX_ORDERINGS:
        what = "no order of its recurrent layers whose sizes chain" if not found else \
            "more than one order of its recurrent layers that fits their sizes"
        fail(f"it holds weights only, and SeqScope finds {what}: put the model's config.json (from its .keras "
             "archive, or model.to_json()) beside it, or open the .keras file")
    return embeds + found[0] + heads
