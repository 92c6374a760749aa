"""TensorRT-readiness lint for ONNX graphs, without TensorRT: ops, types, constant inputs, ranks.

Checks a graph against the onnx-tensorrt operator support matrix for TensorRT 10.0
(`tensorrt-10.0-onnx-ops.csv`, package data; DFT from 11.2) and, per Q/DQ node
(`_qdq_findings`), against TensorRT's explicit-quantization rules; both are listed in
docs/tensorrt.md ("What TensorRT 10 can import", "INT8").
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from lfm_deploy.errors import ExportError
from lfm_deploy.utils.files import MAX_GRAPH_BYTES, regular_file

__all__ = [
    "Finding",
    "LintReport",
    "OpSupport",
    "lint_onnx",
    "load_support_table",
]

_TABLE_FILE = "tensorrt-10.0-onnx-ops.csv"
#: TensorRT 11.2 added DFT through a cuFFT-backed plugin (release notes; not verified here).
_DFT_SINCE = (11, 2)
#: TensorRT tensors have at most 8 dimensions.
_MAX_RANK = 8

# ONNX element type -> the type names the support matrix uses.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8", TensorProto.BOOL: "BOOL", TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}
# Types TensorRT has no tensors of at all, whatever the op.
_NEVER_SUPPORTED = {
    TensorProto.DOUBLE: "float64", TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128", TensorProto.STRING: "string", TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16", TensorProto.UINT32: "uint32", TensorProto.UINT64: "uint64",
}
# The matrix's own spelling slips, read as meant.
_TYPE_TYPOS = {"INF64": "INT64"}
_INPUT_TYPOS = {"is_traning": "training_mode"}
# Restriction texts the lint acts on: "`axes` must be an initializer" / "a constant tensor",
# "`x_zero_point` must be zero" / "must be 0". Input names are resolved with ONNX's op schemas.
_CONSTANT_RULE = re.compile(r"`(\w+)` must be (?:an initializer|a constant tensor)")
_ZERO_RULE = re.compile(r"`(\w+)` must be (?:zero|0)\b")
# Q/DQ: the ops TensorRT's explicit quantization is read from (checked by `_qdq_findings`).
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: Per-axis (per-channel) QuantizeLinear/DequantizeLinear came with opset 13 (the `axis` attribute).
_PER_AXIS_OPSET = 13
_REQUANTIZE = "re-quantize with symmetric int8 (`lfm-export --precision int8`)"
# Resize attribute values the matrix lists as supported (absent attributes take ONNX defaults,
# which are all supported).
_RESIZE_ALLOWED = {
    "mode": {"nearest", "linear"},
    "coordinate_transformation_mode": {
        "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners",
    },
    "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
    "keep_aspect_ratio_policy": {"stretch"},
    "antialias": {0},
}


@dataclass(frozen=True)
class OpSupport:
    """One row of the operator support matrix.

    Attributes:
        op: ONNX operator name (default domain).
        supported: whether TensorRT imports it at all.
        types: type names (``FP32``, ``INT64``, ...) its data tensors may have; empty = any.
        restriction: the matrix's restriction text, empty if none.
    """

    op: str
    supported: bool
    types: FrozenSet[str] = frozenset()
    restriction: str = ""

    @property
    def constant_inputs(self) -> Tuple[str, ...]:
        """Names of the inputs the matrix requires to be initializers or constants."""
        return tuple(_INPUT_TYPOS.get(n, n) for n in _CONSTANT_RULE.findall(self.restriction))

    @property
    def zero_inputs(self) -> Tuple[str, ...]:
        """Names of the inputs the matrix requires to be zero (Q/DQ zero points)."""
        return tuple(_ZERO_RULE.findall(self.restriction))


@dataclass(frozen=True)
class Finding:
    """One problem found in the graph.

    Attributes:
        node: node name (or ``Op#index`` for unnamed nodes, ``graph input`` / ``initializer``
            for tensors that no node produces); subgraph nodes are prefixed with their path.
        op: operator type, empty for graph-level tensors.
        code: category: ``unsupported-op``, ``unsupported-type``, ``non-constant-input``,
            ``rank``, ``restriction``, ``shape-inference``; for Q/DQ nodes (explicit
            quantization) ``qdq-type`` (quantized type not int8/fp8/int4: uint8, int32 biases),
            ``qdq-zero-point`` (non-zero: asymmetric), ``qdq-constant`` (scale or zero point
            computed in the graph), ``qdq-scale`` (not positive and finite), ``qdq-axis``
            (per-channel on an activation, blocked scales, per-axis below opset 13).
        problem: what is wrong and, where there is one, what to do about it.
        severity: ``error`` (TensorRT will refuse the graph) or ``warning`` (check by hand).
    """

    node: str
    op: str
    code: str
    problem: str
    severity: str = "error"

    def to_dict(self) -> dict:
        """The finding as a JSON-ready dict."""
        return asdict(self)


@dataclass
class LintReport:
    """The result of `lint_onnx`: every finding, in graph order.

    Attributes:
        trt_version: the TensorRT version the graph was checked against.
        source: the model path, or the graph name for an in-memory model.
        findings: all findings.
        node_count: nodes examined (subgraphs included).
    """

    trt_version: str
    source: str
    findings: List[Finding] = field(default_factory=list)
    node_count: int = 0

    @property
    def errors(self) -> List[Finding]:
        """Findings TensorRT would fail on."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> List[Finding]:
        """Findings to check by hand."""
        return [f for f in self.findings if f.severity != "error"]

    @property
    def ok(self) -> bool:
        """True when no finding is an error (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict."""
        return {
            "trt_version": self.trt_version,
            "source": self.source,
            "ok": self.ok,
            "node_count": self.node_count,
            "error_count": len(self.errors),
            "warning_count": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_markdown(self) -> str:
        """The report as a Markdown section with one table row per finding."""
        verdict = "ready" if self.ok else "not ready"
        lines = [
            f"### TensorRT {self.trt_version} lint: `{self.source}`",
            "",
            f"**{verdict}**: {len(self.errors)} errors, {len(self.warnings)} warnings "
            f"in {self.node_count} nodes.",
        ]
        if self.findings:
            lines += ["", "| severity | node | op | check | problem |", "|---|---|---|---|---|"]
            for f in self.findings:
                cells = (f.severity, f"`{f.node}`", f.op, f.code, f.problem)
                lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def _parse_version(trt_version: Union[str, Tuple[int, ...]]) -> Tuple[int, ...]:
    try:
        if isinstance(trt_version, str):
            parts = tuple(int(p) for p in trt_version.strip().split("."))
        else:
            parts = tuple(int(p) for p in trt_version)
    except (TypeError, ValueError):
        parts = ()
    if not parts:
        raise ExportError(
            f"cannot read TensorRT version {trt_version!r}",
            api_hint="pass trt_version like '10.0' or '11.2'", cli_hint="pass --trt-version like 10.0 or 11.2",
        )
    if parts[0] < 10:
        raise ExportError(
            f"TensorRT {trt_version} is older than the 10.0 support table this lint uses",
            api_hint="pass trt_version='10.0' or later", cli_hint="pass --trt-version 10.0 or later",
        )
    return parts


def load_support_table(trt_version: Union[str, Tuple[int, ...]] = "10.0") -> Dict[str, OpSupport]:
    """The operator support matrix for a TensorRT version, keyed by op name.

    The matrix is TensorRT 10.0's; for later versions the only change modelled is DFT, which
    becomes supported from 11.2 (cuFFT plugin, per the release notes; not verified here).

    Args:
        trt_version: ``"10.0"``-style string or a version tuple, 10.0 or later.

    Returns:
        Dict from op name to `OpSupport`.

    Raises:
        ExportError: for an unreadable or pre-10 version.
    """
    version = _parse_version(trt_version)
    text = resources.files("lfm_deploy").joinpath("tensorrt", _TABLE_FILE).read_text("utf-8")
    table: Dict[str, OpSupport] = {}
    for row in csv.DictReader(io.StringIO(text)):
        types = frozenset(_TYPE_TYPOS.get(t.strip(), t.strip()) for t in row["types"].split(",") if t.strip())
        op = row["op"].strip()
        table[op] = OpSupport(op, row["supported"].strip().upper() == "Y", types, row["restrictions"].strip())
    if version >= _DFT_SINCE:
        table["DFT"] = OpSupport("DFT", True)
    return table


# --- graph walking (onnx's own protos and helpers) ----------------------------------------------
def _subgraphs(node: onnx.NodeProto) -> Iterator[Tuple[str, onnx.GraphProto]]:
    """(label, graph) of the bodies a node carries (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, helper.get_attribute_value(attr)
        elif attr.type == AttributeProto.GRAPHS:
            for i, sub in enumerate(helper.get_attribute_value(attr)):
                yield f"{attr.name}[{i}]", sub


def _walk(graph: onnx.GraphProto, prefix: str = "") -> Iterator[Tuple[str, onnx.NodeProto]]:
    """(display name, node) of every node, subgraphs included, in graph order."""
    for index, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}#{index}")
        yield name, node
        for label, sub in _subgraphs(node):
            yield from _walk(sub, f"{name}/{label}/")


class _Values:
    """Types, ranks, constants and producers of every value in a model (subgraphs included)."""

    def __init__(self, model: onnx.ModelProto):
        self.types: Dict[str, int] = {}
        self.ranks: Dict[str, int] = {}
        self.weights: Dict[str, Union[TensorProto, AttributeProto]] = {}  # initializers, Constant values
        self.producers: Dict[str, Tuple[str, str]] = {}  # value -> (node display name, op)
        self.nodes: Dict[str, onnx.NodeProto] = {}  # value -> the node producing it
        self.graph_inputs = {i.name for i in model.graph.input}
        graphs = [model.graph] + [g for _, node in _walk(model.graph) for _, g in _subgraphs(node)]
        for graph in graphs:
            for init in graph.initializer:
                self.weights[init.name] = init
                self.types[init.name], self.ranks[init.name] = init.data_type, len(init.dims)
            for info in list(graph.input) + list(graph.output) + list(graph.value_info):
                tensor = info.type.tensor_type
                if tensor.elem_type:
                    self.types[info.name] = tensor.elem_type
                if tensor.HasField("shape"):
                    self.ranks[info.name] = len(tensor.shape.dim)
        for name, node in _walk(model.graph):
            for out in node.output:
                if out:
                    self.producers.setdefault(out, (name, node.op_type))
                    self.nodes.setdefault(out, node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output and node.attribute:
                self.weights[node.output[0]] = node.attribute[0]  # value, value_float, value_ints, ...

    def value(self, name: str, base_dir: Optional[Path]) -> Optional[np.ndarray]:
        """A constant's value, or None when it cannot be read (e.g. external data not loaded)."""
        try:
            weight = self.weights[name]
            if isinstance(weight, AttributeProto):
                weight = helper.get_attribute_value(weight)
                if not isinstance(weight, TensorProto):
                    return np.asarray(weight)
            return numpy_helper.to_array(weight, str(base_dir) if base_dir else "")
        except (KeyError, OSError, ValueError, TypeError):
            return None


def _data_values(node: onnx.NodeProto) -> List[str]:
    """The values that carry an op's data type `T` (the matrix's types column); the others are
    indices, shapes or conditions with their own fixed types."""
    if node.op_type in ("If", "Loop", "Scan", "Shape", "Size"):
        return []
    if node.op_type == "Where":
        return [i for i in node.input[1:3] if i]
    if node.op_type == "Cast":
        return [n for n in (node.input[0], node.output[0]) if n]
    if not node.input:  # Constant, ConstantOfShape, Random*: the output
        return [o for o in node.output[:1] if o]
    return [i for i in node.input[:1] if i]


def _input_index(node: onnx.NodeProto, name: str, opset: int) -> Optional[int]:
    """Position of the input called `name` in the node's ONNX schema at this opset."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    names = [i.name for i in schema.inputs]
    return names.index(name) if name in names else None


# --- checks -------------------------------------------------------------------------------------
def _node_findings(name: str, node: onnx.NodeProto, table: Dict[str, OpSupport], values: _Values,
                   version: str, opset: int, base_dir: Optional[Path]) -> Iterator[Finding]:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        yield Finding(name, op, "unsupported-op",
                      f"op from domain {node.domain!r} is not a standard ONNX op; TensorRT needs a plugin")
        return
    support = table.get(op)
    if support is None or not support.supported:
        where = "in the TensorRT {v} support matrix" if support is None else "supported by TensorRT {v}"
        hint = ("; TensorRT >= 11.2 has DFT, use the matmul lowering before" if op == "DFT"
                else "; rewrite it with supported ops")
        yield Finding(name, op, "unsupported-op", f"{op} is not {where.format(v=version)}{hint}")
        return
    if op in _QDQ_OPS:
        yield from _qdq_findings(name, node, table, values, opset, base_dir)
    if support.types and op != "DequantizeLinear":  # DQ input types: `_qdq_findings`, with the reason
        for value in _data_values(node):
            elem = values.types.get(value)
            if elem is None or elem in _NEVER_SUPPORTED:
                continue  # unknown, or reported once for the tensor
            type_name = _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))
            if type_name not in support.types:
                yield Finding(name, op, "unsupported-type",
                              f"{op} takes {', '.join(sorted(support.types))}; {value!r} is {type_name}")
    for what in support.constant_inputs:
        index = _input_index(node, what, opset)
        value = node.input[index] if index is not None and index < len(node.input) else ""
        if value and value not in values.weights:
            yield Finding(name, op, "non-constant-input",
                          f"`{what}` input {value!r} is computed in the graph but must be an initializer or "
                          "Constant; fold it (e.g. `polygraphy surgeon sanitize --fold-constants`)")
    for what in () if op in _QDQ_OPS else support.zero_inputs:  # Q/DQ zero points: `_qdq_findings`
        index = _input_index(node, what, opset)
        value = node.input[index] if index is not None and index < len(node.input) else ""
        if not value:
            continue
        array = values.value(value, base_dir)
        if array is None:
            yield Finding(name, op, "non-constant-input", f"`{what}` {value!r} must be a constant zero")
        elif np.any(array.astype(np.float64) != 0):
            yield Finding(name, op, "restriction", f"`{what}` must be zero (TensorRT quantizes symmetrically)")
    if op == "Resize":
        for attr in node.attribute:
            allowed = _RESIZE_ALLOWED.get(attr.name)
            setting = helper.get_attribute_value(attr)
            setting = setting.decode() if isinstance(setting, bytes) else setting
            if allowed is not None and setting not in allowed:
                yield Finding(name, op, "restriction", f"Resize {attr.name}={setting!r} is unsupported "
                              f"(TensorRT takes {', '.join(map(str, sorted(allowed, key=str)))})")


def _is_weight(value: str, values: _Values) -> bool:
    """Whether a Q/DQ data input is a weight: a constant, or a constant quantized by a
    QuantizeLinear (the `Q(w) -> DQ` form of float weights), through Identity nodes."""
    for _ in range(8):
        if value in values.weights:
            return True
        node = values.nodes.get(value)
        if node is None or node.op_type not in ("Identity", "QuantizeLinear") or not node.input:
            return False
        value = node.input[0]
    return False


def _qdq_findings(name: str, node: onnx.NodeProto, table: Dict[str, OpSupport], values: _Values, opset: int,
                  base_dir: Optional[Path]) -> Iterator[Finding]:
    """Explicit-quantization rules for one QuantizeLinear/DequantizeLinear node.

    TensorRT quantizes symmetrically to int8, fp8 or int4 (the types of the matrix's
    DequantizeLinear row) with build-time constant, positive scales; activations take one scale
    per tensor, weights one per output channel (TensorRT docs, "Quantization Schemes" and the
    Quantize/Dequantize operator pages).
    """
    op = node.op_type
    quantize = op == "QuantizeLinear"
    x = node.input[0] if node.input else ""
    scale = node.input[1] if len(node.input) > 1 else ""
    zero = node.input[2] if len(node.input) > 2 else ""
    scale_name, zero_name = ("y_scale", "y_zero_point") if quantize else ("x_scale", "x_zero_point")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    # The quantized type: Q writes its zero point's type (ONNX default uint8 without one, unless
    # opset-21 `output_dtype` says otherwise); DQ reads it from its input.
    if quantize:
        qtype = values.types.get(zero) if zero else (attrs.get("output_dtype") or TensorProto.UINT8)
    else:
        qtype = values.types.get(x) or (values.types.get(zero) if zero else None)
    allowed = table.get("DequantizeLinear", OpSupport("DequantizeLinear", True)).types or {"INT8", "FP8", "INT4"}
    type_name = _TYPE_NAMES.get(qtype, TensorProto.DataType.Name(qtype)) if qtype else None
    type_ok = type_name is None or type_name in allowed
    if not type_ok:
        if qtype == TensorProto.UINT8:
            how = ("with no zero point, the ONNX default" if quantize and not zero
                   else "asymmetric activations, onnxruntime's QUInt8 default")
            problem = (f"{x!r} is quantized to uint8 ({how}); TensorRT quantizes to signed int8 with zero point 0: "
                       f"{_REQUANTIZE}")
        elif qtype == TensorProto.INT32 and not quantize:
            problem = (f"dequantizes int32 {x!r} (a quantized bias); TensorRT dequantizes "
                       f"{', '.join(sorted(allowed)).lower()} only: keep biases float (`lfm-export --precision int8` "
                       "does; onnxruntime: extra_options QuantizeBias=False)")
        else:
            problem = (f"{x!r} is quantized to {type_name.lower()}; TensorRT quantizes to "
                       f"{', '.join(sorted(allowed)).lower()} only: {_REQUANTIZE}")
        yield Finding(name, op, "qdq-type", problem)
    for what, value in ((scale_name, scale), (zero_name, zero)):
        if value and value not in values.weights:
            yield Finding(name, op, "qdq-constant",
                          f"`{what}` {value!r} is computed in the graph; TensorRT needs Q/DQ scales and zero points "
                          "as build-time constants (initializers or Constant nodes): fold it "
                          "(`polygraphy surgeon sanitize --fold-constants`) or re-quantize")
    if zero and zero in values.weights and type_ok:
        array = values.value(zero, base_dir)
        if array is not None and np.any(array.astype(np.float64) != 0):
            shown = np.unique(array)[:4].tolist()
            yield Finding(name, op, "qdq-zero-point",
                          f"`{zero_name}` {zero!r} is {shown} (asymmetric); TensorRT quantizes symmetrically, "
                          f"zero point 0: {_REQUANTIZE}")
    array = values.value(scale, base_dir) if scale in values.weights else None
    if array is not None:
        bad = ~np.isfinite(array.astype(np.float64)) | (array.astype(np.float64) <= 0)
        if np.any(bad):
            yield Finding(name, op, "qdq-scale",
                          f"`{scale_name}` {scale!r} has {int(bad.sum())} of {array.size} values that are not "
                          f"positive and finite (e.g. {array.reshape(-1)[np.argmax(bad.reshape(-1))]!r}); TensorRT "
                          "needs positive finite scales: recalibrate")
        rank, size = array.ndim, array.size
    else:
        rank, size = values.ranks.get(scale), None
    if rank is None or rank == 0 or (rank == 1 and size == 1):
        return  # per tensor (or unknown)
    if rank >= 2:
        yield Finding(name, op, "qdq-axis",
                      f"`{scale_name}` {scale!r} has rank {rank} (blocked quantization), which TensorRT takes for "
                      f"int4 weights only: {_REQUANTIZE}")
        return
    axis = attrs.get("axis", 1)
    if opset < _PER_AXIS_OPSET:
        yield Finding(name, op, "qdq-axis",
                      f"per-channel {op} (a 1-D `{scale_name}`) needs opset >= {_PER_AXIS_OPSET} (the `axis` "
                      f"attribute); the model imports opset {opset}: re-export with a newer opset")
    if not _is_weight(x, values):
        count = f"{size} scales" if size else "a 1-D scale"
        yield Finding(name, op, "qdq-axis",
                      f"per-channel quantization (axis={axis}, {count}) of activation {x!r}: TensorRT quantizes "
                      "activations per tensor (one scalar scale) and weights (constant inputs) per channel: "
                      f"{_REQUANTIZE}")


def _tensor_findings(values: _Values) -> Iterator[Finding]:
    """Never-supported types and ranks above 8, once per tensor, named by its producer."""
    names = sorted(set(values.types) | set(values.ranks), key=lambda n: (n not in values.graph_inputs, n))
    for name in names:
        default = "graph input" if name in values.graph_inputs else "initializer"
        producer, op = values.producers.get(name, (default, ""))
        elem = values.types.get(name)
        if elem in _NEVER_SUPPORTED:
            yield Finding(producer, op, "unsupported-type",
                          f"tensor {name!r} is {_NEVER_SUPPORTED[elem]}, which TensorRT has no tensors of; "
                          "export in float32 (complex values as a trailing dimension of 2)")
        if values.ranks.get(name, 0) > _MAX_RANK:
            yield Finding(producer, op, "rank",
                          f"tensor {name!r} has rank {values.ranks[name]}; TensorRT tensors have at most {_MAX_RANK} dims")


def _load(model: Union[onnx.ModelProto, str, os.PathLike]) -> Tuple[onnx.ModelProto, str, Optional[Path]]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<in-memory model>", None
    path = Path(model)
    if not os.path.lexists(path):
        raise ExportError(f"cannot read ONNX model {str(path)!r}: no such file",
                          api_hint="pass the path of a .onnx file")
    # A FIFO would block the read forever and /dev/zero never end: only regular files are read.
    regular_file(path, "ONNX model", MAX_GRAPH_BYTES, error=ExportError, hint="pass the path of a .onnx file")
    try:
        # Weights are not needed (small constants are read on demand), and a missing
        # `.onnx.data` file must not stop a lint.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, files OSError
        raise ExportError(f"cannot read ONNX model {str(path)!r}: {exc}", api_hint="pass the path of a .onnx file") from exc
    if not proto.ir_version or not proto.HasField("graph"):
        raise ExportError(f"{str(path)!r} is not an ONNX model (no IR version or graph)")
    return proto, str(path), path.parent


def lint_onnx(model: Union[onnx.ModelProto, str, os.PathLike], trt_version: str = "10.0") -> LintReport:
    """Check an ONNX model for what TensorRT's ONNX parser would reject, without TensorRT.

    Every check of the module docstring, on every node (subgraphs included) and tensor. Types
    and ranks come from ONNX shape inference; values it cannot infer are not judged.

    Args:
        model: a loaded `onnx.ModelProto` or the path of a `.onnx` file (external weights are
            not loaded).
        trt_version: target TensorRT version, ``"10.0"`` or later.

    Returns:
        A `LintReport`; `report.ok` is False when any finding is an error.

    Raises:
        ExportError: if the file cannot be read as an ONNX model, or for a bad `trt_version`.
    """
    table = load_support_table(trt_version)
    proto, source, base_dir = _load(model)
    findings: List[Finding] = []
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference errors come as several onnx/C++ exception types
        findings.append(Finding("", "", "shape-inference", f"ONNX shape inference failed ({exc}); type and rank "
                                "checks cover declared tensors only", "warning"))
    values = _Values(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), onnx.defs.onnx_opset_version())
    node_count = 0
    for name, node in _walk(proto.graph):
        node_count += 1
        findings.extend(_node_findings(name, node, table, values, trt_version, opset, base_dir))
    findings.extend(_tensor_findings(values))
    return LintReport(trt_version=str(trt_version), source=source, findings=findings, node_count=node_count)
