"""The exported graphs as PyTorch modules: the model behind each graph of the contract.

`EpisodeGraph`, `EncoderGraph` and `HeadGraph` wrap an `LFMHSNet` behind the tensors that
`lfm_deploy.contract` declares (names, shapes, roles: see docs/graph-contract.md). The export
traces them; the validation runners run the same modules eagerly, so the reference and the
graph compute the same function by construction.

The encoder/head boundary sits after the support branch's last support-only operation (ACPA),
so a deployment encodes its fixed support set once and each query costs one backbone pass plus
the correlation and the learner.
"""

from __future__ import annotations

import torch
from torch import nn

from ..contract import STAGE_FEATURES, TensorSpec, graph_specs
from .hsnet import LFMHSNet, vote_masks


def _vote(shot_logits: torch.Tensor) -> torch.Tensor:
    """(B, K, 2, S, S) logits -> (B, S, S) uint8 mask by HSNet's K-shot voting."""
    votes = shot_logits.argmax(dim=2).sum(dim=1)
    return vote_masks(votes, shot_logits.shape[1]).to(torch.uint8)


def pair_with_shots(feats: list[torch.Tensor], shots: int) -> list[torch.Tensor]:
    """Repeat each (B, ...) feature K times along the batch: (B*K, ...), shot-minor order."""
    out = []
    for f in feats:
        tail = tuple(f.shape[1:])
        out.append(f.unsqueeze(1).expand((-1, shots) + tail).reshape((-1,) + tail))
    return out


def _shot_logits(model: LFMHSNet, query: list[torch.Tensor], support: list[torch.Tensor], shots: int, out_size) -> torch.Tensor:
    """All (query, shot) pairs through the head as one batch of B*K: (B, K, 2, S, S).

    Equivalent to the eager model's loop over shots (every op of the head is per-sample,
    GroupNorm included) but the graph does not grow with K, and the pairs share each conv.
    """
    logits = model.head(query, support, out_size)
    return logits.reshape((-1, shots) + tuple(logits.shape[1:]))


class EpisodeGraph(nn.Module):
    """A whole K-shot episode: query + supports -> logits (K = 1) and the voted mask."""

    def __init__(self, model: LFMHSNet, shots: int):
        super().__init__()
        self.model = model
        self.shots = shots

    def forward(self, query_img, support_imgs, support_masks):
        k = self.shots
        query = pair_with_shots(self.model.encode_query(self.model.extract_features(query_img)), k)
        # Supports of all shots through the backbone as one batch: (B*K, ...), shot-minor.
        imgs = support_imgs.reshape((-1,) + tuple(support_imgs.shape[2:]))
        masks = support_masks.reshape((-1,) + tuple(support_masks.shape[2:]))
        support = self.model.encode_support(self.model.extract_features(imgs), masks)
        logits = _shot_logits(self.model, query, support, k, query_img.shape[-2:])
        mask = _vote(logits)
        if k == 1:
            return logits[:, 0], mask
        return (mask,)

    def inputs(self, s: int) -> list[TensorSpec]:
        return graph_specs("episode", s, self.shots, self.model.feature_hw)[0]

    def outputs(self, s: int) -> list[TensorSpec]:
        return graph_specs("episode", s, self.shots, self.model.feature_hw)[1]


class EncoderGraph(nn.Module):
    """Support image + mask -> the support features the head correlates against."""

    def __init__(self, model: LFMHSNet):
        super().__init__()
        self.model = model

    def forward(self, support_img, support_mask):
        feats = self.model.encode_support(self.model.extract_features(support_img), support_mask)
        n2, n3, _ = STAGE_FEATURES
        return (
            torch.stack(feats[:n2], dim=1),
            torch.stack(feats[n2 : n2 + n3], dim=1),
            torch.stack(feats[n2 + n3 :], dim=1),
        )

    def inputs(self, s: int) -> list[TensorSpec]:
        return graph_specs("encoder", s, 1, self.model.feature_hw)[0]

    def outputs(self, s: int) -> list[TensorSpec]:
        return graph_specs("encoder", s, 1, self.model.feature_hw)[1]


class HeadGraph(nn.Module):
    """Query images + a cached K-shot support set -> per-shot logits and the voted mask."""

    def __init__(self, model: LFMHSNet, shots: int):
        super().__init__()
        self.model = model
        self.shots = shots

    def forward(self, query_img, support_l2, support_l3, support_l4):
        k = self.shots
        query = pair_with_shots(self.model.encode_query(self.model.extract_features(query_img)), k)
        # The same K shots for every query: (K, n, C, h, w), never copied per query; the
        # correlation pairs each of the B*K query rows with its shot (correlation.paired_matmul).
        support = [f for stage in (support_l2, support_l3, support_l4) for f in stage.unbind(dim=1)]
        logits = _shot_logits(self.model, query, support, k, query_img.shape[-2:])
        return logits, _vote(logits)

    def inputs(self, s: int) -> list[TensorSpec]:
        return graph_specs("head", s, self.shots, self.model.feature_hw)[0]

    def outputs(self, s: int) -> list[TensorSpec]:
        return graph_specs("head", s, self.shots, self.model.feature_hw)[1]
