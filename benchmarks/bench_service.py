"""Benchmark support sets through `lfm-serve`'s API against the local runtime, side by side in one run.

One Serve replica (`--threads` threads, dynamic batches of up to `--max-batch`) on loopback, a
startup set (`--support`) and sets registered through `POST /support-sets`:

* registering a set (a new one each time: upload, checks, encoding on the replica) vs encoding
  the same pair with `Segmenter.set_support` in this process, alternately (goal <= 1.2x, p50);
* `POST /predict?support=ID` with a registered, cached set vs `POST /predict` with the startup
  set, alternately, on the same image bytes (goal <= 1.1x, p50);
* 16 closed-loop clients spread over 4 registered sets vs 16 clients on one set: requests/s
  (goal >= 0.85x), the two levels alternated over `--rounds` rounds (best of each kept).

    python benchmarks/bench_service.py --artifacts artifacts/bench-ray --threads 2

Results: `<out>.json` and `<out>.md` (default `benchmarks/results/service`).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ray import _free_port, _machine, _pct, wait_quiet  # noqa: E402

from lfm_deploy.cli import FiniteFloat  # noqa: E402

TARGET_REGISTER_RATIO = 1.2  # POST /support-sets p50 / Segmenter.set_support p50
TARGET_PREDICT_RATIO = 1.1  # /predict?support=ID p50 / /predict (startup set) p50
TARGET_SETS_THROUGHPUT_RATIO = 0.85  # 16 clients over 4 sets / 16 clients on one set

log = logging.getLogger("bench_service")


def _jpg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _pairs(n: int, size: int, seed0: int = 10) -> list[tuple[bytes, bytes]]:
    """n distinct support pairs (JPEG image, PNG mask) of the model size."""
    from lfm_deploy.data.synthetic import synthetic_pair

    out = []
    for i in range(n):
        img, mask = synthetic_pair(size, seed0 + i, i % 3, 1)
        out.append((_jpg(img), _png(mask)))
    return out


def _register(http, pair) -> tuple[int, dict]:
    resp = http.post("/support-sets", files=[("image", ("s.jpg", pair[0], "image/jpeg")),
                                             ("mask", ("s_mask.png", pair[1], "image/png"))])
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"POST /support-sets answered {resp.status_code}: {resp.text[:300]}")
    return resp.status_code, resp.json()


def bench_register(seg, url: str, pairs) -> dict:
    """Registering each new pair vs `Segmenter.set_support` on it, alternately."""
    import httpx

    direct, http_times = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        seg.set_support([pairs[0][0]], [pairs[0][1]])  # warm-up of both
        _register(http, pairs[0])
        for pair in pairs[1:]:
            t = time.perf_counter()
            seg.set_support([pair[0]], [pair[1]])
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            status, _ = _register(http, pair)
            http_times.append(time.perf_counter() - t)
            if status != 201:
                raise RuntimeError("a new pair was answered 200: the pairs are not distinct")
    return {"sets": len(http_times), "set_support_p50_ms": _pct(direct, 50), "set_support_p99_ms": _pct(direct, 99),
            "register_p50_ms": _pct(http_times, 50), "register_p99_ms": _pct(http_times, 99)}


def bench_predict_paired(url: str, body: bytes, set_id: str, iters: int) -> dict:
    """`/predict` (startup set) and `/predict?support=ID` (a cached set), alternately."""
    import httpx

    default, by_id = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        for path in ("/predict", f"/predict?support={set_id}"):
            http.post(path, content=body)  # warm-up (the set is encoded on this replica already)
        for _ in range(iters):
            for path, times in (("/predict", default), (f"/predict?support={set_id}", by_id)):
                t = time.perf_counter()
                resp = http.post(path, content=body)
                times.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    raise RuntimeError(f"POST {path} answered {resp.status_code}: {resp.text[:300]}")
    return {"requests": iters, "startup_set_p50_ms": _pct(default, 50), "startup_set_p99_ms": _pct(default, 99),
            "by_id_p50_ms": _pct(by_id, 50), "by_id_p99_ms": _pct(by_id, 99)}


def bench_clients(url: str, body: bytes, set_ids: list[str], clients: int, requests: int) -> dict:
    """Closed loop: client i asks for set `set_ids[i % len(set_ids)]`."""
    import httpx

    latencies, errors = [], []
    lock = threading.Lock()
    remaining = [requests]

    def client(i):
        path = f"/predict?support={set_ids[i % len(set_ids)]}"
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                t = time.perf_counter()
                resp = http.post(path, content=body)
                dt = time.perf_counter() - t
                with lock:
                    (latencies if resp.status_code == 200 else errors).append(dt if resp.status_code == 200
                                                                              else resp.status_code)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client, i) for i in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    return {"clients": clients, "sets": len(set_ids), "requests": requests, "errors": len(errors),
            "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99), "requests_per_s": len(latencies) / wall,
            "seconds": wall}


def run(args) -> dict:
    import httpx
    import ray
    from ray import serve

    from lfm_deploy.data.synthetic import synthetic_pair
    from lfm_deploy.manifest import read_manifest
    from lfm_deploy.runtime import Segmenter
    from lfm_deploy.serving.ray_serve import build_app, start_service, stop_service

    size = read_manifest(args.artifacts, verify_files=False).image_size
    results = {"image_size": size, "machine": _machine(), "load_average": {"start": os.getloadavg()},
               "threads": args.threads, "max_batch": args.max_batch, "rounds": args.rounds}
    pairs = _pairs(args.register_sets + 1 + 4, size)
    body = _jpg(synthetic_pair(size, 0, 0, 100)[0])
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        startup = (Path(tmp) / "s.jpg", Path(tmp) / "s_mask.png")
        img, mask = synthetic_pair(size, 0, 0, 1)
        img.save(startup[0], quality=95)
        mask.save(startup[1])
        seg = Segmenter.from_artifacts(args.artifacts, threads=args.threads, batch_size=args.max_batch,
                                       release_encoder=False)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        try:
            app = build_app(args.artifacts, [str(startup[0])], [str(startup[1])], replicas=1,
                            max_batch=args.max_batch, threads=args.threads, max_support_sets=len(pairs) + 4)
            url = start_service(app, host="127.0.0.1", port=_free_port())
            try:
                results["register"] = {**wait_quiet(args.max_busy, args.max_wait),
                                       **bench_register(seg, url, pairs[:args.register_sets + 1])}
                log.info("register: %s", results["register"])
                with httpx.Client(base_url=url, timeout=300) as http:
                    ids = [_register(http, p)[1]["id"] for p in pairs[-4:]]
                results["predict"] = {**wait_quiet(args.max_busy, args.max_wait),
                                      **bench_predict_paired(url, body, ids[0], args.paired_requests)}
                log.info("predict: %s", results["predict"])
                bench_clients(url, body, ids, args.clients, args.clients)  # warm-up: every set cached, batches
                levels = []
                for rnd in range(1, args.rounds + 1):
                    for sets in (ids[:1], ids):
                        quiet = wait_quiet(args.max_busy, args.max_wait)
                        level = bench_clients(url, body, sets, args.clients, args.client_requests)
                        log.info("round %d, %d set(s): %.2f req/s", rnd, len(sets), level["requests_per_s"])
                        levels.append({**level, "round": rnd, **quiet})
                results["clients"] = levels
            finally:
                stop_service()
        finally:
            try:
                serve.shutdown()
            except Exception:  # Serve never started
                pass
            ray.shutdown()
            seg.close()
    results["load_average"]["end"] = os.getloadavg()
    results["targets"] = summarise(results)
    return results


def summarise(results: dict) -> list[dict]:
    reg, pred = results["register"], results["predict"]
    best = {n: max(lv["requests_per_s"] for lv in results["clients"] if lv["sets"] == n) for n in (1, 4)}
    rows = [
        {"target": "POST /support-sets p50 / Segmenter.set_support p50", "value": reg["register_p50_ms"] /
         reg["set_support_p50_ms"], "goal": f"<= {TARGET_REGISTER_RATIO}", "met": None},
        {"target": "/predict?support=ID p50 / /predict (startup set) p50", "value": pred["by_id_p50_ms"] /
         pred["startup_set_p50_ms"], "goal": f"<= {TARGET_PREDICT_RATIO}", "met": None},
        {"target": f"req/s, {results['clients'][0]['clients']} clients over 4 sets / on one set",
         "value": best[4] / best[1], "goal": f">= {TARGET_SETS_THROUGHPUT_RATIO}", "met": None},
    ]
    rows[0]["met"] = rows[0]["value"] <= TARGET_REGISTER_RATIO
    rows[1]["met"] = rows[1]["value"] <= TARGET_PREDICT_RATIO
    rows[2]["met"] = rows[2]["value"] >= TARGET_SETS_THROUGHPUT_RATIO
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    reg, pred = results["register"], results["predict"]
    lines = [f"Measured with `{results['command']}` ({results['image_size']}x{results['image_size']}, 1-shot, "
             f"one replica, {results['threads']} thread(s), batches of up to {results['max_batch']}; CPU: "
             f"{m.get('cpu')} ({m['cpus']} logical CPUs); Ray {m['versions'].get('ray')}, onnxruntime "
             f"{m['versions'].get('onnxruntime')}; load average {results['load_average']['start'][0]:.1f} -> "
             f"{results['load_average']['end'][0]:.1f}; {results['seconds']:.0f} s in all).", "",
             "| measurement | p50 ms | p99 ms |", "|---|---|---|",
             f"| `Segmenter.set_support` (in process) | {reg['set_support_p50_ms']:.1f} | {reg['set_support_p99_ms']:.1f} |",
             f"| `POST /support-sets` (new set each time, {reg['sets']} sets) | {reg['register_p50_ms']:.1f} | "
             f"{reg['register_p99_ms']:.1f} |",
             f"| `POST /predict` (startup set) | {pred['startup_set_p50_ms']:.1f} | {pred['startup_set_p99_ms']:.1f} |",
             f"| `POST /predict?support=ID` (registered, cached) | {pred['by_id_p50_ms']:.1f} | {pred['by_id_p99_ms']:.1f} |",
             "", "| clients | sets | round | requests | errors | p50 ms | p99 ms | req/s |", "|---|---|---|---|---|---|---|---|"]
    for lv in results["clients"]:
        lines.append(f"| {lv['clients']} | {lv['sets']} | {lv['round']} | {lv['requests']} | {lv['errors']} | "
                     f"{lv['p50_ms']:.0f} | {lv['p99_ms']:.0f} | {lv['requests_per_s']:.2f} |")
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.2f}x | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench-ray",
                        help="an lfm-export directory (lfm-export --domain deepglobe --out artifacts/bench-ray)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of the local Segmenter and of the Serve replica")
    parser.add_argument("--max-batch", type=int, default=8, help="Serve's largest dynamic batch")
    parser.add_argument("--register-sets", type=int, default=8, help="sets registered (and set_support calls)")
    parser.add_argument("--paired-requests", type=int, default=20, help="requests of each kind in the paired latency")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--client-requests", type=int, default=64, help="requests per client level")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two client levels (best kept)")
    parser.add_argument("--max-busy", type=FiniteFloat(min=0, max=100).argparse_type(), default=30.0,
                        help="shared machines: before each cell wait until the CPUs are less than this %% busy")
    parser.add_argument("--max-wait", type=FiniteFloat(min=0).argparse_type(), default=30.0,
                        help="longest wait for --max-busy, per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service",
                        help="output prefix: <out>.json, <out>.md")
    parser.add_argument("--overwrite", action="store_true", help="replace result files not written by a benchmark")
    args = parser.parse_args(argv)
    if min(args.threads, args.max_batch, args.register_sets, args.paired_requests, args.clients,
           args.client_requests, args.rounds) < 1:
        parser.error("counts must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lfm_deploy").setLevel(logging.WARNING)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import results_dir

    try:  # the result files are checked before the benchmark runs
        out, names = results_dir(args.out, (".json", ".md"), overwrite=args.overwrite)
    except LFMError as exc:
        parser.error(exc.cli_message())
    t0 = time.perf_counter()
    results = run(args)
    results["seconds"] = time.perf_counter() - t0
    results["command"] = ("python benchmarks/bench_service.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    out.write_json(names[".json"], results)
    md = out.write_text(names[".md"], markdown(results))
    log.info("\n%s", md.read_text())
    return results


if __name__ == "__main__":
    main()
