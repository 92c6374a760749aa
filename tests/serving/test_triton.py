"""Triton model repository: layout, configs as ModelConfig messages, validation, determinism."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tritonclient")
from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lfm_deploy.errors import ExportError  # noqa: E402
from lfm_deploy.models.graphs import EncoderGraph, EpisodeGraph, HeadGraph, TensorSpec  # noqa: E402
from lfm_deploy.serving.triton import (  # noqa: E402
    _model_config_pb2,
    load_model_config,
    triton_data_type,
    validate_triton_repository,
    write_triton_repository,
)

S = 8
K = 2
PREFIX = "lfm_deepglobe_2shot"
# Small stand-ins for (features, channels, size) of layer2/3/4.
STAGES = ((4, 3, 2), (6, 5, 1), (3, 7, 1))
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8, "int64": TensorProto.INT64}


def _episode_specs(s=S, k=K):
    inputs = [
        TensorSpec("query_img", "float32", ("B", 3, s, s), "normalised query images"),
        TensorSpec("support_imgs", "float32", ("B", k, 3, s, s), "normalised support images"),
        TensorSpec("support_masks", "float32", ("B", k, s, s), "support masks in {0, 1}"),
    ]
    outputs = [TensorSpec("mask", "uint8", ("B", s, s), "predicted mask")]
    if k == 1:
        outputs.insert(0, TensorSpec("logits", "float32", ("B", 2, s, s), "logits"))
    return inputs, outputs


def _encoder_specs(s=S):
    inputs = [
        TensorSpec("support_img", "float32", ("N", 3, s, s), "one support image per row"),
        TensorSpec("support_mask", "float32", ("N", s, s), "support mask"),
    ]
    outputs = [
        TensorSpec(f"support_l{i + 2}", "float32", ("N", n, c, hw, hw), f"layer{i + 2} features")
        for i, (n, c, hw) in enumerate(STAGES)
    ]
    return inputs, outputs


def _head_specs(s=S, k=K):
    inputs = [TensorSpec("query_img", "float32", ("B", 3, s, s), "normalised query images")] + [
        TensorSpec(f"support_l{i + 2}", "float32", (k, n, c, hw, hw), f"features of the {k} shots")
        for i, (n, c, hw) in enumerate(STAGES)
    ]
    outputs = [
        TensorSpec("shot_logits", "float32", ("B", k, 2, s, s), "per-shot logits"),
        TensorSpec("mask", "uint8", ("B", s, s), "voted mask"),
    ]
    return inputs, outputs


def _onnx_model(path: Path, inputs, outputs) -> Path:
    """A tiny valid ONNX model with exactly these graph inputs and outputs (values are zeros)."""
    nodes = []
    for i, spec in enumerate(outputs):
        static = [d if isinstance(d, int) else 1 for d in spec.shape]
        shape = helper.make_tensor(f"shape{i}", TensorProto.INT64, [len(static)], static)
        value = helper.make_tensor(f"value{i}", _ONNX_TYPES[spec.dtype], [1], [0])
        nodes.append(helper.make_node("Constant", [], [f"shape{i}_c"], value=shape))
        nodes.append(helper.make_node("ConstantOfShape", [f"shape{i}_c"], [spec.name], value=value))

    def vi(spec):
        return helper.make_tensor_value_info(spec.name, _ONNX_TYPES[spec.dtype], list(spec.shape))

    graph = helper.make_graph(nodes, path.stem, [vi(s) for s in inputs], [vi(s) for s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _graphs(tmp_path: Path, which=("episode", "encoder", "head"), onnx_specs=None):
    """{kind: (onnx_path, inputs, outputs)}; `onnx_specs` overrides what goes into the ONNX file."""
    specs = {"episode": _episode_specs(), "encoder": _encoder_specs(), "head": _head_specs()}
    src = tmp_path / "onnx"
    src.mkdir(exist_ok=True)
    out = {}
    for kind in which:
        inputs, outputs = specs[kind]
        file_inputs, file_outputs = (onnx_specs or {}).get(kind, specs[kind])
        out[kind] = (_onnx_model(src / f"{kind}.onnx", file_inputs, file_outputs), inputs, outputs)
    return out


def _config(repo: Path, model: str):
    return load_model_config((repo / model / "config.pbtxt").read_text())


def _rewrite(repo: Path, model: str, edit) -> None:
    """Break a written config on purpose: ``edit`` changes the parsed message in place."""
    config = _config(repo, model)
    edit(config)
    (repo / model / "config.pbtxt").write_text(text_format.MessageToString(config))


def _tensor(tensors, name: str):
    return next(io for io in tensors if io.name == name)


def _remap(mapping, old_key: str, new_key: str, new_value: str) -> None:
    del mapping[old_key]
    mapping[new_key] = new_value


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "triton"
    write_triton_repository(root, _graphs(tmp_path), domain="deepglobe", shots=K)
    return root


# --- layout and configs ---------------------------------------------------------------------


def test_layout_and_returned_files(tmp_path):
    graphs = _graphs(tmp_path)
    root = tmp_path / "triton"
    written = write_triton_repository(root, graphs, domain="deepglobe", shots=K)

    models = ["episode", "encoder", "head", "split"]
    assert sorted(p.name for p in root.iterdir()) == sorted([f"{PREFIX}_{m}" for m in models] + ["README.md"])
    expected = [root / f"{PREFIX}_{m}" / "config.pbtxt" for m in models]
    expected += [root / f"{PREFIX}_{m}" / "1" / "model.onnx" for m in models[:3]]
    expected.append(root / "README.md")
    assert sorted(written) == sorted(expected)
    assert (root / f"{PREFIX}_split" / "1").is_dir()
    assert not any((root / f"{PREFIX}_split" / "1").iterdir())
    for kind in ("episode", "encoder", "head"):
        placed = root / f"{PREFIX}_{kind}" / "1" / "model.onnx"
        assert not placed.is_symlink()
        assert placed.read_bytes() == graphs[kind][0].read_bytes()
    assert validate_triton_repository(root) == []


def test_episode_config(repo):
    pb2 = _model_config_pb2()
    expected = pb2.ModelConfig(name=f"{PREFIX}_episode", backend="onnxruntime", max_batch_size=8)
    expected.input.add(name="query_img", data_type=pb2.TYPE_FP32, dims=[3, S, S])
    expected.input.add(name="support_imgs", data_type=pb2.TYPE_FP32, dims=[K, 3, S, S])
    expected.input.add(name="support_masks", data_type=pb2.TYPE_FP32, dims=[K, S, S])
    expected.output.add(name="mask", data_type=pb2.TYPE_UINT8, dims=[S, S])
    expected.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.KIND_CPU)
    expected.dynamic_batching.SetInParent()
    assert _config(repo, f"{PREFIX}_episode") == expected


def test_configs_round_trip_through_text_format(repo):
    """Every config.pbtxt is a header comment plus exactly text_format's rendering of its message."""
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert len(configs) == 4
    for path in configs:
        text = path.read_text()
        header, summary, body = text.split("\n", 2)
        assert header == "# Generated by lfm_deploy.serving.triton for domain 'deepglobe', 2-shot."
        assert summary.startswith("# ") and len(summary) > 2
        config = load_model_config(text)
        assert body == text_format.MessageToString(config), path
        assert load_model_config(body) == config


def test_split_models_have_explicit_dims(repo):
    encoder = _config(repo, f"{PREFIX}_encoder")
    head = _config(repo, f"{PREFIX}_head")
    assert encoder.max_batch_size == 0 and head.max_batch_size == 0
    assert not encoder.HasField("dynamic_batching") and not head.HasField("dynamic_batching")
    assert [list(io.dims) for io in encoder.input] == [[-1, 3, S, S], [-1, S, S]]
    assert [list(io.dims) for io in encoder.output] == [[-1, n, c, hw, hw] for n, c, hw in STAGES]
    head_in = {io.name: list(io.dims) for io in head.input}
    assert head_in["query_img"] == [-1, 3, S, S]
    for i, (n, c, hw) in enumerate(STAGES):
        assert head_in[f"support_l{i + 2}"] == [K, n, c, hw, hw]  # K is static, not a batch dim
    assert {io.name: list(io.dims) for io in head.output} == {"shot_logits": [-1, K, 2, S, S], "mask": [-1, S, S]}


def test_ensemble_config(repo):
    split = _config(repo, f"{PREFIX}_split")
    assert split.platform == "ensemble"
    assert split.max_batch_size == 0
    assert not split.instance_group
    assert {io.name: list(io.dims) for io in split.input} == {
        "support_img": [K, 3, S, S],
        "support_mask": [K, S, S],
        "query_img": [-1, 3, S, S],
    }
    assert {io.name: list(io.dims) for io in split.output} == {"shot_logits": [-1, K, 2, S, S], "mask": [-1, S, S]}
    encoder_step, head_step = split.ensemble_scheduling.step
    assert encoder_step.model_name == f"{PREFIX}_encoder" and encoder_step.model_version == -1
    assert dict(encoder_step.input_map) == {"support_img": "support_img", "support_mask": "support_mask"}
    assert dict(encoder_step.output_map) == {f"support_l{i}": f"support_l{i}" for i in (2, 3, 4)}
    assert head_step.model_name == f"{PREFIX}_head"
    assert dict(head_step.input_map) == {n: n for n in ("query_img", "support_l2", "support_l3", "support_l4")}
    assert dict(head_step.output_map) == {"shot_logits": "shot_logits", "mask": "mask"}


def test_options_reach_the_configs(tmp_path):
    root = tmp_path / "triton"
    write_triton_repository(
        root,
        _graphs(tmp_path),
        domain="isic",
        shots=K,
        max_batch_size=4,
        instance_count=3,
        kind="gpu",
        model_prefix="seg",
    )
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["seg_encoder", "seg_episode", "seg_head", "seg_split"]
    assert _config(root, "seg_episode").max_batch_size == 4
    for model in ("seg_episode", "seg_encoder", "seg_head"):
        (group,) = _config(root, model).instance_group
        assert group.count == 3 and group.kind == group.KIND_GPU
    assert validate_triton_repository(root) == []


def test_unbatched_episode(tmp_path):
    root = tmp_path / "triton"
    write_triton_repository(root, _graphs(tmp_path, ("episode",)), domain="deepglobe", shots=K, max_batch_size=0)
    assert sorted(p.name for p in root.iterdir()) == ["README.md", f"{PREFIX}_episode"]
    config = _config(root, f"{PREFIX}_episode")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 3, S, S]


def test_one_half_writes_no_ensemble(tmp_path):
    root = tmp_path / "triton"
    write_triton_repository(root, _graphs(tmp_path, ("head",)), domain="deepglobe", shots=K)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"{PREFIX}_head"]


def test_real_graph_contract(tmp_path):
    """The specs `graphs.py` declares (called on stand-ins, no model built) pass as well."""
    hw = (1, 1, 1)
    graphs = {}
    src = tmp_path / "onnx"
    src.mkdir()
    for kind, cls, self_ in (
        ("episode", EpisodeGraph, SimpleNamespace(shots=1, model=SimpleNamespace(feature_hw=hw))),
        ("encoder", EncoderGraph, SimpleNamespace(model=SimpleNamespace(feature_hw=hw))),
        ("head", HeadGraph, SimpleNamespace(shots=1, model=SimpleNamespace(feature_hw=hw))),
    ):
        inputs, outputs = cls.inputs(self_, S), cls.outputs(self_, S)
        graphs[kind] = (_onnx_model(src / f"{kind}.onnx", inputs, outputs), inputs, outputs)
    root = tmp_path / "triton"
    write_triton_repository(root, graphs, domain="deepglobe", shots=1)
    episode = _config(root, "lfm_deepglobe_1shot_episode")
    assert [io.name for io in episode.output] == ["logits", "mask"]
    split = _config(root, "lfm_deepglobe_1shot_split")
    assert {io.name: list(io.dims) for io in split.input}["support_img"] == [1, 3, S, S]


def test_readme(repo):
    text = (repo / "README.md").read_text()
    assert "tritonserver --model-repository=" in text
    for model in ("episode", "encoder", "head", "split"):
        assert f"`{PREFIX}_{model}`" in text
    assert f"| `support_l2` | input | TYPE_FP32 | [{K}, 4, 3, 2, 2] |" in text
    assert f"| `query_img` | input | TYPE_FP32 | [-1, 3, {S}, {S}] |" in text
    assert "mean [0.485, 0.456, 0.406]" in text  # the domain's preprocessing
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert f'client.infer("{PREFIX}_split", inputs)' in example
    assert f'"support_img": np.zeros(({K}, 3, {S}, {S}), np.float32)' in example
    compile(example, "README.md", "exec")


def test_output_is_deterministic(tmp_path):
    graphs = _graphs(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    write_triton_repository(a, graphs, domain="deepglobe", shots=K)
    write_triton_repository(b, graphs, domain="deepglobe", shots=K)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --- validation -----------------------------------------------------------------------------


def test_dims_mismatch_with_onnx(repo):
    def edit(config):
        _tensor(config.input, "query_img").dims[2:] = [S + 1, S + 1]
        _tensor(config.output, "mask").dims[:] = [-1, S]

    _rewrite(repo, f"{PREFIX}_head", edit)
    assert validate_triton_repository(repo) == [
        f"{PREFIX}_head: 1/model.onnx: input 'query_img' dim {axis} is {S + 1} in the config but {S} in the graph "
        f"(config [-1, 3, {S + 1}, {S + 1}], graph [-1, 3, {S}, {S}])"
        for axis in (2, 3)
    ] + [
        f"{PREFIX}_head: 1/model.onnx: output 'mask' has rank 2 in the config ([-1, {S}]) but 3 in the graph "
        f"([-1, {S}, {S}])"
    ]


def test_batch_dim_against_a_static_onnx_batch(tmp_path):
    inputs, outputs = _episode_specs()

    def static(specs):
        return [TensorSpec(s.name, s.dtype, (1,) + tuple(s.shape[1:])) for s in specs]

    graphs = _graphs(tmp_path, ("episode",), onnx_specs={"episode": (static(inputs), static(outputs))})
    root = tmp_path / "triton"
    with pytest.raises(ExportError) as err:
        write_triton_repository(root, graphs, domain="deepglobe", shots=K)
    assert "input 'query_img' dim 0 is any size (-1) in the config but 1 in the graph" in str(err.value)
    assert not root.exists()  # nothing left behind


def test_dtype_mismatch_and_missing_graph_input(repo):
    pb2 = _model_config_pb2()
    _rewrite(repo, f"{PREFIX}_episode", lambda c: setattr(c.output[0], "data_type", pb2.TYPE_INT32))
    _rewrite(repo, f"{PREFIX}_encoder", lambda c: setattr(c.input[1], "name", "support_mask_typo"))
    problems = validate_triton_repository(repo)
    assert any("output 'mask' is TYPE_INT32 in the config but TYPE_UINT8 in the graph" in p for p in problems)
    assert any("config input 'support_mask_typo' is not a graph input" in p for p in problems)
    assert any("graph input(s) ['support_mask'] are not declared" in p for p in problems)


def test_ensemble_step_with_missing_model(repo):
    shutil.rmtree(repo / f"{PREFIX}_encoder")
    problems = validate_triton_repository(repo)
    assert any(
        p.startswith(f"{PREFIX}_split: step 0") and f"model '{PREFIX}_encoder' is not in the repository" in p
        for p in problems
    ), problems


def test_ensemble_maps_to_unknown_tensors(repo):
    def edit(config):
        _remap(config.ensemble_scheduling.step[0].output_map, "support_l3", "support_l9", "support_l3")

    _rewrite(repo, f"{PREFIX}_split", edit)
    encoder, outputs = f"{PREFIX}_encoder", ["support_l2", "support_l3", "support_l4"]
    assert validate_triton_repository(repo) == [
        f"{PREFIX}_split: step 0 ({encoder}): output_map key 'support_l9' is not an output of {encoder} ({outputs})"
    ]


@pytest.mark.parametrize(
    "edit, expected",
    [
        # The head's mask goes to another tensor: the ensemble output is never written and the
        # renamed tensor never read.
        (
            lambda steps: _remap(steps[1].output_map, "mask", "mask", "voted"),
            [
                "ensemble output 'mask' is not written by any step",
                "ensemble tensor 'voted' is written but never used",
            ],
        ),
        # The head reads a tensor nobody writes: it never runs, and the encoder's output is unused.
        (
            lambda steps: _remap(steps[1].input_map, "support_l2", "support_l2", "support_l2x"),
            [
                f"step 1 ({PREFIX}_head) never runs: no step writes ['support_l2x']",
                "ensemble tensor 'support_l2' is written but never used",
            ],
        ),
        # A required input of the head is left unmapped, so the ensemble's query is never read.
        (
            lambda steps: steps[1].input_map.pop("query_img"),
            [
                f"step 1 ({PREFIX}_head): input 'query_img' of {PREFIX}_head is not mapped",
                "ensemble input 'query_img' is not used by any step",
            ],
        ),
        # Both steps write the same tensor.
        (
            lambda steps: _remap(steps[0].output_map, "support_l4", "support_l4", "mask"),
            [
                f"step 1 ({PREFIX}_head): ensemble tensor 'mask' is already written by step 0",
                f"step 1 ({PREFIX}_head) never runs: no step writes ['support_l4']",
            ],
        ),
    ],
    ids=["output-not-written", "step-never-runs", "input-not-mapped", "written-twice"],
)
def test_ensemble_data_flow(repo, edit, expected):
    _rewrite(repo, f"{PREFIX}_split", lambda c: edit(c.ensemble_scheduling.step))
    assert validate_triton_repository(repo) == [f"{PREFIX}_split: {p}" for p in expected]


@pytest.mark.parametrize(
    "edit, culprit",
    [
        (lambda text: text + "max_batch_sizes: 4\n", "max_batch_sizes"),
        (lambda text: text.replace("kind: KIND_CPU", "kind: KIND_TPU"), "KIND_TPU"),
    ],
    ids=["unknown-field", "unknown-enum"],
)
def test_config_outside_the_schema(repo, edit, culprit):
    path = repo / f"{PREFIX}_head" / "config.pbtxt"
    path.write_text(edit(path.read_text()))
    problems = validate_triton_repository(repo)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{PREFIX}_head/config.pbtxt: not a valid Triton ModelConfig")
    assert culprit in problems[0]
    # The ensemble cannot check its step against the head any more.
    head = f"{PREFIX}_head"
    assert problems[1] == f"{PREFIX}_split: step 1 ({head}): the config of model '{head}' cannot be parsed"


def test_missing_model_file(repo):
    (repo / f"{PREFIX}_head" / "1" / "model.onnx").unlink()
    assert validate_triton_repository(repo) == [f"{PREFIX}_head: missing model file 1/model.onnx"]


def test_external_data_travels_with_the_model(tmp_path):
    graphs = _graphs(tmp_path, ("head",))
    path = graphs["head"][0]
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.arange(16, dtype=np.float32), "weight"))
    onnx.save(model, str(path), save_as_external_data=True, location="head.onnx.data", size_threshold=0)
    root = tmp_path / "triton"
    written = write_triton_repository(root, graphs, domain="deepglobe", shots=K)
    data = root / f"{PREFIX}_head" / "1" / "head.onnx.data"
    assert data in written and data.read_bytes() == (path.parent / "head.onnx.data").read_bytes()
    assert validate_triton_repository(root) == []
    data.unlink()
    assert validate_triton_repository(root) == [
        f"{PREFIX}_head: 1/model.onnx: external data file 'head.onnx.data' is missing next to it"
    ]


def test_graph_without_shapes_is_not_compared(tmp_path):
    graphs = _graphs(tmp_path, ("episode",))
    path = graphs["episode"][0]
    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(path))
    root = tmp_path / "triton"
    write_triton_repository(root, graphs, domain="deepglobe", shots=K)
    assert validate_triton_repository(root) == []


def test_missing_config_and_repo(repo, tmp_path):
    (repo / f"{PREFIX}_episode" / "config.pbtxt").unlink()
    assert validate_triton_repository(repo) == [f"{PREFIX}_episode: missing config.pbtxt"]
    assert validate_triton_repository(tmp_path / "nowhere") == [f"{str(tmp_path / 'nowhere')!r} is not a directory"]


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "tpu"}, "kind must be one of cpu, gpu"),
        ({"instance_count": 0}, "instance_count must be an integer >= 1"),
        ({"max_batch_size": -1}, "max_batch_size must be an integer >= 0"),
        ({"shots": 0}, "shots must be an integer >= 1"),
        ({"model_prefix": "a/b"}, "not a valid model directory name"),
    ],
)
def test_bad_options(tmp_path, kwargs, message):
    options = {"domain": "deepglobe", "shots": K, **kwargs}
    root = tmp_path / "triton"
    with pytest.raises(ExportError, match=message):
        write_triton_repository(root, _graphs(tmp_path, ("episode",)), **options)
    assert not root.exists()


def test_bad_graphs(tmp_path):
    graphs = _graphs(tmp_path, ("episode",))
    with pytest.raises(ExportError, match="unknown graph kind"):
        write_triton_repository(tmp_path / "t", {"decoder": graphs["episode"]}, domain="deepglobe", shots=K)
    with pytest.raises(ExportError, match="does not exist"):
        path, inputs, outputs = graphs["episode"]
        write_triton_repository(tmp_path / "t", {"episode": (tmp_path / "no.onnx", inputs, outputs)}, domain="deepglobe", shots=K)
    with pytest.raises(ExportError, match="no Triton data type"):
        bad = [TensorSpec("query_img", "complex64", ("B", 3, S, S))]
        write_triton_repository(tmp_path / "t", {"episode": (graphs["episode"][0], bad, [])}, domain="deepglobe", shots=K)
    assert not (tmp_path / "t").exists()


def test_spec_onnx_mismatch_is_reported_and_cleaned_up(tmp_path):
    # The head's ONNX file was exported for 16x16 while the specs say 8x8.
    graphs = _graphs(tmp_path, ("encoder", "head"), onnx_specs={"head": _head_specs(s=16)})
    root = tmp_path / "triton"
    root.mkdir()
    (root / "other_model").mkdir()  # someone else's model: kept, and not validated
    with pytest.raises(ExportError) as err:
        write_triton_repository(root, graphs, domain="deepglobe", shots=K)
    message = str(err.value)
    assert "is invalid:" in message and "re-export the graphs" in message
    assert "input 'query_img' dim 2 is 8 in the config but 16 in the graph" in message
    assert "output 'mask' dim 1 is 8 in the config but 16 in the graph" in message
    assert [p.name for p in root.iterdir()] == ["other_model"]


def test_existing_model_is_not_overwritten(repo, tmp_path):
    before = (repo / f"{PREFIX}_episode" / "config.pbtxt").read_bytes()
    with pytest.raises(ExportError, match="already holds model"):
        write_triton_repository(repo, _graphs(tmp_path, ("episode",)), domain="deepglobe", shots=K)
    assert (repo / f"{PREFIX}_episode" / "config.pbtxt").read_bytes() == before


def test_unregistered_domain_object(tmp_path):
    root = tmp_path / "triton"
    write_triton_repository(root, _graphs(tmp_path, ("episode",)), domain=SimpleNamespace(name="mine"), shots=K)
    assert (root / "lfm_mine_2shot_episode" / "config.pbtxt").is_file()
    assert "## Inputs" not in (root / "README.md").read_text()


def test_triton_data_type():
    assert triton_data_type("float32") == "TYPE_FP32"
    assert triton_data_type("torch.uint8") == "TYPE_UINT8"
    assert triton_data_type("bool") == "TYPE_BOOL"


def test_graphs_are_read_from_the_manifest(tmp_path):
    """The repository takes each graph's file and tensors from the manifest's graph contract."""
    from lfm_deploy.serving.triton import graphs_from_manifest

    from lfm_deploy.contract import GraphIO

    graphs = _graphs(tmp_path)
    contract = {g: GraphIO(g, path.name, tuple(ins), tuple(outs)) for g, (path, ins, outs) in graphs.items()}
    read = graphs_from_manifest(contract, tmp_path / "onnx")
    assert {g: (p, list(i), list(o)) for g, (p, i, o) in graphs.items()} == read
    root = tmp_path / "triton"
    write_triton_repository(root, read, domain="deepglobe", shots=K)
    assert validate_triton_repository(root) == []
