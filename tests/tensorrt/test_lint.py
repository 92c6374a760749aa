"""TensorRT-readiness lint: the exported graphs, an exported masker block, and tiny handmade
ONNX graphs for each check."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lfm_deploy.errors import ExportError  # noqa: E402
from lfm_deploy.export.lowering import apply_lowering  # noqa: E402
from lfm_deploy.tensorrt.lint import lint_onnx, load_support_table  # noqa: E402
from lfm_deploy.models.masker import MaskModule, PhaseAttention  # noqa: E402


def _model(nodes, inputs, outputs, initializers=(), opset=20, value_info=()):
    graph = helper.make_graph(
        nodes, "tiny", inputs, outputs, initializer=list(initializers), value_info=list(value_info)
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _codes(report):
    return [(f.code, f.op) for f in report.findings]


def _where(report):
    return [(f.node, f.code) for f in report.findings]


def _int64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


# --- exported graphs ------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.apm = MaskModule((1, channels, 13, 13))
        self.acpa = PhaseAttention(channels)

    def forward(self, x):
        return self.acpa(self.apm(x))


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """One APM + ACPA block exported with each lowering (dynamo exporter)."""
    directory = tmp_path_factory.mktemp("lint")
    model = _Block().eval()
    x = torch.randn(1, 4, 13, 13)
    paths = {}
    for lowering in ("matmul", "dft"):
        paths[lowering] = directory / f"{lowering}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                apply_lowering(model, lowering), (x,), str(paths[lowering]), dynamo=True,
                opset_version=20, external_data=False, verbose=False,
            )
    return paths


def test_exported_graphs_are_tensorrt_10_ready(exported):
    """The real export (matmul lowering, small images): every graph clean, the head's 6-D
    correlation tensors included."""
    out = exported(1).out_dir
    for graph in ("episode", "encoder", "head"):
        report = lint_onnx(out / f"{graph}.onnx")
        assert report.ok and report.findings == [], report.to_markdown()
        assert report.node_count > 200


def test_matmul_graph_passes(block):
    report = lint_onnx(block["matmul"])
    assert report.ok, report.to_markdown()
    assert report.findings == [] and report.node_count > 10


def test_dft_graph_is_flagged_for_trt10_and_allowed_from_11_2(block):
    report = lint_onnx(block["dft"], trt_version="10.0")
    assert not report.ok
    dft = [f for f in report.errors if f.op == "DFT"]
    assert len(dft) == 4 and all(f.code == "unsupported-op" for f in dft)  # 2 axes x fwd/inv
    assert "11.2" in dft[0].problem
    assert {f.op for f in report.errors} == {"DFT"}
    assert lint_onnx(block["dft"], trt_version="11.2").ok
    assert not lint_onnx(block["dft"], trt_version="11.1").ok


def test_report_serialises(block):
    report = lint_onnx(str(block["dft"]))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["error_count"] == 4 and data["trt_version"] == "10.0"
    assert set(data["findings"][0]) == {"node", "op", "code", "problem", "severity"}
    markdown = report.to_markdown()
    assert "not ready" in markdown and "| error |" in markdown
    assert markdown.count("\n| error") == 4
    assert "**ready**" in lint_onnx(block["matmul"]).to_markdown()


# --- types -----------------------------------------------------------------------------------


def test_float64_tensors_are_flagged_once_each():
    model = _model(
        [helper.make_node("Add", ["x", "x"], ["y"], name="add64")],
        [_vi("x", TensorProto.DOUBLE, [2, 3])],
        [_vi("y", TensorProto.DOUBLE, [2, 3])],
    )
    report = lint_onnx(model)
    assert not report.ok
    assert _codes(report) == [("unsupported-type", ""), ("unsupported-type", "Add")]
    assert "float64" in report.findings[0].problem
    assert report.findings[1].node == "add64"


def test_complex_tensor_is_flagged():
    model = _model(
        [helper.make_node("Identity", ["z"], ["w"])],
        [_vi("z", TensorProto.COMPLEX64, [4])],
        [_vi("w", TensorProto.COMPLEX64, [4])],
    )
    report = lint_onnx(model)
    assert [f.code for f in report.findings] == ["unsupported-type"] * 2
    assert all("complex64" in f.problem for f in report.findings)
    assert report.findings[1].node == "Identity#0"  # unnamed nodes get op#index


def test_int64_matmul_is_flagged_but_int64_add_is_not():
    model = _model(
        [
            helper.make_node("Add", ["a", "a"], ["b"], name="add"),
            helper.make_node("MatMul", ["b", "b"], ["c"], name="mm"),
        ],
        [_vi("a", TensorProto.INT64, [3, 3])],
        [_vi("c", TensorProto.INT64, [3, 3])],
    )
    report = lint_onnx(model)
    assert _where(report) == [("mm", "unsupported-type")]
    assert "INT64" in report.findings[0].problem


def test_types_come_from_shape_inference():
    # `h` has no declared type: shape inference must find it is float64 (Cast to DOUBLE).
    model = _model(
        [
            helper.make_node("Cast", ["x"], ["h"], to=TensorProto.DOUBLE, name="up"),
            helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT, name="down"),
        ],
        [_vi("x", TensorProto.FLOAT, [2])],
        [_vi("y", TensorProto.FLOAT, [2])],
    )
    report = lint_onnx(model)
    assert _where(report) == [("up", "unsupported-type")]


# --- constant inputs -------------------------------------------------------------------------


def _reduce_mean(axes_source):
    nodes, initializers, inputs = [], [], [_vi("x", TensorProto.FLOAT, [2, 3, 4])]
    if axes_source == "initializer":
        initializers.append(_int64("axes", [1]))
    elif axes_source == "constant":
        nodes.append(helper.make_node("Constant", [], ["axes"], value=_int64("value", [1])))
    else:  # computed in the graph: Shape -> Slice
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Slice", ["shape", "one", "two"], ["axes"], name="slice_shape"),
        ]
        initializers += [_int64("one", [1]), _int64("two", [2])]
    nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean"))
    return _model(nodes, inputs, [_vi("y", TensorProto.FLOAT, None)], initializers, opset=18)


@pytest.mark.parametrize("source", ["initializer", "constant"])
def test_constant_axes_pass(source):
    assert lint_onnx(_reduce_mean(source)).findings == []


def test_computed_axes_are_flagged():
    report = lint_onnx(_reduce_mean("computed"))
    assert _where(report) == [("mean", "non-constant-input")]
    assert report.findings[0].op == "ReduceMean"
    assert "axes" in report.findings[0].problem and "fold" in report.findings[0].problem


def test_unsqueeze_and_slice_axes_from_graph_input_are_flagged():
    model = _model(
        [
            helper.make_node("Unsqueeze", ["x", "ax"], ["u"], name="unsq"),
            helper.make_node("Slice", ["u", "s", "e", "ax"], ["y"], name="sl"),
        ],
        [_vi("x", TensorProto.FLOAT, [4, 4]), _vi("ax", TensorProto.INT64, [1])],
        [_vi("y", TensorProto.FLOAT, None)],
        [_int64("s", [0]), _int64("e", [1])],
    )
    report = lint_onnx(model)
    assert _where(report) == [
        ("unsq", "non-constant-input"), ("sl", "non-constant-input"),
    ]


# --- ranks, ops, restrictions ----------------------------------------------------------------


def test_rank_above_8_is_flagged():
    shape9 = [1, 2, 1, 2, 1, 2, 1, 2, 3]
    model = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="to9d")],
        [_vi("x", TensorProto.FLOAT, [48])],
        [_vi("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(shape9, np.int64), "shape")],
    )
    report = lint_onnx(model)
    assert _where(report) == [("to9d", "rank")]
    assert "rank 9" in report.findings[0].problem
    shape8 = numpy_helper.from_array(np.array(shape9[:7] + [6], np.int64), "shape")
    model.graph.initializer[0].CopyFrom(shape8)
    assert lint_onnx(model).ok


def test_unsupported_and_foreign_ops():
    model = _model(
        [
            helper.make_node("Det", ["x"], ["d"], name="det"),
            helper.make_node(
                "FusedMatMul", ["x", "x"], ["f"], domain="com.microsoft", name="fused"
            ),
        ],
        [_vi("x", TensorProto.FLOAT, [3, 3])],
        [_vi("d", TensorProto.FLOAT, None), _vi("f", TensorProto.FLOAT, None)],
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report = lint_onnx(model)
    assert _where(report) == [("det", "unsupported-op"), ("fused", "unsupported-op")]
    assert "com.microsoft" in report.findings[1].problem


def test_subgraph_nodes_are_checked():
    then_graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["t"], name="inner")],
        "then", [], [_vi("t", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["x"], ["e"], keepdims=0)],
        "else", [], [_vi("e", TensorProto.FLOAT, None)],
    )
    branch = helper.make_node(
        "If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph, name="branch"
    )
    model = _model(
        [branch],
        [_vi("c", TensorProto.BOOL, []), _vi("x", TensorProto.FLOAT, [3, 3])],
        [_vi("y", TensorProto.FLOAT, None)],
    )
    report = lint_onnx(model)
    assert _where(report) == [("branch/then_branch/inner", "unsupported-op")]
    assert report.node_count == 3


@pytest.mark.parametrize("zero_point, expected", [(0, []), (3, [("dq", "qdq-zero-point")])])
def test_dequantize_zero_point_must_be_zero(zero_point, expected):
    model = _model(
        [helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq")],
        [_vi("q", TensorProto.INT8, [4])],
        [_vi("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
         numpy_helper.from_array(np.array(zero_point, np.int8), "zp")],
    )
    report = lint_onnx(model)
    assert _where(report) == expected
    if expected:
        assert "asymmetric" in report.findings[0].problem and "lfm-export --precision int8" in report.findings[0].problem


# --- Q/DQ: TensorRT explicit quantization ------------------------------------------------------


@pytest.fixture(scope="module")
def head_int8(exported, tmp_path_factory):
    """The 160 px head graph quantized by lfm-export's int8 path (every Conv/MatMul outside the
    masker, one calibration episode): what `lfm-build-engine --precision int8` parses."""
    from lfm_deploy.precision.int8 import quantize_int8
    from lfm_deploy.precision.fp16 import graph_feeds

    art = exported(shots=1).out_dir
    feeds = graph_feeds(art, "head", episodes=1, seed=100)
    return quantize_int8(art / "head.onnx", tmp_path_factory.mktemp("int8") / "head.int8.onnx", feeds).path


def test_int8_export_graph_lints_clean_for_tensorrt_10_and_11(head_int8):
    model = onnx.load(str(head_int8))
    ops = [n.op_type for n in model.graph.node]
    weights = {i.name for i in model.graph.initializer}
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
                   and any(a.name == "axis" for a in n.attribute)]
    assert ops.count("QuantizeLinear") > 20 and per_channel  # the rules below are exercised
    for version in ("10.0", "11.0"):
        report = lint_onnx(head_int8, trt_version=version)
        assert report.ok and report.findings == [], report.to_markdown()


def _f32(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _qdq(zero_point=None, scale=None, *, axis=None, extra=(), q_inputs=None, opset=20):
    """x -> QuantizeLinear (q) -> DequantizeLinear (dq) -> y on a (1, 4, 8, 8) activation."""
    zero_point = numpy_helper.from_array(np.array(0, np.int8), "zp") if zero_point is None else zero_point
    scale = _f32("s", 0.05) if scale is None else scale
    kw = {} if axis is None else {"axis": axis}
    inputs = q_inputs or ["x", "s", "zp"]
    nodes = [helper.make_node("QuantizeLinear", inputs, ["xq"], name="q", **kw),
             helper.make_node("DequantizeLinear", ["xq"] + inputs[1:], ["y"], name="dq", **kw)]
    inits = [i for i in (scale, zero_point) if i is not None and i.name in inputs] + list(extra)
    return _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 4, 8, 8])], [_vi("y", TensorProto.FLOAT, None)],
                  inits, opset=opset)


def test_symmetric_int8_qdq_passes():
    assert lint_onnx(_qdq()).findings == []


def test_asymmetric_uint8_activations_are_flagged_with_the_fix():
    report = lint_onnx(_qdq(numpy_helper.from_array(np.array(128, np.uint8), "zp")))
    assert _where(report) == [("q", "qdq-type"), ("dq", "qdq-type")]
    assert not report.ok
    for f in report.findings:
        assert "uint8" in f.problem and "asymmetric" in f.problem
        assert "re-quantize with symmetric int8 (`lfm-export --precision int8`)" in f.problem
    # uint8 even with zero point 0 is not TensorRT's type; one finding per node, not two.
    assert _where(lint_onnx(_qdq(numpy_helper.from_array(np.array(0, np.uint8), "zp")))) == [
        ("q", "qdq-type"), ("dq", "qdq-type")]


def test_quantize_without_zero_point_is_uint8():
    report = lint_onnx(_qdq(q_inputs=["x", "s"]))
    assert _where(report) == [("q", "qdq-type"), ("dq", "qdq-type")]
    assert "ONNX default" in report.findings[0].problem


def test_int32_bias_dequantize_is_flagged():
    model = _model(
        [helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="dq_bias"),
         helper.make_node("Add", ["x", "b"], ["y"], name="add_bias")],
        [_vi("x", TensorProto.FLOAT, [1, 4])], [_vi("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([10, -20, 30, 40], np.int32), "b_q"), _f32("b_s", 1e-4)],
    )
    report = lint_onnx(model)
    assert _where(report) == [("dq_bias", "qdq-type")]
    problem = report.findings[0].problem
    assert "int32" in problem and "bias" in problem and "int8" in problem and "QuantizeBias=False" in problem


def test_scale_and_zero_point_computed_in_the_graph_are_flagged():
    model = _qdq(extra=[_f32("c127", 127.0)])
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "s"))
    for node in reversed([helper.make_node("ReduceMax", ["x"], ["amax"], keepdims=0, name="amax"),
                          helper.make_node("Div", ["amax", "c127"], ["s"], name="scale")]):
        model.graph.node.insert(0, node)
    report = lint_onnx(model)
    assert _where(report) == [("q", "qdq-constant"), ("dq", "qdq-constant")]
    assert "y_scale" in report.findings[0].problem and "x_scale" in report.findings[1].problem
    assert "build-time constants" in report.findings[0].problem
    # A zero point given as a graph input is not a constant either.
    model = _qdq()
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "zp"))
    model.graph.input.append(_vi("zp", TensorProto.INT8, []))
    assert _where(lint_onnx(model)) == [("q", "qdq-constant"), ("dq", "qdq-constant")]


def test_a_constant_node_scale_passes():
    model = _qdq()
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "s"))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["s"], value=_f32("v", 0.05)))
    assert lint_onnx(model).findings == []


@pytest.mark.parametrize("bad", [0.0, -0.5, np.inf, np.nan])
def test_scales_must_be_positive_and_finite(bad):
    report = lint_onnx(_qdq(scale=_f32("s", bad)))
    assert _where(report) == [("q", "qdq-scale"), ("dq", "qdq-scale")]
    assert "positive and finite" in report.findings[0].problem


def test_per_channel_activation_is_flagged_per_channel_weights_pass():
    zp4 = numpy_helper.from_array(np.zeros(4, np.int8), "zp")
    report = lint_onnx(_qdq(zp4, _f32("s", [0.1, 0.2, 0.3, 0.4]), axis=1))
    assert _where(report) == [("q", "qdq-axis"), ("dq", "qdq-axis")]
    assert "activation 'x'" in report.findings[0].problem and "per tensor" in report.findings[0].problem
    # Weights: int8 initializers dequantized per output channel, and float weights quantized by
    # Q -> DQ per channel, both feeding a Conv next to a per-tensor activation pair.
    w = np.arange(4 * 4 * 3 * 3).reshape(4, 4, 3, 3) % 7 - 3
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0, name="dq_w"),
             helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("QuantizeLinear", ["wf", "w_s", "w_zp"], ["wf_q"], axis=0, name="q_wf"),
             helper.make_node("DequantizeLinear", ["wf_q", "w_s", "w_zp"], ["wf_d"], axis=0, name="dq_wf"),
             helper.make_node("Conv", ["c", "wf_d"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    inits = [_f32("s", 0.05), numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(w.astype(np.int8), "w_q"), _f32("w_s", [0.01, 0.02, 0.03, 0.04]),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"), _f32("wf", w * 0.01)]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 4, 8, 8])], [_vi("y", TensorProto.FLOAT, None)], inits)
    assert lint_onnx(model).findings == []


def test_per_channel_needs_opset_13():
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q"), _f32("w_s", [0.1, 0.2, 0.3, 0.4]),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 4])], [_vi("y", TensorProto.FLOAT, None)], inits,
                   opset=12)
    report = lint_onnx(model)
    assert [(f.node, f.code) for f in report.errors] == [("dq_w", "qdq-axis")]
    assert "opset >= 13" in report.errors[0].problem and "opset 12" in report.errors[0].problem
    model.opset_import[0].version = 13
    assert lint_onnx(model).findings == []


def test_blocked_scales_are_int4_only():
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0, block_size=2, name="dq_w"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(np.ones((4, 4), np.int8), "w_q"), _f32("w_s", np.full((2, 4), 0.1)),
             numpy_helper.from_array(np.zeros((2, 4), np.int8), "w_zp")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [2, 4])], [_vi("y", TensorProto.FLOAT, None)], inits,
                   opset=21)
    assert [(f.node, f.code) for f in lint_onnx(model).errors] == [("dq_w", "qdq-axis")]


def test_unsupported_resize_mode_is_flagged():
    model = _model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="resize"),
         helper.make_node("Resize", ["x", "", "scales"], ["z"], mode="linear",
                          coordinate_transformation_mode="align_corners", name="ok")],
        [_vi("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [_vi("y", TensorProto.FLOAT, None), _vi("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales")],
        opset=19,
    )
    report = lint_onnx(model)
    assert _where(report) == [("resize", "restriction")]
    assert "cubic" in report.findings[0].problem


def test_constant_input_restrictions_name_real_schema_inputs():
    """Every "`x` must be an initializer/constant/zero" of the matrix resolves to an input of the
    op's ONNX schema (a typo in the matrix would silently disable a check)."""
    table = load_support_table()
    ruled = {op: row.constant_inputs + row.zero_inputs for op, row in table.items()
             if row.constant_inputs or row.zero_inputs}
    assert {"ReduceL2", "ReduceMean", "ReduceSum", "Slice", "Squeeze", "Unsqueeze", "QuantizeLinear"} <= set(ruled)
    for op, names in ruled.items():
        schema = onnx.defs.get_schema(op, 20)
        assert set(names) <= {i.name for i in schema.inputs}, op


def test_support_table_reads_the_matrix():
    table = load_support_table()
    assert table["MatMul"].supported and table["MatMul"].types == {"FP32", "FP16", "BF16"}
    assert not table["DFT"].supported
    assert "INT64" in table["ConstantOfShape"].types  # the matrix spells it INF64
    assert "initializer" in table["ReduceL2"].restriction
    assert load_support_table("11.2")["DFT"].supported


# --- errors ----------------------------------------------------------------------------------


def test_unreadable_model_raises_export_error(tmp_path):
    with pytest.raises(ExportError, match="cannot read"):
        lint_onnx(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00 definitely not protobuf \x01\x02" * 10)
    with pytest.raises(ExportError):
        lint_onnx(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ExportError, match="not an ONNX model"):
        lint_onnx(empty)


@pytest.mark.parametrize("version", ["ten", "", "9.0", (8, 6)])
def test_bad_trt_version_raises_export_error(version):
    with pytest.raises(ExportError, match="trt_version"):
        lint_onnx(_reduce_mean("initializer"), trt_version=version)
