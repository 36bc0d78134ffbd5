"""What the harness measures and checks for one case: time limit, memory (peak RSS through
``/proc/self``), the message of a documented error, and the state of an output target."""
from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

CASE_SECONDS = 10.0
SUBPROCESS_SECONDS = 40.0
MEMORY_FLOOR = 256 << 20  # bytes a case may always use
MEMORY_FACTOR = 20  # ... or this many times the bytes it reads


def case_limit(case: dict) -> float:
    if "limit" in case["args"]:
        return float(case["args"]["limit"])
    return SUBPROCESS_SECONDS if case["entry"] == "cli_subprocess" else CASE_SECONDS


def memory_bound(case: dict) -> int:
    return max(MEMORY_FLOOR, MEMORY_FACTOR * int(case.get("size", 0)))


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (kernel >= 4.0) and return that RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def peak_since_reset() -> int:
    return _status("VmHWM")


def address_space() -> int:
    return _status("VmSize")


# -- messages ------------------------------------------------------------------------------------

_REPR = re.compile(r"<[\w.]+ (object|at) (at )?0x[0-9a-f]+>|\b(tensor|array)\(\[")


def message_problem(msg: str) -> str | None:
    """Why ``msg`` is not the plain sentence a user should get, or None."""
    text = msg.strip()
    if not text:
        return "empty message"
    if "Traceback (most recent call last)" in text or re.search(r'File ".*", line \d+', text):
        return "a traceback in the message"
    if _REPR.search(text):
        return "a Python repr in the message"
    if len(text) > 2000:
        return f"{len(text)} characters long"
    if text.count("\n") > 2:
        return f"{text.count(chr(10)) + 1} lines long"
    if re.search(r"(.)\1{199}", text):
        return "it echoes the input (a run of 200 identical characters)"
    return None


# -- output targets --------------------------------------------------------------------------------


def _describe(p: Path, depth: int = 0):
    """A comparable description of whatever is at ``p`` (not following a final symlink)."""
    try:
        st = os.lstat(p)
    except (OSError, ValueError):
        return ("absent",)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    if stat.S_ISLNK(mode):
        return ("symlink", os.readlink(p))
    if stat.S_ISDIR(mode):
        if depth > 2:
            return ("dir",)
        return ("dir", tuple((c.name, _describe(c, depth + 1)) for c in sorted(p.iterdir())))
    if stat.S_ISCHR(mode):
        return ("char-device", st.st_rdev)
    if stat.S_ISFIFO(mode):
        return ("fifo",)
    return ("other", stat.S_IFMT(mode))


class Snapshot:
    """An output target and the folder it is in, before a write."""

    def __init__(self, target: Path, before, folder: Path | None, names: set[str] | None):
        self.before, self.folder, self.names = before, folder, names

    @classmethod
    def take(cls, target: Path) -> "Snapshot":
        folder = target.parent
        try:
            names = set(os.listdir(folder)) if folder.is_dir() else None
        except (OSError, ValueError):
            names = None
        return cls(target, _describe(target), folder, names)

    def check(self, target: Path, failed: bool, case: dict) -> list[str]:
        problems = []
        after = _describe(target)
        if failed and after != self.before:
            problems.append(f"clobbered: the target was {self.before[0]} and is now {after[0]}"
                            + (" (its content changed)" if after[0] == self.before[0] else ""))
        if not failed and self.before[0] not in ("absent", "file", "dir") and after != self.before:
            problems.append(f"replaced a {self.before[0]} with a {after[0]}")
        if self.names is not None:
            try:
                left = set(os.listdir(self.folder)) - self.names - ({target.name} if not failed else set())
            except OSError:
                left = set()
            if left:
                problems.append("left behind: " + ", ".join(sorted(left))[:200])
        return problems
