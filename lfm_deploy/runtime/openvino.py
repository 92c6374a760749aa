"""OpenVINO CPU runtime: `SessionFromOpenVINO`, an onnxruntime-shaped session on OpenVINO (fp32, bf16).

OpenVINO reads the exported .onnx files directly (no conversion step, no extra artifact) and
compiles them for the CPU with `INFERENCE_PRECISION_HINT` f32 or bf16. The session it returns
answers the part of `onnxruntime.InferenceSession` this project calls (`run`, `get_inputs`,
`get_outputs`, `get_providers`), so the `Segmenter`, Polygraphy's `OnnxrtRunner` and
`run_feeds` use it unchanged. `import openvino` happens only when a session is created.

docs/openvino.md has the measurements (bf16 cost and accuracy, why `F32_ISLANDS` keeps only
"groupnorm", how islands are marked, start-up with `cache_dir`) and the commands to rerun them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)

#: The precisions a `SessionFromOpenVINO` runs in, with OpenVINO's `INFERENCE_PRECISION_HINT`.
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}

#: What to install when OpenVINO is missing.
INSTALL_HINT = "pip install 'lfm-deploy[openvino]'"

#: The OpenVINO device the graphs are compiled for (named in the provider label, "OpenVINO CPU (bf16)").
DEVICE = "CPU"

#: Candidate f32 islands for bf16 runs (what each keeps in f32), see `island_nodes`.
ISLANDS = {
    "masker": "the frequency masker: APM's DFT matrix products, magnitude and atan2 phase arithmetic, ACPA",
    "correlation": "the 4D correlation's L2 normalisations and cosine matrix products",
    "groupnorm": "the learner's two-stage group normalisations (means, centred variance, square root, division)",
}

#: Islands kept in f32 by default when running bf16 (measured: docs/openvino.md, "Float islands").
F32_ISLANDS: tuple[str, ...] = ("groupnorm",)

# ORT's type strings for OpenVINO element types (what Polygraphy's OnnxrtRunner parses).
_ORT_TYPES = {
    "f32": "tensor(float)", "f16": "tensor(float16)", "bf16": "tensor(bfloat16)", "f64": "tensor(double)",
    "u8": "tensor(uint8)", "i8": "tensor(int8)", "u16": "tensor(uint16)", "i16": "tensor(int16)",
    "u32": "tensor(uint32)", "i32": "tensor(int32)", "u64": "tensor(uint64)", "i64": "tensor(int64)",
    "boolean": "tensor(bool)", "string": "tensor(string)",
}
# The IR attribute that keeps a layer out of lower precision, in both of OpenVINO's spellings:
# `DisablePrecisionConversion` (2026: CPU nodes honour it for bf16) and `precise` (2025).
_KEEP_F32_ATTRIBUTES = ({"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16,bf16"},
                        {"name": "precise", "version": "0"})
_GROUPNORM_OPS = {"ReduceMean", "Subtract", "Multiply", "Power", "Sqrt", "Add", "Divide", "Squeeze", "Unsqueeze"}


def import_openvino():
    """The `openvino` module.

    Raises:
        BackendUnavailable: OpenVINO is not installed.
    """
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(
            f"the OpenVINO runtime is not installed ({exc})", api_hint=f"{INSTALL_HINT}, or pass providers='cpu'",
            cli_hint=f"{INSTALL_HINT}, or pass --providers cpu",
        ) from None
    return openvino


def native_bf16(core) -> bool:
    """Whether the CPU runs bf16 natively (AVX512-BF16 or AMX), per OpenVINO's capabilities."""
    return "BF16" in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")


# ---------------------------------------------------------------------- f32 islands
def _scope(node) -> str:
    """The module scope of a node named by the TorchScript exporter ("/apm_1/MatMul" -> "apm_1")."""
    name = node.get_friendly_name()
    return name.split("/")[1] if name.startswith("/") and name.count("/") >= 2 else ""


def _consumers(node) -> list:
    return [target.get_node() for output in node.outputs() for target in output.get_target_inputs()]


def _masker_nodes(model) -> set:
    return {n for n in model.get_ordered_ops() if _scope(n).split("_")[0] in ("apm", "acpa")}


def _correlation_nodes(model) -> set:
    """ReduceL2 -> Add(eps) -> Divide, and the MatMul of two such normalised tensors."""
    found = set()
    for norm in (n for n in model.get_ordered_ops() if n.get_type_name() == "ReduceL2"):
        found.add(norm)
        for add in _consumers(norm):
            if add.get_type_name() != "Add":
                continue
            found.add(add)
            for div in _consumers(add):
                if div.get_type_name() == "Divide":
                    found.add(div)
                    found.update(m for m in _consumers(div) if m.get_type_name() in ("MatMul", "Transpose"))
    found.update(m for t in list(found) if t.get_type_name() == "Transpose"
                 for m in _consumers(t) if m.get_type_name() == "MatMul")
    return found


def _groupnorm_nodes(model) -> set:
    return {n for n in model.get_ordered_ops()
            if _scope(n).startswith("encoder_layer") and n.get_type_name() in _GROUPNORM_OPS}


_ISLAND_RULES = {"masker": _masker_nodes, "correlation": _correlation_nodes, "groupnorm": _groupnorm_nodes}


def island_nodes(model, islands: Sequence[str]) -> set[str]:
    """Friendly names of the operations of `model` that the named islands keep in f32.

    Args:
        model: an `openvino.Model` read from an lfm-export graph.
        islands: names from `ISLANDS`.

    Returns:
        The operations' friendly names (constants excluded).

    Raises:
        InputError: an unknown island name.
    """
    unknown = [i for i in islands if i not in _ISLAND_RULES]
    if unknown:
        raise InputError(f"unknown f32 island(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ISLANDS)}")
    names = set()
    for island in islands:
        names.update(n.get_friendly_name() for n in _ISLAND_RULES[island](model) if n.get_type_name() != "Constant")
    return names


def keep_in_f32(ov, core, model, names: set[str]):
    """A copy of `model` whose named operations OpenVINO must not run in a lower precision.

    The marker is an IR runtime attribute that Python cannot create directly, so the model
    goes through IR once: saved, the attribute added to each named layer, read back.

    Returns:
        The marked `openvino.Model`.
    """
    with tempfile.TemporaryDirectory(prefix="lfm-openvino-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        root = ET.parse(xml).getroot()
        for layer in root.iter("layer"):
            if layer.get("name") in names:
                rt_info = layer.find("rt_info")
                if rt_info is None:
                    rt_info = ET.SubElement(layer, "rt_info")
                for attribute in _KEEP_F32_ATTRIBUTES:
                    ET.SubElement(rt_info, "attribute", attribute)
        weights = ov.Tensor(np.fromfile(xml.with_suffix(".bin"), dtype=np.uint8))
        return core.read_model(ET.tostring(root, encoding="unicode"), weights)


def runtime_precisions(compiled, names: set[str] | None = None) -> dict[str, int]:
    """Count the compiled graph's layers by runtime precision ("f32", "bf16", ...).

    Args:
        compiled: an `openvino.CompiledModel`.
        names: count only layers fused from these original operations (None: all).
    """
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Const", "Input", "Output", "Reorder"):
            continue
        if names is not None and not names & set(info["originalLayersNames"].astype(str).split(",")):
            continue
        precision = info["runtimePrecision"].astype(str)
        counts[precision] = counts.get(precision, 0) + 1
    return counts


# ---------------------------------------------------------------------- the session
@dataclass(frozen=True)
class NodeArg:
    """A graph input or output as onnxruntime describes it.

    Attributes:
        name: the ONNX tensor name.
        shape: ints, and strings for dynamic dims ("?" as OpenVINO prints them; onnxruntime
            gives the ONNX dim_param, e.g. "B").
        type: onnxruntime's type string, e.g. "tensor(float)".
    """

    name: str
    shape: list
    type: str


def _node_arg(port) -> NodeArg:
    names = sorted(port.get_names())
    # An ONNX graph output can carry the name of the node output it aliases too: prefer the
    # graph's own name over exporter-generated ones ("/conv1/Conv_output_0").
    plain = [n for n in names if not n.startswith("/")]
    shape = [d.get_length() if d.is_static else str(d) for d in port.get_partial_shape()]
    element = port.get_element_type().get_type_name()
    return NodeArg(name=(plain or names or [port.get_any_name()])[0], shape=shape,
                   type=_ORT_TYPES.get(element, f"tensor({element})"))


class OpenVINOSession:
    """An OpenVINO compiled model behind the subset of `onnxruntime.InferenceSession` this project uses.

    `run` is thread-safe: each call borrows an infer request from a pool (one per concurrent
    caller, reused), so concurrent calls never share buffers. Dynamic dims (the head's batch)
    take any size on each call.

    With `compile_static`, the session holds one model compiled for fixed input shapes: a call
    with other shapes compiles the graph for them first (about 1 to 2 s at 400 px) and drops the
    previous compilation, so memory holds one at a time. Fixed shapes let OpenVINO plan every
    intermediate buffer when it compiles and reuse it, where dynamic ones are allocated on each
    inference: at batch 1, 400 px, on a 2-core Intel Xeon, 0.53 instead of 0.71 GB peak for the
    int8 export, and 0.84x-0.90x the time per warm query (the first call saves most: it has no
    buffers to allocate; docs/performance.md, "Memory"). It pays when the shapes stay the same
    from call to call (a service answering one query at a time); a caller that alternates shapes
    pays a compilation at every change.

    Args:
        compiled: the `openvino.CompiledModel` (with `compile_static`: compiled for the first shapes).
        precision: the precision it runs in ("fp32" or "bf16").
        label: the provider label (`get_providers`).
        ports: with `compile_static`, the graph's input and output ports with their dynamic
            dims (`openvino.Model.inputs`, `.outputs`), which `get_inputs` reports.
        compile_static: callable({input index: shape}) -> a `CompiledModel` for those shapes;
            None: `compiled` takes any shape.
    """

    def __init__(self, compiled, precision: str, label: str, *, ports=None, compile_static=None):
        self.compiled_model = compiled
        self.precision = precision
        self._label = label
        inputs, outputs = ports if ports is not None else (compiled.inputs, compiled.outputs)
        self._inputs = [_node_arg(p) for p in inputs]
        self._outputs = [_node_arg(p) for p in outputs]
        self._input_index = {a.name: i for i, a in enumerate(self._inputs)}
        self._output_index = {a.name: i for i, a in enumerate(self._outputs)}
        self._dtypes = [np.dtype(p.get_element_type().to_dtype()) for p in inputs]
        self._compile_static = compile_static
        #: the shapes `compiled_model` was compiled for (static sessions), and how many compilations ran
        self.static_shapes = None if compile_static is None else self._shapes_of(compiled)
        self.compilations = 0 if compile_static is None else 1
        self._idle: list = []
        self._lock = threading.Lock()

    def get_inputs(self) -> list[NodeArg]:
        """The graph inputs, in graph order."""
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        """The graph outputs, in graph order."""
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        """One label naming the device and precision, e.g. ["OpenVINO CPU (bf16)"]."""
        return [self._label]

    def run(self, output_names: Sequence[str] | None, input_feed: dict, run_options=None) -> list[np.ndarray]:
        """Run the graph, as `onnxruntime.InferenceSession.run`.

        Args:
            output_names: the outputs wanted, in the order returned (None: all, in graph order).
            input_feed: every input by name, as numpy arrays of the graph's dtypes.
            run_options: accepted for compatibility and ignored.

        Returns:
            The outputs as new numpy arrays.

        Raises:
            InputError: unknown or missing names, or an array of the wrong dtype.
        """
        outputs = self._output_positions(output_names)
        feed = self._feed(input_feed)
        request, idle = self._borrow(feed)
        try:
            request.infer(feed, share_outputs=True)
            return [np.array(request.get_output_tensor(i).data, copy=True) for i in outputs]
        finally:
            self._give_back(request, idle)

    def _output_positions(self, output_names) -> list[int]:
        if output_names is None:
            return list(range(len(self._outputs)))
        unknown = [n for n in output_names if n not in self._output_index]
        if unknown:
            raise InputError(f"unknown output(s) {', '.join(map(repr, unknown))}; the graph's outputs are "
                             f"{', '.join(self._output_index)}")
        return [self._output_index[n] for n in output_names]

    def _feed(self, input_feed: dict) -> dict:
        unknown = [n for n in input_feed if n not in self._input_index]
        missing = [n for n in self._input_index if n not in input_feed]
        if unknown or missing:
            raise InputError(f"inputs do not match the graph's {', '.join(self._input_index)}: "
                             f"unknown {unknown or 'none'}, missing {missing or 'none'}")
        feed = {}
        for name, value in input_feed.items():
            i = self._input_index[name]
            value = np.asarray(value)
            if value.dtype != self._dtypes[i]:  # onnxruntime refuses these too, rather than cast
                raise InputError(f"input {name!r} is {value.dtype}, the graph takes {self._inputs[i].type}")
            feed[i] = np.ascontiguousarray(value)
        return feed

    @staticmethod
    def _shapes_of(compiled) -> tuple:
        return tuple(tuple(d.get_length() for d in p.get_partial_shape()) for p in compiled.inputs)

    def _borrow(self, feed: dict):
        """An idle infer request (or a new one) of the compiled model that fits `feed`, and the
        idle list it goes back to (a static session's list of an older compilation is dropped)."""
        with self._lock:
            if self._compile_static is not None:
                shapes = tuple(tuple(feed[i].shape) for i in range(len(self._inputs)))
                if shapes != self.static_shapes:
                    t0 = time.perf_counter()
                    self.compiled_model = None  # release the previous compilation before the next one
                    self._idle = []
                    self.compiled_model = self._compile_static(dict(enumerate(shapes)))
                    self.static_shapes = shapes
                    self.compilations += 1
                    log.info("compiled for input shapes %s in %.2f s (OpenVINO static shapes)",
                             [list(x) for x in shapes], time.perf_counter() - t0)
            idle, compiled = self._idle, self.compiled_model
            if idle:
                return idle.pop(), idle
        return compiled.create_infer_request(), idle

    def _give_back(self, request, idle: list) -> None:
        with self._lock:
            idle.append(request)


class SessionFromOpenVINO:
    """Lazy loader: calling it compiles an ONNX graph with OpenVINO for the CPU.

    The OpenVINO twin of `SessionFromOnnx` (Polygraphy style: pass it to `OnnxrtRunner`, or
    call it); the session it returns behaves like an onnxruntime session (`OpenVINOSession`).

    Args:
        model_path: the .onnx file.
        precision: "fp32" (OpenVINO's f32; logits within ~1e-5 of onnxruntime) or "bf16"
            (bf16 matrix products and convolutions; cost and speed: docs/openvino.md).
        threads: `INFERENCE_NUM_THREADS` (None: OpenVINO's default, the physical cores).
        cache_dir: OpenVINO's compiled-model cache (`CACHE_DIR`): a later load of the same
            graph and settings imports the compiled blob instead of compiling; None: no cache.
        f32_islands: for bf16, the `ISLANDS` kept in f32 (None: `F32_ISLANDS`).
        static_shapes: compile for fixed input shapes, every dynamic dim 1 at first, and again
            whenever a call brings other shapes (`OpenVINOSession`: less memory and faster at a
            steady batch size, a compilation at each change of shape).
        what: name used in log lines and errors (default: the file name).

    Raises:
        InputError: an invalid precision, thread count or island name.
    """

    def __init__(self, model_path: str | os.PathLike, precision: str = "fp32", *, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, f32_islands: Sequence[str] | None = None,
                 static_shapes: bool = False, what: str | None = None):
        self.model = Path(model_path)
        self.static_shapes = bool(static_shapes)
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}",
                             api_hint="pass 'fp32' or 'bf16' (int8 graphs run with 'fp32')")
        self.precision = precision
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.f32_islands = tuple(F32_ISLANDS if f32_islands is None else f32_islands)
        unknown = [i for i in self.f32_islands if i not in ISLANDS]
        if unknown:
            raise InputError(f"unknown f32 island(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ISLANDS)}")
        self.what = what or self.model.name

    @property
    def path(self) -> Path:
        return self.model

    def config(self) -> dict:
        """The `compile_model` properties."""
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def __call__(self) -> OpenVINOSession:
        """Compile the graph.

        Returns:
            The `OpenVINOSession`.

        Raises:
            InputError: the graph file does not exist.
            BackendUnavailable: OpenVINO is not installed.
        """
        if not self.model.is_file():
            raise InputError(f"graph file {self.model} not found", api_hint="pass the path of an exported .onnx file",
                             cli_hint="check the artifact directory, or re-run lfm-export")
        ov = import_openvino()
        core = ov.Core()
        t0 = time.perf_counter()
        islands = self.f32_islands if self.precision == "bf16" else ()
        model = core.read_model(str(self.model)) if islands or self.static_shapes else None
        names = island_nodes(model, islands) if islands else set()
        if names:
            model = keep_in_f32(ov, core, model, names)
        if self.static_shapes:
            config = self.config()

            def compile_static(shapes: dict):
                fixed = model.clone()
                fixed.reshape({port.get_any_name(): list(shapes[i]) for i, port in enumerate(model.inputs)})
                return core.compile_model(fixed, DEVICE, config)

            first = {i: [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
                     for i, port in enumerate(model.inputs)}
            compiled = compile_static(first)
            session = OpenVINOSession(compiled, self.precision, self._label(core, compiled),
                                      ports=(model.inputs, model.outputs), compile_static=compile_static)
        else:
            # From the path where possible: a CACHE_DIR hit then skips reading the ONNX graph.
            compiled = core.compile_model(model if model is not None else str(self.model), DEVICE, self.config())
            session = OpenVINOSession(compiled, self.precision, self._label(core, compiled))
        if names:
            log.info("%s: f32 islands %s (%d operations): runtime layers %s", self.what, ", ".join(islands),
                     len(names), runtime_precisions(compiled, names))
        log.info("loaded %s on %s in %.2f s", self.what, session.get_providers()[0], time.perf_counter() - t0)
        return session

    def _label(self, core, compiled) -> str:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        effective = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        if self.precision == "bf16" and effective != "bf16":
            why = "this CPU has no native bf16 (AVX512-BF16/AMX)" if not native_bf16(core) else "OpenVINO declined bf16"
            log.warning("%s: bf16 requested but %s; OpenVINO runs it in %s (correct, not faster)", self.what, why,
                        effective)
            return f"OpenVINO {DEVICE} ({effective}; bf16 unavailable)"
        if self.precision == "bf16" and not native_bf16(core):
            log.warning("%s: this CPU has no native bf16 (AVX512-BF16/AMX); OpenVINO emulates it (slow)", self.what)
            return f"OpenVINO {DEVICE} (bf16 emulated)"
        return f"OpenVINO {DEVICE} ({self.precision})"
