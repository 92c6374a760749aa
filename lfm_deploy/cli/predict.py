"""`lfm-predict`: segment query images with an exported model and a support set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from . import BATCH_SIZE, THREADS, WORKERS, FiniteFloat, setup_logging, user_errors, verbose_option

log = logging.getLogger(__name__)

#: Extensions picked up when a QUERY is a directory.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: What lfm-predict writes into --out, and the name of its per-query results table.
PREDICT_KIND = "lfm-predict output"
RESULTS_NAME = "results.jsonl"


def _parse_support(ctx, param, values):
    pairs = []
    for value in values:
        splits = [(value[:i], value[i + 1:]) for i, c in enumerate(value) if c == ":" and 0 < i < len(value) - 1]
        if not splits:
            raise click.BadParameter(f"{value!r} is not IMAGE:MASK (e.g. --support img.jpg:img_mask.png)",
                                     ctx=ctx, param=param)
        # Paths may hold colons themselves (C:\...): take the split where both files exist.
        found = [(img, mask) for img, mask in splits if Path(img).is_file() and Path(mask).is_file()]
        if not found:
            image, mask = splits[-1]
            missing = image if not Path(image).is_file() else mask
            problem = "is a directory, not an image file" if Path(missing).is_dir() else "does not exist"
            raise click.BadParameter(f"{missing!r} (in {value!r}) {problem}", ctx=ctx, param=param)
        pairs.append(found[0])
    return pairs


def _expand_queries(queries) -> list[Path]:
    files: list[Path] = []
    for query in queries:
        path = Path(query)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                log.warning("%s holds no images (%s)", path, ", ".join(IMAGE_EXTENSIONS))
            files.extend(found)
        else:
            files.append(path)
    return files


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", nargs=-1, required=True, type=click.Path(), metavar="QUERY...")
@click.option("--support", "supports", multiple=True, required=True, callback=_parse_support, metavar="IMAGE:MASK",
              help="A support image and its mask (repeat for K-shot artifacts; exactly K pairs).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace files in --out that lfm-predict did not write.")
@click.option("--batch-size", type=BATCH_SIZE, default=8, help="Queries per inference run.")
@click.option("--memory-budget", type=FiniteFloat(min=0, min_open=True), default=None, metavar="GB",
              help="Peak memory this process may use, in GB: each inference run takes at most the queries that fit "
                   "(~0.34 GB + ~0.32 GB per query at 400 px, lfm_deploy.runtime.memory), whatever --batch-size says; "
                   "masks are the same. Default: no budget. --engine local only.")
@click.option("--providers", default="cpu",
              help="Execution providers, best first: cpu, cuda, tensorrt (comma-separated); or openvino alone "
                   "(the OpenVINO CPU runtime, needs the openvino extra).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              help="bf16 needs --providers openvino: 1.6-1.9x faster on CPUs with AVX512-BF16/AMX, and it changes "
                   "masks slightly where the two logits are close (compare with an fp32 run; measured in "
                   "docs/openvino.md).")
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU when a requested accelerator is unavailable.")
@click.option("--threads", type=THREADS, default=None,
              help="onnxruntime intra-op (or OpenVINO inference) threads, at most the CPU cores (more are capped). "
                   "Default: all cores.")
@click.option("--overlay/--no-overlay", default=True,
              help="Also write <stem>_overlay.png (the mask tinted and outlined over the image, with a legend).")
@click.option("--allow-empty-mask", is_flag=True, help="Accept support masks without foreground (a warning instead of an error).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              help="local: this process. ray: a Ray Data job (QUERY may also be a glob, a list file or a URI; "
                   "adds results.jsonl; resumable).")
@click.option("--address", default=None, help="--engine ray: join this Ray cluster (ray start --head prints it). "
                                               "Default: start a local one for the job.")
@click.option("--workers", type=WORKERS, default=1, help="--engine ray: worker actors.")
@click.option("--cpus-per-worker", type=FiniteFloat(min=0, min_open=True), default=0.5,
              help="--engine ray: CPUs each worker reserves in Ray's scheduler (fractional keeps a core for reads).")
@verbose_option
@user_errors
def main(artifact_dir, queries, supports, out_dir, overwrite, batch_size, memory_budget, providers, precision, allow_fallback, threads,
         overlay, allow_empty_mask, quiet, engine, address, workers, cpus_per_worker, verbose):
    """Segment QUERY images (files or directories of images) with an lfm-export directory.

    Writes <stem>_mask.png (0/255, at the query's original size) and <stem>_overlay.png per
    query into --out, and results.jsonl (one row per query: input, outputs, size, foreground
    fraction, status, error). Queries sharing a file stem get distinct names (x.jpg, x.png ->
    x_jpg, x_png). A query that cannot be read is listed and skipped; the others are written,
    and the exit code is 1. With --engine ray the same files come from a Ray Data job
    (README, "Scale out with Ray").

    \b
    Example:
      lfm-predict artifacts/deepglobe --support s.jpg:s_mask.png queries/ --out predictions
    """
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..runtime import Segmenter
    from ..runtime.backends import selected_runtime
    from ..preprocess import to_pil_rgb
    from ..serving.codec import overlay_png
    from ..serving.collection import output_stems
    from ..utils.outputs import OutputDir

    setup_logging(verbose)
    openvino = selected_runtime(providers)  # refuses openvino mixed with others
    if precision == "bf16" and not openvino:  # said before --out is touched
        raise click.UsageError("--precision bf16 needs --providers openvino (onnxruntime runs fp32)")
    if engine == "ray" and memory_budget is not None:
        raise click.UsageError("--memory-budget is for --engine local (Ray workers declare their memory from "
                               "--batch-size)")
    if engine == "ray":
        from ._predict_ray import predict_on_ray

        return predict_on_ray(artifact_dir, supports, queries, out_dir, batch_size=batch_size, providers=providers,
                              allow_fallback=allow_fallback, threads=threads, overlay=overlay,
                              allow_empty=allow_empty_mask, quiet=quiet, address=address, workers=workers,
                              cpus_per_worker=cpus_per_worker, verbose=verbose, overwrite=overwrite,
                              precision=precision)
    if address is not None:
        raise click.UsageError("--address needs --engine ray")
    for query in queries:
        if not Path(query).exists():
            raise click.BadParameter(f"Path {query!r} does not exist.", param_hint="'QUERY...'")
    files = _expand_queries(queries)
    if not files:
        raise click.UsageError("no query images found in the given QUERY paths")
    stems = output_stems([str(f) for f in files])
    names = {stem: [f"{stem}_mask.png"] + ([f"{stem}_overlay.png"] if overlay else []) for stem in stems}
    # Every output name is checked before the model is loaded.
    # ... and none may be an input: the query folder, the artifacts, a support file.
    out = OutputDir(out_dir, flag="--out", kind=PREDICT_KIND, overwrite=overwrite,
                    inputs={"ARTIFACT_DIR": artifact_dir, "QUERY": list(queries),
                            "--support": [path for pair in supports for path in pair]})
    out.claim([n for stem in stems for n in names[stem]] + [RESULTS_NAME],
              [str(f) for f, stem in zip(files, stems) for _ in names[stem]] + ["the results table"])
    seg = Segmenter.from_artifacts(artifact_dir, providers=providers, allow_fallback=allow_fallback,
                                   threads=threads, batch_size=batch_size, precision=precision,
                                   memory_budget=None if memory_budget is None else memory_budget * (1 << 30))
    seg.set_support([img for img, _ in supports], [mask for _, mask in supports], allow_empty=allow_empty_mask)

    from PIL import Image

    rows, failed = [], []
    try:
        with tqdm(total=len(files), desc="lfm-predict", unit="img", disable=quiet or len(files) < 2) as bar:
            for start in range(0, len(files), batch_size):
                chunk = list(zip(files[start:start + batch_size], stems[start:start + batch_size]))
                try:
                    masks = seg.predict([str(f) for f, _ in chunk])
                except InputError:  # find which query failed: the others are still segmented
                    masks = []
                    for path, _ in chunk:
                        try:
                            masks.append(seg.predict(str(path)))
                        except InputError as exc:
                            masks.append(exc)
                for (path, stem), mask in zip(chunk, masks):
                    row = {"input": str(path), "mask": None, "overlay": None, "width": None, "height": None,
                           "foreground": None, "status": "ok", "error": None}
                    if isinstance(mask, InputError):
                        row.update(status="error", error=mask.cli_message())
                        failed.append(row)
                    else:
                        png = Image.fromarray(mask * np.uint8(255))
                        row["mask"] = str(out.write(names[stem][0], lambda tmp: png.save(tmp, format="PNG")))
                        if overlay:
                            drawn = overlay_png(to_pil_rgb(path, str(path)), mask)
                            row["overlay"] = str(out.write_bytes(names[stem][1], drawn))
                        row.update(height=int(mask.shape[0]), width=int(mask.shape[1]),
                                   foreground=round(float(mask.mean()), 6))
                    rows.append(row)
                bar.update(len(chunk))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: what was written is complete, and the table says what it is
        if out.written:
            done, written = {r["input"] for r in rows}, set(out.written)
            for f, stem in zip(files, stems):
                if str(f) not in done:
                    mask, tint = (str(out.path / n) if n in written else None for n in (names[stem] + [None])[:2])
                    rows.append({"input": str(f), "mask": mask, "overlay": tint, "width": None, "height": None,
                                 "foreground": None, "status": "interrupted", "error": None})
            out.write_text(RESULTS_NAME, "".join(json.dumps(r) + "\n" for r in rows))
            out.flush()
        raise
    out.write_text(RESULTS_NAME, "".join(json.dumps(r) + "\n" for r in rows))
    out.flush()
    written = len(rows) - len(failed)
    renamed = [(f, stem) for f, stem in zip(files, stems) if stem != f.stem]
    for f, stem in renamed:
        click.echo(f"  {f} -> {stem}_mask.png (another query has the stem {f.stem!r})")
    click.echo(f"Wrote {written} mask(s){' and overlays' if overlay else ''} to {out.path} "
               f"({seg.domain}, {seg.shots}-shot, {', '.join(seg.providers)}); table: {RESULTS_NAME}")
    if seg.untrained:
        click.secho(f"  note: these artifacts hold the {seg.weights_label} weights; the masks say nothing about "
                    "real images", fg="yellow")
    if failed:
        for row in failed:
            click.echo(f"  not segmented: {row['error']}", err=True)
        raise click.ClickException(
            f"{len(failed)} of {len(files)} queries could not be read (listed above); the other {written} "
            f"were written to {out.path}")
