"""CPU evaluator with the semantics of HSNet's `Evaluator` and `AverageMeter` (numpy only).

Upstream: HSNet / PATNet `common/evaluation.py`, `common/logger.py`; the mIoU and FB-IoU
definitions are in docs/data.md, "Metrics". As upstream, a class no episode visited counts as
IoU 0 and an FB-IoU bin whose summed union is 0 gives NaN (0/0). Upstream accumulates in float32
on the GPU; here counts are exact int64 sums (they differ past 2**24 pixels, relative 1e-7).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError


def _as_binary(mask: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(
            f"{what} has dtype {arr.dtype}; pass a {{0, 1}} integer, float or bool mask"
        )
    binary = arr == 1
    if not np.all(binary | (arr == 0)):
        raise InputError(f"{what} holds values other than 0 and 1; threshold it to {{0, 1}} first")
    return binary


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background / foreground intersection and union of one episode (HSNet `Evaluator`).

    Args:
        pred: predicted mask, {0, 1} (H, W).
        gt: ground-truth mask, {0, 1} (H, W), same shape.

    Returns:
        (intersection, union), each int64 (2,) indexed [background, foreground].

    Raises:
        InputError: shapes differ, are not 2-D, or values other than 0 and 1.
    """
    p = _as_binary(pred, "prediction")
    g = _as_binary(gt, "ground truth")
    if p.shape != g.shape or p.ndim != 2:
        raise InputError(
            f"prediction {p.shape} and ground truth {g.shape} must be (H, W) of the same shape; "
            "resize the prediction to the evaluation size"
        )
    total = p.size
    inter_fg = int(np.count_nonzero(p & g))
    inter_bg = int(np.count_nonzero(~(p | g)))
    pred_fg = int(np.count_nonzero(p))
    gt_fg = int(np.count_nonzero(g))
    inter = np.array([inter_bg, inter_fg], dtype=np.int64)
    pred_area = np.array([total - pred_fg, pred_fg], dtype=np.int64)
    gt_area = np.array([total - gt_fg, gt_fg], dtype=np.int64)
    return inter, pred_area + gt_area - inter


class SegmentationMeter:
    """Accumulates episodes per class and reports mIoU / FB-IoU as HSNet's `AverageMeter`.

    The formulas: docs/data.md, "Metrics".

    Args:
        num_classes: classes of the split (all of them count in the mIoU, visited or not).
        class_names: optional names, reported with the per-class IoU.

    Raises:
        ValueError: `num_classes` < 1 or `class_names` of the wrong length.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.intersection = np.zeros((2, self.num_classes), dtype=np.int64)
        self.union = np.zeros((2, self.num_classes), dtype=np.int64)
        self.class_episodes = np.zeros(self.num_classes, dtype=np.int64)

    @property
    def episodes(self) -> int:
        """Episodes accumulated so far."""
        return int(self.class_episodes.sum())

    def update(self, pred: np.ndarray, gt: np.ndarray, class_id: int | Sequence[int]) -> None:
        """Add one episode, or a batch of episodes.

        Args:
            pred: {0, 1} prediction (H, W), or (B, H, W) for a batch.
            gt: {0, 1} ground truth of the same shape.
            class_id: the episode's class index, or one per batch element.

        Raises:
            InputError: masks that do not match or are not binary.
            IndexError: a class index outside [0, num_classes).
        """
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.ndim == 3:
            ids = np.atleast_1d(np.asarray(class_id))
            if ids.shape != (pred.shape[0],):
                raise InputError(f"{ids.size} class ids for a batch of {pred.shape[0]} episodes")
            if gt.shape != pred.shape:
                raise InputError(
                    f"prediction {pred.shape} and ground truth {gt.shape} differ in shape"
                )
            for p, g, c in zip(pred, gt, ids):
                self.update(p, g, int(c))
            return
        c = int(np.asarray(class_id).reshape(()))
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class id {c} outside [0, {self.num_classes})")
        inter, union = intersection_union(pred, gt)
        self.intersection[:, c] += inter
        self.union[:, c] += union
        self.class_episodes[c] += 1

    def per_class_iou(self) -> np.ndarray:
        """Foreground IoU per class, x 100: fg-intersection / max(fg-union, 1)."""
        return self.intersection[1] / np.maximum(self.union[1], 1) * 100.0

    def miou(self) -> float:
        """Mean over all classes of the foreground IoU, x 100."""
        return float(self.per_class_iou().mean())

    def fb_iou(self) -> float:
        """Mean over {bg, fg} of summed intersection / summed union, x 100 (NaN for 0/0)."""
        inter = self.intersection.sum(axis=1).astype(np.float64)
        union = self.union.sum(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float((inter / union).mean() * 100.0)

    def summary(self) -> dict:
        """The results so far.

        Returns:
            {"miou": float, "fb_iou": float, "per_class_iou": list[float] (fg IoU x 100 per
            class), "episodes": int, "class_episodes": list[int], and "class_names" when given}.
        """
        result = {
            "miou": self.miou(),
            "fb_iou": self.fb_iou(),
            "per_class_iou": [float(v) for v in self.per_class_iou()],
            "episodes": self.episodes,
            "class_episodes": [int(v) for v in self.class_episodes],
        }
        if self.class_names is not None:
            result["class_names"] = list(self.class_names)
        return result
