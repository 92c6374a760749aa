"""`lfm predict` (alias `lfm-predict`): segment query images with an exported model and a support set.

The command checks its options and calls `serving.batch.segment_locally` (this process) or
`serving.ray_batch.segment_collection` (a Ray Data job): one predict path (`serving.batch`).
"""

from __future__ import annotations

from pathlib import Path

import click

from . import BATCH_SIZE, WORKERS, FiniteFloat, setup_logging, user_errors
from .options import (command, memory_budget_option, progress_option, providers_option, run_precision_option,
                      threads_option, verbose_option)

#: Error rows named in the one-line error (the rest are in the results table).
_SHOWN_ERRORS = 3
#: Options that only the Ray engine reads (parameter: flag): given with --engine local, refused.
_RAY_ONLY = {"address": "--address", "workers": "--workers", "cpus_per_worker": "--cpus-per-worker"}


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


@command()
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", nargs=-1, required=True, type=click.Path(), metavar="QUERY...")
@click.option("--support", "supports", multiple=True, required=True, callback=_parse_support, metavar="IMAGE:MASK",
              help="A support image and its mask (repeat for K-shot artifacts; exactly K pairs).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace files in --out that lfm predict did not write.")
@click.option("--batch-size", type=BATCH_SIZE, default=8, help="Queries per inference run.")
@memory_budget_option("a model process (this one, or each Ray worker)")
@providers_option()
@run_precision_option
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU when a requested accelerator is unavailable.")
@threads_option("onnxruntime intra-op (or OpenVINO inference) threads, at most the CPU cores (more are capped); "
                "with --engine ray, per worker. Default: all cores (ray: the cores / --workers).")
@click.option("--overlay/--no-overlay", default=True,
              help="Also write <stem>_overlay.png (the mask tinted and outlined over the image, with a legend).")
@click.option("--allow-empty-mask", is_flag=True, help="Accept support masks without foreground (a warning instead of an error).")
@progress_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              help="local: this process. ray: a Ray Data job (resumable: complete outputs of an earlier run are "
                   "skipped).")
@click.option("--address", default=None, help="--engine ray: join this Ray cluster (ray start --head prints it). "
                                               "Default: start a local one for the job.")
@click.option("--workers", type=WORKERS, default=1, help="--engine ray: worker actors.")
@click.option("--cpus-per-worker", type=FiniteFloat(min=0, min_open=True), default=0.5,
              help="--engine ray: CPUs each worker reserves in Ray's scheduler (fractional keeps a core for reads).")
@verbose_option
@user_errors
def main(artifact_dir, queries, supports, out_dir, overwrite, batch_size, memory_budget, providers, precision,
         allow_fallback, threads, overlay, allow_empty_mask, progress, engine, address, workers, cpus_per_worker,
         verbose):
    """Segment QUERY images with an lfm export directory and a support set.

    QUERY is an image, a folder (its images), a glob ('tiles/**/*.jpg', quoted; ** recurses),
    a list file (.txt/.lst/.list: one path or URI a line) or a URI (s3://, gs://, file://).
    Writes <stem>_mask.png (0/255, at the query's original size) and <stem>_overlay.png per
    query into --out, and results.jsonl (one row per query: input, outputs, size, foreground
    fraction, status, error, and the precision and backend that ran). Queries sharing a file
    stem get distinct names (x.jpg, x.png -> x_jpg, x_png). A query that cannot be read is
    listed and skipped; the others are written, and the exit code is 1. --engine ray runs the
    same on a Ray Data job (README, "Scale out with Ray").

    \b
    Example:
      lfm predict artifacts/deepglobe --support s.jpg:s_mask.png queries/ --out predictions
    """
    setup_logging(verbose)
    ctx = click.get_current_context()
    if engine == "local":  # an option that does not apply is refused, not ignored
        for name, flag in _RAY_ONLY.items():
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                raise click.UsageError(f"{flag} is for --engine ray; add --engine ray, or drop {flag}")
    from ..runtime.backends import selected_runtime
    from ..serving.collection import is_uri

    if precision == "bf16" and not selected_runtime(providers):  # (which refuses openvino mixed with others)
        raise click.UsageError("--precision bf16 needs --providers openvino (onnxruntime has no bf16)")
    for query in queries:  # a mistyped path is a usage error, before --out is touched
        if not (is_uri(query) or any(c in query for c in "*?[")) and not Path(query).exists():
            raise click.BadParameter(f"Path {query!r} does not exist.", param_hint="'QUERY...'")
    images, masks = [img for img, _ in supports], [mask for _, mask in supports]
    if engine == "ray":
        from ..serving.ray_batch import segment_collection

        report = segment_collection(
            artifact_dir, images, masks, list(queries), out_dir, address=address, workers=workers,
            batch_size=batch_size, threads=threads, cpus_per_worker=cpus_per_worker, providers=providers,
            allow_fallback=allow_fallback, overlay=overlay, allow_empty=allow_empty_mask, progress=progress,
            verbose=verbose, overwrite=overwrite, precision=precision, memory_budget=memory_budget * (1 << 30))
    else:
        from ..serving.batch import segment_locally

        report = segment_locally(
            artifact_dir, images, masks, list(queries), out_dir, batch_size=batch_size, threads=threads,
            providers=providers, allow_fallback=allow_fallback, overlay=overlay, allow_empty=allow_empty_mask,
            overwrite=overwrite, progress=progress, precision=precision,
            memory_budget=memory_budget * (1 << 30))
    _summary(report, overlay, engine)


def _summary(report, overlay: bool, engine: str) -> None:
    """What ran and what was written; any failed input is one `Error:` line (exit 1)."""
    for item, stem in report.renamed:
        click.echo(f"  {item} -> {stem}_mask.png (another query has the same file stem)")
    providers = f" ({', '.join(report.providers)})" if report.providers else ""
    ran = f"{report.model}; ran {report.precision} on {report.backend}{providers}"
    what = f"mask(s){' and overlays' if overlay else ''}"
    if engine == "local":
        skipped = f"; {report.skipped} already complete from an earlier run, skipped" if report.skipped else ""
        click.echo(f"Wrote {report.succeeded} {what} to {report.out_dir} ({ran}){skipped}; table: {report.table.name}")
    else:
        click.echo(f"{report.total} input(s): {report.succeeded} succeeded, {report.failed} failed, {report.skipped} "
                   f"skipped (already complete); {what} in {report.out_dir} ({ran}), results in {report.table}")
    if report.weights_label:
        click.secho(f"  note: these artifacts hold the {report.weights_label} weights; the masks say nothing about "
                    "real images", fg="yellow")
    if report.ok:
        return
    errors = report.errors()
    if engine == "local":
        for row in errors:
            click.echo(f"  not segmented: {row['error']}", err=True)
        raise click.ClickException(f"{report.failed} of {report.total} queries could not be read (listed above); "
                                   f"the other {report.succeeded} were written to {report.out_dir}")
    shown = "; ".join(f"{r['input']}: {r['error']}" for r in errors[:_SHOWN_ERRORS])
    more = f" (and {len(errors) - _SHOWN_ERRORS} more)" if len(errors) > _SHOWN_ERRORS else ""
    raise click.ClickException(f"{report.failed} of {report.total} input(s) failed: {shown}{more}; fix or remove "
                               f"them and re-run (completed outputs are kept and skipped), see {report.table}")
