"""Bad and hostile checkpoint files: PyTorch zip and legacy ``.pt``, ``.safetensors``.

Every file starts from one valid tiny char-LSTM (vocabulary ``"abcdefghij "``, 2 layers of 8
units) written byte by byte, so the generator needs neither torch nor a working engine."""
from __future__ import annotations

import json
import random
import struct

import numpy as np

from .containers import (deflate_zeros, safetensors_bytes, tensors_header, torch_legacy, torch_zip,
                         zip_with_raw_entry)
from .corpus import Corpus
from .pickles import CODE_ROUTES, Pickle, code_pickle, state_dict

VOCAB = "abcdefghij "
V, E, H, LAYERS = len(VOCAB), 8, 8, 2
STACK_CONFIG = {"cell": "lstm", "num_layers": LAYERS, "hidden_size": H, "input_size": E, "vocab_size": V,
                "bidirectional": False, "bias": True, "proj_size": 0, "output_size": V, "head_bias": True}


def lstm_shapes(prefix_rnn="rnn.", embed="embedding.weight", head="fc.") -> list[tuple[str, tuple]]:
    shapes = [(embed, (V, E))]
    for k in range(LAYERS):
        width = E if k == 0 else H
        shapes += [(f"{prefix_rnn}weight_ih_l{k}", (4 * H, width)), (f"{prefix_rnn}weight_hh_l{k}", (4 * H, H)),
                   (f"{prefix_rnn}bias_ih_l{k}", (4 * H,)), (f"{prefix_rnn}bias_hh_l{k}", (4 * H,))]
    shapes += [(f"{head}weight", (V, H)), (f"{head}bias", (V,))]
    return shapes


def lstm_arrays(seed: int, **names) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in lstm_shapes(**names)}


def pt_entries(arrays: dict[str, np.ndarray]):
    """(name, storage key, numel, size, stride, offset) per tensor, and the storages."""
    entries, storages = [], {}
    for i, (name, a) in enumerate(arrays.items()):
        stride = [int(np.prod(a.shape[k + 1:])) for k in range(a.ndim)]
        entries.append((name, str(i), a.size, list(a.shape), stride, 0))
        storages[str(i)] = a.astype("<f4").tobytes()
    return entries, storages


def lstm_pt(arrays, legacy=False, wrap=True) -> bytes:
    entries, storages = pt_entries(arrays)
    extra = {"vocab": VOCAB, "epoch": 3} if wrap else None
    pk = state_dict(entries, wrap=extra, legacy=legacy)
    return torch_legacy(pk, storages) if legacy else torch_zip(pk, storages)


def lstm_safetensors(arrays, metadata: dict | None = None) -> bytes:
    tensors = {n: ("F32", a.shape, a.astype("<f4").tobytes()) for n, a in arrays.items()}
    header, data = tensors_header(tensors, metadata)
    return safetensors_bytes(header, data)


def canonical_arrays(seed: int) -> dict[str, np.ndarray]:
    return lstm_arrays(seed, prefix_rnn="rnn.", embed="embed.weight", head="head.")


def seqscope_metadata(config=None, vocab=None, **extra) -> dict:
    meta = {"format": "pt", "seqscope_config": json.dumps(config if config is not None else STACK_CONFIG),
            "seqscope_vocab": json.dumps(vocab if vocab is not None else
                                         {"kind": "chars", "pieces": list(VOCAB), "unknown": None})}
    meta.update(extra)
    return meta


# ---------------------------------------------------------------------------------------------


def truncations_and_flips(c: Corpus, rng: random.Random, kind: str, suffix: str, data: bytes,
                          entry: str = "load", n_cuts: int = 12, n_flips: int = 10) -> None:
    """Cut ``data`` at many offsets and flip single bits; each a case for ``entry``."""
    size = len(data)
    cuts = sorted({1, 8, 9, 16, 64, size // 2, size - 1, size - 22}
                  | {rng.randrange(1, size) for _ in range(n_cuts)})[:n_cuts + 4]
    for cut in cuts:
        rel = c.write(f"{kind}/truncate-{cut:06d}{suffix}", data[:cut])
        c.add(f"{kind}/truncate-{cut:06d}", "truncation", kind, entry, rel, expect="error")
    for k in range(n_flips):
        pos = rng.randrange(size)
        bit = rng.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        rel = c.write(f"{kind}/bitflip-{pos:06d}-{bit}{suffix}", bytes(flipped))
        c.add(f"{kind}/bitflip-{pos:06d}-{bit}", "bit-flip", kind, entry, rel)


def zip_name_flips(c: Corpus, data: bytes) -> None:
    """Zip entry names changed consistently (local header and central directory): names that are
    not UTF-8 although the UTF-8 flag is set, a data.pkl that is no longer there, a second prefix."""
    names = [b"archive/data.pkl", b"archive/data/0", b"archive/version", b"archive/byteorder"]
    swaps = [(b"archive/data.pkl", b"archive/data.pk\xff"), (b"archive/data.pkl", b"archive/data.pkm"),
             (b"archive/data/0", b"archive/data/\xc3"), (b"archive/version", b"archivf/version"),
             (b"archive/byteorder", b"archive/byteorde\x00"), (b"archive/data.pkl", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9/data.pkl")]
    assert all(a in names for a, _ in swaps)
    for k, (old, new) in enumerate(swaps):
        assert len(old) == len(new)
        blob = data.replace(old, new)
        flagged = bytearray(blob)
        # set the UTF-8 flag (bit 11) on every header so a decoder must decode the names
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = flagged.find(sig)
            while i >= 0:
                flags = struct.unpack_from("<H", flagged, i + off)[0] | 0x800
                struct.pack_into("<H", flagged, i + off, flags)
                i = flagged.find(sig, i + 4)
        rel = c.write(f"pt-zip/name-flip-{k}.pt", bytes(flagged))
        optional = b"byteorder" in old  # torch reads files without it (older torch wrote none)
        c.add(f"pt-zip/name-flip-{k}", "zip-name", "pt-zip", "load", rel, expect="either" if optional else "error")


def zip_bombs(c: Corpus, arrays) -> None:
    """Small files that inflate to 512 MiB, or declare absurd sizes."""
    entries, storages = pt_entries(arrays)
    pk = state_dict(entries, wrap={"vocab": VOCAB})
    stored = [("archive/version", b"3\n"), ("archive/byteorder", b"little")]
    stream, crc = deflate_zeros(512)
    # data.pkl inflating to 512 MiB of zeros (the pickle reader meets garbage only after inflating)
    blob = zip_with_raw_entry(stored + [(f"archive/data/{k}", v) for k, v in storages.items()],
                              "archive/data.pkl", stream, crc, 512 << 20)
    c.add("pt-zip/bomb-data-pkl-512MiB", "zip-bomb", "pt-zip", "load",
          c.write("pt-zip/bomb-data-pkl.pt", blob), expect="error")
    # a storage record inflating to 512 MiB under a pickle that declares a tiny tensor
    blob = zip_with_raw_entry([("archive/data.pkl", pk)] + stored
                              + [(f"archive/data/{k}", v) for k, v in storages.items() if k != "1"],
                              "archive/data/1", stream, crc, 512 << 20)
    c.add("pt-zip/bomb-storage-512MiB", "zip-bomb", "pt-zip", "load",
          c.write("pt-zip/bomb-storage.pt", blob), expect="error")
    # headers declaring 2**40 bytes for a data.pkl that is a few bytes
    small = __import__("zlib").compressobj(9, 8, -15)
    tiny = small.compress(pk) + small.flush()
    blob = zip_with_raw_entry(stored + [(f"archive/data/{k}", v) for k, v in storages.items()],
                              "archive/data.pkl", tiny, __import__("zlib").crc32(pk), len(pk), declared=1 << 40)
    c.add("pt-zip/declared-1TiB", "zip-bomb", "pt-zip", "load",
          c.write("pt-zip/declared-1TiB.pt", blob), expect="error")


def code_pickles(c: Corpus) -> None:
    """Pickles that would create a marker file through each route, in both formats and inside
    a NumPy file (an object array is a pickle too)."""
    for route in CODE_ROUTES:
        for fmt in ("zip", "legacy"):
            marker = c.marker(f"{fmt}-{route}")
            pk = code_pickle(route, marker)
            storages = {"0": struct.pack("<4f", 1, 2, 3, 4)}
            blob = torch_zip(pk, storages) if fmt == "zip" else torch_legacy(pk, storages)
            kind = f"pt-{fmt}"
            c.add(f"{kind}/code-{route}", "code", kind, "load", c.write(f"{kind}/code-{route}.pt", blob),
                  expect="error")
    # the payload as the legacy file's first pickle (where the magic number goes)
    pk = code_pickle("global_reduce", c.marker("legacy-first-pickle"))
    c.add("pt-legacy/code-first-pickle", "code", "pt-legacy", "load",
          c.write("pt-legacy/code-first-pickle.pth", pk), expect="error")


def lying_tensors(c: Corpus, arrays) -> None:
    """Tensors whose declared size, stride, offset or storage length do not fit the bytes held."""
    entries, storages = pt_entries(arrays)
    big_h = 4096  # stride-0 view: 16 bytes seen as LSTM weights of 4*4096 x 4096 floats (256 MiB each)
    variants = {
        "size-beyond-storage": lambda e: (e[0], e[1], e[2], [e[3][0] * 1000] + e[3][1:], e[4], e[5]),
        "offset-beyond-storage": lambda e: (e[0], e[1], e[2], e[3], e[4], 10**9),
        "negative-size": lambda e: (e[0], e[1], e[2], [-e[3][0]] + e[3][1:], e[4], e[5]),
        "negative-stride": lambda e: (e[0], e[1], e[2], e[3], [-s for s in e[4]], e[5]),
        "numel-2^40": lambda e: (e[0], e[1], 1 << 40, e[3], e[4], e[5]),
        "size-2^62": lambda e: (e[0], e[1], e[2], [1 << 31, 1 << 31] + e[3][2:], [1, 1], e[5]),
        "3d-weights": lambda e: (e[0], e[1], e[2], [2] + e[3], [0] + e[4], e[5]),
    }
    for label, change in variants.items():
        changed = [change(e) if e[0] == "rnn.weight_hh_l0" else e for e in entries]
        blob = torch_zip(state_dict(changed, wrap={"vocab": VOCAB}), storages)
        c.add(f"pt-zip/lying-{label}", "lying-shape", "pt-zip", "load", c.write(f"pt-zip/lying-{label}.pt", blob),
              expect="error")
    # stride 0: 16 bytes of storage as a whole LSTM of hidden big_h (every weight stride 0)
    zero = []
    for name, a in arrays.items():
        if name.startswith("rnn.") and name.endswith("_l0"):
            rows = 4 * big_h
            shape = [rows, E if "ih" in name else big_h] if "weight" in name else [rows]
            zero.append((name, "z", 4, shape, [0] * len(shape), 0))
        elif name.startswith("fc.weight"):
            zero.append((name, "z", 4, [V, big_h], [0, 0], 0))
        elif not name.startswith("rnn."):
            zero.append((name, str(len(zero)), a.size, list(a.shape),
                         [int(np.prod(a.shape[k + 1:])) for k in range(a.ndim)], 0))
    stor = {"z": struct.pack("<4f", 0.1, 0.2, 0.3, 0.4)}
    stor.update({e[1]: arrays[e[0]].astype("<f4").tobytes() for e in zero if e[1] != "z"})
    pk = state_dict(zero, wrap={"vocab": VOCAB})
    c.add("pt-zip/stride0-hidden-4096", "huge-size", "pt-zip", "load",
          c.write("pt-zip/stride0-hidden-4096.pt", torch_zip(pk, stor)), expect="error")
    pk = state_dict(zero, wrap={"vocab": VOCAB}, legacy=True)
    c.add("pt-legacy/stride0-hidden-4096", "huge-size", "pt-legacy", "load",
          c.write("pt-legacy/stride0-hidden-4096.pth", torch_legacy(pk, stor)), expect="error")


def not_state_dicts(c: Corpus) -> None:
    """Pickles of plain data that are not state dicts."""
    plain = {"list": lambda p: p.op(b"]"), "none": lambda p: p.op(b"N"), "int": lambda p: p.int(5),
             "deep-list": lambda p: p.op(b"]" * 20000 + b"a" * 19999),
             "empty-dict": lambda p: p.op(b"}")}
    for label, build in plain.items():
        p = Pickle(2)
        build(p)
        c.add(f"pt-zip/plain-{label}", "not-a-state-dict", "pt-zip", "load",
              c.write(f"pt-zip/plain-{label}.pt", torch_zip(p.stop(), {})), expect="error")


def build_pytorch(c: Corpus, rng: random.Random) -> None:
    arrays = lstm_arrays(0)
    good_zip, good_legacy = lstm_pt(arrays), lstm_pt(arrays, legacy=True)
    c.add("pt-zip/valid", "valid", "pt-zip", "load", c.write("pt-zip/valid.pt", good_zip), expect="ok")
    c.add("pt-legacy/valid", "valid", "pt-legacy", "load", c.write("pt-legacy/valid.pth", good_legacy), expect="ok")
    truncations_and_flips(c, rng, "pt-zip", ".pt", good_zip)
    truncations_and_flips(c, rng, "pt-legacy", ".pth", good_legacy)
    zip_name_flips(c, good_zip)
    zip_bombs(c, arrays)
    code_pickles(c)
    lying_tensors(c, arrays)
    not_state_dicts(c)


# -- safetensors ---------------------------------------------------------------------------------


def build_safetensors(c: Corpus, rng: random.Random) -> None:
    arrays = canonical_arrays(1)
    good = lstm_safetensors(arrays, seqscope_metadata())
    c.add("safetensors/valid", "valid", "safetensors", "load", c.write("safetensors/valid.safetensors", good),
          expect="ok")
    truncations_and_flips(c, rng, "safetensors", ".safetensors", good)
    header_len = struct.unpack("<Q", good[:8])[0]
    body = good[8:]
    for label, n in (("zero", 0), ("beyond-file", len(good) * 4), ("2^63", 1 << 63), ("one-short", header_len - 8)):
        c.add(f"safetensors/header-length-{label}", "lying-length", "safetensors", "load",
              c.write(f"safetensors/header-length-{label}.safetensors", struct.pack("<Q", n) + body), expect="error")
    tensors = {n: ("F32", a.shape, a.astype("<f4").tobytes()) for n, a in arrays.items()}
    header, data = tensors_header(tensors, seqscope_metadata())

    def variant(label, cls, change, expect="error", raw=None):
        h = json.loads(json.dumps(header))
        change(h)
        blob = safetensors_bytes(h, data) if raw is None else raw
        c.add(f"safetensors/{label}", cls, "safetensors", "load",
              c.write(f"safetensors/{label}.safetensors", blob), expect=expect)

    w = "rnn.weight_hh_l0"
    variant("offsets-beyond-file", "lying-offsets", lambda h: h[w].update(data_offsets=[0, 10**9]))
    variant("offsets-reversed", "lying-offsets", lambda h: h[w].update(data_offsets=[100, 4]))
    variant("offsets-overlap", "lying-offsets",
            lambda h: h["rnn.weight_ih_l0"].update(data_offsets=h[w]["data_offsets"]))
    variant("shape-lies", "lying-shape", lambda h: h[w].update(shape=[4 * H * 1000, H]))
    variant("shape-2^62", "huge-size", lambda h: h[w].update(shape=[1 << 31, 1 << 31]))
    variant("shape-negative", "lying-shape", lambda h: h[w].update(shape=[-1, H]))
    for dt in ("I8", "BOOL", "F64", "F8_E4M3", "X99", 5):
        variant(f"dtype-{dt}", "wrong-dtype", lambda h, dt=dt: h[w].update(dtype=dt))
    variant("metadata-not-strings", "wrong-type", lambda h: h["__metadata__"].update(seqscope_config={"a": 1}))
    variant("metadata-list", "wrong-type", lambda h: h.update(__metadata__=[1, 2]))
    nested = "[" * 100000
    for key in ("seqscope_config", "seqscope_vocab", "seqscope_tokenizer", "config"):
        variant(f"metadata-nested-{key}", "nesting", lambda h, key=key: h["__metadata__"].update({key: nested}))
    fifo = c.fifo("safetensors/a-fifo")
    for label, tok in (("devzero-tokenizer", {"kind": "tokenizer.json", "path": "/dev/zero"}),
                       ("devzero-rwkv-vocab", {"kind": "rwkv_world", "path": "/dev/zero"}),
                       ("fifo-tokenizer", {"kind": "tokenizer.json", "path": str(c.root / fifo)}),
                       ("fifo-rwkv-vocab", {"kind": "rwkv_world", "path": str(c.root / fifo)}),
                       ("dir-tokenizer", {"kind": "tokenizer.json", "path": str(c.root)}),
                       ("relative-escape", {"kind": "tokenizer.json", "path": "../../../../etc/passwd"})):
        def change(h, tok=tok):
            h["__metadata__"].pop("seqscope_vocab")
            h["__metadata__"]["seqscope_tokenizer"] = json.dumps(tok)
        variant(f"metadata-{label}", "devzero" if "devzero" in label else "hostile-path", change, expect="either")
    for field, values in (("num_layers", ["2", 2.5, None, 0, -1, 10**8, 10**6, [], "Infinity"]),
                          ("hidden_size", [0, -8, "8", None, 10**9]),
                          ("vocab_size", ["abc", None, 10**9, 0]), ("input_size", [0, 10**9]),
                          ("cell", ["bogus", 5, None]), ("proj_size", [-1, 10**9]), ("bidirectional", ["yes"])):
        for v in values:
            def change(h, field=field, v=v):
                cfg = dict(STACK_CONFIG)
                cfg[field] = float("inf") if v == "Infinity" else v
                h["__metadata__"]["seqscope_config"] = json.dumps(cfg)
            variant(f"config-{field}-{json.dumps(v)}", "wrong-type", change,
                    expect="either" if v in ("2", 2.5) else "error")
    # a vocabulary with an id gap (400 million entries if believed) and a one-hot model 12,000 wide
    variant("vocab-id-gap", "huge-size", lambda h: h["__metadata__"].update(
        seqscope_vocab=json.dumps({"a": 0, "b": 1, "c": 40_000_000})), expect="either")
    huge_header = {f"t{k}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for k in range(10000)}
    variant("huge-header-10000-tensors", "huge-size", lambda h: None, expect="error",
            raw=safetensors_bytes(huge_header))
    variant("header-nested", "nesting", lambda h: None, raw=safetensors_bytes("[" * 50000 + "]" * 50000))
    variant("header-not-json", "garbage", lambda h: None, raw=safetensors_bytes(b"{" + bytes(range(256)) * 4))
    one_hot(c)


def one_hot(c: Corpus) -> None:
    """No embedding, a vocabulary as wide as the first layer: a one-hot model 12,000 wide (an
    identity matrix of 576 MB built from a 400 kB file)."""
    width = 12000
    rng = np.random.default_rng(3)
    arrays = {"rnn.weight_ih_l0": rng.standard_normal((4, width)).astype(np.float32),
              "rnn.weight_hh_l0": rng.standard_normal((4, 1)).astype(np.float32)}
    pieces = [chr(0x4E00 + k) for k in range(width)]
    meta = {"format": "pt", "seqscope_vocab": json.dumps({"kind": "chars", "pieces": pieces, "unknown": None})}
    c.add("safetensors/one-hot-12000", "huge-size", "safetensors", "load",
          c.write("safetensors/one-hot-12000.safetensors", lstm_safetensors(arrays, meta)), expect="either")
