"""SeqScope's Linux desktop entry and icon, shipped with the package, and their installation.

    python -m workbench.desktop              # into ~/.local/share/applications and icons
    python -m workbench.desktop --uninstall  # remove them again

(``bash packaging/install_desktop.sh`` does the same from a checkout or a bundle.)  The entry's
``Exec`` is the ``seqscope`` command that belongs to this installation (the frozen executable
in a PyInstaller bundle), written as an absolute path, so the launcher works without the
right ``PATH``.  The window takes its icon from :func:`window_icon`.

No Qt is imported here except by :func:`window_icon` and when the PNG is drawn.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ICON_SVG = HERE / "seqscope.svg"
ICON_PNG = HERE / "seqscope.png"  # 256 x 256, drawn from the SVG
DESKTOP_ENTRY = HERE / "seqscope.desktop"
APP_ID = "seqscope"


def window_icon():
    """The application icon as a QIcon (the SVG, with the PNG for renderers without SVG)."""
    from PySide6.QtGui import QIcon

    icon = QIcon(str(ICON_SVG))
    icon.addFile(str(ICON_PNG))
    return icon


def launch_command() -> list[str]:
    """How to start this installation's workbench: the frozen executable of a bundle, else the
    ``seqscope`` script beside this interpreter, else ``python -m workbench``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    script = Path(sys.executable).parent / "seqscope"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("seqscope")
    return [found] if found else [sys.executable, "-m", "workbench"]


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def targets(data: Path) -> dict[str, Path]:
    """Where each file goes under an XDG data folder."""
    icons = data / "icons" / "hicolor"
    return {"entry": data / "applications" / f"{APP_ID}.desktop",
            "svg": icons / "scalable" / "apps" / f"{APP_ID}.svg",
            "png": icons / "256x256" / "apps" / f"{APP_ID}.png"}


def desktop_entry(command: list[str]) -> str:
    """The shipped entry with ``Exec``/``TryExec`` naming ``command``."""
    quoted = [_quote_exec(part) for part in command]
    lines = []
    for line in DESKTOP_ENTRY.read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = "Exec=" + " ".join(quoted) + " %f"
        elif line.startswith("TryExec="):
            line = "TryExec=" + command[0]
        lines.append(line)
    return "\n".join(lines) + "\n"


def _quote_exec(arg: str) -> str:
    """One argument of a desktop entry's Exec key (quoted when it holds a reserved character)."""
    if not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`%'):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return '"' + escaped.replace("%", "%%") + '"'


def install(data: Path | None = None, command: list[str] | None = None) -> list[Path]:
    """Write the desktop entry and the icons under ``data`` (default ``~/.local/share``)."""
    where = targets(data or data_home())
    for path in where.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    _write(where["entry"], desktop_entry(command or launch_command()).encode("utf-8"))
    _write(where["svg"], ICON_SVG.read_bytes())
    _write(where["png"], ICON_PNG.read_bytes())
    return list(where.values())


def uninstall(data: Path | None = None) -> list[Path]:
    removed = []
    for path in targets(data or data_home()).values():
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _write(path: Path, data: bytes) -> None:
    """Write beside the target and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m workbench.desktop",
                                 description="Install SeqScope's desktop entry and icon for this user.")
    ap.add_argument("--uninstall", action="store_true", help="remove them instead")
    ap.add_argument("--data-home", type=Path, default=None,
                    help="the XDG data folder (default: $XDG_DATA_HOME or ~/.local/share)")
    args = ap.parse_args(argv)
    try:
        done = uninstall(args.data_home) if args.uninstall else install(args.data_home)
    except OSError as exc:
        print(f"seqscope: cannot {'remove' if args.uninstall else 'install'} the desktop entry: "
              f"{exc.strerror or exc} ({exc.filename})", file=sys.stderr)
        return 1
    for path in done:
        print(("removed " if args.uninstall else "installed ") + str(path))
    if not args.uninstall:
        print("SeqScope is now in your desktop's application menu.")
    return 0
