"""Peak resident memory of the served path per backend x batch size x memory setting, with its speed.

Every cell is a fresh process (`python -c`) that imports only `lfm_deploy.runtime`, loads the
export with the cell's settings, encodes a 1-shot support set and segments `--rounds` batches of
B queries; it reports its own high-water mark (VmHWM from /proc/self/status: `ru_maxrss` of a
child started by fork/exec carries the parent's peak over) and the median `predict` time.
Cells run round-robin, `--repeat` times each, so a setting and its baseline see the same load.

Settings (`SETTINGS`; pass any subset with `--settings`):

* `default`: what `Segmenter.from_artifacts(dir, threads=...)` does now;
* `plain`: onnxruntime's own defaults (memory-pattern planner on, `low_memory=False`);
* `no-arena`: onnxruntime's CPU arena off (`enable_cpu_mem_arena=False`);
* `same-as-requested`: the arena from a process-wide allocator whose regions grow by what is asked
  (`kSameAsRequested`, `session.use_env_allocators`), not doubled;
* `no-prepack`: `session.disable_prepacking` (MLAS keeps no second, packed copy of the weights);
* `init-device-alloc`: `session.use_device_allocator_for_initializers` (weights outside the arena);
* `opt-LEVEL`: onnxruntime graph optimization LEVEL (`extended`: no NCHWc layout rewrite);
* `no-trim`: no `trim_heap()` after each session is built (the default before issue 20);
* `heap`: `limit_heap_retention()` before loading (glibc mmaps large blocks);
* `sub-batch-N`: `predict([...], batch_size=B)` run as head runs of at most N queries
  (`predict(..., batch_size=N)`);
* `budget-G`: the head batch chosen by a memory budget of G GB (`Segmenter(memory_budget=G GB)`);
* `no-budget`: no memory budget (`memory_budget=None`): the whole batch in one head run;
* `precision-NAME`: the export's graphs at precision NAME (`Segmenter(precision=NAME)`: fp32, bf16
  on OpenVINO, or the export's own reduced precision); settings combine with `+`.

OpenVINO settings (cells of other backends skip them, as OpenVINO cells skip onnxruntime's):

* `ov-cache-N`: `CPU_RUNTIME_CACHE_CAPACITY` N (0: no cache of kernels compiled per input shape);
* `ov-no-snippets`: `SNIPPETS_MODE` DISABLE (no fused element-wise kernels, and no buffers of theirs);
* `ov-static`: `Segmenter(openvino_static_shapes=True)`: each graph compiled for the shapes of
  its calls, where OpenVINO plans the memory of every intermediate at compile time and reuses it,
  instead of allocating per inference (recompiled when the shapes change).

Each cell also reports what the runtime's memory model (`lfm_deploy.runtime.memory`) predicts
for it, so a model that under-estimates shows in the table.

    python benchmarks/bench_memory.py --export artifacts/bench-deepglobe-400 --batch-sizes 1 8 \\
        --backends ort ov --settings default plain no-arena heap sub-batch-2
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfm_deploy.utils.versions import describe_cpu  # noqa: E402  (after the path set-up above)

log = logging.getLogger("bench_memory")

#: The issue's goals: peak RSS of the served path at batch 1 and 8 (400 px).
GOAL_GB = {1: 0.5, 8: 1.5}

_CELL = r"""
import json, sys, time
import numpy as np
cfg = json.loads(sys.argv[1])


def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))


from lfm_deploy.runtime import Segmenter, limit_heap_retention
from lfm_deploy.runtime import sessions
if cfg.get("heap"):
    limit_heap_retention()
entries, options = cfg.get("ort_entries") or {}, cfg.get("ort_options") or {}
if cfg.get("env_arena"):
    import onnxruntime as ort
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, int(cfg["env_arena"]), -1, -1))
    entries = {**entries, "session.use_env_allocators": "1"}
if entries or options:
    base = sessions.SessionConfig.session_options

    def session_options(self):
        opts = base(self)
        for k, v in entries.items():
            opts.add_session_config_entry(k, v)
        for k, v in options.items():
            setattr(opts, k, v)
        return opts
    sessions.SessionConfig.session_options = session_options
if cfg.get("no_trim"):
    import lfm_deploy.runtime.segmenter as segmenter_module
    segmenter_module.trim_heap = lambda: False
if cfg.get("ov_props"):
    from lfm_deploy.runtime import openvino as ov_runtime
    props = cfg.get("ov_props") or {}
    base_config = ov_runtime.SessionFromOpenVINO.config
    ov_runtime.SessionFromOpenVINO.config = lambda self: {**base_config(self), **props}
kwargs = cfg.get("kwargs") or {}
seg = Segmenter.from_artifacts(cfg["export"], providers=cfg.get("providers"), threads=cfg["threads"], **kwargs)
load_mb = status("VmHWM")
rng = np.random.default_rng(0)
size = seg.image_size
img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
mask = np.zeros((size, size), np.uint8)
mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
seg.set_support([img], [mask])
support_mb = status("VmHWM")
queries = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(cfg["batch"])]
times = []
for _ in range(cfg["rounds"]):
    t = time.perf_counter()
    seg.predict(queries, batch_size=cfg.get("sub_batch") or cfg["batch"])
    times.append(time.perf_counter() - t)
print(json.dumps({"peak_mb": status("VmHWM"), "after_load_mb": load_mb, "after_support_mb": support_mb,
                  "rss_end_mb": status("VmRSS"), "predict_s": times,
                  "head_batch": seg.head_batch(cfg.get("sub_batch") or cfg["batch"]),
                  "modelled_mb": seg.memory_model.peak(size, seg.head_batch(cfg.get("sub_batch") or cfg["batch"]))
                  / 2**20}))
"""


def setting(name: str) -> dict:
    """The cell configuration of a setting name (see the module docstring)."""
    if "+" in name:
        merged: dict = {}
        for part in name.split("+"):
            for k, v in setting(part).items():
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
        return merged
    if name == "default":
        return {}
    if name == "plain":
        return {"kwargs": {"low_memory": False}}
    if name == "no-arena":
        return {"ort_options": {"enable_cpu_mem_arena": False}}
    if name == "same-as-requested":
        return {"env_arena": 1}
    if name == "no-prepack":
        return {"ort_entries": {"session.disable_prepacking": "1"}}
    if name == "init-device-alloc":
        return {"ort_entries": {"session.use_device_allocator_for_initializers": "1"}}
    if name.startswith("opt-"):
        return {"kwargs": {"graph_optimization": name.split("-", 1)[1]}}
    if name == "no-trim":
        return {"no_trim": True}
    if name == "heap":
        return {"heap": True}
    if name.startswith("sub-batch-"):
        return {"sub_batch": int(name.rsplit("-", 1)[1])}
    if name == "no-budget":
        return {"kwargs": {"memory_budget": None}}
    if name.startswith("budget-"):
        return {"kwargs": {"memory_budget": float(name.split("-", 1)[1]) * (1 << 30)}}
    if name.startswith("precision-"):
        return {"kwargs": {"precision": name.split("-", 1)[1]}}
    if name.startswith("ov-cache-"):
        return {"ov_props": {"CPU_RUNTIME_CACHE_CAPACITY": int(name.rsplit("-", 1)[1])}}
    if name == "ov-no-snippets":
        return {"ov_props": {"SNIPPETS_MODE": "DISABLE"}}
    if name == "ov-static":
        return {"ov_static": True, "kwargs": {"openvino_static_shapes": True}}
    raise argparse.ArgumentTypeError(f"unknown setting {name!r}")


def run_cell(export: Path, backend: str, batch: int, name: str, threads: int, rounds: int, timeout: float) -> dict:
    cfg = {"export": str(export), "providers": "openvino" if backend == "ov" else None, "threads": threads,
           "batch": batch, "rounds": rounds, **setting(name)}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _CELL, json.dumps(cfg)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Peak RSS of the served path ({result['size']} px)", "",
             f"CPU: {describe_cpu(m)}, {m.get('physical_cores')} physical cores, {m.get('memory_gb')} GB; "
             f"{result['threads']} threads; load average {result['load_average'][0]:.2f} at start, "
             f"{result['load_average_end'][0]:.2f} at the end. One fresh process per cell (load, 1-shot support, "
             f"{result['rounds']} predicts of B queries); median of {result['repeat']} processes. "
             "'per image' is the median predict time / B (first predict included: it is where the arena grows). 'vs' compares a cell with its setting's first part (A+B with A), else with 'default'.", "",
             "| backend | batch | setting | head batch | peak RSS GB | modelled GB | goal | per image ms | vs default |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['batch']} | {row['setting']} | - | error: {row['error']} | | | | |")
            continue
        goal = GOAL_GB.get(row["batch"])
        # a combined setting is compared with its first part (precision-bf16+ov-static: precision-bf16)
        base_name = row["setting"].split("+")[0] if "+" in row["setting"] else "default"
        base = next((r for r in result["rows"] if r["backend"] == row["backend"] and r["batch"] == row["batch"]
                     and r["setting"] == base_name and "error" not in r), None)
        vs = f"{row['per_image_ms'] / base['per_image_ms']:.2f}x" if base else "-"
        lines.append(f"| {row['backend']} | {row['batch']} | {row['setting']} | {row.get('head_batch', '-')} | "
                     f"{row['peak_gb']:.2f} | {row['modelled_gb']:.2f} | {'<= ' + str(goal) if goal else '-'} "
                     f"{'met' if goal and row['peak_gb'] <= goal else ''} | {row['per_image_ms']:.0f} | {vs} |")
    lines += ["", "Reproduce: `" + result["command"] + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--export", type=Path, default=None,
                        help="lfm-export directory (default: artifacts/bench-deepglobe-<size>, exported if missing)")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--backends", nargs="+", default=["ort", "ov"], choices=["ort", "ov"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--settings", nargs="+", default=["default"], type=lambda s: (setting(s), s)[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="predict calls per process")
    parser.add_argument("--repeat", type=int, default=1, help="processes per cell (the median is reported)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory"),
                        help="output prefix: <out>.json and <out>.md")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lfm_deploy").setLevel(logging.WARNING)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import results_dir
    from lfm_deploy.utils.versions import library_versions, machine

    try:
        out, names = results_dir(args.out, (".json", ".md"), overwrite=args.overwrite)
    except LFMError as exc:
        parser.error(exc.cli_message())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from profile_query import _ensure_export

    export = _ensure_export(args.export, args.size)
    from lfm_deploy.manifest import read_manifest

    cells = [(b, n, s) for b in args.backends for n in args.batch_sizes for s in args.settings
             if not (b == "ov" and setting(s).keys() & {"ort_entries", "ort_options", "env_arena"})
             and not (b == "ort" and setting(s).keys() & {"ov_props", "ov_static"})]
    result = {"size": read_manifest(export, verify_files=False).image_size, "threads": args.threads,
              "rounds": args.rounds, "repeat": args.repeat, "machine": machine(args.threads),
              "versions": library_versions(("numpy", "onnxruntime", "openvino")), "load_average": os.getloadavg(),
              "command": "python benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    samples: dict = {c: [] for c in cells}
    for r in range(args.repeat):
        for cell in cells:
            t = time.perf_counter()
            res = run_cell(export, *cell, args.threads, args.rounds, args.timeout)
            samples[cell].append(res)
            log.info("%s batch %d %s: %s (%.0f s)", cell[0], cell[1], cell[2],
                     res.get("error") or f"peak {res['peak_mb'] / 1024:.2f} GB, "
                                         f"predict {np.median(res['predict_s']) * 1e3:.0f} ms", time.perf_counter() - t)
    rows = []
    for (backend, batch, name), runs in samples.items():
        ok = [s for s in runs if "error" not in s]
        if not ok:
            rows.append({"backend": backend, "batch": batch, "setting": name, "error": runs[0]["error"]})
            continue
        rows.append({"backend": backend, "batch": batch, "setting": name, "head_batch": ok[0].get("head_batch"),
                     "peak_gb": float(np.median([s["peak_mb"] for s in ok])) / 1024,
                     "modelled_gb": ok[0]["modelled_mb"] / 1024,
                     "after_load_gb": float(np.median([s["after_load_mb"] for s in ok])) / 1024,
                     "after_support_gb": float(np.median([s["after_support_mb"] for s in ok])) / 1024,
                     "per_image_ms": float(np.median([np.median(s["predict_s"]) for s in ok])) * 1e3 / batch,
                     "runs": ok})
    result["rows"] = rows
    result["load_average_end"] = os.getloadavg()
    out.write_json(names[".json"], result)
    md = out.write_text(names[".md"], markdown(result))
    print(md.read_text())
    return result


if __name__ == "__main__":
    main()
