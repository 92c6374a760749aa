"""What the machine can honour: CPU cores for thread counts, memory for sizes.

`cap_threads` caps a thread count at the cores this process may run on (a warning says so):
onnxruntime with 1000 intra-op threads on 2 cores spent minutes in its thread pool instead of
the 5 s a run takes. `check_memory` refuses a job whose arrays cannot fit in the memory that is
available now, before they are allocated (a `MemoryError` traceback, or the kernel's OOM
killer, otherwise). Both read the machine without psutil: `os.sched_getaffinity` /
`os.cpu_count`, and /proc/meminfo (MemAvailable), the cgroup v2 limit, or `os.sysconf`; where
none can be read, nothing is refused.

Pure Python: importable by the torch-free runtime.
"""

from __future__ import annotations

import logging
import os

from ..errors import InputError, LFMError

log = logging.getLogger(__name__)


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_threads(threads: int | None, what: str = "threads") -> int | None:
    """`threads` capped at `cpu_count()`, with a warning when it was more (None stays None).

    Args:
        threads: the requested thread count (already checked to be a positive integer).
        what: how the warning names the setting ("threads", "--threads").
    """
    if threads is None:
        return None
    cores = cpu_count()
    if threads > cores:
        log.warning("%s %d is more than the %d CPU core(s) this process can use; using %d (more threads than cores "
                    "only make them wait for each other)", what, threads, cores, cores)
        return cores
    return threads


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _cgroup_available() -> int | None:
    """Room left under this process's cgroup v2 memory limit (None: no limit or not readable)."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            rel = next((line.strip().split(":", 2)[2] for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max"), encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current"), encoding="ascii") as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError, IndexError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to this process now (None when it cannot be read)."""
    found = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
    return min(found) if found else None


def check_memory(needed: int, what: str, *, hint: str, cli_hint: str | None = None,
                 error: type[LFMError] = InputError) -> None:
    """Refuse a job that needs more memory than is available, before it allocates anything.

    Args:
        needed: estimated peak bytes of the job.
        what: the job and the number that sets its size ("--size 1000000 (images of 1000000 x 1000000)").
        hint, cli_hint: what to do (API and command-line words).
        error: the LFMError subclass to raise.

    Raises:
        `error`: `needed` exceeds the available memory.
    """
    available = available_memory()
    if available is not None and needed > available:
        raise error(f"{what} needs about {needed / 2**30:.1f} GB of memory but {available / 2**30:.1f} GB is "
                    "available", api_hint=hint, cli_hint=cli_hint)
