"""Memory of a serving process: what a Segmenter holds per batch, and glibc's allocator controls.

`MemoryModel` is a Segmenter's measured peak resident set: a fixed part plus a part per query of
a head run, which grows with size^4 (HSNet's 4D hypercorrelation). Which model applies depends
on the runtime (OpenVINO keeps its own blocked copies of the weights and buffers) and on how the
export's head makes the correlation (`Manifest.correlation`): `model_for` picks it, and
`MemoryModel.head_batch` inverts it for `memory_budget`. `trim_heap` (after each session built)
and the opt-in, process-wide `limit_heap_retention` return freed pages to the OS. Measurements
(`benchmarks/bench_memory.py`) and the levers tried: docs/performance.md, "Memory".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from dataclasses import dataclass

log = logging.getLogger(__name__)

GB = 1 << 30


@dataclass(frozen=True)
class MemoryModel:
    """Peak resident bytes of a process serving one Segmenter: `fixed` + `per_query_400` x
    (image size / 400)^4 per query of a head run. The figures are fits to measured peaks, rounded up."""

    fixed: int
    per_query_400: int

    def per_query(self, image_size: int) -> int:
        """Memory one query adds to a head run at `image_size`."""
        return int(self.per_query_400 * (float(image_size) / 400.0) ** 4)

    def peak(self, image_size: int, head_batch: int) -> int:
        """Modelled peak bytes when the head runs `head_batch` queries at `image_size`."""
        return self.fixed + self.per_query(image_size) * max(1, int(head_batch))

    def head_batch(self, image_size: int, budget_bytes: int | float) -> int:
        """The most queries per head run that keep `peak` within `budget_bytes` (at least 1: a
        single query cannot be split; the Segmenter logs that the budget cannot be met).

        Raises:
            InputError: a budget that is not a positive number.
        """
        from ..errors import InputError

        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or not budget_bytes > 0:
            raise InputError(f"memory_budget must be a positive number of bytes, got {budget_bytes!r}",
                             api_hint="pass e.g. memory_budget=1.5 * 2**30 for 1.5 GB")
        return max(1, int((budget_bytes - self.fixed) // self.per_query(image_size)))


def _gb(fixed: float, per_query: float) -> MemoryModel:
    return MemoryModel(int(fixed * GB), int(per_query * GB))


#: {(runtime, correlation): model}, measured at 400 px on fp32 exports, 2 threads, the upper
#: envelope of an AMD EPYC and an Intel Xeon with AMX (docs/performance.md "Memory").
#: onnxruntime, per-feature (the K shots shared by the queries, never copied per query): AMD
#: 0.39 / 0.53 / 0.82 / 1.41 GB at batch 1 / 2 / 4 / 8 in one head run, Intel 0.41 / 0.58 / 0.93 /
#: 1.61 GB; OpenVINO (AMD): 0.82 / 1.16 / 1.79 / 2.95 GB, Intel 0.83 at batch 1. A batch split
#: into head runs keeps every query's encoder features (~10 MB each at 400 px) meanwhile: on the
#: Intel Xeon, batch 8 in runs of 7 held 1.52 GB; hence 0.19 GB per query, which gives runs of 6
#: under the default budget (1.36 GB measured there). Stacked (exports from before the per-feature
#: correlation): onnxruntime 0.52 GB at batch 1, 2.81 GB at 8; OpenVINO 1.01 / 4.65 GB.
MODELS = {("onnxruntime", "per-feature"): _gb(0.25, 0.19), ("onnxruntime", "stacked"): _gb(0.34, 0.32),
          ("openvino", "per-feature"): _gb(0.52, 0.33), ("openvino", "stacked"): _gb(0.50, 0.53)}
#: The budget a Segmenter keeps unless told otherwise (`memory_budget=`): the issue's 1.5 GB for a
#: serving process, which costs nothing measurable per image (head runs of 2 to 8 queries run within
#: a few % of each other per image on 2 cores; docs/performance.md).
DEFAULT_BUDGET = int(1.5 * GB)


def model_for(runtime: str = "onnxruntime", correlation: str | None = None) -> MemoryModel:
    """The memory model of a Segmenter on `runtime` ("onnxruntime" or "openvino"; other
    runtimes get onnxruntime's) serving an export whose head makes the correlation `correlation`
    (`Manifest.correlation`; None, an export that does not say, is taken as "stacked")."""
    runtime = "openvino" if str(runtime).lower() == "openvino" else "onnxruntime"
    return MODELS[runtime, correlation or "stacked"]


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
