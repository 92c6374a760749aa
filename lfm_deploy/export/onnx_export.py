"""torch -> ONNX for one graph: trace, then simplify, check and save with deterministic bytes
(`finish.finish_graph`, here or in a background process)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import onnx
import torch

from ..contract import TensorSpec
from ..errors import ExportError
from .finish import DYNAMIC_DIMS, GraphFinisher, finish_graph, quiet

log = logging.getLogger(__name__)

#: Default opset: DFT-20 takes its axis as an input; everything else is stable at 20.
DEFAULT_OPSET = 20


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (warnings, stdout, torch.onnx's log) unless debugging."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    # The dynamo exporter also logs through `logging` (e.g. "torchvision is not installed").
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with quiet():
            yield
    finally:
        exporter_log.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple,
    path: str | os.PathLike,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    simplify: bool = True,
    finisher: GraphFinisher | None = None,
) -> onnx.ModelProto | None:
    """Export `module` to a single self-contained ONNX file and check it.

    Args:
        module: the graph wrapper (in eval mode).
        example_inputs: tensors matching `inputs`.
        path: the .onnx file to write (no external data file: the model is ~100 MB).
        inputs, outputs: the contract; names become the graph's tensor names, "B"/"N" dims
            become dynamic.
        opset: ONNX opset.
        dynamo: use the dynamo exporter (needed to lower torch.fft to ONNX DFT); otherwise the
            TorchScript exporter, which is faster and gives compact graphs for matmul lowering.
        simplify: fold constants and remove redundant nodes with onnxslim.
        finisher: finish the graph (simplify, check, save) in this background finisher and
            return once it is traced; the file exists after `finisher.wait()`.

    Returns:
        The written model (as saved on disk), or None when a finisher writes it.

    Raises:
        ExportError: the exporter or the ONNX checker failed (from `finisher.wait()` for a
            graph finished in the background).
    """
    path = Path(path)
    names_in = [s.name for s in inputs]
    names_out = [s.name for s in outputs]
    try:
        with torch.no_grad(), _quiet():
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=1024)
                dynamic_shapes = {
                    s.name: {i: batch for i, d in enumerate(s.shape) if d in DYNAMIC_DIMS} or None for s in inputs
                }
                program = torch.onnx.export(
                    module, example_inputs, dynamo=True, opset_version=opset,
                    input_names=names_in, output_names=names_out, dynamic_shapes=dynamic_shapes,
                    verbose=False, optimize=True,
                )
                model = program.model_proto
            else:
                buffer = io.BytesIO()
                torch.onnx.export(
                    module, example_inputs, buffer, dynamo=False, opset_version=opset,
                    input_names=names_in, output_names=names_out, do_constant_folding=True,
                    dynamic_axes={s.name: {i: d for i, d in enumerate(s.shape) if d in DYNAMIC_DIMS}
                                  for s in inputs + outputs if any(d in DYNAMIC_DIMS for d in s.shape)},
                )
                model = onnx.load_from_string(buffer.getvalue())
    except Exception as exc:  # the exporters raise many types; report one clear error
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: {str(exc)[:500]}") from exc
    if finisher is not None:
        finisher.submit(model, path, inputs + outputs, simplify=simplify)
        return None
    return finish_graph(model, path, inputs + outputs, simplify=simplify)
