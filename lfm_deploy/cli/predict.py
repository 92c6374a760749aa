"""`lfm-predict`: segment query images with an exported model and a support set."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import numpy as np

from . import setup_logging, user_errors, verbose_option

log = logging.getLogger(__name__)

#: Extensions picked up when a QUERY is a directory.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_COLOR = (255, 0, 0)
OVERLAY_ALPHA = 0.45


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
            raise click.BadParameter(f"file {missing!r} (in {value!r}) does not exist", ctx=ctx, param=param)
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


def _unique_stems(files: list[Path]) -> list[str]:
    """Output stems: the file stem, made unique when two queries share it."""
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        stems.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return stems


def _overlay(image_path: Path, mask):
    from PIL import Image

    from ..preprocess import to_pil_rgb

    rgb = np.asarray(to_pil_rgb(image_path, str(image_path)), dtype=np.float32)
    color = np.asarray(OVERLAY_COLOR, dtype=np.float32)
    fg = mask.astype(bool)[..., None]
    out = np.where(fg, rgb * (1 - OVERLAY_ALPHA) + color * OVERLAY_ALPHA, rgb)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", nargs=-1, required=True, type=click.Path(), metavar="QUERY...")
@click.option("--support", "supports", multiple=True, required=True, callback=_parse_support, metavar="IMAGE:MASK",
              help="A support image and its mask (repeat for K-shot artifacts; exactly K pairs).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Queries per inference run.")
@click.option("--providers", default="cpu", help="Execution providers, best first: cpu, cuda, tensorrt (comma-separated).")
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU when a requested accelerator is unavailable.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads. Default: all cores.")
@click.option("--overlay/--no-overlay", default=True, help="Also write <stem>_overlay.png (mask tinted over the image).")
@click.option("--allow-empty-mask", is_flag=True, help="Accept support masks without foreground (a warning instead of an error).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              help="local: this process. ray: a Ray Data job (QUERY may also be a glob, a list file or a URI; "
                   "adds results.jsonl; resumable).")
@click.option("--address", default=None, help="--engine ray: join this Ray cluster (ray start --head prints it). "
                                               "Default: start a local one for the job.")
@click.option("--workers", type=click.IntRange(min=1), default=1, help="--engine ray: worker actors.")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=0.5,
              help="--engine ray: CPUs each worker reserves in Ray's scheduler (fractional keeps a core for reads).")
@verbose_option
@user_errors
def main(artifact_dir, queries, supports, out_dir, batch_size, providers, allow_fallback, threads, overlay,
         allow_empty_mask, quiet, engine, address, workers, cpus_per_worker, verbose):
    """Segment QUERY images (files or directories of images) with an lfm-export directory.

    Writes <stem>_mask.png (0/255, at the query's original size) and <stem>_overlay.png per
    query into --out. With --engine ray the same files come from a Ray Data job (see
    README, "Scale out with Ray").

    \b
    Example:
      lfm-predict artifacts/deepglobe --support s.jpg:s_mask.png queries/ --out predictions
    """
    from tqdm.auto import tqdm

    from ..runtime import Segmenter

    setup_logging(verbose)
    if engine == "ray":
        from ._predict_ray import predict_on_ray

        return predict_on_ray(artifact_dir, supports, queries, out_dir, batch_size=batch_size, providers=providers,
                              allow_fallback=allow_fallback, threads=threads, overlay=overlay,
                              allow_empty=allow_empty_mask, quiet=quiet, address=address, workers=workers,
                              cpus_per_worker=cpus_per_worker, verbose=verbose)
    if address is not None:
        raise click.UsageError("--address needs --engine ray")
    for query in queries:
        if not Path(query).exists():
            raise click.BadParameter(f"Path {query!r} does not exist.", param_hint="'QUERY...'")
    files = _expand_queries(queries)
    if not files:
        raise click.UsageError("no query images found in the given QUERY paths")
    seg = Segmenter.from_artifacts(artifact_dir, providers=providers, allow_fallback=allow_fallback,
                                   threads=threads, batch_size=batch_size)
    seg.set_support([img for img, _ in supports], [mask for _, mask in supports], allow_empty=allow_empty_mask)

    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(files)
    written = 0
    with tqdm(total=len(files), desc="lfm-predict", unit="img", disable=quiet or len(files) < 2) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            masks = seg.predict([str(f) for f in chunk])
            for path, stem, mask in zip(chunk, stems[start:start + batch_size], masks):
                Image.fromarray(mask * np.uint8(255)).save(out / f"{stem}_mask.png")
                if overlay:
                    _overlay(path, mask).save(out / f"{stem}_overlay.png")
                written += 1
            bar.update(len(chunk))
    click.echo(f"Wrote {written} mask(s){' and overlays' if overlay else ''} to {out} "
               f"({seg.domain}, {seg.shots}-shot, {', '.join(seg.providers)})")
    if seg.untrained:
        click.secho("  note: these artifacts hold UNTRAINED default weights; the masks are not meaningful", fg="yellow")

