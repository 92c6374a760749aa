"""TensorRT-readiness lint for ONNX graphs, without TensorRT: ops, types, constants, ranks.

TensorRT cannot be installed on the development and CI machines (DEPLOY.md), so what can be
checked from the graph alone is checked here against the onnx-tensorrt operator support matrix
for TensorRT 10.0 (`tensorrt-10.0-onnx-ops.csv`, package data): unsupported operators, tensor
types TensorRT has no kernels for (float64, complex, ...), op inputs the parser needs as
build-time constants (`axes` of reductions, Slice, Squeeze, ...), tensors of rank above 8, and
the other restrictions of the matrix that a look at attributes and inferred shapes can decide.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lfm_deploy.errors import ExportError

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
_TOPK_MAX_K = 3840

# ONNX element type -> the type names the support matrix uses.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}
# Types TensorRT has no tensors of at all, whatever the op.
_NEVER_SUPPORTED = {
    TensorProto.DOUBLE: "float64",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
    TensorProto.STRING: "string",
    TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
}
# The matrix's own spelling slips, read as meant.
_TYPE_TYPOS = {"INF64": "INT64"}


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


@dataclass(frozen=True)
class Finding:
    """One problem found in the graph.

    Attributes:
        node: node name (or ``Op#index`` for unnamed nodes, ``graph input`` / ``initializer``
            for tensors that no node produces); subgraph nodes are prefixed with their path.
        op: operator type, empty for graph-level tensors.
        code: category: ``unsupported-op``, ``unsupported-type``, ``non-constant-input``,
            ``rank``, ``restriction``, ``shape-inference``.
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
                lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
            f"cannot read TensorRT version {trt_version!r}; pass trt_version like '10.0' or '11.2'"
        )
    if parts[0] < 10:
        raise ExportError(
            f"TensorRT {trt_version} is older than the 10.0 support table this lint uses; "
            "pass trt_version='10.0' or later"
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
    text = resources.files("lfm_deploy").joinpath("export", _TABLE_FILE).read_text("utf-8")
    table: Dict[str, OpSupport] = {}
    for row in csv.DictReader(io.StringIO(text)):
        types = frozenset(
            _TYPE_TYPOS.get(t.strip(), t.strip()) for t in row["types"].split(",") if t.strip()
        )
        table[row["op"].strip()] = OpSupport(
            op=row["op"].strip(),
            supported=row["supported"].strip().upper() == "Y",
            types=types,
            restriction=row["restrictions"].strip(),
        )
    if version >= _DFT_SINCE:
        table["DFT"] = OpSupport("DFT", True, frozenset(), "")
    return table


class _Context:
    """Types, shapes and constants of every value in a model (subgraphs included)."""

    def __init__(self, model: onnx.ModelProto, base_dir: Optional[Path]):
        self.base_dir = base_dir
        self.types: Dict[str, int] = {}
        self.shapes: Dict[str, Optional[List[Optional[int]]]] = {}
        self.initializers: Dict[str, TensorProto] = {}
        self.constant_nodes: Dict[str, onnx.NodeProto] = {}
        # value name -> (producing node's display name, its op type)
        self.producers: Dict[str, Tuple[str, str]] = {}
        for name, node in _nodes(model.graph):
            for out in node.output:
                if out:
                    self.producers.setdefault(out, (name, node.op_type))
        self.graph_inputs = {i.name for g in _graphs(model.graph) for i in g.input}
        for graph in _graphs(model.graph):
            for init in graph.initializer:
                self.initializers[init.name] = init
                self.types[init.name] = init.data_type
                self.shapes[init.name] = list(init.dims)
            for info in list(graph.input) + list(graph.output) + list(graph.value_info):
                self._add_value_info(info)
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                    for out in node.output:
                        self.constant_nodes[out] = node

    def _add_value_info(self, info: onnx.ValueInfoProto) -> None:
        if not info.type.HasField("tensor_type"):
            return
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            self.types[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            self.shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            ]

    def rank(self, name: str) -> Optional[int]:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def is_constant(self, name: str) -> bool:
        """An initializer or a Constant node's output: what the parser turns into weights."""
        return name in self.initializers or name in self.constant_nodes

    def value(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant input, or None if it is not constant or cannot be read."""
        try:
            if name in self.initializers:
                base = str(self.base_dir) if self.base_dir is not None else ""
                return numpy_helper.to_array(self.initializers[name], base)
            node = self.constant_nodes.get(name)
            if node is not None:
                for attr in node.attribute:
                    if attr.name == "value":
                        return numpy_helper.to_array(attr.t)
                    if attr.name in ("value_float", "value_int"):
                        return np.asarray(onnx.helper.get_attribute_value(attr))
                    if attr.name in ("value_floats", "value_ints"):
                        return np.asarray(onnx.helper.get_attribute_value(attr))
        except (OSError, ValueError, TypeError):
            return None
        return None


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _nodes(graph: onnx.GraphProto, prefix: str = "") -> Iterator[Tuple[str, onnx.NodeProto]]:
    for index, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}#{index}")
        yield name, node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g, f"{name}/{attr.name}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from _nodes(sub, f"{name}/{attr.name}[{i}]/")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


# --- restriction checks: one per op whose matrix row has a restriction -------------------------
# Each returns (code, problem, severity) triples; the problem quotes the matrix where it can.
_Issue = Tuple[str, str, str]
_Check = Callable[[onnx.NodeProto, _Context], Iterable[_Issue]]


def _broken(problem: str) -> _Issue:
    return ("restriction", problem, "error")


def _not_constant(problem: str) -> _Issue:
    return ("non-constant-input", problem, "error")


def _constant_input(index: int, what: str) -> _Check:
    def check(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
        name = _input(node, index)
        if name and not ctx.is_constant(name):
            yield _not_constant(
                f"`{what}` input {name!r} is computed in the graph but must be an initializer "
                "or Constant; fold it (e.g. `polygraphy surgeon sanitize --fold-constants`)"
            )

    return check


def _dilations_ones(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    dilations = _attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        yield _broken(f"`dilations` must be empty or all ones, got {list(dilations)}")


def _pool_rank(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    rank = ctx.rank(_input(node, 0))
    if rank is not None and rank not in (4, 5):
        yield _broken(f"only 2D or 3D pooling is supported, input has rank {rank}")


def _maxpool_indices(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    if len(node.output) > 1 and node.output[1]:
        yield _broken("the `Indices` output of MaxPool is unsupported")


def _constant_attrs(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    for name in ("sparse_value", "value_string", "value_strings"):
        if _attr(node, name) is not None:
            yield _broken(f"Constant attribute `{name}` is unsupported")


def _zero_point(index: int, what: str) -> _Check:
    def check(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
        name = _input(node, index)
        if not name:
            return
        value = ctx.value(name)
        if value is None:
            yield _not_constant(f"`{what}` must be a constant zero, {name!r} is not constant")
        elif np.any(value.astype(np.float64) != 0):
            yield _broken(f"`{what}` must be zero")

    return check


def _dropout_training(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    name = _input(node, 2)
    if not name:
        return
    value = ctx.value(name)
    if value is None:
        yield _not_constant("`training_mode` must be an initializer evaluating to False")
    elif bool(np.any(value)):
        yield _broken("`training_mode` must evaluate to False (export in eval mode)")


def _static_input(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    shape = ctx.shapes.get(_input(node, 0))
    if shape is not None and any(d is None for d in shape):
        yield _broken("`input` must have static dimensions")


def _rank_is(allowed: Tuple[int, ...], what: str) -> _Check:
    def check(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
        rank = ctx.rank(_input(node, 0))
        if rank is not None and rank not in allowed:
            yield _broken(f"{what}, input has rank {rank}")

    return check


def _symmetric_pads(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    pads = _attr(node, "pads")
    if pads:
        half = len(pads) // 2
        if list(pads[:half]) != list(pads[half:]):
            yield _broken(f"`pads` must be equal at the beginning and end, got {list(pads)}")


def _bidirectional_activations(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    activations = [
        a.decode() if isinstance(a, bytes) else a for a in _attr(node, "activations", [])
    ]
    half = len(activations) // 2
    bidirectional = _attr(node, "direction", "forward") == "bidirectional"
    if bidirectional and activations[:half] != activations[half:]:
        yield _broken("bidirectional: activation functions must be the same for both directions")


def _lstm_attrs(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    yield from _bidirectional_activations(node, ctx)
    if _attr(node, "input_forget", 0) != 0:
        yield _broken("`input_forget` must be 0")
    if _attr(node, "layout", 0) != 0:
        yield _broken("`layout` must be 0")


def _hardmax_axis(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    shape = ctx.shapes.get(_input(node, 0))
    if shape:
        axis = _attr(node, "axis", -1)
        if -len(shape) <= axis < len(shape) and shape[axis] is None:
            yield _broken(f"the `axis` ({axis}) dimension must be a build-time constant")


def _if_branches(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    then_graph, else_graph = _attr(node, "then_branch"), _attr(node, "else_branch")
    if then_graph is None or else_graph is None:
        return
    for a, b in zip(then_graph.output, else_graph.output):
        if a.name == b.name:
            yield _broken(f"both branches output a tensor named {a.name!r}; names must differ")
        rank_a, rank_b = ctx.rank(a.name), ctx.rank(b.name)
        if rank_a is not None and rank_b is not None and rank_a != rank_b:
            yield _broken(f"branch outputs {a.name!r}/{b.name!r} differ in rank")


def _first_output_only(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    if any(out for out in node.output[1:]):
        yield _broken("only the first output `Y` is supported")


def _random_seed(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    if _attr(node, "seed") is not None:
        yield ("restriction", "`seed` is ignored by TensorRT", "warning")


_RESIZE_COORDINATE_MODES = {
    "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners",
}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _resize_attrs(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    mode = _attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        yield _broken(f"resize mode {mode!r} unsupported (nearest, linear)")
    transform = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if transform not in _RESIZE_COORDINATE_MODES:
        yield _broken(f"coordinate_transformation_mode {transform!r} unsupported")
    if mode == "nearest":
        nearest = _attr(node, "nearest_mode", "round_prefer_floor")
        if nearest not in _RESIZE_NEAREST_MODES:
            yield _broken(f"nearest_mode {nearest!r} unsupported")
    policy = _attr(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        yield _broken(f"keep_aspect_ratio_policy {policy!r} unsupported (stretch only)")
    if _attr(node, "antialias", 0):
        yield _broken("antialiasing is not supported")
    axes = _attr(node, "axes")
    scales = _input(node, 2)
    rank = ctx.rank(_input(node, 0))
    if axes is not None and scales and not ctx.is_constant(scales):
        if rank is None or list(axes) != list(range(rank)):
            yield _broken("with a tensor `scales` input, `axes` must be 0..rank-1")


def _scatternd_reduction(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    reduction = _attr(node, "reduction", "none")
    if reduction != "none":
        yield _broken(f"`reduction` ({reduction!r}) is not supported")


def _topk(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
    if _attr(node, "sorted", 1) != 1:
        yield _broken("`sorted` must be 1")
    name = _input(node, 1)
    k = ctx.value(name) if name else None
    if name and k is None:
        yield (
            "restriction",
            f"`K` ({name!r}) is not a constant; it must stay below {_TOPK_MAX_K}",
            "warning",
        )
    elif k is not None and int(np.max(k)) >= _TOPK_MAX_K:
        yield _broken(f"`K` = {int(np.max(k))} must be less than {_TOPK_MAX_K}")


def _all(*checks: _Check) -> _Check:
    def check(node: onnx.NodeProto, ctx: _Context) -> Iterable[_Issue]:
        for c in checks:
            yield from c(node, ctx)

    return check


_REDUCE_OPS = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
)

_RESTRICTION_CHECKS: Dict[str, _Check] = {
    **{op: _constant_input(1, "axes") for op in _REDUCE_OPS},
    "Slice": _constant_input(3, "axes"),
    "Pad": _constant_input(3, "axes"),
    "Squeeze": _constant_input(1, "axes"),
    "Unsqueeze": _constant_input(1, "axes"),
    "CumSum": _constant_input(1, "axis"),
    "OneHot": _constant_input(1, "depth"),
    "AveragePool": _all(_pool_rank, _dilations_ones),
    "MaxPool": _all(_pool_rank, _dilations_ones, _maxpool_indices),
    "LpPool": _dilations_ones,
    "Constant": _constant_attrs,
    "DeformConv": _all(_rank_is((3, 4), "only 1D or 2D spatial dimensions"), _symmetric_pads),
    "DequantizeLinear": _zero_point(2, "x_zero_point"),
    "QuantizeLinear": _zero_point(2, "y_zero_point"),
    "Dropout": _dropout_training,
    "EyeLike": _static_input,
    "GridSample": _rank_is((4,), "input must be 4D"),
    "GRU": _bidirectional_activations,
    "RNN": _bidirectional_activations,
    "LSTM": _lstm_attrs,
    "Hardmax": _hardmax_axis,
    "If": _if_branches,
    "LayerNormalization": _first_output_only,
    "RandomNormal": _random_seed,
    "RandomNormalLike": _random_seed,
    "RandomUniform": _random_seed,
    "RandomUniformLike": _random_seed,
    "Resize": _resize_attrs,
    "ScatterND": _scatternd_reduction,
    "TopK": _topk,
}

#: Matrix restrictions deliberately not checked, with the reason (kept in step by a test).
UNCHECKED_RESTRICTIONS: Dict[str, str] = {
    "Loop": "trip counts and carried shapes are only known when the loop runs",
}

# Which inputs/outputs carry the op's data type `T` (the matrix's types column); the others are
# indices, shapes or conditions with their own fixed types.
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform"}
_UNTYPED = {"If", "Loop", "Scan", "Shape", "Size"}


def _typed_values(node: onnx.NodeProto) -> List[str]:
    if node.op_type in _UNTYPED:
        return []
    if node.op_type in _OUTPUT_TYPED or not node.input:
        return [o for o in node.output[:1] if o]
    if node.op_type == "Where":
        return [i for i in node.input[1:3] if i]
    if node.op_type in ("Cast", "CastLike"):
        return [n for n in (node.input[0], node.output[0]) if n]
    return [i for i in node.input[:1] if i]


def _tensor_findings(ctx: _Context) -> List[Finding]:
    """Never-supported types and ranks above 8, once per tensor, named by its producer."""
    findings = []
    names = sorted(set(ctx.types) | set(ctx.shapes), key=lambda n: (n not in ctx.graph_inputs, n))
    for name in names:
        default = "graph input" if name in ctx.graph_inputs else "initializer"
        producer, op = ctx.producers.get(name, (default, ""))
        elem = ctx.types.get(name)
        if elem in _NEVER_SUPPORTED:
            findings.append(
                Finding(
                    producer, op, "unsupported-type",
                    f"tensor {name!r} is {_NEVER_SUPPORTED[elem]}, which TensorRT has no tensors "
                    "of; export in float32 (complex values as a trailing dimension of 2)",
                )
            )
        rank = ctx.rank(name)
        if rank is not None and rank > _MAX_RANK:
            findings.append(
                Finding(
                    producer, op, "rank",
                    f"tensor {name!r} has rank {rank}; "
                    f"TensorRT tensors have at most {_MAX_RANK} dims",
                )
            )
    return findings


def _node_findings(
    name: str, node: onnx.NodeProto, table: Dict[str, OpSupport], ctx: _Context, version: str
) -> Iterator[Finding]:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        yield Finding(
            name, op, "unsupported-op",
            f"op from domain {node.domain!r} is not a standard ONNX op; TensorRT needs a plugin",
        )
        return
    support = table.get(op)
    if support is None:
        yield Finding(
            name, op, "unsupported-op",
            f"{op} is not in the TensorRT {version} support matrix; rewrite it with supported ops",
        )
        return
    if not support.supported:
        hint = " (TensorRT >= 11.2 has DFT; use the matmul lowering before)" if op == "DFT" else ""
        yield Finding(
            name, op, "unsupported-op", f"{op} is not supported by TensorRT {version}{hint}"
        )
        return
    if support.types:
        for value in _typed_values(node):
            elem = ctx.types.get(value)
            if elem is None or elem in _NEVER_SUPPORTED:
                continue  # unknown, or already reported once for the tensor
            type_name = _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))
            if type_name not in support.types:
                yield Finding(
                    name, op, "unsupported-type",
                    f"{op} takes {', '.join(sorted(support.types))}; {value!r} is {type_name}",
                )
    check = _RESTRICTION_CHECKS.get(op)
    if check is not None:
        for code, problem, severity in check(node, ctx):
            yield Finding(name, op, code, problem, severity)


def _load(
    model: Union[onnx.ModelProto, str, os.PathLike],
) -> Tuple[onnx.ModelProto, str, Optional[Path]]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<in-memory model>", None
    path = Path(model)
    try:
        # Weights are not needed (small constants are read on demand), and a missing
        # `.onnx.data` file must not stop a lint.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, files OSError
        raise ExportError(
            f"cannot read ONNX model {str(path)!r}: {exc}; pass the path of a .onnx file"
        ) from exc
    if not proto.ir_version or not proto.HasField("graph"):
        raise ExportError(f"{str(path)!r} is not an ONNX model (no IR version or graph)")
    return proto, str(path), path.parent


def lint_onnx(
    model: Union[onnx.ModelProto, str, os.PathLike], trt_version: str = "10.0"
) -> LintReport:
    """Check an ONNX model for what TensorRT's ONNX parser would reject, without TensorRT.

    Checks, against the TensorRT 10.0 operator support matrix (DFT allowed from 11.2):
    operators TensorRT does not import (and non-standard domains); tensors of types TensorRT
    has none of (float64, complex, string, 16-bit and unsigned 32/64-bit integers), reported
    once per tensor; data types outside an op's supported list (e.g. INT64 MatMul); inputs the
    parser needs as initializers (`axes` of reductions, Slice, Pad, Squeeze, Unsqueeze,
    CumSum's `axis`, OneHot's `depth`); tensors of rank above 8; and the other restrictions of
    the matrix decidable from attributes and inferred shapes (pooling rank and dilations,
    Resize modes, quantization zero points, TopK, LSTM/GRU/RNN attributes, ...). Types and
    shapes come from ONNX shape inference; values it cannot infer are not judged.

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
        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as exc:  # inference errors come as several onnx/C++ exception types
        inferred = proto
        findings.append(
            Finding(
                "", "", "shape-inference",
                f"ONNX shape inference failed ({exc}); "
                "type and rank checks cover declared tensors only",
                "warning",
            )
        )
    ctx = _Context(inferred, base_dir)
    node_count = 0
    for name, node in _nodes(inferred.graph):
        node_count += 1
        findings.extend(_node_findings(name, node, table, ctx, trt_version))
    findings.extend(_tensor_findings(ctx))
    return LintReport(
        trt_version=str(trt_version), source=source, findings=findings, node_count=node_count
    )
