"""`lfm verify` (alias `lfm-verify`): cross-backend parity report for an lfm export directory."""

from __future__ import annotations

from pathlib import Path

import click

from . import SEED, setup_logging, user_errors
from .options import command, progress_option, threads_option, verbose_option


class _BackendChoice(click.Choice):
    """The registry's backends (`lfm_deploy.runtime.backends`), read when the command runs or shows its help."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self):
        from ..runtime.backends import backend_names

        return tuple(backend_names())

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ sets it; the registry is the source
        pass


@command()
@click.argument("artifact_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (verify.json/.md/.png). Default: ARTIFACT_DIR/verify.")
@click.option("--backend", "backends", multiple=True, type=_BackendChoice(),
              help="Backends to run (repeatable). Default: all; unavailable ones are reported as skipped.")
@click.option("--episodes", type=click.IntRange(min=1), default=3, help="Seeded episodes to run through every backend.")
@click.option("--seed", type=SEED, default=0, help="First episode seed.")
@threads_option()
@click.option("--layerwise", is_flag=True,
              help="Also compare intermediate stages (masker, ACPA, correlations, learner) and report the first "
                   "stage outside tolerance; exports a debug graph into the report directory.")
@click.option("--fp16-onnx", is_flag=True,
              help="Make an fp16 episode graph with fp32 islands (range check on real activations) when "
                   "ARTIFACT_DIR/engines has none, and check it in onnxruntime CPU.")
@click.option("--overwrite", is_flag=True, help="Replace files in --out that lfm-verify did not write.")
@progress_option
@verbose_option
@user_errors
def main(artifact_dir, out, backends, episodes, seed, threads, layerwise, fp16_onnx, overwrite, progress, verbose):
    """Run the same seeded episodes through every backend and compare them with PyTorch float64.

    Backends: every one of the registry (lfm_deploy.runtime.backends, docs/backends.md; the
    --backend choices): the eager model, onnxruntime, OpenVINO, TensorRT engines. For every output:
    max/mean abs error, relative L2, cosine, error quantiles, mask agreement and IoU, and the mIoU
    difference against the episodes' ground truth. float32 backends are held to the export's
    parity tolerances, reduced precisions to the domain's accuracy gate (docs/precision.md). Exit
    code 1 when a backend that ran is outside tolerance.

    \b
    Example:
      lfm verify artifacts/deepglobe
      lfm verify artifacts/deepglobe --layerwise --fp16-onnx --episodes 5
      lfm verify artifacts/deepglobe --backend ov-fp32 --backend ov-bf16
    """
    import shutil
    import tempfile

    from ..errors import ParityError
    from ..verify import REPORT_FILES, REPORT_KIND, verify_artifacts, write_report
    from ..utils.outputs import OutputDir

    from ..manifest import read_manifest

    setup_logging(verbose)
    read_manifest(artifact_dir, verify_files=False)  # the input first: a wrong ARTIFACT_DIR makes no report folder
    # The report directory and every name in it are checked before any backend runs.
    target = OutputDir(out or artifact_dir / "verify", flag="--out", kind=REPORT_KIND, overwrite=overwrite,
                       inputs={"ARTIFACT_DIR": artifact_dir})
    extras = (["layerwise.onnx"] if layerwise else []) + (["episode.fp16.onnx"] if fp16_onnx else [])
    target.claim(list(REPORT_FILES.values()) + extras)
    with tempfile.TemporaryDirectory(prefix="lfm-verify-") as work:
        report = verify_artifacts(artifact_dir, backends=list(backends) or None, episodes=episodes, seed=seed,
                                  threads=threads, layerwise=layerwise,
                                  workdir=work if (layerwise or fp16_onnx) else None, fp16_onnx=fp16_onnx,
                                  progress=progress)
        for made in sorted(Path(work).rglob("*")):  # debug graphs made on the way
            if made.is_file():
                target.write(str(made.relative_to(work)), lambda tmp, src=made: shutil.copyfile(src, tmp))
    paths = write_report(report, target)
    for line in report.summary_lines():
        if line.startswith("[FAIL]") or line.startswith("[error]"):
            click.secho(line, fg="red")
        elif line.startswith("[skipped]"):
            click.secho(line, fg="yellow")
        else:
            click.echo(line)
    click.echo(f"Report: {paths['markdown']} ({paths['json'].name}, {paths['png'].name})")
    if not report.passed:
        raise ParityError("outside tolerance: " + "; ".join(f"{b.name} ({b.reason})" for b in report.failures)
                          + f". See {paths['markdown']}")
