"""release_free_heap gives freed heap pages back to the kernel: VmRSS (the kernel's count of
the process's resident pages) drops by about the freed bytes, which glibc alone keeps."""

import ctypes
import pathlib

import pytest

from srpo_jax.trainer import host_memory

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def rss_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(host_memory._TRIM is None, reason="the C library has no malloc_trim")
def test_freed_heap_pages_under_a_live_chunk_go_back_to_the_kernel():
    # 64 KiB blocks stay below glibc's mmap threshold, so they come from the heap; one block
    # in 64 stays alive, so the arena's top cannot shrink and free() alone keeps the pages.
    size, n = 64 * 1024, 4096  # 256 MiB
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # resident
    kept = blocks[::64]
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    before = rss_mb()
    took = host_memory.release_free_heap()
    after = rss_mb()
    freed_mb = (n - len(kept)) * size / 2**20  # 252 MiB
    assert before - after > 0.8 * freed_mb, (before, after)
    assert took > 0.0
    for b in kept:
        libc.free(b)
