"""Every usage example in README.md runs as pasted.

The README's ```python and ```bash blocks are extracted and run in README order in one temporary
folder that holds a link to ``assets`` (the examples run from the repository root): each Python
block as a script, each shell block's ``seqscope`` lines in one Python process that calls
``engine.cli.main`` (what ``python -m engine.cli`` runs) once per line, with the words split as
the shell splits them and ``$NAME`` taken from the block's assignments (one torch import per
block instead of one per line keeps this test fast).
What each one names as an output must be written.  Not run: the "Two commands" section (CI runs
it), lines that install or set things up (package managers, ``bash packaging/…``, ``pip``,
``source``), and ``seqscope`` without a command, which opens the window: for those only the
paths they name must exist.  A shell line of any other kind fails the test until this file says
what to do with it, so that no new example goes unrun.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN_SECTIONS = ("Two commands",)  # the setup itself, which CI runs
SETUP_PROGRAMS = {"sudo", "apt", "apt-get", "dnf", "yum", "pacman", "brew", "pip", "pip3", "pipx", "conda",
                  "source", ".", "git", "cd", "pyinstaller"}
PYTHON_OUTPUT_SUFFIXES = (".h5", ".hdf5", ".json", ".csv", ".png", ".svg", ".safetensors", ".pt")


# runs each command line (its words, as JSON) through the seqscope entry point; stops at a failure
RUN_COMMANDS = """
import json, sys
from engine.cli import main
for words in json.loads(sys.argv[1]):
    status = main(words[1:])
    if status:
        sys.exit(f"exit status {status}: {' '.join(words)}")
"""


@dataclass
class Block:
    lang: str
    section: str
    line: int  # where the block starts in README.md
    code: str


def readme_blocks(text: str) -> list[Block]:
    blocks, section, fence = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif stripped.startswith("```") and stripped[3:].strip() in ("python", "bash", "sh", "shell"):
                indent = len(line) - len(line.lstrip())
                fence = Block(stripped[3:].strip(), section, number, ""), indent
        elif stripped == "```":
            blocks.append(fence[0])
            fence = None
        else:
            fence[0].code += line[fence[1]:] + "\n"
    return [b for b in blocks if b.section not in NOT_RUN_SECTIONS]


def shell_commands(code: str) -> list[str]:
    """The block's commands, continuation lines joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


def kind(command: str) -> str:
    """'run', 'window' or 'setup'; anything else is an unclassified example."""
    words = shlex.split(command, comments=True)
    program = words[0]
    if program in ("seqscope", ".venv/bin/seqscope"):
        return "run" if len(words) > 1 and words[1] in COMMANDS else "window"
    if re.fullmatch(r"(export\s+)?[A-Za-z_][A-Za-z0-9_]*=\S*", " ".join(words)):
        return "run"  # a shell variable the next lines use
    if program in SETUP_PROGRAMS or program.endswith(("/pip", "/python", "python", "python3")):
        return "setup"
    if program in ("bash", "sh") and len(words) > 1 and words[1].startswith("packaging/"):
        return "setup"
    return "unclassified"


def expand(command: str, variables: dict[str, str]) -> list[str]:
    """The command's words with ``$NAME`` replaced as bash does here (simple assignments only)."""
    words = shlex.split(command, comments=True)
    return [re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: variables.get(m[1] or m[2], ""), w) for w in words]


def shell_outputs(words: list[str]) -> list[str]:
    """What a ``seqscope COMMAND`` line writes: its -o file, or export-lstmvis's folder."""
    args = build_parser().parse_args(words[1:])
    if args.command == "trace":
        return [args.output]
    if args.command == "export-lstmvis":
        return [str(Path(args.folder) / "lstm.yml")]
    return []


def python_outputs(code: str) -> list[str]:
    """The files a Python block names that are not in the repository: what it must write."""
    names = re.findall(r"""["']([^"'\n]+)["']""", code)
    return [n for n in names if n.endswith(PYTHON_OUTPUT_SUFFIXES) and not (ROOT / n).exists()]


def window_paths(words: list[str]) -> list[str]:
    from workbench.app import build_parser as window_parser

    args = window_parser().parse_args(words[1:])
    return [p for p in (args.model, args.input, args.project) if p is not None]


def test_readme_blocks_are_found():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert any(b.lang == "python" for b in blocks)
    commands = [c for b in blocks if b.lang != "python" for c in shell_commands(b.code)]
    assert sum(kind(c) == "run" and "seqscope" in c for c in commands) >= 4
    unclassified = [c for c in commands if kind(c) == "unclassified"]
    assert not unclassified, ("README shell lines this test does not know whether to run; run them "
                              f"(seqscope COMMAND …) or add their kind to kind(): {unclassified}")


def test_readme_examples_run_as_pasted(tmp_path):
    (tmp_path / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ran = 0
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        where = f"README.md line {block.line} ({block.section})"
        if block.lang == "python":
            if re.search(r"^\s*(from|import)\s+(workbench|PySide6)", block.code, re.M):
                continue  # opens a window
            script = tmp_path / f"readme_{block.line}.py"
            script.write_text(block.code, encoding="utf-8")
            r = subprocess.run([sys.executable, script.name], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{where} failed:\n{r.stderr}"
            outputs = python_outputs(block.code)
        else:
            lines, outputs, variables = [], [], {}
            for command in shell_commands(block.code):
                what = kind(command)
                words = expand(command, variables)
                if what == "window":
                    for path in window_paths(words):
                        assert (ROOT / path).exists(), f"{where}: {command!r} names {path}, which does not exist"
                elif what == "run":
                    if "=" in words[0] or words[0] == "export":
                        name, _, value = words[-1].partition("=")
                        variables[name] = value
                    else:
                        lines.append(words)
                        outputs += shell_outputs(words)
            if not lines:
                continue
            r = subprocess.run([sys.executable, "-c", RUN_COMMANDS, json.dumps(lines)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=240)
            assert r.returncode == 0, f"{where} failed:\n{r.stderr}"
        for name in outputs:
            assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, \
                f"{where} did not write {name}"
        ran += 1
    assert ran >= 2


@pytest.mark.parametrize("command, expected", [
    ("seqscope info assets/models/gru-dyck  # a comment", "run"),
    ("seqscope assets/models/gru-dyck", "window"),
    ("seqscope", "window"),
    ("M=assets/models/gru-dyck", "run"),
    ("sudo apt-get install libxcb-icccm4", "setup"),
    ("bash packaging/launch.sh", "setup"),
    (".venv/bin/python -m pytest -q", "setup"),
    ("h5ls trace.h5", "unclassified"),
])
def test_lines_are_classified(command, expected):
    assert kind(command) == expected


def test_blocks_are_extracted_with_their_section():
    text = ("## Two commands\n```bash\nbash packaging/launch.sh\n```\n## Use\nsome text\n"
            "```python\nimport engine\n```\n  ```bash\n  seqscope info m \\\n      --config c.json\n  ```\n"
            "```\nnot a language\n```\n")
    blocks = readme_blocks(text)
    assert [(b.lang, b.section, b.line) for b in blocks] == [("python", "Use", 7), ("bash", "Use", 10)]
    assert shell_commands(blocks[1].code) == ["seqscope info m --config c.json"]
