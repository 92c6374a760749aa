"""Correlation, center-pivot 4D conv, learner and K-shot voting against direct formulations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lfm_deploy.models import LFMHSNet, vote_masks
from lfm_deploy.models.conv4d import CenterPivotConv4d
from lfm_deploy.models.correlation import correlation, multilayer_correlation, paired_matmul
from lfm_deploy.models.learner import HPNLearner


def test_correlation_matches_cosine_loops():
    torch.manual_seed(0)
    q, s = torch.randn(2, 8, 3, 4, dtype=torch.float64), torch.randn(2, 8, 5, 2, dtype=torch.float64)
    out = correlation(q, s)
    assert out.shape == (2, 3, 4, 5, 2)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                for k in range(5):
                    for l in range(2):
                        u, v = q[b, :, i, j], s[b, :, k, l]
                        cos = (u @ v) / ((u.norm() + 1e-5) * (v.norm() + 1e-5))
                        assert out[b, i, j, k, l].item() == pytest.approx(max(cos.item(), 0.0), abs=1e-12)


@pytest.mark.parametrize("pairs,shots", [(6, 2), (5, 5), (4, 1), (1, 1)])
def test_shared_supports_give_the_products_of_copied_ones(pairs, shots):
    """A head's B*K query rows against its K cached shots, unrepeated: the same products, bit for bit,
    as against the shots copied per query (query-major, shot-minor: row n uses shot n % K)."""
    torch.manual_seed(pairs * 10 + shots)
    q, s = torch.randn(pairs, 7, 5), torch.randn(shots, 5, 9)
    assert torch.equal(paired_matmul(q, s), torch.bmm(q, s.repeat(pairs // shots, 1, 1)))
    qf, sf = torch.randn(pairs, 5, 4, 4), torch.randn(shots, 5, 3, 3)
    assert torch.equal(correlation(qf, sf), correlation(qf, sf.repeat(pairs // shots, 1, 1, 1)))


def test_multilayer_correlation_stacks_coarsest_first():
    feats = [torch.randn(1, 4, 6, 6)] * 4 + [torch.randn(1, 4, 3, 3)] * 6 + [torch.randn(1, 4, 2, 2)] * 3
    l4, l3, l2 = multilayer_correlation(feats, feats)
    assert l4.shape == (1, 3, 2, 2, 2, 2) and l3.shape == (1, 6, 3, 3, 3, 3) and l2.shape == (1, 4, 6, 6, 6, 6)
    torch.testing.assert_close(l2[:, 0], correlation(feats[0], feats[0]))


def _dense_center_pivot(conv: CenterPivotConv4d, x: torch.Tensor) -> torch.Tensor:
    """A true 4D convolution whose kernel is the two center-pivot planes, by explicit sums."""
    k = conv.kernel_size[0]
    s = conv.stride[2]
    p = k // 2
    c = k // 2
    w1, b1 = conv.conv1.weight, conv.conv1.bias  # over query dims, at the support center
    w2, b2 = conv.conv2.weight, conv.conv2.bias  # over support dims, at the query center
    b, cin, hq, wq, hs, ws = x.shape
    xp = F.pad(x, (p, p, p, p, p, p, p, p))
    ohs, ows = (hs + 2 * p - k) // s + 1, (ws + 2 * p - k) // s + 1
    out = torch.zeros(b, w1.shape[0], hq, wq, ohs, ows, dtype=x.dtype)
    for i in range(hq):
        for j in range(wq):
            for m in range(ohs):
                for n in range(ows):
                    acc = b1 + b2
                    # query-dim plane: support offset fixed at the kernel center
                    patch_q = xp[:, :, i:i + k, j:j + k, m * s + c, n * s + c]
                    acc = acc + torch.einsum("bcuv,ocuv->bo", patch_q, w1)
                    patch_s = xp[:, :, i + c, j + c, m * s:m * s + k, n * s:n * s + k]
                    out[:, :, i, j, m, n] = acc + torch.einsum("bcuv,ocuv->bo", patch_s, w2)
    return out


@pytest.mark.parametrize("k,stride,size", [(3, 1, (4, 4)), (3, 2, (5, 5)), (5, 4, (7, 6)), (3, 2, (6, 4))])
def test_center_pivot_conv4d_equals_dense_formulation(k, stride, size):
    torch.manual_seed(k + stride)
    conv = CenterPivotConv4d(2, 3, (k,) * 4, (1, 1, stride, stride), (k // 2,) * 4, support_size=size).double()
    x = torch.randn(1, 2, 3, 4, *size, dtype=torch.float64)
    torch.testing.assert_close(conv(x), _dense_center_pivot(conv, x), rtol=1e-10, atol=1e-10)


def test_pruning_indices_are_built_at_construction():
    conv = CenterPivotConv4d(1, 1, (5,) * 4, (1, 1, 4, 4), (2,) * 4, support_size=(50, 50))
    assert conv.pruned_size == (13, 13)
    assert conv.prune_idx[:3].tolist() == [0, 4, 8] and conv.prune_idx[13].item() == 200
    assert "prune_idx" not in conv.state_dict()  # not a weight
    with pytest.raises(ValueError, match="support size"):
        conv(torch.zeros(1, 1, 2, 2, 40, 40))


def test_learner_parameters_and_output_shape():
    learner = HPNLearner()
    assert sum(p.numel() for p in learner.parameters()) == 2_573_794


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_small_image_sizes_build_and_run():
    for size in (128, 160, 200):
        model = LFMHSNet(apm="m", acpa=True, image_size=size).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, size, size), torch.randn(1, 3, size, size), torch.ones(1, size, size))
        assert out.shape == (1, 2, size, size)


def test_kshot_voting_rules():
    # Two images, 5 shots: votes normalised by each image's own maximum, threshold 0.5.
    votes = torch.tensor([[[0, 1, 2], [3, 4, 5]], [[0, 0, 0], [0, 0, 0]]])
    out = vote_masks(votes, 5)
    assert out.tolist() == [[[0, 0, 0], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]]]
    # max vote 2 -> 1/2 = 0.5 counts as foreground
    assert vote_masks(torch.tensor([[[1, 2, 0]]]), 3).tolist() == [[[1, 1, 0]]]
    # 1-shot returns the argmax itself
    one = torch.tensor([[[0, 1]]])
    assert torch.equal(vote_masks(one, 1), one)


def test_predict_mask_nshot_validates_shapes():
    model = LFMHSNet(apm=None, acpa=False, image_size=128).eval()
    with pytest.raises(ValueError, match="support_imgs"):
        model.predict_mask_nshot(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128), torch.zeros(1, 128, 128))
