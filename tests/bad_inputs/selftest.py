"""Cases that break on purpose, one per kind of failure, to prove the harness notices each:
a crash (segfault), a hang SIGALRM can stop and one it cannot, a big allocation, an undocumented
exception, a traceback in a message, code that ran, a clobbered output, a bad input accepted,
a valid one refused; and a case after the crash, to prove the worker is replaced."""
from __future__ import annotations

import json
from pathlib import Path

#: id -> (what the case does, expect, the start of the problem the harness must report or None)
SELFTEST = {
    "selftest/a-alloc": ("alloc", "either", "memory"),
    "selftest/a-raise": ("raise", "either", "raised ValueError"),
    "selftest/a-traceback-message": ("traceback_message", "error", "message: a traceback"),
    "selftest/a-marker": ("marker", "either", "CODE EXECUTED"),
    "selftest/a-clobber": ("clobber", "error", "clobbered"),
    "selftest/a-accept": ("accept", "error", "accepted"),
    "selftest/a-refuse-valid": ("refuse", "ok", "valid input refused"),
    "selftest/a-refuse": ("refuse", "error", None),
    "selftest/a-timeout": ("hang", "either", "timeout"),
    "selftest/b-segfault": ("segfault", "either", "crash"),
    "selftest/c-after-the-crash": ("refuse", "error", None),
    "selftest/d-hang-uninterruptible": ("hang_uninterruptible", "either", "hang"),
}


def write_selftest_manifest(root: Path) -> Path:
    """A manifest of the self-test cases over an existing corpus folder (for its warm-up model)."""
    root = Path(root)
    target = root / "selftest-target.txt"
    target.write_text("old content")
    cases = []
    for cid, (do, expect, _) in SELFTEST.items():
        args = {"do": do}
        if do.startswith("hang"):
            args["limit"] = 1  # seconds: the hangs need not take the default ten
        if do == "clobber":
            args["target"] = target.name
        cases.append({"id": cid, "cls": "selftest", "kind": "selftest", "entry": "selftest", "path": None,
                      "expect": expect, "args": args, "size": 0})
    path = root / "selftest-manifest.json"
    path.write_text(json.dumps({"root": str(root), "cases": cases}))
    return path
