"""Can Qt open a window here?  Decided before Qt starts, because Qt cannot say it gracefully:
without a display it would need a platform that shows nothing, and when the X11 (``xcb``)
platform plugin's shared libraries are missing Qt aborts the whole process (SIGABRT) with a
message that names ``libxcb-cursor0`` whatever is really missing.

:func:`display_problem` returns one line saying what is wrong and how to fix it, or None.
Nothing here imports Qt.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

NO_DISPLAY = ("no display found (neither DISPLAY nor WAYLAND_DISPLAY is set): run seqscope in a "
              "desktop session, over 'ssh -X', or under 'xvfb-run seqscope'; for scripts, "
              "'seqscope --offscreen' runs the window without a display")

#: shared library -> the package that provides it on (Debian/Ubuntu, Fedora, Arch)
PACKAGES = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util", "xcb-util"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb", "libxcb"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb", "libxcb"),
    "libxcb-glx.so.0": ("libxcb-glx0", "libxcb", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb", "libx11"),
    "libX11.so.6": ("libx11-6", "libX11", "libx11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon", "libxkbcommon"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl", "libglvnd"),
    "libGL.so.1": ("libgl1", "libglvnd-glx", "libglvnd"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype", "freetype2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs", "dbus"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libz.so.1": ("zlib1g", "zlib", "zlib"),
    "libzstd.so.1": ("libzstd1", "libzstd", "zstd"),
    "libXau.so.6": ("libxau6", "libXau", "libxau"),
    "libXdmcp.so.6": ("libxdmcp6", "libXdmcp", "libxdmcp"),
    "libSM.so.6": ("libsm6", "libSM", "libsm"),
    "libICE.so.6": ("libice6", "libICE", "libice"),
}
#: how each family of distributions installs packages, in PACKAGES' column order
INSTALLERS = (
    ("Debian/Ubuntu", ("debian", "ubuntu"), "sudo apt-get install"),
    ("Fedora", ("fedora", "rhel", "centos"), "sudo dnf install"),
    ("Arch", ("arch",), "sudo pacman -S"),
)
#: dlopened by Qt 6.5+ (and linked by some builds): checked whatever ldd says
XCB_CURSOR = "libxcb-cursor.so.0"


def display_problem(environ=None, system: str | None = None, *, qt_dir: Path | None = None,
                    ldd=None, loadable=None, os_release: str | None = None) -> str | None:
    """Why no window can open with this environment, in one line; None when Qt can try.

    Only Linux is checked.  A platform the user chose (``QT_QPA_PLATFORM``) is respected:
    only ``xcb`` is checked then.  Without a chosen platform, a display is needed, and when Qt
    will use X11 (``DISPLAY`` set, not a Wayland session) the xcb plugin's libraries must be
    there.  The keyword arguments replace what is looked up on this machine (for tests)."""
    environ = os.environ if environ is None else environ
    system = sys.platform if system is None else system
    if not system.startswith("linux"):
        return None
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        first = chosen.split(";")[0].split(":")[0].strip()
        if first != "xcb":
            return None
        if not environ.get("DISPLAY"):
            return "QT_QPA_PLATFORM is xcb (X11) but DISPLAY is not set: " + NO_DISPLAY.split(": ", 1)[1]
    elif _wayland_session(environ):
        return None  # Qt uses its wayland plugin there
    elif not environ.get("DISPLAY"):
        return NO_DISPLAY
    missing = missing_xcb_libraries(qt_dir=qt_dir, ldd=ldd, loadable=loadable,
                                    plugin_path=environ.get("QT_QPA_PLATFORM_PLUGIN_PATH"))
    return xcb_message(missing, os_release) if missing else None


def _wayland_session(environ) -> bool:
    if not environ.get("WAYLAND_DISPLAY"):
        return False
    return environ.get("XDG_SESSION_TYPE", "") == "wayland" or not environ.get("DISPLAY")


def pyside_qt_dir() -> Path | None:
    """PySide6's bundled Qt (``PySide6/Qt``), found without importing PySide6."""
    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        qt = Path(location) / "Qt"
        if qt.is_dir():
            return qt
    return None


def missing_xcb_libraries(qt_dir: Path | None = None, ldd=None, loadable=None,
                          plugin_path: str | None = None) -> list[str]:
    """The shared libraries Qt's xcb platform plugin needs that this machine lacks ([] when
    nothing is missing or the plugin is not where a PySide6 wheel keeps it: then Qt tries)."""
    ldd = run_ldd if ldd is None else ldd
    loadable = can_load if loadable is None else loadable
    qt_dir = pyside_qt_dir() if qt_dir is None else qt_dir
    files: list[Path] = []
    plugin_dirs = [Path(plugin_path)] if plugin_path else []
    if qt_dir is not None:
        plugin_dirs.append(qt_dir / "plugins" / "platforms")
    plugin = next((d / "libqxcb.so" for d in plugin_dirs if (d / "libqxcb.so").is_file()), None)
    if plugin is None:
        return []
    files.append(plugin)
    if qt_dir is not None:
        files += sorted((qt_dir / "lib").glob("libQt6XcbQpa.so*"))[:1]
    missing: list[str] = []
    for f in files:
        for name in not_found(ldd(f) or ""):
            if name not in missing:
                missing.append(name)
    if XCB_CURSOR not in missing and not loadable(XCB_CURSOR):
        missing.append(XCB_CURSOR)
    return missing


def run_ldd(path: Path) -> str | None:
    """``ldd``'s report on a library, or None when there is no ldd to ask."""
    exe = shutil.which("ldd")
    if exe is None:
        return None
    try:
        result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


def not_found(ldd_output: str) -> list[str]:
    """The libraries ldd reports as ``name => not found``."""
    names = []
    for line in ldd_output.splitlines():
        name, arrow, where = line.strip().partition("=>")
        if arrow and where.strip() == "not found" and name.strip() not in names:
            names.append(name.strip())
    return names


def can_load(soname: str) -> bool:
    """Whether the dynamic loader finds and loads ``soname`` (as Qt's dlopen would)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def read_os_release() -> str:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return ""


def _distribution_ids(os_release: str) -> set[str]:
    ids: set[str] = set()
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip('"').strip("'").lower().split())
    return ids


def install_commands(missing: list[str], os_release: str | None = None) -> list[str]:
    """``"<command> <packages> (<distributions>)"`` for this machine's distribution, or for
    each usual one when it is not recognised."""
    ids = _distribution_ids(read_os_release() if os_release is None else os_release)
    known = [m for m in missing if m in PACKAGES]
    rows = [(label, i, cmd) for i, (label, family, cmd) in enumerate(INSTALLERS) if ids & set(family)]
    if not rows:
        rows = [(label, i, cmd) for i, (label, _family, cmd) in enumerate(INSTALLERS)]
    out = []
    for label, column, cmd in rows:
        packages = list(dict.fromkeys(PACKAGES[m][column] for m in known))
        if packages:
            out.append(f"{cmd} {' '.join(packages)} ({label})")
    return out


def xcb_message(missing: list[str], os_release: str | None = None) -> str:
    """One line: what is missing, the packages that provide it and the command to install them."""
    commands = install_commands(missing, os_release)
    unknown = [m for m in missing if m not in PACKAGES]
    line = (f"cannot open a window: Qt's X11 platform plugin (xcb) needs {', '.join(missing)}, "
            f"not found on this system")
    if commands:
        line += "; install them: " + "; ".join(commands)
    if unknown:
        line += f"; and install the package that provides {', '.join(unknown)}"
    return line + "; scripts can run without a window: seqscope --offscreen"
