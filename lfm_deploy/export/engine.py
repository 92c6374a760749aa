"""TensorRT engines from the exported graphs, with a sidecar that ties each to its build.

    build_engines("artifacts/deepglobe", precision="fp16", max_batch=8,
                  timing_cache="~/.cache/lfm/trt.cache")
    engine = EngineFromPlan("artifacts/deepglobe/engines/episode.fp16.plan")()  # checked load

Written against the TensorRT Python API directly (imported lazily) rather than through
Polygraphy's loaders, because the two supported major versions differ exactly where those
loaders hide the details: TensorRT 11 is always strongly typed and has no `BuilderFlag.FP16`,
TensorRT 10 has both typing modes (weak typing deprecated since 10.12). So:

- **fp32**: the exported graph, TF32 cleared (TensorRT enables it for fp32 matmuls by
  default, which breaks fp32 parity).
- **fp16, strongly typed** (default, 10.x and 11.x): an fp16 ONNX graph with fp32 islands made
  by `lfm_deploy.export.fp16` after a range check on real activations; the graph's types are
  the precision.
- **fp16, weakly typed** (`typing="weak"`, 10.x only): the fp32 graph with `BuilderFlag.FP16`,
  the same islands pinned to fp32 with layer precisions and `OBEY_PRECISION_CONSTRAINTS`.

Every build has one optimisation profile over the batch dimension (min 1, opt 1, max N), a
workspace limit, and optionally a persistent timing cache (loaded before, saved after). Next to
each engine `<graph>.<precision>.plan` lies `<...>.plan.json` with the TensorRT version, the GPU
and its compute capability, the precision, the ONNX file's sha256 and the profile: engines only
load on the TensorRT version and GPU model they were built for (DEPLOY.md), and
`EngineFromPlan` checks that before TensorRT fails with a version-tag error.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import BackendUnavailable, ExportError, LFMError
from ..manifest import read_manifest, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_DIR",
    "PRECISIONS",
    "BuildPlan",
    "EngineFromPlan",
    "GpuInfo",
    "batch_profile",
    "build_engine",
    "build_engines",
    "check_sidecar",
    "create_config",
    "engine_path",
    "find_engines",
    "gpu_info",
    "import_tensorrt",
    "network_flags",
    "plan_build",
    "read_sidecar",
    "sidecar_path",
    "trt_version",
]

ENGINE_DIR = "engines"
PRECISIONS = ("fp32", "fp16")
TYPINGS = ("auto", "strong", "weak")
SIDECAR_SCHEMA = 1
#: TensorRT 11.2 added DFT (cuFFT plugin); earlier versions need the matmul lowering.
_DFT_SINCE = (11, 2)
_REBUILD = "rebuild it with `lfm-build-engine ARTIFACT_DIR` on this machine"


# ----------------------------------------------------------------------------- environment
def import_tensorrt():
    """Import the `tensorrt` module.

    Returns:
        The module.

    Raises:
        BackendUnavailable: TensorRT is not installed or its libraries cannot be loaded.
    """
    try:
        import tensorrt  # noqa: PLC0415 (lazy: a multi-GB optional dependency)
    except Exception as exc:  # ImportError, or OSError from missing libnvinfer
        raise BackendUnavailable(
            f"TensorRT is not available here ({type(exc).__name__}: {exc}); install the `tensorrt` "
            "package (10.x or 11.x, from NVIDIA's index) on a machine with an NVIDIA GPU"
        ) from None
    return tensorrt


def trt_version(trt) -> tuple[int, int, int]:
    """(major, minor, patch) of a `tensorrt` module."""
    parts = [int(p) for p in str(trt.__version__).split(".")[:3] if p.isdigit()]
    return tuple((parts + [0, 0, 0])[:3])


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for: name and compute capability ("9.0")."""

    name: str
    compute_capability: str
    index: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "compute_capability": self.compute_capability}


def _gpu_from_driver(index: int) -> GpuInfo | None:
    """Ask the CUDA driver (libcuda, stable C ABI) for the device name and capability."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if cuda.cuInit(0) != 0:
        return None
    dev = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGetName(name, 256, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return GpuInfo(name.value.decode(errors="replace"), f"{major.value}.{minor.value}", index)


def _gpu_from_smi(index: int) -> GpuInfo | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    name, _, cap = out.rpartition(",")
    return GpuInfo(name.strip(), cap.strip(), index) if name else None


def gpu_info(index: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device `index`.

    Raises:
        BackendUnavailable: no NVIDIA driver or no such device.
    """
    info = _gpu_from_driver(index) or _gpu_from_smi(index)
    if info is None:
        raise BackendUnavailable(
            f"no NVIDIA GPU (device {index}) is visible: the CUDA driver (libcuda.so.1) and nvidia-smi are "
            "missing or report no device; TensorRT engines can only be built and run on an NVIDIA GPU"
        )
    return info


# ----------------------------------------------------------------------------- build plan
@dataclass(frozen=True)
class BuildPlan:
    """How a precision is realised on a TensorRT version.

    Attributes:
        precision: "fp32" or "fp16".
        strongly_typed: create the network with the STRONGLY_TYPED flag (types from the graph).
        fp16_graph: build from an fp16 ONNX graph with fp32 islands (`lfm_deploy.export.fp16`).
        fp16_flag: set `BuilderFlag.FP16` (weak typing, 10.x only) and pin islands to fp32.
    """

    precision: str
    strongly_typed: bool
    fp16_graph: bool
    fp16_flag: bool

    @property
    def typing(self) -> str:
        return "strong" if self.strongly_typed else "weak"


def plan_build(version: Sequence[int], precision: str, typing: str = "auto") -> BuildPlan:
    """Decide how to build `precision` on TensorRT `version`.

    Args:
        version: (major, minor, ...) of TensorRT.
        precision: "fp32" or "fp16".
        typing: "auto" (strongly typed), "strong", or "weak" (TensorRT 10.x only).

    Returns:
        The `BuildPlan`.

    Raises:
        BackendUnavailable: TensorRT older than 10.
        LFMError: an unknown precision/typing, or weak typing on TensorRT >= 11.
    """
    if precision not in PRECISIONS:
        raise LFMError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if typing not in TYPINGS:
        raise LFMError(f"--typing must be one of {', '.join(TYPINGS)}, got {typing!r}")
    major = int(version[0])
    if major < 10:
        raise BackendUnavailable(f"TensorRT {'.'.join(map(str, version))} is too old; lfm-deploy needs TensorRT 10 or 11")
    if typing == "weak" and major >= 11:
        raise LFMError("TensorRT 11 removed weak typing (BuilderFlag.FP16); use --typing strong (the default)")
    strong = typing != "weak"
    fp16 = precision == "fp16"
    return BuildPlan(precision, strongly_typed=strong, fp16_graph=fp16 and strong, fp16_flag=fp16 and not strong)


def network_flags(trt, plan: BuildPlan) -> int:
    """Network creation flags: STRONGLY_TYPED when the plan asks for it (ignored by 11.x, where
    every network is strongly typed; required on 10.x)."""
    flags = 0
    if plan.strongly_typed:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} has no strongly typed networks; use TensorRT >= 10")
        flags |= 1 << int(flag)
    return flags


def batch_profile(inputs: Iterable[tuple[str, Sequence[int]]], max_batch: int) -> dict[str, dict[str, list[int]]]:
    """Optimisation-profile shapes for dynamic batch dims: min 1, opt 1, max `max_batch`.

    Args:
        inputs: (name, shape) of each network input; -1 marks a dynamic dim. Only the leading
            (batch) dim may be dynamic: the graphs are built for one static image size.
        max_batch: the largest batch the engine accepts.

    Returns:
        {input: {"min": shape, "opt": shape, "max": shape}} for inputs with a dynamic batch.

    Raises:
        LFMError: max_batch < 1.
        ExportError: a dynamic dim other than the first.
    """
    if max_batch < 1:
        raise LFMError(f"--max-batch must be at least 1, got {max_batch}")
    out = {}
    for name, shape in inputs:
        shape = [int(d) for d in shape]
        if any(d < 0 for d in shape[1:]):
            raise ExportError(f"input {name} has a dynamic dim other than the batch: {shape}; re-export the graph")
        if shape and shape[0] < 0:
            out[name] = {"min": [1] + shape[1:], "opt": [1] + shape[1:], "max": [max_batch] + shape[1:]}
    return out


def create_config(trt, builder, plan: BuildPlan, *, workspace_bytes: int, profile: Mapping[str, Mapping],
                  timing_cache: bytes | None = None):
    """An `IBuilderConfig`: workspace limit, TF32 off, FP16 flag (weak fp16 only), profile, cache.

    Args:
        trt: the tensorrt module.
        builder: a `trt.Builder`.
        plan: from `plan_build`.
        workspace_bytes: workspace memory-pool limit.
        profile: from `batch_profile`.
        timing_cache: serialized timing cache to start from (None or b"": empty).

    Returns:
        The builder config.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if hasattr(trt.BuilderFlag, "TF32"):
        # On by default for fp32 matmuls/convs; fp32 engines must match the fp32 reference.
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if profile:
        opt = builder.create_optimization_profile()
        for name, shapes in profile.items():
            opt.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
        config.add_optimization_profile(opt)
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def _pin_islands(trt, network, islands: Iterable[str]) -> int:
    """Weak typing: run the layers of fp32-island ONNX nodes in fp32; returns how many."""
    islands = set(islands)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        meta = str(getattr(layer, "metadata", "") or "")
        if layer.name not in islands and not any(f"[ONNX Layer: {n}]" in meta for n in islands):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(o.dtype in (trt.float32, trt.float16) for o in outs):
            continue
        layer.precision = trt.float32
        for j, o in enumerate(outs):
            if o.dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


# ----------------------------------------------------------------------------- sidecar
def engine_path(artifact_dir: str | os.PathLike, graph: str, precision: str) -> Path:
    """`<artifact_dir>/engines/<graph>.<precision>.plan`."""
    return Path(artifact_dir) / ENGINE_DIR / f"{graph}.{precision}.plan"


def sidecar_path(engine: str | os.PathLike) -> Path:
    """The JSON next to an engine: `<engine>.json`."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: str | os.PathLike) -> dict:
    """Read an engine's sidecar.

    Raises:
        BackendUnavailable: missing or unreadable sidecar (the engine's origin is unknown).
    """
    path = sidecar_path(engine)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"{path} is missing or unreadable ({exc}); the engine's build is unknown: {_REBUILD}") from None
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        raise BackendUnavailable(f"{path} is not an lfm-deploy engine sidecar (schema {SIDECAR_SCHEMA}); {_REBUILD}")
    return data


def check_sidecar(sidecar: Mapping, *, tensorrt_version: str, gpu: GpuInfo, onnx_path: str | os.PathLike | None = None,
                  engine: str | os.PathLike | None = None) -> None:
    """Check that an engine can run here and is current.

    Args:
        sidecar: from `read_sidecar`.
        tensorrt_version: the running TensorRT's version string.
        gpu: the GPU it would run on.
        onnx_path: if given, the ONNX file the engine must have been built from.
        engine: if given, the engine file, checked against the sidecar's sha256.

    Raises:
        BackendUnavailable: built for another TensorRT version or GPU model, built from another
            ONNX file, or the engine file changed; the message says what differs and to rebuild.
    """
    problems = []
    built = str(sidecar.get("tensorrt_version"))
    if built != str(tensorrt_version):
        problems.append(f"built with TensorRT {built}, this is TensorRT {tensorrt_version}")
    want = sidecar.get("gpu", {})
    if want.get("name") != gpu.name or str(want.get("compute_capability")) != gpu.compute_capability:
        problems.append(f"built for {want.get('name')} (compute capability {want.get('compute_capability')}), "
                        f"this GPU is {gpu.name} (compute capability {gpu.compute_capability})")
    if onnx_path is not None and Path(onnx_path).is_file():
        if sha256_file(onnx_path) != sidecar.get("onnx", {}).get("sha256"):
            problems.append(f"built from a different {Path(onnx_path).name} (the graph was re-exported since)")
    if engine is not None and sidecar.get("engine_sha256") and sha256_file(engine) != sidecar["engine_sha256"]:
        problems.append("the engine file does not match the sha256 recorded at build time")
    if problems:
        name = Path(engine).name if engine is not None else "the engine"
        raise BackendUnavailable(f"{name} cannot be used here: {'; '.join(problems)}; {_REBUILD}")


# ----------------------------------------------------------------------------- build
@dataclass
class EngineBuild:
    """One built engine: its path and sidecar."""

    engine: Path
    sidecar: dict = field(default_factory=dict)


class _Logger:
    """Lazily created trt.Logger (warnings and errors only)."""

    _instance = None

    @classmethod
    def get(cls, trt):
        if cls._instance is None:
            cls._instance = trt.Logger(trt.Logger.WARNING)
        return cls._instance


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str = "fp32",
    workspace_gb: float = 4.0,
    max_batch: int = 8,
    timing_cache: str | os.PathLike | None = None,
    typing: str = "auto",
    islands: Iterable[str] = (),
    source_onnx: str | os.PathLike | None = None,
    graph: str | None = None,
    trt: Any = None,
    gpu: GpuInfo | None = None,
) -> EngineBuild:
    """Build one serialized TensorRT engine from an ONNX file and write its sidecar.

    Args:
        onnx_path: the graph to parse (for strongly typed fp16: the fp16 graph).
        out: engine file to write (the sidecar goes to `<out>.json`).
        precision: "fp32" or "fp16" (recorded; `typing` decides how it is realised).
        workspace_gb: workspace memory-pool limit in GiB.
        max_batch: max of the batch optimisation profile (min = opt = 1).
        timing_cache: file to load the timing cache from (if present) and save it to.
        typing: "auto"/"strong" or "weak" (TensorRT 10.x: BuilderFlag.FP16).
        islands: ONNX node names pinned to fp32 (weak typing only).
        source_onnx: the exported fp32 graph `onnx_path` was derived from (recorded and checked
            on load); default `onnx_path`.
        graph: graph name recorded in the sidecar.
        trt: the tensorrt module (default: imported; tests pass a fake).
        gpu: the GPU (default: queried from the driver).

    Returns:
        `EngineBuild` (path and sidecar dict).

    Raises:
        BackendUnavailable: no TensorRT, no GPU, or a CUDA initialisation failure.
        ExportError: the ONNX parser or the builder failed.
        LFMError: bad options.
    """
    trt = trt if trt is not None else import_tensorrt()
    gpu = gpu if gpu is not None else gpu_info()
    version = trt_version(trt)
    plan = plan_build(version, precision, typing)
    if workspace_gb <= 0:
        raise LFMError(f"--workspace-gb must be positive, got {workspace_gb}")
    onnx_path, out = Path(onnx_path), Path(out)
    source = Path(source_onnx) if source_onnx is not None else onnx_path
    t0 = time.perf_counter()
    try:
        builder = trt.Builder(_Logger.get(trt))
    except Exception as exc:  # "CUDA initialization failure" without a usable GPU
        raise BackendUnavailable(f"TensorRT could not create a builder ({exc}); a working NVIDIA GPU and driver are required") from None
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, _Logger.get(trt))
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}:\n  " + "\n  ".join(errors[:20])
                          + "\nCheck the graph with `lfm-lint-trt`; engines need the matmul lowering before TensorRT 11.2")
    inputs = [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]
    profile = batch_profile(inputs, max_batch)
    if plan.fp16_flag and islands:
        log.info("pinned %d layers to fp32", _pin_islands(trt, network, islands))
    cache_path = Path(timing_cache).expanduser() if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else None
    config = create_config(trt, builder, plan, workspace_bytes=int(workspace_gb * (1 << 30)), profile=profile,
                           timing_cache=cache_bytes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above); "
                          "a larger --workspace-gb or a smaller --max-batch may help")
    data = bytes(serialized)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, data)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    from .. import __version__

    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "graph": graph,
        "engine": out.name,
        "engine_sha256": sha256_file(out),
        "precision": precision,
        "typing": plan.typing,
        "tf32": False,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu.to_dict(),
        "onnx": {"file": source.name, "sha256": sha256_file(source)},
        "built_from": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
        "profile": profile,
        "max_batch": int(max_batch),
        "workspace_bytes": int(workspace_gb * (1 << 30)),
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "created_by": f"lfm-deploy {__version__}",
    }
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("built %s (%s, %s typing, TensorRT %s, %s) in %.0f s", out.name, precision, plan.typing,
             trt.__version__, gpu.name, sidecar["build_seconds"])
    return EngineBuild(out, sidecar)


def build_engines(
    artifact_dir: str | os.PathLike,
    *,
    precision: str = "fp32",
    graphs: Sequence[str] | None = None,
    workspace_gb: float = 4.0,
    max_batch: int = 8,
    timing_cache: str | os.PathLike | None = None,
    typing: str = "auto",
    fp16_margin: float | None = None,
    fp16_episodes: int = 2,
    onnx_only: bool = False,
    trt: Any = None,
    gpu: GpuInfo | None = None,
) -> list[EngineBuild]:
    """Build engines for the graphs of an lfm-export directory into `<dir>/engines/`.

    For fp16, each graph is first range-checked on `fp16_episodes` validation episodes and
    converted to an fp16 graph with fp32 islands (`engines/<graph>.fp16.onnx` plus a JSON
    report); strongly typed builds parse that graph, weakly typed ones pin the islands.

    Args:
        artifact_dir: the lfm-export output (manifest verified).
        precision: "fp32" or "fp16".
        graphs: which graphs (default: all in the manifest).
        workspace_gb, max_batch, timing_cache, typing: see `build_engine`.
        fp16_margin: fp16 safety margin of the range check (default `fp16.DEFAULT_MARGIN`).
        fp16_episodes: validation episodes for the range check.
        onnx_only: fp16 only: write the fp16 graphs and reports, build no engine (no TensorRT
            or GPU needed).
        trt, gpu: see `build_engine`.

    Returns:
        One `EngineBuild` per graph (engine None-free; empty list with `onnx_only`).

    Raises:
        ManifestError: not a valid export directory.
        BackendUnavailable: no TensorRT or GPU (checked before any work).
        ExportError: a graph TensorRT cannot build (e.g. ONNX DFT before TensorRT 11.2).
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    if precision not in PRECISIONS:
        raise LFMError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if onnx_only and precision != "fp16":
        raise LFMError("--onnx-only only applies to --precision fp16 (it writes the fp16 graphs)")
    names = list(graphs) if graphs else list(manifest["graphs"])
    unknown = [g for g in names if g not in manifest["graphs"]]
    if unknown:
        raise LFMError(f"{artifact_dir} has no graph {', '.join(unknown)} (it has: {', '.join(manifest['graphs'])})")
    plan = None
    if not onnx_only:
        trt = trt if trt is not None else import_tensorrt()
        gpu = gpu if gpu is not None else gpu_info()
        version = trt_version(trt)
        plan = plan_build(version, precision, typing)
        if manifest.get("lowering") == "dft" and tuple(version[:2]) < _DFT_SINCE:
            raise ExportError(f"{artifact_dir} uses the dft lowering (ONNX DFT), which TensorRT {trt.__version__} cannot "
                              "parse (DFT needs TensorRT >= 11.2); re-export with `lfm-export --lowering matmul`")
    builds = []
    engines = artifact_dir / ENGINE_DIR
    for graph in names:
        source = artifact_dir / manifest["graphs"][graph]["file"]
        parse, islands = source, ()
        if precision == "fp16" and (onnx_only or plan.fp16_graph or plan.fp16_flag):
            from .fp16 import DEFAULT_MARGIN, graph_feeds, prepare_fp16_graph

            feeds = graph_feeds(artifact_dir, graph, episodes=fp16_episodes)
            fp16 = prepare_fp16_graph(source, engines / f"{graph}.fp16.onnx", feeds,
                                      margin=fp16_margin or DEFAULT_MARGIN)
            islands = list(fp16.conversion.islands)
            if onnx_only or plan.fp16_graph:
                parse = fp16.path
            if onnx_only:
                log.info("wrote %s (%d fp32 islands)", fp16.path, len(islands))
                continue
        builds.append(build_engine(parse, engine_path(artifact_dir, graph, precision), precision=precision,
                                   workspace_gb=workspace_gb, max_batch=max_batch, timing_cache=timing_cache,
                                   typing=typing, islands=islands, source_onnx=source, graph=graph, trt=trt, gpu=gpu))
    return builds


def find_engines(artifact_dir: str | os.PathLike, precision: str) -> dict[str, Path]:
    """{graph: engine path} of the engines of one precision present in an artifact directory."""
    folder = Path(artifact_dir) / ENGINE_DIR
    suffix = f".{precision}.plan"
    if not folder.is_dir():
        return {}
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}"))}


class EngineFromPlan:
    """Lazy loader: calling it checks the sidecar and deserializes the engine.

    Usable wherever Polygraphy takes an engine loader (`TrtRunner(EngineFromPlan(path))`).

    Args:
        path: the `.plan` file.
        onnx_path: the exported graph it must have been built from (default: from the sidecar,
            looked up in the artifact directory above `engines/`).
        trt, gpu: for tests; default the real module and device 0.
    """

    def __init__(self, path: str | os.PathLike, onnx_path: str | os.PathLike | None = None, *, trt: Any = None,
                 gpu: GpuInfo | None = None):
        self.path = Path(path)
        self.onnx_path = onnx_path
        self._trt = trt
        self._gpu = gpu

    def check(self):
        """Check the engine can run here; returns (trt module, sidecar).

        Raises:
            BackendUnavailable: no TensorRT/GPU, missing sidecar, or a mismatch (rebuild).
        """
        if not self.path.is_file():
            raise BackendUnavailable(f"engine {self.path} not found; build it with `lfm-build-engine`")
        trt = self._trt if self._trt is not None else import_tensorrt()
        gpu = self._gpu if self._gpu is not None else gpu_info()
        sidecar = read_sidecar(self.path)
        onnx_path = self.onnx_path
        if onnx_path is None and sidecar.get("onnx", {}).get("file"):
            onnx_path = self.path.parent.parent / sidecar["onnx"]["file"]
        check_sidecar(sidecar, tensorrt_version=str(trt.__version__), gpu=gpu, onnx_path=onnx_path, engine=self.path)
        return trt, sidecar

    def __call__(self):
        """Deserialize the engine.

        Returns:
            The `trt.ICudaEngine`.

        Raises:
            BackendUnavailable: see `check`, or TensorRT refused the plan.
        """
        trt, _ = self.check()
        runtime = trt.Runtime(_Logger.get(trt))
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} could not deserialize {self.path.name}; {_REBUILD}")
        return engine
