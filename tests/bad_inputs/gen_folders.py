"""Bad Hugging Face-style folders (every family's ``config.json``, ``vocab.json``, shard
indexes), RWKV vocabularies, and files of unknown kinds, empty, random, links and pipes."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np

from .containers import safetensors_bytes, tensors_header, torch_zip
from .corpus import Corpus
from .gen_checkpoints import VOCAB, lstm_arrays, lstm_pt, lstm_safetensors
from .pickles import state_dict

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "models"
MAMBA = ASSETS / "selective-ssm-recall"  # a real HF-style folder: config.json, model.safetensors, vocab.json

#: a config.json per family (model_type and the sizes each reads); weights are a stand-in tensor
FAMILY_CONFIGS = {
    "mamba2": {"model_type": "mamba2", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11, "state_size": 4,
               "expand": 2, "conv_kernel": 4, "num_heads": 4, "head_dim": 8, "n_groups": 1,
               "layer_norm_epsilon": 1e-5},
    "mamba_ssm": {"d_model": 16, "n_layer": 2, "vocab_size": 11, "ssm_cfg": {}, "rms_norm": True,
                  "residual_in_fp32": True, "pad_vocab_size_multiple": 8},
    "rwkv": {"model_type": "rwkv", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11,
             "attention_hidden_size": 16, "intermediate_size": 64, "layer_norm_epsilon": 1e-5,
             "context_length": 128},
    "recurrent_gemma": {"model_type": "recurrent_gemma", "hidden_size": 16, "num_hidden_layers": 2,
                        "vocab_size": 11, "num_attention_heads": 2, "lru_width": 16, "attention_window_size": 8,
                        "conv1d_width": 4, "block_types": ["recurrent", "attention"], "intermediate_size": 32,
                        "rms_norm_eps": 1e-6, "head_dim": 8},
    "xlstm": {"model_type": "xlstm", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11, "num_heads": 2,
              "embedding_dim": 16, "num_blocks": 2, "qk_dim_factor": 0.5, "v_dim_factor": 1.0,
              "norm_eps": 1e-6},
    "gla": {"model_type": "gla", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11, "num_heads": 2,
            "expand_k": 0.5, "expand_v": 1, "hidden_ratio": 4, "norm_eps": 1e-6},
    "retnet": {"model_type": "retnet", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11,
               "num_heads": 2, "expand_k": 1, "expand_v": 2, "hidden_ratio": 2, "norm_eps": 1e-6},
    "hgrn": {"model_type": "hgrn", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11, "expand_ratio": 1,
             "hidden_ratio": 4, "norm_eps": 1e-6, "attn_mode": "fused_recurrent"},
    "delta_net": {"model_type": "delta_net", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 11,
                  "num_heads": 2, "expand_k": 1, "expand_v": 1, "use_short_conv": True, "conv_size": 4,
                  "norm_eps": 1e-6},
    "gated_deltanet": {"model_type": "gated_deltanet", "hidden_size": 16, "num_hidden_layers": 2,
                       "vocab_size": 11, "num_heads": 2, "head_dim": 8, "expand_v": 1, "use_short_conv": True,
                       "conv_size": 4, "norm_eps": 1e-6},
}
LAYER_VALUES = ["2", 2.5, "Infinity", None, 0, 10**8, [], "abc"]
SIZE_VALUES = [0, None, "abc"]


def _json(v) -> str:
    return json.dumps(v, allow_nan=True).replace('"Infinity"', "Infinity")


def _config_text(cfg: dict) -> str:
    return json.dumps(cfg, allow_nan=True).replace('"Infinity"', "Infinity")


def plain_zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def stand_in_weights() -> bytes:
    header, data = tensors_header({"stand_in": ("F32", (2,), np.zeros(2, np.float32).tobytes())})
    return safetensors_bytes(header, data)


def family_configs(c: Corpus) -> None:
    """Each family's config.json with each size of the wrong type, beside stand-in weights; and
    the real Mamba folder's config.json mutated the same way beside its real weights."""
    weights = c.write("families/stand-in.safetensors", stand_in_weights())
    mamba_cfg = json.loads((MAMBA / "config.json").read_text())
    shutil.copy(MAMBA / "model.safetensors", c.path("families/mamba-weights.safetensors"))
    bases = {"mamba": (mamba_cfg, "mamba-weights.safetensors")}
    bases.update({f: (cfg, "stand-in.safetensors") for f, cfg in FAMILY_CONFIGS.items()})
    for family, (base, weight_file) in bases.items():
        layer_key = "n_layer" if "n_layer" in base else "num_hidden_layers"
        size_key = "d_model" if "d_model" in base else "hidden_size"
        eps_key = next((k for k in base if "eps" in k), None)
        if family in ("mamba", "mamba2", "rwkv"):  # every wrong type
            mutations = [(layer_key, v) for v in LAYER_VALUES] + [(size_key, v) for v in SIZE_VALUES]
            mutations += [("vocab_size", None), ("vocab_size", 10**8)]
            if eps_key:
                mutations += [(eps_key, None), (eps_key, "x")]
        else:  # the ones that cost time or memory, and a string
            mutations = [(layer_key, v) for v in ("2", 2.5, None, 10**8)] + [(size_key, 0), ("vocab_size", 10**8)]
        if family == "mamba_ssm":
            mutations += [("ssm_cfg", [1, 2]), ("ssm_cfg", "Mamba2")]
        if family == "recurrent_gemma":
            mutations += [("block_types", "recurrent"), ("block_types", [5])]
        for key, value in mutations:
            cfg = dict(base)
            cfg[key] = value
            name = f"{family}-{key}-{_json(value)}"
            folder = f"families/{name}"
            c.write(f"{folder}/config.json", _config_text(cfg))
            c.symlink(f"{folder}/model.safetensors", f"../{weight_file}")
            # beside real weights the weights may decide (a config value never used need not be refused)
            c.add(f"folder/{name}", "wrong-type", "hf-folder", "load", folder,
                  expect="either" if family == "mamba" else "error")
    # the real folder, unchanged and with its vocabulary changed
    c.mkdir("families/mamba-valid")
    for f in ("config.json", "vocab.json"):
        shutil.copy(MAMBA / f, c.path(f"families/mamba-valid/{f}"))
    c.symlink("families/mamba-valid/model.safetensors", "../mamba-weights.safetensors")
    c.add("folder/mamba-valid", "valid", "hf-folder", "load", "families/mamba-valid", expect="ok")
    vocabs = {"id-gap": {"(": 0, ")": 40_000_000}, "nested": "[" * 100000, "list-of-lists": [[1]] * 3,
              "negative-ids": {"a": -5, "b": 0}, "float-ids": {"a": 0.5}, "not-utf8": b"{\"\xff\": 0}",
              "huge-key": {"x" * 300_000: 0}, "null": None}
    for label, v in vocabs.items():
        folder = f"families/mamba-vocab-{label}"
        shutil.copy(MAMBA / "config.json", c.path(f"{folder}/config.json"))
        c.symlink(f"{folder}/model.safetensors", "../mamba-weights.safetensors")
        raw = v if isinstance(v, bytes) else (v if isinstance(v, str) else json.dumps(v))
        c.write(f"{folder}/vocab.json", raw)
        c.add(f"folder/mamba-vocab-{label}", "vocab", "hf-folder", "load", folder, expect="either")
    for label, make in (("fifo", lambda p: c.fifo(p)), ("devzero", lambda p: c.symlink(p, "/dev/zero")),
                        ("dir", lambda p: c.mkdir(p))):
        for fname in ("vocab.json", "tokenizer.json", "config.json"):
            folder = f"families/mamba-{fname.split('.')[0]}-{label}"
            for f in ("config.json", "vocab.json"):
                if f != fname:
                    shutil.copy(MAMBA / f, c.path(f"{folder}/{f}"))
            c.symlink(f"{folder}/model.safetensors", "../mamba-weights.safetensors")
            make(f"{folder}/{fname}")
            c.add(f"folder/mamba-{fname}-{label}", "hostile-path", "hf-folder", "load", folder, expect="either")


def lstm_folders(c: Corpus) -> None:
    """An LSTM state dict folder: config.json of every wrong shape, vocab.json with gaps, shards."""
    arrays = lstm_arrays(2)
    weights = c.write("lstm-folders/weights.safetensors", lstm_safetensors(arrays))
    c.mkdir("lstm-folders/valid")
    c.symlink("lstm-folders/valid/model.safetensors", "../weights.safetensors")
    c.write("lstm-folders/valid/vocab.json", json.dumps({ch: k for k, ch in enumerate(VOCAB)}))
    c.add("folder/lstm-valid", "valid", "hf-folder", "load", "lstm-folders/valid", expect="ok")
    configs = {"nested": "[" * 100000, "list": "[1, 2]", "string": '"lstm"', "not-utf8": b"{\"\xff\": 1}",
               "num-layers-1e8": json.dumps({"num_layers": 10**8, "cell": "lstm"}),
               "hidden-size-str": json.dumps({"hidden_size": "abc", "rnn_type": "LSTM"}),
               "deep-dicts": "{\"a\":" * 5000 + "1" + "}" * 5000, "huge-number": "1" * 100000,
               "empty": ""}
    for label, text in configs.items():
        folder = f"lstm-folders/config-{label}"
        c.symlink(f"{folder}/model.safetensors", "../weights.safetensors")
        c.write(f"{folder}/config.json", text)
        c.add(f"folder/lstm-config-{label}", "config", "hf-folder", "load", folder, expect="either")
    vocabs = {"id-gap": {"a": 0, "b": 1, "c": 40_000_000}, "nested": "[" * 100000,
              "duplicate-chars": ["a", "a"]}
    for label, v in vocabs.items():
        folder = f"lstm-folders/vocab-{label}"
        c.symlink(f"{folder}/model.safetensors", "../weights.safetensors")
        c.write(f"{folder}/vocab.json", v if isinstance(v, str) else json.dumps(v))
        c.add(f"folder/lstm-vocab-{label}", "vocab", "hf-folder", "load", folder, expect="either")
    # explicit configs (engine.load(config=...)), the --config route
    explicit = {"num-layers-1e8": {"num_layers": 10**8}, "num-layers-1e6": {"num_layers": 10**6},
                "hidden-0": {"hidden_size": 0}, "num-layers-str": {"num_layers": "2"},
                "cell-list": {"cell": ["lstm"]}, "key-map-list": {"key_map": [1, 2]},
                "key-map-nested": {"key_map": {"a": {"b": 1}}}, "inf": {"hidden_size": float("inf")},
                "unknown-key": {"bogus": 1}}
    for label, cfg in explicit.items():
        c.add(f"folder/lstm-explicit-{label}", "wrong-type", "config", "load", "lstm-folders/valid",
              expect="error" if label not in ("num-layers-str",) else "either", config=cfg)
    c.add("folder/lstm-explicit-nested-file", "nesting", "config", "load", "lstm-folders/valid", expect="error",
          config_file=c.write("lstm-folders/nested-config.json", "[" * 100000))
    c.add("folder/lstm-explicit-fifo-file", "hostile-path", "config", "load", "lstm-folders/valid", expect="error",
          config_file=c.fifo("lstm-folders/config-fifo.json"))
    sharded(c)


def sharded(c: Corpus) -> None:
    indexes = {"list": {"weight_map": ["model.safetensors"]}, "string": {"weight_map": "x"},
               "missing": {"metadata": {}}, "outside": {"weight_map": {"a": "../weights.safetensors"}},
               "absolute-devzero": {"weight_map": {"a": "/dev/zero"}}, "nested": "[" * 100000,
               "fifo-shard": {"weight_map": {"a": "shard.fifo"}}, "self": {"weight_map": {"a": "model.safetensors.index.json"}},
               "not-json": "{{{", "int-names": {"weight_map": {"a": 5}}}
    for label, index in indexes.items():
        folder = f"lstm-folders/shards-{label}"
        c.write(f"{folder}/model.safetensors.index.json", index if isinstance(index, str) else json.dumps(index))
        if label == "fifo-shard":
            c.fifo(f"{folder}/shard.fifo")
        c.add(f"folder/shards-{label}", "shard-index", "hf-folder", "load", folder,
              expect="either" if label == "outside" else "error")


def rwkv_vocabs(c: Corpus) -> None:
    """An RWKV-7 ``.pth`` (stand-in tensors with RWKV-7 names) beside a bad rwkv_vocab_*.txt."""
    pk = state_dict([("blocks.0.att.r_k", "0", 4, [2, 2], [2, 1], 0), ("blocks.0.att.w0", "0", 4, [4], [1], 0)])
    pth = torch_zip(pk, {"0": np.ones(4, np.float32).tobytes()})
    lines = {"not-a-line": "abc\n", "length-lies": "1 'a' 5\n", "call": "1 __import__('os').system('true') 4\n",
             "huge-id": "99999999999999999999 'a' 1\n", "negative-id": "-5 'a' 1\n", "nested": "1 " + "(" * 100000 + " 1\n",
             "not-utf8": b"1 '\xff' 1\n", "bytes-ok": "1 b'\\x00' 1\n2 'ab' 2\n", "long-literal": "1 '" + "a" * 500_000 + "' 500000\n",
             "empty": ""}
    for label, text in lines.items():
        folder = f"rwkv/{label}"
        c.write(f"{folder}/model.pth", pth)
        c.write(f"{folder}/rwkv_vocab_v20230424.txt", text)
        c.add(f"rwkv-vocab/{label}", "vocab", "rwkv-vocab", "load", f"{folder}/model.pth", expect="error")
    for label, make in (("fifo", c.fifo), ("devzero", lambda p: c.symlink(p, "/dev/zero")), ("dir", c.mkdir)):
        folder = f"rwkv/{label}"
        c.write(f"{folder}/model.pth", pth)
        make(f"{folder}/rwkv_vocab_v20230424.txt")
        c.add(f"rwkv-vocab/{label}", "hostile-path", "rwkv-vocab", "load", f"{folder}/model.pth", expect="error")


def unknown_files(c: Corpus, rng: random.Random) -> None:
    """Files of other kinds, empty, random or not files at all, where a checkpoint is expected."""
    files = {
        "empty.pt": b"", "empty.safetensors": b"", "random-1k.pt": rng.randbytes(1024),
        "random-64k.bin": rng.randbytes(65536), "text.pt": b"just some text\n",
        "json.pt": b'{"a": 1}', "keras.h5": b"\x89HDF\r\n\x1a\n" + bytes(100),
        "keras.keras": plain_zip({"config.json": b"{}", "model.weights.h5": b"\x89HDF\r\n\x1a\n"}),
        "torchscript.pt": plain_zip({"m/data.pkl": b"\x80\x02}.", "m/constants.pkl": b"\x80\x02).",
                                     "m/code/__torch__.py": b"import os\n"}),
        "npy.pt": b"\x93NUMPY\x01\x00v\x00" + b" " * 118 + b"\n", "gzip.pt": b"\x1f\x8b\x08\x00" + bytes(40),
        "onnx.onnx": b"\x08\x07\x12\x07pytorch" + rng.randbytes(200), "pickle-only-proto.pt": b"\x80\x02",
        "zip-empty.pt": b"PK\x05\x06" + bytes(18),
    }
    for name, data in files.items():
        rel = c.write(f"unknown/{name}", data)
        c.add(f"unknown/{name}", "unknown-kind", "unknown", "load", rel, expect="error")
    specials = {"dir-named.pt": lambda p: c.mkdir(p), "fifo.pt": c.fifo,
                "devzero.pt": lambda p: c.symlink(p, "/dev/zero"), "missing.pt": lambda p: p,
                "dangling.pt": lambda p: c.symlink(p, "nowhere-at-all"),
                "loop-a.pt": lambda p: (c.symlink(p, "loop-b.pt"), c.symlink("unknown/loop-b.pt", "loop-a.pt"))[0],
                "empty-dir": lambda p: c.mkdir(p), "two-weights": lambda p: (
                    c.write(f"{p}/a.pt", lstm_pt(lstm_arrays(0))), c.write(f"{p}/b.safetensors", b"x"))[0]}
    for name, make in specials.items():
        rel = f"unknown/{name}"
        make(rel)
        c.add(f"unknown/{name}", "hostile-path", "unknown", "load", rel, expect="error")
    bad = "unknown/non-utf8-\udcff\udcfe.pt"  # a valid checkpoint under a name that is not UTF-8
    c.write(bad, lstm_pt(lstm_arrays(0)))
    c.add("unknown/non-utf8-name-valid", "valid", "pt-zip", "load", bad, expect="ok")


def build_folders(c: Corpus, rng: random.Random) -> None:
    family_configs(c)
    lstm_folders(c)
    rwkv_vocabs(c)
    unknown_files(c, rng)
