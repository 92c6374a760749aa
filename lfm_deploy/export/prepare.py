"""Preparing the eager model for export: FFT lowering and export-only numerics twins.

Each replacement here computes what its eager twin computes, but in a form whose exported
graph agrees with PyTorch (docs/numerics.md, one section per twin). The eager model is never
modified: `prepare_for_export` works on a deep copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.hsnet import BilinearMaskResize, LFMHSNet
from .learner_layout import LayoutLearner, TwoStageGroupNorm
from .lowering import apply_lowering

__all__ = ["LOWERINGS", "MatrixMaskResize", "TwoStageGroupNorm", "bilinear_matrix", "prepare_for_export"]  # re-exports
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


def prepare_for_export(model: LFMHSNet, lowering: str = "matmul") -> LFMHSNet:
    """A copy of `model` ready to export, with the eager model left unchanged.

    Args:
        model: the eager model.
        lowering: "matmul" (DFT as real matrix products, TensorRT-friendly) or "dft" (ONNX DFT).

    Returns:
        A new LFMHSNet in eval mode with the masker's FFT lowered, the support-mask resize as
        constant matrices, GroupNorm computed in two stages and the correlation + learner in
        the memory layout of `LayoutLearner`. Parameters are identical.
    """
    if lowering not in LOWERINGS:
        from ..errors import ExportError

        raise ExportError(f"unknown lowering {lowering!r}; choose one of: {', '.join(LOWERINGS)}")
    l2, l3, l4 = model.feature_hw
    prepared = apply_lowering(model, lowering, spatial=(l4, l4))
    assert isinstance(prepared.mask_resize, BilinearMaskResize)
    prepared.mask_resize = MatrixMaskResize(model.image_size, (l2, l3, l4))
    prepared.hpn_learner = LayoutLearner.from_learner(prepared.hpn_learner)
    return prepared.eval()
