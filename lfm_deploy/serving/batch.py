"""The predict path of `lfm predict`, shared by its engines: outputs, results table, local engine.

Both engines take the same inputs (`collection.expand_inputs`: files, folders, recursive globs,
list files, URIs), give them the same output names (`collection.output_stems`), write the same
files (`codec.mask_png`, `codec.overlay_png`) and the same results table (`result_row`, one JSON
object a line, each naming the precision and backend that ran). `segment_locally` runs them in
this process with one `Segmenter`; `ray_batch.segment_collection` on a Ray cluster.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..runtime.memory import DEFAULT_BUDGET
from .collection import _name_parts, expand_inputs, is_uri, output_stems, read_bytes

log = logging.getLogger(__name__)

#: What lfm-predict writes into its output folder (either engine reads the other's outputs as
#: its own), and its results table (one JSON object a line).
PREDICT_KIND = "lfm-predict output"
RESULTS_NAME = "results.jsonl"


@dataclass
class BatchReport:
    """What a batch job did.

    Attributes:
        total: inputs found.
        succeeded: inputs segmented in this run.
        skipped: inputs whose outputs an earlier run of the same job completed (`resume`).
        failed: inputs that could not be segmented (an error row each).
        out_dir: the output folder.
        table: the results table's path.
        rows: the table's rows, in input order.
        precision, backend: what ran (`lfm_deploy.runtime.precisions`; "onnxruntime" or "openvino").
        providers: the sessions' providers ("CPUExecutionProvider", "OpenVINO CPU (bf16)"; local
            engine only, empty for Ray's workers).
        model: the export in a few words ("deepglobe, 1-shot, exported at int8").
        weights_label: how the weights are flagged when they are not a real model, else "".
        renamed: (input, output stem) of the inputs whose output name is not their file stem
            (another input shares it).
        seconds: wall time of the Ray part (cluster connection, workers' start-up, segmentation).
        first_result_s: from its start to the first finished batch (the workers' start-up: the
            artifacts loaded and the support set encoded); None when nothing ran.
        worker_batches: {worker pid: [(finish time, images), ...]}, the workers' own clocks.
    """

    total: int
    succeeded: int
    skipped: int
    failed: int
    out_dir: Path
    table: Path
    rows: list = field(default_factory=list, repr=False)
    precision: str = "fp32"
    backend: str = "onnxruntime"
    providers: list = field(default_factory=list)
    model: str = ""
    weights_label: str = ""
    renamed: list = field(default_factory=list, repr=False)
    seconds: float = 0.0
    first_result_s: float | None = None
    worker_batches: dict = field(default_factory=dict, repr=False)

    @property
    def steady_images_per_s(self) -> float | None:
        """Throughput past the start-up: the images finished after the first finished batch (of
        any worker) over the time from it to the last one. Conservative with several workers: a
        worker that starts later counts its start-up here. None with fewer than two batches."""
        batches = sorted((t, c) for b in self.worker_batches.values() for t, c in b)
        if len(batches) < 2 or batches[-1][0] <= batches[0][0]:
            return None
        return sum(c for _, c in batches[1:]) / (batches[-1][0] - batches[0][0])

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return self.failed == 0

    def errors(self) -> list[dict]:
        """The error rows."""
        return [r for r in self.rows if r["status"] == "error"]


@dataclass(frozen=True)
class Outputs:
    """A run's inputs and their output names, claimed in the output folder before any work.

    Attributes:
        out: the `OutputDir`.
        items: the expanded inputs (local paths and URIs), in order.
        stems: one output stem per input (`collection.output_stems`).
        names: per input, {"mask": "<stem>_mask.png"[, "overlay": "<stem>_overlay.png"]}.
    """

    out: object
    items: list
    stems: list
    names: list

    def renamed(self) -> list[tuple[str, str]]:
        """(input, stem) where the stem is not the input's own file stem (another input shares it)."""
        return [(item, stem) for item, stem in zip(self.items, self.stems) if stem != _name_parts(item)[0]]


def output_names(stem: str, overlay: bool) -> dict:
    """The files an input gets: `<stem>_mask.png`, and `<stem>_overlay.png` with `overlay`."""
    names = {"mask": f"{stem}_mask.png"}
    if overlay:
        names["overlay"] = f"{stem}_overlay.png"
    return names


def source_stamp(item: str) -> list | None:
    """[size, mtime_ns] of a local input file (an edited or replaced one is redone); None for a URI."""
    try:
        return None if is_uri(item) else [(st := os.stat(item)).st_size, st.st_mtime_ns]
    except OSError:
        return None


def result_row(item: str, names: dict, out: Path, status: str, *, height=None, width=None, foreground=None,
               error=None, precision: str | None = None, backend: str | None = None, job: str | None = None) -> dict:
    """One results-table row.

    Args:
        item: the input as listed.
        names: its `output_names`.
        out: the output folder.
        status: "ok", "error", "skipped" (complete from an earlier run of the same job) or
            "interrupted" (outputs written before Ctrl-C / SIGTERM, if any).
        height, width, foreground: the mask's size and foreground share.
        error: the reason of an "error" row.
        precision, backend: what ran.
        job: `Job.key` of the run (artifacts, support set, precision, backend): what `resume` matches,
            with the input's `source_stamp`.
    """
    written = status in ("ok", "skipped")
    return {"input": item, "mask": str(out / names["mask"]) if written else None,
            "overlay": str(out / names["overlay"]) if written and "overlay" in names else None,
            "width": width, "height": height, "foreground": None if foreground is None else round(float(foreground), 6),
            "status": status, "error": error, "precision": precision, "backend": backend, "job": job,
            "source": source_stamp(item) if written else None}


def write_table(out, rows: Sequence[dict]) -> None:
    """Write `results.jsonl` (atomically) and the folder's record."""
    out.write_text(RESULTS_NAME, "".join(json.dumps(r) + "\n" for r in rows))
    out.flush()


def open_outputs(out_dir, inputs: Sequence, *, artifact_dir, supports: Sequence, overwrite: bool = False):
    """The output folder of a run, refusing one that is (or holds) any of its inputs, even with `overwrite`.

    Returns:
        An `lfm_deploy.utils.outputs.OutputDir` of kind `PREDICT_KIND`.
    """
    from ..utils.outputs import OutputDir

    return OutputDir(out_dir, flag="--out", kind=PREDICT_KIND, overwrite=overwrite,
                     inputs={"ARTIFACT_DIR": artifact_dir,
                             "QUERY": [os.fspath(q) for q in inputs if not is_uri(os.fspath(q))],
                             "--support": [os.fspath(p) for p in supports if not is_uri(os.fspath(p))]})


def claim_outputs(out, inputs: Sequence, overlay: bool) -> Outputs:
    """Expand the inputs, name their outputs and claim every name (and the table) before any work.

    Raises:
        InputError: a missing input, or none found.
        OutputError: an output name taken by a file lfm-predict did not write.
    """
    items = expand_inputs([os.fspath(q) for q in inputs])
    if not items:
        raise InputError(f"no input images found in {', '.join(map(os.fspath, inputs))}",
                         api_hint="pass images, folders, globs or list files",
                         cli_hint="pass images, folders, globs or list files as QUERY")
    stems = output_stems(items)
    names = [output_names(stem, overlay) for stem in stems]
    out.claim([n for entry in names for n in entry.values()] + [RESULTS_NAME],
              [item for item, entry in zip(items, names) for _ in entry] + ["the results table"])
    return Outputs(out=out, items=items, stems=stems, names=names)


def resume(out, plan: Outputs, key: str) -> tuple[dict[int, dict], list[int]]:
    """What an earlier run of the same job left complete in the output folder, and what is left.

    An input is done when its previous row says so for the same `Job.key` (the same artifacts,
    support set, precision and backend: a changed model or support set redoes everything), a
    local input file has the same size and modification time (`source_stamp`), and every output
    file it names is there, recorded by lfm-predict and unchanged since (files are
    renamed into place complete, and the folder's record holds their hashes). Failed,
    interrupted and unrecorded inputs are done again.

    Returns:
        ({input index: its "skipped" row}, [indexes still to segment]).
    """
    from ..utils.outputs import foreign_files, read_record

    record = read_record(out.path) if out.path.is_dir() else None
    previous: dict = {}
    if record is not None and record["kind"] == PREDICT_KIND and (out.path / RESULTS_NAME).is_file():
        foreign = set(foreign_files(out.path, PREDICT_KIND) or [])
        try:
            for line in (out.path / RESULTS_NAME).read_text(encoding="utf-8").splitlines():
                row = json.loads(line) if line.strip() else None
                if isinstance(row, dict) and row.get("job") == key and row.get("status") in ("ok", "skipped"):
                    previous[row.get("input")] = row
        except (OSError, ValueError):
            log.warning("%s is unreadable; every input is segmented again", out.path / RESULTS_NAME)
            previous = {}
    rows, todo = {}, []
    for i, (item, names) in enumerate(zip(plan.items, plan.names)):
        before = previous.get(item)
        if before and before.get("mask") == str(out.path / names["mask"]) and before.get("source") == source_stamp(
                item) and all(
                n in record["files"] and n not in foreign and (out.path / n).is_file() for n in names.values()):
            rows[i] = result_row(item, names, out.path, "skipped", height=before.get("height"),
                                 width=before.get("width"), foreground=before.get("foreground"),
                                 precision=before.get("precision"), backend=before.get("backend"), job=key)
        else:
            todo.append(i)
    if rows:
        log.info("%d of %d input(s) already have complete outputs in %s: skipped", len(rows), len(plan.items), out.path)
    return rows, todo


def segment_locally(artifact_dir: str | os.PathLike, support_images: Sequence[str | os.PathLike],
                    support_masks: Sequence[str | os.PathLike], inputs: Sequence[str], out_dir: str | os.PathLike,
                    *, batch_size: int = 8, threads: int | None = None, providers="cpu",
                    allow_fallback: bool = False, overlay: bool = True, allow_empty: bool = False,
                    overwrite: bool = False, progress: bool = True, precision: str | None = None,
                    memory_budget: float | None = DEFAULT_BUDGET) -> BatchReport:
    """Segment a collection of images in this process with a fixed support set.

    The same checks, inputs, outputs, resumption and table as `ray_batch.segment_collection`:
    every output name is claimed and the support set checked before the model is loaded, and an
    input an earlier run of the same job completed is skipped. An input that cannot be read or
    decoded is an error row (the others are written). Ctrl-C / SIGTERM: the outputs written so
    far are complete and the table lists them ("interrupted" rows for the rest), then the
    interrupt goes on.

    Args:
        artifact_dir: an lfm-export directory with the encoder/head pair.
        support_images, support_masks: the K support pairs (paths or URIs).
        inputs: images, folders, globs, list files or URIs (`collection.expand_inputs`).
        out_dir: the output folder.
        batch_size, threads, providers, allow_fallback, precision: as `Segmenter.from_artifacts`.
        overlay: also write `<stem>_overlay.png`.
        allow_empty: accept support masks without foreground.
        overwrite: replace files in `out_dir` that lfm-predict did not write (never the inputs).
        progress: show a progress bar.
        memory_budget: peak bytes this process may use (`Segmenter.from_artifacts`).

    Returns:
        A `BatchReport` (precision and backend: what ran).

    Raises:
        InputError, OutputError, ManifestError, BackendUnavailable: as `segment_collection`,
            all before any input is segmented.
    """
    from tqdm.auto import tqdm

    from ..preprocess import to_pil_rgb
    from .codec import mask_png, overlay_png
    from .job import predict_isolated, prepare_job, segmenter_for

    out = open_outputs(out_dir, inputs, artifact_dir=artifact_dir, supports=[*support_images, *support_masks],
                       overwrite=overwrite)
    plan = claim_outputs(out, inputs, overlay)
    job = prepare_job(artifact_dir, support_images, support_masks, providers=providers,
                      allow_fallback=allow_fallback, allow_empty=allow_empty, precision=precision)
    rows, todo = resume(out, plan, job.key)
    ran = {"precision": job.precision, "backend": job.backend, "job": job.key}
    seg, active = None, []
    try:
        if todo:
            seg = segmenter_for(job, providers=providers, allow_fallback=allow_fallback, threads=threads,
                                batch_size=batch_size, allow_empty=allow_empty, precision=precision,
                                memory_budget=memory_budget)
            active = seg.providers
            log.info("running %s on %s (%s), exported at %s", seg.precision, seg.backend, ", ".join(seg.providers),
                     seg.exported_precision)
        with tqdm(total=len(plan.items), initial=len(rows), desc="lfm-predict", unit="img",
                  disable=not progress or len(plan.items) < 2) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                sources, readable = {}, []
                for i in chunk:
                    try:
                        sources[i] = read_bytes(plan.items[i]) if is_uri(plan.items[i]) else plan.items[i]
                        readable.append(i)
                    except OSError as exc:
                        sources[i] = InputError(f"cannot read {plan.items[i]}: {exc}")
                masks = dict(zip(readable, predict_isolated(seg, [sources[i] for i in readable])))
                for i in chunk:
                    item, names, mask = plan.items[i], plan.names[i], masks.get(i, sources[i])
                    if isinstance(mask, InputError):
                        rows[i] = result_row(item, names, out.path, "error", error=mask.cli_message(), **ran)
                        continue
                    if overlay:  # the overlay first: the mask, written last, completes the input
                        out.write_bytes(names["overlay"], overlay_png(to_pil_rgb(sources[i], item), mask))
                    out.write_bytes(names["mask"], mask_png(mask))
                    rows[i] = result_row(item, names, out.path, "ok", height=int(mask.shape[0]),
                                         width=int(mask.shape[1]), foreground=float(mask.mean()), **ran)
                bar.update(len(chunk))
    except KeyboardInterrupt:  # what was written is complete, and the table says what it is
        if out.written or rows:
            written = set(out.written)
            for i in set(range(len(plan.items))) - set(rows):
                rows[i] = result_row(plan.items[i], plan.names[i], out.path, "interrupted", **ran)
                rows[i].update({k: str(out.path / n) if n in written else None for k, n in plan.names[i].items()})
            write_table(out, [rows[i] for i in sorted(rows)])
        raise
    finally:
        if seg is not None:
            seg.close()
    ordered = [rows[i] for i in sorted(rows)]
    write_table(out, ordered)
    failed = sum(r["status"] == "error" for r in ordered)
    return BatchReport(total=len(plan.items), succeeded=len(ordered) - failed - (len(plan.items) - len(todo)),
                       skipped=len(plan.items) - len(todo), failed=failed, out_dir=out.path,
                       table=out.path / RESULTS_NAME, rows=ordered, renamed=plan.renamed(), model=job.describe(),
                       weights_label=job.manifest.weights_label, providers=active,
                       precision=job.precision, backend=job.backend)
