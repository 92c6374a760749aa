"""`LayoutLearner`: the export twin of correlation + learner computes what the eager one does."""

from __future__ import annotations

import pytest
import torch

from lfm_deploy.export import learner_layout
from lfm_deploy.export.learner_layout import LayoutLearner, TwoStageGroupNorm, _support_taps
from lfm_deploy.models.hsnet import feature_sizes
from lfm_deploy.models.learner import HPNLearner

CHANNELS = [512] * 4 + [1024] * 6 + [2048] * 3


def _learner(image_size: int) -> HPNLearner:
    """A learner with random (not default-initialised) weights and GroupNorm affines."""
    l2, l3, l4 = feature_sizes(image_size)
    torch.manual_seed(0)
    learner = HPNLearner(feature_sizes=(l4, l3, l2)).eval()
    with torch.no_grad():
        for p in learner.parameters():
            p.normal_(0, 0.05)
        for m in learner.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return learner


def _features(image_size: int, batch: int = 2):
    l2, l3, l4 = feature_sizes(image_size)
    sizes = [l2] * 4 + [l3] * 6 + [l4] * 3
    g = torch.Generator().manual_seed(1)
    query = [torch.randn(batch, c, s, s, generator=g) for c, s in zip(CHANNELS, sizes)]
    # Masked support features: zero where the mask is 0, as after the support mask.
    keep = torch.rand(batch, 1, l2, l2, generator=g) > 0.4
    support = []
    for c, s in zip(CHANNELS, sizes):
        m = torch.nn.functional.interpolate(keep.float(), (s, s), mode="nearest")
        support.append(torch.randn(batch, c, s, s, generator=g).clamp(min=0) * m)
    return query, support


@pytest.mark.parametrize("image_size", [160, 264])
@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_layout_learner_equals_eager_learner(image_size):
    eager = _learner(image_size)
    twin = LayoutLearner.from_learner(eager)
    query, support = _features(image_size)
    with torch.no_grad():
        ref = eager.from_features(query, support)
        got = twin.from_features(query, support)
    assert got.shape == ref.shape
    assert ref.abs().max() > 0.5  # a non-trivial output
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
    # Same parameters, same names: the twin is a drop-in replacement.
    assert twin.state_dict().keys() == eager.state_dict().keys()
    # Its eager-layout path (used by the layerwise debug graph) gives the same result too.
    from lfm_deploy.models.correlation import multilayer_correlation

    with torch.no_grad():
        torch.testing.assert_close(twin(multilayer_correlation(query, support)), ref, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_layout_learner_equals_eager_learner_at_400():
    eager = _learner(400)
    twin = LayoutLearner.from_learner(eager)
    query, support = _features(400, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(twin.from_features(query, support), eager.from_features(query, support),
                                   rtol=0, atol=2e-5)


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_dense_and_transposed_support_convs_agree(monkeypatch):
    """Both forms of the stride-1 support-dims conv (dense 1x1 map, or transposes + conv2)."""
    eager = _learner(264)  # 2x2 support grid in the mixing blocks (as at 400)
    dense = LayoutLearner.from_learner(eager)
    monkeypatch.setattr(learner_layout, "DENSE_SUPPORT_MAX", 0)
    plain = LayoutLearner.from_learner(eager)
    assert any(hasattr(m, "dense_weight") for m in dense.modules())
    assert not any(hasattr(m, "dense_weight") for m in plain.modules())
    query, support = _features(264)
    with torch.no_grad():
        torch.testing.assert_close(dense.from_features(query, support), plain.from_features(query, support),
                                   rtol=0, atol=2e-5)


@pytest.mark.parametrize("support", [(2, 2), (3, 3), (4, 2)])
def test_support_taps_reproduce_a_padded_convolution(support):
    """The dense map built from the taps equals Conv2d(kernel 3, padding 1) on the support grid."""
    hs, ws = support
    conv = torch.nn.Conv2d(5, 7, 3, padding=1, bias=False)
    taps = _support_taps(support, (3, 3), (1, 1))
    w = torch.cat([conv.weight.reshape(7, 5, 9), torch.zeros(7, 5, 1)], dim=2)[:, :, taps]  # (O, C, P', P)
    x = torch.randn(4, 5, hs, ws)
    dense = torch.einsum("ocqp,bcp->boq", w, x.reshape(4, 5, -1)).reshape(4, 7, hs, ws)
    torch.testing.assert_close(dense, conv(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channel_axis", [1, 2])
def test_group_norm_in_either_layout(channel_axis):
    torch.manual_seed(0)
    gn = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    twin = TwoStageGroupNorm(4, 16)
    twin.load_state_dict(gn.state_dict())
    x = torch.randn(2, 16, 6, 5, 3, 3) * 3 + 1  # eager layout (B, C, Hq, Wq, Hs, Ws)
    ref = gn(x)
    if channel_axis == 1:  # hub layout (B, C, S, Q)
        y = x.permute(0, 1, 4, 5, 2, 3).reshape(2, 16, 9, 30)
        got = twin(y, channel_axis=1).reshape(2, 16, 3, 3, 6, 5).permute(0, 1, 4, 5, 2, 3)
    else:  # support-major (B, S, C, Hq, Wq)
        y = x.permute(0, 4, 5, 1, 2, 3).reshape(2, 9, 16, 6, 5)
        got = twin(y, channel_axis=2).reshape(2, 3, 3, 16, 6, 5).permute(0, 3, 4, 5, 1, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)
