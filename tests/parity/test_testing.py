"""Test checkpoints: mixed masks by construction, or a learner trained on synthetic data."""

from __future__ import annotations

import pytest
import torch

from lfm_deploy.models import build_model
from lfm_deploy.parity.testing import make_mixed_checkpoint, make_trained_checkpoint

pytestmark = pytest.mark.slow  # builds the full ResNet-50 model several times


def test_mixed_checkpoint_gives_mixed_masks_with_unit_margins(tmp_path):
    info = make_mixed_checkpoint(tmp_path / "mixed.pt", image_size=64)
    assert 0.3 < info["foreground"] < 0.7 and info["margin_std"] == pytest.approx(1.0, rel=1e-3)
    model, weights = build_model(image_size=64, checkpoint=info["path"])
    assert not weights.untrained


def test_trained_checkpoint_changes_only_the_learner(tmp_path):
    steps = []
    info = make_trained_checkpoint(tmp_path / "trained.pt", train_size=64, iterations=3, threads=1,
                                   progress=lambda step, loss: steps.append((step, loss)))
    assert steps and steps[0][0] == 0 and info["loss"] > 0
    state = torch.load(info["path"], weights_only=True)
    default, _ = build_model(image_size=64)
    ref = default.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in state if k.startswith("backbone."))
    assert any(not torch.equal(state[k], ref[k]) for k in state if k.startswith("hpn_learner."))
    model, weights = build_model(image_size=96, checkpoint=info["path"])  # any image size
    assert not weights.untrained
