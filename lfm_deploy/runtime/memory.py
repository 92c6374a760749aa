"""Process-level memory controls for serving processes (glibc's allocator).

onnxruntime takes its large buffers (the CPU arena's regions, initializers, outputs) from
malloc. glibc raises its mmap threshold dynamically after large blocks are freed, so later
multi-megabyte blocks come from the heap, which fragments and keeps freed pages resident.
`limit_heap_retention` pins the threshold so that large blocks are mmapped and returned to the
OS when freed (measured at 400x400, batch 1, `benchmarks/bench_runtime.py`: serving peak RSS
0.53 GB instead of 0.65 GB, per-query latency within run-to-run noise; with the arena off it
was ~+30 % per query). It changes the whole process, so it is an explicit opt-in for dedicated
serving processes, never done by the Segmenter itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_heap_retention(mmap_threshold: int = 128 * 1024) -> bool:
    """Make glibc serve blocks of `mmap_threshold` bytes and more with mmap (process-wide).

    Call once at the start of a dedicated serving process to lower its peak resident memory.

    Args:
        mmap_threshold: allocation size from which blocks are mmapped (glibc's default is 128
            KiB, but adjusted upwards dynamically; setting it disables that adjustment).

    Returns:
        True if applied; False where the C library is not glibc (nothing changed).
    """
    libc = _glibc()
    if libc is None:
        log.info("limit_heap_retention: not a glibc system; nothing changed")
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    log.info("limit_heap_retention: mmap threshold %d bytes (%s)", mmap_threshold, "applied" if ok else "refused")
    return ok


def trim_heap() -> bool:
    """Return free heap pages to the OS now (glibc `malloc_trim(0)`); False where unsupported."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
