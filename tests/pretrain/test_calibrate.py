"""The decision offset of the synthetic-data default: chosen on held-out episodes, folded into the
weights, and the only thing calibration changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfm_deploy.domains import get_domain
from lfm_deploy.models.checkpoints import build_model
from lfm_deploy.pretrain import Recipe, train_learner
from lfm_deploy.pretrain.calibrate import DECISION_BIAS, calibration_episodes, choose_offset, fold_offset


class _Scripted(torch.nn.Module):
    """Logits whose foreground-minus-background difference is given per episode (in call order)."""

    def __init__(self, diffs):
        super().__init__()
        self.diffs = list(diffs)

    def forward(self, query, support, mask):
        diff = torch.from_numpy(np.stack([self.diffs.pop(0) for _ in range(query.shape[0])]))
        return torch.stack([torch.zeros_like(diff), diff], 1)


def _episodes(truths, batch=2):
    out = []
    for i in range(0, len(truths), batch):
        t = np.stack(truths[i:i + batch])
        n, s = t.shape[0], t.shape[-1]
        out.append((torch.zeros(n, 3, s, s), torch.zeros(n, 3, s, s), torch.zeros(n, s, s), t))
    return out


def test_the_offset_is_where_the_masks_best_match_and_the_nearest_to_zero_among_equals():
    rng = np.random.default_rng(0)
    truths = [rng.random((16, 16)) < 0.2 for _ in range(4)]
    # Every background pixel at 0.25, every object pixel at 1.25: any offset in [0.25, 1.25) is perfect.
    diffs = [np.where(t, 1.25, 0.25).astype(np.float32) for t in truths]
    offset, stats = choose_offset(_Scripted(diffs), _episodes(truths))
    assert offset == 0.25
    assert stats["iou_after"] == 1.0 and stats["episodes"] == 4
    assert stats["iou_before"] < 0.5 and stats["foreground_before"] == 1.0
    assert stats["foreground_after"] == pytest.approx(stats["foreground_truth"])
    # A model already at its best keeps offset 0.
    diffs = [np.where(t, 0.5, -0.5).astype(np.float32) for t in truths]
    offset, stats = choose_offset(_Scripted(diffs), _episodes(truths))
    assert offset == 0.0 and stats["iou_before"] == stats["iou_after"] == 1.0
    # Over-segmenting, with noise: the best offset is the one the IoU curve peaks at, never past the objects.
    diffs = [(np.where(t, 2.0, 1.0) + rng.normal(0, 0.2, t.shape)).astype(np.float32) for t in truths]
    offset, stats = choose_offset(_Scripted(diffs), _episodes(truths))
    assert 1.2 <= offset <= 1.8 and stats["iou_after"] > 0.9 > 0.3 > stats["iou_before"]


def test_folding_the_offset_moves_every_logit_difference_by_it():
    model, _ = build_model(apm=None, acpa=False, image_size=64, announce=False)
    episodes = calibration_episodes(get_domain("deepglobe"), 64, seed=0)
    assert len(episodes) == 2 and episodes[0][0].shape == (6, 3, 64, 64) and episodes[0][3].dtype == bool
    query, support, mask, _ = episodes[1]
    with torch.no_grad():
        before = model(query, support, mask)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        fold_offset(state, 0.75)
        model.load_state_dict(state)
        after = model(query, support, mask)
    moved = (before[:, 1] - before[:, 0]) - (after[:, 1] - after[:, 0])
    assert torch.allclose(moved, torch.full_like(moved, 0.75), atol=1e-4)


def test_a_calibrated_recipe_differs_from_the_trained_weights_only_by_the_offset():
    """The same tiny training with and without `calibrate_size`: equal weights but for the
    background bias, which differs by the chosen offset; the figures are recorded."""
    plain = Recipe(train_size=64, iterations=3, dtype="float32", threads=1)
    calibrated = Recipe(train_size=64, iterations=3, dtype="float32", threads=1, calibrate_size=64)
    assert plain.digest(0) != calibrated.digest(0) and "calibrate_size" not in plain.to_dict()
    state0, stats0 = train_learner(plain)
    state1, stats1 = train_learner(calibrated)
    assert "calibration" not in stats0
    cal = stats1["calibration"]
    assert cal["size"] == 64 and cal["episodes"] == 12 and cal["iou_after"] >= cal["iou_before"]
    for name, value in state0.items():
        if name != DECISION_BIAS:
            assert torch.equal(value, state1[name]), name
    assert state1[DECISION_BIAS][1] == state0[DECISION_BIAS][1]
    assert float(state1[DECISION_BIAS][0] - state0[DECISION_BIAS][0]) == pytest.approx(cal["offset"], abs=1e-6)
    with pytest.raises(ValueError, match="calibrate_size"):
        Recipe(train_size=64, calibrate_size=16)
