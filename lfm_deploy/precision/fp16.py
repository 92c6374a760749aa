"""fp16 safety: measure activation ranges, then convert a graph to fp16 with fp32 islands.

TensorRT 11 builds fp16 engines from fp16 ONNX graphs only (docs/tensorrt.md, "Precision"), so
what stays fp32 is decided here, on the graph: `tensor_ranges` measures the peak |x| of every
intermediate tensor on real episodes, and `convert_to_fp16` makes every float node fp16 except
the islands (`island_nodes`). The steps, the islands and why the converter is the project's own
rather than onnxconverter-common's are in docs/numerics.md, "fp16 ranges and islands". Nothing
here needs TensorRT or a GPU.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ExportError
from ..runtime.sessions import SessionFromOnnx

log = logging.getLogger(__name__)

__all__ = [
    "FP16_MAX",
    "DEFAULT_MARGIN",
    "ISLAND_OPS",
    "ConversionReport",
    "Fp16Graph",
    "RangeReport",
    "TensorRange",
    "convert_to_fp16",
    "ensure_node_names",
    "graph_feeds",
    "island_nodes",
    "prepare_fp16_graph",
    "tensor_ranges",
]

#: Largest finite float16 value.
FP16_MAX = 65504.0
#: Nodes whose outputs exceed FP16_MAX / DEFAULT_MARGIN stay fp32: activations on other
#: inputs (other images, trained weights) may well be a few times larger than those measured.
DEFAULT_MARGIN = 4.0
#: Smallest positive float16 (subnormal): nonzero weights below half of it become 0.
_FP16_TINY = 5.960464477539063e-08

#: Ops that stay fp32 wherever they occur: square roots, divisions, reductions and
#: transcendental functions lose most of their accuracy in fp16 or accumulate past its range.
ISLAND_OPS = frozenset({
    "Atan", "Sqrt", "Sin", "Cos", "Reciprocal", "Div", "Pow", "Exp", "Log", "Softmax",
    "ReduceMean", "ReduceL2", "ReduceSum", "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd",
    "InstanceNormalization", "GroupNormalization", "LayerNormalization", "DFT",
})
#: Scopes (module paths in TorchScript-exported node names) kept fp32 as a whole: the masker
#: (APM's DFT-as-matmul block with its phase maths, whose DC term is the largest value in it;
#: ACPA's sign sums) and the support-mask resize, whose ~1.3e-5 interpolation weights matter
#: (docs/numerics.md, "Support-mask resize") and are subnormal in fp16.
ISLAND_SCOPES = {
    "masker": re.compile(r"^/(apm|acpa)(_\d+)?(/|$)"),
    "mask resize": re.compile(r"^/mask_resize(_\d+)?(/|$)"),
}
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
_RANGE_SUFFIX = "__lfm_absmax"


# ----------------------------------------------------------------------------- helpers
def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique, deterministic name (in place); returns the model.

    Range reports and island lists refer to nodes by name, so nameless nodes get
    `<op>__<index>` (their position in the graph).
    """
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}__{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def _load(model_or_path) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
        return model
    path = Path(model_or_path)
    if not path.is_file():
        raise ExportError(f"ONNX file not found: {path}; run lfm-export first")
    return onnx.load(str(path))


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name the graph declares or shape inference can type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception as exc:  # inference is best effort; declared types still help
        log.debug("shape inference failed (%s); using declared types only", exc)
        inferred = model
    g = inferred.graph
    types = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


# ----------------------------------------------------------------------------- ranges
@dataclass
class TensorRange:
    """Peak |x| of one node output over the episodes that were run.

    Attributes:
        node: node name.
        op_type: the node's operator.
        tensor: output tensor name.
        max_abs: largest absolute value seen (inf if a value overflowed fp32 itself).
        status: "overflow" (> FP16_MAX), "margin" (> FP16_MAX / margin) or "ok".
    """

    node: str
    op_type: str
    tensor: str
    max_abs: float
    status: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RangeReport:
    """Activation ranges of a graph's float tensors, measured in onnxruntime.

    Attributes:
        model: the file (or "<in-memory>") that was measured.
        limit: the fp16 limit (65504).
        threshold: limit / margin: anything above is flagged.
        runs: number of feeds run.
        ranges: every float node output, largest first.
    """

    model: str
    limit: float
    threshold: float
    runs: int
    ranges: list[TensorRange] = field(default_factory=list)

    @property
    def flagged(self) -> list[TensorRange]:
        """Outputs above the threshold (overflow or inside the safety margin)."""
        return [r for r in self.ranges if r.status != "ok"]

    @property
    def overflowing(self) -> list[TensorRange]:
        """Outputs above the fp16 range itself."""
        return [r for r in self.ranges if r.status == "overflow"]

    @property
    def nodes(self) -> list[str]:
        """Names of the flagged nodes (to keep in fp32)."""
        return sorted({r.node for r in self.flagged})

    def to_dict(self, top: int = 20) -> dict:
        return {
            "model": self.model, "limit": self.limit, "threshold": self.threshold, "runs": self.runs,
            "tensors_checked": len(self.ranges), "flagged": [r.to_dict() for r in self.flagged],
            "largest": [r.to_dict() for r in self.ranges[:top]],
        }

    def lines(self) -> list[str]:
        """Human-readable summary, one line per flagged node (or one line saying none)."""
        head = (f"fp16 range check of {self.model}: {len(self.ranges)} float tensors over {self.runs} run(s), "
                f"threshold {self.threshold:g} (fp16 max {self.limit:g})")
        if not self.flagged:
            top = self.ranges[0] if self.ranges else None
            tail = f"; largest |x| {top.max_abs:.4g} at {top.node} ({top.op_type})" if top else ""
            return [head, f"  no node exceeds the threshold{tail}"]
        return [head] + [f"  [{r.status}] {r.node} ({r.op_type}) -> {r.tensor}: max |x| {r.max_abs:.6g}"
                         for r in self.flagged]


def _with_abs_max_outputs(model: onnx.ModelProto, types: dict[str, int]) -> tuple[onnx.ModelProto, dict]:
    """Add Abs -> ReduceMax (scalar) for every float32 node output; returns (model, probe map)."""
    graph = model.graph
    probes = {}
    extra = []
    for node in list(graph.node):
        for out in node.output:
            if not out or types.get(out) != TensorProto.FLOAT:
                continue
            key = f"{out}{_RANGE_SUFFIX}"
            abs_name = f"{out}__lfm_abs"
            extra.append(helper.make_node("Abs", [out], [abs_name], name=f"{abs_name}_node"))
            extra.append(helper.make_node("ReduceMax", [abs_name], [key], name=f"{key}_node", keepdims=0))
            graph.output.append(helper.make_tensor_value_info(key, TensorProto.FLOAT, []))
            probes[key] = (node.name, node.op_type, out)
    graph.node.extend(extra)
    return model, probes


def tensor_ranges(
    model_or_path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    limit: float = FP16_MAX,
    margin: float = DEFAULT_MARGIN,
    threads: int | None = None,
) -> RangeReport:
    """Run an fp32 graph on real inputs and report every node output beyond the fp16 range.

    Args:
        model_or_path: an ONNX model or file (float32).
        feeds: input dicts (e.g. from `graph_feeds`); every one is run.
        limit: the range limit (float16 max by default).
        margin: safety factor: outputs above `limit / margin` are flagged ("margin").
        threads: onnxruntime intra-op threads (None: its default).

    Returns:
        A `RangeReport` over all float32 node outputs, largest first.

    Raises:
        ExportError: the file is missing, or no feed was given.
    """
    if margin < 1:
        raise ExportError(f"the fp16 safety margin must be >= 1, got {margin}")
    name = str(model_or_path) if not isinstance(model_or_path, onnx.ModelProto) else "<in-memory>"
    model = ensure_node_names(_load(model_or_path))
    probed, probes = _with_abs_max_outputs(model, _elem_types(model))
    session = SessionFromOnnx(probed.SerializeToString(), threads=threads, what=f"range check of {name}")()
    del probed, model
    keys = list(probes)
    peak = dict.fromkeys(keys, 0.0)
    runs = 0
    for feed in feeds:
        values = session.run(keys, dict(feed))
        for key, value in zip(keys, values):
            v = float(np.asarray(value))
            if not np.isfinite(v) or v > peak[key]:
                peak[key] = float("inf") if not np.isfinite(v) else v
        runs += 1
    if runs == 0:
        raise ExportError("tensor_ranges needs at least one input feed")
    threshold = limit / margin
    ranges = []
    for key, (node, op, tensor) in probes.items():
        v = peak[key]
        status = "overflow" if v > limit else "margin" if v > threshold else "ok"
        ranges.append(TensorRange(node, op, tensor, v, status))
    ranges.sort(key=lambda r: -r.max_abs)
    report = RangeReport(name, float(limit), float(threshold), runs, ranges)
    for line in report.lines():
        (log.warning if report.flagged else log.info)("%s", line)
    return report


# ----------------------------------------------------------------------------- islands
def island_nodes(
    model: onnx.ModelProto,
    *,
    ops: Iterable[str] = ISLAND_OPS,
    scopes: Mapping[str, re.Pattern] | None = None,
    normalisation: bool = True,
    extra: Mapping[str, str] | Iterable[str] = (),
) -> dict[str, str]:
    """Nodes that must stay fp32, each with the reason.

    Args:
        model: the fp32 graph (nodes must be named: see `ensure_node_names`).
        ops: op types kept fp32 everywhere (`ISLAND_OPS`).
        scopes: {reason: regex on the node name} of whole subgraphs kept fp32
            (`ISLAND_SCOPES`: the masker and the support-mask resize).
        normalisation: keep every node of a scope that computes normalisation statistics
            (a scope holding ReduceMean and Sqrt: the two-stage GroupNorm, whose squared
            deviations can leave the fp16 range).
        extra: more node names ({name: reason} or names), e.g. `RangeReport.nodes`.

    Returns:
        {node name: reason}.
    """
    scopes = ISLAND_SCOPES if scopes is None else scopes
    ops = frozenset(ops)
    out: dict[str, str] = {}
    norm_scopes = set()
    if normalisation:
        by_scope: dict[str, set] = {}
        for node in model.graph.node:
            by_scope.setdefault(node.name.rsplit("/", 1)[0], set()).add(node.op_type)
        norm_scopes = {s for s, kinds in by_scope.items() if s and {"ReduceMean", "Sqrt"} <= kinds}
    for node in model.graph.node:
        reason = None
        for label, pattern in scopes.items():
            if pattern.search(node.name):
                reason = label
                break
        if reason is None and node.name.rsplit("/", 1)[0] in norm_scopes:
            reason = "normalisation statistics"
        if reason is None and node.op_type in ops:
            reason = f"precision-sensitive op ({node.op_type})"
        if reason is not None:
            out[node.name] = reason
    items = extra.items() if isinstance(extra, Mapping) else ((n, "outside the fp16 range") for n in extra)
    for name, reason in items:
        out[name] = reason
    return out


# ----------------------------------------------------------------------------- conversion
@dataclass
class ConversionReport:
    """What `convert_to_fp16` did.

    Attributes:
        fp16_nodes / fp32_nodes: float-computing nodes in each precision.
        casts: Cast nodes inserted at island boundaries.
        initializers_fp16: float initializers stored as fp16.
        flushed_to_zero: nonzero weights that became 0 in fp16.
        islands: {node: reason} of the nodes kept fp32.
    """

    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts: int = 0
    initializers_fp16: int = 0
    flushed_to_zero: int = 0
    islands: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        reasons: dict[str, int] = {}
        for r in self.islands.values():
            key = r.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        d["island_reasons"] = reasons
        d["islands"] = dict(sorted(self.islands.items()))
        return d


def _formal(schema, index: int, inputs: bool):
    params = schema.inputs if inputs else schema.outputs
    if not params:
        return None
    if index < len(params):
        return params[index]
    last = params[-1]
    return last if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


def _follows_precision(schema, index: int, bound: set[str]) -> bool:
    """Whether input `index` takes the node's precision: its type variable allows float16 and
    is shared with another input or an output (fixed types like Resize's `scales` do not)."""
    formal = _formal(schema, index, inputs=True)
    return formal is not None and formal.type_str in bound


def _shared_float_vars(schema) -> set[str]:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    counts: dict[str, int] = {}
    for p in list(schema.inputs) + list(schema.outputs):
        counts[p.type_str] = counts.get(p.type_str, 0) + (2 if p.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else 1)
    return {v for v, n in counts.items() if n > 1 and {"tensor(float16)", "tensor(float)"} <= allowed.get(v, set())}


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Float `Constant` nodes -> initializers, so that they are converted per consumer."""
    graph = model.graph
    keep = []
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in attrs \
                and attrs["value"].t.data_type == TensorProto.FLOAT:
            t = onnx.TensorProto()
            t.CopyFrom(attrs["value"].t)
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def convert_to_fp16(
    model_or_path,
    keep_fp32: Mapping[str, str] | Iterable[str] = (),
    *,
    keep_io_types: bool = True,
) -> tuple[onnx.ModelProto, ConversionReport]:
    """Convert a float32 graph to float16, keeping the given nodes in float32.

    Every node computes in one precision: fp32 for `keep_fp32` (and for nodes fed by constants
    beyond the fp16 range), fp16 otherwise. A float tensor crossing between the two is cast
    once per target type; float initializers used by fp16 nodes are stored as fp16 (an fp32
    copy stays for fp32 consumers); Casts to float inside fp16 regions cast to float16.

    Args:
        model_or_path: the fp32 ONNX model or file.
        keep_fp32: node names ({name: reason} or names), e.g. from `island_nodes`.
        keep_io_types: keep float graph inputs and outputs float32 (Casts at the boundary).

    Returns:
        (fp16 model, ConversionReport). The model passes `onnx.checker` and strict type
        inference.

    Raises:
        ExportError: the graph has subgraphs (If/Loop), or the result fails type checking.
    """
    model = ensure_node_names(_load(model_or_path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ExportError("convert_to_fp16 does not handle graphs with subgraphs (If/Loop/Scan)")
    _constants_to_initializers(model)
    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")),
                 onnx.defs.onnx_opset_version())
    types = _elem_types(model)
    islands = dict(keep_fp32) if isinstance(keep_fp32, Mapping) else {n: "requested" for n in keep_fp32}
    report = ConversionReport()

    inits = {i.name: i for i in graph.initializer}
    big_consts = set()
    for init in inits.values():
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            if arr.size and np.nanmax(np.abs(arr[np.isfinite(arr)]), initial=0.0) > FP16_MAX:
                big_consts.add(init.name)
    for node in graph.node:
        if node.name not in islands and any(i in big_consts for i in node.input):
            islands[node.name] = "constant outside the fp16 range"

    home: dict[str, int] = {}
    for v in graph.input:
        t = v.type.tensor_type.elem_type
        if t == TensorProto.FLOAT and not keep_io_types:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
            t = TensorProto.FLOAT16
        home[v.name] = t
    for name, init in inits.items():
        home[name] = init.data_type
    graph_outputs = {o.name for o in graph.output}

    new_nodes: list[onnx.NodeProto] = []
    cast_cache: dict[tuple[str, int], str] = {}
    init16_cache: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}

    def as_type(tensor: str, to: int) -> str:
        if home.get(tensor, to) == to:
            return tensor
        if tensor in inits and to == TensorProto.FLOAT16 and home[tensor] == TensorProto.FLOAT:
            if tensor not in init16_cache:
                arr = numpy_helper.to_array(inits[tensor])
                half = arr.astype(np.float16)
                report.flushed_to_zero += int(np.count_nonzero((half == 0) & (arr != 0)))
                copy = numpy_helper.from_array(half, f"{tensor}__fp16")
                new_inits.append(copy)
                home[copy.name] = TensorProto.FLOAT16
                init16_cache[tensor] = copy.name
                report.initializers_fp16 += 1
            return init16_cache[tensor]
        key = (tensor, to)
        if key not in cast_cache:
            out = f"{tensor}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [tensor], [out], name=f"{out}_cast", to=to))
            home[out] = to
            cast_cache[key] = out
            report.casts += 1
        return cast_cache[key]

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        precision = TensorProto.FLOAT if node.name in islands else TensorProto.FLOAT16
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        except Exception:
            schema = None
        float_in = [i for i, n in enumerate(node.input) if n and home.get(n, types.get(n)) in _FLOATS]
        if schema is None:  # custom op: leave it fp32 and feed it fp32
            for i in float_in:
                node.input[i] = as_type(node.input[i], TensorProto.FLOAT)
            for out in node.output:
                home[out] = types.get(out, 0)
            new_nodes.append(node)
            continue
        shared = _shared_float_vars(schema)
        bound_vars = set()
        for i in float_in:
            if _follows_precision(schema, i, shared):
                node.input[i] = as_type(node.input[i], precision)
                bound_vars.add(_formal(schema, i, True).type_str)
        computes_float = bool(bound_vars)
        for j, out in enumerate(node.output):
            if not out:
                continue
            formal = _formal(schema, j, inputs=False)
            t = types.get(out, 0)
            if formal is not None and formal.type_str in bound_vars and t in _FLOATS:
                t = precision
            elif node.op_type == "Cast":
                to = next(a for a in node.attribute if a.name == "to")
                if to.i == TensorProto.FLOAT and precision == TensorProto.FLOAT16:
                    to.i = TensorProto.FLOAT16
                t = to.i
                computes_float = computes_float or t in _FLOATS
            elif node.op_type == "ConstantOfShape":
                for a in node.attribute:
                    if a.name == "value" and a.t.data_type == TensorProto.FLOAT and precision == TensorProto.FLOAT16:
                        a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
                    if a.name == "value":
                        t = a.t.data_type
            if t == TensorProto.FLOAT16 and out in graph_outputs and keep_io_types:
                inner = f"{out}__fp16"
                node.output[j] = inner
                rename[out] = inner
                out = inner
            home[out] = t
        if computes_float:
            if precision == TensorProto.FLOAT16:
                report.fp16_nodes += 1
            else:
                report.fp32_nodes += 1
        new_nodes.append(node)

    for out in graph.output:
        inner = rename.get(out.name)
        if inner is not None:
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], name=f"{out.name}__to_fp32_cast",
                                              to=TensorProto.FLOAT))
            report.casts += 1
        elif not keep_io_types and out.type.tensor_type.elem_type == TensorProto.FLOAT:
            out.type.tensor_type.elem_type = home.get(out.name, TensorProto.FLOAT)

    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input} | graph_outputs
    kept = [i for i in graph.initializer if i.name in used] + [i for i in new_inits if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    report.islands = {n: r for n, r in islands.items() if n in {x.name for x in graph.node}}
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the fp16 graph does not type-check: {str(exc)[:500]}") from exc
    log.info("fp16 conversion: %d fp16 nodes, %d fp32 nodes (islands), %d casts, %d weights flushed to zero",
             report.fp16_nodes, report.fp32_nodes, report.casts, report.flushed_to_zero)
    return model, report


# ----------------------------------------------------------------------------- artifacts
def graph_feeds(artifact_dir: str | os.PathLike, graph: str, episodes: int = 2, seed: int = 0,
                threads: int | None = None, manifest=None) -> list[dict]:
    """Realistic inputs for one exported graph: seeded validation episodes of its domain.

    The head graph's support features come from running the encoder graph (fp32) in
    onnxruntime on the episode's support set.

    Args:
        artifact_dir: an lfm-export directory.
        graph: "episode", "encoder" or "head".
        episodes: how many episodes (seeds seed, seed+1, ...).
        seed: first seed.
        threads: onnxruntime threads for the encoder run.
        manifest: the directory's `Manifest` when the caller has read it (None: read here).

    Returns:
        A list of feed dicts.

    Raises:
        ManifestError: unreadable artifact directory.
        ExportError: unknown graph.
    """
    from ..contract import GRAPHS
    from ..manifest import read_manifest
    from ..parity.episodes import graph_feeds_of, parity_episodes

    if graph not in GRAPHS:
        raise ExportError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    if manifest is None:
        manifest = read_manifest(artifact_dir, verify_files=False)
    ios = {g: manifest.io(g) for g in {"episode", graph} | ({"encoder"} if graph == "head" else set())}
    episodes, _ = parity_episodes(manifest, episodes, seed)
    encoder = None
    if graph == "head":
        # The float32 encoder makes the features (an int8 export's manifest names its int8 graphs).
        encoder = SessionFromOnnx(Path(artifact_dir) / manifest.float32_file("encoder"), threads=threads,
                                  what="encoder graph")
    return graph_feeds_of(episodes, graph, ios, encoder)


@dataclass
class Fp16Graph:
    """An fp16 graph written next to the engines, with how it was made."""

    path: Path
    source: Path
    ranges: RangeReport
    conversion: ConversionReport

    def to_dict(self) -> dict:
        return {"path": str(self.path), "source": str(self.source), "ranges": self.ranges.to_dict(),
                "conversion": self.conversion.to_dict()}


def prepare_fp16_graph(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    margin: float = DEFAULT_MARGIN,
    extra_islands: Iterable[str] = (),
    threads: int | None = None,
) -> Fp16Graph:
    """Range-check an fp32 graph on `feeds`, convert it to fp16 with islands, save it.

    Args:
        onnx_path: the fp32 graph.
        out_path: where to write the fp16 graph (a JSON report lands next to it).
        feeds: inputs for the range check (see `graph_feeds`).
        margin: fp16 safety margin (see `tensor_ranges`).
        extra_islands: more node names to keep fp32.
        threads: onnxruntime threads.

    Returns:
        `Fp16Graph` with both reports.

    Raises:
        ExportError: missing file or a conversion that does not type-check.
    """
    import json

    ranges = tensor_ranges(onnx_path, feeds, margin=margin, threads=threads)
    model = ensure_node_names(_load(onnx_path))
    keep = island_nodes(model, extra={**{n: "outside the fp16 range" for n in ranges.nodes},
                                      **{n: "requested" for n in extra_islands}})
    fp16, conversion = convert_to_fp16(model, keep)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(fp16, str(out_path), save_as_external_data=False)
    result = Fp16Graph(out_path, Path(onnx_path), ranges, conversion)
    out_path.with_suffix(".json").write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
    return result
