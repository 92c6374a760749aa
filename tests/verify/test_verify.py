"""lfm-verify: reports, skipped backends, layer-wise fault localisation, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("polygraphy")

from lfm_deploy.errors import LFMError  # noqa: E402
from lfm_deploy.parity.compare import OutputCheck, Tolerance, error_stats, mask_stats  # noqa: E402
from lfm_deploy.verify import BackendResult, VerifyReport, markdown, verify_artifacts, write_report  # noqa: E402


@pytest.fixture(scope="module")
def art(exported):
    return exported(1)


def _synthetic_report() -> VerifyReport:
    ref = np.linspace(-1, 1, 1000)
    logits = OutputCheck("ort-cpu", "logits", "logits", error_stats(ref + 1e-6, ref, keep_sample=True),
                         Tolerance("max_abs", 1e-3), 1e-6, True)
    bad = OutputCheck("trt-fp16", "logits", "logits", error_stats(ref + 0.1, ref, keep_sample=True),
                      Tolerance("max_abs", 1e-3), 0.1, False)
    mask = OutputCheck("ort-cpu", "mask", "mask", mask_stats(np.ones((1, 4, 4)), np.zeros((1, 4, 4)) + 1),
                       Tolerance("agreement", 0.999), 1.0, True)
    backends = [
        BackendResult("eager-fp64", "reference", description="PyTorch float64"),
        BackendResult("ort-cpu", "passed", description="onnxruntime CPU", outputs=[logits, mask], miou=0.5,
                      miou_delta=0.0, miou_passed=True, miou_tolerance=Tolerance("miou_delta", 0.01), mean_ms=12.0),
        BackendResult("trt-fp16", "failed", reason="logits max_abs 0.1", description="TensorRT", outputs=[bad]),
        BackendResult("ort-cuda", "skipped", reason="this onnxruntime build has no CUDAExecutionProvider"),
        BackendResult("trt-fp32", "skipped", reason="TensorRT is not available here"),
    ]
    return VerifyReport("/art", {"domain": "deepglobe", "variant": "apm-m+acpa", "lowering": "matmul", "shots": 1,
                                 "image_size": 160, "untrained": True}, 1, 0, "eager-fp64", backends,
                        environment={"torch": "x", "onnxruntime_providers": ["CPUExecutionProvider"]})


def test_report_files_list_every_backend_with_reasons(tmp_path):
    report = _synthetic_report()
    assert not report.passed and [b.name for b in report.failures] == ["trt-fp16"]
    paths = write_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    status = {b["name"]: (b["status"], b["reason"]) for b in data["backends"]}
    assert status["ort-cuda"] == ("skipped", "this onnxruntime build has no CUDAExecutionProvider")
    assert status["trt-fp32"][0] == "skipped" and data["passed"] is False
    text = paths["markdown"].read_text()
    for name in ("eager-fp64", "ort-cpu", "trt-fp16", "ort-cuda", "trt-fp32"):
        assert f"| {name} |" in text
    assert "TensorRT is not available here" in text and "**FAIL**" in text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p99.9" in markdown(report)


def test_report_times_are_readable():
    from lfm_deploy.verify.report import readable_time

    assert [readable_time(v) for v in (None, 0.42, 12.0, 412.3, 6416.0, 64160.0)] == \
        ["-", "0.42 ms", "12 ms", "412 ms", "6.4 s", "1 min 04 s"]
    report = _synthetic_report()
    report.backends[1].mean_ms = 64160.0
    text = markdown(report)
    assert "| 1 min 04 s |" in text and "e+04" not in text


def test_verify_runs_every_backend_or_says_why_not(art, tmp_path):
    backends = ["eager-fp32", "ort-cpu", "ort-cpu-split", "ort-cpu-fp16", "ort-cuda", "trt-fp32", "trt-fp16"]
    report = verify_artifacts(art.out_dir, backends=backends, episodes=2, threads=2)
    names = [b.name for b in report.backends]
    assert names == ["eager-fp64"] + backends
    for b in report.backends:
        assert b.status in ("reference", "passed", "skipped"), (b.name, b.status, b.reason)
        if b.status == "skipped":
            assert b.reason
    assert report.backend("ort-cpu-fp16").status == "skipped" and "--onnx-only" in report.backend("ort-cpu-fp16").reason
    ort = report.backend("ort-cpu")
    assert ort.status == "passed"
    logits = next(o for o in ort.outputs if o.output == "logits")
    assert logits.stats.shape == [2, 2, 160, 160] and logits.stats.max_abs < 1e-3
    assert set(logits.stats.quantiles) == {"p50", "p90", "p99", "p99.9"}
    mask = next(o for o in ort.outputs if o.output == "mask")
    assert mask.stats.agreement >= 0.999 and 0.0 <= mask.stats.iou <= 1.0
    assert ort.miou is not None and abs(ort.miou_delta) <= 0.01
    assert report.backend("ort-cpu-split").status == "passed"
    assert report.passed
    paths = write_report(report, tmp_path)
    assert all(p.is_file() for p in paths.values())


def test_layerwise_finds_an_injected_masker_fault(art, tmp_path):
    """Perturb the eager model's APM mask: the backbone still agrees and the masker is the
    first stage out of tolerance (the ONNX side keeps the artifact's weights)."""
    import torch

    def perturb(model):
        with torch.no_grad():
            model.apm.mask_amplitude.add_(torch.linspace(-2, 2, model.apm.mask_amplitude.numel()).reshape(
                model.apm.mask_amplitude.shape))

    report = verify_artifacts(art.out_dir, backends=["ort-cpu"], episodes=1, threads=2, layerwise=True,
                              workdir=tmp_path, model_modifier=perturb)
    lw = report.layerwise
    stages = {s["stage"]: s for s in lw["stages"]}
    assert stages["backbone.query"]["passed"] and stages["backbone.support"]["passed"]
    assert lw["first_mismatch"] == "apm.query"
    # The untrained default's logits are small (|x| < 0.1), so the fault shrinks on the way
    # down; it is still 100x the unperturbed error (~6e-8).
    logits = next(o for o in report.backend("ort-cpu").outputs if o.output == "logits")
    assert logits.stats.max_abs > 1e-5
    assert (tmp_path / "layerwise.onnx").is_file()
    paths = write_report(report, tmp_path / "report")
    assert "First stage outside tolerance" in paths["markdown"].read_text()


def test_verify_argument_errors(art):
    with pytest.raises(LFMError, match="unknown backend"):
        verify_artifacts(art.out_dir, backends=["ort-tpu"])
    with pytest.raises(LFMError, match="--episodes"):
        verify_artifacts(art.out_dir, episodes=0)


def test_cli_writes_the_report_and_exits_zero(art, tmp_path):
    from lfm_deploy.cli.verify import main

    out = tmp_path / "report"
    result = CliRunner().invoke(main, [str(art.out_dir), "--out", str(out), "--episodes", "1", "--threads", "2",
                                       "--backend", "ort-cpu", "--backend", "ort-cuda", "--backend", "trt-fp32"])
    assert result.exit_code == 0, result.output
    assert "[ok] ort-cpu" in result.output and "[skipped] trt-fp32" in result.output
    data = json.loads((out / "verify.json").read_text())
    assert [b["name"] for b in data["backends"]] == ["eager-fp64", "ort-cpu", "ort-cuda", "trt-fp32"]
    assert (out / "verify.md").is_file() and (out / "verify.png").is_file()


def test_cli_missing_directory_is_a_user_error(tmp_path):
    from lfm_deploy.cli.verify import main

    result = CliRunner().invoke(main, [str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "run lfm-export first" in result.output
