"""Benchmark the production runtime against the eager PyTorch episode, side by side.

In one run, on one exported domain (default: a 400x400 deepglobe export, created if missing):

* eager PyTorch: the full K-shot episode a research pipeline runs per query
  (`model(query, support, mask)`, both backbones, `torch.set_num_threads(--threads)`);
* `Segmenter` with the support set cached: per-query latency at batch 1 (end to end: uint8
  image in, mask at the original size out) and throughput at batch --batch;
* peak RSS of a serving process, measured in a fresh subprocess that imports only
  `lfm_deploy.runtime`, loads the domain, sets the support set and predicts at batch 1 five
  times (VmHWM from /proc/self/status: the process's own high-water mark; `ru_maxrss` of a
  forked child also counts the parent's), for the low-memory session profile (the default),
  the plain onnxruntime profile (memory arena + memory patterns) and the low-memory profile
  with `limit_heap_retention()` (glibc mmap threshold pinned).

Eager and runtime iterations are interleaved so that both see the same machine load. Results
carry percentiles, the machine, the load average and the library versions.

    python benchmarks/bench_runtime.py --artifacts artifacts/deepglobe --warmup 2 --iters 10 \\
        --threads 2 --out bench_runtime.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Runnable from a checkout without installing the package.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Targets from the runtime issue.
TARGET_LATENCY_RATIO = 0.5  # runtime batch-1 latency / eager episode
TARGET_RSS_MB = 1024.0
AIM_RSS_MB = 800.0

log = logging.getLogger("bench_runtime")


def _stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"n": int(ms.size), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def _episode_inputs(size: int, shots: int, batch: int, seed: int = 0):
    """Synthetic uint8 query images and a K-shot support set at the model size."""
    from lfm_deploy.data.synthetic import synthetic_pair

    supports = [synthetic_pair(size, seed, 0, k + 1) for k in range(shots)]
    queries = [np.asarray(synthetic_pair(size, seed, 0, 100 + i)[0]) for i in range(batch)]
    return [np.asarray(s[0]) for s in supports], [np.asarray(s[1]) for s in supports], queries


# ----------------------------------------------------------------------------- runners
class Runner:
    """One backend behind one interface: `__call__()` runs one timed unit of work."""

    name: str

    def __call__(self) -> None:
        raise NotImplementedError


class EagerEpisode(Runner):
    """The eager PyTorch model running a whole K-shot episode per query."""

    def __init__(self, manifest, supports, masks, query, threads: int):
        import torch

        from lfm_deploy.models import build_model
        from lfm_deploy.preprocess import normalize_image, prepare_mask

        torch.set_num_threads(threads)
        size = manifest.image_size
        apm = None if manifest.apm == "none" else manifest.apm
        # Same architecture and size as the export; timing does not depend on the weights.
        self.model, _ = build_model(apm=apm, acpa=manifest.acpa, image_size=size)
        self.model.eval()
        pre = manifest.preprocessing
        self.shots = manifest.shots
        self.q = torch.from_numpy(normalize_image(query, size, pre.mean, pre.std))[None]
        self.s = torch.from_numpy(np.stack([normalize_image(s, size, pre.mean, pre.std) for s in supports]))[None]
        self.m = torch.from_numpy(np.stack([prepare_mask(m, size).astype(np.float32) for m in masks]))[None]
        self._torch = torch
        self.name = f"eager torch {self.shots}-shot episode"

    def __call__(self) -> None:
        with self._torch.inference_mode():
            if self.shots == 1:
                self.model(self.q, self.s[:, 0], self.m[:, 0])
            else:
                self.model.predict_mask_nshot(self.q, self.s, self.m)


class SegmenterRunner(Runner):
    """`Segmenter.predict` on a list of uint8 images (support set cached)."""

    def __init__(self, seg, images, name: str):
        self.seg = seg
        self.images = images
        self.name = name

    def __call__(self) -> None:
        self.seg.predict(self.images if len(self.images) > 1 else self.images[0], batch_size=len(self.images))


# ----------------------------------------------------------------------------- serving RSS
_SERVE = r"""
import json, resource, sys, time
import numpy as np


def status(key):
    # VmHWM is the peak RSS of this process image. ru_maxrss is not usable here: the kernel
    # carries the forked parent's high-water mark over the exec into the child's ru_maxrss.
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))


t0 = time.perf_counter()
from lfm_deploy.runtime import Segmenter, limit_heap_retention
from PIL import Image
art, threads, low_memory, heap = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[7] == "1"
if heap:
    limit_heap_retention()
seg = Segmenter.from_artifacts(art, threads=threads, low_memory=low_memory)
load_mb = status("VmHWM")
supports = [np.asarray(Image.open(p)) for p in sys.argv[4].split(",")]
masks = [np.asarray(Image.open(p)) for p in sys.argv[5].split(",")]
query = np.asarray(Image.open(sys.argv[6]))
seg.set_support(supports, masks)
support_mb = status("VmHWM")
latencies = []
for _ in range(5):
    t = time.perf_counter()
    mask = seg.predict(query)
    latencies.append(time.perf_counter() - t)
print(json.dumps({
    "peak_rss_mb": status("VmHWM"), "peak_after_load_mb": load_mb, "peak_after_support_mb": support_mb,
    "current_rss_mb": status("VmRSS"),
    "ru_maxrss_mb_includes_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch_imported": any(m.split(".")[0].startswith("torch") for m in sys.modules),
    "seconds": time.perf_counter() - t0, "mask_shape": list(mask.shape),
    "predict_ms_median_of_5": sorted(latencies)[2] * 1e3,
}))
"""


def serving_rss(artifacts: Path, threads: int, low_memory: bool, files: dict, heap: bool = False) -> dict:
    """Peak RSS of a fresh serving process (runtime import, load, support, 5 batch-1 predicts)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE, str(artifacts), str(threads), "1" if low_memory else "0",
         ",".join(files["supports"]), ",".join(files["masks"]), files["query"], "1" if heap else "0"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"serving subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def _machine() -> dict:
    from lfm_deploy.utils.versions import library_versions, machine

    return {**machine(), **library_versions(("numpy", "onnxruntime", "torch"))}


def _ensure_artifacts(path: Path | None, size: int) -> Path:
    from lfm_deploy.manifest import MANIFEST_NAME

    path = path or ROOT / "artifacts" / f"bench-deepglobe-{size}"
    if not (path / MANIFEST_NAME).is_file():
        from lfm_deploy.export.pipeline import export_domain

        log.warning("no export at %s: exporting deepglobe at %dx%d, 1-shot (a few minutes)", path, size, size)
        export_domain("deepglobe", out=path, shots=1, image_size=size, progress=True)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="lfm-export directory (default: artifacts/bench-deepglobe-<size>, exported if missing)")
    parser.add_argument("--size", type=int, default=400, help="image size of the export made when --artifacts is missing")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the throughput measurement")
    parser.add_argument("--no-rss", action="store_true", help="skip the serving-process RSS subprocesses")
    parser.add_argument("--rss-only", action="store_true", help="only measure the serving-process RSS")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out file not written by a benchmark")
    args = parser.parse_args(argv)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import results_dir

    out = None
    if args.out:
        try:  # checked before the benchmark runs
            out, _ = results_dir(args.out.with_suffix(""), (args.out.suffix or ".json",), overwrite=args.overwrite)
        except LFMError as exc:
            parser.error(exc.cli_message())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lfm_deploy").setLevel(logging.WARNING)

    from lfm_deploy.manifest import read_manifest

    artifacts = _ensure_artifacts(args.artifacts, args.size)
    manifest = read_manifest(artifacts)
    size, shots = manifest.image_size, manifest.shots
    supports, masks, queries = _episode_inputs(size, shots, args.batch)
    results = {"artifacts": str(artifacts), "domain": manifest.domain, "image_size": size, "shots": shots,
               "lowering": manifest.lowering, "threads": args.threads, "warmup": args.warmup,
               "iters": args.iters, "batch": args.batch,
               "targets": {"latency_ratio": TARGET_LATENCY_RATIO, "peak_rss_mb": TARGET_RSS_MB,
                           "aim_rss_mb": AIM_RSS_MB},
               "load_average": {"start": os.getloadavg()}}
    passed = {}
    if not args.rss_only:
        results.update(measure_timing(artifacts, manifest, supports, masks, queries, args))
        passed["latency_ratio"] = results["latency_ratio_p50"] <= TARGET_LATENCY_RATIO
    if not args.no_rss:
        results["serving_rss"] = measure_rss(artifacts, supports, masks, queries[0], args.threads)
        passed["peak_rss"] = results["serving_rss"]["low_memory"]["peak_rss_mb"] <= TARGET_RSS_MB
    results["load_average"]["end"] = os.getloadavg()
    results["machine"] = _machine()
    results["passed"] = passed

    _report(results)
    if out is not None:
        log.info("wrote %s", out.write_json(args.out.name, results))
    return results


def measure_timing(artifacts: Path, manifest, supports, masks, queries, args) -> dict:
    """Eager episode vs Segmenter batch 1 and batch N, interleaved iteration by iteration."""
    from lfm_deploy.runtime import Segmenter

    t = time.perf_counter()
    seg = Segmenter.from_artifacts(artifacts, threads=args.threads)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    seg.set_support(supports, masks)
    support_s = time.perf_counter() - t

    runners = [
        EagerEpisode(manifest, supports, masks, queries[0], args.threads),
        SegmenterRunner(seg, queries[:1], "runtime batch 1 (per query)"),
        SegmenterRunner(seg, queries, f"runtime batch {args.batch}"),
    ]
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(args.warmup + args.iters):
        for runner in runners:  # interleaved: every backend sees the same machine load
            t = time.perf_counter()
            runner()
            if i >= args.warmup:
                times[runner.name].append(time.perf_counter() - t)
        log.info("iteration %d/%d done", i + 1, args.warmup + args.iters)
    eager, single, batched = (times[r.name] for r in runners)
    return {
        "segmenter_load_s": load_s, "set_support_s": support_s,
        "eager_episode": _stats(eager),
        "runtime_batch1": _stats(single),
        "runtime_batchN": {**_stats(batched), "per_image_ms": float(np.median(batched)) * 1e3 / args.batch,
                           "images_per_s": args.batch / float(np.median(batched))},
        "runtime_batch1_images_per_s": 1.0 / float(np.median(single)),
        "latency_ratio_p50": float(np.median(single) / np.median(eager)),
        # Per-iteration ratios: robust against load changes between iterations.
        "latency_ratio_per_iteration_median": float(np.median(np.asarray(single) / np.asarray(eager))),
    }


def measure_rss(artifacts: Path, supports, masks, query, threads: int) -> dict:
    """Serving-process peak RSS for the low-memory profile and for onnxruntime's defaults."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        files = {"supports": [], "masks": []}
        for k, (img, mask) in enumerate(zip(supports, masks)):
            files["supports"].append(os.path.join(tmp, f"s{k}.png"))
            files["masks"].append(os.path.join(tmp, f"m{k}.png"))
            Image.fromarray(img).save(files["supports"][-1])
            Image.fromarray(mask).save(files["masks"][-1])
        files["query"] = os.path.join(tmp, "q.png")
        Image.fromarray(query).save(files["query"])
        return {
            "low_memory": serving_rss(artifacts, threads, True, files),
            "onnxruntime_defaults": serving_rss(artifacts, threads, False, files),
            "low_memory+limit_heap_retention": serving_rss(artifacts, threads, True, files, heap=True),
        }


def _report(r: dict) -> None:
    batch = r["batch"]
    lines = [
        f"{r['domain']} {r['image_size']}x{r['image_size']} {r['shots']}-shot, {r['threads']} threads, "
        f"{r['iters']} iterations (load average {r['load_average']['start'][0]:.1f} -> {r['load_average']['end'][0]:.1f})",
    ]
    if "eager_episode" in r:
        lines.append(f"  {'backend':<34} {'p50 ms':>9} {'p90 ms':>9} {'mean ms':>9}")
        for key, label in (("eager_episode", "eager torch episode"), ("runtime_batch1", "runtime, batch 1"),
                           ("runtime_batchN", f"runtime, batch {batch} (whole batch)")):
            s = r[key]
            lines.append(f"  {label:<34} {s['p50_ms']:9.1f} {s['p90_ms']:9.1f} {s['mean_ms']:9.1f}")
        b = r["runtime_batchN"]
        lines.append(f"  batch {batch}: {b['per_image_ms']:.1f} ms/image, {b['images_per_s']:.2f} images/s "
                     f"(batch 1: {r['runtime_batch1_images_per_s']:.2f} images/s)")
        lines.append(f"  latency ratio runtime/eager: p50 {r['latency_ratio_p50']:.2f}, per-iteration median "
                     f"{r['latency_ratio_per_iteration_median']:.2f} (target <= {TARGET_LATENCY_RATIO})")
        lines.append(f"  load {r['segmenter_load_s']:.2f} s, set_support {r['set_support_s']:.2f} s")
    for name, rss in r.get("serving_rss", {}).items():
        lines.append(f"  serving peak RSS ({name}): {rss['peak_rss_mb']:.0f} MB (after load {rss['peak_after_load_mb']:.0f}, "
                     f"after support {rss['peak_after_support_mb']:.0f}, current {rss['current_rss_mb']:.0f}; "
                     f"predict {rss['predict_ms_median_of_5']:.0f} ms; "
                     f"torch imported: {rss['torch_imported']}; target <= {TARGET_RSS_MB:.0f}, aim {AIM_RSS_MB:.0f})")
    log.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
