"""Write ``KNOWN_FAILURES.md`` and ``known_failures.py`` from a harness run's results:
``python tests/bad_inputs/harness.py CORPUS --json results.json`` then
``python tests/bad_inputs/known.py results.json``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: cause (from harness.cause) -> what it means
MEANING = {
    "timeout": "still running after the case's 10 s limit: named pipes opened and read, /dev/zero read to the end, huge declared sizes looped over",
    "hang": "stuck inside C code (zip inflation, HDF5 opening a pipe, a Rust reader of /dev/zero) where SIGALRM cannot stop it; the worker was killed",
    "crash": "the process died: a segmentation fault in h5py's ObjectID._dealloc, seen in the first of four runs only, before the harness freed each case's objects right after it; most likely an h5py object of an earlier failed write (full disk) freed later, so the case named may be innocent",
    "memory": "peak RSS beyond max(256 MB, 20 x the bytes read): zip bombs, vocabulary id gaps, one-hot widths, stride-0 views, unwritten HDF5 datasets, .npy shapes, num_layers 10^6..10^8, /dev/zero",
    "raised RecursionError": "deeply nested JSON in config.json, vocab.json, metadata, shard indexes, interventions, trace attributes",
    "accepted": "a bad input taken as good (silently wrong): wrong types coerced, inf values, string probes, a device or pipe written over",
    "the session lost its model after a failed project": "Session.apply_project sets the model to None before it validates the project",
    "valid input refused": "a 243-character output name (the temporary name adds 19 characters)",
    "clobbered": "the old output was changed by a failed write (a full disk while writing in place)",
    "left behind": "a temporary remained after a failed write",
    "message": "a documented error whose message echoes the input, holds a Python repr, or runs to thousands of characters",
}

#: which part of issue 10 fixes a case, by entry point (and, for command lines, by command)
OWNER_BY_ENTRY = {"load": "bounded-loading", "numeric": "bounded-loading", "text": "bounded-loading",
                  "load_trace": "parsers-window", "interventions_json": "parsers-window",
                  "load_interventions": "parsers-window", "project": "parsers-window",
                  "save_trace": "safe-writes", "save_model": "safe-writes", "save_interventions": "safe-writes",
                  "export_lstmvis": "safe-writes", "cli_trace_out": "safe-writes"}
OWNER_BY_COMMAND = [("info", "bounded-loading"), ("trace-intervene", "parsers-window"),
                    ("trace-input", "bounded-loading"), ("trace-probes", "parsers-window"),
                    ("export", "parsers-window")]


def owner(result: dict) -> str:
    if result["entry"] in OWNER_BY_ENTRY:
        return OWNER_BY_ENTRY[result["entry"]]
    label = result["id"].split("/", 1)[1]
    return next((who for start, who in OWNER_BY_COMMAND if label.startswith(start)), "?")


def meaning(cause: str) -> str:
    if cause.startswith("raised "):
        return "an exception other than the documented SeqScopeError reached the caller"
    return MEANING.get(cause, MEANING.get(cause.split(" ")[0], ""))


def write(results: list[dict]) -> None:
    from .harness import by_cause

    failed = [r for r in results if r["problems"]]
    groups = by_cause(results)
    md = ["# Known failures of the bad-input corpus (on main, before the issue 10 fixes)", "",
          f"{len(results)} cases, {len(failed)} failing, on branch bad-input-corpus (main at b9ef9f1, unfixed).",
          "Each case id is `kind/label` as `tests/bad_inputs/generate.py` names it; a case can fail for",
          "more than one cause.  `tests/bad_inputs/known_failures.py` holds the same ids: the",
          "integrator empties it once the fixes are merged, then",
          "`SEQSCOPE_CORPUS_STRICT=1 .venv/bin/python -m pytest -q tests/test_bad_inputs.py` must pass",
          "(and `python tests/bad_inputs/harness.py /tmp/corpus` prints the same table by hand).", "",
          "## By cause", ""]
    for cause, ids in groups.items():
        members = [r for r in results if r["id"] in ids]
        owners = sorted({owner(r) for r in members})
        md.append(f"### {cause} ({len(ids)}): {', '.join(owners)}")
        what = meaning(cause)
        if what:
            md.append(what + ".")
        md.append("")
        for r in members:
            detail = next(p for p in r["problems"] if p.startswith(cause.split(" (")[0]))
            md.append(f"- `{r['id']}` ({r['entry']}, {owner(r)}): {detail[:220]}")
        md.append("")
    md += ["## The hypothesis property tests (tests/test_loader_properties.py)", "",
           "`test_mutated_checkpoint_loads_or_raises_load_error` (150 byte-edited .pt zip, legacy .pt,",
           ".safetensors and Mamba-folder files) passes on main.",
           "`test_any_value_in_a_config_json_loads_or_raises_load_error` fails on main (bounded-loading's",
           "config validation fixes it): Hypothesis finds `layer_norm_epsilon` = `None` (TypeError from",
           "`float()` in `engine/models/mamba.py` `_config_from_files`) and = `\"\"` (ValueError).  It has no",
           "known-failure list: it must pass once the fixes are merged.", ""]
    (HERE / "KNOWN_FAILURES.md").write_text("\n".join(md))
    lines = ['"""Cases that fail on main today, while their fixes are on other branches (issue 10: bounded',
             "loading, safe writes, parsers, run budget).  ``tests/test_bad_inputs.py`` runs every case NOT",
             "listed here and fails if any of them fails; with ``SEQSCOPE_CORPUS_STRICT=1`` (or once this set",
             "is empty) it runs every case.  The integrator empties this set after merging the fixes: it must",
             'end empty.  KNOWN_FAILURES.md lists the same cases grouped by cause (``known.py`` writes both)."""',
             "", "KNOWN_FAILURES: frozenset[str] = frozenset({"]
    lines += [f"    {json.dumps(r['id'], ensure_ascii=False)}," for r in failed]
    lines += ["})", ""]
    (HERE / "known_failures.py").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    __package__ = "bad_inputs"
    write(json.loads(Path(sys.argv[1]).read_text()))
