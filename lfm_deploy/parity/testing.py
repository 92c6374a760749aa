"""Test checkpoints for the validation stack: weights whose masks are mixed, so that mask checks
(export parity, the reduced-precision gates, benchmarks) measure something without public
weights."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from ..domains import get_domain
from ..models.checkpoints import DEFAULT_SEED, build_model
from ..utils.outputs import atomic_write_bytes
from .episodes import validation_episode

__all__ = ["LOGITS_LAYER", "make_mixed_checkpoint", "make_trained_checkpoint"]


#: The learner's last convolution: its 2 output channels are the background / foreground logits.
LOGITS_LAYER = "hpn_learner.decoder2.2"


def make_mixed_checkpoint(path: str | os.PathLike, *, image_size: int = 400, domain: str = "deepglobe",
                          apm: str | None = "m", acpa: bool = True, shots: int = 1, seed: int = DEFAULT_SEED,
                          masker_seed: int | None = None, margin_std: float = 1.0) -> dict:
    """Write a test checkpoint whose masks are mixed: for checking numerics without public weights.

    The untrained default weights predict background almost everywhere with |logits| ~ 0.05, so
    every mask check on them is vacuous. This checkpoint is those weights with the learner's last
    convolution (`LOGITS_LAYER`) rescaled so that the logit margins of the domain's validation
    episode (seed `seed`) have a standard deviation of `margin_std` (a trained model's logits
    span a few units), and its foreground bias moved by minus their median, so that about half
    the pixels are foreground. With `masker_seed`, the masker gets trained-looking values too
    (per-channel APM gates around 1, ACPA weights around 0, seeded) instead of its identity
    initialisation. It is NOT a trained model: its margins crowd near zero much more than a
    trained model's, which makes it a hard case for reduced precision (docs/precision.md).

    Args:
        path: where to write it (a `torch.save` state dict, read back like an upstream checkpoint).
        image_size, domain, shots, seed: the validation episode that sets the margins.
        apm, acpa: the masker variant (as `build_model`).
        masker_seed: draw masker values with this seed (None: keep the identity masker).
        margin_std: standard deviation of the episode's logit margins after rescaling.

    Returns:
        {"path", "foreground" (share of the episode's mask), "margin_median", "margin_std"}.
    """
    from ..models.hsnet import vote_masks

    model, _ = build_model(apm=apm, acpa=acpa, image_size=image_size, seed=seed)
    episode = validation_episode(get_domain(domain), shots, batch=1, seed=seed, image_size=image_size)
    q, s, m = (torch.from_numpy(np.asarray(a)) for a in episode.values())
    with torch.no_grad():
        if masker_seed is not None:
            gen = torch.Generator().manual_seed(masker_seed)
            for name, p in model.named_parameters():
                if name.startswith("apm."):
                    p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen))
                elif name.startswith("acpa."):
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        last = dict(model.named_modules())[LOGITS_LAYER]
        margin = torch.cat([x.diff(dim=1) for x in model.shot_logits(q, s, m)])
        scale = margin_std / float(margin.std())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        last.bias[1] -= float(margin.median()) * scale
        logits = model.shot_logits(q, s, m)
        margin = torch.cat([x.diff(dim=1) for x in logits])
    votes = torch.stack([x.argmax(dim=1) for x in logits]).sum(dim=0)
    prefixes = ("backbone.", "hpn_learner.") + (("apm.", "acpa.") if masker_seed is not None else ())
    state = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = atomic_write_bytes(Path(path), buffer.getvalue())
    return {"path": path, "foreground": float(vote_masks(votes, shots).float().mean()),
            "margin_median": float(margin.abs().median()), "margin_std": float(margin.std())}


def make_trained_checkpoint(path: str | os.PathLike, *, train_size: int = 160, iterations: int = 200,
                            lr: float = 1e-3, domain: str = "deepglobe", seed: int = DEFAULT_SEED,
                            threads: int | None = None, progress=None, dtype: str = "float64",
                            schedule: str = "cosine") -> dict:
    """Write a test checkpoint that segments like a trained model: its learner trained on synthetic data.

    The seeded default backbone stays as it is (frozen, as in HSNet); the HSNet learner is
    trained for `iterations` 1-shot steps (Adam, class-balanced cross-entropy) on synthetic
    episodes in the domain's style (`lfm_deploy.data.synthetic`, seeds other than the validation
    episodes'). Unlike `make_mixed_checkpoint`, its margins are those of a model that has
    learned the task: large where it is sure, small only near object boundaries (at 160 px, 200
    steps: foreground IoU ~0.5 on the validation episodes, median |logit margin| ~4.5, 2% of the
    pixels within 0.1 of a tie). The weights do not depend on the image size. Training is
    `lfm_deploy.pretrain.train_learner` on whole `train_size` images; the weights are saved as float32.

    Args:
        path: where to write it (a `torch.save` state dict of backbone and learner).
        train_size: image size of the training episodes.
        iterations, lr: the schedule.
        domain: whose image style and normalisation.
        seed: the default weights' seed, and the training data's.
        threads: torch threads while training.
        progress: optional callable(step, loss) called every 20 steps.
        dtype: "float64" (default) or "float32" (`lfm_deploy.pretrain.Recipe.dtype`).
        schedule: the learning-rate schedule (`lfm_deploy.pretrain.Recipe.schedule`). "cosine"
            (default) ends on a settled model: with a constant rate the last one-episode steps
            leave the weights wherever they pushed them, and on an Intel Xeon the float64 model
            trained so predicted background almost everywhere (1 informative episode of 9 at
            160 px) where the same recipe on an AMD EPYC segmented; float64 alone does not make
            the weights the same on every CPU family (the seeded backbone's BatchNorm statistics,
            for one, are calibrated in float32 before the model is widened).

    Returns:
        {"path", "loss" (mean over the last 20 steps)}.
    """
    from ..pretrain import Recipe, train_learner

    recipe = Recipe(train_size=train_size, iterations=iterations, lr=lr, dtype=dtype, domain=domain, schedule=schedule)

    def every_20(step: int, loss: float) -> None:
        if progress is not None and step % 20 == 0:
            progress(step, loss)

    state, stats = train_learner(recipe, seed=seed, threads=threads, progress=every_20)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = atomic_write_bytes(Path(path), buffer.getvalue())
    return {"path": path, "loss": stats["loss_last"]}
