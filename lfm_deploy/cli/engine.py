"""`lfm build-engine` (alias `lfm-build-engine`): TensorRT engines for an lfm export directory."""

from __future__ import annotations

from pathlib import Path

import click

from . import FiniteFloat, OutputFilePath, setup_logging, user_errors
from .options import ENGINE_PRECISIONS, command, verbose_option


@command()
@click.argument("artifact_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(ENGINE_PRECISIONS), default="fp32",
              help="The engine's precision: fp32 (TF32 off, for parity), fp16 (an fp16 graph with fp32 islands after a range check) or "
                   "int8 (explicit quantization from the int8 QDQ graphs of an `lfm-export --precision int8` "
                   "export, strongly typed, no calibrator).")
@click.option("--workspace-gb", type=FiniteFloat(min=0, min_open=True), default=4.0, help="Workspace memory limit (GiB).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, help="Largest batch of the optimisation profile (min = opt = 1).")
@click.option("--timing-cache", type=OutputFilePath(path_type=Path), default=None,
              help="Persistent timing cache: loaded if present, updated after the build.")
@click.option("--graph", "graphs", multiple=True, type=click.Choice(["episode", "encoder", "head"]),
              help="Graphs to build (repeatable). Default: every graph of the export.")
@click.option("--typing", type=click.Choice(["auto", "strong", "weak"]), default="auto",
              help="fp16 on TensorRT 10.x: strong (fp16 graph, default) or weak (BuilderFlag.FP16, islands pinned). "
                   "TensorRT 11 is always strongly typed.")
@click.option("--fp16-margin", type=FiniteFloat(min=1), default=4.0,
              help="fp16 safety margin: nodes whose activations exceed 65504 / margin stay fp32.")
@click.option("--onnx-only", is_flag=True, help="fp16: write the fp16 graphs and range reports only (no TensorRT needed).")
@click.option("--overwrite", is_flag=True, help="Replace files in ARTIFACT_DIR/engines that lfm-build-engine did not write.")
@verbose_option
@user_errors
def main(artifact_dir, precision, workspace_gb, max_batch, timing_cache, graphs, typing, fp16_margin, onnx_only,
         overwrite, verbose):
    """Build TensorRT engines from the exported (matmul-lowered) graphs into ARTIFACT_DIR/engines.

    fp32 and fp16 engines start from the float32 graphs; int8 engines from the export's gated
    int8 QDQ graphs (Q/DQ nodes decide the precision: no INT8 flag, no calibration here).

    Each engine <graph>.<precision>.plan gets a sidecar <graph>.<precision>.plan.json with the
    TensorRT version, GPU, compute capability, precision, the ONNX file's sha256 and the
    profile; engines are only loaded where these match.

    \b
    Example:
      lfm build-engine artifacts/deepglobe --precision fp16 --max-batch 8 --timing-cache trt.cache
      lfm build-engine artifacts/deepglobe --precision fp16 --onnx-only   # no GPU needed
      lfm build-engine artifacts/deepglobe-int8 --precision int8          # after lfm export --precision int8
    """
    from ..tensorrt.engines import ENGINE_DIR, build_engines

    setup_logging(verbose)
    builds = build_engines(artifact_dir, precision=precision, graphs=list(graphs) or None, workspace_gb=workspace_gb,
                           max_batch=max_batch, timing_cache=timing_cache, typing=typing, fp16_margin=fp16_margin,
                           onnx_only=onnx_only, overwrite=overwrite)
    if onnx_only:
        for p in sorted((artifact_dir / ENGINE_DIR).glob("*.fp16.onnx")):
            click.echo(f"fp16 graph: {p} (report {p.with_suffix('.json').name})")
        return
    for b in builds:
        s = b.sidecar
        click.echo(f"{b.engine} ({s['precision']}, {s['typing']}ly typed, TensorRT {s['tensorrt_version']}, "
                   f"{s['gpu']['name']} sm {s['gpu']['compute_capability']}, max batch {s['max_batch']})")
