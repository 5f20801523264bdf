"""Free host memory that the C allocator keeps, handed back to the kernel at each checkpoint.

The soak (benchmarks/soak.py, docs/performance.md "A long run: the soak") found the
process's RSS creeping up over a run while the C heap in use (glibc's mallinfo2: uordblks +
hblkhd) stayed flat, the device buffers stayed flat and Python's block count stayed flat:
glibc keeps ~600 MB of freed memory inside its arenas on the CPU demo (the warm-up's,
compiler's and evaluation's peaks, freed below chunks still in use, so the arena top cannot
shrink), and as later allocations land in different parts of it, more of those pages become
resident and stay so after they are freed again. Nothing leaks; RSS drifts towards in-use +
free. `malloc_trim(0)` gives every whole free page in every arena back to the kernel
(MADV_DONTNEED), so RSS follows the memory in use; the soak's `--trim` arm measured it.

It runs after each checkpoint (tens of steps apart), where the step's
transient buffers are already freed. Where the C library has no malloc_trim (musl, macOS)
this is a no-op.
"""

from __future__ import annotations

import ctypes
import time


def _malloc_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own libc
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> float:
    """malloc_trim(0) in every arena; returns the seconds it took (0.0 without glibc)."""
    if _TRIM is None:
        return 0.0
    t0 = time.perf_counter()
    _TRIM(0)
    return time.perf_counter() - t0
