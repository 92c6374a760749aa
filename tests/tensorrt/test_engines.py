"""TensorRT engine builds: the plan/typing decisions and profile shapes, the build path through
Polygraphy's loaders (faked at that boundary, every call checked against the installed
Polygraphy's signatures), sidecar checks, the CLI without TensorRT, and (needs_trt) a real build
on a GPU machine."""

from __future__ import annotations

import importlib.util
import inspect
import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
polygraphy_trt = pytest.importorskip("polygraphy.backend.trt")
from onnx import TensorProto, helper  # noqa: E402
from polygraphy.exception import PolygraphyException  # noqa: E402

from lfm_deploy.errors import BackendUnavailable, ExportError, LFMError  # noqa: E402
from lfm_deploy.tensorrt import engines as engine  # noqa: E402
from lfm_deploy.tensorrt.engines import GpuInfo  # noqa: E402
from lfm_deploy.tensorrt.lint import lint_onnx  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


# ----------------------------------------------------------------------------- fakes
def fake_trt(version="10.8.0"):
    """A stand-in for what lfm-deploy itself takes from the `tensorrt` module (Polygraphy does
    the rest): the version, the workspace pool and the two float types."""
    return SimpleNamespace(__version__=version, MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
                           float32="float32", float16="float16")


class _Tensor:
    def __init__(self, dtype="float32"):
        self.dtype = dtype


class _Layer:
    def __init__(self, name, dtype="float32", metadata=""):
        self.name, self.metadata = name, metadata
        self.precision = None
        self.output_types = {}
        self.num_outputs = 1
        self._out = _Tensor(dtype)

    def get_output(self, i):
        return self._out

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class _Network:
    def __init__(self, layers):
        self._layers = list(layers)

    @property
    def num_layers(self):
        return len(self._layers)

    def get_layer(self, i):
        return self._layers[i]


def _accepted(loader) -> set[str]:
    """Argument names a Polygraphy loader accepts, following `**kwargs` to the base classes."""
    names = set()
    for cls in inspect.getmro(loader):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


class FakeLoaders:
    """Stands in for `polygraphy.backend.trt`. Each loader records its arguments, which are first
    checked against the installed Polygraphy's real loader (so a renamed or removed argument
    fails here), and returns a lazy callable that behaves like the real one without TensorRT."""

    Profile = polygraphy_trt.Profile

    def __init__(self, trt, layers=(), parse_error=None, build_error=None, load_error=None):
        self.trt, self.layers = trt, list(layers)
        self.parse_error, self.build_error, self.load_error = parse_error, build_error, load_error
        self.calls: dict[str, dict] = {}
        self.cache_loaded = None

    def _record(self, loader, /, *args, **kwargs):
        real = getattr(polygraphy_trt, loader)
        positional = [p for p in inspect.signature(real).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert len(args) <= len(positional), f"{loader}: too many positional arguments"
        unknown = set(kwargs) - _accepted(real)
        assert not unknown, f"polygraphy {loader} has no argument {unknown}"
        self.calls[loader] = {**{p.name: a for p, a in zip(positional, args)}, **kwargs}

    def NetworkFromOnnxPath(self, path, **kwargs):
        self._record("NetworkFromOnnxPath", path, **kwargs)

        def load():
            if self.parse_error is not None:
                raise self.parse_error
            self.network = _Network(self.layers)
            return "builder", self.network, "parser"

        return load

    def PostprocessNetwork(self, network, func, name=None):
        self._record("PostprocessNetwork", network, func, name=name)

        def load():
            builder, net, parser = network() if callable(network) else network
            func(network=net)
            return builder, net, parser

        return load

    def CreateConfig(self, **kwargs):
        self._record("CreateConfig", **kwargs)

        def make(builder, network):
            cache = kwargs.get("load_timing_cache")
            self.cache_loaded = cache.read() if cache is not None else None
            return kwargs

        return make

    def EngineBytesFromNetwork(self, network, config=None, save_timing_cache=None):
        self._record("EngineBytesFromNetwork", network, config=config, save_timing_cache=save_timing_cache)

        def build():
            builder, net, *_ = network() if callable(network) else network
            config(builder, net)
            if self.build_error is not None:
                raise self.build_error
            if save_timing_cache is not None:
                save_timing_cache.write((self.cache_loaded or b"") + b"+updated")
            return b"PLAN:" + self.trt.__version__.encode()

        return build

    def EngineFromBytes(self, serialized_engine, **kwargs):
        self._record("EngineFromBytes", serialized_engine, **kwargs)

        def load():
            if self.load_error is not None:
                raise self.load_error
            return "engine", serialized_engine

        return load


@pytest.fixture
def loaders(monkeypatch):
    """Install fake Polygraphy loaders: `loaders(trt, **behaviour)` -> the `FakeLoaders`."""

    def install(trt, **kwargs):
        fake = FakeLoaders(trt, **kwargs)
        monkeypatch.setattr(engine, "_polygraphy_trt", lambda: fake)
        return fake

    return install


def _onnx(path, op="Relu"):
    node = helper.make_node(op, ["query_img"], ["y"], name="node")
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("query_img", TensorProto.FLOAT, ["B", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path):
    return _onnx(tmp_path / "episode.onnx")


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
    assert plan.int8_graph is False


@pytest.mark.parametrize("version", [(10, 0, 0), (10, 12, 0), (11, 0, 0)])
def test_int8_is_explicit_quantization_on_10_and_11(version):
    """Strongly typed from the int8 QDQ graph on every supported version: TensorRT's docs ask for
    explicit quantization with strong typing and no precision flags (11 has no INT8 flag)."""
    plan = engine.plan_build(version, "int8")
    assert (plan.strongly_typed, plan.int8_graph, plan.fp16_graph, plan.fp16_flag) == (True, True, False, False)
    assert plan.typing == "strong" and engine.plan_build(version, "int8", "strong") == plan
    weak = "drop --typing weak" if version[0] == 10 else "TensorRT 11 removed weak typing"
    with pytest.raises(LFMError, match=weak):
        engine.plan_build(version, "int8", "weak")


def test_plan_build_rejects_what_a_version_cannot_do():
    with pytest.raises(LFMError, match="TensorRT 11 removed weak typing"):
        engine.plan_build((11, 0, 0), "fp16", "weak")
    with pytest.raises(BackendUnavailable, match="too old"):
        engine.plan_build((8, 6, 1), "fp32")
    with pytest.raises(LFMError, match="--precision"):
        engine.plan_build((10, 0, 0), "int4")
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


def test_onnx_inputs_are_what_the_parser_sees(tiny_onnx):
    assert engine.onnx_inputs(tiny_onnx) == [("query_img", (-1, 3, 32, 32))]


def test_the_polygraphy_loaders_used_exist_with_these_arguments():
    """Static check against the installed Polygraphy (no TensorRT needed)."""
    used = {
        "NetworkFromOnnxPath": {"path", "strongly_typed"},
        "PostprocessNetwork": {"network", "func", "name"},
        "CreateConfig": {"tf32", "fp16", "precision_constraints", "profiles", "memory_pool_limits",
                         "load_timing_cache"},
        "EngineBytesFromNetwork": {"network", "config", "save_timing_cache"},
        "EngineFromBytes": {"serialized_engine"},
        "TrtRunner": {"engine", "name"},
    }
    for name, args in used.items():
        assert args <= _accepted(getattr(polygraphy_trt, name)), name
    # int8 builds leave CreateConfig's INT8 flag and calibrator at their defaults (off): explicit
    # quantization takes its precision from the graph's Q/DQ nodes.
    config = polygraphy_trt.CreateConfig(tf32=False)  # a lazy loader: builds nothing until called
    assert config.int8 is False and config.calibrator is None and config.fp16 is False
    assert {"min", "opt", "max"} <= set(inspect.signature(polygraphy_trt.Profile.add).parameters)


# ----------------------------------------------------------------------------- builds (fake Polygraphy)
def test_fp32_build_composes_polygraphy_loaders_and_writes_a_sidecar(tiny_onnx, tmp_path, loaders):
    pg = loaders(fake_trt("10.8.0"))
    cache = tmp_path / "cache" / "trt.cache"
    out = tmp_path / "engines" / "episode.fp32.plan"
    build = engine.build_engine(tiny_onnx, out, precision="fp32", workspace_gb=2, max_batch=4, timing_cache=cache,
                                graph="episode", trt=pg.trt, gpu=GPU)
    assert set(pg.calls) == {"CreateConfig", "NetworkFromOnnxPath", "EngineBytesFromNetwork"}
    assert pg.calls["NetworkFromOnnxPath"] == {"path": str(tiny_onnx), "strongly_typed": True}
    cfg = pg.calls["CreateConfig"]
    assert cfg["tf32"] is False and cfg["fp16"] is False and cfg["precision_constraints"] is None
    assert cfg["memory_pool_limits"] == {"workspace": 2 << 30}
    assert [tuple(s) for s in cfg["profiles"][0]["query_img"]] == [(1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32)]
    assert cfg["load_timing_cache"] is None  # no cache file yet
    assert out.read_bytes() == b"PLAN:10.8.0"
    assert cache.read_bytes() == b"+updated"  # saved after the build
    side = json.loads(engine.sidecar_path(out).read_text())
    assert side == build.sidecar
    assert side["tensorrt_version"] == "10.8.0" and side["gpu"] == {"name": GPU.name, "compute_capability": "9.0"}
    assert side["precision"] == "fp32" and side["typing"] == "strong" and side["tf32"] is False
    assert side["onnx"] == {"file": "episode.onnx", "sha256": engine.sha256_file(tiny_onnx)}
    assert side["profile"]["query_img"]["max"] == [4, 3, 32, 32] and side["max_batch"] == 4
    assert side["engine_sha256"] == engine.sha256_file(out)


def test_timing_cache_is_loaded_and_saved_without_lock_files(tiny_onnx, tmp_path, loaders):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"OLD")
    pg = loaders(fake_trt())
    engine.build_engine(tiny_onnx, tmp_path / "e.plan", timing_cache=cache, trt=pg.trt, gpu=GPU)
    assert pg.cache_loaded == b"OLD"
    assert cache.read_bytes() == b"OLD+updated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.plan", "e.plan.json", "episode.onnx", "trt.cache"]


def test_weak_fp16_on_10x_sets_fp16_obeys_constraints_and_pins_islands(tiny_onnx, tmp_path, loaders):
    layers = [_Layer("/apm/MatMul"), _Layer("/conv1/Conv"), _Layer("unnamed_7", metadata="[ONNX Layer: /apm/Sqrt]"),
              _Layer("/apm/Shape", dtype="int64")]
    pg = loaders(fake_trt("10.8.0"), layers=layers)
    engine.build_engine(tiny_onnx, tmp_path / "e.plan", precision="fp16", typing="weak",
                        islands=["/apm/MatMul", "/apm/Sqrt", "/apm/Shape"], trt=pg.trt, gpu=GPU)
    assert pg.calls["NetworkFromOnnxPath"]["strongly_typed"] is False
    assert pg.calls["CreateConfig"]["fp16"] is True and pg.calls["CreateConfig"]["precision_constraints"] == "obey"
    assert pg.calls["CreateConfig"]["tf32"] is False
    assert pg.calls["PostprocessNetwork"]["name"] == "pin fp32 islands"
    assert layers[0].precision == "float32" and layers[0].output_types == {0: "float32"}
    assert layers[2].precision == "float32"
    assert layers[1].precision is None and layers[3].precision is None  # not an island / not float


def test_strong_fp16_on_11x_asks_for_nothing_11_removed(tiny_onnx, tmp_path, loaders):
    pg = loaders(fake_trt("11.1.0"))
    build = engine.build_engine(tiny_onnx, tmp_path / "e.plan", precision="fp16", islands=["x"], trt=pg.trt, gpu=GPU)
    cfg = pg.calls["CreateConfig"]
    assert cfg["fp16"] is False and cfg["precision_constraints"] is None  # BuilderFlag.FP16 / OBEY are gone
    assert pg.calls["NetworkFromOnnxPath"]["strongly_typed"] is True and "PostprocessNetwork" not in pg.calls
    assert build.sidecar["typing"] == "strong"


def _qdq_onnx(path):
    """A tiny explicitly quantized graph: symmetric int8 Q/DQ on the input, int8 per-channel
    weights, a Conv (what lfm-export's int8 graphs are made of)."""
    from onnx import numpy_helper

    w = (np.arange(4 * 3 * 3 * 3).reshape(4, 3, 3, 3) % 7 - 3).astype(np.int8)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["query_img", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0, name="dq_w"),
             helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("query_img", TensorProto.FLOAT, ["B", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


@pytest.mark.parametrize("version", ["10.12.0", "11.0.0"])
def test_int8_build_is_strongly_typed_with_no_int8_flag_or_calibrator(tmp_path, loaders, version):
    qdq = _qdq_onnx(tmp_path / "episode.int8.onnx")
    assert lint_onnx(qdq).findings == []  # what TensorRT's explicit quantization takes
    pg = loaders(fake_trt(version))
    build = engine.build_engine(qdq, tmp_path / "engines" / "episode.int8.plan", precision="int8", graph="episode",
                                trt=pg.trt, gpu=GPU)
    assert set(pg.calls) == {"CreateConfig", "NetworkFromOnnxPath", "EngineBytesFromNetwork"}  # no island pinning
    assert pg.calls["NetworkFromOnnxPath"] == {"path": str(qdq), "strongly_typed": True}
    cfg = pg.calls["CreateConfig"]
    assert cfg["tf32"] is False and cfg["fp16"] is False and cfg["precision_constraints"] is None
    assert "int8" not in cfg and "calibrator" not in cfg  # Polygraphy defaults: no INT8 flag, no calibrator
    side = build.sidecar
    assert side["precision"] == "int8" and side["typing"] == "strong" and side["tf32"] is False
    assert side["quantization"].startswith("explicit")
    assert side["onnx"]["file"] == side["built_from"]["file"] == "episode.int8.onnx"
    assert engine.find_engines(tmp_path, "int8") == {"episode": build.engine}


def test_parse_build_and_cuda_failures(tmp_path, loaders):
    det = _onnx(tmp_path / "det.onnx", op="Det")  # not in TensorRT's support matrix
    pg = loaders(fake_trt(), parse_error=PolygraphyException("Could not parse ONNX correctly"))
    with pytest.raises(ExportError, match="could not parse det.onnx") as err:
        engine.build_engine(det, tmp_path / "e.plan", trt=pg.trt, gpu=GPU)
    assert "lfm-lint-trt finds: node (Det)" in str(err.value) and "matmul lowering" in str(err.value)
    pg = loaders(fake_trt(), parse_error=TypeError("pybind11::init(): factory function returned nullptr"))
    with pytest.raises(BackendUnavailable, match="could not create a builder"):
        engine.build_engine(det, tmp_path / "e.plan", trt=pg.trt, gpu=GPU)
    pg = loaders(fake_trt(), build_error=PolygraphyException("Invalid Engine"))
    with pytest.raises(ExportError, match="failed to build an engine") as err:
        engine.build_engine(det, tmp_path / "e.plan", trt=pg.trt, gpu=GPU)
    assert "workspace_gb" in str(err.value) and "--workspace-gb" in err.value.cli_message()
    assert not (tmp_path / "e.plan").exists()


# ----------------------------------------------------------------------------- sidecar / load
@pytest.fixture
def built(tiny_onnx, tmp_path, loaders):
    """An engine built (fake TensorRT 10.8.0, H100) inside an artifact-like directory."""
    out = tmp_path / "engines" / "episode.fp32.plan"
    engine.build_engine(tiny_onnx, out, trt=loaders(fake_trt("10.8.0")).trt, gpu=GPU, graph="episode")
    return out


def test_engine_loads_through_engine_from_bytes_where_it_was_built(built, loaders):
    pg = loaders(fake_trt("10.8.0"))
    assert engine.EngineFromPlan(built, trt=pg.trt, gpu=GPU)() == ("engine", b"PLAN:10.8.0")
    assert pg.calls["EngineFromBytes"] == {"serialized_engine": b"PLAN:10.8.0"}
    pg = loaders(fake_trt("10.8.0"), load_error=PolygraphyException("Could not deserialize engine"))
    with pytest.raises(BackendUnavailable, match="could not deserialize episode.fp32.plan"):
        engine.EngineFromPlan(built, trt=pg.trt, gpu=GPU)()


@pytest.mark.parametrize(
    "trt_version, gpu, message",
    [
        ("10.9.0", GPU, "built with TensorRT 10.8.0, this is TensorRT 10.9.0"),
        ("10.8.0", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), "built for NVIDIA H100 80GB HBM3 (compute capability 9.0)"),
    ],
)
def test_mismatched_engine_fails_with_a_rebuild_hint(built, trt_version, gpu, message, loaders):
    pg = loaders(fake_trt(trt_version))
    with pytest.raises(BackendUnavailable, match="rebuild") as err:
        engine.EngineFromPlan(built, trt=pg.trt, gpu=gpu)()
    assert message in str(err.value)
    assert "EngineFromBytes" not in pg.calls  # refused before TensorRT sees the plan


def test_stale_or_modified_engines_and_missing_sidecars(built, tiny_onnx, loaders):
    loader = engine.EngineFromPlan(built, trt=loaders(fake_trt("10.8.0")).trt, gpu=GPU)
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


def test_build_engines_with_fake_loaders(artifact_copy, loaders):
    pg = loaders(fake_trt("10.8.0"))
    builds = engine.build_engines(artifact_copy, graphs=["episode", "head"], max_batch=2, trt=pg.trt, gpu=GPU)
    assert [b.engine.name for b in builds] == ["episode.fp32.plan", "head.fp32.plan"]
    assert builds[1].sidecar["onnx"]["file"] == "head.onnx"
    # profiles cover the batch-dynamic inputs read from the exported files (the head's cached
    # support features have a static batch of 1)
    assert set(builds[0].sidecar["profile"]) == {"query_img", "support_imgs", "support_masks"}
    query = builds[0].sidecar["profile"]["query_img"]
    assert builds[1].sidecar["profile"] == {"query_img": query}
    assert query["min"][0] == query["opt"][0] == 1 and query["max"][0] == 2
    assert engine.find_engines(artifact_copy, "fp32").keys() == {"episode", "head"}
    with pytest.raises(LFMError, match="has no graph"):
        engine.build_engines(artifact_copy, graphs=["decoder"], trt=pg.trt, gpu=GPU)


def test_dft_exports_need_tensorrt_11_2(artifact_copy, tmp_path, loaders):
    dft = tmp_path / "dft"
    shutil.copytree(artifact_copy, dft, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((dft / "manifest.json").read_text())
    manifest["lowering"] = "dft"
    (dft / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="TensorRT >= 11.2"):
        engine.build_engines(dft, trt=loaders(fake_trt("11.1.0")).trt, gpu=GPU)


@pytest.fixture(scope="module")
def int8_artifacts(artifact_copy, tmp_path_factory):
    """The 160 px export laid out as `lfm-export --precision int8` writes it: int8 QDQ graphs
    (one calibration episode, masker float) named by `graphs`, the float32 graphs by
    `reference_graphs`, `precision.name == "int8"` (the gate is not rerun: the builds are
    what is tested here)."""
    from lfm_deploy.manifest import MANIFEST_NAME, file_entry
    from lfm_deploy.precision.int8 import quantize_int8
    from lfm_deploy.precision.fp16 import graph_feeds

    art = tmp_path_factory.mktemp("int8-art") / "art"
    shutil.copytree(artifact_copy, art, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    manifest["reference_graphs"] = {g: entry["file"] for g, entry in manifest["graphs"].items()}
    feeds = {g: graph_feeds(art, g, episodes=1, seed=100) for g in manifest["graphs"]}
    for g, entry in manifest["graphs"].items():
        name = f"{g}.int8.onnx"
        quantize_int8(art / entry["file"], art / name, feeds[g], float_tail=0.75)
        entry["file"] = name
        manifest["files"][name] = dataclasses.asdict(file_entry(art, name))
    manifest["precision"] = {"name": "int8", "runtime": {"backend": "onnxruntime", "precision": "int8"}}
    (art / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return art


def test_int8_engines_build_from_the_int8_graphs_fp32_from_the_float32_graphs(int8_artifacts, loaders):
    art = int8_artifacts
    pg = loaders(fake_trt("10.12.0"))
    builds = engine.build_engines(art, precision="int8", graphs=["episode", "head"], max_batch=2, trt=pg.trt, gpu=GPU)
    assert [b.engine.name for b in builds] == ["episode.int8.plan", "head.int8.plan"]
    assert pg.calls["NetworkFromOnnxPath"] == {"path": str(art / "head.int8.onnx"), "strongly_typed": True}
    assert "int8" not in pg.calls["CreateConfig"] and "calibrator" not in pg.calls["CreateConfig"]
    assert [b.sidecar["onnx"]["file"] for b in builds] == ["episode.int8.onnx", "head.int8.onnx"]
    assert all(b.sidecar["precision"] == "int8" and b.sidecar["typing"] == "strong" for b in builds)
    assert builds[0].sidecar["profile"]["query_img"]["max"][0] == 2
    for graph in ("episode", "head"):
        assert lint_onnx(art / f"{graph}.int8.onnx").ok  # the graphs those engines parse
    # fp32 engines in the same int8 export still come from the float32 graphs.
    fp32 = engine.build_engines(art, precision="fp32", graphs=["episode"], trt=pg.trt, gpu=GPU)
    assert pg.calls["NetworkFromOnnxPath"]["path"] == str(art / "episode.onnx")
    assert fp32[0].sidecar["onnx"]["file"] == "episode.onnx"
    assert engine.find_engines(art, "int8").keys() == {"episode", "head"}
    assert engine.find_engines(art, "fp32") == {"episode": fp32[0].engine}
    # Both load where they were built: the sidecar's ONNX file is the export's own.
    for b in builds + fp32:
        engine.EngineFromPlan(b.engine, trt=pg.trt, gpu=GPU).check()


def test_int8_needs_an_int8_export(artifact_copy, loaders):
    """Refused before TensorRT is even imported: the fix is an export, not a machine."""
    with pytest.raises(LFMError, match="has no int8 graphs \\(exported with precision fp32\\)") as err:
        engine.build_engines(artifact_copy, precision="int8", trt=loaders(fake_trt()).trt, gpu=GPU)
    assert "precision='int8'" in str(err.value) and "lfm-export ... --precision int8" in err.value.cli_message()
    assert not engine.find_engines(artifact_copy, "int8")


def test_cli_refuses_int8_on_an_fp32_export_in_one_line(artifact_copy):
    from lfm_deploy.cli.engine import main

    result = CliRunner().invoke(main, [str(artifact_copy), "--precision", "int8"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "has no int8 graphs" in result.output and "`lfm-export ... --precision int8`" in result.output
    assert "TensorRT" not in result.output.split(";")[0]  # the export is the problem, not the machine


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
    lint = lint_onnx(fp16_graph)  # what a strongly typed build parses: fp16 types TensorRT takes
    assert lint.ok and lint.findings == [], lint.to_markdown()
    result = runner.invoke(main, [str(artifact_copy), "--onnx-only"])
    assert result.exit_code == 1 and "--onnx-only only applies" in result.output


@pytest.mark.needs_trt
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (it only installs from NVIDIA's index, with a GPU)")
def test_real_fp32_engine_matches_onnxruntime(artifact_copy, tmp_path):
    """The real Polygraphy loaders and TensorRT: build (with a timing cache), load through the
    sidecar check, run with TrtRunner next to onnxruntime."""
    try:
        engine.gpu_info()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    from lfm_deploy.precision.fp16 import graph_feeds

    cache = tmp_path / "trt.cache"
    builds = engine.build_engines(artifact_copy, graphs=["episode"], max_batch=2, timing_cache=cache)
    assert cache.stat().st_size > 0 and not cache.with_name("trt.cache.lock").exists()
    assert builds[0].sidecar["tensorrt_version"] == engine.import_tensorrt().__version__
    feeds = graph_feeds(artifact_copy, "episode", episodes=1)
    runners = [TrtRunner(engine.EngineFromPlan(builds[0].engine)), OnnxrtRunner(SessionFromOnnx(str(artifact_copy / "episode.onnx")))]
    results = Comparator.run(runners, data_loader=feeds)
    assert Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=1e-3, rtol=1e-3))
    assert np.isfinite(results[runners[0].name][0]["logits"]).all()


@pytest.mark.needs_trt
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (it only installs from NVIDIA's index, with a GPU)")
def test_real_int8_engine_agrees_with_onnxruntime_on_the_int8_graph(int8_artifacts):
    """The real explicit-quantization build of the int8 episode graph, run next to onnxruntime
    running the same QDQ graph: finite logits and (nearly) the same masks."""
    try:
        engine.gpu_info()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.comparator import Comparator

    from lfm_deploy.precision.fp16 import graph_feeds

    builds = engine.build_engines(int8_artifacts, precision="int8", graphs=["episode"], max_batch=2)
    assert builds[0].sidecar["onnx"]["file"] == "episode.int8.onnx"
    feeds = graph_feeds(int8_artifacts, "episode", episodes=1)
    runners = [TrtRunner(engine.EngineFromPlan(builds[0].engine), name="trt-int8"),
               OnnxrtRunner(SessionFromOnnx(str(int8_artifacts / "episode.int8.onnx")), name="ort-int8")]
    results = Comparator.run(runners, data_loader=feeds)
    trt_out, ort_out = results["trt-int8"][0], results["ort-int8"][0]
    assert np.isfinite(trt_out["logits"]).all()
    assert (trt_out["mask"] == ort_out["mask"]).mean() > 0.98
