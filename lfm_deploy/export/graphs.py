"""The exported graphs and their input/output contract.

Three graphs per export, all at the domain's static image size S (400), batch dynamic:

episode  query_img     float32 (B, 3, S, S)      normalised query images
         support_imgs  float32 (B, K, 3, S, S)   normalised support images
         support_masks float32 (B, K, S, S)      support masks in {0, 1}
      -> logits        float32 (B, 2, S, S)      background/foreground logits (K = 1 only)
         mask          uint8   (B, S, S)         predicted mask, upstream K-shot voting

encoder  support_img   float32 (N, 3, S, S)      one support image per row
         support_mask  float32 (N, S, S)
      -> support_l2    float32 (N, 4, 512, S/8, S/8)    masked layer2 features
         support_l3    float32 (N, 6, 1024, S/16, S/16) masked layer3 features
         support_l4    float32 (N, 3, 2048, S/32, S/32) masked, APM/ACPA-filtered layer4

head     query_img     float32 (B, 3, S, S)
         support_l2/l3/l4 from the encoder for the K shots of the support set, (K, ...);
         the same support set serves every query of the batch
      -> shot_logits   float32 (B, K, 2, S, S)   per-shot logits
         mask          uint8   (B, S, S)         voted mask

The boundary sits after the support branch's last support-only operation (ACPA), so a
deployment encodes its fixed support set once and each query costs one backbone pass plus the
correlation and the learner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.hsnet import LFMHSNet, vote_masks

#: Features per stage (layer2, layer3, layer4) and their channels.
STAGE_FEATURES = (4, 6, 3)
STAGE_CHANNELS = (512, 1024, 2048)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape ("B"/"N" = dynamic batch)."""

    name: str
    dtype: str
    shape: tuple
    description: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def _vote(shot_logits: torch.Tensor) -> torch.Tensor:
    """(B, K, 2, S, S) logits -> (B, S, S) uint8 mask by HSNet's K-shot voting."""
    votes = shot_logits.argmax(dim=2).sum(dim=1)
    return vote_masks(votes, shot_logits.shape[1]).to(torch.uint8)


def _pairs(feats: list[torch.Tensor], shots: int) -> list[torch.Tensor]:
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
        query = _pairs(self.model.encode_query(self.model.extract_features(query_img)), k)
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
        k = self.shots
        return [
            TensorSpec("query_img", "float32", ("B", 3, s, s), "normalised query images"),
            TensorSpec("support_imgs", "float32", ("B", k, 3, s, s), "normalised support images"),
            TensorSpec("support_masks", "float32", ("B", k, s, s), "support masks in {0, 1}"),
        ]

    def outputs(self, s: int) -> list[TensorSpec]:
        mask = TensorSpec("mask", "uint8", ("B", s, s), "predicted mask in {0, 1} (K-shot voting)")
        if self.shots == 1:
            return [TensorSpec("logits", "float32", ("B", 2, s, s), "background/foreground logits"), mask]
        return [mask]


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
        return [
            TensorSpec("support_img", "float32", ("N", 3, s, s), "normalised support image, one per row"),
            TensorSpec("support_mask", "float32", ("N", s, s), "support mask in {0, 1}"),
        ]

    def outputs(self, s: int) -> list[TensorSpec]:
        sizes = self.model.feature_hw
        return [
            TensorSpec(f"support_l{i + 2}", "float32", ("N", n, c, hw, hw), f"masked layer{i + 2} support features")
            for i, (n, c, hw) in enumerate(zip(STAGE_FEATURES, STAGE_CHANNELS, sizes))
        ]


class HeadGraph(nn.Module):
    """Query images + a cached K-shot support set -> per-shot logits and the voted mask."""

    def __init__(self, model: LFMHSNet, shots: int):
        super().__init__()
        self.model = model
        self.shots = shots

    def forward(self, query_img, support_l2, support_l3, support_l4):
        k = self.shots
        query = _pairs(self.model.encode_query(self.model.extract_features(query_img)), k)
        b = query_img.shape[0]
        support = []
        for stage in (support_l2, support_l3, support_l4):
            # The same K shots for every query: (K, n, C, h, w) -> (B*K, n, C, h, w).
            tail = tuple(stage.shape[1:])
            pairs = stage.unsqueeze(0).expand((b, -1) + tail).reshape((-1,) + tail)
            support.extend(pairs.unbind(dim=1))
        logits = _shot_logits(self.model, query, support, k, query_img.shape[-2:])
        return logits, _vote(logits)

    def inputs(self, s: int) -> list[TensorSpec]:
        k = self.shots
        sizes = self.model.feature_hw
        return [TensorSpec("query_img", "float32", ("B", 3, s, s), "normalised query images")] + [
            TensorSpec(f"support_l{i + 2}", "float32", (k, n, c, hw, hw), f"encoder output for the {k} shots")
            for i, (n, c, hw) in enumerate(zip(STAGE_FEATURES, STAGE_CHANNELS, sizes))
        ]

    def outputs(self, s: int) -> list[TensorSpec]:
        return [
            TensorSpec("shot_logits", "float32", ("B", self.shots, 2, s, s), "per-shot logits"),
            TensorSpec("mask", "uint8", ("B", s, s), "predicted mask in {0, 1} (K-shot voting)"),
        ]
