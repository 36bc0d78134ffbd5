#!/usr/bin/env bash
# Add SeqScope to the desktop's application menu for this user: the desktop entry into
# ~/.local/share/applications, the icon into ~/.local/share/icons/hicolor ($XDG_DATA_HOME if set).
#
#   bash packaging/install_desktop.sh                          # the checkout's .venv
#   bash packaging/install_desktop.sh dist/seqscope/seqscope   # a PyInstaller bundle
#   bash packaging/install_desktop.sh --uninstall
# (After `pip install seqscope`: python -m workbench.desktop.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "" ] && [ "${1:-}" != "--uninstall" ]; then
    exe="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    shift
    exec "$exe" --install-desktop "$@"
fi
exec .venv/bin/python -m workbench.desktop "$@"
