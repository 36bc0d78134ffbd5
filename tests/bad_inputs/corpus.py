"""The corpus being built: files under one root folder and the list of cases that use them.

A case is a plain dict (it goes to the manifest as JSON)::

    {"id": "pt-zip/truncate-0100", "cls": "truncation", "kind": "pt-zip", "entry": "load",
     "path": "pt-zip/truncate-0100.pt", "expect": "error", "args": {...}, "size": 1234}

``entry`` names the function the harness calls (see ``worker.ENTRIES``); ``expect`` is
``"error"`` (a documented SeqScopeError, nothing else), ``"ok"`` (valid input: it must work) or
``"either"`` (success or a documented error); ``size`` is the bytes of regular files the case
reads, which bounds the memory it may use.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path


class Corpus:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cases: list[dict] = []
        self.markers = self.root / "markers"  # malicious pickles would create files here
        self.markers.mkdir(exist_ok=True)

    # -- files ----------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write(self, rel: str, data: bytes | str) -> str:
        p = self.path(rel)
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        p.write_bytes(data)
        return rel

    def fifo(self, rel: str) -> str:
        os.mkfifo(self.path(rel))
        return rel

    def symlink(self, rel: str, target: str) -> str:
        os.symlink(target, self.path(rel))
        return rel

    def mkdir(self, rel: str) -> str:
        self.path(rel).mkdir(parents=True, exist_ok=True)
        return rel

    def marker(self, name: str) -> str:
        return str(self.markers / name)

    # -- cases ----------------------------------------------------------------------------
    def add(self, id: str, cls: str, kind: str, entry: str, path: str | None = None, expect: str = "either",
            **args) -> dict:
        assert expect in ("error", "ok", "either"), expect
        assert all(c["id"] != id for c in self.cases[-50:]), id
        case = {"id": id, "cls": cls, "kind": kind, "entry": entry, "path": path, "expect": expect, "args": args}
        self.cases.append(case)
        return case

    def finish(self) -> list[dict]:
        ids = [c["id"] for c in self.cases]
        dup = {i for i in ids if ids.count(i) > 1}
        assert not dup, f"duplicate case ids: {sorted(dup)[:5]}"
        for c in self.cases:
            c["size"] = sum(regular_size(self.root / p) for p in _paths_of(c))
        return self.cases


def _paths_of(case: dict):
    if case["path"]:
        yield case["path"]
    for key in ("model", "inputs_from"):
        if isinstance(case["args"].get(key), str):
            yield case["args"][key]


def regular_size(p: Path, depth: int = 0) -> int:
    """Bytes in the regular files at ``p`` (a folder: its files, following links to regular
    files but never into devices, pipes or link loops)."""
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return 0
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISDIR(st.st_mode) and depth < 2 and not os.path.islink(p):
        try:
            return sum(regular_size(c, depth + 1) for c in p.iterdir())
        except OSError:
            return 0
    return 0
