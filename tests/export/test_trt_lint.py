"""TensorRT-readiness lint: exported masker graphs and tiny handmade ONNX graphs."""

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
from lfm_deploy.export import trt_lint  # noqa: E402
from lfm_deploy.export.lowering import apply_lowering  # noqa: E402
from lfm_deploy.export.trt_lint import lint_onnx, load_support_table  # noqa: E402
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




# --- exported masker graphs ------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.apm = MaskModule((1, channels, 13, 13))
        self.acpa = PhaseAttention(channels)

    def forward(self, x):
        return self.acpa(self.apm(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The same small block exported with each lowering (dynamo exporter)."""
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


def test_matmul_graph_passes(exported):
    report = lint_onnx(exported["matmul"])
    assert report.ok, report.to_markdown()
    assert report.findings == [] and report.node_count > 10


def test_dft_graph_is_flagged_for_trt10_and_allowed_from_11_2(exported):
    report = lint_onnx(exported["dft"], trt_version="10.0")
    assert not report.ok
    dft = [f for f in report.errors if f.op == "DFT"]
    assert len(dft) == 4 and all(f.code == "unsupported-op" for f in dft)  # 2 axes x fwd/inv
    assert "11.2" in dft[0].problem
    assert {f.op for f in report.errors} == {"DFT"}
    assert lint_onnx(exported["dft"], trt_version="11.2").ok
    assert not lint_onnx(exported["dft"], trt_version="11.1").ok


def test_report_serialises(exported):
    report = lint_onnx(str(exported["dft"]))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["error_count"] == 4 and data["trt_version"] == "10.0"
    assert set(data["findings"][0]) == {"node", "op", "code", "problem", "severity"}
    markdown = report.to_markdown()
    assert "not ready" in markdown and "| error |" in markdown
    assert markdown.count("\n| error") == 4
    assert "**ready**" in lint_onnx(exported["matmul"]).to_markdown()


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
    # Both branches rank 0, as the matrix's If restriction wants.
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
    # Branch outputs of different rank break the If restriction.
    else_branch = next(a for a in model.graph.node[0].attribute if a.name == "else_branch")
    else_branch.g.node[0].attribute[0].i = 1  # keepdims=1: rank 2
    report = lint_onnx(model)
    assert ("branch", "restriction") in _where(report)


def test_restrictions_from_the_matrix():
    initializers = [
        numpy_helper.from_array(np.array([5000], np.int64), "k"),
        numpy_helper.from_array(np.array(True), "training"),
        numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
        numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
    ]
    model = _model(
        [
            helper.make_node("TopK", ["v", "k"], ["vals", "idx"], name="topk"),
            helper.make_node("Dropout", ["x", "ratio", "training"], ["dropped"], name="drop"),
            helper.make_node("Resize", ["x", "", "scales"], ["big"], mode="cubic", name="resize"),
            helper.make_node(
                "MaxPool", ["x"], ["pooled", "where"], kernel_shape=[2, 2], name="pool"
            ),
            helper.make_node(
                "AveragePool", ["x"], ["avg"], kernel_shape=[2, 2], dilations=[2, 2], name="avg"
            ),
        ],
        [_vi("v", TensorProto.FLOAT, [10000]), _vi("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [_vi(n, TensorProto.FLOAT, None) for n in ("vals", "dropped", "big", "pooled", "avg")]
        + [_vi("idx", TensorProto.INT64, None), _vi("where", TensorProto.INT64, None)],
        initializers,
        opset=19,
    )
    report = lint_onnx(model)
    found = {(f.node, f.code) for f in report.findings}
    assert found == {
        ("topk", "restriction"), ("drop", "restriction"), ("resize", "restriction"),
        ("pool", "restriction"), ("avg", "restriction"),
    }
    problems = " ".join(f.problem for f in report.findings)
    assert "3840" in problems and "training_mode" in problems and "cubic" in problems
    assert "Indices" in problems and "dilations" in problems


def test_every_matrix_restriction_is_checked_or_explained():
    table = load_support_table()
    restricted = {op for op, row in table.items() if row.restriction}
    covered = set(trt_lint._RESTRICTION_CHECKS) | set(trt_lint.UNCHECKED_RESTRICTIONS)
    assert restricted - covered == set()
    assert set(trt_lint._RESTRICTION_CHECKS) <= set(table)


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
