"""TensorRT engine builds: plan/config/profile logic against a fake `tensorrt`, sidecar checks,
the CLI without TensorRT, and (needs_trt) a real build on a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from lfm_deploy.errors import BackendUnavailable, ExportError, LFMError  # noqa: E402
from lfm_deploy.export import engine  # noqa: E402
from lfm_deploy.export.engine import GpuInfo  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


# ----------------------------------------------------------------------------- fake tensorrt
class _Tensor:
    def __init__(self, name, shape, dtype="float32"):
        self.name, self.shape, self.dtype = name, shape, dtype


class _Layer:
    def __init__(self, name, dtype="float32", metadata=""):
        self.name, self.metadata = name, metadata
        self.precision = None
        self.output_types = {}
        self._out = _Tensor(name + ":0", (1,), dtype)
        self.num_outputs = 1

    def get_output(self, i):
        return self._out

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class _Network:
    def __init__(self, flags, inputs, layers):
        self.flags = flags
        self._inputs = [_Tensor(n, s) for n, s in inputs]
        self._layers = layers

    @property
    def num_inputs(self):
        return len(self._inputs)

    def get_input(self, i):
        return self._inputs[i]

    @property
    def num_layers(self):
        return len(self._layers)

    def get_layer(self, i):
        return self._layers[i]


class _Cache:
    def __init__(self, data):
        self.data = data

    def serialize(self):
        return self.data + b"+updated"


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


class _Config:
    def __init__(self, trt):
        self.trt = trt
        self.flags = {"tf32"}  # TensorRT's default: TF32 on
        self.pools = {}
        self.profiles = []
        self.cache = None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, data):
        return _Cache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        self.trt.log.append(("timing_cache", cache.data, ignore_mismatch))

    def get_timing_cache(self):
        return self.cache


def fake_trt(version="10.8.0", inputs=(("query_img", (-1, 3, 32, 32)),), parse_ok=True, builder_error=None,
             fp16_flag=True, layers=()):
    """A stand-in for the `tensorrt` module recording what the build does with it."""
    trt = SimpleNamespace(__version__=version, log=[], float32="float32", float16="float16")
    flag_names = {"TF32": "tf32", "OBEY_PRECISION_CONSTRAINTS": "obey"}
    if fp16_flag:
        flag_names["FP16"] = "fp16"
    trt.BuilderFlag = SimpleNamespace(**flag_names)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class Builder:
        def __init__(self, logger):
            if builder_error:
                raise RuntimeError(builder_error)

        def create_network(self, flags):
            trt.network = _Network(flags, inputs, list(layers))
            return trt.network

        def create_builder_config(self):
            trt.config = _Config(trt)
            return trt.config

        def create_optimization_profile(self):
            return _Profile()

        def build_serialized_network(self, network, config):
            trt.log.append(("build", network.flags, sorted(config.flags)))
            return b"PLAN:" + trt.__version__.encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            trt.log.append(("parse", path))
            return parse_ok

        def get_error(self, i):
            return f"In node {i}: unsupported operator DFT"

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return ("engine", data)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


@pytest.fixture(autouse=True)
def _fresh_logger():
    engine._Logger._instance = None
    yield
    engine._Logger._instance = None


@pytest.fixture
def tiny_onnx(tmp_path):
    node = helper.make_node("Relu", ["query_img"], ["y"], name="relu")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("query_img", TensorProto.FLOAT, ["B", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3, 32, 32])])
    path = tmp_path / "episode.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


# ----------------------------------------------------------------------------- plan / profile
@pytest.mark.parametrize(
    "version, precision, typing, expected",
    [
        ((10, 3, 0), "fp32", "auto", (True, False, False)),
        ((10, 8, 0), "fp16", "auto", (True, True, False)),
        ((10, 8, 0), "fp16", "weak", (False, False, True)),
        ((10, 8, 0), "fp32", "weak", (False, False, False)),
        ((11, 0, 0), "fp16", "auto", (True, True, False)),
        ((11, 2, 1), "fp32", "strong", (True, False, False)),
    ],
)
def test_plan_build_branches_on_the_tensorrt_version(version, precision, typing, expected):
    plan = engine.plan_build(version, precision, typing)
    assert (plan.strongly_typed, plan.fp16_graph, plan.fp16_flag) == expected


def test_plan_build_rejects_what_a_version_cannot_do():
    with pytest.raises(LFMError, match="TensorRT 11 removed weak typing"):
        engine.plan_build((11, 0, 0), "fp16", "weak")
    with pytest.raises(BackendUnavailable, match="too old"):
        engine.plan_build((8, 6, 1), "fp32")
    with pytest.raises(LFMError, match="--precision"):
        engine.plan_build((10, 0, 0), "int8")
    with pytest.raises(LFMError, match="--typing"):
        engine.plan_build((10, 0, 0), "fp16", "loose")


def test_batch_profile_covers_dynamic_batch_only():
    inputs = [("query_img", (-1, 3, 400, 400)), ("support_l4", (1, 3, 2048, 13, 13))]
    profile = engine.batch_profile(inputs, max_batch=8)
    assert profile == {"query_img": {"min": [1, 3, 400, 400], "opt": [1, 3, 400, 400], "max": [8, 3, 400, 400]}}
    with pytest.raises(ExportError, match="dynamic dim other than the batch"):
        engine.batch_profile([("x", (-1, 3, -1, 400))], 8)
    with pytest.raises(LFMError, match="--max-batch"):
        engine.batch_profile(inputs, 0)


def test_network_flags():
    trt = fake_trt()
    assert engine.network_flags(trt, engine.plan_build((10, 8), "fp16")) == 1 << 1
    assert engine.network_flags(trt, engine.plan_build((10, 8), "fp16", "weak")) == 0


# ----------------------------------------------------------------------------- builds (fake trt)
def test_fp32_build_clears_tf32_sets_workspace_profile_and_writes_a_sidecar(tiny_onnx, tmp_path):
    trt = fake_trt("10.8.0")
    cache = tmp_path / "cache" / "trt.cache"
    out = tmp_path / "engines" / "episode.fp32.plan"
    build = engine.build_engine(tiny_onnx, out, precision="fp32", workspace_gb=2, max_batch=4, timing_cache=cache,
                                graph="episode", trt=trt, gpu=GPU)
    assert out.read_bytes() == b"PLAN:10.8.0"
    cfg = trt.config
    assert "tf32" not in cfg.flags and "fp16" not in cfg.flags
    assert cfg.pools == {"workspace": 2 << 30}
    assert cfg.profiles[0].shapes == {"query_img": ((1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32))}
    assert trt.network.flags == 1 << 1  # strongly typed
    assert ("timing_cache", b"", False) in trt.log
    assert cache.read_bytes() == b"+updated"  # saved after the build
    side = json.loads(engine.sidecar_path(out).read_text())
    assert side == build.sidecar
    assert side["tensorrt_version"] == "10.8.0" and side["gpu"] == {"name": GPU.name, "compute_capability": "9.0"}
    assert side["precision"] == "fp32" and side["typing"] == "strong" and side["tf32"] is False
    assert side["onnx"] == {"file": "episode.onnx", "sha256": engine.sha256_file(tiny_onnx)}
    assert side["profile"]["query_img"]["max"] == [4, 3, 32, 32] and side["max_batch"] == 4
    assert side["engine_sha256"] == engine.sha256_file(out)


def test_timing_cache_is_loaded_and_saved(tiny_onnx, tmp_path):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"OLD")
    trt = fake_trt()
    engine.build_engine(tiny_onnx, tmp_path / "e.plan", timing_cache=cache, trt=trt, gpu=GPU)
    assert ("timing_cache", b"OLD", False) in trt.log
    assert cache.read_bytes() == b"OLD+updated"


def test_weak_fp16_on_10x_sets_the_flag_and_pins_islands(tiny_onnx, tmp_path):
    layers = [_Layer("/apm/MatMul"), _Layer("/conv1/Conv"), _Layer("unnamed_7", metadata="[ONNX Layer: /apm/Sqrt]"),
              _Layer("/apm/Shape", dtype="int64")]
    trt = fake_trt("10.8.0", layers=layers)
    engine.build_engine(tiny_onnx, tmp_path / "e.plan", precision="fp16", typing="weak",
                        islands=["/apm/MatMul", "/apm/Sqrt", "/apm/Shape"], trt=trt, gpu=GPU)
    assert {"fp16", "obey"} <= trt.config.flags and "tf32" not in trt.config.flags
    assert trt.network.flags == 0
    assert layers[0].precision == "float32" and layers[0].output_types == {0: "float32"}
    assert layers[2].precision == "float32"
    assert layers[1].precision is None and layers[3].precision is None  # not an island / not float


def test_strong_fp16_on_11x_never_touches_removed_flags(tiny_onnx, tmp_path):
    trt = fake_trt("11.1.0", fp16_flag=False)  # 11.x has no BuilderFlag.FP16
    build = engine.build_engine(tiny_onnx, tmp_path / "e.plan", precision="fp16", trt=trt, gpu=GPU)
    assert trt.config.flags == set() and trt.network.flags == 1 << 1
    assert build.sidecar["typing"] == "strong"


def test_parse_failure_and_cuda_failure(tiny_onnx, tmp_path):
    with pytest.raises(ExportError, match="unsupported operator DFT"):
        engine.build_engine(tiny_onnx, tmp_path / "e.plan", trt=fake_trt(parse_ok=False), gpu=GPU)
    with pytest.raises(BackendUnavailable, match="CUDA initialization failure"):
        engine.build_engine(tiny_onnx, tmp_path / "e.plan", trt=fake_trt(builder_error="CUDA initialization failure"),
                            gpu=GPU)
    assert not (tmp_path / "e.plan").exists()


# ----------------------------------------------------------------------------- sidecar / load
@pytest.fixture
def built(tiny_onnx, tmp_path):
    """An engine built (fake TensorRT 10.8.0, H100) inside an artifact-like directory."""
    out = tmp_path / "engines" / "episode.fp32.plan"
    engine.build_engine(tiny_onnx, out, trt=fake_trt("10.8.0"), gpu=GPU, graph="episode")
    return out


def test_engine_loads_where_it_was_built(built):
    loaded = engine.EngineFromPlan(built, trt=fake_trt("10.8.0"), gpu=GPU)()
    assert loaded == ("engine", b"PLAN:10.8.0")


@pytest.mark.parametrize(
    "trt_version, gpu, message",
    [
        ("10.9.0", GPU, "built with TensorRT 10.8.0, this is TensorRT 10.9.0"),
        ("10.8.0", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), "built for NVIDIA H100 80GB HBM3 (compute capability 9.0)"),
    ],
)
def test_mismatched_engine_fails_with_a_rebuild_hint(built, trt_version, gpu, message):
    with pytest.raises(BackendUnavailable, match="rebuild") as err:
        engine.EngineFromPlan(built, trt=fake_trt(trt_version), gpu=gpu)()
    assert message in str(err.value)


def test_stale_or_modified_engines_and_missing_sidecars(built, tiny_onnx):
    loader = engine.EngineFromPlan(built, trt=fake_trt("10.8.0"), gpu=GPU)
    tiny_onnx.write_bytes(tiny_onnx.read_bytes() + b" ")  # re-exported graph
    with pytest.raises(BackendUnavailable, match="re-exported"):
        loader()
    side = engine.read_sidecar(built)
    side["onnx"]["sha256"] = engine.sha256_file(tiny_onnx)
    engine.sidecar_path(built).write_text(json.dumps(side))
    loader()  # consistent again
    built.write_bytes(b"PLAN:tampered")
    with pytest.raises(BackendUnavailable, match="does not match the sha256"):
        loader()
    engine.sidecar_path(built).unlink()
    with pytest.raises(BackendUnavailable, match="missing or unreadable"):
        loader()
    with pytest.raises(BackendUnavailable, match="not found"):
        engine.EngineFromPlan(built.with_name("nope.plan"), trt=fake_trt(), gpu=GPU)()


def test_check_sidecar_directly():
    side = {"tensorrt_version": "10.8.0", "gpu": GPU.to_dict()}
    engine.check_sidecar(side, tensorrt_version="10.8.0", gpu=GPU)
    with pytest.raises(BackendUnavailable, match="lfm-build-engine"):
        engine.check_sidecar(side, tensorrt_version="11.0.0", gpu=GpuInfo("NVIDIA L4", "8.9"))


def test_find_engines(built):
    assert engine.find_engines(built.parent.parent, "fp32") == {"episode": built}
    assert engine.find_engines(built.parent.parent, "fp16") == {}


# ----------------------------------------------------------------------------- environment
@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_is_backend_unavailable():
    with pytest.raises(BackendUnavailable, match="TensorRT is not available"):
        engine.import_tensorrt()


def test_gpu_info_without_a_driver(monkeypatch):
    monkeypatch.setattr(engine, "_gpu_from_driver", lambda index: None)
    monkeypatch.setattr(engine, "_gpu_from_smi", lambda index: None)
    with pytest.raises(BackendUnavailable, match="no NVIDIA GPU"):
        engine.gpu_info()
    monkeypatch.setattr(engine, "_gpu_from_smi", lambda index: GpuInfo("NVIDIA L4", "8.9", index))
    assert engine.gpu_info(0) == GpuInfo("NVIDIA L4", "8.9", 0)


def test_trt_version_parsing():
    assert engine.trt_version(SimpleNamespace(__version__="10.13.0.35")) == (10, 13, 0)
    assert engine.trt_version(SimpleNamespace(__version__="11.0")) == (11, 0, 0)


# ----------------------------------------------------------------------------- artifacts + CLI
@pytest.fixture(scope="module")
def artifact_copy(exported, tmp_path_factory):
    """A private copy of the 160 px export (the session fixture must not be modified)."""
    dst = tmp_path_factory.mktemp("engine-art") / "art"
    shutil.copytree(exported(1).out_dir, dst)
    return dst


def test_build_engines_with_a_fake_tensorrt(artifact_copy):
    builds = engine.build_engines(artifact_copy, graphs=["episode", "head"], max_batch=2, trt=fake_trt("10.8.0"), gpu=GPU)
    assert [b.engine.name for b in builds] == ["episode.fp32.plan", "head.fp32.plan"]
    assert builds[1].sidecar["onnx"]["file"] == "head.onnx"
    assert engine.find_engines(artifact_copy, "fp32").keys() == {"episode", "head"}
    with pytest.raises(LFMError, match="has no graph"):
        engine.build_engines(artifact_copy, graphs=["decoder"], trt=fake_trt(), gpu=GPU)


def test_dft_exports_need_tensorrt_11_2(artifact_copy, tmp_path):
    dft = tmp_path / "dft"
    shutil.copytree(artifact_copy, dft, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((dft / "manifest.json").read_text())
    manifest["lowering"] = "dft"
    (dft / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="TensorRT >= 11.2"):
        engine.build_engines(dft, trt=fake_trt("11.1.0", fp16_flag=False), gpu=GPU)


def test_cli_without_tensorrt_and_fp16_onnx_only(artifact_copy, monkeypatch):
    from lfm_deploy.cli.engine import main

    runner = CliRunner()
    if not HAS_TRT:
        result = runner.invoke(main, [str(artifact_copy)])
        assert result.exit_code == 1
        assert "Error: TensorRT is not available" in result.output
    result = runner.invoke(main, [str(artifact_copy / "missing")])
    assert result.exit_code == 1 and "Error:" in result.output
    result = runner.invoke(main, [str(artifact_copy), "--precision", "fp16", "--onnx-only", "--graph", "episode"])
    assert result.exit_code == 0, result.output
    fp16_graph = artifact_copy / "engines" / "episode.fp16.onnx"
    assert fp16_graph.is_file()
    report = json.loads(fp16_graph.with_suffix(".json").read_text())
    assert report["conversion"]["islands"] and report["ranges"]["tensors_checked"] > 100
    result = runner.invoke(main, [str(artifact_copy), "--onnx-only"])
    assert result.exit_code == 1 and "--onnx-only only applies" in result.output


@pytest.mark.needs_trt
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (it only installs from NVIDIA's index, with a GPU)")
def test_real_fp32_engine_matches_onnxruntime(artifact_copy):
    try:
        engine.gpu_info()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from lfm_deploy.export.fp16 import graph_feeds
    from lfm_deploy.parity.runners import OrtSession

    builds = engine.build_engines(artifact_copy, graphs=["episode"], max_batch=2)
    feeds = graph_feeds(artifact_copy, "episode", episodes=1)
    runners = [TrtRunner(engine.EngineFromPlan(builds[0].engine)), OnnxrtRunner(OrtSession(artifact_copy / "episode.onnx"))]
    results = Comparator.run(runners, data_loader=feeds)
    assert Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-3, rtol=1e-3))
    assert np.isfinite(results[runners[0].name][0]["logits"]).all()
