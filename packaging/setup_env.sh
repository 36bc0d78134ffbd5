#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install SeqScope with its
# test dependencies.  torch is pinned by constraints.txt to the CPU build used on this machine
# and in CI; users with GPUs can install any torch in pyproject's range instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.seqscope-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test,cluster]'
    touch "$stamp"
fi
