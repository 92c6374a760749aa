"""torch -> ONNX for one graph: export, check, optional simplification, deterministic bytes."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import onnx
import torch

from ..errors import ExportError
from ..contract import TensorSpec

log = logging.getLogger(__name__)

#: Default opset: DFT-20 takes its axis as an input; everything else is stable at 20.
DEFAULT_OPSET = 20
DYNAMIC_DIMS = ("B", "N")


def _dynamic_axes(specs: list[TensorSpec]) -> dict:
    return {s.name: {i: d for i, d in enumerate(s.shape) if d in DYNAMIC_DIMS} for s in specs if any(d in DYNAMIC_DIMS for d in s.shape)}


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (warnings and stdout) unless debugging."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    # The dynamo exporter also logs through `logging` (e.g. "torchvision is not installed").
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
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
) -> onnx.ModelProto:
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

    Returns:
        The written model (without weights loaded twice: as saved on disk).

    Raises:
        ExportError: the exporter or the ONNX checker failed.
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
                    input_names=names_in, output_names=names_out, dynamic_axes=_dynamic_axes(inputs + outputs),
                    do_constant_folding=True,
                )
                model = onnx.load_from_string(buffer.getvalue())
    except Exception as exc:  # the exporters raise many types; report one clear error
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: {str(exc)[:500]}") from exc
    if simplify:
        model = _simplify(model)
    _dedupe_initializers(model)
    # Stable metadata so that re-exports of the same inputs give byte-identical files.
    model.producer_name = "lfm-deploy"
    model.doc_string = ""
    _apply_contract_shapes(model, inputs + outputs)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportError(f"the ONNX checker rejected {path.name}: {str(exc)[:500]}") from exc
    onnx.save_model(model, str(path), save_as_external_data=False)
    return model


def _dedupe_initializers(model: onnx.ModelProto) -> int:
    """Keep one copy of byte-identical initializers; returns the bytes saved.

    The TorchScript exporter folds BatchNorm into each Conv call site, so a backbone applied to
    the query and to the support lands in the file twice (~95 MB each).
    """
    import hashlib

    graph = model.graph
    canonical: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    saved = 0
    for init in graph.initializer:
        data = init.raw_data if init.HasField("raw_data") else init.SerializeToString()
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data).hexdigest())
        if key in canonical:
            rename[init.name] = canonical[key]
            saved += len(data)
        else:
            canonical[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    graph_inputs = {i.name for i in graph.input}
    if graph_inputs & set(rename):  # initializers that double as graph inputs must stay
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for value in list(graph.value_info):
        if value.name in rename:
            graph.value_info.remove(value)
    log.debug("deduplicated %d initializers (%.1f MB)", len(rename), saved / 1e6)
    return saved


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:  # optional: simplification is a speed/size nicety, not correctness
        log.info("onnxslim is not installed; skipping graph simplification")
        return model
    with _quiet():
        return onnxslim.slim(model)


def _apply_contract_shapes(model: onnx.ModelProto, specs: list[TensorSpec]) -> None:
    """Write the contract's shapes onto the graph's inputs and outputs.

    Dynamic dims get the contract's names ("B"/"N") whatever the exporter called them, and
    static dims their values: the TorchScript exporter leaves output dims computed through
    Resize symbolic (e.g. "Resizelogits_dim_1"), which would hide the static contract from
    consumers such as TensorRT and Triton.
    """
    by_name = {s.name: s for s in specs}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = by_name.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in spec.shape:
            dim = shape.dim.add()
            if d in DYNAMIC_DIMS:
                dim.dim_param = d
            else:
                dim.dim_value = int(d)
