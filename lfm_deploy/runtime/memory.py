"""Memory of a serving process: what a Segmenter holds per batch, and glibc's allocator controls.

**What a Segmenter holds** (peak resident set of one fresh process that loads the graphs, encodes
a 1-shot support set and segments batches of B queries; onnxruntime CPU, fp32, 2 threads;
`benchmarks/bench_memory.py` and `python -m lfm_deploy.serving.resources DIR` measure it): a fixed
~0.34 GB (weights, sessions, support features, the arena's first regions) plus, per query of a
head run, ~0.32 GB at 400 px. The per-query part is HSNet's 4D hypercorrelation and its
re-laid-out copies inside the learner: the layer2 correlation alone is (4, 50, 50, 50, 50) float32,
100 MB per query at 400 px, and it grows with the square of the feature-map area, i.e. with
size^4 (160 px: 0.009 GB). `segmenter_bytes` is that model; `head_batch_for_budget` inverts it, so
a Segmenter given a `memory_budget` runs its head on as many queries at a time as fit.

**glibc's allocator.**

onnxruntime takes its large buffers (the CPU arena's regions, initializers, outputs) from
malloc. glibc raises its mmap threshold dynamically after large blocks are freed, so later
multi-megabyte blocks come from the heap, which fragments and keeps freed pages resident.
`limit_heap_retention` pins the threshold so that large blocks are mmapped and returned to the
OS when freed (measured at 400x400, batch 1, `benchmarks/bench_runtime.py`: serving peak RSS
0.53 GB instead of 0.65 GB, per-query latency within run-to-run noise; with the arena off it
was ~+30 % per query). It changes the whole process, so it is an explicit opt-in for dedicated
serving processes, never done by the Segmenter itself. Most of that gain came from the pages that
building a session frees (onnxruntime's layout rewrite copies the convolution weights), and the
Segmenter now returns exactly those with `trim_heap` after each session it builds (issue 20:
0.65 -> 0.52 GB at batch 1, the same as `limit_heap_retention`, without changing the process).
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
