"""HSNet's multilayer 4D correlation between query and masked support features."""

from __future__ import annotations

import torch

#: Added to the channel norm before dividing, as upstream.
NORM_EPS = 1e-5


def paired_matmul(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """(N, M, C) @ (G, C, S) -> (N, M, S), query row n against support row n % G (G divides N).

    A head graph serves B queries against one cached K-shot set: its N = B*K (query, shot) pairs
    are query-major and shot-minor, so pair n uses shot n % K. Broadcasting the K supports over
    the B queries in the product itself, instead of copying them B times beforehand, gives the
    same products (each is the same GEMM) without the copies. G = N is the plain batched product.
    """
    g = support.shape[0]
    out = torch.matmul(query.reshape((-1, g) + tuple(query.shape[1:])), support.unsqueeze(0))
    return out.reshape((-1,) + tuple(out.shape[2:]))


def correlation(query_feat: torch.Tensor, support_feat: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every query position with every support position, clamped at 0.

    Args:
        query_feat: (N, C, Hq, Wq).
        support_feat: (G, C, Hs, Ws): one per query (G = N), or K shots shared by N = B*K
            query-major pairs (`paired_matmul`).

    Returns:
        (N, Hq, Wq, Hs, Ws).
    """
    b, c, hq, wq = query_feat.shape
    hs, ws = support_feat.shape[-2:]
    q = query_feat.reshape(b, c, hq * wq)
    s = support_feat.reshape(support_feat.shape[0], c, hs * ws)
    q = q / (q.norm(dim=1, p=2, keepdim=True) + NORM_EPS)
    s = s / (s.norm(dim=1, p=2, keepdim=True) + NORM_EPS)
    corr = paired_matmul(q.transpose(1, 2), s).reshape(b, hq, wq, hs, ws)
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
