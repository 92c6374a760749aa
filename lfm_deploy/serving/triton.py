"""Triton Inference Server model repository for the exported graphs, and its validation.

Episode, encoder and head models on Triton's onnxruntime backend and a `split` ensemble (encoder
-> head); configs built as `inference.ModelConfig` messages and validated against the graphs.
docs/triton.md explains the layout, each model's batching and what the validation checks.
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
from typing import Any, Iterator, Mapping, Sequence

from lfm_deploy.errors import ExportError

__all__ = ["GRAPH_KINDS", "load_model_config", "triton_data_type", "validate_triton_repository", "graphs_from_manifest",
           "write_triton_repository"]

logger = logging.getLogger(__name__)

#: Graph kinds `write_triton_repository` accepts, in the order their models are written.
GRAPH_KINDS = ("episode", "encoder", "head")
#: Shape entries of a `TensorSpec` that name the dynamic batch.
_BATCH_SYMBOLS = frozenset({"B", "N"})
_VERSION = "1"
_ONNX_FILE = "model.onnx"
_CONFIG_FILE = "config.pbtxt"
_INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

# numpy / TensorSpec dtype names -> Triton DataType names (model_config.proto).
_TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}  # fmt: skip
# onnx.TensorProto.DataType values -> dtype names, as onnxruntime_backend maps them to Triton.
_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}  # fmt: skip

_SUMMARIES = {
    "episode": "A whole {k}-shot episode per row: query + its own support set -> mask.",
    "encoder": "Support images + masks -> support features (run once per support set, N rows).",
    "head": "Query batch + the cached features of one {k}-shot support set -> per-shot logits and mask.",
    "split": "Ensemble: encoder on the {k} support rows, then the head on the query batch.",
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
    if _PB2 is None:
        try:
            _PB2 = importlib.import_module("tritonclient.grpc.model_config_pb2")
        except (ImportError, RuntimeError):
            spec = importlib.util.find_spec("tritonclient")
            for location in (spec.submodule_search_locations or []) if spec else []:
                path = Path(location) / "grpc" / "model_config_pb2.py"
                if path.is_file():
                    file_spec = importlib.util.spec_from_file_location("_lfm_triton_model_config_pb2", path)
                    _PB2 = importlib.util.module_from_spec(file_spec)
                    file_spec.loader.exec_module(_PB2)
                    break
            else:
                raise ExportError(
                    "Triton model configs need tritonclient's model_config_pb2, which is not "
                    "installed; install it with `pip install 'lfm-deploy[export]'` (or `pip install "
                    "tritonclient`)"
                ) from None
    return _PB2


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
        raise ExportError(f"tensor dtype {dtype!r} has no Triton data type; use one of: {', '.join(_TRITON_TYPES)}")
    return _TRITON_TYPES[key]


# --- the configs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """One model to write: its config, the ONNX file it serves (None for the ensemble), and what
    only the README shows (``ModelConfig`` has no field for a summary or tensor descriptions)."""

    config: Any  # inference.ModelConfig
    source: Path | None
    summary: str
    descriptions: Mapping[str, str]


def _is_batch(dim) -> bool:
    return isinstance(dim, str) and dim in _BATCH_SYMBOLS


def _add_tensor(field, spec, *, drop_batch: bool = False, leading: int | None = None) -> None:
    """Append a `TensorSpec` to ``field`` (``config.input``/``output``): the batch dim left out,
    or the leading dim set to ``leading``; symbolic dims are -1 (any size)."""
    shape = list(spec.shape)[1:] if drop_batch else list(spec.shape)
    if leading is not None:
        shape[0] = leading
    field.add(
        name=spec.name,
        data_type=_model_config_pb2().DataType.Value(triton_data_type(spec.dtype)),
        dims=[-1 if d is None or isinstance(d, str) else int(d) for d in shape],
    )


def _plan(graphs: Mapping[str, tuple], *, prefix: str, shots: int, max_batch_size: int, instances: tuple[int, str],
          dynamic_batching: bool) -> list[_Model]:
    unknown = sorted(set(graphs) - set(GRAPH_KINDS))
    if unknown:
        raise ExportError(f"unknown graph kind(s) {', '.join(map(repr, unknown))} for the Triton repository; "
                          f"expected some of: {', '.join(GRAPH_KINDS)}")
    if not graphs:
        raise ExportError("no graphs to put in the Triton repository; export at least one graph")
    pb2 = _model_config_pb2()
    models: list[_Model] = []
    for kind in (k for k in GRAPH_KINDS if k in graphs):
        try:
            onnx_path, inputs, outputs = graphs[kind]
        except (TypeError, ValueError):
            raise ExportError(f"graphs[{kind!r}] must be (onnx_path, inputs, outputs), got {graphs[kind]!r}") from None
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ExportError(f"ONNX file {str(onnx_path)!r} for the {kind} graph does not exist; export it first")
        specs = [*inputs, *outputs]
        batching = kind == "episode" and max_batch_size > 0
        batching = batching and all(s.shape and _is_batch(s.shape[0]) for s in specs)
        # Current Triton selects the ONNX Runtime backend by `backend`; `platform:
        # "onnxruntime_onnx"` is the older spelling, still accepted (backend repo README).
        config = pb2.ModelConfig(name=f"{prefix}_{kind}", backend="onnxruntime",
                                 max_batch_size=max_batch_size if batching else 0)
        for spec in inputs:
            _add_tensor(config.input, spec, drop_batch=batching)
        for spec in outputs:
            _add_tensor(config.output, spec, drop_batch=batching)
        config.instance_group.add(count=instances[0], kind=pb2.ModelInstanceGroup.Kind.Value(instances[1]))
        if batching and dynamic_batching:
            config.dynamic_batching.SetInParent()
        summary = _SUMMARIES[kind].format(k=shots)
        models.append(_Model(config, onnx_path, summary, {s.name: s.description for s in specs}))
    if "encoder" in graphs and "head" in graphs:
        models.append(_plan_split(graphs, prefix=prefix, shots=shots))
    return models


def _plan_split(graphs: Mapping[str, tuple], *, prefix: str, shots: int) -> _Model:
    """The encoder -> head ensemble (module docstring: why every dim is explicit)."""
    _, enc_in, enc_out = graphs["encoder"]
    _, head_in, head_out = graphs["head"]
    produced = {s.name for s in enc_out}
    # What the head needs beyond the encoder's features (the queries) comes from the client, and
    # so do the K support rows: the encoder's inputs with their row dimension fixed to K.
    queries = [s for s in head_in if s.name not in produced]
    names = [s.name for s in [*queries, *enc_in]]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & produced))
    if clash:
        raise ExportError(f"the encoder and head graphs both use tensor name(s) {', '.join(clash)}; the split "
                          "ensemble needs distinct names, rename them in the graph contract")
    config = _model_config_pb2().ModelConfig(name=f"{prefix}_split", platform="ensemble", max_batch_size=0)
    for spec in queries:
        _add_tensor(config.input, spec)
    for spec in enc_in:
        _add_tensor(config.input, spec, leading=shots if spec.shape and _is_batch(spec.shape[0]) else None)
    for spec in head_out:
        _add_tensor(config.output, spec)
    for model, inputs, outputs in (("encoder", enc_in, [s for s in head_in if s.name in produced]),
                                   ("head", head_in, head_out)):
        step = config.ensemble_scheduling.step.add(model_name=f"{prefix}_{model}", model_version=-1)
        step.input_map.update({s.name: s.name for s in inputs})
        step.output_map.update({s.name: s.name for s in outputs})
    descriptions = {s.name: s.description for s in [*queries, *head_out]}
    descriptions.update({s.name: f"{s.description} (the {shots} shots)".strip() for s in enc_in})
    return _Model(config, None, _SUMMARIES["split"].format(k=shots), descriptions)


# --- the README ---------------------------------------------------------------------------------


def _render_readme(models: Sequence[_Model], *, domain: str, shots: int, preprocessing: dict | None) -> str:
    pb2 = _model_config_pb2()
    lines = [
        f"# Triton model repository: LFM few-shot segmentation, {domain}, {shots}-shot",
        "",
        "Generated by `lfm-export --triton` (`lfm_deploy.serving.triton`); regenerate rather than edit.",
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
        config = model.config
        if model.source is None:
            kind = "ensemble of " + " -> ".join(f"`{s.model_name}`" for s in config.ensemble_scheduling.step)
        else:
            (group,) = config.instance_group
            kind = f"onnxruntime, {group.count} x {pb2.ModelInstanceGroup.Kind.Name(group.kind)}, "
            kind += f"max_batch_size {config.max_batch_size}"
            kind += ", dynamic batching" if config.HasField("dynamic_batching") else ""
        lines += [f"### `{config.name}`", "", f"{model.summary} ({kind})", ""]
        lines += ["| tensor | direction | type | shape | description |", "| --- | --- | --- | --- | --- |"]
        lead = [-1] if config.max_batch_size > 0 else []
        for direction, tensors in (("input", config.input), ("output", config.output)):
            for io in tensors:
                shape = ", ".join(str(d) for d in lead + list(io.dims))
                lines.append(f"| `{io.name}` | {direction} | {pb2.DataType.Name(io.data_type)} | [{shape}] | "
                             f"{model.descriptions.get(io.name, '')} |")
        lines.append("")
    lines += _render_client_example(next((m for m in models if m.source is None), models[0]).config)
    return "\n".join(lines)


def _render_client_example(config) -> list[str]:
    """A runnable `tritonclient` call of the model (one query; zeros stand in for real data)."""
    numpy_names = {v: k for k, v in _TRITON_TYPES.items()}
    type_name = _model_config_pb2().DataType.Name
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
    lead = [1] if config.max_batch_size > 0 else []
    for io in config.input:
        shape = tuple(1 if d == -1 else d for d in lead + list(io.dims))
        lines.append(f'    "{io.name}": np.zeros({shape}, np.{numpy_names[type_name(io.data_type)]}),')
    lines += [
        "}",
        "inputs = []",
        "for name, array in arrays.items():",
        "    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))",
        "    tensor.set_data_from_numpy(array)",
        "    inputs.append(tensor)",
        f'result = client.infer("{config.name}", inputs)',
    ]
    lines += [f'{io.name} = result.as_numpy("{io.name}")' for io in config.output]
    return lines + ["```", ""]


# --- writing ------------------------------------------------------------------------------------


def _external_data_locations(model_proto) -> list[str]:
    """Relative paths of the external-data files an ONNX model refers to."""
    from onnx import TensorProto

    def tensors(graph) -> Iterator:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    locations: list[str] = []
    for tensor in tensors(model_proto.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location and location not in locations:
                locations.append(location)
    return locations


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of a large model), copying across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_model(repo: Path, model: _Model, header: str) -> list[Path]:
    from google.protobuf import text_format

    folder = repo / model.config.name
    (folder / _VERSION).mkdir(parents=True)
    config = folder / _CONFIG_FILE
    text = f"# {header}\n# {model.summary}\n" + text_format.MessageToString(model.config)
    config.write_text(text, encoding="utf-8")
    written = [config]
    if model.source is not None:
        import onnx

        _place(model.source, folder / _VERSION / _ONNX_FILE)
        written.append(folder / _VERSION / _ONNX_FILE)
        # A model over 2 GB keeps its weights next to it; they have to travel with it.
        for location in _external_data_locations(onnx.load(str(model.source), load_external_data=False)):
            src = model.source.parent / location
            if not src.is_file():
                raise ExportError(f"ONNX file {str(model.source)!r} refers to external data {location!r}, which is "
                                  "missing; re-export the graph or keep its data file next to it")
            _place(src, folder / _VERSION / location)
            written.append(folder / _VERSION / location)
    return written


def _check_int(name: str, value, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExportError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")


def graphs_from_manifest(graphs: Mapping, directory: str | os.PathLike) -> dict[str, tuple]:
    """The `graphs` argument of `write_triton_repository` from an export's graphs
    (`Manifest.graphs`): every graph, with its file under `directory` and its tensors."""
    from ..contract import graph_io

    out = {}
    for name in graphs:
        io = graph_io(graphs, name)
        out[name] = (Path(directory) / io.file, list(io.inputs), list(io.outputs))
    return out


def write_triton_repository(repo_dir: str | os.PathLike, graphs: Mapping[str, tuple], *, domain, shots: int,
                            max_batch_size: int = 8, instance_count: int = 1, kind: str = "cpu",
                            model_prefix: str | None = None, dynamic_batching: bool = True) -> list[Path]:
    """Write a Triton Inference Server model repository serving the exported ONNX graphs.

    One model per graph (``<prefix>_episode``, ``<prefix>_encoder``, ``<prefix>_head``, ONNX
    Runtime backend, version 1), the ``<prefix>_split`` ensemble (encoder -> head) when both
    halves are given, and a README (batch dimensions: module docstring). Byte-identical output
    for identical inputs; validated (`validate_triton_repository`) before returning.

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
        ExportError: bad options, missing ONNX files, a model name or README already in the
            repository, or a repository that fails validation (every problem listed). Nothing
            written by this call is left behind when it raises.
    """
    domain_name = str(getattr(domain, "name", domain))
    _check_int("shots", shots, 1, "the support set needs K >= 1 shots")
    _check_int("max_batch_size", max_batch_size, 0, "use 0 to disable batching of the episode model")
    _check_int("instance_count", instance_count, 1, "Triton needs one instance at least")
    instance_kind = _INSTANCE_KINDS.get(str(kind).lower())
    if instance_kind is None:
        raise ExportError(f"kind must be one of {', '.join(_INSTANCE_KINDS)}, got {kind!r}; choose where instances run")
    prefix = model_prefix if model_prefix is not None else f"lfm_{domain_name}_{shots}shot"
    if not _NAME_RE.match(prefix):
        raise ExportError(f"Triton model prefix {prefix!r} is not a valid model directory name; use letters, "
                          "digits, '_', '.' and '-' (pass another model_prefix)")

    models = _plan(graphs, prefix=prefix, shots=shots, max_batch_size=max_batch_size,
                   instances=(instance_count, instance_kind), dynamic_batching=dynamic_batching)
    names = [m.config.name for m in models]
    repo = Path(repo_dir)
    taken = [name for name in names if (repo / name).exists()]
    if taken:
        raise ExportError(f"Triton repository {str(repo)!r} already holds model(s) {', '.join(taken)}; write to "
                          "an empty directory or pass another model prefix")
    readme = repo / "README.md"
    if readme.exists():
        raise ExportError(f"{str(readme)!r} already exists; write the Triton repository to an empty directory")

    try:
        from lfm_deploy.domains import get_domain

        preprocessing = get_domain(domain).preprocessing()
    except Exception:  # a domain the registry does not know: the README just leaves it out
        preprocessing = None

    header = f"Generated by lfm_deploy.serving.triton for domain {domain_name!r}, {shots}-shot."
    created_repo = not repo.exists()
    written: list[Path] = []
    try:
        repo.mkdir(parents=True, exist_ok=True)
        for model in models:
            written += _write_model(repo, model, header)
        readme.write_text(_render_readme(models, domain=domain_name, shots=shots, preprocessing=preprocessing),
                          encoding="utf-8")
        written.append(readme)
        problems = _validate(repo, only=names)
        if problems:
            raise ExportError(f"the Triton repository written to {str(repo)!r} is invalid:\n"
                              + "\n".join(f"  - {p}" for p in problems)
                              + "\nThe ONNX graphs do not match their TensorSpec contract or the options; "
                              "re-export the graphs, or fix the specs passed to write_triton_repository.")
    except BaseException:
        for name in names:
            shutil.rmtree(repo / name, ignore_errors=True)
        readme.unlink(missing_ok=True)
        if created_repo:
            shutil.rmtree(repo, ignore_errors=True)
        raise
    for model in models:
        logger.info("Triton model %s: %s", model.config.name, model.summary)
    return written


# --- validation ---------------------------------------------------------------------------------


def validate_triton_repository(repo_dir: str | os.PathLike) -> list[str]:
    """Check a Triton model repository against Triton's config schema, its ONNX graphs and the
    data flow of its ensembles (the module docstring says what is checked; `_check_onnx` and
    `_check_ensemble` list every rule).

    Args:
        repo_dir: the repository root.

    Returns:
        The problems found, each naming its model; empty when the repository is valid.

    Raises:
        ExportError: ``tritonclient`` (for the schema) is not installed.
    """
    return _validate(Path(repo_dir), only=None)


def _validate(repo: Path, only: Sequence[str] | None) -> list[str]:
    """Problems of the repository's models (only those named in ``only``, when given)."""
    if not repo.is_dir():
        return [f"{str(repo)!r} is not a directory"]
    folders = sorted(p for p in repo.iterdir() if p.is_dir())
    if not folders:
        return [f"{str(repo)!r} holds no model directories"]
    _model_config_pb2()  # a missing tritonclient raises here, not as a parse problem of every config
    problems: list[str] = []
    configs: dict[str, Any] = {}  # None: the config does not parse
    for folder in folders:
        mine = only is None or folder.name in only
        if not (folder / _CONFIG_FILE).is_file():
            problems += [f"{folder.name}: missing {_CONFIG_FILE}"] if mine else []
            continue
        try:
            configs[folder.name] = load_model_config((folder / _CONFIG_FILE).read_text(encoding="utf-8"))
        except Exception as exc:  # text_format.ParseError, UnicodeDecodeError
            configs[folder.name] = None
            problems += [f"{folder.name}/{_CONFIG_FILE}: not a valid Triton ModelConfig: {exc}"] if mine else []
    for name, config in sorted(configs.items()):
        if config is not None and (only is None or name in only):
            if config.platform == "ensemble":
                found = _check_ensemble(config, configs)
            elif config.backend == "onnxruntime" or config.platform == "onnxruntime_onnx":
                found = _check_onnx_model(repo / name, config)
            else:
                found = []  # another backend: no graph to compare with
            problems += [f"{name}: {p}" for p in found]
    return problems


def _check_onnx_model(folder: Path, config) -> list[str]:
    filename = config.default_model_filename or _ONNX_FILE
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        return [f"no version directory holding {filename} (such as 1/)"]
    problems = []
    for version in versions:
        if not (version / filename).is_file():
            problems.append(f"missing model file {version.name}/{filename}")
        else:
            problems += [f"{version.name}/{filename}: {p}" for p in _check_onnx(version / filename, config)]
    return problems


def _graph_tensors(values, exclude=frozenset()) -> dict[str, tuple[str, list[int] | None]]:
    """``{name: (Triton type name, dims with -1 for dynamic, or None when no shape is recorded)}``."""
    tensors = {}
    for value in values:
        if value.name not in exclude:
            tensor = value.type.tensor_type
            elem = tensor.elem_type
            type_name = _TRITON_TYPES[_ONNX_DTYPES[elem]] if elem in _ONNX_DTYPES else f"onnx elem_type {elem}"
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            tensors[value.name] = (type_name, dims if tensor.HasField("shape") else None)
    return tensors


def _check_onnx(path: Path, config) -> list[str]:
    """How the config's inputs and outputs differ from the ONNX graph's at ``path``."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx.load: truncated or foreign file
        return [f"cannot be read as an ONNX model ({exc}); re-export it"]
    problems = [f"external data file {location!r} is missing next to it"
                for location in _external_data_locations(proto) if not (path.parent / location).is_file()]
    graph = proto.graph
    type_name = _model_config_pb2().DataType.Name
    for field, declared, actual in (
        ("input", config.input, _graph_tensors(graph.input, {t.name for t in graph.initializer})),
        ("output", config.output, _graph_tensors(graph.output)),
    ):
        for io in declared:
            if io.name not in actual:
                problems.append(f"config {field} {io.name!r} is not a graph {field} (graph has {sorted(actual)})")
                continue
            onnx_type, onnx_dims = actual[io.name]
            config_type = type_name(io.data_type)
            if onnx_type != config_type:
                problems.append(f"{field} {io.name!r} is {config_type} in the config but {onnx_type} in the graph")
            # The shape the model sees: reshape if any, Triton's batch dim prepended when batching.
            dims = io.reshape.shape if io.HasField("reshape") else io.dims
            shape = [-1] * (config.max_batch_size > 0) + list(dims)
            if onnx_dims is None:  # the graph does not record a shape: nothing to compare
                continue
            if len(shape) != len(onnx_dims):
                problems.append(f"{field} {io.name!r} has rank {len(shape)} in the config ({shape}) but "
                                f"{len(onnx_dims)} in the graph ({onnx_dims})")
                continue
            for axis, (want, have) in enumerate(zip(shape, onnx_dims)):
                if have != -1 and want != have:
                    problems.append(f"{field} {io.name!r} dim {axis} is {'any size (-1)' if want == -1 else want} in "
                                    f"the config but {have} in the graph (config {shape}, graph {onnx_dims})")
        undeclared = sorted(set(actual) - {io.name for io in declared})
        if field == "input" and undeclared:
            problems.append(f"graph input(s) {undeclared} are not declared in the config")
    return problems


def _check_ensemble(config, configs: Mapping[str, Any]) -> list[str]:
    """The data-flow checks Triton makes on an ensemble (core ``ensemble_utils.cc``)."""
    problems: list[str] = []
    steps = config.ensemble_scheduling.step
    written_by: dict[str, int] = {}
    for index, step in enumerate(steps):
        label = f"step {index} ({step.model_name})"
        for tensor in step.output_map.values():
            if tensor in written_by:
                first = written_by[tensor]
                problems.append(f"{label}: ensemble tensor {tensor!r} is already written by step {first}")
            else:
                written_by[tensor] = index
        target = configs.get(step.model_name)
        if target is None:
            missing = step.model_name not in configs
            problems.append(f"{label}: model {step.model_name!r} is not in the repository" if missing
                            else f"{label}: the config of model {step.model_name!r} cannot be parsed")
            continue
        for field, mapping, tensors in (("input", step.input_map, target.input),
                                        ("output", step.output_map, target.output)):
            names = sorted(io.name for io in tensors)
            problems += [
                f"{label}: {field}_map key {key!r} is not an {field} of {step.model_name} ({names})"
                for key in sorted(set(mapping) - set(names))
            ]
        problems += [f"{label}: input {io.name!r} of {step.model_name} is not mapped"
                     for io in target.input if io.name not in step.input_map and not io.optional]

    # A step runs once all its inputs are ready; every output must be reached and every tensor
    # read (Triton: "ensemble tensor ... is unused").
    ready = {io.name for io in config.input}
    pending = dict(enumerate(steps))
    while runnable := [i for i, step in pending.items() if set(step.input_map.values()) <= ready]:
        for index in runnable:
            ready |= set(pending.pop(index).output_map.values())
    for index, step in pending.items():
        missing = sorted(set(step.input_map.values()) - ready)
        problems.append(f"step {index} ({step.model_name}) never runs: no step writes {missing}")
    read = {tensor for step in steps for tensor in step.input_map.values()}
    outputs = {io.name for io in config.output}
    written = set(written_by)
    unread = [io.name for io in config.input if io.name not in read]
    problems += [f"ensemble input {name!r} is not used by any step" for name in unread]
    problems += [f"ensemble output {name!r} is not written by any step" for name in sorted(outputs - written)]
    unused = sorted(written - outputs - read)
    problems += [f"ensemble tensor {name!r} is written but never used" for name in unused]
    return problems
