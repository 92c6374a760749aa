"""Batch segmentation of large collections on Ray Data (`lfm-predict --engine ray`).

The pipeline, streaming (a collection never has to fit in memory):

    inputs (expanded on the driver) -> read tasks (bytes, a read error becomes an error row)
        -> actor pool of `_SegmentWorker`s (each loads the artifacts and encodes the support
           set once, then decodes, segments and encodes PNGs per batch)
        -> the driver writes `<stem>_mask.png` / `<stem>_overlay.png` atomically and one
           results table, `results.jsonl`.

Masks are the local `lfm-predict`'s, byte for byte: the workers run the runtime's
`Segmenter`, and the PNGs are encoded the same way (`codec`). The driver writes every file,
so the output folder only needs to exist on the submitting machine; the inputs and the
artifact directory must be readable by every node (a shared filesystem, or URIs for inputs).
Inputs, output names, files, the results table and resumption are the local engine's (`batch`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from functools import partial
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..runtime.memory import DEFAULT_BUDGET
from .batch import RESULTS_NAME, BatchReport, claim_outputs, open_outputs, result_row, resume, write_table
from .collection import read_bytes
from .job import Job, predict_isolated, prepare_job, segmenter_for

log = logging.getLogger(__name__)

#: CPUs a read task asks for: small, so that reads run beside the workers on a 2-core machine.
READ_TASK_CPUS = 0.25
#: CPUs a worker actor asks for by default (see `segment_collection`).
DEFAULT_WORKER_CPUS = 0.5


def segment_collection(artifact_dir: str | os.PathLike, support_images: Sequence[str | os.PathLike],
                       support_masks: Sequence[str | os.PathLike], inputs: Sequence[str], out_dir: str | os.PathLike,
                       *, address: str | None = None, workers: int = 1, batch_size: int = 8,
                       threads: int | None = None, cpus_per_worker: float = DEFAULT_WORKER_CPUS,
                       providers="cpu", allow_fallback: bool = False, overlay: bool = True,
                       allow_empty: bool = False, overwrite: bool = False, progress: bool = True,
                       verbose: int = 0, precision: str | None = None,
                       memory_budget: float | None = DEFAULT_BUDGET) -> BatchReport:
    """Segment a collection of images on a Ray cluster with a fixed support set.

    Args:
        artifact_dir, support_images, support_masks, inputs, out_dir, overlay, allow_empty,
            overwrite, progress: as `batch.segment_locally`; the artifact directory must be
            readable at this path on every node, the support pairs are read here and shipped.
        address: join this Ray cluster; None starts a private local one for the job, also
            when RAY_ADDRESS is set (`cluster.ray_cluster`).
        workers: actors in the pool (each holds one `Segmenter` and declares its memory to Ray,
            `resources.segmenter_memory_bytes`; a job whose workers the cluster cannot hold is
            refused before it starts).
        batch_size: queries per worker call and head run.
        threads: onnxruntime threads per worker (default: this machine's CPUs / `workers`).
        cpus_per_worker: CPUs each actor reserves in Ray's scheduler; fractional by default so
            as not to starve Ray Data's read tasks on a small machine. On large nodes: `threads`.
        providers, allow_fallback, precision: as `Segmenter` (onnxruntime providers, or
            "openvino" with precision "fp32" / "bf16").
        memory_budget: peak bytes each worker's Segmenter may use (`Segmenter.from_artifacts`);
            what a worker declares to Ray follows from it.
        verbose: > 0 forwards the workers' logs.

    Returns:
        A `BatchReport`; `report.ok` is False when any input failed (an error row each; the job
        itself goes on).

    Raises:
        InputError: no inputs, a missing input spec, bad support files or options.
        OutputError: an unusable output folder, one of the run's inputs, or output names taken
            by files lfm-predict did not write (checked before any model is loaded or any
            cluster started).
        ManifestError, BackendUnavailable: see `Segmenter.from_artifacts`.
        ClusterError: Ray missing, the cluster unreachable, or its memory too small for
            `workers` workers.
    """
    from .cluster import import_ray

    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}", cli_hint="pass --workers 1 or more")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if not cpus_per_worker > 0:
        raise InputError(f"cpus_per_worker must be positive, got {cpus_per_worker}")
    # The local engine's checks (`batch`): no output may be one of the run's inputs (the query
    # folders, list files and files, the artifacts, a support file), even with `overwrite`; every
    # output name is claimed before any model is loaded or any cluster started.
    out = open_outputs(out_dir, inputs, artifact_dir=artifact_dir, supports=[*support_images, *support_masks],
                       overwrite=overwrite)
    import_ray()  # a missing extra is said before any input is listed or hashed
    plan = claim_outputs(out, inputs, overlay)
    items, names = plan.items, plan.names
    job = prepare_job(artifact_dir, support_images, support_masks, providers=providers,
                      allow_fallback=allow_fallback, allow_empty=allow_empty, precision=precision)
    rows, todo = resume(out, plan, job.key)
    skipped = len(rows)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    timing: dict = {}
    try:
        if todo:
            _run(timing, job, items, names, todo, out, rows, address=address, workers=workers, batch_size=batch_size,
                 threads=threads, cpus_per_worker=cpus_per_worker, providers=providers,
                 allow_fallback=allow_fallback, overlay=overlay, allow_empty=allow_empty,
                 progress=progress, verbose=verbose, initial=skipped, precision=precision,
                 memory_budget=memory_budget)
    finally:
        # Also when interrupted: the table lists what was done (a re-run resumes from the files).
        ordered = [rows[i] for i in sorted(rows)]
        write_table(out, ordered)
    failed = sum(r["status"] == "error" for r in ordered)
    return BatchReport(total=len(items), succeeded=len(ordered) - failed - skipped, skipped=skipped, failed=failed,
                       out_dir=out.path, table=out.path / RESULTS_NAME, rows=ordered, precision=job.precision,
                       backend=job.backend, renamed=plan.renamed(), model=job.describe(),
                       weights_label=job.manifest.weights_label,
                       seconds=timing.get("seconds", 0.0), first_result_s=timing.get("first_result_s"),
                       worker_batches=timing.get("workers", {}))


def _run(timing: dict, job: Job, items, names, todo, out, rows: dict, *, address, workers, batch_size, threads,
         cpus_per_worker, providers, allow_fallback, overlay, allow_empty, progress, verbose, initial,
         precision=None, memory_budget=None) -> None:
    from tqdm.auto import tqdm

    from .cluster import ray_cluster

    from .resources import check_fits, segmenter_memory_bytes

    # Told to Ray's scheduler, so that it never starts more workers than the nodes hold.
    memory = segmenter_memory_bytes(job, batch_size, budget=memory_budget)
    row = partial(result_row, precision=job.precision, backend=job.backend, job=job.key)
    t0 = time.perf_counter()
    with ray_cluster(address, verbose=verbose) as ray:
        import ray.data

        check_fits(memory, workers, "worker(s)", "--workers")
        _quiet_ray_data(verbose)
        job_ref = ray.put(job)
        records = [{"index": i, "input": items[i]} for i in todo]
        ds = ray.data.from_items(records, override_num_blocks=max(1, math.ceil(len(records) / batch_size)))
        ds = ds.map_batches(_read_batch, batch_size=batch_size, batch_format="numpy", num_cpus=READ_TASK_CPUS)
        ds = ds.map_batches(
            _SegmentWorker,
            # The job (support bytes, manifest) goes to the object store once, by reference: the
            # driver holds the reference for the whole run, so a restarted worker finds it again.
            fn_constructor_kwargs={"job_ref": [job_ref], "options": {"providers": providers, "allow_fallback": allow_fallback,
                                                           "precision": precision,
                                                           "threads": threads, "batch_size": batch_size,
                                                           "allow_empty": allow_empty,
                                                           "memory_budget": memory_budget},
                                   "overlay": overlay},
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            memory=memory,
            batch_size=batch_size,
            batch_format="numpy",
        )
        log.info("segmenting %d input(s) with %d worker(s) x %d thread(s) (%.2g CPU each)", len(todo), workers,
                 threads, cpus_per_worker)
        total = initial + len(todo)
        failed = 0
        with tqdm(total=total, initial=initial, desc="lfm-predict (ray)", unit="img",
                  disable=not progress or total < 2) as bar:
            progress_by_worker: dict = {}
            timing["workers"] = progress_by_worker
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                timing.setdefault("first_result_s", time.perf_counter() - t0)
                for worker, finished in {(int(w), float(f)) for w, f in zip(batch["worker"], batch["finished"])}:
                    count = int(np.sum((batch["worker"] == worker) & (batch["finished"] == finished)))
                    progress_by_worker.setdefault(worker, []).append((finished, count))
                for j in range(len(batch["index"])):
                    i = int(batch["index"][j])
                    if batch["status"][j] == "ok":
                        # The overlay first: the mask, written last, completes the input.
                        if overlay:
                            out.write_bytes(names[i]["overlay"], bytes(batch["overlay"][j]))
                        out.write_bytes(names[i]["mask"], bytes(batch["mask"][j]))
                        rows[i] = row(items[i], names[i], out.path, "ok", height=int(batch["height"][j]),
                                       width=int(batch["width"][j]), foreground=float(batch["foreground"][j]))
                    else:
                        failed += 1
                        rows[i] = row(items[i], names[i], out.path, "error", error=str(batch["error"][j]))
                        log.warning("%s", batch["error"][j])
                    bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
        timing["seconds"] = time.perf_counter() - t0


def _quiet_ray_data(verbose: int) -> None:
    """Our progress bar replaces Ray Data's; its INFO lines only with -vv."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose > 1
    ctx.print_on_execution_start = verbose > 1
    ctx.enable_auto_log_stats = False
    if verbose <= 1:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # "Progress bars disabled": ours is on.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _read_batch(batch: dict) -> dict:
    """Read task: each input's bytes; a read failure becomes the row's error, not a failed task."""
    data, errors = [], []
    for item in batch["input"]:
        try:
            data.append(read_bytes(str(item)))
            errors.append("")
        except Exception as exc:  # any filesystem's error: the row records it, the job goes on
            data.append(b"")
            errors.append(f"cannot read {item}: {exc}")
    return {"index": batch["index"], "input": batch["input"], "data": _objects(data),
            "read_error": np.asarray(errors, dtype=object)}


def _objects(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


class _SegmentWorker:
    """Actor of the pool: one `Segmenter` with the support set encoded once, then batches.

    Args:
        job_ref: [a Ray object reference to the checked `Job`] (in a list: Ray passes it as is).
        options: `segmenter_for` keyword arguments.
        overlay: also encode the overlay PNGs.
    """

    def __init__(self, job_ref: list, options: dict, overlay: bool):
        import ray

        self.seg = segmenter_for(ray.get(job_ref[0]), **options)
        self.overlay = overlay

    def __call__(self, batch: dict) -> dict:
        from ..preprocess import to_pil_rgb
        from .codec import mask_png, overlay_png

        n = len(batch["index"])
        status, error = ["error"] * n, [""] * n
        height, width, foreground = [-1] * n, [-1] * n, [float("nan")] * n
        masks_png, overlays_png = [b""] * n, [b""] * n
        images, where = [], []
        for j in range(n):
            if batch["read_error"][j]:
                error[j] = str(batch["read_error"][j])
                continue
            try:
                images.append(to_pil_rgb(bytes(batch["data"][j]), f"image {batch['input'][j]}"))
                where.append(j)
            except InputError as exc:
                error[j] = str(exc)
        for j, image, mask in zip(where, images, predict_isolated(self.seg, images)):
            if isinstance(mask, Exception):
                error[j] = str(mask)
                continue
            status[j] = "ok"
            height[j], width[j] = mask.shape
            foreground[j] = float(mask.mean())
            masks_png[j] = mask_png(mask)
            if self.overlay:
                overlays_png[j] = overlay_png(image, mask)
        # Which worker finished the batch and when (BatchReport.steady_images_per_s).
        return {"index": batch["index"], "worker": np.full(n, os.getpid(), dtype=np.int64),
                "finished": np.full(n, time.time(), dtype=np.float64), "status": np.asarray(status, dtype=object),
                "error": np.asarray(error, dtype=object), "height": np.asarray(height, dtype=np.int64),
                "width": np.asarray(width, dtype=np.int64), "foreground": np.asarray(foreground, dtype=np.float64),
                "mask": _objects(masks_png), "overlay": _objects(overlays_png)}
