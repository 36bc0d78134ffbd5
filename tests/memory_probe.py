"""Reading this process's memory from /proc for tests that bound what an operation allocates:
its current and peak resident size, and resetting the peak so that one call's growth shows."""
import ctypes
import gc


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` size field (``VmRSS``, ``VmHWM``, ``VmSize``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Make VmHWM (peak resident memory) restart from the current resident size; False where the
    kernel does not allow it (then peaks cannot be measured)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Hand memory freed earlier back to the system, so that a measured run's allocations show
    as growth instead of reusing resident pages (glibc keeps freed blocks resident)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
