"""SegmentationMeter: HSNet Evaluator / AverageMeter semantics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lfm_deploy.errors import InputError
from lfm_deploy.finetune.metrics import SegmentationMeter, intersection_union


def test_intersection_union_by_hand():
    pred = np.array([[1, 1], [0, 1]])
    gt = np.array([[1, 1], [0, 0]])
    inter, union = intersection_union(pred, gt)
    # bg: pred {(1,0)}, gt {(1,0),(1,1)} -> inter 1, union 2; fg: pred 3, gt 2 -> inter 2, union 3.
    assert inter.tolist() == [1, 2]
    assert union.tolist() == [2, 3]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, bool])
def test_accepts_binary_dtypes(dtype):
    pred = np.array([[1, 0], [0, 0]]).astype(dtype)
    inter, union = intersection_union(pred, np.ones((2, 2), dtype))
    assert inter.tolist() == [0, 1] and union.tolist() == [3, 4]


def test_miou_and_fb_iou_by_hand():
    meter = SegmentationMeter(3, class_names=["a", "b", "c"])
    # class 0, episode 1: 4x4, gt fg = top-left 2x2 (4 px), pred fg = top row (4 px)
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :] = 1
    # fg: inter 2, union 6; bg: inter 16-6=10, union 16-2=14
    meter.update(pred, gt, 0)
    # class 0, episode 2: perfect, all background -> fg inter 0 union 0; bg inter 16 union 16
    meter.update(np.zeros((4, 4)), np.zeros((4, 4)), 0)
    # class 1: gt all fg, pred none -> fg inter 0 union 16; bg inter 0 union 16
    meter.update(np.zeros((4, 4)), np.ones((4, 4)), 1)
    # class 2 never visited.
    assert meter.intersection.tolist() == [[26, 0, 0], [2, 0, 0]]
    assert meter.union.tolist() == [[30, 16, 0], [6, 16, 0]]
    s = meter.summary()
    assert s["per_class_iou"] == pytest.approx([2 / 6 * 100, 0.0, 0.0])
    # Upstream: mean over *all* classes of the split, unvisited ones count as 0.
    assert s["miou"] == pytest.approx((2 / 6 * 100) / 3)
    # FB-IoU: sums over classes first -> bg 26/46, fg 2/22; then the mean of the two.
    assert s["fb_iou"] == pytest.approx((26 / 46 + 2 / 22) / 2 * 100)
    assert s["episodes"] == 3 and s["class_episodes"] == [2, 1, 0]
    assert s["class_names"] == ["a", "b", "c"]


def test_fb_iou_is_ratio_of_sums_not_mean_of_ratios():
    meter = SegmentationMeter(2)
    big_gt = np.zeros((10, 10), np.uint8)
    big_gt[:5] = 1
    meter.update(big_gt, big_gt, 0)  # perfect on 100 px
    small_gt = np.array([[1, 0]], np.uint8)
    meter.update(np.array([[0, 1]]), small_gt, 1)  # all wrong on 2 px
    # bg: (50 + 0) / (50 + 2); fg: (50 + 0) / (50 + 2)
    assert meter.fb_iou() == pytest.approx(50 / 52 * 100)
    per_class_mean = ((1.0 + 0.0) / 2 + (1.0 + 0.0) / 2) / 2 * 100
    assert meter.fb_iou() != pytest.approx(per_class_mean)


def test_visited_class_with_empty_union_scores_zero():
    # Upstream divides the fg intersection by max(union, 1): a class whose episodes have no
    # foreground anywhere (gt and prediction empty) gets IoU 0, not 100.
    meter = SegmentationMeter(1)
    meter.update(np.zeros((3, 3)), np.zeros((3, 3)), 0)
    assert meter.per_class_iou().tolist() == [0.0]
    assert meter.miou() == 0.0
    # FB-IoU has no such guard upstream: fg 0/0 over the whole run is NaN.
    assert math.isnan(meter.fb_iou())
    meter.update(np.zeros((3, 3)), np.eye(3), 0)  # adds fg 0/3, bg 6/9
    assert meter.fb_iou() == pytest.approx((15 / 18 + 0 / 3) / 2 * 100)


def test_fb_iou_nan_when_a_bin_has_no_union():
    meter = SegmentationMeter(1)
    meter.update(np.ones((3, 3)), np.ones((3, 3)), 0)  # no background anywhere: 0/0
    assert math.isnan(meter.fb_iou())
    assert meter.miou() == pytest.approx(100.0)


def test_no_episodes():
    s = SegmentationMeter(2).summary()
    assert s["miou"] == 0.0 and s["episodes"] == 0 and math.isnan(s["fb_iou"])


def test_batch_update_equals_single_updates():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, size=(5, 8, 8))
    gt = rng.integers(0, 2, size=(5, 8, 8))
    ids = [0, 2, 1, 0, 2]
    batch, single = SegmentationMeter(3), SegmentationMeter(3)
    batch.update(pred, gt, ids)
    for p, g, c in zip(pred, gt, ids):
        single.update(p, g, c)
    assert batch.summary() == single.summary()
    assert batch.episodes == 5


def test_bad_inputs():
    meter = SegmentationMeter(2)
    with pytest.raises(InputError, match="same shape"):
        meter.update(np.zeros((4, 4)), np.zeros((4, 5)), 0)
    with pytest.raises(InputError, match="other than 0 and 1"):
        meter.update(np.full((2, 2), 255), np.zeros((2, 2)), 0)
    with pytest.raises(InputError, match="other than 0 and 1"):
        meter.update(np.zeros((2, 2)), np.full((2, 2), 0.5), 0)
    with pytest.raises(InputError, match="class ids"):
        meter.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), [0])
    with pytest.raises(IndexError, match="class id 2"):
        meter.update(np.zeros((2, 2)), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError):
        SegmentationMeter(0)
    with pytest.raises(ValueError):
        SegmentationMeter(2, class_names=["a"])
    assert meter.episodes == 0
