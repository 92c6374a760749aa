"""Training the HSNet learner on synthetic episodes: the recipe behind the synthetic-data default
weights and the parity stack's trained test checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ..domains import get_domain
from ..models.checkpoints import DEFAULT_SEED, build_model

log = logging.getLogger(__name__)

__all__ = ["LAYER4_PREFIX", "LEARNER_PREFIX", "Recipe", "train_learner"]

#: The state-dict prefix of the HSNet learner, which every recipe trains.
LEARNER_PREFIX = "hpn_learner."
#: The state-dict prefix of the backbone's last stage, which `Recipe.train_layer4` trains too.
LAYER4_PREFIX = "backbone.layer4."
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Learning-rate schedules: the rate at step t of n as a fraction of `Recipe.lr`.
SCHEDULES = {"constant": lambda t, n: 1.0, "cosine": lambda t, n: 0.5 * (1.0 + math.cos(math.pi * t / n))}


@dataclass(frozen=True)
class Recipe:
    """How the learner is trained: 1-shot synthetic episodes, Adam, class-balanced cross-entropy.

    Each step draws a class style and two images of it (`lfm_deploy.data.synthetic.synthetic_pair`,
    data seeds far from the validation episodes' small ones), support and query. With
    `render_sizes`, the pair is drawn at a side picked in that range and each image cropped to
    `train_size` around one of its object pixels, so the learner sees objects as many feature
    cells wide as at the larger size (why: README "Default weights").

    Attributes:
        train_size: side of the training episodes.
        iterations: optimiser steps.
        lr: Adam's learning rate.
        dtype: "float64" (closer weights across CPU families, not the same: the backbone's
            BatchNorm calibration is float32) or "float32" (the weights then depend on the CPU
            family more, but it is 10 to 20 times faster; docs/precision.md).
        threads: torch threads while training: fixed, because the thread count changes the
            order of float32 sums, so that one CPU type always builds the same weights.
        render_sizes: (smallest, largest) side the pairs are drawn at before cropping, or None to
            draw them at `train_size + 37` and resize, as the validation episodes are.
        min_detail: with `render_sizes`, the pairs are drawn at a fraction of the side picked in
            [min_detail, 1] and enlarged to it (bilinear, masks nearest), as small images are by
            the model's preprocessing. None: always drawn at full detail.
        train_layer4: train the backbone's last stage (layer4) with the learner, which otherwise
            all but ignores the seeded random layer4, the stage the masker filters (README
            "Default weights"). Costs ~60 MB more in the cache file.
        domain: whose image style (colour or grayscale) and normalisation.
        schedule: "constant" (Adam at `lr` throughout) or "cosine" (the rate decays from `lr` to
            0 over the steps, so the last steps average the one-episode gradients' noise instead
            of leaving the weights wherever the last few episodes pushed them).
        calibrate_size: after training, choose the decision offset on held-out synthetic episodes
            at this side and fold it into the head's last bias (`lfm_deploy.pretrain.calibrate`:
            where the foreground begins otherwise depends on the training CPU's rounding), or
            None to keep the weights as trained.
        version: bumped whenever the training code changes what a recipe produces, so cached
            weights of an earlier version are rebuilt, never reused.
    """

    train_size: int = 160
    iterations: int = 200
    lr: float = 1e-3
    dtype: str = "float64"
    render_sizes: tuple[int, int] | None = None
    domain: str = "deepglobe"
    threads: int | None = None
    min_detail: float | None = None
    train_layer4: bool = False
    schedule: str = "constant"
    calibrate_size: int | None = None
    version: int = 1

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.train_size < 32 or self.iterations < 1 or not self.lr > 0:
            raise ValueError(f"train_size >= 32, iterations >= 1 and lr > 0 are needed, got {self}")
        if self.render_sizes is not None:
            lo, hi = self.render_sizes
            if not self.train_size <= lo <= hi:
                raise ValueError(f"render_sizes must satisfy train_size <= smallest <= largest, got {self.render_sizes}")
        if self.calibrate_size is not None and self.calibrate_size < 32:
            raise ValueError(f"calibrate_size must be >= 32 or None, got {self.calibrate_size}")
        if self.min_detail is not None and not 0 < self.min_detail <= 1:
            raise ValueError(f"min_detail must be in (0, 1], got {self.min_detail}")

    def to_dict(self) -> dict:
        data = {**asdict(self), "render_sizes": list(self.render_sizes) if self.render_sizes else None}
        # recipes from before a field keep their digest (the cache key) while it has its old value
        if not data["train_layer4"]:
            del data["train_layer4"]
        if data["schedule"] == "constant":
            del data["schedule"]
        if data["calibrate_size"] is None:
            del data["calibrate_size"]
        return data

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The state-dict prefixes of the weights this recipe trains (what its file holds)."""
        return (LEARNER_PREFIX, LAYER4_PREFIX) if self.train_layer4 else (LEARNER_PREFIX,)

    def digest(self, seed: int) -> str:
        """A short hash of the recipe and the seed: what cached weights are keyed by."""
        text = json.dumps({**self.to_dict(), "seed": int(seed)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _crop_around(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, size: int):
    """A `size` square of an (H, W, C) image and its (H, W) mask holding one of the mask's pixels,
    placed uniformly among the crops that hold it."""
    ys, xs = np.nonzero(mask)
    pick = int(rng.integers(0, len(ys)))
    side = mask.shape[0]

    def start(c: int) -> int:
        lo, hi = max(0, c - size + 1), min(c, side - size)
        return int(rng.integers(lo, hi + 1))

    y0, x0 = start(int(ys[pick])), start(int(xs[pick]))
    return image[y0:y0 + size, x0:x0 + size], mask[y0:y0 + size, x0:x0 + size]


def train_learner(recipe: Recipe, *, seed: int = DEFAULT_SEED, threads: int | None = None,
                  progress: Callable[[int, float], None] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Train the HSNet learner of the seeded default model with `recipe`.

    The backbone is the seeded default's (`build_model(seed=seed)`, frozen, as in HSNet); only
    the learner learns, and with `recipe.train_layer4` the backbone's layer4 too (its BatchNorm
    statistics stay the seeded ones: the model stays in eval mode). The result does not depend
    on the image size the model is later built at.

    Args:
        recipe: the schedule and data.
        seed: the default weights' seed, and the training data's.
        threads: torch threads while training (restored afterwards); overrides `recipe.threads`.
        progress: optional callable(step, mean loss of the last 20 steps) called after every step.

    Returns:
        (state, stats): the model's float32 state dict (backbone and learner) and
        {"loss_first", "loss_last" (means over the first and last 20 steps), "seconds"}, with
        "calibration" (`calibrate.choose_offset`'s figures and the "offset" folded in) when the
        recipe has a `calibrate_size`.
    """
    import time

    import torch.nn.functional as F
    from PIL import Image

    from ..data.synthetic import synthetic_pair
    from ..preprocess import normalize_image, prepare_mask

    dom = get_domain(recipe.domain)
    size = recipe.train_size
    wide = DTYPES[recipe.dtype]
    model, _ = build_model(image_size=size, seed=seed, announce=False)
    model = model.to(wide)
    for p in model.parameters():
        p.requires_grad_(False)
    learner = model.hpn_learner
    trained = list(learner.parameters())
    if recipe.train_layer4:
        trained += list(model.backbone.layer4.parameters())
    for p in trained:
        p.requires_grad_(True)
    learner.train()
    opt = torch.optim.Adam(trained, lr=recipe.lr)
    rng = np.random.default_rng([seed, 7919])
    gray = dom.color == "grayscale"

    def tensors(image, mask):
        return (torch.from_numpy(normalize_image(image, size, dom.mean, dom.std))[None].to(wide),
                torch.from_numpy(prepare_mask(mask, size).astype(np.float32))[None].to(wide))

    def pair(data_seed: int, cls: int, index: int, side: int | None):
        if side is None:  # the validation episodes' way: drawn a little larger, then resized
            return tensors(*synthetic_pair(size + 37, data_seed, cls, index, grayscale=gray))
        drawn = side
        if recipe.min_detail is not None:
            drawn = max(32, int(round(side * float(rng.uniform(recipe.min_detail, 1.0)))))
        image, mask = synthetic_pair(drawn, data_seed, cls, index, grayscale=gray)
        if drawn != side:
            image, mask = image.resize((side, side), Image.BILINEAR), mask.resize((side, side), Image.NEAREST)
        image, mask = _crop_around(rng, np.asarray(image), np.asarray(mask), size)
        return tensors(Image.fromarray(image), Image.fromarray(mask))

    saved = torch.get_num_threads()
    threads = threads or recipe.threads
    if threads:
        torch.set_num_threads(int(threads))
    losses = []
    t0 = time.perf_counter()
    try:
        for step in range(recipe.iterations):
            for group in opt.param_groups:
                group["lr"] = recipe.lr * SCHEDULES[recipe.schedule](step, recipe.iterations)
            data_seed, cls = int(rng.integers(10_000, 10**9)), int(rng.integers(0, 6))
            side = None
            if recipe.render_sizes is not None:
                side = int(rng.integers(recipe.render_sizes[0], recipe.render_sizes[1] + 1))
            query, query_mask = pair(data_seed, cls, 0, side)
            support, support_mask = pair(data_seed, cls, 1, side)
            if recipe.train_layer4:  # the backbone's features with grad (model() computes them without)
                logits = model.head(model.encode_query(model.backbone.extract_features(query)),
                                    model.encode_support(model.backbone.extract_features(support), support_mask),
                                    support.shape[-2:])
            else:
                logits = model(query, support, support_mask)
            fg = query_mask.mean().clamp(0.05, 0.95)
            loss = F.cross_entropy(logits, query_mask.long(), weight=torch.stack([0.5 / (1 - fg), 0.5 / fg]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step, float(np.mean(losses[-20:])))
        learner.eval()
        state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()
                 if k.startswith(("backbone.", LEARNER_PREFIX))}
        stats = {"loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}
        if recipe.calibrate_size is not None:
            stats["calibration"] = _calibrate(recipe, seed, state, dom)
    finally:
        torch.set_num_threads(saved)
    return state, {**stats, "seconds": time.perf_counter() - t0}


def _calibrate(recipe: Recipe, seed: int, state: dict[str, torch.Tensor], dom) -> dict:
    """Choose the trained weights' decision offset at `recipe.calibrate_size` and fold it into `state`."""
    from .calibrate import THREADS, calibration_episodes, choose_offset, fold_offset

    torch.set_num_threads(THREADS)  # the caller restores its own
    model, _ = build_model(image_size=recipe.calibrate_size, seed=seed, announce=False)
    model.load_state_dict(state, strict=False)
    model.eval()
    offset, stats = choose_offset(model, calibration_episodes(dom, recipe.calibrate_size, seed))
    fold_offset(state, offset)
    log.info("decision offset %+.2f at %d px: held-out mean IoU %.3f -> %.3f", offset, recipe.calibrate_size,
             stats["iou_before"], stats["iou_after"])
    return {"size": recipe.calibrate_size, "offset": offset, **stats}
