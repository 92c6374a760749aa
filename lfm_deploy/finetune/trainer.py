"""Fine-tuning the frequency masker (APM + ACPA) on a target domain's labelled support set.

What is trained and why (only the masker; HSNet's 2-class cross-entropy; support images serve
as queries, paired within their class, an image alone in its class being its own support) is
in docs/data.md, "Fine-tuning the masker". Pairs are scheduled round-robin: round r pairs every
image with the r-th next image of its class, so over n-1 rounds every ordered pair of a class of
n images occurs once; an iteration is one optimizer step on the next `pairs_per_iteration` pairs.

Speed: the masker only acts on the layer4 features, so the backbone, the layer2/layer3
correlations and the learner's layer3/layer2 encoders are computed once per image / pair and
cached within a memory budget (evicted entries are recomputed with the same single-image batches,
so the result does not depend on the cache).

Determinism: `init_masker(model, seed)` (APM masks to ones as the official `reset_masks`, ACPA
re-drawn from `seed`), a forked global RNG, deterministic algorithms and a fixed pair schedule:
two runs with the same inputs, seed and thread count give bit-identical masks and loss curves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..data import check_foreground, open_dataset, open_support
from ..domains import Domain, get_domain
from ..errors import DataError, LFMError
from ..models import LFMHSNet, WeightsInfo, save_masker
from ..models.backbone import FEATURE_LAYERS
from ..models.checkpoints import MASKER_FORMAT
from ..models.correlation import correlation
from ..models.hsnet import LAYER4_START
from ..pretrain import build_default_model, checkpoint_file
from ..utils.outputs import OutputFile, safetensors_metadata

log = logging.getLogger(__name__)

#: State-dict prefixes of the trainable masker; everything else is frozen.
MASKER_PREFIXES = ("apm.", "acpa.")
#: Default upper bound of pairs per optimizer step (keeps an iteration's cost bounded on CPU).
MAX_PAIRS_PER_ITERATION = 8
#: Memory budget for cached backbone features and learner encodings (split between the two).
DEFAULT_CACHE_BYTES = 2 << 30
#: Optimizers a domain's schedule may name. Adam is what upstream HSNet trains with.
OPTIMIZERS = ("adam", "sgd")
#: Momentum of the "sgd" choice.
SGD_MOMENTUM = 0.9

_N_LAYER2 = FEATURE_LAYERS.count(2)
_N_LAYER3 = FEATURE_LAYERS.count(3)


class FinetuneError(LFMError):
    """Fine-tuning that cannot go on with the given settings (e.g. the loss diverged)."""


# ----------------------------------------------------------------------------------------------
# Support sets


@dataclass
class SupportSet:
    """Labelled images to fine-tune on, as model inputs.

    Attributes:
        images: float32 (N, 3, S, S), normalised with the domain's preprocessing.
        masks: uint8 {0, 1} (N, S, S).
        class_ids: class index of each image (pairs are formed within a class).
        classes: class names, indexed by `class_ids`.
        files: (image, mask) paths of each image, as strings.
        source: where the set came from (`data-root:<folder>` or `support:<path>`).
        empty_masks: mask files without foreground at the model size (warned about).
    """

    images: np.ndarray
    masks: np.ndarray
    class_ids: list[int]
    classes: list[str]
    files: list[tuple[str, str]]
    source: str
    empty_masks: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.class_ids)


def load_support_set(
    domain: str | Domain,
    data_root: str | os.PathLike | None = None,
    support: str | os.PathLike | None = None,
    shots: int | None = None,
    image_size: int | None = None,
) -> SupportSet:
    """Read the support set to fine-tune on, from a benchmark dataset or a user's own set.

    Exactly one source is used:

    * `support`: a user support folder or index file (`lfm_deploy.data.open_support`); every
      class's first `shots` pairs in listing order (all of them when `shots` is None);
    * `data_root`: the benchmark dataset of `domain` (`open_dataset`); every class's first
      `shots` images (default `domain.default_shots`) in the order supports are drawn from
      (listing order; FSS-1000: numeric order). These images may also be queries of the test
      episodes, as the benchmark has no separate labelled split.

    Empty support masks (at the model size) are warned about (`EmptyMaskWarning`).

    Args:
        domain: registry name/alias or a `Domain` (preprocessing, default shots).
        data_root: dataset root holding the domain's folder.
        support: a support folder or index file.
        shots: images per class.
        image_size: model input side; default `domain.image_size`.

    Returns:
        the loaded `SupportSet`.

    Raises:
        ValueError: both or neither of `data_root` / `support`, or `shots` < 1.
        DataError: missing or unreadable data, or every support mask empty.
        DomainError: unknown domain.
    """
    domain = get_domain(domain)
    if (data_root is None) == (support is None):
        raise ValueError("pass exactly one of data_root (benchmark dataset) or support (your own set)")
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    size = domain.image_size if image_size is None else int(image_size)
    if support is not None:
        dataset = open_support(support, domain)
        source = f"support:{Path(support)}"
    else:
        dataset = open_dataset(domain, data_root)
        source = f"data-root:{dataset.root}"
        shots = domain.default_shots if shots is None else shots
    images, masks, class_ids, files, empty = [], [], [], [], []
    for class_id in range(dataset.num_classes):
        pool = dataset.support_pool(class_id)
        chosen = pool if shots is None else pool[:shots]
        if shots is not None and len(pool) < shots:
            log.warning(
                "class %r has %d image(s), fewer than %d shots: using all of them",
                dataset.classes[class_id], len(pool), shots,
            )
        for image_path, mask_path in chosen:
            image, mask = dataset.load(image_path, mask_path, size=size)
            if not check_foreground(mask, mask_path):
                empty.append(str(mask_path))
            images.append(image)
            masks.append(mask)
            class_ids.append(class_id)
            files.append((str(image_path), str(mask_path)))
    if not images:
        raise DataError(f"{source} holds no support images; add image/mask pairs")
    if len(empty) == len(images):
        raise DataError(
            f"every support mask in {source} is empty (no foreground at {size}x{size}); there is "
            "nothing to fine-tune on: fix the masks (foreground >= 128)"
        )
    log.info(
        "support set: %d images in %d classes from %s (%s)",
        len(images), dataset.num_classes, source,
        "all per class" if shots is None else f"first {shots} per class",
    )
    return SupportSet(
        np.stack(images), np.stack(masks), class_ids, list(dataset.classes), files, source, empty
    )


# ----------------------------------------------------------------------------------------------
# Masker state


def masker_named_parameters(model: LFMHSNet) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable masker's parameters (`apm.*`, `acpa.*`), in state-dict order.

    Raises:
        FinetuneError: the model has neither APM nor ACPA.
    """
    params = [(n, p) for n, p in model.named_parameters() if n.startswith(MASKER_PREFIXES)]
    if not params:
        raise FinetuneError(
            f"the model ({model.variant}) has no masker to fine-tune; build it with apm 'm'/'s' "
            "or with ACPA (--apm m --acpa)"
        )
    return params


def init_masker(model: LFMHSNet, seed: int = 0) -> None:
    """Put the masker into its deterministic starting state, as before each target task.

    APM: both masks to ones (the official `MaskModule` initialisation and `reset_masks`).
    ACPA: the official code has no reset for it; its two Linear layers are re-drawn with
    PyTorch's default initialisation (the one the official module starts from) from `seed`,
    so every task starts from the same weights and the run is repeatable. Torch's global RNG is
    left untouched.

    Args:
        model: the model whose masker to reset (other weights are not touched).
        seed: seed of the ACPA initialisation.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model.apm_variant is not None:
            model.apm.reset_parameters()
        if model.use_acpa:
            for layer in model.acpa.phase_attn:
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()


def _frozen_state(model: LFMHSNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(MASKER_PREFIXES)}


def _check_frozen(model: LFMHSNet, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    if changed:  # an internal bug, not a user error: keep the traceback
        raise RuntimeError(f"fine-tuning changed frozen tensors: {', '.join(changed[:5])}")


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Switch on torch's deterministic algorithms for a block and restore the previous mode.

    torch's deterministic mode also fills every newly allocated tensor with NaN (a debugging aid
    that catches reads of uninitialised memory); no operator used here reads it, and the fill
    costs ~10% of a fine-tuning step on the CPU, so it is switched off for the block.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


# ----------------------------------------------------------------------------------------------
# Pair schedule


def pair_schedule(class_ids: Sequence[int], iterations: int, pairs_per_iteration: int) -> list[list[tuple[int, int]]]:
    """(query, support) image indices of every iteration (see the module docstring).

    Args:
        class_ids: class of each support image.
        iterations: optimizer steps.
        pairs_per_iteration: pairs per step.

    Returns:
        one list of (query index, support index) pairs per iteration.
    """
    n = len(class_ids)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(class_ids):
        members.setdefault(int(c), []).append(i)
    position = {i: m.index(i) for m in members.values() for i in m}

    def pair(k: int) -> tuple[int, int]:
        rnd, i = divmod(k, n)
        group = members[int(class_ids[i])]
        if len(group) == 1:
            return i, i
        offset = 1 + rnd % (len(group) - 1)
        return i, group[(position[i] + offset) % len(group)]

    return [[pair(t * pairs_per_iteration + j) for j in range(pairs_per_iteration)] for t in range(iterations)]


# ----------------------------------------------------------------------------------------------
# Cached forward pass


class _LRU:
    """A small least-recently-used cache of tensor lists with a byte budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self.items: OrderedDict = OrderedDict()
        self.misses = 0

    @staticmethod
    def _size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    def get(self, key, compute):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        self.misses += 1
        value = compute()
        size = self._size(value)
        if size <= self.budget:
            self.items[key] = value
            self.used += size
            while self.used > self.budget:
                _, old = self.items.popitem(last=False)
                self.used -= self._size(old)
        return value


class CachedSupportForward:
    """LFMHSNet's forward pass on pairs of support images, with the masker-free parts cached.

    Equal to `model(images[q], images[s], masks[s])` for a pair (q, s) (tested), but computes the
    backbone features of each image and the learner's layer3/layer2 squeezing encodings of each
    pair only once: neither depends on the masker, which acts on the layer4 features alone.

    Args:
        model: the model (its backbone and learner are read, never changed).
        images: float32 (N, 3, S, S).
        masks: float (N, S, S) in {0, 1}.
        cache_bytes: memory budget of the caches.
    """

    def __init__(
        self, model: LFMHSNet, images: torch.Tensor, masks: torch.Tensor, cache_bytes: int = DEFAULT_CACHE_BYTES
    ):
        self.model = model
        self.images = images
        self.masks = masks
        self._features = _LRU(cache_bytes // 2)
        self._pairs = _LRU(cache_bytes // 2)

    def features(self, i: int) -> list[torch.Tensor]:
        """The 13 backbone features of image i (batch of one, so recomputation is bit-identical)."""
        return self._features.get(i, lambda: self.model.extract_features(self.images[i : i + 1]))

    def pair(self, q: int, s: int) -> list[torch.Tensor]:
        """[q layer4 x3, s layer4 x3, layer3 encoding, layer2 encoding] of the pair (q, s)."""

        def compute():
            qf, sf = self.features(q), self.features(s)
            learner = self.model.hpn_learner
            with torch.no_grad():
                # Only layer4 passes through the masker: the layer2/layer3 correlations and
                # their squeezing encoders are the same in every iteration.
                masked = self.model.mask_support_features(sf[:LAYER4_START], self.masks[s : s + 1])
                corr = [correlation(a, b) for a, b in zip(qf[:LAYER4_START], masked)]
                sqz3 = learner.encoder_layer3(torch.stack(corr[_N_LAYER2 : _N_LAYER2 + _N_LAYER3], dim=1))
                sqz2 = learner.encoder_layer2(torch.stack(corr[:_N_LAYER2], dim=1))
            return [*qf[LAYER4_START:], *sf[LAYER4_START:], sqz3, sqz2]

        return self._pairs.get((q, s), compute)

    def logits(self, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Logits (len(pairs), 2, S, S) with gradients flowing into the masker."""
        model = self.model
        learner = model.hpn_learner
        entries = [self.pair(q, s) for q, s in pairs]
        n4 = len(FEATURE_LAYERS) - LAYER4_START
        query4 = [torch.cat([e[k] for e in entries]) for k in range(n4)]
        support4 = [torch.cat([e[n4 + k] for e in entries]) for k in range(n4)]
        sqz3 = torch.cat([e[2 * n4] for e in entries])
        sqz2 = torch.cat([e[2 * n4 + 1] for e in entries])
        support_masks = self.masks[[s for _, s in pairs]]

        # The masker, in the order of LFMHSNet.encode_query / encode_support (layer4 only):
        # APM on support and query, support mask, ACPA on support and query.
        if model.apm_variant is not None:
            query4 = [model.apm(f) for f in query4]
            support4 = [model.apm(f) for f in support4]
        support4 = model.mask_support_features(support4, support_masks)
        if model.use_acpa:
            query4 = [model.acpa(f) for f in query4]
            support4 = [model.acpa(f) for f in support4]
        corr4 = torch.stack([correlation(a, b) for a, b in zip(query4, support4)], dim=1)

        # HPNLearner.forward from the layer4 encoder on, with the cached layer3/layer2 encodings.
        logits = learner.forward_squeezed(learner.encoder_layer4(corr4), sqz3, sqz2)
        return F.interpolate(logits, self.images.shape[-2:], mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class FinetuneResult:
    """Outcome of a fine-tuning run.

    Attributes:
        losses: training loss of each iteration (mean cross-entropy over its pairs, before the
            step).
        iterations, lr, optimizer, seed, pairs_per_iteration: the settings used.
        num_images: support images; num_pairs: distinct (query, support) pairs trained on.
        seconds: wall time of the whole run; seconds_setup: of the first iteration's feature
            caching (included in `seconds`).
        masker_path, log_path: files written by `finetune_domain` (None for `finetune_masker`).
        weights: the base weights (`finetune_domain` only).
        settings: everything `finetune_domain` was called with, as written into the log.
    """

    losses: list[float]
    iterations: int
    lr: float
    optimizer: str
    seed: int
    pairs_per_iteration: int
    num_images: int
    num_pairs: int
    seconds: float
    seconds_setup: float
    masker_path: Path | None = None
    log_path: Path | None = None
    weights: WeightsInfo | None = None
    settings: dict = field(default_factory=dict)

    @property
    def first_loss(self) -> float:
        """Loss of the first iteration (the starting masker)."""
        return self.losses[0] if self.losses else float("nan")

    @property
    def last_loss(self) -> float:
        """Loss of the last iteration."""
        return self.losses[-1] if self.losses else float("nan")


def _diverged(what: str, iteration: int, iterations: int, lr: float) -> FinetuneError:
    """The error for a run whose loss or weights stopped being finite: the learning rate is too large."""
    smaller = f"{lr / 10:g}"
    return FinetuneError(
        f"fine-tuning diverged: {what} at iteration {iteration} of {iterations} with learning rate {lr:g}; "
        "nothing is saved",
        api_hint=f"pass a smaller lr= (e.g. {smaller})", cli_hint=f"pass a smaller --lr (e.g. --lr {smaller})",
    )


def _make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    key = str(name).lower()
    if key == "adam":
        return torch.optim.Adam(params, lr=lr)
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    raise FinetuneError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def _as_tensor(array, dtype) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().to(dtype=dtype, device="cpu").contiguous()
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def finetune_masker(
    model: LFMHSNet,
    support_images,
    support_masks,
    *,
    iterations: int,
    lr: float,
    seed: int = 0,
    optimizer: str = "adam",
    class_ids: Sequence[int] | None = None,
    pairs_per_iteration: int | None = None,
    reset: bool = True,
    progress: bool = True,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> FinetuneResult:
    """Fine-tune the model's masker in place on a labelled support set.

    The backbone and the learner are frozen (and checked unchanged afterwards); the masker's
    parameters get gradients; the model stays in eval mode (the masker has no mode-dependent
    layers, and the backbone's BatchNorm must keep its running statistics). The parameters'
    `requires_grad` flags are restored afterwards. Pairs and caching: see the module docstring.

    Args:
        model: an `LFMHSNet` with APM and/or ACPA, built for the images' size.
        support_images: float32 (N, 3, S, S) normalised images (numpy or torch).
        support_masks: (N, S, S) masks in {0, 1}.
        iterations: optimizer steps (the paper uses about 60).
        lr: learning rate.
        seed: seed of the masker initialisation (with `reset`) and of torch's RNG during the run.
        optimizer: "adam" or "sgd" (momentum 0.9).
        class_ids: class of each image (pairs stay within a class); default: one class.
        pairs_per_iteration: pairs per step; default min(N, 8).
        reset: start from `init_masker(model, seed)` (the paper resets the masks per task);
            False continues from the model's current masker.
        progress: show a tqdm bar with the loss.
        cache_bytes: memory budget for cached features.

    Returns:
        a `FinetuneResult` (the trained masker is in `model`).

    Raises:
        ValueError: bad shapes, `iterations` < 0, `lr` not a finite number > 0, `pairs_per_iteration` < 1.
        FinetuneError: no masker in the model, unknown optimizer, or a loss or masker weights that
            became non-finite (diverged); the masker is then put back as it was before the call.
    """
    images = _as_tensor(support_images, torch.float32)
    masks = _as_tensor(support_masks, torch.float32)
    size = model.image_size
    if images.dim() != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(f"support_images must be (N, 3, {size}, {size}) for this model, got {tuple(images.shape)}")
    if masks.shape != (images.shape[0], size, size):
        raise ValueError(f"support_masks must be ({images.shape[0]}, {size}, {size}), got {tuple(masks.shape)}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("the support set is empty")
    class_ids = [0] * n if class_ids is None else [int(c) for c in class_ids]
    if len(class_ids) != n:
        raise ValueError(f"{len(class_ids)} class ids for {n} support images")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    per_iteration = min(n, MAX_PAIRS_PER_ITERATION) if pairs_per_iteration is None else int(pairs_per_iteration)
    if per_iteration < 1:
        raise ValueError(f"pairs_per_iteration must be >= 1, got {pairs_per_iteration}")

    params = masker_named_parameters(model)
    before = {name: p.detach().clone() for name, p in params}  # put back if training diverges
    schedule = pair_schedule(class_ids, iterations, per_iteration)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    frozen = _frozen_state(model)
    was_training = model.training
    forward = CachedSupportForward(model, images, masks, cache_bytes)
    targets = masks.long()
    losses: list[float] = []
    start = time.perf_counter()
    setup = 0.0
    try:
        model.requires_grad_(False)
        for _, p in params:
            p.requires_grad_(True)
        model.eval()
        with torch.random.fork_rng(devices=[]), deterministic_algorithms():
            torch.manual_seed(seed)
            if reset:
                init_masker(model, seed)
            opt = _make_optimizer(optimizer, [p for _, p in params], lr)
            bar = tqdm(
                schedule, desc="fine-tuning masker", unit="it", disable=not progress, leave=False, dynamic_ncols=True
            )
            for t, pairs in enumerate(bar):
                t0 = time.perf_counter()
                if t == 0:  # the first iteration fills the caches
                    for q, s in dict.fromkeys(pairs):
                        forward.pair(q, s)
                    setup = time.perf_counter() - t0
                opt.zero_grad(set_to_none=True)
                logits = forward.logits(pairs)
                loss = F.cross_entropy(logits, targets[[q for q, _ in pairs]])
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise _diverged(f"the loss became {value}", t + 1, iterations, lr)
                loss.backward()
                try:
                    opt.step()
                except RuntimeError as exc:
                    # torch refuses a step size beyond float32's range (Adam: lr / (1 - beta1)):
                    # a user's learning rate, not a bug. Anything else keeps its traceback.
                    if "overflow" not in str(exc):
                        raise
                    raise _diverged(f"the optimizer step overflowed float32 ({exc})", t + 1, iterations, lr) from None
                # A step can overflow the weights while the loss was still finite (a huge lr):
                # checked every step, so a non-finite masker is never returned (or saved).
                broken = [name for name, p in params if not bool(torch.isfinite(p).all())]
                if broken:
                    raise _diverged(f"the masker weights became non-finite ({', '.join(broken)})", t + 1, iterations, lr)
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4f}")
                log.debug("iteration %d/%d: loss %.6f (%.2fs)", t + 1, iterations, value, time.perf_counter() - t0)
            bar.close()
    except FinetuneError:
        with torch.no_grad():
            for name, p in params:
                p.copy_(before[name])
        raise
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    _check_frozen(model, frozen)
    seconds = time.perf_counter() - start
    distinct = len({pair for pairs in schedule for pair in pairs})
    if losses:
        log.info(
            "fine-tuned the masker: %d iterations, loss %.4f -> %.4f, %.1fs (%.1fs caching)",
            iterations, losses[0], losses[-1], seconds, setup,
        )
    return FinetuneResult(
        losses=losses, iterations=iterations, lr=float(lr), optimizer=str(optimizer).lower(), seed=int(seed),
        pairs_per_iteration=per_iteration, num_images=n, num_pairs=distinct, seconds=seconds, seconds_setup=setup,
    )


# ----------------------------------------------------------------------------------------------
# One domain, end to end


def default_masker_path(domain: str | Domain) -> Path:
    """`masker-<domain>.safetensors` in the current folder."""
    return Path(f"masker-{get_domain(domain).name}.safetensors")


def log_path_for(masker_path: str | os.PathLike) -> Path:
    """The JSON log written next to a masker file: `<name>.finetune.json`."""
    path = Path(masker_path)
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(stem + ".finetune.json")


#: What `finetune_domain` writes: the masker file (recognised by its safetensors metadata) and its log.
MASKER_KIND = "lfm-finetune masker"
LOG_KIND = "lfm-finetune log"


def is_masker_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a masker file written by this project (read from its header alone)."""
    meta = safetensors_metadata(Path(path))
    return meta is not None and meta.get("format") == MASKER_FORMAT


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def environment() -> dict:
    """Library versions, the machine and torch's threads, for logs and reports."""
    from ..utils.versions import library_versions, machine

    return {**library_versions(("lfm_deploy", "torch", "numpy")), **machine(torch.get_num_threads()), "device": "cpu"}


def finetune_domain(
    domain: str | Domain,
    data_root: str | os.PathLike | None = None,
    support: str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    shots: int | None = None,
    apm: str | None = "m",
    acpa: bool = True,
    iterations: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    pairs_per_iteration: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune a masker for one target domain and write it with a JSON log.

    Builds the model (`lfm_deploy.pretrain.build_default_model`), reads the support set
    (`load_support_set`), resets the masker (`init_masker`) and trains it
    (`finetune_masker`). Writes the masker (`save_masker`, atomically; metadata: domain, variant,
    image size, base checkpoint sha256, settings) and `<name>.finetune.json` next to it (settings,
    loss curve, weights incl. the untrained flag, support files, timings, versions). Nothing is
    written when anything fails.

    Args:
        domain: registry name/alias or a `Domain`.
        data_root: benchmark dataset root (exclusive with `support`).
        support: a user support folder or index file (exclusive with `data_root`).
        checkpoint: base HSNet checkpoint; None: the synthetic-data default, "untrained": the
            seeded untrained one (both labelled: not a real model).
        shots: support images per class (see `load_support_set`).
        apm: "m", "s" or None.
        acpa: whether the model has ACPA.
        iterations: optimizer steps; default `domain.finetune.iterations` (60).
        lr: learning rate; default `domain.finetune.lr`.
        optimizer: default `domain.finetune.optimizer` ("adam").
        seed: masker initialisation seed.
        out: masker file; default `masker-<domain>.safetensors`.
        pairs_per_iteration: see `finetune_masker`.
        image_size: model input side; default `domain.image_size` (400). Other sizes are for
            tests and experiments: a masker is tied to the size it was trained at.
        progress: show progress bars.
        overwrite: replace an existing `out` (or its log) that is not an earlier lfm-finetune
            output; without it such a file is refused before any work.

    Returns:
        the `FinetuneResult`, with `masker_path`, `log_path`, `weights` and `settings` set.

    Raises:
        ValueError: both or neither of `data_root` / `support`, bad numeric settings.
        DataError, DomainError, CheckpointError, FinetuneError: see the functions above.
    """
    domain = get_domain(domain)
    schedule = domain.finetune
    iterations = schedule.iterations if iterations is None else int(iterations)
    lr = schedule.lr if lr is None else float(lr)
    optimizer = schedule.optimizer if optimizer is None else optimizer
    if str(optimizer).lower() not in OPTIMIZERS:
        raise FinetuneError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    size = domain.image_size if image_size is None else int(image_size)
    out = default_masker_path(domain) if out is None else Path(out)
    # Both files are checked before any work: an existing file is replaced only when it is an
    # earlier masker / log of lfm-finetune (or with overwrite).
    inputs = {"--checkpoint": checkpoint_file(checkpoint), "--data-root": data_root, "--support": support}
    masker_out = OutputFile(out, flag="--out", kind=MASKER_KIND, recognise=is_masker_file, overwrite=overwrite,
                            inputs=inputs)
    log_out = OutputFile(log_path_for(out), flag=None, kind=LOG_KIND, overwrite=overwrite, inputs=inputs,
                         hint_flag="--out")

    started = time.time()
    support_set = load_support_set(domain, data_root=data_root, support=support, shots=shots, image_size=size)
    model, weights = build_default_model(apm=apm, acpa=acpa, checkpoint=checkpoint, image_size=size, progress=progress)
    result = finetune_masker(
        model, support_set.images, support_set.masks, iterations=iterations, lr=lr, seed=seed,
        optimizer=optimizer, class_ids=support_set.class_ids, pairs_per_iteration=pairs_per_iteration,
        reset=True, progress=progress,
    )
    settings = {
        "domain": domain.name,
        "variant": model.variant,
        "apm": apm,
        "acpa": bool(acpa),
        "image_size": size,
        "iterations": iterations,
        "lr": lr,
        "optimizer": result.optimizer,
        "seed": seed,
        "shots": shots if shots is not None else ("all" if support is not None else domain.default_shots),
        "pairs_per_iteration": result.pairs_per_iteration,
        "support_source": support_set.source,
        "support_images": len(support_set),
        "support_classes": len(set(support_set.class_ids)),
        "pairing": "same-class pairs, round-robin; an image alone in its class is its own support",
        "masker_init": "APM ones (official reset_masks); ACPA PyTorch default Linear init from seed",
        "loss": "2-class cross-entropy on the logits (HSNet)",
    }
    extra = {
        "iterations": iterations, "lr": lr, "optimizer": result.optimizer, "seed": seed,
        "support_images": len(support_set), "support_source": support_set.source,
        "first_loss": result.first_loss, "last_loss": result.last_loss,
        "lfm_deploy": __version__,
    }
    masker_path = masker_out.write(
        lambda tmp: save_masker(model, tmp, domain=domain.name, weights=weights, extra=_finite(extra)))
    record = {
        "settings": settings,
        "weights": weights.to_dict(),
        "weights_description": weights.describe(),
        "untrained_base": weights.untrained,
        "base_sha256": weights.base_sha256,
        "masker": str(masker_path),
        "losses": result.losses,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "num_pairs": result.num_pairs,
        "support_files": [{"image": i, "mask": m, "class": support_set.classes[c]}
                          for (i, m), c in zip(support_set.files, support_set.class_ids)],
        "empty_support_masks": support_set.empty_masks,
        "timings": {
            "total_seconds": time.time() - started,
            "finetune_seconds": result.seconds,
            "cache_seconds": result.seconds_setup,
            "seconds_per_iteration": (result.seconds - result.seconds_setup) / max(iterations, 1),
        },
        "environment": environment(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    log_path = log_out.write_json(record)
    result.masker_path = masker_path
    result.log_path = log_path
    result.weights = weights
    result.settings = settings
    log.info("wrote %s and %s", masker_path, log_path)
    return result


__all__ = [
    "CachedSupportForward",
    "FinetuneError",
    "FinetuneResult",
    "SupportSet",
    "default_masker_path",
    "deterministic_algorithms",
    "environment",
    "finetune_domain",
    "finetune_masker",
    "init_masker",
    "load_support_set",
    "log_path_for",
    "masker_named_parameters",
    "pair_schedule",
    "is_masker_file",
]
