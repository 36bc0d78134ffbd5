"""No output is ever partial, lost or clobbered (engine.atomic, engine.hdf5_writer,
engine.interrupts): every writer uses a short temporary beside its target and renames it when
complete; failures, Ctrl-C and SIGTERM leave the old file byte-identical and no temporary; only
regular files are replaced; LSTMVis folders are replaced as a whole; a full disk is one sentence,
never a segmentation fault (checked in subprocesses, on a real tiny tmpfs when mounting is
permitted, and with RLIMIT_FSIZE everywhere)."""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine import atomic
from engine.atomic import WriteError, replacing, write_text
from engine.cli import main
from engine.errors import SeqScopeError
from engine.hdf5 import LSTMVIS_FILES, TraceFileError, export_lstmvis, load_trace, save_trace
from engine.interrupts import Interrupted, held_signals, raising_signals
from engine.interventions import Intervention, InterventionError, load_interventions, save_interventions
from engine.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
CHARS = "abcdefgh \n.é"


def small_trace(n=50, width=8, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {f"layers.{i}.h": rng.standard_normal((n, width)).astype(np.float32) for i in range(2)}
    return Trace(tokens=rng.integers(0, 5, n), offsets=[0, n], arrays=arrays, specs={},
                 token_text=tuple("abcde"[i % 5] for i in range(n)), model_info={"architecture": "lstm"},
                 created="2026-01-01T00:00:00+00:00")


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(atomic.TEMP_PREFIX))


def char_model(folder: Path, hidden: int) -> Path:
    torch.manual_seed(0)
    emb, lstm, fc = torch.nn.Embedding(len(CHARS), 8), torch.nn.LSTM(8, hidden, 2), torch.nn.Linear(hidden, len(CHARS))
    sd = {"embedding.weight": emb.weight.detach()}
    sd.update({f"lstm.{k}": v for k, v in lstm.state_dict().items()})
    sd.update({"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()})
    path = folder / f"char_lstm_{hidden}.pt"
    torch.save({"state_dict": sd, "vocab": CHARS}, path)
    return path


def child_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


# -- the temporary: short, beside the target, gone after a failure ----------------------------


def test_temporary_is_short_and_beside_the_target(tmp_path):
    target = tmp_path / ("n" * 240 + ".h5")  # 243 characters: only 12 more fit in a name
    with replacing(target) as tmp:
        assert tmp.parent == target.parent
        assert len(tmp.name) <= 13 and tmp.name.startswith(".ss")
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    # every writer takes such a name
    save_trace(small_trace(), target)
    assert load_trace(target).n_tokens == 50
    save_interventions(tmp_path / ("i" * 238 + ".json"), [Intervention("layers.0.h", "zero")])
    assert load_interventions(tmp_path / ("i" * 238 + ".json"))[0].op == "zero"
    export_lstmvis(small_trace(), tmp_path / ("f" * 243))
    assert sorted(os.listdir(tmp_path / ("f" * 243))) == sorted(LSTMVIS_FILES)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("stop", [OSError(28, "No space left on device"), KeyboardInterrupt(), Interrupted(15)])
def test_failure_keeps_the_old_file(tmp_path, stop):
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with pytest.raises(type(stop) if not isinstance(stop, OSError) else WriteError) as info:
        with replacing(target, "notes") as tmp:
            tmp.write_bytes(b"new, half")
            raise stop
    if isinstance(stop, OSError):
        assert str(info.value) == f"could not write notes {target}: No space left on device; the old out.txt is unchanged"
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    write_text(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640  # mode kept


def test_trace_write_failure_keeps_the_old_trace(tmp_path, monkeypatch):
    target = tmp_path / "t.h5"
    save_trace(small_trace(seed=1), target)
    before = target.read_bytes()
    import h5py

    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "layers.1.h":
            raise OSError(28, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(TraceFileError, match="No space left on device; the old t.h5 is unchanged"):
        save_trace(small_trace(seed=2), target)
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_symlink_target_replaces_what_it_points_to(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("[]")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    save_interventions(link, [Intervention("layers.0.h", "zero")])
    assert link.is_symlink() and load_interventions(real)[0].probe == "layers.0.h"


# -- only regular files are replaced ------------------------------------------------------------


def _special_targets(folder, suffix, with_device=True):
    fifo = folder / f"pipe{suffix}"
    os.mkfifo(fifo)
    sub = folder / f"folder{suffix}"
    sub.mkdir()
    sock_path = folder / f"sock{suffix}"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    targets = {"named pipe": fifo, "folder": sub, "socket": sock_path}
    if with_device:
        targets["device"] = Path("/dev/null")
    return targets, sock


@pytest.mark.parametrize("writer", ["save_trace", "save_interventions", "save_model", "write_text"])
def test_only_regular_files_are_replaced(tmp_path, writer):
    from engine.loading import save_model

    model = engine.load(char_model(tmp_path, 4)) if writer == "save_model" else None
    folder = tmp_path / "targets"
    folder.mkdir()
    suffix = ".safetensors" if writer == "save_model" else ".h5"
    targets, sock = _special_targets(folder, suffix, with_device=writer != "save_model")
    write = {"save_trace": lambda p: save_trace(small_trace(), p),
             "save_interventions": lambda p: save_interventions(p, []),
             "write_text": lambda p: write_text(p, "x"),
             "save_model": lambda p: save_model(model, p)}[writer]
    try:
        for kind, path in targets.items():
            mode = os.stat(path).st_mode
            with pytest.raises(SeqScopeError) as info:  # and never hangs on the pipe
                write(path)
            message = str(info.value)
            assert f"it is a {kind}, and only a regular file is ever replaced" in message, message
            assert "\n" not in message
            assert os.stat(path).st_mode == mode  # untouched
    finally:
        sock.close()
    assert leftovers(folder) == []


def test_cli_refuses_a_device_before_running(tmp_path, capsys):
    model = char_model(tmp_path, 4)
    rc = main(["trace", str(model), "--text", "abc", "-o", "/dev/null"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("seqscope: error: cannot write trace file to /dev/null: it is a device")
    assert err.count("\n") == 1
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# -- file names that are not UTF-8 ----------------------------------------------------------


def test_file_names_that_are_not_utf8(tmp_path, capsys):
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.h5")
    save_trace(small_trace(), name)
    assert os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.h5" in [os.fsencode(str(tmp_path)) + b"/" + n
                                                              for n in os.listdir(os.fsencode(str(tmp_path)))]
    assert load_trace(name).n_tokens == 50
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/lstm\xe9")
    export_lstmvis(name, folder)
    assert sorted(os.listdir(folder)) == sorted(LSTMVIS_FILES)
    model = char_model(tmp_path, 4)
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/out\xe9.h5")
    rc = main(["trace", str(model), "--text", "abc", "-o", out])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith("wrote ") and "out\ufffd.h5" in captured.out
    assert load_trace(out).n_tokens == 3


# -- LSTMVis folders as a whole -----------------------------------------------------------------


def _folder_bytes(folder):
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_lstmvis_folder_is_replaced_as_a_whole(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    export_lstmvis(small_trace(seed=1), folder)
    before = _folder_bytes(folder)
    assert sorted(before) == sorted(LSTMVIS_FILES)

    import engine.hdf5 as hdf5

    real = hdf5.write_text

    def failing(path, text, *args, **kwargs):  # the last file of the three fails
        if Path(path).name == "lstm.yml":
            raise OSError(28, "No space left on device")
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(hdf5, "write_text", failing)
    other = small_trace(n=70, width=5, seed=2)
    with pytest.raises(TraceFileError) as info:
        export_lstmvis(other, folder)
    assert str(info.value) == (f"could not write LSTMVis project {folder}: No space left on device; "
                               "the old proj is unchanged")
    assert _folder_bytes(folder) == before  # not a new states.h5 beside the old words.dict
    assert leftovers(tmp_path) == []

    monkeypatch.undo()
    export_lstmvis(other, folder)
    after = _folder_bytes(folder)
    assert sorted(after) == sorted(LSTMVIS_FILES) and all(after[n] != before[n] for n in LSTMVIS_FILES)
    assert leftovers(tmp_path) == []

    # where the kernel cannot swap two folders in one step: old aside, new in, old removed
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    export_lstmvis(small_trace(seed=1), folder)
    assert _folder_bytes(folder) == before and leftovers(tmp_path) == []


def test_lstmvis_folder_with_other_files_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    (folder / "words.dict").write_text("old")
    with pytest.raises(TraceFileError, match=r"not its own \(thesis.tex\); choose a new or empty folder"):
        export_lstmvis(small_trace(), folder)
    assert _folder_bytes(folder) == {"thesis.tex": b"precious", "words.dict": b"old"}
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TraceFileError, match="it is a file, not a folder"):
        export_lstmvis(small_trace(), tmp_path / "afile")
    assert leftovers(tmp_path) == []


# -- model saves ------------------------------------------------------------------------------


def test_model_save_failure_keeps_the_old_model(tmp_path, monkeypatch):
    from engine.loading import save_model

    model = engine.load(char_model(tmp_path, 4))
    target = tmp_path / "m.safetensors"
    save_model(model, target)
    before = target.read_bytes()

    import safetensors.torch

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a model")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    with pytest.raises(WriteError) as info:
        save_model(model, target)
    assert str(info.value) == f"could not write model {target}: No space left on device; the old m.safetensors is unchanged"
    assert target.read_bytes() == before and leftovers(tmp_path) == []


# -- signals --------------------------------------------------------------------------------


def test_held_signals_raise_at_check_and_come_back():
    with raising_signals():
        with pytest.raises(Interrupted) as redelivered:
            with held_signals() as check:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # a raising handler would have raised by now
                with pytest.raises(Interrupted) as info:
                    check()
                assert info.value.exit_status == 143
            # leaving the block hands the signal to the command's handler, which raises it again
        assert redelivered.value.signum == signal.SIGTERM
        with pytest.raises(Interrupted):
            with held_signals():
                pass  # a signal came (and could have been swallowed): no new write starts
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_interrupts_in_the_writer_are_raised_between_steps(tmp_path):
    target = tmp_path / "t.h5"
    save_trace(small_trace(seed=1), target)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with held_signals() as check:
            from engine.hdf5_writer import write_hdf5

            def fill(f, check_step):
                f.create_dataset("a", data=np.zeros(1000))
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                f.create_dataset("b", data=np.zeros(1000))  # still writing: the signal waits
                check_step()
                raise AssertionError("not reached")

            write_hdf5(target, fill)
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_a_signal_during_any_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "notes.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):  # Python's own Ctrl-C handler, after the cleanup
        with replacing(target) as tmp:
            tmp.write_text("new, half")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            tmp.write_text("new, whole")  # the write goes on to a safe point
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    # a default SIGTERM still ends the process, after the temporary is gone
    code = textwrap.dedent(f"""
        import os, signal, time
        from engine.atomic import replacing
        with replacing({str(target)!r}) as tmp:
            tmp.write_text("new")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        print("not reached")
    """)
    r = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGTERM and r.stdout == ""
    assert target.read_text() == "old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_stops_on_a_signal_during_a_compressed_write(tmp_path, sig):
    model = char_model(tmp_path, 256)
    text = tmp_path / "in.txt"
    rng = np.random.default_rng(0)
    text.write_text("".join(rng.choice(list("abcdefgh \n."), size=4000)))  # ~50 MB of states
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.h5"
    save_trace(small_trace(), out)
    before = out.read_bytes()
    p = subprocess.Popen([sys.executable, "-m", "engine.cli", "trace", str(model), "--input", str(text),
                          "-o", str(out), "--compression", "gzip", "--no-progress"],
                         env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not leftovers(out_dir):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        p.send_signal(sig)  # the write has begun
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + sig, stderr
    name = signal.Signals(sig).name
    assert stderr.strip() == f"seqscope: interrupted ({name}); no partial output was left"
    assert stdout == ""
    assert out.read_bytes() == before and leftovers(out_dir) == []


# -- a full disk: one sentence, never a crash ----------------------------------------------------

DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, resource, shutil, sys, tempfile
    import numpy as np
    from engine.cli import main
    from engine.hdf5 import export_lstmvis, save_trace
    from engine.trace import Trace

    how, folder, model = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    n = 3000
    trace = Trace(tokens=rng.integers(0, 5, n), offsets=[0, n], specs={}, token_text=("a",) * n,
                  arrays={f"layers.{i}.h": rng.standard_normal((n, 64)).astype(np.float32) for i in range(2)})
    text = "".join(rng.choice(list("abcdefgh"), size=n))

    def write(writer, folder):
        out, proj = os.path.join(folder, "out.h5"), os.path.join(folder, "proj")
        if writer == "save_trace":
            save_trace(trace, out)
        elif writer == "save_trace_gzip":
            save_trace(trace, out, compression="gzip")
        elif writer == "export_lstmvis":
            export_lstmvis(trace, proj)
        else:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(["trace", model, "--text", text, "--probes", "layers.*.h", "layers.*.c", "-o", out])
            if rc:
                raise RuntimeError(f"rc {rc}: {err.getvalue()}")

    def needed(writer):
        # bytes the write needs: the largest file (a file-size limit), or all pages (a disk)
        scratch = tempfile.mkdtemp()
        write(writer, scratch)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(scratch) for f in fs]
        shutil.rmtree(scratch)
        return max(sizes) if how == "rlimit" else sum(-(-s // 4096) * 4096 for s in sizes)

    def old_state():
        names = ("out.h5", "proj/states.h5", "proj/words.dict", "proj/lstm.yml")
        return {p: open(os.path.join(folder, p), "rb").read() for p in names}

    def limit(level):
        if how == "rlimit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (level, resource.RLIM_INFINITY))
            return
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
        if free > level:
            os.posix_fallocate(fd, 0, free - level)
        os.close(fd)

    def unlimit():
        if how == "rlimit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        elif os.path.exists(os.path.join(folder, "filler")):
            os.unlink(os.path.join(folder, "filler"))

    results = []
    for writer in ("save_trace", "save_trace_gzip", "cli", "export_lstmvis"):
        size = needed(writer)
        save_trace(trace, os.path.join(folder, "out.h5"), probes="layers.0.h")  # old files, smaller
        export_lstmvis(trace, os.path.join(folder, "proj"), probes="layers.0.h")
        before = old_state()
        # nearly empty (superblock, create_dataset), half way, exactly too small; then room enough
        for level in (0, 96, 2048, size // 30, size // 2, size - 4096, size - 1, 2 * size):
            limit(level)
            try:
                write(writer, folder)
                outcome = "ok"
            except Exception as exc:
                outcome = type(exc).__name__ + ": " + str(exc)
            finally:
                unlimit()
            left = [n for n in os.listdir(folder) + os.listdir(os.path.join(folder, "proj")) if n.startswith(".ss")]
            results.append({"writer": writer, "level": level, "fits": level >= 2 * size, "outcome": outcome,
                            "left": left, "old_kept": old_state() == before})
    print(json.dumps(results))
""")


def _run_driver(how, folder, model):
    r = subprocess.run([sys.executable, "-c", DRIVER, how, str(folder), str(model)],
                       env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=600,
                       preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    assert r.returncode == 0, f"the writers crashed (status {r.returncode}): {r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check(results, reason):
    assert len(results) == 4 * 8
    for r in results:
        where = f"{r['writer']} with {r['level']} bytes"
        assert r["left"] == [], where
        if r["fits"]:
            assert r["outcome"] == "ok", where + ": " + r["outcome"]
            continue
        assert r["old_kept"], where
        kind, _, message = r["outcome"].partition(": ")
        if r["writer"] == "cli":
            assert kind == "RuntimeError" and message.startswith("rc 2: seqscope: error: "), where + ": " + message
            message = message.split("seqscope: error: ", 1)[1]
            assert message.endswith("\n") and message.count("\n") == 1, where
        else:
            assert kind == "TraceFileError", where + ": " + r["outcome"]
        assert message.startswith("could not write ") and reason in message, where + ": " + message
        assert "Traceback" not in message, where


def test_full_disk_with_a_file_size_limit(tmp_path):
    """RLIMIT_FSIZE (EFBIG, SIGXFSZ ignored): works without privileges; every stage of a write."""
    model = char_model(tmp_path, 16)
    folder = tmp_path / "out"
    folder.mkdir()
    _check(_run_driver("rlimit", folder, model), "File too large")


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_on_a_tiny_tmpfs(tmp_path, tiny_disk):
    """A real full disk (ENOSPC) at several fill levels: the crash depended on where it filled."""
    model = char_model(tmp_path, 16)
    _check(_run_driver("tmpfs", tiny_disk, model), "No space left on device")


def test_full_disk_cli_exit_status(tmp_path, tiny_disk):
    """`seqscope trace -o` on a full disk, as a user runs it: status 2, one line, nothing left."""
    model = char_model(tmp_path, 16)
    out = tiny_disk / "out.h5"
    out.write_bytes(b"the old trace")
    st = os.statvfs(tiny_disk)
    fd = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - 65_536)
    os.close(fd)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "trace", str(model), "--text", "abcdefgh" * 400,
                        "-o", str(out)], env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"seqscope: error: could not write trace file {out}: No space left on device; "
                        "the old out.h5 is unchanged\n")
    assert out.read_bytes() == b"the old trace" and leftovers(tiny_disk) == []


def test_intervention_save_errors_are_intervention_errors(tmp_path):
    with pytest.raises(InterventionError, match="folder .* does not exist"):
        save_interventions(tmp_path / "no" / "x.json", [])


# -- the window's exports and projects --------------------------------------------------------


def test_window_exports_and_projects_are_atomic(qtbot, tmp_path, monkeypatch):
    import types

    import pyqtgraph as pg

    from workbench.export import ExportError, export_units_csv, export_view
    from workbench.session import Session

    widget = pg.PlotWidget()
    qtbot.addWidget(widget)
    widget.plot([0, 1, 2, 3], [0, 1, 0, 1])
    widget.plot_item = widget.getPlotItem()
    png = tmp_path / ("p" * 239 + ".png")  # 243 characters
    export_view(widget, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = png.read_bytes()

    def half_then_fail(self, fileName=None, **kwargs):
        Path(fileName).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pg.exporters.ImageExporter, "export", half_then_fail)
    with pytest.raises(ExportError, match="No space left on device; the old p+.png is unchanged"):
        export_view(widget, png)
    assert png.read_bytes() == before and leftovers(tmp_path) == []
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ExportError, match="it is a named pipe"):
        export_view(widget, tmp_path / "pipe.png")

    trace = small_trace()
    session = types.SimpleNamespace(trace=trace, probe="layers.0.h", units=[1], pinned=[], interventions=[],
                                    clean_trace=None)
    with pytest.raises(ExportError, match="it is a named pipe"):
        export_units_csv(session, tmp_path / "pipe.png")
    csv_path = export_units_csv(session, tmp_path / "units.csv")
    assert csv_path.read_text(encoding="utf-8").splitlines()[0] == "token,sequence,text,layers.0.h[1]"

    project = tmp_path / "p.seqscope.json"
    project.write_text('{"old": true}')
    s = Session()
    try:
        with pytest.raises(SeqScopeError, match="it is a named pipe"):
            s.save_project(tmp_path / "pipe.png")
        def full(path):  # the data reaches the disk at the sync: that is where a full disk can show
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(atomic, "sync_file", full)
        with pytest.raises(WriteError, match="No space left on device; the old p.seqscope.json is unchanged"):
            s.save_project(project)
    finally:
        s.runner.shutdown()
    assert project.read_text() == '{"old": true}' and leftovers(tmp_path) == []
