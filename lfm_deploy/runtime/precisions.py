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
from dataclasses import dataclass

from ..domains import EXPORT_PRECISIONS, RUN_PRECISIONS
from ..errors import InputError, ManifestError

log = logging.getLogger(__name__)

__all__ = ["EXPORT_PRECISIONS", "RUN_PRECISIONS", "RunPrecision", "exported_precision", "resolve_precision"]


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
