"""Benchmark the Ray paths against the local runtime, side by side in one run.

Batch (`lfm-predict --engine ray`, `lfm_deploy.serving.ray_batch`): images/s over the same
collection of query files (read from disk, segmented, mask PNG written; no overlays) for

* the local `Segmenter` loop (what `lfm-predict` does) at each `--batch-sizes`, `--threads`;
* Ray Data with 1 worker (`--threads` threads) and 2 workers (`--threads / 2` threads each,
  so the cores are not oversubscribed), at the local loop's best batch size.

Each is reported end to end (model load and support encoding included; for Ray also the
workers' start-up, the cluster being up already) and in steady state: images after the first
batch over the time from the first to the last batch (from the workers' own timestamps; with
two workers the second one's start-up falls in that window, which is the engine's cost too;
the local loop likewise).

Online (`lfm-serve`, `lfm_deploy.serving.ray_serve`): one replica (`--threads` threads, dynamic
batches of up to `--max-batch`) on loopback, closed-loop HTTP clients (1, 4, 16 by default),
each sending the next request when the last one is answered, a bounded number of requests per
level: p50/p99 latency and requests/s. Baselines, on the same image bytes in this process: the
one-client requests alternate with direct `Segmenter.predict` calls (both see the same load),
and the local `Segmenter` at batch `--max-batch` runs right before the top client level.

    python benchmarks/bench_ray.py --artifacts artifacts/bench-ray --images 40 --threads 2

Results: `<out>.json` and `<out>.md` (default `benchmarks/results/ray`).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Runnable from a checkout without installing the package.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfm_deploy.cli import FiniteFloat  # noqa: E402  (after the path set-up above)
from lfm_deploy.utils.versions import describe_cpu, machine  # noqa: E402

#: Targets from issue 14 (ratios within one run).
TARGET_BATCH_RATIO = 0.9  # Ray Data images/s / local Segmenter at its best batch size
TARGET_SERVE_P50_RATIO = 1.2  # Serve p50 with one client / a direct predict call
TARGET_SERVE_THROUGHPUT_RATIO = 0.9  # Serve requests/s with 16 clients / local Segmenter at batch 8

log = logging.getLogger("bench_ray")


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": describe_cpu(machine())}
    versions = {}
    for name in ("ray", "onnxruntime", "numpy", "PIL", "httpx"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed: reported as missing
            versions[name] = None
    info["versions"] = versions
    return info


def _make_inputs(root: Path, n: int, size: int):
    """n distinct synthetic JPEG queries of the model size, and one support pair."""
    from lfm_deploy.data.synthetic import synthetic_pair

    qdir = root / "queries"
    qdir.mkdir()
    for i in range(n):
        synthetic_pair(size, 0, 0, 100 + i)[0].save(qdir / f"q{i:04d}.jpg", quality=92)
    img, mask = synthetic_pair(size, 0, 0, 1)
    img.save(root / "support.jpg", quality=95)
    mask.save(root / "support_mask.png")
    return sorted(qdir.iterdir()), str(root / "support.jpg"), str(root / "support_mask.png")


def wait_quiet(max_busy: float | None, max_wait: float) -> dict:
    """On a shared machine: wait until the CPUs are less than `max_busy` % busy (up to `max_wait` s).

    A cell timed while another job computes measures the contention (onnxruntime's workers spin
    at barriers), not the engine; the busy share and load before each cell go into the results.
    """
    import psutil

    t0 = time.monotonic()
    busy = psutil.cpu_percent(interval=1.0)
    while max_busy is not None and busy >= max_busy and time.monotonic() - t0 < max_wait:
        busy = psutil.cpu_percent(interval=2.0)
    return {"cpu_busy_before_percent": busy, "waited_s": time.monotonic() - t0, "load_before": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- batch
def bench_local(artifacts, files, support, batch_size: int, threads: int, out: Path) -> dict:
    """The local lfm-predict loop: Segmenter.predict over the files, one mask PNG each."""
    from lfm_deploy.runtime import Segmenter
    from lfm_deploy.serving.codec import mask_png

    t0 = time.perf_counter()
    seg = Segmenter.from_artifacts(artifacts, threads=threads, batch_size=batch_size)
    seg.set_support([support[0]], [support[1]])
    out.mkdir(parents=True)
    t_ready = time.perf_counter()
    first = None
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        for path, mask in zip(chunk, seg.predict([str(f) for f in chunk])):
            (out / f"{path.stem}_mask.png").write_bytes(mask_png(mask))
        first = first or time.perf_counter()
    end = time.perf_counter()
    n = len(files)
    steady_n = n - min(batch_size, n)
    return {"engine": "local Segmenter", "workers": 1, "threads": threads, "batch_size": batch_size, "images": n,
            "startup_s": t_ready - t0, "seconds": end - t0,
            "images_per_s": n / (end - t0), "loop_images_per_s": n / (end - t_ready),
            "steady_images_per_s": steady_n / (end - first) if steady_n else None}


def bench_ray_data(artifacts, files, support, batch_size: int, workers: int, threads: int, out: Path) -> dict:
    from lfm_deploy.serving.ray_batch import segment_collection

    t0 = time.perf_counter()
    report = segment_collection(artifacts, [support[0]], [support[1]], [str(f) for f in files], out,
                                workers=workers, threads=threads, batch_size=batch_size, overlay=False,
                                progress=False)
    end = time.perf_counter()
    if report.failed or report.succeeded != len(files):
        raise RuntimeError(f"the Ray Data job failed on {report.failed} image(s): {report.errors()[:3]}")
    n = len(files)
    return {"engine": "Ray Data", "workers": workers, "threads": threads, "batch_size": batch_size, "images": n,
            "startup_s": report.first_result_s, "seconds": end - t0, "images_per_s": n / (end - t0),
            "steady_images_per_s": report.steady_images_per_s}


# ----------------------------------------------------------------------------- serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _direct_segmenter(artifacts, support, threads: int, batch_size: int = 8):
    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts(artifacts, threads=threads, batch_size=batch_size)
    seg.set_support([support[0]], [support[1]])
    return seg


def bench_paired(seg, url: str, body: bytes, iters: int) -> tuple[dict, dict]:
    """A direct `Segmenter.predict` call and one HTTP request, alternately, on the same bytes.

    Paired, so that both see the same machine load (the one-client latency target is a ratio).
    """
    import httpx

    direct, http_times = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        seg.predict(body)  # warm-up of both
        http.post("/predict", content=body)
        for _ in range(iters):
            t = time.perf_counter()
            seg.predict(body)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            resp = http.post("/predict", content=body)
            http_times.append(time.perf_counter() - t)
            if resp.status_code != 200:
                raise RuntimeError(f"POST /predict answered {resp.status_code}: {resp.text[:300]}")
    return ({"what": "direct Segmenter.predict (batch 1)", "requests": iters, "p50_ms": _pct(direct, 50),
             "p99_ms": _pct(direct, 99), "requests_per_s": iters / sum(direct)},
            {"clients": 1, "requests": iters, "errors": 0, "p50_ms": _pct(http_times, 50),
             "p99_ms": _pct(http_times, 99), "requests_per_s": iters / sum(http_times), "seconds": sum(http_times),
             "paired_with_direct": True})


def bench_local_reference(seg, body: bytes, n: int, batch_size: int) -> dict:
    """The local Segmenter on `n` copies of the request body at `batch_size` (decode included)."""
    seg.predict([body] * batch_size, batch_size=batch_size)  # warm-up
    t = time.perf_counter()
    seg.predict([body] * n, batch_size=batch_size)
    dt = time.perf_counter() - t
    return {"what": f"local Segmenter.predict, batch {batch_size}", "images": n, "batch_size": batch_size,
            "images_per_s": n / dt}


def bench_serve_level(url: str, body: bytes, clients: int, requests: int) -> dict:
    """Closed loop: `clients` threads, each sends its next request when the last is answered."""
    import httpx

    latencies, errors = [], []
    lock = threading.Lock()
    remaining = [requests]

    def client():
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                t = time.perf_counter()
                resp = http.post("/predict", content=body)
                dt = time.perf_counter() - t
                with lock:
                    (latencies if resp.status_code == 200 else errors).append(dt if resp.status_code == 200
                                                                              else resp.status_code)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": requests, "errors": len(errors), "p50_ms": _pct(latencies, 50),
            "p99_ms": _pct(latencies, 99), "requests_per_s": len(latencies) / wall, "seconds": wall}


# ----------------------------------------------------------------------------- report
def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _best(cells: list[dict], **match) -> dict:
    """The best round (highest steady throughput) of the cells matching `match`."""
    rows = [c for c in cells if all(c[k] == v for k, v in match.items())]
    return max(rows, key=lambda r: r["steady_images_per_s"] or r["images_per_s"])


def summarise(results: dict) -> list[dict]:
    batch = results["batch"]
    local = [_best(batch, engine="local Segmenter", batch_size=b) for b in sorted({r["batch_size"] for r in batch
                                                                                 if r["engine"] == "local Segmenter"})]
    best = max(local, key=lambda r: r["steady_images_per_s"])
    local8 = next((r for r in local if r["batch_size"] == 8), best)
    rays = [_best(batch, engine="Ray Data", workers=w) for w in sorted({r["workers"] for r in batch
                                                                        if r["engine"] == "Ray Data"})]
    best_ray = max(rays, key=lambda r: r["steady_images_per_s"] or 0)
    rows = []
    ratio = _ratio(best_ray["steady_images_per_s"], best["steady_images_per_s"])
    rows.append({"target": f"Ray Data ({best_ray['workers']} x {best_ray['threads']}, batch {best_ray['batch_size']}) "
                           f"images/s vs local Segmenter at its best batch size ({best['batch_size']}), steady state",
                 "measured": ratio, "goal": f">= {TARGET_BATCH_RATIO}",
                 "met": ratio is not None and ratio >= TARGET_BATCH_RATIO})
    ratio_e2e = _ratio(max(r["images_per_s"] for r in rays), max(r["images_per_s"] for r in local))
    rows.append({"target": f"the same, end to end over {best['images']} images (model load and support encoding "
                           "included, and for Ray the workers' start-up)", "measured": ratio_e2e,
                 "goal": "(informative)", "met": None})
    serve = results.get("serve")
    if serve:
        one = next(s for s in serve["levels"] if s["clients"] == 1)
        ratio = _ratio(one["p50_ms"], serve["direct"]["p50_ms"])
        rows.append({"target": "Serve p50 latency, one client, vs a direct predict call (alternating calls)",
                     "measured": ratio,
                     "goal": f"<= {TARGET_SERVE_P50_RATIO}",
                     "met": ratio is not None and ratio <= TARGET_SERVE_P50_RATIO})
        top = max(serve["levels"], key=lambda s: s["clients"])
        ref = serve.get("local_reference")
        base = ref["images_per_s"] if ref else local8["steady_images_per_s"]
        what = (f"local Segmenter at batch {ref['batch_size']} on the same bodies, measured just before" if ref
                else f"local Segmenter at batch {local8['batch_size']} (steady, batch cells)")
        ratio = _ratio(top["requests_per_s"], base)
        rows.append({"target": f"Serve requests/s with {top['clients']} clients vs {what}", "measured": ratio,
                     "goal": f">= {TARGET_SERVE_THROUGHPUT_RATIO}",
                     "met": ratio is not None and ratio >= TARGET_SERVE_THROUGHPUT_RATIO})
    return rows


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured with `{results['command']}` ({results['image_size']}x{results['image_size']}, 1-shot, "
             f"{m.get('cpu')}, {m['cpus']} CPUs; ray {m['versions'].get('ray')}, onnxruntime "
             f"{m['versions'].get('onnxruntime')}; load average {results['load_average']['start'][0]:.1f} -> "
             f"{results['load_average']['end'][0]:.1f}; {results['seconds']:.0f} s in all).", "",
             f"Batch: {results['rounds']} round(s) of every cell, interleaved; each cell waits for the CPUs to be "
             f"under {results['max_busy']} % busy (at most {results['max_wait']:.0f} s) and records the busy share "
             "it started at; the targets use each cell's best round.", "",
             "| batch engine | workers x threads | batch | round | images | CPU busy before % | start-up s | "
             "end-to-end images/s | steady images/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["batch"]:
        lines.append(f"| {r['engine']} | {r['workers']} x {r['threads']} | {r['batch_size']} | {r['round']} | "
                     f"{r['images']} | {r['cpu_busy_before_percent']:.0f} | {_f(r['startup_s'], '{:.1f}')} | "
                     f"{_f(r['images_per_s'])} | {_f(r['steady_images_per_s'])} |")
    serve = results.get("serve")
    if serve:
        d = serve["direct"]
        lines += ["", f"Serve: {serve['replicas']} replica x {serve['threads']} threads, dynamic batches of up to "
                      f"{serve['max_batch']}, HTTP on 127.0.0.1, {results['image_size']} px JPEG bodies "
                      f"({serve['body_bytes']} bytes); start-up (cluster already up) {serve['startup_s']:.1f} s.", "",
                  "| client | concurrent | requests | errors | CPU busy before % | p50 ms | p99 ms | requests/s |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| direct `Segmenter.predict` (alternating with the 1-client requests) | 1 | {d['requests']} | 0 | {d['cpu_busy_before_percent']:.0f} | "
                  f"{d['p50_ms']:.0f} | {d['p99_ms']:.0f} | {d['requests_per_s']:.2f} |"]
        ref = serve.get("local_reference")
        if ref:
            lines.append(f"| local `Segmenter.predict`, batch {ref['batch_size']} (throughput reference) | - | "
                         f"{ref['images']} | 0 | {ref['cpu_busy_before_percent']:.0f} | - | - | "
                         f"{ref['images_per_s']:.2f} |")
        for s in serve["levels"]:
            lines.append(f"| HTTP `POST /predict` | {s['clients']} | {s['requests']} | {s['errors']} | "
                         f"{s['cpu_busy_before_percent']:.0f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | "
                         f"{s['requests_per_s']:.2f} |")
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_f(t['measured'])}x | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def run(args) -> dict:
    import ray

    from lfm_deploy.manifest import read_manifest

    manifest = read_manifest(args.artifacts, verify_files=False)
    size = manifest.image_size
    results = {"image_size": size, "machine": _machine(), "load_average": {"start": os.getloadavg()}, "batch": [],
               "rounds": args.rounds, "max_busy": args.max_busy, "max_wait": args.max_wait}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        files, *support = _make_inputs(tmp, args.images, size)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        try:
            for rnd in range(1, args.rounds + 1):
                for b in args.batch_sizes:
                    quiet = wait_quiet(args.max_busy, args.max_wait)
                    log.info("round %d: local Segmenter, batch %d (CPU %.0f %% busy before)", rnd, b,
                             quiet["cpu_busy_before_percent"])
                    cell = bench_local(args.artifacts, files, support, b, args.threads, tmp / f"local-{b}-{rnd}")
                    results["batch"].append({**cell, "round": rnd, **quiet})
                for workers in args.workers:
                    threads = max(1, args.threads // workers)
                    quiet = wait_quiet(args.max_busy, args.max_wait)
                    log.info("round %d: Ray Data, %d worker(s) x %d thread(s), batch %d (CPU %.0f %% busy before)",
                             rnd, workers, threads, args.ray_batch_size, quiet["cpu_busy_before_percent"])
                    cell = bench_ray_data(args.artifacts, files, support, args.ray_batch_size, workers, threads,
                                          tmp / f"ray-{workers}-{rnd}")
                    results["batch"].append({**cell, "round": rnd, **quiet})
            if args.clients:
                results["serve"] = run_serve(args, files[0].read_bytes(), support)
        finally:
            try:
                from ray import serve

                serve.shutdown()
            except Exception:  # Serve never started
                pass
            ray.shutdown()
    results["load_average"]["end"] = os.getloadavg()
    results["targets"] = summarise(results)
    return results


def run_serve(args, body: bytes, support) -> dict:
    """One replica; the 1-client level paired with direct calls, the top level with a local reference."""
    from lfm_deploy.serving.ray_serve import build_app, start_service, stop_service

    seg = _direct_segmenter(args.artifacts, support, args.threads, args.max_batch)
    t0 = time.perf_counter()
    app = build_app(args.artifacts, [support[0]], [support[1]], replicas=1, max_batch=args.max_batch,
                    threads=args.threads, spin_wait=args.serve_spin_wait)
    url = start_service(app, host="127.0.0.1", port=_free_port())
    startup = time.perf_counter() - t0
    direct, levels, reference = None, [], None
    try:
        bench_serve_level(url, body, 1, 2)  # warm-up: first batches, connection set-up
        for clients, requests in zip(args.clients, args.serve_requests):
            quiet = wait_quiet(args.max_busy, args.max_wait)
            log.info("Serve, %d client(s), %d requests (CPU %.0f %% busy before)", clients, requests,
                     quiet["cpu_busy_before_percent"])
            if clients == 1:
                direct, level = bench_paired(seg, url, body, requests)
                direct.update(quiet)
            else:
                if clients == max(args.clients):
                    # The throughput target's baseline, right before the level (same load, same bytes).
                    reference = {**bench_local_reference(seg, body, max(args.max_batch, requests // 2),
                                                         args.max_batch), **wait_quiet(args.max_busy, args.max_wait)}
                    quiet = reference
                level = bench_serve_level(url, body, clients, requests)
            levels.append({**level, **quiet})
    finally:
        stop_service()
        seg.close()
    return {"replicas": 1, "threads": args.threads, "max_batch": args.max_batch, "body_bytes": len(body),
            "startup_s": startup, "direct": direct, "levels": levels, "local_reference": reference}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench-ray",
                        help="an lfm-export directory (lfm-export --domain deepglobe --out artifacts/bench-ray)")
    parser.add_argument("--images", type=int, default=40, help="query images in the batch collection")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="local Segmenter batch sizes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Data worker counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of the local Segmenter and of one Ray worker/replica (split between workers)")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16], help="concurrent HTTP clients")
    parser.add_argument("--serve-requests", type=int, nargs="*", default=[12, 24, 48],
                        help="requests per client level (the first is also the direct-call count)")
    parser.add_argument("--ray-batch-size", type=int, default=4,
                        help="Ray Data batch size (small enough for several batches per worker)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the batch cells (interleaved; best kept)")
    parser.add_argument("--max-busy", type=FiniteFloat(min=0, max=100).argparse_type(), default=30.0,
                        help="shared machines: before each cell wait until the CPUs are less than this %% busy")
    parser.add_argument("--max-wait", type=FiniteFloat(min=0).argparse_type(), default=30.0,
                        help="longest wait for --max-busy, per cell")
    parser.add_argument("--max-batch", type=int, default=8, help="Serve's largest dynamic batch")
    parser.add_argument("--serve-spin-wait", action=argparse.BooleanOptionalAction, default=False,
                        help="onnxruntime thread spinning in the Serve replica (off: lfm-serve's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray",
                        help="output prefix: <out>.json, <out>.md")
    parser.add_argument("--overwrite", action="store_true", help="replace result files not written by a benchmark")
    args = parser.parse_args(argv)
    if len(args.serve_requests) != len(args.clients):
        parser.error("--serve-requests needs one count per --clients level")
    if args.clients and 1 not in args.clients:
        parser.error("--clients needs the level 1 (the latency target's pairing with direct calls)")
    if min(args.batch_sizes + args.workers + [args.images, args.threads, args.max_batch, args.rounds,
                                              args.ray_batch_size]) < 1:
        parser.error("--images, --threads, --max-batch, --rounds, batch sizes and worker counts must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lfm_deploy").setLevel(logging.WARNING)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import OutputDir

    try:  # the result files are checked before the benchmark runs
        out = OutputDir(args.out.parent, flag="--out", kind="lfm-deploy benchmark results", overwrite=args.overwrite)
        names = {s: args.out.name + s for s in (".json", ".md")}
        out.claim(names.values())
    except LFMError as exc:
        parser.error(exc.cli_message())
    t0 = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - t0
    results["command"] = ("python benchmarks/bench_ray.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    out.write_json(names[".json"], results)
    md = out.write_text(names[".md"], markdown(results))
    log.info("\n%s", md.read_text())
    return results


if __name__ == "__main__":
    main()
