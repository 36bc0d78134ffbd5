"""The one JSON reader for what comes with a model (config.json, vocab.json, shard indexes,
safetensors metadata, ``--config`` files): a size cap, a nesting-depth check before parsing
(``"[" * 100000`` would exhaust Python's recursion), and every failure a :class:`LoadError` in
one sentence."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

import numpy as np

from .errors import LoadError
from .limits import MAX_SIDE_FILE_BYTES, display_name, read_capped

#: deeper than any real config or vocabulary (they nest 2-6 levels)
MAX_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def nesting_depth(text: str | bytes) -> int:
    """The deepest bracket nesting in JSON text (brackets inside strings do not count), found
    without parsing, in bounded memory."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if b"[" not in data and b"{" not in data:
        return 0
    bare = _STRING.sub(b"", data) if b'"' in data else data
    deepest, level, step = 0, 0, 1 << 20
    for start in range(0, len(bare), step):
        moves = _OPEN[np.frombuffer(bare, dtype=np.uint8, count=min(step, len(bare) - start), offset=start)]
        running = np.cumsum(moves, dtype=np.int64) + level
        if running.size:
            deepest = max(deepest, int(running.max()))
            level = int(running[-1])
    return deepest


def loads(text: str | bytes, what: str):
    """Parse JSON text from ``what`` (named in messages)."""
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise LoadError(f"{what} is nested {depth} levels deep, more than the {MAX_DEPTH} levels SeqScope reads")
    try:
        return json.loads(text)
    except RecursionError:
        raise LoadError(f"{what} is nested too deeply to read") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LoadError(f"{what} is not valid JSON ({_first_line(exc)})") from None


def read(path, what: str = "", limit: int = MAX_SIDE_FILE_BYTES):
    """Parse the JSON file ``path`` (only a regular file, at most ``limit`` bytes)."""
    label = f"{what} {display_name(path)}".strip() if what else display_name(path)
    data = read_capped(path, what or "file", limit)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"{label} is not UTF-8 text (byte {exc.start} is not valid)") from None
    return loads(text, label)


def read_mapping(path, what: str = "", limit: int = MAX_SIDE_FILE_BYTES) -> dict:
    """A JSON file that must hold an object."""
    obj = read(path, what, limit)
    if not isinstance(obj, Mapping):
        label = f"{what} {display_name(path)}".strip() if what else display_name(path)
        raise LoadError(f"{label} holds a JSON {_json_kind(obj)}, not an object of named entries")
    return dict(obj)


def object_depth(obj, limit: int = MAX_DEPTH) -> int:
    """How deeply lists, tuples and dicts nest in ``obj`` (counted without recursion, stopping
    once past ``limit``): for values that arrive already parsed, such as a checkpoint's extras."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, Mapping):
            children = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((c, level + 1) for c in children if isinstance(c, (Mapping, list, tuple)))
    return deepest


def _json_kind(obj) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "true/false",
            type(None): "null"}.get(type(obj), type(obj).__name__)


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
