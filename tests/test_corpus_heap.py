"""engine.corpus.heap: the recorder gives glibc's free heap back once it passes TRIM_ABOVE (a
long recording's resident memory crept up with the corpus without it), and does nothing where
there is no glibc."""
import numpy as np

from engine.corpus import heap


def test_trims_only_past_the_threshold(monkeypatch):
    calls, free = [], [0]
    monkeypatch.setattr(heap, "_glibc", lambda: (calls.append, object()))
    monkeypatch.setattr(heap, "free_heap_bytes", lambda: free[0])
    free[0] = heap.TRIM_ABOVE
    heap.release_free_memory()
    assert calls == []
    free[0] = heap.TRIM_ABOVE + 1
    heap.release_free_memory()
    assert calls == [0]


def test_without_mallinfo_it_always_trims_and_without_glibc_never(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc", lambda: (calls.append, None))
    heap.release_free_memory()
    assert calls == [0]
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    heap.release_free_memory()  # nothing to call, nothing raised
    assert heap.free_heap_bytes() is None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_on_this_machine_the_holes_go_back_to_the_system():
    """Blocks below the mmap threshold, every other one freed: glibc keeps the holes (free heap
    past the threshold, resident memory unchanged); releasing returns their pages."""
    if heap._glibc() is None or heap._glibc()[1] is None:
        return  # not glibc >= 2.33: nothing to measure
    blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # ~300 MB of 100 kB blocks
    del blocks[::2]
    assert heap.free_heap_bytes() > heap.TRIM_ABOVE
    before = _rss_bytes()
    heap.release_free_memory()
    assert before - _rss_bytes() > 100 * 2**20  # most of the ~150 MB of holes
    assert len(blocks) == 1500
