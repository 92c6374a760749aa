"""HSNet's multilayer 4D correlation between query and masked support features."""

from __future__ import annotations

import torch

#: Added to the channel norm before dividing, as upstream.
NORM_EPS = 1e-5


def correlation(query_feat: torch.Tensor, support_feat: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query position with every support position, clamped at 0.

    Args:
        query_feat: (B, C, Hq, Wq).
        support_feat: (B, C, Hs, Ws).

    Returns:
        (B, Hq, Wq, Hs, Ws).
    """
    b, c, hq, wq = query_feat.shape
    hs, ws = support_feat.shape[-2:]
    q = query_feat.reshape(b, c, hq * wq)
    s = support_feat.reshape(b, c, hs * ws)
    q = q / (q.norm(dim=1, p=2, keepdim=True) + NORM_EPS)
    s = s / (s.norm(dim=1, p=2, keepdim=True) + NORM_EPS)
    corr = torch.bmm(q.transpose(1, 2), s).reshape(b, hq, wq, hs, ws)
    return corr.clamp(min=0)


def multilayer_correlation(
    query_feats: list[torch.Tensor],
    support_feats: list[torch.Tensor],
    layer_sizes: tuple[int, int, int] = (4, 6, 3),
) -> list[torch.Tensor]:
    """Correlations of all feature pairs, stacked per stage, coarsest first.

    Args:
        query_feats, support_feats: the 13 backbone features (layer2, layer3, layer4 order).
        layer_sizes: how many features each of layer2, layer3, layer4 contributes.

    Returns:
        [layer4 (B,3,13,13,13,13), layer3 (B,6,25,...), layer2 (B,4,50,...)] at 400x400.
    """
    corrs = [correlation(q, s) for q, s in zip(query_feats, support_feats)]
    n2, n3, _ = layer_sizes
    return [
        torch.stack(corrs[n2 + n3 :], dim=1),
        torch.stack(corrs[n2 : n2 + n3], dim=1),
        torch.stack(corrs[:n2], dim=1),
    ]
