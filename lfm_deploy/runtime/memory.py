"""Memory of a serving process: what a Segmenter holds per batch, and glibc's allocator controls.

`segmenter_bytes` models a Segmenter's peak resident set (a fixed ~0.34 GB plus ~0.32 GB per
query of a head run at 400 px: HSNet's 4D hypercorrelation grows with size^4);
`head_batch_for_budget` inverts it for `memory_budget`. `trim_heap` (after each session built)
and the opt-in, process-wide `limit_heap_retention` return freed pages to the OS. Measurements
and the levers tried: docs/performance.md, "Memory".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

GB = 1 << 30
#: A Segmenter's fixed memory and its memory per query of a head run at 400 px (module docstring).
SEGMENTER_FIXED_BYTES = int(0.34 * GB)
PER_QUERY_BYTES_400 = int(0.32 * GB)


def per_query_bytes(image_size: int) -> int:
    """Memory one query adds to a head run at `image_size` (scales with size^4, module docstring)."""
    return int(PER_QUERY_BYTES_400 * (float(image_size) / 400.0) ** 4)


def segmenter_bytes(image_size: int, head_batch: int) -> int:
    """Modelled peak resident bytes of a process serving one Segmenter whose head runs `head_batch` queries.

    Args:
        image_size: the export's input size (`Manifest.image_size`).
        head_batch: queries per head run.
    """
    return SEGMENTER_FIXED_BYTES + per_query_bytes(image_size) * max(1, int(head_batch))


def head_batch_for_budget(image_size: int, budget_bytes: int | float) -> int:
    """The most queries per head run that keep `segmenter_bytes` within `budget_bytes` (at least 1).

    A budget below the batch-1 figure still gives 1: a single query cannot be split (the
    Segmenter logs that the budget cannot be met).

    Args:
        image_size: the export's input size.
        budget_bytes: the process's memory budget in bytes.

    Raises:
        InputError: a budget that is not a positive number.
    """
    from ..errors import InputError

    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or not budget_bytes > 0:
        raise InputError(f"memory_budget must be a positive number of bytes, got {budget_bytes!r}",
                         api_hint="pass e.g. memory_budget=1.5 * 2**30 for 1.5 GB")
    return max(1, int((budget_bytes - SEGMENTER_FIXED_BYTES) // per_query_bytes(image_size)))


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
