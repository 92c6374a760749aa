"""Numerical parity, one stack for every backend and precision: Polygraphy-style runners (run
phase), the comparison phase with one tolerance type and the model's mask rules, and the seeded
episodes every check runs on. Export validation (`exported.check_export`), lfm-verify
(`lfm_deploy.verify`), the fp16 range check and the benchmarks all use it.

Modules: `compare` (statistics, `Tolerances`, `compare_output`; pure numpy, imported by the
domain registry), `episodes` (seeded validation episodes), `runners` (one `BaseRunner`
interface for eager torch, onnxruntime on the runtime's session loader, and the split
encoder/head chain; TensorRT through Polygraphy's `TrtRunner`), `numerics` (the eager-side
quantities the mask rules need: ACPA sign ties), `exported` (an export's graphs against the
eager model), `gate` (the accuracy gate of every reduced precision against the eager model). Attributes are imported lazily: importing the package costs nothing.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ErrorStats": "compare", "MaskStats": "compare", "OutputCheck": "compare", "Tolerance": "compare",
    "Tolerances": "compare", "compare_output": "compare", "error_stats": "compare", "foreground_iou": "compare",
    "mask_stats": "compare", "check_export": "exported",
    "parity_episodes": "episodes", "validation_episode": "episodes",
    "GateData": "gate", "GateReport": "gate", "eager_reference": "gate", "run_gate": "gate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
