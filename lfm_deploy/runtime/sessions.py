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
from .providers import check_available, check_session, resolve_providers

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
        spin_wait: let idle intra-op threads spin between parallel sections (onnxruntime's
            default, fastest on cores of its own); False for a process that shares its cores
            with busy neighbours (a service next to its HTTP proxy and clients), where spinning
            threads take CPU time from them.
    """

    threads: int | None = None
    graph_optimization: str = "all"
    low_memory: bool = True
    spin_wait: bool = True

    def __post_init__(self):
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise InputError(f"graph_optimization {self.graph_optimization!r} is not one of {', '.join(_OPT_LEVELS)}")

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
        if not self.spin_wait:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: EP fallbacks are reported by check_session
        return opts


class SessionFromOnnx:
    """Lazy loader: calling it creates an `InferenceSession` and checks its execution providers.

    The one place a session is created: the runtime, export validation, lfm-verify, the fp16
    range check and the benchmarks all use it (Polygraphy-style: pass the loader to
    `polygraphy.backend.onnxrt.OnnxrtRunner`, or call it).

    Args:
        model: the .onnx file (already verified against the manifest), or serialized model bytes.
        providers: execution providers, best first, as `resolve_providers` takes them (None: CPU).
        config: session options (default: `SessionConfig()`, or one with `threads`).
        threads: shorthand for `SessionConfig(threads=threads)` when no `config` is given.
        allow_fallback: accept a session on fewer providers than requested (with a warning).
        what: name used in log lines and errors (default: the file name).
    """

    def __init__(self, model: str | os.PathLike | bytes, providers=None, *, config: SessionConfig | None = None,
                 threads: int | None = None, allow_fallback: bool = False, what: str | None = None):
        self.model = model if isinstance(model, bytes) else Path(model)
        self.requested = resolve_providers(providers)
        self.config = config if config is not None else SessionConfig(threads=threads)
        self.allow_fallback = allow_fallback
        self.what = what or (self.model.name if isinstance(self.model, Path) else "in-memory graph")

    @property
    def path(self) -> Path | None:
        return self.model if isinstance(self.model, Path) else None

    def __call__(self):
        """Create the session.

        Returns:
            the `onnxruntime.InferenceSession`.

        Raises:
            InputError: the graph file does not exist.
            BackendUnavailable: a requested accelerator is not available or did not become active.
        """
        import onnxruntime as ort

        if isinstance(self.model, Path) and not self.model.is_file():
            raise InputError(f"graph file {self.model} not found", api_hint="pass the path of an exported .onnx file",
                             cli_hint="check the artifact directory, or re-run lfm-export")
        usable = check_available(self.requested, self.allow_fallback)
        t0 = time.perf_counter()
        session = ort.InferenceSession(
            self.model if isinstance(self.model, bytes) else str(self.model), self.config.session_options(),
            providers=[name for name, _ in usable], provider_options=[options for _, options in usable],
        )
        active = check_session(session, self.requested, self.allow_fallback, self.what)
        log.info("loaded %s on %s in %.2f s", self.what, ", ".join(active), time.perf_counter() - t0)
        return session
