"""safetensors files: tensors and metadata (the metadata's JSON strings read through the safe reader)."""
from __future__ import annotations

from pathlib import Path

from .. import safe_json
from ..errors import LoadError
from ..limits import display_name, open_regular
from .record import _Found, _short, _utf8


def _read_safetensors(path: Path, name: str | None = None) -> _Found:
    from safetensors import safe_open

    name = name or display_name(path.name)
    with open_regular(path) as opened:
        # safetensors takes only UTF-8 paths: any other name is opened through the open file's /proc
        # alias (the very file checked above)
        target = str(path) if _utf8(str(path)) else f"/proc/self/fd/{opened.fileno()}"
        try:
            with safe_open(target, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise LoadError(f"{name} could not be read as safetensors: the file is truncated or corrupted "
                            f"({_short(exc)})") from None
    decoded = {}
    for k, v in meta.items():
        try:
            decoded[k] = safe_json.loads(v, f"{name}'s metadata entry {display_name(k)!r}")
        except LoadError:
            if safe_json.nesting_depth(v) > safe_json.MAX_DEPTH:
                raise
            decoded[k] = v  # plain text, not JSON
    return _Found(name=name, fmt="safetensors", tensors=tensors, metadata=decoded)
