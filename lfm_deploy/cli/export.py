"""`lfm export` and `lfm lint-trt` (aliases `lfm-export`, `lfm-lint-trt`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..manifest import weights_label
from . import COUNT, SEED, SHOTS, setup_logging, user_errors
from .options import EXPORT_PRECISIONS, command, domain_option, progress_option, threads_option, verbose_option


@command()
@domain_option()
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="HSNet-ResNet50 checkpoint (upstream best_model.pt). Default: the synthetic-data default (built once and "
                   "cached; not a real model); 'untrained' for the seeded untrained weights.")
@click.option("--masker", type=click.Path(dir_okay=False), default=None, help="Masker file written by lfm-finetune.")
@click.option("--apm", type=click.Choice(["auto", "m", "s", "none"]), default="auto",
              help="APM variant; auto = the masker file's, else m.")
@click.option("--acpa/--no-acpa", default=None, help="ACPA on/off. Default: the masker file's, else on.")
@click.option("--shots", type=SHOTS, default=None, help="K of the exported graphs. Default: the domain's.")
@click.option("--lowering", type=click.Choice(["matmul", "dft"]), default="matmul",
              help="FFT lowering: matmul (real matrix products, TensorRT-ready) or dft (ONNX DFT).")
@click.option("--opset", type=click.IntRange(min=17), default=20, help="ONNX opset.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output directory. Default: artifacts/<domain>.")
@click.option("--split/--no-split", default=True, help="Also export the encoder/head pair for cached support sets.")
@click.option("--triton", is_flag=True, help="Also write a Triton Inference Server model repository (<out>/triton).")
@click.option("--simplify/--no-simplify", default=True, help="Simplify graphs with onnxslim.")
@click.option("--validate/--no-validate", default=True, help="Check every graph against the eager model in onnxruntime.")
@click.option("--seed", type=SEED, default=0, help="Seed of the validation episodes.")
@threads_option("onnxruntime (and torch) threads for validation and the precision gate, at most the CPU cores "
                "(more are capped).", default=2)
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32",
              help="fp32: the validated float32 graphs. int8: QDQ graphs (onnxruntime, OpenVINO, TensorRT); fp16: "
                   "fp16 graphs with float32 islands; bf16: OpenVINO bf16 on the float32 graphs (needs the openvino "
                   "extra). Reduced precisions must pass the domain's accuracy gate against the eager model "
                   "(docs/precision.md), else the export is refused and kept in <out>.failed.")
@click.option("--calibration", type=click.Path(exists=False), default=None,
              help="int8/fp16: labelled images (a folder of <stem>.jpg + <stem>_mask.png, or an index file) to "
                   "calibrate on; they also join the gate. Default: the domain's validation episodes.")
@click.option("--gate-episodes", type=COUNT, default=6,
              help="Validation episodes the reduced-precision accuracy gate runs on (plus --calibration's images).")
@click.option("--calibration-episodes", type=COUNT, default=8,
              help="int8/fp16 without --calibration: validation episodes to calibrate on (int8 also chooses its "
                   "float layers, by measured sensitivity, on as many held-out ones).")
@progress_option
@verbose_option
@user_errors
def main(domain, checkpoint, masker, apm, acpa, shots, lowering, opset, out, split, triton, simplify, validate, seed, threads,
         precision, calibration, gate_episodes, calibration_episodes, progress, verbose):
    """Export a domain's HSNet + frequency-masker model to ONNX and prove it matches PyTorch.

    Writes episode.onnx (and encoder.onnx / head.onnx), manifest.json and export_report.{json,md}
    to --out, replacing it atomically only when every graph passes validation.

    \b
    Example:
      lfm export --domain deepglobe
      lfm export --domain isic --checkpoint best_model.pt --masker masker-isic.safetensors --shots 5
      lfm export --domain deepglobe --checkpoint best_model.pt --precision int8 --calibration my_labelled/
    """
    from ..export.pipeline import REPORT_MD, export_domain

    setup_logging(verbose)
    result = export_domain(
        domain, out=out, checkpoint=checkpoint, masker=masker, apm=apm, acpa=acpa, shots=shots,
        lowering=lowering, opset=opset, split=split, triton=triton, simplify=simplify,
        validate=validate, seed=seed, threads=threads, progress=progress, precision=precision,
        calibration=calibration, gate_episodes=gate_episodes, calibration_episodes=calibration_episodes,
    )
    man = result.manifest
    click.echo(f"Exported {man.domain} ({man.variant}, {man.lowering} lowering, {man.shots}-shot) to {result.out_dir}")
    if man.untrained:
        click.secho(f"  weights: {weights_label(man)}; pass --checkpoint for a real model", fg="yellow")
    for name, entry in man.files.items():
        click.echo(f"  {name:<14} {entry.bytes / 1e6:7.1f} MB  sha256 {entry.sha256[:16]}")
    if result.checks:
        click.echo("Parity against the eager model (onnxruntime CPU):")
        for c in result.checks:
            click.echo("  " + c.line())
    else:
        click.secho("  parity: NOT validated (--no-validate)", fg="yellow")
    if result.precision is not None:
        for gate in result.precision.gates:
            for line in gate.lines():
                click.echo("  " + line)
    click.echo(f"TensorRT 10 lint: {'clean' if result.lint.get('ok') else 'findings, see manifest.json'}")
    click.echo(f"Report: {Path(result.out_dir) / REPORT_MD}")


@command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=True))
@click.option("--trt-version", default="10.0", help="Target TensorRT version (DFT is accepted from 11.2).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@verbose_option
@user_errors
def lint_main(models, trt_version, as_json, verbose):
    """Check ONNX graphs for what TensorRT cannot import, without TensorRT.

    MODELS are .onnx files or lfm export directories (every *.onnx in them). Exit code 1 when a
    graph has findings.

    \b
    Example:
      lfm lint-trt artifacts/deepglobe --trt-version 10.0
    """
    import json

    from ..tensorrt.lint import lint_onnx

    setup_logging(verbose)
    paths = []
    for m in models:
        p = Path(m)
        paths.extend(sorted(p.glob("*.onnx")) if p.is_dir() else [p])
    if not paths:
        raise click.ClickException(f"no .onnx files in {', '.join(models)}; pass .onnx files or an lfm-export directory")
    reports = {str(p): lint_onnx(p, trt_version=trt_version) for p in paths}
    if as_json:
        click.echo(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2))
    else:
        for path, report in reports.items():
            click.echo(f"{path}: {'clean' if report.ok else f'{len(report.errors)} findings'} (TensorRT {trt_version})")
            if not report.ok:
                click.echo(report.to_markdown())
    if not all(r.ok for r in reports.values()):
        raise SystemExit(1)
