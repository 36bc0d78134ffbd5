"""Keras's ``Tokenizer`` (``keras.preprocessing.text``, Keras 1/2), read from what its
``to_json()`` wrote, and encoding text exactly as its ``texts_to_sequences`` does: ids 1..N from
``word_index`` (0 is padding, which no text makes), the text lower-cased when ``lower``; with
``char_level`` every character is a token, otherwise the ``filters`` characters become ``split``
and the text is split on it (``text_to_word_sequence``); an id ≥ ``num_words`` and a word not in
the index become the ``oov_token``'s id when there is one.  Where Keras would silently drop a
token (no ``oov_token``), SeqScope refuses the text and names what it lacks.

Token texts are cut from the input (a word with the separators before the next one), so they join
back to the input."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import safe_json
from .errors import InputError
from .tokenizers import PADDING

KIND = "keras_tokenizer"
#: ``Tokenizer``'s defaults (Keras 2.x)
FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


def looks_like_keras_tokenizer(obj) -> bool:
    """Whether ``obj`` is what ``Tokenizer.to_json()`` writes (parsed)."""
    return isinstance(obj, Mapping) and obj.get("class_name") == "Tokenizer" and isinstance(obj.get("config"), Mapping)


class KerasTokenizer:
    kind = KIND

    def __init__(self, word_index: Mapping, *, lower=True, filters=FILTERS, split=" ", char_level=False,
                 oov_token=None, num_words=None):
        if not isinstance(word_index, Mapping) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in word_index.values()):
            raise ValueError("a Keras tokenizer's word_index must be {word: id}")
        n = len(word_index)
        ids = set(word_index.values())
        if n and (min(ids) != 1 or max(ids) != n or len(ids) != n):  # checked before any list is built
            raise ValueError(f"a Keras tokenizer's ids must be 1..N with no gaps or repeats (the {n} words have ids "
                             f"from {min(ids)} to {max(ids)})")
        if not isinstance(split, str) or not split or not isinstance(filters, str):
            raise ValueError("a Keras tokenizer's split must be a non-empty string and its filters a string")
        if num_words is not None and (not isinstance(num_words, int) or isinstance(num_words, bool) or num_words < 1):
            raise ValueError(f"a Keras tokenizer's num_words must be a positive whole number, not {num_words!r}")
        self.index = {str(w): int(i) for w, i in word_index.items()}
        self.lower, self.filters, self.split = bool(lower), filters, split
        self.char_level, self.oov_token, self.num_words = bool(char_level), oov_token, num_words
        self.pieces = [PADDING] + [None] * n
        for w, i in self.index.items():
            self.pieces[i] = w
        self.limit = min(n + 1, num_words) if num_words else n + 1  # ids Keras gives out: below num_words
        oov = self.index.get(oov_token) if oov_token is not None else None
        self.oov = oov if oov is not None and oov < self.limit else None

    @classmethod
    def from_json(cls, obj) -> "KerasTokenizer":
        """From ``Tokenizer.to_json()`` (parsed): its config keeps ``word_index`` as a JSON string."""
        cfg = obj["config"]
        word_index = cfg.get("word_index")
        if isinstance(word_index, str):
            word_index = safe_json.loads(word_index, "the Keras tokenizer's word_index")
        if word_index is None and isinstance(cfg.get("index_word"), (str, Mapping)):
            index_word = cfg["index_word"]
            index_word = safe_json.loads(index_word, "the Keras tokenizer's index_word") \
                if isinstance(index_word, str) else index_word
            if not isinstance(index_word, Mapping):
                raise ValueError("a Keras tokenizer's index_word must be {id: word}")
            word_index = {str(w): int(i) for i, w in index_word.items()}
        return cls(word_index or {}, lower=cfg.get("lower", True), filters=cfg.get("filters", FILTERS),
                   split=cfg.get("split", " "), char_level=cfg.get("char_level", False),
                   oov_token=cfg.get("oov_token"), num_words=cfg.get("num_words"))

    @property
    def vocab_size(self) -> int:
        return self.limit

    def to_dict(self) -> dict:
        return {"kind": KIND, "word_index": self.index, "lower": self.lower, "filters": self.filters,
                "split": self.split, "char_level": self.char_level, "oov_token": self.oov_token,
                "num_words": self.num_words}

    @classmethod
    def from_dict(cls, d: Mapping) -> "KerasTokenizer":
        return cls(d["word_index"], lower=d.get("lower", True), filters=d.get("filters", FILTERS),
                   split=d.get("split", " "), char_level=d.get("char_level", False), oov_token=d.get("oov_token"),
                   num_words=d.get("num_words"))

    def piece(self, i: int) -> str:
        return self.pieces[i] if 0 <= i < self.limit else ""

    # -- encoding ----------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[tuple[str, int]]:
        """Keras's tokens of ``text``, each with the index in ``text`` where it starts."""
        chars, origin = [], []  # the text as Keras transforms it, and where each character came from
        for k, c in enumerate(text):
            for t in (c.lower() if self.lower else c):
                chars.append(self.split if not self.char_level and t in self.filters else t)
                origin.extend([k] * len(chars[-1]))
        flat = "".join(chars)
        if self.char_level:
            return [(c, origin[k]) for k, c in enumerate(flat)]
        out, pos = [], 0
        for part in flat.split(self.split):
            if part:
                out.append((part, origin[pos]))
            pos += len(part) + len(self.split)
        return out

    def _id(self, token: str) -> int | None:
        i = self.index.get(token)
        if i is None or i >= self.limit:
            return self.oov
        return i

    def encode(self, text: str) -> tuple[np.ndarray, list[str]]:
        tokens = self._tokens(text)
        ids = [self._id(t) for t, _ in tokens]
        missing = sorted({t for (t, _), i in zip(tokens, ids) if i is None})
        if missing:
            shown = ", ".join(repr(t) for t in missing[:10])
            raise InputError(f"the text has {'characters' if self.char_level else 'words'} this Keras tokenizer does "
                             f"not know and it has no oov_token (Keras would drop them silently): {shown}")
        starts = [0] + [s for _, s in tokens[1:]] + [len(text)]
        # "" for the second token of one character (a lower-cased 'İ' is two)
        pieces = [text[starts[k]:starts[k + 1]] for k in range(len(tokens))]
        return np.asarray(ids, dtype=np.int64), pieces

    def unknown_note(self, text: str) -> str | None:
        """How many tokens of ``text`` read as the oov_token, or None when none does."""
        if self.oov is None:
            return None
        unknown = [t for t, _ in self._tokens(text) if self._id(t) == self.oov and t != self.oov_token]
        if not unknown:
            return None
        examples = ", ".join(repr(t) for t in list(dict.fromkeys(unknown))[:3])
        n = len(unknown)
        return (f"{n} token{'s are' if n != 1 else ' is'} not in the Keras tokenizer's vocabulary (e.g. {examples}); "
                f"{'they were' if n != 1 else 'it was'} read as its oov_token {self.oov_token!r}")
