"""What one model worker costs in memory, told to Ray's scheduler, and a per-replica budget of
decoded pixels.

Ray places an actor only where its declared resources fit; without `memory=` it counts 0
bytes, so it would start as many Segmenters as there are CPUs to spare and let the kernel's
OOM killer sort it out. Every Serve replica and Ray Data worker of this package declares
`segmenter_memory_bytes(...)` instead, and `check_fits` refuses a job or service whose workers
cannot all be placed (instead of waiting forever for resources that will never come).

The Segmenter's own part is its `lfm_deploy.runtime.memory.MemoryModel` (docs/performance.md,
"Memory"; `benchmarks/bench_memory.py` repeats the measurement). On top: a Ray worker process
(`RAY_WORKER_BYTES`), `HEADROOM` (Ray's own buffers and Arrow blocks: before the default budget,
batch workers at batch 8 and 400 px held 3.2-3.5 GB where the model then gave 2.9 + 0.1, up to
1.17x), and decoded request images, `BYTES_PER_PIXEL` per pixel in
flight (RGB 3 B, the full-size mask 1 B, its 0/255 copy for the PNG 1 B, resampling buffers).
"""

from __future__ import annotations

import logging
import math

from ..runtime.memory import DEFAULT_BUDGET, GB

log = logging.getLogger(__name__)
#: A Ray worker process (core worker, imports) beside the Segmenter.
RAY_WORKER_BYTES = int(0.15 * GB)
#: Declared = modelled x HEADROOM (see the module docstring).
HEADROOM = 1.15
#: Memory per decoded pixel in flight (see the module docstring).
BYTES_PER_PIXEL = 8


def segmenter_memory_bytes(job, batch_size: int, *, budget: float | None = DEFAULT_BUDGET,
                           decoded_pixels: int = 0) -> int:
    """Memory to declare for one Ray actor holding one `Segmenter` of `job` (`lfm_deploy.serving.job.Job`).

    Args:
        job: what the actor serves: its backend and export choose the memory model.
        batch_size: the largest batch it runs.
        budget: the Segmenter's `memory_budget` (it caps the queries per head run).
        decoded_pixels: decoded image pixels it may hold at once (the replica's pixel budget).

    Returns:
        Bytes, with `HEADROOM`.
    """
    model, size = job.memory_model, job.manifest.image_size
    head = min(batch_size, model.head_batch(size, budget)) if budget is not None else batch_size
    total = model.peak(size, head) + RAY_WORKER_BYTES + BYTES_PER_PIXEL * int(decoded_pixels)
    return int(math.ceil(total * HEADROOM))


def check_fits(per_actor: int, count: int, what: str, flag: str) -> None:
    """Refuse `count` actors of `per_actor` bytes each that the connected cluster cannot hold.

    Args:
        per_actor: declared bytes per actor.
        count: how many.
        what: what they are, for the message ("replica(s)", "worker(s)").
        flag: the option that sets `count`, named in the hint.

    Raises:
        ClusterError: the cluster's `memory` resource (what Ray may hand out to tasks and
            actors) holds fewer of them, or no node can hold one.
    """
    import ray

    from ..errors import ClusterError

    nodes = [n.get("Resources", {}).get("memory", 0.0) for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return
    fit = sum(int(m // per_actor) for m in nodes)
    if fit < count:
        raise ClusterError(
            f"{count} {what} need {count * per_actor / GB:.1f} GB ({per_actor / GB:.2f} GB each, measured: "
            f"lfm_deploy.serving.resources) but the Ray cluster can place {fit} (memory for tasks and actors: "
            f"{', '.join(f'{m / GB:.1f} GB' for m in nodes)} per node); pass {flag} {max(fit, 1)} or a smaller "
            "batch, or add memory or nodes")


class PixelBudget:
    """Decoded pixels a replica holds at once: a request waits for its share, or gets 503.

    Used from one event loop (a Serve replica's); not thread-safe.

    Args:
        total: pixels in flight at most (images larger than this are refused by the API first).
        wait_s: how long a request may wait for room before it is answered 503.
    """

    def __init__(self, total: int, wait_s: float = 10.0):
        self.total, self.wait_s = int(total), float(wait_s)
        self.used = 0
        self._changed = None

    def _condition(self):
        import asyncio

        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, pixels: int) -> int:
        """Wait until `pixels` fit; returns what to pass to `release`.

        Raises:
            ServiceError: 503 with Retry-After when no room came within `wait_s`.
        """
        import asyncio

        from .api import ServiceError

        pixels = min(int(pixels), self.total)
        cond = self._condition()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self.used + pixels <= self.total), self.wait_s)
            except asyncio.TimeoutError:
                raise ServiceError(503, "busy", f"this replica is decoding {self.used / 1e6:.0f} megapixels already "
                                   f"(its budget is {self.total / 1e6:.0f}); retry shortly",
                                   headers={"Retry-After": "2"}) from None
            self.used += pixels
        return pixels

    async def release(self, pixels: int) -> None:
        """Give back what `acquire` returned."""
        cond = self._condition()
        async with cond:
            self.used -= pixels
            cond.notify_all()
