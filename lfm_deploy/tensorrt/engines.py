"""TensorRT engines from the exported graphs, built through Polygraphy's loaders, with a sidecar
that ties each engine to its build.

    build_engines("artifacts/deepglobe", precision="fp16", max_batch=8,
                  timing_cache="~/.cache/lfm/trt.cache")
    engine = EngineFromPlan("artifacts/deepglobe/engines/episode.fp16.plan")()  # checked load

How each precision is realised on TensorRT 10 and 11 (decided in `plan_build`), the sidecar
(`<graph>.<precision>.plan.json`) and the batch profile are in docs/tensorrt.md ("Precision",
"INT8", "Engines are tied to their build"). TensorRT's API is called directly only in
`_pin_islands`; TensorRT and Polygraphy are imported lazily, so plans, profiles, sidecars and
`--onnx-only` fp16 graphs work without them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

from ..errors import BackendUnavailable, ExportError, LFMError
from ..manifest import MANIFEST_NAME, read_manifest, sha256_file
from ..utils.outputs import OutputDir, atomic_write_bytes, check_location

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_DIR",
    "PRECISIONS",
    "BuildPlan",
    "EngineBuild",
    "EngineFromPlan",
    "GpuInfo",
    "batch_profile",
    "build_engine",
    "build_engines",
    "check_sidecar",
    "engine_path",
    "find_engines",
    "gpu_info",
    "import_tensorrt",
    "onnx_inputs",
    "plan_build",
    "plan_verify",
    "read_sidecar",
    "sidecar_path",
    "trt_version",
]

ENGINE_DIR = "engines"
PRECISIONS = ("fp32", "fp16", "int8")
TYPINGS = ("auto", "strong", "weak")
SIDECAR_SCHEMA = 1
#: What `build_engines` writes into `<artifact_dir>/engines` (recorded there).
ENGINE_KIND = "lfm-build-engine output"
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
            f"TensorRT is not available here ({type(exc).__name__}: {exc})",
            api_hint="install the `tensorrt` package (10.x or 11.x, from NVIDIA's index) on a machine with an NVIDIA GPU",
        ) from None
    return tensorrt


def _polygraphy_trt():
    """`polygraphy.backend.trt`: the loaders every build and load goes through.

    Importing it does not import TensorRT (Polygraphy imports it lazily on first use). Tests
    replace this function to put a fake at the Polygraphy boundary.

    Raises:
        BackendUnavailable: Polygraphy is not installed.
    """
    try:
        from polygraphy.backend import trt as loaders  # noqa: PLC0415 (optional: the export extra)
    except ImportError as exc:
        raise BackendUnavailable(f"Polygraphy is not available here ({exc})",
                                 api_hint="install it with `pip install 'lfm-deploy[export]'`") from None
    return loaders


def _quiet_polygraphy():
    """Polygraphy prints INFO lines to stdout (among them advice to turn TF32 on, which fp32
    parity forbids); keep only its warnings and errors (the ONNX parser's among them) unless
    this module logs at DEBUG (`-vv`)."""
    from polygraphy.logger import G_LOGGER  # noqa: PLC0415

    return contextlib.nullcontext() if log.isEnabledFor(logging.DEBUG) else G_LOGGER.verbosity(G_LOGGER.WARNING)


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
        precision: "fp32", "fp16" or "int8".
        strongly_typed: create the network with the STRONGLY_TYPED flag (types from the graph).
        fp16_graph: build from an fp16 ONNX graph with fp32 islands (`lfm_deploy.precision.fp16`).
        fp16_flag: set `BuilderFlag.FP16` (weak typing, 10.x only) and pin islands to fp32.
        int8_graph: build from the export's int8 QDQ graph (explicit quantization: strongly
            typed, no INT8 flag, no calibrator).
    """

    precision: str
    strongly_typed: bool
    fp16_graph: bool
    fp16_flag: bool
    int8_graph: bool = False

    @property
    def typing(self) -> str:
        return "strong" if self.strongly_typed else "weak"


def plan_build(version: Sequence[int], precision: str, typing: str = "auto") -> BuildPlan:
    """Decide how to build `precision` on TensorRT `version`.

    Args:
        version: (major, minor, ...) of TensorRT.
        precision: "fp32", "fp16" or "int8" (explicit quantization from the int8 QDQ graphs).
        typing: "auto" (strongly typed), "strong", or "weak" (TensorRT 10.x only; not int8).

    Returns:
        The `BuildPlan`.

    Raises:
        BackendUnavailable: TensorRT older than 10.
        LFMError: an unknown precision/typing, weak typing on TensorRT >= 11, or weak int8.
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
    if precision == "int8":
        # Explicit quantization: the graph's Q/DQ nodes are the precision. TensorRT's docs ask for
        # strong typing and no precision flags; weak typing would need BuilderFlag.INT8 (gone in 11).
        if typing == "weak":
            raise LFMError("--precision int8 builds a strongly typed network from the int8 QDQ graphs (explicit "
                           "quantization, no INT8 flag); drop --typing weak")
        return BuildPlan(precision, strongly_typed=True, fp16_graph=False, fp16_flag=False, int8_graph=True)
    strong = typing != "weak"
    fp16 = precision == "fp16"
    return BuildPlan(precision, strongly_typed=strong, fp16_graph=fp16 and strong, fp16_flag=fp16 and not strong)


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


def onnx_inputs(onnx_path: str | os.PathLike) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of an ONNX graph's inputs as TensorRT's parser will see them (-1: dynamic).

    Read from the file (weights not loaded) so that the profile is known before any TensorRT
    object exists.
    """
    import onnx  # noqa: PLC0415 (export extra)

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {w.name for w in graph.initializer}  # IR < 4 lists initializers as inputs too
    return [(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim))
            for i in graph.input if i.name not in weights]


def _create_config(pg, trt, plan: BuildPlan, *, workspace_bytes: int, profile: Mapping[str, Mapping],
                   timing_cache: BinaryIO | None):
    """The `CreateConfig` loader of a build: workspace limit, TF32 off, FP16 + obey precision
    constraints for weak fp16 only (both removed in TensorRT 11), the batch profile, and the
    timing cache to start from (an open binary file, or None). Never `int8=True` or a
    calibrator: int8 engines are explicitly quantized (Q/DQ nodes, strongly typed network)."""
    profiles = None  # static shapes: Polygraphy's default profile (the graph's own shapes)
    if profile:
        shapes = pg.Profile()
        for name, dims in profile.items():
            shapes.add(name, min=tuple(dims["min"]), opt=tuple(dims["opt"]), max=tuple(dims["max"]))
        profiles = [shapes]
    return pg.CreateConfig(
        tf32=False,
        fp16=plan.fp16_flag,
        precision_constraints="obey" if plan.fp16_flag else None,
        profiles=profiles,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)},
        load_timing_cache=timing_cache,
    )


def _pin_islands(trt, islands: Iterable[str], *, network) -> int:
    """Weak typing: run the layers of fp32-island ONNX nodes in fp32; returns how many.

    A `PostprocessNetwork` callback. Direct TensorRT API calls (`layer.precision`,
    `set_output_type`) because Polygraphy's `SetLayerPrecisions` matches layer names only and
    sets no output types: an ONNX node the parser expands into several layers is found by the
    `[ONNX Layer: name]` metadata, and an island's outputs must stay fp32 too, or its consumers
    receive fp16 values that overflow.
    """
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
    log.info("pinned %d layers to fp32", pinned)
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


def _lint_summary(onnx_path: Path, version: Sequence[int], limit: int = 5) -> str:
    """What `lfm-lint-trt` finds in a graph TensorRT could not parse ("" when nothing)."""
    from .lint import lint_onnx  # noqa: PLC0415

    try:
        errors = lint_onnx(onnx_path, trt_version=f"{version[0]}.{version[1]}").errors
    except LFMError:
        return ""
    lines = [f"{f.node} ({f.op}): {f.problem}" for f in errors[:limit]]
    return "; lfm-lint-trt finds: " + " | ".join(lines) if lines else ""


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
        onnx_path: the graph to parse (for strongly typed fp16: the fp16 graph; for int8: the
            int8 QDQ graph).
        out: engine file to write (the sidecar goes to `<out>.json`).
        precision: "fp32", "fp16" or "int8" (recorded; `typing` decides how fp16 is realised,
            int8 is always explicit quantization in a strongly typed network).
        workspace_gb: workspace memory-pool limit in GiB.
        max_batch: max of the batch optimisation profile (min = opt = 1).
        timing_cache: file to load the timing cache from (if present) and save it to.
        typing: "auto"/"strong" or "weak" (TensorRT 10.x: BuilderFlag.FP16).
        islands: ONNX node names pinned to fp32 (weak typing only).
        source_onnx: the exported fp32 graph `onnx_path` was derived from (recorded and checked
            on load); default `onnx_path`.
        graph: graph name recorded in the sidecar.
        trt: the tensorrt module Polygraphy builds with (default: imported; tests pass a
            stand-in together with fake loaders).
        gpu: the GPU (default: queried from the driver).

    Returns:
        `EngineBuild` (path and sidecar dict).

    Raises:
        BackendUnavailable: no TensorRT, Polygraphy or GPU, or a CUDA initialisation failure.
        ExportError: the ONNX parser or the builder failed.
        LFMError: bad options.
    """
    trt = trt if trt is not None else import_tensorrt()
    pg = _polygraphy_trt()
    from polygraphy.exception import PolygraphyException  # noqa: PLC0415

    gpu = gpu if gpu is not None else gpu_info()
    version = trt_version(trt)
    plan = plan_build(version, precision, typing)
    if workspace_gb <= 0:
        raise LFMError(f"--workspace-gb must be positive, got {workspace_gb}")
    onnx_path, out = Path(onnx_path), Path(out)
    source = Path(source_onnx) if source_onnx is not None else onnx_path
    t0 = time.perf_counter()
    profile = batch_profile(onnx_inputs(onnx_path), max_batch)
    cache_path = Path(timing_cache).expanduser() if timing_cache else None
    workspace_bytes = int(workspace_gb * (1 << 30))
    with contextlib.ExitStack() as files:
        files.enter_context(_quiet_polygraphy())
        # Timing cache files are Polygraphy's file-like objects, not paths: for a path it creates
        # and locks `<cache>.lock` beside the user's file and rewrites the cache in place. It is
        # read from the user's file and written to a scratch file (Polygraphy fsyncs file-like
        # targets), then moved into place atomically.
        cache_in = (files.enter_context(open(cache_path, "rb"))
                    if cache_path is not None and cache_path.is_file() else None)
        cache_out = files.enter_context(tempfile.TemporaryFile()) if cache_path is not None else None
        config = _create_config(pg, trt, plan, workspace_bytes=workspace_bytes, profile=profile, timing_cache=cache_in)
        # Parsed now rather than inside EngineBytesFromNetwork so that a parse failure (the
        # graph) and a builder failure (the machine) become different errors; we own the tuple.
        try:
            network = pg.NetworkFromOnnxPath(str(onnx_path), strongly_typed=plan.strongly_typed)()
        except PolygraphyException as exc:  # Polygraphy has logged the parser's errors above
            raise ExportError(
                f"TensorRT {trt.__version__} could not parse {onnx_path.name} ({exc}; the parser's errors are logged "
                "above)" + _lint_summary(onnx_path, version),
                api_hint="engines need the matmul lowering before TensorRT 11.2",
                cli_hint="check the graph with `lfm-lint-trt`; engines need `lfm-export --lowering matmul` before "
                         "TensorRT 11.2",
            ) from None
        except (RuntimeError, TypeError) as exc:  # trt.Builder: "CUDA initialization failure" -> nullptr
            raise BackendUnavailable(f"TensorRT could not create a builder ({exc})",
                                     api_hint="a working NVIDIA GPU and driver are required") from None
        if plan.fp16_flag and islands:
            network = pg.PostprocessNetwork(network, functools.partial(_pin_islands, trt, tuple(islands)),
                                            name="pin fp32 islands")
        try:
            data = bytes(pg.EngineBytesFromNetwork(network, config=config, save_timing_cache=cache_out)())
        except PolygraphyException as exc:
            raise ExportError(f"TensorRT failed to build an engine from {onnx_path.name} ({exc}; see the TensorRT log "
                              "above)", api_hint="a larger workspace_gb or a smaller max_batch may help",
                              cli_hint="a larger --workspace-gb or a smaller --max-batch may help") from None
        new_cache = b""
        if cache_out is not None:
            cache_out.seek(0)
            new_cache = cache_out.read()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    if cache_path is not None and new_cache:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_path, new_cache)
    from .. import __version__

    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "graph": graph,
        "engine": out.name,
        "engine_sha256": sha256_file(out),
        "precision": precision,
        "typing": plan.typing,
        "quantization": "explicit (int8 Q/DQ graph)" if plan.int8_graph else None,
        "tf32": False,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu.to_dict(),
        "onnx": {"file": source.name, "sha256": sha256_file(source)},
        "built_from": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
        "profile": profile,
        "max_batch": int(max_batch),
        "workspace_bytes": workspace_bytes,
        "timing_cache": str(cache_path) if cache_path is not None else None,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "created_by": f"lfm-deploy {__version__}",
    }
    atomic_write_bytes(sidecar_path(out), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
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
    overwrite: bool = False,
    trt: Any = None,
    gpu: GpuInfo | None = None,
) -> list[EngineBuild]:
    """Build engines for the graphs of an lfm-export directory into `<dir>/engines/`.

    fp32 and fp16 engines start from the export's float32 graphs; fp16 ones are range-checked
    and converted first (`engines/<graph>.fp16.onnx` and a JSON report); int8 engines are built
    from the export's own gated int8 QDQ graphs (docs/tensorrt.md, "Precision", "INT8").

    Args:
        artifact_dir: the lfm-export output (manifest verified).
        precision: "fp32", "fp16" or "int8".
        graphs: which graphs (default: all in the manifest).
        workspace_gb, max_batch, timing_cache, typing: see `build_engine`.
        fp16_margin: fp16 safety margin of the range check (default `fp16.DEFAULT_MARGIN`).
        fp16_episodes: validation episodes for the range check.
        onnx_only: fp16 only: write the fp16 graphs and reports, build no engine (no TensorRT
            or GPU needed).
        overwrite: replace files in `engines/` that lfm-build-engine did not write (otherwise
            refused before any work).
        trt, gpu: see `build_engine`.

    Returns:
        One `EngineBuild` per graph (engine None-free; empty list with `onnx_only`).

    Raises:
        ManifestError: not a valid export directory.
        LFMError: int8 asked of an export without int8 graphs (checked before TensorRT).
        BackendUnavailable: no TensorRT or GPU (checked before any work).
        ExportError: a graph TensorRT cannot build (e.g. ONNX DFT before TensorRT 11.2).
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    if precision not in PRECISIONS:
        raise LFMError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if onnx_only and precision != "fp16":
        raise LFMError("--onnx-only only applies to --precision fp16 (it writes the fp16 graphs)")
    exported_as = manifest.served_precision.name
    if precision == "int8" and exported_as != "int8":
        raise LFMError(f"{artifact_dir} has no int8 graphs (exported with precision {exported_as}); int8 engines are "
                       "built from the export's gated int8 QDQ graphs",
                       api_hint="export with export_domain(..., precision='int8') first",
                       cli_hint="export them with `lfm-export ... --precision int8` first")
    names = list(graphs) if graphs else list(manifest.graphs)
    float32 = {g: manifest.float32_file(g) for g in manifest.graphs}
    unknown = [g for g in names if g not in manifest.graphs]
    if unknown:
        raise LFMError(f"{artifact_dir} has no graph {', '.join(unknown)} (it has: {', '.join(manifest.graphs)})")
    # Every file this build writes is claimed before any work: nothing of the user's is replaced.
    engines = OutputDir(artifact_dir / ENGINE_DIR, flag=None, kind=ENGINE_KIND, overwrite=overwrite)
    claims = []
    for graph in names:
        if precision == "fp16":
            claims += [f"{graph}.fp16.onnx", f"{graph}.fp16.json"]
        if not onnx_only:
            plan_file = engine_path(artifact_dir, graph, precision).name
            claims += [plan_file, sidecar_path(plan_file).name]
    engines.claim(claims)
    if timing_cache is not None:
        # Saved over after the build: never one of the export's own files.
        check_location(timing_cache, flag="--timing-cache", directory=False,
                       inputs={"ARTIFACT_DIR": [artifact_dir / MANIFEST_NAME]
                               + [artifact_dir / g.file for g in manifest.graphs.values()]
                               + [artifact_dir / f for f in float32.values()]})
    plan = None
    if not onnx_only:
        trt = trt if trt is not None else import_tensorrt()
        gpu = gpu if gpu is not None else gpu_info()
        version = trt_version(trt)
        plan = plan_build(version, precision, typing)
        if manifest.lowering == "dft" and tuple(version[:2]) < _DFT_SINCE:
            raise ExportError(f"{artifact_dir} uses the dft lowering (ONNX DFT), which TensorRT {trt.__version__} cannot "
                              "parse (DFT needs TensorRT >= 11.2); re-export with `lfm-export --lowering matmul`")
    builds = []
    for graph in names:
        # int8: the export's int8 QDQ graph; fp32/fp16: the float32 graph, whatever the runtime loads.
        source = artifact_dir / (manifest.graphs[graph].file if precision == "int8" else float32[graph])
        parse, islands = source, ()
        if precision == "fp16" and (onnx_only or plan.fp16_graph or plan.fp16_flag):
            from ..precision.fp16 import DEFAULT_MARGIN, graph_feeds, prepare_fp16_graph

            feeds = graph_feeds(artifact_dir, graph, episodes=fp16_episodes, manifest=manifest)
            fp16 = prepare_fp16_graph(source, engines.path / f"{graph}.fp16.onnx", feeds,
                                      margin=fp16_margin or DEFAULT_MARGIN)
            engines.adopt(f"{graph}.fp16.onnx")
            engines.adopt(f"{graph}.fp16.json")
            islands = list(fp16.conversion.islands)
            if onnx_only or plan.fp16_graph:
                parse = fp16.path
            if onnx_only:
                log.info("wrote %s (%d fp32 islands)", fp16.path, len(islands))
                continue
        build = build_engine(parse, engines.path / engine_path(artifact_dir, graph, precision).name,
                             precision=precision, workspace_gb=workspace_gb, max_batch=max_batch,
                             timing_cache=timing_cache, typing=typing, islands=islands, source_onnx=source,
                             graph=graph, trt=trt, gpu=gpu)
        engines.adopt(build.engine.name)
        engines.adopt(sidecar_path(build.engine).name)
        builds.append(build)
    return builds


def find_engines(artifact_dir: str | os.PathLike, precision: str) -> dict[str, Path]:
    """{graph: engine path} of the engines of one precision present in an artifact directory."""
    folder = Path(artifact_dir) / ENGINE_DIR
    suffix = f".{precision}.plan"
    if not folder.is_dir():
        return {}
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*{suffix}"))}


class EngineFromPlan:
    """Lazy loader: calling it checks the sidecar, then deserializes the engine with Polygraphy's
    `EngineFromBytes`.

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
        pg = _polygraphy_trt()
        from polygraphy.exception import PolygraphyException  # noqa: PLC0415

        try:
            return pg.EngineFromBytes(self.path.read_bytes())()
        except PolygraphyException:
            raise BackendUnavailable(f"TensorRT {trt.__version__} could not deserialize {self.path.name}; {_REBUILD}") from None


def plan_verify(backend, ctx):
    """lfm-verify's plan for a TensorRT engine backend ("trt-fp16", `lfm_deploy.runtime.backends`):
    the episode engine of its precision in the artifact directory, or why it is skipped."""
    from ..runtime.backends import Planned

    name, precision, artifact_dir = backend.name, backend.precision, ctx.artifact_dir
    if backend.graphs != "fp32" and ctx.graphs.get(backend.graphs) is None:
        return Planned(name, precision, "", skip=ctx.missing[backend.graphs])
    try:
        trt = import_tensorrt()
    except BackendUnavailable as exc:
        return Planned(name, precision, "", skip=str(exc))
    engines = find_engines(artifact_dir, precision)
    if "episode" not in engines:
        return Planned(name, precision, "", skip=f"no {precision} episode engine in {artifact_dir / ENGINE_DIR}; "
                       f"build one with `lfm-build-engine {artifact_dir} --precision {precision}`")
    loader = EngineFromPlan(engines["episode"])
    try:
        _, sidecar = loader.check()
    except BackendUnavailable as exc:
        return Planned(name, precision, "", skip=str(exc))

    def make():
        from polygraphy.backend.trt import TrtRunner

        return TrtRunner(loader, name=name)

    return Planned(name, precision, f"TensorRT {trt.__version__} on {sidecar['gpu']['name']}", make)
