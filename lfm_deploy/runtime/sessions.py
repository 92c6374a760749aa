"""onnxruntime session options and a lazy session loader (`SessionFromOnnx`).

Memory defaults (measured at 400x400 on the CPU EP with the head graph, see
benchmarks/bench_runtime.py): the memory-pattern planner pre-allocates one block for all of a
run's intermediates, which only raises the resident set when serving one query at a time, so
the low-memory profile turns it off. The CPU memory arena stays on: without it every run
allocates and page-faults its ~100 MB activations afresh, which measured ~25% slower per query
at batch 1 (1010 vs 817 ms) and 60% at batch 8, with no smaller peak (857 vs 800 MB).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .providers import check_session

log = logging.getLogger(__name__)

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class SessionConfig:
    """How every session of a Segmenter is created.

    Attributes:
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        graph_optimization: "all", "extended", "basic" or "disable".
        low_memory: disable the memory-pattern planner (see module docstring): a smaller
            resident set at no measurable latency cost.
    """

    threads: int | None = None
    graph_optimization: str = "all"
    low_memory: bool = True

    def __post_init__(self):
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise InputError(
                f"graph_optimization {self.graph_optimization!r} is not one of {', '.join(_OPT_LEVELS)}"
            )

    def session_options(self):
        """A fresh `onnxruntime.SessionOptions` for this configuration."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads is not None:
            opts.intra_op_num_threads = self.threads
        # Requests run concurrently from the caller's threads; one graph runs sequentially.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[self.graph_optimization])
        if self.low_memory:
            opts.enable_mem_pattern = False
        opts.log_severity_level = 3  # errors only: EP fallbacks are reported by check_session
        return opts


class SessionFromOnnx:
    """Lazy loader: calling it creates an `InferenceSession` on an ONNX file and checks its EPs.

    Args:
        path: the .onnx file (already verified against the manifest).
        providers: resolved (name, options) pairs (see `providers.resolve_providers`).
        requested: what the caller asked for, to name it in errors.
        config: session options.
        allow_fallback: accept a session on fewer providers than requested (with a warning).
        what: name used in log lines and errors ("encoder graph").
    """

    def __init__(self, path: str | os.PathLike, providers, requested, config: SessionConfig,
                 allow_fallback: bool, what: str):
        self.path = Path(path)
        self.providers = providers
        self.requested = requested
        self.config = config
        self.allow_fallback = allow_fallback
        self.what = what

    def __call__(self):
        """Create the session.

        Returns:
            the `onnxruntime.InferenceSession`.

        Raises:
            BackendUnavailable: a requested accelerator did not become active.
        """
        import onnxruntime as ort

        t0 = time.perf_counter()
        session = ort.InferenceSession(
            str(self.path), self.config.session_options(),
            providers=[name for name, _ in self.providers],
            provider_options=[options for _, options in self.providers],
        )
        active = check_session(session, self.requested, self.allow_fallback, self.what)
        log.info("loaded %s (%s) on %s in %.2f s", self.what, self.path.name, ", ".join(active),
                 time.perf_counter() - t0)
        return session
