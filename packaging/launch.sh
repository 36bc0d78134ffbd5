#!/usr/bin/env bash
# Set up .venv (first time: about a minute) and open the SeqScope workbench, by default on the
# bundled example model and its sample input.  Arguments go to `seqscope` (a model path, --input).
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/setup_env.sh
exec .venv/bin/seqscope "$@"
