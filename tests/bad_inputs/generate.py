"""Build the bad-input corpus into a folder: ``python tests/bad_inputs/generate.py OUT`` or
``generate(OUT)``.  Deterministic for a given seed; a few MB; the manifest (every case, as JSON)
is written to ``OUT/manifest.json`` and returned.

Classes covered, for every kind of file SeqScope reads or writes: truncations at many offsets,
bit flips (contents and zip entry names), zip bombs, pickles that would run code (every opcode
route, zip and legacy formats, NumPy object arrays), lying shapes/offsets/lengths, stride-0 and
gigantic declared sizes, wrong dtypes, configs of the wrong types and deep nesting for every
family, vocabularies with id gaps, ``/dev/zero`` and named pipes where files are expected,
directories, symlink loops, empty and random files, broken traces, malformed interventions
and projects, hostile output paths (devices, pipes, folders, long and non-UTF-8 names, a full
disk), and command lines.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bad_inputs"

from .corpus import Corpus  # noqa: E402
from .gen_checkpoints import build_pytorch, build_safetensors  # noqa: E402
from .gen_folders import build_folders  # noqa: E402
from .gen_inputs import (build_cli, build_interventions, build_numeric, build_outputs, build_projects,  # noqa: E402
                         build_text)
from .gen_torchscript import build_torchscript  # noqa: E402
from .gen_traces import build_traces  # noqa: E402

SEED = 20261203


def generate(folder, seed: int = SEED) -> list[dict]:
    """Write the corpus into ``folder`` (created; should be empty) and return its cases."""
    rng = random.Random(seed)
    c = Corpus(Path(folder))
    build_pytorch(c, rng)
    build_torchscript(c, rng)
    build_safetensors(c, rng)
    build_folders(c, rng)
    build_numeric(c, rng)
    build_text(c, rng)
    build_interventions(c)
    build_traces(c, rng)
    build_projects(c)
    build_outputs(c)
    build_cli(c)
    cases = c.finish()
    (c.root / "manifest.json").write_text(json.dumps({"root": str(c.root), "seed": seed, "cases": cases}))
    return cases


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: generate.py OUT_FOLDER", file=sys.stderr)
        return 2
    cases = generate(argv[0])
    by_kind: dict[str, int] = {}
    for case in cases:
        by_kind[case["kind"]] = by_kind.get(case["kind"], 0) + 1
    print(f"{len(cases)} cases in {argv[0]}: " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
