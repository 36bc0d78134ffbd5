"""Writing a model in SeqScope's own layout (one ``.safetensors`` file)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..models.stack import RecurrentStack
from ..tokenizers import CharVocab, FileTokenizer

#: metadata entries naming a model's output classes and input features (JSON lists of strings),
#: exposed as ``model.info()["output_names"]`` / ``["input_names"]`` and kept in trace files
NAME_ENTRIES = {"seqscope_output_names": "output_names", "seqscope_input_names": "input_names"}


def save_model(model: RecurrentStack, path) -> Path:
    """Write ``model`` in SeqScope's own layout: one ``.safetensors`` file with canonical weight
    names and metadata ``seqscope_config`` (StackConfig JSON) and ``seqscope_vocab`` (the char
    vocabulary, when the model has one).  A ``tokenizer.json`` tokenizer is recorded by path
    only (``seqscope_tokenizer``): keep the file beside the model.  Written atomically
    (:mod:`engine.atomic`): an old file under the name stays whole on any failure."""
    from safetensors.torch import save_file

    from ..atomic import WriteError, replacing

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"save_model writes .safetensors files, not {path.suffix or 'a file without suffix'}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "seqscope_config": model.config.to_json()}
    for entry, key in NAME_ENTRIES.items():
        if model.load_info.get(key):
            meta[entry] = json.dumps(list(model.load_info[key]))
    tok = model.tokenizer
    if isinstance(tok, CharVocab):
        meta["seqscope_vocab"] = json.dumps(tok.to_dict())
    elif isinstance(tok, FileTokenizer) or getattr(tok, "kind", None) == "keras_tokenizer":
        meta["seqscope_tokenizer"] = json.dumps(tok.to_dict())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:  # a file where a folder should be, a name too long, ...
        raise WriteError(f"cannot write model {path}: its folder cannot be made "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    with replacing(path, "model", error=WriteError) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except Exception as exc:  # safetensors' own error: the OS error inside it, when there is one
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
    return path
