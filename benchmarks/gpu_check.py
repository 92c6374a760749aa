"""The GPU machine check: install the GPU extras, export, build TensorRT engines, verify every GPU
backend, time them, and write one report, inside about 10 minutes.

    python benchmarks/gpu_check.py                         # a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --out $OUT/gpu --size 400
    python benchmarks/gpu_check.py --dry-run --size 64     # CPU-only: runs what needs no GPU

Steps, in order (each a function below, run as a subprocess with a timeout; logs in
`<out>/logs/<step>.log`):

  install       pip: `onnxruntime` out, then `pip install -e '.[export,gpu,tensorrt]'`. The `gpu`
                extra is onnxruntime-gpu, which installs the same `onnxruntime` module as the CPU
                package: the two must not be installed together, and uninstalling one after the
                other removes files both use. So the CPU package is uninstalled first, and only
                after `pip install --dry-run` has shown the extras can be fetched (an offline
                machine keeps a working onnxruntime). Skipped when onnxruntime already has the
                CUDA provider and TensorRT imports, with --skip-install, and in a dry run.
  checkpoint    a mixed-mask test checkpoint (`lfm_deploy.parity.testing.make_mixed_checkpoint`)
  export-fp32   `export_domain` (what `lfm-export` calls) at --size, float32 graphs, validated
  export-int8   the same with `precision="int8"` (`lfm-export --precision int8`: int8 QDQ graphs
                gated against the eager model); runs alongside export-fp32
  cuda          `nvidia-smi` (else the CUDA driver) shows a GPU; onnxruntime's CUDAExecutionProvider
                is checked too (missing: a warning, ort-cuda is then skipped by lfm-verify)
  tensorrt      `import tensorrt` works
  engines-fp32, engines-fp16 (fp32 export), engines-int8 (int8 export)
                `lfm-build-engine --graph episode` with a shared timing cache
  verify-fp32, verify-int8
                `lfm-verify` with the GPU backends (ort-cuda, trt-fp32, trt-fp16, and trt-int8
                when this lfm-verify knows it) on each export; the fp32/fp16 engines are shared
                with the int8 export when its float32 episode graph is the same file
  bench         `benchmarks/bench_latency.py` on the fp32 export: eager (CPU), onnxruntime CPU
                (episode graph and the split path) and TensorRT fp32/fp16, batch 1 and 8 (it has
                no int8 backend: verify-int8's mean ms is the int8 engine's figure)

A step whose inputs failed is marked skipped (with the reason); independent steps still run.
`gpu_report.md` and `gpu_report.json` under --out (default `results/gpu-<date>-<time>, a new folder per run`) hold every
step's status, time, command and key figures; they are rewritten after every step, so a run cut
short still leaves a report. Progress lines go to stderr.

--dry-run (CPU-only machines): no pip installs; the steps that need no GPU run (at --size 64 the
exports take about a minute each on 2 cores), and the run stops at the first step that needs
CUDA or TensorRT, naming what is missing, with exit code 3. Exit codes: 0 all ran and passed
(a dry run on a GPU machine stops before the first GPU step with 0), 1 a step failed, 2 usage,
3 dry run stopped: no CUDA / TensorRT.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
REPORT_JSON, REPORT_MD = "gpu_report.json", "gpu_report.md"
EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 3
#: The whole run's time budget (s): steps get at most what is left of it.
DEFAULT_BUDGET = 600
EXTRAS = "export,gpu,tensorrt"
CUDA_EP = "CUDAExecutionProvider"
#: What `verify_backends` falls back to when the registry cannot be read (the built-in GPU rows).
GPU_BACKENDS = ("ort-cuda", "trt-fp32", "trt-fp16", "trt-int8")
BENCH_BACKENDS = ("eager", "ort-matmul", "ort-split", "trt-fp32", "trt-fp16")


# ----------------------------------------------------------------------------- results
@dataclass
class StepResult:
    """What one step did.

    Attributes:
        name: the step.
        status: "ok", "failed", "skipped" (an input failed, or nothing to do), "not run" (the
            dry run stopped, or the time budget ran out), or "pending".
        seconds: wall time.
        command: what ran (shell-quoted), "" for steps run in this process.
        message: one line: why it failed or was skipped, or what it found.
        figures: the key numbers it produced.
        log: its log file, relative to --out.
    """

    name: str
    status: str = "pending"
    seconds: float = 0.0
    command: str = ""
    message: str = ""
    figures: dict = field(default_factory=dict)
    log: str = ""


@dataclass
class Step:
    """One step: `run(ctx) -> StepResult`, the steps it needs, and whether it needs a GPU."""

    name: str
    run: Callable[["Context"], StepResult]
    needs: tuple = ()
    hardware: bool = False  # checks for CUDA / TensorRT: where a dry run stops
    group: str | None = None  # consecutive steps of one group run at the same time


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    deadline: float
    results: dict = field(default_factory=dict)

    @property
    def fp32_dir(self) -> Path:
        return self.out / "export-fp32"

    @property
    def int8_dir(self) -> Path:
        return self.out / "export-int8"

    @property
    def checkpoint(self) -> Path:
        return self.out / f"mixed-{self.args.size}.pt"

    def left(self) -> float:
        return self.deadline - time.monotonic()


_START = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, with the time since the script started."""
    elapsed = int(time.monotonic() - _START)
    print(f"[gpu-check {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _console(module: str, display: str, *args: str) -> tuple[list[str], str]:
    """(argv, shown command) of an lfm-deploy console script, run with this interpreter (the
    console scripts may not be on PATH, e.g. in a venv that is not activated)."""
    args = [str(a) for a in args]
    argv = _python("-c", f"import sys; from {module} import main; sys.exit(main())", *args)
    return argv, shlex.join([display, *args])


def _worker(task: str, **spec) -> list[str]:
    return _python(str(Path(__file__).resolve()), "--worker", json.dumps({"task": task, **spec}))


def run_command(ctx: Context, result: StepResult, argv: list[str], timeout: int, shown: str | None = None,
                env: dict | None = None) -> subprocess.CompletedProcess | None:
    """Run one command of a step, appending its output to the step's log; None on a timeout."""
    logs = ctx.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{result.name}.log"
    result.log = str(log.relative_to(ctx.out))
    shown = shown or shlex.join(argv)
    result.command = "; ".join(c for c in (result.command, shown) if c)
    timeout = int(max(1, min(timeout, ctx.left())))
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        try:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=ROOT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        except subprocess.TimeoutExpired:
            f.write(f"\n[gpu-check] timed out after {timeout} s\n")
            result.message = f"timed out after {timeout} s ({shown})"
            return None
    return proc


def log_tail(ctx: Context, result: StepResult, lines: int = 3) -> str:
    """What a failed command said: its last `Error: ...` line (lfm-deploy's one-line user errors),
    else its last lines."""
    try:
        text = (ctx.out / result.log).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in text if line.startswith("Error:")]
    if errors:
        return errors[-1][:600]
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())[-600:]


def _finish(ctx: Context, result: StepResult, proc, ok_message: str = "") -> StepResult:
    if proc is None:
        result.status = "failed"
    elif proc.returncode != 0:
        result.status = "failed"
        result.message = f"exit code {proc.returncode}: {log_tail(ctx, result)}"
    else:
        result.status = "ok"
        result.message = ok_message
    return result


# ----------------------------------------------------------------------------- steps
def step_install(ctx: Context) -> StepResult:
    """pip: the export, gpu and tensorrt extras, onnxruntime-gpu in place of onnxruntime."""
    result = StepResult("install")
    plan = f"pip uninstall -y onnxruntime; pip install -e '.[{EXTRAS}]'"
    if ctx.args.dry_run:
        result.status, result.message = "skipped", f"dry run: pip installs skipped (would run: {plan})"
        return result
    if ctx.args.skip_install:
        result.status, result.message = "skipped", f"--skip-install (would run: {plan})"
        return result
    have = _probe_python("import json, onnxruntime as o, tensorrt as t; "
                         "print(json.dumps([o.get_available_providers(), t.__version__]))")
    if have is not None and CUDA_EP in have[0]:
        result.status, result.message = "skipped", f"already installed (onnxruntime-gpu, TensorRT {have[1]})"
        return result
    pip = _python("-m", "pip")
    extra = shlex.split(ctx.args.pip_args or "")
    # Resolve first: on a machine that cannot fetch the packages nothing is uninstalled.
    proc = run_command(ctx, result, [*pip, "install", "--dry-run", "-e", f".[{EXTRAS}]", *extra], ctx.args.install_timeout)
    if proc is None or proc.returncode != 0:
        result = _finish(ctx, result, proc)
        result.message = "the extras cannot be fetched (nothing was changed): " + result.message
        return result
    run_command(ctx, result, [*pip, "uninstall", "-y", "onnxruntime"], 120)
    proc = run_command(ctx, result, [*pip, "install", "-e", f".[{EXTRAS}]", *extra], ctx.args.install_timeout)
    if proc is None or proc.returncode != 0:
        if _probe_python("import onnxruntime") is None:  # leave a working onnxruntime behind
            run_command(ctx, result, [*pip, "install", "onnxruntime"], 300)
        return _finish(ctx, result, proc)
    return _finish(ctx, result, proc, "onnxruntime-gpu and tensorrt installed")


def step_checkpoint(ctx: Context) -> StepResult:
    """The mixed-mask test checkpoint at --size (its masks are about half foreground)."""
    result = StepResult("checkpoint")
    proc = run_command(ctx, result, _worker("checkpoint", path=str(ctx.checkpoint), size=ctx.args.size), 300,
                       shown=f"make_mixed_checkpoint({str(ctx.checkpoint)!r}, image_size={ctx.args.size})")
    _finish(ctx, result, proc)
    if result.status == "ok":
        result.figures = _last_json(ctx, result)
    return result


def _export(ctx: Context, name: str, out: Path, precision: str) -> StepResult:
    result = StepResult(name)
    threads = max(1, (os.cpu_count() or 2) // 2)  # the two exports run side by side
    spec = dict(out=str(out), checkpoint=str(ctx.checkpoint), size=ctx.args.size, precision=precision,
                gate_episodes=ctx.args.gate_episodes, calibration_episodes=ctx.args.calibration_episodes,
                threads=threads)
    shown = (f"export_domain('deepglobe', out={str(out)!r}, checkpoint={str(ctx.checkpoint)!r}, "
             f"image_size={ctx.args.size}, precision={precision!r}" +
             (f", gate_episodes={ctx.args.gate_episodes})" if precision != "fp32" else ")") +
             f"  # = lfm-export --domain deepglobe --checkpoint ... --precision {precision} at {ctx.args.size} px")
    proc = run_command(ctx, result, _worker("export", **spec), ctx.args.export_timeout, shown=shown,
                       env={"OMP_NUM_THREADS": str(threads)})
    _finish(ctx, result, proc)
    if (out / "manifest.json").is_file():
        result.figures = export_figures(out)
        if result.status == "ok":
            gate = result.figures.get("gate_passed")
            result.message = (f"{', '.join(result.figures['graphs'].values())} at {result.figures['image_size']} px"
                              + ("" if gate is None else f"; accuracy gate {'passed' if gate else 'FAILED'}"))
    return result


def step_export_fp32(ctx: Context) -> StepResult:
    """The float32 export (validated against the eager model)."""
    return _export(ctx, "export-fp32", ctx.fp32_dir, "fp32")


def step_export_int8(ctx: Context) -> StepResult:
    """The int8 export: QDQ graphs gated against the eager model (and the float32 graphs)."""
    return _export(ctx, "export-int8", ctx.int8_dir, "int8")


def step_cuda(ctx: Context) -> StepResult:
    """A visible NVIDIA GPU (`nvidia-smi`, else the CUDA driver itself) and onnxruntime's CUDA
    execution provider.

    Fails when no GPU is visible (every later GPU step needs one). A GPU without the CUDA
    provider (the CPU `onnxruntime` package still installed) passes with a warning: TensorRT
    needs no onnxruntime, and lfm-verify reports ort-cuda as skipped with the reason.
    """
    result = StepResult("cuda", command="nvidia-smi --query-gpu=...; onnxruntime.get_available_providers()")
    problems = []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        problems.append("`nvidia-smi` not found on PATH (no NVIDIA driver)")
    else:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
            if out.returncode != 0 or not out.stdout.strip():
                problems.append(f"`nvidia-smi` lists no GPU ({(out.stderr or out.stdout).strip()[:200]})")
            else:
                result.figures["gpus"] = [line.strip() for line in out.stdout.strip().splitlines()]
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"`nvidia-smi` failed ({exc})")
    if not result.figures.get("gpus"):  # containers without nvidia-smi: ask libcuda (what TensorRT uses)
        driver = _probe_python("import json; from lfm_deploy.tensorrt.engines import gpu_info; "
                               "g = gpu_info(); print(json.dumps([g.name, g.compute_capability]))")
        if isinstance(driver, list):
            result.figures["gpus"] = [f"{driver[0]}, compute capability {driver[1]} (CUDA driver)"]
        else:
            problems[-1] += "; the CUDA driver (libcuda.so.1) reports no device either"
    info = _probe_python("import json, onnxruntime as o; "
                         "print(json.dumps([o.__version__, o.get_available_providers()]))")
    ep_problem = ""
    if not isinstance(info, list):
        ep_problem = "onnxruntime cannot be imported"
    else:
        result.figures.update(onnxruntime=info[0], providers=info[1], ort_cuda=CUDA_EP in info[1])
        if CUDA_EP not in info[1]:
            ep_problem = (f"onnxruntime {info[0]} has no {CUDA_EP} (providers: {', '.join(info[1])}; the CPU "
                          "`onnxruntime` package is installed, or the CUDA/cuDNN libraries are missing)")
    if not result.figures.get("gpus"):
        result.status = "failed"
        result.message = "CUDA is not usable here: " + "; ".join(problems + [ep_problem] if ep_problem else problems)
    else:
        result.status = "ok"
        result.message = result.figures["gpus"][0] + (
            f"; WARNING: {ep_problem} (ort-cuda will be skipped)" if ep_problem else f"; onnxruntime {info[0]} with {CUDA_EP}")
    return result


def step_tensorrt(ctx: Context) -> StepResult:
    """`import tensorrt` (10.x or 11.x)."""
    result = StepResult("tensorrt", command="python -c 'import tensorrt'")
    code = ("import json\ntry:\n import tensorrt as t\n print(json.dumps([t.__version__, '']))\n"
            "except Exception as e:\n print(json.dumps(['', f'{type(e).__name__}: {e}']))")
    info = _probe_python(code)
    if info is None or not info[0]:
        why = info[1] if info else "the interpreter failed"
        result.status = "failed"
        result.message = (f"TensorRT is not usable here: `import tensorrt` failed ({why}); it installs from "
                          "NVIDIA's index on a machine with an NVIDIA GPU (`pip install -e '.[tensorrt]'`)")
    else:
        result.status, result.message, result.figures = "ok", f"TensorRT {info[0]}", {"tensorrt": info[0]}
    return result


def _engines(ctx: Context, name: str, export: Path, precision: str) -> StepResult:
    result = StepResult(name)
    argv, shown = _console("lfm_deploy.cli.engine", "lfm-build-engine", export, "--precision", precision,
                           "--graph", "episode", "--max-batch", max(ctx.args.batch_sizes),
                           "--timing-cache", ctx.out / "trt.cache")
    proc = run_command(ctx, result, argv, ctx.args.engine_timeout, shown=shown)
    _finish(ctx, result, proc)
    result.figures = engine_figures(export, precision)
    if result.status == "ok":
        result.message = "; ".join(f"{e['engine']} {e['mb']} MB in {e['build_s']} s ({e['typing']}ly typed)"
                                   for e in result.figures.values())
    return result


def step_engines_fp32(ctx: Context) -> StepResult:
    """TensorRT fp32 episode engine (TF32 off) from the fp32 export."""
    return _engines(ctx, "engines-fp32", ctx.fp32_dir, "fp32")


def step_engines_fp16(ctx: Context) -> StepResult:
    """TensorRT fp16 episode engine (fp16 graph with fp32 islands) from the fp32 export."""
    return _engines(ctx, "engines-fp16", ctx.fp32_dir, "fp16")


def step_engines_int8(ctx: Context) -> StepResult:
    """TensorRT int8 episode engine (explicit quantization) from the int8 export's QDQ graph."""
    return _engines(ctx, "engines-int8", ctx.int8_dir, "int8")


def verify_backends() -> list[str]:
    """The GPU backends of the installed package's registry (`Backend.device`, plugins included),
    asked in a fresh interpreter after pip may have changed the packages."""
    names = _probe_python("import json; from lfm_deploy.runtime.backends import backends; "
                          "print(json.dumps([b.name for b in backends().values() if b.device == 'gpu']))")
    return names if isinstance(names, list) and names else list(GPU_BACKENDS)


def share_float_engines(ctx: Context, result: StepResult) -> list[str]:
    """Copy the fp32/fp16 episode engines of the fp32 export into the int8 export when its float32
    episode graph is the same file (same checkpoint and size: the exports are deterministic), so
    that verify-int8 runs TensorRT fp32/fp16 too without building them again. The engines'
    sidecars tie them to that graph's sha256, which lfm-verify checks before loading them."""
    from_dir, to_dir = ctx.fp32_dir / "engines", ctx.int8_dir / "engines"
    source = _read_json(ctx.int8_dir / "manifest.json") or {}
    graph = (source.get("reference_graphs") or {}).get("episode", "episode.onnx")
    if not (ctx.fp32_dir / "episode.onnx").is_file() or not (ctx.int8_dir / graph).is_file() or \
            _sha256(ctx.fp32_dir / "episode.onnx") != _sha256(ctx.int8_dir / graph):
        return []
    shared = []
    for precision in ("fp32", "fp16"):
        plan = from_dir / f"episode.{precision}.plan"
        if plan.is_file() and not (to_dir / plan.name).exists():
            to_dir.mkdir(parents=True, exist_ok=True)
            for f in (plan, plan.with_name(plan.name + ".json")):
                shutil.copy2(f, to_dir / f.name)
            shared.append(plan.name)
    if shared:
        with open(ctx.out / result.log, "a", encoding="utf-8") as f:
            f.write(f"[gpu-check] shared from {from_dir}: {', '.join(shared)} (same float32 episode graph)\n")
    return shared


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(ctx: Context, name: str, export: Path) -> StepResult:
    result = StepResult(name, log=f"logs/{name}.log")
    (ctx.out / "logs").mkdir(parents=True, exist_ok=True)
    shared = share_float_engines(ctx, result) if export == ctx.int8_dir else []
    backends = verify_backends()
    report = ctx.out / name
    args = [export, "--out", report, "--episodes", ctx.args.episodes]
    for b in backends:
        args += ["--backend", b]
    argv, shown = _console("lfm_deploy.cli.verify", "lfm-verify", *args)
    proc = run_command(ctx, result, argv, ctx.args.verify_timeout, shown=shown)
    _finish(ctx, result, proc)
    result.figures = verify_figures(report / "verify.json")
    notes = [f"TensorRT {', '.join(shared)} shared from the fp32 export (same float32 episode graph)"] if shared else []
    if notes:
        result.figures["note"] = "; ".join(notes)
    rows = result.figures.get("backends", [])
    if rows and proc is not None:  # lfm-verify wrote its report: say what passed, failed, was skipped
        by: dict = {}
        for b in rows:
            if b["name"] != "eager-fp64":
                by.setdefault(b["status"], []).append(b["name"])
        result.message = "; ".join(f"{status}: {', '.join(names)}" for status, names in by.items())
    return result


def step_verify_fp32(ctx: Context) -> StepResult:
    """lfm-verify, GPU backends, on the fp32 export."""
    return _verify(ctx, "verify-fp32", ctx.fp32_dir)


def step_verify_int8(ctx: Context) -> StepResult:
    """lfm-verify, GPU backends, on the int8 export."""
    return _verify(ctx, "verify-int8", ctx.int8_dir)


def step_bench(ctx: Context) -> StepResult:
    """benchmarks/bench_latency.py on the fp32 export (engines reused from its engines/)."""
    result = StepResult("bench")
    prefix = ctx.out / "latency"
    argv = _python(str(ROOT / "benchmarks" / "bench_latency.py"), "--size", str(ctx.args.size),
                   "--artifacts", str(ctx.fp32_dir), "--backends", *BENCH_BACKENDS,
                   "--batch-sizes", *map(str, ctx.args.batch_sizes), "--warmup", str(ctx.args.warmup),
                   "--iters", str(ctx.args.iters), "--threads", str(os.cpu_count() or 2),
                   "--timeout", str(max(60, ctx.args.bench_timeout // 4)), "--out", str(prefix))
    proc = run_command(ctx, result, argv, ctx.args.bench_timeout, shown=shlex.join(["python", *argv[1:]]))
    _finish(ctx, result, proc)
    result.figures = bench_figures(prefix.with_suffix(".json"))
    if result.status == "ok":
        result.message = (f"{len(result.figures.get('cells', {}))} cells timed; skipped: "
                          f"{', '.join(result.figures.get('skipped', {})) or 'none'}")
    return result


STEPS = (
    Step("install", step_install),
    Step("checkpoint", step_checkpoint),
    Step("export-fp32", step_export_fp32, needs=("checkpoint",), group="exports"),
    Step("export-int8", step_export_int8, needs=("checkpoint",), group="exports"),
    Step("cuda", step_cuda, hardware=True),
    Step("tensorrt", step_tensorrt, hardware=True),
    Step("engines-fp32", step_engines_fp32, needs=("export-fp32", "cuda", "tensorrt")),
    Step("engines-fp16", step_engines_fp16, needs=("export-fp32", "cuda", "tensorrt")),
    Step("engines-int8", step_engines_int8, needs=("export-int8", "cuda", "tensorrt")),
    Step("verify-fp32", step_verify_fp32, needs=("export-fp32", "cuda")),
    Step("verify-int8", step_verify_int8, needs=("export-int8", "cuda")),
    Step("bench", step_bench, needs=("export-fp32", "cuda")),
)


# ----------------------------------------------------------------------------- figures
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _last_json(ctx: Context, result: StepResult) -> dict:
    try:
        lines = (ctx.out / result.log).read_text(encoding="utf-8").strip().splitlines()
        return json.loads(lines[-1])
    except (OSError, ValueError, IndexError):
        return {}


def _probe_python(code: str):
    """Run `code` in a fresh interpreter (after pip may have changed packages); its last stdout
    line as JSON, or None when it fails."""
    try:
        proc = subprocess.run(_python("-c", code), capture_output=True, text=True, timeout=120, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else True
    except ValueError:
        return True


def export_figures(export: Path) -> dict:
    """Size, precision, graphs and, for reduced precision, the gate's verdict."""
    m = _read_json(export / "manifest.json") or {}
    precision = m.get("precision") or {"name": "fp32"}
    figures = {"image_size": m.get("image_size"), "precision": precision.get("name"),
               "graphs": {g: e.get("file") for g, e in (m.get("graphs") or {}).items()}}
    gate = precision.get("gate") or {}
    if gate:
        figures["gate_passed"] = gate.get("passed")
        figures["gate_agreement"] = [r.get("agreement") for r in gate.get("runs", [])]
    share = (precision.get("details") or {}).get("float_share")
    if share is not None:
        figures["int8_float_share"] = share
    return figures


def engine_figures(export: Path, precision: str) -> dict:
    out = {}
    for side in sorted((export / "engines").glob(f"*.{precision}.plan.json")):
        s = _read_json(side) or {}
        plan = side.with_name(side.name[: -len(".json")])
        out[s.get("graph") or plan.name] = {
            "engine": plan.name, "mb": round(plan.stat().st_size / 2**20, 1) if plan.is_file() else None,
            "build_s": s.get("build_seconds"), "typing": s.get("typing"), "tensorrt": s.get("tensorrt_version"),
            "gpu": (s.get("gpu") or {}).get("name")}
    return out


def verify_figures(path: Path) -> dict:
    data = _read_json(path)
    if not data:
        return {}
    rows = []
    for b in data.get("backends", []):
        outs = {o.get("output"): o.get("value") for o in b.get("outputs", []) if o.get("output")}
        rows.append({"name": b.get("name"), "status": b.get("status"), "mean_ms": b.get("mean_ms"),
                     "miou_delta": b.get("miou_delta"), "outputs": outs, "reason": (b.get("reason") or "")[:300]})
    return {"passed": data.get("passed"), "backends": rows}


def bench_figures(path: Path) -> dict:
    data = _read_json(path)
    if not data:
        return {}
    cells = {f"{b} b{batch}": {"p50_ms": round(s["p50_ms"], 2), "p90_ms": round(s["p90_ms"], 2),
                               "images_per_s": round(s["images_per_s"], 2)}
             for b, per in data.get("backends", {}).items() for batch, s in per.items()}
    return {"cells": cells, "skipped": data.get("skipped", {}), "ratios": data.get("ratios", {})}


# ----------------------------------------------------------------------------- driver
def machine() -> dict:
    return {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "executable": sys.executable}


def write_report(ctx: Context, state: dict) -> None:
    """gpu_report.json + gpu_report.md (rewritten after every step)."""
    steps = [ctx.results.get(s.name) or StepResult(s.name) for s in STEPS]
    data = {**state, "steps": [asdict(r) for r in steps]}
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / REPORT_JSON).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    (ctx.out / REPORT_MD).write_text(markdown(data), encoding="utf-8")


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(data: dict) -> str:
    lines = [f"# GPU check ({data['started']})", "",
             f"`{data['command']}` - {data['verdict']}", "",
             f"{data['machine']['platform']}, {data['machine']['cpus']} CPUs, Python {data['machine']['python']}; "
             f"size {data['size']} px; {data['seconds']:.0f} s of a {data['budget_s']} s budget.", "",
             "| step | status | time | details |", "|---|---|---|---|"]
    for s in data["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} s | {_cell(s['message'])} |")
    steps = {s["name"]: s for s in data["steps"]}
    exports = [(n, steps[n]["figures"]) for n in ("export-fp32", "export-int8") if steps[n]["figures"]]
    if exports:
        lines += ["", "## Exports", "", "| export | precision | size | gate | int8 float share |", "|---|---|---|---|---|"]
        for n, f in exports:
            gate = "-" if "gate_passed" not in f else (
                f"{'passed' if f['gate_passed'] else 'FAILED'} (agreement {', '.join(f'{a:.4f}' for a in f['gate_agreement'] if a is not None)})")
            lines.append(f"| {n} | {f.get('precision')} | {f.get('image_size')} | {gate} | {f.get('int8_float_share', '-')} |")
    engines = [(n, g, e) for n in ("engines-fp32", "engines-fp16", "engines-int8") for g, e in steps[n]["figures"].items()]
    if engines:
        lines += ["", "## Engines", "", "| step | graph | MB | build s | typing | TensorRT | GPU |", "|---|---|---|---|---|---|---|"]
        for n, g, e in engines:
            lines.append(f"| {n} | {g} | {e['mb']} | {e['build_s']} | {e['typing']} | {e['tensorrt']} | {e['gpu']} |")
    for n in ("verify-fp32", "verify-int8"):
        f = steps[n]["figures"]
        if f.get("backends"):
            lines += ["", f"## {n}", "", "| backend | status | mean ms | mIoU delta | outputs | reason |",
                      "|---|---|---|---|---|---|"]
            for b in f["backends"]:
                outs = ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in b["outputs"].items())
                ms = "-" if b["mean_ms"] is None else f"{b['mean_ms']:.1f}"
                miou = "-" if b["miou_delta"] is None else f"{b['miou_delta']:+.4f}"
                lines.append(f"| {b['name']} | {b['status']} | {ms} | {miou} | {_cell(outs)} | {_cell(b['reason'])} |")
            if f.get("note"):
                lines.append(f"\n{f['note']}")
    bench = steps["bench"]["figures"]
    if bench.get("cells"):
        lines += ["", "## Latency (bench_latency.py)", "", "| backend, batch | p50 ms | p90 ms | images/s |", "|---|---|---|---|"]
        for k, c in bench["cells"].items():
            lines.append(f"| {k} | {c['p50_ms']} | {c['p90_ms']} | {c['images_per_s']} |")
        for k, why in bench.get("skipped", {}).items():
            lines.append(f"| {k} | skipped: {_cell(why)[:200]} | | |")
    return "\n".join(lines) + "\n"


def _blocked(ctx: Context, step: Step) -> str | None:
    bad = [n for n in step.needs if ctx.results.get(n) and ctx.results[n].status != "ok"]
    if bad:
        return "skipped: needs " + ", ".join(f"{n} ({ctx.results[n].status})" for n in bad)
    return None


def _run_step(ctx: Context, step: Step) -> StepResult:
    why = _blocked(ctx, step)
    if why:
        progress(f"{step.name}: {why}")
        return StepResult(step.name, "skipped", message=why[len("skipped: "):])
    if ctx.left() <= 5:
        return StepResult(step.name, "not run", message=f"the {ctx.args.budget} s time budget is spent")
    progress(f"{step.name}: running")
    t0 = time.monotonic()
    try:
        result = step.run(ctx)
    except Exception as exc:  # a bug in this script: report it, keep going
        result = StepResult(step.name, "failed", message=f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.monotonic() - t0, 1)
    progress(f"{step.name}: {result.status} ({result.seconds:.0f} s){' - ' + result.message if result.message else ''}")
    return result


def run(args: argparse.Namespace, out: Path) -> int:
    ctx = Context(args, out, time.monotonic() + args.budget)
    t0 = time.monotonic()
    state = {"started": _dt.datetime.now().isoformat(timespec="seconds"), "command": shlex.join(["python", *sys.argv]),
             "dry_run": args.dry_run, "size": args.size, "budget_s": args.budget, "machine": machine(),
             "verdict": "running", "stopped_at": None, "exit_code": None, "seconds": 0.0}
    index, code = 0, EXIT_OK
    while index < len(STEPS):
        step = STEPS[index]
        batch = [step]
        while step.group and index + len(batch) < len(STEPS) and STEPS[index + len(batch)].group == step.group:
            batch.append(STEPS[index + len(batch)])
        if args.dry_run and step.hardware is False and _needs_hardware(step):
            # A dry run reached a GPU step with CUDA and TensorRT present: stop before it.
            state["stopped_at"] = step.name
            state["verdict"] = (f"dry run: CUDA and TensorRT are available; stopped before {step.name} (the first "
                                "step that uses them); run without --dry-run for the full check")
            break
        if len(batch) == 1:
            ctx.results[step.name] = _run_step(ctx, step)
        else:
            with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
                for s, r in zip(batch, pool.map(lambda s: _run_step(ctx, s), batch)):
                    ctx.results[s.name] = r
        index += len(batch)
        state["seconds"] = round(time.monotonic() - t0, 1)
        write_report(ctx, state)
        if args.dry_run and step.hardware and ctx.results[step.name].status != "ok":
            state["stopped_at"] = step.name
            state["verdict"] = (f"dry run stopped at step '{step.name}' (the first that needs CUDA or TensorRT): "
                                f"{ctx.results[step.name].message}")
            failed = [n for n, r in ctx.results.items() if r.status == "failed" and n != step.name]
            if failed:
                state["verdict"] += f"; before it, FAILED: {', '.join(failed)}"
            code = EXIT_NO_GPU
            break
    for s in STEPS:
        if s.name not in ctx.results:
            why = (f"dry run stopped at {state['stopped_at']}" if state["stopped_at"] else "not reached")
            ctx.results[s.name] = StepResult(s.name, "not run", message=why)
    if code == EXIT_OK and not args.dry_run:
        failed = [n for n, r in ctx.results.items() if r.status in ("failed", "not run")]
        code = EXIT_FAILED if failed else EXIT_OK
        state["verdict"] = ("FAILED: " + ", ".join(failed)) if failed else "all steps passed"
    elif code == EXIT_OK:
        failed = [n for n, r in ctx.results.items() if r.status == "failed"]
        if failed:
            code, state["verdict"] = EXIT_FAILED, "dry run: FAILED: " + ", ".join(failed)
    state["exit_code"] = code
    state["seconds"] = round(time.monotonic() - t0, 1)
    write_report(ctx, state)
    progress(state["verdict"])
    ran = [n for n, r in ctx.results.items() if r.status == "ok"]
    progress(f"ran: {', '.join(ran) or 'nothing'}; report: {out / REPORT_MD}")
    return code


def _needs_hardware(step: Step) -> bool:
    """Whether a step uses the GPU (it needs one of the hardware checks)."""
    hardware = {s.name for s in STEPS if s.hardware}
    return bool(hardware & set(step.needs))


# ----------------------------------------------------------------------------- worker
def worker(spec: dict) -> None:
    """Subprocess side of the checkpoint and export steps (prints one JSON line)."""
    sys.path.insert(0, str(ROOT))
    from lfm_deploy.errors import LFMError

    try:
        _work(spec)
    except LFMError as exc:  # a user-facing failure (e.g. the int8 gate refused the export): one line
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _work(spec: dict) -> None:
    if spec["task"] == "checkpoint":
        from lfm_deploy.parity.testing import make_mixed_checkpoint

        info = make_mixed_checkpoint(spec["path"], image_size=int(spec["size"]))
        print(json.dumps({"foreground": info.get("foreground")} if isinstance(info, dict) else {}))
    elif spec["task"] == "export":
        import torch

        from lfm_deploy.export.pipeline import export_domain

        torch.set_num_threads(int(spec["threads"]))
        kwargs = ({"gate_episodes": int(spec["gate_episodes"]),
                   "calibration_episodes": int(spec.get("calibration_episodes", 8))}
                  if spec["precision"] != "fp32" else {})
        result = export_domain("deepglobe", out=spec["out"], checkpoint=spec["checkpoint"], image_size=int(spec["size"]),
                               precision=spec["precision"], threads=int(spec["threads"]), progress=False, **kwargs)
        print(json.dumps({"passed": bool(result.passed), "out": str(result.out_dir)}))
    else:
        raise SystemExit(f"unknown worker task {spec['task']!r}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default results/gpu-<date>-<time>, a new folder per run)")
    parser.add_argument("--size", type=int, default=400, help="image size of the test exports (px)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no pip installs; run the steps that need no GPU, stop at the first that does")
    parser.add_argument("--skip-install", action="store_true", help="use the installed packages as they are")
    parser.add_argument("--pip-args", default="", help="extra pip install arguments, e.g. an --extra-index-url")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="seconds for the whole run")
    parser.add_argument("--episodes", type=int, default=3, help="lfm-verify episodes")
    parser.add_argument("--gate-episodes", type=int, default=3, help="int8 export: accuracy-gate episodes")
    parser.add_argument("--calibration-episodes", type=int, default=8,
                        help="int8 export: calibration (and held-out selection) episodes")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="bench batch sizes")
    parser.add_argument("--warmup", type=int, default=1, help="bench untimed runs per cell")
    parser.add_argument("--iters", type=int, default=5, help="bench timed runs per cell")
    parser.add_argument("--install-timeout", type=int, default=420)
    parser.add_argument("--export-timeout", type=int, default=420)
    parser.add_argument("--engine-timeout", type=int, default=300)
    parser.add_argument("--verify-timeout", type=int, default=300)
    parser.add_argument("--bench-timeout", type=int, default=300)
    args = parser.parse_args(argv)
    if not args.worker:
        if args.size < 32 or args.budget < 30 or args.episodes < 1 or args.gate_episodes < 1 or args.iters < 1 \
                or args.calibration_episodes < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
            parser.error("--size must be >= 32, --budget >= 30, --episodes/--gate-episodes/--calibration-episodes/"
                         "--iters/batch sizes >= 1, --warmup >= 0")
    return args


def prepare_out(out: Path | None) -> Path:
    """The report folder: new or empty. Nothing in it is ever deleted (an earlier run's files
    included): the default name carries the time, so each run gets its own."""
    out = out or ROOT / "results" / f"gpu-{_dt.datetime.now().strftime('%Y-%m-%d-%H%M%S')}"
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"gpu_check: error: --out {out} exists and is not empty; pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    out = prepare_out(args.out)
    progress(f"{'dry run' if args.dry_run else 'GPU check'} at {args.size} px into {out}")
    return run(args, out)


if __name__ == "__main__":
    sys.exit(main())
