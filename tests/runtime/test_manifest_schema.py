"""The typed manifest reader: any malformed manifest is one `ManifestError` naming the field.

Torch-free: the artifacts here are tiny ONNX graphs with the encoder/head contract (Identity
nodes), enough for `Segmenter.from_artifacts` to read, verify and load them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lfm_deploy.errors import LFMError, ManifestError
from lfm_deploy.manifest import MANIFEST_NAME, SCHEMA_VERSION, FileEntry, Manifest, file_entry, read_manifest, \
    sha256_file, verify_file, write_manifest
from lfm_deploy.parity.compare import Tolerances
from lfm_deploy.runtime import Preprocessing, Segmenter
from lfm_deploy.utils.files import unsafe_relpath

onnx = pytest.importorskip("onnx")

SIZE = 32
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                          HealthCheck.too_slow], database=None)


# -- a tiny, valid artifact directory ------------------------------------------------------------

def _identity_graph(path: Path, inputs: dict, outputs: dict) -> None:
    """An ONNX graph whose outputs are Identity copies of its first input (names and shapes only)."""
    from onnx import TensorProto, helper

    first = next(iter(inputs))
    nodes = [helper.make_node("Identity", [first], [name]) for name in outputs]
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _tensor(name, shape):
    return {"name": name, "dtype": "float32", "shape": list(shape), "description": ""}


def _make_artifacts(directory: Path) -> dict:
    """Write encoder/head/episode graphs into `directory`; return a valid manifest for them."""
    directory.mkdir(parents=True, exist_ok=True)
    img = ["N", 3, SIZE, SIZE]
    enc_out = {f"support_l{i}": img for i in (2, 3, 4)}
    _identity_graph(directory / "encoder.onnx", {"support_img": img, "support_mask": ["N", SIZE, SIZE]}, enc_out)
    head_in = {"query_img": ["B", 3, SIZE, SIZE], **{k: [1, 3, SIZE, SIZE] for k in enc_out}}
    _identity_graph(directory / "head.onnx", head_in,
                    {"shot_logits": ["B", 3, SIZE, SIZE], "mask": ["B", 3, SIZE, SIZE]})
    _identity_graph(directory / "episode.onnx", {"query_img": ["B", 3, SIZE, SIZE]}, {"mask": ["B", 3, SIZE, SIZE]})
    graphs = {
        "episode": {"file": "episode.onnx", "inputs": [_tensor("query_img", ["B", 3, SIZE, SIZE])],
                    "outputs": [_tensor("mask", ["B", SIZE, SIZE])]},
        "encoder": {"file": "encoder.onnx", "inputs": [_tensor("support_img", img),
                                                       _tensor("support_mask", ["N", SIZE, SIZE])],
                    "outputs": [_tensor(k, s) for k, s in enc_out.items()]},
        "head": {"file": "head.onnx", "inputs": [_tensor(k, s) for k, s in head_in.items()],
                 "outputs": [_tensor("shot_logits", ["B", 1, 2, SIZE, SIZE]), _tensor("mask", ["B", SIZE, SIZE])]},
    }
    return {
        "schema_version": SCHEMA_VERSION, "created_by": "test", "domain": "deepglobe", "variant": "apm-m+acpa",
        "apm": "m", "acpa": True, "lowering": "matmul", "opset": 20, "shots": 1, "image_size": SIZE,
        "preprocessing": {"image_size": [SIZE, SIZE], "color": "rgb", "scale": 1 / 255,
                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                          "image_resize": "PIL bilinear", "mask_resize": "nearest", "mask_threshold": 128},
        "graphs": graphs,
        "weights": {"source": "untrained-default", "untrained": True, "checkpoint": None, "masker": None, "seed": 0},
        "untrained": True,
        "tolerances": {"logits_atol": 1e-3, "feature_rel": 1e-4, "mask_agreement": 0.999, "mask_tie_margin": 2e-3},
        "parity": {"validated": False, "passed": True, "checks": []},
        "files": {f: dataclasses.asdict(file_entry(directory, f)) for f in ("encoder.onnx", "episode.onnx", "head.onnx")},
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """(directory with the three graphs, its valid manifest). Never modified: tests copy it."""
    directory = tmp_path_factory.mktemp("tiny") / "art"
    manifest = _make_artifacts(directory)
    _write(directory, manifest)
    return directory, manifest


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, artifacts):
    """A directory holding links to the graphs, whose manifest.json each example rewrites."""
    src, _ = artifacts
    directory = tmp_path_factory.mktemp("scratch") / "art"
    directory.mkdir()
    for f in src.iterdir():
        if f.name != MANIFEST_NAME:
            (directory / f.name).symlink_to(f)
    return directory


def _write(directory: Path, manifest) -> Path:
    text = manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest)
    path = directory / MANIFEST_NAME
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return directory


# -- what consumers rely on ----------------------------------------------------------------------

def _consume(m: Manifest, directory: Path) -> None:
    """What the readers take for granted of any manifest `read_manifest` accepts (each assertion
    fails if the validator lets a wrong value through)."""
    for name, graph in m.graphs.items():
        assert graph.graph == name and unsafe_relpath(graph.file) is None
        for spec in graph.inputs + graph.outputs:
            assert type(spec.name) is str and spec.name and type(spec.dtype) is str and spec.dtype
            assert all((type(d) is int and d >= 1) or type(d) is str for d in spec.shape)
    listed = {e.path for e in m.files.values()}
    assert m.files and "episode" in m.graphs and set(m.referenced_files().values()) <= listed
    for entry in m.files.values():
        assert unsafe_relpath(entry.path) is None and type(entry.bytes) is int and entry.bytes >= 0
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    for value in (m.shots, m.image_size, m.opset, m.schema_version):
        assert type(value) is int and value >= 1
    assert m.lowering in ("matmul", "dft") and m.apm in ("m", "s", "none") and type(m.acpa) is bool
    assert type(m.untrained) is bool and m.domain and m.served_precision.name in ("fp32", "fp16", "bf16", "int8")
    assert m.weights.seed is None or type(m.weights.seed) is int
    assert all(v is None or type(v) is str for v in (m.weights.checkpoint, m.weights.masker))
    pre = m.preprocessing
    assert len(pre.mean) == len(pre.std) == 3 and all(math.isfinite(v) for v in pre.mean)
    assert all(math.isfinite(v) and v > 0 for v in pre.std) and pre.color in ("rgb", "grayscale")
    assert pre.image_size is None or list(pre.image_size) == [m.image_size] * 2
    tol = Tolerances.from_manifest(m)  # never raises on a manifest that was read
    assert all(math.isfinite(t.limit) and t.limit >= 0 for t in (tol.logits, tol.features, tol.mask))
    try:
        Preprocessing.from_manifest(m)
    except ManifestError as exc:  # only what this runtime cannot reproduce, never a malformed field
        assert "below 32" in str(exc) or "pixel scale" in str(exc), exc
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m  # written back, read the same


# -- named fields --------------------------------------------------------------------------------

def _set(path, value):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _delete(path):
    def edit(m):
        target = m
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(("files", "episode.onnx", "sha256"), 7),
     r"manifest.json: files\['episode.onnx'\].sha256 must be a string, got int; re-run lfm-export$"),
    (lambda m: m.update(files=list(m["files"].values())), r"files must be an object, got list"),
    (_delete(("files", "head.onnx", "path")), r"files\['head.onnx'\].path is missing"),
    (_set(("files", "head.onnx", "bytes"), "12"), r"files\['head.onnx'\].bytes must be an integer >= 0, got string"),
    (_set(("files", "head.onnx", "sha256"), "abc"), r"sha256 must be 64 lowercase hex digits, got 'abc'"),
    (_set(("files", "head.onnx", "path"), "/etc/passwd"), r"files\['head.onnx'\].path '/etc/passwd' is an absolute"),
    (_set(("files", "head.onnx", "path"), "../x/head.onnx"), r"path '../x/head.onnx' leaves the artifact directory"),
    (_set(("files", "head.onnx", "path"), "C:\\head.onnx"), r"is an absolute path"),
    (_set(("graphs", "head", "file"), "sub/../../head.onnx"), r"graphs\['head'\].file .* leaves the artifact"),
    (_delete(("graphs", "encoder", "file")), r"graphs\['encoder'\].file is missing"),
    (_set(("graphs", "encoder"), ["encoder.onnx"]), r"graphs\['encoder'\] must be an object, got list"),
    (_set(("graphs", "head", "inputs", 0, "shape"), "B,3"), r"graphs\['head'\].inputs\[0\].shape must be a list"),
    (_set(("graphs", "head", "inputs", 0, "shape", 0), None), r"shape\[0\] must be an integer >= 1 or a string, got null"),
    (_delete(("graphs", "episode")), r"graphs\['episode'\] is missing"),
    (_set(("graphs", "head", "file"), "other.onnx"), r"graphs\['head'\].file 'other.onnx' is not listed with a hash"),
    (_set(("preprocessing", "mean"), [0.5, 0.5]), r"preprocessing.mean must be a list of 3 items, got 2"),
    (_set(("preprocessing", "std", 1), float("nan")), r"preprocessing.std\[1\] must be a finite number > 0, got nan"),
    (_set(("preprocessing",), "imagenet"), r"preprocessing must be an object, got string"),
    (_set(("shots",), True), r"shots must be an integer >= 1, got bool"),
    (_set(("image_size",), 32.0), r"image_size must be an integer >= 1, got float"),
    (_delete(("untrained",)), r"untrained is missing"),
    (_set(("lowering",), "fft"), r"lowering must be one of 'matmul', 'dft', got 'fft'"),
    (_set(("weights", "seed"), "0"), r"weights.seed must be an integer or null, got string"),
    (_set(("tolerances", "logits_atol"), float("inf")), r"tolerances.logits_atol must be a finite number >= 0"),
    (_set(("preprocessing", "mean", 0), 10 ** 400), r"preprocessing.mean\[0\] must be a finite number, got 1000"),
    (_set(("engines",), False), None),
])
def test_malformed_field_is_named(artifacts, tmp_path, edit, message):
    src, manifest = artifacts
    manifest = copy.deepcopy(manifest)
    edit(manifest)
    _write(tmp_path, manifest)
    if message is None:  # still valid
        assert read_manifest(tmp_path, verify_files=False).to_dict() == manifest
        return
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path, verify_files=False)


def test_every_problem_is_listed_in_one_error(artifacts, tmp_path):
    manifest = copy.deepcopy(artifacts[1])
    del manifest["shots"]
    manifest["acpa"] = "yes"
    manifest["files"]["head.onnx"]["bytes"] = -1
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, manifest), verify_files=False)
    text = info.value.cli_message()
    assert "shots is missing" in text and "acpa must be a boolean, got string" in text
    assert "files['head.onnx'].bytes must be an integer >= 0, got -1" in text and text.endswith("re-run lfm-export")


def _with_reference_graphs(src: Path, directory: Path, manifest: dict) -> dict:
    """A copy of the artifacts whose manifest names float32 reference graphs (listed and hashed),
    as a reduced-precision export's does."""
    shutil.copytree(src, directory)
    shutil.copyfile(src / "head.onnx", directory / "head.fp32.onnx")
    manifest = copy.deepcopy(manifest)
    manifest["reference_graphs"] = {"episode": "episode.onnx", "encoder": "encoder.onnx", "head": "head.fp32.onnx"}
    manifest["files"]["head.fp32.onnx"] = dataclasses.asdict(file_entry(directory, "head.fp32.onnx"))
    _write(directory, manifest)
    return manifest


def test_reference_graphs_are_path_checked_listed_and_hashed(artifacts, tmp_path):
    src, manifest = artifacts
    art = tmp_path / "art"
    manifest = _with_reference_graphs(src, art, manifest)
    assert read_manifest(art).float32_file("head") == "head.fp32.onnx"
    (art / "head.fp32.onnx").write_bytes((art / "head.fp32.onnx").read_bytes()[:-1] + b"\0")  # tampered
    with pytest.raises(ManifestError, match="head.fp32.onnx does not match its sha256"):
        read_manifest(art)
    (art / "head.fp32.onnx").unlink()  # missing
    with pytest.raises(ManifestError, match="head.fp32.onnx is listed in the manifest but missing"):
        read_manifest(art)
    for rel, why in (("../head.onnx", "leaves the artifact directory"), ("/tmp/head.onnx", "is an absolute path")):
        edited = copy.deepcopy(manifest)
        edited["reference_graphs"]["head"] = rel
        with pytest.raises(ManifestError, match=re.escape(f"reference_graphs['head'] {rel!r} {why}")):
            read_manifest(_write(art, edited), verify_files=False)
    edited = copy.deepcopy(manifest)
    del edited["files"]["head.fp32.onnx"]  # named but not hashed: never loaded unchecked
    with pytest.raises(ManifestError, match=r"reference_graphs\['head'\] 'head.fp32.onnx' is not listed with a hash"):
        read_manifest(_write(art, edited), verify_files=False)


_INT8 = {"name": "int8", "runtime": {"backend": "onnxruntime", "precision": "int8"}, "calibration": "test",
         "gate": {"passed": True, "runs": []}, "graphs": {"episode": "episode.onnx"}}


@pytest.mark.parametrize("edit, message", [
    (_set(("precision",), "int8"), r"precision must be an object or null, got string"),
    (_set(("precision",), {**_INT8, "name": "int4"}), r"precision.name must be one of 'fp32', 'fp16', 'bf16', 'int8', got 'int4'"),
    (_set(("precision",), {**_INT8, "runtime": None}), r"precision.runtime must be an object, got null"),
    (_set(("precision",), {k: v for k, v in _INT8.items() if k != "runtime"}), r"precision.runtime is missing"),
    (_set(("precision",), {**_INT8, "gate": {"passed": "yes"}}), r"precision.gate.passed must be a boolean, got string"),
    (_set(("precision",), {**_INT8, "runtime": {"backend": "openvino", "precision": "bf16", "f32_islands": "all"}}),
     r"precision.runtime.f32_islands must be a list or null, got string"),
    (_set(("precision",), {**_INT8, "graphs": {"head": "../head.int8.onnx"}}),
     r"precision.graphs\['head'\] '../head.int8.onnx' leaves the artifact directory"),
    (_set(("precision",), {**_INT8, "graphs": {"head": "head.int8.onnx"}}),
     r"precision.graphs\['head'\] 'head.int8.onnx' is not listed with a hash in files"),
    (_set(("preprocessing", "image_size"), [64, 64]), r"preprocessing.image_size \[64, 64\] differs from image_size 32"),
])
def test_malformed_precision_and_cross_fields_are_named(artifacts, tmp_path, edit, message):
    manifest = copy.deepcopy(artifacts[1])
    edit(manifest)
    with pytest.raises(ManifestError, match=message):
        read_manifest(_write(tmp_path, manifest), verify_files=False)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1", True, 1.0])
def test_another_schema_version_is_refused_with_the_upgrade_sentence(artifacts, tmp_path, version):
    manifest = {**artifacts[1], "schema_version": version}
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, manifest), verify_files=False)
    assert str(info.value).endswith(f"has schema version {version!r}, this lfm-deploy reads version {SCHEMA_VERSION}; "
                                    "re-export with this version or upgrade lfm-deploy")


def test_the_manifest_is_immutable_all_the_way_down(artifacts):
    m = read_manifest(artifacts[0])
    edits = [lambda: setattr(m, "shots", 2), lambda: setattr(m.graphs["head"], "file", "x.onnx"),
             lambda: setattr(m.weights, "seed", 1), lambda: setattr(m.preprocessing, "color", "grayscale"),
             lambda: m.files.__setitem__("x", m.files["head.onnx"]), lambda: m.graphs.pop("head"),
             lambda: m.parity.checks.append({}), lambda: m.tolerances.__setattr__("logits_atol", 1.0)]
    for edit in edits:
        with pytest.raises((dataclasses.FrozenInstanceError, TypeError, AttributeError)):
            edit()
    assert read_manifest(artifacts[0]) == m and m.shots == 1 and "head" in m.graphs


def test_write_then_read_gives_an_equal_object(artifacts, tmp_path):
    src, manifest = artifacts
    art = tmp_path / "art"
    _with_reference_graphs(src, art, manifest)
    first = read_manifest(art)
    precision = Manifest.from_dict({**first.to_dict(), "precision": {**_INT8, "graphs": {"head": "head.fp32.onnx"}}})
    for m in (first, precision):
        path = write_manifest(art, m)
        again = read_manifest(art)
        assert again == m and again.to_dict() == m.to_dict()
        text = path.read_text()
        assert text == json.dumps(m.to_dict(), indent=2, sort_keys=True) + "\n"  # sorted keys, stable format
    assert again.served_precision.name == "int8" and again.precision.graphs == {"head": "head.fp32.onnx"}
    assert first.served_precision.name == "fp32" and "precision" not in first.to_dict()


def test_valid_manifest_loads_a_segmenter(artifacts, tmp_path):
    src, manifest = artifacts
    assert read_manifest(src).to_dict() == manifest
    seg = Segmenter.from_artifacts(src, threads=1)
    assert seg.shots == 1 and seg.image_size == SIZE and seg.untrained


def test_verify_file_refuses_paths_outside_and_changed_files(artifacts, tmp_path):
    src, _ = artifacts
    outside = tmp_path / "secret"
    outside.write_bytes(b"x")
    (tmp_path / "art").mkdir()
    with pytest.raises(ManifestError, match="leaves the artifact directory"):
        verify_file(tmp_path / "art", FileEntry("../secret", 1, sha256_file(outside)))
    entry = file_entry(src, "head.onnx")
    assert verify_file(src, entry) == src / "head.onnx"
    with pytest.raises(ManifestError, match="the manifest says 1: the file is truncated"):
        verify_file(src, dataclasses.replace(entry, bytes=1))
    with pytest.raises(ManifestError, match="does not match its sha256"):
        verify_file(src, dataclasses.replace(entry, sha256="0" * 64))


@pytest.mark.parametrize("document", [[], {}, "manifest", None])
def test_a_document_without_schema_version_is_not_a_manifest(document):
    with pytest.raises(ManifestError, match=r"^x.json is not an lfm-deploy manifest \(no schema_version\)$"):
        Manifest.from_dict(document, "x.json")


def test_sha256_file_is_the_shared_one():
    from lfm_deploy.utils import outputs

    assert sha256_file is outputs.sha256_file


@pytest.mark.parametrize("text", [b"\xff\xfe not utf-8", "[" * 100_000, "{\"schema_version\": 1" , "1" * 5000])
def test_unreadable_json(tmp_path, text):
    with pytest.raises(ManifestError, match="not valid JSON|not an lfm-deploy manifest"):
        read_manifest(_write(tmp_path, text if isinstance(text, bytes) else text), verify_files=False)


def test_a_deeply_nested_free_form_field_is_one_manifest_error(artifacts, tmp_path):
    text = json.dumps({**artifacts[1], "engines": None}).replace('"engines": null', '"engines": ' + "[" * 900 + "]" * 900)
    with pytest.raises(ManifestError, match="nested too deeply"):
        read_manifest(_write(tmp_path, text), verify_files=False)


def test_cli_predict_names_the_field(artifacts, tmp_path):
    from lfm_deploy.cli.predict import main

    src, manifest = artifacts
    art = tmp_path / "art"
    shutil.copytree(src, art)
    broken = copy.deepcopy(manifest)
    broken["files"]["encoder.onnx"]["sha256"] = 7
    _write(art, broken)
    query = src / "episode.onnx"  # any existing path: the manifest is read before any image
    result = CliRunner().invoke(main, [str(art), str(query), "--support", f"{query}:{query}", "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"Error: {art / MANIFEST_NAME}: files['encoder.onnx'].sha256 must be a string, got int; "
                     "re-run lfm-export"], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- properties ----------------------------------------------------------------------------------

_KEYS = sorted({"schema_version", "domain", "variant", "apm", "acpa", "lowering", "opset", "shots", "image_size",
                "preprocessing", "graphs", "files", "weights", "untrained", "tolerances", "mean", "std", "color",
                "file", "inputs", "outputs", "name", "dtype", "shape", "path", "bytes", "sha256", "seed",
                "episode", "encoder", "head", "episode.onnx", "checkpoint", "masker"})
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from(["episode.onnx", "../x", "/abs", "0" * 64, "rgb", "matmul", "m"]))
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner,
                                                                  max_size=5),
    max_leaves=25,
)


def _assert_valid_or_manifest_error(directory: Path, verify_files: bool) -> dict | None:
    try:
        manifest = read_manifest(directory, verify_files=verify_files)
    except ManifestError:
        event("ManifestError")
        return None
    event("valid")
    _consume(manifest, directory)
    return manifest


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("docs")


@SETTINGS
@given(doc=_json)
def test_random_json_documents(empty_dir, doc):
    directory = empty_dir
    _assert_valid_or_manifest_error(_write(directory, doc), verify_files=False)
    if isinstance(doc, dict):  # past the schema-version gate
        _assert_valid_or_manifest_error(_write(directory, {**doc, "schema_version": 1}), verify_files=False)


@SETTINGS
@given(data=st.binary(max_size=64))
def test_random_bytes(empty_dir, data):
    directory = empty_dir
    with pytest.raises(ManifestError):
        read_manifest(_write(directory, data), verify_files=False)


def _paths(value, prefix=()):
    """Every (key/index path) inside a JSON value, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


_OPS = ("delete", "replace", "wrap_list", "wrap_dict", "unwrap", "stringify")


@st.composite
def mutated_manifests(draw, manifest):
    m = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(m))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = draw(st.sampled_from(_OPS))
        value = parent[key]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(_json)
        elif op == "wrap_list":
            parent[key] = [value]
        elif op == "wrap_dict":
            parent[key] = {draw(st.sampled_from(_KEYS)): value}
        elif op == "unwrap":  # a container replaced by its first element (nested wrongly)
            inner = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
            parent[key] = inner[0] if inner else None
        else:
            parent[key] = json.dumps(value)
    return m


@pytest.fixture(scope="module")
def valid_manifest(artifacts):
    return artifacts[1]


@settings(SETTINGS, max_examples=300)
@given(data=st.data())
def test_mutated_manifests_read(scratch, valid_manifest, data):
    manifest = data.draw(mutated_manifests(valid_manifest))
    _assert_valid_or_manifest_error(_write(scratch, manifest), verify_files=False)


@settings(SETTINGS, max_examples=60)
@given(data=st.data())
def test_mutated_manifests_load_a_segmenter_or_fail_cleanly(scratch, valid_manifest, data):
    manifest = data.draw(mutated_manifests(valid_manifest))
    verify = data.draw(st.booleans())
    _write(scratch, manifest)
    try:
        seg = Segmenter.from_artifacts(scratch, threads=1, verify=verify)
    except ManifestError:
        event("ManifestError")
        return
    except LFMError as exc:  # pragma: no cover - the failure message says which
        raise AssertionError(f"not a ManifestError: {type(exc).__name__}: {exc}") from None
    event("valid")
    assert seg.shots >= 1 and seg.image_size == SIZE
