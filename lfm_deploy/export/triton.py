"""Triton Inference Server model repository for the exported graphs, and its validation.

Layout written by `write_triton_repository` (``<p>`` is the model prefix, by default
``lfm_<domain>_<K>shot``; every ONNX model is version ``1``)::

    <repo>/README.md                      how to launch, and every model's tensors
    <repo>/<p>_episode/config.pbtxt       onnxruntime backend, batching, dynamic batcher
    <repo>/<p>_episode/1/model.onnx
    <repo>/<p>_encoder/config.pbtxt       onnxruntime backend, max_batch_size 0
    <repo>/<p>_encoder/1/model.onnx
    <repo>/<p>_head/config.pbtxt          onnxruntime backend, max_batch_size 0
    <repo>/<p>_head/1/model.onnx
    <repo>/<p>_split/config.pbtxt         ensemble: <p>_encoder -> <p>_head
    <repo>/<p>_split/1/                   (empty: Triton wants a version directory)

Batch dimensions (see `graphs.py` for the contract):

* **episode**: every input and output leads with the query batch B and each row carries its
  own K-shot support set, so the model is batchable in Triton's sense: ``max_batch_size`` =
  the argument, ``dims`` leave B out, and ``dynamic_batching {}`` lets Triton merge concurrent
  requests.
* **head**: ``query_img`` leads with B but ``support_l2/l3/l4`` lead with the static K (the
  shots), which is *not* a batch dimension: one support set serves the whole query batch.
  Triton's batching prepends the same batch dimension to every input, so the head must be
  written with ``max_batch_size: 0`` and explicit full shapes, B written as -1
  (``query_img: [-1, 3, S, S]``, ``support_l2: [K, 4, 512, S/8, S/8]``, ...).
* **encoder**: batchable on its own, but it is written with ``max_batch_size: 0`` too and its
  row dimension N as -1, so that its output shapes read exactly like the head's inputs and the
  ensemble's K support rows are not limited by a ``max_batch_size`` or split by a batcher.
* **split** ensemble: its inputs are ``query_img`` [-1, 3, S, S] and the K support rows
  ``support_img`` [K, 3, S, S] / ``support_mask`` [K, S, S] (the encoder's input names), its
  outputs the head's ``shot_logits`` [-1, K, 2, S, S] and ``mask`` [-1, S, S]. A batching
  ensemble would give each query its own support set, which is what the episode model is
  for, so the ensemble is ``max_batch_size: 0`` as well. Step 1 runs the encoder on the K
  supports, step 2 the head on the queries and the encoder's ``support_l2/l3/l4``. The query
  batch of the split models is therefore bounded by memory, not by ``max_batch_size``; throughput
  comes from ``instance_count`` and Triton pipelining the two steps of concurrent requests.

Validation parses every ``config.pbtxt`` with ``google.protobuf.text_format`` into the
``inference.ModelConfig`` message shipped with ``tritonclient`` (unknown fields and enum values
are errors), then applies the checks Triton makes when loading (ensemble data flow, tensor
mapping and shape consistency, mirrored from triton-inference-server/core ``ensemble_utils.cc``
and ``model_config_utils.cc``) and compares every ONNX model's config with the graph's own inputs
and outputs (names, element types, static dims).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from lfm_deploy.errors import ExportError

__all__ = [
    "GRAPH_KINDS",
    "load_model_config",
    "triton_data_type",
    "validate_triton_repository",
    "write_triton_repository",
]

logger = logging.getLogger(__name__)

#: Graph kinds `write_triton_repository` accepts, in the order their models are written.
GRAPH_KINDS = ("episode", "encoder", "head")
#: Shape entries of a `TensorSpec` that name the dynamic batch.
_BATCH_SYMBOLS = frozenset({"B", "N"})
_VERSION = "1"
_ONNX_FILE = "model.onnx"
_CONFIG_FILE = "config.pbtxt"
_ONNX_BACKEND = "onnxruntime"
_ONNX_PLATFORM = "onnxruntime_onnx"
_ENSEMBLE_PLATFORM = "ensemble"
_INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# numpy / TensorSpec dtype names -> Triton DataType names (model_config.proto).
_TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
}
# onnx.TensorProto.DataType values -> Triton DataType names (onnxruntime_backend's mapping).
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


# --- the proto schema ---------------------------------------------------------------------------


_PB2: Any = None


def _model_config_pb2():
    """``tritonclient``'s generated ``model_config_pb2`` module, loaded once and lazily.

    ``tritonclient.grpc.model_config_pb2`` only needs protobuf, but importing it through its
    package imports ``grpc`` as well, which ``tritonclient[http]`` installs do not have; the
    module is then loaded straight from its file.
    """
    global _PB2
    if _PB2 is not None:
        return _PB2
    try:
        _PB2 = importlib.import_module("tritonclient.grpc.model_config_pb2")
        return _PB2
    except (ImportError, RuntimeError):
        pass
    spec = importlib.util.find_spec("tritonclient")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "grpc" / "model_config_pb2.py"
        if path.is_file():
            file_spec = importlib.util.spec_from_file_location("_lfm_triton_model_config_pb2", path)
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            _PB2 = module
            return _PB2
    raise ExportError(
        "validating a Triton model repository needs tritonclient's model_config_pb2, which is "
        "not installed; install it with `pip install 'lfm-deploy[export]'` (or `pip install "
        "tritonclient`)"
    )


def load_model_config(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``inference.ModelConfig`` message.

    Args:
        text: the protobuf text format of a model configuration.

    Returns:
        The parsed ``ModelConfig`` message.

    Raises:
        google.protobuf.text_format.ParseError: unknown fields or enum values, bad syntax.
        ExportError: ``tritonclient`` is not installed.
    """
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_pb2().ModelConfig())


def triton_data_type(dtype: str) -> str:
    """The Triton ``DataType`` name (``TYPE_FP32``, ...) of a numpy-style dtype name.

    Raises:
        ExportError: the dtype has no Triton equivalent.
    """
    key = str(dtype).lower().removeprefix("torch.").removeprefix("numpy.")
    key = {"float": "float32", "half": "float16", "double": "float64", "bytes": "string"}.get(key, key)
    if key not in _TRITON_TYPES:
        raise ExportError(
            f"tensor dtype {dtype!r} has no Triton data type; use one of: {', '.join(_TRITON_TYPES)}"
        )
    return _TRITON_TYPES[key]


# --- what gets written --------------------------------------------------------------------------


@dataclass(frozen=True)
class _IO:
    name: str
    data_type: str
    dims: tuple[int, ...]
    description: str = ""


@dataclass(frozen=True)
class _Step:
    model_name: str
    input_map: tuple[tuple[str, str], ...]  # (model input, ensemble tensor)
    output_map: tuple[tuple[str, str], ...]  # (model output, ensemble tensor)


@dataclass(frozen=True)
class _Model:
    name: str
    graph: str  # "episode", "encoder", "head" or "split"
    max_batch_size: int
    inputs: tuple[_IO, ...]
    outputs: tuple[_IO, ...]
    source: Path | None = None  # ONNX file; None for the ensemble
    instances: tuple[int, str] | None = None
    dynamic_batching: bool = False
    steps: tuple[_Step, ...] = ()
    summary: str = ""

    @property
    def is_ensemble(self) -> bool:
        return self.source is None


def _is_batch(dim) -> bool:
    return isinstance(dim, str) and dim in _BATCH_SYMBOLS


def _dim(dim) -> int:
    if dim is None or isinstance(dim, str):
        return -1  # "B", "N" or another symbolic size: variable
    return int(dim)


def _spec_io(spec, *, drop_batch: bool, leading: int | None = None) -> _IO:
    """A `TensorSpec` as a config entry: batch dim left out, or written as -1 / ``leading``."""
    shape = list(spec.shape)
    if drop_batch:
        shape = shape[1:]
    elif leading is not None:
        shape[0] = leading
    return _IO(spec.name, triton_data_type(spec.dtype), tuple(_dim(d) for d in shape), spec.description)


def _batchable(specs: Iterable) -> bool:
    return all(len(s.shape) > 0 and _is_batch(s.shape[0]) for s in specs)


def _plan(
    graphs: Mapping[str, tuple],
    *,
    prefix: str,
    shots: int,
    max_batch_size: int,
    instances: tuple[int, str],
    dynamic_batching: bool,
) -> list[_Model]:
    models: list[_Model] = []
    unknown = sorted(set(graphs) - set(GRAPH_KINDS))
    if unknown:
        raise ExportError(
            f"unknown graph kind(s) {', '.join(map(repr, unknown))} for the Triton repository; "
            f"expected some of: {', '.join(GRAPH_KINDS)}"
        )
    if not graphs:
        raise ExportError("no graphs to put in the Triton repository; export at least one graph")
    for kind in GRAPH_KINDS:
        if kind not in graphs:
            continue
        try:
            onnx_path, inputs, outputs = graphs[kind]
        except (TypeError, ValueError):
            raise ExportError(
                f"graphs[{kind!r}] must be (onnx_path, inputs, outputs), got {graphs[kind]!r}"
            ) from None
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ExportError(f"ONNX file {str(onnx_path)!r} for the {kind} graph does not exist; export it first")
        specs = list(inputs) + list(outputs)
        batching = kind == "episode" and max_batch_size > 0 and _batchable(specs)
        models.append(
            _Model(
                name=f"{prefix}_{kind}",
                graph=kind,
                max_batch_size=max_batch_size if batching else 0,
                inputs=tuple(_spec_io(s, drop_batch=batching) for s in inputs),
                outputs=tuple(_spec_io(s, drop_batch=batching) for s in outputs),
                source=onnx_path,
                instances=instances,
                dynamic_batching=batching and dynamic_batching,
                summary=_SUMMARIES[kind].format(k=shots),
            )
        )
    if "encoder" in graphs and "head" in graphs:
        models.append(_plan_split(graphs, prefix=prefix, shots=shots))
    return models


def _plan_split(graphs: Mapping[str, tuple], *, prefix: str, shots: int) -> _Model:
    """The encoder -> head ensemble (module docstring: why every dim is explicit)."""
    _, enc_in, enc_out = graphs["encoder"]
    _, head_in, head_out = graphs["head"]
    produced = {s.name for s in enc_out}
    # What the head needs beyond the encoder's features (the queries) comes from the client...
    inputs = [_spec_io(s, drop_batch=False) for s in head_in if s.name not in produced]
    # ... and so do the K support rows: the encoder's inputs with their row dimension fixed to K.
    for spec in enc_in:
        leading = shots if spec.shape and _is_batch(spec.shape[0]) else None
        io = _spec_io(spec, drop_batch=False, leading=leading)
        inputs.append(_IO(io.name, io.data_type, io.dims, f"{io.description} (the {shots} shots)".strip()))
    names = [io.name for io in inputs]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & produced))
    if clash:
        raise ExportError(
            f"the encoder and head graphs both use tensor name(s) {', '.join(clash)}; the split "
            "ensemble needs distinct names, rename them in the graph contract"
        )
    consumed = [s.name for s in head_in if s.name in produced]
    steps = (
        _Step(
            f"{prefix}_encoder",
            tuple((s.name, s.name) for s in enc_in),
            tuple((name, name) for name in consumed),
        ),
        _Step(
            f"{prefix}_head",
            tuple((s.name, s.name) for s in head_in),
            tuple((s.name, s.name) for s in head_out),
        ),
    )
    return _Model(
        name=f"{prefix}_split",
        graph="split",
        max_batch_size=0,
        inputs=tuple(inputs),
        outputs=tuple(_spec_io(s, drop_batch=False) for s in head_out),
        steps=steps,
        summary=_SUMMARIES["split"].format(k=shots),
    )


_SUMMARIES = {
    "episode": "A whole {k}-shot episode per row: query + its own support set -> mask.",
    "encoder": "Support images + masks -> support features (run once per support set, N rows).",
    "head": "Query batch + the cached features of one {k}-shot support set -> per-shot logits and mask.",
    "split": "Ensemble: encoder on the {k} support rows, then the head on the query batch.",
}


# --- rendering ----------------------------------------------------------------------------------


def _quote(text: str) -> str:
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _render_ios(field: str, ios: Sequence[_IO]) -> list[str]:
    lines = [f"{field} ["]
    for i, io in enumerate(ios):
        lines += [
            "  {",
            f"    name: {_quote(io.name)}",
            f"    data_type: {io.data_type}",
            f"    dims: [ {', '.join(str(d) for d in io.dims)} ]",
            "  }" + ("," if i < len(ios) - 1 else ""),
        ]
    return lines + ["]"]


def _render_map(field: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    lines = []
    for key, value in pairs:
        lines += [f"      {field} {{", f"        key: {_quote(key)}", f"        value: {_quote(value)}", "      }"]
    return lines


def _render(model: _Model, header: str) -> str:
    lines = [f"# {header}", f"# {model.summary}", f"name: {_quote(model.name)}"]
    if model.is_ensemble:
        lines.append(f"platform: {_quote(_ENSEMBLE_PLATFORM)}")
    else:
        # Current Triton selects the ONNX Runtime backend by `backend`; `platform:
        # "onnxruntime_onnx"` is the older spelling, still accepted (backend repo README).
        lines.append(f"backend: {_quote(_ONNX_BACKEND)}")
    lines.append(f"max_batch_size: {model.max_batch_size}")
    lines += _render_ios("input", model.inputs)
    lines += _render_ios("output", model.outputs)
    if model.instances is not None:
        count, kind = model.instances
        lines += ["instance_group [", "  {", f"    count: {count}", f"    kind: {kind}", "  }", "]"]
    if model.dynamic_batching:
        lines.append("dynamic_batching { }")
    if model.steps:
        lines += ["ensemble_scheduling {", "  step ["]
        for i, step in enumerate(model.steps):
            lines += ["    {", f"      model_name: {_quote(step.model_name)}", "      model_version: -1"]
            lines += _render_map("input_map", step.input_map)
            lines += _render_map("output_map", step.output_map)
            lines.append("    }" + ("," if i < len(model.steps) - 1 else ""))
        lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _render_readme(models: Sequence[_Model], *, domain: str, shots: int, preprocessing: dict | None) -> str:
    lines = [
        f"# Triton model repository: LFM few-shot segmentation, {domain}, {shots}-shot",
        "",
        "Generated by `lfm-export --triton` (`lfm_deploy.export.triton`); regenerate rather than edit.",
        "",
        "## Launch",
        "",
        "From this directory, with Triton Inference Server installed:",
        "",
        "    tritonserver --model-repository=\"$(pwd)\"",
        "",
        "or with NVIDIA's container (add `--gpus=all` for `KIND_GPU` instances):",
        "",
        "    docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v \"$(pwd)\":/models \\",
        "        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        "",
        "Ready when `curl -sf localhost:8000/v2/health/ready` succeeds; a model's configuration as "
        "loaded is at `localhost:8000/v2/models/<name>/config`. Clients use `tritonclient` "
        "(`pip install tritonclient[http]`).",
        "",
    ]
    if preprocessing:
        size = preprocessing.get("image_size")
        lines += [
            "## Inputs",
            "",
            f"Images are {size[0]}x{size[1]}, {preprocessing.get('color')}, scaled by "
            f"{preprocessing.get('scale'):.6g} then normalised with mean {preprocessing.get('mean')} "
            f"and std {preprocessing.get('std')} (grayscale replicated to 3 channels); masks are "
            "float32 in {0, 1}. `mask` outputs are uint8 in {0, 1}.",
            "",
        ]
    lines += [
        "## Models",
        "",
        "Shapes are full tensor shapes; -1 is any size. For a model with `max_batch_size` > 0, "
        "the config's `dims` leave out the leading batch dimension written here as `[-1, ...]`.",
        "",
    ]
    for model in models:
        if model.is_ensemble:
            kind = "ensemble of " + " -> ".join(f"`{s.model_name}`" for s in model.steps)
        else:
            count, instance_kind = model.instances
            kind = f"onnxruntime, {count} x {instance_kind}"
            kind += f", max_batch_size {model.max_batch_size}" if model.max_batch_size else ", max_batch_size 0"
            if model.dynamic_batching:
                kind += ", dynamic batching"
        lines += [f"### `{model.name}`", "", f"{model.summary} ({kind})", ""]
        lines += ["| tensor | direction | type | shape | description |", "| --- | --- | --- | --- | --- |"]
        lead = [-1] if model.max_batch_size > 0 else []
        for direction, ios in (("input", model.inputs), ("output", model.outputs)):
            for io in ios:
                shape = ", ".join(str(d) for d in lead + list(io.dims))
                lines.append(f"| `{io.name}` | {direction} | {io.data_type} | [{shape}] | {io.description} |")
        lines.append("")
    lines += _render_client_example(next((m for m in models if m.is_ensemble), models[0]))
    return "\n".join(lines)


def _render_client_example(model: _Model) -> list[str]:
    """A runnable `tritonclient` call of ``model`` (one query; zeros stand in for real data)."""
    numpy_names = {v: k for k, v in _TRITON_TYPES.items()}
    lines = [
        "## Calling a model",
        "",
        "```python",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "from tritonclient.utils import np_to_triton_dtype",
        "",
        'client = httpclient.InferenceServerClient("localhost:8000")',
        "arrays = {  # preprocessed as above; zeros stand in for real data",
    ]
    lead = [1] if model.max_batch_size > 0 else []
    for io in model.inputs:
        shape = tuple(1 if d == -1 else d for d in lead + list(io.dims))
        lines.append(f'    "{io.name}": np.zeros({shape}, np.{numpy_names[io.data_type]}),')
    lines += [
        "}",
        "inputs = []",
        "for name, array in arrays.items():",
        "    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))",
        "    tensor.set_data_from_numpy(array)",
        "    inputs.append(tensor)",
        f'result = client.infer("{model.name}", inputs)',
    ]
    lines += [f'{io.name} = result.as_numpy("{io.name}")' for io in model.outputs]
    return lines + ["```", ""]


# --- writing ------------------------------------------------------------------------------------


def _external_data_locations(model_proto) -> list[str]:
    """Relative paths of the external-data files an ONNX model refers to."""
    from onnx import TensorProto

    locations: list[str] = []

    def tensors(graph) -> Iterator:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from tensors(attr.g)
                for sub in attr.graphs:
                    yield from tensors(sub)

    for tensor in tensors(model_proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            if entry.get("location") and entry["location"] not in locations:
                locations.append(entry["location"])
    return locations


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of a large model), copying across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_model(repo: Path, model: _Model, header: str) -> list[Path]:
    folder = repo / model.name
    version = folder / _VERSION
    version.mkdir(parents=True)
    written = []
    config = folder / _CONFIG_FILE
    config.write_text(_render(model, header), encoding="utf-8")
    written.append(config)
    if model.source is not None:
        target = version / _ONNX_FILE
        _place(model.source, target)
        written.append(target)
        import onnx

        # A model over 2 GB keeps its weights next to it; they have to travel with it.
        proto = onnx.load(str(model.source), load_external_data=False)
        for location in _external_data_locations(proto):
            src = model.source.parent / location
            if not src.is_file():
                raise ExportError(
                    f"ONNX file {str(model.source)!r} refers to external data {location!r}, which is "
                    "missing; re-export the graph or keep its data file next to it"
                )
            _place(src, version / location)
            written.append(version / location)
    return written


def write_triton_repository(
    repo_dir: str | os.PathLike,
    graphs: Mapping[str, tuple],
    *,
    domain,
    shots: int,
    max_batch_size: int = 8,
    instance_count: int = 1,
    kind: str = "cpu",
    model_prefix: str | None = None,
    dynamic_batching: bool = True,
) -> list[Path]:
    """Write a Triton Inference Server model repository serving the exported ONNX graphs.

    One model per graph (``<prefix>_episode``, ``<prefix>_encoder``, ``<prefix>_head``, ONNX
    Runtime backend, version 1), the ``<prefix>_split`` ensemble (encoder -> head) when both
    halves are given, and a README. The module docstring explains the batch dimensions.
    Written files are identical, byte for byte, for identical inputs. The repository is
    validated (`validate_triton_repository`) before returning.

    Args:
        repo_dir: the repository root; created if missing. Models already in it are kept.
        graphs: ``{"episode"|"encoder"|"head": (onnx_path, inputs, outputs)}``, any subset, with
            ``inputs``/``outputs`` the graph's `TensorSpec` lists (``"B"``/``"N"`` = batch).
        domain: the domain (name or `Domain`), for the default prefix and the README.
        shots: K, the support set size the head and the ensemble are built for.
        max_batch_size: Triton ``max_batch_size`` of the episode model (0 disables batching);
            the split models have none (module docstring).
        instance_count: model instances per ONNX model.
        kind: ``"cpu"`` or ``"gpu"``: where the instances run (``KIND_CPU`` / ``KIND_GPU``).
        model_prefix: model name prefix; default ``lfm_<domain>_<K>shot``.
        dynamic_batching: add ``dynamic_batching {}`` to the episode model when it batches.

    Returns:
        The written files (configs, model files, README), in writing order.

    Raises:
        ExportError: bad options, missing ONNX files, a model name already in the repository,
            or a repository that fails validation (every problem listed). Nothing written by
            this call is left behind when it raises.
    """
    domain_name = str(getattr(domain, "name", domain))
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ExportError(f"shots must be a positive integer, got {shots!r}; the support set needs K >= 1 shots")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise ExportError(
            f"max_batch_size must be an integer >= 0, got {max_batch_size!r}; "
            "use 0 to disable batching of the episode model"
        )
    if isinstance(instance_count, bool) or not isinstance(instance_count, int) or instance_count < 1:
        raise ExportError(
            f"instance_count must be an integer >= 1, got {instance_count!r}; Triton needs one instance at least"
        )
    instance_kind = _INSTANCE_KINDS.get(str(kind).lower())
    if instance_kind is None:
        raise ExportError(f"kind must be one of {', '.join(_INSTANCE_KINDS)}, got {kind!r}; choose where instances run")
    prefix = model_prefix if model_prefix is not None else f"lfm_{domain_name}_{shots}shot"
    if not _NAME_RE.match(prefix):
        raise ExportError(
            f"Triton model prefix {prefix!r} is not a valid model directory name; use letters, "
            "digits, '_', '.' and '-' (pass another model_prefix)"
        )

    _model_config_pb2()  # fail before writing anything when the schema is not installed
    models = _plan(
        graphs,
        prefix=prefix,
        shots=shots,
        max_batch_size=max_batch_size,
        instances=(instance_count, instance_kind),
        dynamic_batching=dynamic_batching,
    )
    repo = Path(repo_dir)
    taken = [m.name for m in models if (repo / m.name).exists()]
    if taken:
        raise ExportError(
            f"Triton repository {str(repo)!r} already holds model(s) {', '.join(taken)}; write to "
            "an empty directory or pass another model prefix"
        )
    readme = repo / "README.md"
    if readme.exists():
        raise ExportError(f"{str(readme)!r} already exists; write the Triton repository to an empty directory")

    try:
        from lfm_deploy.domains import get_domain

        preprocessing = get_domain(domain).preprocessing()
    except Exception:  # a domain the registry does not know: the README just leaves it out
        preprocessing = None

    header = f"Generated by lfm_deploy.export.triton for domain {domain_name!r}, {shots}-shot."
    created_repo = not repo.exists()
    written: list[Path] = []
    try:
        repo.mkdir(parents=True, exist_ok=True)
        for model in models:
            written += _write_model(repo, model, header)
        text = _render_readme(models, domain=domain_name, shots=shots, preprocessing=preprocessing)
        readme.write_text(text, encoding="utf-8")
        written.append(readme)
        problems = _validate(repo, only=[m.name for m in models])
        if problems:
            raise ExportError(
                f"the Triton repository written to {str(repo)!r} is invalid:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\nThe ONNX graphs do not match their TensorSpec contract or the options; "
                "re-export the graphs, or fix the specs passed to write_triton_repository."
            )
    except BaseException:
        for model in models:
            shutil.rmtree(repo / model.name, ignore_errors=True)
        readme.unlink(missing_ok=True)
        if created_repo:
            shutil.rmtree(repo, ignore_errors=True)
        raise
    for model in models:
        logger.info("Triton model %s: %s", model.name, model.summary)
    return written


# --- validation ---------------------------------------------------------------------------------


def validate_triton_repository(repo_dir: str | os.PathLike) -> list[str]:
    """Check a Triton model repository the way Triton would on load, plus ONNX consistency.

    Every model directory's ``config.pbtxt`` is parsed into ``inference.ModelConfig``
    (unknown fields or enum values are problems); then: tensor declarations (names, types,
    dims), backend/platform, version directories and model files, each ONNX model's inputs and
    outputs against its config (names, element types, ranks, static dims; a batching model's
    leading ONNX dim must be dynamic), and for ensembles: every step's model exists, every
    ``input_map``/``output_map`` names real tensors, all inputs of a step are mapped, the data
    flow reaches every output and uses every tensor, and tensors agree in type and shape.

    Args:
        repo_dir: the repository root.

    Returns:
        The problems found, each naming its model; empty when the repository is valid.

    Raises:
        ExportError: ``tritonclient`` (for the schema) is not installed.
    """
    return _validate(Path(repo_dir), only=None)


def _validate(repo: Path, only: Sequence[str] | None) -> list[str]:
    if not repo.is_dir():
        return [f"{str(repo)!r} is not a directory"]
    problems: list[str] = []
    configs: dict[str, Any] = {}
    folders = sorted(p for p in repo.iterdir() if p.is_dir())
    if not folders:
        return [f"{str(repo)!r} holds no model directories"]
    for folder in folders:
        config_file = folder / _CONFIG_FILE
        if not config_file.is_file():
            if only is None or folder.name in only:
                problems.append(f"{folder.name}: missing {_CONFIG_FILE}")
            continue
        try:
            configs[folder.name] = load_model_config(config_file.read_text(encoding="utf-8"))
        except Exception as exc:  # text_format.ParseError, UnicodeDecodeError
            configs[folder.name] = None
            if only is None or folder.name in only:
                problems.append(f"{folder.name}/{_CONFIG_FILE}: not a valid Triton ModelConfig: {exc}")
    for name in sorted(configs):
        if configs[name] is None or (only is not None and name not in only):
            continue
        problems += [f"{name}: {p}" for p in _check_model(repo / name, configs[name], configs)]
    return problems


def _backend(config) -> str | None:
    """"onnx", "ensemble", "other" or None (neither backend nor platform)."""
    if config.platform == _ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling"):
        return "ensemble"
    if config.backend == _ONNX_BACKEND or config.platform == _ONNX_PLATFORM:
        return "onnx"
    if config.backend or config.platform:
        return "other"
    return None


def _check_model(folder: Path, config, configs: Mapping[str, Any]) -> list[str]:
    """Problems of one parsed model config (``configs``: every model's, None if unparseable)."""
    problems: list[str] = []
    if config.name and config.name != folder.name:
        problems.append(f"config name {config.name!r} differs from its directory name {folder.name!r}")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} is negative")
    problems += _check_ios(config)
    backend = _backend(config)
    if backend is None:
        return problems + ["neither 'backend' nor 'platform' is set; set backend: \"onnxruntime\""]
    if backend == "onnx" and config.backend and config.platform and (
        config.backend != _ONNX_BACKEND or config.platform != _ONNX_PLATFORM
    ):
        problems.append(f"backend {config.backend!r} and platform {config.platform!r} disagree")
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        problems.append("no version directory (such as 1/)")
    if backend == "ensemble":
        return problems + _check_ensemble(folder.parent, config, configs)
    if backend == "onnx":
        filename = config.default_model_filename or _ONNX_FILE
        for version in versions:
            path = version / filename
            if not path.is_file():
                problems.append(f"missing model file {version.name}/{filename}")
                continue
            problems += [f"{version.name}/{filename}: {p}" for p in _check_onnx(path, config)]
    return problems


def _check_ios(config) -> list[str]:
    problems = []
    invalid = _model_config_pb2().DataType.Value("TYPE_INVALID")
    for field in ("input", "output"):
        seen = set()
        for io in getattr(config, field):
            label = f"{field} {io.name!r}"
            if not io.name:
                problems.append(f"an {field} has no name")
            elif io.name in seen:
                problems.append(f"{label} is declared twice")
            seen.add(io.name)
            if io.data_type == invalid:
                problems.append(f"{label} has no data_type")
            if not io.dims:
                problems.append(f"{label} has no dims")
            if any(d < 1 and d != -1 for d in io.dims):
                problems.append(f"{label} dims {list(io.dims)}: each must be >= 1, or -1 for any size")
    return problems


def _model_shape(io, config) -> list[int]:
    """The full shape the model sees: reshape if any, batch dim prepended when batching."""
    dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
    return ([-1] if config.max_batch_size > 0 else []) + dims


def _onnx_ios(proto) -> tuple[dict, dict]:
    """``{name: (Triton type name, dims with -1 for dynamic, None for unknown rank)}`` of the
    graph's inputs (initializers excluded) and outputs."""
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}

    def describe(value) -> tuple[str | None, list[int] | None]:
        if not value.type.HasField("tensor_type"):
            return None, None
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            return _ONNX_TO_TRITON.get(tensor.elem_type, f"onnx elem_type {tensor.elem_type}"), None
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return _ONNX_TO_TRITON.get(tensor.elem_type, f"onnx elem_type {tensor.elem_type}"), dims

    inputs = {v.name: describe(v) for v in graph.input if v.name not in initializers}
    outputs = {v.name: describe(v) for v in graph.output}
    return inputs, outputs


def _check_onnx(path: Path, config) -> list[str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx.load: truncated or foreign file
        return [f"cannot be read as an ONNX model ({exc}); re-export it"]
    onnx_inputs, onnx_outputs = _onnx_ios(proto)
    data_type_name = _model_config_pb2().DataType.Name
    problems = [
        f"external data file {location!r} is missing next to it"
        for location in _external_data_locations(proto)
        if not (path.parent / location).is_file()
    ]
    for field, declared, actual in (("input", config.input, onnx_inputs), ("output", config.output, onnx_outputs)):
        for io in declared:
            if io.name not in actual:
                problems.append(f"config {field} {io.name!r} is not a graph {field} (graph has {sorted(actual)})")
                continue
            onnx_type, onnx_dims = actual[io.name]
            config_type = data_type_name(io.data_type)
            if onnx_type != config_type:
                problems.append(f"{field} {io.name!r} is {config_type} in the config but {onnx_type} in the graph")
            shape = _model_shape(io, config)
            if onnx_dims is None:  # the graph does not record a shape: nothing to compare
                continue
            if len(shape) != len(onnx_dims):
                problems.append(
                    f"{field} {io.name!r} has rank {len(shape)} in the config ({shape}) but "
                    f"{len(onnx_dims)} in the graph ({onnx_dims})"
                )
                continue
            for axis, (want, have) in enumerate(zip(shape, onnx_dims)):
                if have != -1 and want != have:
                    what = "any size (-1)" if want == -1 else str(want)
                    problems.append(
                        f"{field} {io.name!r} dim {axis} is {what} in the config but {have} in the graph "
                        f"(config {shape}, graph {onnx_dims})"
                    )
        if field == "input":
            missing = sorted(set(actual) - {io.name for io in declared})
            if missing:
                problems.append(f"graph input(s) {missing} are not declared in the config")
    return problems


def _dims_match(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


@dataclass
class _Tensor:
    """An ensemble tensor as Triton's ValidateTensorConsistency sees it."""

    origin: str
    data_type: int
    dims: list[int]
    full: list[int]


def _tensor(origin: str, io, batching: bool) -> _Tensor:
    dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
    return _Tensor(origin, io.data_type, dims, ([-1] if batching else []) + dims)


def _check_ensemble(repo: Path, config, configs: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    name = config.name or "ensemble"
    if config.platform != _ENSEMBLE_PLATFORM:
        problems.append(f"ensemble_scheduling needs platform \"{_ENSEMBLE_PLATFORM}\", got {config.platform!r}")
    if not config.HasField("ensemble_scheduling"):
        return problems + ["platform \"ensemble\" without ensemble_scheduling"]
    if config.instance_group:
        problems.append("an ensemble must not have instance_group")
    if config.HasField("optimization"):
        problems.append("an ensemble must not have optimization")
    if config.model_warmup:
        problems.append("an ensemble must not have model_warmup")
    steps = config.ensemble_scheduling.step
    if not steps:
        return problems + ["ensemble_scheduling has no step"]

    type_name = _model_config_pb2().DataType.Name
    batching = config.max_batch_size > 0
    tensors: dict[str, _Tensor] = {io.name: _tensor(name, io, batching) for io in config.input}
    tensors.update({io.name: _tensor(name, io, batching) for io in config.output})

    def agree(tensor_name: str, new: _Tensor) -> None:
        old = tensors.setdefault(tensor_name, new)
        if old is new:
            return
        if old.data_type != new.data_type:
            problems.append(
                f"ensemble tensor {tensor_name!r} is {type_name(old.data_type)} in {old.origin} but "
                f"{type_name(new.data_type)} in {new.origin}"
            )
        # Triton accepts equal dims, or equal full shapes (a non-batching [-1, d...] against a
        # batching [d...]), -1 matching anything.
        elif not (_dims_match(old.dims, new.dims) or _dims_match(old.full, new.full)):
            problems.append(
                f"ensemble tensor {tensor_name!r} has shape {old.full} in {old.origin} but {new.full} in {new.origin}"
            )

    written_by: dict[str, int] = {}
    step_inputs: list[set[str]] = []
    step_outputs: list[set[str]] = []
    for index, step in enumerate(steps):
        label = f"step {index} ({step.model_name or '?'})"
        step_inputs.append(set(step.input_map.values()))
        step_outputs.append(set(step.output_map.values()))
        for tensor_name in step.output_map.values():
            if tensor_name in written_by:
                problems.append(
                    f"{label}: ensemble tensor {tensor_name!r} is already written by step {written_by[tensor_name]}"
                )
            written_by.setdefault(tensor_name, index)
        if not step.model_name:
            problems.append(f"step {index} has no model_name")
            continue
        if not step.input_map or not step.output_map:
            problems.append(f"{label}: needs both input_map and output_map")
        if step.model_name not in configs:
            problems.append(f"{label}: model {step.model_name!r} is not in the repository")
            continue
        target = configs[step.model_name]
        if target is None:
            problems.append(f"{label}: the config of model {step.model_name!r} cannot be parsed")
            continue
        if step.model_version != -1 and not (repo / step.model_name / str(step.model_version)).is_dir():
            problems.append(
                f"{label}: version {step.model_version} of {step.model_name} does not exist; "
                "use model_version: -1 for the latest"
            )
        if target.max_batch_size != 0 and target.max_batch_size < config.max_batch_size:
            problems.append(
                f"{label}: the ensemble allows batch size {config.max_batch_size} but {step.model_name} "
                f"only {target.max_batch_size}"
            )
        target_batching = target.max_batch_size > 0
        model_inputs = {io.name: io for io in target.input}
        model_outputs = {io.name: io for io in target.output}
        for key, value in step.input_map.items():
            if key not in model_inputs:
                problems.append(
                    f"{label}: input_map key {key!r} is not an input of {step.model_name} ({sorted(model_inputs)})"
                )
            else:
                agree(value, _tensor(step.model_name, model_inputs[key], target_batching))
        for io in target.input:
            if io.name not in step.input_map and not io.optional:
                problems.append(f"{label}: input {io.name!r} of {step.model_name} is not mapped")
        for key, value in step.output_map.items():
            if key not in model_outputs:
                problems.append(
                    f"{label}: output_map key {key!r} is not an output of {step.model_name} ({sorted(model_outputs)})"
                )
            else:
                agree(value, _tensor(step.model_name, model_outputs[key], target_batching))

    # Data flow: a step runs once all its inputs are ready; every output must be reached and
    # every intermediate tensor read (Triton: "ensemble tensor ... is unused").
    ready = {io.name for io in config.input}
    pending = list(range(len(steps)))
    progressed = True
    while pending and progressed:
        progressed = False
        for index in list(pending):
            if step_inputs[index] <= ready:
                ready |= step_outputs[index]
                pending.remove(index)
                progressed = True
    for index in pending:
        missing = sorted(step_inputs[index] - ready)
        problems.append(f"step {index} ({steps[index].model_name}) never runs: no step writes {missing}")
    read = set().union(*step_inputs)
    for io in config.input:
        if io.name not in read:
            problems.append(f"ensemble input {io.name!r} is not used by any step")
    outputs = {io.name for io in config.output}
    for tensor_name in sorted(outputs):
        if tensor_name not in written_by:
            problems.append(f"ensemble output {tensor_name!r} is not written by any step")
    for tensor_name in sorted(written_by):
        if tensor_name not in outputs and tensor_name not in read:
            problems.append(f"ensemble tensor {tensor_name!r} is written but never used")
    return problems
