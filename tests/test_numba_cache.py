"""numba's on-disk cache: a second process loads the compiled loops instead of compiling them.

The cache check runs the real path (``engine.run`` with an intervention on the bundled
char-LSTM) in two fresh interpreters with ``NUMBA_CACHE_DIR`` set to a temporary folder.  Before the kernels moved to module level, the LSTM stretch closed over
another compiled function whose pickled form changes in every process: the second process
missed the cache, compiled again and wrote another ``.nbc`` file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models.family import numba_available

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "models" / "char-lstm-python"

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba cannot be imported")

# one fresh process: an edited run of the char-LSTM; prints what numba did for its stretch
CHILD = r"""
import json, sys
import engine

model = engine.load(sys.argv[1])
edit = engine.Intervention("layers.0.c", "add", 2.0, positions=range(3, 10**9), units=[37])
trace = engine.run(model, "def f(x):\n    return x", probes=["layers.0.c"], interventions=[edit])
try:
    from engine.models.numba_kernels import lstm_stretch
except ImportError:  # code from before the kernels moved: only the cache files tell
    print(json.dumps(None))
else:
    stats = lstm_stretch.stats
    print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def _child(cache_dir: Path, code: str = CHILD, root: Path = ROOT) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(MODEL)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cache_files(cache_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(cache_dir)): p.stat().st_mtime_ns for p in cache_dir.rglob("*")
            if p.suffix in (".nbi", ".nbc")}


def test_a_second_process_loads_the_compiled_loops_from_disk(tmp_path):
    first = _child(tmp_path)
    files = _cache_files(tmp_path)
    assert any(name.endswith(".nbc") and "lstm_stretch" in name for name in files), files

    second = _child(tmp_path)
    # nothing compiled, nothing written: the same cache files, untouched
    assert _cache_files(tmp_path) == files
    assert first == {"hits": 0, "misses": 1} and second == {"hits": 1, "misses": 0}


def test_warm_up_loads_the_signatures_that_runs_use():
    """After :func:`warm_up`, an edited char-LSTM run and a Mamba run compile nothing more."""
    import engine
    from engine.models import numba_kernels as nk
    from engine.models.kernel_warmup import warm_up

    assert warm_up() is True
    kernels = (nk.lstm_stretch, nk.mamba_scan)
    loaded = [set(k.signatures) for k in kernels]
    lstm = engine.load(MODEL)
    edit = engine.Intervention("layers.0.c", "add", 2.0, positions=range(3, 10**9), units=[37])
    engine.run(lstm, "def f(x):\n    return x", probes=["layers.0.c"], interventions=[edit])
    mamba = engine.load(ROOT / "assets" / "models" / "selective-ssm-recall")
    assert mamba.scan == "numba"
    engine.run(mamba, "abcabc", probes=["layers.0.y"])
    assert [set(k.signatures) for k in kernels] == loaded


def test_without_numba_the_torch_loops_run(tmp_path):
    """A broken numba costs speed, never a run: the kernels module fails to import, the scans
    and the LSTM's edited steps take the torch path."""
    code = r"""
import json, sys
sys.modules["numba"] = None   # import numba -> ImportError
import torch, engine
from engine.models.family import numba_available
from engine.models.kernel_warmup import warm_up
lstm = engine.load(sys.argv[1])
edit = engine.Intervention("layers.0.c", "add", 2.0, positions=range(3, 10**9), units=[37])
plain = engine.run(lstm, "def f(x):\n    return x", probes=["layers.0.c"])
edited = engine.run(lstm, "def f(x):\n    return x", probes=["layers.0.c"], interventions=[edit])
diff = (edited["layers.0.c"] - plain["layers.0.c"])[:, 37]
mamba = engine.load(sys.argv[1].replace("char-lstm-python", "selective-ssm-recall"))
print(json.dumps({"available": numba_available(), "warm": warm_up(), "scan": mamba.scan,
                  "diff_before": float(abs(diff[:3]).max()), "diff_at": float(diff[3])}))
"""
    out = _child(tmp_path, code)
    assert out["available"] is False and out["warm"] is False and out["scan"] == "torch"
    assert out["diff_before"] == 0.0 and out["diff_at"] == pytest.approx(2.0, abs=1e-5)
    assert not _cache_files(tmp_path)
