"""Execution providers: short names -> onnxruntime EP names, and the "did we get them" check.

onnxruntime silently drops a requested execution provider it cannot load (only
`session.get_providers()` tells; docs/tensorrt.md, "onnxruntime execution providers"), so every
session is checked after creation and a missing accelerator is an error unless the caller allows
the CPU fallback.

A runtime that runs the graphs itself ("openvino", `lfm_deploy.runtime.backends.selectors`) is
not an onnxruntime provider and is given alone (docs/openvino.md).
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence, Union

from ..errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Short names accepted wherever providers are given (case-insensitive).
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT,
                    "dml": "DmlExecutionProvider", "directml": "DmlExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "rocm": "ROCMExecutionProvider",
                    "migraphx": "MIGraphXExecutionProvider"}

ProviderSpec = Union[str, tuple]


def entries(providers) -> list:
    """A providers argument as a list of entries (names or (name, options) pairs); None: []."""
    if providers is None:
        return []
    if isinstance(providers, str):
        return [p for p in providers.split(",") if p.strip()]
    return list(providers)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build can load, best first."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _canonical(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"execution provider {name!r} is not a name", api_hint="use e.g. 'cpu', 'cuda' or 'tensorrt'",
                         cli_hint="pass e.g. --providers cpu, --providers cuda or --providers tensorrt")
    key = name.strip()
    from .backends import selectors

    runtime = selectors().get(key.lower())
    if runtime is not None:
        raise InputError(
            f"{key.lower()!r} names the {runtime} runtime, not an onnxruntime execution provider",
            api_hint=f"pass providers='{key.lower()}' to Segmenter.from_artifacts (alone), or a backend of "
                     "lfm_deploy.runtime.backends; onnxruntime's own EP has its full name (e.g. "
                     "'OpenVINOExecutionProvider')",
            cli_hint=f"pass --providers {key.lower()} alone",
        )
    alias = PROVIDER_ALIASES.get(key.lower())
    if alias is not None:
        return alias
    import onnxruntime as ort

    for full in ort.get_all_providers():
        if full.lower() == key.lower() or full.lower() == key.lower() + "executionprovider":
            return full
    from .backends import selectors

    names = ", ".join(sorted(set(PROVIDER_ALIASES) | set(selectors())))
    raise InputError(
        f"unknown execution provider {name!r}",
        api_hint=f"use one of {names} or a full onnxruntime name (onnxruntime.get_all_providers())",
        cli_hint=f"pass --providers with one or more of {names} (comma-separated) or full onnxruntime names",
    )


def resolve_providers(providers: str | Sequence[ProviderSpec] | None) -> list[tuple[str, dict]]:
    """Normalise a providers argument to onnxruntime's (name, options) pairs.

    Args:
        providers: None (CPU only), a comma-separated string ("tensorrt,cuda,cpu"), or a list
            of names / (name, options dict) pairs. Short names (`PROVIDER_ALIASES`) and full
            onnxruntime names are accepted, case-insensitively.

    Returns:
        Deduplicated (full name, options) pairs in the given order, with the CPU EP appended
        as the last resort for nodes no accelerator takes (onnxruntime's own convention).

    Raises:
        InputError: an unknown provider name or a malformed entry, or a runtime's name such as
            "openvino" (not an onnxruntime provider; see `lfm_deploy.runtime.backends.select_backend`).
    """
    items = [CPU] if providers is None else entries(providers)
    if not items:
        raise InputError("providers is empty", api_hint="pass e.g. 'cpu' or ['cuda', 'cpu'] (or None for CPU)",
                         cli_hint="pass e.g. --providers cpu or --providers cuda,cpu")
    resolved: list[tuple[str, dict]] = []
    for entry in items:
        if isinstance(entry, tuple):
            if len(entry) != 2 or not isinstance(entry[1], dict):
                raise InputError(f"provider entry {entry!r} must be a name or a (name, options dict) pair")
            name, options = _canonical(entry[0]), dict(entry[1])
        else:
            name, options = _canonical(entry), {}
        if name not in (n for n, _ in resolved):
            resolved.append((name, options))
    if CPU not in (n for n, _ in resolved):
        resolved.append((CPU, {}))
    return resolved


def accelerators(resolved: Iterable[tuple[str, dict]]) -> list[str]:
    """The requested providers other than the CPU EP."""
    return [n for n, _ in resolved if n != CPU]


def check_available(resolved: list[tuple[str, dict]], allow_fallback: bool) -> list[tuple[str, dict]]:
    """Drop (with a warning) or refuse requested providers this build cannot load at all.

    Returns:
        The pairs that are worth handing to onnxruntime.

    Raises:
        BackendUnavailable: a requested accelerator is missing and `allow_fallback` is False.
    """
    available = set(available_providers())
    missing = [n for n in accelerators(resolved) if n not in available]
    if missing:
        message = (
            f"requested execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
            f"(available: {', '.join(sorted(available))})"
        )
        if not allow_fallback:
            install = "install onnxruntime-gpu (with CUDA/TensorRT libraries)"
            raise BackendUnavailable(message, api_hint=f"{install} or pass providers='cpu' or allow_fallback=True",
                                     cli_hint=f"{install} or pass --providers cpu or --allow-fallback")
        log.warning("%s; falling back to %s", message, ", ".join(n for n, _ in resolved if n not in missing))
    return [(n, o) for n, o in resolved if n not in missing]


def check_session(session, requested: list[tuple[str, dict]], allow_fallback: bool, what: str) -> list[str]:
    """Compare a session's active providers with what was requested.

    Returns:
        The session's active providers.

    Raises:
        BackendUnavailable: a requested accelerator is not active and `allow_fallback` is False.
    """
    active = list(session.get_providers())
    missing = [n for n in accelerators(requested) if n not in active]
    if missing:
        message = (
            f"{what}: asked for {', '.join(n for n, _ in requested)}, onnxruntime activated only "
            f"{', '.join(active)} ({', '.join(missing)} failed to load)"
        )
        if not allow_fallback:
            check = "check the CUDA/TensorRT installation"
            raise BackendUnavailable(message, api_hint=f"{check} or pass allow_fallback=True to accept the CPU",
                                     cli_hint=f"{check} or pass --allow-fallback to accept the CPU")
        log.warning("%s; continuing on %s", message, ", ".join(active))
    return active
