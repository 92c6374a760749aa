"""int8 QDQ graphs: the format TensorRT and onnxruntime both take, and the float islands."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lfm_deploy.errors import ExportError
from lfm_deploy.precision.int8 import float_islands, quantizable_nodes, quantize_int8
from lfm_deploy.precision.fp16 import graph_feeds


@pytest.fixture(scope="module")
def head_int8(exported, tmp_path_factory):
    """The 160 px head graph quantized with and without a float share, on one calibration cache."""
    art = exported(shots=1).out_dir
    feeds = graph_feeds(art, "head", episodes=2, seed=100)
    work = tmp_path_factory.mktemp("int8")
    cache = work / "ranges.json"
    full = quantize_int8(art / "head.onnx", work / "head.int8.onnx", feeds, cache=cache)
    half = quantize_int8(art / "head.onnx", work / "head.half.int8.onnx", feeds, float_tail=0.5, cache=cache)
    return art, full, half, cache


def _initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_int8_graph_is_symmetric_per_channel_qdq(head_int8):
    _, full, _, _ = head_int8
    model = onnx.load(str(full.path))
    inits = _initializers(model)
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequant = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quant and dequant
    # Every zero point is int8 zero (symmetric), and only int8 is dequantized (no int32 biases):
    # what TensorRT's explicit quantization takes.
    for node in quant + dequant:
        assert len(node.input) == 3
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), node.name
    for node in dequant:
        if node.input[0] in inits:
            assert inits[node.input[0]].dtype == np.int8, node.name
    # Conv weights are int8 initializers with one scale per output channel.
    weights = [n for n in dequant if n.input[0] in inits and inits[n.input[0]].dtype == np.int8
               and inits[n.input[0]].ndim == 4]
    assert weights
    for node in weights:
        w, scale = inits[node.input[0]], inits[node.input[1]]
        assert scale.shape == (w.shape[0],), node.name
        axis = [a.i for a in node.attribute if a.name == "axis"]
        assert axis in ([], [0])
    # Where onnxruntime's int8 kernels may saturate (x86 without VNNI), the weights use 7 bits.
    from lfm_deploy.runtime.precisions import int8_may_saturate

    assert full.reduce_range == int8_may_saturate() and full.to_dict()["reduce_range"] == full.reduce_range
    peak = max(int(np.abs(inits[n.input[0]].astype(np.int32)).max()) for n in weights)
    assert peak <= 64 if full.reduce_range else peak > 64, peak


def test_masker_stays_float_and_tail_share_is_kept_float(head_int8):
    art, full, half, _ = head_int8
    source = onnx.load(str(art / "head.onnx"))
    islands = float_islands(source)
    assert islands and set(islands.values()) <= {"masker", "mask resize"}
    candidates = quantizable_nodes(source)
    assert not set(islands) & set(candidates)
    assert set(full.quantized) == set(candidates)
    # The float share is taken from the output end, in graph order.
    tail = candidates[len(half.quantized):]
    assert half.quantized == candidates[: len(half.quantized)] and len(tail) == round(0.5 * len(candidates))
    assert all(half.float_nodes[n] == "kept float by measurement (output end)" for n in tail)
    # In the written graph, no QDQ pair feeds a masker node.
    model = onnx.load(str(full.path))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in islands:
            feeders = [produced_by.get(i) for i in node.input]
            assert not any(f is not None and f.op_type == "DequantizeLinear" for f in feeders), node.name


def test_int8_graph_runs_and_stays_close_on_the_logits(head_int8):
    from lfm_deploy.runtime.sessions import SessionFromOnnx

    art, full, _, _ = head_int8
    feed = graph_feeds(art, "head", episodes=1, seed=7)[0]
    ref = SessionFromOnnx(art / "head.onnx", threads=2)().run(None, feed)
    got = SessionFromOnnx(full.path, threads=2)().run(None, feed)
    rel = np.linalg.norm(got[0] - ref[0]) / np.linalg.norm(ref[0])
    assert rel < 0.05


def test_calibration_cache_is_reused(head_int8, tmp_path):
    art, full, _, cache = head_int8
    assert cache.is_file()
    # With the cache, no calibration feed is read: an empty-looking feed list of the wrong tensors still works.
    again = quantize_int8(art / "head.onnx", tmp_path / "again.onnx", [{"unused": np.zeros(1)}], cache=cache)
    assert again.path.is_file() and set(again.quantized) == set(full.quantized)


def test_bad_arguments_are_export_errors(exported, tmp_path):
    art = exported(shots=1).out_dir
    with pytest.raises(ExportError, match="not found"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "x.onnx", [{}])
    with pytest.raises(ExportError, match="at least one feed"):
        quantize_int8(art / "head.onnx", tmp_path / "x.onnx", [])
    with pytest.raises(ExportError, match="within 0..1"):
        quantize_int8(art / "head.onnx", tmp_path / "x.onnx", [{}], float_tail=1.5)


def _float_keys(int8_path, keys):
    """The fp32 graph's keys (`node_keys`) of the Conv/MatMul nodes with weights that an int8 graph
    left float: their weights are still float initializers (a quantized node's come through a
    DequantizeLinear). Activations may be dequantized for a float node too, where the tensor also
    feeds a quantized one, so they do not tell."""
    model = onnx.load(str(int8_path))
    weights = {t.name for t in model.graph.initializer}
    return {keys[n.name] for n in model.graph.node if n.name in keys and n.input[1] in weights}


def _weighted(group_keys):
    return {k for k in group_keys if k[1] == "weight"}


@pytest.mark.parametrize("needed, max_share, chosen", [((1, 3), 0.75, [2, 4]), ((0, 1, 3), 0.5, [1, 2])])
def test_int8_keeps_float_the_groups_the_masks_are_sensitive_to(exported, tmp_path, monkeypatch, caplog,
                                                                needed, max_share, chosen):
    """The selection by measured sensitivity on real quantized graphs, with a scripted verdict: the
    masks pass the selection gate only when every group in `needed` is float. All int8 fails, each
    group alone is tried, the most helpful ones are kept float together until the masks pass; with
    no pass within `max_share`, the trial closest to passing is used. The encoder and the episode
    graph keep float exactly the same nodes as the head (matched by `node_keys`)."""
    from types import SimpleNamespace

    from lfm_deploy.precision import pipeline
    from lfm_deploy.precision.int8 import node_keys, sensitivity_groups

    art = exported(shots=1).out_dir
    fp32 = {g: art / f"{g}.onnx" for g in ("episode", "encoder", "head")}
    keys = {g: node_keys(onnx.load(str(p))) for g, p in fp32.items()}
    monkeypatch.setattr(pipeline, "SENSITIVITY_GROUPS", 4)
    monkeypatch.setattr(pipeline, "MAX_FLOAT_SHARE", max_share)
    groups = sensitivity_groups({g: keys[g] for g in ("encoder", "head")}, 4)
    assert len(groups) == 4 and all(_weighted(g) for g in groups) and set().union(*map(set, groups)) == set(keys["head"].values()) | set(keys["encoder"].values())
    assert set(keys["episode"].values()) == set(keys["head"].values()) | set(keys["encoder"].values())

    def verdict(out, held_out, ref, what):
        floats = _float_keys(out["head"], keys["head"])
        whole = sum(1 for i in needed if _weighted(groups[i]) <= floats)
        agreement = 0.995 - 0.001 * (len(needed) - whole) + 5e-4
        tol = SimpleNamespace(mask=SimpleNamespace(limit=0.995), miou=SimpleNamespace(limit=0.0025))
        passed = whole == len(needed)
        return SimpleNamespace(mask=SimpleNamespace(stats=SimpleNamespace(agreement=agreement)), miou_delta=0.0,
                               tolerances=tol, passed=passed, failures=[] if passed else ["scripted"])

    work = tmp_path / "work"
    work.mkdir()
    feeds = {g: graph_feeds(art, g, episodes=1, seed=100) for g in fp32}
    made, details = pipeline._int8(work, fp32, feeds, SimpleNamespace(label="scripted"), None, verdict,
                                   lambda out: dict(out), lambda what: None)
    trials = details["trials"]
    assert [t["float_groups"] for t in trials[:5]] == [[], [1], [2], [3], [4]]
    assert details["float_groups"] == chosen
    if max_share == 0.75:  # the two groups that matter, together: a pass
        assert len(trials) == 6 and trials[-1]["passed"] and trials[-1]["float_groups"] == chosen
    else:  # three are needed, two allowed: the closest trial is used, and said so
        assert not any(t["passed"] for t in trials) and "closest one goes to the gate" in caplog.text
        assert max(trials, key=lambda t: t["slack"])["float_groups"] == chosen
    floats = {k for i in chosen for k in groups[i - 1]}
    assert details["float_share"] == pytest.approx(len(floats) / sum(map(len, groups)))
    for g, path in made.items():
        assert path == work / f"{g}.int8.onnx"
        assert _float_keys(path, keys[g]) == _weighted(floats) & set(keys[g].values()), g
