#!/usr/bin/env bash
# Run the golden tests against the NEWEST releases of the reference libraries (transformers,
# minGRU-pytorch, rwkv, fla-core, numba), to see upstream changes coming before a pin moves.
# Not part of CI: CI uses constraints.txt.  Makes its own venv in .venv-upstream; torch stays
# pinned (an unpinned torch pulls gigabytes of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-upstream/bin/python ] || "$PY" -m venv .venv-upstream
.venv-upstream/bin/python -m pip install --quiet --upgrade pip
.venv-upstream/bin/python -m pip install --quiet torch==2.13.0
.venv-upstream/bin/python -m pip install --quiet --upgrade -e '.[test]' torch==2.13.0 \
    transformers minGRU-pytorch rwkv fla-core numba
.venv-upstream/bin/python -m pip freeze | grep -iE '^(transformers|mingru-pytorch|rwkv|fla-core|numba)==' || true
exec .venv-upstream/bin/python -m pytest -q -p no:cacheprovider tests/test_*golden*.py tests/test_mingru.py \
    tests/test_hgrn.py tests/test_lru.py "$@"
