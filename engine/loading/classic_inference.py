"""Classic-RNN inference: which tensors are the recurrent layers (``torch.nn.LSTM``/``GRU``/``RNN``
parameters or cell stacks), the embedding and the head, and the config their shapes imply."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .record import _CELL_KEY, _RNN_KEY


_EMBED_HINT = re.compile(r"emb|^encoder$|wte|tok|lookup|lut", re.I)
_HEAD_HINT = re.compile(r"fc|decoder|head|out|linear|proj|classif|logit|dense|readout|final|pred", re.I)


@dataclass
class _Layer:
    keys: dict[str, str]  # canonical suffix ("weight_ih", "bias_hh", ... with "_reverse") -> file key
    source: str  # module prefix, for messages


def _module_name(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _common_prefix(keys) -> str:
    keys = list(keys)
    if not keys:
        return ""
    split = [k.split(".")[:-1] for k in keys]
    pre = split[0]
    for s in split[1:]:
        n = 0
        while n < min(len(pre), len(s)) and pre[n] == s[n]:
            n += 1
        pre = pre[:n]
    return ".".join(pre) + "." if pre else ""


def _find_layers(tensors: dict[str, torch.Tensor]) -> tuple[list[_Layer], list[str]]:
    """Recurrent layers in order, as canonical-suffix -> file-key maps; and notes."""
    notes: list[str] = []
    modules: dict[str, dict[tuple[int, str], dict[str, str]]] = {}  # prefix -> (layer, sfx) -> {param: key}
    cells: dict[str, dict[str, str]] = {}
    for key in tensors:
        prefix, _, last = key.rpartition(".")
        m = _RNN_KEY.match(last)
        if m:
            kind, which, layer, rev = m.groups()
            modules.setdefault(prefix, {}).setdefault((int(layer), rev or ""), {})[f"{kind}_{which}"] = key
            continue
        m = _CELL_KEY.match(last)
        if m:
            cells.setdefault(prefix, {})[last] = key
    if modules and cells:
        raise _InferenceError(
            "the file mixes torch.nn.LSTM-style layers (" + ", ".join(p or "(top level)" for p in modules)
            + ") with single cells (" + ", ".join(p or "(top level)" for p in cells) + "); SeqScope cannot tell "
            "how they connect")
    layers: list[_Layer] = []
    if modules:
        for prefix, entries in modules.items():
            n = max(k for k, _ in entries) + 1
            for k in range(n):
                for sfx in ("", "_reverse"):
                    if (k, sfx) in entries:
                        continue
                    # SeqScope's own names (prefix "rnn") may mix layers of one and two directions
                    if sfx == "" or (any(s for _, s in entries) and prefix != "rnn"):
                        raise _InferenceError(f"{prefix or 'the recurrent module'} has no parameters for layer {k}"
                                              f"{' (reverse direction)' if sfx else ''}")
            for k in range(n):
                keys = {}
                for sfx in ("", "_reverse"):
                    for param, key in entries.get((k, sfx), {}).items():
                        keys[param + sfx] = key
                layers.append(_Layer(keys, prefix))
        if len(modules) > 1:
            notes.append("recurrent modules " + ", ".join(p or "(top level)" for p in modules)
                         + " were joined into one stack in file order")
    elif cells:
        def index(prefix):
            m = re.search(r"(\d+)(?!.*\d)", prefix)
            return int(m.group(1)) if m else None
        idx = {p: index(p) for p in cells}
        if len(cells) > 1 and (None in idx.values() or len(set(idx.values())) != len(idx)):
            raise _InferenceError("found several recurrent cells (" + ", ".join(cells) + ") but cannot tell their "
                                  "order from their names (expected numbered cells such as cells.0, cells.1)")
        order = sorted(cells, key=lambda p: idx[p] or 0)
        for p in order:
            layers.append(_Layer(dict(cells[p]), p))
        if len(order) > 1 or order[0]:
            notes.append(f"{'a stack of' if len(order) > 1 else 'a single'} recurrent cell"
                         f"{'s' if len(order) > 1 else ''} ({', '.join(order)}) converted to torch.nn layers")
    for n, layer in enumerate(layers):
        for need in ("weight_ih", "weight_hh"):
            if need not in layer.keys:
                raise _InferenceError(f"{layer.source or 'layer'} (layer {n}) has no {need}")
    return layers, notes


class _InferenceError(Exception):
    pass


def _canonicalize(tensors: dict[str, torch.Tensor], notes: list[str]):
    """Map file keys to canonical names.  Returns ``(canon, used, head_parts)``: canonical name ->
    tensor, canonical name -> file key, and the file keys of a head that is not one linear layer
    (read, said in the notes, not computed)."""
    layers, layer_notes = _find_layers(tensors)
    notes.extend(layer_notes)
    if not layers:
        raise _InferenceError("no recurrent layer found")
    canon: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for k, layer in enumerate(layers):
        for param, key in layer.keys.items():
            sfx = "_reverse" if param.endswith("_reverse") else ""
            base = param[: -len("_reverse")] if sfx else param
            name = f"rnn.{base}_l{k}{sfx}"
            canon[name] = tensors[key]
            origin[name] = key
    in_w = canon["rnn.weight_ih_l0"].shape[1] if canon["rnn.weight_ih_l0"].ndim == 2 else None
    last = canon[f"rnn.weight_hh_l{len(layers) - 1}"]
    dirs = 2 if f"rnn.weight_ih_l{len(layers) - 1}_reverse" in canon else 1  # the last layer's
    out_w = last.shape[1] * dirs if last.ndim == 2 else None

    rnn_keys = set(origin.values())
    order = {k: i for i, k in enumerate(tensors)}
    first_rnn = min(order[k] for k in rnn_keys)
    last_rnn = max(order[k] for k in rnn_keys)
    prefix = _common_prefix(tensors)

    def rel(k):
        return k[len(prefix):] if k.startswith(prefix) else k

    free = [k for k, t in tensors.items() if k not in rnn_keys and t.ndim == 2 and t.is_floating_point()]

    def embed_score(k):
        t = tensors[k]
        if in_w is None or t.shape[1] != in_w:
            return None
        mod = _module_name(rel(k)) if rel(k).endswith("weight") else rel(k)
        s = 100 if rel(k) == "embed.weight" else 0
        s += 10 if _EMBED_HINT.search(mod) else 0
        s -= 10 if _HEAD_HINT.search(mod) and not _EMBED_HINT.search(mod) else 0
        s += 3 if order[k] < first_rnn else -3
        s -= 5 if _bias_of(k, tensors) else 0
        return s

    def head_score(k):
        t = tensors[k]
        if out_w is None or t.shape[1] != out_w:
            return None
        mod = _module_name(rel(k))
        s = 100 if rel(k) == "head.weight" else 0
        s += 10 if _HEAD_HINT.search(mod) else 0
        s -= 10 if _EMBED_HINT.search(mod) and not _HEAD_HINT.search(mod) else 0
        s += 3 if order[k] > last_rnn else -3
        s += 2 if _bias_of(k, tensors) else 0
        return s

    def best(score, exclude=()):
        scored = [(score(k), -order[k], k) for k in free if k not in exclude]
        scored = [x for x in scored if x[0] is not None and x[0] > 0]
        return max(scored)[2] if scored else None

    emb = best(embed_score)
    if emb is not None:
        canon["embed.weight"] = tensors[emb]
        origin["embed.weight"] = emb
    head = best(head_score, exclude={emb})
    head_keys = [] if head is None else [k for k in (head, _bias_of(head, tensors)) if k]
    # Whatever follows the recurrent layers and reads their output, or what a part of the head
    # wrote, belongs to the head too: then the head is not one linear layer over h at each step
    # (an MLP, attention pooling, a convolution …), and no part of it is taken for the whole.
    # Only tensors stored after the recurrent layers count (a model's registration order; in a
    # safetensors file the order is alphabetical, and what is not chained stays unused, so strict
    # loading refuses the file rather than guessing).
    tail = _head_chain(tensors, order, last_rnn, out_w, head_keys, exclude=rnn_keys | {emb})
    if tail:
        parts = sorted(set(head_keys + tail), key=order.get)
        listing = ", ".join(f"{k} {list(tensors[k].shape)}" for k in parts[:10])
        notes.append(f"the layers after the recurrent ones ({listing}{', …' if len(parts) > 10 else ''}) are not "
                     "one linear layer over h at each step (an MLP, attention pooling, a convolution …): SeqScope "
                     "loaded the recurrent core only and records no logits; the head is never approximated")
        return canon, origin, parts
    if head is not None:
        canon["head.weight"] = tensors[head]
        origin["head.weight"] = head
        if len(head_keys) > 1:
            canon["head.bias"] = tensors[head_keys[1]]
            origin["head.bias"] = head_keys[1]
    return canon, origin, []


def _head_chain(tensors, order, last_rnn, out_w, head_keys, exclude) -> list[str]:
    """The tensors after the recurrent layers (beyond ``head_keys``) that read the recurrent output
    (``out_w`` wide) or the output of another such tensor, with their biases: the rest of a head
    that is more than one linear layer."""
    after = [k for k, t in tensors.items() if order[k] > last_rnn and t.is_floating_point()
             and k not in exclude and k not in head_keys]
    widths = {out_w} | {tensors[k].shape[0] for k in head_keys if tensors[k].ndim >= 2}
    chained: list[str] = []
    grown = True
    while grown:
        grown = False
        for k in after:
            t = tensors[k]
            if k not in chained and t.ndim >= 2 and t.shape[1] in widths:
                chained.append(k)
                widths.add(t.shape[0])
                grown = True
    biases = {b for k in chained for b in [_bias_of(k, tensors)] if b and b in after}
    return chained + sorted(biases - set(chained))


def _bias_of(key: str, tensors) -> str | None:
    for b in _bias_names(key):
        t = tensors.get(b)
        if t is not None and t.ndim == 1 and t.shape[0] == tensors[key].shape[0]:
            return b
    return None


#: the weight word of a parameter's last name part and the bias word that pairs with it, by stem:
#: fc.weight/fc.bias, fc_w/fc_b, W_out/b_out, out_W/out_b, dense.kernel/dense.bias
_WEIGHT_WORDS = (re.compile(r"(?<![A-Za-z])(weight|Weight|WEIGHT|kernel)(?![A-Za-z])"),
                 re.compile(r"(?<![A-Za-z0-9])([wW])(?![A-Za-z0-9])"))


def _bias_names(key: str) -> list[str]:
    """The names a bias paired with the weight ``key`` may have (its stem with the bias word)."""
    head, _, last = key.rpartition(".")
    stem = head + "." if head else ""
    names = []
    for pattern in _WEIGHT_WORDS:
        for m in pattern.finditer(last):
            word = "bias" if m.group(1).lower() in ("weight", "kernel") else "b"
            names.append(stem + last[: m.start(1)] + word + last[m.end(1):])
    return names


def _infer_config(canon: dict[str, torch.Tensor], hints: dict, explicit: dict, notes: list[str]) -> dict:
    """StackConfig fields from canonical weights (the weights decide; hints fill what they cannot).
    Layers that differ in cell, size or direction give a ``layers`` list (one entry per layer)."""
    n_layers = 0
    while f"rnn.weight_ih_l{n_layers}" in canon:
        n_layers += 1
    layers = [_infer_layer(canon, k) for k in range(n_layers)]
    if any(lay["cell"] == "rnn" for lay in layers):
        nonlin = _elman_nonlinearity(hints, explicit, notes)
        for lay in layers:
            if lay["cell"] == "rnn":
                lay["cell"] = f"rnn_{nonlin}"
    cell = layers[0]["cell"]
    hint_cell = hints.get("cell")
    if hint_cell and hint_cell[0].split("_")[0] != cell.split("_")[0]:
        notes.append(f"{hint_cell[1]} says the cell is {hint_cell[0]}, but the weights are those of a {cell}; "
                     "the weights were followed")
    for k in range(1, n_layers):
        below = layers[k - 1]
        gives = (below["proj_size"] or below["hidden_size"]) * (2 if below["bidirectional"] else 1)
        if below["bidirectional"] and 2 * layers[k]["input_size"] == gives:
            raise _InferenceError(f"layer {k} reads {layers[k]['input_size']} features, half of what the bidirectional "
                                  f"layer {k - 1} gives ({gives}): its two directions are merged by sum, mul or ave "
                                  "(Keras's merge_mode), which the weights cannot tell; say which with config="
                                  "{'layers': [..., {'merge_mode': 'sum', ...}, ...]}")
        if layers[k]["input_size"] != gives:
            raise _InferenceError(f"layer {k} reads {layers[k]['input_size']} features (weight_ih_l{k} "
                                  f"{list(canon[f'rnn.weight_ih_l{k}'].shape)}) but layer {k - 1} gives {gives}")
    emb = canon.get("embed.weight")
    head = canon.get("head.weight")
    cfg = {
        "vocab_size": int(emb.shape[0]) if emb is not None else None,
        "output_size": int(head.shape[0]) if head is not None else None,
        "head_bias": "head.bias" in canon if head is not None else True,
    }
    same = ("cell", "hidden_size", "bidirectional", "bias", "proj_size")
    if all(lay[f] == layers[0][f] for lay in layers for f in same):
        cfg.update({f: layers[0][f] for f in same}, num_layers=n_layers, input_size=layers[0]["input_size"])
    else:
        cfg["layers"] = layers
        notes.append("the recurrent layers differ (" + "; ".join(
            f"{k}: {'bidirectional ' if lay['bidirectional'] else ''}{lay['cell']} {lay['hidden_size']}"
            for k, lay in enumerate(layers)) + ")")
    for fname, (v, src) in hints.items():
        if fname in cfg and fname != "cell" and cfg[fname] is not None and v != cfg[fname] and fname not in explicit:
            notes.append(f"{src} gives {fname}={v!r}, but the weights say {cfg[fname]!r}; the weights were followed")
    return cfg


def _infer_layer(canon: dict[str, torch.Tensor], k: int) -> dict:
    """One layer's LayerSpec fields from its weights (an Elman layer's cell is ``rnn`` until its
    nonlinearity is known)."""
    w_ih, w_hh = canon.get(f"rnn.weight_ih_l{k}"), canon.get(f"rnn.weight_hh_l{k}")
    if w_ih is None or w_hh is None or w_ih.ndim != 2 or w_hh.ndim != 2:
        raise _InferenceError(f"layer {k}'s weights are not matrices (weight_ih "
                              f"{list(w_ih.shape) if w_ih is not None else '-'}, weight_hh "
                              f"{list(w_hh.shape) if w_hh is not None else '-'})")
    w_hr = canon.get(f"rnn.weight_hr_l{k}")
    proj = int(w_hr.shape[0]) if w_hr is not None and w_hr.ndim == 2 else 0
    hidden = int(w_hr.shape[1]) if w_hr is not None and w_hr.ndim == 2 else int(w_hh.shape[1])
    rows = int(w_hh.shape[0])
    if rows % hidden:
        raise _InferenceError(f"weight_hh_l{k} has {rows} rows, not a multiple of the hidden size {hidden}")
    gates = rows // hidden
    by_gates = {4: "lstm", 3: "gru", 1: "rnn"}
    if gates not in by_gates:
        raise _InferenceError(f"weight_hh_l{k} has {rows} rows = {gates} x hidden {hidden}; expected 4 x (LSTM), "
                              "3 x (GRU) or 1 x (RNN)")
    if proj and gates != 4:
        raise _InferenceError(f"weight_hr_l{k} (a projection) is present, but the layer is not an LSTM")
    return {"cell": by_gates[gates], "input_size": int(w_ih.shape[1]), "hidden_size": hidden,
            "bidirectional": f"rnn.weight_ih_l{k}_reverse" in canon, "bias": f"rnn.bias_ih_l{k}" in canon,
            "proj_size": proj}


def _elman_nonlinearity(hints: dict, explicit: dict, notes: list[str]) -> str:
    """The Elman layers' nonlinearity: from the config passed to load, the file's hints, or
    assumed tanh (said in a note)."""
    nonlin, why = None, ""
    if explicit.get("nonlinearity"):
        nonlin, why = explicit["nonlinearity"], "from the config passed to load"
    elif str(explicit.get("cell", "")).startswith("rnn_"):  # rnn_tanh, rnn_relu, rnn_linear ...
        nonlin, why = explicit["cell"].split("_")[1], "from the config passed to load"
    elif "nonlinearity" in hints:
        nonlin, src = hints["nonlinearity"]
        why = f"from {src}"
    elif "cell" in hints and hints["cell"][0] == "rnn_relu":
        nonlin, why = "relu", f"from {hints['cell'][1]}"
    if nonlin is None:
        nonlin = "tanh"
        why = ("assumed: the weights cannot tell tanh from relu; if the model used relu, pass "
               "config={'nonlinearity': 'relu'}")
    notes.append(f"Elman RNN nonlinearity {nonlin} ({why})")
    return nonlin


#: fields of a uniform stack that state its structure (given without ``layers``, they replace
#: a per-layer stack) and fields of a cell variant (given alone, they apply to every layer they fit)
_STRUCTURE = ("cell", "num_layers", "hidden_size", "input_size", "bidirectional", "bias", "proj_size")
_VARIANT = {"activation": ("lstm", "gru"), "recurrent_activation": ("lstm", "gru"), "reset_after": ("gru",)}


def overlay_config(base: dict, top: dict) -> dict:
    """``base`` (config fields, perhaps with ``layers``) with ``top``'s fields stated over it.

    ``top`` with ``layers`` replaces the per-layer fields of ``base``; ``top`` with a structure
    field (cell, hidden_size ...) replaces ``base``'s ``layers`` by a uniform stack; ``top``'s
    variant fields (activation, recurrent_activation, reset_after) over a per-layer ``base``
    apply to every layer of a cell they fit (reset_after to GRU layers ...)."""
    from ..models.stack_config import UNIFORM_FIELDS

    out = dict(base)
    top = dict(top)
    if top.get("layers") is not None:
        for f in UNIFORM_FIELDS + ("num_layers",):
            if f not in top:
                out.pop(f, None)
    elif out.get("layers") is not None:
        if any(f in top for f in _STRUCTURE):
            out.pop("layers")
        else:
            layers = [dict(lay) if isinstance(lay, Mapping) else lay for lay in out["layers"]]
            for lay in layers:
                for f, cells in _VARIANT.items():
                    if f in top and isinstance(lay, dict) and lay.get("cell") in cells:
                        lay[f] = top[f]
            out["layers"] = layers
            top = {k: v for k, v in top.items() if k not in _VARIANT}
    if top.get("layers", 0) is None:  # a uniform StackConfig's ``layers: None`` states nothing
        del top["layers"]
    out.update(top)
    return out
