"""Where the per-query time of the served path goes: per-node profiles from onnxruntime and OpenVINO.

The served path is `Segmenter.predict` with the support set cached: one run of the head graph
(query backbone + masker + 4D correlation + center-pivot 4D-conv learner + decoder) per batch.
This script, on one export (default: a 400x400 deepglobe export, made if missing):

* times `Segmenter.predict` end to end (uint8 image in, mask out) per backend, and with
  `--eager` the eager PyTorch 1-shot episode, interleaved round by round so that all see the same
  machine load (the ratio is what the issue's goal is stated in);
* profiles the head graph's run with onnxruntime's per-node profiler (`enable_profiling`, the
  JSON trace parsed) and OpenVINO's per-layer counters (`PERF_COUNT`, `get_profiling_info()`),
  on the inputs the Segmenter feeds it (the cached support features, a preprocessed query);
  `ov-int8` profiles the int8 QDQ head graph of an `--precision int8` export (the file the
  Segmenter loads for it), the others the float32 graph; each OpenVINO backend with `-static`
  (`ov-int8-static`) is compiled for the profiled inputs' shapes, as `openvino_static_shapes=True` does; OpenVINO rows also say which kernel ran
  (exec type) and in what precision (the runtime layer's `runtimePrecision`: I8/U8, FP32, BF16);
* groups node times by op type and by graph region (backbone, masker, correlation, 4D-conv
  head, decoder, layout reorders) with the share of the total and, for the groups that hold
  convolutions and matrix products, the FLOPs they do and the GFLOP/s they achieve;
* counts the model's FLOPs per query (Conv/MatMul/Gemm in OpenVINO's static-shape view of the
  head graph, multiply-add = 2 FLOPs) and measures this CPU's float32 matrix-product throughput
  (onnxruntime MatMul (MLAS) and numpy (BLAS), n x n x n, the same threads), so it can say at
  what share of that throughput the fp32 graph runs.

Writes <out>.json (everything) and <out>.md (the tables), default
benchmarks/results/profile_query.{json,md}.

    python benchmarks/profile_query.py --export artifacts/bench-deepglobe-400 --threads 2 --eager
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfm_deploy.utils.versions import describe_cpu  # noqa: E402  (after the path set-up above)

log = logging.getLogger("profile_query")

#: Graph regions. onnxslim flattens most module scopes out of node names ("/conv1_29/Conv"), so
#: regions are found from the graph's structure (`graph_regions`), not from names.
BACKBONE, MASKER, CORRELATION, HEAD4D, DECODER, LAYOUT, OTHER = (
    "backbone", "masker (APM/ACPA)", "correlation", "4D-conv head", "decoder", "layout reorders", "other")
#: Ops whose FLOPs are counted (multiply-adds x 2); the rest count as memory-bound.
FLOP_OPS = {"Conv", "FusedConv", "NchwcConv", "QLinearConv", "ConvInteger", "MatMul", "FusedMatMul", "Gemm",
            "MatMulInteger", "QLinearMatMul", "Convolution", "GroupConvolution", "FullyConnected"}


def graph_regions(onnx_path: Path) -> dict[str, str]:
    """{node name and output tensor name: region} of a head graph, from its structure.

    * masker: nodes in the `/apm` and `/acpa` scopes (kept by the exporter);
    * the 4D-conv head: everything downstream of the correlation's clamp (`Clip` on a tensor
      that depends on the support features), up to the decoder: center-pivot convolutions, group
      norms, the query-dim interpolations, the support mean;
    * decoder: the `decoder*` scopes and what follows them (upsampling, argmax);
    * backbone: convolutions upstream of the correlation and everything feeding them;
    * correlation: the rest (feature norms, the cosine matrix products, stacking, the clamp).
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    support_inputs = {i.name for i in graph.input if i.name.startswith("support")}

    def downstream(starts):
        seen, stack = set(), list(starts)
        while stack:
            n = stack.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            for o in n.output:
                stack.extend(consumers.get(o, []))
        return seen

    def upstream(starts):
        seen, stack = set(), list(starts)
        while stack:
            n = stack.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            stack.extend(producer[i] for i in n.input if i in producer)
        return seen

    from_support = downstream([c for i in support_inputs for c in consumers.get(i, [])])
    clamps = [n for n in nodes if n.op_type in ("Clip", "Relu") and n.name in from_support
              and n.input[0] in producer
              and producer[n.input[0]].op_type in ("Concat", "MatMul", "Reshape", "DequantizeLinear")]
    learner = downstream([c for n in clamps for o in n.output for c in consumers.get(o, [])])
    decoder = downstream([n for n in nodes if "decoder" in n.name])
    masker = {n.name for n in nodes if n.name.startswith(("/apm", "/acpa"))}
    convs_before = [n for n in nodes if n.op_type == "Conv" and n.name not in learner and n.name not in decoder]
    backbone = upstream(convs_before) - from_support
    regions = {}
    for n in nodes:
        if n.name in masker:
            r = MASKER
        elif n.name in decoder:
            r = DECODER
        elif n.name in learner:
            r = HEAD4D
        elif n.name in backbone:
            r = BACKBONE
        else:
            r = CORRELATION
        regions[n.name] = r
        for o in n.output:
            regions.setdefault(o, r)
    return regions


def region_of(name: str, op: str, regions: dict[str, str]) -> str:
    """The region of a runtime node: onnxruntime and OpenVINO keep or suffix the original names
    ("/conv1_31/Conv_output_0_nchwc", "/conv1_31/Conv/WithoutBiases"); reorders are layout."""
    if op.startswith("Reorder") or name.startswith("Reorder"):
        return LAYOUT
    candidates = [name]
    for suffix in ("_nchwc", "_output_0_nchwc"):
        if name.endswith(suffix):
            candidates.append(name[: -len(suffix)])
    parts = name.split("/")
    candidates += ["/".join(parts[:i]) for i in range(len(parts) - 1, 1, -1)]
    for c in candidates:
        if c in regions:
            return regions[c]
    return OTHER


# ----------------------------------------------------------------------------- FLOPs
def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def node_flops(op: str, inputs: list, outputs: list) -> int:
    """FLOPs of one Conv/MatMul/Gemm-like node from its input and output shapes (2 per multiply-add).

    Convolutions: 2 x output elements x (weight elements / output channels), which holds for
    grouped and blocked (NCHWc) weights alike. Matrix products: 2 x output elements x K.
    """
    if not outputs or not inputs or not outputs[0]:
        return 0
    out = outputs[0]
    if "Conv" in op:
        if len(inputs) < 2 or not inputs[1] or len(out) < 2 or not out[1]:
            return 0
        return 2 * _prod(out) * _prod(inputs[1]) // int(out[1])
    if op in ("MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FullyConnected"):
        a = inputs[0]
        if not a:
            return 0
        k = a[-1] if op != "Gemm" else max(a)  # Gemm's transA is rare here; K is the shared dim
        if op == "Gemm" and len(inputs) > 1 and inputs[1]:
            k = a[-1] if a[-1] in inputs[1] else a[0]
        return 2 * _prod(out) * int(k)
    return 0


def model_flops_openvino(path: Path, batch: int) -> tuple[int, dict[str, int]]:
    """FLOPs per batch of the head graph, and per original layer (friendly name), from OpenVINO's
    static-shape view (the query input reshaped to `batch`)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.get_length() and shape[0].is_dynamic:
            dims = [batch] + [d.get_length() for d in list(shape)[1:]]
            shapes[port.get_any_name()] = dims
    if shapes:
        model.reshape(shapes)
    per = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        ins = [list(op.input(i).get_shape()) for i in range(op.get_input_size())]
        outs = [list(op.output(0).get_shape())]
        if kind == "MatMul":
            a = ins[0]
            transpose_a = op.get_attributes().get("transpose_a", False)
            k = a[-2] if transpose_a else a[-1]
            per[op.get_friendly_name()] = 2 * _prod(outs[0]) * int(k)
        elif kind == "GroupConvolution":  # weights (G, Cout/G, Cin/G, kh, kw)
            w = ins[1]
            per[op.get_friendly_name()] = 2 * _prod(outs[0]) * _prod(w[2:])
        else:
            per[op.get_friendly_name()] = 2 * _prod(outs[0]) * _prod(ins[1]) // int(outs[0][1])
    return sum(per.values()), per


# ----------------------------------------------------------------------------- matmul peak
def matmul_throughput(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    """float32 n x n x n matrix-product throughput (GFLOP/s, best of `repeats`): onnxruntime's MatMul
    (MLAS, what the graphs use) and numpy's BLAS, with `threads` threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    flops = 2.0 * n ** 3
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    best_ort, best_np = float("inf"), float("inf")
    sess.run(None, {"A": a, "B": b})
    a @ b
    for _ in range(repeats):  # interleaved: both see the same load
        t = time.perf_counter()
        sess.run(None, {"A": a, "B": b})
        best_ort = min(best_ort, time.perf_counter() - t)
        t = time.perf_counter()
        a @ b
        best_np = min(best_np, time.perf_counter() - t)
    del onnx
    return {"n": n, "threads": threads, "onnxruntime_gflops": flops / best_ort / 1e9,
            "numpy_gflops": flops / best_np / 1e9, "best_gflops": flops / min(best_ort, best_np) / 1e9}


# ----------------------------------------------------------------------------- inputs
def served_inputs(export: Path, batch: int, threads: int, precision: str | None = None):
    """A Segmenter with a support set, the head's feed for `batch` queries, and the uint8 queries."""
    from lfm_deploy.data.synthetic import synthetic_pair
    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts(export, threads=threads, precision=precision)
    size = seg.image_size
    image, mask = synthetic_pair(size, 0, 0, 1)
    seg.set_support([np.asarray(image)], [np.asarray(mask)])
    queries = [np.asarray(synthetic_pair(size, 0, 0, 100 + i)[0]) for i in range(batch)]
    query = np.stack([seg.preprocessing.image(q, "query")[0] for q in queries])
    io = seg._io["head"]
    feed = {io.input("query"): query, **seg._support.features}
    return seg, feed, queries, [io.output("mask")]


#: backend -> (Segmenter providers, precision the Segmenter runs, OpenVINO inference precision)
BACKENDS = {"ort": (None, "fp32", None), "ov": ("openvino", "fp32", "fp32"), "ov-bf16": ("openvino", "bf16", "bf16"),
            "ov-int8": ("openvino", "int8", "fp32")}
#: OpenVINO backends compiled for the profiled inputs' shapes (`Segmenter(openvino_static_shapes=True)`).
STATIC_SUFFIX = "-static"
BACKENDS.update({name + STATIC_SUFFIX: spec for name, spec in list(BACKENDS.items()) if spec[0] == "openvino"})
#: backend -> key of its profile in the results
PROFILE_KEYS = {"ort": "onnxruntime", "ov": "openvino", "ov-bf16": "openvino-bf16", "ov-int8": "openvino-int8"}
PROFILE_KEYS.update({name + STATIC_SUFFIX: key + STATIC_SUFFIX for name, key in list(PROFILE_KEYS.items())
                     if name + STATIC_SUFFIX in BACKENDS})


def head_file(export: Path, backend: str) -> Path:
    """The head graph a backend's Segmenter loads: the int8 QDQ file for ov-int8, else the float32 one
    (`lfm_deploy.runtime.precisions`; an int8 export's float32 graphs are its `reference_graphs`)."""
    from lfm_deploy.manifest import read_manifest
    from lfm_deploy.runtime.precisions import resolve_precision

    manifest = read_manifest(export, verify_files=False)
    providers, precision, _ = BACKENDS[backend]
    run = resolve_precision(manifest, precision, openvino=providers == "openvino")
    return export / ((run.files or {}).get("head") or manifest.graphs["head"].file)


# ----------------------------------------------------------------------------- profiles
def _summarise(nodes: list[dict], total_us: float) -> dict:
    """Group node records ({name, op, us, flops}, OpenVINO's with exec_type and precision) by op
    type, by region and (OpenVINO) by executed precision and by region x precision."""
    def group(key):
        out = {}
        for n in nodes:
            g = out.setdefault(n[key], {"us": 0.0, "flops": 0, "nodes": 0})
            g["us"] += n["us"]
            g["flops"] += n["flops"]
            g["nodes"] += 1
        for g in out.values():
            g["share"] = g["us"] / total_us if total_us else 0.0
            g["gflops_per_s"] = g["flops"] / (g["us"] * 1e3) if g["flops"] and g["us"] else None
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"]))

    top = sorted(nodes, key=lambda n: -n["us"])[:15]
    summary = {"total_ms": total_us / 1e3, "by_op": group("op"), "by_region": group("region"),
               "top_nodes": [{**n, "share": n["us"] / total_us} for n in top]}
    if nodes and "precision" in nodes[0]:
        for n in nodes:
            n["region_precision"] = f"{n['region']} / {n['precision']}"
            n["op_precision"] = f"{n['op']} / {n['precision']}"
        summary.update(by_precision=group("precision"), by_region_precision=group("region_precision"),
                       by_op_precision=group("op_precision"))
    return summary


def profile_onnxruntime(export: Path, feed: dict, outputs: list[str], threads: int, runs: int,
                        regions: dict[str, str]) -> dict:
    """Per-node times of the head graph under onnxruntime (mean over `runs` profiled runs after one warm-up)."""
    import onnxruntime as ort

    from lfm_deploy.runtime.sessions import SessionConfig

    opts = SessionConfig(threads=threads).session_options()
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="lfm-ortprof-") as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "head")
        sess = ort.InferenceSession(str(head_file(export, "ort")), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(outputs, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    runs_us, nodes = [], {}
    for ev in trace:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs_us.append(ev["dur"])
    # Node events come in run order; keep those of the profiled runs (skip the warm-up's).
    node_events = [ev for ev in trace if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time")]
    per_run = len(node_events) // (runs + 1) if node_events else 0
    for ev in node_events[per_run:]:
        name = ev["name"][: -len("_kernel_time")]
        args = ev.get("args", {})
        op = args.get("op_name", "?")
        rec = nodes.get(name)
        if rec is None:
            ins = [list(d.values())[0] for d in args.get("input_type_shape", [])]
            outs = [list(d.values())[0] for d in args.get("output_type_shape", [])]
            rec = nodes[name] = {"name": name, "op": op, "region": region_of(name, op, regions), "us": 0.0,
                                 "flops": node_flops(op, ins, outs)}
        rec["us"] += ev["dur"] / runs
    records = list(nodes.values())
    total = sum(n["us"] for n in records)
    summary = _summarise(records, total)
    summary["run_ms_mean"] = float(np.mean(runs_us[1:])) / 1e3 if len(runs_us) > 1 else None
    summary["flops"] = int(sum(n["flops"] for n in records))
    return summary


def profile_openvino(head: Path, feed: dict, outputs: list[str], threads: int, runs: int, precision: str,
                     layer_flops: dict[str, int], regions: dict[str, str], static: bool = False) -> dict:
    """Per-layer times of a head graph under OpenVINO's CPU plugin (`PERF_COUNT`), mean over `runs`;
    `static`: compiled for the feed's shapes, as `openvino_static_shapes=True` compiles it."""
    import openvino as ov

    from lfm_deploy.runtime.openvino import SessionFromOpenVINO

    loader = SessionFromOpenVINO(head, precision, threads=threads)
    core = ov.Core()
    model = core.read_model(str(head))
    if static:
        model.reshape({port.get_any_name(): list(feed[port.get_any_name()].shape) for port in model.inputs})
    compiled = core.compile_model(model, "CPU", {**loader.config(), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    names = {port.get_any_name(): port for port in compiled.inputs}
    inputs = {names[k]: v for k, v in feed.items() if k in names}
    request.infer(inputs)
    # Fused runtime layers -> the original layers they execute (their FLOPs).
    fused, executed = {}, {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        fused[op.get_friendly_name()] = info["originalLayersNames"].astype(str).split(",")
        executed[op.get_friendly_name()] = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
    nodes, wall = {}, []
    for _ in range(runs):
        t = time.perf_counter()
        request.infer(inputs)
        wall.append(time.perf_counter() - t)
        for p in request.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            us = p.real_time.total_seconds() * 1e6 if hasattr(p.real_time, "total_seconds") else float(p.real_time)
            rec = nodes.get(p.node_name)
            if rec is None:
                originals = fused.get(p.node_name, [p.node_name])
                rec = nodes[p.node_name] = {
                    "name": p.node_name, "op": p.node_type, "exec_type": p.exec_type,
                    "precision": executed.get(p.node_name, "?"),
                    "region": _ov_region(p.node_name, p.node_type, originals, regions),
                    "us": 0.0, "flops": int(sum(layer_flops.get(o, 0) for o in originals))}
            rec["us"] += us / runs
    records = list(nodes.values())
    total = sum(n["us"] for n in records)
    summary = _summarise(records, total)
    summary["run_ms_mean"] = float(np.mean(wall)) * 1e3
    summary["flops"] = int(sum(n["flops"] for n in records))
    summary["precision"] = precision
    return summary


def _ov_region(name: str, op: str, originals: list[str], regions: dict[str, str]) -> str:
    """A runtime layer's region: its own name's, else the first of its fused original layers' that
    is known (a Reorder OpenVINO inserted belongs to layout whatever its name)."""
    if op == "Reorder":
        return LAYOUT
    for candidate in [name, *originals]:
        r = region_of(candidate, op, regions)
        if r != OTHER:
            return r
    return OTHER


# ----------------------------------------------------------------------------- timing
def time_served(export: Path, backends: list[str], batch: int, threads: int, warmup: int, iters: int,
                eager: bool) -> dict:
    """`Segmenter.predict` per backend (and the eager episode), interleaved round by round."""
    from lfm_deploy.data.synthetic import synthetic_pair
    from lfm_deploy.manifest import read_manifest
    from lfm_deploy.runtime import Segmenter

    manifest = read_manifest(export)
    size = manifest.image_size
    image, mask = np.asarray(synthetic_pair(size, 0, 0, 1)[0]), np.asarray(synthetic_pair(size, 0, 0, 1)[1])
    queries = [np.asarray(synthetic_pair(size, 0, 0, 100 + i)[0]) for i in range(batch)]
    calls = {}
    for backend in backends:
        providers, precision, _ = BACKENDS[backend]
        seg = Segmenter.from_artifacts(export, providers=providers, precision=precision, threads=threads,
                                       openvino_static_shapes=backend.endswith(STATIC_SUFFIX))
        seg.set_support([image], [mask])
        calls[backend] = (lambda s: lambda: s.predict(queries, batch_size=batch))(seg)
    if eager:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_runtime import EagerEpisode

        runner = EagerEpisode(manifest, [image], [mask], queries[0], threads)
        calls["eager"] = runner
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples = {k: [] for k in calls}
    for _ in range(iters):
        for k, call in calls.items():
            t = time.perf_counter()
            call()
            samples[k].append(time.perf_counter() - t)
    out = {}
    for k, s in samples.items():
        ms = np.asarray(s) * 1e3
        per = 1 if k == "eager" else batch
        out[k] = {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "per_image_ms": float(np.median(ms)) / per,
                  "samples_ms": ms.round(2).tolist()}
    if eager:
        for k in backends:
            out[k]["ratio_to_eager"] = out[k]["per_image_ms"] / out["eager"]["median_ms"]
    return out


# ----------------------------------------------------------------------------- report
def _table(groups: dict, total_ms: float, limit: int = 12) -> list[str]:
    lines = ["| group | ms | share | nodes | GFLOP | GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for name, g in list(groups.items())[:limit]:
        gf = f"{g['flops'] / 1e9:.2f}" if g["flops"] else "-"
        rate = f"{g['gflops_per_s']:.0f}" if g["gflops_per_s"] else "-"
        lines.append(f"| {name} | {g['us'] / 1e3:.1f} | {g['share']:.1%} | {g['nodes']} | {gf} | {rate} |")
    return lines


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Per-query profile of the served path ({result['size']} px, batch {result['batch']})", "",
             f"CPU: {describe_cpu(m)}, {m.get('physical_cores')} physical cores, {result['threads']} threads; "
             f"load average at start {result['load_average'][0]:.2f} "
             f"({'shared machine: timings are noisy' if result['load_average'][0] > 0.5 else 'quiet'}). "
             f"onnxruntime {result['versions'].get('onnxruntime')}, OpenVINO {result['versions'].get('openvino')}.",
             "", f"Model: {result['flops_per_query'] / 1e9:.1f} GFLOP per query (head graph: Conv/MatMul, "
             "multiply-add = 2). Measured float32 matmul throughput "
             f"({result['matmul']['n']}^3): onnxruntime {result['matmul']['onnxruntime_gflops']:.0f} GFLOP/s, "
             f"numpy {result['matmul']['numpy_gflops']:.0f} GFLOP/s.", ""]
    timing = result.get("timing") or {}
    if timing:
        lines += ["| path | per image ms (median) | achieved GFLOP/s | share of matmul peak | ratio to eager episode |",
                  "|---|---:|---:|---:|---:|"]
        for k, t in timing.items():
            flops = result["flops_per_query"] * (2.0 if k == "eager" else 1.0)  # eager: both backbones
            rate = flops / (t["per_image_ms"] * 1e6)
            ratio = f"{t['ratio_to_eager']:.2f}x" if "ratio_to_eager" in t else "-"
            lines.append(f"| {k} | {t['per_image_ms']:.0f} | {rate:.0f} | "
                         f"{rate / result['matmul']['best_gflops']:.0%} | {ratio} |")
        lines += ["", "(eager: the whole 1-shot episode, whose support backbone roughly doubles the backbone "
                  "FLOPs; its GFLOP/s uses 2x the head's count as an approximation.)", ""]
    titles = {"onnxruntime": "onnxruntime fp32 (per-node profiler)", "openvino": "OpenVINO fp32 (PERF_COUNT)",
              "openvino-bf16": "OpenVINO bf16 (PERF_COUNT)", "openvino-int8": "OpenVINO int8 QDQ graph (PERF_COUNT)"}
    titles.update({key + STATIC_SUFFIX: title.replace(" (PERF", ", static shapes (PERF")
                   for key, title in list(titles.items()) if key.startswith("openvino")})
    for key, title in titles.items():
        p = result["profiles"].get(key)
        if not p:
            continue
        lines += [f"## {title}: {p['total_ms']:.0f} ms of node time per run "
                  f"(run {p['run_ms_mean']:.0f} ms), {p['flops'] / 1e9:.1f} GFLOP counted", "",
                  "By region:", ""] + _table(p["by_region"], p["total_ms"]) + ["", "By op type:", ""] \
            + _table(p["by_op"], p["total_ms"])
        if "by_precision" in p:  # OpenVINO: the precision each runtime layer executed in
            lines += ["", "By executed precision:", ""] + _table(p["by_precision"], p["total_ms"]) \
                + ["", "By region x executed precision:", ""] + _table(p["by_region_precision"], p["total_ms"], 20) \
                + ["", "By op type x executed precision:", ""] + _table(p["by_op_precision"], p["total_ms"], 20)
        lines += ["", "Top nodes:", "", "| node | op | exec type | precision | region | ms | share | GFLOP/s |",
                  "|---|---|---|---|---|---:|---:|---:|"]
        for n in p["top_nodes"][:15]:
            rate = f"{n['flops'] / (n['us'] * 1e3):.0f}" if n["flops"] and n["us"] else "-"
            lines.append(f"| `{n['name'][-60:]}` | {n['op']} | {n.get('exec_type', '-')} | {n.get('precision', '-')} | "
                         f"{n['region']} | {n['us'] / 1e3:.1f} | {n['share']:.1%} | {rate} |")
        lines.append("")
    lines += ["Reproduce: `" + result["command"] + "`", ""]
    return "\n".join(lines)


def _ensure_export(path: Path | None, size: int) -> Path:
    """The export to profile (made at `size` when missing): bench_runtime's."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_runtime import _ensure_artifacts

    return _ensure_artifacts(path, size)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--export", type=Path, default=None,
                        help="lfm-export directory (default: artifacts/bench-deepglobe-<size>, exported if missing)")
    parser.add_argument("--size", type=int, default=400, help="image size of the export made when --export is missing")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="profiled runs per backend (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="timing: warm-up rounds")
    parser.add_argument("--iters", type=int, default=5, help="timing: rounds (every path once per round)")
    parser.add_argument("--backends", nargs="+", default=["ort", "ov", "ov-bf16"], choices=list(BACKENDS),
                        help="ov-int8: the int8 QDQ graphs of an --precision int8 export; "
                             "-static: compiled for the profiled shapes (openvino_static_shapes=True)")
    parser.add_argument("--eager", action="store_true", help="also time the eager 1-shot episode (needs torch)")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profile_query"),
                        help="output prefix: <out>.json and <out>.md")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    logging.getLogger("lfm_deploy").setLevel(logging.WARNING)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import results_dir
    from lfm_deploy.utils.versions import library_versions, machine

    try:  # the result files are checked before the benchmark runs
        out_dir, names = results_dir(args.out, (".json", ".md"), overwrite=args.overwrite)
    except LFMError as exc:
        parser.error(exc.cli_message())
    export = _ensure_export(args.export, args.size)
    result = {"size": None, "batch": args.batch, "threads": args.threads, "export": str(export),
              "machine": machine(args.threads), "load_average": os.getloadavg(),
              "versions": library_versions(("numpy", "onnxruntime", "openvino", "torch")),
              "command": "python benchmarks/profile_query.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    log.info("matmul throughput (%d^3, %d threads)", args.matmul_n, args.threads)
    result["matmul"] = matmul_throughput(args.threads, args.matmul_n)
    seg, feed, _, outputs = served_inputs(export, args.batch, args.threads, "fp32")
    result["size"] = seg.image_size
    seg.close()
    flops, layer_flops = model_flops_openvino(head_file(export, "ov"), args.batch)
    result["flops_per_query"] = flops / args.batch
    regions = graph_regions(head_file(export, "ov"))
    result["profiles"] = {}
    if "ort" in args.backends:
        log.info("onnxruntime profile (%d runs)", args.runs)
        result["profiles"]["onnxruntime"] = profile_onnxruntime(export, feed, outputs, args.threads, args.runs,
                                                                regions)
    for backend in [b for b in BACKENDS if b != "ort"]:
        if backend in args.backends:
            _, precision, ov_precision = BACKENDS[backend]
            head, backend_feed, backend_regions, backend_flops = head_file(export, backend), feed, regions, layer_flops
            if precision == "int8":  # its own graph, fed by its own (int8) encoder's support features
                seg, backend_feed, _, _ = served_inputs(export, args.batch, args.threads, precision)
                seg.close()
                backend_regions = graph_regions(head)
                backend_flops = model_flops_openvino(head, args.batch)[1]
            log.info("OpenVINO %s profile of %s (%d runs)", backend, head.name, args.runs)
            result["profiles"][PROFILE_KEYS[backend]] = profile_openvino(
                head, backend_feed, outputs, args.threads, args.runs, ov_precision, backend_flops, backend_regions,
                static=backend.endswith(STATIC_SUFFIX))
    log.info("timing Segmenter.predict%s (%d rounds)", " and the eager episode" if args.eager else "", args.iters)
    result["timing"] = time_served(export, args.backends, args.batch, args.threads, args.warmup, args.iters, args.eager)
    result["load_average_end"] = os.getloadavg()
    out_dir.write_json(names[".json"], result)
    out_dir.write_text(names[".md"], markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
