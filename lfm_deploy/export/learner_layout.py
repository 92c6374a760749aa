"""Export twin of the correlation + learner, laid out so the exported graph moves less memory.

`LayoutLearner` computes the eager learner's function with the same parameters, its tensors
laid out so that every convolution reads its input through a reshape or a fast transpose, and
the correlation consumed by the first 4D conv one feature at a time; every reordering is exact
(same products, other summation order). docs/performance.md ("The head's layout in the
exported graph") explains the layouts; the tests compare the twin with the eager learner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.conv4d import CenterPivotConv4d
from ..models.correlation import NORM_EPS, paired_matmul
from ..models.learner import HPNLearner

#: Largest support grid (Hs*Ws) for which a stride-1 support conv becomes a dense 1x1 conv.
DENSE_SUPPORT_MAX = 16
#: How `LayoutLearner` makes the correlation (`Manifest.correlation`): each product is clamped and
#: convolved by its slice of the first 4D conv as soon as it is made, never stacked, against
#: the K cached shots shared by all queries (`paired_matmul`), never copied per query.
CORRELATION = "per-feature"


def _triples(block: nn.Sequential):
    """(conv4d, groupnorm, relu) of each layer of an HSNet building block."""
    mods = list(block)
    return [tuple(mods[i : i + 3]) for i in range(0, len(mods), 3)]


class TwoStageGroupNorm(nn.GroupNorm):
    """Export twin of `nn.GroupNorm` with the same parameters and state-dict names.

    Exported GroupNorm becomes InstanceNormalization, whose single reduction over groups of up
    to 1.7M elements loses precision in onnxruntime (3e-3 inside the learner). Here the mean and
    the centred variance are each reduced in two stages (rows, then the row means), which keeps
    the float32 error near 1e-6.

    `channel_axis` 2 serves the support-major layout (B, P, C, ...) of `LayoutLearner`; the
    statistics cover the same elements as `nn.GroupNorm` on the eager layout.
    """

    def forward(self, x: torch.Tensor, channel_axis: int = 1) -> torch.Tensor:
        b = x.shape[0]
        c = x.shape[channel_axis]
        g = self.num_groups
        if channel_axis == 1:  # (B, C, D, ...): rows over the trailing dims, then (C/g * D) row means
            xg = x.reshape(b, g, (c // g) * (x.shape[2] if x.dim() > 2 else 1), -1)
            stage2 = (2,)
        elif channel_axis == 2:  # (B, R, C, ...): rows over the trailing dims, then (R * C/g) row means
            xg = x.reshape(b, x.shape[1], g, c // g, -1)
            stage2 = (1, 3)
        else:
            raise ValueError(f"channel_axis must be 1 or 2, got {channel_axis}")
        mean = xg.mean(dim=-1, keepdim=True).mean(dim=stage2, keepdim=True)
        centred = xg - mean
        var = (centred * centred).mean(dim=-1, keepdim=True).mean(dim=stage2, keepdim=True)
        y = (centred / torch.sqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = [1] * x.dim()
            shape[channel_axis] = c
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def swap_group_norms(module: nn.Module) -> None:
    """Replace every `nn.GroupNorm` under `module` by its `TwoStageGroupNorm` twin (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm) and not isinstance(child, TwoStageGroupNorm):
            twin = TwoStageGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            twin.load_state_dict(child.state_dict())
            setattr(module, name, twin)
        else:
            swap_group_norms(child)


def _support_taps(support_size, kernel, padding) -> torch.Tensor:
    """(P_out, P_in) flat kernel index linking output to input support positions (stride 1).

    Entries equal to kh*kw mean "no tap" (outside the kernel): they select an appended zero.
    """
    hs, ws = support_size
    kh, kw = kernel
    ph, pw = padding
    taps = torch.full((hs * ws, hs * ws), kh * kw, dtype=torch.long)
    for yo in range(hs):
        for xo in range(ws):
            for yi in range(hs):
                for xi in range(ws):
                    ky, kx = yi - yo + ph, xi - xo + pw
                    if 0 <= ky < kh and 0 <= kx < kw:
                        taps[yo * ws + xo, yi * ws + xi] = ky * kw + kx
    return taps


def _dense_support_conv(conv: CenterPivotConv4d) -> tuple[torch.Tensor, torch.Tensor]:
    """The stride-1 support-dims conv of `conv` as a 1x1 conv over (position, channel).

    Returns a (P*O, P*C, 1, 1) weight and a (P*O,) bias, P = Hs*Ws, positions major: entry
    [(p', o), (p, c)] is the 3x3 weight linking input position p to output position p'.
    """
    w = conv.conv2.weight.detach()
    o, c = w.shape[:2]
    p = conv.support_size[0] * conv.support_size[1]
    taps = _support_taps(conv.support_size, conv.kernel_size[2:], conv.padding[2:])
    w = torch.cat([w.reshape(o, c, -1), w.new_zeros(o, c, 1)], dim=2)[:, :, taps]  # (O, C, P', P)
    weight = w.permute(2, 0, 3, 1).reshape(p * o, p * c, 1, 1).contiguous()
    return weight, conv.conv2.bias.detach().repeat(p)


class LayoutLearner(HPNLearner):
    """`HPNLearner` with a fast `from_features` for export; parameters and names unchanged.

    Build it with `LayoutLearner.from_learner(eager_learner)` from the final weights: the
    dense support-conv matrices are derived once, there, as (non-persistent) buffers, since
    the exporter needs a convolution's weight as a constant. `forward(pyramid)` is the eager
    code path (kept for the layerwise debug graph); `from_features` is the fast one.
    """

    @classmethod
    def from_learner(cls, learner: HPNLearner) -> LayoutLearner:
        twin = cls(in_channels=learner.in_channels, feature_sizes=learner.feature_sizes)
        # The source may already hold export twins of its GroupNorms (same state-dict names).
        twin.load_state_dict(learner.state_dict())
        swap_group_norms(twin)
        for conv in twin.modules():
            if isinstance(conv, CenterPivotConv4d):
                if conv.stride[:2] != (1, 1):
                    raise ValueError("LayoutLearner assumes unstrided query dims, as in HSNet")
                if conv.stride[2:] == (1, 1) and conv.support_size[0] * conv.support_size[1] <= DENSE_SUPPORT_MAX:
                    weight, bias = _dense_support_conv(conv)
                    conv.register_buffer("dense_weight", weight, persistent=False)
                    conv.register_buffer("dense_bias", bias, persistent=False)
        return twin.eval()

    # -- squeezing blocks ------------------------------------------------------------------------
    # Hub layout: channel-major (B, C, Hs*Ws, Hq*Wq). Every conversion to the two conv layouts
    # is a 2D transpose ([C S][Q] <-> [Q][C S]) or a swap of two axes above a contiguous Q
    # block, the transposes onnxruntime runs near memcpy speed; a general permutation such as
    # [S][C][Q] <-> [Q][C][S] costs 5-10x more.

    @staticmethod
    def _unit_features(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query (B, C, Hq, Wq) -> (B, Q, C), support (G, C, Hs, Ws) -> (G, C, S), each divided
        by its channel L2 norm + `NORM_EPS` (upstream's eps: added to the norm, not under it).

        The query operand is materialised as (B, Q, C): a transposed left operand (onnxruntime's
        FusedMatMul transA) runs ~25% slower on these shapes.
        """
        b, c, hq, wq = q.shape
        qt = q.permute(0, 2, 3, 1)
        qt = (qt / (qt.norm(dim=3, p=2, keepdim=True) + NORM_EPS)).reshape(b, hq * wq, c)
        s = s.reshape(s.shape[0], c, -1)
        return qt, s / (s.norm(dim=1, p=2, keepdim=True) + NORM_EPS)

    @staticmethod
    def _correlation_pivot(conv: CenterPivotConv4d, query_feats, support_feats) -> torch.Tensor:
        """A stage's correlations through the first 4D conv of its squeezing block: (B, O, S', Q).

        The support-dims conv is linear in its input channels (the n correlations), so
        ``conv2(stack_i corr_i) = bias + sum_i conv2[:, i](corr_i)``: each correlation is clamped
        and convolved with its own input-channel slice of the weights as soon as its GEMM is
        done. The graph then never holds the n full products together, nor their stacked copy
        (for layer2 at 400 px: 4 x 25 MB products + 100 MB stack per query), only one product
        at a time. The same products and weights are summed as in the stacked conv; only the
        float summation order changes (over features, then within each feature's taps).

        The query-dims conv reads the correlation at the pruned support positions,
        support-major (B, S', n, Q): a second, 4-16x smaller product per feature instead of a
        strided gather and a general transpose of the full one.
        """
        b, _, hq, wq = query_feats[0].shape
        hs, ws = support_feats[0].shape[-2:]
        sh, sw = conv.stride[2:]
        conv2 = conv.conv2
        out2, pruned = None, []
        for i, (q, s) in enumerate(zip(query_feats, support_feats)):
            qt, s = LayoutLearner._unit_features(q, s)
            g, c = s.shape[:2]  # support rows: one per query, or the K shared shots (paired_matmul)
            corr = paired_matmul(qt, s).clamp(min=0).reshape(b * hq * wq, 1, hs, ws)
            y = F.conv2d(corr, conv2.weight[:, i : i + 1], conv2.bias if i == 0 else None,
                         stride=conv2.stride, padding=conv2.padding)
            out2 = y if out2 is None else out2 + y
            pruned.append(paired_matmul(qt, s.reshape(g, c, hs, ws)[:, :, ::sh, ::sw].reshape(g, c, -1)))
        n = len(pruned)
        o, ohs, ows = out2.shape[1:]
        p, q = ohs * ows, hq * wq
        # (B*Q, O, Hs', Ws') -> (B, O, S', Q): one 2D transpose.
        out2 = out2.reshape(b, q, o * p).transpose(1, 2).reshape(b, o, p, q)
        # (B, Q, S', n) -> (B, S', n, Q): one 2D transpose.
        pruned = torch.stack(pruned, dim=3).clamp(min=0).reshape(b, q, -1).transpose(1, 2)
        out1 = conv.conv1(pruned.reshape(b * p, n, hq, wq))  # query dims, at each kept position
        return out1.reshape(b, p, o, q).transpose(1, 2) + out2

    @staticmethod
    def _pivot(conv: CenterPivotConv4d, full: torch.Tensor, pruned: torch.Tensor, hq: int, wq: int) -> torch.Tensor:
        """One strided 4D conv: full (B, Q, C, Hs, Ws), pruned (B, S', C, Q) -> (B, O, S', Q)."""
        b, q, c = full.shape[:3]
        out2 = conv.conv2(full.reshape(b * q, c, *full.shape[-2:]))  # support dims, strided
        o, ohs, ows = out2.shape[1:]
        p = ohs * ows
        out2 = out2.reshape(b, q, o * p).transpose(1, 2).reshape(b, o, p, q)
        out1 = conv.conv1(pruned.reshape(b * p, c, hq, wq))  # query dims, at each kept position
        return out1.reshape(b, p, o, q).transpose(1, 2) + out2

    @staticmethod
    def _conv_inputs(x: torch.Tensor, hs: int, ws: int, stride) -> tuple[torch.Tensor, torch.Tensor]:
        """Hub (B, C, S, Q) -> (full query-major, pruned support-major) for the next 4D conv."""
        b, c, _, q = x.shape
        full = x.reshape(b, -1, q).transpose(1, 2).reshape(b, q, c, hs, ws)
        sh, sw = stride
        pruned = x.reshape(b, c, hs, ws, q)[:, :, ::sh, ::sw].reshape(b, c, -1, q).transpose(1, 2)
        return full, pruned

    def _squeeze(self, block: nn.Sequential, query_feats, support_feats) -> torch.Tensor:
        """Correlation + squeezing block -> support-major (B, Hs*Ws, C, Hq, Wq)."""
        hq, wq = query_feats[0].shape[-2:]
        hs, ws = support_feats[0].shape[-2:]
        x = None
        for conv, gn, _ in _triples(block):
            y = (self._correlation_pivot(conv, query_feats, support_feats) if x is None
                 else self._pivot(conv, *self._conv_inputs(x, hs, ws, conv.stride[2:]), hq, wq))
            x = F.relu(gn(y, channel_axis=1))
            hs, ws = (CenterPivotConv4d.output_size(n, k, st, pd)
                      for n, k, st, pd in zip((hs, ws), conv.kernel_size[2:], conv.stride[2:], conv.padding[2:]))
        b, c, p, _ = x.shape
        return x.transpose(1, 2).reshape(b, p, c, hq, wq)

    # -- mixing blocks: support-major (B, P, C, Hq, Wq) ------------------------------------------

    @staticmethod
    def _pivot_support_major(conv: CenterPivotConv4d, x: torch.Tensor) -> torch.Tensor:
        b, p, c, hq, wq = x.shape
        out1 = conv.conv1(x.reshape(b * p, c, hq, wq))
        o = out1.shape[1]
        weight = getattr(conv, "dense_weight", None)
        if weight is not None:
            out2 = F.conv2d(x.reshape(b, p * c, hq, wq), weight, conv.dense_bias)
        else:
            hs, ws = conv.support_size
            y = x.reshape(b, p, c, hq * wq).permute(0, 3, 2, 1).reshape(b * hq * wq, c, hs, ws)
            out2 = conv.conv2(y).reshape(b, hq * wq, o, p).permute(0, 3, 2, 1)
        return out1.reshape(b, p, o, hq, wq) + out2.reshape(b, p, o, hq, wq)

    def _mix(self, block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for conv, gn, _ in _triples(block):
            x = F.relu(gn(self._pivot_support_major(conv, x), channel_axis=2))
        return x

    @staticmethod
    def _resize_query_dims(x: torch.Tensor, size) -> torch.Tensor:
        b, p, c, hq, wq = x.shape
        y = F.interpolate(x.reshape(b * p, c, hq, wq), size, mode="bilinear", align_corners=True)
        return y.reshape(b, p, c, *y.shape[-2:])

    def from_features(self, query_feats: list[torch.Tensor], support_feats: list[torch.Tensor]) -> torch.Tensor:
        """The 13 encoded query / support features -> logits (B, 2, 2*H2, 2*W2)."""
        n2, n3, _ = self.stage_sizes
        stages = {
            4: (self.encoder_layer4, slice(n2 + n3, None)),
            3: (self.encoder_layer3, slice(n2, n2 + n3)),
            2: (self.encoder_layer2, slice(0, n2)),
        }
        sqz = {k: self._squeeze(block, query_feats[sl], support_feats[sl]) for k, (block, sl) in stages.items()}
        mix43 = self._mix(self.encoder_layer4to3, self._resize_query_dims(sqz[4], sqz[3].shape[-2:]) + sqz[3])
        mix432 = self._mix(self.encoder_layer3to2, self._resize_query_dims(mix43, sqz[2].shape[-2:]) + sqz[2])
        return self.decode(mix432.mean(dim=1))
