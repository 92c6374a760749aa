"""Reduced precision: fp16 graphs with float32 islands after a range check on real activations
(`fp16`; TensorRT builds its fp16 engines from them), int8 QDQ graphs (`int8`), and `reduce_precision` (`pipeline`), which makes
the fp16 / int8 graphs of an export (or picks OpenVINO bf16) and runs the one accuracy gate
(`lfm_deploy.parity.gate`) against the eager float32 model. docs/precision.md has the design and
the measured figures."""

from __future__ import annotations

import importlib

_EXPORTS = {"Int8Graph": "int8", "quantize_int8": "int8", "PRECISIONS": "pipeline", "PrecisionResult": "pipeline",
            "reduce_precision": "pipeline"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
