"""The backend registry: a backend declared in this module alone reaches lfm-verify, the Segmenter and the docs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lfm_deploy.errors import InputError, LFMError
from lfm_deploy.runtime import Segmenter, SessionConfig, SessionFromOnnx
from lfm_deploy.runtime.backends import (
    BACKENDS,
    Backend,
    backend_names,
    gate_backend,
    get_backend,
    markdown_table,
    register,
    select_backend,
    unregister,
)

from . import synthetic_queries, synthetic_support

DOCS = Path(__file__).resolve().parents[2] / "docs" / "backends.md"
SIZE = 160  # tests/conftest.py TEST_IMAGE_SIZE


def _basic_session(path, *, threads=None, what=None, **_):
    """onnxruntime CPU with only the basic graph optimisations (no layout rewrites, no fusions)."""
    return SessionFromOnnx(path, ["cpu"], config=SessionConfig(threads=threads, graph_optimization="basic"), what=what)


#: The toy backend: everything a new backend declares.
TOY = Backend("ort-cpu-basic", "onnxruntime", "fp32", "onnxruntime CPU, basic graph optimisations",
              session=_basic_session)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def test_docs_table_is_the_registry():
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("<!-- backends table")
    table = text[text.index("\n", start) + 1: text.index("<!-- end of backends table -->")]
    assert table == markdown_table(), "docs/backends.md is stale: paste lfm_deploy.runtime.backends.markdown_table()"
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == backend_names()


def test_registry_reads():
    assert backend_names()[:2] == ["eager-fp32", "ort-cpu"] and get_backend("ov-bf16").selector == "openvino"
    assert [gate_backend(p).name for p in ("int8", "fp16", "bf16")] == ["ort-cpu-int8", "ort-cpu-fp16", "ov-bf16"]
    assert select_backend("cpu") is None and select_backend("openvino", "bf16").name == "ov-bf16"
    with pytest.raises(InputError, match="unknown backend 'ort-tpu'; pass one of eager-fp32, ort-cpu"):
        get_backend("ort-tpu")
    with pytest.raises(InputError, match="'trt-fp16' runs through lfm-verify only"):
        select_backend(backend="trt-fp16")
    with pytest.raises(InputError, match="OpenVINO runs fp32, bf16, not int8"):
        select_backend("openvino", "int8")
    with pytest.raises(LFMError, match="already registered"):
        register(Backend("ort-cpu", "onnxruntime", "fp32", "again", session=_basic_session))
    with pytest.raises(LFMError, match="exactly one of session= and plan="):
        register(Backend("nothing", "onnxruntime", "fp32", "neither"))
    assert "nothing" not in BACKENDS


def test_a_registered_backend_is_an_lfm_verify_choice(toy, tmp_path):
    from lfm_deploy.cli.verify import main

    assert "ort-cpu-basic" in CliRunner().invoke(main, ["--help"]).output
    result = CliRunner().invoke(main, [str(tmp_path / "nope"), "--backend", "ort-cpu-basic"])
    assert result.exit_code == 1 and "run lfm-export first" in result.output  # the choice was accepted
    unregister(toy.name)
    result = CliRunner().invoke(main, [str(tmp_path / "nope"), "--backend", "ort-cpu-basic"])
    assert result.exit_code == 2 and "'ort-cpu-basic' is not one of" in result.output


def test_a_registered_backend_runs_in_the_segmenter_and_lfm_verify(toy, exported, tmp_path):
    from lfm_deploy.cli.verify import main

    art = exported(shots=1).out_dir
    supports, masks = synthetic_support(1, SIZE)
    queries = synthetic_queries(2, SIZE)
    with Segmenter.from_artifacts(art, backend="ort-cpu-basic", threads=2, verify=False) as seg, \
            Segmenter.from_artifacts(art, providers="cpu", threads=2, verify=False) as ref:
        assert seg.runs_on is toy and seg.backend == "onnxruntime" and seg.precision == "fp32" and seg.providers == ["CPUExecutionProvider"]
        for s in (seg, ref):
            s.set_support(supports, masks)
        np.testing.assert_allclose(seg.predict_proba(queries), ref.predict_proba(queries), atol=1e-5)
    if get_backend("ov-fp32").unavailable() is None:  # a built-in row by name, without providers=
        with Segmenter.from_artifacts(art, backend="ov-fp32", threads=2, verify=False) as ov:
            assert ov.runs_on.name == "ov-fp32" and ov.backend == "openvino" and ov.providers[0].startswith("OpenVINO")
        with Segmenter.from_artifacts(art, backend="ov-bf16", threads=2, verify=False) as ov:
            assert ov.runs_on.name == "ov-bf16" and ov.precision == "bf16"  # a named backend runs in its own precision
    with pytest.raises(InputError, match="backend 'ort-cpu-basic' runs fp32, not bf16"):
        Segmenter.from_artifacts(art, backend="ort-cpu-basic", precision="bf16", verify=False)

    out = tmp_path / "report"
    result = CliRunner().invoke(main, [str(art), "--out", str(out), "--episodes", "1", "--threads", "2", "--quiet",
                                       "--backend", "ort-cpu", "--backend", "ort-cpu-basic"])
    assert result.exit_code == 0, result.output
    assert "[ok] ort-cpu-basic (onnxruntime CPU, basic graph optimisations (episode.onnx), 2 threads)" in result.output
    data = json.loads((out / "verify.json").read_text())
    assert [b["name"] for b in data["backends"]] == ["eager-fp64", "ort-cpu", "ort-cpu-basic"]


def test_an_installed_package_adds_a_backend_through_the_entry_point(tmp_path):
    """A backend in its own installed package (a dist-info with an `lfm_deploy.backends` entry point)
    reaches the registry, `lfm verify --backend` and the GPU rows with no file of this project
    changed; a plugin that fails to import is named in a warning and the built-ins stay."""
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "toy_backends").mkdir(parents=True)
    (site / "toy_backends" / "__init__.py").write_text(
        "from lfm_deploy.runtime.backends import Backend\n"
        "from lfm_deploy.runtime import SessionFromOnnx\n"
        "TOY = Backend('ort-cpu-plugin', 'onnxruntime', 'fp32', 'onnxruntime CPU from a plugin',\n"
        "              session=lambda path, **_: SessionFromOnnx(path, ['cpu']))\n"
        "GPU = [Backend('toy-gpu', 'onnxruntime', 'fp32', 'a GPU row from a plugin',\n"
        "               session=lambda path, **_: SessionFromOnnx(path, ['cpu']), device='gpu')]\n")
    info = site / "toy_backends-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backends\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lfm_deploy.backends]\nort-cpu-plugin = toy_backends:TOY\n"
                                           "toy-gpu = toy_backends:GPU\nbroken = toy_backends_missing:X\n")
    root = Path(__file__).resolve().parents[2]
    code = ("import json; from lfm_deploy.runtime.backends import BACKENDS, backends; backends(); "
            "from click.testing import CliRunner; "
            "from lfm_deploy.cli.group import lfm; help = CliRunner().invoke(lfm, ['verify', '--help']).output; "
            "print(json.dumps([list(BACKENDS), [b.name for b in BACKENDS.values() if b.device == 'gpu'], "
            "'ort-cpu-plugin' in help]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": f"{site}:{root}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    names, gpu, in_help = json.loads(proc.stdout.strip().splitlines()[-1])
    assert names[:2] == ["eager-fp32", "ort-cpu"] and names[-2:] == ["ort-cpu-plugin", "toy-gpu"]
    assert gpu == ["ort-cuda", "trt-fp32", "trt-fp16", "trt-int8", "toy-gpu"] and in_help
    assert "backend plugin broken (toy_backends_missing:X) not loaded" in proc.stderr
    assert "ort-cpu-plugin" not in BACKENDS  # this process has no such package installed
