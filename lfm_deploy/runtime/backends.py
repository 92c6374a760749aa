"""Backends: every way this project runs an exported graph, declared once (`BACKENDS`, `register`).

One row per backend, read by the `Segmenter`'s selection, lfm-verify, the precision gates,
serving, the GPU check and docs/backends.md (generated from `markdown_table`). How a row is
made, by this package or by an installed plugin (`load_plugins`): docs/backends.md, "Adding a
backend". Rows that are not one session per graph name the function that plans their lfm-verify
run ("module:function", imported only then), so imports keep pointing one way.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..errors import InputError, LFMError
from ..manifest import Manifest
from .providers import CPU, CUDA, entries

__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "Backend", "PlanContext", "Planned", "backend_names", "backends", "gate_backend",
           "get_backend", "load_plugins", "markdown_table", "register", "select_backend", "selectors", "unregister"]


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One backend.

    Attributes:
        name: what lfm-verify and `Segmenter(backend=...)` call it ("ov-bf16").
        runtime: "onnxruntime", "OpenVINO", "PyTorch", "TensorRT".
        precision: what it runs in, which picks its tolerances ("fp32", "fp16", "bf16", "int8").
        description: what runs, for reports and the docs.
        graphs: which of an export's graphs it takes: "fp32", "fp16" or "int8".
        session: `session(path, **settings)` -> lazy loader of an onnxruntime-shaped session; each
            setting (threads, config, allow_fallback, what, cache_dir, f32_islands, static_shapes)
            is taken where it applies and ignored elsewhere.
        unavailable: () -> None, or why it cannot run here in one sentence with the install hint.
        selector: the `providers=` name that picks it in the `Segmenter` with `precision=` ("openvino").
        plan: "module:function" planning its lfm-verify run (`function(backend, PlanContext)` ->
            `Planned`), instead of `session`.
        device: "cpu" or "gpu" (what `benchmarks/gpu_check.py` runs on the GPU machine).
    """

    name: str
    runtime: str
    precision: str
    description: str
    graphs: str = "fp32"
    session: Callable[..., Callable] | None = None
    unavailable: Callable[[], str | None] = _always
    selector: str | None = None
    plan: str | None = None
    device: str = "cpu"

    def loader(self, path, **settings) -> Callable:
        """The lazy session loader for one graph file (`session`)."""
        if self.session is None:
            raise LFMError(f"backend {self.name} has no session loader (it runs through {self.plan})")
        return self.session(path, **settings)

    def runner(self, path, *, name: str | None = None, **settings):
        """Polygraphy's `OnnxrtRunner` on this backend's session for a graph (parity, gates, benchmarks)."""
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(self.loader(path, **settings), name=name or self.name)

    def planner(self) -> Callable:
        """The function `plan` names, imported now."""
        module, _, function = self.plan.partition(":")
        return getattr(importlib.import_module(module), function)


@dataclass
class PlanContext:
    """What an lfm-verify plan knows: the export, threads, its graph files by kind ("fp32", "fp16",
    "int8", "encoder", "head"; None where missing, `missing` says why) and the eager model's loader."""

    artifact_dir: Path
    manifest: Manifest
    threads: int | None
    graphs: Mapping[str, Path | None]
    missing: Mapping[str, str]
    model_loader: Callable[[str], Callable]

    @property
    def thread_description(self) -> str:
        return f"{self.threads} threads" if self.threads else "default threads"


@dataclass
class Planned:
    """One backend's lfm-verify run: a runner factory, or why it is skipped."""

    name: str
    precision: str
    description: str
    make: Callable | None = None
    skip: str | None = None


# ---------------------------------------------------------------------- session loaders
def _onnxruntime(providers):
    def session(path, *, threads=None, config=None, allow_fallback=False, what=None, **_):
        from .sessions import SessionConfig, SessionFromOnnx

        # Parity runs keep the memory planner (one run each); the Segmenter passes its own config.
        config = config if config is not None else SessionConfig(threads=threads, low_memory=False)
        return SessionFromOnnx(path, providers, config=config, allow_fallback=allow_fallback, what=what)

    return session


def _openvino(precision):
    def session(path, *, threads=None, cache_dir=None, f32_islands=None, static_shapes=False, what=None, **_):
        from .openvino import SessionFromOpenVINO

        return SessionFromOpenVINO(path, precision, threads=threads, cache_dir=cache_dir, f32_islands=f32_islands,
                                   static_shapes=static_shapes, what=what)

    return session


def _openvino_missing() -> str | None:
    from .openvino import INSTALL_HINT

    try:
        importlib.import_module("openvino")  # lazy: an optional extra
    except ImportError:
        return f"OpenVINO is not installed: {INSTALL_HINT}"
    return None


def _cuda_missing() -> str | None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA in available:
        return None
    return (f"this onnxruntime build has no {CUDA} (available: {', '.join(available)}); "
            "install onnxruntime-gpu on a machine with an NVIDIA GPU")


_TRT_PLAN = "lfm_deploy.tensorrt.engines:plan_verify"

#: The registry, in report order (`register` adds to it).
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("eager-fp32", "PyTorch", "fp32", "the eager model in float32, CPU", plan="lfm_deploy.parity.runners:plan_eager"),
    Backend("ort-cpu", "onnxruntime", "fp32", "onnxruntime CPUExecutionProvider",
            session=_onnxruntime([CPU])),
    Backend("ort-cpu-split", "onnxruntime", "fp32", "onnxruntime CPU, encoder -> head (support encoded once)",
            plan="lfm_deploy.parity.runners:plan_split"),
    # onnxruntime's CPU EP has few fp16 kernels and runs the rest in fp32 (it inserts and fuses
    # Casts): this checks the graph, its fp16 weights and island boundaries, while fp16
    # arithmetic itself is exercised by trt-fp16.
    Backend("ort-cpu-fp16", "onnxruntime", "fp16", "onnxruntime CPU, fp16 graph with fp32 islands (ops "
            "without CPU fp16 kernels run in fp32)", graphs="fp16", session=_onnxruntime([CPU])),
    Backend("ort-cpu-int8", "onnxruntime", "int8", "onnxruntime CPU, int8 QDQ graph", graphs="int8",
            session=_onnxruntime([CPU])),
    Backend("ov-fp32", "OpenVINO", "fp32", "OpenVINO CPU, fp32 inference precision",
            session=_openvino("fp32"), unavailable=_openvino_missing, selector="openvino"),
    Backend("ov-bf16", "OpenVINO", "bf16", "OpenVINO CPU, bf16 inference precision",
            session=_openvino("bf16"), unavailable=_openvino_missing, selector="openvino"),
    Backend("ov-int8", "OpenVINO", "int8", "OpenVINO CPU, int8 QDQ graph", graphs="int8",
            session=_openvino("fp32"), unavailable=_openvino_missing),
    Backend("ort-cuda", "onnxruntime", "fp32", "onnxruntime CUDAExecutionProvider",
            session=_onnxruntime([CUDA, CPU]), unavailable=_cuda_missing, device="gpu"),
    Backend("trt-fp32", "TensorRT", "fp32", "TensorRT fp32 engine", plan=_TRT_PLAN, device="gpu"),
    Backend("trt-fp16", "TensorRT", "fp16", "TensorRT fp16 engine (strongly typed)", plan=_TRT_PLAN, device="gpu"),
    Backend("trt-int8", "TensorRT", "int8", "TensorRT int8 engine (explicit quantization)", graphs="int8",
            plan=_TRT_PLAN, device="gpu"),
)}


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Add a backend (from the module that defines it); returns it.

    Raises:
        LFMError: the name is taken (and not `replace`), or it has neither a session nor a plan.
    """
    if backend.name in BACKENDS and not replace:
        raise LFMError(f"backend {backend.name!r} is already registered")
    if (backend.session is None) == (backend.plan is None):
        raise LFMError(f"backend {backend.name!r} needs exactly one of session= and plan=")
    if backend.device not in ("cpu", "gpu"):
        raise LFMError(f"backend {backend.name!r} has device {backend.device!r}; use 'cpu' or 'gpu'")
    BACKENDS[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a backend (tests)."""
    BACKENDS.pop(name, None)


_plugins_loaded = False


def backends() -> dict[str, Backend]:
    """The registry, with the installed packages' backends (`load_plugins`, once, on first use:
    not at import, so a plugin module can import this project freely)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugins()
    return BACKENDS


def backend_names() -> list[str]:
    """Every registered backend's name, in report order."""
    return list(backends())


def get_backend(name: str) -> Backend:
    """The backend of a name.

    Raises:
        InputError: no backend has that name (the message lists them).
    """
    if name not in backends():
        names = ", ".join(backends())
        raise InputError(f"unknown backend {name!r}", api_hint=f"pass one of {names}",
                         cli_hint=f"pass --backend with one of {names}")
    return backends()[name]


def gate_backend(precision: str) -> Backend:
    """The backend a reduced precision's accuracy gate runs on: the first with a session in that precision.

    Raises:
        LFMError: no backend runs that precision in a session.
    """
    for b in backends().values():
        if b.precision == precision and b.session is not None:
            return b
    raise LFMError(f"no registered backend runs {precision} graphs in a session")


def selectors() -> dict[str, str]:
    """{`providers=` name: runtime} of the runtimes the `Segmenter` picks instead of onnxruntime providers."""
    return {b.selector: b.runtime for b in backends().values() if b.selector}


def selected_runtime(providers) -> str | None:
    """The selector a providers argument names ("openvino"), or None for onnxruntime providers.

    Raises:
        InputError: a selector mixed with other providers (its runtime runs the whole graph
            itself, nothing falls through to another provider), or given options.
    """
    items = entries(providers)
    names = [(e[0] if isinstance(e, tuple) and e else e) for e in items]
    names = [n.strip().lower() if isinstance(n, str) else n for n in names]
    chosen = sorted({n for n in names if n in selectors()})
    if not chosen:
        return None
    selector, runtime = chosen[0], selectors()[chosen[0]]
    others = sorted({str(n) for n in names if n != selector})
    if others:
        raise InputError(
            f"providers {providers!r} mix {selector} with {', '.join(others)}; {runtime} runs the whole graph itself "
            "and cannot be combined with onnxruntime providers",
            api_hint=f"pick one: providers='{selector}' or the onnxruntime providers without it",
            cli_hint=f"pick one: --providers {selector}, or the onnxruntime providers without it",
        )
    if any(isinstance(e, tuple) and (len(e) != 2 or e[1]) for e in items):
        raise InputError(f"providers {providers!r} give {runtime} options; it takes none here",
                         api_hint=f"pass providers='{selector}' and set precision= and threads= instead",
                         cli_hint=f"pass --providers {selector} with --precision and --threads")
    return selector


def select_backend(providers=None, precision: str = "fp32", backend: str | None = None) -> Backend | None:
    """The backend a `Segmenter` (or a serving job) runs on.

    Args:
        providers: as `Segmenter.from_artifacts`: onnxruntime providers, or a selector alone ("openvino").
        precision: the precision the selector's runtime runs ("fp32", "bf16"; which graphs run
            is `lfm_deploy.runtime.precisions`' business).
        backend: a registered backend by name, instead of providers.

    Returns:
        The `Backend`, or None for onnxruntime with the given providers.

    Raises:
        InputError: an unknown backend, one without a session, a selector mixed with other
            providers, or a precision the selected runtime does not run.
    """
    if backend is not None:
        chosen = get_backend(backend)
        if chosen.session is None:
            raise InputError(f"backend {backend!r} runs through lfm-verify only (it has no session loader)",
                             api_hint="pass a backend with a session loader (docs/backends.md)")
        return chosen
    selector = selected_runtime(providers)
    if selector is None:
        return None
    rows = [b for b in backends().values() if b.selector == selector]
    for b in rows:
        if b.precision == precision:
            return b
    raise InputError(f"{rows[0].runtime} runs {', '.join(b.precision for b in rows)}, not {precision}",
                     api_hint=f"pass precision= one of {', '.join(b.precision for b in rows)}",
                     cli_hint=f"pass --precision with one of {', '.join(b.precision for b in rows)}")


def markdown_table() -> str:
    """docs/backends.md's table: one row per registered backend."""
    lines = ["| backend | runtime | device | precision | graphs | runs |", "|---|---|---|---|---|---|"]
    for b in backends().values():
        how = f"`providers='{b.selector}', precision='{b.precision}'`" if b.selector else "by name"
        lines.append(f"| `{b.name}` | {b.runtime} | {b.device} | {b.precision} | {b.graphs} | {b.description}; "
                     f"{'lfm-verify' if b.session is None else 'lfm-verify, Segmenter ' + how} |")
    return "\n".join(lines) + "\n"


#: The entry-point group through which installed packages add backends (`load_plugins`).
ENTRY_POINT_GROUP = "lfm_deploy.backends"


def load_plugins() -> list[str]:
    """Register the backends installed packages name in `ENTRY_POINT_GROUP` (a `Backend`, a list of
    them, or a module that calls `register`); returns the entry points loaded. A plugin that fails
    to load is logged and left out (docs/backends.md, "Adding a backend")."""
    import logging
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = point.load()
            for backend in [found] if isinstance(found, Backend) else found if isinstance(found, (list, tuple)) else []:
                if BACKENDS.get(backend.name) is not backend:
                    register(backend)
        except Exception as exc:  # a broken plugin must not take the built-in backends down with it
            logging.getLogger(__name__).warning("backend plugin %s (%s) not loaded: %s", point.name, point.value, exc)
            continue
        loaded.append(point.name)
    return loaded

