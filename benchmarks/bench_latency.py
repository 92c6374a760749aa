"""Latency suite: eager PyTorch vs onnxruntime (both lowerings, episode and split paths) vs TensorRT.

One runner interface for every backend (`lfm_deploy.parity.runners`: Polygraphy `BaseRunner`s,
the same ones lfm-verify uses):

* ``eager``         eager PyTorch K-shot episode (`torch.set_num_threads(--threads)`), the baseline;
* ``ort-matmul``    onnxruntime CPU, episode graph, DFT-as-matmul lowering;
* ``ort-dft``       onnxruntime CPU, episode graph, ONNX DFT lowering;
* ``ort-split``     onnxruntime CPU, encoder -> head with the support set encoded once
                    (per-query cost of a deployment with a fixed support set);
* ``trt-fp32`` / ``trt-fp16``  TensorRT engines (built into the matmul export if missing;
                    skipped with the reason where TensorRT or a GPU is missing);
* ``masker``        one APM-M block, ONNX DFT vs matmul (delegates to bench_masker.py).

Each (backend, batch size) runs in its own subprocess: peak memory is that process's
high-water mark (VmHWM), and no backend's spinning worker threads slow another down. The same inputs
everywhere: B different query images against one support set. The exports (400x400 by
default) are made once into `artifacts/bench-deepglobe-<size>[-dft]` and reused.

Writes <out>.json (everything: samples, percentiles, machine, versions), <out>.md (the
README's performance table) and <out>.png (chart). Reproduce the README table with:

    python benchmarks/bench_latency.py --warmup 1 --iters 5 --batch-sizes 1 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfm_deploy.cli import FiniteFloat  # noqa: E402  (after the path set-up above)
from lfm_deploy.utils.versions import describe_cpu  # noqa: E402

#: Targets from the issue.
TARGET_ORT_RATIO = 0.7  # best onnxruntime episode path / eager episode, batch 1
TARGET_SPLIT_RATIO = 0.5  # split path per query (support cached) / eager episode, batch 1
TARGET_MASKER_SPEEDUP = 10.0  # APM block: ONNX DFT time / matmul time
BACKENDS = ("eager", "ort-matmul", "ort-dft", "ort-split", "trt-fp32", "trt-fp16", "masker")

log = logging.getLogger("bench_latency")


# ----------------------------------------------------------------------------- worker side
def _inputs(manifest, batch: int, seed: int = 0) -> dict:
    """B different queries against one support set (repeated per row for the episode graphs)."""
    from lfm_deploy.domains import get_domain
    from lfm_deploy.parity.episodes import validation_episode

    dom = get_domain(manifest.domain)
    size, shots = manifest.image_size, manifest.shots
    io = manifest.io("episode")
    base = validation_episode(dom, shots, batch=1, seed=seed, image_size=size)
    queries = validation_episode(dom, shots, batch=batch, seed=seed + 1, image_size=size)[io.input("query")]
    return io.feed(query=queries, supports=np.repeat(base[io.input("supports")], batch, axis=0),
                   masks=np.repeat(base[io.input("masks")], batch, axis=0))


def _runner(spec: dict, manifest):
    from lfm_deploy.parity.runners import EagerRunner, ModelFromManifest, SplitRunner
    from lfm_deploy.runtime.backends import get_backend
    from lfm_deploy.runtime.sessions import SessionConfig, SessionFromOnnx

    kind, art, threads = spec["backend"], Path(spec["artifacts"]), spec["threads"]
    graphs = manifest.graphs
    if kind == "eager":
        return EagerRunner(ModelFromManifest(manifest), "episode", shots=manifest.shots, threads=threads, name=kind)
    if kind in ("ort-matmul", "ort-dft"):
        return get_backend("ort-cpu").runner(art / graphs["episode"].file, threads=threads, name=kind)
    if kind == "ort-split":
        config = SessionConfig(threads=threads, low_memory=False)
        return SplitRunner(SessionFromOnnx(art / graphs["encoder"].file, config=config),
                           SessionFromOnnx(art / graphs["head"].file, config=config), graphs, manifest.shots,
                           name=kind)
    if kind in ("trt-fp32", "trt-fp16"):
        from polygraphy.backend.trt import TrtRunner

        from lfm_deploy.tensorrt.engines import EngineFromPlan, engine_path

        return TrtRunner(EngineFromPlan(engine_path(art, "episode", kind.split("-")[1])), name=kind)
    raise ValueError(kind)


def _peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MB.

    VmHWM from /proc on Linux: `ru_maxrss` survives exec, so a worker started by a driver that
    grew large (e.g. after exporting) would report the driver's peak. `ru_maxrss` elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(spec: dict) -> dict:
    """Time one backend at one batch size in this process; returns a JSON-ready dict."""
    logging.getLogger("lfm_deploy").setLevel(logging.ERROR)
    from lfm_deploy.manifest import read_manifest

    t0 = time.perf_counter()
    rss0 = _peak_rss_mb()
    if spec["backend"] == "masker":
        import bench_masker

        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        r = bench_masker.run(spec["warmup"], spec["iters"], spec["threads"], "dynamo", 0)
        return {"masker": r, "peak_rss_mb": _peak_rss_mb()}
    manifest = read_manifest(spec["artifacts"], verify_files=False)
    feed = _inputs(manifest, spec["batch"])
    runner = _runner(spec, manifest)
    samples = []
    with runner:
        setup_s = time.perf_counter() - t0
        setup_rss = _peak_rss_mb()
        # One untimed call at least: the split path encodes its support set there.
        for _ in range(max(spec["warmup"], 1 if spec["backend"] == "ort-split" else 0)):
            runner.infer(feed, check_inputs=False)
        for _ in range(spec["iters"]):
            start = time.perf_counter()
            runner.infer(feed, check_inputs=False)
            samples.append(time.perf_counter() - start)
    return {"samples_s": samples, "setup_s": setup_s, "rss_at_start_mb": rss0, "rss_after_setup_mb": setup_rss,
            "peak_rss_mb": _peak_rss_mb()}


# ----------------------------------------------------------------------------- driver side
def _machine(threads: int) -> dict:
    from lfm_deploy.utils.versions import machine

    return machine(threads)


def _versions() -> dict:
    from lfm_deploy.utils.versions import library_versions

    return library_versions()


def _ensure_export(path: Path, size: int, lowering: str) -> Path:
    from lfm_deploy.manifest import MANIFEST_NAME

    if not (path / MANIFEST_NAME).is_file():
        from lfm_deploy.export.pipeline import export_domain

        log.warning("no export at %s: exporting deepglobe %dx%d 1-shot, %s lowering (minutes, once)", path, size, size,
                    lowering)
        export_domain("deepglobe", out=path, shots=1, image_size=size, lowering=lowering,
                      split=lowering == "matmul", progress=False)
    return path


def _trt_skip(precision: str, art: Path, max_batch: int) -> str | None:
    """None when a TensorRT engine of `precision` is ready in `art` (built if needed), else why not."""
    from lfm_deploy.errors import LFMError
    from lfm_deploy.tensorrt.engines import EngineFromPlan, build_engines, engine_path

    try:
        path = engine_path(art, "episode", precision)
        if not path.is_file():
            build_engines(art, precision=precision, graphs=["episode"], max_batch=max_batch)
        EngineFromPlan(path).check()
    except LFMError as exc:
        return str(exc)
    return None


def _stats(samples: list[float], batch: int) -> dict:
    ms = np.asarray(samples) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {"n": int(ms.size), "p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "per_image_ms": p50 / batch, "images_per_s": 1e3 * batch / p50}


def _busy_percent(seconds: float = 2.0) -> float | None:
    """System-wide CPU use over `seconds` while this benchmark runs nothing (other tenants)."""
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.cpu_percent(interval=seconds))


def _wait_quiet(max_busy: float | None, max_wait: float) -> float | None:
    """Wait (up to `max_wait` s) until other processes use less than `max_busy` % of the CPUs.

    On a shared machine a cell timed while another tenant computes measures the contention,
    not the backend (OpenMP and onnxruntime workers spin at barriers); returns the busy % seen.
    """
    busy = _busy_percent()
    if max_busy is None or busy is None:
        return busy
    deadline = time.monotonic() + max_wait
    while busy > max_busy and time.monotonic() < deadline:
        log.info("  machine busy (%.0f%% CPU used by other processes); waiting", busy)
        time.sleep(5.0)
        busy = _busy_percent()
    return busy


def _spawn(spec: dict, timeout: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    size = args.size
    arts = {"matmul": _ensure_export(args.artifacts or ROOT / "artifacts" / f"bench-deepglobe-{size}", size, "matmul")}
    if "ort-dft" in args.backends:
        arts["dft"] = _ensure_export(args.artifacts_dft or ROOT / "artifacts" / f"bench-deepglobe-{size}-dft", size, "dft")
    load_start = os.getloadavg()
    results: dict = {"size": size, "warmup": args.warmup, "iters": args.iters, "threads": args.threads,
                     "batch_sizes": args.batch_sizes, "artifacts": {k: str(v) for k, v in arts.items()},
                     "backends": {}, "skipped": {}}
    for backend in args.backends:
        if backend == "masker":
            continue
        skip = None
        if backend.startswith("trt-"):
            skip = _trt_skip(backend.split("-")[1], arts["matmul"], max(args.batch_sizes))
        if skip:
            log.warning("skipping %s: %s", backend, skip)
            results["skipped"][backend] = skip
            continue
        art = arts["dft" if backend == "ort-dft" else "matmul"]
        for batch in args.batch_sizes:
            spec = {"backend": backend, "artifacts": str(art), "batch": batch, "threads": args.threads,
                    "warmup": args.warmup, "iters": args.iters}
            log.info("%s, batch %d ...", backend, batch)
            busy = _wait_quiet(args.max_busy, args.max_wait)
            load = os.getloadavg()[0]
            try:
                out = _spawn(spec, args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.error("%s batch %d failed: %s", backend, batch, exc)
                results["skipped"][f"{backend} (batch {batch})"] = f"failed: {str(exc)[-500:]}"
                continue
            entry = {**_stats(out["samples_s"], batch), "peak_rss_mb": out["peak_rss_mb"],
                     "rss_after_setup_mb": out["rss_after_setup_mb"], "setup_s": out["setup_s"],
                     "samples_ms": [s * 1e3 for s in out["samples_s"]],
                     "cpu_busy_before_percent": busy, "load_before": load, "load_after": os.getloadavg()[0]}
            results["backends"].setdefault(backend, {})[str(batch)] = entry
            log.info("  p50 %.0f ms, p90 %.0f ms, %.2f images/s, peak RSS %.0f MB", entry["p50_ms"], entry["p90_ms"],
                     entry["images_per_s"], entry["peak_rss_mb"])
    if "masker" in args.backends:
        log.info("masker block (bench_masker.py) ...")
        _wait_quiet(args.max_busy, args.max_wait)
        try:
            out = _spawn({"backend": "masker", "warmup": max(args.warmup, 2), "iters": args.masker_iters,
                          "threads": args.threads}, args.timeout)
            results["masker"] = out["masker"]
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            results["skipped"]["masker"] = f"failed: {str(exc)[-500:]}"
    results["ratios"] = _ratios(results)
    results["targets"] = _targets(results)
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    results["machine"] = _machine(args.threads)
    results["versions"] = _versions()
    return results


def _ratios(results: dict) -> dict:
    """p50 of every backend / p50 of the eager episode, per batch size."""
    eager = results["backends"].get("eager", {})
    out = {}
    for backend, per_batch in results["backends"].items():
        for batch, s in per_batch.items():
            if batch in eager:
                out.setdefault(backend, {})[batch] = s["p50_ms"] / eager[batch]["p50_ms"]
    return out


def _targets(results: dict) -> dict:
    r = results["ratios"]
    t = {}
    ort = [r[b]["1"] for b in ("ort-matmul", "ort-dft") if "1" in r.get(b, {})]
    if ort:
        t["best_ort_episode_vs_eager"] = {"value": min(ort), "target": f"<= {TARGET_ORT_RATIO}",
                                          "met": min(ort) <= TARGET_ORT_RATIO}
    if "1" in r.get("ort-split", {}):
        v = r["ort-split"]["1"]
        t["split_per_query_vs_eager"] = {"value": v, "target": f"<= {TARGET_SPLIT_RATIO}", "met": v <= TARGET_SPLIT_RATIO}
    if "masker" in results:
        v = results["masker"]["ratio_dft_over_matmul_p50"]
        t["masker_matmul_speedup_over_dft"] = {"value": v, "target": f">= {TARGET_MASKER_SPEEDUP}",
                                               "met": v >= TARGET_MASKER_SPEEDUP}
    return t


_LABELS = {
    "eager": "eager PyTorch, episode",
    "ort-matmul": "onnxruntime, episode graph (matmul lowering)",
    "ort-dft": "onnxruntime, episode graph (ONNX DFT lowering)",
    "ort-split": "onnxruntime, encoder/head, support cached (per query)",
    "trt-fp32": "TensorRT fp32, episode",
    "trt-fp16": "TensorRT fp16, episode",
}


def markdown(results: dict, command: str) -> str:
    """The README performance table (and the targets) as Markdown."""
    m, v = results["machine"], results["versions"]
    lines = [
        f"Measured with `{command}`",
        f"({results['size']}x{results['size']}, 1-shot, {results['threads']} threads, {results['warmup']} warm-up + "
        f"{results['iters']} timed runs per cell; {describe_cpu(m)}, {m.get('logical_cpus')} logical CPUs; "
        f"torch {v['torch']}, onnxruntime {v['onnxruntime']}; load average {results['load_average']['start'][0]:.1f} -> "
        f"{results['load_average']['end'][0]:.1f}).",
        "",
        "| backend | batch | p50 ms | p90 ms | p99 ms | min ms | ms / image | images/s | x eager (p50) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, per_batch in results["backends"].items():
        for batch, s in per_batch.items():
            ratio = results["ratios"].get(backend, {}).get(batch)
            lines.append(f"| {_LABELS.get(backend, backend)} | {batch} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | "
                         f"{s['p99_ms']:.0f} | {s['min_ms']:.0f} | {s['per_image_ms']:.0f} | {s['images_per_s']:.2f} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} | {s['peak_rss_mb']:.0f} |")
    for name, why in results["skipped"].items():
        lines.append(f"| {_LABELS.get(name, name)} | - | skipped: {why.replace('|', '/')} | | | | | | | |")
    if "masker" in results:
        mk = results["masker"]["results"]
        lines += ["", "APM-M block (1, 2048, 13, 13), onnxruntime: ONNX DFT "
                  f"{mk['ort_dft']['p50_ms']:.1f} ms vs matmul {mk['ort_matmul']['p50_ms']:.2f} ms p50 "
                  f"({results['masker']['ratio_dft_over_matmul_p50']:.1f}x); eager torch.fft "
                  f"{mk['eager_torch_fft']['p50_ms']:.2f} ms."]
    if results["targets"]:
        lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
        for name, t in results["targets"].items():
            lines.append(f"| {name.replace('_', ' ')} | {t['value']:.2f} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Bar chart: p50 latency per image for every backend and batch size (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    backends = list(results["backends"])
    batches = [str(b) for b in results["batch_sizes"]]
    width = 0.8 / max(len(batches), 1)
    for j, batch in enumerate(batches):
        vals = [results["backends"][b].get(batch, {}).get("per_image_ms", np.nan) for b in backends]
        bars = ax.bar(np.arange(len(backends)) + j * width, vals, width, label=f"batch {batch}")
        for bar, b in zip(bars, backends):
            ratio = results["ratios"].get(b, {}).get(batch)
            if ratio is not None and np.isfinite(bar.get_height()):
                ax.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(backends)) + width * (len(batches) - 1) / 2, backends)
    ax.set_ylabel("p50 ms per image")
    ax.set_title(f"{results['size']}x{results['size']} 1-shot, {results['threads']} threads "
                 f"(labels: latency / eager episode at the same batch)")
    ax.set_xlabel(f"skipped: {', '.join(results['skipped']) or 'none'}", fontsize=8)
    ax.legend()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=400, help="image size of the exports")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="matmul export (default artifacts/bench-deepglobe-<size>, exported if missing)")
    parser.add_argument("--artifacts-dft", type=Path, default=None,
                        help="dft export (default artifacts/bench-deepglobe-<size>-dft, exported if missing)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per cell")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per cell")
    parser.add_argument("--masker-iters", type=int, default=20, help="timed runs of the APM block")
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime intra-op threads")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell before giving up")
    parser.add_argument("--max-busy", type=FiniteFloat(min=0, max=100).argparse_type(), default=None,
                        help="shared machines: before each cell wait until other processes use less than this "
                             "%% of the CPUs (needs psutil)")
    parser.add_argument("--max-wait", type=FiniteFloat(min=0).argparse_type(), default=300,
                        help="longest wait for --max-busy, per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency",
                        help="output prefix: <out>.json, <out>.md, <out>.png")
    parser.add_argument("--overwrite", action="store_true", help="replace result files not written by a benchmark")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return None
    if args.warmup < 0 or args.iters < 1 or args.threads < 1 or min(args.batch_sizes) < 1:
        parser.error("--warmup must be >= 0; --iters, --threads and batch sizes >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lfm_deploy").setLevel(logging.WARNING)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import results_dir

    try:  # the result files are checked before the benchmark runs
        out, names = results_dir(args.out, (".json", ".md", ".png"), overwrite=args.overwrite)
    except LFMError as exc:
        parser.error(exc.cli_message())
    t0 = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - t0
    command = "python benchmarks/bench_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = command.strip()
    json_path = out.write_json(names[".json"], results)
    md_path = out.write_text(names[".md"], markdown(results, results["command"]))
    png_path = out.write(names[".png"], lambda tmp: plot(results, tmp))
    log.info("\n%s", md_path.read_text())
    log.info("wrote %s, %s, %s (%.0f s)", json_path, md_path, png_path, results["seconds"])
    return results


if __name__ == "__main__":
    main()
