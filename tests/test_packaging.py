"""Installing SeqScope as software: the wheel (code, bundled models, desktop files), what it
finds once installed, the desktop entry, and (marked ``bundle``, not run by default) the
PyInstaller one-folder bundle."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("char-lstm-python", "gru-dyck", "lstm-timeseries", "selective-ssm-recall")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_of_the_source_tree_is_in_the_wheel_list():
    """pyproject lists the packages (it maps assets/ as seqscope_assets): a new subpackage that
    is not listed would be missing from every installed copy."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("engine", "workbench")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert listed - found == {"seqscope_assets"}


def test_numba_is_a_plain_dependency():
    project = _pyproject()["project"]
    assert any(d.startswith("numba") for d in project["dependencies"])
    assert "speed" not in project["optional-dependencies"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the files it is made of (the checkout stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("engine", "workbench", "assets"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = (tmp / "dist").glob("seqscope-*.whl")
    return found


def test_the_wheel_holds_the_code_the_models_and_the_desktop_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for module in ("engine/__init__.py", "engine/cli.py", "engine/models/numba_kernels.py",
                   "engine/analysis/__init__.py", "workbench/app.py", "workbench/examples.py",
                   "workbench/views/__init__.py", "workbench/desktop/__init__.py"):
        assert module in names, module
    for name in EXAMPLES:
        assert f"seqscope_assets/models/{name}/model.safetensors" in names, name
        assert any(n.startswith(f"seqscope_assets/models/{name}/sample") for n in names), name
    assert "seqscope_assets/models/selective-ssm-recall/config.json" in names
    assert "seqscope_assets/models/char-lstm-python/heldout/enum.py" in names
    for desktop in ("seqscope.desktop", "seqscope.svg", "seqscope.png"):
        assert f"workbench/desktop/{desktop}" in names
    assert not [n for n in names if n.startswith("seqscope_assets/train/")], "training scripts are not shipped"
    assert "seqscope = engine.cli:main" in entry_points
    assert any(line.startswith("Requires-Dist: numba") for line in meta.splitlines())


def test_the_installed_wheel_opens_its_default_example(wheel, tmp_path):
    """Installed elsewhere (no checkout beside it), the code finds the bundled models and the
    icon inside the installation, and the default example loads and runs."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    code = r"""
import json, engine, workbench.examples as ex, workbench.desktop as desk
d = ex.default_example()
model = engine.load(d.model)
trace = engine.run(model, d.sample.read_text()[:40], probes=["layers.0.h"])
print(json.dumps({"engine": engine.__file__, "models": str(ex.MODELS), "model": str(d.model),
                  "examples": [e.name for e in ex.examples()], "icon": str(desk.ICON_SVG),
                  "icon_exists": desk.ICON_SVG.is_file(), "shape": list(trace["layers.0.h"].shape)}))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    inside = str(site.resolve())
    assert out["engine"].startswith(inside)
    assert out["models"] == str(site.resolve() / "seqscope_assets" / "models")
    assert out["model"].startswith(inside) and out["model"].endswith("model.safetensors")
    assert sorted(out["examples"]) == sorted(EXAMPLES) and out["examples"][0] == "char-lstm-python"
    assert out["icon"].startswith(inside) and out["icon_exists"]
    assert out["shape"] == [40, 256]


def test_the_desktop_entry_installs_and_uninstalls(tmp_path):
    from workbench import desktop

    command = [str(tmp_path / "my apps" / "seqscope")]
    written = desktop.install(tmp_path / "share", command=command)
    entry = tmp_path / "share" / "applications" / "seqscope.desktop"
    svg = tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps" / "seqscope.svg"
    png = tmp_path / "share" / "icons" / "hicolor" / "256x256" / "apps" / "seqscope.png"
    assert set(written) == {entry, svg, png}
    keys = dict(line.split("=", 1) for line in entry.read_text().splitlines()[1:] if "=" in line)
    assert entry.read_text().startswith("[Desktop Entry]\n")
    assert keys["Type"] == "Application" and keys["Name"] == "SeqScope" and keys["Icon"] == "seqscope"
    assert keys["Exec"] == f'"{command[0]}" %f'  # quoted: the path holds a space
    assert keys["TryExec"] == command[0]
    assert svg.read_bytes() == desktop.ICON_SVG.read_bytes() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))
    assert set(desktop.uninstall(tmp_path / "share")) == {entry, svg, png}
    assert not entry.exists() and not svg.exists()


def test_the_window_icon_loads(qapp):
    from workbench.desktop import window_icon

    icon = window_icon()
    assert not icon.isNull()
    image = icon.pixmap(64, 64).toImage()
    assert image.width() == 64 and image.pixelColor(32, 60).alpha() == 255  # drawn, not blank


@pytest.mark.bundle
def test_the_pyinstaller_bundle_starts_and_opens_the_bundled_model(tmp_path):
    """Build the one-folder bundle (minutes) and start it with no Python around it: it opens
    the bundled char-LSTM and renders its window (offscreen, or under Xvfb when there is one)."""
    pytest.importorskip("PyInstaller")
    dist = Path(os.environ.get("SEQSCOPE_BUNDLE") or tmp_path / "dist")
    exe = dist / "seqscope" / "seqscope"
    if not exe.is_file():
        env = {**os.environ, "SEQSCOPE_DIST": str(dist), "SEQSCOPE_BUILD": str(tmp_path / "build")}
        done = subprocess.run(["bash", str(ROOT / "packaging" / "build_app.sh")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stderr[-3000:]
    cuda = re.compile(r"^lib(cudart|cublas|cudnn|cufft|curand|cusparse|cusolver|nccl|nvrtc|nvJitLink|torch_cuda|c10_cuda)")
    assert not [p.name for p in (dist / "seqscope").rglob("*.so*") if cuda.match(p.name)]
    assert (dist / "seqscope" / "_internal" / "assets" / "models" / "char-lstm-python" / "model.safetensors").is_file()
    # a bare environment: no Python on PATH, no virtual environment, nothing to import from
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "LANG": "C.UTF-8"}
    # the compiled Mamba scan runs inside the bundle, and its cache (in the user's cache folder:
    # the bundle's own folder holds no sources) serves the next process
    mamba = ROOT / "assets" / "models" / "selective-ssm-recall"
    for out in ("first.h5", "second.h5"):
        done = subprocess.run([str(exe), "trace", str(mamba), "--text", "abc?", "--probes", "logits",
                               "--no-progress", "-o", str(tmp_path / out)],
                              cwd=tmp_path, env=bare, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        if out == "first.h5":
            cached = sorted((tmp_path / "cache").rglob("*.nb[ic]"))
            assert cached, "numba wrote no cache in the bundle"
    assert sorted((tmp_path / "cache").rglob("*.nb[ic]")) == cached
    import h5py

    with h5py.File(tmp_path / "second.h5") as f:
        assert f["model"].attrs["scan"] == "numba"
    shot = tmp_path / "window.png"
    args = [str(exe), "--screenshot", str(shot)]
    if shutil.which("xvfb-run"):
        args = ["xvfb-run", "-a"] + args
    else:
        bare["QT_QPA_PLATFORM"] = "offscreen"
    done = subprocess.run(args, cwd=tmp_path, env=bare, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from PySide6.QtGui import QImage

    image = QImage(str(shot))
    assert image.width() >= 800 and image.height() >= 500
    colours = {image.pixelColor(x, y).rgb() for x in range(0, image.width(), 37) for y in range(0, image.height(), 29)}
    assert len(colours) > 20, "the window rendered nothing"
