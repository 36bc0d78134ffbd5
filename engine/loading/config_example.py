"""The config example a loading error ends with, built from the file's own tensors: which of them
look like the recurrent layers (an input matrix and a recurrent matrix with 4H, 3H or H rows), the
embedding before them and the head after them, as the ``config=`` dict (sizes and a ``key_map``
to SeqScope's canonical names) that would load THIS file if the guess is right.  The guess
rests on shapes and file order only; the text says what it assumes (torch's gate order)."""
from __future__ import annotations

import json
import re

import torch

from .classic_inference import _bias_names

_CELL_BY_GATES = {4: "lstm", 3: "gru", 1: "rnn_tanh"}
_GATE_ORDER = {"lstm": "i, f, g, o", "gru": "r, z, n", "rnn_tanh": ""}
#: names that mark a recurrent (hidden → hidden) matrix and an input one, to tell them apart when
#: the input is as wide as the hidden state
_RECURRENT_NAME = re.compile(r"hh|recur|(?<![a-z])(u|rec|hidden)(?![a-z])", re.I)
_INPUT_NAME = re.compile(r"ih|xh|input|kernel(?!.*recur)|(?<![a-z])(w|wx|x)(?![a-z])", re.I)


def config_example(tensors: dict[str, torch.Tensor], back: dict | None = None) -> dict:
    """A ``config=`` dict for these tensors (file keys through ``back`` where given): the first
    recurrent network found, its embedding, and its head when it is the only network; a generic
    one with ``"<key in the file>"`` placeholders when no recurrent layer can be made out.  Other
    recurrent networks in the file (an encoder–decoder's decoder) are listed under ``"others"``
    (their keys), which is not a config field: :func:`config_help` words it."""
    back = back or {}
    order = [k for k, t in tensors.items() if t.is_floating_point() and t.ndim in (1, 2)]
    shape = {k: tuple(int(n) for n in tensors[k].shape) for k in order}
    pos = {k: i for i, k in enumerate(order)}
    used: set[str] = set()
    networks = []
    # a convolution (a tensor of 3 or more dimensions) between two recurrent layers in file order
    # means the second does not read the first: silero-vad's 16 kHz and 8 kHz networks
    walls = [i for i, t in enumerate(tensors.values()) if t.ndim >= 3]
    at = {k: i for i, k in enumerate(tensors)}
    while True:
        layers = _network(order, shape, pos, used, walls, at)
        if not layers:
            break
        networks.append(layers)
    if not networks:
        return _generic(order, shape)
    name = lambda k: back.get(k, k)  # noqa: E731
    layers = networks[0]
    gates, hidden, width_in = layers[0]["size"]
    cfg: dict = {"cell": _CELL_BY_GATES[gates], "num_layers": len(layers), "hidden_size": hidden,
                 "input_size": width_in}
    key_map = {name(k): f"rnn.{param}_l{n}" for n, layer in enumerate(layers) for param, k in layer["keys"].items()}
    if not any(v.startswith("rnn.bias") for v in key_map.values()):
        cfg["bias"] = False
    first = min(pos[k] for layer in layers for k in layer["keys"].values())
    embed = _nearest_before(first, [k for k in order if k not in used and len(shape[k]) == 2
                                    and shape[k][1] == width_in], pos)
    if embed is not None:
        used.add(embed)
        cfg["vocab_size"] = shape[embed][0]
        key_map[name(embed)] = "embed.weight"
    last = max(pos[k] for layer in layers for k in layer["keys"].values())
    head = None if len(networks) > 1 else _nearest(last, [k for k in order if k not in used and len(shape[k]) == 2
                                                          and shape[k][1] == hidden and pos[k] > first], pos)
    if head is not None:
        used.add(head)
        cfg["output_size"] = shape[head][0]
        key_map[name(head)] = "head.weight"
        bias = _paired(head, shape, used) or [k for k in order if k not in used and shape[k] == (shape[head][0],)
                                              and pos[k] > pos[head]][:1]
        if bias:
            key_map[name(bias[0])] = "head.bias"
        else:
            cfg["head_bias"] = False
    cfg["key_map"] = key_map
    if len(networks) > 1:
        cfg["others"] = [[name(k) for layer in net for k in layer["keys"].values()] for net in networks[1:]]
    return cfg


def _network(order, shape, pos, used, walls=(), at=None) -> list[dict]:
    """The next recurrent network among the tensors not yet ``used``: its layers in file order,
    each ``{"size": (gates, hidden, input), "keys": {"weight_ih": key, ...}}``.  A layer joins the
    one before only when it reads that layer's output and no other matrix (a second embedding)
    nor a convolution (``walls``: file positions ``at`` of tensors of 3+ dimensions) lies between
    them in the file."""
    layers: list[dict] = []
    for hh in order:
        if hh in used or len(shape[hh]) != 2:
            continue
        rows, hidden = shape[hh]
        gates = rows // hidden if hidden and rows % hidden == 0 else 0
        if gates not in _CELL_BY_GATES or (layers and (gates, hidden) != layers[0]["size"][:2]):
            continue
        width = layers[-1]["size"][1] if layers else None  # a later layer reads the one before
        ih = _nearest(pos[hh], [k for k in order if k not in used and k != hh and len(shape[k]) == 2
                                and shape[k][0] == rows and (width is None or shape[k][1] == width)], pos)
        if ih is None:
            continue
        if shape[ih] == shape[hh] and _looks_recurrent(ih) and not _looks_recurrent(hh):
            ih, hh = hh, ih
        if layers:
            end = max(pos[k] for k in layers[-1]["keys"].values())
            between = [k for k in order if end < pos[k] < min(pos[ih], pos[hh]) and len(shape[k]) == 2]
            if at is not None:
                last_at, next_at = max(at[k] for k in layers[-1]["keys"].values()), min(at[ih], at[hh])
                between += [i for i in walls if last_at < i < next_at]
            if min(pos[ih], pos[hh]) < end or between:
                break  # not the next layer of this network
        keys = {"weight_ih": ih, "weight_hh": hh}
        used.update((ih, hh))
        biases = _paired(ih, shape, used) + _paired(hh, shape, used)
        if len(biases) < 2:
            near = sorted((k for k in order if k not in used and shape[k] == (rows,)),
                          key=lambda k: abs(pos[k] - pos[hh]))
            biases = sorted(biases + near[: 2 - len(biases)], key=pos.get)
        for b, param in zip(biases, ("bias_ih", "bias_hh")):
            used.add(b)
            keys[param] = b
        layers.append({"size": (gates, hidden, shape[ih][1]), "keys": keys})
    return layers


def _looks_recurrent(key: str) -> bool:
    last = key.rpartition(".")[2]
    return bool(_RECURRENT_NAME.search(last) or (_RECURRENT_NAME.search(key) and not _INPUT_NAME.search(last)))


def _nearest(anchor: int, candidates, pos):
    """The candidate closest to position ``anchor`` in file order (the earlier one on a tie)."""
    return min(candidates, key=lambda k: (abs(pos[k] - anchor), pos[k]), default=None)


def _nearest_before(first: int, candidates, pos):
    before = [k for k in candidates if pos[k] < first]
    return max(before, key=pos.get, default=None)


def _paired(weight: str, shape, used) -> list[str]:
    """The bias named like ``weight`` (``fc.weight``/``fc.bias``, ``W_out``/``b_out``), if present and free."""
    return [b for b in _bias_names(weight) if b in shape and b not in used and shape[b] == shape[weight][:1]][:1]


def _generic(order, shape) -> dict:
    """The example when no two matrices have the shapes of a recurrent layer: placeholders."""
    return {"cell": "lstm", "num_layers": 1, "hidden_size": 128, "input_size": 64,
            "key_map": {"<key in the file>": "rnn.weight_ih_l0", "<another key>": "rnn.weight_hh_l0"}}


def python_text(value) -> str:
    """``value`` (dicts, strings, numbers, booleans) as Python source that is also JSON where it
    holds no booleans."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {python_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def config_help(tensors: dict[str, torch.Tensor], back: dict | None = None, known: dict | None = None) -> str:
    """The sentence that ends a loading error: a config for this file, to pass from Python or the
    command line (``known``: the config the file was read with, where its architecture was made out)."""
    cfg = dict(known) if known else config_example(tensors, back)
    others = cfg.pop("others", [])
    guessed = not any(k.startswith("<") for k in cfg.get("key_map", {}))
    text = python_text(cfg)
    json_note = " (with false/true for False/True)" if "False" in text or "True" in text else ""
    order = _GATE_ORDER.get(cfg["cell"], "")
    if known:
        said = (" — the config SeqScope read this file with; name the unused tensors in its key_map if they are "
                "recurrent layers, an embedding or the head under other names")
    elif guessed:
        said = (" — read off this file's shapes; it assumes torch's layout ([gates*hidden, input] matrices"
                + (f", gates in the order {order}" if order else "") + ")")
    else:
        said = (" — no two matrices in this file have the shapes of a recurrent layer ([gates*hidden, input] and "
                "[gates*hidden, hidden], gates 4 for LSTM, 3 for GRU, 1 for RNN), so this is only the form")
    if others:
        said += ("; the file holds another recurrent network too (" + "; ".join(", ".join(keys) for keys in others)
                 + "), not stacked on this one (an encoder–decoder's decoder?): load each with a config of its own and "
                 "strict=False (--no-strict)")
    return (f"pass the architecture explicitly: engine.load(path, config={text}){said}, or on the command "
            f"line --config config.json holding the same{json_note} (for layers that differ, a list with one entry per "
            'layer: "layers": [{"cell": "lstm", "input_size": 64, "hidden_size": 128, "bidirectional": true}, ...])')
