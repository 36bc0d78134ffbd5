"""Starting the window: what is checked before Qt starts (paths, a display, the X11 plugin's
libraries), ``--offscreen`` for scripts, and what a model opens on (its sample, or a hint)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench import app, qt_platform
from workbench.qt_platform import NO_DISPLAY, display_problem, missing_xcb_libraries, not_found

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "assets" / "models"
WAIT = 30000

# ldd's report on a plugin whose libraries are partly missing, as on a fresh Debian desktop
LDD_MISSING = """\
\tlinux-vdso.so.1 (0x00007ffd5b9f6000)
\tlibQt6XcbQpa.so.6 => /opt/PySide6/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f2a1c000000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f2a1bf00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2a1bd00000)
"""
LDD_COMPLETE = "\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f2a1bf00000)\n"
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
UBUNTU = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n'
FEDORA = 'NAME="Fedora Linux"\nID=fedora\n'


@pytest.fixture
def fake_qt(tmp_path):
    """A PySide6-like Qt folder: the xcb plugin and the xcb integration library (not ELF files:
    the tests give ldd's answer)."""
    qt = tmp_path / "Qt"
    (qt / "plugins" / "platforms").mkdir(parents=True)
    (qt / "lib").mkdir()
    (qt / "plugins" / "platforms" / "libqxcb.so").write_bytes(b"\x7fELF")
    (qt / "lib" / "libQt6XcbQpa.so.6").write_bytes(b"\x7fELF")
    return qt


def no_ldd(_path):
    raise AssertionError("ldd must not be asked when no X11 window is going to open")


# -- the display -----------------------------------------------------------------------------------


def test_no_display_is_said_and_scripts_are_pointed_at_offscreen():
    assert display_problem({}, "linux", ldd=no_ldd) == NO_DISPLAY
    assert "--offscreen" in NO_DISPLAY and "DISPLAY" in NO_DISPLAY and "\n" not in NO_DISPLAY


@pytest.mark.parametrize("environ", [
    {"QT_QPA_PLATFORM": "offscreen"},  # chosen by the user: respected
    {"QT_QPA_PLATFORM": "minimal"},
    {"QT_QPA_PLATFORM": "wayland", "WAYLAND_DISPLAY": "wayland-0"},
    {"QT_QPA_PLATFORM": "vnc:size=800x600"},
    {"WAYLAND_DISPLAY": "wayland-0"},  # a Wayland session: Qt uses its wayland plugin
    {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"},
])
def test_platforms_that_need_no_x11_libraries_are_left_to_qt(environ):
    assert display_problem(environ, "linux", ldd=no_ldd) is None


def test_other_systems_are_not_checked():
    assert display_problem({}, "darwin", ldd=no_ldd) is None
    assert display_problem({}, "win32", ldd=no_ldd) is None


# -- the X11 plugin's libraries ------------------------------------------------------------------


def test_missing_xcb_libraries_are_named_with_the_packages_and_command(fake_qt):
    asked = []

    def ldd(path):
        asked.append(Path(path).name)
        return LDD_MISSING

    problem = display_problem({"DISPLAY": ":0"}, "linux", qt_dir=fake_qt, ldd=ldd,
                              loadable=lambda name: True, os_release=DEBIAN)
    assert asked == ["libqxcb.so", "libQt6XcbQpa.so.6"]
    assert problem is not None and "\n" not in problem
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in problem
    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1 (Debian/Ubuntu)" in problem
    assert "dnf" not in problem and "pacman" not in problem  # only this machine's distribution
    assert "libxcb.so.1" not in problem  # found, so not asked for


def test_each_distribution_gets_its_own_package_names(fake_qt):
    def problem(os_release):
        return display_problem({"DISPLAY": ":0"}, "linux", qt_dir=fake_qt, ldd=lambda p: LDD_MISSING,
                               loadable=lambda name: True, os_release=os_release)

    assert "sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in problem(UBUNTU)
    assert "sudo dnf install xcb-util-wm xcb-util-keysyms (Fedora)" in problem(FEDORA)
    unknown = problem("ID=someos\n")  # not recognised: every usual command
    for command in ("sudo apt-get install libxcb-icccm4 libxcb-keysyms1", "sudo dnf install xcb-util-wm",
                    "sudo pacman -S xcb-util-wm xcb-util-keysyms"):
        assert command in unknown


def test_xcb_cursor_is_checked_even_when_ldd_finds_everything(fake_qt):
    """Qt 6.5+ dlopens libxcb-cursor: ldd does not always list it."""
    problem = display_problem({"DISPLAY": ":0"}, "linux", qt_dir=fake_qt, ldd=lambda p: LDD_COMPLETE,
                              loadable=lambda name: name != "libxcb-cursor.so.0", os_release=DEBIAN)
    assert problem is not None and "libxcb-cursor.so.0" in problem and "libxcb-cursor0" in problem
    assert display_problem({"DISPLAY": ":0"}, "linux", qt_dir=fake_qt, ldd=lambda p: LDD_COMPLETE,
                           loadable=lambda name: True) is None


def test_an_explicit_xcb_platform_is_checked_too(fake_qt):
    problem = display_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, "linux", qt_dir=fake_qt,
                              ldd=lambda p: LDD_MISSING, loadable=lambda name: True, os_release=DEBIAN)
    assert problem is not None and "libxcb-icccm4" in problem
    assert "DISPLAY is not set" in display_problem({"QT_QPA_PLATFORM": "xcb"}, "linux", ldd=no_ldd)


def test_unknown_libraries_are_still_named(fake_qt):
    output = LDD_MISSING + "\tlibsomething-new.so.3 => not found\n"
    problem = display_problem({"DISPLAY": ":0"}, "linux", qt_dir=fake_qt, ldd=lambda p: output,
                              loadable=lambda name: True, os_release=DEBIAN)
    assert "libsomething-new.so.3" in problem and "the package that provides libsomething-new.so.3" in problem


def test_nothing_to_check_means_qt_tries(tmp_path):
    """No plugin where a PySide6 wheel keeps it (another Qt build) or no ldd: Qt decides."""
    assert missing_xcb_libraries(qt_dir=tmp_path, ldd=no_ldd, loadable=lambda name: True) == []
    (tmp_path / "plugins" / "platforms").mkdir(parents=True)
    (tmp_path / "plugins" / "platforms" / "libqxcb.so").write_bytes(b"")
    assert missing_xcb_libraries(qt_dir=tmp_path, ldd=lambda p: None, loadable=lambda name: True) == []


def test_the_plugin_path_qt_is_told_to_use_is_the_one_checked(tmp_path, fake_qt):
    elsewhere = tmp_path / "my-plugins"
    elsewhere.mkdir()
    (elsewhere / "libqxcb.so").write_bytes(b"")
    asked = []
    missing_xcb_libraries(qt_dir=fake_qt, ldd=lambda p: asked.append(Path(p)) or "", loadable=lambda n: True,
                          plugin_path=str(elsewhere))
    assert asked[0] == elsewhere / "libqxcb.so"


def test_ldd_output_is_parsed():
    assert not_found(LDD_MISSING) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert not_found("\tstatically linked\n") == []


def test_the_real_plugin_can_be_checked():
    """On this machine: the wheel's plugin is found and ldd answers about it."""
    qt = qt_platform.pyside_qt_dir()
    if qt is None or not (qt / "plugins" / "platforms" / "libqxcb.so").is_file() or not shutil.which("ldd"):
        pytest.skip("no PySide6 wheel xcb plugin or no ldd here")
    report = qt_platform.run_ldd(qt / "plugins" / "platforms" / "libqxcb.so")
    assert report and "libQt6XcbQpa.so.6" in report
    missing = missing_xcb_libraries()
    assert all(name.startswith("lib") and ".so" in name for name in missing)


# -- what app.main checks before Qt starts -------------------------------------------------------------


def test_startup_names_a_missing_path_first():
    for argv, named in ((["/no/such/model.pt"], "/no/such/model.pt: no such file or folder"),
                        (["--input", "/no/such/input.txt"], "--input /no/such/input.txt: no such file"),
                        (["--project", "/no/such/p.json"], "--project /no/such/p.json: no such file")):
        assert named in app.startup_problem(app.parse_args(argv), {"QT_QPA_PLATFORM": "offscreen"})


def test_startup_without_a_display_refuses_unless_offscreen():
    environ = {}
    assert app.startup_problem(app.parse_args([str(MODELS / "gru-dyck")]), environ) == NO_DISPLAY
    assert app.startup_problem(app.parse_args([str(MODELS / "gru-dyck"), "--offscreen"]), environ) is None
    assert environ["QT_QPA_PLATFORM"] == "offscreen"
    args = app.parse_args(["--offscreen", "--screenshot", "x.png"])
    assert args.offscreen and args.screenshot == "x.png"


def test_startup_checks_the_x11_libraries(monkeypatch, fake_qt):
    monkeypatch.setattr(qt_platform, "pyside_qt_dir", lambda: fake_qt)
    monkeypatch.setattr(qt_platform, "run_ldd", lambda path: LDD_MISSING)
    monkeypatch.setattr(qt_platform, "can_load", lambda name: True)
    problem = app.startup_problem(app.parse_args([]), {"DISPLAY": ":0"})
    assert problem is not None and "libxcb-keysyms1" in problem


def run_seqscope(args, env_drop=(), **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", *env_drop)}
    environ.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=90)


def test_seqscope_without_a_display_says_so_and_exits():
    """It used to print "running offscreen" and run invisibly forever (a timeout here)."""
    r = run_seqscope([str(MODELS / "gru-dyck")])
    assert r.returncode == 2
    assert r.stderr.strip() == f"seqscope: error: {NO_DISPLAY}"
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_offscreen_screenshot_of_a_model_folder(tmp_path):
    """``--offscreen`` (with the hidden --screenshot) runs without a display and quits."""
    png = tmp_path / "shot.png"
    r = run_seqscope([str(MODELS / "gru-dyck"), "--offscreen", "--screenshot", str(png)],
                     HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))  # recent files go there
    assert r.returncode == 0, r.stderr
    from PySide6.QtGui import QImage

    image = QImage(str(png))
    assert not image.isNull() and image.width() >= 800


# -- what the window opens on ---------------------------------------------------------------------------


@pytest.fixture
def start(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    windows = []

    def start(*argv):
        args = app.parse_args([str(a) for a in argv])
        assert app.startup_problem(args, {"QT_QPA_PLATFORM": "offscreen"}) is None
        w = app.build_window(args, settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
        qtbot.addWidget(w)
        windows.append(w)
        return w

    yield start
    for w in windows:
        w.session.runner.shutdown()


def wait_for_trace(qtbot, window):
    qtbot.waitUntil(lambda: window.session.trace is not None, timeout=WAIT)
    return window.session


@pytest.mark.parametrize("model", ["gru-dyck", "gru-dyck/model.safetensors"])
def test_a_bundled_model_opens_on_its_sample(qtbot, start, model, monkeypatch):
    monkeypatch.chdir(ROOT)
    s = wait_for_trace(qtbot, start(f"assets/models/{model}"))  # as typed in the repository
    sample = (MODELS / "gru-dyck" / "sample.txt").read_text(encoding="utf-8")
    assert s.model_path == str(MODELS / model)  # absolute: Open recent works from anywhere
    assert s.text == sample and s.trace.text(0) == sample
    assert s.trace.n_tokens == len(sample)


def test_a_numeric_model_opens_on_its_numeric_sample(qtbot, start):
    s = wait_for_trace(qtbot, start(MODELS / "lstm-timeseries"))
    assert not s.model.takes_tokens and s.text is None
    assert s.values.shape[1] == 3 and s.trace.n_tokens == len(s.values) > 10
    rows = np.loadtxt(MODELS / "lstm-timeseries" / "sample.csv", delimiter=",", skiprows=1, ndmin=2)
    np.testing.assert_allclose(s.values, rows, rtol=1e-6)


def test_an_input_given_wins_over_the_sample(qtbot, start, tmp_path):
    typed = tmp_path / "words.txt"
    typed.write_text("(([]))\n[]\n", encoding="utf-8")
    s = wait_for_trace(qtbot, start(MODELS / "gru-dyck", "--input", typed))
    assert s.trace.text(0) == "(([]))\n[]\n"


def test_a_model_without_a_sample_opens_empty_with_a_hint(qtbot, start, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(MODELS / "gru-dyck" / "model.safetensors", lone / "model.safetensors")
    w = start(lone / "model.safetensors")
    s = w.session
    qtbot.waitUntil(lambda: s.model is not None, timeout=WAIT)
    qtbot.wait(50)
    assert s.text is None and s.values is None and s.trace is None
    assert w.statusBar().currentMessage() == app.HINT_TEXT
    assert "type" in w.views["Input"].editor.placeholderText()
    with qtbot.waitSignal(s.trace_changed, timeout=WAIT):  # and typing runs it
        w.views["Input"].editor.setPlainText("(())")
    assert s.trace.text(0) == "(())"


def test_startup_reads_the_config_given_with_a_model(tmp_path):
    env = {"QT_QPA_PLATFORM": "offscreen"}
    (tmp_path / "list.json").write_text("[1]")
    model = str(MODELS / "gru-dyck")
    assert "--config goes with a MODEL" in app.startup_problem(app.parse_args(["--config", str(tmp_path / "list.json")]), env)
    assert "holds a JSON list" in app.startup_problem(app.parse_args([model, "--config", str(tmp_path / "list.json")]), env)
    assert "no such file" in app.startup_problem(app.parse_args([model, "--config", str(tmp_path / "none.json")]), env)


def test_a_model_opens_with_the_config_given(qtbot, start, tmp_path):
    import json

    from model_files import lstm_with_custom_names

    (rnn, emb, head), config = lstm_with_custom_names(tmp_path / "custom.pt")
    (tmp_path / "config.json").write_text(json.dumps(config))
    w = start(tmp_path / "custom.pt", "--config", tmp_path / "config.json")
    qtbot.waitUntil(lambda: w.session.model is not None, timeout=WAIT)
    assert w.session.model.config.hidden_size == 6
    np.testing.assert_array_equal(w.session.model.head_weight.detach().numpy(), head.weight.detach().numpy())
