"""fp16 safety: range detection on handmade and exported graphs, conversion with fp32 islands."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lfm_deploy.errors import ExportError  # noqa: E402
from lfm_deploy.precision import fp16  # noqa: E402


def _model(nodes, inputs, outputs, initializers=(), opset=20):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _overflowing():
    """x -> Mul(x, 1e5) "amplify" -> Mul(., 1e-5) "shrink" -> Relu -> y. Peak |x| ~3 -> 3e5 in the middle."""
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["amplified"], name="amplify"),
        helper.make_node("Mul", ["amplified", "small"], ["shrunk"], name="shrink"),
        helper.make_node("Relu", ["shrunk"], ["y"], name="relu"),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["B", 8])], [_vi("y", TensorProto.FLOAT, ["B", 8])],
                  [_const("big", 1e5), _const("small", 1e-5)])


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _run(model, feed):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


# ----------------------------------------------------------------------------- ranges
def test_overflow_detection_names_the_overflowing_node():
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)
    report = fp16.tensor_ranges(_overflowing(), [{"x": x}])
    assert report.runs == 1
    assert [r.node for r in report.overflowing] == ["amplify"]
    assert report.nodes == ["amplify"]
    top = report.ranges[0]
    assert top.node == "amplify" and top.op_type == "Mul" and top.tensor == "amplified"
    assert top.max_abs == pytest.approx(3e5, rel=1e-5)
    assert {r.node: r.status for r in report.ranges}["relu"] == "ok"
    assert any("[overflow] amplify (Mul)" in line for line in report.lines())
    assert report.to_dict()["flagged"][0]["node"] == "amplify"


def test_safety_margin_flags_values_below_the_fp16_limit():
    x = np.full((1, 8), 0.2, dtype=np.float32)  # amplified: 20000 < 65504, > 65504 / 4
    report = fp16.tensor_ranges(_overflowing(), [{"x": x}], margin=4.0)
    assert [(r.node, r.status) for r in report.flagged] == [("amplify", "margin")]
    assert fp16.tensor_ranges(_overflowing(), [{"x": x}], margin=1.0).flagged == []


def test_ranges_take_the_peak_over_all_feeds_and_need_one():
    small = {"x": np.full((1, 8), 0.01, dtype=np.float32)}
    large = {"x": np.full((1, 8), 2.0, dtype=np.float32)}
    report = fp16.tensor_ranges(_overflowing(), [small, large])
    assert report.runs == 2 and report.nodes == ["amplify"]
    with pytest.raises(ExportError, match="at least one"):
        fp16.tensor_ranges(_overflowing(), [])


def test_unnamed_nodes_get_stable_names():
    model = _overflowing()
    for n in model.graph.node:
        n.name = ""
    report = fp16.tensor_ranges(model, [{"x": np.ones((1, 8), np.float32)}])
    assert report.nodes == ["Mul__0"]


# ----------------------------------------------------------------------------- conversion
def test_conversion_keeps_islands_fp32_with_casts_at_the_boundaries():
    model = _overflowing()
    converted, report = fp16.convert_to_fp16(model, {"amplify": "range", "shrink": "range"})
    types = _types(converted)
    assert types["amplified"] == TensorProto.FLOAT  # island output
    assert types["shrunk"] == TensorProto.FLOAT
    relu = next(n for n in converted.graph.node if n.name == "relu")
    assert types[relu.input[0]] == TensorProto.FLOAT16 and types[relu.output[0]] == TensorProto.FLOAT16
    assert types["y"] == TensorProto.FLOAT  # keep_io_types: the graph output is cast back
    assert report.fp32_nodes == 2 and report.fp16_nodes == 1 and report.casts == 2
    assert set(report.islands) == {"amplify", "shrink"}
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)
    (y,) = _run(converted, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.maximum(x, 0), rtol=2e-3, atol=1e-3)


def test_islands_decide_whether_an_activation_overflows():
    """|x| = 300: x * x = 9e4 overflows fp16 unless the square stays fp32.

    onnxruntime's CPU EP has no fp16 Mul/Sqrt kernels and runs such chains in fp32 (it inserts
    and then fuses Casts), so the overflow itself cannot be observed here: the test checks the
    types the graph asks for, which is what TensorRT (strongly typed) executes.
    """
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("Sqrt", ["sq"], ["y"], name="root")]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])])
    x = np.array([300.0, -300.0, 2.0, 0.5], np.float32)
    assert fp16.tensor_ranges(model, [{"x": x}]).nodes == ["square"]
    naive, _ = fp16.convert_to_fp16(model, ())
    assert _types(naive)["sq"] == TensorProto.FLOAT16
    kept, report = fp16.convert_to_fp16(model, fp16.island_nodes(model, extra=["square"]))
    assert _types(kept)["sq"] == TensorProto.FLOAT
    assert report.islands == {"square": "outside the fp16 range", "root": "precision-sensitive op (Sqrt)"}
    np.testing.assert_allclose(_run(kept, {"x": x})[0], np.abs(x), rtol=1e-6)


def test_shared_initializer_gets_an_fp16_copy_and_constants_beyond_fp16_block_their_consumer():
    nodes = [
        helper.make_node("Add", ["x", "w"], ["a"], name="add16"),
        helper.make_node("Mul", ["a", "w"], ["b"], name="mul32"),
        helper.make_node("Mul", ["b", "huge"], ["c"], name="scale"),
        helper.make_node("Div", ["c", "huge"], ["y"], name="unscale"),
    ]
    w = np.array([1.0, 2.0, 3.0, 1e-9], np.float32)  # 1e-9 is below fp16's smallest subnormal
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])],
                   [numpy_helper.from_array(w, "w"), _const("huge", 1e6)])
    converted, report = fp16.convert_to_fp16(model, {"mul32": "test"})
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    assert inits["w"] == TensorProto.FLOAT and inits["w__fp16"] == TensorProto.FLOAT16
    assert inits["huge"] == TensorProto.FLOAT
    assert report.islands["scale"] == "constant outside the fp16 range"
    assert report.flushed_to_zero == 1
    x = np.array([1, 2, 3, 4], np.float32)
    np.testing.assert_allclose(_run(converted, {"x": x})[0], (x + w) * w, rtol=2e-3)


def test_cast_to_float_inside_fp16_region_becomes_fp16():
    nodes = [
        helper.make_node("Cast", ["i"], ["f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["f", "x"], ["y"], name="add"),
    ]
    model = _model(nodes, [_vi("i", TensorProto.INT64, [3]), _vi("x", TensorProto.FLOAT, [3])],
                   [_vi("y", TensorProto.FLOAT, [3])])
    converted, _ = fp16.convert_to_fp16(model)
    cast = next(n for n in converted.graph.node if n.name == "cast")
    assert cast.attribute[0].i == TensorProto.FLOAT16
    y = _run(converted, {"i": np.array([1, 2, 3]), "x": np.array([0.5, 0.5, 0.5], np.float32)})[0]
    np.testing.assert_allclose(y, [1.5, 2.5, 3.5])


def test_island_rules():
    nodes = [
        helper.make_node("MatMul", ["x", "m"], ["a"], name="/apm_3/MatMul"),
        helper.make_node("Sqrt", ["a"], ["b"], name="/Sqrt_1"),
        helper.make_node("ReduceMean", ["b"], ["c"], name="/hpn_learner/enc/enc.1/ReduceMean", keepdims=1),
        helper.make_node("Sub", ["b", "c"], ["d"], name="/hpn_learner/enc/enc.1/Sub"),
        helper.make_node("Sqrt", ["d"], ["e"], name="/hpn_learner/enc/enc.1/Sqrt"),
        helper.make_node("Relu", ["e"], ["y"], name="/hpn_learner/enc/enc.2/Relu"),
        helper.make_node("Conv", ["y", "k"], ["z"], name="/conv1/Conv"),
    ]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [1, 1, 2, 2])], [_vi("z", TensorProto.FLOAT, None)])
    islands = fp16.island_nodes(model, extra=["/conv1/Conv"])
    assert islands["/apm_3/MatMul"] == "masker"
    assert islands["/Sqrt_1"].startswith("precision-sensitive op")
    assert islands["/hpn_learner/enc/enc.1/Sub"] == "normalisation statistics"
    assert islands["/conv1/Conv"] == "outside the fp16 range"
    assert "/hpn_learner/enc/enc.2/Relu" not in islands


# ----------------------------------------------------------------------------- exported model
@pytest.fixture(scope="module")
def episode_ranges(exported):
    result = exported(1)
    feeds = fp16.graph_feeds(result.out_dir, "episode", episodes=1)
    return result, feeds, fp16.tensor_ranges(result.out_dir / "episode.onnx", feeds, threads=2)


def test_export_range_report_lists_the_overflowing_masker_nodes(episode_ranges):
    """At 160 px with the untrained default the only values beyond fp16 are in APM's spectrum
    (squared DFT coefficients before the Sqrt of |F|, and the intended 1/0 = inf of the signed
    zero test); the backbone, correlations and learner stay far inside the range."""
    _, _, report = episode_ranges
    assert report.ranges and report.runs == 1
    flagged = {r.node for r in report.flagged}
    assert flagged, "\n".join(report.lines())
    assert all(n.startswith(("/apm", "/acpa")) for n in flagged), sorted(flagged)
    outside = [r for r in report.ranges if not r.node.startswith(("/apm", "/acpa"))]
    assert max(r.max_abs for r in outside) < fp16.FP16_MAX / fp16.DEFAULT_MARGIN


def test_exported_graph_converts_and_runs_in_onnxruntime(episode_ranges, tmp_path):
    result, feeds, report = episode_ranges
    out = fp16.prepare_fp16_graph(result.out_dir / "episode.onnx", tmp_path / "episode.fp16.onnx", feeds, threads=2)
    assert out.path.is_file() and out.path.with_suffix(".json").is_file()
    model = onnx.load(str(out.path))
    onnx.checker.check_model(model)
    types = _types(model)
    islands = out.conversion.islands
    assert set(report.nodes) <= set(islands)
    assert any(r.startswith("masker") for r in islands.values())
    assert any(r == "normalisation statistics" for r in islands.values())
    for node in model.graph.node:  # every island computes in fp32, every Conv in fp16
        float_outs = [types.get(o) for o in node.output if types.get(o) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        if node.name in islands and node.op_type != "Cast":
            assert all(t == TensorProto.FLOAT for t in float_outs), node.name
        if node.op_type == "Conv":
            assert float_outs == [TensorProto.FLOAT16], node.name
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT] * 3
    ref = _run(onnx.load(str(result.out_dir / "episode.onnx")), feeds[0])
    got = _run(model, feeds[0])
    assert got[0].dtype == np.float32
    rel = np.linalg.norm(got[0] - ref[0]) / np.linalg.norm(ref[0])
    assert rel < 1e-2
    assert (got[1] == ref[1]).mean() > 0.99
