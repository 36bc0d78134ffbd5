"""Classic-RNN inference: which tensors are the recurrent layers (``torch.nn.LSTM``/``GRU``/``RNN``
parameters or cell stacks), the embedding and the head, and the config their shapes imply."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .record import _CELL_KEY, _RNN_KEY


_EMBED_HINT = re.compile(r"emb|^encoder$|wte|tok|lookup|lut", re.I)
#: how the note on a head of several layers starts (the strict refusal words it from this)
DEEP_HEAD = "the head after the recurrent layers is more than one linear layer"
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
                    if sfx == "" or any(s for _, s in entries):
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
    """Map file keys to canonical names.  Returns ``(canon, used)``: canonical name -> tensor,
    and canonical name -> file key."""
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
    dirs = 2 if "rnn.weight_ih_l0_reverse" in canon else 1
    in_w = canon["rnn.weight_ih_l0"].shape[1] if canon["rnn.weight_ih_l0"].ndim == 2 else None
    last = canon[f"rnn.weight_hh_l{len(layers) - 1}"]
    out_w = last.shape[1] * dirs if last.ndim == 2 else None

    rnn_keys = set(origin.values())
    order = {k: i for i, k in enumerate(tensors)}
    first_rnn = min(order[k] for k in rnn_keys)
    last_rnn = max(order[k] for k in rnn_keys)
    prefix = _common_prefix(tensors)

    def rel(k):
        return k[len(prefix):] if k.startswith(prefix) else k

    def bias_of(k, rows):
        for b in _bias_names(k):
            t = tensors.get(b)
            if t is not None and t.ndim == 1 and t.shape[0] == rows:
                return b
        return None

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
        s -= 5 if bias_of(k, t.shape[0]) else 0
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
        s += 2 if bias_of(k, t.shape[0]) else 0
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
    deeper = [k for k in free if head is not None and k not in (head, emb) and order[k] > order[head]
              and tensors[k].shape[1] == tensors[head].shape[0]]
    if deeper:  # a matrix reads the head's output: the head is an MLP, which one linear layer is not
        notes.append(f"{DEEP_HEAD}: {head} {list(tensors[head].shape)} is followed by {deeper[0]} "
                     f"{list(tensors[deeper[0]].shape)}, which reads its output; one linear layer cannot stand for "
                     "them, so only the recurrent core can be loaded (no logits)")
        head = None
    if head is not None:
        canon["head.weight"] = tensors[head]
        origin["head.weight"] = head
        b = bias_of(head, tensors[head].shape[0])
        if b is not None:
            canon["head.bias"] = tensors[b]
            origin["head.bias"] = b
    return canon, origin


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
    """StackConfig fields from canonical weights (the weights decide; hints fill what they cannot)."""
    n_layers = 0
    while f"rnn.weight_ih_l{n_layers}" in canon:
        n_layers += 1
    w_ih, w_hh = canon["rnn.weight_ih_l0"], canon["rnn.weight_hh_l0"]
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise _InferenceError(f"the first layer's weights are not matrices (weight_ih {list(w_ih.shape)}, "
                              f"weight_hh {list(w_hh.shape)})")
    w_hr = canon.get("rnn.weight_hr_l0")
    proj = int(w_hr.shape[0]) if w_hr is not None else 0
    hidden = int(w_hr.shape[1]) if w_hr is not None else int(w_hh.shape[1])
    rows = int(w_hh.shape[0])
    if rows % hidden:
        raise _InferenceError(f"weight_hh_l0 has {rows} rows, not a multiple of the hidden size {hidden}")
    gates = rows // hidden
    by_gates = {4: "lstm", 3: "gru", 1: "rnn"}
    if gates not in by_gates:
        raise _InferenceError(f"weight_hh_l0 has {rows} rows = {gates} x hidden {hidden}; expected 4 x (LSTM), "
                              "3 x (GRU) or 1 x (RNN)")
    family = by_gates[gates]
    if proj and family != "lstm":
        raise _InferenceError("weight_hr (a projection) is present, but the layer is not an LSTM")
    cell = "lstm" if family == "lstm" else "gru" if family == "gru" else None
    if cell is None:
        nonlin, why = None, ""
        if explicit.get("nonlinearity"):
            nonlin, why = explicit["nonlinearity"], "from the config passed to load"
        elif str(explicit.get("cell", "")).startswith("rnn_"):  # rnn_tanh, rnn_relu, rnn_linear ...
            nonlin, why = explicit["cell"].split("_")[1], "from the config passed to load"
        elif "nonlinearity" in hints:
            nonlin, src = hints["nonlinearity"]
            why = f"from {src}"
        elif "cell" in hints and hints["cell"][0].startswith("rnn_") and hints["cell"][0] == "rnn_relu":
            nonlin, why = "relu", f"from {hints['cell'][1]}"
        if nonlin is None:
            nonlin = "tanh"
            why = ("assumed: the weights cannot tell tanh from relu; if the model used relu, pass "
                   "config={'nonlinearity': 'relu'}")
        cell = f"rnn_{nonlin}"
        notes.append(f"Elman RNN nonlinearity {nonlin} ({why})")
    hint_cell = hints.get("cell")
    if hint_cell and hint_cell[0].split("_")[0] != cell.split("_")[0]:
        notes.append(f"{hint_cell[1]} says the cell is {hint_cell[0]}, but the weights are those of a {cell}; "
                     "the weights were followed")
    bidi = "rnn.weight_ih_l0_reverse" in canon
    emb = canon.get("embed.weight")
    head = canon.get("head.weight")
    cfg = {
        "cell": cell, "num_layers": n_layers, "hidden_size": hidden, "input_size": int(w_ih.shape[1]),
        "vocab_size": int(emb.shape[0]) if emb is not None else None, "bidirectional": bidi,
        "bias": "rnn.bias_ih_l0" in canon, "proj_size": proj,
        "output_size": int(head.shape[0]) if head is not None else None,
        "head_bias": "head.bias" in canon if head is not None else True,
    }
    # every layer must match the first one (StackConfig has one size for all)
    for k in range(1, n_layers):
        hh = canon.get(f"rnn.weight_hh_l{k}")
        hr = canon.get(f"rnn.weight_hr_l{k}")
        h_k = int(hr.shape[1]) if hr is not None else int(hh.shape[1]) if hh is not None and hh.ndim == 2 else None
        if h_k != hidden or hh is None or hh.shape[0] != rows:
            raise _InferenceError(f"layer {k} differs from layer 0 (weight_hh {list(hh.shape) if hh is not None else '-'}"
                                  f" vs {list(w_hh.shape)}); SeqScope's stack needs every layer the same cell and size")
    for fname, (v, src) in hints.items():
        if fname in cfg and fname != "cell" and cfg[fname] is not None and v != cfg[fname] and fname not in explicit:
            notes.append(f"{src} gives {fname}={v!r}, but the weights say {cfg[fname]!r}; the weights were followed")
    return cfg
