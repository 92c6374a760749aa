"""Preparing the eager model for export: FFT lowering and export-only numerics twins.

Each replacement here computes what its eager twin computes, but in a form whose exported
graph agrees with PyTorch (MODEL.md, "Parity pitfalls measured here"). The eager model is never
modified: `prepare_for_export` works on a deep copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.hsnet import BilinearMaskResize, LFMHSNet
from .lowering import apply_lowering

LOWERINGS = ("matmul", "dft")


def bilinear_matrix(in_size: int, out_size: int, dtype=torch.float64) -> torch.Tensor:
    """(out, in) matrix holding PyTorch's own bilinear (align_corners=True) weights.

    Obtained by resizing an identity image along one axis with `F.interpolate` itself, so it
    reproduces PyTorch's float32 weights, including the ~1.3e-5 weights where the source
    coordinate is mathematically an integer (400 -> 50): onnxruntime's Resize computes exactly
    0 there, and HSNet's feature normalisation turns any positive weight into a full-strength
    unit feature, so those weights matter.
    """
    eye = torch.eye(in_size, dtype=torch.float32)[None, None]
    resized = F.interpolate(eye, (out_size, in_size), mode="bilinear", align_corners=True)
    return resized[0, 0].to(dtype)


class MatrixMaskResize(nn.Module):
    """Export twin of `BilinearMaskResize`: constant interpolation matrices (Rh @ m @ Rw^T)."""

    def __init__(self, in_size: int, out_sizes):
        super().__init__()
        self.in_size = in_size
        for n in sorted(set(out_sizes)):
            self.register_buffer(f"r{n}", bilinear_matrix(in_size, n, torch.float32), persistent=False)

    def forward(self, mask: torch.Tensor, size) -> torch.Tensor:
        h, w = int(size[0]), int(size[1])
        rh = getattr(self, f"r{h}").to(mask.dtype)
        rw = getattr(self, f"r{w}").to(mask.dtype)
        return torch.matmul(torch.matmul(rh, mask), rw.transpose(0, 1))


class TwoStageGroupNorm(nn.GroupNorm):
    """Export twin of `nn.GroupNorm` with the same parameters and state-dict names.

    Exported GroupNorm becomes InstanceNormalization, whose single reduction over groups of up
    to 1.7M elements loses precision in onnxruntime (3e-3 inside the learner). Here the mean and
    the centred variance are each reduced in two stages (rows, then the row means), which keeps
    the float32 error near 1e-6.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = self.num_groups
        rows = (c // g) * (x.shape[2] if x.dim() > 2 else 1)
        xg = x.reshape(b, g, rows, -1)
        mean = xg.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        centred = xg - mean
        var = (centred * centred).mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        y = (centred / torch.sqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def _swap_group_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm) and not isinstance(child, TwoStageGroupNorm):
            twin = TwoStageGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            twin.load_state_dict(child.state_dict())
            setattr(module, name, twin)
        else:
            _swap_group_norms(child)


def prepare_for_export(model: LFMHSNet, lowering: str = "matmul") -> LFMHSNet:
    """A copy of `model` ready to export, with the eager model left unchanged.

    Args:
        model: the eager model.
        lowering: "matmul" (DFT as real matrix products, TensorRT-friendly) or "dft" (ONNX DFT).

    Returns:
        A new LFMHSNet in eval mode with the masker's FFT lowered, the support-mask resize as
        constant matrices and GroupNorm computed in two stages. Parameters are identical.
    """
    if lowering not in LOWERINGS:
        from ..errors import ExportError

        raise ExportError(f"unknown lowering {lowering!r}; choose one of: {', '.join(LOWERINGS)}")
    l2, l3, l4 = model.feature_hw
    prepared = apply_lowering(model, lowering, spatial=(l4, l4))
    assert isinstance(prepared.mask_resize, BilinearMaskResize)
    prepared.mask_resize = MatrixMaskResize(model.image_size, (l2, l3, l4))
    _swap_group_norms(prepared.hpn_learner)
    return prepared.eval()
