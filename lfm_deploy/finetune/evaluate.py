"""CD-FSS evaluation on CPU: the benchmark's episodes, K-shot voting, HSNet's mIoU / FB-IoU.

Two protocols (docs/data.md, "Fine-tuning the masker"): `per-domain` keeps one masker (the
`lfm-finetune` file) for every episode; `per-episode` resets the masker (the `masker` file if
given, else `init_masker(seed)`) and fine-tunes it on each episode's supports before predicting.
Episodes come from `lfm_deploy.data.make_episodes` (seed 0 reproduces upstream); predictions
from `LFMHSNet.predict_mask_nshot` at the domain's image size; metrics from `SegmentationMeter`.
"""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..data import load_episode, make_episodes, open_dataset
from ..domains import Domain, get_domain
from ..errors import CheckpointError
from ..models.checkpoints import check_masker_domain, masker_state, masker_variant, read_masker
from ..pretrain import build_default_model, checkpoint_file
from .metrics import SegmentationMeter, intersection_union
from ..utils.outputs import OutputDir, OutputFile, check_distinct
from ..utils.overlays import draw_overlay, font, text_px
from .trainer import environment, finetune_masker, init_masker

#: What `evaluate` writes: the JSON report and the overlay PNGs.
REPORT_KIND = "lfm-eval report"
OVERLAYS_KIND = "lfm-eval overlays"

log = logging.getLogger(__name__)

PROTOCOLS = ("per-domain", "per-episode")
#: Overlay colours (RGB): support mask and ground truth green, prediction red.
TRUTH_COLOR = (0, 200, 70)
PREDICTION_COLOR = (235, 40, 40)


# ----------------------------------------------------------------------------------------------
# Overlays


def denormalize(image: np.ndarray, mean, std) -> np.ndarray:
    """Normalised float (3, H, W) -> uint8 (H, W, 3) pixels (the inverse of the preprocessing)."""
    arr = image.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def render_episode(
    query: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    support: np.ndarray | None = None,
    support_mask: np.ndarray | None = None,
    caption: str = "",
) -> Image.Image:
    """Side-by-side panels under a header: [support + mask,] query, + ground truth, + prediction.

    Every mask is drawn by `lfm_deploy.utils.overlays.draw_overlay` (tint, outline, a legend with
    its share in %, a "no foreground" banner when empty): the support mask and the ground truth in
    `TRUTH_COLOR`, the prediction in `PREDICTION_COLOR`. The caption and the panel titles are
    black on white above the panels, a quarter larger than the overlays' text for one panel
    (`text_px`), so that they scale with the image like the legends.

    Args:
        query: uint8 (H, W, 3) query pixels.
        truth: {0, 1} (H, W) ground truth.
        prediction: {0, 1} (H, W) prediction.
        support: optional uint8 (H', W', 3) first support image (shown at the query's height).
        support_mask: its {0, 1} (H', W') mask.
        caption: one line above the panel titles.

    Returns:
        an RGB PIL image.
    """
    h, w = query.shape[:2]
    panels, titles = [], []
    if support is not None:
        panels.append(Image.fromarray(support) if support_mask is None else draw_overlay(
            support, support_mask, color=TRUTH_COLOR, label="support mask"))
        titles.append("support")
    panels += [Image.fromarray(query),
               draw_overlay(query, truth, color=TRUTH_COLOR, label="ground truth"),
               draw_overlay(query, prediction, color=PREDICTION_COLOR, label="prediction")]
    titles += ["query", "ground truth", "prediction"]
    panels = [p if p.height == h else p.resize((max(1, round(p.width * h / p.height)), h)) for p in panels]

    px = round(1.25 * text_px(w, h))
    f = font(px)
    ascent, descent = f.getmetrics() if hasattr(f, "getmetrics") else (px, 0)
    pad, gap = max(2, px // 3), max(4, px // 2)
    row = ascent + descent + pad
    top = pad + row * (2 if caption else 1)
    canvas = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), h + top), "white")
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((pad, pad), caption, font=f, fill="black")
    x = 0
    for panel, title in zip(panels, titles):
        canvas.paste(panel, (x, top))
        draw.text((x + pad, top - row), title, font=f, fill="black")
        x += panel.width + gap
    return canvas


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:60] or "class"


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    domain: str | Domain,
    data_root: str | os.PathLike,
    shots: int | None = None,
    masker: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    protocol: str = "per-domain",
    episodes: int | None = None,
    seed: int = 0,
    overlays_dir: str | os.PathLike | None = None,
    overlay_count: int = 4,
    progress: bool = True,
    *,
    apm: str | None = "m",
    acpa: bool = True,
    iterations: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    image_size: int | None = None,
    report_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Evaluate the model on a domain's benchmark episodes (on CPU).

    Args:
        domain: registry name/alias or a `Domain`.
        data_root: dataset root holding the domain's folder.
        shots: supports per episode; default `domain.default_shots`.
        masker: masker file from `lfm-finetune`; its metadata sets the variant (APM, ACPA).
        checkpoint: as `finetune_domain`.
        protocol: "per-domain" or "per-episode" (see the module docstring).
        episodes: number of episodes; default the benchmark's (`domain.test_episodes`).
        seed: episode sampling seed (0 reproduces upstream) and, per-episode without a masker
            file, the masker initialisation seed.
        overlays_dir: write overlay PNGs of the first `overlay_count` episodes here.
        overlay_count: how many overlays.
        progress: show a tqdm bar.
        apm, acpa: the variant when no masker file is given. Per-domain without a masker file,
            the model's masker is used as built (the checkpoint's, else the untuned default).
        iterations, lr, optimizer: per-episode fine-tuning schedule; defaults from the registry.
        image_size: model input side; default `domain.image_size` (400). For tests.
        report_path: also write the report as JSON here.
        overwrite: replace an existing report or overlay file that lfm-eval did not write;
            without it such files are refused before any work.

    Returns:
        the report: settings, weights (with the `untrained` flag and its description), `miou`,
        `fb_iou`, `per_class_iou` ({class: IoU}), `class_episodes`, `episodes`, `seconds`,
        `seconds_per_episode`, `overlays` (files written), `environment`.

    Raises:
        ValueError: unknown protocol, `shots` < 1, negative `episodes`.
        DataError, DomainError: dataset problems (raised before the model is built).
        CheckpointError: unusable checkpoint or masker file.
        OutputError: `report_path` or `overlays_dir` cannot be written or holds the user's
            files (checked before any image is read).
    """
    domain = get_domain(domain)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    shots = domain.default_shots if shots is None else int(shots)
    size = domain.image_size if image_size is None else int(image_size)
    started = time.perf_counter()

    inputs = {"--data-root": data_root, "--masker": masker, "--checkpoint": checkpoint_file(checkpoint)}
    report_out = None if report_path is None else OutputFile(
        report_path, flag="--report", arg="report_path", kind=REPORT_KIND, overwrite=overwrite, inputs=inputs)
    overlay_out = None if overlays_dir is None or overlay_count <= 0 else OutputDir(
        overlays_dir, flag="--overlays", arg="overlays_dir", kind=OVERLAYS_KIND, overwrite=overwrite, inputs=inputs)
    check_distinct(report_out, overlay_out)

    dataset = open_dataset(domain, data_root)
    episode_list = make_episodes(dataset, shot=shots, num_episodes=episodes, seed=seed)
    class_names = list(dataset.class_titles or dataset.classes)
    overlay_names = {}
    if overlay_out is not None:  # every overlay's name is claimed before the work
        for episode in episode_list[:overlay_count]:
            name = class_names[episode.class_id] if class_names else episode.class_name
            overlay_names[episode.index] = f"episode_{episode.index:04d}_{_safe(str(name))}.png"
        overlay_out.claim(overlay_names.values())

    masker_meta: dict = {}
    if masker is not None:
        _, masker_meta = read_masker(masker)
        apm, acpa = masker_variant(masker_meta)
        trained_at = int(masker_meta.get("image_size", size))
        if trained_at != size:
            raise CheckpointError(
                f"masker {masker} was fine-tuned at {trained_at}x{trained_at} but {domain.name} is "
                f"evaluated at {size}x{size}; fine-tune a masker at this size"
            )
        check_masker_domain(masker, masker_meta, domain.name, "evaluating it on")
    model, weights = build_default_model(apm=apm, acpa=acpa, checkpoint=checkpoint, masker=masker, image_size=size,
                                         progress=progress)
    per_episode = protocol == "per-episode"
    schedule = domain.finetune
    iterations = schedule.iterations if iterations is None else int(iterations)
    lr = schedule.lr if lr is None else float(lr)
    optimizer = schedule.optimizer if optimizer is None else optimizer
    start_state = None
    if per_episode:
        if masker is None:
            init_masker(model, seed)
        start_state = masker_state(model)
    elif masker is None and (apm is not None or acpa):
        log.warning("no masker file: evaluating %s with the masker as built (not fine-tuned)", model.variant)

    if weights.untrained:
        log.warning("evaluating the %s: the numbers say nothing about the method", weights.label or "UNTRAINED base weights")
    meter = SegmentationMeter(dataset.num_classes, dataset.class_titles or dataset.classes)
    overlay_files: list[str] = []
    finetune_seconds = 0.0
    bar = tqdm(episode_list, desc=f"{domain.name} {shots}-shot", unit="ep", disable=not progress, dynamic_ncols=True)
    for episode in bar:
        arrays = load_episode(dataset, episode, size=size)
        support_images = torch.from_numpy(arrays.support_images)
        support_masks = torch.from_numpy(arrays.support_masks).float()
        if per_episode:
            model.load_state_dict(start_state, strict=False)
            result = finetune_masker(
                model, support_images, support_masks, iterations=iterations, lr=lr, seed=seed,
                optimizer=optimizer, reset=False, progress=False,
            )
            finetune_seconds += result.seconds
        with torch.no_grad():
            pred = model.predict_mask_nshot(
                torch.from_numpy(arrays.query_image)[None], support_images[None], support_masks[None]
            )[0].numpy()
        meter.update(pred, arrays.query_mask, episode.class_id)
        if progress:
            bar.set_postfix(miou=f"{meter.miou():.1f}")
        if episode.index in overlay_names:
            inter, union = intersection_union(pred, arrays.query_mask)
            iou = 100.0 * inter[1] / max(union[1], 1)
            name = meter.class_names[episode.class_id] if meter.class_names else episode.class_name
            image = render_episode(
                denormalize(arrays.query_image, domain.mean, domain.std),
                arrays.query_mask,
                pred,
                denormalize(arrays.support_images[0], domain.mean, domain.std),
                arrays.support_masks[0],
                caption=f"episode {episode.index} class {name} {shots}-shot  fg IoU {iou:.1f}",
            )
            path = overlay_out.write(overlay_names[episode.index], lambda tmp: image.save(tmp, format="PNG"))
            overlay_files.append(str(path))
    bar.close()

    seconds = time.perf_counter() - started
    summary = meter.summary()
    names = summary.pop("class_names", None) or list(dataset.classes)
    report = {
        "domain": domain.name,
        "title": domain.title,
        "data_root": str(data_root),
        "shots": shots,
        "protocol": protocol,
        "episode_seed": seed,
        "image_size": size,
        "variant": model.variant,
        "masker": None if masker is None else str(masker),
        "masker_meta": masker_meta,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "weights": weights.to_dict(),
        "weights_description": weights.describe(),
        "untrained": weights.untrained,
        "finetune": {"iterations": iterations, "lr": lr, "optimizer": str(optimizer).lower(), "seed": seed,
                     "seconds": finetune_seconds} if per_episode else None,
        "miou": summary["miou"],
        "fb_iou": summary["fb_iou"],
        "per_class_iou": dict(zip(names, summary["per_class_iou"])),
        "class_episodes": dict(zip(names, summary["class_episodes"])),
        "episodes": summary["episodes"],
        "seconds": seconds,
        "seconds_per_episode": seconds / max(summary["episodes"], 1),
        "overlays": overlay_files,
        "environment": environment(),
    }
    if dataset.num_classes != domain.num_classes:
        report["note"] = (
            f"{dataset.num_classes} classes found, the benchmark has {domain.num_classes}: not comparable "
            "with published numbers"
        )
    if report_out is not None:
        report_out.write_json(report)
        report["report_path"] = str(report_path)
    log.info("%s %d-shot %s: mIoU %.2f, FB-IoU %.2f over %d episodes (%.1fs)",
             domain.name, shots, protocol, report["miou"], report["fb_iou"], report["episodes"], seconds)
    return report


__all__ = ["PROTOCOLS", "denormalize", "evaluate", "render_episode"]
