"""A model config kept in a JSON file (what ``engine.load(path, config=...)`` takes), read for
the window's File ▸ Open model with a config… and ``seqscope --config FILE`` when the window
starts: a regular file of sane size, UTF-8, nested no deeper than :mod:`engine.safe_json` allows,
holding one JSON object."""
from __future__ import annotations

from .. import safe_json
from ..errors import LoadError
from ..limits import display_name, read_text_capped


def read_config_file(path) -> dict:
    """The JSON object in the file at ``path``, or a LoadError that says what is wrong."""
    what = f"config file {display_name(path)}"
    cfg = safe_json.loads(read_text_capped(path, "config file"), what)
    if not isinstance(cfg, dict):
        raise LoadError(f"{what} holds a JSON {type(cfg).__name__}; a config is an object, e.g. "
                        '{"cell": "lstm", "num_layers": 2, "hidden_size": 128, "key_map": {...}}')
    return cfg
