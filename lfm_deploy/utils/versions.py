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


def machine(threads: int | None = None) -> dict:
    """Platform, CPU model, logical CPUs and (with psutil) physical cores and memory."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "logical_cpus": os.cpu_count()}
    if threads is not None:
        info["threads_used"] = threads
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        info["cpu"] = platform.processor() or None
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


__all__ = ["LIBRARIES", "library_versions", "machine"]
