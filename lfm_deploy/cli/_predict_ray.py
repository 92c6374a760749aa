"""`lfm-predict --engine ray`: the command-line side of `lfm_deploy.serving.ray_batch`."""

from __future__ import annotations

import click

#: Error rows named in the one-line error (the rest are in the results table).
_SHOWN_ERRORS = 3


def predict_on_ray(artifact_dir, supports, queries, out_dir, *, batch_size, providers, allow_fallback, threads,
                   overlay, allow_empty, quiet, address, workers, cpus_per_worker, verbose, overwrite=False,
                   precision=None) -> None:
    """Run the batch job, print its summary; any failed input is an `Error:` line and exit 1."""
    from ..serving.ray_batch import segment_collection

    report = segment_collection(
        artifact_dir, [img for img, _ in supports], [mask for _, mask in supports], list(queries), out_dir,
        address=address, workers=workers, batch_size=batch_size, threads=threads, cpus_per_worker=cpus_per_worker,
        providers=providers, allow_fallback=allow_fallback, overlay=overlay, allow_empty=allow_empty,
        progress=not quiet, verbose=verbose, overwrite=overwrite, precision=precision,
    )
    click.echo(f"{report.total} input(s): {report.succeeded} succeeded, {report.failed} failed, {report.skipped} "
               f"skipped (already complete); masks{' and overlays' if overlay else ''} in {report.out_dir}, "
               f"results in {report.table}")
    if not report.ok:
        errors = report.errors()
        shown = "; ".join(f"{r['input']}: {r['error']}" for r in errors[:_SHOWN_ERRORS])
        more = f" (and {len(errors) - _SHOWN_ERRORS} more)" if len(errors) > _SHOWN_ERRORS else ""
        raise click.ClickException(f"{report.failed} of {report.total} input(s) failed: {shown}{more}; fix or remove "
                                   f"them and re-run (completed outputs are kept and skipped), see {report.table}")
