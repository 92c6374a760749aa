"""Library versions and the machine, recorded once for manifests, reports and benchmarks.

Pure Python: a library that is not installed (torch in the runtime, TensorRT anywhere but a GPU
machine) is reported as None, never imported eagerly by importing this module.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

#: The libraries a record lists, each with the distributions that provide it (first found wins).
LIBRARIES = {
    "lfm_deploy": ("lfm-deploy",), "numpy": ("numpy",), "torch": ("torch",), "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "onnxslim": ("onnxslim",),
    "polygraphy": ("polygraphy",), "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "openvino": ("openvino",), "ray": ("ray",),
}


def library_versions(names=None) -> dict:
    """{library: installed version or None}, plus the Python version.

    Read from the installed distributions' metadata: nothing is imported, so the torch-free
    runtime can call it and TensorRT without CUDA libraries does not break it.
    """
    versions = {"python": platform.python_version()}
    for name in names or LIBRARIES:
        versions[name] = None
        for dist in LIBRARIES.get(name, (name,)):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


#: The instruction-set extensions that decide reduced-precision speed on x86 CPUs, as /proc/cpuinfo
#: names them and as reports print them. bf16 and int8 run several times faster with AMX (Intel
#: Xeon, 4th generation on) than with AVX512-BF16/VNNI alone (AMD EPYC), so every figure names them.
ISA_FLAGS = {"avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI",
             "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def _cpuinfo() -> tuple[str | None, list[str] | None]:
    """(model name, ISA_FLAGS present) from /proc/cpuinfo; (None, None) where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))), [])
    return name, [label for flag, label in ISA_FLAGS.items() if flag in flags]


def machine(threads: int | None = None) -> dict:
    """Platform, CPU model and its ISA extensions, logical CPUs and (with psutil) physical cores and memory."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "logical_cpus": os.cpu_count()}
    if threads is not None:
        info["threads_used"] = threads
    name, isa = _cpuinfo()
    info["cpu"] = name or platform.processor() or None
    if isa is not None:
        info["isa"] = isa
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def describe_cpu(info: dict) -> str:
    """The CPU of a `machine()` record in one phrase for a report: model, then what it has of AVX-512,
    AVX512-BF16/VNNI and AMX ("no AMX" said outright on x86, where it decides bf16/int8 speed)."""
    cpu = info.get("cpu") or "unknown CPU"
    isa = info.get("isa")
    if isa is None or info.get("machine") not in (None, "x86_64", "AMD64"):  # older record, or not x86
        return cpu
    shown = [label for label in isa if not label.startswith("AMX")]
    shown.append("AMX" if any(label.startswith("AMX") for label in isa) else "no AMX")
    return f"{cpu} ({', '.join(shown)})"


__all__ = ["ISA_FLAGS", "LIBRARIES", "describe_cpu", "library_versions", "machine"]
