#!/usr/bin/env bash
# Build SeqScope's one-folder desktop bundle with PyInstaller: dist/seqscope/, started by
# dist/seqscope/seqscope, which runs on a Linux machine without Python (same or newer glibc)
# and opens the bundled char-LSTM.  Uses .venv (packaging/setup_env.sh) and installs the
# `bundle` extra (PyInstaller, pinned in constraints.txt) into it.  A few minutes, ~1 GB.
#
#   bash packaging/build_app.sh              # build into dist/seqscope
#   dist/seqscope/seqscope                   # start it (or copy/tar the folder elsewhere first)
#   bash packaging/install_desktop.sh dist/seqscope/seqscope   # add it to the desktop's menu
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    bash packaging/setup_env.sh
fi
if ! .venv/bin/python -c "import PyInstaller" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet -c constraints.txt 'pyinstaller' 'pyinstaller-hooks-contrib'
fi
.venv/bin/python -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "${SEQSCOPE_DIST:-dist}" --workpath "${SEQSCOPE_BUILD:-build/pyinstaller}" \
    packaging/seqscope.spec
out="${SEQSCOPE_DIST:-dist}/seqscope"
echo "built $out ($(du -sh "$out" | cut -f1)); start it with $out/seqscope"
