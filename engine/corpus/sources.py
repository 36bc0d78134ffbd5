"""Corpus sources: where the sequences of a corpus recording come from, read lazily.

A corpus is one of:

- a **folder**: every file under it matching ``glob`` (default ``*``; ``**`` is implied: the
  folder is searched recursively), in sorted path order, each file one document (UTF-8; bytes that
  are not UTF-8 read as U+FFFD);
- a **text file** (any other suffix), cut into documents by ``split``: ``blank`` (paragraphs
  between blank lines, the default), ``line`` (each non-empty line), or ``fixed`` (pieces of
  ``fixed_chars`` characters);
- **JSON Lines** (``.jsonl``/``.ndjson``): one JSON object per line, the document is its
  ``text_column`` string;
- **Parquet** (``.parquet``, read with ``pyarrow`` when it is installed): the ``text_column``
  column, in row order;
- **numeric** sequences: one ``.npy`` holding a 3-D ``[sequences, time, features]`` array (read
  memory-mapped), or a folder of 2-D ``[time, features]`` ``.npy`` files (``glob`` ``*.npy``).

Memory stays bounded: files are read in pieces, and a document longer than
:data:`MAX_DOCUMENT_CHARS` is cut into pieces of that size (each then its own document).

:func:`sequences` turns documents into the numbered sequences a recording runs: each document is
tokenized and cut into pieces of at most ``seq_len`` tokens; sequence numbers count those pieces
in order from 0, so the same corpus and options always give the same numbering (the recorder's
``/progress`` and the Ray shards rely on it).  ``max_tokens`` stops after that many tokens
(the last sequence cut short to fit exactly).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..limits import display_name

MAX_DOCUMENT_CHARS = 1 << 20  # a longer document is cut into pieces of this many characters
READ_CHARS = 1 << 16  # how much text is read at a time
SPLITS = ("blank", "line", "fixed")
DEFAULT_FIXED_CHARS = 4096
NUMERIC_SUFFIXES = (".npy",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CorpusError(InputError):
    """A corpus that cannot be read as asked, with the reason and the way out."""


@dataclass(frozen=True)
class Document:
    name: str  # where it came from: a file name, "file:line", "file#paragraph"
    text: str | None = None
    values: np.ndarray | None = None  # [time, features] for numeric corpora


@dataclass(frozen=True)
class Sequence:
    """One numbered sequence of a corpus recording."""

    index: int
    name: str  # the document's name, with "[k]" for its k-th piece when it was cut
    ids: np.ndarray  # int64 [L]: token ids, or 0..L-1 for numeric sequences
    pieces: list[str] | None = None  # one text per token (token models)
    values: np.ndarray | None = None  # [L, F] numeric inputs
    note: str | None = None  # e.g. characters read as the unknown token

    def __len__(self) -> int:
        return len(self.ids)


class Corpus:
    """A corpus on disk (see the module doc); :meth:`documents` reads it lazily."""

    def __init__(self, path, *, split: str | None = None, glob: str | None = None, text_column: str = "text",
                 fixed_chars: int = DEFAULT_FIXED_CHARS):
        self.path = Path(path)
        if split is not None and split not in SPLITS:
            raise CorpusError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
        if fixed_chars < 1:
            raise CorpusError("the fixed split length must be a positive number of characters")
        self.split, self.glob, self.text_column, self.fixed_chars = split, glob, text_column, int(fixed_chars)
        try:
            is_dir, exists = self.path.is_dir(), self.path.exists()
        except (OSError, ValueError) as exc:
            raise CorpusError(f"cannot read corpus {display_name(str(path))}: {exc}") from None
        if not exists:
            raise CorpusError(f"no corpus at {display_name(str(path))}: give a folder, a text, .jsonl, .parquet or "
                              ".npy file")
        suffix = self.path.suffix.lower()
        if is_dir:
            self.kind = "numeric" if glob is None and self._folder_is_numeric() else "folder"
            if self.kind == "folder" and (glob or "").lower().endswith(".npy"):
                self.kind = "numeric"
        elif suffix in NUMERIC_SUFFIXES:
            self.kind = "numeric"
        elif suffix in JSONL_SUFFIXES:
            self.kind = "jsonl"
        elif suffix == ".parquet":
            self.kind = "parquet"
        else:
            self.kind = "text"
        if split is not None and self.kind != "text":
            raise CorpusError(f"--split applies to one large text file; {display_name(self.path.name)} is a "
                              f"{self.kind} corpus")
        if glob is not None and not is_dir:
            raise CorpusError("--glob applies to a folder corpus; the corpus given is a file")

    @property
    def numeric(self) -> bool:
        return self.kind == "numeric"

    def describe(self) -> dict:
        """What identifies this corpus and its reading options (kept in ``/progress``: a resumed
        run must read the same corpus the same way)."""
        return {"path": os.path.abspath(self.path), "kind": self.kind, "split": self.split, "glob": self.glob,
                "text_column": self.text_column if self.kind in ("jsonl", "parquet") else None,
                "fixed_chars": self.fixed_chars if self.split == "fixed" else None}

    # -- documents -------------------------------------------------------------------------
    def documents(self) -> Iterator[Document]:
        read = {"folder": self._folder, "text": self._text_file, "jsonl": self._jsonl, "parquet": self._parquet,
                "numeric": self._numeric}[self.kind]
        for doc in read():
            if doc.text is not None and len(doc.text) > MAX_DOCUMENT_CHARS:
                for k in range(0, len(doc.text), MAX_DOCUMENT_CHARS):
                    yield Document(f"{doc.name}[{k // MAX_DOCUMENT_CHARS}]", doc.text[k:k + MAX_DOCUMENT_CHARS])
            else:
                yield doc

    def _files(self, pattern: str) -> list[Path]:
        files = [p for p in self.path.rglob(pattern) if p.is_file()]
        return sorted(files, key=lambda p: p.relative_to(self.path).as_posix())

    def _folder_is_numeric(self) -> bool:
        return any(True for _ in self.path.rglob("*.npy")) and not any(
            p.is_file() and p.suffix.lower() != ".npy" for p in self.path.rglob("*"))

    def _folder(self) -> Iterator[Document]:
        files = self._files(self.glob or "*")
        if not files:
            raise CorpusError(f"no files match {self.glob or '*'!r} under {display_name(str(self.path))}")
        for p in files:
            name = p.relative_to(self.path).as_posix()
            for k, text in enumerate(_read_pieces(p, MAX_DOCUMENT_CHARS)):
                yield Document(name if k == 0 else f"{name}[{k}]", text)

    def _text_file(self) -> Iterator[Document]:
        name = self.path.name
        split = self.split or "blank"
        if split == "fixed":
            for k, text in enumerate(_read_pieces(self.path, self.fixed_chars)):
                yield Document(f"{name}#{k}", text)
            return
        para, para_line = [], 0
        for lineno, line in enumerate(_read_lines(self.path), 1):
            if split == "line":
                if line.strip():
                    yield Document(f"{name}:{lineno}", line)
                continue
            if line.strip():
                if not para:
                    para_line = lineno
                para.append(line)
                if sum(map(len, para)) >= MAX_DOCUMENT_CHARS:
                    yield Document(f"{name}:{para_line}", "".join(para))
                    para = []
            elif para:
                yield Document(f"{name}:{para_line}", "".join(para))
                para = []
        if para:
            yield Document(f"{name}:{para_line}", "".join(para))

    def _jsonl(self) -> Iterator[Document]:
        col = self.text_column
        for lineno, line in enumerate(_read_lines(self.path), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                raise CorpusError(f"line {lineno} of {display_name(self.path.name)} is not JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(col), str):
                raise CorpusError(f"line {lineno} of {display_name(self.path.name)} has no text field {col!r} "
                                  f"(choose the field with --text-column)")
            if obj[col]:
                yield Document(f"{self.path.name}:{lineno}", obj[col])

    def _parquet(self) -> Iterator[Document]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CorpusError("reading Parquet needs pyarrow (pip install pyarrow), or convert the corpus to "
                              "JSON Lines") from None
        try:
            pf = pq.ParquetFile(self.path)
            if self.text_column not in pf.schema_arrow.names:
                raise CorpusError(f"{display_name(self.path.name)} has no column {self.text_column!r} (it has "
                                  f"{', '.join(pf.schema_arrow.names[:10])}); choose one with --text-column")
            row = 0
            for batch in pf.iter_batches(columns=[self.text_column], batch_size=1024):
                for text in batch.column(0).to_pylist():
                    if isinstance(text, str) and text:
                        yield Document(f"{self.path.name}:{row}", text)
                    row += 1
        except CorpusError:
            raise
        except Exception as exc:  # pyarrow's errors about damaged files
            raise CorpusError(f"cannot read {display_name(self.path.name)} as Parquet: {str(exc)[:200]}") from None

    def _numeric(self) -> Iterator[Document]:
        if self.path.is_dir():
            files = self._files(self.glob or "*.npy")
            if not files:
                raise CorpusError(f"no .npy files under {display_name(str(self.path))}")
            for p in files:
                yield Document(p.relative_to(self.path).as_posix(), values=_numeric_array(p, 2))
            return
        stack = _numeric_array(self.path, 3)
        for k in range(len(stack)):
            yield Document(f"{self.path.name}[{k}]", values=np.asarray(stack[k]))


def _read_pieces(path: Path, size: int) -> Iterator[str]:
    """The text of a file in pieces of ``size`` characters (the last one shorter)."""
    buf = ""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            while True:
                block = f.read(max(READ_CHARS, size - len(buf)))
                if not block:
                    break
                buf += block
                while len(buf) >= size:
                    yield buf[:size]
                    buf = buf[size:]
    except OSError as exc:
        raise CorpusError(f"cannot read {display_name(str(path))}: {exc.strerror or exc}") from None
    if buf:
        yield buf


def _read_lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            while True:
                line = f.readline(MAX_DOCUMENT_CHARS)
                if not line:
                    return
                yield line
    except OSError as exc:
        raise CorpusError(f"cannot read {display_name(str(path))}: {exc.strerror or exc}") from None


def _numeric_array(path: Path, ndim: int) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorpusError(f"cannot read {display_name(path.name)} as a .npy array: {str(exc)[:200]}") from None
    if arr.ndim == ndim - 1 and ndim == 2:
        arr = arr[:, None]
    if arr.ndim != ndim or arr.dtype.kind not in "biuf":
        shape = "[sequences, time, features]" if ndim == 3 else "[time, features]"
        raise CorpusError(f"{display_name(path.name)} holds {arr.dtype} {tuple(arr.shape)}; a numeric corpus is "
                          f"{shape} numbers")
    return arr


# -- sequences -----------------------------------------------------------------------------


def sequences(corpus: Corpus, model, *, seq_len: int | None = None, max_tokens: int | None = None,
              start: int = 0) -> Iterator[Sequence]:
    """The corpus's numbered sequences for ``model`` (see the module doc), from number ``start``
    on (the ones before are read and skipped: numbering never depends on where a run starts)."""
    if seq_len is not None and seq_len < 1:
        raise CorpusError("--seq-len must be a positive number of tokens")
    if max_tokens is not None and max_tokens < 1:
        raise CorpusError("--max-tokens must be a positive number of tokens")
    if corpus.numeric and model.takes_tokens:
        raise CorpusError("this model reads tokens; a numeric .npy corpus fits models of numeric sequences")
    if not corpus.numeric and not model.takes_tokens:
        raise CorpusError("this model reads numeric sequences; give a .npy corpus, not text")
    if not corpus.numeric and model.tokenizer is None:
        raise CorpusError("this model came without a vocabulary, so it cannot read a text corpus")
    index, total = 0, 0
    for doc in corpus.documents():
        if doc.values is not None:
            values = np.asarray(doc.values)
            if values.shape[1] != model.input_size:
                raise CorpusError(f"{doc.name} has {values.shape[1]} features per step; the model reads "
                                  f"{model.input_size}")
            n, ids, pieces, note = len(values), None, None, None
        else:
            ids, pieces = model.tokenizer.encode(doc.text)
            n, values = len(ids), None
            unknown = getattr(model.tokenizer, "unknown_note", None)
            note = unknown(doc.text) if unknown is not None and index >= start else None
        step = seq_len or max(n, 1)
        parts = range(0, n, step)
        for k, a in enumerate(parts):
            b = min(n, a + step)
            if max_tokens is not None:
                b = min(b, a + max_tokens - total)
            if index >= start:
                name = doc.name if len(parts) == 1 else f"{doc.name}[{k}]"
                if values is not None:
                    chunk = np.asarray(values[a:b], dtype=np.float64 if values.dtype == np.float64 else np.float32)
                    bad = ~np.isfinite(chunk)
                    if bad.any():
                        t, f = np.argwhere(bad)[0]
                        raise CorpusError(f"{doc.name} has a non-finite value at step {a + t}, feature {f}")
                    yield Sequence(index, name, np.arange(b - a, dtype=np.int64), values=chunk)
                else:
                    yield Sequence(index, name, ids[a:b], pieces=pieces[a:b], note=note if k == 0 else None)
            index += 1
            total += b - a
            if max_tokens is not None and total >= max_tokens:
                return


__all__ = ["Corpus", "Document", "Sequence", "sequences", "CorpusError", "SPLITS", "MAX_DOCUMENT_CHARS"]
