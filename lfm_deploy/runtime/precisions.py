"""Which graphs run, in which precision: one meaning of `precision` for predict and serve.

An export holds its float32 graphs (`Manifest.reference_graphs`) and, for a reduced-precision
export (`lfm-export --precision fp16|int8|bf16`), the gated path the manifest's `graphs` name:
fp16 / int8 graph files, or (bf16) the float32 files run by OpenVINO in bf16. `precision` names
the path that runs:

- "auto" (or None): what the artifact was exported at; a bf16 export on onnxruntime (which has
  no bf16) runs its float32 graphs in fp32, and says so.
- "fp32": the float32 graphs, whatever the export's precision (every export has them).
- "bf16": the float32 graphs in OpenVINO bf16 (providers "openvino" only).
- "fp16", "int8": only on an export made at that precision; anything else is refused, naming
  what the artifact holds.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ..domains import EXPORT_PRECISIONS, RUN_PRECISIONS
from ..errors import InputError, ManifestError

log = logging.getLogger(__name__)

__all__ = ["EXPORT_PRECISIONS", "RUN_PRECISIONS", "VNNI_FLAGS", "RunPrecision", "exported_precision",
           "int8_may_saturate", "resolve_precision"]

#: CPU flags (Linux `/proc/cpuinfo`) of the int8 dot-product instructions that add int8 products
#: in 32 bits.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_may_saturate(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether onnxruntime's int8 kernels can saturate on this CPU: an x86 CPU without an int8
    dot product that adds in 32 bits (AVX512-VNNI, AVX-VNNI, AMX).

    There onnxruntime multiplies unsigned by signed bytes with `vpmaddubsw`, which adds pairs of
    products in 16 bits and saturates when both the activation and the weight are large: with
    8-bit weights an AMD EPYC with AVX2 only gave the 160 px head's int8 logits a relative error
    above 5%. Weights quantized to 7 bits (`reduce_range`) keep every pair below the 16-bit
    limit. An x86 CPU whose flags cannot be read counts as one that may saturate (the safe
    answer); other architectures do not have this kernel.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return True
    return not any(flag in flags for flag in VNNI_FLAGS)


@dataclass(frozen=True)
class RunPrecision:
    """The resolved precision of a runtime.

    Attributes:
        name: what runs: "fp32", "fp16", "bf16" or "int8".
        exported: what the artifact was exported at.
        files: {graph: file} to load, relative to the artifact directory (None: the manifest's
            `graphs` entries as they are).
        backend_precision: the precision the backend is asked for (OpenVINO's inference hint:
            "bf16" for bf16, else "fp32").
    """

    name: str
    exported: str
    files: dict | None
    backend_precision: str


def exported_precision(manifest) -> str:
    """The precision an artifact was exported at ("fp32" for exports that do not say)."""
    return manifest.served_precision.name


def resolve_precision(manifest, precision: str | None, *, openvino: bool, where: str = "the artifacts"
                      ) -> RunPrecision:
    """Resolve a requested precision against an artifact and a backend.

    Args:
        manifest: the artifact's `Manifest`.
        precision: one of `RUN_PRECISIONS`, or None ("auto").
        openvino: whether the graphs run on OpenVINO (else onnxruntime).
        where: the artifact's name in messages (its directory).

    Returns:
        The `RunPrecision`.

    Raises:
        InputError: an unknown precision, bf16 without OpenVINO, or a reduced precision the
            artifact was not exported at.
    """
    requested = "auto" if precision is None else precision
    if requested not in RUN_PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(RUN_PRECISIONS)}",
                         api_hint="pass precision='auto' (what the artifact was exported at)",
                         cli_hint="pass --precision auto (what the artifact was exported at)")
    exported = exported_precision(manifest)
    if requested == "auto":
        requested = exported
        if exported == "bf16" and not openvino:
            log.info("%s was exported for OpenVINO bf16; onnxruntime runs its float32 graphs in fp32 "
                     "(providers 'openvino' for bf16)", where)
            requested = "fp32"
    if requested == "bf16" and not openvino:
        raise InputError("precision bf16 runs on OpenVINO, not on onnxruntime providers",
                         api_hint="pass providers=['openvino'] with precision='bf16'",
                         cli_hint="pass --providers openvino with --precision bf16")
    if requested in ("fp16", "int8") and requested != exported:
        raise InputError(f"{where} was exported at {exported} and hold no {requested} graphs",
                         api_hint=f"pass precision='auto' ({exported}) or 'fp32', or export with precision='{requested}'",
                         cli_hint=f"pass --precision auto ({exported}) or fp32, or export with "
                                  f"`lfm export --precision {requested}`")
    if requested == "int8" and not openvino and not _reduced_range(manifest) and int8_may_saturate():
        log.warning("%s holds int8 graphs with 8-bit weights, which onnxruntime's int8 kernels can saturate on "
                    "this CPU (no AVX512-VNNI/AVX-VNNI): the masks may differ from what the export's gate "
                    "measured; export again on this CPU (7-bit weights) or run precision 'fp32'", where)
    files = None
    if requested in ("fp32", "bf16") and exported in ("fp16", "int8"):
        # The float32 graphs of a reduced-precision export; never its fp16/int8 files.
        files = dict(manifest.reference_graphs or {})
        if not {"encoder", "head"} <= set(files):
            raise ManifestError(f"{where} lists no float32 encoder/head graphs (reference_graphs) beside its "
                                f"{exported} ones; re-run lfm-export",
                                api_hint=f"pass precision='auto' ({exported})", cli_hint=f"pass --precision auto ({exported})")
    return RunPrecision(name=requested, exported=exported, files=files,
                        backend_precision="bf16" if requested == "bf16" else "fp32")


def _reduced_range(manifest) -> bool:
    """Whether the int8 graphs of `manifest` were quantized with 7-bit weights (`reduce_range`):
    the head's record in the precision details; False when it does not say (older exports)."""
    details = getattr(getattr(manifest, "precision", None), "details", None) or {}
    try:
        return bool(details["graphs"]["head"].get("reduce_range", False))
    except (KeyError, TypeError, AttributeError):
        return False
