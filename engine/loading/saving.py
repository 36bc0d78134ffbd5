"""Writing a model in SeqScope's own layout (one ``.safetensors`` file)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..models.stack import RecurrentStack
from ..tokenizers import CharVocab, FileTokenizer


def save_model(model: RecurrentStack, path) -> Path:
    """Write ``model`` in SeqScope's own layout: one ``.safetensors`` file with canonical weight
    names and metadata ``seqscope_config`` (StackConfig JSON) and ``seqscope_vocab`` (the char
    vocabulary, when the model has one).  A ``tokenizer.json`` tokenizer is recorded by path
    only (``seqscope_tokenizer``): keep the file beside the model.  Written to a temporary
    file in the same folder and renamed into place."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"save_model writes .safetensors files, not {path.suffix or 'a file without suffix'}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "seqscope_config": model.config.to_json()}
    tok = model.tokenizer
    if isinstance(tok, CharVocab):
        meta["seqscope_vocab"] = json.dumps(tok.to_dict())
    elif isinstance(tok, FileTokenizer):
        meta["seqscope_tokenizer"] = json.dumps(tok.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
