"""HSNet's hypercorrelation pyramid learner: squeezing, mixing and decoding blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv4d import CenterPivotConv4d
from .correlation import multilayer_correlation

#: Channels after each of the three 4D convs of a squeezing block.
SQUEEZE_CHANNELS = (16, 64, 128)


def _building_block(in_channels, out_channels, kernel_sizes, support_strides, support_size, groups=4):
    """4D conv + GroupNorm + ReLU per entry; returns the block and its output support size."""
    layers: list[nn.Module] = []
    hs, ws = support_size
    for idx, (outch, ksz, stride) in enumerate(zip(out_channels, kernel_sizes, support_strides)):
        inch = in_channels if idx == 0 else out_channels[idx - 1]
        layers.append(
            CenterPivotConv4d(
                inch, outch, (ksz,) * 4, (1, 1, stride, stride), (ksz // 2,) * 4, support_size=(hs, ws)
            )
        )
        layers.append(nn.GroupNorm(groups, outch))
        layers.append(nn.ReLU(inplace=True))
        hs = CenterPivotConv4d.output_size(hs, ksz, stride, ksz // 2)
        ws = CenterPivotConv4d.output_size(ws, ksz, stride, ksz // 2)
    return nn.Sequential(*layers), (hs, ws)


class HPNLearner(nn.Module):
    """The learner of HSNet (2,573,794 parameters for ResNet-50), with upstream module names.

    Args:
        in_channels: correlation channels of (layer4, layer3, layer2): (3, 6, 4) for ResNet-50.
        feature_sizes: spatial size of (layer4, layer3, layer2) features: (13, 25, 50) at 400.
    """

    def __init__(self, in_channels=(3, 6, 4), feature_sizes=(13, 25, 50)):
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.feature_sizes = tuple(feature_sizes)
        #: Features per stage in the 13-feature order (layer2, layer3, layer4).
        self.stage_sizes = tuple(reversed(self.in_channels))
        c1, c2, c3 = SQUEEZE_CHANNELS
        s4, s3, s2 = ((s, s) for s in feature_sizes)
        self.encoder_layer4, o4 = _building_block(in_channels[0], [c1, c2, c3], [3, 3, 3], [2, 2, 2], s4)
        self.encoder_layer3, o3 = _building_block(in_channels[1], [c1, c2, c3], [5, 3, 3], [4, 2, 2], s3)
        self.encoder_layer2, o2 = _building_block(in_channels[2], [c1, c2, c3], [5, 5, 3], [4, 4, 2], s2)
        if not (o4 == o3 == o2):
            raise ValueError(f"feature sizes {feature_sizes} give mismatched support dims {o4}, {o3}, {o2}")
        self.encoder_layer4to3, _ = _building_block(c3, [c3, c3, c3], [3, 3, 3], [1, 1, 1], o3)
        self.encoder_layer3to2, _ = _building_block(c3, [c3, c3, c3], [3, 3, 3], [1, 1, 1], o2)
        self.decoder1 = nn.Sequential(
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c2, 3, padding=1), nn.ReLU()
        )
        self.decoder2 = nn.Sequential(nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, 2, 3, padding=1))

    @staticmethod
    def interpolate_query_dims(hypercorr: torch.Tensor, size) -> torch.Tensor:
        """Bilinear (align_corners=True) resize of the query dims of (B, C, Hq, Wq, Hs, Ws).

        Upstream calls this `interpolate_support_dims`, but the dims it resizes are the query's.
        """
        b, c, hq, wq, hs, ws = hypercorr.shape
        x = hypercorr.permute(0, 4, 5, 1, 2, 3).reshape(b * hs * ws, c, hq, wq)
        x = F.interpolate(x, size, mode="bilinear", align_corners=True)
        oh, ow = size
        return x.reshape(b, hs, ws, c, oh, ow).permute(0, 3, 4, 5, 1, 2)

    def from_features(self, query_feats: list[torch.Tensor], support_feats: list[torch.Tensor]) -> torch.Tensor:
        """The 13 encoded query / support features -> logits: correlation, then `forward`."""
        return self(multilayer_correlation(query_feats, support_feats, self.stage_sizes))

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """(layer4, layer3, layer2) correlations -> logits (B, 2, 2*H2, 2*W2) (100x100 at 400)."""
        sqz4 = self.encoder_layer4(pyramid[0])
        sqz3 = self.encoder_layer3(pyramid[1])
        sqz2 = self.encoder_layer2(pyramid[2])
        return self.forward_squeezed(sqz4, sqz3, sqz2)

    def forward_squeezed(self, sqz4: torch.Tensor, sqz3: torch.Tensor, sqz2: torch.Tensor) -> torch.Tensor:
        """Mixing and decoding from the three squeezing encoders' outputs.

        Separate so that fine-tuning can cache the layer3/layer2 encodings, which do not depend
        on the masker (it acts on layer4 only).
        """
        mix43 = self.interpolate_query_dims(sqz4, sqz3.shape[2:4]) + sqz3
        mix43 = self.encoder_layer4to3(mix43)
        mix432 = self.interpolate_query_dims(mix43, sqz2.shape[2:4]) + sqz2
        mix432 = self.encoder_layer3to2(mix432)

        b, c, hq, wq = mix432.shape[:4]
        return self.decode(mix432.reshape(b, c, hq, wq, -1).mean(dim=-1))

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        """(B, 128, Hq, Wq) support-averaged encoding -> logits (B, 2, 2*Hq, 2*Wq)."""
        decoded = self.decoder1(encoded)
        # Upstream upsamples to a square of twice the width.
        size = (decoded.shape[-1] * 2,) * 2
        decoded = F.interpolate(decoded, size, mode="bilinear", align_corners=True)
        return self.decoder2(decoded)
