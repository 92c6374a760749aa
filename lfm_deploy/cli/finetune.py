"""`lfm finetune`, `lfm eval` and `lfm make-data` (aliases `lfm-finetune`, ...): fine-tune a domain's masker,
evaluate it on the CD-FSS episodes, and write a synthetic dataset to try both on. Each calls one public
function (`finetune_domain`, `evaluate`, `make_synthetic_dataset`), importing torch only when it runs."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..manifest import SYNTHETIC_SOURCE
from ..preprocess import MAX_IMAGE_SIDE
from . import COUNT, SEED, SHOTS, STEPS, FiniteFloat, OutputFilePath, setup_logging, user_errors
from .options import command, domain_option, progress_option, set_torch_threads, threads_option, verbose_option

_TORCH_THREADS = "torch intra-op threads, at most the CPU cores (more are capped). Default: torch's (all cores)."

#: Peak memory of writing one synthetic image per pixel (float64 textures; 98 measured, with margin).
_SYNTHETIC_BYTES_PER_PIXEL = 112


# Options lfm finetune and lfm eval spell the same way (a click.option decorator makes a new Option each use).
_checkpoint_option = click.option(
    "--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Base HSNet-ResNet50 checkpoint (see README 'Published checkpoints'). Without it the synthetic-data default "
         "(built once and cached; not a real model); 'untrained' for the seeded untrained one.")
_image_size_option = click.option("--image-size", type=click.IntRange(32, 2048), default=None, hidden=True,
                                  help="Model input side (default: the domain's, 400). For tests and experiments only.")


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def _apm_value(ctx, param, value):
    return None if value == "none" else value


def _untrained_note(weights: dict) -> None:
    """The yellow note under a result computed on weights that are not a real model."""
    if not weights.get("untrained"):
        return
    if weights.get("source") == SYNTHETIC_SOURCE:
        text = ("NOTE: SYNTHETIC-DATA default base weights (no --checkpoint): the HSNet head and the backbone's last "
                "stage were trained on lfm-make-data's synthetic shapes, the rest of the backbone is seeded random. "
                "Not a real model: it shows "
                "the pipeline working on synthetic data only; pass an HSNet checkpoint (--checkpoint) for real results.")
    else:
        text = ("NOTE: UNTRAINED base weights: seeded random backbone and learner, only good for trying the "
                "pipeline; pass an HSNet checkpoint for real results.")
    click.secho(text, fg="yellow", err=True)


@command()
@domain_option()
@click.option(
    "--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Benchmark dataset root (the folder holding Deepglobe/, ISIC/, ...): the first --shots "
    "images of every class are the support set. Exclusive with --support.",
)
@click.option(
    "--support", type=click.Path(path_type=Path), default=None,
    help="Your own support set: a folder of <stem>.jpg with <stem>_mask.png, or a CSV/JSONL index. "
    "Exclusive with --data-root.",
)
@_checkpoint_option
@click.option("--shots", type=SHOTS, default=None,
              help="Support images per class. Default: the domain's default (1) with --data-root, all with --support.")
@click.option("--apm", type=click.Choice(["m", "s", "none"]), default="m", callback=_apm_value,
              help="Amplitude-Phase Masker: m (per channel, 692k parameters), s (shared, 338) or none.")
@click.option("--acpa/--no-acpa", default=True, help="Adaptive Channel Phase Attention.")
@click.option("--iterations", type=STEPS, default=None,
              help="Optimizer steps. Default: the domain's schedule (60).")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Learning rate. Default: the domain's (Deepglobe/ISIC 0.01, Chest X-ray 0.1, FSS-1000 1e-5).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=None,
              help="Optimizer. Default: the domain's (adam).")
@click.option("--seed", type=SEED, default=0, help="Seed of the masker initialisation.")
@click.option("--out", type=OutputFilePath(path_type=Path), default=None,
              help="Masker file to write; a <name>.finetune.json log goes next to it. "
              "[default: masker-<domain>.safetensors]")
@click.option("--pairs-per-iteration", type=click.IntRange(1, 256), default=None,
              help="(query, support) pairs per step. Default: number of support images, at most 8.")
@_image_size_option
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out file (or its log) that is not an earlier lfm-finetune output.")
@threads_option(_TORCH_THREADS)
@progress_option
@verbose_option
@user_errors
def finetune_main(domain, data_root, support, checkpoint, shots, apm, acpa, iterations, lr, optimizer, seed, out,
                  pairs_per_iteration, image_size, overwrite, threads, progress, verbose):
    """Fine-tune the frequency masker (APM + ACPA) for one target domain.

    Only the masker is trained; the backbone and the HSNet learner stay frozen. Each support
    image is the query of another support image of its class (alone in its class, it is its own
    support), with HSNet's cross-entropy loss. Writes the masker file and a JSON log.

    \b
    Example:
      lfm finetune --domain deepglobe --data-root ./data --checkpoint hsnet.pt --shots 5
    """
    setup_logging(verbose)
    if (data_root is None) == (support is None):
        raise click.UsageError("pass exactly one of --data-root (benchmark dataset) or --support (your own set)")
    from ..finetune.trainer import finetune_domain

    set_torch_threads(threads)
    result = finetune_domain(
        domain, data_root=data_root, support=support, checkpoint=checkpoint, shots=shots, apm=apm, acpa=acpa,
        iterations=iterations, lr=lr, optimizer=optimizer, seed=seed, out=out,
        pairs_per_iteration=pairs_per_iteration, image_size=image_size, progress=progress, overwrite=overwrite,
    )
    s = result.settings
    click.echo(f"domain        {domain.name} ({s['variant']}, {s['image_size']}x{s['image_size']})")
    images, classes = _count(s["support_images"], "image"), _count(s["support_classes"], "class")
    click.echo(f"support       {images} in {classes} from {s['support_source']}")
    click.echo(f"schedule      {result.iterations} iterations, {result.optimizer} lr {result.lr:g}, seed {result.seed}")
    if result.losses:
        click.echo(f"loss          {result.first_loss:.6f} (first) -> {result.last_loss:.6f} (last)")
    click.echo(f"time          {result.seconds:.1f}s ({result.seconds_setup:.1f}s caching features)")
    click.echo(f"base weights  {result.weights.describe()}")
    click.echo(f"masker        {result.masker_path}")
    click.echo(f"log           {result.log_path}")
    _untrained_note(result.weights.to_dict())


@command()
@domain_option()
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Benchmark dataset root (the folder holding Deepglobe/, ISIC/, ...).")
@click.option("--shots", type=SHOTS, default=None,
              help="Supports per episode (the benchmark reports 1 and 5). Default: the domain's (1).")
@click.option("--masker", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Masker file from lfm-finetune (sets --apm/--acpa from its metadata).")
@_checkpoint_option
@click.option("--protocol", type=click.Choice(["per-domain", "per-episode"]), default="per-domain",
              help="per-domain: one fixed masker for all episodes. per-episode (the paper's): reset and "
              "re-tune the masker on each episode's supports before predicting its query.")
@click.option("--episodes", type=COUNT, default=None,
              help="Number of episodes. Default: the benchmark's (600; FSS-1000 one per test image).")
@click.option("--seed", type=SEED, default=0, help="Episode seed (0 reproduces the benchmark's episodes).")
@click.option("--apm", type=click.Choice(["m", "s", "none"]), default="m", callback=_apm_value,
              help="Model variant when no --masker is given.")
@click.option("--acpa/--no-acpa", default=True, help="Model variant when no --masker is given.")
@click.option("--iterations", type=STEPS, default=None,
              help="per-episode protocol: fine-tuning steps per episode. Default: the domain's (60).")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None,
              help="per-episode protocol: learning rate. Default: the domain's.")
@click.option("--overlays", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write overlay PNGs (support | query | ground truth | prediction) of the first episodes here.")
@click.option("--overlay-count", type=click.IntRange(0, 10**4), default=4, help="Number of overlay PNGs.")
@click.option("--report", type=OutputFilePath(path_type=Path), default=None,
              help="Write the JSON report here.")
@_image_size_option
@click.option("--overwrite", is_flag=True,
              help="Replace existing --report / --overlays files that lfm-eval did not write.")
@threads_option(_TORCH_THREADS)
@progress_option
@verbose_option
@user_errors
def eval_main(domain, data_root, shots, masker, checkpoint, protocol, episodes, seed, apm, acpa, iterations, lr,
              overlays, overlay_count, report, image_size, overwrite, threads, progress, verbose):
    """Evaluate on the CD-FSS test episodes: mIoU, FB-IoU and per-class IoU (CPU).

    \b
    Example:
      lfm eval --domain deepglobe --data-root ./data --shots 1 \\
               --checkpoint hsnet.pt --masker masker-deepglobe.safetensors --report report.json
    """
    setup_logging(verbose)
    from ..finetune.evaluate import evaluate

    set_torch_threads(threads)
    result = evaluate(
        domain, data_root, shots=shots, masker=masker, checkpoint=checkpoint, protocol=protocol, episodes=episodes,
        seed=seed, overlays_dir=overlays, overlay_count=overlay_count, progress=progress, apm=apm, acpa=acpa,
        iterations=iterations, lr=lr, image_size=image_size, report_path=report, overwrite=overwrite,
    )
    click.echo(f"{result['title']}: {result['shots']}-shot, {result['protocol']}, {result['variant']}, "
               f"{result['episodes']} episodes in {result['seconds']:.1f}s")
    click.echo(f"mIoU    {_fmt(result['miou'])}")
    click.echo(f"FB-IoU  {_fmt(result['fb_iou'])}")
    for name, iou in result["per_class_iou"].items():
        click.echo(f"  {name:<24} {_fmt(iou)}  ({result['class_episodes'][name]} episodes)")
    click.echo(f"weights {result['weights_description']}")
    if result["overlays"]:
        click.echo(f"overlays {len(result['overlays'])} PNGs in {Path(result['overlays'][0]).parent}")
    if report is not None:
        click.echo(f"report  {report}")
    if "note" in result:
        click.echo(f"note    {result['note']}")
    _untrained_note({**result["weights"], "untrained": result["untrained"]})


@command()
@domain_option()
@click.option("--out", "root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset root to write; the domain's folder (e.g. Deepglobe/) is created inside.")
@click.option("--per-class", type=click.IntRange(2, 10**4), default=None,
              help="Images per class. [default: 10 for FSS-1000, else 6]")
@click.option("--size", type=click.IntRange(8, MAX_IMAGE_SIDE), default=96,
              help="Image side in pixels (readers resize to 400; they read at most 16384).")
@click.option("--classes", type=click.IntRange(1, 10**4), default=None,
              help="FSS-1000 only: number of classes. [default: 4]")
@click.option("--seed", type=SEED, default=0, help="Seed; the same seed writes the same files.")
@verbose_option
@user_errors
def make_data_main(domain, root, per_class, size, classes, seed, verbose):
    """Write a small synthetic dataset in a domain's exact on-disk layout.

    Same folders, names, extensions and mask encodings as the real benchmark data, so
    lfm-finetune and lfm-eval read it unchanged (textured shapes on textured backgrounds; not
    real data).

    \b
    Example:
      lfm make-data --domain deepglobe --out ./synthetic
      lfm finetune --domain deepglobe --data-root ./synthetic --iterations 5
    """
    setup_logging(verbose)
    from ..data import make_synthetic_dataset, open_dataset
    from ..utils.limits import check_memory

    # Refused before any array exists (a MemoryError traceback, or the OOM killer, otherwise).
    check_memory(_SYNTHETIC_BYTES_PER_PIXEL * size * size, f"--size {size} ({size}x{size} images)",
                 hint="pass a smaller size", cli_hint="pass a smaller --size (the readers resize images to 400 anyway)")
    base = make_synthetic_dataset(domain, root, per_class=per_class, size=size, seed=seed, classes=classes)
    dataset = open_dataset(domain, base.parent)  # where it was written ('~' expanded, links resolved)
    click.echo(f"wrote {len(dataset)} images in {dataset.num_classes} classes ({size}x{size}) under {base}")
