"""benchmarks/gpu_check.py on a CPU-only machine: the dry run stops at the CUDA step, naming what is
missing, after the steps that need no GPU; dependent steps are skipped, independent ones run; the
report renders every section a GPU run fills."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi"):
        return True
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


CPU_ONLY = pytest.mark.skipif(_has_cuda(), reason="this machine has CUDA; the dry-run checks are for CPU-only machines")


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module (stdlib imports only at its top)."""
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def quick_workers(gpu_check, monkeypatch):
    """The checkpoint and export workers replaced by a subprocess that prints what it was asked:
    the step machinery (subprocess, log, timeout, report) stays real; the exports' minutes go."""

    def worker(task, **spec):
        return [sys.executable, "-c", f"import json; print(json.dumps({{'task': {task!r}, 'stub': True}}))"]

    monkeypatch.setattr(gpu_check, "_worker", worker)
    return gpu_check


def _report(out: Path) -> dict:
    data = json.loads((out / "gpu_report.json").read_text())
    data["by_name"] = {s["name"]: s for s in data["steps"]}
    return data


@CPU_ONLY
def test_dry_run_stops_at_the_cuda_step_naming_what_is_missing(quick_workers, tmp_path, capsys):
    out = tmp_path / "gpu"
    code = quick_workers.main(["--dry-run", "--size", "64", "--out", str(out)])
    assert code == quick_workers.EXIT_NO_GPU != 0
    err = capsys.readouterr().err
    assert "dry run stopped at step 'cuda'" in err
    assert "`nvidia-smi` not found" in err and "no CUDAExecutionProvider" in err and "libcuda" in err
    assert all(line.startswith("[gpu-check ") for line in err.strip().splitlines())  # progress on stderr
    report = _report(out)
    steps = report["by_name"]
    assert report["stopped_at"] == "cuda" and report["exit_code"] == 3 and report["dry_run"] is True
    assert steps["install"]["status"] == "skipped" and "dry run: pip installs skipped" in steps["install"]["message"]
    assert [steps[n]["status"] for n in ("checkpoint", "export-fp32", "export-int8")] == ["ok"] * 3
    assert steps["cuda"]["status"] == "failed" and "nvidia-smi" in steps["cuda"]["message"]
    later = [n for n in steps if n not in ("install", "checkpoint", "export-fp32", "export-int8", "cuda")]
    assert later and all(steps[n]["status"] == "not run" for n in later)
    assert all(steps[n]["message"] == "dry run stopped at cuda" for n in later)
    markdown = (out / "gpu_report.md").read_text()
    assert "| cuda | failed |" in markdown and "| engines-int8 | not run |" in markdown
    assert (out / "logs" / "export-int8.log").read_text().startswith("$ export_domain('deepglobe'")


def test_cuda_step_names_each_missing_piece(gpu_check, tmp_path, monkeypatch):
    """A driver that sees no GPU, and one that does while onnxruntime is the CPU build."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ctx = gpu_check.Context(gpu_check.parse_args(["--dry-run"]), tmp_path, deadline=1e12)
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2\n"
                   "exit 9\n")
    smi.chmod(0o755)
    result = gpu_check.step_cuda(ctx)
    assert result.status == "failed" and "`nvidia-smi` lists no GPU (NVIDIA-SMI has failed" in result.message
    assert "libcuda.so.1) reports no device" in result.message
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 570.86, 143771 MiB, 9.0'\n")
    result = gpu_check.step_cuda(ctx)
    assert result.figures["gpus"] == ["NVIDIA H200, 570.86, 143771 MiB, 9.0"]
    import onnxruntime

    # A GPU is enough to go on (TensorRT needs no onnxruntime); a CPU-only onnxruntime is a warning.
    assert result.status == "ok" and result.message.startswith("NVIDIA H200")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert result.figures["ort_cuda"] is False
        assert "WARNING: onnxruntime" in result.message and "has no CUDAExecutionProvider" in result.message


@CPU_ONLY
def test_full_run_skips_what_needs_cuda_and_runs_the_rest(quick_workers, tmp_path, capsys):
    out = tmp_path / "gpu"
    code = quick_workers.main(["--skip-install", "--size", "64", "--out", str(out)])
    assert code == quick_workers.EXIT_FAILED
    steps = _report(out)["by_name"]
    assert steps["install"]["status"] == "skipped" and "--skip-install" in steps["install"]["message"]
    assert steps["export-int8"]["status"] == "ok"
    # tensorrt does not depend on cuda: it runs (and fails here) whatever cuda did
    assert steps["cuda"]["status"] == "failed" and steps["tensorrt"]["status"] == "failed"
    assert "`import tensorrt` failed" in steps["tensorrt"]["message"]
    for name in ("engines-fp32", "engines-fp16", "engines-int8"):
        assert steps[name]["status"] == "skipped"
        assert steps[name]["message"] == "needs cuda (failed), tensorrt (failed)"
    for name in ("verify-fp32", "verify-int8", "bench"):
        assert steps[name]["status"] == "skipped" and steps[name]["message"] == "needs cuda (failed)"
    assert "FAILED: cuda, tensorrt" in capsys.readouterr().err


def test_a_failed_export_skips_only_its_dependants(gpu_check, tmp_path, monkeypatch):
    """With CUDA and TensorRT present (stubbed), an int8 export refused by its gate skips the int8
    engine and verify, while the fp32 path runs on."""
    ran = []

    def ok(name):
        def run(ctx):
            ran.append(name)
            return gpu_check.StepResult(name, "ok", message="stub")
        return run

    def refused(ctx):
        return gpu_check.StepResult("export-int8", "failed", message="Error: the int8 graphs move the masks")

    steps = []
    for step in gpu_check.STEPS:
        run = refused if step.name == "export-int8" else ok(step.name)
        steps.append(dataclasses.replace(step, run=run))
    monkeypatch.setattr(gpu_check, "STEPS", tuple(steps))
    code = gpu_check.main(["--size", "64", "--out", str(tmp_path / "gpu")])
    assert code == gpu_check.EXIT_FAILED
    report = _report(tmp_path / "gpu")
    assert report["by_name"]["engines-int8"]["message"] == "needs export-int8 (failed)"
    assert report["by_name"]["verify-int8"]["status"] == "skipped"
    assert {"engines-fp32", "engines-fp16", "verify-fp32", "bench"} <= set(ran)
    assert report["verdict"] == "FAILED: export-int8"  # the skipped dependants are not failures of their own


def test_dry_run_on_a_gpu_machine_stops_before_the_first_gpu_step(gpu_check, tmp_path, monkeypatch):
    def ok(name):
        return lambda ctx: gpu_check.StepResult(name, "ok")

    monkeypatch.setattr(gpu_check, "STEPS", tuple(dataclasses.replace(s, run=ok(s.name)) for s in gpu_check.STEPS))
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path / "gpu")])
    report = _report(tmp_path / "gpu")
    assert code == 0 and report["stopped_at"] == "engines-fp32"
    assert report["by_name"]["tensorrt"]["status"] == "ok" and report["by_name"]["engines-fp32"]["status"] == "not run"


def test_report_renders_the_gpu_sections(gpu_check, tmp_path):
    """What a GPU run fills in (engine sidecars, verify.json, latency.json in the formats
    lfm-build-engine, lfm-verify and bench_latency.py write) comes out in the Markdown."""
    engines = tmp_path / "export-int8" / "engines"
    engines.mkdir(parents=True)
    (engines / "episode.int8.plan").write_bytes(b"x" * 2**20)
    (engines / "episode.int8.plan.json").write_text(json.dumps(
        {"graph": "episode", "build_seconds": 41.5, "typing": "strong", "tensorrt_version": "10.12.0.36",
         "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}}))
    verify = tmp_path / "verify.json"
    verify.write_text(json.dumps({"passed": True, "backends": [
        {"name": "eager-fp64", "status": "reference", "reason": "", "outputs": [], "mean_ms": 900.0, "miou_delta": None},
        {"name": "trt-int8", "status": "passed", "reason": "", "mean_ms": 3.2, "miou_delta": -0.001,
         "outputs": [{"output": "logits", "value": 0.02, "passed": True}]},
        {"name": "ort-cuda", "status": "skipped", "reason": "no CUDA | here", "outputs": [], "mean_ms": None,
         "miou_delta": None}]}))
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"backends": {"trt-fp16": {"1": {"p50_ms": 2.5, "p90_ms": 2.7, "images_per_s": 400.0}}},
                                   "skipped": {"eager (batch 8)": "failed: timeout"}, "ratios": {}}))
    ctx = gpu_check.Context(gpu_check.parse_args(["--out", str(tmp_path)]), tmp_path, deadline=1e12)
    ctx.results["engines-int8"] = gpu_check.StepResult(
        "engines-int8", "ok", figures=gpu_check.engine_figures(tmp_path / "export-int8", "int8"))
    ctx.results["verify-int8"] = gpu_check.StepResult("verify-int8", "ok", figures=gpu_check.verify_figures(verify))
    ctx.results["bench"] = gpu_check.StepResult("bench", "ok", figures=gpu_check.bench_figures(latency))
    state = {"started": "now", "command": "python benchmarks/gpu_check.py", "dry_run": False, "size": 400,
             "budget_s": 600, "machine": gpu_check.machine(), "verdict": "all steps passed", "stopped_at": None,
             "exit_code": 0, "seconds": 1.0}
    gpu_check.write_report(ctx, state)
    markdown = (tmp_path / "gpu_report.md").read_text()
    assert "| engines-int8 | episode | 1.0 | 41.5 | strong | 10.12.0.36 | NVIDIA H200 |" in markdown
    assert "| trt-int8 | passed | 3.2 | -0.0010 | logits 0.02 |  |" in markdown
    assert "no CUDA / here" in markdown  # table cells escaped
    assert "| trt-fp16 b1 | 2.5 | 2.7 | 400.0 |" in markdown and "eager (batch 8) | skipped" in markdown
    assert json.loads((tmp_path / "gpu_report.json").read_text())["steps"][0]["name"] == "install"


def test_float_engines_are_shared_only_with_the_same_graph(gpu_check, tmp_path):
    ctx = gpu_check.Context(gpu_check.parse_args(["--out", str(tmp_path)]), tmp_path, deadline=1e12)
    for d in (ctx.fp32_dir, ctx.int8_dir):
        d.mkdir()
    (ctx.fp32_dir / "episode.onnx").write_bytes(b"graph")
    (ctx.int8_dir / "episode.onnx").write_bytes(b"graph")
    (ctx.int8_dir / "manifest.json").write_text(json.dumps({"reference_graphs": {"episode": "episode.onnx"}}))
    (ctx.fp32_dir / "engines").mkdir()
    for name in ("episode.fp32.plan", "episode.fp32.plan.json"):
        (ctx.fp32_dir / "engines" / name).write_text(name)
    (tmp_path / "logs").mkdir()
    result = gpu_check.StepResult("verify-int8", log="logs/verify-int8.log")
    assert gpu_check.share_float_engines(ctx, result) == ["episode.fp32.plan"]
    assert (ctx.int8_dir / "engines" / "episode.fp32.plan.json").is_file()
    shutil.rmtree(ctx.int8_dir / "engines")
    (ctx.int8_dir / "episode.onnx").write_bytes(b"another graph")
    assert gpu_check.share_float_engines(ctx, result) == []


def test_out_folder_is_never_clobbered(gpu_check, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    (taken / "gpu_report.json").write_text("{}")  # an earlier report, or a file of that name: kept either way
    with pytest.raises(SystemExit, match="exists and is not empty"):
        gpu_check.prepare_out(taken)
    assert sorted(p.name for p in taken.iterdir()) == ["gpu_report.json", "notes.txt"]
    assert gpu_check.prepare_out(tmp_path / "new") == (tmp_path / "new").resolve()
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--size", "8"])


@pytest.mark.slow
@CPU_ONLY
def test_real_dry_run_at_64_px(tmp_path):
    """The real path, as a user runs it: both exports at 64 px (about 90 s on 2 cores), then the
    stop at the CUDA step."""
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--size", "64", "--calibration-episodes", "2",
                           "--gate-episodes", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "dry run stopped at step 'cuda'" in proc.stderr and "nvidia-smi" in proc.stderr
    assert proc.stdout == ""
    steps = _report(out)["by_name"]
    assert steps["export-fp32"]["status"] == "ok" and steps["export-fp32"]["figures"]["precision"] == "fp32"
    assert steps["export-fp32"]["figures"]["image_size"] == 64
    assert "## Exports" in (out / "gpu_report.md").read_text()
    int8 = steps["export-int8"]
    if int8["status"] == "ok":
        assert int8["figures"]["precision"] == "int8" and int8["figures"]["graphs"]["episode"] == "episode.int8.onnx"
    else:  # at 64 px the int8 gate is marginal (a few hundred pixels per episode): a refusal is reported,
        # for the masks moving, or for too little evidence in the few episodes drawn
        assert int8["message"].startswith(("exit code 1: Error: the int8 graphs move the masks beyond their accuracy gate",
                                           "exit code 1: Error: --precision int8 cannot be gated: no evidence"))
        assert "before it, FAILED: export-int8" in proc.stderr
