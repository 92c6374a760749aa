"""Center-pivot 4D convolution (HSNet): two 2D convs over the query and the support dims."""

from __future__ import annotations

import torch
from torch import nn


class CenterPivotConv4d(nn.Module):
    """4D conv on (B, C, Hq, Wq, Hs, Ws) approximated by its two center-pivot 2D slices.

    `conv1` runs over the query dims at each kept support position; `conv2` runs over the
    support dims (strided) at each query position; the outputs are summed. Support positions are
    sub-sampled with step = stride before `conv1` ("prune") so both branches agree in shape.

    Unlike upstream, the pruning indices are built here for the support size the model is built
    for (`support_size`), not cached lazily on the first `forward`: lazily created state would be
    baked into traced graphs and breaks when the module is moved between devices.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size, stride, padding: 4-tuples (query h, query w, support h, support w).
        support_size: (Hs, Ws) of this layer's input.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, support_size):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size[:2], stride=stride[:2], padding=padding[:2])
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size[2:], stride=stride[2:], padding=padding[2:])
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.support_size = tuple(support_size)
        hs, ws = self.support_size
        sh, sw = self.stride[2:]
        idx_h = torch.arange(0, hs, sh)
        idx_w = torch.arange(0, ws, sw)
        self.pruned_size = (len(idx_h), len(idx_w))
        # Row-major flat indices of the kept support positions (non-persistent: not a weight).
        self.register_buffer("prune_idx", (idx_h[:, None] * ws + idx_w[None, :]).reshape(-1), persistent=False)

    def prune(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hq, wq, hs, ws = x.shape
        if (hs, ws) != self.support_size:
            raise ValueError(
                f"CenterPivotConv4d was built for support size {self.support_size}, got {(hs, ws)}; "
                "build the model with the image size you run it at (LFMHSNet(image_size=...))"
            )
        pruned = x.reshape(b, c, hq, wq, hs * ws).index_select(4, self.prune_idx)
        return pruned.reshape(b, c, hq, wq, *self.pruned_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.prune(x) if self.stride[-1] > 1 else x
        b, c, hq, wq, hs, ws = out1.shape
        out1 = out1.permute(0, 4, 5, 1, 2, 3).reshape(-1, c, hq, wq)
        out1 = self.conv1(out1)
        oc, ohq, owq = out1.shape[-3:]
        out1 = out1.reshape(b, hs, ws, oc, ohq, owq).permute(0, 3, 4, 5, 1, 2)

        b, c, hq, wq, hs, ws = x.shape
        out2 = x.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, hs, ws)
        out2 = self.conv2(out2)
        oc, ohs, ows = out2.shape[-3:]
        out2 = out2.reshape(b, hq, wq, oc, ohs, ows).permute(0, 3, 1, 2, 4, 5)
        return out1 + out2

    @staticmethod
    def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
        return (size + 2 * padding - kernel) // stride + 1
