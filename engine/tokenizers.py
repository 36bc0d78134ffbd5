"""Turning inputs into what a model reads: character vocabularies, ``tokenizer.json``
files, the RWKV "World" vocabulary, and numeric sequences (``.npy``/``.csv``, time x features)."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError, LoadError
from .limits import MAX_TOKENIZER_BYTES, display_name, is_regular_file, read_text_capped


#: the piece standing for id 0 of a vocabulary numbered from 1 (padding: no character reads as it)
PADDING = "<pad>"
#: a vocabulary entry that names a special token rather than spelling text: ``<pad>``, ``<unk>``,
#: ``<s>``, ``</s>``, ``<eos>``, ``[PAD]``, ``[UNK]`` … (no text is ever read as one)
_SPECIAL = re.compile(r"^(<[/A-Za-z_|][A-Za-z0-9_|-]{0,23}>|\[[A-Z][A-Z_]{1,15}\])$")
#: the bare names char-RNN code gives its specials (``char_to_idx = {"PAD": 0, ...}``), in capitals only
_BARE_SPECIALS = {"PAD", "UNK", "OOV", "EOS", "BOS", "SOS", "SOW", "EOW", "START", "END", "STOP", "GO", "MASK",
                  "NULL", "NUL", "BLANK", "SEP", "CLS", "EMPTY", "PADDING", "UNKNOWN"}
#: the special entries that stand for characters missing from the vocabulary
_UNKNOWN_NAMES = ("<unk>", "<UNK>", "[UNK]", "<oov>", "<OOV>", "<unknown>", "UNK", "OOV", "UNKNOWN")


def is_special_token(piece: str) -> bool:
    """Whether a vocabulary entry names a special token (``<pad>``, ``<unk>``, ``</s>``, ``[PAD]``)."""
    return bool(_SPECIAL.match(piece)) or piece in _BARE_SPECIALS


class CharVocab:
    """A character-level vocabulary: id ``i`` is the string ``pieces[i]`` (usually one char).

    Characters missing from the vocabulary map to ``unknown`` when the vocabulary has an
    unknown symbol, and are refused (with the offending characters named) when it has none.
    Special entries (``<pad>``, ``<unk>``, ``<s>``, ``[PAD]`` …: :func:`is_special_token`) are
    never read from text; every other entry is matched character by character.
    """

    kind = "chars"

    def __init__(self, pieces: Sequence[str], unknown: str | None = None):
        self.pieces = [str(p) for p in pieces]
        self.index = {p: i for i, p in enumerate(self.pieces)}
        if len(self.index) != len(self.pieces):
            raise ValueError("the vocabulary lists a character twice")
        self.unknown = unknown if unknown in self.index else None

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def specials(self) -> list[str]:
        """The entries that name special tokens rather than text."""
        return [p for p in self.pieces if is_special_token(p)]

    @property
    def multi_character(self) -> list[str]:
        """The entries longer than one character that are not special tokens (words, subwords):
        text, matched character by character, never produces them."""
        return [p for p in self.pieces if len(p) != 1 and not is_special_token(p)]

    @classmethod
    def _with_unknown(cls, pieces) -> "CharVocab":
        """A vocabulary read from a file: its ``<unk>`` entry (if any) stands for missing characters."""
        pieces = [str(p) for p in pieces]
        return cls(pieces, next((u for u in _UNKNOWN_NAMES if u in pieces), None))

    @classmethod
    def from_any(cls, obj) -> "CharVocab":
        """Read the vocabularies people store beside char-RNN weights: a string of characters,
        a list of characters, ``{char: id}`` (``stoi``/``char2idx``) or ``{id: char}``
        (``itos``/``idx2char``), or SeqScope's own ``{"pieces": [...], "unknown": ...}``."""
        if isinstance(obj, CharVocab):
            return obj
        if isinstance(obj, str):
            return cls(list(obj))
        if isinstance(obj, Mapping):
            if "pieces" in obj:
                return cls(obj["pieces"], obj.get("unknown"))
            keys, values = list(obj.keys()), list(obj.values())
            if all(isinstance(v, (int, np.integer)) for v in values):  # char -> id
                mapping = {int(v): str(k) for k, v in obj.items()}
            elif all(str(k).lstrip("-").isdigit() for k in keys):  # id -> char (JSON makes keys strings)
                mapping = {int(k): str(v) for k, v in obj.items()}
            else:
                raise ValueError("a vocabulary mapping must be {char: id} or {id: char}")
            # checked by count before any list is built: {"(": 0, ")": 400000000} must not make one of 400M
            n = len(mapping)
            if n == len(obj) and mapping and min(mapping) == 1 and max(mapping) == n and PADDING not in obj:
                # ids 1..N, as Keras's Tokenizer numbers them: id 0 is padding, which no text makes
                return cls._with_unknown([PADDING] + [mapping[i] for i in range(1, n + 1)])
            if n != len(obj) or (mapping and (min(mapping) != 0 or max(mapping) != n - 1)):
                raise ValueError(f"vocabulary ids must be 0..N-1 (or 1..N, 0 being padding) with no gaps or repeats (the {len(obj)} entries "
                                 f"have ids from {min(mapping, default=0)} to {max(mapping, default=0)})")
            return cls._with_unknown([mapping[i] for i in range(n)])
        if isinstance(obj, (list, tuple)):
            return cls._with_unknown(obj)
        raise ValueError(f"cannot read a vocabulary from a {type(obj).__name__}")

    def to_dict(self) -> dict:
        return {"kind": "chars", "pieces": self.pieces, "unknown": self.unknown}

    def encode(self, text: str) -> tuple[np.ndarray, list[str]]:
        ids = []
        missing = set()
        unk = self.index.get(self.unknown) if self.unknown is not None else None
        for ch in text:
            i = self.index.get(ch)
            if i is None:
                if unk is None:
                    missing.add(ch)
                    continue
                i = unk
            ids.append(i)
        if missing:
            shown = ", ".join(repr(c) for c in sorted(missing)[:10])
            raise InputError(f"the text has characters this model's vocabulary lacks: {shown}")
        return np.asarray(ids, dtype=np.int64), list(text)

    def piece(self, i: int) -> str:
        """The text of id ``i`` ("" for ids past the vocabulary, which an embedding may have)."""
        return self.pieces[i] if 0 <= i < len(self.pieces) else ""

    def unknown_note(self, text: str) -> str | None:
        """A sentence saying how many characters of ``text`` :meth:`encode` reads as the unknown
        symbol (with a few of them), or None when every character is in the vocabulary."""
        if self.unknown is None:
            return None  # encode refuses such text instead
        if not set(text) - self.index.keys():
            return None
        missing = [ch for ch in text if ch not in self.index]
        examples = ", ".join(repr(ch) for ch in list(dict.fromkeys(missing))[:3])
        n = len(missing)
        return (f"{n} character{'s are' if n != 1 else ' is'} not in the model's vocabulary (e.g. {examples}); "
                f"{'they were' if n != 1 else 'it was'} read as the unknown token {self.unknown!r}")


class FileTokenizer:
    """A Hugging Face ``tokenizer.json`` (any model type the ``tokenizers`` package reads).
    Token texts are cut from the input by offsets, so they join back to the input."""

    kind = "tokenizer.json"

    def __init__(self, path):
        from tokenizers import Tokenizer

        self.path = str(path)
        try:  # read here, so that only a regular file of bounded size is ever opened
            text = read_text_capped(path, "tokenizer file", MAX_TOKENIZER_BYTES)
        except LoadError as exc:
            raise ValueError(str(exc)) from None
        try:
            self._tok = Tokenizer.from_str(text)
        except Exception as exc:  # the Rust error text is specific enough to show
            raise ValueError(f"cannot read tokenizer file {display_name(path)}: {exc}") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def to_dict(self) -> dict:
        return {"kind": "tokenizer.json", "path": self.path}

    def encode(self, text: str) -> tuple[np.ndarray, list[str]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        starts = [0] + [s for s, _ in enc.offsets[1:]] + [len(text)]
        pieces = [text[starts[k] : starts[k + 1]] for k in range(len(enc.ids))]
        return np.asarray(enc.ids, dtype=np.int64), pieces

    def piece(self, i: int) -> str:
        return self._tok.id_to_token(i) or ""


class RwkvWorldTokenizer:
    """The RWKV "World" vocabulary (``rwkv_vocab_v20230424.txt``, shipped with BlinkDL's
    RWKV-LM and the ``rwkv`` package; RWKV-5/6/7 world models read it).  Each line is
    ``id literal length``, the literal a Python ``str`` or ``bytes`` (read with
    ``ast.literal_eval``: nothing in the file runs).  Encoding is RWKV's: over the UTF-8 bytes,
    at each position the longest vocabulary entry that matches.  Token texts are cut from the
    input at the tokens' byte boundaries (rounded to whole characters), so they join back to it."""

    kind = "rwkv_world"

    def __init__(self, path):
        import ast

        self.path = str(path)
        self._bytes: dict[int, bytes] = {}
        try:
            text = read_text_capped(path, "RWKV vocabulary")  # a regular file of bounded size only
        except LoadError as exc:
            raise ValueError(str(exc)) from None
        try:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                first, last = line.index(" "), line.rindex(" ")
                token = ast.literal_eval(line[first + 1:last])
                token = token.encode("utf-8") if isinstance(token, str) else token
                if not isinstance(token, bytes) or len(token) != int(line[last + 1:]):
                    raise ValueError(f"line {n} is not 'id literal length'")
                self._bytes[int(line[:first])] = token
        except (OSError, SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
            raise ValueError(f"cannot read the RWKV vocabulary {display_name(path)}: {exc}") from None
        if not self._bytes:
            raise ValueError(f"the RWKV vocabulary {display_name(path)} holds no entries")
        self._ids = {b: i for i, b in self._bytes.items()}
        self._lengths: dict[int, list[int]] = {}  # first byte -> token lengths, longest first
        for b in self._ids:
            self._lengths.setdefault(b[0], []).append(len(b))
        for first, lens in self._lengths.items():
            self._lengths[first] = sorted(set(lens), reverse=True)

    @property
    def vocab_size(self) -> int:
        return max(self._bytes) + 1

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path}

    def encode(self, text: str) -> tuple[np.ndarray, list[str]]:
        data = text.encode("utf-8")
        ids, bounds, i = [], [0], 0
        while i < len(data):
            for n in self._lengths.get(data[i], ()):
                tid = self._ids.get(data[i:i + n])
                if tid is not None:
                    break
            else:
                raise InputError(f"byte {data[i]:#04x} at {i} is not in the RWKV vocabulary")
            ids.append(tid)
            i += n
            bounds.append(i)
        # token boundaries in characters: a boundary inside a character moves to that character's end
        char_starts = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])
        cuts = np.searchsorted(char_starts, bounds, side="left").tolist()
        return np.asarray(ids, dtype=np.int64), [text[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def piece(self, i: int) -> str:
        return self._bytes.get(i, b"").decode("utf-8", errors="replace")


def read_numeric(path) -> np.ndarray:
    """A numeric sequence, time x features, from ``.npy`` or ``.csv`` (a header row of
    column names is skipped).  A 1-D array is one feature."""
    path = Path(path)
    if not is_regular_file(path):  # a named pipe would block forever
        what = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise InputError(f"numeric input {display_name(path.name)} {what}")
    try:
        if path.suffix.lower() == ".npy":
            arr = _read_npy(path)
        elif path.suffix.lower() in (".csv", ".txt", ".tsv"):
            delim = "\t" if path.suffix.lower() == ".tsv" else ","
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f, delimiter=delim) if r and any(c.strip() for c in r)]
            if rows and not _is_number(rows[0][0]):
                rows = rows[1:]
            arr = np.asarray([[float(c) for c in r] for r in rows], dtype=np.float64)
        else:
            raise InputError(f"{path.name}: numeric inputs are read from .npy or .csv files")
    except InputError:
        raise
    except (OSError, ValueError, csv.Error) as exc:
        raise InputError(f"cannot read numeric input {display_name(path.name)}: {str(exc)[:200]}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{path.name}: a numeric input must be time x features, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path.name}: the array is not numeric ({arr.dtype})")
    return arr.astype(np.float32)


def _read_npy(path: Path) -> np.ndarray:
    from .npy import read_npy

    with open(path, "rb") as f:
        return read_npy(f, os.fstat(f.fileno()).st_size, display_name(path.name), InputError)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def tokenizer_from_dict(d: dict, base: Path | None = None):
    files = {"tokenizer.json": FileTokenizer, RwkvWorldTokenizer.kind: RwkvWorldTokenizer}
    if d.get("kind") == "keras_tokenizer":
        from .keras_tokenizer import KerasTokenizer

        return KerasTokenizer.from_dict(d)
    if d.get("kind") in files:
        p = Path(d["path"])
        return files[d["kind"]](p if p.is_absolute() or base is None else base / p)
    return CharVocab.from_any(d)


def vocab_to_json(tok) -> str:
    return json.dumps(tok.to_dict())
