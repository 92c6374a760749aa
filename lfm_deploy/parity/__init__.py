"""Numerical parity, one stack for every backend and precision: runners (run phase), the
comparison phase (`compare`, pure numpy) and the seeded episodes every check runs on, used by
export validation (`exported`), lfm-verify, the reduced-precision `gate`, the fp16 range check
and the benchmarks. Attributes are imported lazily: importing the package costs nothing.
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
