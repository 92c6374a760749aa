"""int8 QDQ graphs: static quantization with onnxruntime's quantizer, for onnxruntime and TensorRT.

One graph serves onnxruntime on the CPU, OpenVINO and a TensorRT engine. Its format (symmetric
int8 activations, per-channel weights, float biases), what stays float (the masker and the
support-mask resize always; a share of the Conv/MatMul nodes from the output end, chosen by
`lfm_deploy.precision.pipeline` among `INT8_FLOAT_TAILS`) and why are in docs/precision.md,
"int8". Ranges are calibrated once per graph (min/max) and cached in a JSON file, so trying
another float share only rewrites the graph.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import ExportError
from ..runtime.precisions import int8_may_saturate

log = logging.getLogger(__name__)

__all__ = ["QUANTIZED_OPS", "Int8Graph", "float_islands", "node_keys", "quantizable_nodes", "quantize_int8",
           "sensitivity_groups"]

#: Node types given int8 inputs (everything else runs in float between the QDQ pairs).
QUANTIZED_OPS = ("Conv", "MatMul")


@dataclass
class Int8Graph:
    """An int8 QDQ graph and how it was made.

    Attributes:
        path: the int8 graph.
        source: the float32 graph it was quantized from.
        quantized: names of the nodes given int8 inputs.
        float_nodes: {name: reason} of the Conv/MatMul nodes left in float.
        float_tail: the share of quantizable nodes, from the output end, kept float.
        seconds: time taken (calibration included when it ran).
        reduce_range: weights quantized to 7 bits (where onnxruntime's int8 kernels may saturate), else 8.
    """

    path: Path
    source: Path
    quantized: list
    float_nodes: dict
    float_tail: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    reduce_range: bool = False

    def to_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for why in self.float_nodes.values():
            reasons[why] = reasons.get(why, 0) + 1
        return {"file": self.path.name, "source": self.source.name, "quantized_nodes": len(self.quantized),
                "float_nodes": len(self.float_nodes), "float_by_reason": reasons, "float_tail": self.float_tail,
                "activations": "int8, symmetric (zero point 0), per tensor",
                "weights": "int8, symmetric, per output channel" + (", 7-bit range" if self.reduce_range else ""),
                "reduce_range": self.reduce_range, "biases": "float", "seconds": round(self.seconds, 1), **self.extra}


def float_islands(model: onnx.ModelProto) -> dict[str, str]:
    """Conv/MatMul nodes of the masker and the support-mask resize: always float, with the reason."""
    from .fp16 import ensure_node_names, island_nodes

    ensure_node_names(model)
    scoped = island_nodes(model, ops=(), normalisation=False)
    return {n.name: scoped[n.name] for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name in scoped}


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul nodes outside the float islands, in graph (topological) order."""
    islands = float_islands(model)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in islands]


def node_keys(model: onnx.ModelProto) -> dict[str, tuple]:
    """{name: key} of the quantizable nodes: what identifies a node across the graphs of one export.

    A node with a weight (an initializer input) is keyed by its op and a hash of the weight's
    bytes: the episode graph runs the same backbone convolutions as the encoder and the head, and
    the same learner convolutions as the head. A node without one (the correlation's products of
    two activations) is keyed by its op and its rank among such nodes, in graph order.
    """
    import hashlib

    weights = {t.name: t for t in model.graph.initializer}
    islands = float_islands(model)
    keys, ranks = {}, {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name in islands:
            continue
        held = [weights[i] for i in node.input[1:2] if i in weights]
        if held:
            raw = onnx.numpy_helper.to_array(held[0]).tobytes()
            keys[node.name] = (node.op_type, "weight", hashlib.sha1(raw).hexdigest())
        else:
            ranks[node.op_type] = ranks.get(node.op_type, -1) + 1
            keys[node.name] = (node.op_type, "activations", ranks[node.op_type])
    return keys


def sensitivity_groups(keys: Mapping[str, Mapping[str, tuple]], n: int) -> list[list[tuple]]:
    """The quantizable nodes of an export cut into `n` contiguous groups of node keys, in graph order.

    Args:
        keys: {graph: `node_keys`} of the export's graphs; the head's order comes first (it holds
            the query backbone, which shares its keys with the encoder), then what only the other
            graphs hold.
        n: how many groups (fewer when there are fewer nodes).
    """
    ordered = [k for g in sorted(keys, key=lambda g: g != "head") for k in keys[g].values()]
    order = list(dict.fromkeys(ordered))
    bounds = np.linspace(0, len(order), min(n, len(order)) + 1).round().astype(int)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class _Feeds:
    """onnxruntime's `CalibrationDataReader` over a list of feed dicts (float32 inputs only)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]):
        self._feeds = list(feeds)
        self._names = list(names)
        self._it = iter(self._feeds)

    def get_next(self):
        feed = next(self._it, None)
        return None if feed is None else {k: np.ascontiguousarray(feed[k], dtype=np.float32) for k in self._names}

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])


def quantize_int8(source: str | os.PathLike, out: str | os.PathLike, feeds: Sequence[Mapping[str, np.ndarray]], *,
                  float_tail: float = 0.0, cache: str | os.PathLike | None = None,
                  keep_float: Mapping[str, str] | None = None, reduce_range: bool | None = None) -> Int8Graph:
    """Write an int8 QDQ version of an fp32 graph.

    Args:
        source: the fp32 graph (an lfm-export graph: named nodes, single file).
        out: where to write the int8 graph.
        feeds: calibration inputs (feed dicts keyed by the graph's input names).
        float_tail: share (0..1) of the quantizable nodes, counted from the output end, to
            keep in float (0: quantize every Conv/MatMul outside the islands).
        cache: JSON file of the calibrated ranges: written on the first call, read on the
            next ones (the calibration runs once per graph).
        keep_float: more nodes to keep float, {name: reason}.
        reduce_range: quantize the weights to 7 bits; None: where 8-bit weights may saturate
            onnxruntime's int8 kernels (`lfm_deploy.runtime.precisions.int8_may_saturate`).

    Returns:
        `Int8Graph`.

    Raises:
        ExportError: the source is missing, or no calibration feed was given.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source, out = Path(source), Path(out)
    if not source.is_file():
        raise ExportError(f"ONNX file not found: {source}; run lfm-export first")
    if not feeds:
        raise ExportError("int8 calibration needs at least one feed")
    if not 0.0 <= float(float_tail) <= 1.0:
        raise ExportError(f"float_tail must be within 0..1, got {float_tail}")
    if reduce_range is None:
        reduce_range = int8_may_saturate()
    start = time.perf_counter()
    model = onnx.load(str(source))
    islands = float_islands(model)
    candidates = quantizable_nodes(model)
    tail = int(round(len(candidates) * float(float_tail)))
    keep = dict(islands)
    keep.update({n: "kept float by measurement (output end)" for n in candidates[len(candidates) - tail:]})
    keep.update(keep_float or {})
    quantize = [n for n in candidates if n not in keep]
    names = [i.name for i in model.graph.input]
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        source, out, _Feeds(feeds, names), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True, reduce_range=bool(reduce_range), activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=quantize, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        calibration_cache_path=None if cache is None else Path(cache),
    )
    graph = Int8Graph(out, source, quantize, keep, float(float_tail), time.perf_counter() - start,
                      reduce_range=bool(reduce_range))
    log.info("int8 %s: %d nodes quantized, %d kept float (%.1f s)", source.name, len(quantize), len(keep),
             graph.seconds)
    return graph
