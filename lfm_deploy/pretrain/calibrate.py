"""The decision offset of a trained learner: where on held-out episodes the foreground begins.

Why it exists: the synthetic-data default is trained on 160 px crops, in float32, and the
logit difference (foreground minus background) it gives at the deepglobe domain's 400 px is
sharply peaked near zero, so a shift of the whole distribution by a fraction of a unit moves
the masks from ~10% to ~70% of each tile. Where that peak sits depends on the rounding of the
CPU that trained it: one AMD EPYC's build marked 81 to 85% of every tile foreground while an
Intel Xeon's marked 4 to 11%, from the same recipe and seed. Six builds on one AMD EPYC, whose
learner's initial weights differed by a relative 1e-5 (another CPU's rounding, simulated), chose
offsets from -0.50 to +0.75; calibrated, their masks on the 400 px validation episodes reached a
mean IoU of 0.65 to 0.79 and marked 11 to 12% of the pixels where the shapes cover 12%, while
before it two of them marked 74% and 83% of the held-out tiles (README "Default weights").

So a recipe with `calibrate_size` ends with this step: the trained model segments held-out
synthetic episodes at that size, the offset that gives the best mean foreground IoU is chosen
on a fine grid, and it is folded into the background logit's bias of the head's last
convolution. The model is then an ordinary state dict: exporters, runtimes and parity checks
see nothing special, and a mask is foreground where the logits say so, as before.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["DECISION_BIAS", "OFFSETS", "THREADS", "calibration_episodes", "choose_offset", "fold_offset"]

#: The bias of the head's last convolution (2 channels: background, foreground).
DECISION_BIAS = "hpn_learner.decoder2.2.bias"
#: The offsets tried: the logit difference a pixel needs to be foreground.
OFFSETS = np.round(np.arange(-4.0, 4.0001, 0.05), 2)
#: Calibration episodes are drawn from data seeds far from the validation episodes' (0, 1, 2...),
#: `lfm make-data`'s (0) and the training pairs' (10_000 and up, drawn from another generator).
SEED_WORD = 104_729
#: Torch threads while calibrating: fixed, as the training's are, so that one CPU type always
#: chooses the same offset (the thread count changes the order of float32 sums).
THREADS = 2
#: The side `lfm make-data` draws its images at (enlarged by the preprocessing to the model's size).
SMALL_DRAW = 96


def calibration_episodes(domain, size: int, seed: int, rounds: int = 1):
    """Held-out 1-shot episodes at `size`, in the two ways images reach the model here.

    Each round draws one episode per class of the synthetic data (6) twice: with the images
    drawn at `SMALL_DRAW` px and enlarged (as `lfm make-data`'s tiles are), and at full detail
    (drawn at `size + 37` and resized, as the validation episodes are).

    Returns:
        A list of batches of 6 episodes: (queries (6,3,S,S), supports (6,3,S,S), support masks
        (6,S,S), the queries' truth (6,S,S) bool).
    """
    from ..data.synthetic import synthetic_pair
    from ..preprocess import normalize_image, prepare_mask

    gray = domain.color == "grayscale"
    out = []
    for r in range(rounds):
        data_seed = [int(seed), SEED_WORD, r]
        for drawn in (SMALL_DRAW, size + 37):
            batch = []
            for cls in range(6):
                (qi, qm), (si, sm) = (synthetic_pair(drawn, data_seed, cls, i, grayscale=gray) for i in (0, 1))
                batch.append((normalize_image(qi, size, domain.mean, domain.std),
                              normalize_image(si, size, domain.mean, domain.std),
                              prepare_mask(sm, size).astype(np.float32), prepare_mask(qm, size) > 0))
            query, support, mask, truth = (np.stack(a) for a in zip(*batch))
            out.append((torch.from_numpy(query), torch.from_numpy(support), torch.from_numpy(mask), truth))
    return out


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def choose_offset(model: torch.nn.Module, episodes) -> tuple[float, dict]:
    """The offset in `OFFSETS` that gives `model`'s masks the best mean foreground IoU on `episodes`.

    Ties go to the offset nearest zero (the model as trained).

    Returns:
        (offset, stats): stats holds "episodes", "iou_before" (offset 0), "iou_after",
        "foreground_before", "foreground_after" (mean share of pixels marked) and "foreground_truth".
    """
    diffs, truths = [], []
    with torch.no_grad():
        for query, support, mask, truth in episodes:
            logits = model(query, support, mask).float().numpy()
            diffs += list(logits[:, 1] - logits[:, 0])
            truths += list(truth)
    scores = np.array([np.mean([_iou(d > o, t) for d, t in zip(diffs, truths)]) for o in OFFSETS])
    best = scores.max()
    candidates = OFFSETS[scores >= best - 1e-12]
    offset = float(candidates[np.argmin(np.abs(candidates))])
    zero = int(np.argmin(np.abs(OFFSETS)))
    stats = {"episodes": len(diffs), "iou_before": float(scores[zero]), "iou_after": float(best),
             "foreground_before": float(np.mean([(d > 0).mean() for d in diffs])),
             "foreground_after": float(np.mean([(d > offset).mean() for d in diffs])),
             "foreground_truth": float(np.mean([t.mean() for t in truths]))}
    return offset, stats


def fold_offset(state: dict[str, torch.Tensor], offset: float) -> None:
    """Make `offset` part of the weights: the background logit's bias grows by it, in place."""
    bias = state[DECISION_BIAS]
    bias[0] += offset
